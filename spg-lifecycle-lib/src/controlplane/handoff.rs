//! The autoscale handoff (DESIGN §2, "Autoscale handoff"): generation N+1 with a new profile is
//! prepared as a standby of N while N serves; the handoff then waits for a window without
//! sessions pinned to N, freezes new work on every gateway, drains what is in flight (time-boxed),
//! stops N, promotes N+1, points the gateways at it and unfreezes. Every phase is persisted as
//! the database's `scale_state`, with a transition.
//!
//! The database's actor does what touches the compute (start of the handoff, the switch); the
//! waiting happens in a task of its own, so leases, wakes and renewals are served meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spg_core::{
    AutoscaleHandoff, CoreError, CoreResult, DatabaseName, Gateway, HandoffPlan, HandoffReport,
    HandoffRun, PinnedSession, ScaleState,
};
use tracing::{info, info_span, warn, Instrument};

use super::actor::{Command, HandoffTicket};
use super::ControlPlane;
use crate::api::gateway_control::RemoteGateway;
use crate::provisioner::Standby;
use crate::LifecycleError;

/// A gateway daemon that has not registered for this long is no longer driven by handoffs
/// (daemons register every few seconds).
pub const REMOTE_GATEWAY_TTL: Duration = Duration::from_secs(30);

/// How often a waiting handoff looks at the gateways.
const POLL: Duration = Duration::from_millis(5);

/// What the gateways report of one database, summed.
#[derive(Debug, Default)]
pub(crate) struct Census {
    pub(crate) pinned: Vec<PinnedSession>,
    pub(crate) in_flight: usize,
    /// Microseconds clients waited for a backend connection, in total.
    pub(crate) wait_us: u64,
}

impl ControlPlane {
    /// Register a gateway: handoffs freeze, drain and switch it (and every other registered).
    pub fn add_gateway(&self, gateway: Arc<dyn Gateway>) {
        self.shared
            .gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(gateway);
    }

    /// Register (or refresh) a gateway daemon whose control routes are at `url` (see
    /// [`crate::api::gateway_control`]); handoffs drive it until it has not registered for
    /// [`REMOTE_GATEWAY_TTL`].
    /// Its routes are HTTPS, checked against `ca_pem` (plain `http://` only on loopback).
    pub fn register_gateway(
        &self,
        url: &str,
        token: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<(), LifecycleError> {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() <= 200
            && !token.is_empty()
            && ca_pem.is_none_or(|c| c.len() <= 64 * 1024);
        if !ok {
            return Err(LifecycleError::invalid(
                "gateway",
                "url must be http(s)://host:port, the token not empty and the CA at most 64 KiB",
            ));
        }
        let gw = RemoteGateway::new(url, token, ca_pem)
            .map_err(|e| LifecycleError::invalid("gateway", e.to_string()))?;
        let mut remote = self
            .shared
            .remote_gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !remote.contains_key(url) {
            info!(url, "gateway registered");
        }
        remote.insert(url.to_owned(), (Arc::new(gw), Instant::now()));
        Ok(())
    }

    /// The gateways a handoff drives: those added in this process, and the daemons that
    /// registered lately.
    fn gateways(&self) -> Vec<Arc<dyn Gateway>> {
        let mut all = self
            .shared
            .gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut remote = self
            .shared
            .remote_gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        remote.retain(|url, (_, seen)| {
            let live = seen.elapsed() < REMOTE_GATEWAY_TTL;
            if !live {
                warn!(url, "gateway stopped registering; no longer driven");
            }
            live
        });
        all.extend(remote.values().map(|(g, _)| Arc::clone(g)));
        all
    }

    /// Start a handoff of `db`'s writer to the profile named `profile`
    /// ([`ControlPlane::handoff_plan`], then [`AutoscaleHandoff::begin_handoff`]). Fails at once
    /// when the profile is unknown, the database does not run, or a handoff is in progress;
    /// otherwise the handoff goes on in the background (its progress is the database's
    /// `scale_state`).
    pub async fn start_handoff(&self, db: &DatabaseName, profile: &str) -> CoreResult<HandoffRun> {
        let plan = self.handoff_plan(db, profile, "requested".into()).await?;
        self.begin_handoff(plan).await
    }

    /// The plan of a handoff of `db`'s running writer to the profile named `profile` (with
    /// this control plane's drain timeout), for `reason`.
    pub async fn handoff_plan(
        &self,
        db: &DatabaseName,
        profile: &str,
        reason: String,
    ) -> Result<HandoffPlan, LifecycleError> {
        let to_profile = self
            .shared
            .config
            .profile_named(profile)
            .cloned()
            .ok_or_else(|| LifecycleError::invalid("profile", format!("no profile {profile:?}")))?;
        Ok(HandoffPlan {
            database: db.clone(),
            from: self.database(db).await?.record.generation,
            to_profile,
            drain_timeout: self.shared.config.drain_timeout,
            reason,
        })
    }

    async fn phase(&self, db: &DatabaseName, state: ScaleState, reason: String) {
        if let Err(e) = self
            .ask(db, |reply| Command::HandoffPhase {
                state,
                reason,
                reply,
            })
            .await
        {
            warn!(%db, %state, error = %e, "recording a handoff phase failed");
        }
    }

    /// Give up: discard the standby, unfreeze, record why.
    async fn abort(
        &self,
        db: &DatabaseName,
        standby: Option<Box<dyn Standby>>,
        frozen: bool,
        reason: String,
    ) -> LifecycleError {
        warn!(%db, reason, "handoff aborted");
        if frozen {
            self.unfreeze(db).await;
        }
        if let Some(s) = standby {
            s.discard().await;
        }
        self.shared.metrics.handoff_blocking_sessions.set(0);
        self.phase(db, ScaleState::Aborted, reason.clone()).await;
        LifecycleError::Invalid {
            what: "handoff",
            reason,
        }
    }

    /// Freeze new work for `db` on every gateway, for at most `bound`.
    async fn freeze(&self, db: &DatabaseName, bound: Duration) {
        for g in self.gateways() {
            if let Err(e) = g.set_frozen(db, Some(bound)).await {
                warn!(%db, error = %e, "a gateway did not take the freeze");
            }
        }
    }

    /// Unfreeze `db` on every gateway; a gateway that cannot be reached is tried again in the
    /// background (with backoff) until it takes it, or until any freeze it holds has expired
    /// by itself.
    async fn unfreeze(&self, db: &DatabaseName) {
        let give_up =
            Instant::now() + self.shared.config.drain_timeout + self.shared.config.freeze_margin;
        for g in self.gateways() {
            if g.set_frozen(db, None).await.is_ok() {
                continue;
            }
            let db = db.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(100);
                loop {
                    tokio::time::sleep(wait).await;
                    match g.set_frozen(&db, None).await {
                        Ok(()) => return,
                        Err(e) if Instant::now() + wait >= give_up => {
                            warn!(%db, error = %e, "a gateway never took the unfreeze; its freeze expires by itself");
                            return;
                        }
                        Err(e) => {
                            warn!(%db, error = %e, "a gateway did not take the unfreeze; trying again");
                            wait = (wait * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }
    }

    /// Sessions pinned to the writer, transactions in flight and queued clients, over every
    /// gateway.
    pub(crate) async fn census(&self, db: &DatabaseName) -> Census {
        let mut c = Census::default();
        for g in self.gateways() {
            match g.sessions(db).await {
                Ok(s) => {
                    c.pinned.extend(s.pinned);
                    c.in_flight += s.in_flight;
                    c.wait_us += s.wait_us;
                }
                Err(e) => warn!(%db, error = %e, "a gateway did not report its sessions"),
            }
        }
        c
    }

    async fn run_handoff(
        &self,
        db: &DatabaseName,
        ticket: HandoffTicket,
        drain_timeout: Duration,
    ) -> Result<HandoffReport, LifecycleError> {
        let cfg = &self.shared.config;
        let (from, to) = (ticket.from, ticket.spec.generation);
        let mut timings = BTreeMap::new();
        let started = Instant::now();

        // preparing: the standby, then a window without pinned sessions.
        let standby = match self
            .shared
            .provisioner
            .start_standby(ticket.spec.clone(), &ticket.primary)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                return Err(self
                    .abort(db, None, false, format!("the standby did not start: {e}"))
                    .await)
            }
        };
        timings.insert("prepare".to_owned(), ms(started.elapsed()));
        let waited = Instant::now();
        let mut reported = Vec::new();
        loop {
            let pinned = self.census(db).await.pinned;
            self.shared
                .metrics
                .handoff_blocking_sessions
                .set(pinned.len() as i64);
            if pinned.is_empty() {
                break;
            }
            let blocking = describe(&pinned);
            if waited.elapsed() >= cfg.pinned_wait {
                return Err(self
                    .abort(
                        db,
                        Some(standby),
                        false,
                        format!(
                            "sessions pinned to generation {from} for {:?}: {blocking}",
                            cfg.pinned_wait
                        ),
                    )
                    .await);
            }
            if blocking != reported.join("") {
                self.phase(
                    db,
                    ScaleState::Preparing,
                    format!("waiting for sessions pinned to generation {from}: {blocking}"),
                )
                .await;
                reported = vec![blocking];
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        timings.insert("pinned_wait".to_owned(), ms(waited.elapsed()));

        // Before the freeze, while clients work: a standby caught up with the log (little
        // left to replay once the writer stops).
        let caught = Instant::now();
        match standby.catch_up(cfg.drain_timeout).await {
            Ok(behind) => info!(%db, behind, "standby caught up"),
            Err(e) => {
                return Err(self
                    .abort(
                        db,
                        Some(standby),
                        false,
                        format!("the standby fell behind: {e}"),
                    )
                    .await)
            }
        }
        timings.insert("catch_up".to_owned(), ms(caught.elapsed()));
        if !standby.is_running() {
            return Err(self
                .abort(db, Some(standby), false, format!("the standby {to} exited"))
                .await);
        }

        // frozen, then draining (time-boxed).
        // A freeze this control plane never lifts (it died) ends by itself on every gateway.
        let margin = self.shared.config.freeze_margin;
        self.freeze(db, drain_timeout + margin).await;
        let frozen_at = Instant::now();
        self.phase(
            db,
            ScaleState::Frozen,
            format!("new work held back for {to}"),
        )
        .await;
        self.phase(
            db,
            ScaleState::Draining,
            "waiting for transactions in flight".into(),
        )
        .await;
        loop {
            let Census {
                pinned, in_flight, ..
            } = self.census(db).await;
            if in_flight == 0 && pinned.is_empty() {
                break;
            }
            if frozen_at.elapsed() >= drain_timeout {
                let what = if pinned.is_empty() {
                    format!("{in_flight} transaction(s) still in flight")
                } else {
                    describe(&pinned)
                };
                return Err(self
                    .abort(
                        db,
                        Some(standby),
                        true,
                        format!("drain timed out after {drain_timeout:?}: {what}"),
                    )
                    .await);
            }
            tokio::time::sleep(POLL).await;
        }
        timings.insert("drain".to_owned(), ms(frozen_at.elapsed()));
        if !standby.is_running() {
            return Err(self
                .abort(db, Some(standby), true, format!("the standby {to} exited"))
                .await);
        }

        // switching: the actor stops N and promotes N+1 (or starts cold if that fails). The
        // freeze is renewed for the switch's own time.
        self.freeze(db, margin).await;
        let switched = Instant::now();
        let outcome = self
            .ask(db, |reply| Command::HandoffSwitch {
                from,
                profile: ticket.spec.profile.name.clone(),
                standby,
                reply,
            })
            .await;
        let (endpoint, _) = match outcome {
            Ok(x) => x,
            Err(e) => {
                self.unfreeze(db).await;
                self.phase(db, ScaleState::Aborted, format!("switch failed: {e}"))
                    .await;
                return Err(e);
            }
        };
        for g in self.gateways() {
            if let Err(e) = g.switch_target(db, &endpoint).await {
                warn!(%db, error = %e, "a gateway did not switch");
            }
        }
        self.unfreeze(db).await;
        timings.insert("switch".to_owned(), ms(switched.elapsed()));
        let frozen_for = frozen_at.elapsed();
        timings.insert("frozen".to_owned(), ms(frozen_for));
        timings.insert("total".to_owned(), ms(started.elapsed()));
        self.shared.metrics.handoff_blocking_sessions.set(0);
        info!(%db, %from, to = %endpoint.generation, ?frozen_for, "handoff done");
        Ok(HandoffReport {
            from,
            to: endpoint.generation,
            frozen_for,
            timings_ms: timings,
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `client 12 (app): temp table; client 14 (app): listen`.
fn describe(pinned: &[PinnedSession]) -> String {
    pinned
        .iter()
        .map(|p| format!("client {} ({}): {}", p.client, p.role, p.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

#[async_trait]
impl AutoscaleHandoff for ControlPlane {
    async fn begin_handoff(&self, plan: HandoffPlan) -> CoreResult<HandoffRun> {
        let HandoffPlan {
            database: db,
            from,
            to_profile,
            drain_timeout,
            reason,
        } = plan;
        to_profile
            .validate()
            .map_err(|r| LifecycleError::invalid("profile", r))?;
        let running = self.database(&db).await?.record.generation;
        if running != from {
            return Err(CoreError::StaleGeneration {
                offered: from.0,
                current: running.0,
            });
        }
        let ticket = self
            .ask(&db, |reply| Command::HandoffBegin {
                from,
                profile: to_profile,
                why: reason,
                reply,
            })
            .await?;
        let to = ticket.spec.generation;
        info!(%db, %from, %to, profile = %ticket.spec.profile.name, "handoff started");
        let cp = self.clone();
        let span = info_span!("handoff", %db, %to);
        let task = self.shared.tasks.spawn(
            async move { cp.run_handoff(&db, ticket, drain_timeout).await }.instrument(span),
        );
        Ok(HandoffRun::new(to, async move {
            match task.await {
                Ok(outcome) => outcome.map_err(CoreError::from),
                Err(e) => Err(CoreError::Unavailable(format!(
                    "the handoff task failed: {e}"
                ))),
            }
        }))
    }
}

//! One task per database serialises its lifecycle: wakes, stops, leases, idle stop and crash
//! detection. Because commands are handled one at a time, wakes that arrive while a start is in
//! progress simply wait for it and share its outcome: concurrent wakes merge into one start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::RngExt;
use spg_core::{
    ComputeEndpoint, ComputeState, DatabaseName, Generation, LeaseGrant, LeaseId, ScaleProfile,
    ScaleState,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use super::{now_ms, Shared};
use crate::branching::{BranchMade, BranchPoint};
use crate::compute::load::ComputeLoad;
use crate::compute::process::ExitWatch;
use crate::compute::{ComputeSpec, RoleSpec};
use crate::metrics::ReasonLabel;
use crate::provisioner::{Compute, Standby};
use crate::store::{DatabaseRecord, Transition};
use crate::timing::StepTimings;
use crate::LifecycleError;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, LifecycleError>>;

pub(crate) enum Command {
    Wake {
        requested: Instant,
        reply: Reply<ComputeEndpoint>,
    },
    Stop {
        reason: &'static str,
        reply: Reply<()>,
    },
    AcquireLease {
        holder: String,
        reply: Reply<LeaseGrant>,
    },
    RenewLease {
        id: LeaseId,
        reply: Reply<LeaseGrant>,
    },
    ReleaseLease {
        id: LeaseId,
        reply: Reply<()>,
    },
    ApplyRoles {
        reply: Reply<()>,
    },
    HandoffBegin {
        /// The generation expected to run; another one running refuses the handoff.
        from: Generation,
        profile: ScaleProfile,
        /// Who asked and why (`api`, or the autoscaler's reason).
        why: String,
        reply: Reply<HandoffTicket>,
    },
    Load {
        reply: Reply<WriterLoad>,
    },
    HandoffPhase {
        state: ScaleState,
        reason: String,
        reply: Reply<()>,
    },
    HandoffSwitch {
        from: Generation,
        profile: String,
        standby: Box<dyn Standby>,
        reply: Reply<(ComputeEndpoint, StepTimings)>,
    },
    /// A point-in-time restore: keep the state as the branch `keep`, then move back to `at`.
    Restore {
        keep: DatabaseName,
        at: BranchPoint,
        reply: Reply<RestoreOutcome>,
    },
    /// Delete the database: stop its compute, remove its record; the actor ends.
    Delete {
        reply: Reply<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// The ownership continues under a new term (the store bumped the record's version).
    NewTerm {
        token: u64,
        reply: Reply<()>,
    },
    /// The ownership is lost: kill the compute without touching the store, and end.
    Abdicate {
        reply: oneshot::Sender<()>,
    },
}

/// What a handoff works with, from its start.
pub(crate) struct HandoffTicket {
    /// The writer's generation.
    pub(crate) from: Generation,
    /// What to start as its standby.
    pub(crate) spec: ComputeSpec,
    /// The writer's profile.
    pub(crate) primary: ScaleProfile,
}

/// What a restore did: the branch keeping the state before is made (the caller records it),
/// the restore itself may still have failed.
pub(crate) struct RestoreOutcome {
    pub(crate) kept: BranchMade,
    pub(crate) restored: Result<BranchMade, LifecycleError>,
}

/// The writer's load counters, for the autoscaler.
pub(crate) struct WriterLoad {
    pub(crate) generation: Generation,
    pub(crate) profile: String,
    pub(crate) load: ComputeLoad,
}

/// What the rest of the control plane can read without a round trip to the actor.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveStatus {
    pub(crate) record: Option<DatabaseRecord>,
    pub(crate) endpoint: Option<ComputeEndpoint>,
    pub(crate) leases: usize,
}

struct HeldLease {
    holder: String,
    expires: Instant,
}

pub(crate) struct DbActor {
    shared: Arc<Shared>,
    name: DatabaseName,
    rec: DatabaseRecord,
    compute: Option<Box<dyn Compute>>,
    exit: Option<ExitWatch>,
    leases: HashMap<String, HeldLease>,
    /// Since when no lease has been held (the idle clock).
    idle_since: Instant,
    /// Up to when the compute's ready time has been counted in the usage metrics.
    metered_ms: u64,
    /// Bytes a stop's write-back just uploaded, recorded with the next transition (the one
    /// that ends the stop).
    written_back: Option<u64>,
    /// When the pre-wake hook last refused a wake, and its message (shared with the wakes
    /// that waited meanwhile).
    last_refusal: Option<(Instant, String)>,
    /// When the last failed start finished, and its error: wakes sent before then share it.
    last_failed_boot: Option<(Instant, String)>,
    live: watch::Sender<LiveStatus>,
    rx: mpsc::Receiver<Command>,
}

impl DbActor {
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        rec: DatabaseRecord,
    ) -> (mpsc::Sender<Command>, watch::Receiver<LiveStatus>) {
        let (tx, rx) = mpsc::channel(256);
        let (live, live_rx) = watch::channel(LiveStatus {
            record: Some(rec.clone()),
            ..LiveStatus::default()
        });
        let span = info_span!("database", db = %rec.name);
        let actor = DbActor {
            name: rec.name.clone(),
            shared: Arc::clone(&shared),
            rec,
            compute: None,
            exit: None,
            leases: HashMap::new(),
            idle_since: Instant::now(),
            metered_ms: now_ms(),
            written_back: None,
            last_refusal: None,
            last_failed_boot: None,
            live,
            rx,
        };
        shared.tasks.spawn(actor.run().instrument(span));
        (tx, live_rx)
    }

    async fn run(mut self) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                // Commands first: renewals that queued while a start or stop kept the actor busy
                // are honoured before any lease is reaped for lack of them.
                biased;
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Command::Abdicate { reply } = cmd {
                        self.abdicate().await;
                        let _ = reply.send(());
                        return;
                    }
                    if let Command::Delete { reply } = cmd {
                        let r = self.delete().await;
                        let deleted = r.is_ok();
                        let _ = reply.send(r);
                        if deleted {
                            return;
                        }
                        continue;
                    }
                    if let Some(done) = self.handle(cmd).await {
                        // Shutdown: stop the compute, then confirm.
                        self.stop("shutdown").await.ok();
                        let _ = done.send(());
                        break;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if self.on_timer().await {
                        // An ephemeral branch deleted itself.
                        return;
                    }
                }
                _ = exited(&mut self.exit), if self.exit.is_some() => self.on_compute_exit().await,
            }
        }
        // Dropping the actor drops a compute still held, which kills its process.
        if self.compute.is_some() {
            warn!("actor ended with a running compute; stopping it");
            self.stop("shutdown").await.ok();
        }
    }

    /// Handles one command; returns the confirmation channel when asked to shut down.
    async fn handle(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Wake { requested, reply } => {
                let r = self.wake(requested).await;
                let _ = reply.send(r);
            }
            Command::Stop { reason, reply } => {
                let r = self.stop(reason).await;
                let _ = reply.send(r);
            }
            Command::AcquireLease { holder, reply } => {
                let id = format!("{}.{:016x}", self.name, rand::rng().random::<u64>());
                let ttl = self.shared.config.lease_ttl;
                self.leases.insert(
                    id.clone(),
                    HeldLease {
                        holder,
                        expires: Instant::now() + ttl,
                    },
                );
                self.publish();
                let _ = reply.send(Ok(LeaseGrant {
                    id: LeaseId(id),
                    database: self.name.clone(),
                    ttl,
                }));
            }
            Command::RenewLease { id, reply } => {
                let ttl = self.shared.config.lease_ttl;
                // A lease is held until the timer reaps it.
                let r = match self.leases.get_mut(&id.0) {
                    Some(l) => {
                        l.expires = Instant::now() + ttl;
                        Ok(LeaseGrant {
                            id,
                            database: self.name.clone(),
                            ttl,
                        })
                    }
                    None => Err(LifecycleError::Invalid {
                        what: "lease",
                        reason: format!("lease {} is not held (expired or released)", id.0),
                    }),
                };
                let _ = reply.send(r);
            }
            Command::ReleaseLease { id, reply } => {
                if let Some(l) = self.leases.remove(&id.0) {
                    tracing::debug!(holder = %l.holder, "lease released");
                    if self.leases.is_empty() {
                        // The idle clock starts when the last lease goes.
                        self.idle_since = Instant::now();
                    }
                }
                self.publish();
                let _ = reply.send(Ok(()));
            }
            Command::ApplyRoles { reply } => {
                let r = self.apply_roles().await;
                let _ = reply.send(r);
            }
            Command::HandoffBegin {
                from,
                profile,
                why,
                reply,
            } => {
                let r = self.handoff_begin(from, profile, why).await;
                let _ = reply.send(r);
            }
            Command::Load { reply } => {
                let r = self.writer_load().await;
                let _ = reply.send(r);
            }
            Command::HandoffPhase {
                state,
                reason,
                reply,
            } => {
                let r = self.scale_phase(state, reason).await;
                let _ = reply.send(r);
            }
            Command::HandoffSwitch {
                from,
                profile,
                standby,
                reply,
            } => {
                let r = self.handoff_switch(from, profile, standby).await;
                let _ = reply.send(r);
            }
            Command::NewTerm { token, reply } => {
                let r = self.new_term(token).await;
                let _ = reply.send(r);
            }
            Command::Restore { keep, at, reply } => {
                let r = self.restore(keep, at).await;
                let _ = reply.send(r);
            }
            Command::Shutdown { reply } => return Some(reply),
            Command::Abdicate { reply } => {
                // Handled by the loop; here only for completeness of the match.
                let _ = reply.send(());
            }
            Command::Delete { reply } => {
                // Handled by the loop too.
                let _ = reply.send(Err(LifecycleError::ShuttingDown));
            }
        }
        None
    }

    async fn new_term(&mut self, token: u64) -> Result<(), LifecycleError> {
        let current = self
            .shared
            .store
            .database(&self.name)
            .await?
            .ok_or_else(|| LifecycleError::DatabaseNotFound(self.name.to_string()))?;
        if current.owner_token != token || current.generation != self.rec.generation {
            return Err(LifecycleError::NotOwner {
                database: self.name.to_string(),
                owner: None,
                url: None,
            });
        }
        self.rec = current;
        self.publish();
        Ok(())
    }

    /// Ownership lost: the compute goes (dropping it kills its processes), nothing is written
    /// (the new owner has fenced or will fence its generation).
    async fn abdicate(&mut self) {
        self.exit = None;
        self.leases.clear();
        if let Some(compute) = self.compute.take() {
            warn!(generation = %self.rec.generation, "ownership lost: killing the compute");
            drop(compute);
        }
        self.live.send_replace(LiveStatus::default());
    }

    fn publish(&mut self) {
        let status = LiveStatus {
            record: Some(self.rec.clone()),
            endpoint: self.compute.as_ref().map(|c| c.endpoint()),
            leases: self.leases.len(),
        };
        self.live.send_replace(status);
        self.shared.refresh_lease_gauge();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let lease_expiry = self.leases.values().map(|l| l.expires).min();
        let idle_stop = (self.compute.is_some() && self.leases.is_empty())
            .then(|| self.idle_since + self.shared.config.idle_timeout);
        match (lease_expiry, idle_stop) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expire leases and stop an idle compute; `true` when that deleted the database (an
    /// ephemeral branch ends with its idle stop) and the actor is done.
    async fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        let before = self.leases.len();
        self.leases.retain(|_, l| l.expires > now);
        if self.leases.len() != before {
            info!(expired = before - self.leases.len(), "leases expired");
            if self.leases.is_empty() {
                self.idle_since = now;
            }
            self.publish();
        }
        if self.compute.is_some()
            && self.leases.is_empty()
            && now >= self.idle_since + self.shared.config.idle_timeout
        {
            info!(idle_for = ?self.shared.config.idle_timeout, "idle: stopping compute");
            if let Err(e) = self.stop("idle").await {
                warn!(error = %e, "idle stop failed");
            } else if self.rec.ephemeral {
                info!("ephemeral branch stopped: deleting it");
                match self.delete().await {
                    Ok(()) => {
                        if let Err(e) = self.shared.forget_deleted(&self.name).await {
                            warn!(error = %e, "releasing the ephemeral branch's storage");
                        }
                        return true;
                    }
                    Err(e) => warn!(error = %e, "deleting the ephemeral branch failed"),
                }
            }
        }
        false
    }

    async fn wake(&mut self, requested: Instant) -> Result<ComputeEndpoint, LifecycleError> {
        // A wake that waited out a lapse of the ownership gets no endpoint from here.
        self.shared.may_act(&self.name, self.rec.owner_token)?;
        if let Some(c) = &self.compute {
            return Ok(c.endpoint());
        }
        if let Some((finished, error)) = &self.last_failed_boot {
            if requested < *finished {
                // This wake waited for a start that failed: share its outcome, do not start again.
                return Err(LifecycleError::Compute {
                    database: self.name.to_string(),
                    generation: self.rec.generation.0,
                    step: "boot",
                    reason: error.clone(),
                });
            }
        }
        if let Some((at, message)) = &self.last_refusal {
            if requested < *at {
                // This wake waited while the hook refused the one before: the same answer.
                return Err(LifecycleError::WakeRefused(message.clone()));
            }
        }
        let started = Instant::now();
        let generation = self.next_generation();
        self.ask_pre_wake(generation).await?;
        self.transition(ComputeState::Booting, "wake", |r| {
            r.generation = generation;
            r.target_scale = 1;
        })
        .await?;
        let span = info_span!("compute", %generation);
        let result = self.boot().instrument(span).await;
        match result {
            Ok(compute) => {
                let endpoint = compute.endpoint();
                let timings = compute.boot_timings();
                self.exit = compute.exit_watch();
                self.compute = Some(compute);
                self.last_failed_boot = None;
                let now = now_ms();
                let stored = self
                    .transition(ComputeState::Ready, "compute ready", |r| {
                        r.wake_count += 1;
                        r.last_started_ms = Some(now);
                        r.last_error = None;
                        r.last_boot = Some(timings.clone());
                    })
                    .await;
                if let Err(e) = stored {
                    // Running without the state saying so would confuse everyone: undo.
                    self.stop("store failure").await.ok();
                    return Err(e);
                }
                let m = &self.shared.metrics;
                m.wakes.inc();
                m.boot_seconds.observe(started.elapsed().as_secs_f64());
                m.record_steps("boot", &timings);
                if self.leases.is_empty() {
                    self.idle_since = Instant::now();
                }
                self.publish();
                Ok(endpoint)
            }
            Err(e) => {
                warn!(error = %e, "compute start failed");
                self.shared.metrics.boot_failures.inc();
                self.last_failed_boot = Some((Instant::now(), e.to_string()));
                let msg = e.to_string();
                self.transition(ComputeState::Stopped, "start failed", |r| {
                    r.target_scale = 0;
                    r.last_error = Some(msg);
                })
                .await
                .ok();
                Err(e)
            }
        }
    }

    async fn boot(&mut self) -> Result<Box<dyn Compute>, LifecycleError> {
        let roles = self.role_specs().await?;
        let spec = ComputeSpec {
            database: self.name.clone(),
            generation: self.rec.generation,
            roles,
            profile: self.shared.config.profile_of(&self.rec),
        };
        let timeout = self.shared.config.boot_timeout;
        match tokio::time::timeout(timeout, self.shared.provisioner.start(spec)).await {
            Ok(r) => r,
            Err(_) => Err(LifecycleError::Timeout(format!(
                "compute not ready within {timeout:?}"
            ))),
        }
    }

    async fn stop(&mut self, reason: &'static str) -> Result<(), LifecycleError> {
        let Some(compute) = self.compute.take() else {
            return Ok(());
        };
        self.exit = None;
        self.transition(ComputeState::Stopping, reason, |r| r.target_scale = 0)
            .await?;
        let report = compute.stop().await;
        if let Some(e) = &report.error {
            warn!(error = %e, "stop finished with an error");
        }
        self.shared
            .metrics
            .stops
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
        self.shared.metrics.record_steps("stop", &report.timings);
        self.written_back = report.image.as_ref().map(|i| i.bytes_written);
        let now = now_ms();
        self.transition(ComputeState::Stopped, reason, |r| {
            r.last_stopped_ms = Some(now);
            r.last_stop = Some(report.timings.clone());
            if report.error.is_some() {
                r.last_error = report.error.clone();
            }
        })
        .await?;
        self.publish();
        // What storage keeps now, for the gauges (off the actor's path).
        if self.shared.storage.get().is_some() {
            let (shared, db) = (Arc::clone(&self.shared), self.name.clone());
            self.shared.tasks.spawn(async move {
                if let Err(e) = shared.stored_bytes(&db).await {
                    debug!(error = %e, "metering stored bytes failed");
                }
            });
        }
        Ok(())
    }

    /// Stop, keep the state as the branch `keep`, then restore to `at` as a new generation.
    async fn restore(
        &mut self,
        keep: DatabaseName,
        at: BranchPoint,
    ) -> Result<RestoreOutcome, LifecycleError> {
        self.shared.may_act(&self.name, self.rec.owner_token)?;
        let brancher = self.shared.brancher.get().cloned().ok_or_else(|| {
            LifecycleError::invalid("request", "this control plane cannot restore databases")
        })?;
        self.stop("restore").await?;
        let kept = brancher
            .branch(&self.name, &keep, BranchPoint::Newest)
            .await?;
        // The generation is recorded before it is elected, as for a wake.
        let generation = self.next_generation();
        self.update_record(&format!("restoring to {at}"), None, |r| {
            r.generation = generation;
        })
        .await?;
        let span = info_span!("restore", %generation, %at);
        let restored = brancher
            .restore(&self.name, generation, at)
            .instrument(span)
            .await;
        let outcome = match &restored {
            Ok(made) => {
                self.last_failed_boot = None;
                let detail = format!(
                    "restored to {at} (LSN {}); the state before is kept as {keep}",
                    made.lsn
                );
                let written = made.image.as_ref().map(|i| i.bytes_written);
                self.written_back = written;
                self.update_record(&detail, Some(crate::events::EventKind::Restored), |r| {
                    r.last_error = None;
                })
                .await
            }
            Err(e) => {
                let msg = format!("restore to {at} failed: {e}");
                self.update_record(&msg.clone(), None, |r| r.last_error = Some(msg))
                    .await
            }
        };
        if let Err(e) = outcome {
            warn!(error = %e, "recording the restore");
        }
        Ok(RestoreOutcome { kept, restored })
    }

    /// Stop the compute and remove the record (and roles) from the store, compare-and-set on
    /// the version held; then nothing of the database is left here.
    async fn delete(&mut self) -> Result<(), LifecycleError> {
        self.shared.may_act(&self.name, self.rec.owner_token)?;
        self.stop("deleted").await?;
        let now = now_ms();
        let t = Transition {
            database: self.name.clone(),
            from: Some(self.rec.state),
            to: ComputeState::Stopped,
            generation: self.rec.generation,
            at_ms: now,
            reason: "deleted".into(),
            profile: Some(self.shared.config.profile_of(&self.rec).name),
            bytes_written: None,
        };
        if !self
            .shared
            .store
            .delete_database(&self.name, self.rec.version, &t)
            .await?
        {
            if let Some(current) = self.shared.store.database(&self.name).await? {
                self.rec = current;
            }
            self.publish();
            return Err(LifecycleError::Conflict(self.name.to_string()));
        }
        self.exit = None;
        self.leases.clear();
        let rec = self.rec.clone();
        self.recorded(&rec, &t, Some(crate::events::EventKind::Deleted));
        self.shared.metrics.state_removed(rec.state);
        info!(generation = %rec.generation, "deleted");
        self.live.send_replace(LiveStatus::default());
        Ok(())
    }

    /// Store a change of the record that is no change of state (the database is stopped),
    /// with `event` published.
    async fn update_record(
        &mut self,
        reason: &str,
        event: Option<crate::events::EventKind>,
        update: impl FnOnce(&mut DatabaseRecord),
    ) -> Result<(), LifecycleError> {
        let mut next = self.rec.clone();
        next.version += 1;
        update(&mut next);
        let t = self.transition_to(&next, now_ms(), reason);
        self.store_record(&next, &t).await?;
        self.recorded(&next, &t, event);
        info!(generation = %next.generation, reason, "record");
        self.rec = next;
        self.publish();
        Ok(())
    }

    async fn on_compute_exit(&mut self) {
        let Some(compute) = self.compute.take() else {
            return;
        };
        let exit = self
            .exit
            .take()
            .and_then(|w| w.borrow().clone())
            .map(|e| e.to_string())
            .unwrap_or_else(|| "unknown".into());
        warn!(%exit, "compute exited on its own");
        compute.abandon().await;
        self.shared
            .metrics
            .stops
            .get_or_create(&ReasonLabel {
                reason: "exit".into(),
            })
            .inc();
        let now = now_ms();
        let msg = format!("compute exited unexpectedly ({exit})");
        self.transition(ComputeState::Stopped, crate::events::CRASH_REASON, |r| {
            r.target_scale = 0;
            r.last_stopped_ms = Some(now);
            r.last_error = Some(msg);
        })
        .await
        .ok();
        self.publish();
    }

    /// A generation newer than every one started or handed to a standby.
    fn next_generation(&self) -> Generation {
        self.rec
            .generation
            .max(self.rec.reserved_generation.unwrap_or(Generation::NONE))
            .next()
    }

    /// The writer's load, when it runs steadily (no handoff under way).
    async fn writer_load(&self) -> Result<WriterLoad, LifecycleError> {
        let compute = match &self.compute {
            Some(c)
                if self.rec.state == ComputeState::Ready && !self.rec.scale_state.in_progress() =>
            {
                c
            }
            _ => {
                return Err(LifecycleError::Invalid {
                    what: "load",
                    reason: format!("the database is {}, not running steadily", self.rec.state),
                })
            }
        };
        Ok(WriterLoad {
            generation: self.rec.generation,
            profile: self.shared.config.profile_of(&self.rec).name,
            load: compute.load().await?,
        })
    }

    /// Start a handoff to `profile`: the writer must run and no other handoff be in progress.
    async fn handoff_begin(
        &mut self,
        expected: Generation,
        profile: ScaleProfile,
        why: String,
    ) -> Result<HandoffTicket, LifecycleError> {
        if self.rec.generation != expected {
            return Err(LifecycleError::Conflict(format!(
                "a handoff from generation {expected}: generation {} runs",
                self.rec.generation
            )));
        }
        if self.compute.is_none() || self.rec.state != ComputeState::Ready {
            return Err(LifecycleError::Invalid {
                what: "handoff",
                reason: format!("the database is {}, not running", self.rec.state),
            });
        }
        if self.rec.scale_state.in_progress() {
            return Err(LifecycleError::Invalid {
                what: "handoff",
                reason: format!("a handoff is in progress ({})", self.rec.scale_state),
            });
        }
        // What the writer really runs with (a promoted standby may have more connection slots
        // than its profile), which its standby must match to stay hot.
        let configured = self.shared.config.profile_of(&self.rec);
        let primary = match self.compute.as_ref().and_then(|c| c.profile()) {
            Some(p) if p.name == configured.name => p,
            _ => configured,
        };
        let generation = self.next_generation();
        let roles = self.role_specs().await?;
        let from = self.rec.generation;
        let reason = format!("handoff {} -> {} ({why})", primary.name, profile.name);
        self.scale_update(ScaleState::Preparing, reason, |r| {
            r.reserved_generation = Some(generation);
        })
        .await?;
        Ok(HandoffTicket {
            from,
            spec: ComputeSpec {
                database: self.name.clone(),
                generation,
                roles,
                profile,
            },
            primary,
        })
    }

    async fn scale_phase(
        &mut self,
        state: ScaleState,
        reason: String,
    ) -> Result<(), LifecycleError> {
        self.scale_update(state, reason, |_| {}).await
    }

    /// Stop the writer and promote `standby` in its place. If the promotion fails, the
    /// database is started cold (with the new profile) instead: clients wait either way.
    async fn handoff_switch(
        &mut self,
        from: Generation,
        profile: String,
        standby: Box<dyn Standby>,
    ) -> Result<(ComputeEndpoint, StepTimings), LifecycleError> {
        let to = standby.generation();
        let running = self.compute.is_some()
            && self.rec.state == ComputeState::Ready
            && self.rec.generation == from;
        if !running {
            standby.discard().await;
            return Err(LifecycleError::Invalid {
                what: "handoff",
                reason: format!(
                    "generation {from} no longer runs ({}, generation {})",
                    self.rec.state, self.rec.generation
                ),
            });
        }
        let profile = Some(profile);
        self.scale_update(
            ScaleState::Switching,
            format!("stopping {from}, promoting {to}"),
            |_| {},
        )
        .await?;
        let mut timer = crate::timing::StepTimer::new();
        let Some(old) = self.compute.take() else {
            unreachable!("checked above");
        };
        self.exit = None;
        // Flushed, the writer may stop while the standby is elected and promoted (the
        // election fences it); otherwise it streams the rest in a fast shutdown first.
        let stopping = match old.flush_for_handoff().await {
            Ok(()) => {
                timer.step("flush_writer");
                Ok(tokio::spawn(old.stop_for_handoff()))
            }
            Err(e) => {
                warn!(error = %e, "the writer did not flush for the handoff; stopping it first");
                let report = old.stop_for_handoff().await;
                timer.step("stop_writer");
                Err(report)
            }
        };
        let promoted = standby.promote().await;
        timer.step("promote");
        let report = match stopping {
            Ok(task) => task.await.unwrap_or_else(|e| crate::compute::StopReport {
                timings: StepTimings::default(),
                clean: false,
                image: None,
                error: Some(format!("stop task failed: {e}")),
            }),
            Err(report) => report,
        };
        if let Some(e) = &report.error {
            warn!(error = %e, "the writer did not stop cleanly for the handoff");
        }
        let stop_steps = report.timings.clone();
        match promoted {
            Ok(compute) => {
                let endpoint = compute.endpoint();
                let boot = compute.boot_timings();
                self.exit = compute.exit_watch();
                self.compute = Some(compute);
                let now = now_ms();
                let timings = timer.finish();
                let t2 = timings.clone();
                let reason = format!("handoff: generation {to} promoted in place of {from}");
                self.rec.generation = to;
                let stored = self
                    .scale_update(ScaleState::Steady, reason, move |r| {
                        r.generation = to;
                        r.profile = profile.or(r.profile.take());
                        r.wake_count += 1;
                        r.last_started_ms = Some(now);
                        r.last_boot = Some(boot);
                        r.last_stop = Some(stop_steps);
                        r.last_handoff = Some(t2);
                        r.last_error = None;
                    })
                    .await;
                if let Err(e) = stored {
                    self.stop("store failure").await.ok();
                    return Err(e);
                }
                self.shared.metrics.record_steps("handoff", &timings);
                if self.leases.is_empty() {
                    self.idle_since = Instant::now();
                }
                self.publish();
                Ok((endpoint, timings))
            }
            Err(e) => {
                warn!(error = %e, "promotion failed; starting the database cold instead");
                let msg = format!("handoff: promotion of {to} failed ({e}); started cold");
                let now = now_ms();
                self.scale_update(ScaleState::Aborted, msg.clone(), |r| {
                    r.profile = profile.or(r.profile.take());
                })
                .await?;
                self.transition(ComputeState::Stopped, "handoff promotion failed", |r| {
                    r.target_scale = 0;
                    r.last_stopped_ms = Some(now);
                    r.last_error = Some(msg);
                })
                .await?;
                self.publish();
                let endpoint = self.wake(Instant::now()).await?;
                Ok((endpoint, timer.finish()))
            }
        }
    }

    /// Persist a scale-state change (the compute's state stays) with a transition record.
    async fn scale_update(
        &mut self,
        state: ScaleState,
        reason: String,
        update: impl FnOnce(&mut DatabaseRecord),
    ) -> Result<(), LifecycleError> {
        let mut next = self.rec.clone();
        let now = now_ms();
        let before = next.scale_state;
        next.scale_state = state;
        next.scale_reason = Some(reason.clone());
        next.version += 1;
        update(&mut next);
        let t = Transition {
            database: self.name.clone(),
            from: Some(self.rec.state),
            to: next.state,
            generation: next.generation,
            at_ms: now,
            reason: format!("scale {before} -> {state}: {reason}"),
            profile: Some(self.shared.config.profile_of(&next).name),
            bytes_written: self.written_back.take(),
        };
        self.store_record(&next, &t).await?;
        self.recorded(
            &next,
            &t,
            crate::events::EventKind::of_scale_change(before, state),
        );
        info!(from = %before, to = %state, reason, "scale state");
        self.shared.metrics.scale_changed(state);
        self.rec = next;
        self.publish();
        Ok(())
    }

    /// The database's roles, as the compute installs them.
    async fn role_specs(&self) -> Result<Vec<RoleSpec>, LifecycleError> {
        let roles = self.shared.store.roles(&self.name).await?;
        Ok(roles
            .into_iter()
            .map(|r| RoleSpec {
                name: r.name,
                verifier: r.verifier,
            })
            .collect())
    }

    async fn apply_roles(&mut self) -> Result<(), LifecycleError> {
        let Some(compute) = &self.compute else {
            return Ok(()); // installed at the next start
        };
        let roles = self.role_specs().await?;
        compute.apply_roles(&roles).await
    }

    /// Ask the pre-wake hook, if there is one, whether starting `generation` may go on.
    async fn ask_pre_wake(&mut self, generation: Generation) -> Result<(), LifecycleError> {
        let Some((hook, client)) = self.shared.pre_wake.get() else {
            return Ok(());
        };
        let req = crate::webhooks::PreWakeRequest {
            database: self.name.to_string(),
            generation: generation.0,
            profile: self.shared.config.profile_of(&self.rec).name,
            at: crate::api::model::now_rfc3339(),
        };
        match crate::webhooks::ask_pre_wake(hook, client, &req).await {
            crate::webhooks::Verdict::Allow => {
                self.last_refusal = None;
                Ok(())
            }
            crate::webhooks::Verdict::NoAnswer(why) => {
                warn!(hook = %hook.url, why, "the pre-wake hook gave no verdict: waking anyway");
                self.shared.metrics.pre_wake_unanswered.inc();
                self.last_refusal = None;
                Ok(())
            }
            crate::webhooks::Verdict::Refuse(message) => {
                info!(hook = %hook.url, message, "the pre-wake hook refused the wake");
                self.shared.metrics.wake_refusals.inc();
                self.last_refusal = Some((Instant::now(), message.clone()));
                Err(LifecycleError::WakeRefused(message))
            }
        }
    }

    /// After `next` was stored with transition `t`: meter it, and publish `event`.
    fn recorded(
        &mut self,
        next: &DatabaseRecord,
        t: &Transition,
        event: Option<crate::events::EventKind>,
    ) {
        self.meter(next, t.at_ms, t.bytes_written);
        if let Some(kind) = event {
            let profile = t.profile.clone();
            self.shared.events.publish(
                kind,
                &self.name,
                next.generation,
                t.at_ms,
                &t.reason,
                profile,
            );
        }
    }

    /// Count the ready time up to `now` in the usage metrics, as the record held (still the
    /// one before `next`) ran it; note a wake, and the bytes a write-back `written`.
    fn meter(&mut self, next: &DatabaseRecord, now: u64, written: Option<u64>) {
        let m = &self.shared.metrics;
        if self.rec.state == ComputeState::Ready {
            let profile = self.shared.config.profile_of(&self.rec).name;
            m.ran(
                self.name.as_str(),
                &profile,
                now.saturating_sub(self.metered_ms),
            );
        }
        if self.rec.state == ComputeState::Booting && next.state == ComputeState::Ready {
            m.woke(self.name.as_str());
        }
        if let Some(bytes) = written {
            m.written_back_bytes
                .get_or_create(&crate::metrics::DatabaseLabel {
                    database: self.name.to_string(),
                })
                .inc_by(bytes);
        }
        self.metered_ms = now;
    }

    /// Persist a state change (compare-and-set) with its transition record.
    async fn transition(
        &mut self,
        to: ComputeState,
        reason: &str,
        update: impl FnOnce(&mut DatabaseRecord),
    ) -> Result<(), LifecycleError> {
        let from = self.rec.state;
        debug_assert!(from.can_become(to), "{from} -> {to}");
        let mut next = self.rec.clone();
        let now = now_ms();
        next.state = to;
        next.state_since_ms = now;
        next.version += 1;
        update(&mut next);
        let t = self.transition_to(&next, now, reason);
        self.store_record(&next, &t).await?;
        self.recorded(
            &next,
            &t,
            crate::events::EventKind::of_state_change(Some(from), to, reason),
        );
        info!(%from, %to, generation = %next.generation, reason, "state");
        self.shared.metrics.state_changed(Some(from), to);
        self.rec = next;
        self.publish();
        Ok(())
    }

    /// The transition from the record held to `next`, at `at_ms`, for `reason` (with the bytes
    /// a stop's write-back just uploaded).
    fn transition_to(&mut self, next: &DatabaseRecord, at_ms: u64, reason: &str) -> Transition {
        Transition {
            database: self.name.clone(),
            from: Some(self.rec.state),
            to: next.state,
            generation: next.generation,
            at_ms,
            reason: reason.to_string(),
            profile: Some(self.shared.config.profile_of(next).name),
            bytes_written: self.written_back.take(),
        }
    }

    /// Compare-and-set `next` over the record held, with transition `t`. On a conflict the
    /// record held is refreshed from the store.
    async fn store_record(
        &mut self,
        next: &DatabaseRecord,
        t: &Transition,
    ) -> Result<(), LifecycleError> {
        self.shared.may_act(&self.name, self.rec.owner_token)?;
        if self
            .shared
            .store
            .update_database(next, self.rec.version, Some(t))
            .await?
        {
            return Ok(());
        }
        if let Some(current) = self.shared.store.database(&self.name).await? {
            self.rec = current;
        }
        self.publish();
        Err(LifecycleError::Conflict(self.name.to_string()))
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn exited(exit: &mut Option<ExitWatch>) {
    match exit {
        Some(w) => {
            if w.wait_for(|e| e.is_some()).await.is_err() {
                // Sender gone without a value: the waiter task ended; treat as exited.
            }
        }
        None => std::future::pending().await,
    }
}

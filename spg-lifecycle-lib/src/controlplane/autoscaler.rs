//! The writer autoscaler: samples every running writer once per interval (CPU of its processes,
//! active sessions, buffer hits, and the clients the gateways hold in their queues), feeds the
//! [`crate::autoscale`] policy, and starts a handoff when the policy asks for a move. Every
//! decision is logged and kept in the database's transitions (the reason of the handoff's first
//! phase); its phases follow as usual.

use std::collections::HashMap;
use std::time::Instant;

use spg_core::{AutoscaleHandoff, DatabaseName, Generation, HandoffPlan};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::{Command, WriterLoad};
use super::ControlPlane;
use crate::autoscale::{AutoscalePolicy, Direction, LoadSample, PolicyState, Rung, Rungs};
use crate::compute::load::ComputeLoad;
use crate::metrics::{DirectionLabel, LoadLabel};

/// What the autoscaler remembers of one database.
struct Watched {
    policy: PolicyState,
    /// The generation and profile sampled last, and its counters with the gateways' queue time.
    last: Option<Previous>,
    /// The profile the writer last ran (kept across the pauses of a handoff).
    profile: Option<String>,
}

struct Previous {
    generation: Generation,
    load: ComputeLoad,
    wait_us: u64,
}

impl ControlPlane {
    /// Run the autoscaler until `stop` is cancelled.
    pub(crate) async fn autoscale(self, stop: CancellationToken) {
        let policy = self.shared.config.autoscale.clone();
        info!(ladder = ?policy.ladder, up_window = ?policy.up_window,
              down_window = ?policy.down_window, min_dwell = ?policy.min_dwell, "autoscaler on");
        let mut watched: HashMap<DatabaseName, Watched> = HashMap::new();
        let mut tick = tokio::time::interval(policy.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let names = self.names();
            watched.retain(|db, _| names.contains(db));
            for db in names {
                let w = watched.entry(db.clone()).or_insert_with(|| Watched {
                    policy: PolicyState::new(Instant::now()),
                    last: None,
                    profile: None,
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.autoscale_step(&policy, &db, w) => {}
                }
            }
        }
    }

    fn rung(&self, name: &str) -> Option<Rung> {
        self.shared.config.profile_named(name).map(|p| Rung {
            name: p.name.clone(),
            cores: p
                .limits
                .cpu_millicores
                .map_or(1.0, |m| f64::from(m) / 1000.0),
        })
    }

    async fn autoscale_step(&self, policy: &AutoscalePolicy, db: &DatabaseName, w: &mut Watched) {
        let Ok(WriterLoad {
            generation,
            profile,
            load,
        }) = self.ask(db, |reply| Command::Load { reply }).await
        else {
            // Not running, or a handoff under way: the next generation starts a new history.
            w.last = None;
            return;
        };
        let census = self.census(db).await;
        if w.profile.as_ref().is_some_and(|p| *p != profile) {
            // The profile changed (also by a manual handoff): it dwells from now.
            w.policy.changed(load.at);
        }
        w.profile = Some(profile.clone());
        let prev = w.last.replace(Previous {
            generation,
            load,
            wait_us: census.wait_us,
        });
        let prev = match prev {
            Some(prev) if prev.generation == generation => prev,
            _ => {
                // A new history: a new generation, or the first look after a pause.
                w.policy.restart(load.at);
                return;
            }
        };
        let secs = load
            .at
            .saturating_duration_since(prev.load.at)
            .as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        let sample = LoadSample {
            at: load.at,
            cpu_cores: per_s(load.cpu_us, prev.load.cpu_us) / 1e6,
            active: f64::from(load.active),
            waiting: per_s(census.wait_us, prev.wait_us) / 1e6,
            blocks_hit: per_s(load.blocks_hit, prev.load.blocks_hit),
            blocks_read: per_s(load.blocks_read, prev.load.blocks_read),
        };
        let (smaller, larger) = policy.neighbours(&profile);
        let Some(current) = self.rung(&profile) else {
            return;
        };
        let rungs = Rungs {
            current,
            smaller: smaller.and_then(|n| self.rung(n)),
            larger: larger.and_then(|n| self.rung(n)),
        };
        let decision = w.policy.observe(policy, &rungs, sample);
        if let Some(m) = w.policy.stats(load.at, policy.up_window) {
            for (signal, v) in [
                ("cpu_cores", m.mean.cpu_cores),
                ("active", m.mean.active),
                ("waiting", m.mean.waiting),
                ("hit_ratio", m.hit_ratio),
            ] {
                self.shared
                    .metrics
                    .autoscale_load
                    .get_or_create(&LoadLabel {
                        database: db.to_string(),
                        signal: signal.into(),
                    })
                    .set(v);
            }
        }
        let Some(d) = decision else {
            return;
        };
        let direction = match d.direction {
            Direction::Up => "up",
            Direction::Down => "down",
        };
        self.shared
            .metrics
            .autoscale_decisions
            .get_or_create(&DirectionLabel {
                direction: direction.into(),
            })
            .inc();
        info!(%db, from = %profile, to = %d.to, direction, reason = %d.reason, "autoscaler decided");
        // Whatever comes of it, the profile dwells from now: a failed attempt is not retried at
        // once.
        w.policy.changed(load.at);
        let Some(to_profile) = self.shared.config.profile_named(&d.to).cloned() else {
            warn!(%db, profile = %d.to, "the autoscaler chose a profile that does not exist");
            return;
        };
        let plan = HandoffPlan {
            database: db.clone(),
            from: generation,
            to_profile,
            drain_timeout: self.shared.config.drain_timeout,
            reason: format!("autoscaler: {}", d.reason),
        };
        match AutoscaleHandoff::begin_handoff(self, plan).await {
            Ok(run) => {
                let db = db.clone();
                self.shared.tasks.spawn(async move {
                    match run.wait().await {
                        Ok(r) => {
                            info!(%db, to = %r.to, frozen_ms = r.frozen_for.as_millis() as u64,
                                       "autoscaler handoff done")
                        }
                        Err(e) => warn!(%db, error = %e, "autoscaler handoff failed"),
                    }
                });
            }
            Err(e) => warn!(%db, error = %e, "the autoscaler could not start a handoff"),
        }
    }
}

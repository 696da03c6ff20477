//! A compute generation prepared as a standby of the running one, for an autoscale handoff
//! (DESIGN §2, "Autoscale handoff").
//!
//! The standby gets its own checkout beside the writer's ([`PageStore::checkout_standby`]: it
//! fences nothing, so an aborted handoff leaves the writer as it was), starts stock PostgreSQL with `standby.signal` and
//! replays the WAL the safekeepers acknowledged, through the same `restore_command` endpoint a
//! cold start uses, in following mode: it never sees WAL the quorum does not hold, so it is never
//! ahead of the log an election picks. Nothing is elected while it prepares; the writer keeps
//! running and committing.
//!
//! Promotion, once the writer has stopped: elect this generation (fencing every older one on
//! the safekeepers) and adopt its checkout (fencing their write-backs), serve the elected log, promote, check that the new timeline branches exactly where the
//! elected log ends, then join the quorum as a cold start does. Any failure leaves nothing
//! running and the checkout released; the caller falls back to a cold start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spg_core::pg_control::HotStandbyMinimums;
use spg_core::{ComputeEndpoint, Election, Generation, Lsn, PageStore, ScaleProfile, TimelineId};
use tracing::{info, warn};

use super::process::PostgresProcess;
use super::wal::{RestoreService, WalSetup};
use super::{
    admin_client, compute_error, config, create_private_dir, mark_unsynced, on_mount,
    socket_dir_for, start_replication, sync_roles, wait_promoted, write_owned, AgentConfig,
    ComputeSpec, RunningCompute, PID_RECORD, PORT_ATTEMPTS,
};
use crate::timing::{StepTimer, StepTimings};
use crate::LifecycleError;

/// How often a standby asks for WAL it did not find (PostgreSQL's default is 5 s).
const RETRY_INTERVAL: &str = "50ms";
/// A standby this close to the end of the writer's log is caught up (a handoff freezes then).
pub const CAUGHT_UP_BYTES: u64 = 1 << 20;

/// A generation running as a standby of the database's writer.
pub struct StandbyCompute {
    cfg: Arc<AgentConfig>,
    page_store: Arc<dyn PageStore>,
    wal: WalSetup,
    spec: ComputeSpec,
    port: u16,
    socket_dir: PathBuf,
    run_dir: PathBuf,
    data_dir: PathBuf,
    process: Option<PostgresProcess>,
    restore: Option<RestoreService>,
    hot: bool,
    timer: StepTimer,
    prepared: StepTimings,
    limits: super::cgroup::CgroupPlacement,
}

impl std::fmt::Debug for StandbyCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyCompute")
            .field("database", &self.spec.database)
            .field("generation", &self.spec.generation)
            .field("port", &self.port)
            .field("hot", &self.hot)
            .finish_non_exhaustive()
    }
}

/// The settings a standby must have at least of its primary's for hot standby: a primary that
/// runs `primary`'s profile.
fn minimums_of(primary: &ScaleProfile) -> HotStandbyMinimums {
    let setting = |name: &str, default: i32| {
        primary
            .settings
            .get(name)
            .and_then(|v| v.trim().parse::<i32>().ok())
            .unwrap_or(default)
    };
    HotStandbyMinimums {
        max_connections: primary.max_connections as i32,
        max_worker_processes: setting("max_worker_processes", 8),
        max_wal_senders: config::MAX_WAL_SENDERS,
        max_prepared_xacts: setting("max_prepared_transactions", 0),
        max_locks_per_xact: setting("max_locks_per_transaction", 64),
    }
}

impl StandbyCompute {
    /// Prepare `spec` as a standby of the running writer, whose profile is `primary`. Returns
    /// once PostgreSQL runs and replays (with hot standby, once it is consistent).
    pub async fn start(
        cfg: Arc<AgentConfig>,
        page_store: Arc<dyn PageStore>,
        wal: WalSetup,
        spec: ComputeSpec,
        primary: &ScaleProfile,
    ) -> Result<StandbyCompute, LifecycleError> {
        let fail = |step: &'static str, reason: String| compute_error(&spec, step, reason);
        let mut timer = StepTimer::new();
        let observed = wal
            .quorum
            .observe(&spec.database)
            .await
            .map_err(LifecycleError::WalQuorum)?
            .ok_or_else(|| fail("standby", "the safekeepers hold no WAL to follow".into()))?;
        timer.step("observe");
        let checkout = page_store
            .checkout_standby(&spec.database, spec.generation, &observed.history)
            .await
            .map_err(LifecycleError::PageStore)?;
        timer.step("checkout");
        let mut standby = StandbyCompute {
            cfg,
            page_store,
            wal,
            run_dir: PathBuf::new(),
            socket_dir: PathBuf::new(),
            data_dir: checkout.data_dir.clone(),
            spec,
            port: 0,
            process: None,
            restore: None,
            hot: false,
            timer,
            prepared: StepTimings::default(),
            limits: super::cgroup::CgroupPlacement::recorded_only("not started"),
        };
        standby.limits = super::place_limits(&standby.cfg, &standby.spec);
        if checkout.image.is_none() {
            standby.discard().await;
            return Err(compute_error(
                &standby.spec,
                "standby",
                "the database has no image to start a standby from".into(),
            ));
        }
        match standby.boot(observed, primary).await {
            Ok(()) => {
                standby.prepared = std::mem::take(&mut standby.timer).finish();
                info!(db = %standby.spec.database, generation = %standby.spec.generation,
                      port = standby.port, hot = standby.hot, "standby ready");
                Ok(standby)
            }
            Err(e) => {
                standby.discard().await;
                Err(e)
            }
        }
    }

    async fn boot(
        &mut self,
        observed: Election,
        primary: &ScaleProfile,
    ) -> Result<(), LifecycleError> {
        let cfg = Arc::clone(&self.cfg);
        let spec = self.spec.clone();
        let fail = |step: &'static str, reason: String| compute_error(&spec, step, reason);
        on_mount(|| cfg.run_as.check_reachable(&self.data_dir))?;
        on_mount(|| cfg.run_as.chown_tree(&self.data_dir))?;
        let run_dir = cfg
            .run_root
            .join(spec.database.as_str())
            .join(format!("g{}", spec.generation.0));
        create_private_dir(&run_dir)?;
        cfg.run_as.chown(&run_dir)?;
        if let Some(parent) = run_dir.parent() {
            cfg.run_as.chown(parent)?;
        }
        let socket_dir = socket_dir_for(&run_dir, &spec.database)?;
        if socket_dir != run_dir {
            create_private_dir(&socket_dir)?;
            cfg.run_as.chown(&socket_dir)?;
        }
        self.run_dir = run_dir.clone();
        self.socket_dir = socket_dir.clone();
        let data_dir = self.data_dir.clone();
        write_owned(
            &cfg,
            &data_dir.join("pg_hba.conf"),
            &config::pg_hba_conf(true, !cfg.listen.is_loopback()),
        )?;
        write_owned(
            &cfg,
            &data_dir.join("pg_ident.conf"),
            &config::pg_ident_conf(&cfg.platform_os_user),
        )?;
        cfg.run_as
            .check_reachable(self.wal.restore_program.parent().unwrap_or(Path::new("/")))?;
        // The writer's timeline, named: `latest` would probe history files upwards from the
        // image's timeline and stop at the first gap (timelines of generations that never
        // wrote), short of the writer's.
        let target = observed.clone();
        let svc = RestoreService::start_following(
            Arc::clone(&self.wal.quorum),
            spec.database.clone(),
            observed,
            data_dir.join("pg_wal"),
        )
        .await?;
        // Hot standby where PostgreSQL allows it: the primary's settings, and those of whoever
        // wrote the image, at most this profile's.
        let image_minimums = svc.control().and_then(|c| c.hot_standby_minimums);
        // A smaller profile's standby takes the larger writer's connection slots (PostgreSQL
        // pauses a hot standby with fewer): it stays hot, and so stays caught up and promotes
        // in place. The promoted writer keeps them until its next start.
        let wanted = [Some(minimums_of(primary)), image_minimums]
            .into_iter()
            .flatten()
            .map(|m| m.max_connections)
            .max()
            .unwrap_or(0);
        if let Ok(wanted) = u32::try_from(wanted) {
            if wanted > self.spec.profile.max_connections {
                info!(db = %spec.database, generation = %spec.generation,
                      profile = %spec.profile.name, max_connections = wanted,
                      "the standby takes the writer's max_connections to stay hot");
                self.spec.profile.max_connections = wanted;
            }
        }
        let spec = self.spec.clone();
        self.hot = config::hot_standby_possible(&spec.profile, Some(minimums_of(primary)))
            && (image_minimums.is_none()
                || config::hot_standby_possible(&spec.profile, image_minimums));
        let conf = config::WalConf {
            local_fsync: !on_mount(|| mark_unsynced(&data_dir))?,
            standby_names: self.wal.quorum.synchronous_standby_names(),
            restore_command: svc.restore_command(&self.wal.restore_program),
            recovery_target_timeline: super::recovery_target(&target, svc.control()),
            hot_standby: self.hot,
        };
        self.restore = Some(svc);
        let _ = on_mount(|| std::fs::remove_file(data_dir.join("recovery.signal")));
        write_owned(&cfg, &data_dir.join("standby.signal"), "")?;
        self.timer.step("configure");

        let mut last_failure = String::new();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = cfg.pick_port()?;
            let mut text =
                config::postgresql_conf(cfg.listen, port, &socket_dir, &spec.profile, Some(&conf));
            text.push_str(&format!(
                "# Standby of the running writer until the handoff promotes it\n\
                 wal_retrieve_retry_interval = '{RETRY_INTERVAL}'\n"
            ));
            write_owned(&cfg, &data_dir.join("postgresql.conf"), &text)?;
            let mut process = PostgresProcess::spawn(
                &cfg.bins,
                &cfg.run_as,
                &data_dir,
                &run_dir.join("postgres.log"),
            )?;
            super::place(&self.limits, &process);
            let want: &[&str] = if self.hot {
                &["ready"]
            } else {
                &["standby", "ready"]
            };
            match process.wait_status(cfg.ready_timeout, want).await {
                Ok(()) => {
                    super::place(&self.limits, &process);
                    let record = format!("{}\n{}\n", process.pid(), data_dir.display());
                    spg_core::fsmode::write_private(&run_dir.join(PID_RECORD), record)
                        .map_err(|e| LifecycleError::io("write", run_dir.join(PID_RECORD), e))?;
                    self.port = port;
                    self.process = Some(process);
                    self.timer.step("start");
                    return Ok(());
                }
                Err(failure) if failure.is_port_in_use() && attempt < PORT_ATTEMPTS => {
                    warn!(db = %spec.database, port, "port taken meanwhile; retrying on another");
                    last_failure = failure.to_string();
                }
                Err(failure) => {
                    process.kill().await;
                    return Err(fail("standby", failure.to_string()));
                }
            }
        }
        Err(fail("standby", last_failure))
    }

    /// The generation.
    pub fn generation(&self) -> Generation {
        self.spec.generation
    }

    /// Wait (at most `timeout`) until replay is within [`CAUGHT_UP_BYTES`] of the end of the
    /// log on the quorum; returns the bytes still behind. A standby that is not hot cannot be
    /// watched: 0 at once.
    pub async fn catch_up(&self, timeout: Duration) -> Result<u64, LifecycleError> {
        if !self.hot {
            return Ok(0);
        }
        let fail = |reason: String| compute_error(&self.spec, "catch up", reason);
        let client = admin_client(&self.socket_dir, self.port)
            .await
            .map_err(fail)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let end = self
                .wal
                .quorum
                .observe(&self.spec.database)
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_or(Lsn(0), |e| e.flush_lsn);
            let at = replay_position(&client)
                .await
                .map_err(fail)?
                .unwrap_or(Lsn(0));
            let behind = end.0.saturating_sub(at.0);
            if behind <= CAUGHT_UP_BYTES || tokio::time::Instant::now() >= deadline {
                return Ok(behind);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether its postmaster still runs.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// Receiver that turns `Some` when its postmaster exits.
    pub fn exit_watch(&self) -> Option<super::process::ExitWatch> {
        self.process.as_ref().map(|p| p.exit_watch())
    }

    /// Whether it accepts read-only sessions while it replays.
    pub fn is_hot(&self) -> bool {
        self.hot
    }

    /// How far it has replayed (hot standbys only; `None` otherwise or when unknown).
    pub async fn replay_lsn(&self) -> Option<Lsn> {
        if !self.hot {
            return None;
        }
        let client = admin_client(&self.socket_dir, self.port).await.ok()?;
        replay_position(&client).await.ok().flatten()
    }

    /// Timings of the preparation (`observe`, `checkout`, `configure`, `start`, `total`).
    pub fn prepare_timings(&self) -> &StepTimings {
        &self.prepared
    }

    /// Promote it, once the writer it followed has stopped: elect this generation, replay the
    /// elected log, promote onto the generation's timeline, check the branch point, join the
    /// quorum and install roles. On error nothing of it keeps running.
    pub async fn promote(mut self) -> Result<RunningCompute, LifecycleError> {
        match self.promote_inner().await {
            Ok(follow_task) => {
                self.timer.step("roles");
                let boot = std::mem::take(&mut self.timer).finish();
                let process = self.process.take();
                if let Some(svc) = self.restore.take() {
                    svc.stop().await;
                }
                info!(db = %self.spec.database, generation = %self.spec.generation,
                      port = self.port, "standby promoted");
                Ok(RunningCompute {
                    profile: self.spec.profile.clone(),
                    flushed: Default::default(),
                    cfg: Arc::clone(&self.cfg),
                    page_store: Arc::clone(&self.page_store),
                    endpoint: ComputeEndpoint {
                        addr: (self.cfg.listen, self.port).into(),
                        generation: self.spec.generation,
                    },
                    database: self.spec.database.clone(),
                    generation: self.spec.generation,
                    socket_dir: self.socket_dir.clone(),
                    run_dir: self.run_dir.clone(),
                    data_dir: self.data_dir.clone(),
                    process,
                    boot,
                    wal: Some(self.wal.clone()),
                    follow_task: Some(follow_task),
                    limits: std::mem::replace(
                        &mut self.limits,
                        super::cgroup::CgroupPlacement::recorded_only("handed over"),
                    ),
                })
            }
            Err(e) => {
                warn!(db = %self.spec.database, generation = %self.spec.generation, error = %e,
                      "standby promotion failed; discarding it");
                self.discard().await;
                Err(e)
            }
        }
    }

    async fn promote_inner(&mut self) -> Result<tokio::task::JoinHandle<()>, LifecycleError> {
        self.timer = StepTimer::new();
        let spec = self.spec.clone();
        let fail = |step: &'static str, reason: String| compute_error(&spec, step, reason);
        let election = self
            .wal
            .quorum
            .elect(&spec.database, spec.generation)
            .await
            .map_err(LifecycleError::WalQuorum)?;
        info!(db = %spec.database, generation = %spec.generation, flush = %election.flush_lsn,
              timeline = %election.new_timeline, "elected (standby)");
        self.timer.step("elect");
        self.page_store
            .adopt(&spec.database, spec.generation)
            .await
            .map_err(LifecycleError::PageStore)?;
        let Some(svc) = &self.restore else {
            return Err(fail("promote", "restore service gone".into()));
        };
        svc.set_election(election.clone());
        if self.process.as_ref().is_none_or(|p| p.has_exited()) {
            return Err(fail("promote", "the standby is not running".into()));
        }
        let mut cut_short = None;
        if self.hot {
            // PostgreSQL checks for a promotion only after a read found no more WAL, which may
            // have happened just before the elected log was served: wait until it replayed to
            // the log's end first, so that the next read failing is the end.
            cut_short = self
                .wait_replayed(election.flush_lsn)
                .await
                .map_err(|r| fail("promote", r))?;
            write_owned(&self.cfg, &self.data_dir.join("promote"), "")?;
            if let Some(p) = &self.process {
                p.signal_promote();
            }
        } else {
            // Without hot standby its progress cannot be watched: restart it into the archive
            // recovery of a cold start, which ends where the elected log ends and promotes.
            self.restart_recovering(&election)
                .await
                .map_err(|r| fail("promote", r))?;
        }
        if let Some(p) = &mut self.process {
            p.wait_status(self.cfg.ready_timeout, &["ready"])
                .await
                .map_err(|f| fail("promote", f.to_string()))?;
        }
        let admin = admin_client(&self.socket_dir, self.port)
            .await
            .map_err(|r| fail("promote", r))?;
        wait_promoted(&admin, self.cfg.ready_timeout)
            .await
            .map_err(|r| fail("promote", r))?;
        self.timer.step("promote");
        check_branch_point(&self.data_dir, &election, cut_short).map_err(|r| fail("promote", r))?;
        let task = start_replication(&self.wal, &spec, &admin, self.cfg.listen, self.port)
            .await
            .map_err(|r| fail("follow", r))?;
        self.timer.step("follow");
        if let Err(r) = sync_roles(&admin, &spec, true).await {
            task.abort();
            return Err(fail("roles", r));
        }
        Ok(task)
    }

    /// Wait until a hot standby has replayed up to `end`. Returns where replay stopped when the
    /// log ends in a record cut short (it never replays to `end` then), else `None`.
    async fn wait_replayed(&self, end: Lsn) -> Result<Option<Lsn>, String> {
        let client = admin_client(&self.socket_dir, self.port).await?;
        let deadline = tokio::time::Instant::now() + self.cfg.ready_timeout;
        let mut last: Option<(Option<Lsn>, tokio::time::Instant)> = None;
        loop {
            let at = replay_position(&client).await?;
            if at.is_some_and(|at| at >= end) {
                return Ok(None);
            }
            // A log that ends in a record cut short is never replayed to its end: done once
            // replay stands still and recovery asked for the last segment again (it read all
            // of it). The branch point check after the promotion confirms where it ended.
            let now = tokio::time::Instant::now();
            let still = match last {
                Some((before, since)) if before == at => now.duration_since(since),
                _ => {
                    last = Some((at, now));
                    Duration::ZERO
                }
            };
            let read_all = self
                .restore
                .as_ref()
                .is_some_and(|svc| svc.times_handed_out(end) >= 2);
            if read_all && still >= Duration::from_millis(100) {
                info!(db = %self.spec.database, replayed = ?at, %end,
                      "the elected log ends in an incomplete record; replay is complete");
                return Ok(at);
            }
            if now >= deadline {
                return Err(format!(
                    "the standby replayed to {} only, the elected log ends at {end}",
                    at.map_or_else(|| "?".to_owned(), |l| l.to_string())
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stop a standby and start it again in archive recovery of `election`'s log, on the same
    /// port, promoting at its end.
    async fn restart_recovering(&mut self, election: &Election) -> Result<(), String> {
        if let Some(p) = self.process.take() {
            let (exit, killed) = p.stop(self.cfg.stop_timeout).await;
            if killed || !exit.success() {
                return Err(format!("the standby did not shut down cleanly ({exit})"));
            }
        }
        let control = on_mount(|| spg_core::pg_control::ControlFile::read(&self.data_dir).ok());
        let Some(svc) = &self.restore else {
            return Err("restore service gone".into());
        };
        let conf = config::WalConf {
            local_fsync: !on_mount(|| mark_unsynced(&self.data_dir)).map_err(|e| e.to_string())?,
            standby_names: self.wal.quorum.synchronous_standby_names(),
            restore_command: svc.restore_command(&self.wal.restore_program),
            recovery_target_timeline: super::recovery_target(election, control.as_ref()),
            hot_standby: false,
        };
        let text = config::postgresql_conf(
            self.cfg.listen,
            self.port,
            &self.socket_dir,
            &self.spec.profile,
            Some(&conf),
        );
        let data_dir = self.data_dir.clone();
        write_owned(&self.cfg, &data_dir.join("postgresql.conf"), &text)
            .map_err(|e| e.to_string())?;
        let _ = on_mount(|| std::fs::remove_file(data_dir.join("standby.signal")));
        write_owned(&self.cfg, &data_dir.join("recovery.signal"), "").map_err(|e| e.to_string())?;
        let process = PostgresProcess::spawn(
            &self.cfg.bins,
            &self.cfg.run_as,
            &data_dir,
            &self.run_dir.join("postgres.log"),
        )
        .map_err(|e| e.to_string())?;
        super::place(&self.limits, &process);
        let record = format!("{}\n{}\n", process.pid(), data_dir.display());
        spg_core::fsmode::write_private(&self.run_dir.join(PID_RECORD), record)
            .map_err(|e| e.to_string())?;
        self.process = Some(process);
        Ok(())
    }

    /// Stop it and give its checkout back (the handoff was aborted, or promotion failed).
    pub async fn discard(&mut self) {
        if let Some(p) = self.process.take() {
            let (_, killed) = p.stop(Duration::from_secs(10)).await;
            if killed {
                warn!(db = %self.spec.database, generation = %self.spec.generation,
                      "standby had to be killed");
            }
        }
        if let Some(svc) = self.restore.take() {
            svc.stop().await;
        }
        if let Err(e) = self
            .page_store
            .release(&self.spec.database, self.spec.generation)
            .await
        {
            warn!(db = %self.spec.database, error = %e, "releasing the standby's checkout");
        }
        if !self.run_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_file(self.run_dir.join(PID_RECORD));
        }
    }
}

/// How far a standby has replayed (`None` before it replayed anything).
async fn replay_position(client: &tokio_postgres::Client) -> Result<Option<Lsn>, String> {
    let row = client
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await
        .map_err(|e| format!("replay position: {e}"))?;
    Ok(row.get::<_, Option<String>>(0).and_then(|t| t.parse().ok()))
}

/// The promoted timeline must branch off exactly where the elected log ends: PostgreSQL writes
/// the branch point into the new timeline's history file. Anything else (the standby replayed
/// WAL the election dropped, or promoted before it had all of it) must never join the quorum.
/// The one exception is a log that ends in a record cut short (`cut_short`: where replay stood
/// still after reading all of it): the branch is then at the end of its last whole record, as in
/// a cold start's recovery, and the partial record is dropped.
fn check_branch_point(
    data_dir: &Path,
    election: &Election,
    cut_short: Option<Lsn>,
) -> Result<(), String> {
    let file = data_dir
        .join("pg_wal")
        .join(format!("{:08X}.history", election.new_timeline.0));
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "promoted, but not onto timeline {} ({}: {e})",
            election.new_timeline,
            file.display()
        )
    })?;
    let last = text
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .ok_or("empty timeline history")?;
    let mut fields = last.split_whitespace();
    let parent: Option<u32> = fields.next().and_then(|t| t.parse().ok());
    let at: Option<Lsn> = fields.next().and_then(|l| l.parse().ok());
    let (Some(parent), Some(at)) = (parent, at) else {
        return Err(format!("unreadable timeline history line {last:?}"));
    };
    let expected_parent = election.recovery_timeline().unwrap_or(TimelineId(1));
    let at_cut = cut_short.is_some_and(|c| c == at && at < election.flush_lsn);
    if at != election.flush_lsn && !at_cut {
        return Err(format!(
            "timeline {} branches off at {at}, but the elected log ends at {}",
            election.new_timeline, election.flush_lsn
        ));
    }
    if parent < expected_parent.0 {
        return Err(format!(
            "timeline {} branches off timeline {parent}, expected {expected_parent}",
            election.new_timeline
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(flush: u64) -> Election {
        Election {
            generation: Generation(3),
            voters: 2,
            source: Some("sk1".into()),
            history: vec![(TimelineId(1), Lsn(0)), (TimelineId(2), Lsn(0x300_0000))],
            flush_lsn: Lsn(flush),
            new_timeline: TimelineId(3),
        }
    }

    #[test]
    fn the_branch_point_must_be_the_end_of_the_elected_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pg_wal")).unwrap();
        let e = election(0x300_1A28);
        assert!(
            check_branch_point(dir.path(), &e, None).is_err(),
            "no history file"
        );
        std::fs::write(
            dir.path().join("pg_wal/00000003.history"),
            "1\t0/3000000\tno recovery target specified\n\n\
             2\t0/3001A28\tno recovery target specified\n",
        )
        .unwrap();
        check_branch_point(dir.path(), &e, None).unwrap();
        let err = check_branch_point(dir.path(), &election(0x300_1B00), None).unwrap_err();
        // A log ending in a record cut short: the branch at the end of the last whole record,
        // exactly where replay stood still, and nowhere else.
        check_branch_point(dir.path(), &election(0x300_1B00), Some(Lsn(0x300_1A28))).unwrap();
        assert!(
            check_branch_point(dir.path(), &election(0x300_1B00), Some(Lsn(0x300_1A00))).is_err()
        );
        assert!(
            check_branch_point(dir.path(), &election(0x300_1A00), Some(Lsn(0x300_1A28))).is_err(),
            "past the elected log"
        );
        assert!(err.contains("branches off at 0/3001A28"), "{err}");
    }

    #[test]
    fn standby_minimums_follow_the_primary_profile() {
        let l2 = crate::compute::config::l2_profile();
        let l1 = crate::compute::config::default_profile();
        // A bigger standby can stay hot under a smaller primary, not the other way round.
        assert!(config::hot_standby_possible(&l2, Some(minimums_of(&l1))));
        assert!(!config::hot_standby_possible(&l1, Some(minimums_of(&l2))));
    }
}

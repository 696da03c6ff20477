//! The compute agent: prepares and runs one PostgreSQL generation of a database.
//!
//! Start: check out the data directory from the [`PageStore`] (initialising it with `initdb` and
//! writing it back as the base image on first start), write the configuration, start stock
//! `postgres` as the compute user on a free loopback port, wait until it accepts connections, and
//! install the database's roles (with their SCRAM verifiers) and the tenant database. Stop: fast
//! shutdown, kill after a deadline, write the directory back as a new image, release it. Every
//! step is timed.

pub mod cgroup;
pub mod config;
pub mod load;
pub mod process;
mod sql;
pub mod standby;
pub mod wal;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spg_core::scram::ScramVerifier;
use spg_core::{
    ComputeEndpoint, DatabaseName, Election, Generation, ImageInfo, PageStore, ReplicationSource,
    RoleName, ScaleProfile,
};
use tokio_postgres::NoTls;
use tracing::{info, warn};

use crate::os_user::RunAs;
use crate::pg_bin::PgBinaries;
use crate::timing::{StepTimer, StepTimings};
use crate::LifecycleError;
use config::ADMIN_ROLE;
use process::{free_loopback_port, is_postgres_on, ExitInfo, ExitWatch, PostgresProcess};
use wal::{RestoreService, WalSetup, REPLICATOR_ROLE};

/// How often a running compute re-asserts to the safekeepers that they follow it (a restarted
/// safekeeper learns it again this way).
const FOLLOW_REFRESH: Duration = Duration::from_secs(1);

/// File in a compute's run directory naming its postmaster, for cleanup after a platform crash.
const PID_RECORD: &str = "spg-postmaster.pid";
/// Start attempts on fresh ports when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// Settings of the agent, shared by all computes of a provisioner.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory for per-database run directories (logs, sockets).
    pub run_root: PathBuf,
    /// PostgreSQL binaries.
    pub bins: PgBinaries,
    /// OS user computes run as.
    pub run_as: RunAs,
    /// OS user of the platform itself (mapped to the admin role for `peer` authentication).
    pub platform_os_user: String,
    /// How long a start may take until PostgreSQL accepts connections.
    pub ready_timeout: Duration,
    /// How long a fast shutdown may take before the compute is killed.
    pub stop_timeout: Duration,
    /// The cgroup hierarchy computes' resource limits are placed in (e.g. `/sys/fs/cgroup`);
    /// `None` records the limits without enforcing them.
    pub cgroup_root: Option<PathBuf>,
}

impl AgentConfig {
    /// Defaults: binaries located as documented on [`PgBinaries::locate`], the compute user from
    /// [`RunAs::detect`], 60 s to become ready, 30 s to shut down.
    pub fn new(run_root: impl Into<PathBuf>, bins: PgBinaries) -> Result<Self, LifecycleError> {
        Ok(AgentConfig {
            run_root: run_root.into(),
            bins,
            run_as: RunAs::detect()?,
            platform_os_user: crate::os_user::current_user_name(),
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            cgroup_root: None,
        })
    }
}

/// A tenant role to install in the compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    /// Role name.
    pub name: RoleName,
    /// Its SCRAM verifier (installed verbatim, so the gateway can log in with the client's key).
    pub verifier: ScramVerifier,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ComputeSpec {
    /// Database.
    pub database: DatabaseName,
    /// Generation of this compute.
    pub generation: Generation,
    /// Tenant roles.
    pub roles: Vec<RoleSpec>,
    /// Writer profile.
    pub profile: ScaleProfile,
}

/// What a stop did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopReport {
    /// Timed steps (`shutdown`, `sync`, `write_back`, `total`).
    pub timings: StepTimings,
    /// Whether the fast shutdown completed (otherwise the compute was killed).
    pub clean: bool,
    /// The image written back, if any.
    pub image: Option<ImageInfo>,
    /// What went wrong after the shutdown, if anything (the compute is stopped regardless).
    pub error: Option<String>,
}

/// A running compute generation.
pub struct RunningCompute {
    cfg: Arc<AgentConfig>,
    page_store: Arc<dyn PageStore>,
    database: DatabaseName,
    generation: Generation,
    endpoint: ComputeEndpoint,
    socket_dir: PathBuf,
    run_dir: PathBuf,
    data_dir: PathBuf,
    process: Option<PostgresProcess>,
    boot: StepTimings,
    wal: Option<WalSetup>,
    follow_task: Option<tokio::task::JoinHandle<()>>,
    /// Where its processes are limited (dropped after they exited).
    limits: cgroup::CgroupPlacement,
    /// The settings it runs with (its profile's, or a larger writer's connection slots when it
    /// was promoted from a standby of one).
    profile: ScaleProfile,
    /// Whether [`RunningCompute::flush_for_handoff`] succeeded.
    flushed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RunningCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCompute")
            .field("database", &self.database)
            .field("generation", &self.generation)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RunningCompute {
    /// Start a compute for `spec`; returns once it accepts connections with roles in place.
    ///
    /// With `wal`, the generation is first elected on the safekeepers (fencing every older one),
    /// PostgreSQL recovers everything the quorum holds and promotes onto the generation's own
    /// timeline, and the safekeepers follow it before any role is installed (so that commit
    /// already needs the quorum).
    pub async fn start(
        cfg: Arc<AgentConfig>,
        page_store: Arc<dyn PageStore>,
        wal: Option<WalSetup>,
        spec: ComputeSpec,
    ) -> Result<RunningCompute, LifecycleError> {
        let mut timer = StepTimer::new();
        let election = match &wal {
            Some(w) => {
                let e = w
                    .quorum
                    .elect(&spec.database, spec.generation)
                    .await
                    .map_err(LifecycleError::WalQuorum)?;
                info!(db = %spec.database, generation = %spec.generation, voters = e.voters,
                      source = ?e.source, flush = %e.flush_lsn, timeline = %e.new_timeline, "elected");
                timer.step("elect");
                Some(e)
            }
            None => None,
        };
        let history = election
            .as_ref()
            .map(|e| e.history.clone())
            .unwrap_or_default();
        let checkout = page_store
            .checkout(&spec.database, spec.generation, &history)
            .await
            .map_err(LifecycleError::PageStore)?;
        timer.step("checkout");
        let wal_boot = wal.as_ref().zip(election);
        let limits = place_limits(&cfg, &spec);
        match Self::boot(
            &cfg,
            &page_store,
            wal_boot,
            &spec,
            &checkout.data_dir,
            checkout.image.is_none(),
            &limits,
            &mut timer,
        )
        .await
        {
            Ok((process, port, socket_dir, run_dir, follow_task)) => {
                let boot = timer.finish();
                info!(db = %spec.database, generation = %spec.generation, port,
                      ms = boot.get("total").map(|d| d.as_millis() as u64), "compute ready");
                Ok(RunningCompute {
                    cfg,
                    page_store,
                    endpoint: ComputeEndpoint {
                        addr: ([127, 0, 0, 1], port).into(),
                        generation: spec.generation,
                    },
                    profile: spec.profile,
                    flushed: Default::default(),
                    database: spec.database,
                    generation: spec.generation,
                    socket_dir,
                    run_dir,
                    data_dir: checkout.data_dir,
                    process: Some(process),
                    boot,
                    wal,
                    follow_task,
                    limits,
                })
            }
            Err(e) => {
                if let Err(re) = page_store.release(&spec.database, spec.generation).await {
                    warn!(db = %spec.database, error = %re, "releasing checkout after failed start");
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    async fn boot(
        cfg: &AgentConfig,
        page_store: &Arc<dyn PageStore>,
        wal: Option<(&WalSetup, Election)>,
        spec: &ComputeSpec,
        data_dir: &Path,
        fresh: bool,
        limits: &cgroup::CgroupPlacement,
        timer: &mut StepTimer,
    ) -> Result<
        (
            PostgresProcess,
            u16,
            PathBuf,
            PathBuf,
            Option<tokio::task::JoinHandle<()>>,
        ),
        LifecycleError,
    > {
        let fail = |step: &'static str, reason: String| compute_error(spec, step, reason);
        on_mount(|| cfg.run_as.check_reachable(data_dir))?;
        on_mount(|| cfg.run_as.chown_tree(data_dir))?;
        if fresh {
            initdb(cfg, data_dir).await.map_err(|r| fail("initdb", r))?;
            let base = page_store
                .write_back(&spec.database, spec.generation)
                .await
                .map_err(LifecycleError::PageStore)?;
            info!(db = %spec.database, lsn = %base.lsn, "base image written");
            timer.step("initdb");
        }

        let run_dir = cfg.run_root.join(spec.database.as_str());
        create_private_dir(&run_dir)?;
        cfg.run_as.chown(&run_dir)?;
        let socket_dir = socket_dir_for(&run_dir, &spec.database)?;
        if socket_dir != run_dir {
            create_private_dir(&socket_dir)?;
            cfg.run_as.chown(&socket_dir)?;
        }
        on_mount(|| {
            write_owned(
                cfg,
                &data_dir.join("pg_hba.conf"),
                &config::pg_hba_conf(wal.is_some()),
            )
        })?;
        let restore = match &wal {
            Some((w, election)) => {
                cfg.run_as
                    .check_reachable(w.restore_program.parent().unwrap_or(Path::new("/")))?;
                let svc = RestoreService::start(
                    Arc::clone(&w.quorum),
                    spec.database.clone(),
                    election.clone(),
                    data_dir.join("pg_wal"),
                )
                .await?;
                on_mount(|| write_owned(cfg, &data_dir.join("recovery.signal"), ""))?;
                let control = svc.control();
                let local_fsync = !on_mount(|| mark_unsynced(data_dir))?;
                let conf = config::WalConf {
                    local_fsync,
                    standby_names: w.quorum.synchronous_standby_names(),
                    restore_command: svc.restore_command(&w.restore_program),
                    recovery_target_timeline: recovery_target(election, control),
                    hot_standby: config::hot_standby_possible(
                        &spec.profile,
                        control.and_then(|c| c.hot_standby_minimums),
                    ),
                };
                Some((svc, conf))
            }
            None => None,
        };
        let result = Self::spawn_and_setup(
            cfg,
            wal,
            spec,
            data_dir,
            &run_dir,
            &socket_dir,
            restore.as_ref().map(|(_, c)| c),
            limits,
            timer,
        )
        .await;
        if let Some((svc, _)) = restore {
            svc.stop().await;
        }
        let (process, port, follow_task) = result?;
        Ok((process, port, socket_dir, run_dir, follow_task))
    }

    #[allow(clippy::too_many_arguments)]
    async fn spawn_and_setup(
        cfg: &AgentConfig,
        wal: Option<(&WalSetup, Election)>,
        spec: &ComputeSpec,
        data_dir: &Path,
        run_dir: &Path,
        socket_dir: &Path,
        wal_conf: Option<&config::WalConf>,
        limits: &cgroup::CgroupPlacement,
        timer: &mut StepTimer,
    ) -> Result<(PostgresProcess, u16, Option<tokio::task::JoinHandle<()>>), LifecycleError> {
        let fail = |step: &'static str, reason: String| compute_error(spec, step, reason);
        on_mount(|| {
            write_owned(
                cfg,
                &data_dir.join("pg_ident.conf"),
                &config::pg_ident_conf(&cfg.platform_os_user),
            )
        })?;

        let mut last_failure = String::new();
        let mut wal_conf = wal_conf.cloned();
        let mut attempt = 0;
        while attempt < PORT_ATTEMPTS {
            attempt += 1;
            let port = free_loopback_port()?;
            on_mount(|| {
                write_owned(
                    cfg,
                    &data_dir.join("postgresql.conf"),
                    &config::postgresql_conf(port, socket_dir, &spec.profile, wal_conf.as_ref()),
                )
            })?;
            if attempt == 1 {
                timer.step("configure");
            }
            let mut process = PostgresProcess::spawn(
                &cfg.bins,
                &cfg.run_as,
                data_dir,
                &run_dir.join("postgres.log"),
            )?;
            place(limits, &process);
            match process.wait_ready(cfg.ready_timeout).await {
                Ok(()) => {
                    // Children forked before the postmaster moved stay where they were.
                    place(limits, &process);
                    let record = format!("{}\n{}\n", process.pid(), data_dir.display());
                    spg_core::fsmode::write_private(&run_dir.join(PID_RECORD), record)
                        .map_err(|e| LifecycleError::io("write", run_dir.join(PID_RECORD), e))?;
                    let admin = match admin_client(socket_dir, port).await {
                        Ok(c) => c,
                        Err(reason) => {
                            process.kill().await;
                            return Err(fail("start", reason));
                        }
                    };
                    if wal.is_some() {
                        match wait_promoted_or_paused(&admin, cfg.ready_timeout).await {
                            Ok(()) => {}
                            Err(None) if wal_conf.as_ref().is_some_and(|c| c.hot_standby) => {
                                // The log holds a larger profile's settings: recover again
                                // without hot standby (nothing checks them then).
                                warn!(db = %spec.database, generation = %spec.generation,
                                      "recovery paused on a larger writer's settings; \
                                       recovering without hot standby");
                                drop(admin);
                                let _ = process.stop(cfg.stop_timeout).await;
                                if let Some(c) = wal_conf.as_mut() {
                                    c.hot_standby = false;
                                }
                                attempt -= 1;
                                continue;
                            }
                            Err(reason) => {
                                process.kill().await;
                                let reason = reason.unwrap_or_else(|| "recovery paused".into());
                                return Err(fail("start", reason));
                            }
                        }
                    }
                    timer.step("start");
                    let mut follow_task = None;
                    if let Some((w, _)) = &wal {
                        match start_replication(w, spec, &admin, port).await {
                            Ok(task) => follow_task = Some(task),
                            Err(reason) => {
                                process.kill().await;
                                return Err(fail("follow", reason));
                            }
                        }
                        timer.step("follow");
                    }
                    if let Err(reason) = sync_roles(&admin, spec, wal.is_some()).await {
                        if let Some(t) = follow_task {
                            t.abort();
                        }
                        process.kill().await;
                        return Err(fail("roles", reason));
                    }
                    timer.step("roles");
                    return Ok((process, port, follow_task));
                }
                Err(failure) if failure.is_port_in_use() && attempt < PORT_ATTEMPTS => {
                    warn!(db = %spec.database, port, "port taken meanwhile; retrying on another");
                    last_failure = failure.to_string();
                }
                Err(failure) => {
                    process.kill().await;
                    return Err(fail("start", failure.to_string()));
                }
            }
        }
        Err(fail("start", last_failure))
    }

    /// Where the compute accepts connections.
    pub fn endpoint(&self) -> ComputeEndpoint {
        self.endpoint
    }

    /// The settings it runs with.
    pub fn profile(&self) -> &ScaleProfile {
        &self.profile
    }

    /// The directory of the compute's Unix socket, where only the platform's OS user may log in
    /// (as the admin role, by `peer` authentication): for maintenance tools such as `pg_amcheck`.
    pub fn admin_socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Timings of the start.
    pub fn boot_timings(&self) -> &StepTimings {
        &self.boot
    }

    /// Where the profile's resource limits are enforced (the compute's cgroups), or why not.
    pub fn limits(&self) -> &cgroup::CgroupPlacement {
        &self.limits
    }

    /// Receiver that turns `Some` when the postmaster exits.
    pub fn exit_watch(&self) -> Option<ExitWatch> {
        self.process.as_ref().map(|p| p.exit_watch())
    }

    /// Install or update tenant roles in the running compute.
    pub async fn apply_roles(&self, roles: &[RoleSpec]) -> Result<(), LifecycleError> {
        let client = admin_client(&self.socket_dir, self.endpoint.addr.port())
            .await
            .map_err(|reason| self.fail("roles", reason))?;
        client
            .batch_execute(&sql::role_sync_sql(roles))
            .await
            .map_err(|e| self.fail("roles", e.to_string()))
    }

    /// Its load right now (see [`load::ComputeLoad`]): CPU time of the postmaster's process
    /// tree, and PostgreSQL's figures of active sessions and buffer hits.
    pub async fn load(&self) -> Result<load::ComputeLoad, LifecycleError> {
        let pid = self
            .process
            .as_ref()
            .map(|p| p.pid() as u32)
            .ok_or_else(|| self.fail("load", "the compute is not running".into()))?;
        let client = admin_client(&self.socket_dir, self.endpoint.addr.port())
            .await
            .map_err(|reason| self.fail("load", reason))?;
        let rows = client
            .simple_query(load::LOAD_SQL)
            .await
            .map_err(|e| self.fail("load", e.to_string()))?;
        let at = Instant::now();
        let cpu_us = tokio::task::spawn_blocking(move || load::process_tree_cpu_us(pid))
            .await
            .ok()
            .flatten()
            .ok_or_else(|| self.fail("load", "the postmaster is gone".into()))?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| self.fail("load", "the statistics query returned no row".into()))?;
        let num = |i: usize| row.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(load::ComputeLoad {
            at,
            cpu_us,
            active: u32::try_from(num(0)).unwrap_or(u32::MAX),
            blocks_hit: num(1),
            blocks_read: num(2),
        })
    }

    /// Fast shutdown (killed after the configured deadline), write-back, release. With a WAL
    /// quorum, the walsenders hand the shutdown checkpoint to the safekeepers before PostgreSQL
    /// exits; then the safekeepers stop following.
    pub async fn stop(mut self) -> StopReport {
        let mut timer = StepTimer::new();
        let (exit, killed) = self.shut_down().await;
        timer.step("shutdown");
        self.stop_following().await;
        let mut clean = exit.success() && !killed;
        let mut error = None;
        let mut image = None;
        if clean {
            let dir = self.data_dir.clone();
            let synced = tokio::task::spawn_blocking(move || sync_and_unmark(&dir))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            timer.step("sync");
            if let Err(e) = synced {
                clean = false;
                error = Some(format!("syncing the data directory: {e}"));
            }
        }
        if clean {
            match self
                .page_store
                .write_back(&self.database, self.generation)
                .await
            {
                Ok(img) => image = Some(img),
                Err(e) => error = Some(format!("write-back: {e}")),
            }
            timer.step("write_back");
        } else if error.is_none() {
            error = Some(format!("compute did not shut down cleanly ({exit})"));
        }
        self.finish().await;
        StopReport {
            timings: timer.finish(),
            clean,
            image,
            error,
        }
    }

    /// Before a handoff's election: one synchronous commit, after which everything committed
    /// before it (asynchronous commits too) is on the WAL quorum.
    pub async fn flush_for_handoff(&self) -> Result<(), LifecycleError> {
        let client = admin_client(&self.socket_dir, self.endpoint.addr.port())
            .await
            .map_err(|reason| self.fail("flush", reason))?;
        client
            .batch_execute("SET synchronous_commit = on; SELECT txid_current()")
            .await
            .map_err(|e| self.fail("flush", e.to_string()))?;
        self.flushed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Stop for a handoff to a newer generation prepared as its standby. After
    /// [`RunningCompute::flush_for_handoff`], an immediate shutdown (no shutdown checkpoint:
    /// the successor replays the quorum's log, not this directory; it may be elected
    /// meanwhile, which fences this one); otherwise a fast shutdown, which streams the rest
    /// first. Then stop following and give the checkout back without an image (the newer
    /// generation is checked out already, so this one may not write back).
    pub async fn stop_for_handoff(mut self) -> StopReport {
        let mut timer = StepTimer::new();
        let flushed = self.flushed.load(std::sync::atomic::Ordering::SeqCst);
        let (exit, killed) = match self.process.take() {
            Some(p) if flushed => p.stop_immediately(self.cfg.stop_timeout).await,
            p => {
                self.process = p;
                self.shut_down().await
            }
        };
        timer.step("shutdown");
        self.stop_following().await;
        self.finish().await;
        let clean = !killed;
        StopReport {
            timings: timer.finish(),
            clean,
            image: None,
            error: (!clean).then(|| format!("compute did not shut down in time ({exit})")),
        }
    }

    /// Fast shutdown of the postmaster, killed after the configured deadline: how it exited and
    /// whether it had to be killed.
    async fn shut_down(&mut self) -> (ExitInfo, bool) {
        match self.process.take() {
            Some(p) => p.stop(self.cfg.stop_timeout).await,
            None => (
                ExitInfo {
                    code: None,
                    signal: None,
                },
                true,
            ),
        }
    }

    /// Clean up after the postmaster exited on its own (crash): release the checkout.
    pub async fn abandon(mut self) {
        if let Some(p) = self.process.take() {
            p.kill().await;
        }
        self.stop_following().await;
        self.finish().await;
    }

    async fn stop_following(&mut self) {
        if let Some(t) = self.follow_task.take() {
            t.abort();
        }
        if let Some(w) = &self.wal {
            if let Err(e) = w.quorum.unfollow(&self.database, self.generation).await {
                warn!(db = %self.database, error = %e, "safekeepers did not stop following");
            }
        }
    }

    async fn finish(&mut self) {
        if let Err(e) = self
            .page_store
            .release(&self.database, self.generation)
            .await
        {
            warn!(db = %self.database, error = %e, "releasing checkout");
        }
        let _ = std::fs::remove_file(self.run_dir.join(PID_RECORD));
    }

    fn fail(&self, step: &'static str, reason: String) -> LifecycleError {
        LifecycleError::Compute {
            database: self.database.to_string(),
            generation: self.generation.0,
            step,
            reason,
        }
    }
}

/// The cgroups of `spec`'s generation with its profile's limits, or the limits recorded only.
fn place_limits(cfg: &AgentConfig, spec: &ComputeSpec) -> cgroup::CgroupPlacement {
    let limits = &spec.profile.limits;
    let placement = match &cfg.cgroup_root {
        Some(root) => cgroup::CgroupPlacement::create(
            root,
            &cgroup::group_name(&cfg.run_root, spec.database.as_str(), spec.generation.0),
            limits,
        ),
        None => cgroup::CgroupPlacement::recorded_only("no cgroup root configured"),
    };
    info!(db = %spec.database, generation = %spec.generation, profile = %spec.profile.name,
          cpu_millicores = ?limits.cpu_millicores, memory_mb = ?limits.memory_mb,
          enforced = placement.enforced(), reason = ?placement.not_enforced, "resource limits");
    placement
}

/// Run `f`, which touches a (possibly lazily mounted) data directory synchronously, where
/// blocking is allowed. A file operation there may wait for the FUSE server, which fetches the
/// chunk through this process's runtime: on a runtime worker, the fetch's connection task can
/// sit in that very worker's queue (its LIFO slot cannot be stolen) and the two wait on each
/// other until the fetch times out. `block_in_place` hands the worker's queue to another
/// thread first.
fn on_mount<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Move a postmaster (and what it forked so far) into the compute's groups.
fn place(limits: &cgroup::CgroupPlacement, process: &PostgresProcess) {
    if limits.enforced() {
        if let Err(e) = limits.add_tree(process.pid() as u32) {
            warn!(error = %e, "placing the compute in its cgroup failed");
        }
    }
}

/// A failed step of starting the compute of `spec`.
fn compute_error(spec: &ComputeSpec, step: &'static str, reason: String) -> LifecycleError {
    LifecycleError::Compute {
        database: spec.database.to_string(),
        generation: spec.generation.0,
        step,
        reason,
    }
}

/// Stop a postmaster left behind by an earlier run of the platform for `db` (found through the
/// pid record in its run directory): fast shutdown, then kill after `timeout`.
pub async fn cleanup_stale(
    run_root: &Path,
    db: &DatabaseName,
    timeout: Duration,
) -> Result<bool, LifecycleError> {
    // The writer's record, and those of generations prepared as standbys (`g<N>/`).
    let db_dir = run_root.join(db.as_str());
    let mut records = vec![db_dir.join(PID_RECORD)];
    if let Ok(entries) = std::fs::read_dir(&db_dir) {
        records.extend(
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path().join(PID_RECORD)),
        );
    }
    let mut stopped = false;
    for record in records {
        stopped |= stop_recorded(&record, db, timeout).await;
    }
    Ok(stopped)
}

/// Stop the postmaster a pid record names, if it still runs on the recorded data directory;
/// remove the record.
async fn stop_recorded(record: &Path, db: &DatabaseName, timeout: Duration) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Ok(text) = std::fs::read_to_string(record) else {
        return false;
    };
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<i32>().ok());
    let data_dir = lines.next().map(PathBuf::from);
    let mut stopped = false;
    if let (Some(pid), Some(data_dir)) = (pid, data_dir) {
        if is_postgres_on(pid, &data_dir) {
            warn!(%db, pid, "stopping a compute left behind by an earlier run");
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
            let deadline = tokio::time::Instant::now() + timeout;
            while is_postgres_on(pid, &data_dir) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if is_postgres_on(pid, &data_dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                while is_postgres_on(pid, &data_dir) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            stopped = true;
        }
    }
    let _ = std::fs::remove_file(record);
    stopped
}

async fn initdb(cfg: &AgentConfig, data_dir: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(cfg.bins.exe("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", ADMIN_ROLE, "-E", "UTF8", "--no-locale"])
        .args(["--auth-local=peer", "--auth-host=reject"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .kill_on_drop(true);
    if cfg.run_as.switch_user {
        cmd.uid(cfg.run_as.uid).gid(cfg.run_as.gid);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

async fn admin_client(socket_dir: &Path, port: u16) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user(ADMIN_ROLE)
        .dbname("postgres")
        .application_name("spg-agent")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("admin connection: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}

/// Wait until recovery has ended and the compute is promoted (read-write). With `hot_standby`,
/// PostgreSQL reports ready as soon as recovery is consistent, and the admin session connects
/// then: a first session after recovery builds its caches over the lazy mount, which overlaps
/// with the end of recovery (timeline switch, end-of-recovery checkpoint).
async fn wait_promoted(client: &tokio_postgres::Client, timeout: Duration) -> Result<(), String> {
    match wait_promoted_or_paused(client, timeout).await {
        Ok(()) => Ok(()),
        Err(None) => Err("recovery paused: the log was written with larger settings".into()),
        Err(Some(reason)) => Err(reason),
    }
}

/// [`wait_promoted`], telling a paused recovery apart (`Err(None)`): with `hot_standby`,
/// PostgreSQL pauses when the log it replays was written by a compute with larger settings
/// (`max_connections`, ...) than this one's, as after a larger profile's writer.
async fn wait_promoted_or_paused(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<(), Option<String>> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut next_pause_check = started + Duration::from_millis(300);
    loop {
        // A setting, not a function: a function call looks its name up in the catalogs, which
        // over a lazy mount fetches chunks nothing else in the start needs.
        let rows = client
            .simple_query("SHOW in_hot_standby")
            .await
            .map_err(|e| Some(format!("waiting for promotion: {e}")))?;
        let in_recovery = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if !in_recovery {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= next_pause_check {
            // Only when recovery takes a while: this one looks the function up.
            next_pause_check = now + Duration::from_millis(250);
            let rows = client
                .simple_query("SELECT pg_get_wal_replay_pause_state()")
                .await
                .map_err(|e| Some(format!("waiting for promotion: {e}")))?;
            let paused = rows.iter().any(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("paused"),
                _ => false,
            });
            if paused {
                return Err(None);
            }
        }
        if now >= deadline {
            return Err(Some("recovery did not end in time".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Mint this generation's replication password (stored as a SCRAM verifier) and install the
/// tenant roles, in one local-only commit (no safekeeper streams yet), then have the safekeepers
/// follow, and keep re-asserting it while the compute runs.
async fn start_replication(
    w: &WalSetup,
    spec: &ComputeSpec,
    client: &tokio_postgres::Client,
    port: u16,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let password = wal::replication_password();
    let verifier = ScramVerifier::from_password(&password);
    client
        .batch_execute(&format!(
            "SET synchronous_commit = local;\n{}",
            sql::do_block(&[
                sql::replicator_body(&verifier),
                sql::role_sync_body(&spec.roles),
            ])
        ))
        .await
        .map_err(|e| format!("replication role and roles: {e}"))?;
    let source = ReplicationSource {
        host: "127.0.0.1".into(),
        port,
        user: REPLICATOR_ROLE.into(),
        password,
    };
    w.quorum
        .follow(&spec.database, spec.generation, &source)
        .await
        .map_err(|e| format!("safekeepers: {e}"))?;
    let (quorum, db, g) = (
        Arc::clone(&w.quorum),
        spec.database.clone(),
        spec.generation,
    );
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(FOLLOW_REFRESH).await;
            if let Err(e) = quorum.follow(&db, g, &source).await {
                if matches!(e, spg_core::CoreError::StaleGeneration { .. }) {
                    warn!(%db, generation = %g, error = %e, "fenced by a newer generation");
                    return;
                }
                tracing::debug!(%db, generation = %g, error = %e, "re-asserting follow");
            }
        }
    }))
}

/// Install the tenant roles (and the tenant database on the first start), on the admin session.
/// With a WAL quorum the roles are already in (committed with the replication role), and a
/// commit through the quorum waits until the safekeepers stream from the compute: a start
/// returns only once they hold its new timeline and everything before, so even an immediate
/// clean stop leaves it on the quorum.
async fn sync_roles(
    client: &tokio_postgres::Client,
    spec: &ComputeSpec,
    quorum: bool,
) -> Result<(), String> {
    let sql = if quorum {
        // A write (to a catalog the start already read: no function lookups, no new chunks
        // over the lazy mount) whose commit waits for the quorum.
        format!(
            "RESET synchronous_commit;\nALTER ROLE {} NOLOGIN;",
            sql::quote_ident(config::TENANT_GROUP)
        )
    } else {
        sql::role_sync_sql(&spec.roles)
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("installing roles: {e}"))?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&spec.database.as_str()],
        )
        .await
        .map_err(|e| format!("looking up database: {e}"))?;
    if exists.is_none() {
        client
            .batch_execute(&sql::create_database_sql(&spec.database))
            .await
            .map_err(|e| format!("creating database: {e}"))?;
    }
    Ok(())
}

/// `recovery_target_timeline` for recovering a data directory (its `control` file) from
/// `election`'s log: the newest timeline of the log, spelled `current` when the directory's
/// checkpoint is already on it (PostgreSQL then skips a `restore_command` run that checks the
/// history file exists).
fn recovery_target(
    election: &Election,
    control: Option<&spg_core::pg_control::ControlFile>,
) -> String {
    let checkpoint_timeline = control.map(|c| c.timeline);
    match election.recovery_timeline() {
        Some(t) if Some(t) != checkpoint_timeline => t.to_string(),
        _ => "current".to_owned(),
    }
}

/// Create `dir` with mode 0700; missing parents get the default mode so that the compute user
/// can reach it.
fn create_private_dir(dir: &Path) -> Result<(), LifecycleError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| LifecycleError::io("create dir", parent, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(LifecycleError::io("create dir", dir, e)),
    }
}

/// Write a file the compute user owns.
/// Before PostgreSQL runs without `fsync`: record this boot in the data directory (durably), so
/// that after an operating-system crash the directory is rebuilt rather than trusted
/// ([`spg_core::UNSYNCED_MARKER`]). `false` (keep `fsync` on) where the boot cannot be told.
fn mark_unsynced(data_dir: &Path) -> Result<bool, LifecycleError> {
    let Some(boot) = spg_core::boot_id() else {
        return Ok(false);
    };
    let path = data_dir.join(spg_core::UNSYNCED_MARKER);
    let write = || -> std::io::Result<()> {
        let mut f = spg_core::fsmode::create_private(&path)?;
        std::io::Write::write_all(&mut f, format!("{boot}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| LifecycleError::io("write", &path, e))?;
    Ok(true)
}

/// After a clean shutdown of a compute that ran without `fsync`: flush everything it wrote to
/// disk, then drop the marker. A directory without the marker is a no-op.
fn sync_and_unmark(data_dir: &Path) -> Result<(), LifecycleError> {
    let path = data_dir.join(spg_core::UNSYNCED_MARKER);
    if !path.exists() {
        return Ok(());
    }
    let dir = std::fs::File::open(data_dir).map_err(|e| LifecycleError::io("open", data_dir, e))?;
    nix::unistd::syncfs(&dir)
        .map_err(|e| LifecycleError::io("syncfs", data_dir, std::io::Error::from(e)))?;
    std::fs::remove_file(&path).map_err(|e| LifecycleError::io("remove", &path, e))?;
    dir.sync_all()
        .map_err(|e| LifecycleError::io("fsync", data_dir, e))
}

fn write_owned(cfg: &AgentConfig, path: &Path, contents: &str) -> Result<(), LifecycleError> {
    spg_core::fsmode::write_private(path, contents)
        .map_err(|e| LifecycleError::io("write", path, e))?;
    cfg.run_as.chown(path)
}

/// Unix socket paths are limited to 107 bytes; use the run directory when the socket fits there,
/// else a short directory under the system temporary directory.
fn socket_dir_for(run_dir: &Path, db: &DatabaseName) -> Result<PathBuf, LifecycleError> {
    const SOCKET_NAME_LEN: usize = ".s.PGSQL.65535".len() + 1;
    let abs =
        std::path::absolute(run_dir).map_err(|e| LifecycleError::io("resolve", run_dir, e))?;
    if abs.as_os_str().len() + SOCKET_NAME_LEN <= 100 {
        return Ok(abs);
    }
    let tag = spg_core::scram::sha256(abs.as_os_str().as_encoded_bytes());
    Ok(std::env::temp_dir().join(format!(
        "spg-{}-{:02x}{:02x}{:02x}{:02x}",
        db.as_str().chars().take(20).collect::<String>(),
        tag[0],
        tag[1],
        tag[2],
        tag[3]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_dirs_get_short_socket_dirs() {
        let db = DatabaseName::new("shop").unwrap();
        let short = socket_dir_for(Path::new("/tmp/x/shop"), &db).unwrap();
        assert_eq!(short, Path::new("/tmp/x/shop"));
        let long = format!("/tmp/{}/shop", "d".repeat(120));
        let s = socket_dir_for(Path::new(&long), &db).unwrap();
        assert!(s.as_os_str().len() < 60, "{}", s.display());
        assert_eq!(s, socket_dir_for(Path::new(&long), &db).unwrap());
    }
}

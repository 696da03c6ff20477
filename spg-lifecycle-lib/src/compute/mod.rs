//! The compute agent: prepares and runs one PostgreSQL generation of a database.
//!
//! Start: check out the data directory from the [`PageStore`] (initialising it with `initdb` and
//! writing it back as the base image on first start), write the configuration, start stock
//! `postgres` as the compute user on a free loopback port, wait until it accepts connections, and
//! install the database's roles (with their SCRAM verifiers) and the tenant database. Stop: fast
//! shutdown, kill after a deadline, write the directory back as a new image, release it. Every
//! step is timed.

mod admin;
pub use admin::{admin_client_as, admin_client_in};
pub mod cgroup;
pub mod config;
pub mod files;
pub mod load;
pub mod process;
pub mod sql;
pub mod standby;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spg_core::scram::ScramVerifier;
use spg_core::{
    ComputeEndpoint, DatabaseName, Election, Generation, ImageInfo, PageStore, ReplicationSource,
    RoleName, ScaleProfile,
};
use tracing::{info, warn};

use crate::os_user::RunAs;
use crate::pg_bin::PgBinaries;
use crate::timing::{StepTimer, StepTimings};
use crate::LifecycleError;
use process::{ExitInfo, ExitWatch, PostgresProcess};
use wal::{RestoreService, WalSetup, REPLICATOR_ROLE};

use admin::*;
pub use files::cleanup_stale;
use files::*;

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
    /// The address PostgreSQL accepts TCP connections on (default `127.0.0.1`; in a pod, the
    /// pod's IP). On another address than a loopback one, tenants and the safekeepers may log
    /// in (with SCRAM) from any host.
    pub listen: std::net::IpAddr,
    /// The port PostgreSQL listens on (`0`, the default: a free one).
    pub port: u16,
}

impl AgentConfig {
    /// The configured port, or a free one on the listen address.
    pub(crate) fn pick_port(&self) -> Result<u16, LifecycleError> {
        if self.port != 0 {
            return Ok(self.port);
        }
        process::free_port(self.listen)
    }

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
            listen: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 0,
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
                    endpoint: ComputeEndpoint {
                        addr: (cfg.listen, port).into(),
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
                    cfg,
                    page_store,
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
                &config::pg_hba_conf(wal.is_some(), !cfg.listen.is_loopback()),
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
            let port = cfg.pick_port()?;
            on_mount(|| {
                write_owned(
                    cfg,
                    &data_dir.join("postgresql.conf"),
                    &config::postgresql_conf(
                        cfg.listen,
                        port,
                        socket_dir,
                        &spec.profile,
                        wal_conf.as_ref(),
                    ),
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
                        match start_replication(w, spec, &admin, cfg.listen, port).await {
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
                    reason: None,
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

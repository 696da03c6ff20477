//! Provisioners bring compute generations up and down. [`LocalProvisioner`] runs the compute
//! agent in this process; [`process::ProcessProvisioner`] runs one `spg-compute` process per
//! generation and [`kubernetes::KubernetesProvisioner`] one pod per generation, both driving
//! it over the [`agent`](crate::agent) API.

pub mod kubernetes;
pub mod process;

use std::sync::Arc;

use async_trait::async_trait;
use spg_core::{ComputeEndpoint, DatabaseName, Generation, PageStore, ScaleProfile};

use crate::compute::load::ComputeLoad;
use crate::compute::process::ExitWatch;
use crate::compute::standby::StandbyCompute;
use crate::compute::wal::WalSetup;
use crate::compute::{
    cleanup_stale, AgentConfig, ComputeSpec, RoleSpec, RunningCompute, StopReport,
};
use crate::timing::StepTimings;
use crate::LifecycleError;

/// Brings computes up.
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Start a compute for `spec`. Returns once it accepts connections and has the spec's roles
    /// and database in place; on error nothing of it keeps running.
    async fn start(&self, spec: ComputeSpec) -> Result<Box<dyn Compute>, LifecycleError>;

    /// Stop whatever an earlier run of the platform left running for `db` (after the platform
    /// itself was killed). Returns whether something was found.
    async fn cleanup_stale(&self, db: &DatabaseName) -> Result<bool, LifecycleError>;

    /// The platform shuts down (its computes are stopped): end whatever the provisioner keeps
    /// running on its own (spare agents). The default has nothing to end.
    async fn shutdown(&self) {}

    /// Prepare `spec` as a standby of the database's running writer, whose profile is
    /// `primary`, for an autoscale handoff. Returns once it replays the writer's WAL; on error
    /// nothing of it keeps running. The default cannot.
    async fn start_standby(
        &self,
        spec: ComputeSpec,
        primary: &ScaleProfile,
    ) -> Result<Box<dyn Standby>, LifecycleError> {
        let _ = primary;
        Err(LifecycleError::Compute {
            database: spec.database.to_string(),
            generation: spec.generation.0,
            step: "standby",
            reason: "this provisioner cannot prepare standbys".into(),
        })
    }
}

/// A compute generation running as a standby of the writer, as the control plane handles it.
#[async_trait]
pub trait Standby: Send + Sync {
    /// Its generation.
    fn generation(&self) -> Generation;
    /// Whether it accepts read-only sessions while it replays.
    fn is_hot(&self) -> bool;
    /// Whether it still runs (a standby that died is not promoted: the handoff gives up).
    fn is_running(&self) -> bool;
    /// Wait (at most `timeout`) until it has replayed the writer's log to within a few pages
    /// of what the quorum holds; returns how far behind it still is, in bytes. The default
    /// (and a standby that cannot be watched) returns at once.
    async fn catch_up(&self, timeout: std::time::Duration) -> Result<u64, LifecycleError> {
        let _ = timeout;
        Ok(0)
    }
    /// Timings of its preparation.
    fn prepare_timings(&self) -> StepTimings;
    /// Promote it after the writer stopped: elected, caught up with the elected log, promoted,
    /// following by the quorum, roles in place. On error nothing of it keeps running.
    async fn promote(self: Box<Self>) -> Result<Box<dyn Compute>, LifecycleError>;
    /// Stop it and give its checkout back.
    async fn discard(self: Box<Self>);
}

/// A running compute, as the control plane handles it.
#[async_trait]
pub trait Compute: Send + Sync {
    /// Where it accepts connections.
    fn endpoint(&self) -> ComputeEndpoint;

    /// Timings of its start.
    fn boot_timings(&self) -> StepTimings;

    /// A receiver that turns `Some` when the compute exits on its own.
    fn exit_watch(&self) -> Option<ExitWatch>;

    /// Install or update tenant roles while it runs.
    async fn apply_roles(&self, roles: &[RoleSpec]) -> Result<(), LifecycleError>;

    /// The settings it runs with, when known (a handoff prepares its standby to match).
    fn profile(&self) -> Option<ScaleProfile> {
        None
    }

    /// Its load counters now, for the autoscaler. The default has none.
    async fn load(&self) -> Result<ComputeLoad, LifecycleError> {
        Err(LifecycleError::Compute {
            database: String::new(),
            generation: self.endpoint().generation.0,
            step: "load",
            reason: "this compute reports no load".into(),
        })
    }

    /// Stop it: fast shutdown (killed after a deadline), write-back, release.
    async fn stop(self: Box<Self>) -> StopReport;
    /// Before a handoff's election: make everything committed on it durable on the WAL
    /// quorum (asynchronous commits too), so that it may be stopped without a shutdown
    /// checkpoint. The default cannot.
    async fn flush_for_handoff(&self) -> Result<(), LifecycleError> {
        Err(LifecycleError::Compute {
            database: String::new(),
            generation: self.endpoint().generation.0,
            step: "flush",
            reason: "this compute cannot flush for a handoff".into(),
        })
    }

    /// Stop it for a handoff to the standby that replaces it: immediate shutdown after
    /// [`Compute::flush_for_handoff`] (a fast one otherwise), release, no write-back (the
    /// standby's checkout fenced it).
    async fn stop_for_handoff(self: Box<Self>) -> StopReport;

    /// Clean up after it exited on its own.
    async fn abandon(self: Box<Self>);
}

/// Runs computes as local processes.
#[derive(Clone)]
pub struct LocalProvisioner {
    cfg: Arc<AgentConfig>,
    page_store: Arc<dyn PageStore>,
    wal: Option<WalSetup>,
}

impl LocalProvisioner {
    /// A provisioner running computes with `cfg`, on data directories from `page_store`.
    pub fn new(cfg: AgentConfig, page_store: Arc<dyn PageStore>) -> Result<Self, LifecycleError> {
        // Computes reach their run directories through it; nobody else gets in.
        spg_core::fsmode::passage_dir(&cfg.run_root, cfg.run_as.passage_group())
            .map_err(|e| LifecycleError::io("create dir", &cfg.run_root, e))?;
        cfg.run_as.check_reachable(&cfg.run_root)?;
        Ok(LocalProvisioner {
            cfg: Arc::new(cfg),
            page_store,
            wal: None,
        })
    }

    /// Run computes in a WAL quorum: elected on the safekeepers before they start, recovering
    /// from them, committing only once a quorum has the WAL.
    pub fn with_wal(mut self, wal: WalSetup) -> Self {
        self.wal = Some(wal);
        self
    }

    /// The agent settings.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    async fn start(&self, spec: ComputeSpec) -> Result<Box<dyn Compute>, LifecycleError> {
        let compute = RunningCompute::start(
            Arc::clone(&self.cfg),
            Arc::clone(&self.page_store),
            self.wal.clone(),
            spec,
        )
        .await?;
        Ok(Box::new(compute))
    }

    async fn cleanup_stale(&self, db: &DatabaseName) -> Result<bool, LifecycleError> {
        let stopped = cleanup_stale(&self.cfg.run_root, db, self.cfg.stop_timeout).await?;
        if let Some(root) = &self.cfg.cgroup_root {
            let groups =
                crate::compute::cgroup::remove_stale(root, &self.cfg.run_root, db.as_str());
            if groups > 0 {
                tracing::info!(%db, groups, "removing cgroups left by an earlier run");
            }
        }
        Ok(stopped)
    }

    async fn start_standby(
        &self,
        spec: ComputeSpec,
        primary: &ScaleProfile,
    ) -> Result<Box<dyn Standby>, LifecycleError> {
        let Some(wal) = self.wal.clone() else {
            return Err(LifecycleError::Compute {
                database: spec.database.to_string(),
                generation: spec.generation.0,
                step: "standby",
                reason: "standbys follow the WAL quorum, and computes run without one".into(),
            });
        };
        let standby = StandbyCompute::start(
            Arc::clone(&self.cfg),
            Arc::clone(&self.page_store),
            wal,
            spec,
            primary,
        )
        .await?;
        Ok(Box::new(standby))
    }
}

#[async_trait]
impl Standby for StandbyCompute {
    fn generation(&self) -> Generation {
        StandbyCompute::generation(self)
    }
    fn is_hot(&self) -> bool {
        StandbyCompute::is_hot(self)
    }
    fn is_running(&self) -> bool {
        StandbyCompute::is_running(self)
    }
    async fn catch_up(&self, timeout: std::time::Duration) -> Result<u64, LifecycleError> {
        StandbyCompute::catch_up(self, timeout).await
    }
    fn prepare_timings(&self) -> StepTimings {
        StandbyCompute::prepare_timings(self).clone()
    }
    async fn promote(self: Box<Self>) -> Result<Box<dyn Compute>, LifecycleError> {
        let running = StandbyCompute::promote(*self).await?;
        Ok(Box::new(running))
    }
    async fn discard(mut self: Box<Self>) {
        StandbyCompute::discard(&mut self).await
    }
}

#[async_trait]
impl Compute for RunningCompute {
    fn endpoint(&self) -> ComputeEndpoint {
        RunningCompute::endpoint(self)
    }

    fn boot_timings(&self) -> StepTimings {
        RunningCompute::boot_timings(self).clone()
    }

    fn exit_watch(&self) -> Option<ExitWatch> {
        RunningCompute::exit_watch(self)
    }

    async fn apply_roles(&self, roles: &[RoleSpec]) -> Result<(), LifecycleError> {
        RunningCompute::apply_roles(self, roles).await
    }

    async fn load(&self) -> Result<ComputeLoad, LifecycleError> {
        RunningCompute::load(self).await
    }

    fn profile(&self) -> Option<ScaleProfile> {
        Some(RunningCompute::profile(self).clone())
    }

    async fn stop(self: Box<Self>) -> StopReport {
        RunningCompute::stop(*self).await
    }
    async fn flush_for_handoff(&self) -> Result<(), LifecycleError> {
        RunningCompute::flush_for_handoff(self).await
    }
    async fn stop_for_handoff(self: Box<Self>) -> StopReport {
        RunningCompute::stop_for_handoff(*self).await
    }

    async fn abandon(self: Box<Self>) {
        RunningCompute::abandon(*self).await
    }
}

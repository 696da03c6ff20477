//! Provisioners bring compute generations up and down. [`LocalProvisioner`] runs them as local
//! processes through the compute agent; a Kubernetes provisioner will implement the same traits.

use std::sync::Arc;

use async_trait::async_trait;
use spg_core::{ComputeEndpoint, DatabaseName, PageStore};

use crate::compute::process::ExitWatch;
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

    /// Stop it: fast shutdown (killed after a deadline), write-back, release.
    async fn stop(self: Box<Self>) -> StopReport;

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
        std::fs::create_dir_all(&cfg.run_root)
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
        cleanup_stale(&self.cfg.run_root, db, self.cfg.stop_timeout).await
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

    async fn stop(self: Box<Self>) -> StopReport {
        RunningCompute::stop(*self).await
    }

    async fn abandon(self: Box<Self>) {
        RunningCompute::abandon(*self).await
    }
}

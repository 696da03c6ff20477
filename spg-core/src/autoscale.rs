use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoreResult, DatabaseName, Generation};

/// A writer profile: the size of a compute generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleProfile {
    /// Profile name, e.g. `L1`, `L2`.
    pub name: String,
    /// `shared_buffers` in MiB.
    pub shared_buffers_mb: u32,
    /// `max_connections` of the compute.
    pub max_connections: u32,
}

/// What a handoff should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffPlan {
    /// The database.
    pub database: DatabaseName,
    /// The generation expected to be running now; the handoff is refused if another runs.
    pub from: Generation,
    /// The profile of the new generation.
    pub to_profile: ScaleProfile,
    /// How long to wait for in-flight transactions before giving up and unfreezing.
    #[serde(with = "crate::lease::duration_ms")]
    pub drain_timeout: Duration,
}

/// What a finished handoff did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffReport {
    /// The generation that was replaced.
    pub from: Generation,
    /// The generation now running.
    pub to: Generation,
    /// How long new work was held back.
    #[serde(with = "crate::lease::duration_ms")]
    pub frozen_for: Duration,
}

/// Replacing a database's writer by a new generation (bigger or smaller) without client errors
/// (DESIGN §2, "Autoscale handoff").
///
/// Contract:
/// - The new generation is prepared as a hot standby of the old one before anything is frozen.
/// - New work is frozen at the gateways (it waits, it is not failed), in-flight transactions
///   drain within `drain_timeout`; on timeout the handoff is aborted, work unfrozen, the old
///   generation keeps running, and `Timeout` is returned.
/// - Sessions with state that cannot move delay the handoff; they are never broken.
/// - The old generation is fenced before the new one promotes: at no instant can both have
///   commits acknowledged.
#[async_trait]
pub trait AutoscaleHandoff: Send + Sync {
    /// Run a handoff according to `plan`.
    async fn handoff(&self, plan: HandoffPlan) -> CoreResult<HandoffReport>;
}

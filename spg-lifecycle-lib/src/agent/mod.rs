//! The compute agent as its own process: `spg-compute` runs one generation of one database (a
//! local child of the control plane, or a Kubernetes pod), and the control plane drives it over
//! a small HTTPS API.
//!
//! Why the control plane drives and the agent answers (rather than the agent reporting in): the
//! control plane is already the one place that decides (generations are bumped there by
//! compare-and-set, and every step of a lifecycle is a request it awaits); an agent that only
//! answers holds no platform state, needs no address of any control plane, and is the same for a
//! child process and a pod. The one thing the control plane must learn unasked, that a compute
//! ended on its own, it learns by a long poll of [`AgentStatus`] plus what the host says (the
//! child process exited, the pod failed).
//!
//! The API (every route but `/healthz` and `/readyz` needs `Authorization: Bearer <key>`):
//!
//! | route | body → answer | does |
//! |---|---|---|
//! | `POST /v1/start` | [`StartRequest`] → [`Started`] | [`RunningCompute::start`](crate::compute::RunningCompute::start) |
//! | `POST /v1/standby` | [`StandbyRequest`] → [`StandbyStarted`] | prepare a standby of the writer |
//! | `POST /v1/catch-up` | [`CatchUpRequest`] → [`CaughtUp`] | wait until the standby replayed the log |
//! | `POST /v1/promote` | → [`Started`] | promote the standby |
//! | `POST /v1/roles` | [`RolesRequest`] → `204` | install or update roles |
//! | `GET /v1/load` | → [`LoadSample`] | a load sample for the autoscaler |
//! | `POST /v1/flush` | → `204` | make everything committed durable on the quorum (handoff) |
//! | `POST /v1/stop` | → [`StopReport`](crate::compute::StopReport) | fast shutdown, write-back, release |
//! | `POST /v1/stop-for-handoff` | → [`StopReport`](crate::compute::StopReport) | stop for the successor |
//! | `POST /v1/abandon` | → `204` | clean up after an exit; discard a standby |
//! | `GET /v1/status?wait_ms=N` | → [`AgentStatus`] | what runs; waits up to `N` ms for an exit |
//! | `GET /readyz` | → `200`/`503` | a compute or standby runs (the pod's readiness) |
//!
//! Errors are [`AgentError`] bodies: the failed step and why.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};
use spg_core::scram::ScramVerifier;
use spg_core::{DatabaseName, Generation, RoleName, ScaleProfile};

use crate::compute::process::ExitInfo;
use crate::compute::{ComputeSpec, RoleSpec};
use crate::timing::StepTimings;
use crate::LifecycleError;

/// The line `spg-compute` prints on its standard output once it listens (followed by the
/// address), for the local provisioner that started it on port 0.
pub const LISTENING_LINE: &str = "spg-compute listening on ";

/// A role as it crosses the wire: its name and SCRAM verifier in PostgreSQL's text form.
#[derive(Clone, Serialize, Deserialize)]
pub struct RoleWire {
    /// Role name.
    pub name: String,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>`.
    pub verifier: String,
}

impl std::fmt::Debug for RoleWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleWire")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What to run, as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecWire {
    /// Database.
    pub database: String,
    /// Generation.
    pub generation: u64,
    /// Tenant roles.
    pub roles: Vec<RoleWire>,
    /// Writer profile.
    pub profile: ScaleProfile,
}

impl From<&ComputeSpec> for SpecWire {
    fn from(s: &ComputeSpec) -> Self {
        SpecWire {
            database: s.database.to_string(),
            generation: s.generation.0,
            roles: roles_to_wire(&s.roles),
            profile: s.profile.clone(),
        }
    }
}

impl TryFrom<SpecWire> for ComputeSpec {
    type Error = LifecycleError;
    fn try_from(w: SpecWire) -> Result<Self, LifecycleError> {
        Ok(ComputeSpec {
            database: DatabaseName::new(w.database)
                .map_err(|e| LifecycleError::invalid("database", e.to_string()))?,
            generation: Generation(w.generation),
            roles: roles_from_wire(w.roles)?,
            profile: w.profile,
        })
    }
}

/// Roles for the wire.
pub fn roles_to_wire(roles: &[RoleSpec]) -> Vec<RoleWire> {
    roles
        .iter()
        .map(|r| RoleWire {
            name: r.name.to_string(),
            verifier: r.verifier.to_postgres_string(),
        })
        .collect()
}

/// Roles from the wire; a bad name or verifier is an error naming it.
pub fn roles_from_wire(roles: Vec<RoleWire>) -> Result<Vec<RoleSpec>, LifecycleError> {
    roles
        .into_iter()
        .map(|r| {
            Ok(RoleSpec {
                name: RoleName::new(r.name)
                    .map_err(|e| LifecycleError::invalid("role", e.to_string()))?,
                verifier: ScramVerifier::parse(&r.verifier)
                    .map_err(|e| LifecycleError::invalid("verifier", e.to_string()))?,
            })
        })
        .collect()
}

/// `POST /v1/start`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    /// What to run.
    pub spec: SpecWire,
}

/// A writer runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// The port PostgreSQL accepts connections on (on the agent's host).
    pub port: u16,
    /// The settings it runs with.
    pub profile: ScaleProfile,
    /// Timings of its start (for a promotion, of the promotion).
    pub timings: StepTimings,
}

/// `POST /v1/standby`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyRequest {
    /// What to prepare.
    pub spec: SpecWire,
    /// The running writer's profile.
    pub primary: ScaleProfile,
}

/// A standby replays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyStarted {
    /// Whether it accepts read-only sessions while it replays.
    pub hot: bool,
    /// Timings of its preparation.
    pub timings: StepTimings,
}

/// `POST /v1/catch-up`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CatchUpRequest {
    /// How long to wait, in milliseconds.
    pub timeout_ms: u64,
}

/// How far the standby still is behind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CaughtUp {
    /// Bytes of log behind the quorum's end.
    pub behind: u64,
}

/// `POST /v1/roles`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolesRequest {
    /// The roles to install or update.
    pub roles: Vec<RoleWire>,
}

/// A load sample ([`ComputeLoad`](crate::compute::load::ComputeLoad) without the instant, which
/// the caller takes when the answer arrives).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LoadSample {
    /// CPU time of the postmaster's processes, in microseconds.
    pub cpu_us: u64,
    /// Active sessions.
    pub active: u32,
    /// Shared-buffer hits.
    pub blocks_hit: u64,
    /// Blocks read.
    pub blocks_read: u64,
}

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing asked of it yet.
    Idle,
    /// A start or standby preparation is under way.
    Starting,
    /// A writer runs.
    Running,
    /// A standby replays.
    Standby,
    /// Its compute ended on its own.
    Exited,
    /// It was stopped, abandoned or discarded; it has nothing left to do.
    Done,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// What it is doing.
    pub phase: Phase,
    /// The generation it runs, once asked to.
    pub generation: Option<u64>,
    /// How its compute ended, in [`Phase::Exited`].
    pub exit: Option<ExitInfo>,
}

/// The body of an agent's error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentError {
    /// The step that failed (`elect`, `checkout`, `start`, `roles`, ...).
    pub step: String,
    /// Why.
    pub reason: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
}

/// The step names an agent reports, as the `'static` names [`LifecycleError::Compute`] carries.
pub fn known_step(step: &str) -> &'static str {
    const STEPS: &[&str] = &[
        "elect",
        "checkout",
        "initdb",
        "configure",
        "start",
        "follow",
        "roles",
        "standby",
        "catch_up",
        "promote",
        "load",
        "flush",
        "stop",
        "launch",
        "agent",
        "request",
    ];
    STEPS
        .iter()
        .find(|s| **s == step)
        .copied()
        .unwrap_or("agent")
}

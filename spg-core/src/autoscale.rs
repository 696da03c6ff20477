use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
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
    /// Further PostgreSQL settings of the profile (name → value, e.g. `work_mem` → `16MB`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Resources the compute may use.
    #[serde(default)]
    pub limits: ComputeLimits,
}

/// Resource limits of a compute generation: enforced with cgroups where the machine lets the
/// platform create them, recorded (and reported as not enforced) where it does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeLimits {
    /// CPU, in thousandths of a core (`1500`: one and a half cores).
    pub cpu_millicores: Option<u32>,
    /// Memory, in MiB.
    pub memory_mb: Option<u32>,
}

impl ScaleProfile {
    /// Check the profile: a usable name, sizes PostgreSQL accepts, setting names that are
    /// PostgreSQL identifiers and none of the settings the platform owns.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!(
                "profile name {:?} is not 1-32 of [A-Za-z0-9_-]",
                self.name
            ));
        }
        if self.shared_buffers_mb < 1 {
            return Err("shared_buffers must be at least 1 MB".into());
        }
        if !(2..=10_000).contains(&self.max_connections) {
            return Err("max_connections must be between 2 and 10000".into());
        }
        for (k, v) in &self.settings {
            let ident = !k.is_empty()
                && k.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                });
            if !ident {
                return Err(format!(
                    "setting name {k:?} is not a PostgreSQL parameter name"
                ));
            }
            if RESERVED_SETTINGS.contains(&k.as_str()) {
                return Err(format!("setting {k} is managed by the platform"));
            }
            if v.contains(['\n', '\r', '\0']) {
                return Err(format!("setting {k} has a line break or NUL in its value"));
            }
        }
        if self.limits.cpu_millicores == Some(0) || self.limits.memory_mb == Some(0) {
            return Err("resource limits must be positive".into());
        }
        Ok(())
    }
}

/// Settings the compute agent writes itself: a profile cannot change them.
pub const RESERVED_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_permissions",
    "max_connections",
    "shared_buffers",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "max_wal_senders",
    "synchronous_standby_names",
    "restore_command",
    "archive_command",
    "archive_mode",
    "recovery_target_timeline",
    "hot_standby",
    "primary_conninfo",
    "password_encryption",
    "hba_file",
    "ident_file",
    "data_directory",
    "config_file",
    "shared_preload_libraries",
    "logging_collector",
    "log_destination",
];

/// Where a database's autoscale handoff stands (the API's `scale_state`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ScaleState {
    /// No handoff in progress.
    #[default]
    Steady,
    /// The next generation is being brought up as a standby of the writer; the handoff waits
    /// here, too, for a window without pinned sessions.
    Preparing,
    /// New work is held back at every gateway.
    Frozen,
    /// Waiting until no transaction is in flight on the writer (time-boxed).
    Draining,
    /// The writer is being stopped and the standby promoted; gateways switch to it.
    Switching,
    /// The last handoff gave up (the reason is kept); the writer runs on unchanged.
    Aborted,
}

impl ScaleState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleState::Steady => "steady",
            ScaleState::Preparing => "preparing",
            ScaleState::Frozen => "frozen",
            ScaleState::Draining => "draining",
            ScaleState::Switching => "switching",
            ScaleState::Aborted => "aborted",
        }
    }

    /// Whether a handoff is in progress.
    pub fn in_progress(self) -> bool {
        !matches!(self, ScaleState::Steady | ScaleState::Aborted)
    }
}

impl std::fmt::Display for ScaleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Why (kept in the database's transitions): `requested through the API`, `autoscaler: …`.
    #[serde(default)]
    pub reason: String,
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
    /// Milliseconds per phase (`prepare`, `pinned_wait`, `drain`, `switch`, `frozen`, `total`).
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,
}

/// A handoff under way ([`AutoscaleHandoff::begin_handoff`]). Dropping it does not stop the
/// handoff: it runs to its end, and its progress is the database's [`ScaleState`].
pub struct HandoffRun {
    /// The generation the writer is being handed to.
    pub to: Generation,
    outcome: Pin<Box<dyn Future<Output = CoreResult<HandoffReport>> + Send>>,
}

impl HandoffRun {
    /// A handoff to generation `to` whose end `outcome` resolves to.
    pub fn new(
        to: Generation,
        outcome: impl Future<Output = CoreResult<HandoffReport>> + Send + 'static,
    ) -> Self {
        HandoffRun {
            to,
            outcome: Box::pin(outcome),
        }
    }

    /// Wait for the handoff's end.
    pub async fn wait(self) -> CoreResult<HandoffReport> {
        self.outcome.await
    }
}

impl std::fmt::Debug for HandoffRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffRun")
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// Replacing a database's writer by a new generation (bigger or smaller) without client errors
/// (DESIGN §2, "Autoscale handoff"). What the control plane's API and its autoscaler call.
///
/// Contract:
/// - The new generation is prepared as a hot standby of the old one before anything is frozen.
/// - New work is frozen at the gateways (it waits, it is not failed), in-flight transactions
///   drain within `drain_timeout`; on timeout the handoff is aborted, work unfrozen, the old
///   generation keeps running, and `Timeout` is returned.
/// - Sessions with state that cannot move delay the handoff; they are never broken.
/// - The old generation is fenced before the new one promotes: at no instant can both have
///   commits acknowledged.
/// - [`begin_handoff`](AutoscaleHandoff::begin_handoff) refuses at once, changing nothing,
///   when `plan.from` is not the running generation (`StaleGeneration`), the database does not
///   run, the profile is not valid, or a handoff is already under way; otherwise it returns
///   while the handoff goes on.
#[async_trait]
pub trait AutoscaleHandoff: Send + Sync {
    /// Begin a handoff according to `plan`; it goes on in the background.
    async fn begin_handoff(&self, plan: HandoffPlan) -> CoreResult<HandoffRun>;

    /// Run a handoff according to `plan` to its end.
    async fn handoff(&self, plan: HandoffPlan) -> CoreResult<HandoffReport> {
        self.begin_handoff(plan).await?.wait().await
    }
}

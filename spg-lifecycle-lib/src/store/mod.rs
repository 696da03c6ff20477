//! The control plane's source of truth: databases, roles, transitions. [`StateStore`] is the
//! contract; [`SqliteStateStore`] is the embedded default (PostgreSQL comes later, for several
//! control planes side by side).

mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName, ScaleState};

pub use sqlite::SqliteStateStore;

use crate::timing::StepTimings;
use crate::LifecycleError;

/// Persisted state of one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    /// Name.
    pub name: DatabaseName,
    /// Lifecycle state.
    pub state: ComputeState,
    /// 0 (should be stopped) or 1 (should run).
    pub target_scale: u8,
    /// Generation of the newest compute started (0 before the first start).
    pub generation: Generation,
    /// Bumped by every update; updates are compare-and-set on it.
    pub version: u64,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// When the current state was entered.
    pub state_since_ms: u64,
    /// When a compute last became ready.
    pub last_started_ms: Option<u64>,
    /// When a compute last stopped.
    pub last_stopped_ms: Option<u64>,
    /// Successful starts.
    pub wake_count: u64,
    /// Last failure (boot, stop, crash), cleared by the next successful start.
    pub last_error: Option<String>,
    /// Step timings of the last start.
    pub last_boot: Option<StepTimings>,
    /// Step timings of the last stop.
    pub last_stop: Option<StepTimings>,
    /// The writer profile computes start with (`None`: the control plane's default).
    #[serde(default)]
    pub profile: Option<String>,
    /// Where an autoscale handoff stands.
    #[serde(default)]
    pub scale_state: ScaleState,
    /// Why the scale state is what it is (the profiles involved, what a handoff waits for, why
    /// it gave up).
    #[serde(default)]
    pub scale_reason: Option<String>,
    /// The newest generation handed to a standby: a later start takes a newer one.
    #[serde(default)]
    pub reserved_generation: Option<Generation>,
    /// Step timings of the last completed handoff (ms).
    #[serde(default)]
    pub last_handoff: Option<StepTimings>,
}

impl DatabaseRecord {
    /// A new, never started database.
    pub fn new(name: DatabaseName, now_ms: u64) -> Self {
        DatabaseRecord {
            name,
            state: ComputeState::Stopped,
            target_scale: 0,
            generation: Generation::NONE,
            version: 1,
            created_at_ms: now_ms,
            state_since_ms: now_ms,
            last_started_ms: None,
            last_stopped_ms: None,
            wake_count: 0,
            last_error: None,
            last_boot: None,
            last_stop: None,
            profile: None,
            scale_state: ScaleState::Steady,
            scale_reason: None,
            reserved_generation: None,
            last_handoff: None,
        }
    }
}

/// A tenant role: its password is kept only as a SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRecord {
    /// Database the role belongs to.
    pub database: DatabaseName,
    /// Role name.
    pub name: RoleName,
    /// Verifier.
    pub verifier: ScramVerifier,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
}

/// One state transition of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Database.
    pub database: DatabaseName,
    /// Previous state (`None` at creation).
    pub from: Option<ComputeState>,
    /// New state.
    pub to: ComputeState,
    /// Generation at the time.
    pub generation: Generation,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Why.
    pub reason: String,
}

/// Storage of the control plane's state.
///
/// Contract: every method is atomic; `update_database` is a compare-and-set on
/// [`DatabaseRecord::version`] that also refuses to lower the generation, so two control planes
/// racing to start the same database cannot both win.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Insert a new database with its creation transition. `AlreadyExists` if the name is taken.
    async fn insert_database(
        &self,
        rec: &DatabaseRecord,
        created: &Transition,
    ) -> Result<(), LifecycleError>;

    /// One database.
    async fn database(&self, name: &DatabaseName)
        -> Result<Option<DatabaseRecord>, LifecycleError>;

    /// All databases, by name.
    async fn databases(&self) -> Result<Vec<DatabaseRecord>, LifecycleError>;

    /// Store `rec` if the stored version equals `expected_version` and the stored generation is
    /// not above `rec.generation`, appending `transition` in the same transaction. Returns
    /// `false` (and changes nothing) when the compare fails.
    async fn update_database(
        &self,
        rec: &DatabaseRecord,
        expected_version: u64,
        transition: Option<&Transition>,
    ) -> Result<bool, LifecycleError>;

    /// Insert a role. `AlreadyExists` if the database already has it.
    async fn insert_role(&self, rec: &RoleRecord) -> Result<(), LifecycleError>;

    /// One role.
    async fn role(
        &self,
        db: &DatabaseName,
        name: &RoleName,
    ) -> Result<Option<RoleRecord>, LifecycleError>;

    /// Roles of a database, by name.
    async fn roles(&self, db: &DatabaseName) -> Result<Vec<RoleRecord>, LifecycleError>;

    /// The newest `limit` transitions, newest first, of one database or of all.
    async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError>;

    /// A metadata value (e.g. the API key hash).
    async fn meta(&self, key: &str) -> Result<Option<String>, LifecycleError>;

    /// Set a metadata value.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), LifecycleError>;
}

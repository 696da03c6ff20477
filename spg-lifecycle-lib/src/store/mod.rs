//! The control plane's source of truth: databases, roles, transitions. [`StateStore`] is the
//! contract; [`SqliteStateStore`] is the embedded default and [`PostgresStateStore`] the store
//! several control planes share. `conformance` (feature `testing`) is the suite every
//! implementation passes.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName, ScaleState};

pub use postgres::PostgresStateStore;
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
    /// The fencing token of the ownership the writer of this record holds (0 where control
    /// planes do not share the store). Stores read it from the database's current ownership;
    /// [`StateStore::update_database`] refuses a record whose token is not the current one, so
    /// a control plane that lost its ownership cannot write.
    #[serde(default)]
    pub owner_token: u64,
    /// A read-only branch for time-travel reads, deleted after its idle stop.
    #[serde(default)]
    pub ephemeral: bool,
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
            owner_token: 0,
            ephemeral: false,
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
    /// The writer profile in effect after it (what usage is metered by; `None` in records
    /// written before profiles were kept).
    #[serde(default)]
    pub profile: Option<String>,
    /// Bytes the write-back of the stop it ends uploaded to object storage, if one ended with
    /// it.
    #[serde(default)]
    pub bytes_written: Option<u64>,
}

/// Which control plane decides a database's wakes, stops and handoffs: the holder of an
/// expiring lease in the state store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The database.
    pub database: DatabaseName,
    /// Id of the control plane that holds (or last held) the lease; `None` if none ever did.
    pub owner: Option<String>,
    /// Where that control plane's API answers (for forwarding requests to it).
    pub owner_url: Option<String>,
    /// Fencing token: grows with every new term of ownership, never with a renewal.
    pub token: u64,
    /// How long the lease still runs by the store's clock (0: expired or released).
    pub remaining_ms: u64,
}

impl Ownership {
    /// Whether `owner` holds an unexpired lease.
    pub fn held_by(&self, owner: &str) -> bool {
        self.remaining_ms > 0 && self.owner.as_deref() == Some(owner)
    }

    /// Whether anyone holds an unexpired lease.
    pub fn is_held(&self) -> bool {
        self.remaining_ms > 0 && self.owner.is_some()
    }
}

/// A control plane's request to take or renew the ownership of a database.
#[derive(Debug, Clone, Copy)]
pub struct OwnershipClaim<'a> {
    /// The claimant's id (unique per running control plane).
    pub owner: &'a str,
    /// Where its API answers.
    pub owner_url: &'a str,
    /// Lease length from the store's clock at the claim.
    pub ttl_ms: u64,
    /// The token of the term the claimant holds, to renew it; `None` to start a term.
    pub renew: Option<u64>,
}

/// Storage of the control plane's state.
///
/// Contract: every method is atomic; `update_database` is a compare-and-set on
/// [`DatabaseRecord::version`] that also refuses to lower the generation and to write under a
/// stale [`DatabaseRecord::owner_token`], so two control planes racing to start the same
/// database cannot both win, and one that lost its ownership cannot write at all.
/// The `conformance` suite (feature `testing`) checks all of it.
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

    /// Store `rec` if the stored version equals `expected_version`, the stored generation is
    /// not above `rec.generation` and the database's ownership token equals
    /// `rec.owner_token`, appending `transition` in the same transaction. Returns `false` (and
    /// changes nothing) when the compare fails. The stored ownership itself is not changed.
    async fn update_database(
        &self,
        rec: &DatabaseRecord,
        expected_version: u64,
        transition: Option<&Transition>,
    ) -> Result<bool, LifecycleError>;

    /// Delete a database and its roles, with `transition` (its last) appended, if the stored
    /// version equals `expected_version`; `false` (and nothing changed) otherwise or when there
    /// is no such database. Its transitions stay (the history of what ran); the name is free.
    async fn delete_database(
        &self,
        name: &DatabaseName,
        expected_version: u64,
        transition: &Transition,
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

    /// The transitions of `db` from `from_ms` to `to_ms` (inclusive), oldest first, preceded by
    /// the newest one before `from_ms` (the state the span starts in), if any: what usage is
    /// metered from.
    async fn transitions_between(
        &self,
        db: &DatabaseName,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Transition>, LifecycleError>;

    /// A metadata value (e.g. the API key hash).
    async fn meta(&self, key: &str) -> Result<Option<String>, LifecycleError>;

    /// Set a metadata value.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), LifecycleError>;

    /// Take or renew the ownership of `db` and return the ownership as it stands afterwards
    /// (the caller holds it if [`Ownership::held_by`] says so).
    ///
    /// - The holder renews an unexpired lease by naming its token: the lease runs `ttl_ms`
    ///   from now, the token stays.
    /// - A lease nobody holds (never held, released, or expired) is taken: the token grows by
    ///   one, and so does the database's [`DatabaseRecord::version`], so that writes prepared
    ///   under the previous term fail their compare-and-set.
    /// - An unexpired lease of another claimant, or of the same id under another token (a
    ///   restarted control plane), is left alone.
    ///
    /// `DatabaseNotFound` if there is no such database.
    async fn claim_ownership(
        &self,
        db: &DatabaseName,
        claim: &OwnershipClaim<'_>,
    ) -> Result<Ownership, LifecycleError>;

    /// End `owner`'s lease of term `token` now (another control plane may take the database at
    /// once). Returns whether it held that term.
    async fn release_ownership(
        &self,
        db: &DatabaseName,
        owner: &str,
        token: u64,
    ) -> Result<bool, LifecycleError>;

    /// The ownership of every database, by name.
    async fn ownerships(&self) -> Result<Vec<Ownership>, LifecycleError>;
}

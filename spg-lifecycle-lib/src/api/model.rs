//! JSON bodies of the API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spg_core::{ComputeState, DatabaseName, Generation, RoleName, ScaleState};

use crate::store::{RoleRecord, Transition};
use crate::timing::StepTimings;
use crate::DatabaseStatus;

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseView {
    /// Name.
    pub name: DatabaseName,
    /// `stopped`, `booting`, `ready` or `stopping`.
    pub state: ComputeState,
    /// 0 or 1.
    pub target_scale: u8,
    /// Generation of the newest compute.
    pub generation: Generation,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// When the current state was entered (RFC 3339): the last transition time.
    pub state_since: String,
    /// When a compute last became ready.
    pub last_started_at: Option<String>,
    /// When a compute last stopped.
    pub last_stopped_at: Option<String>,
    /// Successful starts.
    pub wake_count: u64,
    /// Leases currently held.
    pub leases: usize,
    /// Compute address while ready.
    pub endpoint: Option<String>,
    /// Last failure.
    pub last_error: Option<String>,
    /// Step timings of the last start (ms).
    pub last_boot: Option<StepTimings>,
    /// Step timings of the last stop (ms).
    pub last_stop: Option<StepTimings>,
    /// The writer profile (`L1`, `L2`, ...).
    pub profile: String,
    /// Where an autoscale handoff stands: `steady`, `preparing`, `frozen`, `draining`,
    /// `switching` or `aborted`.
    pub scale_state: ScaleState,
    /// What the handoff does or waits for, or why it gave up.
    pub scale_reason: Option<String>,
    /// Phase timings of the last completed handoff (ms).
    pub last_handoff: Option<StepTimings>,
    /// A read-only branch, deleted after its idle stop.
    #[serde(default)]
    pub ephemeral: bool,
}

/// Body of `POST /v1/databases/{name}/handoff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HandoffRequest {
    /// The profile of the new writer generation.
    pub profile: String,
}

impl From<DatabaseStatus> for DatabaseView {
    fn from(s: DatabaseStatus) -> Self {
        let r = s.record;
        DatabaseView {
            name: r.name,
            state: r.state,
            target_scale: r.target_scale,
            generation: r.generation,
            created_at: rfc3339(r.created_at_ms),
            state_since: rfc3339(r.state_since_ms),
            last_started_at: r.last_started_ms.map(rfc3339),
            last_stopped_at: r.last_stopped_ms.map(rfc3339),
            wake_count: r.wake_count,
            leases: s.leases,
            endpoint: s.endpoint.map(|e| e.addr.to_string()),
            last_error: r.last_error,
            last_boot: r.last_boot,
            last_stop: r.last_stop,
            profile: s.profile,
            scale_state: r.scale_state,
            scale_reason: r.scale_reason,
            last_handoff: r.last_handoff,
            ephemeral: r.ephemeral,
        }
    }
}

/// A state transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransitionView {
    /// Database.
    pub database: DatabaseName,
    /// Previous state (absent at creation).
    pub from: Option<ComputeState>,
    /// New state.
    pub to: ComputeState,
    /// Generation.
    pub generation: Generation,
    /// When (RFC 3339).
    pub at: String,
    /// Why.
    pub reason: String,
    /// The writer profile after it (absent in records older than profile records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Bytes the write-back it ends uploaded, if one ended with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
}

impl From<Transition> for TransitionView {
    fn from(t: Transition) -> Self {
        TransitionView {
            database: t.database,
            from: t.from,
            to: t.to,
            generation: t.generation,
            at: rfc3339(t.at_ms),
            reason: t.reason,
            profile: t.profile,
            bytes_written: t.bytes_written,
        }
    }
}

/// A role (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleView {
    /// Database.
    pub database: DatabaseName,
    /// Role name.
    pub name: RoleName,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

impl From<RoleRecord> for RoleView {
    fn from(r: RoleRecord) -> Self {
        RoleView {
            database: r.database,
            name: r.name,
            created_at: rfc3339(r.created_at_ms),
        }
    }
}

/// What a database used over a span (`GET /v1/databases/{name}/usage`), metered from its
/// transitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageView {
    /// Database.
    pub database: DatabaseName,
    /// Start of the span (RFC 3339).
    pub from: String,
    /// End of the span (RFC 3339; at most now).
    pub to: String,
    /// Seconds a compute was ready (serving), whatever its profile.
    pub compute_seconds: f64,
    /// Seconds a compute was ready, by writer profile (`L1`, `L2`, ...).
    pub compute_seconds_by_profile: std::collections::BTreeMap<String, f64>,
    /// Starts that became ready within the span.
    pub wakes: u64,
    /// Handoffs to a new writer generation completed within the span.
    pub handoffs: u64,
    /// Bytes the write-backs of the stops within the span uploaded to object storage.
    pub bytes_written_back: u64,
    /// What durable storage keeps for the database now (absent where it is not metered).
    pub stored: Option<spg_core::StoredBytes>,
}

impl UsageView {
    /// The view of `u` for `database`, with what storage keeps for it.
    pub fn new(
        database: DatabaseName,
        u: &crate::usage::Usage,
        stored: Option<spg_core::StoredBytes>,
    ) -> Self {
        UsageView {
            database,
            from: rfc3339(u.from_ms),
            to: rfc3339(u.to_ms),
            compute_seconds: u.ready_ms() as f64 / 1000.0,
            compute_seconds_by_profile: u
                .ready_ms_by_profile
                .iter()
                .map(|(p, ms)| (p.clone(), *ms as f64 / 1000.0))
                .collect(),
            wakes: u.wakes,
            handoffs: u.handoffs,
            bytes_written_back: u.bytes_written,
            stored,
        }
    }
}

/// Body of `POST /v1/databases`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateDatabase {
    /// Name.
    pub name: String,
}

/// Body of `POST /v1/databases/{name}/branches`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchRequest {
    /// The new database's name.
    pub name: String,
    /// Where in the parent's history: `now` (the default), an LSN (`0/16B3748`: everything
    /// written before it), or a UTC moment in RFC 3339 (`2026-12-06T15:00:00Z`: every
    /// transaction committed by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Give the branch's roles new generated passwords (returned once) instead of the parent's.
    #[serde(default)]
    pub regenerate_passwords: bool,
    /// A read-only branch for time-travel reads ("what did this row look like yesterday"):
    /// its roles may read every table and write nothing, and it is deleted after its idle stop.
    #[serde(default)]
    pub ephemeral: bool,
}

/// Response of `DELETE /v1/databases/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeletedView {
    /// The database deleted.
    pub database: String,
}

/// Body of `POST /v1/databases/{name}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreRequest {
    /// The moment to go back to: a UTC moment in RFC 3339 (`2026-12-06T15:00:00Z`: every
    /// transaction committed by then, none after), or an LSN (`0/16B3748`).
    pub to: String,
    /// The name of the branch that keeps the state before (default
    /// `<name>_pre_restore_<UTC time>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_as: Option<String>,
}

/// Response of `POST /v1/databases/{name}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreView {
    /// The database, now at the point (stopped; the next connection wakes it).
    pub database: DatabaseView,
    /// The point asked for.
    pub to: String,
    /// Where its history was cut: the end of the last record it has.
    pub lsn: String,
    /// The branch keeping the state before the restore (restoring from it undoes this one).
    pub kept: DatabaseView,
    /// How long the restore took, in milliseconds.
    pub took_ms: u64,
}

impl From<crate::controlplane::Restored> for RestoreView {
    fn from(r: crate::controlplane::Restored) -> Self {
        RestoreView {
            database: r.status.into(),
            to: r.at.to_string(),
            lsn: r.lsn.to_string(),
            kept: r.kept.into(),
            took_ms: r.took.as_millis() as u64,
        }
    }
}

/// Response of `GET /v1/databases/{name}/history`: how far back its history reaches.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryView {
    /// The database.
    pub database: String,
    /// The first moment a branch can start at (RFC 3339; `null` before its first image).
    pub oldest_at: Option<String>,
    /// The first LSN a branch can start at.
    pub oldest_lsn: Option<String>,
    /// The end of its history (its log's end).
    pub newest_lsn: Option<String>,
    /// Images kept on its current timeline path.
    pub images: u64,
    /// Bytes storage keeps for it: its images (the chunks they name) and archived WAL.
    pub pinned_bytes: Option<u64>,
    /// Its own history window in seconds (`null`: the platform's default, 7 days unless the
    /// pageserver is configured otherwise).
    #[serde(default)]
    pub retention_seconds: Option<u64>,
}

/// Body of `PUT /v1/databases/{name}/retention`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetentionRequest {
    /// The history window in seconds; `null` for the platform's default.
    pub retention_seconds: Option<u64>,
}

/// A role's new password, shown once.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolePassword {
    /// The role.
    pub role: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for RolePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolePassword")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Response of `POST /v1/databases/{name}/branches`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchView {
    /// The new database.
    pub database: DatabaseView,
    /// Its parent.
    pub parent: String,
    /// The point asked for (`now`, an LSN or a moment).
    pub at: String,
    /// Where the parent's history was cut: the end of the last record the branch has.
    pub lsn: String,
    /// Bytes of new objects its first image took (chunks replay changed, its WAL segment).
    pub bytes_written: u64,
    /// How long making it took, in milliseconds.
    pub took_ms: u64,
    /// New role passwords, when asked for (`regenerate_passwords`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passwords: Vec<RolePassword>,
}

impl From<crate::controlplane::Branched> for BranchView {
    fn from(b: crate::controlplane::Branched) -> Self {
        BranchView {
            database: b.status.into(),
            parent: b.parent.to_string(),
            at: b.at.to_string(),
            lsn: b.lsn.to_string(),
            bytes_written: b.bytes_written,
            took_ms: b.took.as_millis() as u64,
            passwords: b
                .passwords
                .iter()
                .map(|(role, pw)| RolePassword {
                    role: role.to_string(),
                    password: pw.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

/// Body of `POST /v1/databases/{name}/roles`: exactly one of `password` and `scram_verifier`.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateRole {
    /// Role name.
    pub name: String,
    /// Plaintext password (hashed at once, never stored or logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A SCRAM-SHA-256 verifier in PostgreSQL's format, instead of a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_verifier: Option<String>,
}

impl std::fmt::Debug for CreateRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRole")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Body of `GET .../roles/{role}/verifier`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifierView {
    /// Verifier in PostgreSQL's format.
    pub scram_verifier: String,
}

/// Body of `POST /v1/databases/{name}/wake`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WakeView {
    /// Compute address.
    pub addr: String,
    /// Compute generation.
    pub generation: Generation,
}

/// Body of `POST /v1/databases/{name}/leases`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AcquireLease {
    /// Who holds it (free text, for logs).
    pub holder: String,
}

/// Error body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Error detail.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`invalid`, `unauthorized`, `forbidden`, `not_found`,
    /// `already_exists`, `too_large`, `too_many_requests`, `unavailable`, `shutting_down`,
    /// `not_owner`, `internal`).
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// Current time for views.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

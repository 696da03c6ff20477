use std::path::PathBuf;

use spg_core::CoreError;
use thiserror::Error;

/// Errors of the lifecycle library (control plane, compute agent, provisioners, API).
#[derive(Debug, Error)]
pub enum LifecycleError {
    /// The database does not exist.
    #[error("database {0:?} does not exist")]
    DatabaseNotFound(String),
    /// The role does not exist.
    #[error("role {role:?} does not exist in database {database:?}")]
    RoleNotFound {
        /// Database.
        database: String,
        /// Role.
        role: String,
    },
    /// The object exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A request was invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The state store failed.
    #[error("state store: {0}")]
    Store(String),
    /// The state store cannot be reached now (connection refused or lost, server starting up
    /// or shutting down): retrying may succeed.
    #[error("state store unavailable: {0}")]
    StoreUnavailable(String),
    /// Another control plane owns the database (its lifecycle is decided there).
    #[error("database {database:?} is owned by control plane {owner:?}")]
    NotOwner {
        /// The database.
        database: String,
        /// The owning control plane's id (`None`: nobody holds it usably right now).
        owner: Option<String>,
        /// Where the owner's API answers.
        url: Option<String>,
    },
    /// A compare-and-set of the state store lost a race.
    #[error("concurrent update of database {0:?}")]
    Conflict(String),
    /// PostgreSQL binaries could not be found or used.
    #[error("PostgreSQL binaries: {0}")]
    PgBin(String),
    /// Host setup (users, permissions) failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A step of starting or stopping a compute failed.
    #[error("compute {database} g{generation}: {step} failed: {reason}")]
    Compute {
        /// Database.
        database: String,
        /// Generation.
        generation: u64,
        /// Step that failed.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// The page store failed.
    #[error("page store: {0}")]
    PageStore(CoreError),
    /// The WAL quorum failed (no quorum reachable, or this generation was fenced).
    #[error("safekeepers: {0}")]
    WalQuorum(CoreError),
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The control plane is shutting down.
    #[error("control plane is shutting down")]
    ShuttingDown,
    /// A pre-wake hook refused the wake; its message is meant for the client.
    #[error("wake refused: {0}")]
    WakeRefused(String),
    /// The API refused a request or could not be reached.
    #[error("API: {message}")]
    Api {
        /// HTTP status, if a response arrived.
        status: Option<u16>,
        /// Server's message or transport error.
        message: String,
    },
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
}

impl LifecycleError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LifecycleError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`LifecycleError::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        LifecycleError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LifecycleError::Conflict(_)
            | LifecycleError::StoreUnavailable(_)
            | LifecycleError::NotOwner { .. }
            | LifecycleError::Timeout(_)
            | LifecycleError::Compute { .. }
            | LifecycleError::Io { .. } => true,
            LifecycleError::PageStore(e) | LifecycleError::WalQuorum(e) => e.is_retryable(),
            LifecycleError::Api { status, .. } => match status {
                None => true,
                Some(s) => *s == 503 || *s == 504 || *s == 409,
            },
            _ => false,
        }
    }
}

impl From<LifecycleError> for CoreError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::DatabaseNotFound(db) => CoreError::DatabaseNotFound(db),
            LifecycleError::RoleNotFound { role, .. } => CoreError::not_found("role", role),
            LifecycleError::AlreadyExists { kind, name } => CoreError::AlreadyExists { kind, name },
            LifecycleError::Invalid { what, reason } => CoreError::Invalid { what, reason },
            LifecycleError::Conflict(what) => CoreError::Conflict(what),
            LifecycleError::Timeout(what) => CoreError::Timeout(what),
            LifecycleError::ShuttingDown => CoreError::ShuttingDown,
            LifecycleError::WakeRefused(message) => CoreError::Refused(message),
            LifecycleError::PageStore(inner) | LifecycleError::WalQuorum(inner) => inner,
            LifecycleError::Api {
                status: Some(404),
                message,
            } => CoreError::not_found("resource", message),
            other if other.is_retryable() => CoreError::Unavailable(other.to_string()),
            other => CoreError::Internal(other.to_string()),
        }
    }
}

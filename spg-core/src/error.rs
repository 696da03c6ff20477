use thiserror::Error;

/// Result alias for the traits of this crate.
pub type CoreResult<T> = Result<T, CoreError>;

/// The error every trait of `spg-core` returns. Implementations map their own errors onto these
/// variants; callers decide on retries from [`CoreError::is_retryable`] rather than from text.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The named database does not exist.
    #[error("database {0:?} does not exist")]
    DatabaseNotFound(String),
    /// The named object (role, lease, image, ...) does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What kind of object was looked up.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The object already exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of object it is.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A request carried a generation older than one the callee has already accepted: the caller
    /// has been fenced and must not retry with the same generation.
    #[error("generation {offered} is stale: generation {current} is already in place")]
    StaleGeneration {
        /// The generation the caller offered.
        offered: u64,
        /// The newest generation the callee knows.
        current: u64,
    },
    /// A compare-and-set lost a race: the caller should re-read and decide again.
    #[error("concurrent update of {0}")]
    Conflict(String),
    /// Input failed validation.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A dependency is temporarily unavailable (compute booting, network, object store); retrying
    /// later may succeed.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish within its deadline; retrying may succeed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The component is shutting down; the caller should not retry against it.
    #[error("shutting down")]
    ShuttingDown,
    /// The platform's policy refused the operation (a pre-wake hook's veto): the message is
    /// the operator's, meant for the client. Not retryable.
    #[error("refused: {0}")]
    Refused(String),
    /// Any other failure of the implementation. Not retryable.
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    /// Whether retrying the same call later may succeed (Pingora-style retry intent).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CoreError::Unavailable(_) | CoreError::Timeout(_) | CoreError::Conflict(_)
        )
    }

    /// Shorthand for [`CoreError::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`CoreError::NotFound`].
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        CoreError::NotFound {
            kind,
            name: name.into(),
        }
    }
}

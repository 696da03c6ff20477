use std::path::PathBuf;

use spg_core::CoreError;
use thiserror::Error;

/// Errors of the storage library.
#[derive(Debug, Error)]
pub enum StorageError {
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
    /// Stored bytes are not what they must be.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// Which file or structure.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A generation older than the newest one seen tried to act.
    #[error("generation {offered} is stale: generation {current} is already in place")]
    StaleGeneration {
        /// The caller's generation.
        offered: u64,
        /// The newest generation seen.
        current: u64,
    },
    /// A safekeeper was sent WAL by a generation it does not follow (not yet reconciled, or
    /// fenced by a newer election).
    #[error("not following generation {0}")]
    NotFollowing(u64),
    /// WAL arrived that does not continue the held WAL.
    #[error("WAL gap: expected data at {expected}, got {got}")]
    WalGap {
        /// The end of the WAL held.
        expected: spg_core::Lsn,
        /// Where the offered data starts.
        got: spg_core::Lsn,
    },
    /// A read asked for WAL this safekeeper does not hold.
    #[error("WAL at {lsn} is not held (held: {start}..{flush})")]
    NotHeld {
        /// The first LSN asked for.
        lsn: spg_core::Lsn,
        /// The first LSN held.
        start: spg_core::Lsn,
        /// The end of the durable WAL.
        flush: spg_core::Lsn,
    },
    /// A peer (a compute's walsender) broke the wire protocol.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The compute answered with an error.
    #[error("compute refused: {message} (SQLSTATE {sqlstate})")]
    Upstream {
        /// The SQLSTATE.
        sqlstate: String,
        /// The server's message.
        message: String,
    },
    /// The generation has no checkout to act on.
    #[error("generation {0} holds no checkout")]
    NotCheckedOut(u64),
    /// A data directory was not shut down cleanly and cannot become an image.
    #[error("data directory is not cleanly shut down (state {0})")]
    NotShutDown(String),
    /// An object-store request failed (retryable unless the error says otherwise).
    #[error("object store {op} {key}: {source}")]
    ObjectStore {
        /// What was being done.
        op: &'static str,
        /// The object's key.
        key: String,
        /// The backend's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An image with this id already exists; images are never replaced.
    #[error("image {0} already exists")]
    ImageExists(crate::image::ImageId),
    /// A stored object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A remote storage service (a pageserver) could not be reached or failed; retryable.
    #[error("{service} unavailable: {reason}")]
    Unavailable {
        /// Which service.
        service: String,
        /// What happened.
        reason: String,
    },
    /// A setting (e.g. an object storage URL) is not usable.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// Which setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The data directory holds something an image cannot represent.
    #[error("unsupported in a data directory: {0}")]
    Unsupported(String),
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<spg_core::pg_control::ControlFileError> for StorageError {
    fn from(e: spg_core::pg_control::ControlFileError) -> Self {
        match e {
            spg_core::pg_control::ControlFileError::Io { path, source } => StorageError::Io {
                op: "read",
                path,
                source,
            },
            spg_core::pg_control::ControlFileError::Corrupt(reason) => StorageError::Corrupt {
                what: "pg_control".into(),
                reason,
            },
        }
    }
}

impl From<StorageError> for CoreError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::StaleGeneration { offered, current } => {
                CoreError::StaleGeneration { offered, current }
            }
            StorageError::Io { .. }
            | StorageError::ObjectStore { .. }
            | StorageError::Unavailable { .. } => CoreError::Unavailable(e.to_string()),
            StorageError::ImageExists(_) => CoreError::Conflict(e.to_string()),
            other => CoreError::Internal(other.to_string()),
        }
    }
}

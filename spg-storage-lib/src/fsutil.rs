//! Crash-safe file helpers.

use std::io::Write;
use std::path::Path;

use crate::StorageError;

/// Replace `path` with `bytes` atomically and durably: write a temporary file, fsync it, rename it
/// over `path`, fsync the directory. A crash at any point leaves either the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = spg_core::fsmode::create_private(&tmp)
            .map_err(|e| StorageError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StorageError::io("write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io("fsync", &tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, e))?;
    sync_dir(dir)
}

/// fsync a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync dir", dir, e))
}

/// Create `dir` (and missing parents) with mode 0700; an existing one is tightened to 0700.
/// Directories a compute's user must pass through are made passages first
/// ([`spg_core::fsmode::passage_dir`]).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StorageError> {
    spg_core::fsmode::private_dir(dir).map_err(|e| StorageError::io("create dir", dir, e))
}

/// Make `dir` (created if missing) a passage for `group` ([`spg_core::fsmode::passage_dir`]).
pub(crate) fn passage_dir(dir: &Path, group: Option<u32>) -> Result<(), StorageError> {
    spg_core::fsmode::passage_dir(dir, group).map_err(|e| StorageError::io("create dir", dir, e))
}

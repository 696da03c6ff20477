use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoreResult, DatabaseName, Generation, Lsn, TimelineId};

/// A durable image of a database: a consistent data directory at an LSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The database.
    pub database: DatabaseName,
    /// The generation that wrote the image.
    pub generation: Generation,
    /// The checkpoint LSN the image is consistent at.
    pub lsn: Lsn,
    /// When the image was written, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Bytes the write-back that returned this uploaded (the chunks and lists object storage
    /// did not have yet); 0 where it is not that write-back's answer, or wrote nothing new.
    #[serde(default)]
    pub bytes_written: u64,
}

/// What durable storage keeps for one database, in bytes as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredBytes {
    /// Images kept.
    pub images: u64,
    /// Bytes of the images' manifests, chunks and chunk lists (shared chunks counted once).
    pub image_bytes: u64,
    /// Bytes of WAL archived to object storage.
    pub wal_archive_bytes: u64,
}

/// A data directory handed to one compute generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// Where the compute's PostgreSQL data directory is.
    pub data_dir: PathBuf,
    /// The image the directory holds; `None` when the database has no image yet, in which case
    /// the directory is empty and the caller initialises it (`initdb`).
    pub image: Option<ImageInfo>,
}

/// Durable database images that computes start from and write back to.
///
/// Contract:
/// - `checkout(db, g, history)` prepares a data directory for generation `g` and fences every
///   older generation: afterwards `write_back` from an older generation fails with
///   `StaleGeneration`. A checkout for a generation not newer than the newest one seen also
///   fails with `StaleGeneration`. `history` is the timeline path the WAL quorum holds
///   ([`crate::Election::history`]; empty without a quorum): the directory starts from an image
///   on that path, never from one a fenced generation wrote after the path branched off it.
/// - `write_back(db, g)` makes the checked-out directory, which must have been shut down
///   cleanly, the database's latest image at its shutdown checkpoint LSN (the store reads the LSN
///   from the directory), atomically: afterwards the next checkout starts from it, and a crash
///   part-way leaves the previous image in place. A freshly initialised directory (`initdb`) is
///   written back the same way to become the base image.
/// - `release(db, g)` gives a checkout back without writing it back (compute crashed or was
///   killed); whatever the backend can still recover from is kept.
/// - An image, once written, is never changed by any generation.
/// - `checkout_standby(db, g, history)` (where the store supports it) prepares a directory for
///   `g` beside the writer's, as a checkout does, but fences nothing: the writer keeps running
///   and can still write back. The standby cannot write back until `adopt(db, g)` makes it the
///   writer, which fences every older generation as a checkout does. That is how an autoscale
///   handoff prepares the next generation while the current one runs; releasing the standby
///   instead (an aborted handoff) leaves the writer as it was.
#[async_trait]
pub trait PageStore: Send + Sync {
    /// Prepare a data directory for generation `generation` of `db`, from an image on `history`.
    async fn checkout(
        &self,
        db: &DatabaseName,
        generation: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout>;

    /// Persist the cleanly shut down directory of `generation` as the new latest image.
    async fn write_back(&self, db: &DatabaseName, generation: Generation) -> CoreResult<ImageInfo>;

    /// Give back the checkout of `generation` without writing it back.
    async fn release(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()>;

    /// The latest image of `db`, if it has one.
    async fn latest_image(&self, db: &DatabaseName) -> CoreResult<Option<ImageInfo>>;

    /// What durable storage keeps for `db` (for usage metering); `None` where the store does
    /// not meter it.
    async fn stored_bytes(&self, _db: &DatabaseName) -> CoreResult<Option<StoredBytes>> {
        Ok(None)
    }

    /// Prepare a directory for generation `generation` of `db` beside the writer's, fencing
    /// nothing (see the trait contract). Stores with one directory per database cannot: the
    /// default fails with `Unavailable`.
    async fn checkout_standby(
        &self,
        db: &DatabaseName,
        generation: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout> {
        let _ = (db, history);
        Err(crate::CoreError::Unavailable(format!(
            "this page store keeps one directory per database: no standby checkout for \
             generation {generation}"
        )))
    }

    /// Make the standby checkout of `generation` the writer's: fence every older generation.
    async fn adopt(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()> {
        let _ = db;
        Err(crate::CoreError::Unavailable(format!(
            "generation {generation} has no standby checkout"
        )))
    }
}

/// A file a compute that runs PostgreSQL with `fsync = off` keeps in its data directory.
///
/// With a WAL quorum, a commit's durability is the quorum's fsync, not the compute's: the data
/// directory is a cache. A killed compute loses nothing (the kernel's page cache still holds its
/// writes), but an operating-system crash can lose any unsynced write. So the compute agent
/// writes this marker, holding the kernel's boot id, before PostgreSQL starts without `fsync`,
/// and removes it only after a clean stop has synced the directory. A [`PageStore`] must not
/// hand out a directory whose marker names another boot ([`lost_unsynced_writes`]): it rebuilds
/// the directory from its image instead, and the WAL quorum supplies what came after.
pub const UNSYNCED_MARKER: &str = "spg_unsynced";

/// The running kernel's boot id (`/proc/sys/kernel/random/boot_id`); `None` where the system
/// has none, in which case computes keep `fsync` on.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// Whether `data_dir` may have lost writes: it carries the [`UNSYNCED_MARKER`] of a compute that
/// ran without `fsync` under a different boot (or the boot cannot be told).
pub fn lost_unsynced_writes(data_dir: &std::path::Path) -> bool {
    match std::fs::read_to_string(data_dir.join(UNSYNCED_MARKER)) {
        Ok(marker) => boot_id().is_none_or(|now| marker.trim() != now),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_marker_of_this_boot_is_trusted_another_is_not() {
        let dir = std::env::temp_dir().join(format!("spg-core-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!lost_unsynced_writes(&dir), "no marker: synced");
        let now = boot_id().expect("Linux has a boot id");
        std::fs::write(dir.join(UNSYNCED_MARKER), format!("{now}\n")).unwrap();
        assert!(!lost_unsynced_writes(&dir), "same boot: page cache intact");
        std::fs::write(dir.join(UNSYNCED_MARKER), "00000000-dead-beef\n").unwrap();
        assert!(
            lost_unsynced_writes(&dir),
            "another boot: writes may be lost"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

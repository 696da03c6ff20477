//! A [`PageStore`] whose durable state is images in object storage ([`ImageStore`]); the local
//! data directory is a disposable cache.
//!
//! Layout of the cache:
//!
//! ```text
//! <cache>/<database>/pgdata      the directory the current compute runs on
//! <cache>/<database>/clean.json  the image the directory equals exactly, if it does
//! ```
//!
//! A checkout fences older generations in the object store, picks the newest image on the WAL
//! quorum's timeline path, and reuses the cached directory only if `clean.json` says it is that
//! very image (written back by a clean stop, then synced); in every other case (a crash, another
//! machine's newer image, an unsynced directory after a reboot, nothing cached) the directory is
//! rebuilt from the image and the WAL quorum supplies everything after it. A write-back captures
//! the cleanly shut down directory as a new image whose chunks are shared with its parent.
//!
//! This store restores images eagerly; the lazy path (a FUSE filesystem fetching chunks on first
//! read) builds on the same images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use spg_core::{
    Checkout, CoreResult, DatabaseName, Generation, ImageInfo, Lsn, PageStore, TimelineId,
};
use tracing::info;

use crate::fsutil::write_atomic;
use crate::image::{ImageId, ImageStore, Manifest, DEFAULT_CHUNK_SIZE};
use crate::pg_control::ControlFile;
use crate::safekeeper::file::{segment_file_name, DEFAULT_SEGMENT_SIZE};
use crate::StorageError;

/// Per-database state of the current checkout.
#[derive(Default)]
struct DbState {
    checked_out: Option<Generation>,
    /// The image the checkout started from (the parent of the next write-back).
    base: Option<Manifest>,
}

/// Page store over images in object storage; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct ObjectPageStore {
    images: ImageStore,
    cache: PathBuf,
    chunk_size: u32,
    dbs: Arc<Mutex<HashMap<DatabaseName, Arc<tokio::sync::Mutex<DbState>>>>>,
}

impl std::fmt::Debug for ObjectPageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectPageStore")
            .field("images", &self.images)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl ObjectPageStore {
    /// Images in `images`, data directories cached under `cache`.
    pub fn new(images: ImageStore, cache: impl Into<PathBuf>) -> Self {
        ObjectPageStore {
            images,
            cache: cache.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            dbs: Arc::default(),
        }
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The directory computes of `db` run on.
    pub fn data_dir(&self, db: &DatabaseName) -> PathBuf {
        self.cache.join(db.as_str()).join("pgdata")
    }

    fn clean_path(&self, db: &DatabaseName) -> PathBuf {
        self.cache.join(db.as_str()).join("clean.json")
    }

    fn state(&self, db: &DatabaseName) -> Arc<tokio::sync::Mutex<DbState>> {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        dbs.entry(db.clone()).or_default().clone()
    }

    /// The image the cached directory of `db` equals, if the cache says so and can be trusted.
    fn cached_image(&self, db: &DatabaseName) -> Option<ImageId> {
        let dir = self.data_dir(db);
        if spg_core::lost_unsynced_writes(&dir) {
            return None;
        }
        let bytes = std::fs::read(self.clean_path(db)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn checkout_inner(
        &self,
        db: &DatabaseName,
        g: Generation,
        history: &[(TimelineId, Lsn)],
        st: &mut DbState,
    ) -> Result<Checkout, StorageError> {
        if let Some(newest) = self.images.newest_fence(db).await? {
            if newest >= g {
                return Err(StorageError::StaleGeneration {
                    offered: g.0,
                    current: newest.0,
                });
            }
        }
        self.images.fence(db, g).await?;
        let latest = self.images.latest(db, history).await?;
        let manifest = match &latest {
            Some(id) => Some(self.images.manifest(db, id).await?),
            None => None,
        };
        let dir = self.data_dir(db);
        let reuse = latest.is_some() && self.cached_image(db) == latest;
        // From here on the directory changes: it no longer equals any image.
        remove_if_exists(&self.clean_path(db))?;
        if reuse {
            info!(%db, generation = %g, image = ?latest, "starting from the cached directory");
        } else {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| StorageError::io("remove", &dir, e))?;
            }
            create_private_dir(&dir)?;
            if let Some(m) = &manifest {
                let stats = self.images.restore(m, &dir).await?;
                info!(%db, generation = %g, image = %m.id, files = stats.files,
                      bytes = stats.bytes_fetched, "restored the image (eager)");
            }
        }
        st.checked_out = Some(g);
        st.base = manifest;
        Ok(Checkout {
            data_dir: dir,
            image: st.base.as_ref().map(image_info),
        })
    }

    async fn write_back_inner(
        &self,
        db: &DatabaseName,
        g: Generation,
        st: &mut DbState,
    ) -> Result<ImageInfo, StorageError> {
        if st.checked_out != Some(g) {
            return Err(StorageError::NotCheckedOut(g.0));
        }
        let dir = self.data_dir(db);
        let control = ControlFile::read(&dir)?;
        if !control.state.is_clean_shutdown() {
            return Err(StorageError::NotShutDown(control.state.to_string()));
        }
        let id = ImageId {
            lsn: control.checkpoint,
            timeline: control.timeline,
            generation: g,
        };
        let checkpoint_segment = format!(
            "pg_wal/{}",
            segment_file_name(
                control.timeline,
                control.checkpoint.0 / DEFAULT_SEGMENT_SIZE,
                DEFAULT_SEGMENT_SIZE
            )
        );
        let include = move |p: &str| include_in_image(p, &checkpoint_segment);
        let manifest = match self
            .images
            .capture(db, &dir, id, st.base.as_ref(), self.chunk_size, &include)
            .await
        {
            Ok((m, stats)) => {
                info!(%db, generation = %g, image = %id, uploaded = stats.bytes_uploaded,
                      chunks = stats.chunks_uploaded, reused = stats.chunks_reused, "image written");
                m
            }
            // The same generation wrote this very image before (a retried write-back).
            Err(StorageError::ImageExists(_)) => self.images.manifest(db, &id).await?,
            Err(e) => return Err(e),
        };
        let clean = serde_json::to_vec(&id).map_err(|e| StorageError::Corrupt {
            what: "clean record".into(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.clean_path(db), &clean)?;
        let info = image_info(&manifest);
        st.base = Some(manifest);
        Ok(info)
    }
}

/// What of a cleanly shut down data directory goes into an image: everything but the running
/// server's and the agent's transient files, and of `pg_wal` only the segment holding the
/// checkpoint (the WAL quorum keeps the rest).
fn include_in_image(path: &str, checkpoint_segment: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "postmaster.pid",
        "postmaster.opts",
        "recovery.signal",
        "standby.signal",
        spg_core::UNSYNCED_MARKER,
    ];
    if TRANSIENT.contains(&path) {
        return false;
    }
    match path.strip_prefix("pg_wal/") {
        Some(rest) => rest == "archive_status" || path == checkpoint_segment,
        None => !path.starts_with("pg_stat_tmp/"),
    }
}

fn image_info(m: &Manifest) -> ImageInfo {
    ImageInfo {
        database: m.database.clone(),
        generation: m.id.generation,
        lsn: m.id.lsn,
        created_at_ms: m.created_at_ms,
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

/// Create `dir` with mode 0700 (PostgreSQL insists), parents with the default mode.
fn create_private_dir(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StorageError::io("create dir", parent, e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| StorageError::io("create dir", dir, e))
}

#[async_trait]
impl PageStore for ObjectPageStore {
    async fn checkout(
        &self,
        db: &DatabaseName,
        generation: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout> {
        let state = self.state(db);
        let mut st = state.lock().await;
        Ok(self
            .checkout_inner(db, generation, history, &mut st)
            .await?)
    }

    async fn write_back(&self, db: &DatabaseName, generation: Generation) -> CoreResult<ImageInfo> {
        let state = self.state(db);
        let mut st = state.lock().await;
        Ok(self.write_back_inner(db, generation, &mut st).await?)
    }

    async fn release(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()> {
        let state = self.state(db);
        let mut st = state.lock().await;
        if st.checked_out == Some(generation) {
            st.checked_out = None;
        }
        Ok(())
    }

    async fn latest_image(&self, db: &DatabaseName) -> CoreResult<Option<ImageInfo>> {
        let Some(id) = self.images.latest(db, &[]).await? else {
            return Ok(None);
        };
        Ok(Some(image_info(&self.images.manifest(db, &id).await?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_leave_out_transient_files_and_foreign_wal() {
        let seg = "pg_wal/000000020000000000000003";
        for keep in [
            "PG_VERSION",
            "base/1/1259",
            "global/pg_control",
            "pg_wal/archive_status",
            seg,
        ] {
            assert!(include_in_image(keep, seg), "{keep}");
        }
        for skip in [
            "postmaster.pid",
            "recovery.signal",
            "spg_unsynced",
            "pg_wal/000000020000000000000002",
            "pg_wal/00000002.history",
            "pg_stat_tmp/global.stat",
        ] {
            assert!(!include_in_image(skip, seg), "{skip}");
        }
    }
}

//! A [`PageStore`] that keeps each database's data directory on local disk between generations.
//!
//! **A development store.** The platform does not use it: `spg up` and the daemons run
//! [`ObjectPageStore`](crate::ObjectPageStore), where images in object storage plus the WAL
//! quorum are the durable state and the local directory is disposable in every path. This one
//! suits embedders' tests and the local-fsync anchor of the WAL benchmark.
//!
//! Layout under the store's root:
//!
//! ```text
//! <root>/<database>/pgdata/      the data directory every generation runs on
//! <root>/<database>/store.json   fenced generation, current checkout, image history
//! ```
//!
//! The data directory itself is the durable state: an image is the record that a generation shut
//! the directory down cleanly at a checkpoint LSN. With [`LocalDirPageStore::with_base_images`],
//! the first image (the `initdb` result) is also kept in object storage under
//! `images/<db>/base/`, and a checkout that finds no local directory starts from it: the local
//! directory is then only a cache, and the WAL quorum supplies everything written since. After a crash the directory still carries the
//! WAL written since the last image, and PostgreSQL's crash recovery replays it on the next start.
//! A directory a compute ran on without fsync is trusted only within the same boot
//! ([`spg_core::UNSYNCED_MARKER`]); after a reboot it is rebuilt from the base image.
//! Generations fence each other exactly as the trait requires: a checkout raises the fence, and
//! older generations can no longer write back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spg_core::{
    Checkout, CoreResult, DatabaseName, Generation, ImageInfo, Lsn, PageStore, TimelineId,
};
use tracing::{info, warn};

use crate::fsutil::write_atomic;
use crate::pg_control::ControlFile;
use crate::StorageError;

/// How many image records are kept per database.
const IMAGE_HISTORY: usize = 16;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreRecord {
    /// The newest generation that checked out; older generations are fenced.
    fenced_generation: u64,
    /// The generation currently holding the directory, if any.
    checked_out: Option<u64>,
    /// Images, oldest first.
    images: Vec<ImageInfo>,
}

/// Local-directory page store; see the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalDirPageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    locks: Mutex<HashMap<DatabaseName, Arc<tokio::sync::Mutex<()>>>>,
    archive: Option<Arc<dyn object_store::ObjectStore>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The manifest of a base image in object storage, written last (create-only), so that a
/// manifest always describes a complete upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BaseManifest {
    image: ImageInfo,
    /// Directories, relative, parents first.
    dirs: Vec<String>,
    /// Files, relative, with their sizes.
    files: Vec<(String, u64)>,
}

impl LocalDirPageStore {
    /// A store rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirPageStore {
            inner: Arc::new(Inner {
                root: root.into(),
                locks: Mutex::new(HashMap::new()),
                archive: None,
            }),
        }
    }

    /// Keep each database's base image (its `initdb` result) in `archive` too, and start from it
    /// when the local directory is gone.
    pub fn with_base_images(self, archive: Arc<dyn object_store::ObjectStore>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|a| Inner {
            root: a.root.clone(),
            locks: Mutex::new(HashMap::new()),
            archive: a.archive.clone(),
        });
        LocalDirPageStore {
            inner: Arc::new(Inner {
                archive: Some(archive),
                ..inner
            }),
        }
    }

    /// The directory a database's computes run on.
    pub fn data_dir(&self, db: &DatabaseName) -> PathBuf {
        self.inner.data_dir(db)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        db: &DatabaseName,
        f: impl FnOnce(&Inner, &DatabaseName) -> Result<T, StorageError> + Send + 'static,
    ) -> CoreResult<T> {
        let lock = self.inner.lock_for(db);
        let _guard = lock.lock().await;
        let inner = Arc::clone(&self.inner);
        let db = db.clone();
        tokio::task::spawn_blocking(move || f(&inner, &db))
            .await
            .map_err(|e| spg_core::CoreError::Internal(format!("page store task failed: {e}")))?
            .map_err(Into::into)
    }
}

impl Inner {
    fn data_dir(&self, db: &DatabaseName) -> PathBuf {
        self.root.join(db.as_str()).join("pgdata")
    }

    fn record_path(&self, db: &DatabaseName) -> PathBuf {
        self.root.join(db.as_str()).join("store.json")
    }

    fn lock_for(&self, db: &DatabaseName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(db.clone()).or_default().clone()
    }

    fn load(&self, db: &DatabaseName) -> Result<StoreRecord, StorageError> {
        let path = self.record_path(db);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                what: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreRecord::default()),
            Err(e) => Err(StorageError::io("read", path, e)),
        }
    }

    fn save(&self, db: &DatabaseName, rec: &StoreRecord) -> Result<(), StorageError> {
        let path = self.record_path(db);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| StorageError::Corrupt {
            what: "store record".into(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes)
    }

    fn checkout_blocking(
        &self,
        db: &DatabaseName,
        generation: Generation,
    ) -> Result<Checkout, StorageError> {
        let mut rec = self.load(db)?;
        if generation.0 <= rec.fenced_generation {
            return Err(StorageError::StaleGeneration {
                offered: generation.0,
                current: rec.fenced_generation,
            });
        }
        let data_dir = self.data_dir(db);
        if rec.images.is_empty() && data_dir.exists() {
            // An initialisation that never registered its base image: no compute ever ran on it,
            // so nothing acknowledged can be inside. Start over.
            warn!(%db, dir = %data_dir.display(), "discarding data directory without a base image");
            std::fs::remove_dir_all(&data_dir)
                .map_err(|e| StorageError::io("remove", &data_dir, e))?;
        }
        if data_dir.exists() && spg_core::lost_unsynced_writes(&data_dir) {
            // A compute ran on it without fsync and the machine rebooted since: any write may be
            // missing. Rebuild from the base image; the WAL quorum has everything after it.
            if self.archive.is_none() {
                return Err(StorageError::Corrupt {
                    what: format!("data directory of {db}"),
                    reason: "it may have lost unsynced writes in an operating-system crash, and \
                             no base image is kept in object storage to rebuild it from"
                        .into(),
                });
            }
            warn!(%db, dir = %data_dir.display(),
                  "data directory ran unsynced before a reboot: rebuilding it from the base image");
            std::fs::remove_dir_all(&data_dir)
                .map_err(|e| StorageError::io("remove", &data_dir, e))?;
        }
        create_reachable_dir(&data_dir)?;
        rec.fenced_generation = generation.0;
        rec.checked_out = Some(generation.0);
        self.save(db, &rec)?;
        Ok(Checkout {
            data_dir,
            image: rec.images.last().cloned(),
        })
    }

    fn write_back_blocking(
        &self,
        db: &DatabaseName,
        generation: Generation,
    ) -> Result<(ImageInfo, bool), StorageError> {
        let mut rec = self.load(db)?;
        if generation.0 < rec.fenced_generation {
            return Err(StorageError::StaleGeneration {
                offered: generation.0,
                current: rec.fenced_generation,
            });
        }
        if rec.checked_out != Some(generation.0) {
            return Err(StorageError::NotCheckedOut(generation.0));
        }
        let control = ControlFile::read(&self.data_dir(db))?;
        if !control.state.is_clean_shutdown() {
            return Err(StorageError::NotShutDown(control.state.to_string()));
        }
        let lsn = control.checkpoint;
        let image = ImageInfo {
            database: db.clone(),
            generation,
            lsn,
            created_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            // The directory is the image: nothing is uploaded.
            bytes_written: 0,
        };
        let first = rec.images.is_empty();
        rec.images.push(image.clone());
        if rec.images.len() > IMAGE_HISTORY {
            let excess = rec.images.len() - IMAGE_HISTORY;
            rec.images.drain(..excess);
        }
        self.save(db, &rec)?;
        info!(%db, %generation, %lsn, "image written");
        Ok((image, first))
    }

    /// Record the base image a checkout restored from object storage.
    fn adopt_base(&self, db: &DatabaseName, base: ImageInfo) -> Result<(), StorageError> {
        let mut rec = self.load(db)?;
        rec.images = vec![base];
        self.save(db, &rec)
    }

    fn release_blocking(
        &self,
        db: &DatabaseName,
        generation: Generation,
    ) -> Result<(), StorageError> {
        let mut rec = self.load(db)?;
        if rec.checked_out == Some(generation.0) {
            rec.checked_out = None;
            self.save(db, &rec)?;
        }
        Ok(())
    }
}

fn base_prefix(db: &DatabaseName) -> String {
    format!("images/{}/base", db.as_str())
}

fn archive_err(e: object_store::Error) -> spg_core::CoreError {
    spg_core::CoreError::Unavailable(format!("object store: {e}"))
}

impl LocalDirPageStore {
    /// Upload the directory as the base image, unless one is there already.
    async fn upload_base(
        &self,
        archive: &dyn object_store::ObjectStore,
        db: &DatabaseName,
        image: &ImageInfo,
    ) -> CoreResult<()> {
        use object_store::path::Path as OPath;
        let prefix = base_prefix(db);
        let manifest_path = OPath::from(format!("{prefix}/MANIFEST.json"));
        if archive.head(&manifest_path).await.is_ok() {
            return Ok(());
        }
        let root = self.data_dir(db);
        let (dirs, files) = tokio::task::spawn_blocking({
            let root = root.clone();
            move || walk(&root)
        })
        .await
        .map_err(|e| spg_core::CoreError::Internal(e.to_string()))??;
        for (rel, _) in &files {
            let bytes = tokio::fs::read(root.join(rel))
                .await
                .map_err(|e| StorageError::io("read", root.join(rel), e))?;
            archive
                .put(&OPath::from(format!("{prefix}/files/{rel}")), bytes.into())
                .await
                .map_err(archive_err)?;
        }
        let manifest = BaseManifest {
            image: image.clone(),
            dirs,
            files,
        };
        let body = serde_json::to_vec(&manifest)
            .map_err(|e| spg_core::CoreError::Internal(e.to_string()))?;
        match crate::objects::put_create_only(archive, &manifest_path, body.into()).await {
            Ok(_) => {
                info!(%db, lsn = %image.lsn, files = manifest.files.len(), "base image in object storage");
                Ok(())
            }
            Err(e) => Err(archive_err(e)),
        }
    }

    /// Fill an empty data directory from the base image in object storage, if there is one.
    async fn download_base(
        &self,
        archive: &dyn object_store::ObjectStore,
        db: &DatabaseName,
        data_dir: &Path,
    ) -> CoreResult<Option<ImageInfo>> {
        use object_store::path::Path as OPath;
        let prefix = base_prefix(db);
        let manifest = match archive
            .get(&OPath::from(format!("{prefix}/MANIFEST.json")))
            .await
        {
            Ok(r) => r.bytes().await.map_err(archive_err)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(archive_err(e)),
        };
        let manifest: BaseManifest =
            serde_json::from_slice(&manifest).map_err(|e| StorageError::Corrupt {
                what: "base image manifest".into(),
                reason: e.to_string(),
            })?;
        for d in &manifest.dirs {
            let path = safe_join(data_dir, d)?;
            spg_core::fsmode::private_dir(&path)
                .map_err(|e| StorageError::io("create dir", &path, e))?;
        }
        for (rel, size) in &manifest.files {
            let path = safe_join(data_dir, rel)?;
            let bytes = archive
                .get(&OPath::from(format!("{prefix}/files/{rel}")))
                .await
                .map_err(archive_err)?
                .bytes()
                .await
                .map_err(archive_err)?;
            if bytes.len() as u64 != *size {
                return Err(StorageError::Corrupt {
                    what: format!("base image file {rel}"),
                    reason: format!("{} bytes, manifest says {size}", bytes.len()),
                }
                .into());
            }
            let to = path.clone();
            tokio::task::spawn_blocking(move || spg_core::fsmode::write_private(&to, &bytes))
                .await
                .map_err(|e| StorageError::io("write", &path, std::io::Error::other(e)))?
                .map_err(|e| StorageError::io("write", &path, e))?;
        }
        info!(%db, lsn = %manifest.image.lsn, "data directory restored from the base image in object storage");
        Ok(Some(manifest.image))
    }
}

/// `root/rel` for a relative path from a manifest, refusing anything that would leave `root`.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, StorageError> {
    let p = Path::new(rel);
    let ok = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok || rel.is_empty() {
        return Err(StorageError::Corrupt {
            what: "base image manifest".into(),
            reason: format!("bad path {rel:?}"),
        });
    }
    Ok(root.join(p))
}

/// Directories (parents first) and files (with sizes) under `root`, relative.
#[allow(clippy::type_complexity)]
fn walk(root: &Path) -> Result<(Vec<String>, Vec<(String, u64)>), StorageError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| StorageError::io("read dir", &dir, e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map_err(|_| StorageError::Corrupt {
                    what: "data directory".into(),
                    reason: "path outside root".into(),
                })?
                .to_string_lossy()
                .into_owned();
            let meta = e
                .metadata()
                .map_err(|err| StorageError::io("stat", &path, err))?;
            if meta.is_dir() {
                dirs.push(rel);
                stack.push(path);
            } else if meta.is_file() {
                files.push((rel, meta.len()));
            }
        }
    }
    dirs.sort_by_key(|d| d.matches('/').count());
    Ok((dirs, files))
}

#[async_trait]
impl PageStore for LocalDirPageStore {
    async fn checkout(
        &self,
        db: &DatabaseName,
        generation: Generation,
        _history: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout> {
        let mut checkout = self
            .blocking(db, move |s, db| s.checkout_blocking(db, generation))
            .await?;
        let is_empty = |d: &Path| std::fs::read_dir(d).map_or(true, |mut e| e.next().is_none());
        let empty = is_empty(&checkout.data_dir);
        if empty {
            if let Some(archive) = self.inner.archive.clone() {
                if let Some(base) = self
                    .download_base(archive.as_ref(), db, &checkout.data_dir)
                    .await?
                {
                    let img = base.clone();
                    self.blocking(db, move |s, db| s.adopt_base(db, img))
                        .await?;
                    checkout.image = Some(base);
                }
            }
            if checkout.image.is_some() && is_empty(&checkout.data_dir) {
                return Err(StorageError::Corrupt {
                    what: format!("data directory of {db}"),
                    reason: "it is gone and no base image is in object storage".into(),
                }
                .into());
            }
        }
        Ok(checkout)
    }

    async fn write_back(&self, db: &DatabaseName, generation: Generation) -> CoreResult<ImageInfo> {
        let (image, first) = self
            .blocking(db, move |s, db| s.write_back_blocking(db, generation))
            .await?;
        if first {
            if let Some(archive) = self.inner.archive.clone() {
                self.upload_base(archive.as_ref(), db, &image).await?;
            }
        }
        Ok(image)
    }

    async fn release(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()> {
        self.blocking(db, move |s, db| s.release_blocking(db, generation))
            .await
    }

    async fn latest_image(&self, db: &DatabaseName) -> CoreResult<Option<ImageInfo>> {
        self.blocking(db, |s, db| Ok(s.load(db)?.images.last().cloned()))
            .await
    }
}

/// Create `dir` with mode 0700; missing parents get the default mode so that a compute running
/// as another user can reach it (this development store keeps no passages; its files are 0600).
fn create_reachable_dir(dir: &Path) -> Result<(), StorageError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StorageError::io("create dir", parent, e))?;
    }
    spg_core::fsmode::private_dir(dir).map_err(|e| StorageError::io("create dir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg_core::CoreError;

    fn write_control(dir: &Path, state: u32, checkpoint: u64) {
        let mut b = vec![0u8; 8192];
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        b[16..20].copy_from_slice(&state.to_le_bytes());
        b[32..40].copy_from_slice(&checkpoint.to_le_bytes());
        let crc = crc32c::crc32c(&b[..288]);
        b[288..292].copy_from_slice(&crc.to_le_bytes());
        std::fs::create_dir_all(dir.join("global")).unwrap();
        std::fs::write(dir.join("global/pg_control"), b).unwrap();
    }

    fn store() -> (tempfile::TempDir, LocalDirPageStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalDirPageStore::new(dir.path());
        (dir, s)
    }

    #[tokio::test]
    async fn lifecycle_and_fencing() {
        let (_tmp, s) = store();
        let db = DatabaseName::new("shop").unwrap();
        let c1 = s.checkout(&db, Generation(1), &[]).await.unwrap();
        assert!(c1.image.is_none());
        write_control(&c1.data_dir, 1, 0x100);
        let img = s.write_back(&db, Generation(1)).await.unwrap();
        assert_eq!(img.lsn, Lsn(0x100));
        assert_eq!(img.generation, Generation(1));
        s.release(&db, Generation(1)).await.unwrap();

        // Generation 2 sees the image; generation 1 is fenced from now on.
        let c2 = s.checkout(&db, Generation(2), &[]).await.unwrap();
        assert_eq!(c2.image.as_ref().map(|i| i.lsn), Some(Lsn(0x100)));
        assert_eq!(c2.data_dir, c1.data_dir);
        let stale = s.write_back(&db, Generation(1)).await;
        assert!(matches!(
            stale,
            Err(CoreError::StaleGeneration {
                offered: 1,
                current: 2
            })
        ));
        assert!(matches!(
            s.checkout(&db, Generation(2), &[]).await,
            Err(CoreError::StaleGeneration { .. })
        ));
        // A crashed generation releases without an image; the next one still starts from the dir.
        s.release(&db, Generation(2)).await.unwrap();
        let c3 = s.checkout(&db, Generation(3), &[]).await.unwrap();
        assert_eq!(c3.image.map(|i| i.generation), Some(Generation(1)));
    }

    #[tokio::test]
    async fn write_back_requires_clean_shutdown_and_the_checkout() {
        let (_tmp, s) = store();
        let db = DatabaseName::new("shop").unwrap();
        let c = s.checkout(&db, Generation(1), &[]).await.unwrap();
        write_control(&c.data_dir, 6, 0x200);
        assert!(s.write_back(&db, Generation(1)).await.is_err());
        write_control(&c.data_dir, 1, 0x200);
        assert!(s.write_back(&db, Generation(2)).await.is_err());
        assert!(s.write_back(&db, Generation(1)).await.is_ok());
        assert_eq!(
            s.latest_image(&db).await.unwrap().map(|i| i.lsn),
            Some(Lsn(0x200))
        );
    }

    #[tokio::test]
    async fn unregistered_initialisation_is_discarded() {
        let (_tmp, s) = store();
        let db = DatabaseName::new("shop").unwrap();
        let c = s.checkout(&db, Generation(1), &[]).await.unwrap();
        std::fs::write(c.data_dir.join("PG_VERSION"), "15\n").unwrap();
        s.release(&db, Generation(1)).await.unwrap();
        let c = s.checkout(&db, Generation(2), &[]).await.unwrap();
        assert!(!c.data_dir.join("PG_VERSION").exists());
    }

    #[tokio::test]
    async fn directory_unsynced_before_a_reboot_is_rebuilt_from_the_base_image() {
        let db = DatabaseName::new("shop").unwrap();
        let marker = |dir: &Path, boot: &str| {
            std::fs::write(dir.join(spg_core::UNSYNCED_MARKER), boot).unwrap();
        };
        let this_boot = spg_core::boot_id().unwrap();

        // Without object storage there is nothing to rebuild from: a clear error, and the
        // directory is left alone.
        let (_tmp, s) = store();
        let c = s.checkout(&db, Generation(1), &[]).await.unwrap();
        write_control(&c.data_dir, 1, 0x100);
        s.write_back(&db, Generation(1)).await.unwrap();
        std::fs::write(c.data_dir.join("PG_VERSION"), "15\n").unwrap();
        marker(&c.data_dir, "another-boot");
        s.release(&db, Generation(1)).await.unwrap();
        let err = s.checkout(&db, Generation(2), &[]).await.unwrap_err();
        assert!(err.to_string().contains("unsynced writes"), "{err}");
        assert!(c.data_dir.join("PG_VERSION").exists());

        // With base images: the same boot keeps the directory, another boot rebuilds it.
        let tmp = tempfile::tempdir().unwrap();
        let objects = tmp.path().join("objects");
        let archive = Arc::new(crate::DurableLocalStore::open(&objects).unwrap());
        let s = LocalDirPageStore::new(tmp.path().join("pages")).with_base_images(archive);
        let c = s.checkout(&db, Generation(1), &[]).await.unwrap();
        write_control(&c.data_dir, 1, 0x100);
        std::fs::write(c.data_dir.join("PG_VERSION"), "15\n").unwrap();
        s.write_back(&db, Generation(1)).await.unwrap();
        std::fs::write(c.data_dir.join("written-later"), "x").unwrap();
        marker(&c.data_dir, &this_boot);
        s.release(&db, Generation(1)).await.unwrap();
        let c = s.checkout(&db, Generation(2), &[]).await.unwrap();
        assert!(c.data_dir.join("written-later").exists(), "same boot: kept");
        marker(&c.data_dir, "another-boot");
        s.release(&db, Generation(2)).await.unwrap();
        let c = s.checkout(&db, Generation(3), &[]).await.unwrap();
        assert!(!c.data_dir.join("written-later").exists(), "rebuilt");
        assert!(!c.data_dir.join(spg_core::UNSYNCED_MARKER).exists());
        assert_eq!(
            std::fs::read_to_string(c.data_dir.join("PG_VERSION")).unwrap(),
            "15\n"
        );
        assert_eq!(c.image.map(|i| i.lsn), Some(Lsn(0x100)));
    }

    #[tokio::test]
    async fn corrupt_record_is_a_clear_error() {
        let (_tmp, s) = store();
        let db = DatabaseName::new("shop").unwrap();
        s.checkout(&db, Generation(1), &[]).await.unwrap();
        std::fs::write(s.inner.record_path(&db), b"{not json").unwrap();
        let err = s.checkout(&db, Generation(2), &[]).await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

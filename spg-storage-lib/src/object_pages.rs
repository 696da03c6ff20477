//! A [`PageStore`] whose durable state is images in object storage ([`ImageStore`]); the local
//! data directory is a disposable cache.
//!
//! Layout of the cache:
//!
//! ```text
//! <cache>/<database>/g<N>/pgdata  the directory generation N runs on (lazily: a mount, with
//!                                 g<N>/pg_wal and g<N>/lazy beside it)
//! <cache>/<database>/clean.json   the image a generation's directory equals exactly, if it does
//! ```
//!
//! Each checkout has its own directory, so a generation can be prepared (as a standby of the
//! running one, for an autoscale handoff) while the one before it still runs on its own. The
//! older one keeps its directory until it is released, but from the newer checkout on it can no
//! longer write back. Directories of generations no longer checked out are swept away by the
//! next checkout.
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

use std::os::unix::fs::FileExt;

use async_trait::async_trait;
use bytes::Bytes;
use spg_core::{
    Checkout, CoreResult, DatabaseName, Generation, ImageInfo, Lsn, PageStore, StoredBytes,
    TimelineId,
};
use tracing::{info, warn};

use crate::fsutil::{create_private_dir, write_atomic};
use crate::image::format::decode_list;
use crate::image::{
    fence_for_checkout, refuse_unless_newer, Basebackup, CaptureSource, ChunkHash, ChunkOrigin,
    Content, ImageId, ImageStore, Manifest, ObjectKind, SourceFile, DEFAULT_CHUNK_SIZE,
};
use crate::lazyfs::{self, ImageChunks, LazyTree};
use crate::pg_control::ControlFile;
use crate::safekeeper::file::{segment_file_name, DEFAULT_SEGMENT_SIZE};
use crate::StorageError;

/// Per-database state: the generations checked out (the writer's, and while a handoff
/// prepares, its successor's).
#[derive(Default)]
struct DbState {
    checkouts: std::collections::BTreeMap<Generation, Slot>,
}

/// One generation's checkout.
#[derive(Default)]
struct Slot {
    /// A standby's checkout: fences nothing and may not write back until adopted.
    standby: bool,
    /// The image the checkout started from (the parent of the next write-back).
    base: Option<Manifest>,
    /// The lazy mount the compute runs on, if it runs on one.
    mount: Option<lazyfs::Mount>,
}

/// Serving checkouts through lazyfs.
#[derive(Debug, Clone, Copy)]
struct Lazy {
    uid: u32,
    gid: u32,
    /// Fail instead of restoring eagerly when FUSE is unavailable.
    require: bool,
}

/// Page store over images in object storage; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct ObjectPageStore {
    images: ImageStore,
    cache: PathBuf,
    chunk_size: u32,
    lazy: Option<Lazy>,
    /// The compute user's group, when it is not this process's user: directories on the way
    /// to a compute's data directory are passages for it ([`spg_core::fsmode`]).
    passage_group: Option<u32>,
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
            lazy: None,
            passage_group: None,
            dbs: Arc::default(),
        }
    }

    /// Computes run as another user, of group `gid`: the directories on the way to their data
    /// directories are made passages for that group (`0710`); everything else stays `0700`.
    pub fn with_passage_group(mut self, gid: Option<u32>) -> Self {
        self.passage_group = gid;
        self
    }

    /// Serve checkouts of existing images lazily: the data directory is a lazyfs mount whose
    /// files appear owned by `uid:gid`, chunks arrive on first read, and `pg_wal` is a local
    /// directory. Where FUSE is unavailable the image is restored eagerly (and the log says so),
    /// unless `SPG_REQUIRE_FUSE=1`, which turns that into an error.
    ///
    /// When `uid` is not this process's user, the directories on the way to the data directory
    /// become passages for `gid` (see [`with_passage_group`](Self::with_passage_group)).
    pub fn with_lazy_mounts(mut self, uid: u32, gid: u32) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if uid != unsafe { libc::geteuid() } {
            self.passage_group = Some(gid);
        }
        self.lazy = Some(Lazy {
            uid,
            gid,
            require: std::env::var("SPG_REQUIRE_FUSE").as_deref() == Ok("1"),
        });
        self
    }

    /// Everything of generation `g`'s checkout of `db`.
    fn generation_dir(&self, db: &DatabaseName, g: Generation) -> PathBuf {
        self.cache.join(db.as_str()).join(format!("g{}", g.0))
    }

    fn wal_dir(&self, db: &DatabaseName, g: Generation) -> PathBuf {
        self.generation_dir(db, g).join("pg_wal")
    }

    fn backing_dir(&self, db: &DatabaseName, g: Generation) -> PathBuf {
        self.generation_dir(db, g).join("lazy")
    }

    /// Serve the basebackup's image of `db` at its data directory, on the mount
    /// [`prepare_lazy`] made.
    fn mount_lazy(
        &self,
        db: &DatabaseName,
        g: Generation,
        bb: Basebackup,
        lazy: Lazy,
        pending: lazyfs::PendingMount,
    ) -> Result<lazyfs::Mount, StorageError> {
        let wal = self.wal_dir(db, g);
        let backing = self.backing_dir(db, g);
        let Basebackup {
            manifest: m,
            mut objects,
        } = bb;
        // pg_wal is plain local disk: the image's WAL (the checkpoint's segment) is written there.
        for f in m.files.iter().filter(|f| f.path.starts_with("pg_wal/")) {
            let path = wal.join(&f.path["pg_wal/".len()..]);
            if f.is_dir() {
                create_private_dir(&path)?;
            } else {
                Self::write_wal_file(&m, f, &path, &mut objects)?;
            }
        }
        chown_tree(&wal, lazy.uid, lazy.gid)?;
        let mut shown = m.clone();
        shown
            .files
            .retain(|f| f.path != "pg_wal" && !f.path.starts_with("pg_wal/"));
        let source = Arc::new(ImageChunks::with_preloaded(
            self.images.clone(),
            Arc::new(m),
            objects,
            tokio::runtime::Handle::current(),
        ));
        let tree = Arc::new(LazyTree::new(&shown, &backing, source)?);
        tree.symlink(lazyfs::ROOT, std::ffi::OsStr::new("pg_wal"), &wal)
            .map_err(|e| StorageError::io("symlink", &wal, std::io::Error::from_raw_os_error(e)))?;
        Ok(pending.serve(tree))
    }

    /// Write the WAL file `f` of image `m` to `path` with the chunks that came with the soft
    /// basebackup (the parts recovery reads); the rest stays zero. Recovery prefers the WAL
    /// quorum's copy of a segment anyway; this one is what an image alone can start from.
    fn write_wal_file(
        m: &Manifest,
        f: &crate::image::FileEntry,
        path: &Path,
        objects: &mut HashMap<(ObjectKind, ChunkHash), Bytes>,
    ) -> Result<(), StorageError> {
        let file = spg_core::fsmode::create_private(path)
            .map_err(|e| StorageError::io("create", path, e))?;
        let chunks = match &f.content {
            Some(Content::Inline(b)) => {
                return file
                    .write_all_at(b, 0)
                    .map_err(|e| StorageError::io("write", path, e));
            }
            Some(Content::List(h)) => match objects.remove(&(ObjectKind::List, *h)) {
                Some(b) => decode_list(&b)?.1,
                None => Vec::new(),
            },
            Some(Content::Chunks(c)) => c.clone(),
            None => Vec::new(),
        };
        file.set_len(f.size)
            .map_err(|e| StorageError::io("extend", path, e))?;
        for (i, h) in chunks.iter().enumerate() {
            let Some(b) = h.and_then(|h| objects.remove(&(ObjectKind::Chunk, h))) else {
                continue;
            };
            let off = i as u64 * u64::from(m.chunk_size);
            let keep = f.size.saturating_sub(off).min(b.len() as u64) as usize;
            file.write_all_at(&b[..keep], off)
                .map_err(|e| StorageError::io("write", path, e))?;
        }
        Ok(())
    }

    /// Capture the lazily mounted, cleanly shut down directory of `db` as image `id`: chunks
    /// nobody wrote keep their hashes, only written ones are read and uploaded.
    async fn capture_lazy(
        &self,
        db: &DatabaseName,
        id: ImageId,
        parent: Option<&Manifest>,
        tree: Arc<LazyTree>,
        checkpoint_segment: &str,
    ) -> Result<(Manifest, crate::image::CaptureStats), StorageError> {
        let wal = self.wal_dir(db, id.generation);
        let chunk_size = u64::from(self.chunk_size);
        let seg = checkpoint_segment.to_owned();
        let planned = {
            let tree = Arc::clone(&tree);
            tokio::task::spawn_blocking(move || tree.plan(&|p| include_in_image(p, &seg)))
                .await
                .map_err(|e| StorageError::Corrupt {
                    what: "lazy capture".into(),
                    reason: e.to_string(),
                })??
        };
        let mut files = planned;
        // pg_wal is local: the directory, archive_status, and the files of it an image keeps
        // (the checkpoint's segment and its timeline's history); their handles count down
        // from the top, away from the tree's.
        for dir in ["pg_wal", "pg_wal/archive_status"] {
            files.push(SourceFile {
                path: dir.into(),
                mode: 0o700,
                size: 0,
                is_dir: true,
                chunks: Vec::new(),
                handle: 0,
            });
        }
        let seg_name = checkpoint_segment
            .strip_prefix("pg_wal/")
            .unwrap_or(checkpoint_segment);
        let history = seg_name.get(..8).map(|tli| format!("{tli}.history"));
        let local: Vec<PathBuf> = std::iter::once(seg_name.to_owned())
            .chain(history)
            .map(|name| wal.join(name))
            .collect();
        for (i, path) in local.iter().enumerate() {
            if let Ok(meta) = std::fs::metadata(path) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                files.push(SourceFile {
                    path: format!("pg_wal/{}", name.unwrap_or_default()),
                    mode: 0o600,
                    size: meta.len(),
                    is_dir: false,
                    chunks: vec![ChunkOrigin::Read; meta.len().div_ceil(chunk_size) as usize],
                    handle: u64::MAX - i as u64,
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let read = |handle: u64, off: u64, len: usize| -> Result<Vec<u8>, StorageError> {
            match local.get((u64::MAX - handle) as usize) {
                Some(path) => {
                    let f =
                        std::fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
                    let mut buf = vec![0u8; len];
                    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off)
                        .map_err(|e| StorageError::io("read", path, e))?;
                    Ok(buf)
                }
                None => tree.read_local(handle, off, len),
            }
        };
        let source = CaptureSource {
            files,
            warm: tree.warm(),
        };
        self.images
            .capture_from(db, id, parent, self.chunk_size, source, &read)
            .await
    }

    /// Check out generation `g` of `db`, a branch being made (no images of its own, a member
    /// of `source`'s family: [`ImageRepo::link_family`](crate::image::ImageRepo::link_family)),
    /// from image `image` of `source`: a writable directory as a checkout makes, whose
    /// write-back becomes `db`'s first image and names `source`'s chunks for everything nobody
    /// wrote. Nothing of `source` is fenced or changed.
    pub async fn checkout_from(
        &self,
        db: &DatabaseName,
        g: Generation,
        source: &DatabaseName,
        image: ImageId,
    ) -> Result<Checkout, StorageError> {
        let (family, theirs) = (
            self.images.repo().family(db).await?,
            self.images.repo().family(source).await?,
        );
        if family != theirs {
            return Err(StorageError::Protocol(format!(
                "{db} (family {family}) does not share the chunks of {source} (family {theirs})"
            )));
        }
        let state = self.state(db);
        let mut st = state.lock().await;
        self.checkout_inner(db, g, &[], false, Some((source, image)), &mut st)
            .await
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The directory generation `g` of `db` runs on.
    pub fn data_dir(&self, db: &DatabaseName, g: Generation) -> PathBuf {
        self.generation_dir(db, g).join("pgdata")
    }

    fn clean_path(&self, db: &DatabaseName) -> PathBuf {
        self.cache.join(db.as_str()).join("clean.json")
    }

    fn state(&self, db: &DatabaseName) -> Arc<tokio::sync::Mutex<DbState>> {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        dbs.entry(db.clone()).or_default().clone()
    }

    /// The image a cached directory of `db` equals (the directory of the generation that wrote
    /// it), if the cache says so and can be trusted.
    fn cached_image(&self, db: &DatabaseName) -> Option<ImageId> {
        let bytes = std::fs::read(self.clean_path(db)).ok()?;
        let id: ImageId = serde_json::from_slice(&bytes).ok()?;
        let dir = self.data_dir(db, id.generation);
        (dir.is_dir() && !spg_core::lost_unsynced_writes(&dir)).then_some(id)
    }

    async fn checkout_inner(
        &self,
        db: &DatabaseName,
        g: Generation,
        history: &[(TimelineId, Lsn)],
        standby: bool,
        from: Option<(&DatabaseName, ImageId)>,
        st: &mut DbState,
    ) -> Result<Checkout, StorageError> {
        // A generation this cache runs (or ran without a write-back yet) is refused here; the
        // repository refuses one that any generation anywhere as new or newer fenced.
        refuse_unless_newer(st.checkouts.keys().copied().max(), g)?;
        // A primary's checkout from its own images fences and fetches in one step
        // (ImageRepo::checkout); a standby does not fence, a branch's first checkout reads
        // another database's image.
        let one_step = !standby && from.is_none();
        if standby {
            refuse_unless_newer(self.images.newest_fence(db).await?, g)?;
        } else if !one_step {
            fence_for_checkout(self.images.repo().as_ref(), db, g).await?;
        }
        let dir = self.data_dir(db, g);
        let db_root = self.cache.join(db.as_str());
        let trash = db_root.join("trash");
        // The way to the data directory: the generation's own directory is made one below,
        // once what an earlier checkout left there is swept away.
        for d in [&self.cache, &db_root] {
            crate::fsutil::passage_dir(d, self.passage_group)?;
        }
        let checked_out: Vec<PathBuf> = st
            .checkouts
            .keys()
            .map(|h| self.generation_dir(db, *h))
            .collect();
        // Lazily, the mount is made while the basebackup is on its way (no cached directory is
        // reused, so the record of one goes first).
        let preparing = self.lazy.map(|lazy| {
            let dirs = [dir.clone(), self.wal_dir(db, g), self.backing_dir(db, g)];
            let (clean, db) = (self.clean_path(db), db.clone());
            let (db_root, trash, keep) = (db_root.clone(), trash.clone(), checked_out.clone());
            let passage = (self.generation_dir(&db, g), self.passage_group);
            tokio::task::spawn_blocking(move || {
                remove_if_exists(&clean)?;
                sweep(&db_root, &keep, &trash)?;
                crate::fsutil::passage_dir(&passage.0, passage.1)?;
                prepare_lazy(&db, dirs, &trash, lazy)
            })
        });
        let bb = match from {
            Some((source, id)) => self.images.basebackup_of(source, &id).await.map(Some),
            None if one_step => self.images.checkout(db, g, history).await,
            None => self.images.basebackup(db, history).await,
        };
        let pending = match preparing {
            Some(task) => task
                .await
                .map_err(|e| StorageError::io("prepare", &dir, std::io::Error::other(e)))??,
            None => None,
        };
        let bb = bb?;
        let manifest = bb.as_ref().map(|b| b.manifest.clone());
        let latest = manifest.as_ref().map(|m| m.id);
        let try_lazy = self.lazy.zip(bb).zip(pending);
        // Eagerly, the directory a clean stop left is reused when it is the image to start from
        // and no generation runs on it.
        let cached = self
            .cached_image(db)
            .filter(|c| self.lazy.is_none() && Some(*c) == latest)
            .filter(|c| !st.checkouts.contains_key(&c.generation));
        if self.lazy.is_none() {
            let mut keep = checked_out;
            keep.extend(cached.map(|c| self.generation_dir(db, c.generation)));
            let (clean, root, trash) = (self.clean_path(db), db_root.clone(), trash.clone());
            tokio::task::spawn_blocking(move || {
                // The directory changes from here on: it no longer equals any image.
                remove_if_exists(&clean)?;
                sweep(&root, &keep, &trash)
            })
            .await
            .map_err(|e| StorageError::io("sweep", &db_root, std::io::Error::other(e)))??;
        }
        let mut slot = Slot {
            standby,
            ..Slot::default()
        };
        let mounted = match try_lazy {
            Some(((lazy, bb), pending)) => Some(self.mount_lazy(db, g, bb, lazy, pending)?),
            None => None,
        };
        if let Some(mnt) = mounted {
            info!(%db, generation = %g, image = ?latest, "mounted the image lazily");
            slot.mount = Some(mnt);
        } else if let Some(c) = cached {
            let from = self.generation_dir(db, c.generation);
            let to = self.generation_dir(db, g);
            if from != to {
                std::fs::rename(&from, &to).map_err(|e| StorageError::io("rename", &from, e))?;
            }
            crate::fsutil::passage_dir(&to, self.passage_group)?;
            info!(%db, generation = %g, image = ?latest, "starting from the cached directory");
        } else {
            if self.lazy.is_some() {
                let _ = lazyfs::detach(&dir);
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| StorageError::io("remove", &dir, e))?;
            }
            crate::fsutil::passage_dir(&self.generation_dir(db, g), self.passage_group)?;
            create_private_dir(&dir)?;
            if let Some(m) = &manifest {
                let stats = self.images.restore(m, &dir).await?;
                info!(%db, generation = %g, image = %m.id, files = stats.files,
                      bytes = stats.bytes_fetched, "restored the image (eager)");
            }
        }
        slot.base = manifest;
        let image = slot.base.as_ref().map(image_info);
        st.checkouts.insert(g, slot);
        Ok(Checkout {
            data_dir: dir,
            image,
        })
    }

    async fn write_back_inner(
        &self,
        db: &DatabaseName,
        g: Generation,
        st: &mut DbState,
    ) -> Result<ImageInfo, StorageError> {
        let newer = st
            .checkouts
            .iter()
            .filter(|(h, s)| **h > g && !s.standby)
            .map(|(h, _)| *h)
            .max();
        if let Some(newer) = newer {
            return Err(StorageError::StaleGeneration {
                offered: g.0,
                current: newer.0,
            });
        }
        let Some(slot) = st.checkouts.get_mut(&g).filter(|s| !s.standby) else {
            return Err(StorageError::NotCheckedOut(g.0));
        };
        let dir = self.data_dir(db, g);
        let control = ControlFile::read(&dir)?;
        if !control.state.is_clean_shutdown() {
            return Err(StorageError::NotShutDown(control.state.to_string()));
        }
        let id = ImageId {
            lsn: control.checkpoint,
            timeline: control.timeline,
            generation: g,
        };
        let checkpoint_segment = checkpoint_segment(&control);
        let lazy = slot.mount.is_some();
        let captured = match slot.mount.as_ref().map(|m| Arc::clone(m.tree())) {
            Some(tree) => {
                let r = self
                    .capture_lazy(db, id, slot.base.as_ref(), tree, &checkpoint_segment)
                    .await;
                if r.is_ok() {
                    if let Some(mnt) = slot.mount.take() {
                        let stats = mnt.tree().stats();
                        info!(%db, generation = %g,
                              chunks_fetched = stats.chunks_fetched.load(std::sync::atomic::Ordering::Relaxed),
                              bytes_fetched = stats.bytes_fetched.load(std::sync::atomic::Ordering::Relaxed),
                              "lazy mount done");
                        mnt.unmount()?;
                    }
                }
                r
            }
            None => {
                let include = move |p: &str| include_in_image(p, &checkpoint_segment);
                self.images
                    .capture(db, &dir, id, slot.base.as_ref(), self.chunk_size, &include)
                    .await
            }
        };
        let (manifest, uploaded) = match captured {
            Ok((m, stats)) => {
                info!(%db, generation = %g, image = %id, uploaded = stats.bytes_uploaded,
                      chunks = stats.chunks_uploaded, reused = stats.chunks_reused, "image written");
                (m, stats.bytes_uploaded)
            }
            // The same generation wrote this very image before (a retried write-back).
            Err(StorageError::ImageExists(_)) => (self.images.manifest(db, &id).await?, 0),
            Err(e) => return Err(e),
        };
        if !lazy {
            let clean = serde_json::to_vec(&id).map_err(|e| StorageError::Corrupt {
                what: "clean record".into(),
                reason: e.to_string(),
            })?;
            write_atomic(&self.clean_path(db), &clean)?;
        }
        let info = ImageInfo {
            bytes_written: uploaded,
            ..image_info(&manifest)
        };
        slot.base = Some(manifest);
        Ok(info)
    }
}

/// The checkpoint's WAL segment in a data directory whose control file is `control`
/// (`pg_wal/<segment>`: the one WAL file an image keeps, [`include_in_image`]).
pub fn checkpoint_segment(control: &ControlFile) -> String {
    format!(
        "pg_wal/{}",
        segment_file_name(
            control.timeline,
            control.checkpoint.0 / DEFAULT_SEGMENT_SIZE,
            DEFAULT_SEGMENT_SIZE
        )
    )
}

/// What of a cleanly shut down data directory goes into an image: everything but the running
/// server's and the agent's transient files, and of `pg_wal` only the segment holding the
/// checkpoint and its timeline's history file (the WAL quorum keeps the rest). With the history,
/// a stock `postgres` starts from the image alone even when the checkpoint shares a page with
/// the switch to its timeline (that page's header names the parent timeline).
pub fn include_in_image(path: &str, checkpoint_segment: &str) -> bool {
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
        Some(rest) => {
            rest == "archive_status"
                || path == checkpoint_segment
                || checkpoint_segment
                    .strip_prefix("pg_wal/")
                    .and_then(|seg| seg.get(..8))
                    .is_some_and(|tli| rest.strip_suffix(".history") == Some(tli))
        }
        None => !path.starts_with("pg_stat_tmp/"),
    }
}

fn image_info(m: &Manifest) -> ImageInfo {
    ImageInfo {
        database: m.database.clone(),
        generation: m.id.generation,
        lsn: m.id.lsn,
        created_at_ms: m.created_at_ms,
        bytes_written: 0,
    }
}

/// Move everything in a database's cache directory `db_root` but `keep`, `clean.json` and
/// `trash` itself into `trash` (deleted in the background): the directories of generations that
/// no longer run, left by stops, crashes or an earlier layout. Mounts left on them by a process
/// that died are detached first.
fn sweep(db_root: &Path, keep: &[PathBuf], trash: &Path) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(db_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("read dir", db_root, e)),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut moved = false;
    for (i, e) in entries.flatten().enumerate() {
        let path = e.path();
        let name = e.file_name();
        if keep.contains(&path) || name == "clean.json" || name == "trash" || name == "clean.tmp" {
            continue;
        }
        // An error just means nothing was mounted there.
        let _ = lazyfs::detach(&path.join("pgdata"));
        let _ = lazyfs::detach(&path);
        create_private_dir(trash)?;
        let aside = trash.join(format!("{stamp}-s{i}"));
        if std::fs::rename(&path, &aside).is_ok() {
            // A generation's directory was a passage; in the trash it is nobody's way anywhere.
            let _ = spg_core::fsmode::tighten(&aside);
        } else {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| StorageError::io("remove", &path, e))?;
        }
        moved = true;
    }
    if moved {
        empty_trash_later(trash);
    }
    Ok(())
}

/// Delete what is in `trash` in the background, after a start has had the machine.
fn empty_trash_later(trash: &Path) {
    let trash = trash.to_path_buf();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        if let Ok(entries) = std::fs::read_dir(&trash) {
            for e in entries.flatten() {
                // Another clean-up may be at it too.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// Give everything under `dir` to `uid:gid`.
/// Ready `[data dir, pg_wal, backing dir]` of a database for a lazy mount and mount the data
/// directory, waiting for its tree: a mount left behind by a process that died is detached, the
/// previous directories move into `trash` (deleted in the background, after the start has had
/// the machine), new empty ones are made. `Ok(None)` when FUSE is unavailable and not required.
fn prepare_lazy(
    db: &DatabaseName,
    dirs: [PathBuf; 3],
    trash: &Path,
    lazy: Lazy,
) -> Result<Option<lazyfs::PendingMount>, StorageError> {
    let [dir, wal, _backing] = &dirs;
    // An error just means nothing was mounted there.
    let _ = lazyfs::detach(dir);
    create_private_dir(trash)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, d) in dirs.iter().enumerate() {
        if d.exists() {
            let aside = trash.join(format!("{stamp}-{i}"));
            if std::fs::rename(d, &aside).is_err() {
                std::fs::remove_dir_all(d).map_err(|e| StorageError::io("remove", d, e))?;
            }
        }
        create_private_dir(d)?;
    }
    empty_trash_later(trash);
    for d in [wal, dir] {
        std::os::unix::fs::chown(d, Some(lazy.uid), Some(lazy.gid))
            .map_err(|e| StorageError::io("chown", d, e))?;
    }
    match lazyfs::mount_pending(dir, lazy.uid, lazy.gid) {
        Ok(m) => Ok(Some(m)),
        Err(e) if !lazy.require => {
            warn!(%db, error = %e, "FUSE is unavailable: restoring the image eagerly instead");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), StorageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("read dir", dir, e))?;
    for e in entries {
        let p = e.map_err(|e| StorageError::io("read dir", dir, e))?.path();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))
            .map_err(|e| StorageError::io("chown", &p, e))?;
        if p.is_dir() {
            chown_tree(&p, uid, gid)?;
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
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
            .checkout_inner(db, generation, history, false, None, &mut st)
            .await?)
    }

    async fn checkout_standby(
        &self,
        db: &DatabaseName,
        generation: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout> {
        let state = self.state(db);
        let mut st = state.lock().await;
        Ok(self
            .checkout_inner(db, generation, history, true, None, &mut st)
            .await?)
    }

    async fn adopt(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()> {
        let state = self.state(db);
        let mut st = state.lock().await;
        let Some(slot) = st.checkouts.get_mut(&generation) else {
            return Err(StorageError::NotCheckedOut(generation.0).into());
        };
        self.images.fence(db, generation).await?;
        slot.standby = false;
        Ok(())
    }

    async fn write_back(&self, db: &DatabaseName, generation: Generation) -> CoreResult<ImageInfo> {
        let state = self.state(db);
        let mut st = state.lock().await;
        Ok(self.write_back_inner(db, generation, &mut st).await?)
    }

    async fn release(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()> {
        let state = self.state(db);
        let mut st = state.lock().await;
        if let Some(mnt) = st.checkouts.remove(&generation).and_then(|s| s.mount) {
            mnt.unmount()?;
        }
        Ok(())
    }

    async fn latest_image(&self, db: &DatabaseName) -> CoreResult<Option<ImageInfo>> {
        let Some(id) = self.images.latest(db, &[]).await? else {
            return Ok(None);
        };
        Ok(Some(image_info(&self.images.manifest(db, &id).await?)))
    }

    async fn stored_bytes(&self, db: &DatabaseName) -> CoreResult<Option<StoredBytes>> {
        Ok(self.images.stored(db).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg_core::CoreError;

    /// A minimal `pg_control`: version, state (1: shut down) and checkpoint LSN.
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

    fn inode(p: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
    }

    #[tokio::test]
    async fn generations_check_out_side_by_side_and_only_the_newest_writes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let images = ImageStore::new(Arc::new(object_store::memory::InMemory::new()), "images");
        let s = ObjectPageStore::new(images, tmp.path().join("cache"));
        let db = DatabaseName::new("shop").unwrap();

        let c1 = s.checkout(&db, Generation(1), &[]).await.unwrap();
        assert!(c1.image.is_none());
        std::fs::write(c1.data_dir.join("PG_VERSION"), "15\n").unwrap();
        write_control(&c1.data_dir, 1, 0x100);
        s.write_back(&db, Generation(1)).await.unwrap();

        // Generation 2 is prepared as a standby while 1 still runs: its own directory, from
        // the image; 1 can still write back, 2 cannot yet.
        let c2 = s.checkout_standby(&db, Generation(2), &[]).await.unwrap();
        assert_ne!(c2.data_dir, c1.data_dir);
        assert_eq!(c2.image.as_ref().map(|i| i.lsn), Some(Lsn(0x100)));
        assert!(
            c1.data_dir.join("PG_VERSION").exists(),
            "1 keeps its directory"
        );
        assert_eq!(
            std::fs::read_to_string(c2.data_dir.join("PG_VERSION")).unwrap(),
            "15\n"
        );
        s.write_back(&db, Generation(1)).await.unwrap();
        assert!(s.write_back(&db, Generation(2)).await.is_err());
        // Adopted, it is the writer: 1 is fenced.
        s.adopt(&db, Generation(2)).await.unwrap();
        assert!(matches!(
            s.write_back(&db, Generation(1)).await,
            Err(CoreError::StaleGeneration {
                offered: 1,
                current: 2
            })
        ));
        assert!(matches!(
            s.checkout(&db, Generation(2), &[]).await,
            Err(CoreError::StaleGeneration { .. })
        ));
        s.release(&db, Generation(1)).await.unwrap();
        write_control(&c2.data_dir, 1, 0x200);
        let img = s.write_back(&db, Generation(2)).await.unwrap();
        assert_eq!(img.lsn, Lsn(0x200));

        // A standby released without adoption (an aborted handoff) leaves the writer as it was.
        let c3 = s.checkout_standby(&db, Generation(3), &[]).await.unwrap();
        assert!(c3.data_dir.exists());
        s.release(&db, Generation(3)).await.unwrap();
        write_control(&c2.data_dir, 1, 0x300);
        let img = s.write_back(&db, Generation(2)).await.unwrap();
        assert_eq!(img.lsn, Lsn(0x300));
        let version_inode = inode(&c2.data_dir.join("PG_VERSION"));
        s.release(&db, Generation(2)).await.unwrap();

        // The next checkout reuses the clean directory 2 left and sweeps the others.
        let c4 = s.checkout(&db, Generation(4), &[]).await.unwrap();
        assert_eq!(c4.image.map(|i| i.generation), Some(Generation(2)));
        assert_eq!(inode(&c4.data_dir.join("PG_VERSION")), version_inode);
        assert!(!c1.data_dir.exists(), "swept");
        assert!(!c3.data_dir.exists(), "swept");
        assert!(!c2.data_dir.exists(), "moved to generation 4");
        s.release(&db, Generation(4)).await.unwrap();
    }

    #[test]
    fn images_leave_out_transient_files_and_foreign_wal() {
        let seg = "pg_wal/000000020000000000000003";
        for keep in [
            "PG_VERSION",
            "base/1/1259",
            "global/pg_control",
            "pg_wal/archive_status",
            "pg_wal/00000002.history",
            seg,
        ] {
            assert!(include_in_image(keep, seg), "{keep}");
        }
        for skip in [
            "postmaster.pid",
            "recovery.signal",
            "spg_unsynced",
            "pg_wal/000000020000000000000002",
            "pg_wal/00000001.history",
            "pg_wal/00000003.history",
            "pg_stat_tmp/global.stat",
        ] {
            assert!(!include_in_image(skip, seg), "{skip}");
        }
    }
}

//! [`ImageStore`]: images of databases in any `object_store` backend.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use spg_core::{DatabaseName, Generation, Lsn, StoredBytes, TimelineId};
use tracing::debug;

use super::format::{
    decode_list, encode_list, ChunkHash, Content, FileEntry, ImageId, Manifest, DIRECT_CHUNKS,
    INLINE_MAX, MANIFEST_VERSION,
};
use super::repo::{latest_on_path, ImageRepo, ObjectKind, ObjectRepo, PARALLEL};
use crate::StorageError;

/// What a capture did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Files (not directories) in the image.
    pub files: u64,
    /// Bytes of all files.
    pub bytes: u64,
    /// Chunks uploaded.
    pub chunks_uploaded: u64,
    /// Bytes uploaded in chunks.
    pub bytes_uploaded: u64,
    /// Chunks already held by the parent image, not uploaded again.
    pub chunks_reused: u64,
    /// All-zero chunks (never stored).
    pub zero_chunks: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Files written.
    pub files: u64,
    /// Chunk bytes fetched from the object store.
    pub bytes_fetched: u64,
}

/// Where one chunk of a file being captured comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOrigin {
    /// Unchanged from the parent image: this hash (`None`: all zeros).
    Known(Option<ChunkHash>),
    /// To be read (and hashed, and uploaded if new).
    Read,
}

/// A file or directory to capture ([`ImageStore::capture_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Size (0 for directories).
    pub size: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// One origin per chunk.
    pub chunks: Vec<ChunkOrigin>,
    /// The caller's handle, passed back to its read function.
    pub handle: u64,
}

/// A soft basebackup, checked: the manifest of the image to start from and the objects that came
/// with it, by kind and hash.
#[derive(Debug, Clone)]
pub struct Basebackup {
    /// The image's manifest (decoded and validated).
    pub manifest: Manifest,
    /// Chunks and chunk lists that came along (hashes computed on arrival).
    pub objects: HashMap<(ObjectKind, ChunkHash), Bytes>,
}

fn check_hash(
    db: &DatabaseName,
    kind: ObjectKind,
    h: &ChunkHash,
    b: &[u8],
) -> Result<(), StorageError> {
    if ChunkHash::of(b) != *h {
        return Err(StorageError::Corrupt {
            what: format!("{} {h} of {db}", kind.plural()),
            reason: "its bytes do not match its hash".into(),
        });
    }
    Ok(())
}

/// What [`ImageStore::capture_from`] captures.
#[derive(Debug, Clone, Default)]
pub struct CaptureSource {
    /// Files and directories, parents before children.
    pub files: Vec<SourceFile>,
    /// Where the compute read right after it started, in order: the new image's
    /// [`Manifest::warm`] names what the new image holds there (places it no longer has are
    /// dropped).
    pub warm: Vec<WarmRef>,
}

/// A place a compute read from its image: what a warm set ([`Manifest::warm`]) is made of
/// before the image it goes into exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WarmRef {
    /// Chunk `index` of the file at `path`.
    Chunk {
        /// The file's path in the image.
        path: Arc<str>,
        /// The chunk's index in the file.
        index: u64,
    },
    /// The chunk list of the file at `path`.
    List {
        /// The file's path in the image.
        path: Arc<str>,
    },
}

impl WarmRef {
    fn path(&self) -> &str {
        match self {
            WarmRef::Chunk { path, .. } | WarmRef::List { path } => path,
        }
    }
}

/// Images of databases in an [`ImageRepo`] (an object store, or a pageserver in front of one).
/// Every byte read is checked here: chunks and lists against their hashes, manifests decoded,
/// validated and matched to their id. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    repo: Arc<dyn ImageRepo>,
}

impl ImageStore {
    /// Images under `prefix` (e.g. `images`) of `store` ([`ObjectRepo`]).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        Self::with_repo(Arc::new(ObjectRepo::new(store, prefix)))
    }

    /// Images in `repo`.
    pub fn with_repo(repo: Arc<dyn ImageRepo>) -> Self {
        ImageStore { repo }
    }

    /// The repository underneath.
    pub fn repo(&self) -> &Arc<dyn ImageRepo> {
        &self.repo
    }

    /// Record that generation `g` checked out `db`: from now on images of older generations are
    /// refused ([`ImageStore::put_manifest`]).
    pub async fn fence(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        self.repo.fence(db, g).await
    }

    /// The newest generation that fenced `db`.
    pub async fn newest_fence(
        &self,
        db: &DatabaseName,
    ) -> Result<Option<Generation>, StorageError> {
        self.repo.newest_fence(db).await
    }

    /// Every image of `db`, oldest first.
    pub async fn images(&self, db: &DatabaseName) -> Result<Vec<ImageId>, StorageError> {
        self.repo.images(db).await
    }

    /// The newest image of `db` on `history` ([`ImageId::on_path`]): images a fenced generation
    /// wrote past the point where the next timeline branched off are never chosen.
    pub async fn latest(
        &self,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<ImageId>, StorageError> {
        Ok(latest_on_path(self.images(db).await?, history))
    }

    fn decode_manifest(
        db: &DatabaseName,
        id: Option<&ImageId>,
        bytes: &[u8],
    ) -> Result<Manifest, StorageError> {
        let m = Manifest::decode(bytes)?;
        if id.is_some_and(|id| m.id != *id) || &m.database != db {
            return Err(StorageError::Corrupt {
                what: format!("image manifest of {db}"),
                reason: "it describes another image".into(),
            });
        }
        Ok(m)
    }

    /// The manifest of image `id` of `db`, validated.
    pub async fn manifest(
        &self,
        db: &DatabaseName,
        id: &ImageId,
    ) -> Result<Manifest, StorageError> {
        Self::decode_manifest(db, Some(id), &self.repo.manifest(db, id).await?)
    }

    /// What is stored for `db` (images and archived WAL), if the repository can tell.
    pub async fn stored(&self, db: &DatabaseName) -> Result<Option<StoredBytes>, StorageError> {
        self.repo.stored(db).await
    }

    /// The soft basebackup of the newest image of `db` on `history`: its manifest and the
    /// objects the repository sent along, each checked against its hash.
    pub async fn basebackup(
        &self,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<Basebackup>, StorageError> {
        let raw = self.repo.basebackup(db, history).await?;
        Self::checked_basebackup(db, history, raw)
    }

    /// Check `db` out for generation `g` ([`ImageRepo::checkout`]): fenced at `g` (refused
    /// when `g` or a newer generation fenced it already), then [`ImageStore::basebackup`].
    pub async fn checkout(
        &self,
        db: &DatabaseName,
        g: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<Basebackup>, StorageError> {
        let raw = self.repo.checkout(db, g, history).await?;
        Self::checked_basebackup(db, history, raw)
    }

    fn checked_basebackup(
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
        raw: Option<super::RawBasebackup>,
    ) -> Result<Option<Basebackup>, StorageError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let manifest = Self::decode_manifest(db, None, &raw.manifest)?;
        if !manifest.id.on_path(history) {
            return Err(StorageError::Corrupt {
                what: format!("basebackup of {db}"),
                reason: format!("image {} is not on the timeline path", manifest.id),
            });
        }
        let mut objects = HashMap::with_capacity(raw.objects.len());
        for (kind, bytes) in raw.objects {
            objects.insert((kind, ChunkHash::of(&bytes)), bytes);
        }
        Ok(Some(Basebackup { manifest, objects }))
    }

    /// A soft basebackup of image `id` of `db` (whichever its timeline), with the objects of
    /// its WAL files (a lazy mount writes those to local disk at once: recovery may have no
    /// other copy of them).
    pub async fn basebackup_of(
        &self,
        db: &DatabaseName,
        id: &ImageId,
    ) -> Result<Basebackup, StorageError> {
        let manifest = self.manifest(db, id).await?;
        let mut objects = HashMap::new();
        for f in manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with("pg_wal/") && !f.is_dir())
        {
            if let Some(Content::List(h)) = &f.content {
                let b = self.repo.get(db, ObjectKind::List, h).await?;
                check_hash(db, ObjectKind::List, h, &b)?;
                objects.insert((ObjectKind::List, *h), b);
            }
            for h in self.chunks_of(&manifest, f).await?.into_iter().flatten() {
                let b = self.chunk(db, &h).await?;
                objects.insert((ObjectKind::Chunk, h), b);
            }
        }
        Ok(Basebackup { manifest, objects })
    }

    /// Store `m` as a new image. Create-only: an existing image is never replaced
    /// ([`StorageError::ImageExists`]); a generation older than the newest fence is refused
    /// ([`StorageError::StaleGeneration`]). Everything the manifest names must be stored first.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), StorageError> {
        m.validate().map_err(|reason| StorageError::Corrupt {
            what: "new image manifest".into(),
            reason,
        })?;
        self.repo.put_manifest(m).await
    }

    /// Objects `hs` of kind `kind`, each checked against its hash.
    pub async fn objects(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        hs: &[ChunkHash],
    ) -> Result<Vec<Bytes>, StorageError> {
        let got = self.repo.get_many(db, kind, hs).await?;
        if got.len() != hs.len() {
            return Err(StorageError::Corrupt {
                what: format!("{} of {db}", kind.plural()),
                reason: format!("{} asked for, {} received", hs.len(), got.len()),
            });
        }
        for (h, b) in hs.iter().zip(&got) {
            check_hash(db, kind, h, b)?;
        }
        Ok(got)
    }

    async fn get_checked(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
    ) -> Result<Bytes, StorageError> {
        let b = self.repo.get(db, kind, h).await?;
        check_hash(db, kind, h, &b)?;
        Ok(b)
    }

    /// One chunk's bytes, checked against its hash.
    pub async fn chunk(&self, db: &DatabaseName, h: &ChunkHash) -> Result<Bytes, StorageError> {
        self.get_checked(db, ObjectKind::Chunk, h).await
    }

    /// Store a chunk (content-addressed: storing it again is harmless); returns its hash.
    pub async fn put_chunk(
        &self,
        db: &DatabaseName,
        bytes: Bytes,
    ) -> Result<ChunkHash, StorageError> {
        let h = ChunkHash::of(&bytes);
        self.repo.put(db, ObjectKind::Chunk, &h, bytes).await?;
        Ok(h)
    }

    /// A chunk list, checked against its hash.
    pub async fn list(
        &self,
        db: &DatabaseName,
        h: &ChunkHash,
    ) -> Result<(u32, Vec<Option<ChunkHash>>), StorageError> {
        decode_list(&self.get_checked(db, ObjectKind::List, h).await?)
    }

    /// Store a chunk list; returns its hash.
    pub async fn put_list(
        &self,
        db: &DatabaseName,
        chunk_size: u32,
        chunks: &[Option<ChunkHash>],
    ) -> Result<ChunkHash, StorageError> {
        let bytes = Bytes::from(encode_list(chunk_size, chunks));
        let h = ChunkHash::of(&bytes);
        self.repo.put(db, ObjectKind::List, &h, bytes).await?;
        Ok(h)
    }

    /// The chunks of a file entry of `m` (fetching its chunk list if it has one).
    pub async fn chunks_of(
        &self,
        m: &Manifest,
        f: &FileEntry,
    ) -> Result<Vec<Option<ChunkHash>>, StorageError> {
        match &f.content {
            Some(Content::Chunks(c)) => Ok(c.clone()),
            Some(Content::List(h)) => {
                let (size, chunks) = self.list(&m.database, h).await?;
                let want = f.size.div_ceil(u64::from(m.chunk_size));
                if size != m.chunk_size || chunks.len() as u64 != want {
                    return Err(StorageError::Corrupt {
                        what: format!("chunk list of {}", f.path),
                        reason: format!(
                            "{} chunks of {size} bytes for {} bytes",
                            chunks.len(),
                            f.size
                        ),
                    });
                }
                Ok(chunks)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Capture the cleanly shut down data directory `dir` as image `id` of `db`: every file for
    /// which `include(path)` holds, chunked; chunks the `parent` image already holds are not
    /// uploaded again. Stores the manifest last (create-only, fenced).
    pub async fn capture(
        &self,
        db: &DatabaseName,
        dir: &Path,
        id: ImageId,
        parent: Option<&Manifest>,
        chunk_size: u32,
        include: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Manifest, CaptureStats), StorageError> {
        let walked = walk(dir, include)?;
        let mut paths = Vec::with_capacity(walked.len());
        let mut files = Vec::with_capacity(walked.len());
        for (handle, (rel, path, meta)) in walked.into_iter().enumerate() {
            let is_dir = meta.is_dir();
            let size = if is_dir { 0 } else { meta.len() };
            files.push(SourceFile {
                path: rel,
                mode: meta.permissions().mode() & 0o7777,
                size,
                is_dir,
                chunks: vec![ChunkOrigin::Read; size.div_ceil(u64::from(chunk_size)) as usize],
                handle: handle as u64,
            });
            paths.push(path);
        }
        // Chunks are read file by file: keep the file being read open.
        let open: std::sync::Mutex<Option<(u64, std::fs::File)>> = std::sync::Mutex::new(None);
        let read = move |handle: u64, off: u64, len: usize| -> Result<Vec<u8>, StorageError> {
            let path = &paths[handle as usize];
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            let f = match &*open {
                Some((h, f)) if *h == handle => f,
                _ => {
                    let f =
                        std::fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
                    &open.insert((handle, f)).1
                }
            };
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    StorageError::Corrupt {
                        what: format!("file {}", path.display()),
                        reason: "it changed while being captured".into(),
                    }
                } else {
                    StorageError::io("read", path, e)
                }
            })?;
            Ok(buf)
        };
        let source = CaptureSource {
            files,
            warm: Vec::new(),
        };
        self.capture_from(db, id, parent, chunk_size, source, &read)
            .await
    }

    /// Capture image `id` of `db` from `source` (files parents before children), whose chunks
    /// are either known already or read through `read(handle, offset, len)`. Chunks the `parent`
    /// image holds are not uploaded again. Stores the manifest last (create-only, fenced).
    pub async fn capture_from(
        &self,
        db: &DatabaseName,
        id: ImageId,
        parent: Option<&Manifest>,
        chunk_size: u32,
        source: CaptureSource,
        read: &(dyn Fn(u64, u64, usize) -> Result<Vec<u8>, StorageError> + Sync),
    ) -> Result<(Manifest, CaptureStats), StorageError> {
        let CaptureSource {
            files: source,
            warm,
        } = source;
        let mut referenced: HashSet<(ObjectKind, ChunkHash)> = HashSet::new();
        let mut known: HashSet<ChunkHash> = HashSet::new();
        if let Some(p) = parent {
            for f in &p.files {
                if let Some(Content::Chunks(c)) = &f.content {
                    known.extend(c.iter().flatten());
                }
            }
            let lists = futures::stream::iter(p.lists().collect::<Vec<_>>())
                .map(|h| {
                    let (this, db) = (self.clone(), p.database.clone());
                    async move { this.list(&db, &h).await }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<_>>()
                .await?;
            known.extend(lists.into_iter().flat_map(|(_, c)| c).flatten());
        }
        let mut stats = CaptureStats::default();
        let mut files = Vec::with_capacity(source.len());
        // What the new image holds at each warm place's file: its chunks and its list.
        let warm_paths: HashSet<&str> = warm.iter().map(WarmRef::path).collect();
        let mut at_warm: HashMap<String, (Vec<Option<ChunkHash>>, Option<ChunkHash>)> =
            HashMap::new();
        for sf in source {
            if sf.is_dir {
                files.push(FileEntry {
                    path: sf.path,
                    mode: sf.mode,
                    size: 0,
                    content: None,
                });
                continue;
            }
            stats.files += 1;
            stats.bytes += sf.size;
            let content = if sf.size <= INLINE_MAX {
                Content::Inline(read(sf.handle, 0, sf.size as usize)?)
            } else {
                let chunks = self
                    .capture_file(db, &sf, chunk_size, read, &mut known, &mut stats)
                    .await?;
                referenced.extend(chunks.iter().flatten().map(|h| (ObjectKind::Chunk, *h)));
                let list = if chunks.len() <= DIRECT_CHUNKS {
                    None
                } else {
                    let h = self.put_list(db, chunk_size, &chunks).await?;
                    referenced.insert((ObjectKind::List, h));
                    Some(h)
                };
                if warm_paths.contains(sf.path.as_str()) {
                    at_warm.insert(sf.path.clone(), (chunks.clone(), list));
                }
                match list {
                    Some(h) => Content::List(h),
                    None => Content::Chunks(chunks),
                }
            };
            files.push(FileEntry {
                path: sf.path,
                mode: sf.mode,
                size: sf.size,
                content: Some(content),
            });
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            database: db.clone(),
            id,
            parent: parent.map(|p| p.id),
            chunk_size,
            created_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            files,
            warm: {
                let mut seen = HashSet::new();
                warm.iter()
                    .filter_map(|place| {
                        let (chunks, list) = at_warm.get(place.path())?;
                        match place {
                            WarmRef::Chunk { index, .. } => {
                                let h = (*chunks.get(usize::try_from(*index).ok()?)?)?;
                                Some((ObjectKind::Chunk, h))
                            }
                            WarmRef::List { .. } => list.map(|h| (ObjectKind::List, h)),
                        }
                    })
                    .filter(|o| seen.insert(*o))
                    .take(super::format::WARM_MAX)
                    .collect()
            },
        };
        self.put_manifest(&manifest).await?;
        debug!(%db, image = %id, ?stats, "image captured");
        Ok((manifest, stats))
    }

    async fn capture_file(
        &self,
        db: &DatabaseName,
        sf: &SourceFile,
        chunk_size: u32,
        read: &(dyn Fn(u64, u64, usize) -> Result<Vec<u8>, StorageError> + Sync),
        known: &mut HashSet<ChunkHash>,
        stats: &mut CaptureStats,
    ) -> Result<Vec<Option<ChunkHash>>, StorageError> {
        let n = sf.size.div_ceil(u64::from(chunk_size));
        if sf.chunks.len() as u64 != n {
            return Err(StorageError::Corrupt {
                what: format!("capture of {}", sf.path),
                reason: format!("{} chunk origins for {} bytes", sf.chunks.len(), sf.size),
            });
        }
        let mut hashes = Vec::with_capacity(n as usize);
        let mut uploads = Vec::new();
        for (i, origin) in sf.chunks.iter().enumerate() {
            let off = i as u64 * u64::from(chunk_size);
            let len = (sf.size - off).min(u64::from(chunk_size)) as usize;
            let buf = match origin {
                ChunkOrigin::Known(h) => {
                    match h {
                        Some(h) => {
                            stats.chunks_reused += 1;
                            known.insert(*h);
                        }
                        None => stats.zero_chunks += 1,
                    }
                    hashes.push(*h);
                    continue;
                }
                ChunkOrigin::Read => read(sf.handle, off, len)?,
            };
            if buf.iter().all(|b| *b == 0) {
                stats.zero_chunks += 1;
                hashes.push(None);
                continue;
            }
            let h = ChunkHash::of(&buf);
            hashes.push(Some(h));
            if known.insert(h) {
                stats.chunks_uploaded += 1;
                stats.bytes_uploaded += len as u64;
                uploads.push(Bytes::from(buf));
            } else {
                stats.chunks_reused += 1;
            }
        }
        futures::stream::iter(uploads)
            .map(|b| {
                let (this, db) = (self.clone(), db.clone());
                async move { this.put_chunk(&db, b).await }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(hashes)
    }

    /// Write image `m` into the empty directory `dir`, fetching every chunk.
    pub async fn restore(&self, m: &Manifest, dir: &Path) -> Result<RestoreStats, StorageError> {
        let mut stats = RestoreStats::default();
        let mut fetches = Vec::new();
        for f in &m.files {
            let path = dir.join(&f.path);
            match &f.content {
                None => {
                    spg_core::fsmode::private_dir(&path)
                        .map_err(|e| StorageError::io("create dir", &path, e))?;
                }
                Some(c) => {
                    stats.files += 1;
                    let file = spg_core::fsmode::create_private(&path)
                        .map_err(|e| StorageError::io("create", &path, e))?;
                    if let Content::Inline(b) = c {
                        file.write_all_at(b, 0)
                            .map_err(|e| StorageError::io("write", &path, e))?;
                    } else {
                        file.set_len(f.size)
                            .map_err(|e| StorageError::io("extend", &path, e))?;
                        let file = Arc::new(file);
                        for (i, h) in self.chunks_of(m, f).await?.into_iter().enumerate() {
                            if let Some(h) = h {
                                let off = i as u64 * u64::from(m.chunk_size);
                                fetches.push((Arc::clone(&file), path.clone(), off, h));
                            }
                        }
                    }
                }
            }
        }
        let fetched: Vec<u64> = futures::stream::iter(fetches)
            .map(|(file, path, off, h)| {
                let (this, db) = (self.clone(), m.database.clone());
                async move {
                    let b = this.chunk(&db, &h).await?;
                    file.write_all_at(&b, off)
                        .map_err(|e| StorageError::io("write", &path, e))?;
                    Ok::<u64, StorageError>(b.len() as u64)
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        stats.bytes_fetched = fetched.iter().sum();
        // Modes last: PostgreSQL's directories are 0700, which a later create must not hit first.
        for f in m.files.iter().rev() {
            let path = dir.join(&f.path);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
                .map_err(|e| StorageError::io("chmod", &path, e))?;
        }
        Ok(stats)
    }
}

/// Every directory and regular file under `root` that `include` accepts, parents before
/// children: (relative path, path, metadata).
fn walk(
    root: &Path,
    include: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, StorageError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| StorageError::io("read dir", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("read dir", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if !include(&child_rel) {
                continue;
            }
            let path = entry.path();
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| StorageError::io("stat", &path, e))?;
            if meta.is_dir() {
                stack.push((child_rel.clone(), path.clone()));
                out.push((child_rel, path, meta));
            } else if meta.is_file() {
                out.push((child_rel, path, meta));
            } else {
                // A symlink (a tablespace) or a special file: an image would silently lose it.
                return Err(StorageError::Unsupported(format!(
                    "{child_rel} is neither a regular file nor a directory"
                )));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

//! lazyfs: a FUSE filesystem that shows an image's data directory at once and fetches each chunk
//! on its first read.
//!
//! Every file and directory of the image's manifest is visible from the start. A file's bytes
//! live in a sparse local backing file; a chunk is fetched from the [`ChunkSource`] the first time
//! any byte of it is read (or partly overwritten), and from then on is served locally. Writes go
//! to the backing file and mark their chunks dirty; creating, truncating, unlinking and renaming
//! files, directories and symlinks behave as PostgreSQL expects from a local filesystem.
//! [`LazyTree::changes`] lists what the running compute changed, which is what a write-back
//! uploads.
//!
//! [`LazyTree`] holds the state and implements the operations; [`mount`] serves it through the
//! kernel's FUSE interface (`fuser`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::image::{
    ChunkHash, ChunkOrigin, Content, FileEntry, ImageStore, Manifest, ObjectKind, SourceFile,
    WarmRef,
};
use crate::StorageError;

/// How many chunks a sequential read fetches at once (the one asked for and those after it).
pub const READ_AHEAD: usize = 8;

/// Where chunks come from (blocking: FUSE requests are served on plain threads).
pub trait ChunkSource: Send + Sync + 'static {
    /// The bytes of chunk `h`.
    fn chunk(&self, h: &ChunkHash) -> Result<Bytes, StorageError>;
    /// The bytes of several chunks, in order (one round trip where the source is remote).
    fn chunks(&self, hs: &[ChunkHash]) -> Result<Vec<Bytes>, StorageError> {
        hs.iter().map(|h| self.chunk(h)).collect()
    }
    /// The chunk hashes of a file entry of the image.
    fn chunks_of(&self, entry: &FileEntry) -> Result<Vec<Option<ChunkHash>>, StorageError>;
}

/// A [`ChunkSource`] reading an image through an [`ImageStore`], starting with the objects a
/// soft basebackup brought along.
pub struct ImageChunks {
    images: ImageStore,
    manifest: Arc<Manifest>,
    /// Objects that came with the basebackup; each is handed out once (then it is local).
    preloaded: Mutex<HashMap<(ObjectKind, ChunkHash), Bytes>>,
    rt: tokio::runtime::Handle,
}

impl ImageChunks {
    /// Chunks of `manifest`'s image, fetched on the runtime `rt`.
    pub fn new(images: ImageStore, manifest: Arc<Manifest>, rt: tokio::runtime::Handle) -> Self {
        Self::with_preloaded(images, manifest, HashMap::new(), rt)
    }

    /// Like [`ImageChunks::new`], with objects already at hand (checked against their hashes).
    pub fn with_preloaded(
        images: ImageStore,
        manifest: Arc<Manifest>,
        preloaded: HashMap<(ObjectKind, ChunkHash), Bytes>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        ImageChunks {
            images,
            manifest,
            preloaded: Mutex::new(preloaded),
            rt,
        }
    }

    fn take_preloaded(&self, kind: ObjectKind, h: &ChunkHash) -> Option<Bytes> {
        self.preloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(kind, *h))
    }
}

impl ChunkSource for ImageChunks {
    fn chunk(&self, h: &ChunkHash) -> Result<Bytes, StorageError> {
        if let Some(b) = self.take_preloaded(ObjectKind::Chunk, h) {
            return Ok(b);
        }
        self.rt
            .block_on(self.images.chunk(&self.manifest.database, h))
    }

    fn chunks(&self, hs: &[ChunkHash]) -> Result<Vec<Bytes>, StorageError> {
        let mut out: Vec<Option<Bytes>> = hs
            .iter()
            .map(|h| self.take_preloaded(ObjectKind::Chunk, h))
            .collect();
        let missing: Vec<ChunkHash> = hs
            .iter()
            .zip(&out)
            .filter(|(_, b)| b.is_none())
            .map(|(h, _)| *h)
            .collect();
        if !missing.is_empty() {
            let t0 = std::time::Instant::now();
            let mut got = self
                .rt
                .block_on(self.images.objects(
                    &self.manifest.database,
                    ObjectKind::Chunk,
                    &missing,
                ))?
                .into_iter();
            tracing::debug!(
                n = missing.len(),
                ms = t0.elapsed().as_secs_f64() * 1e3,
                "lazyfs fetched"
            );
            for slot in out.iter_mut().filter(|b| b.is_none()) {
                *slot = got.next();
            }
        }
        out.into_iter()
            .map(|b| {
                b.ok_or_else(|| StorageError::Corrupt {
                    what: "chunk batch".into(),
                    reason: "fewer chunks than asked for".into(),
                })
            })
            .collect()
    }

    fn chunks_of(&self, entry: &FileEntry) -> Result<Vec<Option<ChunkHash>>, StorageError> {
        if let Some(Content::List(h)) = &entry.content {
            if let Some(b) = self.take_preloaded(ObjectKind::List, h) {
                let (size, chunks) = crate::image::format::decode_list(&b)?;
                if size == self.manifest.chunk_size
                    && chunks.len() as u64 == entry.size.div_ceil(u64::from(size))
                {
                    return Ok(chunks);
                }
            }
        }
        self.rt
            .block_on(self.images.chunks_of(&self.manifest, entry))
    }
}

/// Errors of filesystem operations, as the errno the kernel passes on.
pub type FsResult<T> = Result<T, i32>;

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// What kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// The attributes of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: NodeKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification.
    pub mtime: SystemTime,
}

struct FileData {
    size: u64,
    /// Bytes below this came from the image; above it the file is new.
    orig_size: u64,
    /// Created on first use: a mount touches few of its files.
    backing: Option<File>,
    backing_path: PathBuf,
    /// Inline bytes from the manifest, until the backing file exists.
    inline: Option<Vec<u8>>,
    /// The image's entry, until its chunk hashes are loaded.
    entry: Option<FileEntry>,
    /// Chunk hashes of the image's bytes (loaded on first need).
    chunks: Option<Vec<Option<ChunkHash>>>,
    /// Chunks whose image bytes are in the backing file.
    present: Vec<bool>,
    /// Chunks written since the mount.
    dirty: Vec<bool>,
    /// The last chunk fetched: a fetch of the next one is a sequential read and reads ahead.
    last_fetched: Option<u64>,
    /// Its path in the image (files made since the mount have none).
    origin: Option<Arc<str>>,
}

impl FileData {
    /// The backing file, created on first use with the file's size and inline bytes.
    fn file(&mut self) -> std::io::Result<&File> {
        if self.backing.is_none() {
            let f = spg_core::fsmode::private_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.backing_path)?;
            f.set_len(self.size)?;
            if let Some(b) = self.inline.take() {
                let keep = b.len().min(self.size as usize);
                f.write_all_at(&b[..keep], 0)?;
            }
            self.backing = Some(f);
        }
        self.backing
            .as_ref()
            .ok_or_else(|| std::io::Error::other("backing file vanished"))
    }
}

enum Body {
    Dir(BTreeMap<OsString, u64>),
    File(Box<FileData>),
    Symlink(PathBuf),
}

struct Node {
    parent: u64,
    mode: u32,
    mtime: SystemTime,
    body: Body,
}

/// Counters of a mounted tree.
#[derive(Debug, Default)]
pub struct LazyStats {
    /// Chunks fetched from the source.
    pub chunks_fetched: AtomicU64,
    /// Bytes fetched from the source.
    pub bytes_fetched: AtomicU64,
}

/// A change since the mount, for write-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file at this path has new content in these chunks (indices), or is new.
    File {
        /// Relative path.
        path: String,
        /// Dirty chunk indices.
        dirty: Vec<u64>,
    },
}

struct Inner {
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    cache: PathBuf,
    chunk_size: u64,
}

/// The state of a lazy data directory; see the module documentation.
pub struct LazyTree {
    inner: Mutex<Inner>,
    source: Arc<dyn ChunkSource>,
    stats: Arc<LazyStats>,
    mounted_at: Instant,
    /// Where reads within [`WARM_WINDOW`] of the start fetched, in order.
    warm: Mutex<Vec<WarmRef>>,
}

/// What a compute fetches this soon after its tree was made becomes the next image's warm set
/// ([`Manifest::warm`]).
pub const WARM_WINDOW: Duration = Duration::from_secs(2);

/// Files up to this size have their chunk list in the warm set (up to ~70 KB of list).
pub const WARM_LIST_MAX_FILE: u64 = 128 << 20;

fn split(path: &str) -> (Option<&str>, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, path),
    }
}

fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl LazyTree {
    /// The tree of `manifest`, with backing files under `cache` (an empty directory on local
    /// disk) and chunks from `source`.
    pub fn new(
        manifest: &Manifest,
        cache: &Path,
        source: Arc<dyn ChunkSource>,
    ) -> Result<Self, StorageError> {
        spg_core::fsmode::private_dir(cache)
            .map_err(|e| StorageError::io("create dir", cache, e))?;
        let now = SystemTime::now();
        let mut inner = Inner {
            nodes: BTreeMap::new(),
            next_ino: ROOT + 1,
            cache: cache.to_path_buf(),
            chunk_size: u64::from(manifest.chunk_size),
        };
        inner.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                mode: 0o700,
                mtime: now,
                body: Body::Dir(BTreeMap::new()),
            },
        );
        let mut by_path: BTreeMap<String, u64> = BTreeMap::new();
        for f in &manifest.files {
            let (parent_path, name) = split(&f.path);
            let parent = match parent_path {
                None => ROOT,
                Some(p) => *by_path.get(p).ok_or_else(|| StorageError::Corrupt {
                    what: "image manifest".into(),
                    reason: format!("{} has no parent directory", f.path),
                })?,
            };
            let ino = inner.next_ino;
            inner.next_ino += 1;
            let body = match &f.content {
                None => Body::Dir(BTreeMap::new()),
                Some(content) => {
                    let n = f.size.div_ceil(inner.chunk_size) as usize;
                    let mut data = FileData {
                        size: f.size,
                        orig_size: f.size,
                        backing: None,
                        backing_path: inner.backing_path(ino),
                        inline: None,
                        entry: None,
                        chunks: None,
                        present: vec![false; n],
                        dirty: vec![false; n],
                        last_fetched: None,
                        origin: Some(f.path.as_str().into()),
                    };
                    match content {
                        Content::Inline(b) => {
                            data.inline = Some(b.clone());
                            data.present.fill(true);
                            data.chunks = Some(vec![None; n]);
                        }
                        Content::Chunks(c) => data.chunks = Some(c.clone()),
                        Content::List(_) => data.entry = Some(f.clone()),
                    }
                    Body::File(Box::new(data))
                }
            };
            inner.nodes.insert(
                ino,
                Node {
                    parent,
                    mode: f.mode,
                    mtime: now,
                    body,
                },
            );
            if let Some(Body::Dir(children)) = inner.nodes.get_mut(&parent).map(|n| &mut n.body) {
                children.insert(OsString::from(name), ino);
            }
            by_path.insert(f.path.clone(), ino);
        }
        Ok(LazyTree {
            inner: Mutex::new(inner),
            source,
            stats: Arc::default(),
            mounted_at: Instant::now(),
            warm: Mutex::default(),
        })
    }

    /// Where reads fetched within [`WARM_WINDOW`] of the tree's creation, in the order
    /// fetched: by place (a file's path in the image and a chunk's index), so that a chunk the
    /// compute rewrote later (`pg_control`, a catalog page) names its new bytes in the next
    /// image's warm set, which a start reads again.
    pub fn warm(&self) -> Vec<WarmRef> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note_fetched(&self, place: WarmRef) {
        if self.mounted_at.elapsed() < WARM_WINDOW {
            let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            if warm.len() < crate::image::format::WARM_MAX {
                warm.push(place);
            }
        }
    }

    /// The tree's counters.
    pub fn stats(&self) -> Arc<LazyStats> {
        Arc::clone(&self.stats)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.lock().attr(ino)
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let inner = self.lock();
        let ino = inner.child(parent, name)?.ok_or(libc::ENOENT)?;
        inner.attr(ino)
    }

    /// Entries of directory `ino`: (inode, kind, name), without `.` and `..`.
    pub fn readdir(&self, ino: u64) -> FsResult<Vec<(u64, NodeKind, OsString)>> {
        let inner = self.lock();
        match &inner.node(ino)?.body {
            Body::Dir(children) => Ok(children
                .iter()
                .filter_map(|(name, c)| inner.attr(*c).ok().map(|a| (*c, a.kind, name.clone())))
                .collect()),
            _ => Err(libc::ENOTDIR),
        }
    }

    /// Parent of directory `ino`.
    pub fn parent_of(&self, ino: u64) -> FsResult<u64> {
        Ok(self.lock().node(ino)?.parent)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<PathBuf> {
        match &self.lock().node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// Read up to `len` bytes at `off` of file `ino`.
    pub fn read(&self, ino: u64, off: u64, len: u32) -> FsResult<Vec<u8>> {
        let mut inner = self.lock();
        let cs = inner.chunk_size;
        let f = inner.file_mut(ino)?;
        if off >= f.size {
            return Ok(Vec::new());
        }
        let end = (off + u64::from(len)).min(f.size);
        for idx in off / cs..end.div_ceil(cs) {
            self.ensure_present(f, cs, idx)?;
        }
        let mut buf = vec![0u8; (end - off) as usize];
        f.file()
            .and_then(|b| b.read_exact_at(&mut buf, off))
            .map_err(|e| io_errno(&e))?;
        Ok(buf)
    }

    /// Write `data` at `off` of file `ino`; returns the bytes written.
    pub fn write(&self, ino: u64, off: u64, data: &[u8]) -> FsResult<u32> {
        let mut inner = self.lock();
        let cs = inner.chunk_size;
        let f = inner.file_mut(ino)?;
        let end = off + data.len() as u64;
        if data.is_empty() {
            return Ok(0);
        }
        // Chunks only partly overwritten need their image bytes first.
        let first = off / cs;
        let last = (end - 1) / cs;
        for idx in [first, last] {
            let (cstart, cend) = (idx * cs, (idx + 1) * cs);
            // Image bytes of the chunk the write leaves in place must be fetched first.
            if off > cstart || end < cend.min(f.orig_size) {
                self.ensure_present(f, cs, idx)?;
            }
        }
        f.file()
            .and_then(|b| b.write_all_at(data, off))
            .map_err(|e| io_errno(&e))?;
        if end > f.size {
            f.size = end;
        }
        let n = f.size.div_ceil(cs) as usize;
        f.present.resize(n, true);
        f.dirty.resize(n, false);
        for idx in first..=last {
            f.present[idx as usize] = true;
            f.dirty[idx as usize] = true;
        }
        if let Some(node) = inner.nodes.get_mut(&ino) {
            node.mtime = SystemTime::now();
        }
        Ok(data.len() as u32)
    }

    /// Change size and/or mode of `ino`.
    pub fn setattr(&self, ino: u64, size: Option<u64>, mode: Option<u32>) -> FsResult<Attr> {
        let mut inner = self.lock();
        let cs = inner.chunk_size;
        if let Some(new) = size {
            let f = inner.file_mut(ino)?;
            if new < f.size && new % cs != 0 {
                // The chunk the file now ends in keeps its image bytes below the cut.
                self.ensure_present(f, cs, new / cs)?;
            }
            f.file()
                .and_then(|b| b.set_len(new))
                .map_err(|e| io_errno(&e))?;
            if new < f.orig_size {
                f.orig_size = new;
            }
            let n = new.div_ceil(cs) as usize;
            f.present.resize(n, true);
            f.dirty.resize(n, true);
            // The chunk the old or new end falls in changed (cut off, or zero-extended).
            for d in f.dirty.iter_mut().skip((f.size.min(new) / cs) as usize) {
                *d = true;
            }
            if let Some(c) = &mut f.chunks {
                c.truncate(n);
            }
            f.size = new;
        }
        let node = inner.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        if let Some(m) = mode {
            node.mode = m & 0o7777;
        }
        node.mtime = SystemTime::now();
        inner.attr(ino)
    }

    /// Create an empty regular file.
    pub fn create(&self, parent: u64, name: &OsStr, mode: u32) -> FsResult<Attr> {
        let mut inner = self.lock();
        if inner.child(parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let ino = inner.next_ino;
        let data = FileData {
            size: 0,
            orig_size: 0,
            backing: None,
            backing_path: inner.backing_path(ino),
            inline: None,
            entry: None,
            chunks: Some(Vec::new()),
            present: Vec::new(),
            dirty: Vec::new(),
            last_fetched: None,
            origin: None,
        };
        inner.insert(parent, name, mode, Body::File(Box::new(data)))
    }

    /// Create a directory.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> FsResult<Attr> {
        let mut inner = self.lock();
        if inner.child(parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        inner.insert(parent, name, mode, Body::Dir(BTreeMap::new()))
    }

    /// Create a symlink.
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &Path) -> FsResult<Attr> {
        let mut inner = self.lock();
        if inner.child(parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        inner.insert(parent, name, 0o777, Body::Symlink(target.to_path_buf()))
    }

    /// Remove a file or symlink.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let mut inner = self.lock();
        let ino = inner.child(parent, name)?.ok_or(libc::ENOENT)?;
        if matches!(inner.node(ino)?.body, Body::Dir(_)) {
            return Err(libc::EISDIR);
        }
        inner.detach(parent, name);
        inner.drop_node(ino);
        Ok(())
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let mut inner = self.lock();
        let ino = inner.child(parent, name)?.ok_or(libc::ENOENT)?;
        match &inner.node(ino)?.body {
            Body::Dir(c) if c.is_empty() => {}
            Body::Dir(_) => return Err(libc::ENOTEMPTY),
            _ => return Err(libc::ENOTDIR),
        }
        inner.detach(parent, name);
        inner.nodes.remove(&ino);
        Ok(())
    }

    /// Rename, replacing a target file or empty directory unless `noreplace`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> FsResult<()> {
        let mut inner = self.lock();
        let ino = inner.child(parent, name)?.ok_or(libc::ENOENT)?;
        if let Some(target) = inner.child(new_parent, new_name)? {
            if target == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            let src_dir = matches!(inner.node(ino)?.body, Body::Dir(_));
            match &inner.node(target)?.body {
                Body::Dir(c) if !src_dir => {
                    let _ = c;
                    return Err(libc::EISDIR);
                }
                Body::Dir(c) if !c.is_empty() => return Err(libc::ENOTEMPTY),
                Body::Dir(_) => {}
                _ if src_dir => return Err(libc::ENOTDIR),
                _ => {}
            }
            inner.detach(new_parent, new_name);
            inner.drop_node(target);
        }
        // A directory may not move below itself.
        let mut up = new_parent;
        while up != ROOT {
            if up == ino {
                return Err(libc::EINVAL);
            }
            up = inner.node(up)?.parent;
        }
        inner.detach(parent, name);
        match &mut inner.node_mut(new_parent)?.body {
            Body::Dir(c) => {
                c.insert(new_name.to_os_string(), ino);
            }
            _ => return Err(libc::ENOTDIR),
        }
        let node = inner.node_mut(ino)?;
        node.parent = new_parent;
        node.mtime = SystemTime::now();
        Ok(())
    }

    /// Make `ino`'s bytes durable in its backing file.
    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        let mut inner = self.lock();
        match inner.file_mut(ino) {
            Ok(FileData {
                backing: Some(b), ..
            }) => b.sync_data().map_err(|e| io_errno(&e)),
            // Nothing written yet, or not a file: nothing to make durable.
            _ => Ok(()),
        }
    }

    /// What changed since the mount: files with dirty chunks or new content, by path.
    pub fn changes(&self) -> Vec<Change> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (ino, node) in &inner.nodes {
            if let Body::File(f) = &node.body {
                let dirty: Vec<u64> = f
                    .dirty
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| **d)
                    .map(|(i, _)| i as u64)
                    .collect();
                if !dirty.is_empty() {
                    if let Some(path) = inner.path_of(*ino) {
                        out.push(Change::File { path, dirty });
                    }
                }
            }
        }
        out
    }

    /// What a write-back of this tree stores, parents before children (symlinks and what
    /// `include` rejects left out): unchanged chunks by their image hash, the rest to be read
    /// locally with [`LazyTree::read_local`] (handle = inode). Loads chunk lists it still needs
    /// (blocking), but never fetches a chunk.
    pub fn plan(&self, include: &dyn Fn(&str) -> bool) -> Result<Vec<SourceFile>, StorageError> {
        let mut inner = self.lock();
        let cs = inner.chunk_size;
        let mut order = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            if let Some(Node {
                body: Body::Dir(children),
                ..
            }) = inner.nodes.get(&dir)
            {
                for (name, ino) in children {
                    let name = String::from_utf8_lossy(name.as_bytes());
                    let path = if prefix.is_empty() {
                        name.into_owned()
                    } else {
                        format!("{prefix}/{name}")
                    };
                    if !include(&path) {
                        continue;
                    }
                    if matches!(inner.nodes.get(ino).map(|n| &n.body), Some(Body::Dir(_))) {
                        stack.push((*ino, path.clone()));
                    }
                    order.push((path, *ino));
                }
            }
        }
        order.sort();
        let mut out = Vec::with_capacity(order.len());
        for (path, ino) in order {
            let Some(node) = inner.nodes.get_mut(&ino) else {
                continue;
            };
            let mode = node.mode;
            match &mut node.body {
                Body::Dir(_) => out.push(SourceFile {
                    path,
                    mode,
                    size: 0,
                    is_dir: true,
                    chunks: Vec::new(),
                    handle: ino,
                }),
                Body::Symlink(_) => {}
                Body::File(f) => {
                    let n = f.size.div_ceil(cs) as usize;
                    let clean = |i: usize| {
                        !f.dirty.get(i).copied().unwrap_or(true) && (i as u64) * cs < f.orig_size
                    };
                    if (0..n).any(clean) && f.chunks.is_none() {
                        if let Some(entry) = f.entry.take() {
                            f.chunks = Some(self.source.chunks_of(&entry)?);
                        }
                    }
                    let known = f.chunks.clone().unwrap_or_default();
                    let chunks = (0..n)
                        .map(|i| match known.get(i) {
                            Some(h) if clean(i) => ChunkOrigin::Known(*h),
                            _ => ChunkOrigin::Read,
                        })
                        .collect();
                    out.push(SourceFile {
                        path,
                        mode,
                        size: f.size,
                        is_dir: false,
                        chunks,
                        handle: ino,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Read bytes of file `ino` from its backing file only (chunks [`LazyTree::plan`] marked to
    /// be read are always local).
    pub fn read_local(&self, ino: u64, off: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut inner = self.lock();
        let f = inner.file_mut(ino).map_err(|e| StorageError::Corrupt {
            what: format!("lazy file {ino}"),
            reason: format!("errno {e}"),
        })?;
        let mut buf = vec![0u8; len];
        f.file()
            .and_then(|b| b.read_exact_at(&mut buf, off))
            .map_err(|e| StorageError::io("read", &f.backing_path, e))?;
        Ok(buf)
    }

    /// Bring chunk `idx` of `f` into the backing file if its image bytes are not there yet.
    fn ensure_present(&self, f: &mut FileData, cs: u64, idx: u64) -> FsResult<()> {
        let i = idx as usize;
        if f.present.get(i).copied().unwrap_or(true) || idx * cs >= f.orig_size {
            return Ok(());
        }
        if f.chunks.is_none() {
            let entry = f.entry.take().ok_or(libc::EIO)?;
            if let (Some(Content::List(_)), Some(path)) = (&entry.content, &f.origin) {
                // A big file's list is large and says where every chunk of it is, while a
                // start touches a few of them: fetched on demand, not part of the warm set.
                if f.orig_size <= WARM_LIST_MAX_FILE {
                    self.note_fetched(WarmRef::List {
                        path: Arc::clone(path),
                    });
                }
            }
            let chunks = self.source.chunks_of(&entry).map_err(|e| {
                tracing::error!(error = %e, "lazyfs: loading a chunk list failed");
                f.entry = Some(entry.clone());
                libc::EIO
            })?;
            f.chunks = Some(chunks);
        }
        let chunks = f.chunks.as_ref().ok_or(libc::EIO)?;
        let h = chunks.get(i).copied().ok_or(libc::EIO)?;
        let Some(h) = h else {
            // All zeros: the sparse backing file already reads as zeros.
            f.present[i] = true;
            return Ok(());
        };
        // The chunk, and when the file is being read sequentially the chunks after it that are
        // not here yet (stopping at the first one that is, or at the image's end).
        let mut want = vec![(idx, h)];
        if idx > 0 && f.last_fetched == Some(idx - 1) {
            for j in idx + 1..idx + READ_AHEAD as u64 {
                let ju = j as usize;
                if j * cs >= f.orig_size || f.present.get(ju).copied().unwrap_or(true) {
                    break;
                }
                if let Some(Some(hj)) = chunks.get(ju) {
                    want.push((j, *hj));
                }
            }
        }
        let hashes: Vec<ChunkHash> = want.iter().map(|(_, h)| *h).collect();
        let got = self.source.chunks(&hashes).map_err(|e| {
            tracing::error!(error = %e, chunk = %h, "lazyfs: fetching a chunk failed");
            libc::EIO
        })?;
        for ((j, _), bytes) in want.iter().zip(&got) {
            let start = j * cs;
            let keep = (f.orig_size - start).min(bytes.len() as u64) as usize;
            f.file()
                .and_then(|b| b.write_all_at(&bytes[..keep], start))
                .map_err(|e| io_errno(&e))?;
            f.present[*j as usize] = true;
            if let Some(path) = &f.origin {
                self.note_fetched(WarmRef::Chunk {
                    path: Arc::clone(path),
                    index: *j,
                });
            }
            self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_fetched
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        f.last_fetched = want.last().map(|(j, _)| *j);
        Ok(())
    }
}

impl Inner {
    fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn file_mut(&mut self, ino: u64) -> FsResult<&mut FileData> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
            Body::Symlink(_) => Err(libc::EINVAL),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> FsResult<Option<u64>> {
        match &self.node(parent)?.body {
            Body::Dir(c) => Ok(c.get(name).copied()),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn attr(&self, ino: u64) -> FsResult<Attr> {
        let n = self.node(ino)?;
        let (kind, size) = match &n.body {
            Body::Dir(_) => (NodeKind::Dir, 0),
            Body::File(f) => (NodeKind::File, f.size),
            Body::Symlink(t) => (NodeKind::Symlink, t.as_os_str().len() as u64),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            mode: n.mode,
            mtime: n.mtime,
        })
    }

    fn backing_path(&self, ino: u64) -> PathBuf {
        self.cache.join(format!("{ino}"))
    }

    fn insert(&mut self, parent: u64, name: &OsStr, mode: u32, body: Body) -> FsResult<Attr> {
        let ino = self.next_ino;
        match &mut self.node_mut(parent)?.body {
            Body::Dir(c) => {
                c.insert(name.to_os_string(), ino);
            }
            _ => return Err(libc::ENOTDIR),
        }
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                mode: mode & 0o7777,
                mtime: SystemTime::now(),
                body,
            },
        );
        self.attr(ino)
    }

    fn detach(&mut self, parent: u64, name: &OsStr) {
        if let Some(Node {
            body: Body::Dir(c), ..
        }) = self.nodes.get_mut(&parent)
        {
            c.remove(name);
        }
    }

    fn drop_node(&mut self, ino: u64) {
        if let Some(Node {
            body: Body::File(f),
            ..
        }) = self.nodes.remove(&ino)
        {
            // Open handles keep working on the kernel side only as far as PostgreSQL needs:
            // it never reads a file it unlinked.
            let _ = std::fs::remove_file(&f.backing_path);
        }
    }

    fn path_of(&self, mut ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        while ino != ROOT {
            let node = self.nodes.get(&ino)?;
            let parent = self.nodes.get(&node.parent)?;
            let Body::Dir(c) = &parent.body else {
                return None;
            };
            let name = c.iter().find(|(_, i)| **i == ino)?.0;
            parts.push(String::from_utf8_lossy(name.as_bytes()).into_owned());
            ino = node.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }
}

/// The FUSE adapter.
struct Fuse {
    slot: Arc<TreeSlot>,
    uid: u32,
    gid: u32,
}

/// The tree a mount serves, set once: at mount time, or later ([`PendingMount::serve`]); until
/// then requests wait (nothing but the agent touches a directory before its compute starts).
/// `None`: the mount is torn down without ever serving a tree. Once set, reading it takes no
/// lock.
#[derive(Default)]
struct TreeSlot {
    tree: std::sync::OnceLock<Option<Arc<LazyTree>>>,
    waiting: Mutex<()>,
    set: std::sync::Condvar,
}

impl TreeSlot {
    fn set(&self, tree: Option<Arc<LazyTree>>) {
        let _ = self.tree.set(tree);
        let _guard = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        self.set.notify_all();
    }

    fn get(&self) -> &Option<Arc<LazyTree>> {
        if let Some(t) = self.tree.get() {
            return t;
        }
        let mut guard = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(t) = self.tree.get() {
                return t;
            }
            guard = self.set.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Fuse {
    fn attr(&self, a: &Attr) -> fuser::FileAttr {
        let kind = match a.kind {
            NodeKind::Dir => fuser::FileType::Directory,
            NodeKind::File => fuser::FileType::RegularFile,
            NodeKind::Symlink => fuser::FileType::Symlink,
        };
        fuser::FileAttr {
            ino: fuser::INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind,
            perm: (a.mode & 0o7777) as u16,
            nlink: if a.kind == NodeKind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn errno(e: i32) -> fuser::Errno {
    fuser::Errno::from_i32(e)
}

fn reply_empty(r: FsResult<()>, reply: fuser::ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl Fuse {
    fn tree(&self) -> FsResult<&LazyTree> {
        self.slot.get().as_deref().ok_or(libc::EIO)
    }

    fn reply_entry(&self, r: FsResult<Attr>, reply: fuser::ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), fuser::Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_attr(&self, r: FsResult<Attr>, reply: fuser::ReplyAttr) {
        match r {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// How files are opened: page cache kept across opens (every change goes through this mount),
/// and no FLUSH request on every close (writes are already through by then: no write-back cache).
fn open_flags() -> fuser::FopenFlags {
    fuser::FopenFlags::FOPEN_KEEP_CACHE | fuser::FopenFlags::FOPEN_NOFLUSH
}

impl fuser::Filesystem for Fuse {
    /// No extended attributes: ENOSYS tells the kernel once for the whole mount (it then stops
    /// asking, e.g. for `security.capability` on every write), without the default's log line.
    fn getxattr(
        &self,
        _req: &fuser::Request,
        _ino: fuser::INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn listxattr(
        &self,
        _req: &fuser::Request,
        _ino: fuser::INodeNo,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn init(
        &mut self,
        _: &fuser::Request,
        config: &mut fuser::KernelConfig,
    ) -> std::io::Result<()> {
        // The kernel may cache symlink targets (pg_wal is one, resolved on every WAL file path).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        Ok(())
    }

    fn lookup(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        reply: fuser::ReplyEntry,
    ) {
        self.reply_entry(self.tree().and_then(|t| t.lookup(parent.0, name)), reply)
    }

    fn getattr(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: Option<fuser::FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        self.reply_attr(self.tree().and_then(|t| t.getattr(ino.0)), reply)
    }

    fn setattr(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<fuser::FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: fuser::ReplyAttr,
    ) {
        self.reply_attr(
            self.tree().and_then(|t| t.setattr(ino.0, size, mode)),
            reply,
        )
    }

    fn readlink(&self, _: &fuser::Request, ino: fuser::INodeNo, reply: fuser::ReplyData) {
        match self.tree().and_then(|t| t.readlink(ino.0)) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: fuser::ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(errno(libc::EPERM));
        }
        self.reply_entry(
            self.tree()
                .and_then(|t| t.create(parent.0, name, mode & !umask)),
            reply,
        )
    }

    fn mkdir(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: fuser::ReplyEntry,
    ) {
        self.reply_entry(
            self.tree()
                .and_then(|t| t.mkdir(parent.0, name, mode & !umask)),
            reply,
        )
    }

    fn unlink(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        reply: fuser::ReplyEmpty,
    ) {
        reply_empty(self.tree().and_then(|t| t.unlink(parent.0, name)), reply)
    }

    fn rmdir(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        reply: fuser::ReplyEmpty,
    ) {
        reply_empty(self.tree().and_then(|t| t.rmdir(parent.0, name)), reply)
    }

    fn symlink(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: fuser::ReplyEntry,
    ) {
        self.reply_entry(
            self.tree()
                .and_then(|t| t.symlink(parent.0, link_name, target)),
            reply,
        )
    }

    fn rename(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        newparent: fuser::INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: fuser::ReplyEmpty,
    ) {
        if flags.contains(fuser::RenameFlags::RENAME_EXCHANGE)
            || flags.contains(fuser::RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(errno(libc::EINVAL));
        }
        let noreplace = flags.contains(fuser::RenameFlags::RENAME_NOREPLACE);
        match self
            .tree()
            .and_then(|t| t.rename(parent.0, name, newparent.0, newname, noreplace))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: fuser::OpenFlags,
        reply: fuser::ReplyOpen,
    ) {
        match self.tree().and_then(|t| t.getattr(ino.0)) {
            Ok(_) => reply.opened(fuser::FileHandle(0), open_flags()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: fuser::FileHandle,
        offset: u64,
        size: u32,
        _: fuser::OpenFlags,
        _: Option<fuser::LockOwner>,
        reply: fuser::ReplyData,
    ) {
        match self.tree().and_then(|t| t.read(ino.0, offset, size)) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: fuser::FileHandle,
        offset: u64,
        data: &[u8],
        _: fuser::WriteFlags,
        _: fuser::OpenFlags,
        _: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        match self.tree().and_then(|t| t.write(ino.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _: &fuser::Request,
        _: fuser::INodeNo,
        _: fuser::FileHandle,
        _: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: fuser::FileHandle,
        _: bool,
        reply: fuser::ReplyEmpty,
    ) {
        reply_empty(self.tree().and_then(|t| t.fsync(ino.0)), reply)
    }

    fn readdir(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: fuser::FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectory,
    ) {
        let tree = match self.tree() {
            Ok(t) => t,
            Err(e) => return reply.error(errno(e)),
        };
        let entries = match tree.readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        let parent = tree.parent_of(ino.0).unwrap_or(ROOT);
        let mut all = vec![
            (ino.0, NodeKind::Dir, OsString::from(".")),
            (parent, NodeKind::Dir, OsString::from("..")),
        ];
        all.extend(entries);
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            let kind = match kind {
                NodeKind::Dir => fuser::FileType::Directory,
                NodeKind::File => fuser::FileType::RegularFile,
                NodeKind::Symlink => fuser::FileType::Symlink,
            };
            if reply.add(fuser::INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _: &fuser::Request,
        _: fuser::INodeNo,
        _: fuser::FileHandle,
        _: bool,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _: &fuser::Request, _: fuser::INodeNo, reply: fuser::ReplyStatfs) {
        reply.statfs(1 << 30, 1 << 29, 1 << 29, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn create(
        &self,
        _: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        match self
            .tree()
            .and_then(|t| t.create(parent.0, name, mode & !umask))
        {
            Ok(a) => reply.created(
                &TTL,
                &self.attr(&a),
                fuser::Generation(0),
                fuser::FileHandle(0),
                open_flags(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// A mounted lazy directory; unmounted when dropped.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    tree: Arc<LazyTree>,
    at: PathBuf,
}

impl Mount {
    /// The tree being served.
    pub fn tree(&self) -> &Arc<LazyTree> {
        &self.tree
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Unmount and wait for the serving thread. A mount still in use (processes of a killed
    /// compute still closing their files) is detached instead: it leaves the namespace at once
    /// and the kernel ends the session when the last file closes.
    pub fn unmount(mut self) -> Result<(), StorageError> {
        self.end()
    }

    fn end(&mut self) -> Result<(), StorageError> {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::debug!(at = %self.at.display(), error = %e, "lazyfs busy: detaching");
                detach(&self.at).map_err(|e| StorageError::io("unmount", &self.at, e))?;
            }
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Lazily unmount whatever is mounted at `path` (`MNT_DETACH`); an error if nothing is.
pub fn detach(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Serve `tree` at the empty directory `at`; files appear owned by `uid:gid`, and every user may
/// use the mount (the kernel checks permissions against the modes).
pub fn mount(tree: Arc<LazyTree>, at: &Path, uid: u32, gid: u32) -> Result<Mount, StorageError> {
    Ok(mount_pending(at, uid, gid)?.serve(tree))
}

/// Mount at the empty directory `at` before the tree to serve is known (mounting takes a few
/// milliseconds, which can overlap fetching what the tree is built from). Requests wait until
/// [`PendingMount::serve`]; dropping the pending mount unmounts it.
pub fn mount_pending(at: &Path, uid: u32, gid: u32) -> Result<PendingMount, StorageError> {
    let slot = Arc::new(TreeSlot::default());
    let fs = Fuse {
        slot: Arc::clone(&slot),
        uid,
        gid,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("spg-lazyfs".into()),
        fuser::MountOption::Subtype("spg".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    config.acl = fuser::SessionACL::All;
    let session = fuser::spawn_mount(fs, at, &config)
        .map_err(|e| StorageError::io("mount FUSE at", at, e))?;
    Ok(PendingMount {
        session: Some(session),
        slot,
        at: at.to_path_buf(),
    })
}

/// A mount waiting for its tree ([`mount_pending`]).
pub struct PendingMount {
    session: Option<fuser::BackgroundSession>,
    slot: Arc<TreeSlot>,
    at: PathBuf,
}

impl PendingMount {
    /// Serve `tree` from now on.
    pub fn serve(mut self, tree: Arc<LazyTree>) -> Mount {
        self.slot.set(Some(Arc::clone(&tree)));
        Mount {
            session: self.session.take(),
            tree,
            at: std::mem::take(&mut self.at),
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for PendingMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            // Nothing waits forever on a tree that never comes.
            self.slot.set(None);
            if s.umount_and_join().is_err() {
                let _ = detach(&self.at);
            }
        }
    }
}

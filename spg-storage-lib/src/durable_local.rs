//! [`DurableLocalStore`]: object storage in a local directory that keeps its promise across an
//! operating-system crash.
//!
//! `object_store`'s own [`LocalFileSystem`] writes through the page cache and never syncs: a put
//! that returned can vanish with a power loss. SPG relies on the opposite — safekeepers delete
//! their copy of a WAL segment once it is offloaded, and images replace the WAL they cover — so
//! the default single-machine deployment uses this store instead. It delegates reading, listing
//! and the write itself to [`LocalFileSystem`], and before any write returns it *seals* the
//! object:
//!
//! 1. the file is made `0600` and fsynced;
//! 2. its directory is fsynced (the new entry), and so is every ancestor directory up to the
//!    store's root whose own entry has not been made durable yet (directories created by this
//!    write); directories are made `0700`.
//!
//! A put that returns `Ok` — and a create-only put that finds the object already there, which
//! callers treat as done — has therefore reached the disk, file and directory entries alike.
//! The file system calls go through [`FileSync`], so tests can record them or make them fail.
//!
//! Deletes are not synced: nothing SPG promises rests on an object being gone. The store never
//! removes directories (so a directory once sealed stays sealed for the process's life).

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// The file system calls that make an object durable. [`OsFileSync`] is the real one.
pub trait FileSync: Send + Sync + fmt::Debug + 'static {
    /// fsync the regular file at `path`.
    fn sync_file(&self, path: &FsPath) -> std::io::Result<()>;
    /// fsync the directory at `path` (its entries).
    fn sync_dir(&self, path: &FsPath) -> std::io::Result<()>;
}

/// fsync through the operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFileSync;

impl FileSync for OsFileSync {
    fn sync_file(&self, path: &FsPath) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn sync_dir(&self, path: &FsPath) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
}

/// Object storage in a local directory whose writes are durable when they return (see the
/// module documentation).
pub struct DurableLocalStore {
    inner: LocalFileSystem,
    sealer: Arc<Sealer>,
}

/// What seals objects: shared with the blocking tasks that do it.
struct Sealer {
    root: PathBuf,
    sync: Arc<dyn FileSync>,
    /// Directories (by device and inode) whose own entry is durable all the way up to the root.
    sealed_dirs: Mutex<HashSet<(u64, u64)>>,
}

impl fmt::Debug for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableLocalStore")
            .field("root", &self.sealer.root)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.sealer.root.display())
    }
}

fn sync_err(path: &FsPath, source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DurableLocalStore",
        source: format!("making {} durable: {source}", path.display()).into(),
    }
}

impl DurableLocalStore {
    /// A store rooted at `root`, created `0700` if missing (an existing root is tightened to
    /// `0700`) and synced.
    pub fn open(root: impl AsRef<FsPath>) -> object_store::Result<Self> {
        Self::open_with(root, Arc::new(OsFileSync))
    }

    /// [`open`](Self::open) with the file system calls of `sync` (tests record them or fail
    /// them).
    pub fn open_with(
        root: impl AsRef<FsPath>,
        sync: Arc<dyn FileSync>,
    ) -> object_store::Result<Self> {
        let root = root.as_ref();
        crate::fsutil::create_private_dir(root).map_err(|e| object_store::Error::Generic {
            store: "DurableLocalStore",
            source: Box::new(e),
        })?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| sync_err(root, e))?;
        // LocalFileSystem maps keys to paths under the canonical root.
        let root = std::fs::canonicalize(root).map_err(|e| sync_err(root, e))?;
        // The root's own entry in its parent.
        sync.sync_dir(&root).map_err(|e| sync_err(&root, e))?;
        if let Some(parent) = root.parent() {
            sync.sync_dir(parent).map_err(|e| sync_err(parent, e))?;
        }
        let inner = LocalFileSystem::new_with_prefix(&root)?;
        Ok(DurableLocalStore {
            inner,
            sealer: Arc::new(Sealer {
                root,
                sync,
                sealed_dirs: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The directory this store keeps its objects in.
    pub fn root(&self) -> &FsPath {
        &self.sealer.root
    }

    /// Seal the object at `location` on a blocking thread.
    async fn seal(&self, location: &Path) -> object_store::Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        let sealer = Arc::clone(&self.sealer);
        tokio::task::spawn_blocking(move || sealer.seal(&file))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "DurableLocalStore",
                source: Box::new(e),
            })?
    }
}

impl Sealer {
    /// Make the file at `file` durable (see the module documentation).
    fn seal(&self, file: &FsPath) -> object_store::Result<()> {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| sync_err(file, e))?;
        self.sync.sync_file(file).map_err(|e| sync_err(file, e))?;
        let Some(mut dir) = file.parent() else {
            return Ok(());
        };
        // The file's own entry.
        self.sync.sync_dir(dir).map_err(|e| sync_err(dir, e))?;
        // Then each directory up to the root whose own entry is not known durable.
        let mut newly_sealed = Vec::new();
        while dir != self.root && dir.starts_with(&self.root) {
            let meta = std::fs::metadata(dir).map_err(|e| sync_err(dir, e))?;
            let id = (meta.dev(), meta.ino());
            if self.lock().contains(&id) {
                break;
            }
            if meta.permissions().mode() & 0o777 != 0o700 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| sync_err(dir, e))?;
            }
            let Some(parent) = dir.parent() else { break };
            self.sync
                .sync_dir(parent)
                .map_err(|e| sync_err(parent, e))?;
            newly_sealed.push(id);
            dir = parent;
        }
        // Recorded only now: a concurrent write that finds a directory in the set relies on it.
        self.lock().extend(newly_sealed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, u64)>> {
        self.sealed_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A multipart upload sealed on completion.
struct SealedUpload {
    inner: Box<dyn MultipartUpload>,
    store: Arc<Sealer>,
    file: PathBuf,
}

impl fmt::Debug for SealedUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedUpload")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MultipartUpload for SealedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        let sealer = Arc::clone(&self.store);
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || sealer.seal(&file))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "DurableLocalStore",
                source: Box::new(e),
            })??;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create_only = matches!(opts.mode, PutMode::Create);
        match self.inner.put_opts(location, payload, opts).await {
            Ok(result) => {
                self.seal(location).await?;
                Ok(result)
            }
            Err(e @ object_store::Error::AlreadyExists { .. }) if create_only => {
                // Callers take "already there" as done: what is there must be durable too (a
                // process that died between its write and its seal left it unsealed).
                self.seal(location).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SealedUpload {
            inner,
            store: Arc::clone(&self.sealer),
            file: self.inner.path_to_filesystem(location)?,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await?;
        self.seal(to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.rename(from, to).await?;
        self.seal(to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await?;
        self.seal(to).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    /// A model of what survives a power loss: only what was synced. `sync_file` makes the
    /// file's current bytes durable; `sync_dir` makes the directory's current entries durable.
    #[derive(Debug, Default)]
    struct PowerLossModel {
        inner: Mutex<Model>,
        fail: bool,
    }

    #[derive(Debug, Default)]
    struct Model {
        content: HashMap<PathBuf, Vec<u8>>,
        entries: HashMap<PathBuf, BTreeSet<std::ffi::OsString>>,
        calls: Vec<(char, PathBuf)>,
    }

    impl FileSync for PowerLossModel {
        fn sync_file(&self, path: &FsPath) -> std::io::Result<()> {
            if self.fail {
                return Err(std::io::Error::other("injected EIO"));
            }
            let bytes = std::fs::read(path)?;
            let mut m = self.inner.lock().unwrap();
            m.calls.push(('f', path.to_path_buf()));
            m.content.insert(path.to_path_buf(), bytes);
            Ok(())
        }

        fn sync_dir(&self, path: &FsPath) -> std::io::Result<()> {
            if self.fail {
                return Err(std::io::Error::other("injected EIO"));
            }
            let names = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<BTreeSet<_>, _>>()?;
            let mut m = self.inner.lock().unwrap();
            m.calls.push(('d', path.to_path_buf()));
            m.entries.insert(path.to_path_buf(), names);
            Ok(())
        }
    }

    impl PowerLossModel {
        /// Whether `file` would be found, with `bytes`, after a power loss now.
        fn survives(&self, root: &FsPath, file: &FsPath, bytes: &[u8]) -> bool {
            let m = self.inner.lock().unwrap();
            if m.content.get(file).map(Vec::as_slice) != Some(bytes) {
                return false;
            }
            let mut p = file;
            while p != root {
                let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
                    return false;
                };
                if !m.entries.get(parent).is_some_and(|e| e.contains(name)) {
                    return false;
                }
                p = parent;
            }
            true
        }

        fn take_calls(&self) -> Vec<(char, PathBuf)> {
            std::mem::take(&mut self.inner.lock().unwrap().calls)
        }
    }

    fn mode(p: &FsPath) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_put_that_returns_survives_a_power_loss() {
        let tmp = tempfile::tempdir().unwrap();
        let model = Arc::new(PowerLossModel::default());
        let store =
            DurableLocalStore::open_with(tmp.path().join("objects"), model.clone()).unwrap();
        let root = store.root().to_path_buf();
        // Puts at several depths, concurrent ones sharing new directories, overwrites, and
        // create-only puts.
        let keys: Vec<String> = (0..40)
            .map(|i| format!("wal/db{}/seg/{:04}", i % 3, i % 17))
            .collect();
        let mut puts = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let store = &store;
            let bytes = format!("object {i} at {k}").into_bytes();
            puts.push(async move {
                let path = Path::from(k.as_str());
                let mode = if i % 2 == 0 {
                    PutMode::Overwrite
                } else {
                    PutMode::Create
                };
                let r = store
                    .put_opts(&path, bytes.clone().into(), PutOptions::from(mode))
                    .await;
                (path, bytes, r)
            });
        }
        for (path, bytes, r) in futures::future::join_all(puts).await {
            let file = store.inner.path_to_filesystem(&path).unwrap();
            let now = std::fs::read(&file).unwrap();
            match r {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => panic!("put {path}: {e}"),
            }
            // Whatever is there now (this put's bytes or a later overwrite's) is durable.
            assert!(model.survives(&root, &file, &now), "{path} would be lost");
            let _ = bytes;
        }
        // Modes: objects 0600, directories 0700.
        for dir in ["wal", "wal/db0", "wal/db0/seg"] {
            assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
        }
        assert_eq!(mode(&root.join("wal/db0/seg/0000")), 0o600);
        assert_eq!(mode(&root), 0o700);
    }

    #[tokio::test]
    async fn directories_are_synced_once_files_every_time() {
        let tmp = tempfile::tempdir().unwrap();
        let model = Arc::new(PowerLossModel::default());
        let store = DurableLocalStore::open_with(tmp.path().join("o"), model.clone()).unwrap();
        let root = store.root().to_path_buf();
        model.take_calls();
        store.put(&Path::from("a/b/x"), "1".into()).await.unwrap();
        assert_eq!(
            model.take_calls(),
            vec![
                ('f', root.join("a/b/x")),
                ('d', root.join("a/b")),
                ('d', root.join("a")),
                ('d', root.clone()),
            ]
        );
        store.put(&Path::from("a/b/y"), "2".into()).await.unwrap();
        assert_eq!(
            model.take_calls(),
            vec![('f', root.join("a/b/y")), ('d', root.join("a/b"))]
        );
        store.put(&Path::from("a/c/z"), "3".into()).await.unwrap();
        assert_eq!(
            model.take_calls(),
            vec![
                ('f', root.join("a/c/z")),
                ('d', root.join("a/c")),
                ('d', root.join("a")),
            ]
        );
        // A create-only put that finds the object there makes it durable all the same.
        let e = store
            .put_opts(
                &Path::from("a/c/z"),
                "4".into(),
                PutOptions::from(PutMode::Create),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, object_store::Error::AlreadyExists { .. }),
            "{e}"
        );
        assert_eq!(
            model.take_calls(),
            vec![('f', root.join("a/c/z")), ('d', root.join("a/c"))]
        );
        // A multipart upload is sealed on completion.
        let mut up = store.put_multipart(&Path::from("m/part")).await.unwrap();
        up.put_part("ab".into()).await.unwrap();
        up.put_part("cd".into()).await.unwrap();
        up.complete().await.unwrap();
        assert!(model.survives(&root, &root.join("m/part"), b"abcd"));
        // Copies and renames seal their destination.
        store
            .copy(&Path::from("a/b/x"), &Path::from("k/x"))
            .await
            .unwrap();
        assert!(model.survives(&root, &root.join("k/x"), b"1"));
        store
            .rename(&Path::from("a/b/y"), &Path::from("k/y"))
            .await
            .unwrap();
        assert!(model.survives(&root, &root.join("k/y"), b"2"));
    }

    #[tokio::test]
    async fn a_put_whose_sync_fails_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = DurableLocalStore::open(tmp.path().join("o")).unwrap();
        drop(ok);
        let failing = DurableLocalStore {
            inner: LocalFileSystem::new_with_prefix(tmp.path().join("o")).unwrap(),
            sealer: Arc::new(Sealer {
                root: std::fs::canonicalize(tmp.path().join("o")).unwrap(),
                sync: Arc::new(PowerLossModel {
                    fail: true,
                    ..Default::default()
                }),
                sealed_dirs: Mutex::new(HashSet::new()),
            }),
        };
        let e = failing
            .put(&Path::from("wal/x"), "bytes".into())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("injected EIO"), "{e}");
        let e = failing
            .put_opts(
                &Path::from("wal/x"),
                "bytes".into(),
                PutOptions::from(PutMode::Create),
            )
            .await
            .unwrap_err();
        assert!(
            !matches!(e, object_store::Error::AlreadyExists { .. }),
            "an unsealed object is not reported as there: {e}"
        );
    }

    #[tokio::test]
    async fn an_existing_root_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("o");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _store = DurableLocalStore::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    /// object_store's own conformance suite, as its local backend runs it.
    #[tokio::test]
    async fn object_store_conformance() {
        use object_store::integration::*;
        let tmp = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::open(tmp.path().join("o")).unwrap();
        put_get_delete_list(&store).await;
        get_opts(&store).await;
        list_uses_directories_correctly(&store).await;
        list_with_delimiter(&store).await;
        rename_and_copy(&store).await;
        copy_if_not_exists(&store).await;
        copy_rename_nonexistent_object(&store).await;
        stream_get(&store).await;
        put_opts(&store, false).await;
    }
}

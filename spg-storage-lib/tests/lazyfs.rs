//! lazyfs: the tree's semantics directly, then the same through a real FUSE mount.
//!
//! Mounting needs /dev/fuse and root (or fusermount3). Without them the mount test says so and
//! passes, unless `SPG_REQUIRE_FUSE=1` (set by CI), which makes it fail.

use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use object_store::memory::InMemory;
use spg_core::{DatabaseName, Generation, Lsn, TimelineId};
use spg_storage_lib::image::{ImageId, ImageStore, Manifest, WarmRef};
use spg_storage_lib::lazyfs::{self, ImageChunks, LazyTree, ROOT};

const CHUNK: u32 = 4096;

fn big() -> Vec<u8> {
    let mut v: Vec<u8> = (0..CHUNK as usize * 8 + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    v[CHUNK as usize * 2..CHUNK as usize * 3].fill(0); // a zero chunk
    v
}

fn make_source(dir: &Path) {
    std::fs::create_dir_all(dir.join("base/1")).unwrap();
    std::fs::write(dir.join("PG_VERSION"), b"15\n").unwrap();
    std::fs::write(dir.join("base/1/big"), big()).unwrap();
    std::fs::write(dir.join("base/1/small"), vec![9u8; 3000]).unwrap();
    for d in ["base", "base/1"] {
        std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

async fn image(tmp: &Path) -> (ImageStore, Arc<Manifest>) {
    let src = tmp.join("src");
    make_source(&src);
    let store = ImageStore::new(Arc::new(InMemory::new()), "");
    let id = ImageId {
        lsn: Lsn(0x100),
        timeline: TimelineId(2),
        generation: Generation(1),
    };
    let db = DatabaseName::new("lazy").unwrap();
    let (m, _) = store
        .capture(&db, &src, id, None, CHUNK, &|_| true)
        .await
        .unwrap();
    (store, Arc::new(m))
}

fn chunks_of(store: ImageStore, m: &Arc<Manifest>) -> Arc<ImageChunks> {
    Arc::new(ImageChunks::new(
        store,
        Arc::clone(m),
        tokio::runtime::Handle::current(),
    ))
}

fn ino(tree: &LazyTree, path: &str) -> u64 {
    path.split('/').fold(ROOT, |dir, name| {
        tree.lookup(dir, OsStr::new(name)).unwrap().ino
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_on_first_read_and_writes_stay_local() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, m) = image(tmp.path()).await;
    let source = chunks_of(store, &m);
    let cache = tmp.path().join("cache");
    tokio::task::spawn_blocking(move || {
        let tree = LazyTree::new(&m, &cache, source).unwrap();
        let stats = tree.stats();
        let fetched = || stats.chunks_fetched.load(Ordering::Relaxed);
        assert_eq!(fetched(), 0, "nothing is fetched at mount");
        let big_ino = ino(&tree, "base/1/big");
        assert_eq!(tree.getattr(big_ino).unwrap().size, big().len() as u64);

        // One byte: one chunk. The zero chunk costs nothing.
        assert_eq!(tree.read(big_ino, 5000, 1).unwrap(), vec![big()[5000]]);
        assert_eq!(fetched(), 1);
        assert_eq!(
            tree.read(big_ino, CHUNK as u64 * 2 + 7, 10).unwrap(),
            vec![0; 10]
        );
        assert_eq!(fetched(), 1);
        assert_eq!(tree.read(big_ino, 0, u32::MAX).unwrap(), big());
        assert_eq!(fetched(), 8, "every non-zero chunk once");
        // The warm set is kept by place: the list (a 9-chunk file has one), then each chunk
        // fetched, the first one read first.
        let big_path: Arc<str> = "base/1/big".into();
        let warm = tree.warm();
        assert_eq!(
            warm[..2],
            [
                WarmRef::List {
                    path: Arc::clone(&big_path)
                },
                WarmRef::Chunk {
                    path: Arc::clone(&big_path),
                    index: 1
                }
            ]
        );
        let mut indexes: Vec<u64> = warm[1..]
            .iter()
            .map(|w| match w {
                WarmRef::Chunk { path, index } if *path == big_path => *index,
                other => panic!("{other:?}"),
            })
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 3, 4, 5, 6, 7, 8]);

        // A partial write into a chunk not yet fetched keeps the rest of its bytes.
        let small = ino(&tree, "base/1/small");
        tree.write(small, 10, b"hello").unwrap();
        let mut want = vec![9u8; 3000];
        want[10..15].copy_from_slice(b"hello");
        assert_eq!(tree.read(small, 0, 4096).unwrap(), want);
        // Extending, truncating.
        tree.write(small, 5000, b"tail").unwrap();
        assert_eq!(tree.getattr(small).unwrap().size, 5004);
        assert_eq!(tree.read(small, 3000, 2000).unwrap(), vec![0; 2000]);
        tree.setattr(small, Some(12), None).unwrap();
        assert_eq!(tree.read(small, 0, 100).unwrap(), want[..12].to_vec());
        tree.setattr(big_ino, Some(100), None).unwrap();
        tree.setattr(big_ino, Some(CHUNK as u64 + 1), None).unwrap();
        let mut cut = big()[..100].to_vec();
        cut.resize(CHUNK as usize + 1, 0);
        assert_eq!(tree.read(big_ino, 0, u32::MAX).unwrap(), cut);

        // Namespace operations.
        let base1 = ino(&tree, "base/1");
        let new = tree.create(base1, OsStr::new("new"), 0o600).unwrap();
        tree.write(new.ino, 0, b"fresh").unwrap();
        tree.rename(base1, OsStr::new("new"), ROOT, OsStr::new("moved"), false)
            .unwrap();
        assert_eq!(tree.read(ino(&tree, "moved"), 0, 10).unwrap(), b"fresh");
        assert_eq!(
            tree.rename(
                ROOT,
                OsStr::new("moved"),
                ROOT,
                OsStr::new("PG_VERSION"),
                true
            ),
            Err(libc::EEXIST)
        );
        tree.rename(
            ROOT,
            OsStr::new("moved"),
            ROOT,
            OsStr::new("PG_VERSION"),
            false,
        )
        .unwrap();
        assert_eq!(
            tree.read(ino(&tree, "PG_VERSION"), 0, 10).unwrap(),
            b"fresh"
        );
        assert_eq!(tree.rmdir(ROOT, OsStr::new("base")), Err(libc::ENOTEMPTY));
        tree.unlink(base1, OsStr::new("small")).unwrap();
        assert_eq!(
            tree.lookup(base1, OsStr::new("small")).unwrap_err(),
            libc::ENOENT
        );
        let d = tree.mkdir(ROOT, OsStr::new("d"), 0o700).unwrap();
        tree.symlink(d.ino, OsStr::new("wal"), Path::new("/somewhere/pg_wal"))
            .unwrap();
        assert_eq!(
            tree.readlink(ino(&tree, "d/wal")).unwrap(),
            Path::new("/somewhere/pg_wal")
        );
        let names: Vec<_> = tree
            .readdir(ROOT)
            .unwrap()
            .into_iter()
            .map(|e| e.2)
            .collect();
        assert_eq!(names, ["PG_VERSION", "base", "d"]);

        let changed: Vec<String> = tree
            .changes()
            .into_iter()
            .map(|c| match c {
                lazyfs::Change::File { path, .. } => path,
            })
            .collect();
        assert!(changed.contains(&"PG_VERSION".to_string()), "{changed:?}");
        assert!(changed.contains(&"base/1/big".to_string()), "{changed:?}");
        // The partial write into `small` fetched its chunk; the file made since the mount
        // has no place in the image.
        assert_eq!(
            tree.warm()[warm.len()..],
            [WarmRef::Chunk {
                path: "base/1/small".into(),
                index: 0
            }]
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_image_behaves_like_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, m) = image(tmp.path()).await;
    let source = chunks_of(store, &m);
    let tree = Arc::new(LazyTree::new(&m, &tmp.path().join("cache"), source).unwrap());
    let at = tmp.path().join("mnt");
    std::fs::create_dir_all(&at).unwrap();
    let mount = match lazyfs::mount(Arc::clone(&tree), &at, 0, 0) {
        Ok(mnt) => mnt,
        Err(e) if std::env::var("SPG_REQUIRE_FUSE").as_deref() != Ok("1") => {
            eprintln!("FUSE unavailable here ({e}); skipping the mount test");
            return;
        }
        Err(e) => panic!("FUSE is required (SPG_REQUIRE_FUSE=1): {e}"),
    };
    let src = tmp.path().join("src");
    let root = at.clone();
    tokio::task::spawn_blocking(move || {
        let stats = tree.stats();
        assert_eq!(std::fs::read(root.join("PG_VERSION")).unwrap(), b"15\n");
        let mut names: Vec<_> = std::fs::read_dir(root.join("base/1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["big", "small"]);
        let meta = std::fs::metadata(root.join("base")).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);

        let f = std::fs::File::open(root.join("base/1/big")).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 5000).unwrap();
        assert_eq!(b[0], big()[5000]);
        assert!(
            stats.chunks_fetched.load(Ordering::Relaxed) <= 2,
            "read-ahead stays small"
        );
        assert_eq!(
            std::fs::read(root.join("base/1/big")).unwrap(),
            std::fs::read(src.join("base/1/big")).unwrap()
        );

        // What PostgreSQL does to its files.
        std::fs::write(root.join("base/1/new.tmp"), b"relmap").unwrap();
        std::fs::rename(
            root.join("base/1/new.tmp"),
            root.join("base/1/pg_filenode.map"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(root.join("base/1/pg_filenode.map")).unwrap(),
            b"relmap"
        );
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("base/1/small"))
            .unwrap();
        f.write_all_at(b"page", 8192).unwrap();
        f.sync_all().unwrap();
        f.set_len(4).unwrap();
        assert_eq!(
            std::fs::read(root.join("base/1/small")).unwrap(),
            vec![9u8; 4]
        );
        std::fs::create_dir(root.join("base/2")).unwrap();
        std::fs::remove_dir(root.join("base/2")).unwrap();
        std::os::unix::fs::symlink("/tmp/elsewhere", root.join("pg_wal")).unwrap();
        assert_eq!(
            std::fs::read_link(root.join("pg_wal")).unwrap(),
            Path::new("/tmp/elsewhere")
        );
        std::fs::remove_file(root.join("base/1/big")).unwrap();
        assert!(!root.join("base/1/big").exists());
    })
    .await
    .unwrap();
    mount.unmount().unwrap();
    assert!(
        std::fs::read_dir(&at).unwrap().next().is_none(),
        "unmounted"
    );
}

//! The conformance suite of [`ImageStore`]: every backend the platform
//! supports runs [`run_all`] in its tests (local filesystem, in-memory, S3 against a real
//! S3-protocol server, and a pageserver in front of an object store, in process and over HTTP).
//! The checks panic on failure, as test helpers do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use futures::TryStreamExt;
use spg_core::{DatabaseName, Generation, Lsn, TimelineId};

use super::format::{ChunkHash, Content, ImageId, Manifest};
use super::{ImageStore, ObjectKind, ObjectRepo};
use crate::StorageError;

const CHUNK: u32 = 4096;

/// Run every check against `store` (which should be empty), whose objects end up in `raw` (the
/// same repository, or the object store behind a pageserver), using `scratch` for directories.
pub async fn run_all(store: &ImageStore, raw: &ObjectRepo, scratch: &Path) {
    chunks_are_checked_against_their_hash(store, raw).await;
    capture_and_restore_round_trip_and_share_chunks(store, raw, scratch).await;
    manifests_are_create_only_and_fenced(store, scratch).await;
    the_latest_image_is_on_the_current_timeline_path(store, scratch).await;
    damaged_manifests_are_clear_errors(store, raw).await;
    basebackups_name_the_latest_image(store, scratch).await;
    checkouts_fence_and_bring_the_latest_image(store, scratch).await;
}

fn db(name: &str) -> DatabaseName {
    DatabaseName::new(name).expect("valid database name")
}

fn id(lsn: u64, tli: u32, g: u64) -> ImageId {
    ImageId {
        lsn: Lsn(lsn),
        timeline: TimelineId(tli),
        generation: Generation(g),
    }
}

async fn count_under(raw: &ObjectRepo, prefix: &str) -> usize {
    let p = object_store::path::Path::from(prefix);
    let all: Vec<_> = raw
        .object_store()
        .list(Some(&p))
        .try_collect()
        .await
        .expect("list");
    all.len()
}

/// A data-directory-like tree: nested 0700 directories, an empty file, inline files, a file of
/// three chunks with an all-zero one in the middle, a file of many chunks with a ragged end.
fn make_tree(dir: &Path) {
    let w = |rel: &str, bytes: &[u8]| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    w("PG_VERSION", b"15\n");
    w("global/pg_control", &[7u8; 512]);
    w("base/1/empty", b"");
    let mut three = vec![1u8; CHUNK as usize * 3];
    three[CHUNK as usize..2 * CHUNK as usize].fill(0);
    w("base/1/three", &three);
    let many: Vec<u8> = (0..CHUNK as usize * 9 + 123)
        .map(|i| (i % 241) as u8)
        .collect();
    w("base/5/many", &many);
    for d in ["base", "base/1", "base/5", "global"] {
        std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
}

fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read dir") {
                let p = e.expect("entry").path();
                let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
                let meta = std::fs::metadata(&p).expect("stat");
                let mode = meta.permissions().mode() & 0o7777;
                if meta.is_dir() {
                    stack.push(p.clone());
                    v.push((rel, mode, None));
                } else {
                    v.push((rel, mode, Some(std::fs::read(&p).expect("read"))));
                }
            }
        }
        v.sort();
        v
    };
    assert_eq!(list(a), list(b), "restored tree differs");
}

async fn chunks_are_checked_against_their_hash(store: &ImageStore, raw: &ObjectRepo) {
    let d = db("chunks");
    let h = store
        .put_chunk(&d, Bytes::from_static(b"some page bytes"))
        .await
        .expect("put chunk");
    assert_eq!(
        store.chunk(&d, &h).await.expect("get chunk"),
        &b"some page bytes"[..]
    );
    let both = store
        .objects(&d, ObjectKind::Chunk, &[h, h])
        .await
        .expect("batch");
    assert_eq!(both, vec![Bytes::from_static(b"some page bytes"); 2]);
    // Bytes stored under another chunk's hash: every read notices.
    let other = ChunkHash::of(b"other bytes");
    raw.object_store()
        .put(
            &raw.object_key(&d, ObjectKind::Chunk, &other),
            Bytes::from_static(b"tampered").into(),
        )
        .await
        .expect("put raw");
    let err = store.chunk(&d, &other).await.expect_err("tampered chunk");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let err = store
        .objects(&d, ObjectKind::Chunk, &[h, other])
        .await
        .expect_err("tampered chunk in a batch");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let missing = ChunkHash::of(b"never stored");
    assert!(store.chunk(&d, &missing).await.is_err());
}

async fn capture_and_restore_round_trip_and_share_chunks(
    store: &ImageStore,
    raw: &ObjectRepo,
    scratch: &Path,
) {
    let d = db("roundtrip");
    let src = scratch.join("rt-src");
    make_tree(&src);
    let all = |_: &str| true;
    let (m1, s1) = store
        .capture(&d, &src, id(0x100, 2, 1), None, CHUNK, &all)
        .await
        .expect("capture");
    assert_eq!(s1.files, 5);
    assert_eq!(s1.zero_chunks, 1, "the zero chunk is not stored");
    assert_eq!(
        s1.chunks_reused, 1,
        "the two equal chunks of `three` are stored once"
    );
    assert_eq!(s1.chunks_uploaded, 1 + 10);
    let prefix = |what: &str| raw.key(&d, what).to_string();
    assert_eq!(count_under(raw, &prefix("chunks")).await, 11);
    // Tiny files are inline, `three` lists its chunks directly, `many` through a chunk list.
    let by_path = |m: &Manifest, p: &str| {
        m.files
            .iter()
            .find(|f| f.path == p)
            .and_then(|f| f.content.clone())
            .expect("entry")
    };
    assert!(matches!(by_path(&m1, "PG_VERSION"), Content::Inline(_)));
    assert!(matches!(by_path(&m1, "base/1/three"), Content::Chunks(_)));
    assert!(matches!(by_path(&m1, "base/5/many"), Content::List(_)));

    let out = scratch.join("rt-out1");
    std::fs::create_dir_all(&out).expect("mkdir");
    let read = store.manifest(&d, &m1.id).await.expect("manifest");
    assert_eq!(read, m1);
    let r = store.restore(&read, &out).await.expect("restore");
    assert_eq!(r.files, 5);
    assert_same_tree(&src, &out);

    // Change one chunk of `many`: the next image uploads that chunk and a new list only.
    let many = src.join("base/5/many");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&many)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", u64::from(CHUNK) * 4 + 10)
        .expect("write");
    let (m2, s2) = store
        .capture(&d, &src, id(0x200, 2, 1), Some(&m1), CHUNK, &all)
        .await
        .expect("capture 2");
    assert_eq!(s2.chunks_uploaded, 1);
    assert_eq!(count_under(raw, &prefix("chunks")).await, 12);
    assert_eq!(m2.parent, Some(m1.id));
    let out2 = scratch.join("rt-out2");
    std::fs::create_dir_all(&out2).expect("mkdir");
    store.restore(&m2, &out2).await.expect("restore 2");
    assert_same_tree(&src, &out2);
    assert_eq!(store.images(&d).await.expect("images"), vec![m1.id, m2.id]);

    // The filter leaves files out.
    let (m3, _) = store
        .capture(&d, &src, id(0x300, 2, 1), Some(&m2), CHUNK, &|p| {
            !p.starts_with("base/5")
        })
        .await
        .expect("capture 3");
    assert!(m3.files.iter().all(|f| !f.path.starts_with("base/5")));
    assert!(m3.files.iter().any(|f| f.path == "base/1/three"));
}

async fn manifests_are_create_only_and_fenced(store: &ImageStore, scratch: &Path) {
    let d = db("fenced");
    let src = scratch.join("fence-src");
    make_tree(&src);
    let all = |_: &str| true;
    let (m, _) = store
        .capture(&d, &src, id(0x100, 3, 2), None, CHUNK, &all)
        .await
        .expect("capture");
    // The same image again: refused, the stored one unchanged.
    let mut again = m.clone();
    again.created_at_ms += 1;
    let err = store.put_manifest(&again).await.expect_err("create-only");
    assert!(matches!(err, StorageError::ImageExists(_)), "{err}");
    assert_eq!(store.manifest(&d, &m.id).await.expect("manifest"), m);

    // Generation 3 checks out: generation 2 can no longer write images.
    store.fence(&d, Generation(3)).await.expect("fence");
    store
        .fence(&d, Generation(3))
        .await
        .expect("fencing twice is fine");
    assert_eq!(
        store.newest_fence(&d).await.expect("fences"),
        Some(Generation(3))
    );
    let err = store
        .capture(&d, &src, id(0x200, 3, 2), Some(&m), CHUNK, &all)
        .await
        .expect_err("stale generation");
    assert!(
        matches!(
            err,
            StorageError::StaleGeneration {
                offered: 2,
                current: 3
            }
        ),
        "{err}"
    );
    store
        .capture(&d, &src, id(0x200, 4, 3), Some(&m), CHUNK, &all)
        .await
        .expect("the fencing generation writes");
}

async fn the_latest_image_is_on_the_current_timeline_path(store: &ImageStore, scratch: &Path) {
    let d = db("forks");
    let src = scratch.join("forks-src");
    make_tree(&src);
    let all = |_: &str| true;
    for i in [
        id(0x100, 2, 1),
        id(0x500, 2, 1),
        id(0x300, 3, 2),
        id(0x400, 3, 2),
    ] {
        store
            .capture(&d, &src, i, None, CHUNK, &all)
            .await
            .expect("capture");
    }
    // Timeline 3 branched off timeline 2 at 0x200: the image generation 1 wrote at 0x500 on
    // timeline 2 is a fork, whatever its LSN.
    let path = [(TimelineId(2), Lsn(0)), (TimelineId(3), Lsn(0x200))];
    assert_eq!(
        store.latest(&d, &path).await.expect("latest"),
        Some(id(0x400, 3, 2))
    );
    let before_branch = [(TimelineId(2), Lsn(0))];
    assert_eq!(
        store.latest(&d, &before_branch).await.expect("latest"),
        Some(id(0x500, 2, 1))
    );
    assert_eq!(
        store.latest(&db("none"), &path).await.expect("latest"),
        None
    );
}

async fn damaged_manifests_are_clear_errors(store: &ImageStore, raw: &ObjectRepo) {
    let d = db("damaged");
    let i = id(0x100, 2, 1);
    raw.object_store()
        .put(
            &raw.manifest_key(&d, &i),
            Bytes::from_static(b"{\"version\": 1, \"files\": [").into(),
        )
        .await
        .expect("put");
    let err = store.manifest(&d, &i).await.expect_err("damaged");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

async fn basebackups_name_the_latest_image(store: &ImageStore, scratch: &Path) {
    let d = db("basebackup");
    let path = [(TimelineId(2), Lsn(0))];
    assert!(store
        .basebackup(&d, &path)
        .await
        .expect("basebackup")
        .is_none());
    let src = scratch.join("bb-src");
    make_tree(&src);
    let all = |_: &str| true;
    let (_, _) = store
        .capture(&d, &src, id(0x100, 2, 1), None, CHUNK, &all)
        .await
        .expect("capture");
    let (m2, _) = store
        .capture(&d, &src, id(0x200, 2, 1), None, CHUNK, &all)
        .await
        .expect("capture");
    let bb = store
        .basebackup(&d, &path)
        .await
        .expect("basebackup")
        .expect("an image");
    assert_eq!(bb.manifest, m2);
    // Whatever came along is part of the image.
    let mut named = std::collections::HashSet::new();
    for f in &m2.files {
        match &f.content {
            Some(Content::Chunks(c)) => {
                named.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)))
            }
            Some(Content::List(h)) => {
                named.insert((ObjectKind::List, *h));
                let (_, c) = store.list(&d, h).await.expect("list");
                named.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)));
            }
            _ => {}
        }
    }
    for key in bb.objects.keys() {
        assert!(named.contains(key), "{key:?} is not part of the image");
    }
}

async fn checkouts_fence_and_bring_the_latest_image(store: &ImageStore, scratch: &Path) {
    let d = db("checkout");
    let path = [(TimelineId(2), Lsn(0))];
    let stale = |r: Result<_, StorageError>, current: u64| match r {
        Err(StorageError::StaleGeneration { current: c, .. }) => assert_eq!(c, current),
        Err(e) => panic!("expected a stale generation, got {e}"),
        Ok(_) => panic!("a checkout of a fenced generation went through"),
    };
    // No image yet: fenced all the same.
    assert!(store
        .checkout(&d, Generation(1), &path)
        .await
        .expect("first checkout")
        .is_none());
    assert_eq!(
        store.newest_fence(&d).await.expect("fences"),
        Some(Generation(1))
    );
    stale(store.checkout(&d, Generation(1), &path).await, 1);
    let src = scratch.join("checkout-src");
    make_tree(&src);
    let (m, _) = store
        .capture(&d, &src, id(0x100, 2, 1), None, CHUNK, &|_: &str| true)
        .await
        .expect("capture");
    let bb = store
        .checkout(&d, Generation(2), &path)
        .await
        .expect("second checkout")
        .expect("an image");
    assert_eq!(bb.manifest, m);
    assert_eq!(
        store.newest_fence(&d).await.expect("fences"),
        Some(Generation(2))
    );
    stale(store.checkout(&d, Generation(1), &path).await, 2);
}

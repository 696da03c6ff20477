//! The pageserver in process: its cache in front of object storage, soft basebackups, and
//! garbage collection.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use spg_core::{DatabaseName, Generation, Lsn, TimelineId};
use spg_storage_lib::image::{
    CaptureSource, ChunkOrigin, Content, ImageId, ImageRepo, ImageStore, ObjectKind, ObjectRepo,
    SourceFile, WarmRef,
};
use spg_storage_lib::pageserver::gc::GcPolicy;
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};

const CHUNK: u32 = 4096;

fn db() -> DatabaseName {
    DatabaseName::new("shop").unwrap()
}

fn id(lsn: u64, g: u64) -> ImageId {
    ImageId {
        lsn: Lsn(lsn),
        timeline: TimelineId(2),
        generation: Generation(g),
    }
}

/// A valid `pg_control` whose redo point is `redo`.
fn pg_control(redo: u64) -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[8..12].copy_from_slice(&1300u32.to_le_bytes());
    b[16..20].copy_from_slice(&1u32.to_le_bytes()); // shut down
    b[32..40].copy_from_slice(&(redo + 0x28).to_le_bytes());
    b[40..48].copy_from_slice(&redo.to_le_bytes());
    b[48..52].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&b[..288]);
    b[288..292].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A data-directory-like tree whose relation file holds `fill` and whose checkpoint is at `redo`.
fn tree(dir: &Path, fill: u8, redo: u64) {
    for d in ["base", "base/1", "global", "pg_wal", "pg_xact"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(dir.join("PG_VERSION"), b"15\n").unwrap();
    std::fs::write(dir.join("global/pg_control"), pg_control(redo)).unwrap();
    std::fs::write(dir.join("pg_xact/0000"), vec![0x55u8; 8192]).unwrap();
    std::fs::write(dir.join("base/1/16384"), vec![fill; CHUNK as usize * 10]).unwrap();
    let mut wal = vec![0u8; CHUNK as usize * 8];
    wal[..100].fill(7);
    std::fs::write(dir.join("pg_wal/000000020000000000000001"), wal).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    raw: ObjectRepo,
    ps: Arc<Pageserver>,
    store: ImageStore,
    scratch: std::path::PathBuf,
}

fn fixture(cfg: impl FnOnce(&mut PageserverConfig)) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let raw = ObjectRepo::new(Arc::new(InMemory::new()), "images");
    let mut c = PageserverConfig::new(tmp.path().join("cache"));
    cfg(&mut c);
    let ps = Arc::new(Pageserver::open(raw.clone(), &c).unwrap());
    let store = ImageStore::with_repo(ps.clone());
    let scratch = tmp.path().to_path_buf();
    Fixture {
        _tmp: tmp,
        raw,
        ps,
        store,
        scratch,
    }
}

/// Four images of `db()`, each from the one before, filled with 1 to 4 and their redo points
/// at segments 1 to 4; their ids, oldest first.
async fn four_images(f: &Fixture) -> Vec<ImageId> {
    let src = f.scratch.join("src");
    let mut parent = None;
    let mut ids = Vec::new();
    for (i, fill) in [1u8, 2, 3, 4].into_iter().enumerate() {
        let redo = 0x100_0000 * (i as u64 + 1);
        tree(&src, fill, redo);
        let (m, _) = f
            .store
            .capture(
                &db(),
                &src,
                id(redo + 0x28, 1),
                parent.as_ref(),
                CHUNK,
                &|_| true,
            )
            .await
            .unwrap();
        ids.push(m.id);
        parent = Some(m);
    }
    ids
}

#[tokio::test]
async fn the_cache_serves_what_object_storage_no_longer_answers_and_survives_a_restart() {
    let f = fixture(|_| {});
    let h = f
        .store
        .put_chunk(&db(), Bytes::from(vec![3u8; 5000]))
        .await
        .unwrap();
    // Written through: in object storage and in the cache.
    let key = f.raw.object_key(&db(), ObjectKind::Chunk, &h);
    f.raw.object_store().head(&key).await.unwrap();
    f.raw.object_store().delete(&key).await.unwrap();
    assert_eq!(f.store.chunk(&db(), &h).await.unwrap().len(), 5000);
    // A restarted pageserver finds its cache on disk.
    let again = Pageserver::open(
        f.raw.clone(),
        &PageserverConfig::new(f.scratch.join("cache")),
    )
    .unwrap();
    assert_eq!(again.cache().len(), 1);
    let b = again.get(&db(), ObjectKind::Chunk, &h).await.unwrap();
    assert_eq!(b.len(), 5000);
    assert_eq!(again.metrics().cache_hits.get(), 1);
    // Beyond its budget it evicts: a small cache holds at most its budget.
    let small = fixture(|c| c.cache_bytes = 3 * 5000);
    for i in 0..10u8 {
        small
            .store
            .put_chunk(&db(), Bytes::from(vec![i; 5000]))
            .await
            .unwrap();
    }
    assert!(small.ps.cache().used() <= 3 * 5000);
    assert_eq!(small.ps.cache().len(), 3);
}

#[tokio::test]
async fn a_soft_basebackup_brings_the_warm_set_and_the_wal_within_its_budget() {
    let f = fixture(|_| {});
    let src = f.scratch.join("src");
    tree(&src, 1, 0x100_0000);
    let (m1, _) = f
        .store
        .capture(&db(), &src, id(0x100_0028, 1), None, CHUNK, &|_| true)
        .await
        .unwrap();
    let path = [(TimelineId(2), Lsn(0))];
    // Without a warm set: the files outside base/ and the WAL, no relation data.
    let bb = f.store.basebackup(&db(), &path).await.unwrap().unwrap();
    assert_eq!(bb.manifest, m1);
    let rel = m1.files.iter().find(|e| e.path == "base/1/16384").unwrap();
    let Some(Content::List(rel_list)) = &rel.content else {
        panic!("a 10-chunk file has a list")
    };
    let (_, rel_chunks) = f.store.list(&db(), rel_list).await.unwrap();
    let rel_chunk = rel_chunks[0].unwrap();
    assert!(!bb.objects.contains_key(&(ObjectKind::Chunk, rel_chunk)));
    let xact = m1.files.iter().find(|e| e.path == "pg_xact/0000").unwrap();
    let Some(Content::Chunks(xc)) = &xact.content else {
        panic!("two chunks")
    };
    assert!(bb
        .objects
        .contains_key(&(ObjectKind::Chunk, xc[0].unwrap())));
    let wal = m1
        .files
        .iter()
        .find(|e| e.path == "pg_wal/000000020000000000000001")
        .unwrap();
    let Some(Content::List(wl)) = &wal.content else {
        panic!("eight chunks")
    };
    assert!(bb.objects.contains_key(&(ObjectKind::List, *wl)));

    // An image whose compute needed the relation's list and first chunk, and pg_xact's first
    // chunk, which it later rewrote, at once: they come along, pg_xact's with its new bytes.
    let xact_path = src.join("pg_xact/0000");
    let mut rewritten = std::fs::read(&xact_path).unwrap();
    rewritten[0] ^= 0xff;
    std::fs::write(&xact_path, &rewritten).unwrap();
    let new_xact = spg_storage_lib::image::ChunkHash::of(&rewritten[..CHUNK as usize]);
    assert_ne!(Some(new_xact), xc[0]);
    let files: Vec<SourceFile> = m1
        .files
        .iter()
        .enumerate()
        .map(|(i, e)| SourceFile {
            path: e.path.clone(),
            mode: e.mode,
            size: e.size,
            is_dir: e.is_dir(),
            chunks: vec![ChunkOrigin::Read; e.size.div_ceil(u64::from(CHUNK)) as usize],
            handle: i as u64,
        })
        .collect();
    let paths: Vec<_> = m1.files.iter().map(|e| src.join(&e.path)).collect();
    let read = |h: u64, off: u64, len: usize| {
        let b = std::fs::read(&paths[h as usize]).unwrap();
        Ok(b[off as usize..off as usize + len].to_vec())
    };
    let place = |path: &str, index: Option<u64>| match index {
        Some(index) => WarmRef::Chunk {
            path: path.into(),
            index,
        },
        None => WarmRef::List { path: path.into() },
    };
    let source = CaptureSource {
        files,
        warm: vec![
            place("base/1/16384", None),
            place("base/1/16384", Some(0)),
            place("pg_xact/0000", Some(0)),
            place("base/1/16384", Some(0)),
            place("base/1/16384", Some(99)),
            place("base/1/no_such_file", Some(0)),
            place("pg_xact/0000", None),
        ],
    };
    let (m2, _) = f
        .store
        .capture_from(&db(), id(0x200_0028, 1), Some(&m1), CHUNK, source, &read)
        .await
        .unwrap();
    assert_eq!(
        m2.warm,
        vec![
            (ObjectKind::List, *rel_list),
            (ObjectKind::Chunk, rel_chunk),
            (ObjectKind::Chunk, new_xact),
        ],
        "a warm place names what the new image holds there, once; places it lacks are dropped"
    );
    let bb = f.store.basebackup(&db(), &path).await.unwrap().unwrap();
    assert_eq!(bb.manifest.id, m2.id);
    assert!(bb.objects.contains_key(&(ObjectKind::Chunk, rel_chunk)));
    assert!(bb.objects.contains_key(&(ObjectKind::List, *rel_list)));
    assert!(bb.objects.contains_key(&(ObjectKind::Chunk, new_xact)));

    // The budget bounds what comes along.
    let tight = fixture(|c| c.basebackup_bytes = 6000);
    let tight_store = ImageStore::with_repo(Arc::new(
        Pageserver::open(
            f.raw.clone(),
            &PageserverConfig {
                basebackup_bytes: 6000,
                ..PageserverConfig::new(tight.scratch.join("cache2"))
            },
        )
        .unwrap(),
    ));
    let bb = tight_store.basebackup(&db(), &path).await.unwrap().unwrap();
    let sent: usize = bb.objects.values().map(|b| b.len()).sum();
    assert!(sent <= 6000, "{sent}");
    assert!(!bb.objects.is_empty());
}

#[tokio::test]
async fn garbage_collection_keeps_what_retained_images_need() {
    let f = fixture(|_| {});
    let ids = four_images(&f).await;
    // Archived WAL: segments 1..=5 of timeline 2, and a history file.
    let wal_prefix = object_store::path::Path::from("wal/shop");
    let store = f.raw.object_store();
    for seg in 1..=5u64 {
        let key = wal_prefix.child(format!("00000002{:08X}{:08X}", seg >> 8, seg & 0xff));
        store
            .put(&key, Bytes::from_static(b"wal").into())
            .await
            .unwrap();
    }
    store
        .put(
            &wal_prefix.child("00000002.history"),
            Bytes::from_static(b"1\t0/0\tx").into(),
        )
        .await
        .unwrap();
    // An upload of a capture in progress (no manifest yet).
    let in_flight = f
        .store
        .put_chunk(&db(), Bytes::from(vec![42u8; 100]))
        .await
        .unwrap();

    let policy = GcPolicy {
        retention: Duration::ZERO,
        keep_images: 2,
        grace: Duration::from_secs(3600),
    };
    let stats =
        f.ps.gc(
            &db(),
            &policy,
            Some(&[(TimelineId(2), Lsn(0))]),
            Some(&wal_prefix),
        )
        .await
        .unwrap();
    assert_eq!(stats.images_kept, 2);
    assert_eq!(stats.images_deleted, 2);
    assert_eq!(f.store.images(&db()).await.unwrap(), ids[2..].to_vec());
    assert_eq!(
        stats.objects_deleted, 0,
        "within the grace period nothing goes"
    );
    // Segments before the oldest kept redo point (image 3: redo 0x3000000 = segment 3) go.
    assert_eq!(stats.wal_segments_deleted, 2);

    let policy = GcPolicy {
        grace: Duration::ZERO,
        ..policy
    };
    let stats = f.ps.gc(&db(), &policy, None, None).await.unwrap();
    // Images 1 and 2 held relation chunks of fills 1 and 2, and the in-flight chunk is old now.
    assert!(stats.objects_deleted >= 3, "{stats:?}");
    assert!(f.store.chunk(&db(), &in_flight).await.is_err());
    // What is left restores exactly.
    let newest = f.store.manifest(&db(), &ids[3]).await.unwrap();
    let out = f.scratch.join("out");
    std::fs::create_dir_all(&out).unwrap();
    f.store.restore(&newest, &out).await.unwrap();
    assert_eq!(
        std::fs::read(out.join("base/1/16384")).unwrap(),
        vec![4u8; CHUNK as usize * 10]
    );
    let older = f.store.manifest(&db(), &ids[2]).await.unwrap();
    let out3 = f.scratch.join("out3");
    std::fs::create_dir_all(&out3).unwrap();
    f.store.restore(&older, &out3).await.unwrap();
    assert_eq!(
        std::fs::read(out3.join("base/1/16384")).unwrap(),
        vec![3u8; CHUNK as usize * 10]
    );
}

/// A database's own history window replaces the policy's: with none, the default window keeps
/// every recent image; with a window of zero, only the newest `keep_images` stay. It reads
/// back, and resets to the default.
#[tokio::test]
async fn a_database_s_own_window_replaces_the_default() {
    let f = fixture(|_| {});
    four_images(&f).await;
    let policy = GcPolicy::default();
    assert_eq!(f.ps.retention(&db()).await.unwrap(), None);
    let stats = f.ps.gc(&db(), &policy, None, None).await.unwrap();
    assert_eq!(
        stats.images_deleted, 0,
        "all four are within the default window"
    );
    f.ps.set_retention(&db(), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        f.raw.retention(&db()).await.unwrap(),
        Some(Duration::ZERO),
        "stored with the database"
    );
    let stats = f.ps.gc(&db(), &policy, None, None).await.unwrap();
    assert_eq!(stats.images_deleted, 2, "{stats:?}");
    assert_eq!(f.store.images(&db()).await.unwrap().len(), 2);
    f.ps.set_retention(&db(), None).await.unwrap();
    assert_eq!(f.ps.retention(&db()).await.unwrap(), None);
}

/// A branch's images name its root's chunks: collecting the root never deletes what a branch
/// image names (even once the root's own images that named it are gone); while a branch is
/// being made (linked, no image yet) nothing is swept; a branch that failed is forgotten.
#[tokio::test]
async fn garbage_collection_keeps_what_branches_of_the_family_need() {
    let f = fixture(|_| {});
    let src = f.scratch.join("src");
    let branch = DatabaseName::new("shop_pr1").unwrap();
    // The root's first image (fill 1), and the branch made from it (nothing copied).
    tree(&src, 1, 0x100_0000);
    let (first, _) = f
        .store
        .capture(&db(), &src, id(0x100_0028, 1), None, CHUNK, &|_| true)
        .await
        .unwrap();
    f.ps.link_family(&branch, &db()).await.unwrap();
    assert_eq!(f.ps.family(&branch).await.unwrap(), db());
    // Linking elsewhere is refused; the same link again is fine.
    f.ps.link_family(&branch, &db()).await.unwrap();
    let other = DatabaseName::new("other").unwrap();
    assert!(f.ps.link_family(&branch, &other).await.is_err());

    // A branch being made: the root's newer images replace the first one, and a collection
    // with no retention deletes that image but sweeps no chunk.
    let mut parent = first.clone();
    for (i, fill) in [2u8, 3].into_iter().enumerate() {
        let redo = 0x100_0000 * (i as u64 + 2);
        tree(&src, fill, redo);
        parent = f
            .store
            .capture(
                &db(),
                &src,
                id(redo + 0x28, 1),
                Some(&parent),
                CHUNK,
                &|_| true,
            )
            .await
            .unwrap()
            .0;
    }
    let policy = GcPolicy {
        retention: Duration::ZERO,
        keep_images: 1,
        grace: Duration::ZERO,
    };
    let stats = f.ps.gc(&db(), &policy, None, None).await.unwrap();
    assert_eq!(stats.images_deleted, 2);
    assert_eq!(
        stats.objects_deleted, 0,
        "a branch is being made: {stats:?}"
    );

    // The branch's image: the first image's files, unchanged (its chunks named, not copied).
    let mut m = first.clone();
    m.database = branch.clone();
    m.id = id(0x100_0028, 3);
    m.parent = Some(first.id);
    f.store.put_manifest(&m).await.unwrap();
    let stats = f.ps.gc(&db(), &policy, None, None).await.unwrap();
    assert!(stats.objects_deleted >= 1, "fill 2's chunk goes: {stats:?}");
    // The branch restores exactly the root's first state.
    let out = f.scratch.join("branch-out");
    std::fs::create_dir_all(&out).unwrap();
    f.store.restore(&m, &out).await.unwrap();
    assert_eq!(
        std::fs::read(out.join("base/1/16384")).unwrap(),
        vec![1u8; CHUNK as usize * 10]
    );
    // Collecting the branch itself sweeps nothing (the root does).
    let stats = f.ps.gc(&branch, &policy, None, None).await.unwrap();
    assert_eq!(stats.objects_deleted, 0);

    // A branch that failed before its image is forgotten: link and fences.
    let failed = DatabaseName::new("shop_failed").unwrap();
    f.ps.link_family(&failed, &db()).await.unwrap();
    f.ps.fence(&failed, Generation(7)).await.unwrap();
    f.ps.forget_branch(&failed).await.unwrap();
    assert_eq!(f.ps.newest_fence(&failed).await.unwrap(), None);
    assert!(!f.raw.databases().await.unwrap().contains(&failed));
    // One with an image is not.
    assert!(f.ps.forget_branch(&branch).await.is_err());
}

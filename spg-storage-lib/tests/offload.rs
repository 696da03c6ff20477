//! WAL offload: complete segments go to object storage (create-only), local copies beyond the
//! newest few are dropped, and recovery reads fall back to object storage for them.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use spg_core::{DatabaseName, Election, Generation, Lsn, WalQuorum};
use spg_storage_lib::durable_local::FileSync;
use spg_storage_lib::safekeeper::file::{segment_file_name, FileWalStore};
use spg_storage_lib::safekeeper::node::{archive_path, NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use spg_storage_lib::safekeeper::{timeline_of, History, Safekeeper};
use spg_storage_lib::DurableLocalStore;

const SEG: u64 = 1 << 16;

/// A disk that loses whatever is not synced, and whose syncs fail.
#[derive(Debug)]
struct SyncFails;

impl FileSync for SyncFails {
    fn sync_file(&self, _: &std::path::Path) -> std::io::Result<()> {
        Err(std::io::Error::other("injected: fsync failed"))
    }
    fn sync_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
        Ok(())
    }
}

fn wal_on_one_safekeeper(dir: &std::path::Path, segments: u64) -> (Arc<SafekeeperNode>, Vec<u8>) {
    let g = Generation(1);
    let data: Vec<u8> = (0..(SEG * segments + SEG / 2))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    {
        let store = FileWalStore::open(dir.join("sk1").join("appdb"), SEG).unwrap();
        let mut sk = Safekeeper::open(store).unwrap();
        sk.follow(g, &History::starting(timeline_of(g), Lsn(0)))
            .unwrap();
        sk.append(g, Lsn(0), &data).unwrap();
        sk.flush().unwrap();
    }
    let node = SafekeeperNode::new(NodeConfig {
        name: "sk1".into(),
        dir: dir.join("sk1"),
        segment_size: SEG,
    })
    .unwrap();
    (node, data)
}

#[tokio::test]
async fn a_segment_whose_offloaded_copy_was_not_synced_is_never_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DatabaseName::new("appdb").unwrap();
    let (node, data) = wal_on_one_safekeeper(tmp.path(), 6);
    let unsynced: Arc<dyn ObjectStore> = Arc::new(
        DurableLocalStore::open_with(tmp.path().join("objects"), Arc::new(SyncFails)).unwrap(),
    );
    for _ in 0..3 {
        let report = node.offload_once(unsynced.as_ref(), 0).await.unwrap();
        assert_eq!(
            report,
            Default::default(),
            "nothing offloaded, nothing removed"
        );
        let status = node.status(&db).await.unwrap();
        assert_eq!(status.log.start, Lsn(0), "every segment still held locally");
    }
    // The object of the first segment exists (written, never synced): existing is not enough.
    let name = segment_file_name(timeline_of(Generation(1)), 0, SEG);
    assert!(unsynced.head(&archive_path(&db, &name)).await.is_ok());
    // With a disk that syncs, the same objects are made durable and only then dropped locally.
    let synced: Arc<dyn ObjectStore> =
        Arc::new(DurableLocalStore::open(tmp.path().join("objects")).unwrap());
    let report = node.offload_once(synced.as_ref(), 0).await.unwrap();
    assert_eq!(report.removed, 6);
    let status = node.status(&db).await.unwrap();
    assert_eq!(status.log.start, Lsn(6 * SEG));
    assert_eq!(status.log.flush, Lsn(data.len() as u64));
}

#[tokio::test]
async fn complete_segments_are_offloaded_local_ones_dropped_and_still_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DatabaseName::new("appdb").unwrap();
    let g = Generation(1);
    let tli = timeline_of(g);
    // Six and a half segments of WAL on one safekeeper.
    let data: Vec<u8> = (0..(SEG * 6 + SEG / 2))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    {
        let store = FileWalStore::open(tmp.path().join("sk1").join("appdb"), SEG).unwrap();
        let mut sk = Safekeeper::open(store).unwrap();
        sk.follow(g, &History::starting(tli, Lsn(0))).unwrap();
        sk.append(g, Lsn(0), &data).unwrap();
        sk.flush().unwrap();
    }
    let node = SafekeeperNode::new(NodeConfig {
        name: "sk1".into(),
        dir: tmp.path().join("sk1"),
        segment_size: SEG,
    })
    .unwrap();
    let archive: Arc<dyn ObjectStore> =
        Arc::new(DurableLocalStore::open(tmp.path().join("objects")).unwrap());

    let report = node.offload_once(archive.as_ref(), 2).await.unwrap();
    assert_eq!(report.uploaded, 6, "six complete segments");
    assert_eq!(
        report.removed, 4,
        "all but the newest two complete ones dropped"
    );
    for segno in 0..6 {
        let name = segment_file_name(tli, segno, SEG);
        let got = archive
            .get(&archive_path(&db, &name))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            &got[..],
            &data[(segno * SEG) as usize..((segno + 1) * SEG) as usize]
        );
    }
    let status = node.status(&db).await.unwrap();
    assert_eq!(status.log.start, Lsn(4 * SEG));
    assert_eq!(status.log.flush, Lsn(data.len() as u64));
    // The incomplete segment is not offloaded; a second pass uploads nothing new.
    let again = node.offload_once(archive.as_ref(), 2).await.unwrap();
    assert_eq!(again.uploaded, 0);

    // Recovery reads: held segments from the safekeeper, dropped ones from object storage.
    let set = SafekeeperSet::new(
        vec![Arc::new(Arc::clone(&node)) as Arc<dyn SafekeeperApi>],
        Duration::from_secs(5),
    )
    .with_archive(Arc::clone(&archive));
    let election = Election {
        generation: g,
        voters: 1,
        source: Some("sk1".into()),
        history: vec![(tli, Lsn(0))],
        flush_lsn: status.log.flush,
        new_timeline: timeline_of(Generation(2)),
    };
    for segno in [0u64, 3, 5, 6] {
        let name = segment_file_name(tli, segno, SEG);
        let got = set
            .read_wal_file(&db, &election, &name)
            .await
            .unwrap()
            .unwrap();
        let from = (segno * SEG) as usize;
        let to = (from + SEG as usize).min(data.len());
        assert_eq!(&got[..to - from], &data[from..to], "segment {segno}");
        assert!(got[to - from..].iter().all(|b| *b == 0));
    }
    assert!(set
        .read_wal_file(&db, &election, &segment_file_name(tli, 9, SEG))
        .await
        .unwrap()
        .is_none());
}

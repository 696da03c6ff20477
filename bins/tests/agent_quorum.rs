//! The compute agent in a WAL quorum, driven directly:
//! - split brain: a compute of generation G keeps running while generation G+1 is elected on the
//!   safekeepers and started from its own (stale) copy of the data. No commit G writes after the
//!   election is ever acknowledged; G+1 holds every commit G had acknowledged before;
//! - damage: a safekeeper with a corrupt control file or a truncated WAL segment reports a clear
//!   error, the other two keep the quorum, and nothing acknowledged is lost.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::reachable_tempdir;
use spg_core::scram::ScramVerifier;
use spg_core::{
    Checkout, CoreResult, DatabaseName, Generation, ImageInfo, Lsn, PageStore, RoleName, TimelineId,
};
use spg_lifecycle_lib::compute::config::default_profile;
use spg_lifecycle_lib::compute::wal::WalSetup;
use spg_lifecycle_lib::compute::{AgentConfig, ComputeSpec, RoleSpec, RunningCompute};
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use spg_storage_lib::LocalDirPageStore;

const PASSWORD: &str = "split-Brain-9";

/// A page store that hands out one fixed, already initialised directory.
struct FixedDir(PathBuf);

#[async_trait]
impl PageStore for FixedDir {
    async fn checkout(
        &self,
        db: &DatabaseName,
        g: Generation,
        _: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout> {
        Ok(Checkout {
            data_dir: self.0.clone(),
            image: Some(ImageInfo {
                database: db.clone(),
                generation: g,
                lsn: Lsn::INVALID,
                created_at_ms: 0,
                bytes_written: 0,
            }),
        })
    }
    async fn write_back(&self, db: &DatabaseName, g: Generation) -> CoreResult<ImageInfo> {
        Ok(ImageInfo {
            database: db.clone(),
            generation: g,
            lsn: Lsn::INVALID,
            created_at_ms: 0,
            bytes_written: 0,
        })
    }
    async fn release(&self, _: &DatabaseName, _: Generation) -> CoreResult<()> {
        Ok(())
    }
    async fn latest_image(&self, _: &DatabaseName) -> CoreResult<Option<ImageInfo>> {
        Ok(None)
    }
}

fn spec(g: u64) -> ComputeSpec {
    ComputeSpec {
        database: DatabaseName::new("appdb").unwrap(),
        generation: Generation(g),
        roles: vec![RoleSpec {
            name: RoleName::new("app").unwrap(),
            verifier: ScramVerifier::from_password(PASSWORD),
        }],
        profile: default_profile(),
    }
}

async fn tenant(compute: &RunningCompute) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(compute.endpoint().addr.port())
        .user("app")
        .password(PASSWORD)
        .dbname("appdb");
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn copy_dir(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_generation_gets_no_commit_acknowledged_after_a_newer_election() {
    let tmp = reachable_tempdir();
    let (nodes, wal, agent, pages) = setup(tmp.path());
    let db = DatabaseName::new("appdb").unwrap();

    // Generation 1 initialises the database, then stops cleanly.
    let g1 = RunningCompute::start(agent.clone(), pages.clone(), Some(wal.clone()), spec(1))
        .await
        .unwrap();
    let report = g1.stop().await;
    assert!(report.clean, "{report:?}");
    // The would-be host of generation 3 has its own (stale) copy of the data directory.
    let other = tmp.path().join("other");
    copy_dir(&pages.data_dir(&db), &other);

    // Generation 2 runs and commits.
    let ga = RunningCompute::start(agent.clone(), pages.clone(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    let ca = tenant(&ga).await;
    ca.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    for id in 1..=10 {
        ca.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }

    // Generation 3 is elected and started elsewhere while generation 2 keeps running.
    let gb = RunningCompute::start(
        agent.clone(),
        Arc::new(FixedDir(other.clone())),
        Some(wal.clone()),
        spec(3),
    )
    .await;
    let gb = match gb {
        Ok(c) => c,
        Err(e) => panic!("generation 3 did not start: {e}"),
    };

    // Generation 2 writes after the election: never acknowledged.
    let late = tokio::spawn(async move {
        let r = ca.execute("INSERT INTO t VALUES (100)", &[]).await;
        (ca, r)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !late.is_finished(),
        "generation 2 had a commit acknowledged after generation 3's election"
    );

    // Generation 3 holds everything generation 2 had acknowledged, and not the late write.
    let cb = tenant(&gb).await;
    let ids: Vec<i32> = cb
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    cb.execute("INSERT INTO t VALUES (200)", &[]).await.unwrap();
    let tli: i32 = cb
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tli, 4, "generation 3 writes its own timeline");

    // Stopping generation 2 ends its waiting commit with an error, never a success.
    ga.stop().await;
    let (_, r) = tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .unwrap()
        .unwrap();
    assert!(
        r.is_err(),
        "the late commit of generation 2 must not succeed"
    );
    drop(cb);
    let report = gb.stop().await;
    assert!(report.clean, "{report:?}");
    shutdown(&nodes).await;
}

type Setup = (
    Vec<Arc<SafekeeperNode>>,
    WalSetup,
    Arc<AgentConfig>,
    Arc<LocalDirPageStore>,
);

fn nodes_in(root: &Path) -> Vec<Arc<SafekeeperNode>> {
    (1..=3)
        .map(|i| {
            SafekeeperNode::new(NodeConfig {
                name: format!("sk{i}"),
                dir: root.join(format!("sk{i}")),
                segment_size: DEFAULT_SEGMENT_SIZE,
            })
            .unwrap()
        })
        .collect()
}

fn archive_in(root: &Path) -> Arc<dyn object_store::ObjectStore> {
    Arc::new(spg_storage_lib::DurableLocalStore::open(root.join("objects")).unwrap())
}

fn wal_over(nodes: &[Arc<SafekeeperNode>]) -> WalSetup {
    let members: Vec<Arc<dyn SafekeeperApi>> = nodes
        .iter()
        .map(|n| Arc::new(Arc::clone(n)) as Arc<dyn SafekeeperApi>)
        .collect();
    let root = nodes[0].config().dir.parent().unwrap().to_path_buf();
    WalSetup {
        quorum: Arc::new(
            SafekeeperSet::new(members, Duration::from_secs(5)).with_archive(archive_in(&root)),
        ),
        restore_program: PathBuf::from(env!("CARGO_BIN_EXE_spg")),
    }
}

fn setup(root: &Path) -> Setup {
    let nodes = nodes_in(root);
    let wal = wal_over(&nodes);
    let agent =
        Arc::new(AgentConfig::new(root.join("run"), PgBinaries::locate(None).unwrap()).unwrap());
    let pages = Arc::new(LocalDirPageStore::new(root.join("pages")));
    (nodes, wal, agent, pages)
}

/// Start generation 1 (initdb and base image) and create table `t` through a tenant session.
async fn first_generation(
    agent: &Arc<AgentConfig>,
    pages: Arc<dyn PageStore>,
    wal: &WalSetup,
) -> (RunningCompute, tokio_postgres::Client) {
    let c1 = RunningCompute::start(agent.clone(), pages, Some(wal.clone()), spec(1))
        .await
        .unwrap();
    let c = tenant(&c1).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    (c1, c)
}

async fn ids(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_safekeeper_reports_clearly_and_the_quorum_keeps_every_commit() {
    let tmp = reachable_tempdir();
    let (nodes, wal, agent, pages) = setup(tmp.path());
    let db = DatabaseName::new("appdb").unwrap();
    let (c1, c) = first_generation(&agent, pages.clone(), &wal).await;
    for id in 1..=50 {
        c.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    drop(c);
    assert!(c1.stop().await.clean);
    shutdown(&nodes).await;
    drop((nodes, wal));

    // A corrupt control file on sk1.
    let control = tmp.path().join("sk1").join("appdb").join("control");
    let mut bytes = std::fs::read(&control).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&control, &bytes).unwrap();
    let nodes = nodes_in(tmp.path());
    let err = nodes[0].status(&db).await.unwrap_err().to_string();
    assert!(err.contains("corrupt safekeeper control file"), "{err}");
    let wal = wal_over(&nodes);
    let c2 = RunningCompute::start(agent.clone(), pages.clone(), Some(wal.clone()), spec(2))
        .await
        .expect("two healthy safekeepers keep the quorum");
    let c = tenant(&c2).await;
    assert_eq!(ids(&c).await, (1..=50).collect::<Vec<_>>());
    for id in 51..=60 {
        c.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    drop(c);
    assert!(c2.stop().await.clean);
    shutdown(&nodes).await;
    drop((nodes, wal));

    // sk1 is rebuilt empty; now a WAL segment of sk2 is truncated.
    std::fs::remove_dir_all(tmp.path().join("sk1").join("appdb")).unwrap();
    let seg = std::fs::read_dir(tmp.path().join("sk2").join("appdb").join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let nodes = nodes_in(tmp.path());
    let err = nodes[1].status(&db).await.unwrap_err().to_string();
    assert!(err.contains("size 8192"), "{err}");
    let wal = wal_over(&nodes);
    // sk1 rejoins empty and catches up from the new compute; sk3 is the recovery source.
    let c3 = RunningCompute::start(agent.clone(), pages.clone(), Some(wal.clone()), spec(3))
        .await
        .expect("sk1 (empty, rejoining) and sk3 keep the quorum");
    let c = tenant(&c3).await;
    assert_eq!(ids(&c).await, (1..=60).collect::<Vec<_>>());
    c.execute("INSERT INTO t VALUES (61)", &[]).await.unwrap();
    drop(c);
    assert!(c3.stop().await.clean);
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reads_offloaded_wal_from_object_storage() {
    let tmp = reachable_tempdir();
    let (nodes, wal, agent, pages) = setup(tmp.path());
    let db = DatabaseName::new("appdb").unwrap();
    let (c1, c) = first_generation(&agent, pages.clone(), &wal).await;
    drop(c);
    assert!(c1.stop().await.clean);
    let stale = tmp.path().join("stale");
    copy_dir(&pages.data_dir(&db), &stale);

    // Generation 2 fills several WAL segments (pg_switch_wal ends one each time).
    let c2 = RunningCompute::start(agent.clone(), pages.clone(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    let c = tenant(&c2).await;
    for id in 1..=6 {
        c.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
        // pg_switch_wal needs superuser; a large enough row batch ends a segment instead.
        c.execute(
            "INSERT INTO t SELECT g FROM generate_series($1::int * 100000 + 1, $1::int * 100000 + 60000) g",
            &[&id],
        )
        .await
        .unwrap();
    }
    drop(c);
    assert!(c2.stop().await.clean);

    // Offload and drop local segments on every safekeeper.
    let archive = archive_in(tmp.path());
    let mut uploaded = 0;
    for n in &nodes {
        let r = n.offload_once(archive.as_ref(), 0).await.unwrap();
        uploaded += r.uploaded;
        let st = n.status(&db).await.unwrap();
        assert!(
            st.log.start > Lsn(0),
            "{}: local WAL was not dropped",
            n.name()
        );
    }
    assert!(uploaded >= 1, "nothing offloaded");

    // Generation 3 starts from the stale directory: the WAL it needs first is only in object
    // storage now.
    let c3 = RunningCompute::start(
        agent.clone(),
        Arc::new(FixedDir(stale)),
        Some(wal.clone()),
        spec(3),
    )
    .await
    .expect("recovery from object storage and safekeepers");
    let c = tenant(&c3).await;
    let n = ids_count(&c).await;
    assert_eq!(n, 6 + 6 * 60000);
    drop(c);
    assert!(c3.stop().await.clean);
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_starts_with_no_local_state_from_the_base_image_and_the_wal() {
    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let archive = archive_in(tmp.path());
    let pages_root = tmp.path().join("pages-cache");
    let pages =
        || Arc::new(LocalDirPageStore::new(&pages_root).with_base_images(Arc::clone(&archive)));
    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    c.execute("INSERT INTO t SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    drop(c);
    assert!(c1.stop().await.clean);
    // The WAL moves to object storage too, and the safekeepers drop their copies.
    for n in &nodes {
        n.offload_once(archive.as_ref(), 0).await.unwrap();
    }

    // All local state of the compute side is lost.
    std::fs::remove_dir_all(&pages_root).unwrap();
    let c2 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .expect("start from the base image in object storage plus the WAL");
    let c = tenant(&c2).await;
    let n = ids_count(&c).await;
    assert_eq!(n, 1000);
    c.execute("INSERT INTO t VALUES (1001)", &[]).await.unwrap();
    drop(c);
    assert!(c2.stop().await.clean);
    shutdown(&nodes).await;
}

/// In a quorum the compute runs with `fsync = off` (durability is the quorum's), marked with the
/// boot it runs under. A kill loses nothing (the page cache survives it); after an
/// operating-system crash the directory may have lost any write, so the next start rebuilds it
/// from the base image and the WAL rather than trusting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_ran_unsynced_before_a_reboot_is_rebuilt_not_trusted() {
    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let archive = archive_in(tmp.path());
    let pages_root = tmp.path().join("pages-cache");
    let pages =
        || Arc::new(LocalDirPageStore::new(&pages_root).with_base_images(Arc::clone(&archive)));
    let data_dir = pages_root.join("appdb").join("pgdata");
    let marker = data_dir.join(spg_core::UNSYNCED_MARKER);

    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    let fsync: String = c.query_one("SHOW fsync", &[]).await.unwrap().get(0);
    assert_eq!(fsync, "off");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        spg_core::boot_id().unwrap()
    );
    c.execute("INSERT INTO t SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    drop(c);
    c1.abandon().await; // SIGKILL: the page cache keeps every write

    // Same boot: the directory is trusted and crash recovery runs on it.
    let c2 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    let c = tenant(&c2).await;
    assert_eq!(ids(&c).await.len(), 1000);
    c.execute("INSERT INTO t VALUES (1001)", &[]).await.unwrap();
    let rel: String = c
        .query_one("SELECT pg_relation_filepath('t')", &[])
        .await
        .unwrap()
        .get(0);
    drop(c);
    c2.abandon().await;

    // Now pretend the machine crashed and rebooted: the marker names another boot, and the
    // table's file lost its unsynced pages.
    std::fs::write(&marker, "00000000-0000-0000-0000-000000000000\n").unwrap();
    std::fs::write(data_dir.join(&rel), b"").unwrap();
    std::fs::write(data_dir.join("sentinel"), b"from before the reboot").unwrap();
    let c3 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(3))
        .await
        .expect("rebuilt from the base image plus the WAL");
    assert!(
        !data_dir.join("sentinel").exists(),
        "the directory was rebuilt"
    );
    let c = tenant(&c3).await;
    let got = ids(&c).await;
    assert_eq!(got, (1..=1001).collect::<Vec<i32>>());
    drop(c);
    let report = c3.stop().await;
    assert!(report.clean, "{:?}", report.error);
    assert!(report.timings.get("sync").is_some());
    assert!(
        !marker.exists(),
        "a clean stop syncs and unmarks the directory"
    );
    shutdown(&nodes).await;
}

/// With images in object storage the compute's directory is a cache in every path: a clean stop
/// writes an image (sharing chunks with the one before), the next start reuses the directory only
/// if it is exactly that image, a crashed directory is rebuilt from the image plus the WAL, and a
/// start with no local state at all restores the newest image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_in_object_storage_make_the_local_directory_disposable() {
    use spg_storage_lib::image::ImageStore;
    use spg_storage_lib::ObjectPageStore;

    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let images = ImageStore::new(archive_in(tmp.path()), "images");
    let cache = tmp.path().join("cache");
    let group = agent.run_as.passage_group();
    let pages = || Arc::new(ObjectPageStore::new(images.clone(), &cache).with_passage_group(group));
    let db = DatabaseName::new("appdb").unwrap();
    let data_dir = |g: u64| cache.join("appdb").join(format!("g{g}")).join("pgdata");

    // Generation 1: initdb, whose result becomes the base image.
    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    assert_eq!(images.images(&db).await.unwrap().len(), 1, "base image");
    c.execute("INSERT INTO t SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    drop(c);
    let report = c1.stop().await;
    assert!(report.clean, "{:?}", report.error);
    let written = images.images(&db).await.unwrap();
    assert_eq!(written.len(), 2, "a clean stop writes an image");
    let m2 = images.manifest(&db, &written[1]).await.unwrap();
    assert_eq!(m2.parent, Some(written[0]));
    // Of pg_wal, only the checkpoint's segment and its timeline's history.
    let segment = format!(
        "pg_wal/{}",
        spg_storage_lib::safekeeper::file::segment_file_name(
            written[1].timeline,
            written[1].lsn.0 / (16 << 20),
            16 << 20
        )
    );
    let history = format!("pg_wal/{:08X}.history", written[1].timeline.0);
    assert!(
        m2.files
            .iter()
            .all(|f| !f.path.starts_with("pg_wal/0") || f.path == segment || f.path == history),
        "{:?}",
        m2.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );

    // Generation 2 starts from the cached directory (it is exactly image 2), then crashes.
    std::fs::write(data_dir(1).join("sentinel"), b"cache").unwrap();
    let c2 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    assert!(
        data_dir(2).join("sentinel").exists(),
        "the clean cache was reused"
    );
    let c = tenant(&c2).await;
    assert_eq!(ids_count(&c).await, 1000);
    c.execute("INSERT INTO t VALUES (1001)", &[]).await.unwrap();
    drop(c);
    c2.abandon().await;

    // Generation 3: the crashed directory is not trusted; image 2 plus the WAL has everything.
    let c3 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(3))
        .await
        .unwrap();
    assert!(
        !data_dir(3).join("sentinel").exists() && !data_dir(2).exists(),
        "rebuilt from the image"
    );
    let c = tenant(&c3).await;
    assert_eq!(ids(&c).await, (1..=1001).collect::<Vec<i32>>());
    c.execute("UPDATE t SET id = id + 10000 WHERE id <= 10", &[])
        .await
        .unwrap();
    drop(c);
    assert!(c3.stop().await.clean);
    assert_eq!(images.images(&db).await.unwrap().len(), 3);

    // No local state at all: generation 4 restores the newest image.
    std::fs::remove_dir_all(&cache).unwrap();
    let c4 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(4))
        .await
        .unwrap();
    let c = tenant(&c4).await;
    let got = ids(&c).await;
    assert_eq!(got.len(), 1001);
    assert!(got.contains(&10010) && !got.contains(&10));
    drop(c);
    assert!(c4.stop().await.clean);

    // A fenced generation can no longer write images.
    let stale = ObjectPageStore::new(images.clone(), tmp.path().join("stale-cache"));
    let err = stale
        .checkout(&db, Generation(3), &[])
        .await
        .expect_err("generation 3 is fenced by 4");
    assert!(
        matches!(err, spg_core::CoreError::StaleGeneration { .. }),
        "{err}"
    );
    shutdown(&nodes).await;
}

async fn ids_count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

/// A compute on a lazily mounted image: PostgreSQL runs on lazyfs (pg_wal local), a clean stop
/// writes back only what it wrote, a crash recovers from the image plus the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_runs_on_a_lazily_mounted_image() {
    use spg_storage_lib::image::ImageStore;

    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let images = ImageStore::new(archive_in(tmp.path()), "images");
    let cache = tmp.path().join("cache");
    let pages = lazy_pages(&images, &cache, &agent);
    let db = DatabaseName::new("appdb").unwrap();
    let db_cache = cache.join("appdb");
    let mounted = || {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.contains("spg-lazyfs") && l.contains(db_cache.to_str().unwrap()))
    };

    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    c.execute(
        "INSERT INTO t SELECT g FROM generate_series(1, 20000) g",
        &[],
    )
    .await
    .unwrap();
    drop(c);
    assert!(c1.stop().await.clean);

    let c2 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    if !mounted() {
        assert_ne!(
            std::env::var("SPG_REQUIRE_FUSE").as_deref(),
            Ok("1"),
            "FUSE is required but the compute did not run on lazyfs"
        );
        eprintln!("FUSE unavailable: the compute fell back to an eager restore");
    }
    let c = tenant(&c2).await;
    assert_eq!(ids_count(&c).await, 20000);
    c.execute("INSERT INTO t VALUES (20001)", &[])
        .await
        .unwrap();
    drop(c);
    let report = c2.stop().await;
    assert!(report.clean, "{:?}", report.error);
    assert!(!mounted(), "unmounted after the write-back");
    assert_eq!(images.images(&db).await.unwrap().len(), 3);

    let c3 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(3))
        .await
        .unwrap();
    let c = tenant(&c3).await;
    assert_eq!(ids_count(&c).await, 20001);
    c.execute("DELETE FROM t WHERE id <= 100", &[])
        .await
        .unwrap();
    drop(c);
    c3.abandon().await;

    let c4 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(4))
        .await
        .expect("image plus WAL after a crash on lazyfs");
    let c = tenant(&c4).await;
    assert_eq!(ids_count(&c).await, 19901);
    drop(c);
    amcheck(&agent, &c4);
    assert!(c4.stop().await.clean);
    shutdown(&nodes).await;
}

/// `pg_amcheck` over every table and index of `appdb` (heap and B-tree checks, including that
/// every heap tuple is indexed), as the admin role over the compute's private socket.
fn amcheck(agent: &AgentConfig, compute: &RunningCompute) {
    let out = std::process::Command::new(agent.bins.exe("pg_amcheck"))
        .arg("-h")
        .arg(compute.admin_socket_dir())
        .args(["-p", &compute.endpoint().addr.port().to_string()])
        .args([
            "-U",
            "spg_admin",
            "--install-missing",
            "--heapallindexed",
            "appdb",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck found corruption:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An object store that can be switched off: every request fails while it is "down".
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn object_store::ObjectStore>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

impl Flaky {
    fn check(&self) -> object_store::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(object_store::Error::Generic {
                store: "flaky",
                source: "simulated outage".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl object_store::ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.check()?;
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &object_store::path::Path) -> object_store::Result<()> {
        self.check()?;
        self.inner.delete(location).await
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures::StreamExt;
        match self.check() {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.check()?;
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.check()?;
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.check()?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// An object-store outage during a wake is a clear error and loses nothing; the retry after it
/// returns succeeds. An outage during the write-back at stop loses nothing either: the next
/// compute starts from the previous image plus the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_fails_a_wake_clearly_and_the_retry_succeeds() {
    use spg_storage_lib::image::ImageStore;
    use std::sync::atomic::Ordering;

    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flaky = Arc::new(Flaky {
        inner: archive_in(tmp.path()),
        down: Arc::clone(&down),
    });
    let images = ImageStore::new(flaky, "images");
    let cache = tmp.path().join("cache");
    let pages = lazy_pages(&images, &cache, &agent);

    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    c.execute("INSERT INTO t SELECT generate_series(1, 500)", &[])
        .await
        .unwrap();
    drop(c);
    assert!(c1.stop().await.clean);

    down.store(true, Ordering::SeqCst);
    let err = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .expect_err("no images while the object store is down");
    let msg = err.to_string();
    assert!(
        msg.contains("object store") && msg.contains("simulated outage"),
        "{msg}"
    );
    down.store(false, Ordering::SeqCst);

    let c3 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(3))
        .await
        .expect("the retry after the outage");
    let c = tenant(&c3).await;
    assert_eq!(ids_count(&c).await, 500);
    c.execute("INSERT INTO t VALUES (501)", &[]).await.unwrap();
    drop(c);
    // The object store goes down before the stop: the write-back fails, clearly.
    down.store(true, Ordering::SeqCst);
    let report = c3.stop().await;
    let error = report.error.unwrap_or_default();
    assert!(error.contains("simulated outage"), "{error}");
    down.store(false, Ordering::SeqCst);

    let c4 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(4))
        .await
        .unwrap();
    let c = tenant(&c4).await;
    assert_eq!(ids(&c).await, (1..=501).collect::<Vec<i32>>());
    drop(c);
    amcheck(&agent, &c4);
    assert!(c4.stop().await.clean);
    shutdown(&nodes).await;
}

async fn shutdown(nodes: &[Arc<SafekeeperNode>]) {
    for n in nodes {
        n.shutdown().await;
    }
}

const PS_KEY: &str = "ps-test-key-0123456789";

/// A `spg-pageserver` daemon on a fixed loopback port (chosen by the OS once, so a restart
/// comes back where its clients look), killed on drop.
struct PsDaemon {
    root: PathBuf,
    port: u16,
    guard: Option<common::ChildGuard>,
}

impl PsDaemon {
    fn start(root: &Path) -> PsDaemon {
        let mut d = PsDaemon {
            root: root.to_path_buf(),
            port: common::free_port(),
            guard: None,
        };
        d.restart();
        d
    }

    fn restart(&mut self) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spg-pageserver"));
        cmd.args(["--api-key", PS_KEY, "--gc-every", "0s"])
            .arg("--dir")
            .arg(self.root.join("pageserver"))
            .arg("--archive-dir")
            .arg(self.root.join("objects"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        self.guard = Some(common::spawn_daemon(cmd, self.root.join("pageserver")));
    }

    fn kill_9(&mut self) {
        drop(self.guard.take());
    }

    fn client(&self) -> Arc<spg::pageserver_http::HttpPageserver> {
        let ca = std::fs::read(self.root.join("pageserver/tls/ca.pem")).unwrap();
        Arc::new(
            spg::pageserver_http::HttpPageserver::new(
                &format!("https://127.0.0.1:{}", self.port),
                PS_KEY,
                &ca,
            )
            .unwrap(),
        )
    }
}

/// Computes reach their images through a `spg-pageserver` daemon. It is killed (-9) under a
/// running compute and restarted; killed again before a wake (the wake fails clearly, the retry
/// after the restart succeeds); a compute crashes in between. No acknowledged commit is lost and
/// `pg_amcheck` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pageserver_crash_and_restart_loses_nothing() {
    use spg_storage_lib::image::ImageStore;

    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let mut ps = PsDaemon::start(tmp.path());
    let images = ImageStore::with_repo(ps.client());
    let cache = tmp.path().join("cache");
    let pages = lazy_pages(&images, &cache, &agent);

    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    c.execute(
        "INSERT INTO t SELECT g FROM generate_series(1, 20000) g",
        &[],
    )
    .await
    .unwrap();
    drop(c);
    assert!(c1.stop().await.clean);

    // Generation 2 runs on the image served by the pageserver; the pageserver dies under it.
    let c2 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    let c = tenant(&c2).await;
    c.execute("INSERT INTO t VALUES (20001)", &[])
        .await
        .unwrap();
    ps.kill_9();
    // Commits go to the safekeepers: they keep working while no page is missing. (A read of a
    // page not fetched yet fails with an I/O error until the pageserver is back.)
    for id in 20002..=20010 {
        c.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    ps.restart();
    assert_eq!(ids_count(&c).await, 20010);
    drop(c);
    let report = c2.stop().await;
    assert!(report.clean, "{:?}", report.error);

    // Generation 3 crashes after more commits (no write-back).
    let c3 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(3))
        .await
        .unwrap();
    let c = tenant(&c3).await;
    c.execute("DELETE FROM t WHERE id <= 10", &[])
        .await
        .unwrap();
    drop(c);
    c3.abandon().await;

    // The pageserver is down for the next wake: a clear error, nothing half-started.
    ps.kill_9();
    let err = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(4))
        .await
        .expect_err("no images while the pageserver is down");
    assert!(err.to_string().contains("pageserver"), "{err}");
    ps.restart();
    let c5 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(5))
        .await
        .expect("the retry after the pageserver is back");
    let c = tenant(&c5).await;
    assert_eq!(ids(&c).await, (11..=20010).collect::<Vec<i32>>());
    drop(c);
    amcheck(&agent, &c5);
    assert!(c5.stop().await.clean);
    shutdown(&nodes).await;
}

/// Allocated bytes of the files under `dir` (sparse files count what they hold).
fn allocated_under(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Order-independent checksum of every table of the test: row count and a sum of row hashes.
async fn checksums(c: &tokio_postgres::Client) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for table in ["big", "t"] {
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(hashtext(x::text)::bigint), 0)::bigint \
                     FROM {table} x"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((table.to_owned(), row.get(0), row.get(1)));
    }
    out
}

/// A 1 GB database through ten stop/wake cycles on lazily mounted images served by a pageserver,
/// with scattered writes in between: after every wake the checksums of all tables match those
/// taken just before the stop. After the first cold start, a query touching one row leaves well
/// under 10% of the database in the compute's local cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gb_database_survives_ten_stop_wake_cycles_and_wakes_thin() {
    use spg_storage_lib::image::{ImageStore, ObjectRepo};
    use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};

    let started = std::time::Instant::now();
    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let ps = Arc::new(
        Pageserver::open(
            ObjectRepo::new(archive_in(tmp.path()), "images"),
            &PageserverConfig {
                cache_bytes: 2 << 30,
                ..PageserverConfig::new(tmp.path().join("pageserver"))
            },
        )
        .unwrap(),
    );
    let images = ImageStore::with_repo(ps.clone());
    let cache = tmp.path().join("cache");
    let pages = lazy_pages(&images, &cache, &agent);

    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    c.batch_execute("CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL)")
        .await
        .unwrap();
    // ~1 KB rows, not compressible by TOAST (under its threshold) nor shared between chunks.
    for part in 0..11i64 {
        c.execute(
            "INSERT INTO big SELECT g, g % 1000, repeat(md5(g::text), 30) \
             FROM generate_series($1::bigint * 100000 + 1, ($1::bigint + 1) * 100000) g",
            &[&part],
        )
        .await
        .unwrap();
    }
    c.execute("INSERT INTO t SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    let size: i64 = c
        .query_one("SELECT pg_database_size('appdb')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(size >= 1 << 30, "the database is {size} bytes");
    let mut reference = checksums(&c).await;
    drop(c);
    assert!(c1.stop().await.clean);
    eprintln!("loaded {size} bytes in {:?}", started.elapsed());

    let backing = cache.join("appdb").join("lazy");
    let mut next_id = 1_100_001i64;
    for cycle in 1..=10u64 {
        let t0 = std::time::Instant::now();
        let compute =
            RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(cycle + 1))
                .await
                .unwrap();
        let c = tenant(&compute).await;
        if cycle == 1 {
            let v: i32 = c
                .query_one("SELECT v FROM big WHERE id = 777777", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(v, 777);
            let local = allocated_under(&backing);
            eprintln!(
                "after a cold start and a one-row query: {local} bytes local of {size} ({:.2}%)",
                local as f64 * 100.0 / size as f64
            );
            assert!(
                local * 10 < size as u64,
                "{local} bytes of a {size}-byte database are local"
            );
        }
        assert_eq!(checksums(&c).await, reference, "after wake {cycle}");
        // Scattered writes: updates all over the table, inserts at its end, deletes.
        c.execute(
            "UPDATE big SET v = v + 1 WHERE id IN \
             (SELECT (random() * 999999)::bigint + 1 FROM generate_series(1, 500))",
            &[],
        )
        .await
        .unwrap();
        c.execute(
            "INSERT INTO big SELECT g, 0, md5(g::text) FROM generate_series($1::bigint, $1::bigint + 999) g",
            &[&next_id],
        )
        .await
        .unwrap();
        next_id += 1000;
        c.execute(
            "DELETE FROM big WHERE id IN \
             (SELECT (random() * 999999)::bigint + 1 FROM generate_series(1, 200))",
            &[],
        )
        .await
        .unwrap();
        c.execute(
            "UPDATE t SET id = id + 1000000 WHERE id % 97 = $1",
            &[&(cycle as i32)],
        )
        .await
        .unwrap();
        reference = checksums(&c).await;
        drop(c);
        let report = compute.stop().await;
        assert!(report.clean, "{:?}", report.error);
        eprintln!("cycle {cycle}: {:?}", t0.elapsed());
    }
    let last = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(12))
        .await
        .unwrap();
    let c = tenant(&last).await;
    assert_eq!(checksums(&c).await, reference, "after the last wake");
    drop(c);
    amcheck(&agent, &last);
    assert!(last.stop().await.clean);
    shutdown(&nodes).await;
    eprintln!("total {:?}", started.elapsed());
}

/// A compute that crashes writes no image; rolling the newest image forward from the quorum
/// (a standby replaying to the quorum's end, shut down at a restartpoint) gives the next start an
/// image past the crashed compute's last checkpoint, and every commit is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_computes_image_is_rolled_forward_from_the_quorum() {
    use spg::rollforward::RollForward;
    use spg_storage_lib::image::ImageStore;

    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let images = ImageStore::new(archive_in(tmp.path()), "images");
    let cache = tmp.path().join("cache");
    let pages = lazy_pages(&images, &cache, &agent);
    let db = DatabaseName::new("appdb").unwrap();
    let mut rf = RollForward::new(
        images.clone(),
        wal.clone(),
        agent.clone(),
        tmp.path().join("rollforward"),
    );
    rf.min_lag = 4096;

    let (c1, c) = first_generation(&agent, pages(), &wal).await;
    c.execute("INSERT INTO t SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    drop(c);
    assert!(c1.stop().await.clean);
    let before = images.latest(&db, &[]).await.unwrap().unwrap();
    assert!(
        rf.run(&db).await.unwrap().is_none(),
        "nothing after the image: nothing to roll"
    );

    // Generation 2 writes, checkpoints, writes more, and crashes.
    let c2 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(2))
        .await
        .unwrap();
    let c = tenant(&c2).await;
    c.execute("INSERT INTO t SELECT generate_series(1001, 50000)", &[])
        .await
        .unwrap();
    let mut admin = tokio_postgres::Config::new();
    admin
        .host_path(c2.admin_socket_dir())
        .port(c2.endpoint().addr.port())
        .user("spg_admin")
        .dbname("postgres");
    let (a, conn) = admin.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    a.batch_execute("CHECKPOINT").await.unwrap();
    c.execute("INSERT INTO t SELECT generate_series(50001, 60000)", &[])
        .await
        .unwrap();
    drop((a, c));
    c2.abandon().await;

    let rolled = rf
        .run(&db)
        .await
        .unwrap()
        .expect("WAL after the image: rolled forward");
    assert_eq!(rolled.from, before);
    assert!(rolled.to.lsn > before.lsn, "{rolled:?}");
    assert_eq!(rolled.to.generation, Generation(2));
    assert!(rolled.quorum_end >= rolled.to.lsn);
    assert_eq!(images.latest(&db, &[]).await.unwrap(), Some(rolled.to));

    // The next start begins at the rolled image and has every commit.
    let c3 = RunningCompute::start(agent.clone(), pages(), Some(wal.clone()), spec(3))
        .await
        .unwrap();
    let c = tenant(&c3).await;
    assert_eq!(ids(&c).await, (1..=60000).collect::<Vec<i32>>());
    drop(c);
    amcheck(&agent, &c3);
    assert!(c3.stop().await.clean);
    shutdown(&nodes).await;
}

/// Page stores over `images`, caching under `cache`, mounting lazily for `agent`'s user: one per
/// compute, as a host would create them.
fn lazy_pages(
    images: &spg_storage_lib::image::ImageStore,
    cache: &Path,
    agent: &AgentConfig,
) -> impl Fn() -> Arc<spg_storage_lib::ObjectPageStore> {
    let (images, cache) = (images.clone(), cache.to_path_buf());
    let (uid, gid) = (agent.run_as.uid, agent.run_as.gid);
    move || {
        Arc::new(
            spg_storage_lib::ObjectPageStore::new(images.clone(), &cache)
                .with_lazy_mounts(uid, gid),
        )
    }
}

/// An autoscale handoff at the agent's level: generation 3 (profile L2) is prepared as a standby
/// of the running generation 2 (L1) on a lazily mounted image of its own, while 2 keeps
/// committing; 2 stops for the handoff, 3 is elected, promotes onto its timeline exactly where
/// the quorum's log ends, and carries every acknowledged commit. An aborted preparation (a
/// standby discarded) leaves the writer able to write its image back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_of_the_writer_takes_over_with_every_commit() {
    use spg_lifecycle_lib::compute::config::l2_profile;
    use spg_lifecycle_lib::compute::standby::StandbyCompute;
    use spg_storage_lib::image::ImageStore;

    let tmp = reachable_tempdir();
    let (nodes, wal, agent, _) = setup(tmp.path());
    let images = ImageStore::new(archive_in(tmp.path()), "images");
    let pages: Arc<dyn PageStore> = lazy_pages(&images, &tmp.path().join("cache"), &agent)();
    let db = DatabaseName::new("appdb").unwrap();

    let (c1, c) = first_generation(&agent, Arc::clone(&pages), &wal).await;
    c.execute("INSERT INTO t SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    drop(c);
    assert!(c1.stop().await.clean);
    let c2 = RunningCompute::start(
        agent.clone(),
        Arc::clone(&pages),
        Some(wal.clone()),
        spec(2),
    )
    .await
    .unwrap();
    let c = tenant(&c2).await;
    c.execute("INSERT INTO t SELECT generate_series(1001, 2000)", &[])
        .await
        .unwrap();

    // An aborted preparation: the standby goes, the writer is unaffected.
    let mut s = StandbyCompute::start(
        agent.clone(),
        Arc::clone(&pages),
        wal.clone(),
        spec(3),
        &default_profile(),
    )
    .await
    .unwrap();
    s.discard().await;

    // Generation 4, L2, prepared beside the running writer, which keeps committing.
    let mut l2 = spec(4);
    l2.profile = l2_profile();
    let standby = StandbyCompute::start(
        agent.clone(),
        Arc::clone(&pages),
        wal.clone(),
        l2,
        &default_profile(),
    )
    .await
    .unwrap();
    assert!(
        standby.is_hot(),
        "a bigger standby replays with hot standby"
    );
    for chunk in 0..10 {
        let from = 2001 + chunk * 100;
        c.execute(
            "INSERT INTO t SELECT generate_series($1::int, $2::int)",
            &[&from, &(from + 99)],
        )
        .await
        .unwrap();
    }
    // It replays what the quorum acknowledged while the writer runs.
    let first = standby.replay_lsn().await.expect("replay position");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A commit each time round (at least one: the row is expected at the end).
        c.execute("INSERT INTO t VALUES (-1) ON CONFLICT DO NOTHING", &[])
            .await
            .unwrap();
        let now = standby.replay_lsn().await.unwrap();
        if now > first || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        standby.replay_lsn().await.unwrap() > first,
        "the standby follows"
    );
    drop(c);

    let report = c2.stop_for_handoff().await;
    assert!(report.clean, "{:?}", report.error);
    assert!(report.image.is_none());
    let c4 = standby.promote().await.expect("promotion");
    assert_eq!(c4.endpoint().generation, Generation(4));
    let c = tenant(&c4).await;
    let mut want: Vec<i32> = (1..=3000).collect();
    want.insert(0, -1);
    assert_eq!(ids(&c).await, want, "every acknowledged commit");
    let sb = c.query_one("SHOW shared_buffers", &[]).await.unwrap();
    assert_eq!(sb.get::<_, String>(0), "512MB", "the L2 profile runs");
    c.execute("INSERT INTO t VALUES (3001)", &[]).await.unwrap();
    // Generation 2 is fenced: no image from it any more.
    assert!(pages.write_back(&db, Generation(2)).await.is_err());

    // Back to L1: the smaller standby takes the writer's connection slots and stays hot; the
    // writer flushes (one synchronous commit) and stops at once, without a shutdown checkpoint.
    let standby = StandbyCompute::start(
        agent.clone(),
        Arc::clone(&pages),
        wal.clone(),
        spec(5),
        c4.profile(),
    )
    .await
    .unwrap();
    assert!(standby.is_hot());
    c.execute("INSERT INTO t VALUES (3002)", &[]).await.unwrap();
    drop(c);
    c4.flush_for_handoff().await.unwrap();
    assert!(c4.stop_for_handoff().await.clean);
    let c5 = standby.promote().await.expect("promotion");
    let c = tenant(&c5).await;
    assert_eq!(ids_count(&c).await, 3003);
    let sb = c.query_one("SHOW shared_buffers", &[]).await.unwrap();
    assert_eq!(sb.get::<_, String>(0), "128MB", "the L1 profile runs");
    let mc = c.query_one("SHOW max_connections", &[]).await.unwrap();
    assert_eq!(mc.get::<_, String>(0), "200", "with the L2 writer's slots");
    c.execute("INSERT INTO t VALUES (3003)", &[]).await.unwrap();

    // A standby that cannot replay with hot standby (the writer claims more lock slots than it
    // has) is restarted into the recovery of a cold start instead, with the same outcome.
    let mut claimed = c5.profile().clone();
    claimed
        .settings
        .insert("max_locks_per_transaction".into(), "256".into());
    let standby = StandbyCompute::start(
        agent.clone(),
        Arc::clone(&pages),
        wal.clone(),
        spec(6),
        &claimed,
    )
    .await
    .unwrap();
    assert!(!standby.is_hot());
    c.execute("INSERT INTO t VALUES (3004)", &[]).await.unwrap();
    drop(c);
    assert!(c5.stop_for_handoff().await.clean);
    let c6 = standby
        .promote()
        .await
        .expect("promotion without hot standby");
    let c = tenant(&c6).await;
    assert_eq!(ids_count(&c).await, 3005);
    drop(c);
    let report = c6.stop().await;
    assert!(report.clean, "{:?}", report.error);
    assert!(
        report.image.is_some(),
        "the promoted generation writes its image"
    );

    // A cold start after it finds everything, from its image and the quorum.
    let c7 = RunningCompute::start(
        agent.clone(),
        Arc::clone(&pages),
        Some(wal.clone()),
        spec(7),
    )
    .await
    .unwrap();
    let c = tenant(&c7).await;
    assert_eq!(ids_count(&c).await, 3005);
    drop(c);
    assert!(c7.stop().await.clean);
    shutdown(&nodes).await;
}

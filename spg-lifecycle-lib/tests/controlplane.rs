//! The control plane driving real `postgres` processes through the local provisioner.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use spg_core::{ComputeState, DatabaseName, Generation, Lease, RoleName};
use spg_lifecycle_lib::compute::AgentConfig;
use spg_lifecycle_lib::metrics::ControlPlaneMetrics;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::provisioner::LocalProvisioner;
use spg_lifecycle_lib::store::SqliteStateStore;
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig, RoleSecret};
use spg_storage_lib::LocalDirPageStore;

struct Fixture {
    dir: tempfile::TempDir,
    cp: ControlPlane,
}

impl Fixture {
    async fn start(dir: tempfile::TempDir, idle: Duration) -> Fixture {
        let cfg = ControlPlaneConfig {
            idle_timeout: idle,
            lease_ttl: Duration::from_secs(2),
            ..ControlPlaneConfig::default()
        };
        let store = SqliteStateStore::open(&dir.path().join("state.db")).unwrap();
        let pages = LocalDirPageStore::new(dir.path().join("pages"));
        let agent =
            AgentConfig::new(dir.path().join("run"), PgBinaries::locate(None).unwrap()).unwrap();
        let prov = LocalProvisioner::new(agent, Arc::new(pages)).unwrap();
        let cp = ControlPlane::start(
            cfg,
            Arc::new(store),
            Arc::new(prov),
            ControlPlaneMetrics::default(),
        )
        .await
        .unwrap();
        Fixture { dir, cp }
    }

    async fn new(idle: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // The compute user must be able to reach the data directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture::start(dir, idle).await
    }
}

fn db() -> DatabaseName {
    DatabaseName::new("shop").unwrap()
}

async fn connect(addr: std::net::SocketAddr, password: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(addr.port())
        .user("app")
        .password(password)
        .dbname("shop");
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_stop_wake_keeps_data_and_bumps_generations() {
    let f = Fixture::new(Duration::from_secs(300)).await;
    f.cp.create_database(db()).await.unwrap();
    f.cp.create_role(
        &db(),
        RoleName::new("app").unwrap(),
        RoleSecret::Password("pw1".into()),
    )
    .await
    .unwrap();

    let ep = f.cp.wake(&db()).await.unwrap();
    assert_eq!(ep.generation, Generation(1));
    let st = f.cp.database(&db()).await.unwrap();
    assert_eq!(st.record.state, ComputeState::Ready);
    assert_eq!(st.record.wake_count, 1);
    let boot = st.record.last_boot.unwrap();
    for step in ["checkout", "initdb", "configure", "start", "roles", "total"] {
        assert!(boot.get(step).is_some(), "missing boot step {step}");
    }

    let client = connect(ep.addr, "pw1").await;
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42);")
        .await
        .unwrap();
    // Tenant roles are never superusers.
    let row = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    drop(client);

    let st = f.cp.stop_database(&db()).await.unwrap();
    assert_eq!(st.record.state, ComputeState::Stopped);
    assert!(st.record.last_stop.unwrap().get("write_back").is_some());

    // A role created while stopped is installed at the next start.
    f.cp.create_role(
        &db(),
        RoleName::new("other").unwrap(),
        RoleSecret::Password("pw2".into()),
    )
    .await
    .unwrap();
    let ep2 = f.cp.wake(&db()).await.unwrap();
    assert_eq!(ep2.generation, Generation(2));
    let client = connect(ep2.addr, "pw1").await;
    let v: i32 = client
        .query_one("SELECT v FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    assert!(f
        .cp
        .database(&db())
        .await
        .unwrap()
        .record
        .last_boot
        .unwrap()
        .get("initdb")
        .is_none());

    // A role created while running is usable at once.
    f.cp.create_role(
        &db(),
        RoleName::new("late").unwrap(),
        RoleSecret::Password("pw3".into()),
    )
    .await
    .unwrap();
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(ep2.addr.port())
        .user("late")
        .password("pw3")
        .dbname("shop");
    let (late, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    late.simple_query("SELECT 1").await.unwrap();

    let ts = f.cp.transitions(Some(&db()), 100).await.unwrap();
    let states: Vec<_> = ts.iter().rev().map(|t| t.to.as_str()).collect();
    assert_eq!(
        states,
        ["stopped", "booting", "ready", "stopping", "stopped", "booting", "ready"]
    );
    f.cp.shutdown().await;
    assert_eq!(
        f.cp.database(&db()).await.unwrap().record.state,
        ComputeState::Stopped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wakes_share_one_start() {
    let f = Fixture::new(Duration::from_secs(300)).await;
    f.cp.create_database(db()).await.unwrap();
    let wakes = (0..20).map(|_| {
        let cp = f.cp.clone();
        tokio::spawn(async move { cp.wake(&db()).await })
    });
    let mut gens = Vec::new();
    for w in wakes {
        gens.push(w.await.unwrap().unwrap().generation);
    }
    assert!(gens.iter().all(|g| *g == Generation(1)), "{gens:?}");
    assert_eq!(f.cp.database(&db()).await.unwrap().record.wake_count, 1);
    f.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stop_waits_for_leases() {
    let f = Fixture::new(Duration::from_millis(700)).await;
    f.cp.create_database(db()).await.unwrap();
    // (Wake first: the first start runs initdb, which may outlast the 2 s lease on a busy
    // machine, and this test holder does not renew while it waits.)
    f.cp.wake(&db()).await.unwrap();
    let lease = f.cp.acquire(&db(), "test").await.unwrap();
    // Held (and renewed) lease: no idle stop, well past idle_timeout.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.cp.renew(&lease.id).await.unwrap();
        assert_eq!(
            f.cp.database(&db()).await.unwrap().record.state,
            ComputeState::Ready
        );
    }
    f.cp.release(&lease.id).await.unwrap();
    assert!(f.cp.renew(&lease.id).await.is_err());
    let mut state = ComputeState::Ready;
    for _ in 0..100 {
        state = f.cp.database(&db()).await.unwrap().record.state;
        if state == ComputeState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, ComputeState::Stopped);
    let last = &f.cp.transitions(Some(&db()), 1).await.unwrap()[0];
    assert_eq!(last.reason, "idle");

    // An expired (unrenewed) lease stops protecting the database.
    let _forgotten = f.cp.acquire(&db(), "forgetful").await.unwrap();
    f.cp.wake(&db()).await.unwrap();
    let mut stopped = false;
    for _ in 0..100 {
        if f.cp.database(&db()).await.unwrap().record.state == ComputeState::Stopped {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "lease ttl 2s + idle 0.7s should have stopped it");
    f.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_compute_is_noticed_and_restarted() {
    let f = Fixture::new(Duration::from_secs(300)).await;
    f.cp.create_database(db()).await.unwrap();
    f.cp.create_role(
        &db(),
        RoleName::new("app").unwrap(),
        RoleSecret::Password("pw".into()),
    )
    .await
    .unwrap();
    let ep = f.cp.wake(&db()).await.unwrap();
    let client = connect(ep.addr, "pw").await;
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7);")
        .await
        .unwrap();
    let pid: i32 = std::fs::read_to_string(f.dir.path().join("pages/shop/pgdata/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut st = f.cp.database(&db()).await.unwrap();
    for _ in 0..100 {
        if st.record.state == ComputeState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = f.cp.database(&db()).await.unwrap();
    }
    assert_eq!(st.record.state, ComputeState::Stopped);
    assert!(st
        .record
        .last_error
        .unwrap()
        .contains("exited unexpectedly"));
    // Crash recovery on the next start: the committed row is there.
    let ep = f.cp.wake(&db()).await.unwrap();
    assert_eq!(ep.generation, Generation(2));
    let client = connect(ep.addr, "pw").await;
    let v: i32 = client
        .query_one("SELECT v FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 7);
    f.cp.shutdown().await;
}

#[test]
fn restart_recovers_state_and_stops_leftover_computes() {
    // Phase 1 on a current-thread runtime that is never driven again afterwards: its tasks
    // freeze and nothing is dropped, as if the control plane process had been killed while its
    // compute kept running.
    let (dir, pid) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let f = Fixture::new(Duration::from_secs(300)).await;
            f.cp.create_database(db()).await.unwrap();
            f.cp.wake(&db()).await.unwrap();
            let pid_file = f.dir.path().join("pages/shop/pgdata/postmaster.pid");
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let Fixture { dir, cp } = f;
            std::mem::forget(cp);
            (dir, pid)
        });
        std::mem::forget(rt);
        out
    })
    .join()
    .unwrap();
    let alive =
        |pid: i32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
    assert!(alive(pid), "the leftover compute should still run");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let f = Fixture::start(dir, Duration::from_secs(300)).await;
        assert!(!alive(pid), "the leftover compute should have been stopped");
        let st = f.cp.database(&db()).await.unwrap();
        assert_eq!(st.record.state, ComputeState::Stopped);
        let last = &f.cp.transitions(Some(&db()), 1).await.unwrap()[0];
        assert_eq!(last.reason, "recovered at control plane start");
        let ep = f.cp.wake(&db()).await.unwrap();
        assert_eq!(ep.generation, Generation(2));
        f.cp.shutdown().await;
    });
}

/// A handoff needs a page store that holds a standby beside the writer: this one cannot, so the
/// handoff gives up with the reason and the writer runs on. A handoff left in progress by a
/// control plane that died is recorded as aborted at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_handoff_aborts_and_a_crashed_one_is_recorded_aborted() {
    let f = Fixture::new(Duration::from_secs(300)).await;
    f.cp.create_database(db()).await.unwrap();
    let ep = f.cp.wake(&db()).await.unwrap();
    let err =
        f.cp.start_handoff(&db(), "L2")
            .await
            .unwrap()
            .wait()
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("standby"), "{err}");
    let st = f.cp.database(&db()).await.unwrap();
    assert_eq!(st.record.scale_state, spg_core::ScaleState::Aborted);
    assert_eq!(st.record.state, ComputeState::Ready);
    assert_eq!(st.endpoint, Some(ep), "the writer runs on");
    assert_eq!(st.profile, "L1");
    assert!(
        f.cp.start_handoff(&db(), "L7").await.is_err(),
        "unknown profile"
    );
    f.cp.shutdown().await;

    // A record left mid-handoff (the process died while draining).
    let store = SqliteStateStore::open(&f.dir.path().join("state.db")).unwrap();
    use spg_lifecycle_lib::store::StateStore;
    let mut rec = store.database(&db()).await.unwrap().unwrap();
    let v = rec.version;
    rec.scale_state = spg_core::ScaleState::Draining;
    rec.version += 1;
    assert!(store.update_database(&rec, v, None).await.unwrap());
    drop(store);
    let dir = f.dir;
    let f = Fixture::start(dir, Duration::from_secs(300)).await;
    let st = f.cp.database(&db()).await.unwrap();
    assert_eq!(st.record.scale_state, spg_core::ScaleState::Aborted);
    assert!(st.record.scale_reason.unwrap().contains("restarted"));
    f.cp.shutdown().await;
}

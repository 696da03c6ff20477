//! Two control planes sharing a PostgreSQL state store (a real server on loopback), with real
//! computes: one owner per database, racing wakes start one compute, a released or expired
//! ownership is taken over, and a control plane frozen past its lease does not act when it
//! runs again.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spg_core::{ComputeState, DatabaseName, Generation, RoleName};
use spg_lifecycle_lib::compute::AgentConfig;
use spg_lifecycle_lib::controlplane::OwnershipConfig;
use spg_lifecycle_lib::metrics::ControlPlaneMetrics;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::provisioner::LocalProvisioner;
use spg_lifecycle_lib::store::{PostgresStateStore, StateStore};
use spg_lifecycle_lib::testing::TestPostgres;
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig, LifecycleError, RoleSecret};
use spg_storage_lib::LocalDirPageStore;

const TTL: Duration = Duration::from_millis(1_200);

fn db() -> DatabaseName {
    DatabaseName::new("shop").unwrap()
}

/// A control plane named `name` over the shared store; both share the host's run and page
/// directories (two control planes of one machine).
async fn control_plane(name: &str, url: &str, dir: &Path) -> ControlPlane {
    let mut own = OwnershipConfig::new(name, format!("https://{name}.invalid"));
    own.ttl = TTL;
    own.renew_interval = Duration::from_millis(300);
    let cfg = ControlPlaneConfig {
        idle_timeout: Duration::from_secs(300),
        ownership: Some(own),
        ..ControlPlaneConfig::default()
    };
    let store = PostgresStateStore::connect(url, None).await.unwrap();
    let pages = LocalDirPageStore::new(dir.join("pages"));
    let agent = AgentConfig::new(dir.join("run"), PgBinaries::locate(None).unwrap()).unwrap();
    let prov = LocalProvisioner::new(agent, Arc::new(pages)).unwrap();
    ControlPlane::start(
        cfg,
        Arc::new(store),
        Arc::new(prov),
        ControlPlaneMetrics::default(),
    )
    .await
    .unwrap()
}

async fn connect(addr: std::net::SocketAddr) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(addr.port())
        .user("app")
        .password("pw")
        .dbname("shop")
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Wake through `cp` until it owns the database (another's lease must run out first).
async fn wake_when_owned(cp: &ControlPlane, deadline: Duration) -> spg_core::ComputeEndpoint {
    let t0 = Instant::now();
    loop {
        match cp.wake(&db()).await {
            Ok(ep) => return ep,
            Err(LifecycleError::NotOwner { .. }) if t0.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("wake: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_racing_wakes_one_start_and_takeover_after_release() {
    let pg = TestPostgres::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let url = pg.url("postgres");
    let dir = tempdir();
    let cp1 = control_plane("cp-1", &url, dir.path()).await;
    let cp2 = control_plane("cp-2", &url, dir.path()).await;

    cp1.create_database(db()).await.unwrap();
    assert!(matches!(
        cp2.create_database(db()).await,
        Err(LifecycleError::AlreadyExists { .. })
    ));
    // Both see it; neither owns it before acting on it.
    assert_eq!(cp2.databases().await.unwrap().len(), 1);
    assert!(!cp1.owns(&db()) && !cp2.owns(&db()));

    // Racing wakes through both: one control plane starts one compute, the other is told
    // who owns the database.
    let wakes: Vec<_> = (0..8)
        .map(|i| {
            let cp = if i % 2 == 0 { cp1.clone() } else { cp2.clone() };
            tokio::spawn(async move { cp.wake(&db()).await })
        })
        .collect();
    let mut started = Vec::new();
    let mut refused = 0;
    for w in wakes {
        match w.await.unwrap() {
            Ok(ep) => started.push(ep),
            Err(LifecycleError::NotOwner { url, .. }) => {
                assert!(url.is_some_and(|u| u.ends_with(".invalid")));
                refused += 1;
            }
            Err(e) => panic!("wake: {e}"),
        }
    }
    assert!(!started.is_empty());
    assert!(started.iter().all(|e| e == &started[0]), "{started:?}");
    assert_eq!(started[0].generation, Generation(1));
    let (owner, other) = if cp1.owns(&db()) {
        (&cp1, &cp2)
    } else {
        (&cp2, &cp1)
    };
    assert!(!other.owns(&db()), "one owner");
    assert_eq!(refused + started.len(), 8);
    let rec = owner.database(&db()).await.unwrap().record;
    assert_eq!(rec.wake_count, 1, "one start");
    assert_eq!(rec.state, ComputeState::Ready);

    owner
        .create_role(
            &db(),
            RoleName::new("app").unwrap(),
            RoleSecret::Password("pw".into()),
        )
        .await
        .unwrap();
    let c = connect(started[0].addr).await;
    c.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    drop(c);

    // The owner leaves (computes stopped, ownership released): the other takes the
    // database at once, with a new generation and the data.
    owner.shutdown().await;
    let ep = wake_when_owned(other, Duration::from_secs(5)).await;
    assert_eq!(ep.generation, Generation(2));
    assert!(other.owns(&db()));
    let c = connect(ep.addr).await;
    let v: i32 = c.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    drop(c);
    other.shutdown().await;
}

#[test]
fn a_frozen_owner_is_replaced_and_does_not_act_after_it_thaws() {
    let pg = TestPostgres::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let url = pg.url("postgres");
    let dir = tempdir();
    // cp-1 runs on a runtime of its own, driven by one thread: blocking that thread freezes
    // every task of cp-1 at once, as SIGSTOP would.
    let rt1 = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let (quit, quit_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::spawn({
        let rt1 = Arc::clone(&rt1);
        move || {
            rt1.block_on(async {
                let _ = quit_rx.await;
            })
        }
    });

    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    main.block_on(async {
        let cp1 = {
            let (url, dir) = (url.clone(), dir.path().to_path_buf());
            rt1.handle()
                .spawn(async move { control_plane("cp-1", &url, &dir).await })
                .await
                .unwrap()
        };
        let cp2 = control_plane("cp-2", &url, dir.path()).await;
        cp1.create_database(db()).await.unwrap();
        let first = {
            let cp1 = cp1.clone();
            rt1.handle()
                .spawn(async move { cp1.wake(&db()).await })
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(first.generation, Generation(1));
        assert!(matches!(
            cp2.wake(&db()).await,
            Err(LifecycleError::NotOwner { .. })
        ));

        // Freeze cp-1 for four of its leases.
        rt1.handle().spawn(async { std::thread::sleep(TTL * 4) });
        let frozen_at = Instant::now();
        // Its lease runs out; cp-2's sweep finds a running database without an owner and takes
        // it (stopping what this host had left of it); a wake starts generation 2.
        let ep = wake_when_owned(&cp2, TTL * 3).await;
        assert!(
            frozen_at.elapsed() < TTL * 4,
            "taken over while cp-1 was frozen"
        );
        assert_eq!(ep.generation, Generation(2));
        let store = PostgresStateStore::connect(&url, None).await.unwrap();
        let before = store.database(&db()).await.unwrap().unwrap();

        // cp-1 thaws: a wake and a stop asked of it do nothing to the database.
        let (w, s) = {
            let cp1 = cp1.clone();
            rt1.handle()
                .spawn(async move { (cp1.wake(&db()).await, cp1.stop_database(&db()).await) })
                .await
                .unwrap()
        };
        assert!(matches!(w, Err(LifecycleError::NotOwner { .. })), "{w:?}");
        assert!(s.is_err(), "{s:?}");
        tokio::time::sleep(TTL * 2).await;
        let after = store.database(&db()).await.unwrap().unwrap();
        assert_eq!(
            (after.version, after.generation, after.state),
            (before.version, before.generation, ComputeState::Ready),
            "nothing written by the thawed control plane"
        );
        assert!(cp2.owns(&db()) && !cp1.owns(&db()));
        let ts = store.transitions(Some(&db()), 100).await.unwrap();
        let g1_after_takeover = ts
            .iter()
            .take_while(|t| !t.reason.starts_with("taken over"))
            .any(|t| t.generation == Generation(1));
        assert!(!g1_after_takeover, "{ts:#?}");

        cp2.shutdown().await;
        rt1.handle()
            .spawn(async move { cp1.shutdown().await })
            .await
            .unwrap();
    });
    let _ = quit.send(());
    driver.join().unwrap();
}

//! SPG over several "hosts": every daemon its own process on its own loopback address with its
//! own directory, each started from its own config file — a PostgreSQL for state, two
//! `spg-controlplane`s, two `spg-gateway`s, three `spg-safekeeper`s, one `spg-pageserver` and
//! an S3-protocol server. Under acknowledged inserts through both gateways (one DSN naming
//! both), each component is killed in turn; every acknowledged id must survive, the database
//! must never have two writers, and the DSN never changes.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spg::testing::procs::postgres_processes_under;
use spg::testing::topology::{
    check_single_writer, missing_ids, progress, Acks, Programs, Topology, Writers,
};

/// Whether phase `n` runs (`SPG_TOPOLOGY_SKIP=1,4` skips phases 1 and 4, for debugging).
fn phase(n: u32) -> bool {
    let skip = std::env::var("SPG_TOPOLOGY_SKIP").unwrap_or_default();
    !skip.split(',').any(|p| p.trim() == n.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_killed_in_turn_under_writes() {
    let tmp = common::reachable_tempdir();
    let programs = Programs {
        controlplane: env!("CARGO_BIN_EXE_spg-controlplane").into(),
        gateway: env!("CARGO_BIN_EXE_spg-gateway").into(),
        safekeeper: env!("CARGO_BIN_EXE_spg-safekeeper").into(),
        pageserver: env!("CARGO_BIN_EXE_spg-pageserver").into(),
    };
    let mut topo = Topology::start(&programs, tmp.path()).await;
    let tls = topo.tls();
    let (dsn, dsn_reversed, api) = (
        topo.dsn.clone(),
        topo.dsn_reversed.clone(),
        topo.api.clone(),
    );

    // The first connections through both gateways race to wake the database through both
    // control planes: one compute starts.
    let (c1, c2) = tokio::join!(
        tokio_postgres::connect(&dsn, tls.clone()),
        tokio_postgres::connect(&dsn_reversed, tls.clone())
    );
    let (c1, conn1) = c1.expect("connect through gw1");
    let (c2, conn2) = c2.expect("connect through gw2");
    tokio::spawn(conn1);
    tokio::spawn(conn2);
    let view = api.database("shop").await.unwrap();
    assert_eq!(
        view.wake_count, 1,
        "racing wakes started one compute: {view:?}"
    );
    let running: Vec<usize> = topo
        .cps
        .iter()
        .enumerate()
        .filter(|(_, h)| !postgres_processes_under(&h.dir).is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(running.len(), 1, "one control plane runs the compute");
    c1.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    assert_eq!(
        c2.query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    drop((c1, c2));

    let writers = Writers::start(&[&dsn, &dsn_reversed], &tls);
    let acks = writers.acks.clone();
    progress(&acks, 20, Duration::from_secs(60), "start").await;
    let mut failovers: Vec<(String, Duration)> = Vec::new();
    let mut failover = |what: &str, t0: Instant, acks: &Mutex<Acks>| {
        let d = acks.lock().unwrap().longest_gap_after(t0);
        eprintln!("topology: {what}: longest time without an acknowledged insert {d:?}");
        failovers.push((what.to_string(), d));
    };

    // 1. The owning control plane.
    if phase(1) {
        let own = topo.owner().expect("an owner");
        let t0 = Instant::now();
        topo.cps[own].kill_9();
        progress(
            &acks,
            10,
            Duration::from_secs(60),
            "owning control plane killed",
        )
        .await;
        failover("owning control plane kill -9", t0, &acks);
        let new_owner = topo.owner().expect("an owner");
        assert_ne!(new_owner, own, "the other control plane took over");
        topo.cps[own].start();
    }

    // 2. A gateway.
    if phase(2) {
        let t0 = Instant::now();
        topo.gws[0].kill_9();
        progress(&acks, 10, Duration::from_secs(30), "gateway killed").await;
        failover("gateway kill -9", t0, &acks);
        topo.gws[0].start();
    }

    // 3. A safekeeper: a majority still acknowledges.
    if phase(3) {
        let t0 = Instant::now();
        topo.sks[0].kill_9();
        progress(&acks, 10, Duration::from_secs(30), "safekeeper killed").await;
        failover("safekeeper kill -9", t0, &acks);
        topo.sks[0].start();
    }

    // 4. The owner frozen past its lease: the other takes over; after SIGCONT, the frozen one
    //    does not act (its compute is gone, the record is the new owner's).
    if phase(4) {
        let own = topo.owner().expect("an owner");
        topo.cps[own].signal(nix::sys::signal::Signal::SIGSTOP);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let other = topo.owner();
        topo.cps[own].signal(nix::sys::signal::Signal::SIGCONT);
        progress(&acks, 10, Duration::from_secs(60), "owner frozen").await;
        failover("owning control plane SIGSTOP", t0, &acks);
        let after = topo.owner().expect("an owner");
        assert_eq!(
            other,
            Some(after),
            "ownership moved while frozen and stayed"
        );
        assert_ne!(after, own);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !postgres_processes_under(&topo.cps[own].dir).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the thawed control plane kept its compute"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The thawed one does not act again: no compute of its own for a while, while the
        // writers go on (on whatever generation the new owner runs).
        tokio::time::sleep(Duration::from_secs(2)).await;
        // (Its spare compute process may run: it has no database.)
        assert!(
            postgres_processes_under(&topo.cps[own].dir).is_empty(),
            "the thawed control plane started a compute again"
        );
        progress(&acks, 10, Duration::from_secs(60), "after the thaw").await;
        assert_eq!(topo.owner(), Some(after));
    }

    // 5. The pageserver while the database is stopped.
    if phase(5) {
        // No client left to wake it: both writers rest, without connections.
        writers.pause().await;
        // A gateway's connection attempt still under way may wake it once more: stop until
        // it stays stopped.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stopped = api.stop_database("shop").await.unwrap();
            assert_eq!(stopped.state.as_str(), "stopped", "{stopped:?}");
            tokio::time::sleep(Duration::from_secs(2)).await;
            if api.database("shop").await.unwrap().state.as_str() == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "the database keeps waking");
        }
        topo.ps.kill_9();
        topo.ps.start();
        let view = api.database("shop").await.unwrap();
        assert_eq!(
            view.state.as_str(),
            "stopped",
            "nothing woke it meanwhile: {view:?}"
        );
        let t0 = Instant::now();
        writers.resume();
        progress(
            &acks,
            10,
            Duration::from_secs(60),
            "pageserver killed while stopped",
        )
        .await;
        failover("wake after the pageserver's kill -9", t0, &acks);
    }

    // 6. The state PostgreSQL, restarted.
    if phase(6) {
        let t0 = Instant::now();
        topo.state.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        topo.state.restart().unwrap();
        progress(&acks, 10, Duration::from_secs(90), "state store restarted").await;
        failover("state PostgreSQL kill -9 + restart", t0, &acks);
    }

    let acked = writers.finish().await;
    // Every acknowledged id is there, read through the same DSN.
    let missing = missing_ids(&dsn, &tls, &acked).await;
    assert!(
        missing.is_empty(),
        "acknowledged ids lost: {missing:?} of {}",
        acked.len()
    );
    let generation = api.database("shop").await.unwrap().generation.0;
    let highest = check_single_writer(&topo.sk_list, &topo.ca_pem, generation).await;
    assert_eq!(
        highest, generation,
        "the safekeepers follow the current generation"
    );
    eprintln!(
        "topology: {} acknowledged inserts, all present; generation {generation}; failovers {failovers:?}",
        acked.len()
    );
    drop(topo);
}

/// A daemon refuses a config file with an unknown key, a bad URL or a missing secret, naming
/// the key.
#[test]
fn config_errors_name_the_key() {
    let tmp = common::reachable_tempdir();
    let run = |program: &str, text: &str| -> String {
        let f = tmp.path().join("bad.toml");
        spg_core::fsmode::write_private(&f, text).unwrap();
        let out = Command::new(program)
            .arg("--config")
            .arg(&f)
            .env_remove("SPG_SAFEKEEPER_API_KEY")
            .env_remove("SPG_API_KEY")
            .env_remove("SPG_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{program} accepted {text:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cp = env!("CARGO_BIN_EXE_spg-controlplane");
    let data = tmp.path().join("cp");
    let err = run(
        cp,
        &format!("data_dir = {:?}\nidel_timeout = \"3s\"\n", data.display()),
    );
    assert!(err.contains("unknown key `idel_timeout`"), "{err}");
    let err = run(cp, "state_store = \"mysql://db/spg\"\n");
    assert!(
        err.contains("`state_store`") && err.contains("mysql"),
        "{err}"
    );
    let err = run(cp, "object_store = \"ftp://x/y\"\n");
    assert!(err.contains("`object_store`"), "{err}");
    let err = run(cp, "safekeeper = [\"sk1=https://127.0.0.1:1\"]\n");
    assert!(err.contains("`safekeeper_api_key`"), "{err}");
    let err = run(
        env!("CARGO_BIN_EXE_spg-safekeeper"),
        "name = \"sk1\"\ndir = \"/nonexistent/sk\"\n",
    );
    assert!(err.contains("`api_key`"), "{err}");
    // `spg config check` prints what a file resolves to, secrets masked.
    let f = tmp.path().join("good.toml");
    spg_core::fsmode::write_private(
        &f,
        "name = \"sk1\"\ndir = \"/srv/sk\"\napi_key = \"very-secret-key\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(["config", "check", "--daemon", "safekeeper"])
        .arg(&f)
        .env_remove("SPG_SAFEKEEPER_API_KEY")
        .env_remove("SPG_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\"/srv/sk\"") && text.contains("# file"),
        "{text}"
    );
    assert!(
        !text.contains("very-secret-key") && text.contains("********"),
        "{text}"
    );
}

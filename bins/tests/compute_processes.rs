//! Computes as `spg-compute` processes: one process per generation; `kill -9` of one compute's
//! whole process tree (agent, PostgreSQL, its FUSE mount's server) while three other databases
//! serve queries leaves them untouched, and the killed database wakes again with nothing lost.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName};
use spg_lifecycle_lib::RoleSecret;

/// The directory of the compute process given generation `g` of `db` (its `claim` says so).
fn agent_dir(data: &Path, db: &str, g: u64) -> PathBuf {
    let want = format!("{db}\n{g}\n");
    std::fs::read_dir(data.join("computes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| std::fs::read_to_string(d.join("claim")).is_ok_and(|c| c == want))
        .unwrap_or_else(|| {
            let seen: Vec<String> = std::fs::read_dir(data.join("computes"))
                .unwrap()
                .flatten()
                .map(|e| {
                    let claim = std::fs::read_to_string(e.path().join("claim")).unwrap_or_default();
                    format!("{}: {claim:?}", e.path().display())
                })
                .collect();
            panic!("no compute process was given {db} g{g}: {seen:?}")
        })
}

/// The compute process of generation `g` of `db` (its pid record).
fn agent_pid(data: &Path, db: &str, g: u64) -> i32 {
    let record = agent_dir(data, db, g).join("agent.pid");
    let text = std::fs::read_to_string(&record)
        .unwrap_or_else(|e| panic!("reading {}: {e}", record.display()));
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// `pid` and every process below it.
fn tree_of(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(spg::testing::procs::children_of(all[i]));
        i += 1;
    }
    all
}

/// Whether `pid` runs (a zombie waiting for whoever inherited it to reap it does not).
fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_compute_process_tree_leaves_the_other_databases_serving() {
    let t = TestPlatform::start(Duration::from_secs(600)).await;
    let cp = t.p().control_plane.clone();
    let data = t.dir.path().join("data");
    let others = ["inventory", "billing", "reports"];
    for db in others {
        let name = DatabaseName::new(db).unwrap();
        cp.create_database(name.clone()).await.unwrap();
        cp.create_role(
            &name,
            RoleName::new(ROLE).unwrap(),
            RoleSecret::Password(PASSWORD.into()),
        )
        .await
        .unwrap();
    }

    // Every database runs, each in a compute process of its own.
    let victim = tokio_pg(&t, &t.dsn).await.unwrap();
    victim
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500)",
        )
        .await
        .unwrap();
    let mut clients = Vec::new();
    for db in others {
        let c = tokio_pg(&t, &t.dsn_with(ROLE, PASSWORD, db, "sslmode=require"))
            .await
            .unwrap();
        c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
            .await
            .unwrap();
        clients.push((db, c));
    }
    let mut agents = Vec::new();
    for db in std::iter::once(DB).chain(others) {
        agents.push(agent_pid(&data, db, 1));
    }
    assert_eq!(
        agents
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        4,
        "one agent process per database"
    );
    // They reach this platform's storage daemons through its private Unix socket: plain
    // http://localhost URLs and no CA to trust, which only the socket can serve.
    let conf: toml::Table =
        toml::from_str(&std::fs::read_to_string(data.join("compute-agent/agent.toml")).unwrap())
            .unwrap();
    let socket = conf["storage_socket"].as_str().unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&std::fs::metadata(socket).unwrap().file_type()),
        "{socket}"
    );
    assert_eq!(
        conf["pageserver"].as_str(),
        Some("http://localhost/pageserver")
    );
    assert!(!conf.contains_key("pageserver_ca") && !conf.contains_key("safekeeper_ca"));

    // The other three keep inserting, each acknowledged row counted.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (db, c) in clients {
        let stop = Arc::clone(&stop);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        writers.push((
            db,
            acked,
            tokio::spawn(async move {
                let mut next = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    next += 1;
                    c.execute("INSERT INTO t VALUES ($1)", &[&next])
                        .await
                        .unwrap_or_else(|e| panic!("{db}: insert {next} failed: {e}"));
                    counter.store(next as u64, Ordering::SeqCst);
                }
                c
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 of the victim's whole tree: agent, postmaster, backends.
    let gen_dir = agent_dir(&data, DB, 1);
    let tree = tree_of(agents[0]);
    assert!(tree.len() > 2, "the agent runs PostgreSQL: {tree:?}");
    for pid in &tree {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The control plane sees it end and cleans up: the database is stopped with the reason.
    let st = t
        .wait_state(ComputeState::Stopped, Duration::from_secs(30))
        .await;
    let err = st.record.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("compute process was killed by signal 9"),
        "last_error: {err:?}"
    );
    for _ in 0..100 {
        if !gen_dir.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !gen_dir.exists(),
        "the killed generation's directory (and mount) is gone"
    );
    let running: Vec<i32> = tree.iter().copied().filter(|p| is_alive(*p)).collect();
    assert!(running.is_empty(), "nothing of the tree runs: {running:?}");

    // Meanwhile the others kept serving, on their first generation and the same agents.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for (i, (db, acked, task)) in writers.into_iter().enumerate() {
        let c = task.await.unwrap();
        let n = acked.load(Ordering::SeqCst);
        assert!(n > 0, "{db} inserted nothing");
        let count: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count as u64, n, "{db}: every acknowledged row is there");
        let st = cp.database(&DatabaseName::new(db).unwrap()).await.unwrap();
        assert_eq!(st.record.state, ComputeState::Ready, "{db}");
        assert_eq!(
            st.record.generation,
            Generation(1),
            "{db} was not restarted"
        );
        assert!(is_alive(agents[i + 1]), "{db}'s agent still runs");
    }

    // The killed database wakes again on the next transaction with everything committed:
    // the victim's own session (transaction pooling holds no backend between transactions)
    // and a new connection.
    let n: i64 = victim
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500);
    let again = tokio_pg(&t, &t.dsn).await.unwrap();
    let n: i64 = again
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500);
    let st = t.status().await;
    assert_eq!(st.record.state, ComputeState::Ready);
    assert_eq!(st.record.generation, Generation(2));
    assert_ne!(agent_pid(&data, DB, 2), agents[0]);
    drop(again);
    drop(victim);
    t.shutdown().await;
}

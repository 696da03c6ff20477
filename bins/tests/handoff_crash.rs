//! Crashes during an autoscale handoff: `kill -9` of the writer (generation N), of its standby
//! (N+1), or of the whole platform process (control plane and gateway) in each phase of the
//! handoff, under a writer that records every commit it saw acknowledged. Afterwards the
//! database has exactly one writer and every acknowledged commit.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use spg::envfile::EnvFile;
use spg_core::{DatabaseName, ScaleState};
use tokio_util::sync::CancellationToken;

fn db() -> DatabaseName {
    DatabaseName::new(DB).unwrap()
}

/// Where a crash lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The standby is up (or coming up); nothing is frozen.
    Preparing,
    /// New work is frozen; a transaction in flight holds the drain.
    Draining,
    /// The writer is being stopped and the standby promoted.
    Switching,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Preparing, Phase::Draining, Phase::Switching];

    fn state(self) -> ScaleState {
        match self {
            Phase::Preparing => ScaleState::Preparing,
            Phase::Draining => ScaleState::Draining,
            Phase::Switching => ScaleState::Switching,
        }
    }
}

/// One autocommit insert after another through the gateway, reconnecting after failures;
/// records the ids whose commit was acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<i32>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Create table `t` through `dsn` and start writing into it; returns once 20 commits were
    /// acknowledged.
    async fn start(dsn: &str, ca: &Path) -> Writer {
        let setup = connect_retrying(dsn, ca).await;
        setup
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL)")
            .await
            .unwrap();
        drop(setup);
        let (dsn, ca) = (dsn.to_owned(), ca.to_owned());
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let acked = Arc::clone(&acked);
            let stop = stop.clone();
            async move {
                let mut next = 0;
                'connect: while !stop.is_cancelled() {
                    let Ok(client) = connect_dsn(dsn.clone(), ca.clone()).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    while !stop.is_cancelled() {
                        next += 1;
                        match client
                            .execute("INSERT INTO t VALUES ($1, repeat('p', 100))", &[&next])
                            .await
                        {
                            Ok(_) => acked.lock().unwrap().push(next),
                            Err(_) => continue 'connect,
                        }
                    }
                }
            }
        });
        let writer = Writer { acked, stop, task };
        writer.progress(20, "the start").await;
        writer
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Wait until `more` further commits were acknowledged (the database serves again).
    async fn progress(&self, more: usize, what: &str) {
        let want = self.acked() + more;
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.acked() < want {
            assert!(Instant::now() < deadline, "no commit after {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Vec<i32> {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

fn tls(ca: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(ca, None))
}

async fn connect_dsn(
    dsn: String,
    ca: std::path::PathBuf,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&dsn, tls(&ca)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connect, retrying while the database recovers.
async fn connect_retrying(dsn: &str, ca: &Path) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match connect_dsn(dsn.to_owned(), ca.to_owned()).await {
            Ok(c) => match c.simple_query("SELECT 1").await {
                Ok(_) => return c,
                Err(e) => assert!(Instant::now() < deadline, "no session: {e}"),
            },
            Err(e) => assert!(Instant::now() < deadline, "no connection: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For a crash while draining: a session with a transaction in flight (inserting `id`), which
/// holds the drain open.
async fn hold_drain(phase: Phase, dsn: &str, ca: &Path, id: i32) -> Option<tokio_postgres::Client> {
    if phase != Phase::Draining {
        return None;
    }
    let h = connect_retrying(dsn, ca).await;
    h.batch_execute(&format!("BEGIN; INSERT INTO t VALUES ({id}, 'held')"))
        .await
        .unwrap();
    Some(h)
}

/// Every acknowledged id is in `t`.
async fn audit(dsn: &str, ca: &Path, acked: &[i32]) {
    for attempt in 1.. {
        let c = connect_retrying(dsn, ca).await;
        match c
            .query_one("SELECT count(*) FROM t WHERE id = ANY($1)", &[&acked])
            .await
        {
            Ok(row) => {
                let found: i64 = row.get(0);
                assert_eq!(found as usize, acked.len(), "acknowledged commits lost");
                return;
            }
            // The first query after a crash may meet a pooled connection of a dead compute.
            Err(e) => assert!(attempt < 3, "audit failed: {e}"),
        }
    }
}

/// Exactly one postmaster runs under `dir` (allowing a moment for a stopped one to exit).
async fn assert_one_writer(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = postgres_processes_under(dir);
        if pids.len() == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} postmasters: {pids:?}",
            pids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kill -9` of the writer or of its standby in each phase of a handoff, with the platform (and
/// its control plane) running on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_either_generation_in_each_phase_leaves_one_writer_and_every_commit() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.handoff_drain_timeout = Duration::from_secs(5);
    })
    .await;
    let ca = t.ca_file();
    let writer = Writer::start(&t.dsn, &ca).await;
    let cp = t.p().control_plane.clone();
    let mut holder_id = 1_000_000;
    // SPG_CRASH_CASE=Switching/standby,... runs those cases only (when looking into one).
    let only = std::env::var("SPG_CRASH_CASE").ok();
    for phase in Phase::ALL {
        for kill_standby in [false, true] {
            let victim_name = if kill_standby { "standby" } else { "writer" };
            let case = format!("{phase:?}/{victim_name}");
            if only
                .as_ref()
                .is_some_and(|o| !o.split(',').any(|c| c == case))
            {
                continue;
            }
            let what = format!("kill -9 of the {victim_name} in {phase:?}");
            let st = t.status().await;
            let from = st.record.generation.0;
            let to_profile = if st.profile == "L1" { "L2" } else { "L1" };
            holder_id += 1;
            let holder = hold_drain(phase, &t.dsn, &ca, holder_id).await;
            let handle = cp.start_handoff(&db(), to_profile).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let standby = loop {
                let r = t.status().await.record;
                let standby = r.reserved_generation.map(|g| g.0).unwrap_or(from + 1);
                let standby_up = !postmasters_of_generation(t.dir.path(), standby).is_empty();
                if r.scale_state == phase.state() && (!kill_standby || standby_up) {
                    break standby;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: never reached: {:?}",
                    r.scale_state
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let victim = if kill_standby { standby } else { from };
            let pids = postmasters_of_generation(t.dir.path(), victim);
            assert!(
                kill_9_computes(&pids),
                "{what}: generation {victim} not found"
            );
            let held_commit = match holder {
                Some(h) => h.batch_execute("COMMIT").await.is_ok(),
                None => false,
            };
            let outcome = handle.wait().await;
            eprintln!("{what}: handoff {outcome:?}");
            writer.progress(20, &what).await;
            assert_one_writer(t.dir.path(), &what).await;
            let r = t.status().await.record;
            assert!(!r.scale_state.in_progress(), "{what}: {:?}", r.scale_state);
            assert!(
                postmasters_of_generation(t.dir.path(), victim).is_empty(),
                "{what}: the killed generation came back"
            );
            if held_commit {
                audit(&t.dsn, &ca, &[holder_id]).await;
            }
        }
    }
    let acked = writer.finish().await;
    audit(&t.dsn, &ca, &acked).await;
    eprintln!("{} commits acknowledged, all present", acked.len());
    t.shutdown().await;
}

fn spg_up_crashable(data: &Path, gw: u16, api: u16) -> ChildGuard {
    spg_up(data, gw, api, &["--handoff-drain-timeout", "5s"], false)
}

async fn wait_env(path: &Path) -> EnvFile {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(env)) = EnvFile::read(path) {
            if env.get("SPG_DSN").is_some() && env.get("SPG_API_KEY").is_some() {
                return env;
            }
        }
        assert!(Instant::now() < deadline, "spg up wrote no env file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` of `spg up` (control plane and gateway in one process) in each phase of a handoff
/// started through its API; the next `spg up` cleans up both generations, records the handoff
/// as aborted, and serves from one writer with every acknowledged commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_plane_in_each_phase_leaves_one_writer_and_every_commit() {
    let tmp = reachable_tempdir();
    let data = tmp.path().join("spgdata");
    let (gw, api) = (free_port(), free_port());
    let mut up = spg_up_crashable(&data, gw, api);
    let env = wait_env(&data.join("env")).await;
    let dsn = env.get("SPG_DSN").unwrap().to_string();
    let ca = std::path::PathBuf::from(env.get("SPG_API_CA").unwrap());
    let key = env.get("SPG_API_KEY").unwrap().to_string();
    let url = format!("{}/v1/databases/{DB}", env.get("SPG_API_URL").unwrap());
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let view = || async {
        let r = http.get(&url).bearer_auth(&key).send().await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    };
    let writer = Writer::start(&dsn, &ca).await;
    let mut holder_id = 1_000_000;
    for phase in Phase::ALL {
        let what = format!("kill -9 of the control plane in {phase:?}");
        let v = view().await.expect("the API answers");
        let to_profile = if v["profile"] == "L1" { "L2" } else { "L1" };
        holder_id += 1;
        let _holder = hold_drain(phase, &dsn, &ca, holder_id).await;
        let resp = http
            .post(format!("{url}/handoff"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "profile": to_profile }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{what}");
        let want = phase.state().as_str();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = view().await {
                if v["scale_state"] == want {
                    break;
                }
                assert!(Instant::now() < deadline, "{what}: never reached: {v}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut child = up.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // Its computes are orphaned: the next `spg up` must stop them, not the guard.
        up.dir = tmp.path().join("nothing");
        up = spg_up_crashable(&data, gw, api);
        writer.progress(20, &what).await;
        assert_one_writer(tmp.path(), &what).await;
        let v = view().await.expect("the API answers");
        assert_eq!(v["scale_state"], "aborted", "{what}: {v}");
        assert!(
            v["scale_reason"]
                .as_str()
                .is_some_and(|r| r.contains("restarted")),
            "{what}: {v}"
        );
        eprintln!(
            "{what}: {} after the restart, {}",
            v["generation"], v["profile"]
        );
    }
    let acked = writer.finish().await;
    audit(&dsn, &ca, &acked).await;
    eprintln!("{} commits acknowledged, all present", acked.len());
    let mut child = up.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());
}

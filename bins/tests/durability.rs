//! Durability through the WAL quorum with real processes: a writer records every commit it saw
//! acknowledged while the compute is `kill -9`ed at random moments; after every wake, every one
//! of them is there.

mod common;

use std::time::{Duration, Instant};

use common::{kill_9_computes, postgres_processes_under, tokio_pg, TestPlatform};
use rand::RngExt;

/// Every compute of the test's platform, as when its host dies.
fn kill_9_compute(t: &TestPlatform) -> bool {
    kill_9_computes(&postgres_processes_under(t.dir.path()))
}

async fn connect(t: &TestPlatform) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_pg(t, &t.dsn).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no connection after a crash: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reconnect after a crash and check that every acknowledged commit is there. A client may be
/// told once that its backend connection was lost: the first query after a crash can be handed a
/// pooled connection of the dead compute before the gateway has seen it close (PgBouncer does
/// the same); such a query ran nowhere, and the client reconnects, as applications do.
async fn audit_after_crash(t: &TestPlatform, acked: &[i32]) -> tokio_postgres::Client {
    for attempt in 1.. {
        let client = connect(t).await;
        match client
            .query_one("SELECT count(*) FROM t WHERE id = ANY($1)", &[&acked])
            .await
        {
            Ok(row) => {
                let found: i64 = row.get(0);
                assert_eq!(
                    found as usize,
                    acked.len(),
                    "acknowledged commits lost after a crash"
                );
                return client;
            }
            Err(e) => {
                let lost = e.is_closed()
                    || e.code().is_some_and(|c| {
                        c.code() == "08006" || c.code() == "57P01" || c.code() == "57P03"
                    });
                assert!(lost && attempt < 3, "audit after a crash failed: {e:?}");
                eprintln!("audit attempt {attempt} lost its connection: {e}");
            }
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_compute_under_write_load_loses_no_acknowledged_commit() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = connect(&t).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL)")
        .await
        .unwrap();
    let mut acked: Vec<i32> = Vec::new();
    let mut next = 0i32;
    let mut client = c;
    let mut kills = 0;
    let mut rng = rand::rng();
    while kills < 10 {
        // Write for a random while, one autocommit insert at a time, recording what returned OK.
        let until = Instant::now() + Duration::from_millis(rng.random_range(100..600));
        let killer_at = until;
        let mut broken = false;
        while Instant::now() < killer_at {
            next += 1;
            match client
                .execute("INSERT INTO t VALUES ($1, repeat('p', 100))", &[&next])
                .await
            {
                Ok(1) => acked.push(next),
                Ok(n) => panic!("insert reported {n} rows"),
                Err(e) => {
                    eprintln!("insert {next} failed: {e:?}");
                    broken = true;
                    break;
                }
            }
        }
        assert!(!broken, "the compute failed before it was killed");
        // Kill it while a write is in flight.
        let in_flight = {
            let id = next + 1;
            next += 1;
            let c2 = connect(&t).await;
            tokio::spawn(async move {
                c2.execute("INSERT INTO t VALUES ($1, repeat('q', 100))", &[&id])
                    .await
                    .map(|_| id)
            })
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
        assert!(kill_9_compute(&t), "no compute to kill");
        kills += 1;
        if let Ok(Ok(id)) = in_flight.await {
            acked.push(id);
        }
        // Wake again through the same DSN and audit.
        client = audit_after_crash(&t, &acked).await;
    }
    assert!(
        acked.len() > 50,
        "only {} commits acknowledged",
        acked.len()
    );
    let status = t.status().await;
    assert!(
        status.record.generation.0 >= 11,
        "every kill took a new generation: {status:?}"
    );
    drop(client);
    t.shutdown().await;
}

struct SkDaemon {
    name: String,
    dir: std::path::PathBuf,
    port: u16,
    guard: Option<common::ChildGuard>,
}

const SK_KEY: &str = "sk-test-key-0123456789";

impl SkDaemon {
    fn start(root: &std::path::Path, name: &str, port: u16) -> SkDaemon {
        let mut d = SkDaemon {
            name: name.into(),
            dir: root.join(name),
            port,
            guard: None,
        };
        d.restart();
        d
    }

    fn restart(&mut self) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spg-safekeeper"));
        cmd.args(["--name", &self.name, "--api-key", SK_KEY])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        self.guard = Some(common::spawn_daemon(cmd, self.dir.clone()));
    }

    fn kill_9(&mut self) {
        drop(self.guard.take());
    }

    fn remote(&self) -> spg::platform::RemoteSafekeeper {
        spg::platform::RemoteSafekeeper {
            name: self.name.clone(),
            url: format!("https://127.0.0.1:{}", self.port),
            api_key: SK_KEY.into(),
            ca_pem: std::fs::read(self.dir.join("tls").join("ca.pem")).unwrap(),
        }
    }
}

async fn insert_within(c: &tokio_postgres::Client, id: i32, limit: Duration) {
    tokio::time::timeout(limit, c.execute("INSERT INTO t VALUES ($1, 'x')", &[&id]))
        .await
        .unwrap_or_else(|_| panic!("insert {id} did not complete within {limit:?}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safekeeper_daemons_one_down_writes_continue_two_down_commits_wait() {
    let root = common::reachable_tempdir();
    let mut sks: Vec<SkDaemon> = ["sk1", "sk2", "sk3"]
        .iter()
        .map(|n| SkDaemon::start(root.path(), n, common::free_port()))
        .collect();
    let remotes: Vec<_> = sks.iter().map(SkDaemon::remote).collect();
    let t = TestPlatform::start_with(Duration::from_secs(300), move |cfg| {
        cfg.remote_safekeepers = remotes;
    })
    .await;
    let c = connect(&t).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL)")
        .await
        .unwrap();
    for id in 1..=20 {
        insert_within(&c, id, Duration::from_secs(10)).await;
    }

    // One safekeeper killed: writes continue.
    sks[0].kill_9();
    for id in 21..=40 {
        insert_within(&c, id, Duration::from_secs(10)).await;
    }

    // Two killed: a commit waits, and neither fails nor returns.
    sks[1].kill_9();
    let c2 = connect(&t).await;
    let waiting =
        tokio::spawn(async move { c2.execute("INSERT INTO t VALUES (41, 'waits')", &[]).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !waiting.is_finished(),
        "a commit returned without a safekeeper quorum"
    );

    // One comes back (same directory, same address): the commit completes.
    sks[1].restart();
    let done = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting commit completes once a quorum is back")
        .unwrap();
    assert_eq!(done.unwrap(), 1);
    sks[0].restart();
    insert_within(&c, 42, Duration::from_secs(10)).await;

    // And the quorum held it all: a crash of the compute loses nothing.
    drop(c);
    assert!(kill_9_compute(&t));
    let acked: Vec<i32> = (1..=42).collect();
    let c = audit_after_crash(&t, &acked).await;
    drop(c);
    t.shutdown().await;
}

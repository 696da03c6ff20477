//! Durability through the WAL quorum with real processes: a writer records every commit it saw
//! acknowledged while the compute is `kill -9`ed at random moments; after every wake, every one
//! of them is there.

mod common;

use std::time::{Duration, Instant};

use common::{postgres_processes_under, tokio_pg, TestPlatform};
use rand::RngExt;

/// The compute's postmaster (its command line names its data directory under the test's
/// directory) and, with it, every process of its group.
fn kill_9_compute(t: &TestPlatform) -> bool {
    let pids = postgres_processes_under(t.dir.path());
    for pid in &pids {
        // postgres runs in its own process group, led by the postmaster.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    !pids.is_empty()
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

async fn assert_all_present(c: &tokio_postgres::Client, acked: &[i32]) {
    let row = c
        .query_one("SELECT count(*) FROM t WHERE id = ANY($1)", &[&acked])
        .await
        .unwrap();
    let found: i64 = row.get(0);
    assert_eq!(
        found as usize,
        acked.len(),
        "acknowledged commits lost after a crash"
    );
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
                Err(_) => {
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
        client = connect(&t).await;
        assert_all_present(&client, &acked).await;
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

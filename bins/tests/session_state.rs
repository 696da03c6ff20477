//! One client's session state never reaches another, under concurrent load on the same pool
//! (pgbench and observers that check every backend they get for foreign state), and a client
//! keeps its own state whatever its statements' outcome: failed `DROP`s, `DROP`/`UNLISTEN`
//! rolled back (also to a savepoint), temporary tables made in a `DO` block or by `SELECT ...
//! INTO TEMP`, `DROP TABLE public.x` beside a temporary `x`, settings rolled back to a savepoint.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const ROUNDS: usize = 20;

/// What an observer must find on any backend it gets: nothing of anyone else's.
const FOREIGN_STATE: &str = "SELECT \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int, \
    (SELECT count(*) FROM pg_listening_channels())::int, \
    (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::int, \
    (SELECT count(*) FROM pg_cursors WHERE is_holdable)::int, \
    current_setting('role'), \
    coalesce(current_setting('app.mark', true), '')";

/// pgbench -S on the same pool for the test's duration (killed on drop).
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pgbench_load(t: &TestPlatform) -> Load {
    let bins = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None).unwrap();
    let base = |args: &[&str]| {
        let mut c = Command::new(bins.exe("pgbench"));
        c.args(["-h", "127.0.0.1", "-p", &t.gateway_port().to_string()])
            .args(["-U", ROLE])
            .args(args)
            .arg(DB)
            .env("PGPASSWORD", PASSWORD)
            .env("PGSSLMODE", "require");
        c
    };
    let init = base(&["-i", "-s", "1", "-q"]).output().unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    Load(
        base(&["-n", "-S", "-c", "3", "-j", "1", "-T", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Clients that keep taking whatever backend the pool gives them and fail the test if any of
/// them ever shows another client's state.
struct Observers {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observers {
    async fn start(t: &TestPlatform, n: usize) -> Observers {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..n {
            let c = tokio_pg(t, &t.dsn).await.unwrap();
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Both protocols: the extended one (query) and the simple one.
                    let row = if i % 2 == 0 {
                        let r = c.query_one(FOREIGN_STATE, &[]).await.unwrap();
                        (
                            r.get::<_, i32>(0),
                            r.get::<_, i32>(1),
                            r.get::<_, i32>(2),
                            r.get::<_, i32>(3),
                            r.get::<_, String>(4),
                            r.get::<_, String>(5),
                        )
                    } else {
                        let msgs = c.simple_query(FOREIGN_STATE).await.unwrap();
                        let r = msgs
                            .iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                                _ => None,
                            })
                            .unwrap();
                        let n = |i: usize| r.get(i).unwrap().parse::<i32>().unwrap();
                        (
                            n(0),
                            n(1),
                            n(2),
                            n(3),
                            r.get(4).unwrap().to_string(),
                            r.get(5).unwrap().to_string(),
                        )
                    };
                    assert_eq!(
                        row,
                        (0, 0, 0, 0, "none".to_string(), String::new()),
                        "an observer saw another client's session state"
                    );
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Observers { stop, seen, tasks }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("an observer failed");
        }
        self.seen.load(Ordering::Relaxed)
    }
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The client still has `tables` (each answers a query) on the backend it had, over several
/// transactions while others take backends.
async fn keeps(c: &tokio_postgres::Client, pid: i32, tables: &[&str]) {
    for _ in 0..3 {
        for t in tables {
            c.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap_or_else(|e| panic!("{t} is gone: {e}"));
        }
        assert_eq!(
            backend_pid(c).await,
            pid,
            "a pinned client keeps its backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pinned_clients(t: &TestPlatform) -> String {
    psql_ok(&admin_dsn(t), "SHOW CLIENTS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_outcomes_and_never_reaches_another_client() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.pool.size = 3;
    })
    .await;
    let tt = &t;
    let _load = tokio::task::block_in_place(|| pgbench_load(tt));
    let observers = Observers::start(&t, 4).await;
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.batch_execute("CREATE TABLE IF NOT EXISTS public.x (a int)")
        .await
        .unwrap();

    for round in 0..ROUNDS {
        // A DROP that fails (a view depends on the table) removes nothing.
        c.batch_execute(
            "CREATE TEMP TABLE p1 (a int); CREATE TEMP VIEW v1 AS SELECT * FROM p1; \
             SET app.mark = 'mine'",
        )
        .await
        .unwrap();
        let pid = backend_pid(&c).await;
        let err = c.batch_execute("DROP TABLE p1").await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST)
        );
        keeps(&c, pid, &["p1", "v1"]).await;

        // DROP rolled back, and rolled back to a savepoint.
        c.batch_execute("BEGIN; DROP TABLE p1 CASCADE; ROLLBACK")
            .await
            .unwrap();
        keeps(&c, pid, &["p1", "v1"]).await;
        c.batch_execute(
            "BEGIN; SAVEPOINT s; DROP TABLE p1 CASCADE; ROLLBACK TO SAVEPOINT s; COMMIT",
        )
        .await
        .unwrap();
        keeps(&c, pid, &["p1", "v1"]).await;
        // The same through the extended protocol.
        let tx = c.simple_query("BEGIN").await.unwrap();
        drop(tx);
        c.execute("DROP VIEW v1", &[]).await.unwrap();
        c.simple_query("ROLLBACK").await.unwrap();
        keeps(&c, pid, &["p1", "v1"]).await;

        // DROP TABLE public.x beside a temporary x drops the public one; the temporary stays.
        c.batch_execute("CREATE TEMP TABLE x (b int); DROP TABLE public.x")
            .await
            .unwrap();
        keeps(&c, pid, &["x"]).await;
        c.batch_execute("DROP TABLE x; CREATE TABLE public.x (a int); DROP TABLE p1 CASCADE")
            .await
            .unwrap();

        // Temporary tables made where the gateway cannot see them: a DO block, SELECT INTO.
        c.batch_execute("DO $$ BEGIN CREATE TEMP TABLE d1 (a int); END $$")
            .await
            .unwrap();
        let pid = backend_pid(&c).await;
        c.batch_execute("SELECT 1 AS a INTO TEMP s1").await.unwrap();
        keeps(&c, pid, &["d1", "s1"]).await;

        // UNLISTEN rolled back (also to a savepoint): still listening.
        for sql in [
            "LISTEN ch",
            "BEGIN; UNLISTEN ch; ROLLBACK",
            "BEGIN; SAVEPOINT s; UNLISTEN *; ROLLBACK TO s; COMMIT",
        ] {
            c.batch_execute(sql).await.unwrap();
        }
        let channels: Vec<String> = c
            .query("SELECT pg_listening_channels()", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(channels, vec!["ch".to_string()], "round {round}");
        keeps(&c, pid, &["d1", "s1"]).await;
        let shown = tokio::task::block_in_place(|| pinned_clients(tt));
        assert!(
            shown.contains("temp_table(d1,s1)") && shown.contains("listen(ch)"),
            "{shown}"
        );

        // Everything dropped (settings too): the client is free again.
        c.batch_execute("DROP TABLE d1, s1; UNLISTEN *; RESET app.mark")
            .await
            .unwrap();
        let shown = tokio::task::block_in_place(|| pinned_clients(tt));
        assert!(
            !shown.contains("temp_table") && !shown.contains("listen"),
            "round {round}: {shown}"
        );
    }
    let seen = observers.finish().await;
    assert!(seen > 100, "the observers ran ({seen} checks)");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_rolled_back_to_a_savepoint_do_not_stick() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.pool.size = 2;
    })
    .await;
    let a = tokio_pg(&t, &t.dsn).await.unwrap();
    let b = tokio_pg(&t, &t.dsn).await.unwrap();
    a.batch_execute(
        "BEGIN; SET app.x = 'kept'; SAVEPOINT s; SET app.x = 'undone'; SET app.y = 'undone'; \
         ROLLBACK TO SAVEPOINT s; SAVEPOINT t; SET app.z = 'released'; RELEASE t; COMMIT",
    )
    .await
    .unwrap();
    // A failed implicit transaction sets nothing; a committed one after it does.
    let _ = a
        .batch_execute("SET app.w = 'failed'; SELECT 1/0")
        .await
        .unwrap_err();
    for _ in 0..6 {
        // Move `a` between the two backends.
        let held = b.simple_query("BEGIN").await.unwrap();
        drop(held);
        let row = a
            .query_one(
                "SELECT current_setting('app.x', true), coalesce(current_setting('app.y', true), ''), \
                 current_setting('app.z', true), coalesce(current_setting('app.w', true), '')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3)
            ),
            (
                "kept".into(),
                String::new(),
                "released".into(),
                String::new()
            )
        );
        b.simple_query("COMMIT").await.unwrap();
        // The other client never sees them.
        let other: String = b
            .query_one("SELECT coalesce(current_setting('app.x', true), '')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(other, "");
    }
    t.shutdown().await;
}

/// A session that turns `synchronous_commit` off (or `local`) gives up the quorum for its
/// commits, as PostgreSQL documents: the gateway counts such clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_giving_up_the_quorum_are_counted() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let gauge = || async {
        let url = format!("http://{}/metrics", t.p().metrics_addr.unwrap());
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "spg_gateway_pool_async_commit_clients{{database=\"{DB}\",user=\"{ROLE}\"}} "
                ))
                .map(|v| v.trim().parse::<i64>().unwrap())
            })
            .unwrap_or(0)
    };
    let a = tokio_pg(&t, &t.dsn).await.unwrap();
    let b = tokio_pg(&t, &t.dsn).await.unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(gauge().await, 0);
    a.batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    b.batch_execute("SET synchronous_commit TO 'local'")
        .await
        .unwrap();
    assert_eq!(gauge().await, 2);
    // Rolled back: not set.
    a.batch_execute("RESET synchronous_commit").await.unwrap();
    b.batch_execute("BEGIN; SET synchronous_commit = on; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(gauge().await, 1);
    t.shutdown().await;
}

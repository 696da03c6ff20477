//! Transaction pooling through the gateway with real clients: many clients share a pool of two
//! to four backend connections, and each client's settings, prepared statements, temp tables and
//! notifications behave as on a direct connection.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use spg::platform::PlatformConfig;
use spg_gateway_lib::pool::{DatabasePool, PoolMode};

fn small_pool(size: usize) -> impl FnOnce(&mut PlatformConfig) {
    move |c| {
        c.pool.size = size;
        c.allow_plaintext = true;
    }
}

/// Run pgbench through the gateway; returns stdout, panics with stderr on failure.
fn pgbench(t: &TestPlatform, args: &[&str]) -> String {
    let bins = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None).unwrap();
    let out = Command::new(bins.exe("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &t.gateway_port().to_string()])
        .args(["-U", ROLE])
        .args(args)
        .arg(DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "require")
        .env("PGCONNECT_TIMEOUT", "30")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn admin(t: &TestPlatform, sql: &str) -> String {
    psql_ok(&admin_dsn(t), sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_psql_and_copy_through_transaction_pooling() {
    let t = TestPlatform::start_with(Duration::from_secs(300), small_pool(4)).await;
    let dsn = t.dsn.clone();
    let tt = &t;
    // pgbench -i loads with COPY, through the pool.
    tokio::task::block_in_place(|| pgbench(tt, &["-i", "-s", "1", "-q"]));
    for protocol in ["simple", "extended", "prepared"] {
        let out = tokio::task::block_in_place(|| {
            pgbench(
                tt,
                &[
                    "-n",
                    "-c",
                    "16",
                    "-j",
                    "2",
                    "-t",
                    "150",
                    &format!("--protocol={protocol}"),
                ],
            )
        });
        assert!(
            out.contains("number of transactions actually processed: 2400/2400"),
            "{protocol}: {out}"
        );
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }
    // Every tpcb-like transaction moved the same delta through all four tables.
    let sums = tokio::task::block_in_place(|| {
        psql_ok(
            &dsn,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history) \
             AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history) \
             AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(delta) FROM pgbench_history), \
             (SELECT count(*) FROM pgbench_history)",
        )
    });
    assert_eq!(sums, "t|7200");
    // psql with a script of several statements, a transaction block and variables.
    let script = "\\set n 3\nBEGIN;\nCREATE TABLE psql_t (i int);\nINSERT INTO psql_t SELECT generate_series(1, :n);\nCOMMIT;\nSELECT sum(i) FROM psql_t;\n";
    let path = t.dir.path().join("script.sql");
    std::fs::write(&path, script).unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(psql_bin())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &dsn, "-f"])
            .arg(&path)
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().ends_with('6'));

    // Sixteen clients shared four backend connections, and statements were prepared once per
    // backend and then answered from its cache.
    let pools = tokio::task::block_in_place(|| admin(tt, "SHOW POOLS"));
    let row: Vec<&str> = pools.lines().next().unwrap().split('|').collect();
    assert_eq!((row[0], row[1]), (DB, ROLE), "{pools}");
    assert!(row[9].parse::<usize>().unwrap() <= 4, "sv_total: {pools}");
    assert_eq!(row[12], "transaction");
    let stats = tokio::task::block_in_place(|| admin(tt, "SHOW STATS"));
    let s: Vec<&str> = stats.lines().next().unwrap().split('|').collect();
    let (prepares, hits): (u64, u64) = (s[12].parse().unwrap(), s[13].parse().unwrap());
    assert!(hits > prepares, "prepares {prepares}, hits {hits}: {stats}");
    assert!(s[2].parse::<u64>().unwrap() >= 7200, "{stats}");
    t.shutdown().await;
}

/// Hold `n` backend connections in open transactions (so the next client gets another one).
async fn hold_backends(t: &TestPlatform, n: usize) -> Vec<tokio_postgres::Client> {
    let mut v = Vec::new();
    for _ in 0..n {
        let c = tokio_pg(t, &t.dsn).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        v.push(c);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_client_across_backends() {
    let t = TestPlatform::start_with(Duration::from_secs(300), small_pool(3)).await;
    let dsn = format!(
        "{}&options=-c%20statement_timeout%3D4321&application_name=settings-test",
        t.dsn
    );
    let a = tokio_pg(&t, &dsn).await.unwrap();
    let b = tokio_pg(&t, &t.dsn).await.unwrap();
    a.batch_execute(
        "CREATE SCHEMA app; CREATE TABLE app.marker (v text); INSERT INTO app.marker VALUES ('app schema');\
         SET search_path TO app, public; SET myapp.tenant = 'acme'; SET TimeZone = 'Asia/Tokyo'",
    )
    .await
    .unwrap();
    // A SET in a rolled-back transaction does not stick.
    a.batch_execute("BEGIN; SET myapp.tenant = 'rolled-back'; ROLLBACK")
        .await
        .unwrap();
    let check = "SELECT pg_backend_pid()::text, (SELECT v FROM marker), current_setting('myapp.tenant', true), \
                 current_setting('TimeZone'), current_setting('statement_timeout'), current_setting('application_name')";
    let mut pids = HashSet::new();
    for i in 0..12 {
        // Occupy some backends so that `a` lands on different ones.
        let held = hold_backends(&t, i % 3).await;
        let row = a.query_one(check, &[]).await.unwrap();
        pids.insert(row.get::<_, String>(0));
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some("app schema")
        );
        assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("acme"));
        assert_eq!(row.get::<_, String>(3), "Asia/Tokyo");
        assert_eq!(row.get::<_, String>(4), "4321ms");
        assert_eq!(row.get::<_, String>(5), "settings-test");
        // Another client on the same backends sees its own (default) settings.
        let other = b
            .query_one(
                "SELECT current_setting('search_path'), coalesce(current_setting('myapp.tenant', true), ''), \
                 current_setting('statement_timeout')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(other.get::<_, String>(0), "\"$user\", public");
        assert_eq!(other.get::<_, String>(1), "");
        assert_eq!(other.get::<_, String>(2), "0");
        for h in held {
            h.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert!(
        pids.len() >= 2,
        "the client never changed backends: {pids:?}"
    );
    // RESET brings back the startup value, RESET ALL all of them.
    a.batch_execute("SET statement_timeout = 99; RESET statement_timeout")
        .await
        .unwrap();
    let v: String = a
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "4321ms");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_are_per_client_and_follow_the_client() {
    let t = TestPlatform::start_with(Duration::from_secs(300), small_pool(2)).await;
    let port = t.gateway_port();
    let mut a = RawPg::connect(port, ROLE, PASSWORD, DB).await;
    let mut b = RawPg::connect(port, ROLE, PASSWORD, DB).await;

    a.parse("s1", "SELECT $1::int + 1, pg_backend_pid()").await;
    a.sync().await;
    assert_eq!(tags(&a.until_ready().await), "1Z");
    // Another client cannot use a's statement name.
    b.bind_execute("s1", &["1"]).await;
    b.sync().await;
    assert_eq!(error_code(&b.until_ready().await).as_deref(), Some("26000"));

    // a's statement works on whichever backend a gets.
    let mut pids = HashSet::new();
    for i in 0..10 {
        let held = hold_backends(&t, i % 2).await;
        a.bind_execute("s1", &[&i.to_string()]).await;
        a.sync().await;
        let msgs = a.until_ready().await;
        assert_eq!(
            first_column(&msgs),
            vec![Some((i + 1).to_string())],
            "{}",
            tags(&msgs)
        );
        let row = msgs.iter().find(|(t, _)| *t == b'D').unwrap();
        let pid_at = 6 + i32::from_be_bytes(row.1[2..6].try_into().unwrap()) as usize;
        pids.insert(row.1[pid_at..].to_vec());
        for h in held {
            h.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert!(pids.len() >= 2, "never changed backends");

    // Close: the name is gone for a.
    a.close_statement("s1").await;
    a.sync().await;
    assert_eq!(tags(&a.until_ready().await), "3Z");
    a.bind_execute("s1", &["1"]).await;
    a.sync().await;
    assert_eq!(error_code(&a.until_ready().await).as_deref(), Some("26000"));

    // DEALLOCATE (SQL) of a protocol-level statement.
    a.parse("s2", "SELECT 2").await;
    a.sync().await;
    a.until_ready().await;
    let msgs = a.query("DEALLOCATE s2").await;
    assert_eq!(tags(&msgs), "CZ");
    a.bind_execute("s2", &[]).await;
    a.sync().await;
    assert_eq!(error_code(&a.until_ready().await).as_deref(), Some("26000"));

    // A failed Parse creates nothing; a batch after an error is skipped up to Sync.
    a.parse("bad", "SELEC 1").await;
    a.bind_execute("bad", &[]).await;
    a.sync().await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "EZ");
    assert_eq!(error_code(&msgs).as_deref(), Some("42601"));
    a.bind_execute("bad", &[]).await;
    a.sync().await;
    assert_eq!(error_code(&a.until_ready().await).as_deref(), Some("26000"));

    // The unnamed statement survives a Sync even if the next batch gets another backend.
    a.parse("", "SELECT 'unnamed'").await;
    a.sync().await;
    assert_eq!(tags(&a.until_ready().await), "1Z");
    let held = hold_backends(&t, 1).await;
    a.bind_execute("", &[]).await;
    a.sync().await;
    let msgs = a.until_ready().await;
    assert_eq!(first_column(&msgs), vec![Some("unnamed".to_string())]);
    drop(held);

    // Two clients preparing the same text share one preparation per backend.
    a.parse("mine", "SELECT 42").await;
    b.parse("theirs", "SELECT 42").await;
    a.bind_execute("mine", &[]).await;
    b.bind_execute("theirs", &[]).await;
    a.sync().await;
    b.sync().await;
    assert_eq!(
        first_column(&a.until_ready().await),
        vec![Some("42".into())]
    );
    assert_eq!(
        first_column(&b.until_ready().await),
        vec![Some("42".into())]
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_and_listen_pin_and_the_admin_view_shows_why() {
    // Two pinned clients, one holding a backend and one more: four backends.
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.pool.size = 4;
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let a = tokio_pg(&t, &t.dsn).await.unwrap();
    a.batch_execute("CREATE TEMP TABLE scratch (n int); INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for n in 2..6 {
        let held = hold_backends(&t, 1).await;
        a.execute("INSERT INTO scratch VALUES ($1)", &[&n])
            .await
            .unwrap();
        let (sum, p): (i64, i32) = {
            let r = a
                .query_one("SELECT sum(n), pg_backend_pid() FROM scratch", &[])
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(sum, (1..=n as i64).sum::<i64>());
        assert_eq!(p, pid, "a pinned client keeps its backend");
        drop(held);
    }
    let clients = tokio::task::block_in_place(|| admin(&t, "SHOW CLIENTS"));
    assert!(clients.contains("temp_table(scratch)"), "{clients}");
    let metrics_url = format!("http://{}/metrics", t.p().metrics_addr.unwrap());
    let metrics = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "spg_gateway_pool_pinned_clients{{database=\"{DB}\",user=\"{ROLE}\",reason=\"temp_table\"}} 1"
        )),
        "{metrics}"
    );

    // LISTEN pins the listener; notifications from other clients reach it.
    let tls = tls_maker(&t);
    let (listener, mut conn) = tokio_postgres::connect(&t.dsn, tls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let notifier = tokio_pg(&t, &t.dsn).await.unwrap();
    for i in 0..3 {
        let _held = hold_backends(&t, 1).await;
        notifier
            .batch_execute(&format!("NOTIFY jobs, 'job {i}'"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification")
            .unwrap();
        assert_eq!(got, format!("job {i}"));
    }
    let clients = tokio::task::block_in_place(|| admin(&t, "SHOW CLIENTS"));
    assert!(clients.contains("listen(jobs)"), "{clients}");

    // Dropping the state unpins.
    a.batch_execute("DROP TABLE scratch").await.unwrap();
    listener.batch_execute("UNLISTEN *").await.unwrap();
    let clients = tokio::task::block_in_place(|| admin(&t, "SHOW CLIENTS"));
    assert!(
        !clients.contains("temp_table") && !clients.contains("listen"),
        "{clients}"
    );

    // A client leaving with a temp table: its backend is reset before anyone else gets it.
    a.batch_execute("CREATE TEMP TABLE left_behind (n int)")
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let c = tokio_pg(&t, &t.dsn).await.unwrap();
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = 'left_behind' AND relpersistence = 't'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }

    // The admin console: every view answers; only the admin credentials get in.
    for view in ["POOLS", "CLIENTS", "SERVERS", "STATS", "HELP"] {
        let out = tokio::task::block_in_place(|| admin(&t, &format!("SHOW {view}")));
        assert!(!out.is_empty(), "SHOW {view}");
    }
    let servers = tokio::task::block_in_place(|| admin(&t, "SHOW SERVERS"));
    assert!(servers.lines().count() <= 4, "{servers}");
    let wrong = t.dsn_with("admin", "wrong", "spg_admin", "sslmode=require");
    let out = tokio::task::block_in_place(|| psql(&wrong, "SHOW POOLS"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
    let tenant = t.dsn_with(ROLE, PASSWORD, "spg_admin", "sslmode=require");
    let out = tokio::task::block_in_place(|| psql(&tenant, "SHOW POOLS"));
    assert!(
        !out.status.success(),
        "a tenant must not reach the admin console"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queue_timeout_and_a_killed_backend() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.pool.size = 2;
        c.pool.query_wait_timeout = Duration::from_millis(800);
    })
    .await;
    // Cancel reaches the backend running the client's query, not its neighbour's.
    let a = tokio_pg(&t, &t.dsn).await.unwrap();
    let b = tokio_pg(&t, &t.dsn).await.unwrap();
    let token = a.cancel_token();
    let slow = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        b.query_one("SELECT pg_sleep(1.5)::text || 'done'", &[])
            .await
            .map(|r| r.get::<_, String>(0))
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    token.cancel_query(tls_maker(&t)).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(other.await.unwrap().unwrap(), "done");

    // With both backends held, a third client's transaction waits, then gets 57014; its
    // session stays usable.
    let held = hold_backends(&t, 2).await;
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    let started = Instant::now();
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().expect("an error from the gateway");
    assert_eq!(db.code().code(), "57014");
    assert!(db.message().contains("became free"), "{}", db.message());
    assert!(started.elapsed() >= Duration::from_millis(700));
    for h in &held {
        h.batch_execute("COMMIT").await.unwrap();
    }
    c.simple_query("SELECT 1").await.unwrap();

    // A backend killed under a client: that client gets an error, everyone else goes on.
    let victim = tokio_pg(&t, &t.dsn).await.unwrap();
    victim.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killed: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    assert!(victim.simple_query("SELECT 1").await.is_err());
    for _ in 0..5 {
        let fresh = tokio_pg(&t, &t.dsn).await.unwrap();
        let n: i32 = fresh.query_one("SELECT 7", &[]).await.unwrap().get(0);
        assert_eq!(n, 7);
    }
    c.simple_query("SELECT 1").await.unwrap();
    drop(held);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_backend_and_resets_it_between_clients() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.pool.databases.insert(
            DB.into(),
            DatabasePool {
                mode: Some(PoolMode::Session),
                size: Some(1),
            },
        );
    })
    .await;
    let a = tokio_pg(&t, &t.dsn).await.unwrap();
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute("CREATE TEMP TABLE mine (n int); SET search_path TO pg_catalog")
        .await
        .unwrap();
    for _ in 0..3 {
        let p: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p, pid);
    }
    // A second client waits for the only backend, then finds it reset.
    let dsn = t.dsn.clone();
    let tls = tls_maker(&t);
    let b = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&dsn, tls).await.unwrap();
        tokio::spawn(conn);
        let r = c
            .query_one(
                "SELECT pg_backend_pid(), current_setting('search_path'), \
                 (SELECT count(*) FROM pg_class WHERE relname = 'mine' AND relpersistence = 't')",
                &[],
            )
            .await
            .unwrap();
        (
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_finished(), "session mode: the only backend is taken");
    drop(a);
    let (p, search_path, temp) = tokio::time::timeout(Duration::from_secs(20), b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p, pid, "the same backend connection, reused");
    assert_eq!(search_path, "\"$user\", public");
    assert_eq!(temp, 0);
    let pools = tokio::task::block_in_place(|| admin(&t, "SHOW POOLS"));
    assert!(pools.contains("|session|1|"), "{pools}");
    t.shutdown().await;
}

//! Wake-on-connect and idle stop, end to end: real postgres, real TLS, real SCRAM, real clients.

mod common;

use std::time::Duration;

use common::*;
use spg_core::{ComputeState, Generation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_tokio_postgres_wake_and_data_survives_idle_stop() {
    let t = TestPlatform::start(Duration::from_secs(1)).await;
    assert_eq!(t.status().await.record.state, ComputeState::Stopped);

    // psql over TLS with SCRAM wakes the database.
    let dsn = t.dsn.clone();
    let out = tokio::task::spawn_blocking(move || {
        psql_ok(&dsn, "CREATE TABLE kv (k text PRIMARY KEY, v int); INSERT INTO kv VALUES ('a', 1); SELECT v FROM kv")
    })
    .await
    .unwrap();
    assert_eq!(out.lines().last(), Some("1"));
    let st = t.status().await;
    assert_eq!(st.record.generation, Generation(1));
    assert_eq!(st.record.wake_count, 1);

    // Idle: the compute stops on its own.
    t.wait_state(ComputeState::Stopped, Duration::from_secs(20))
        .await;

    // tokio-postgres, same DSN: wakes it again and sees the data.
    let client = tokio_pg(&t, &t.dsn).await.unwrap();
    let v: i32 = client
        .query_one("SELECT v FROM kv WHERE k = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    client
        .execute("INSERT INTO kv VALUES ('b', 2)", &[])
        .await
        .unwrap();
    let st = t.status().await;
    assert_eq!(st.record.generation, Generation(2));
    assert_eq!(st.record.wake_count, 2);
    drop(client);

    // And once more through psql after another idle stop.
    t.wait_state(ComputeState::Stopped, Duration::from_secs(20))
        .await;
    let dsn = t.dsn.clone();
    let out = tokio::task::spawn_blocking(move || {
        psql_ok(&dsn, "SELECT string_agg(k, ',' ORDER BY k) FROM kv")
    })
    .await
    .unwrap();
    assert_eq!(out, "a,b");
    assert_eq!(t.status().await.record.wake_count, 3);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_or_unknown_role_never_starts_a_compute() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let cases = [
        (ROLE, "wrong-password"),
        ("nobody", PASSWORD),
        ("Not_A_Valid_Role", "x"),
    ];
    for (user, pw) in cases {
        let dsn = t.dsn_with(user, pw, DB, "sslmode=require");
        let out = tokio::task::spawn_blocking(move || psql(&dsn, "SELECT 1"))
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{err}"
        );
        let e = tokio_pg(&t, &t.dsn_with(user, pw, DB, "sslmode=require"))
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{e}");
    }
    let st = t.status().await;
    assert_eq!(st.record.state, ComputeState::Stopped);
    assert_eq!(st.record.generation, Generation::NONE);
    assert_eq!(st.record.wake_count, 0);
    assert!(postgres_processes_under(t.dir.path()).is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_at_once_cause_exactly_one_start() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let tls = tls_maker(&t);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let dsn = t.dsn.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&dsn, tls).await?;
            tokio::spawn(conn);
            let n: i32 = client.query_one("SELECT $1::int * 2", &[&i]).await?.get(0);
            Ok::<_, tokio_postgres::Error>((i, n))
        }));
    }
    for task in tasks {
        let (i, n) = task.await.unwrap().unwrap();
        assert_eq!(n, i * 2);
    }
    let st = t.status().await;
    assert_eq!(
        st.record.wake_count, 1,
        "one start for 20 concurrent clients"
    );
    assert_eq!(st.record.generation, Generation(1));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stop_happens_after_timeout_not_during_a_transaction_and_the_next_one_wakes() {
    let idle = Duration::from_millis(1500);
    let t = TestPlatform::start(idle).await;
    let client = tokio_pg(&t, &t.dsn).await.unwrap();
    client
        .batch_execute("CREATE TABLE wake_log (n int); BEGIN; INSERT INTO wake_log VALUES (1)")
        .await
        .unwrap();
    // A transaction open (and idle) for well over idle_timeout: the compute keeps running.
    for _ in 0..4 {
        tokio::time::sleep(idle).await;
        assert_eq!(t.status().await.record.state, ComputeState::Ready);
    }
    client.simple_query("COMMIT").await.unwrap();
    let committed_at = std::time::Instant::now();
    // The client stays connected but idle: under transaction pooling it holds nothing.
    let st = t
        .wait_state(ComputeState::Stopped, Duration::from_secs(20))
        .await;
    let waited = committed_at.elapsed();
    assert!(
        waited >= idle,
        "stopped {waited:?} after the transaction ended, before idle_timeout"
    );
    let last = &t
        .p()
        .control_plane
        .transitions(Some(&st.record.name), 1)
        .await
        .unwrap()[0];
    assert_eq!(last.reason, "idle");
    assert_eq!(st.record.wake_count, 1);
    // The same connection's next transaction wakes the database transparently.
    let rows = client
        .query_one("SELECT count(*) FROM wake_log", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 1);
    assert_eq!(t.status().await.record.wake_count, 2);
    drop(client);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_a_running_query() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let client = tokio_pg(&t, &t.dsn).await.unwrap();
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tls_maker(&t)).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("the query should end soon after the cancel")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_not_superusers_and_channel_binding_works() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    // libpq with channel binding required: SCRAM-SHA-256-PLUS over the gateway's TLS.
    let dsn = format!("{}&channel_binding=require", t.dsn);
    let out = tokio::task::spawn_blocking(move || {
        psql_ok(&dsn, "SELECT rolsuper, rolcreaterole, rolreplication FROM pg_roles WHERE rolname = current_user")
    })
    .await
    .unwrap();
    assert_eq!(out, "f|f|f");
    // A verified certificate works too (sslmode=verify-full against the platform's CA).
    let dsn = t
        .dsn_with(
            ROLE,
            PASSWORD,
            DB,
            &format!("sslmode=verify-full&sslrootcert={}", t.ca_file().display()),
        )
        .replace("127.0.0.1", "localhost");
    let out = tokio::task::spawn_blocking(move || psql_ok(&dsn, "SELECT current_user"))
        .await
        .unwrap();
    assert_eq!(out, ROLE);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_past_the_deadline_is_57p03_with_a_hint_and_a_retry_succeeds() {
    // A first start takes far longer than 50 ms.
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.wake_timeout = Duration::from_millis(50)
    })
    .await;
    let e = tokio_pg(&t, &t.dsn).await.unwrap_err();
    let db = e.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "57P03");
    assert!(
        db.message().contains("could not be woken in time"),
        "{}",
        db.message()
    );
    assert!(db.hint().unwrap_or("").contains("Retry"), "{:?}", db.hint());
    // The start went on in the background; a retry connects (the 50 ms also bound the
    // connection to the compute, which a loaded machine can miss: retried too).
    t.wait_state(ComputeState::Ready, Duration::from_secs(60))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let c = loop {
        match tokio_pg(&t, &t.dsn).await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let code = e.as_db_error().map(|d| d.code().code().to_owned());
                assert_eq!(code.as_deref(), Some("57P03"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    c.simple_query("SELECT 1").await.unwrap();
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_databases_make_new_transactions_wait_not_fail() {
    use spg_core::Gateway;
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let gw = t.p().gateway.clone().unwrap();
    let db = spg_core::DatabaseName::new(DB).unwrap();
    let first = tokio_pg(&t, &t.dsn).await.unwrap();
    assert_eq!(gw.sessions(&db).await.unwrap().sessions, 1);
    first.simple_query("BEGIN").await.unwrap();
    assert_eq!(gw.sessions(&db).await.unwrap().in_flight, 1);
    gw.set_frozen(&db, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let dsn = t.dsn.clone();
    let tls = tls_maker(&t);
    let waiting = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&dsn, tls).await?;
        tokio::spawn(conn);
        c.simple_query("SELECT 1").await?;
        Ok::<_, tokio_postgres::Error>(())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "a frozen database must hold new work back"
    );
    let during = gw.sessions(&db).await.unwrap();
    assert!(during.frozen);
    assert!(during.pinned.is_empty(), "{during:?}");
    // A transaction already running continues and ends.
    first.simple_query("SELECT 1").await.unwrap();
    first.simple_query("COMMIT").await.unwrap();
    assert_eq!(gw.sessions(&db).await.unwrap().in_flight, 0, "drained");
    gw.set_frozen(&db, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(first);
    t.shutdown().await;
}

//! Autoscale handoffs end to end: the platform (safekeepers, lazily mounted images, gateway in
//! transaction pooling) replaces its writer with a generation of another profile while real
//! clients work through the gateway.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use spg::adapters::InProcess;
use spg_core::{DatabaseName, ScaleState};
use spg_gateway_lib::{GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer};
use spg_lifecycle_lib::autoscale::AutoscalePolicy;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn db() -> DatabaseName {
    DatabaseName::new(DB).unwrap()
}

/// 100 accounts of 1000 each, and a ledger of transfers.
async fn ledger(t: &TestPlatform) -> tokio_postgres::Client {
    let c = tokio_pg(t, &t.dsn).await.unwrap();
    c.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
         CREATE TABLE transfers (id bigserial PRIMARY KEY, a int, b int, amount int);",
    )
    .await
    .unwrap();
    c
}

/// The compute of `generation` runs in its own cgroup with the profile's CPU quota, where the
/// machine lets the platform make cgroups (otherwise the limits are only recorded).
fn assert_limited(t: &TestPlatform, generation: u64, millicores: u64) {
    let pids = postgres_processes_under(t.dir.path());
    assert_eq!(pids.len(), 1, "one writer");
    let groups = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    // The group is `<db>-g<generation>-<tag of this platform>`.
    let name = format!("/spg/{DB}-g{generation}-");
    let Some(line) = groups
        .lines()
        .find(|l| l.contains(&name) && (l.contains(":cpu") || l.starts_with("0::")))
    else {
        let writable = std::fs::metadata("/sys/fs/cgroup/cpu/spg")
            .or_else(|_| std::fs::metadata("/sys/fs/cgroup/spg"))
            .is_ok();
        assert!(
            !writable,
            "cgroups are writable here, yet the compute is not in {name}: {groups}"
        );
        eprintln!("no writable cgroup hierarchy: limits recorded only");
        return;
    };
    let group = line.rsplit(':').next().unwrap();
    let quota = if line.starts_with("0::") {
        std::fs::read_to_string(format!("/sys/fs/cgroup{group}/cpu.max")).unwrap()
    } else {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{group}/cpu.cfs_quota_us")).unwrap()
    };
    let quota: u64 = quota.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(quota, millicores * 100, "CPU quota of the profile ({line})");
}

async fn shared_buffers(t: &TestPlatform) -> String {
    let c = tokio_pg(t, &t.dsn).await.unwrap();
    let rows = c.simple_query("SHOW shared_buffers").await.unwrap();
    first_value(&rows)
}

fn first_value(rows: &[tokio_postgres::SimpleQueryMessage]) -> String {
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// pgbench moving money between accounts through the gateway (`clients` sessions, `secs`
/// seconds), as set up by [`ledger`].
fn transfers(t: &TestPlatform, clients: u32, secs: u32) -> ChildGuard {
    transfers_via(t, t.gateway_port(), "require", clients, secs)
}

/// [`transfers`] through the gateway at `port` with `sslmode`.
fn transfers_via(
    t: &TestPlatform,
    port: u16,
    sslmode: &str,
    clients: u32,
    secs: u32,
) -> ChildGuard {
    let script = t.dir.path().join(format!("transfer-{port}.sql"));
    std::fs::File::create(&script)
        .unwrap()
        .write_all(
            b"\\set a random(1, 100)\n\
              \\set b 1 + (:a + random(0, 98)) % 100\n\
              \\set amount random(1, 50)\n\
              BEGIN;\n\
              UPDATE accounts SET balance = balance + CASE WHEN id = :a THEN -:amount ELSE :amount END WHERE id IN (:a, :b);\n\
              INSERT INTO transfers (a, b, amount) VALUES (:a, :b, :amount);\n\
              END;\n",
        )
        .unwrap();
    let bins = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None).unwrap();
    let bench = Command::new(bins.exe("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", ROLE, "-n", "-j", "2"])
        .args(["-c", &clients.to_string(), "-T", &secs.to_string()])
        .arg("-f")
        .arg(&script)
        .arg(DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", sslmode)
        .env("PGCONNECT_TIMEOUT", "30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ChildGuard {
        child: Some(bench),
        dir: t.dir.path().join("pgbench"),
    }
}

/// Wait for pgbench to end; asserts it saw no error and returns the transactions it counted.
async fn finish(mut bench: ChildGuard) -> i64 {
    let child = bench.child.take().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pgbench failed: {stderr}\n{stdout}");
    assert!(
        !stderr.contains("error") && !stderr.contains("abort"),
        "client errors: {stderr}"
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {stdout}"))
}

/// The books balance: the total is unchanged and the ledger holds `processed` transfers.
async fn assert_balanced(c: &tokio_postgres::Client, processed: i64) {
    let total = first_value(
        &c.simple_query("SELECT sum(balance) FROM accounts")
            .await
            .unwrap(),
    );
    assert_eq!(total, "100000", "the books balance");
    let transfers = first_value(
        &c.simple_query("SELECT count(*) FROM transfers")
            .await
            .unwrap(),
    );
    assert_eq!(
        transfers.parse::<i64>().unwrap(),
        processed,
        "every transfer pgbench counted is in the ledger"
    );
}

/// Handoff number `i`, to `profile`, run to its end.
async fn hand_off(
    cp: &spg_lifecycle_lib::ControlPlane,
    profile: &str,
    i: usize,
) -> spg_core::HandoffReport {
    cp.start_handoff(&db(), profile)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_or_else(|e| panic!("handoff {i} to {profile}: {e}"))
}

/// Under pgbench (16 clients, transaction pooling) moving money between accounts, ten handoffs
/// L1 → L2 → L1 … complete; pgbench sees no error, and the books balance: every transfer it
/// counted is in the ledger and the total is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_handoffs_under_pgbench_fail_no_client_and_lose_nothing() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = ledger(&t).await;
    let mut bench = transfers(&t, 16, 60);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cp = t.p().control_plane.clone();
    let start_generation = t.status().await.record.generation;
    let mut frozen = Vec::new();
    let started = Instant::now();
    for i in 0..10 {
        let profile = if i % 2 == 0 { "L2" } else { "L1" };
        let report = hand_off(&cp, profile, i).await;
        eprintln!(
            "handoff {i} to {profile}: {} -> {}, {:?}",
            report.from, report.to, report.timings_ms
        );
        frozen.push(report.frozen_for);
        let st = t.status().await;
        assert_eq!(st.profile, profile);
        assert_eq!(
            st.record.scale_state,
            ScaleState::Steady,
            "handoff {i}: {:?} (last error {:?})",
            st.record.scale_reason,
            st.record.last_error
        );
        assert_eq!(st.record.generation, report.to);
        let want = if profile == "L2" { "512MB" } else { "128MB" };
        assert_eq!(shared_buffers(&t).await, want, "{profile} runs");
    }
    eprintln!(
        "10 handoffs in {:?}; frozen for {:?}",
        started.elapsed(),
        frozen
    );
    assert!(
        bench.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "pgbench ended before the handoffs did: they did not all run under load"
    );
    let processed = finish(bench).await;
    assert!(processed > 100);

    let st = t.status().await;
    assert_eq!(st.record.generation.0, start_generation.0 + 10);
    assert_balanced(&c, processed).await;
    let transitions = cp.transitions(Some(&db()), 200).await.unwrap();
    let phases = transitions
        .iter()
        .filter(|t| t.reason.starts_with("scale "))
        .count();
    assert!(phases >= 40, "every phase is a transition ({phases})");
    drop(c);
    t.shutdown().await;
}

/// A session with a temp table pins its backend: the handoff waits for it and, past the limit,
/// gives up cleanly while traffic goes on; once the session ends, a handoff completes. A
/// transaction that outlives the drain timeout aborts the handoff and unfreezes; it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_sessions_delay_and_long_transactions_abort_a_handoff_without_breaking_anything() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.handoff_pinned_wait = Duration::from_secs(5);
        c.handoff_drain_timeout = Duration::from_secs(1);
    })
    .await;
    let cp = t.p().control_plane.clone();
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let generation = t.status().await.record.generation;

    // A pinned session: the handoff waits, says why, then gives up; nothing breaks.
    let pinned = tokio_pg(&t, &t.dsn).await.unwrap();
    pinned
        .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    let handle = cp.start_handoff(&db(), "L2").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = t.status().await;
        let reason = st.record.scale_reason.clone().unwrap_or_default();
        if st.record.scale_state == ScaleState::Preparing && reason.contains("temp_table") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported the pinned session: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    let err = handle.wait().await.unwrap_err().to_string();
    assert!(err.contains("temp_table"), "{err}");
    let st = t.status().await;
    assert_eq!(st.record.scale_state, ScaleState::Aborted);
    assert_eq!(st.record.generation, generation, "the writer runs on");
    assert_eq!(st.profile, "L1");
    let rows = pinned
        .simple_query("SELECT count(*) FROM scratch")
        .await
        .unwrap();
    assert_eq!(first_value(&rows), "1", "the pinned session still works");
    c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();

    // Once the session ends, the handoff completes (started through the API this time).
    let ca = reqwest::Certificate::from_pem(&std::fs::read(t.ca_file()).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("{}/v1/databases/{DB}", t.p().api_url());
    let post = |profile: &'static str| {
        http.post(format!("{url}/handoff"))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({ "profile": profile }))
            .send()
    };
    assert_eq!(post("L9").await.unwrap().status(), 400, "unknown profile");
    let resp = post("L2").await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["scale_state"], "preparing", "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(pinned);
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let v: serde_json::Value = http
            .get(&url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let busy = ["preparing", "frozen", "draining", "switching"];
        if !busy.iter().any(|s| v["scale_state"] == *s) {
            break v;
        }
        assert!(Instant::now() < deadline, "handoff never ended: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view["scale_state"], "steady", "{view}");
    assert_eq!(view["profile"], "L2", "{view}");
    assert_limited(&t, view["generation"].as_u64().unwrap(), 2000);
    assert!(view["generation"].as_u64().unwrap() > generation.0);
    assert!(view["last_handoff"].is_object(), "{view}");
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    let rows = c.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(first_value(&rows), "2");

    // A transaction longer than the drain timeout: the handoff aborts and unfreezes, and the
    // transaction commits on the writer it started on.
    let long = tokio_pg(&t, &t.dsn).await.unwrap();
    long.batch_execute("BEGIN; INSERT INTO t VALUES (3)")
        .await
        .unwrap();
    let generation = t.status().await.record.generation;
    let err = cp
        .start_handoff(&db(), "L1")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("drain timed out"), "{err}");
    let gw = t.p().gateway.clone().unwrap();
    let s = spg_core::Gateway::sessions(&gw, &db()).await.unwrap();
    assert!(!s.frozen, "unfrozen after the abort");
    long.batch_execute("INSERT INTO t VALUES (4); COMMIT")
        .await
        .unwrap();
    let rows = c.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(first_value(&rows), "4", "nothing lost");
    let st = t.status().await;
    assert_eq!(st.record.generation, generation);
    assert_eq!(st.record.scale_state, ScaleState::Aborted);
    drop((c, long));
    t.shutdown().await;
}

/// Wait until the writer runs `profile` steadily; returns how long that took.
async fn until_steady_on(t: &TestPlatform, profile: &str, limit: Duration) -> Duration {
    let since = Instant::now();
    loop {
        let st = t.status().await;
        if st.profile == profile && st.record.scale_state == ScaleState::Steady {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "not on {profile} after {limit:?}: {:?} {:?}",
            st.record.scale_state,
            st.record.scale_reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The autoscaler (short windows for the test) moves the writer to L2 under sustained pgbench
/// load and back to L1 once the load stops, once each way: no flapping while the load lasts
/// on L2, nor in the quiet afterwards. Each decision is a transition with its reason; clients
/// see no error and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_moves_up_under_load_and_back_down_after_without_flapping() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.autoscale = AutoscalePolicy {
            enabled: true,
            interval: Duration::from_millis(250),
            up_window: Duration::from_secs(3),
            down_window: Duration::from_secs(5),
            min_dwell: Duration::from_secs(8),
            // A share of one core the loaded compute reaches on this 2-core machine, where
            // pgbench and the gateway take their part.
            cpu_up: 0.4,
            cpu_down: 0.2,
            ..AutoscalePolicy::default()
        };
    })
    .await;
    let c = ledger(&t).await;
    let cp = t.p().control_plane.clone();
    let decisions = || async {
        cp.transitions(Some(&db()), 500)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .filter(|t| t.reason.contains("autoscaler:"))
            .map(|t| t.reason)
            .collect::<Vec<_>>()
    };
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(decisions().await.is_empty(), "no move while idle");
    assert_eq!(t.status().await.profile, "L1");
    eprintln!("idle for {:?}: no move", quiet.elapsed());

    // Sustained load: up to L2 within a few seconds, and nothing more while it lasts.
    let bench = transfers(&t, 8, 25);
    let up = until_steady_on(&t, "L2", Duration::from_secs(20)).await;
    eprintln!("on L2 {up:?} after the load began: {:?}", decisions().await);
    let processed = finish(bench).await;
    let made = decisions().await;
    assert_eq!(made.len(), 1, "one move while loaded: {made:?}");
    assert!(made[0].contains("handoff L1 -> L2"), "{made:?}");
    assert_eq!(t.status().await.profile, "L2", "stays on L2 while loaded");

    // Quiet: back to L1 after the down window (and the dwell), then it stays there.
    let down = until_steady_on(&t, "L1", Duration::from_secs(30)).await;
    eprintln!("back on L1 {down:?} after the load ended");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let made = decisions().await;
    assert_eq!(made.len(), 2, "up once, down once: {made:?}");
    assert!(made[1].contains("handoff L2 -> L1"), "{made:?}");
    assert!(made[1].contains("fit L1"), "{made:?}");
    assert_eq!(t.status().await.profile, "L1");
    assert_balanced(&c, processed).await;
    drop(c);
    t.shutdown().await;
}

/// Two gateways serve the database (the platform's, and a second instance over the same
/// control plane): each handoff freezes, drains and switches both. pgbench through each sees no
/// error, both end up on the new writer, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_freezes_drains_and_switches_every_gateway() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = ledger(&t).await;
    let cp = t.p().control_plane.clone();
    let second = GatewayServer::new(
        GatewayConfig {
            allow_plaintext: true,
            lease_holder: "second-gateway".into(),
            ..GatewayConfig::default()
        },
        GatewayDeps {
            auth: Arc::new(InProcess(cp.clone())),
            waker: Arc::new(InProcess(cp.clone())),
            lease: Some(Arc::new(cp.clone())),
        },
        GatewayMetrics::default(),
    );
    cp.add_gateway(Arc::new(second.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port2 = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (second, stop) = (second.clone(), stop.clone());
        async move { second.serve(listener, stop).await }
    });

    let first = transfers(&t, 8, 30);
    let other = transfers_via(&t, port2, "disable", 8, 30);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, profile) in ["L2", "L1", "L2", "L1"].into_iter().enumerate() {
        let report = hand_off(&cp, profile, i).await;
        eprintln!("handoff {i} to {profile}: {:?}", report.timings_ms);
        for (name, g) in [
            ("first", t.p().gateway.clone().unwrap()),
            ("second", second.clone()),
        ] {
            let s = spg_core::Gateway::sessions(&g, &db()).await.unwrap();
            assert!(!s.frozen, "the {name} gateway is unfrozen");
            assert!(
                s.sessions >= 8,
                "the {name} gateway serves its clients: {s:?}"
            );
        }
    }
    let processed = finish(first).await + finish(other).await;
    assert!(processed > 100, "{processed}");
    assert_balanced(&c, processed).await;
    // A new session through the second gateway lands on the newest writer.
    let dsn2 = format!(
        "host=127.0.0.1 port={port2} user={ROLE} password={PASSWORD} dbname={DB} sslmode=disable"
    );
    let (c2, conn) = tokio_postgres::connect(&dsn2, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = c2.simple_query("SHOW shared_buffers").await.unwrap();
    assert_eq!(
        first_value(&rows),
        "128MB",
        "L1 serves through the second gateway"
    );
    drop((c, c2));
    stop.cancel();
    serving.await.unwrap();
    t.shutdown().await;
}

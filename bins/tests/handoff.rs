//! Autoscale handoffs end to end: the platform (safekeepers, lazily mounted images, gateway in
//! transaction pooling) replaces its writer with a generation of another profile while real
//! clients work through the gateway.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use spg_core::{DatabaseName, ScaleState};

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
    let name = format!("/spg/{DB}-g{generation}");
    let Some(line) = groups
        .lines()
        .find(|l| l.ends_with(&name) && (l.contains(":cpu") || l.starts_with("0::")))
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
    let quota = if line.starts_with("0::") {
        std::fs::read_to_string(format!("/sys/fs/cgroup{name}/cpu.max")).unwrap()
    } else {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{name}/cpu.cfs_quota_us")).unwrap()
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

/// Under pgbench (16 clients, transaction pooling) moving money between accounts, ten handoffs
/// L1 → L2 → L1 … complete; pgbench sees no error, and the books balance: every transfer it
/// counted is in the ledger and the total is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_handoffs_under_pgbench_fail_no_client_and_lose_nothing() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = ledger(&t).await;
    let script = t.dir.path().join("transfer.sql");
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
        .args(["-h", "127.0.0.1", "-p", &t.gateway_port().to_string()])
        .args(["-U", ROLE, "-n", "-c", "16", "-j", "2", "-T", "60"])
        .arg("-f")
        .arg(&script)
        .arg(DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "require")
        .env("PGCONNECT_TIMEOUT", "30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bench = ChildGuard {
        child: Some(bench),
        dir: t.dir.path().join("pgbench"),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cp = t.p().control_plane.clone();
    let start_generation = t.status().await.record.generation;
    let mut frozen = Vec::new();
    let started = Instant::now();
    for i in 0..10 {
        let profile = if i % 2 == 0 { "L2" } else { "L1" };
        let report = cp
            .start_handoff(&db(), profile)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap_or_else(|e| panic!("handoff {i} to {profile}: {e}"));
        eprintln!(
            "handoff {i} to {profile}: {} -> {}, {:?}",
            report.from, report.to, report.timings_ms
        );
        frozen.push(report.frozen_for);
        let st = t.status().await;
        assert_eq!(st.profile, profile);
        assert_eq!(st.record.scale_state, ScaleState::Steady);
        assert_eq!(st.record.generation, report.to);
        let want = if profile == "L2" { "512MB" } else { "128MB" };
        assert_eq!(shared_buffers(&t).await, want, "{profile} runs");
    }
    eprintln!(
        "10 handoffs in {:?}; frozen for {:?}",
        started.elapsed(),
        frozen
    );
    let mut child = bench.child.take().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "pgbench ended before the handoffs did: they did not all run under load"
    );
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
    let processed: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {stdout}"));
    assert!(processed > 100, "{stdout}");

    let st = t.status().await;
    assert_eq!(st.record.generation.0, start_generation.0 + 10);
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

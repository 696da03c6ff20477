//! What running each compute as its own `spg-compute` process costs a cold start: a stopped
//! ~10 MB database → the first query result through the gateway, on two platforms in the same
//! run, alternating — one runs the compute agent inside its own process (the anchor), the other
//! one `spg-compute` process per generation (spawned, driven over HTTPS, reaching the
//! platform's pageserver and safekeepers over its storage socket), each run 0.8 s after the
//! previous stop. Target: at most 20 ms more at p50.
//!
//! `cargo build --release -p spg-bins --bin spg-compute --bin spg-wal-restore &&
//!  cargo bench -p spg-benches --bench compute_process` (iterations: `SPG_BENCH_ITERATIONS`,
//! default 30).

use std::time::{Duration, Instant};

use spg::platform::{locate_compute_program, ComputeRunner, Platform, PlatformConfig};
use spg_core::{ComputeState, DatabaseName, RoleName};
use spg_lifecycle_lib::RoleSecret;

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";
const ROWS: i64 = 9_000;
/// The pause after each stop.
const SETTLE: Duration = Duration::from_millis(800);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

use spg::testing::stats::{percentile as pct, step_medians};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One platform under test.
struct Side {
    name: &'static str,
    platform: Platform,
    dsn: String,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    runs: Vec<Duration>,
    steps: Vec<Vec<(String, f64)>>,
}

async fn side(name: &'static str, dir: &std::path::Path, computes: ComputeRunner) -> Side {
    let mut cfg = PlatformConfig::new(dir.join(name));
    cfg.idle_timeout = Duration::from_secs(3600);
    cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
    cfg.api_listen = ([127, 0, 0, 1], 0).into();
    cfg.restore_program = Some(
        std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("spg-wal-restore"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| std::env::current_exe().unwrap()),
    );
    cfg.computes = computes;
    let platform = Platform::start(cfg).await.unwrap();
    let tls = spg::testing::topology::tls_trusting(&std::fs::read(&platform.ca_file).unwrap());
    let cp = platform.control_plane.clone();
    let db = DatabaseName::new("small").unwrap();
    cp.create_database(db.clone()).await.unwrap();
    cp.create_role(
        &db,
        RoleName::new(ROLE).unwrap(),
        RoleSecret::Password(PASSWORD.into()),
    )
    .await
    .unwrap();
    let dsn = platform.dsn(ROLE, PASSWORD, "small").unwrap();
    let (c, conn) = tokio_postgres::connect(&dsn, tls.clone()).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL); \
         INSERT INTO t SELECT g, g % 1000, repeat(md5(g::text), 30) FROM generate_series(1, {ROWS}) g"
    ))
    .await
    .unwrap();
    drop(c);
    cp.stop_database(&db).await.unwrap();
    Side {
        name,
        platform,
        dsn,
        tls,
        runs: Vec::new(),
        steps: Vec::new(),
    }
}

async fn cold_start(s: &mut Side, i: usize) {
    let cp = s.platform.control_plane.clone();
    let db = DatabaseName::new("small").unwrap();
    assert_eq!(
        cp.database(&db).await.unwrap().record.state,
        ComputeState::Stopped
    );
    let id = 1 + (i as i64 * 7919) % ROWS;
    let t0 = Instant::now();
    let side = s.name;
    let (c, conn) = tokio_postgres::connect(&s.dsn, s.tls.clone())
        .await
        .unwrap_or_else(|e| panic!("{side}, run {i}: connecting: {e}"));
    tokio::spawn(conn);
    let v: i32 = match c.query_one("SELECT v FROM t WHERE id = $1", &[&id]).await {
        Ok(row) => row.get(0),
        Err(e) => {
            let st = cp.database(&db).await.unwrap();
            eprintln!("STALL {side} run {i}: {e}");
            if let Some(secs) = std::env::var("SPG_BENCH_HOLD_ON_FAILURE")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                // Time to look at the processes (gdb, /proc) before they go.
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            panic!(
                "{side}, run {i}: the first query failed after {:?}: {e} (state {}, last error {:?})",
                t0.elapsed(),
                st.record.state,
                st.record.last_error
            );
        }
    };
    s.runs.push(t0.elapsed());
    assert_eq!(i64::from(v), id % 1000);
    drop(c);
    let st = cp.database(&db).await.unwrap();
    s.steps.push(
        st.record
            .last_boot
            .unwrap()
            .steps
            .into_iter()
            .map(|s| (s.step, s.ms))
            .collect(),
    );
    cp.stop_database(&db).await.unwrap();
    // Each wake on a quiet machine: what a stop or a start leaves to do in the background (a
    // new spare agent, the write-back's tail) is not charged to the other side's next run.
    tokio::time::sleep(SETTLE).await;
}

fn main() {
    spg::wal_restore_if_invoked();
    if std::env::var_os("SPG_LOG").is_none() {
        std::env::set_var("SPG_LOG", "warn");
    }
    spg::init_logging();
    let program = match locate_compute_program() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}\n(build it first: cargo build --release -p spg-bins --bin spg-compute)");
            std::process::exit(2);
        }
    };
    eprintln!("compute program: {}", program.display());
    let iterations: usize = std::env::var("SPG_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Computes run as another user, who must reach their directories.
        let dir = std::env::temp_dir().join(format!("spg-bench-cp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut sides = vec![
            side("in-process", &dir, ComputeRunner::InProcess).await,
            side("process", &dir, ComputeRunner::Processes(Some(program))).await,
        ];
        // One warm-up each (first reads of the binaries and the image), then alternate.
        for s in sides.iter_mut() {
            cold_start(s, 0).await;
            s.runs.clear();
            s.steps.clear();
        }
        for i in 0..iterations {
            for s in sides.iter_mut() {
                cold_start(s, i + 1).await;
            }
        }
        println!();
        println!(
            "cold start of a ~10 MB database, stopped -> first query result through the gateway \
             ({iterations} alternating runs each)"
        );
        for s in &sides {
            println!(
                "{:<12} p50={:>7.1} ms  p99={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
                s.name,
                ms(pct(&s.runs, 50.0)),
                ms(pct(&s.runs, 99.0)),
                ms(pct(&s.runs, 0.0)),
                ms(pct(&s.runs, 100.0)),
            );
            println!(
                "{:<12} boot steps, median ms: {}",
                "",
                step_medians(&s.steps)
            );
        }
        let (a, b) = (&sides[0], &sides[1]);
        // Each process run against the in-process run just before it: what the shared
        // machine's drift does to both sides cancels out.
        let paired: Vec<f64> = a
            .runs
            .iter()
            .zip(&b.runs)
            .map(|(x, y)| ms(*y) - ms(*x))
            .collect();
        println!(
            "process - in-process at p50: {:+.1} ms (target: at most +20 ms)   at p99: {:+.1} ms   \
             median of the {} paired differences: {:+.1} ms",
            ms(pct(&b.runs, 50.0)) - ms(pct(&a.runs, 50.0)),
            ms(pct(&b.runs, 99.0)) - ms(pct(&a.runs, 99.0)),
            paired.len(),
            median(paired),
        );
        for s in sides {
            s.platform.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

//! Commit throughput and latency with the WAL quorum (three safekeepers, quorum two) against the
//! same PostgreSQL with local fsync only, in one run: `pgbench` TPC-B-like, 8 clients.
//!
//! `cargo bench -p spg-benches --bench wal_quorum`
//! (`SPG_BENCH_SECONDS`, default 60; `SPG_BENCH_SCALE`, default 10; `SPG_BENCH_CLIENTS`, default 8).
//!
//! Both computes are started by the real compute agent with the same profile; the only difference
//! is `synchronous_standby_names = 'ANY 2 (sk1, sk2, sk3)'` and the safekeepers streaming.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use spg_core::scram::ScramVerifier;
use spg_core::{DatabaseName, Generation, RoleName};
use spg_lifecycle_lib::compute::config::default_profile;
use spg_lifecycle_lib::compute::wal::WalSetup;
use spg_lifecycle_lib::compute::{AgentConfig, ComputeSpec, RoleSpec, RunningCompute};
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use spg_storage_lib::LocalDirPageStore;

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Result_ {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    n: usize,
}

fn pgbench(
    bins: &PgBinaries,
    port: u16,
    db: &str,
    args: &[&str],
    log_dir: Option<&Path>,
) -> String {
    let mut cmd = Command::new(bins.exe("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", ROLE])
        .args(args)
        .env("PGPASSWORD", PASSWORD);
    if let Some(dir) = log_dir {
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", dir.join("tx").display()));
    }
    cmd.arg(db);
    let out = cmd.output().expect("running pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench failed:\n{text}");
    text
}

fn run(bins: &PgBinaries, port: u16, db: &str, work: &Path) -> Result_ {
    let seconds = env_u64("SPG_BENCH_SECONDS", 60).to_string();
    let scale = env_u64("SPG_BENCH_SCALE", 10).to_string();
    let clients = env_u64("SPG_BENCH_CLIENTS", 8).to_string();
    pgbench(bins, port, db, &["-i", "-q", "-s", &scale], None);
    let logs = work.join(format!("logs-{db}"));
    std::fs::create_dir_all(&logs).unwrap();
    let text = pgbench(
        bins,
        port,
        db,
        &["-c", &clients, "-j", "2", "-T", &seconds, "-n"],
        Some(&logs),
    );
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{text}"));
    let mut lat: Vec<u64> = Vec::new();
    for f in std::fs::read_dir(&logs).unwrap() {
        let body = std::fs::read_to_string(f.unwrap().path()).unwrap();
        lat.extend(
            body.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize] as f64 / 1000.0;
    Result_ {
        tps,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        n: lat.len(),
    }
}

fn spec(db: &str) -> ComputeSpec {
    ComputeSpec {
        database: DatabaseName::new(db).unwrap(),
        generation: Generation(1),
        roles: vec![RoleSpec {
            name: RoleName::new(ROLE).unwrap(),
            verifier: ScramVerifier::from_password(PASSWORD),
        }],
        profile: default_profile(),
    }
}

fn main() {
    // This binary is also the computes' restore_command (`<exe> wal-restore URL %f %p`).
    spg::wal_restore_if_invoked();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let tmp = tempfile_dir();
    let bins = PgBinaries::locate(None).unwrap();
    let agent = Arc::new(AgentConfig::new(tmp.join("run"), bins.clone()).unwrap());
    let nodes: Vec<Arc<SafekeeperNode>> = (1..=3)
        .map(|i| {
            SafekeeperNode::new(NodeConfig {
                name: format!("sk{i}"),
                dir: tmp.join(format!("sk{i}")),
                segment_size: DEFAULT_SEGMENT_SIZE,
            })
            .unwrap()
        })
        .collect();
    let members: Vec<Arc<dyn SafekeeperApi>> = nodes
        .iter()
        .map(|n| Arc::new(Arc::clone(n)) as Arc<dyn SafekeeperApi>)
        .collect();
    let wal = WalSetup {
        quorum: Arc::new(SafekeeperSet::new(members, Duration::from_secs(5))),
        restore_program: std::env::current_exe().unwrap(),
    };

    println!(
        "pgbench TPC-B-like, {} clients, {} s, scale {}",
        env_u64("SPG_BENCH_CLIENTS", 8),
        env_u64("SPG_BENCH_SECONDS", 60),
        env_u64("SPG_BENCH_SCALE", 10)
    );
    let local = RunningCompute::start(
        agent.clone(),
        Arc::new(LocalDirPageStore::new(tmp.join("pages-local"))),
        None,
        spec("local"),
    )
    .await
    .unwrap();
    let l = run(&bins, local.endpoint().addr.port(), "local", &tmp);
    local.stop().await;

    let quorum = RunningCompute::start(
        agent.clone(),
        Arc::new(LocalDirPageStore::new(tmp.join("pages-quorum"))),
        Some(wal),
        spec("quorum"),
    )
    .await
    .unwrap();
    let q = run(&bins, quorum.endpoint().addr.port(), "quorum", &tmp);
    quorum.stop().await;
    for n in &nodes {
        n.shutdown().await;
    }

    let line = |name: &str, r: &Result_| {
        println!(
            "{name:<36} tps={:>8.1}  p50={:>6.2} ms  p99={:>6.2} ms  (n={})",
            r.tps, r.p50_ms, r.p99_ms, r.n
        )
    };
    line("local fsync only (anchor)", &l);
    line("WAL quorum (3 safekeepers, ANY 2)", &q);
    println!("throughput ratio quorum/local = {:.2}", q.tps / l.tps);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spg-bench-wal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

//! Handoff pause as clients see it. pgbench (TPC-B-like, 16 clients, transaction pooling through
//! the gateway, TLS) runs against the platform; first in steady state, then while the writer is
//! handed off L1 → L2 → L1 … ten times. From pgbench's per-transaction log: p50/p99/max latency
//! in steady state, of the transactions that ended during a handoff (from its start until a
//! second after it ended), and each handoff's worst latency; with the handoffs' phase timings
//! and the error count. Target: client-visible pause (p99 of the handoffs' worst latency) under
//! 500 ms, zero errors.
//!
//! `cargo bench -p spg-benches --bench handoff` (handoffs: `SPG_BENCH_HANDOFFS`, default 10;
//! steady seconds: `SPG_BENCH_SECONDS`, default 20; clients: `SPG_BENCH_CLIENTS`, default 16).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spg::platform::{Platform, PlatformConfig};
use spg_core::{DatabaseName, RoleName};
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::RoleSecret;

const DB: &str = "bench";
const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One transaction from pgbench's log: when it ended (µs since the epoch) and its latency (µs).
#[derive(Clone, Copy)]
struct Tx {
    end_us: u64,
    latency_us: u64,
}

/// Start pgbench for `seconds` with a per-transaction log under `logs`.
fn start_pgbench(
    bins: &PgBinaries,
    logs: &Path,
    port: u16,
    clients: usize,
    seconds: u64,
) -> std::process::Child {
    let _ = std::fs::remove_dir_all(logs);
    std::fs::create_dir_all(logs).unwrap();
    Command::new(bins.exe("pgbench"))
        .args(["-n", "-j", "2", "-l"])
        .args(["-c", &clients.to_string(), "-T", &seconds.to_string()])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", ROLE])
        .arg(format!("--log-prefix={}/tx", logs.display()))
        .arg(DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "require")
        .env("PGCONNECT_TIMEOUT", "30")
        .current_dir(logs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for pgbench; returns its transactions and the lines of its error output that report
/// failures.
fn finish_pgbench(child: std::process::Child, logs: &Path) -> (Vec<Tx>, Vec<String>) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut errors: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("error") || l.contains("abort") || l.contains("FATAL"))
        .map(str::to_owned)
        .collect();
    // SIGINT is how the run with handoffs is ended.
    let interrupted = std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(2);
    if !out.status.success() && !interrupted {
        errors.push(format!("pgbench exited with {}", out.status));
    }
    let mut txs = Vec::new();
    for entry in std::fs::read_dir(logs).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // client_id transaction_no time script_no time_epoch time_us
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(lat), Ok(s), Ok(us)) = (
                f[2].parse::<u64>(),
                f[4].parse::<u64>(),
                f[5].parse::<u64>(),
            ) else {
                continue;
            };
            txs.push(Tx {
                end_us: s * 1_000_000 + us,
                latency_us: lat,
            });
        }
    }
    (txs, errors)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn line(name: &str, mut lat: Vec<u64>) -> String {
    lat.sort_unstable();
    format!(
        "{name:<28} n={:<7} p50={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms",
        lat.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    )
}

fn main() {
    // The platform's computes run this binary as their restore_command.
    spg::wal_restore_if_invoked();
    if std::env::var_os("SPG_LOG").is_none() {
        std::env::set_var("SPG_LOG", "warn");
    }
    spg::init_logging();
    let handoffs: usize = env_or("SPG_BENCH_HANDOFFS", 10);
    let steady_secs: u64 = env_or("SPG_BENCH_SECONDS", 20);
    let clients: usize = env_or("SPG_BENCH_CLIENTS", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("spg-bench-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = PlatformConfig::new(dir.join("data"));
        cfg.idle_timeout = Duration::from_secs(3600);
        cfg.restore_program = Some(std::env::current_exe().unwrap());
        cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
        cfg.api_listen = ([127, 0, 0, 1], 0).into();
        let platform = Platform::start(cfg).await.unwrap();
        let cp = platform.control_plane.clone();
        let db = DatabaseName::new(DB).unwrap();
        cp.create_database(db.clone()).await.unwrap();
        cp.create_role(
            &db,
            RoleName::new(ROLE).unwrap(),
            RoleSecret::Password(PASSWORD.into()),
        )
        .await
        .unwrap();
        let port = platform.gateway_addr.unwrap().port();
        let bins = PgBinaries::locate(None).unwrap();
        let init = Command::new(bins.exe("pgbench"))
            .args(["-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", ROLE, DB])
            .env("PGPASSWORD", PASSWORD)
            .env("PGSSLMODE", "require")
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        );

        // Steady state.
        let logs = dir.join("logs");
        let steady = start_pgbench(&bins, &logs, port, clients, steady_secs);
        let (steady_txs, steady_errors) =
            tokio::task::spawn_blocking({
                let logs = logs.clone();
                move || finish_pgbench(steady, &logs)
            })
            .await
            .unwrap();

        // The same load with handoffs: 3 s of load, then one handoff after another, 2 s apart.
        let bench = start_pgbench(&bins, &logs, port, clients, 3 + handoffs as u64 * 10 + 60);
        let pid = bench.id();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut windows = Vec::new();
        let mut phases: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut frozen = Vec::new();
        let started = Instant::now();
        for i in 0..handoffs {
            let profile = if i % 2 == 0 { "L2" } else { "L1" };
            let from = now_us();
            let report = cp
                .start_handoff(&db, profile)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap_or_else(|e| panic!("handoff {i} to {profile}: {e}"));
            let to = now_us();
            windows.push((from, to + 1_000_000));
            frozen.push(report.frozen_for);
            for (k, v) in &report.timings_ms {
                phases.entry(k.clone()).or_default().push(*v);
            }
            let rec = cp.database(&db).await.unwrap().record;
            let steps = |t: Option<spg_lifecycle_lib::timing::StepTimings>| {
                t.map(|t| {
                    t.steps
                        .iter()
                        .map(|s| format!("{}={}ms", s.step, s.ms))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
            };
            eprintln!(
                "handoff {i} -> {profile}: {:?}\n  switch: {}\n  stop of the writer: {}\n  standby: {}",
                report.timings_ms,
                steps(rec.last_handoff),
                steps(rec.last_stop),
                steps(rec.last_boot)
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let handoff_time = started.elapsed();
        // End pgbench now (SIGINT: it reports and writes its logs).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let (txs, errors) = tokio::task::spawn_blocking({
            let logs = logs.clone();
            move || finish_pgbench(bench, &logs)
        })
        .await
        .unwrap();

        let during: Vec<u64> = txs
            .iter()
            .filter(|t| windows.iter().any(|(a, b)| t.end_us >= *a && t.end_us <= *b))
            .map(|t| t.latency_us)
            .collect();
        let outside: Vec<u64> = txs
            .iter()
            .filter(|t| !windows.iter().any(|(a, b)| t.end_us >= *a && t.end_us <= *b))
            .map(|t| t.latency_us)
            .collect();
        let mut worst: Vec<u64> = windows
            .iter()
            .map(|(a, b)| {
                txs.iter()
                    .filter(|t| t.end_us >= *a && t.end_us <= *b)
                    .map(|t| t.latency_us)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!();
        println!("== handoff pause as clients see it ({clients} clients, TPC-B-like, scale 10, transaction pooling, TLS)");
        println!("{}", line("steady state", steady_txs.iter().map(|t| t.latency_us).collect()));
        println!("{}", line("between handoffs", outside));
        println!("{}", line("during handoffs", during));
        println!(
            "worst latency per handoff (ms): {:?}",
            worst.iter().map(|w| w / 1000).collect::<Vec<_>>()
        );
        worst.sort_unstable();
        println!(
            "client-visible pause: p50={:.0} ms  p99={:.0} ms  max={:.0} ms  (target: p99 < 500 ms)",
            pct(&worst, 0.50),
            pct(&worst, 0.99),
            pct(&worst, 1.0)
        );
        println!(
            "frozen (ms): {:?}",
            frozen.iter().map(|f| f.as_millis()).collect::<Vec<_>>()
        );
        for (phase, mut v) in phases {
            v.sort_unstable();
            let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
            println!(
                "phase {phase:<12} mean={mean:>7.0} ms  p50={:>6} ms  max={:>6} ms",
                v[v.len() / 2],
                v[v.len() - 1]
            );
        }
        println!(
            "{handoffs} handoffs in {handoff_time:?}; client errors: {} steady, {} with handoffs",
            steady_errors.len(),
            errors.len()
        );
        for e in errors.iter().chain(&steady_errors).take(10) {
            println!("  {e}");
        }
        platform.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

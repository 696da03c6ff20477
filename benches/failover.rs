//! Failover as clients see it, over the multi-host topology (`spg::testing::topology`: a state
//! PostgreSQL, two control planes, two gateways, three safekeepers, a pageserver and an
//! S3-protocol server, each on its own 127.0.0.x): the longest time without an acknowledged
//! insert after a `kill -9` of the owning control plane (its host's computes die with it), and
//! of a gateway (for the writer whose DSN lists that gateway first; clients retry as the README
//! advises: reconnect after 100 ms, a DSN naming both gateways). Then cold starts (a stopped
//! database → the first query result) through the topology against `spg up` on this machine,
//! alternating in the same run.
//!
//! The daemons are the release binaries next to this benchmark's executable:
//! `cargo build --release -p spg-bins && cargo bench -p spg-benches --bench failover`
//! (kills: `SPG_BENCH_KILLS`, default 10; cold starts: `SPG_BENCH_COLD`, default 10).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use spg::testing::topology::{missing_ids, progress, tls_trusting, Programs, Topology, Writers};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let idx = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[idx.min(s.len() - 1)]
}

fn line(name: &str, samples: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name:<44} n={:<3} p50={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms",
        samples.len(),
        ms(pct(samples, 50.0)),
        ms(pct(samples, 99.0)),
        ms(pct(samples, 100.0)),
    )
}

/// Connect through `dsn` and run one query: a cold start when the database is stopped.
async fn first_query(dsn: &str, tls: &tokio_postgres_rustls::MakeRustlsConnect) -> Duration {
    let t0 = Instant::now();
    let (c, conn) = tokio_postgres::connect(dsn, tls.clone())
        .await
        .expect("connect");
    tokio::spawn(conn);
    c.query_one("SELECT 1", &[]).await.expect("query");
    t0.elapsed()
}

/// `spg up` on 127.0.0.1 in `dir`: its guard, its DSN and an API client.
fn spg_up(
    spg: &std::path::Path,
    dir: &std::path::Path,
) -> (
    spg::testing::procs::ChildGuard,
    String,
    spg_lifecycle_lib::api::ApiClient,
    PathBuf,
) {
    use spg::testing::topology::{port_on, wait_for_env};
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let data = dir.join("up");
    let child = std::process::Command::new(spg)
        .args(["up", "--no-cgroups", "--idle-timeout", "10m", "--data-dir"])
        .arg(&data)
        .args(["--gateway-listen", &format!("127.0.0.1:{}", port_on(lo))])
        .args(["--api-listen", &format!("127.0.0.1:{}", port_on(lo))])
        .env("SPG_LOG", "warn")
        .env_remove("SPG_API_KEY")
        .env_remove("SPG_CONFIG")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spg up");
    let mut guard = spg::testing::procs::ChildGuard {
        child: Some(child),
        dir: data.clone(),
    };
    let env = wait_for_env(&data.join("env"), "SPG_DSN", &mut guard);
    let ca = PathBuf::from(env.get("SPG_API_CA").unwrap());
    let api = spg_lifecycle_lib::api::ApiClient::new(
        env.get("SPG_API_URL").unwrap(),
        env.get("SPG_API_KEY").unwrap(),
        &std::fs::read(&ca).unwrap(),
    )
    .unwrap();
    (guard, env.get("SPG_DSN").unwrap().to_string(), api, ca)
}

/// Stop `db` and wait until it stays stopped (a connection attempt under way may wake it).
async fn stop_quietly(api: &spg_lifecycle_lib::api::ApiClient, db: &str) {
    loop {
        api.stop_database(db).await.expect("stop");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if api.database(db).await.expect("status").state.as_str() == "stopped" {
            return;
        }
    }
}

fn main() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let programs = Programs::in_dir(&dir);
    let spg_exe = dir.join("spg");
    if !programs.exist() || !spg_exe.is_file() {
        eprintln!(
            "the daemons are not built in {}: run `cargo build --release -p spg-bins` first",
            dir.display()
        );
        std::process::exit(1);
    }
    let kills = env_usize("SPG_BENCH_KILLS", 10);
    let colds = env_usize("SPG_BENCH_COLD", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tmp = std::env::temp_dir().join(format!("spg-bench-failover-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut topo = Topology::start(&programs, &tmp).await;
        let tls = topo.tls();
        {
            let (c, conn) = tokio_postgres::connect(&topo.dsn, tls.clone())
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
                .await
                .unwrap();
        }
        let writers = Writers::start(&[&topo.dsn, &topo.dsn_reversed], &tls);
        progress(&writers.acks, 20, Duration::from_secs(60), "start").await;

        let mut cp_gaps = Vec::new();
        for i in 0..kills {
            let own = topo.owner().expect("an owner");
            let t0 = Instant::now();
            topo.cps[own].kill_9();
            progress(
                &writers.acks,
                10,
                Duration::from_secs(60),
                "control plane killed",
            )
            .await;
            let gap = writers.acks.lock().unwrap().longest_gap_after(t0);
            eprintln!("control plane kill {}: {gap:?}", i + 1);
            cp_gaps.push(gap);
            topo.cps[own].start();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut gw_gaps = Vec::new();
        for i in 0..kills {
            // Writer 0 lists gw1 first; writer 1 lists gw2 first.
            let (g, mine): (usize, fn(i32) -> bool) = if i % 2 == 0 {
                (0, |id| id < 1_000_000)
            } else {
                (1, |id| id >= 1_000_000)
            };
            let t0 = Instant::now();
            topo.gws[g].kill_9();
            progress(&writers.acks, 20, Duration::from_secs(30), "gateway killed").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let gap = writers.acks.lock().unwrap().longest_gap_of(t0, mine);
            eprintln!("gateway kill {}: {gap:?}", i + 1);
            gw_gaps.push(gap);
            topo.gws[g].start();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let acked = writers.finish().await;
        let lost = missing_ids(&topo.dsn, &tls, &acked).await.len();

        // Cold starts: the topology against `spg up`, alternating.
        let (up, up_dsn, up_api, up_ca) = spg_up(&spg_exe, &tmp);
        let up_tls = tls_trusting(&std::fs::read(&up_ca).unwrap());
        first_query(&up_dsn, &up_tls).await;
        let (mut topo_cold, mut up_cold) = (Vec::new(), Vec::new());
        for _ in 0..colds {
            stop_quietly(&topo.api, "shop").await;
            topo_cold.push(first_query(&topo.dsn, &tls).await);
            stop_quietly(&up_api, "appdb").await;
            up_cold.push(first_query(&up_dsn, &up_tls).await);
        }

        println!();
        println!("failover (longest time without an acknowledged insert after the kill)");
        println!(
            "{}",
            line("owning control plane kill -9 (target < 5 s)", &cp_gaps)
        );
        println!(
            "{}",
            line("gateway kill -9, its writer (target < 1 s)", &gw_gaps)
        );
        println!("acknowledged inserts {}, lost {lost}", acked.len());
        println!();
        println!("cold start: stopped database -> first query result");
        println!(
            "{}",
            line("topology (2 CP, 2 GW, 3 SK, PS, S3)", &topo_cold)
        );
        println!("{}", line("spg up (one process, same machine)", &up_cold));
        let ratio = pct(&topo_cold, 50.0).as_secs_f64() / pct(&up_cold, 50.0).as_secs_f64();
        println!("topology / spg up at p50: {ratio:.2}x (target <= 1.3x)");
        drop(topo);
        drop(up);
        spg::testing::procs::detach_mounts_under(&tmp);
        let _ = std::fs::remove_dir_all(&tmp);
    });
}

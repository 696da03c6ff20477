//! Cold start: a stopped database → the first query result through the gateway (TLS, SCRAM at
//! the gateway, wake, lazy mount of the image from the pageserver, compute start), for a ~10 MB
//! and a ~2 GB database alternating in one run, with the object bytes the pageserver served
//! before the first result. Anchors in the same run: the bare start of the same `postgres` on the
//! small database's image restored to a plain directory (process start → first query, no
//! platform), and the eager path for the large one (full restore, then start → first query).
//!
//! `cargo bench -p spg-benches --bench cold_start` (iterations: `SPG_BENCH_ITERATIONS`, default
//! 30; large rows `SPG_BENCH_LARGE_ROWS`, default 2,000,000 ≈ 2 GB; eager runs
//! `SPG_BENCH_EAGER_RUNS`, default 3).

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spg::platform::{Platform, PlatformConfig};
use spg_core::{ComputeState, DatabaseName, RoleName};
use spg_lifecycle_lib::os_user::RunAs;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::RoleSecret;
use spg_storage_lib::image::ImageStore;

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";

fn tls(ca: &std::path::Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    spg::testing::topology::tls_trusting(&std::fs::read(ca).unwrap())
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        spg::testing::stats::percentile(&self.samples, p)
    }

    fn line(&self, name: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mean = self.samples.iter().sum::<Duration>() / self.samples.len() as u32;
        format!(
            "{name:<34} n={:<3} p50={:>7.1} ms  p99={:>7.1} ms  mean={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
            self.samples.len(),
            ms(self.pct(50.0)),
            ms(self.pct(99.0)),
            ms(mean),
            ms(self.pct(0.0)),
            ms(self.pct(100.0)),
        )
    }
}

/// Start `postgres` on `data_dir` by hand and poll until a one-row query of database `db`
/// answers.
async fn bare_start_query(
    bins: &PgBinaries,
    run_as: &RunAs,
    data_dir: &std::path::Path,
    port: u16,
    db: &str,
    id: i64,
) -> Duration {
    let log_path = data_dir.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = tokio::process::Command::new(bins.exe("postgres"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-p", &port.to_string()])
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.try_clone().unwrap()))
        .kill_on_drop(true);
    if run_as.switch_user {
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let conninfo =
        format!("host=127.0.0.1 port={port} user={ROLE} password={PASSWORD} dbname={db}");
    let elapsed = loop {
        if let Ok((client, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            if client
                .query_one("SELECT v FROM t WHERE id = $1", &[&id])
                .await
                .is_ok()
            {
                break t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "bare postgres did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    child.wait().await.unwrap();
    elapsed
}

/// One database of the benchmark and its figures.
struct Bench {
    name: &'static str,
    rows: i64,
    runs: Stats,
    bytes: Vec<u64>,
    steps: Vec<Vec<(String, f64)>>,
}

/// Create `name` with role `ROLE` and a table `t (id, v, pad)` of `rows` rows of ~1 KB.
async fn create(
    cp: &spg_lifecycle_lib::ControlPlane,
    platform: &Platform,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    name: &str,
    rows: i64,
) -> String {
    let db = DatabaseName::new(name).unwrap();
    cp.create_database(db.clone()).await.unwrap();
    cp.create_role(
        &db,
        RoleName::new(ROLE).unwrap(),
        RoleSecret::Password(PASSWORD.into()),
    )
    .await
    .unwrap();
    let dsn = platform.dsn(ROLE, PASSWORD, name).unwrap();
    let (c, conn) = tokio_postgres::connect(&dsn, tls.clone()).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL)")
        .await
        .unwrap();
    let step = 100_000i64;
    let mut from = 1;
    while from <= rows {
        let to = (from + step - 1).min(rows);
        c.execute(
            "INSERT INTO t SELECT g, g % 1000, repeat(md5(g::text), 30) \
             FROM generate_series($1::bigint, $2::bigint) g",
            &[&from, &to],
        )
        .await
        .unwrap();
        from = to + 1;
    }
    let size: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("{name}: {rows} rows, {:.1} MB", size as f64 / 1e6);
    drop(c);
    cp.stop_database(&db).await.unwrap();
    dsn
}

fn main() {
    // The platform's computes run this binary as their restore_command.
    spg::wal_restore_if_invoked();
    if std::env::var_os("SPG_LOG").is_none() {
        std::env::set_var("SPG_LOG", "warn");
    }
    spg::init_logging();
    let iterations: usize = std::env::var("SPG_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let large_rows: i64 = std::env::var("SPG_BENCH_LARGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("spg-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = PlatformConfig::new(dir.join("data"));
        cfg.idle_timeout = Duration::from_secs(3600);
        // The small restore_command binary when built (`cargo build --release --bin
        // spg-wal-restore`), else this one (it answers `wal-restore` too).
        let exe = std::env::current_exe().unwrap();
        let small = exe
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("spg-wal-restore"))
            .filter(|p| p.is_file());
        eprintln!(
            "restore_command program: {}",
            small.as_ref().unwrap_or(&exe).display()
        );
        cfg.restore_program = Some(small.unwrap_or(exe));
        cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
        cfg.api_listen = ([127, 0, 0, 1], 0).into();
        cfg.pageserver_cache_bytes = 4 << 30;
        let platform = Platform::start(cfg).await.unwrap();
        let cp = platform.control_plane.clone();
        let tls = tls(&platform.ca_file);
        let served = {
            let ps = platform.pageserver.clone().expect("an in-process pageserver");
            move || ps.metrics().bytes_served.get()
        };

        // ~10 MB and ~2 GB (first starts run initdb: not cold starts of existing databases).
        let mut benches = vec![
            Bench { name: "small", rows: 9_000, runs: Stats { samples: vec![] }, bytes: vec![], steps: vec![] },
            Bench { name: "large", rows: large_rows, runs: Stats { samples: vec![] }, bytes: vec![], steps: vec![] },
        ];
        let mut dsns = Vec::new();
        for b in &benches {
            dsns.push(create(&cp, &platform, &tls, b.name, b.rows).await);
        }

        let bins = PgBinaries::locate(None).unwrap();
        let run_as = RunAs::detect().unwrap();
        let images = ImageStore::new(
            Arc::new(spg_storage_lib::DurableLocalStore::open(dir.join("data/objects")).unwrap()),
            "images",
        );
        // Anchors: each database's newest image restored to a plain local directory, started
        // by hand (bare); and for the large one, the whole eager path (restore, then start).
        let restore = |name: &'static str, to: std::path::PathBuf| {
            let images = images.clone();
            let run_as = run_as.clone();
            async move {
                let db = DatabaseName::new(name).unwrap();
                let latest = images.latest(&db, &[]).await.unwrap().expect("an image");
                let manifest = images.manifest(&db, &latest).await.unwrap();
                let _ = std::fs::remove_dir_all(&to);
                std::fs::create_dir_all(&to).unwrap();
                let t0 = Instant::now();
                images.restore(&manifest, &to).await.unwrap();
                std::fs::create_dir_all(to.join("pg_wal/archive_status")).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o700)).unwrap();
                run_as.chown_tree(&to).unwrap();
                t0.elapsed()
            }
        };
        let small_dir = dir.join("bare-small");
        restore("small", small_dir.clone()).await;
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut bare_runs = Stats { samples: vec![] };
        for i in 0..iterations {
            for (b, dsn) in benches.iter_mut().zip(&dsns) {
                let db = DatabaseName::new(b.name).unwrap();
                assert_eq!(cp.database(&db).await.unwrap().record.state, ComputeState::Stopped);
                let id = 1 + (i as i64 * 7919) % b.rows;
                let before = served();
                let t0 = Instant::now();
                let (c, conn) = tokio_postgres::connect(dsn, tls.clone()).await.unwrap();
                tokio::spawn(conn);
                let v: i32 = c.query_one("SELECT v FROM t WHERE id = $1", &[&id]).await.unwrap().get(0);
                b.runs.samples.push(t0.elapsed());
                b.bytes.push(served() - before);
                assert_eq!(i64::from(v), id % 1000);
                drop(c);
                let st = cp.database(&db).await.unwrap();
                b.steps.push(
                    st.record.last_boot.unwrap().steps.into_iter().map(|s| (s.step, s.ms)).collect(),
                );
                cp.stop_database(&db).await.unwrap();
            }
            let t = bare_start_query(&bins, &run_as, &small_dir, port(), "small", 1).await;
            bare_runs.samples.push(t);
            if i == 0 {
                eprintln!("running {iterations} iterations...");
            }
        }
        // The eager path for the large database: full restore, then start and query.
        let eager_runs = std::env::var("SPG_BENCH_EAGER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
        let mut eager = Stats { samples: vec![] };
        let mut eager_restore = Stats { samples: vec![] };
        let large_dir = dir.join("eager-large");
        for _ in 0..eager_runs {
            let r = restore("large", large_dir.clone()).await;
            let s = bare_start_query(&bins, &run_as, &large_dir, port(), "large", 7919).await;
            eager_restore.samples.push(r);
            eager.samples.push(r + s);
        }
        let _ = std::fs::remove_dir_all(&large_dir);

        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!();
        println!("cold start, stopped -> first query result through the gateway ({iterations} alternating runs, one machine)");
        for b in &benches {
            println!("{}", b.runs.line(&format!("SPG {} (lazy)", b.name)));
        }
        println!("{}", bare_runs.line("bare postgres start small -> query"));
        println!("{}", eager.line("eager: restore large + start -> query"));
        println!("{}", eager_restore.line("  of which the restore"));
        let (small, large) = (&benches[0], &benches[1]);
        println!(
            "large/small at p50: {:.2}x   at p99: {:.2}x",
            ms(large.runs.pct(50.0)) / ms(small.runs.pct(50.0)),
            ms(large.runs.pct(99.0)) / ms(small.runs.pct(99.0)),
        );
        for b in &benches {
            let mut v = b.bytes.clone();
            v.sort();
            println!(
                "bytes fetched before the first result, {}: p50 {:.2} MB  max {:.2} MB",
                b.name,
                v[v.len() / 2] as f64 / 1e6,
                v[v.len() - 1] as f64 / 1e6
            );
            println!(
                "compute boot steps {}, median ms: {}",
                b.name,
                spg::testing::stats::step_medians(&b.steps)
            );
        }
        platform.shutdown().await;
        if std::env::var("SPG_BENCH_KEEP").is_ok() {
            eprintln!("kept {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

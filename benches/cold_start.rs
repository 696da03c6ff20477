//! Cold start: a stopped database → the first query result through the gateway (TLS, SCRAM at
//! the gateway, wake, compute start, key passthrough), next to the bare start of the same
//! `postgres` on the same data directory (process start → first query, no platform), alternating
//! in one run.
//!
//! `cargo bench -p spg-benches --bench cold_start` (iterations: `SPG_BENCH_ITERATIONS`, default 30).

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

const DB: &str = "bench";
const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";

fn tls(ca: &std::path::Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(cfg)
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        let idx = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
        s[idx.min(s.len() - 1)]
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

/// Start `postgres` on `data_dir` by hand and poll until a query answers.
async fn bare_start(
    bins: &PgBinaries,
    run_as: &RunAs,
    data_dir: &std::path::Path,
    port: u16,
) -> Duration {
    let mut cmd = tokio::process::Command::new(bins.exe("postgres"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-p", &port.to_string()])
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if run_as.switch_user {
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let conninfo =
        format!("host=127.0.0.1 port={port} user={ROLE} password={PASSWORD} dbname={DB}");
    let elapsed = loop {
        if let Ok((client, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            if client.simple_query("SELECT 1").await.is_ok() {
                break t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "bare postgres did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    child.wait().await.unwrap();
    elapsed
}

fn main() {
    // The platform's computes run this binary as their restore_command.
    spg::wal_restore_if_invoked();
    let iterations: usize = std::env::var("SPG_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
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
        cfg.restore_program = Some(std::env::current_exe().unwrap());
        cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
        cfg.api_listen = ([127, 0, 0, 1], 0).into();
        let platform = Platform::start(cfg).await.unwrap();
        let cp = platform.control_plane.clone();
        let db = DatabaseName::new(DB).unwrap();
        cp.create_database(db.clone()).await.unwrap();
        cp.create_role(&db, RoleName::new(ROLE).unwrap(), RoleSecret::Password(PASSWORD.into()))
            .await
            .unwrap();
        let dsn = platform.dsn(ROLE, PASSWORD, DB).unwrap();
        let tls = tls(&platform.ca_file);

        // First start runs initdb: not a cold start of an existing database.
        let (c, conn) = tokio_postgres::connect(&dsn, tls.clone()).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 10000) AS v").await.unwrap();
        drop(c);
        cp.stop_database(&db).await.unwrap();

        let bins = PgBinaries::locate(None).unwrap();
        let run_as = RunAs::detect().unwrap();
        // The anchor: the same database's newest image, restored to a plain local directory.
        let images = ImageStore::new(
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.join("data/objects")).unwrap()),
            "images",
        );
        let latest = images.latest(&db, &[]).await.unwrap().expect("an image");
        let manifest = images.manifest(&db, &latest).await.unwrap();
        let data_dir = dir.join("bare-pgdata");
        std::fs::create_dir_all(&data_dir).unwrap();
        images.restore(&manifest, &data_dir).await.unwrap();
        std::fs::create_dir_all(data_dir.join("pg_wal/archive_status")).unwrap();
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        run_as.chown_tree(&data_dir).unwrap();
        let mut platform_runs = Stats { samples: vec![] };
        let mut bare_runs = Stats { samples: vec![] };
        let mut steps: Vec<Vec<(String, f64)>> = vec![];
        for i in 0..iterations {
            assert_eq!(cp.database(&db).await.unwrap().record.state, ComputeState::Stopped);
            let t0 = Instant::now();
            let (c, conn) = tokio_postgres::connect(&dsn, tls.clone()).await.unwrap();
            tokio::spawn(conn);
            let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
            platform_runs.samples.push(t0.elapsed());
            assert_eq!(n, 10000);
            drop(c);
            let st = cp.database(&db).await.unwrap();
            steps.push(
                st.record
                    .last_boot
                    .unwrap()
                    .steps
                    .into_iter()
                    .map(|s| (s.step, s.ms))
                    .collect(),
            );
            cp.stop_database(&db).await.unwrap();

            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            bare_runs.samples.push(bare_start(&bins, &run_as, &data_dir, port).await);
            if i == 0 {
                eprintln!("running {iterations} iterations...");
            }
        }
        println!();
        println!("cold start, stopped -> first query result ({iterations} alternating runs, one machine)");
        println!("{}", platform_runs.line("SPG (gateway: TLS+SCRAM+wake)"));
        println!("{}", bare_runs.line("bare postgres start -> query"));
        println!(
            "overhead at p50: {:+.1} ms",
            (platform_runs.pct(50.0).as_secs_f64() - bare_runs.pct(50.0).as_secs_f64()) * 1000.0
        );
        let mut names: Vec<String> = steps[0].iter().map(|(n, _)| n.clone()).collect();
        names.dedup();
        let medians: Vec<String> = names
            .iter()
            .map(|n| {
                let mut v: Vec<f64> = steps
                    .iter()
                    .filter_map(|s| s.iter().find(|(k, _)| k == n).map(|(_, ms)| *ms))
                    .collect();
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                format!("{n}={:.1}", v[v.len() / 2])
            })
            .collect();
        println!("compute boot steps, median ms: {}", medians.join(" "));
        platform.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

//! Branches and new databases: the time and the new object bytes to make a branch of a ~10 MB
//! and a ~2 GB database (stopped, so its newest image is its state), and the branch's first
//! wake through the gateway; a brand-new database's first wake (its image is the template's).
//! Anchors in the same run: a re-wake of the same parent (stop, then the first query through the
//! gateway), and a re-wake of an existing small database.
//!
//! `cargo bench -p spg-benches --bench branch` (iterations: `SPG_BENCH_ITERATIONS`, default 5;
//! large rows `SPG_BENCH_LARGE_ROWS`, default 2,000,000 ≈ 2 GB).

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spg::platform::{Platform, PlatformConfig};
use spg_core::{ComputeState, DatabaseName, RoleName};
use spg_lifecycle_lib::branching::BranchPoint;
use spg_lifecycle_lib::controlplane::BranchPasswords;
use spg_lifecycle_lib::{ControlPlane, RoleSecret};
use spg_storage_lib::image::{ChunkHash, ImageStore, Manifest};

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";

type Tls = tokio_postgres_rustls::MakeRustlsConnect;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Create `name` with role `ROLE` and a table `t` of `rows` rows of ~1 KB, then stop it.
async fn create(cp: &ControlPlane, platform: &Platform, tls: &Tls, name: &str, rows: i64) {
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
    let mut from = 1;
    while from <= rows {
        let to = (from + 99_999).min(rows);
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
}

/// Connect to `db` through the gateway and run one query; the time it took.
async fn first_query(platform: &Platform, tls: &Tls, db: &str, password: &str) -> Duration {
    let dsn = platform.dsn(ROLE, password, db).unwrap();
    let t0 = Instant::now();
    let (c, conn) = tokio_postgres::connect(&dsn, tls.clone()).await.unwrap();
    tokio::spawn(conn);
    c.query_one("SELECT 1", &[]).await.unwrap();
    t0.elapsed()
}

/// Every chunk `m` names, by whether it is of a WAL file.
async fn chunks(images: &ImageStore, m: &Manifest) -> (HashSet<ChunkHash>, HashSet<ChunkHash>) {
    let (mut data, mut wal) = (HashSet::new(), HashSet::new());
    for f in &m.files {
        let into = if f.path.starts_with("pg_wal/") {
            &mut wal
        } else {
            &mut data
        };
        into.extend(images.chunks_of(m, f).await.unwrap().into_iter().flatten());
    }
    (data, wal)
}

/// Bytes of the chunks `branch`'s newest image names and `parent`'s newest image does not:
/// (outside `pg_wal`, of its WAL segment).
async fn new_bytes(images: &ImageStore, parent: &str, branch: &str) -> (u64, u64) {
    let newest = |name: &str| {
        let images = images.clone();
        let db = DatabaseName::new(name).unwrap();
        async move {
            let id = images.latest(&db, &[]).await.unwrap().unwrap();
            images.manifest(&db, &id).await.unwrap()
        }
    };
    let (p, b) = (newest(parent).await, newest(branch).await);
    let (pd, pw) = chunks(images, &p).await;
    let (bd, bw) = chunks(images, &b).await;
    let known: HashSet<_> = pd.union(&pw).copied().collect();
    let mut sizes = (0, 0);
    for (set, out) in [(&bd, &mut sizes.0), (&bw, &mut sizes.1)] {
        for h in set.difference(&known) {
            *out += images.chunk(&b.database, h).await.unwrap().len() as u64;
        }
    }
    sizes
}

/// The last boot's step timings of `db` (ms), as the control plane recorded them.
async fn boot_steps(
    cp: &spg_lifecycle_lib::controlplane::ControlPlane,
    db: &DatabaseName,
) -> Vec<(String, f64)> {
    let rec = cp.database(db).await.unwrap().record;
    rec.last_boot
        .map(|b| b.steps.into_iter().map(|s| (s.step, s.ms)).collect())
        .unwrap_or_default()
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
        .unwrap_or(5);
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
        cfg.restore_program = Some(std::env::current_exe().unwrap());
        cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
        cfg.api_listen = ([127, 0, 0, 1], 0).into();
        let platform = Platform::start(cfg).await.unwrap();
        let cp = platform.control_plane.clone();
        let tls = spg::testing::topology::tls_trusting(&std::fs::read(&platform.ca_file).unwrap());
        let images = ImageStore::new(
            Arc::new(spg_storage_lib::DurableLocalStore::open(dir.join("data/objects")).unwrap()),
            "images",
        );
        let parents = [("small", 9_000i64), ("large", large_rows)];
        for (name, rows) in parents {
            create(&cp, &platform, &tls, name, rows).await;
        }

        // (branch ms, data MB, WAL MB, branch first wake ms, parent re-wake ms) per parent.
        let mut rows: Vec<Vec<[f64; 5]>> = vec![Vec::new(); parents.len()];
        let (mut fresh, mut rewake) = (Vec::new(), Vec::new());
        let (mut fresh_steps, mut rewake_steps) = (Vec::new(), Vec::new());
        for i in 0..iterations {
            for (k, (parent, _)) in parents.iter().enumerate() {
                let pdb = DatabaseName::new(*parent).unwrap();
                assert_eq!(
                    cp.database(&pdb).await.unwrap().record.state,
                    ComputeState::Stopped
                );
                let name = format!("{parent}_b{i}");
                let t0 = Instant::now();
                let made = cp
                    .branch_database(
                        DatabaseName::new(name.as_str()).unwrap(),
                        &pdb,
                        BranchPoint::Newest,
                        BranchPasswords::Keep,
                    )
                    .await
                    .unwrap();
                let took = t0.elapsed();
                let (data, wal) = new_bytes(&images, parent, &name).await;
                assert!(made.bytes_written >= data);
                let wake = first_query(&platform, &tls, &name, PASSWORD).await;
                cp.stop_database(&DatabaseName::new(name.as_str()).unwrap())
                    .await
                    .unwrap();
                let again = first_query(&platform, &tls, parent, PASSWORD).await;
                cp.stop_database(&pdb).await.unwrap();
                rows[k].push([
                    ms(took),
                    data as f64 / 1e6,
                    wal as f64 / 1e6,
                    ms(wake),
                    ms(again),
                ]);
            }
            // A brand-new database's first wake, against a re-wake of an existing one.
            let name = format!("fresh{i}");
            let db = DatabaseName::new(name.as_str()).unwrap();
            cp.create_database(db.clone()).await.unwrap();
            cp.create_role(
                &db,
                RoleName::new(ROLE).unwrap(),
                RoleSecret::Password(PASSWORD.into()),
            )
            .await
            .unwrap();
            fresh.push(ms(first_query(&platform, &tls, &name, PASSWORD).await));
            fresh_steps.push(boot_steps(&cp, &db).await);
            cp.stop_database(&db).await.unwrap();
            rewake.push(ms(first_query(&platform, &tls, &name, PASSWORD).await));
            rewake_steps.push(boot_steps(&cp, &db).await);
            cp.stop_database(&db).await.unwrap();
            eprintln!("iteration {} of {iterations} done", i + 1);
        }

        println!();
        println!("branches of a stopped database, {iterations} per size, medians (one machine)");
        println!(
            "{:<8} {:>10} {:>14} {:>13} {:>19} {:>16} {:>7}",
            "parent",
            "branch ms",
            "new data MB",
            "new WAL MB",
            "branch 1st wake ms",
            "parent rewake ms",
            "ratio"
        );
        for (k, (parent, _)) in parents.iter().enumerate() {
            let col = |c: usize| median(&rows[k].iter().map(|r| r[c]).collect::<Vec<_>>());
            println!(
                "{:<8} {:>10.1} {:>14.3} {:>13.2} {:>19.1} {:>16.1} {:>7.2}",
                parent,
                col(0),
                col(1),
                col(2),
                col(3),
                col(4),
                col(3) / col(4)
            );
        }
        println!(
            "new database: first wake p50 {:.1} ms, re-wake p50 {:.1} ms, ratio {:.2}",
            median(&fresh),
            median(&rewake),
            median(&fresh) / median(&rewake)
        );
        // Where the difference lies: the compute's boot steps, medians.
        let mut names: Vec<String> = Vec::new();
        for steps in fresh_steps.iter().chain(&rewake_steps) {
            for (n, _) in steps {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        let step_median = |runs: &[Vec<(String, f64)>], n: &str| {
            median(
                &runs
                    .iter()
                    .filter_map(|r| r.iter().find(|(k, _)| k == n).map(|(_, v)| *v))
                    .collect::<Vec<_>>(),
            )
        };
        println!("boot steps of the new database, medians: first wake ms / re-wake ms");
        for n in &names {
            println!(
                "  {n:<10} {:>8.1} {:>8.1}",
                step_median(&fresh_steps, n),
                step_median(&rewake_steps, n)
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

//! Safekeepers against a real PostgreSQL primary: streaming with quorum commit, commits waiting
//! (not failing) without a quorum, following a promotion onto a new timeline, and the WAL on the
//! safekeepers byte-identical to the primary's pg_wal.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, postgres_processes_under, reachable_tempdir};
use spg_core::{Generation, Lsn};
use spg_lifecycle_lib::compute::process::PostgresProcess;
use spg_lifecycle_lib::os_user::RunAs;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_storage_lib::safekeeper::file::{segment_file_name, FileWalStore, DEFAULT_SEGMENT_SIZE};
use spg_storage_lib::safekeeper::stream::{
    follow_primary, lock, NoObserver, PrimaryConn, SharedSafekeeper, StreamEnd,
};
use spg_storage_lib::safekeeper::{timeline_of, Safekeeper};
use tokio::sync::watch;

const REPL_PASSWORD: &str = "repl-secret-1";

/// A primary that is killed, with every process under its directory, when dropped.
struct Primary {
    proc: Option<PostgresProcess>,
    dir: PathBuf,
    port: u16,
    bins: PgBinaries,
    run_as: RunAs,
}

impl Drop for Primary {
    fn drop(&mut self) {
        drop(self.proc.take());
        for pid in postgres_processes_under(&self.dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Primary {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    async fn create(dir: &Path) -> Primary {
        let bins = PgBinaries::locate(None).unwrap();
        let run_as = RunAs::detect().unwrap();
        let data = dir.join("data");
        let sock = dir.join("sock");
        for d in [&data, &sock] {
            std::fs::create_dir_all(d).unwrap();
            run_as.chown(d).unwrap();
        }
        let mut cmd = std::process::Command::new(bins.exe("initdb"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["--no-locale", "-E", "UTF8"])
            .env("LC_ALL", "C");
        if run_as.switch_user {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nwal_sender_timeout = '10s'\n\
             synchronous_commit = on\nsynchronous_standby_names = 'ANY 2 (sk1, sk2, sk3)'\n\
             fsync = on\nshared_buffers = '16MB'\n",
            sock.display()
        );
        let path = data.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&path).unwrap();
        all.push_str(&conf);
        std::fs::write(&path, all).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all postgres trust\nhost replication spg_replicator 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let mut p = Primary {
            proc: None,
            dir: dir.to_path_buf(),
            port,
            bins,
            run_as,
        };
        p.start().await;
        let c = p.client().await;
        // Local commit only: no safekeeper is streaming yet.
        c.batch_execute(&format!(
            "SET synchronous_commit = local; CREATE ROLE spg_replicator REPLICATION LOGIN PASSWORD '{REPL_PASSWORD}'; \
             CREATE TABLE t (id int primary key, pad text)"
        ))
        .await
        .unwrap();
        p
    }

    async fn start(&mut self) {
        let mut proc = PostgresProcess::spawn(
            &self.bins,
            &self.run_as,
            &self.data(),
            &self.dir.join("pg.log"),
        )
        .unwrap();
        proc.wait_ready(Duration::from_secs(30)).await.unwrap();
        self.proc = Some(proc);
    }

    async fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            let (_, killed) = p.stop(Duration::from_secs(30)).await;
            assert!(!killed, "postgres needed a kill to stop");
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.join("sock").display(),
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        c
    }
}

struct Sk {
    name: String,
    dir: PathBuf,
    shared: SharedSafekeeper<FileWalStore>,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sk {
    fn open(root: &Path, name: &str) -> Sk {
        let dir = root.join(name);
        let store = FileWalStore::open(&dir, DEFAULT_SEGMENT_SIZE).unwrap();
        Sk {
            name: name.into(),
            dir,
            shared: Arc::new(Mutex::new(Safekeeper::open(store).unwrap())),
            stop: None,
            task: None,
        }
    }

    /// Stream from the primary, reconnecting after errors, until stopped or fenced.
    fn run(&mut self, port: u16, g: Generation) {
        let (tx, mut rx) = watch::channel(false);
        let shared = Arc::clone(&self.shared);
        let conn = PrimaryConn {
            host: "127.0.0.1".into(),
            port,
            user: "spg_replicator".into(),
            password: REPL_PASSWORD.into(),
            application_name: self.name.clone(),
        };
        self.task = Some(tokio::spawn(async move {
            loop {
                match follow_primary(
                    &shared,
                    g,
                    &conn,
                    DEFAULT_SEGMENT_SIZE,
                    Arc::new(NoObserver),
                    &mut rx,
                )
                .await
                {
                    Ok(StreamEnd::Stopped) | Ok(StreamEnd::Fenced { .. }) => return,
                    Err(e) => {
                        eprintln!("{}: {e}", conn.application_name);
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        }));
        self.stop = Some(tx);
    }

    async fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    fn flush(&self) -> Lsn {
        lock(&self.shared).log().flush
    }
}

async fn wal_flush_lsn(c: &tokio_postgres::Client) -> Lsn {
    let row = c
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

async fn insert(c: &tokio_postgres::Client, from: i32, n: i32) {
    c.execute(
        "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series($1::int, $2::int) g",
        &[&from, &(from + n - 1)],
    )
    .await
    .unwrap();
}

/// Every byte a safekeeper holds equals the primary's pg_wal file at the same place.
fn assert_same_bytes(sk: &Sk, primary: &Primary) {
    let s = lock(&sk.shared);
    let log = s.log().clone();
    let seg = DEFAULT_SEGMENT_SIZE;
    let mut lsn = log.start.0;
    while lsn < log.flush.0 {
        let segno = lsn / seg;
        let tli = log.history.tli_at(Lsn(lsn)).unwrap();
        let end = ((segno + 1) * seg).min(log.flush.0);
        // The primary names the segment by the newest timeline in it.
        let newest = log.history.tli_at(Lsn(end - 1)).unwrap();
        let file = primary
            .data()
            .join("pg_wal")
            .join(segment_file_name(newest, segno, seg));
        let pg = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ours = s.read(Lsn(lsn), (end - lsn) as usize).unwrap();
        let off = (lsn % seg) as usize;
        assert!(
            pg[off..off + ours.len()] == ours[..],
            "{}: WAL differs from the primary in segment {segno} (timeline {tli})",
            sk.name
        );
        lsn = end;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_waits_without_quorum_and_follows_a_promotion() {
    let tmp = reachable_tempdir();
    let mut primary = Primary::create(tmp.path()).await;
    let sk_root = tmp.path().join("safekeepers");
    let mut sks: Vec<Sk> = ["sk1", "sk2", "sk3"]
        .iter()
        .map(|n| Sk::open(&sk_root, n))
        .collect();
    let g1 = Generation(1);
    for sk in &mut sks {
        sk.run(primary.port, g1);
    }

    // Quorum commit works with all three.
    let c = primary.client().await;
    tokio::time::timeout(Duration::from_secs(30), insert(&c, 1, 1000))
        .await
        .expect("quorum commit with three safekeepers");
    let committed = wal_flush_lsn(&c).await;
    let acked = sks.iter().filter(|s| s.flush() >= committed).count();
    assert!(
        acked >= 2,
        "a commit returned with only {acked} safekeepers flushed past it"
    );

    // Two safekeepers down: a commit waits, and does not fail.
    sks[1].halt().await;
    sks[2].halt().await;
    let c2 = primary.client().await;
    let waiting = tokio::spawn(async move {
        insert(&c2, 2001, 10).await;
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "commit returned without a quorum");
    // One comes back: the commit completes.
    sks[1].run(primary.port, g1);
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("commit completes once a quorum is back")
        .unwrap();
    sks[2].run(primary.port, g1);
    insert(&c, 3001, 100).await;

    // Clean shutdown: the walsenders hand the shutdown checkpoint to the safekeepers first.
    drop(c);
    primary.stop().await;
    for sk in &sks {
        assert_same_bytes(sk, &primary);
    }

    // Promote onto the timeline of generation 2 (as a compute agent does at every start) and
    // have the safekeepers follow it across the switch.
    let tli2 = timeline_of(Generation(2));
    std::fs::write(primary.data().join("recovery.signal"), "").unwrap();
    let arch = tmp.path().join("arch");
    std::fs::create_dir_all(&arch).unwrap();
    for t in 2..tli2.0 {
        std::fs::write(
            arch.join(format!("{t:08X}.history")),
            "1\t0/0\tplaceholder\n",
        )
        .unwrap();
    }
    primary.run_as.chown_tree(&arch).unwrap();
    primary.run_as.chown_tree(&primary.data()).unwrap();
    let conf = primary.data().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "restore_command = 'cp {}/%f %p'\nrecovery_target_timeline = '1'\nhot_standby = off\n",
        arch.display()
    ));
    std::fs::write(&conf, text).unwrap();
    let g2 = Generation(2);
    for sk in &mut sks {
        sk.halt().await;
        lock(&sk.shared).elect(g2).unwrap();
    }
    primary.start().await;
    for sk in &mut sks {
        sk.run(primary.port, g2);
    }
    let c = primary.client().await;
    let tli: i32 = c
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    if tli as u32 != tli2.0 {
        let log = std::fs::read_to_string(tmp.path().join("pg.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "not promoted onto timeline {tli2} (on {tli}); log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    insert(&c, 5001, 500).await;
    let committed = wal_flush_lsn(&c).await;
    let acked = sks.iter().filter(|s| s.flush() >= committed).count();
    assert!(
        acked >= 2,
        "after promotion only {acked} safekeepers hold the commit"
    );
    // All three catch up across the timeline switch.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sks.iter().any(|s| s.flush() < committed) {
        assert!(
            std::time::Instant::now() < deadline,
            "a safekeeper did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    primary.stop().await;
    for sk in &mut sks {
        sk.halt().await;
        assert_eq!(lock(&sk.shared).log().history.last_tli(), Some(tli2));
        assert_same_bytes(sk, &primary);
    }
    // The safekeeper's files are named as pg_wal's.
    let names: Vec<String> = std::fs::read_dir(sks[0].dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("{:08X}", tli2.0))),
        "{names:?}"
    );
}

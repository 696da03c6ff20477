//! Test tooling (feature `testing`): a real, throwaway PostgreSQL server for tests of state
//! stores and topologies, and ([`fake`]) a scripted provisioner and gateway for tests of the
//! control plane's state machines without PostgreSQL, and ([`lease_conformance`]) the suite
//! every `Lease` passes.

pub mod fake;
pub mod lease_conformance;

use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};

use crate::os_user::RunAs;
use crate::pg_bin::PgBinaries;
use crate::LifecycleError;

/// A PostgreSQL server of its own (initdb'd into a fresh directory, listening on `host` at a
/// port the OS chose, SCRAM password for `postgres` over TCP), run as the `postgres` user when
/// the caller is root. Dropping it kills the server and removes its directory.
#[derive(Debug)]
pub struct TestPostgres {
    dir: PathBuf,
    host: IpAddr,
    port: u16,
    password: String,
    bins: PgBinaries,
    run_as: RunAs,
    child: Option<Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn setup(what: &str, e: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Setup(format!("{what}: {e}"))
}

impl TestPostgres {
    /// Create and start a server on `host` (e.g. `127.0.0.1`, or `127.0.0.5` for a "host" of
    /// its own in a multi-host test).
    pub fn start(host: IpAddr) -> Result<TestPostgres, LifecycleError> {
        let bins = PgBinaries::locate(None)?;
        let run_as = RunAs::detect()?;
        let dir = std::env::temp_dir().join(format!(
            "spg-test-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier run with the same pid is ours to replace.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| LifecycleError::io("create", &dir, e))?;
        run_as.chown(&dir)?;
        let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password).map_err(|e| LifecycleError::io("write", &pwfile, e))?;
        run_as.chown(&pwfile)?;
        let port = TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| setup("choosing a port", e))?
            .port();
        let mut pg = TestPostgres {
            dir,
            host,
            port,
            password,
            bins,
            run_as,
            child: None,
        };
        let mut initdb = Command::new(pg.bins.exe("initdb"));
        initdb
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth-local=trust"])
            .args(["--auth-host=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .args(["-E", "UTF8", "--no-sync", "--locale=C"])
            .env("LC_ALL", "C");
        pg.run(&mut initdb, "initdb")?;
        std::fs::remove_file(&pwfile).map_err(|e| LifecycleError::io("remove", &pwfile, e))?;
        pg.restart()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_user<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if self.run_as.switch_user {
            cmd.uid(self.run_as.uid).gid(self.run_as.gid);
        }
        cmd
    }

    fn run(&self, cmd: &mut Command, what: &str) -> Result<(), LifecycleError> {
        let out = self
            .as_user(cmd)
            .output()
            .map_err(|e| setup(&format!("running {what}"), e))?;
        if !out.status.success() {
            return Err(setup(what, String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        (self.host, self.port).into()
    }

    /// A URL for the superuser `postgres` on database `dbname` (password included).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres:{}@{}:{}/{dbname}",
            self.password, self.host, self.port
        )
    }

    /// Run SQL as the superuser in `dbname` (over the Unix socket), e.g. `CREATE DATABASE`;
    /// returns what it printed (unaligned, tuples only).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, LifecycleError> {
        let out = self
            .as_user(
                Command::new(self.bins.exe("psql"))
                    .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                    .arg(&self.dir)
                    .args(["-p", &self.port.to_string(), "-U", "postgres", "-d"])
                    .args([dbname, "-c", sql]),
            )
            .output()
            .map_err(|e| setup("running psql", e))?;
        if !out.status.success() {
            return Err(setup("psql", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Start the server again (same directory, address and port) after [`kill`](Self::kill)
    /// or [`stop`](Self::stop). Waits until it accepts connections.
    pub fn restart(&mut self) -> Result<(), LifecycleError> {
        self.kill();
        let t0 = Instant::now();
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("postgres.log"))
                .map_err(|e| setup("opening the log", e))?;
            let mut cmd = Command::new(self.bins.exe("postgres"));
            cmd.arg("-D")
                .arg(self.data())
                .args(["-p", &self.port.to_string()])
                .arg("-c")
                .arg(format!("listen_addresses={}", self.host))
                .arg("-c")
                .arg(format!("unix_socket_directories={}", self.dir.display()))
                .args(["-c", "max_connections=200"])
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let mut child = self
                .as_user(&mut cmd)
                .spawn()
                .map_err(|e| setup("starting postgres", e))?;
            let ready = loop {
                if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                    && self.accepts_queries()
                {
                    break true;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(setup("postgres did not start", self.log()));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if ready {
                self.child = Some(child);
                return Ok(());
            }
            // Exited at once: backends of a killed server may still hold its shared memory
            // for a moment. Try again until the deadline.
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(setup("postgres did not start", self.log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the server answers (not merely listens: it may be starting up or recovering).
    fn accepts_queries(&self) -> bool {
        Command::new(self.bins.exe("pg_isready"))
            .arg("-h")
            .arg(self.host.to_string())
            .args(["-p", &self.port.to_string(), "-t", "2", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `kill -9` the server, as when its host dies: the postmaster and every process it forked
    /// (a backend that outlives its postmaster for a moment would still answer a query), and
    /// wait until they are gone.
    pub fn kill(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(mut c) = self.child.take() {
            let children = children_of(c.id() as i32);
            let _ = c.kill();
            for pid in &children {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            let _ = c.wait();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5)
                && children
                    .iter()
                    .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Send `signal` to the postmaster and wait up to `patience` for it to exit.
    fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal, patience: Duration) {
        let Some(c) = self.child.as_mut() else {
            return;
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
        let t0 = Instant::now();
        while t0.elapsed() < patience {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server: fast shutdown, then `kill -9` if it does not exit.
    pub fn stop(&mut self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(10));
        self.kill();
    }

    /// The data directory's parent (logs, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate shutdown takes the backends down with the postmaster.
        self.signal_and_wait(nix::sys::signal::Signal::SIGQUIT, Duration::from_secs(5));
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

//! One `postgres` postmaster process: spawn as the compute user, wait until it accepts
//! connections, stop it (fast shutdown, then kill after a deadline). The process is killed when
//! its handle is dropped, so a failing test or a panicking caller never leaves it behind.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::os_user::RunAs;
use crate::pg_bin::PgBinaries;
use crate::LifecycleError;

/// How a compute ended: its postmaster's exit, or what its host reported (a compute process or a
/// pod that ended, with the reason).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if one killed it.
    pub signal: Option<i32>,
    /// What the host reported, when more is known than code and signal (e.g. `pod evicted:
    /// the node ran low on memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ExitInfo {
    /// Whether it exited with status 0 (a completed shutdown).
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.reason {
            return f.write_str(r);
        }
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            _ => write!(f, "unknown exit"),
        }
    }
}

/// Receiver that turns `Some` once the process has exited and been reaped.
pub type ExitWatch = watch::Receiver<Option<ExitInfo>>;

/// A running postmaster.
#[derive(Debug)]
pub struct PostgresProcess {
    pid: i32,
    data_dir: PathBuf,
    log_path: PathBuf,
    exit: ExitWatch,
}

/// util-linux's `setpriv`, present on every Debian-like system (util-linux is essential).
const SETPRIV: &str = "/usr/bin/setpriv";

impl PostgresProcess {
    /// Start `postgres -D data_dir` as `run_as`, appending its output to `log_path`.
    pub fn spawn(
        bins: &PgBinaries,
        run_as: &RunAs,
        data_dir: &Path,
        log_path: &Path,
    ) -> Result<PostgresProcess, LifecycleError> {
        let log = spg_core::fsmode::private_options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| LifecycleError::io("open", log_path, e))?;
        run_as.chown(log_path)?;
        let log_err = log
            .try_clone()
            .map_err(|e| LifecycleError::io("dup", log_path, e))?;
        let postgres = bins.exe("postgres");
        let setpriv = Path::new(SETPRIV);
        let mut cmd = if run_as.switch_user && setpriv.is_file() {
            // Switching user through setpriv lets the platform start postgres with
            // posix_spawn: forking the platform's large process to change uid before exec
            // costs milliseconds of every cold start.
            let mut c = tokio::process::Command::new(setpriv);
            c.arg(format!("--reuid={}", run_as.uid))
                .arg(format!("--regid={}", run_as.gid))
                .arg("--clear-groups")
                .arg("--")
                .arg(&postgres);
            c
        } else {
            let mut c = tokio::process::Command::new(&postgres);
            if run_as.switch_user {
                // std/tokio drop supplementary groups when switching uid as root.
                c.uid(run_as.uid).gid(run_as.gid);
            }
            c
        };
        cmd.arg("-D")
            .arg(data_dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Own process group: a Ctrl-C at the terminal reaches the platform, which then stops
            // its computes in order, instead of reaching postgres directly.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| LifecycleError::io("spawn", &postgres, e))?;
        let pid = child.id().ok_or_else(|| {
            LifecycleError::Setup("postgres exited before its pid was known".into())
        })? as i32;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: status.code(),
                        signal: status.signal(),
                        reason: None,
                    }
                }
                Err(_) => ExitInfo {
                    code: None,
                    signal: None,
                    reason: None,
                },
            };
            let _ = tx.send(Some(info));
        });
        Ok(PostgresProcess {
            pid,
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            exit: rx,
        })
    }

    /// Process id of the postmaster.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A receiver that reports the exit.
    pub fn exit_watch(&self) -> ExitWatch {
        self.exit.clone()
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Wait until the postmaster reports `ready` in `postmaster.pid` (it then accepts
    /// connections; with `hot_standby`, read-only ones while recovery finishes), it exits, or
    /// `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), StartFailure> {
        self.wait_status(timeout, &["ready"]).await
    }

    /// Wait until the postmaster reports one of `statuses` in `postmaster.pid` (`ready`:
    /// accepting connections; `standby`: replaying without hot standby), or fail as
    /// [`PostgresProcess::wait_ready`] does.
    pub async fn wait_status(
        &mut self,
        timeout: Duration,
        statuses: &[&str],
    ) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        let pid_file = self.data_dir.join("postmaster.pid");
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(exit) = self.exit.borrow().clone() {
                let log = self.log_tail();
                return Err(StartFailure::Exited { exit, log });
            }
            // The data directory may be a lazy mount: read it off the runtime's workers (on the
            // blocking pool, cheaper than `block_in_place` for a read made every few ms).
            if let Ok(text) = tokio::fs::read_to_string(&pid_file).await {
                if pid_file_status(&text, self.pid).is_some_and(|st| statuses.contains(&st)) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Timeout {
                    log: self.log_tail(),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.exit.changed() => {}
            }
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Fast shutdown (SIGINT): PostgreSQL disconnects sessions, writes a shutdown checkpoint and
    /// exits. If it has not exited after `timeout`, it is killed. Returns how it exited and
    /// whether it had to be killed.
    pub async fn stop(self, timeout: Duration) -> (ExitInfo, bool) {
        self.shut_down(Signal::SIGINT, timeout).await
    }

    /// Immediate shutdown (SIGQUIT: every process ends at once, no checkpoint), killed if it
    /// has not exited after `timeout`. For a writer whose log is already on the WAL quorum and
    /// whose successor does not read its data directory.
    pub async fn stop_immediately(self, timeout: Duration) -> (ExitInfo, bool) {
        self.shut_down(Signal::SIGQUIT, timeout).await
    }

    async fn shut_down(mut self, how: Signal, timeout: Duration) -> (ExitInfo, bool) {
        self.signal(how);
        if let Some(exit) = self.wait_exit(timeout).await {
            return (exit, false);
        }
        tracing::warn!(pid = self.pid, signal = ?how, "shutdown timed out; killing postgres");
        self.signal(Signal::SIGKILL);
        let exit = self
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or(ExitInfo {
                code: None,
                signal: Some(Signal::SIGKILL as i32),
                reason: None,
            });
        (exit, true)
    }

    /// Kill the postmaster at once (SIGKILL) and wait until it is reaped.
    pub async fn kill(mut self) -> ExitInfo {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or(ExitInfo {
                code: None,
                signal: Some(Signal::SIGKILL as i32),
                reason: None,
            })
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitInfo> {
        let mut exit = self.exit.clone();
        let waited = tokio::time::timeout(timeout, exit.wait_for(|e| e.is_some())).await;
        if let Ok(Ok(info)) = waited {
            return info.clone();
        }
        drop(waited);
        let current = self.exit.borrow().clone();
        current
    }

    /// Ask a standby to promote (after the `promote` file was written in its data directory),
    /// as `pg_ctl promote` does.
    pub fn signal_promote(&self) {
        self.signal(Signal::SIGUSR1);
    }

    fn signal(&self, sig: Signal) {
        if !self.has_exited() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path, 2048)
    }
}

impl Drop for PostgresProcess {
    fn drop(&mut self) {
        // The guard: whoever drops a live handle (an error path, a panicking test) kills it.
        if !self.has_exited() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// Why a start did not reach `ready`.
#[derive(Debug)]
pub enum StartFailure {
    /// postgres exited; `log` is the end of its log.
    Exited {
        /// How it exited.
        exit: ExitInfo,
        /// Tail of the log.
        log: String,
    },
    /// Not ready within the timeout.
    Timeout {
        /// Tail of the log.
        log: String,
    },
}

impl StartFailure {
    /// Whether the failure was a port already in use (so a retry on another port may work).
    pub fn is_port_in_use(&self) -> bool {
        match self {
            StartFailure::Exited { log, .. } => {
                log.contains("could not bind") || log.contains("Address already in use")
            }
            StartFailure::Timeout { .. } => false,
        }
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Exited { exit, log } => {
                write!(
                    f,
                    "postgres stopped during start ({exit}); log ends with: {log}"
                )
            }
            StartFailure::Timeout { log } => {
                write!(f, "postgres not ready in time; log ends with: {log}")
            }
        }
    }
}

/// Line 8 of `postmaster.pid`, the postmaster's status (`starting`, `standby`, `ready`,
/// `stopping`), when line 1 is `pid`: a stale file of an earlier run may also say `ready`.
fn pid_file_status(text: &str, pid: i32) -> Option<&str> {
    let mut lines = text.lines();
    let file_pid = lines.next().and_then(|l| l.trim().parse::<i32>().ok());
    lines
        .nth(6)
        .map(str::trim)
        .filter(|_| file_pid == Some(pid))
}

/// Up to `max` trailing bytes of a file, lossily decoded.
pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    // Start at a line boundary unless the whole file fit.
    let start = if len > max {
        buf.iter()
            .position(|b| *b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0)
    } else {
        0
    };
    String::from_utf8_lossy(&buf[start..]).trim().to_string()
}

/// A free TCP port on 127.0.0.1, chosen by the OS.
pub fn free_loopback_port() -> Result<u16, LifecycleError> {
    free_port(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A port free right now on `ip`.
pub fn free_port(ip: std::net::IpAddr) -> Result<u16, LifecycleError> {
    let at = format!("{ip}:0");
    let l = std::net::TcpListener::bind((ip, 0)).map_err(|e| LifecycleError::io("bind", &at, e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LifecycleError::io("local_addr", &at, e))
}

/// Whether a process with this pid is a `postgres` whose command line names `data_dir`.
pub fn is_postgres_on(pid: i32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_postgres = args
        .first()
        .is_some_and(|a| a.ends_with(b"postgres") || a.ends_with(b"postmaster"));
    let dir = data_dir.as_os_str().as_encoded_bytes();
    is_postgres && args.contains(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pid_file_status() {
        let ready = "4242\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  1234   5678\nready   \n";
        assert_eq!(pid_file_status(ready, 4242), Some("ready"));
        assert_eq!(pid_file_status(ready, 4243), None);
        assert_eq!(
            pid_file_status(&ready.replace("ready", "standby"), 4242),
            Some("standby")
        );
        assert_eq!(pid_file_status("4242\n", 4242), None);
        assert_eq!(pid_file_status("", 4242), None);
    }

    #[test]
    fn free_ports_are_not_5432() {
        let p = free_loopback_port().unwrap();
        assert_ne!(p, 0);
    }
}

//! The compute's directories: the data directory's owner, configuration files and sync marker
//! (files on a possibly lazily mounted image), the run and socket directories, `initdb`, and
//! postmasters an earlier run left behind.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spg_core::DatabaseName;
use tracing::warn;

use super::config::ADMIN_ROLE;
use super::process::is_postgres_on;
use super::{AgentConfig, PID_RECORD};
use crate::LifecycleError;

/// Run `f`, which touches a (possibly lazily mounted) data directory synchronously, where
/// blocking is allowed. A file operation there may wait for the FUSE server, which fetches the
/// chunk through this process's runtime: on a runtime worker, the fetch's connection task can
/// sit in that very worker's queue (its LIFO slot cannot be stolen) and the two wait on each
/// other until the fetch times out. `block_in_place` hands the worker's queue to another
/// thread first.
pub(crate) fn on_mount<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Stop a postmaster left behind by an earlier run of the platform for `db` (found through the
/// pid record in its run directory): fast shutdown, then kill after `timeout`.
pub async fn cleanup_stale(
    run_root: &Path,
    db: &DatabaseName,
    timeout: Duration,
) -> Result<bool, LifecycleError> {
    // The writer's record, and those of generations prepared as standbys (`g<N>/`).
    let db_dir = run_root.join(db.as_str());
    let mut records = vec![db_dir.join(PID_RECORD)];
    if let Ok(entries) = std::fs::read_dir(&db_dir) {
        records.extend(
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path().join(PID_RECORD)),
        );
    }
    let mut stopped = false;
    for record in records {
        stopped |= stop_recorded(&record, db, timeout).await;
    }
    Ok(stopped)
}

/// Stop the postmaster a pid record names, if it still runs on the recorded data directory;
/// remove the record.
pub(crate) async fn stop_recorded(record: &Path, db: &DatabaseName, timeout: Duration) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Ok(text) = std::fs::read_to_string(record) else {
        return false;
    };
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<i32>().ok());
    let data_dir = lines.next().map(PathBuf::from);
    let mut stopped = false;
    if let (Some(pid), Some(data_dir)) = (pid, data_dir) {
        if is_postgres_on(pid, &data_dir) {
            warn!(%db, pid, "stopping a compute left behind by an earlier run");
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
            let deadline = tokio::time::Instant::now() + timeout;
            while is_postgres_on(pid, &data_dir) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if is_postgres_on(pid, &data_dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                while is_postgres_on(pid, &data_dir) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            stopped = true;
        }
    }
    let _ = std::fs::remove_file(record);
    stopped
}

/// `exe` of the PostgreSQL binaries, run as the compute user in a clean environment (C locale,
/// UTC), killed if dropped.
fn pg_command(cfg: &AgentConfig, exe: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(cfg.bins.exe(exe));
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .kill_on_drop(true);
    if cfg.run_as.switch_user {
        cmd.uid(cfg.run_as.uid).gid(cfg.run_as.gid);
    }
    cmd
}

/// Run `cmd` (named `what` in errors), writing `stdin` to it; fails unless it exits 0.
async fn run_pg(mut cmd: tokio::process::Command, what: &str, stdin: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {what}: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(|e| format!("writing to {what}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("running {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Run `postgres --single` on the (stopped) cluster `data_dir` as the compute user, executing
/// `script` (one command per line) in database `postgres`; the cluster is shut down cleanly
/// after.
pub async fn single_user(cfg: &AgentConfig, data_dir: &Path, script: &str) -> Result<(), String> {
    let mut cmd = pg_command(cfg, "postgres");
    cmd.args(["--single", "-F", "-c", "exit_on_error=true", "-D"])
        .arg(data_dir)
        .arg("postgres");
    run_pg(cmd, "postgres --single", script).await
}

/// `initdb` of `data_dir` as the compute user (superuser `spg_admin`, UTF8, C locale, peer
/// authentication on the socket only).
pub async fn initdb(cfg: &AgentConfig, data_dir: &Path) -> Result<(), String> {
    let mut cmd = pg_command(cfg, "initdb");
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", ADMIN_ROLE, "-E", "UTF8", "--no-locale"])
        .args(["--auth-local=peer", "--auth-host=reject"]);
    run_pg(cmd, "initdb", "").await
}

/// Create `dir` with mode 0700; missing parents get the default mode so that the compute user
/// can reach it.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), LifecycleError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| LifecycleError::io("create dir", parent, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(LifecycleError::io("create dir", dir, e)),
    }
}

/// Write a file the compute user owns.
/// Before PostgreSQL runs without `fsync`: record this boot in the data directory (durably), so
/// that after an operating-system crash the directory is rebuilt rather than trusted
/// ([`spg_core::UNSYNCED_MARKER`]). `false` (keep `fsync` on) where the boot cannot be told.
pub(crate) fn mark_unsynced(data_dir: &Path) -> Result<bool, LifecycleError> {
    let Some(boot) = spg_core::boot_id() else {
        return Ok(false);
    };
    let path = data_dir.join(spg_core::UNSYNCED_MARKER);
    let write = || -> std::io::Result<()> {
        let mut f = spg_core::fsmode::create_private(&path)?;
        std::io::Write::write_all(&mut f, format!("{boot}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| LifecycleError::io("write", &path, e))?;
    Ok(true)
}

/// After a clean shutdown of a compute that ran without `fsync`: flush everything it wrote to
/// disk, then drop the marker. A directory without the marker is a no-op.
pub(crate) fn sync_and_unmark(data_dir: &Path) -> Result<(), LifecycleError> {
    let path = data_dir.join(spg_core::UNSYNCED_MARKER);
    if !path.exists() {
        return Ok(());
    }
    let dir = std::fs::File::open(data_dir).map_err(|e| LifecycleError::io("open", data_dir, e))?;
    nix::unistd::syncfs(&dir)
        .map_err(|e| LifecycleError::io("syncfs", data_dir, std::io::Error::from(e)))?;
    std::fs::remove_file(&path).map_err(|e| LifecycleError::io("remove", &path, e))?;
    dir.sync_all()
        .map_err(|e| LifecycleError::io("fsync", data_dir, e))
}

pub(crate) fn write_owned(
    cfg: &AgentConfig,
    path: &Path,
    contents: &str,
) -> Result<(), LifecycleError> {
    // Files in the data directory, which may be a lazy mount (see `on_mount`).
    on_mount(|| {
        spg_core::fsmode::write_private(path, contents)
            .map_err(|e| LifecycleError::io("write", path, e))?;
        cfg.run_as.chown(path)
    })
}

/// Unix socket paths are limited to 107 bytes; use the run directory when the socket fits there,
/// else a short directory under the system temporary directory.
pub(crate) fn socket_dir_for(run_dir: &Path, db: &DatabaseName) -> Result<PathBuf, LifecycleError> {
    const SOCKET_NAME_LEN: usize = ".s.PGSQL.65535".len() + 1;
    let abs =
        std::path::absolute(run_dir).map_err(|e| LifecycleError::io("resolve", run_dir, e))?;
    if abs.as_os_str().len() + SOCKET_NAME_LEN <= 100 {
        return Ok(abs);
    }
    let tag = spg_core::scram::sha256(abs.as_os_str().as_encoded_bytes());
    Ok(std::env::temp_dir().join(format!(
        "spg-{}-{:02x}{:02x}{:02x}{:02x}",
        db.as_str().chars().take(20).collect::<String>(),
        tag[0],
        tag[1],
        tag[2],
        tag[3]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_dirs_get_short_socket_dirs() {
        let db = DatabaseName::new("shop").unwrap();
        let short = socket_dir_for(Path::new("/tmp/x/shop"), &db).unwrap();
        assert_eq!(short, Path::new("/tmp/x/shop"));
        let long = format!("/tmp/{}/shop", "d".repeat(120));
        let s = socket_dir_for(Path::new(&long), &db).unwrap();
        assert!(s.as_os_str().len() < 60, "{}", s.display());
        assert_eq!(s, socket_dir_for(Path::new(&long), &db).unwrap());
    }
}

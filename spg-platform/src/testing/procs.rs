//! Processes of tests and benchmarks: guards that kill a daemon (and the computes it ran) when
//! dropped, daemons that announce where they listen, and finding and killing computes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Detach every FUSE mount under `dir` (a test that failed before its platform shut down leaves
/// the computes' lazily mounted images behind otherwise).
pub fn detach_mounts_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    for at in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if at.starts_with(&prefix) {
            let _ = spg_storage_lib::lazyfs::detach(Path::new(at));
        }
    }
}

/// Pids of postgres processes whose command line mentions a path under `dir`.
pub fn postgres_processes_under(dir: &Path) -> Vec<i32> {
    processes_under(dir, b"postgres")
}

/// Pids of `spg-compute` processes whose command line mentions a path under `dir`.
pub fn agent_processes_under(dir: &Path) -> Vec<i32> {
    processes_under(dir, b"spg-compute")
}

/// Pids of processes running a program whose name ends with `program` and whose command line
/// mentions a path under `dir`.
fn processes_under(dir: &Path, program: &[u8]) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_pg = cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(program));
        if is_pg && cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// `kill -9` of the computes whose postmasters are `postmasters`, each as a whole, as when its
/// host dies: the postmaster's process group and every backend (PostgreSQL's children lead
/// process groups of their own; a backend that outlives its postmaster for a moment still
/// answers queries, then ends its session). Returns whether there was anything to kill.
pub fn kill_9_computes(postmasters: &[i32]) -> bool {
    let mut victims: Vec<i32> = postmasters.iter().map(|p| -p).collect();
    victims.extend(postmasters.iter().flat_map(|p| children_of(*p)));
    victims.extend(postmasters.iter().copied());
    for pid in victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    !postmasters.is_empty()
}

pub use spg_lifecycle_lib::testing::children_of;

/// Kills a child process (and postgres processes under a directory) when dropped, so a failing
/// test leaves nothing behind.
pub struct ChildGuard {
    pub child: Option<std::process::Child>,
    pub dir: PathBuf,
}

impl ChildGuard {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_computes_under(&self.dir);
    }
}

/// `kill -9` of every compute process (`spg-compute`) and every postgres whose command line
/// names a path under `dir`, then detach the mounts under `dir` (a killed agent leaves its
/// lazyfs mount behind): what a failed test, or a daemon killed at a test's end, left running
/// (a compute process's postgres is not its child's process group, and would outlive it).
pub fn kill_computes_under(dir: &Path) {
    for pid in agent_processes_under(dir)
        .into_iter()
        .chain(postgres_processes_under(dir))
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    detach_mounts_under(dir);
}

/// Start a daemon whose first line on stdout says where it listens ("... listening on ...");
/// killed on drop, with any postgres under `dir`.
pub fn spawn_daemon(mut cmd: Command, dir: PathBuf) -> ChildGuard {
    use std::io::BufRead;
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep draining, so that a later line never meets a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let guard = ChildGuard {
        child: Some(child),
        dir,
    };
    assert!(
        line.contains("listening on"),
        "daemon did not start: {line:?}"
    );
    guard
}

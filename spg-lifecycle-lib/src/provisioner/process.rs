//! Computes as local `spg-compute` processes: one child process per generation, each in a
//! directory of its own under the root (its run directory, its page cache and lazy mount, a
//! `claim` file naming the generation it was given), driven over the agent API
//! ([`crate::agent`]). A spare agent is kept started ahead of need, so that a wake does not wait
//! for a process to start. A compute process that dies (its FUSE mount with it)
//! takes nothing else down; the control plane sees it end, cleans up what it left and marks the
//! database crashed. Agents end themselves when the control plane's process goes away.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spg_core::{DatabaseName, Generation, ScaleProfile};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{Compute, Provisioner, Standby};
use crate::agent::client::{start_compute, start_standby, AgentClient, AgentHandle, AgentHost};
use crate::agent::LISTENING_LINE;
use crate::compute::process::ExitInfo;
use crate::compute::ComputeSpec;
use crate::timing::StepTimer;
use crate::LifecycleError;

/// The file in an agent's directory naming its process.
const AGENT_PID: &str = "agent.pid";
/// The file in an agent's directory naming the generation it was given (`<db>\n<generation>`).
const CLAIM: &str = "claim";

/// How to start `spg-compute` processes.
#[derive(Clone)]
pub struct ProcessLaunch {
    /// The `spg-compute` executable.
    pub program: PathBuf,
    /// Arguments before the per-agent ones (e.g. `--config <file>`).
    pub args: Vec<OsString>,
    /// Each agent works in a directory of its own below this one.
    pub root: PathBuf,
    /// The agents' API key.
    pub api_key: Zeroizing<String>,
    /// CA certificates (PEM) the agents' certificates are checked against.
    pub ca_pem: Vec<u8>,
    /// How long an agent may take to listen.
    pub launch_timeout: Duration,
    /// How long an agent (and the PostgreSQL it leaves) may take to end once told to.
    pub stop_timeout: Duration,
    /// Agents kept started ahead of need (0 or 1): a wake then takes one that already runs,
    /// with its connections to the storage daemons open, instead of starting a process.
    pub spares: usize,
}

impl std::fmt::Debug for ProcessLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessLaunch")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("root", &self.root)
            .field("spares", &self.spares)
            .finish_non_exhaustive()
    }
}

/// An agent process that runs and said where it listens.
struct Launched {
    host: Arc<ChildHost>,
    addr: SocketAddr,
}

/// How long after a start that used the spare the next one is started.
const REFILL_AFTER_START: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Spares {
    ready: Option<Launched>,
    /// The spare being started, if one is.
    refilling: Option<tokio::task::JoinHandle<()>>,
    closed: bool,
}

struct Inner {
    launch: ProcessLaunch,
    http: reqwest::Client,
    passage_group: Option<u32>,
    spares: tokio::sync::Mutex<Spares>,
    /// Agents' directories left by an earlier run of the platform are removed once, before
    /// the first agent of this run starts.
    swept: tokio::sync::OnceCell<()>,
    seq: std::sync::atomic::AtomicU64,
}

/// Runs each compute generation as its own `spg-compute` child process. Cheap to clone.
#[derive(Clone)]
pub struct ProcessProvisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessProvisioner")
            .field("launch", &self.inner.launch)
            .finish_non_exhaustive()
    }
}

impl ProcessProvisioner {
    /// A provisioner starting agents as `launch` says. The directories on the way to the
    /// agents' own are passages for the compute user's group `passage_group` (see
    /// [`spg_core::fsmode::passage_dir`]).
    pub fn new(launch: ProcessLaunch, passage_group: Option<u32>) -> Result<Self, LifecycleError> {
        if !launch.program.is_file() {
            return Err(LifecycleError::Setup(format!(
                "the compute agent program {} does not exist",
                launch.program.display()
            )));
        }
        spg_core::fsmode::passage_dir(&launch.root, passage_group)
            .map_err(|e| LifecycleError::io("create dir", &launch.root, e))?;
        let http = crate::api::http::client_trusting(&launch.ca_pem)
            .map_err(LifecycleError::Tls)?
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| LifecycleError::Tls(e.to_string()))?;
        let p = ProcessProvisioner {
            inner: Arc::new(Inner {
                launch,
                http,
                passage_group,
                spares: tokio::sync::Mutex::default(),
                swept: tokio::sync::OnceCell::new(),
                seq: Default::default(),
            }),
        };
        p.refill(Duration::ZERO);
        Ok(p)
    }

    /// Start one agent process in a new directory of its own; returns once it listens (and the
    /// provisioner's connection to it is open).
    async fn launch_one(&self) -> Result<Launched, String> {
        let i = &self.inner;
        i.swept
            .get_or_init(|| async {
                for dir in agent_dirs(&i.launch.root) {
                    cleanup_dir(&dir, i.launch.stop_timeout).await;
                }
            })
            .await;
        let n = i.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = i.launch.root.join(format!("a{}-{n}", std::process::id()));
        if dir.exists() {
            cleanup_dir(&dir, i.launch.stop_timeout).await;
        }
        spg_core::fsmode::passage_dir(&dir, i.passage_group)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut cmd = tokio::process::Command::new(&i.launch.program);
        cmd.args(&i.launch.args)
            .arg("--root")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0", "--exit-with-parent"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Not in the platform's process group: a Ctrl-C on `spg up` reaches the platform,
            // which stops the computes in order (with their write-back).
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", i.launch.program.display()))?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let record = format!("{pid}\n{}\n", dir.display());
        if let Err(e) = spg_core::fsmode::write_private(&dir.join(AGENT_PID), record) {
            warn!(error = %e, "recording the agent's pid");
        }
        let stdout = child.stdout.take();
        let addr = async {
            let mut lines = tokio::io::BufReader::new(stdout?).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix(LISTENING_LINE) {
                    return a.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        };
        let addr = tokio::time::timeout(i.launch.launch_timeout, addr).await;
        let host = ChildHost::watch(child, pid, dir, i.launch.stop_timeout);
        let addr = match addr {
            Ok(Some(a)) => a,
            other => {
                let end = host.ended().borrow().clone();
                host.remove().await;
                return Err(match (other, end) {
                    (Err(_), _) => format!(
                        "the compute process did not listen within {:?}",
                        i.launch.launch_timeout
                    ),
                    (_, Some(e)) => format!("the compute process ended at its start ({e})"),
                    _ => "the compute process did not say where it listens".into(),
                });
            }
        };
        // Open the connection the first request would otherwise wait for.
        let _ = i
            .http
            .get(format!("https://{addr}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        Ok(Launched { host, addr })
    }

    /// Start a spare agent in the background after `after`, if one is wanted and none is on
    /// its way.
    fn refill(&self, after: Duration) {
        if self.inner.launch.spares == 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(after).await;
            let mut st = me.inner.spares.lock().await;
            if st.closed || st.refilling.is_some() || st.ready.is_some() {
                return;
            }
            let task = {
                let me = me.clone();
                tokio::spawn(async move { me.finish_refill().await })
            };
            st.refilling = Some(task);
        });
    }

    /// Start the spare and keep it (or end it, when the provisioner shut down meanwhile).
    async fn finish_refill(&self) {
        let launched = self.launch_one().await;
        let mut st = self.inner.spares.lock().await;
        st.refilling = None;
        match launched {
            Ok(l) if !st.closed => st.ready = Some(l),
            Ok(l) => {
                drop(st);
                l.host.remove().await;
            }
            Err(e) => warn!(error = %e, "starting a spare compute process failed"),
        }
    }

    /// An agent for generation `g` of `db`: the spare when one runs, else a new one.
    async fn agent(&self, db: &DatabaseName, g: Generation) -> Result<AgentHandle, LifecycleError> {
        let mut timer = StepTimer::new();
        let spare = self
            .inner
            .spares
            .lock()
            .await
            .ready
            .take()
            .filter(|l| l.host.ended().borrow().is_none());
        let launched = match spare {
            Some(l) => l,
            None => self
                .launch_one()
                .await
                .map_err(|reason| LifecycleError::Compute {
                    database: db.to_string(),
                    generation: g.0,
                    step: "launch",
                    reason,
                })?,
        };
        let claim = format!("{db}\n{}\n", g.0);
        if let Err(e) = spg_core::fsmode::write_private(&launched.host.dir.join(CLAIM), claim) {
            warn!(error = %e, "recording the agent's generation");
        }
        timer.step("launch");
        info!(%db, generation = %g, pid = launched.host.pid, addr = %launched.addr,
              "compute process assigned");
        let client = AgentClient::new(
            self.inner.http.clone(),
            &format!("https://{}", launched.addr),
            &self.inner.launch.api_key,
            db.clone(),
            g,
        );
        Ok(AgentHandle {
            client,
            host: launched.host,
            compute_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            launch: timer.finish(),
        })
    }
}

#[async_trait]
impl Provisioner for ProcessProvisioner {
    async fn start(&self, spec: ComputeSpec) -> Result<Box<dyn Compute>, LifecycleError> {
        let started = match self.agent(&spec.database, spec.generation).await {
            Ok(handle) => start_compute(handle, &spec).await,
            Err(e) => Err(e),
        };
        // The next spare starts a moment after this start: not competing for the CPU with it,
        // nor with the first queries its wake was for.
        self.refill(REFILL_AFTER_START);
        started
    }

    async fn cleanup_stale(&self, db: &DatabaseName) -> Result<bool, LifecycleError> {
        let mut found = false;
        for dir in agent_dirs(&self.inner.launch.root) {
            let claimed = std::fs::read_to_string(dir.join(CLAIM)).unwrap_or_default();
            if claimed.lines().next() == Some(db.as_str()) {
                found |= cleanup_dir(&dir, self.inner.launch.stop_timeout).await;
            }
        }
        Ok(found)
    }

    async fn start_standby(
        &self,
        spec: ComputeSpec,
        primary: &ScaleProfile,
    ) -> Result<Box<dyn Standby>, LifecycleError> {
        let started = match self.agent(&spec.database, spec.generation).await {
            Ok(handle) => start_standby(handle, &spec, primary).await,
            Err(e) => Err(e),
        };
        self.refill(REFILL_AFTER_START);
        started
    }

    async fn shutdown(&self) {
        let (spare, starting) = {
            let mut st = self.inner.spares.lock().await;
            st.closed = true;
            (st.ready.take(), st.refilling.take())
        };
        if let Some(l) = spare {
            l.host.remove().await;
        }
        // A spare on its way ends itself once it sees the provisioner closed.
        if let Some(t) = starting {
            let _ = t.await;
        }
    }
}

/// The agents' directories under `root`.
fn agent_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// An agent running as a child process.
struct ChildHost {
    pid: i32,
    dir: PathBuf,
    stop_timeout: Duration,
    ended: watch::Receiver<Option<ExitInfo>>,
    removed: tokio::sync::Mutex<bool>,
}

impl ChildHost {
    /// Watch `child` (reaping it when it exits).
    fn watch(
        mut child: tokio::process::Child,
        pid: i32,
        dir: PathBuf,
        stop_timeout: Duration,
    ) -> Arc<ChildHost> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => ExitInfo {
                    code: status.code(),
                    signal: status.signal(),
                    reason: Some(match (status.code(), status.signal()) {
                        (Some(c), _) => format!("the compute process exited with code {c}"),
                        (_, Some(s)) => format!("the compute process was killed by signal {s}"),
                        _ => "the compute process ended".into(),
                    }),
                },
                Err(e) => ExitInfo {
                    reason: Some(format!("waiting for the compute process: {e}")),
                    ..ExitInfo::default()
                },
            };
            let _ = tx.send(Some(info));
        });
        Arc::new(ChildHost {
            pid,
            dir,
            stop_timeout,
            ended: rx,
            removed: tokio::sync::Mutex::new(false),
        })
    }
}

#[async_trait]
impl AgentHost for ChildHost {
    fn ended(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.ended.clone()
    }

    async fn remove(&self) {
        let mut removed = self.removed.lock().await;
        if *removed {
            return;
        }
        let mut ended = self.ended.clone();
        if ended.borrow().is_none() && self.pid > 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            let timed_out =
                tokio::time::timeout(self.stop_timeout, ended.wait_for(Option::is_some))
                    .await
                    .is_err();
            if timed_out {
                warn!(
                    pid = self.pid,
                    "the compute process did not end; killing it"
                );
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
                let _ = ended.wait_for(Option::is_some).await;
            }
        }
        cleanup_dir(&self.dir, self.stop_timeout).await;
        *removed = true;
    }

    fn kill(&self) {
        if self.ended.borrow().is_none() && self.pid > 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        // The agent left PostgreSQL and its mount behind: stop and remove them.
        let (dir, timeout) = (self.dir.clone(), self.stop_timeout);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                cleanup_dir(&dir, timeout).await;
            });
        }
    }
}

/// Remove an agent's directory and whatever of it still runs: the agent (if the pid record
/// still names a live agent on this directory), a PostgreSQL it left, and mounts under it.
/// Returns whether something still ran or was mounted.
async fn cleanup_dir(dir: &Path, timeout: Duration) -> bool {
    let mut found = false;
    if let Some(pid) = recorded_agent(dir) {
        warn!(pid, dir = %dir.display(), "stopping a compute process left behind");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + timeout;
        while is_agent_on(pid, dir) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        found = true;
    }
    // PostgreSQL the agent ran, for whichever database it was given.
    let run = dir.join("run");
    for db in std::fs::read_dir(&run)
        .map(|e| e.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if let Ok(db) = DatabaseName::new(db.file_name().to_string_lossy().into_owned()) {
            found |= crate::compute::cleanup_stale(&run, &db, timeout)
                .await
                .unwrap_or(false);
        }
    }
    let mounts = mounts_under(dir);
    found |= !mounts.is_empty();
    for m in mounts {
        if let Err(e) = detach(&m) {
            warn!(mount = %m.display(), error = %e, "unmounting what a compute left");
        }
    }
    let dir = dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err((dir, e)),
    })
    .await;
    if let Ok(Err((dir, e))) = removed {
        warn!(dir = %dir.display(), error = %e, "removing a compute's directory");
    }
    found
}

/// The agent a directory's pid record names, if it still runs there.
fn recorded_agent(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join(AGENT_PID)).ok()?;
    let pid = text.lines().next()?.trim().parse::<i32>().ok()?;
    (pid > 0 && is_agent_on(pid, dir)).then_some(pid)
}

/// Whether process `pid` runs with `dir` among its arguments (an agent of that directory, not
/// a process that got the number since).
fn is_agent_on(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = dir.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == want)
}

/// Mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmount `path` (a FUSE mount whose server died answers nothing but this).
fn detach(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let r = unsafe { nix::libc::umount2(c.as_ptr(), nix::libc::MNT_DETACH) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
    }
}

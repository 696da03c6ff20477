//! Resource limits of a compute generation with Linux control groups.
//!
//! Both hierarchies are handled: the unified one (cgroup v2: `cpu.max`, `memory.max`, the
//! `cpu` and `memory` controllers enabled down the tree) and the legacy one (cgroup v1:
//! `cpu/…/cpu.cfs_quota_us`, `memory/…/memory.limit_in_bytes`). Each generation gets its own
//! group `spg/<database>-g<generation>-<platform tag>` under the root, so two generations of a
//! database (a handoff) are limited separately. Where no hierarchy is writable (containers without
//! delegation, no root), nothing is enforced and [`CgroupPlacement::enforced`] says so: the
//! profile's limits are still recorded.

use std::path::{Path, PathBuf};

use spg_core::ComputeLimits;

/// CFS period used for CPU quotas (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The group of generation `generation` of `database` run by the platform whose computes run
/// under `run_root`: `<database>-g<generation>-<8 hex digits of the run root>`, so that two
/// platforms on one machine (or two test runs) never share, nor remove, each other's groups.
pub fn group_name(run_root: &Path, database: &str, generation: u64) -> String {
    format!("{database}-g{generation}-{}", platform_tag(run_root))
}

/// The 8 hex digits that name a platform's groups (from its run root).
fn platform_tag(run_root: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(run_root.as_os_str().as_encoded_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Remove the groups of `database` that the platform running computes under `run_root` left
/// behind (its control plane stopped without dropping them: a crash). For a start, before any
/// compute of the platform runs. Returns how many were found; busy ones are retried as in
/// [`CgroupPlacement::remove`].
pub fn remove_stale(root: &Path, run_root: &Path, database: &str) -> usize {
    let parents = match detect(root) {
        Some(Layout::Unified(r)) => vec![r.join("spg")],
        Some(Layout::Legacy { cpu, memory }) => vec![cpu.join("spg"), memory.join("spg")],
        None => return 0,
    };
    let prefix = format!("{database}-g");
    let suffix = format!("-{}", platform_tag(run_root));
    let ours = |name: &str| {
        name.strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
    };
    let dirs: Vec<PathBuf> = parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| ours(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    let found = dirs.len();
    CgroupPlacement {
        dirs,
        not_enforced: None,
    }
    .remove();
    found
}

/// How long the removal of a group still holding processes is retried.
pub const REMOVE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Remove group `dir`: `true` once it is gone.
fn try_remove(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Which cgroup hierarchy a root holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// cgroup v2 mounted at this directory.
    Unified(PathBuf),
    /// cgroup v1: the `cpu` and `memory` controller mounts.
    Legacy { cpu: PathBuf, memory: PathBuf },
}

fn detect(root: &Path) -> Option<Layout> {
    let has = |p: &Path, controller: &str| {
        std::fs::read_to_string(p.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == controller))
    };
    if has(root, "cpu") && has(root, "memory") {
        return Some(Layout::Unified(root.to_path_buf()));
    }
    let cpu = root.join("cpu");
    let memory = root.join("memory");
    if cpu.join("cpu.cfs_quota_us").is_file() && memory.join("memory.limit_in_bytes").is_file() {
        return Some(Layout::Legacy { cpu, memory });
    }
    None
}

/// Where a compute's processes were placed, and what is enforced.
#[derive(Debug)]
pub struct CgroupPlacement {
    /// The groups made for the compute (one per hierarchy; empty when not enforced).
    dirs: Vec<PathBuf>,
    /// Why nothing is enforced, when it is not.
    pub not_enforced: Option<String>,
}

impl CgroupPlacement {
    /// Whether the limits are enforced.
    pub fn enforced(&self) -> bool {
        self.not_enforced.is_none()
    }

    /// Limits that are only recorded (`reason` says why).
    pub fn recorded_only(reason: impl Into<String>) -> Self {
        CgroupPlacement {
            dirs: Vec::new(),
            not_enforced: Some(reason.into()),
        }
    }

    /// Make the group `spg/<name>` under `root` with `limits`. Never fails: a machine that does
    /// not allow it gets the limits recorded only.
    pub fn create(root: &Path, name: &str, limits: &ComputeLimits) -> Self {
        if limits.cpu_millicores.is_none() && limits.memory_mb.is_none() {
            return Self::recorded_only("the profile sets no limits");
        }
        let Some(layout) = detect(root) else {
            return Self::recorded_only(format!(
                "no writable cgroup hierarchy with cpu and memory at {}",
                root.display()
            ));
        };
        match Self::try_create(&layout, name, limits) {
            Ok(dirs) => CgroupPlacement {
                dirs,
                not_enforced: None,
            },
            Err(reason) => Self::recorded_only(reason),
        }
    }

    fn try_create(
        layout: &Layout,
        name: &str,
        limits: &ComputeLimits,
    ) -> Result<Vec<PathBuf>, String> {
        let write = |p: PathBuf, v: String| {
            std::fs::write(&p, v).map_err(|e| format!("writing {}: {e}", p.display()))
        };
        let mkdir = |p: &Path| match std::fs::create_dir(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("creating {}: {e}", p.display())),
        };
        let quota = limits
            .cpu_millicores
            .map(|m| u64::from(m) * CPU_PERIOD_US / 1000);
        let memory = limits.memory_mb.map(|m| u64::from(m) << 20);
        match layout {
            Layout::Unified(root) => {
                let parent = root.join("spg");
                mkdir(&parent)?;
                // Controllers must be enabled in every ancestor's subtree.
                write(root.join("cgroup.subtree_control"), "+cpu +memory".into())?;
                write(parent.join("cgroup.subtree_control"), "+cpu +memory".into())?;
                let dir = parent.join(name);
                mkdir(&dir)?;
                let cpu = match quota {
                    Some(q) => format!("{q} {CPU_PERIOD_US}"),
                    None => format!("max {CPU_PERIOD_US}"),
                };
                write(dir.join("cpu.max"), cpu)?;
                write(
                    dir.join("memory.max"),
                    memory.map_or("max".into(), |m| m.to_string()),
                )?;
                Ok(vec![dir])
            }
            Layout::Legacy { cpu, memory: mem } => {
                let cpu_dir = cpu.join("spg").join(name);
                let mem_dir = mem.join("spg").join(name);
                for d in [&cpu_dir, &mem_dir] {
                    if let Some(p) = d.parent() {
                        mkdir(p)?;
                    }
                    mkdir(d)?;
                }
                write(cpu_dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                write(
                    cpu_dir.join("cpu.cfs_quota_us"),
                    quota.map_or("-1".into(), |q| q.to_string()),
                )?;
                write(
                    mem_dir.join("memory.limit_in_bytes"),
                    memory.map_or("-1".into(), |m| m.to_string()),
                )?;
                Ok(vec![cpu_dir, mem_dir])
            }
        }
    }

    /// Put process `pid` (and, when it is the postmaster, the children it forked so far) in the
    /// compute's groups. Processes forked afterwards inherit the group.
    pub fn add_tree(&self, pid: u32) -> Result<(), String> {
        let mut pids = vec![pid];
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        for dir in &self.dirs {
            for p in &pids {
                let procs = dir.join("cgroup.procs");
                if let Err(e) = std::fs::write(&procs, p.to_string()) {
                    // A child that exited meanwhile is not an error.
                    if std::path::Path::new(&format!("/proc/{p}")).exists() {
                        return Err(format!("moving {p} into {}: {e}", procs.display()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The groups made (for inspection and tests).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Remove the groups; best effort. A group still holding processes (a killed postmaster's
    /// children, a `restore_command` still running, exit a moment after the postmaster) cannot
    /// be removed yet: a background thread tries again for up to [`REMOVE_RETRY_FOR`].
    pub fn remove(&mut self) {
        let mut left: Vec<PathBuf> = self.dirs.drain(..).filter(|d| !try_remove(d)).collect();
        if left.is_empty() {
            return;
        }
        let retry = move || {
            let deadline = std::time::Instant::now() + REMOVE_RETRY_FOR;
            while !left.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
                left.retain(|d| !try_remove(d));
            }
            for d in left {
                tracing::warn!(group = %d.display(), "cgroup still busy; left in place");
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("spg-cgroup-rm".into())
            .spawn(retry)
        {
            tracing::warn!(error = %e, "cannot retry removing cgroups");
        }
    }
}

impl Drop for CgroupPlacement {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_hierarchy_records_the_limits_without_enforcing_them() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ComputeLimits {
            cpu_millicores: Some(500),
            memory_mb: Some(256),
        };
        let p = CgroupPlacement::create(dir.path(), "db-g1", &limits);
        assert!(!p.enforced());
        assert!(p
            .not_enforced
            .as_deref()
            .unwrap()
            .contains("no writable cgroup"));
        assert!(p.add_tree(std::process::id()).is_ok());
    }

    /// The machine's cgroup root, where the platform may write it (root here).
    fn writable_root() -> Option<&'static Path> {
        let root = Path::new("/sys/fs/cgroup");
        if detect(root).is_none() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("no writable cgroup hierarchy here: only the recorded path is tested");
            return None;
        }
        Some(root)
    }

    /// Groups a crashed platform left are removed at its next start, and only its own.
    #[test]
    fn a_restart_removes_the_groups_an_earlier_run_left() {
        let Some(root) = writable_root() else {
            return;
        };
        let limits = ComputeLimits {
            cpu_millicores: Some(500),
            memory_mb: Some(256),
        };
        let run_root = PathBuf::from(format!("/run/spg-test-{}", std::process::id()));
        let other_root = PathBuf::from(format!("/run/spg-other-{}", std::process::id()));
        let db = format!("stale{}", std::process::id());
        let mut left = Vec::new();
        for g in [1, 7] {
            let p = CgroupPlacement::create(root, &group_name(&run_root, &db, g), &limits);
            if !p.enforced() {
                eprintln!("cgroups not writable: {:?}", p.not_enforced);
                return;
            }
            left.extend(p.dirs().to_vec());
            std::mem::forget(p); // the control plane crashed: nothing drops it
        }
        let mut other = CgroupPlacement::create(root, &group_name(&other_root, &db, 1), &limits);
        assert_eq!(remove_stale(root, &run_root, &db), left.len());
        assert!(left.iter().all(|d| !d.exists()), "{left:?}");
        assert!(
            other.dirs().iter().all(|d| d.exists()),
            "another platform's group stays"
        );
        other.remove();
    }

    /// On a machine whose cgroups the platform may write (root here), a process moved into a
    /// compute's group runs under its limits.
    #[test]
    fn a_process_in_the_group_gets_the_limits() {
        let Some(root) = writable_root() else {
            return;
        };
        let name = format!("test-{}", std::process::id());
        let limits = ComputeLimits {
            cpu_millicores: Some(250),
            memory_mb: Some(300),
        };
        let mut placement = CgroupPlacement::create(root, &name, &limits);
        if !placement.enforced() {
            eprintln!("cgroups not writable: {:?}", placement.not_enforced);
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        placement.add_tree(child.id()).unwrap();
        let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(membership.contains(&format!("spg/{name}")), "{membership}");
        let limits_seen: Vec<String> = placement
            .dirs()
            .iter()
            .flat_map(|d| {
                [
                    "cpu.max",
                    "cpu.cfs_quota_us",
                    "memory.max",
                    "memory.limit_in_bytes",
                ]
                .iter()
                .filter_map(move |f| std::fs::read_to_string(d.join(f)).ok())
            })
            .map(|s| s.trim().to_string())
            .collect();
        assert!(
            limits_seen
                .iter()
                .any(|v| v == "25000" || v == "25000 100000"),
            "{limits_seen:?}"
        );
        assert!(
            limits_seen.iter().any(|v| v == &(300u64 << 20).to_string()),
            "{limits_seen:?}"
        );
        // Removed while its process still runs: the groups go once the process has exited.
        let dirs = placement.dirs().to_vec();
        placement.remove();
        assert!(placement.dirs().is_empty());
        assert!(dirs.iter().all(|d| d.exists()), "a busy group stays");
        let _ = child.kill();
        let _ = child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dirs.iter().any(|d| d.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "groups left after their process exited: {dirs:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

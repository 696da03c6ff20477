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
    use sha2::Digest;
    let digest = sha2::Sha256::digest(run_root.as_os_str().as_encoded_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{database}-g{generation}-{tag}")
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

    /// Remove the groups (their processes must have exited); best effort.
    pub fn remove(&mut self) {
        for d in self.dirs.drain(..) {
            let _ = std::fs::remove_dir(&d);
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

    /// On a machine whose cgroups the platform may write (root here), a process moved into a
    /// compute's group runs under its limits.
    #[test]
    fn a_process_in_the_group_gets_the_limits() {
        let root = Path::new("/sys/fs/cgroup");
        if detect(root).is_none() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("no writable cgroup hierarchy here: only the recorded path is tested");
            return;
        }
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
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        placement.remove();
        assert!(placement.dirs().is_empty());
    }
}

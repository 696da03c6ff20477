//! The operating-system user PostgreSQL runs as.
//!
//! PostgreSQL refuses to run as root. When the platform runs as root, computes run as the
//! unprivileged `postgres` user (created if missing) and own their directories; when it runs as
//! an ordinary user, computes run as that same user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::LifecycleError;

/// Name of the system user computes run as when the platform runs as root.
pub const POSTGRES_USER: &str = "postgres";

/// Who computes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Whether the platform runs as root and must switch to this user to start PostgreSQL.
    pub switch_user: bool,
}

impl RunAs {
    /// Decide: the `postgres` user (created if missing) when running as root, else the current
    /// user.
    pub fn detect() -> Result<RunAs, LifecycleError> {
        if Uid::effective().is_root() {
            let user = match lookup(POSTGRES_USER)? {
                Some(u) => u,
                None => {
                    create_system_user(POSTGRES_USER)?;
                    lookup(POSTGRES_USER)?.ok_or_else(|| {
                        LifecycleError::Setup(format!("user {POSTGRES_USER} missing after useradd"))
                    })?
                }
            };
            Ok(RunAs {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                switch_user: true,
            })
        } else {
            Ok(RunAs {
                name: current_user_name(),
                uid: Uid::effective().as_raw(),
                gid: Gid::effective().as_raw(),
                switch_user: false,
            })
        }
    }

    /// The group directories on the way to a compute's own are passages for
    /// ([`spg_core::fsmode::passage_dir`]): this user's group when the platform switches to it.
    pub fn passage_group(&self) -> Option<u32> {
        self.switch_user.then_some(self.gid)
    }

    /// Make `path` (not recursively) owned by this user.
    pub fn chown(&self, path: &Path) -> Result<(), LifecycleError> {
        if !self.switch_user {
            return Ok(());
        }
        nix::unistd::chown(
            path,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
        )
        .map_err(|e| LifecycleError::io("chown", path, e.into()))
    }

    /// Make `path` and everything below it owned by this user, unless `path` already is (a
    /// directory kept between generations keeps its owner, so this costs one `stat`).
    pub fn chown_tree(&self, path: &Path) -> Result<(), LifecycleError> {
        if !self.switch_user {
            return Ok(());
        }
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| LifecycleError::io("stat", path, e))?;
        if meta.uid() == self.uid && meta.gid() == self.gid {
            return Ok(());
        }
        self.chown_tree_force(path)
    }

    fn chown_tree_force(&self, path: &Path) -> Result<(), LifecycleError> {
        self.chown(path)?;
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| LifecycleError::io("stat", path, e))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| LifecycleError::io("list", path, e))? {
                let entry = entry.map_err(|e| LifecycleError::io("list", path, e))?;
                self.chown_tree_force(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Check that this user can reach `dir` (every ancestor searchable). PostgreSQL would fail
    /// with a confusing "permission denied" otherwise, e.g. for a data directory under `/root`.
    pub fn check_reachable(&self, dir: &Path) -> Result<(), LifecycleError> {
        if !self.switch_user {
            return Ok(());
        }
        let groups = user_groups(&self.name, self.gid);
        let abs = std::path::absolute(dir).map_err(|e| LifecycleError::io("resolve", dir, e))?;
        for ancestor in abs.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let ok = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if groups.contains(&meta.gid()) {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Err(LifecycleError::Setup(format!(
                    "user {} cannot reach {}: {} is not searchable by it; \
                     choose a data directory elsewhere (e.g. under /var/lib or /tmp) \
                     or run `chmod o+x {}`",
                    self.name,
                    dir.display(),
                    ancestor.display(),
                    ancestor.display()
                )));
            }
        }
        Ok(())
    }
}

fn lookup(name: &str) -> Result<Option<User>, LifecycleError> {
    User::from_name(name).map_err(|e| LifecycleError::Setup(format!("looking up user {name}: {e}")))
}

fn user_groups(name: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    if let Ok(cname) = std::ffi::CString::new(name) {
        if let Ok(list) = nix::unistd::getgrouplist(&cname, Gid::from_raw(primary)) {
            groups.extend(list.into_iter().map(|g| g.as_raw()));
        }
    }
    groups
}

fn create_system_user(name: &str) -> Result<(), LifecycleError> {
    tracing::info!(user = name, "creating system user for PostgreSQL");
    let status = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--shell", "/usr/sbin/nologin", name])
        .status()
        .map_err(|e| LifecycleError::Setup(format!("running useradd: {e}")))?;
    if !status.success() {
        return Err(LifecycleError::Setup(format!(
            "useradd {name} failed with {status}"
        )));
    }
    Ok(())
}

/// Name of the user this process runs as (for PostgreSQL's `peer` authentication map).
pub fn current_user_name() -> String {
    User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| Uid::effective().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_non_root_user_for_postgres() {
        let who = RunAs::detect().unwrap();
        assert_ne!(who.uid, 0, "PostgreSQL must never run as root");
        assert_eq!(who.switch_user, Uid::effective().is_root());
    }

    #[test]
    fn unreachable_directories_are_reported() {
        let who = RunAs::detect().unwrap();
        if !who.switch_user {
            return; // only meaningful when switching users
        }
        let tmp = tempfile::tempdir().unwrap();
        let locked = tmp.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = who.check_reachable(&locked.join("pgdata")).unwrap_err();
        assert!(err.to_string().contains("not searchable"), "{err}");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o711)).unwrap();
        who.check_reachable(&locked.join("pgdata")).unwrap();
    }
}

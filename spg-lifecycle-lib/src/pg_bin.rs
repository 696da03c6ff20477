//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LifecycleError;

/// Environment variable naming the PostgreSQL `bin` directory.
pub const PG_BIN_ENV: &str = "SPG_PG_BIN";

/// A directory holding `postgres` and `initdb`, and the major version they report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    bindir: PathBuf,
    major: u32,
}

impl PgBinaries {
    /// Locate the binaries: `explicit` (the `--pg-bin` flag) if given, else `$SPG_PG_BIN`, else
    /// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
    pub fn locate(explicit: Option<&Path>) -> Result<PgBinaries, LifecycleError> {
        if let Some(dir) = explicit {
            return PgBinaries::at(dir);
        }
        if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|v| !v.is_empty()) {
            return PgBinaries::at(Path::new(&dir));
        }
        if let Some(dir) = pg_config_bindir() {
            if let Ok(found) = PgBinaries::at(&dir) {
                return Ok(found);
            }
        }
        if let Some(dir) = newest_debian_bindir(Path::new("/usr/lib/postgresql")) {
            return PgBinaries::at(&dir);
        }
        Err(LifecycleError::PgBin(format!(
            "no PostgreSQL server found: pass --pg-bin or set {PG_BIN_ENV}, \
             or install it (e.g. apt-get install postgresql-15)"
        )))
    }

    /// Use the binaries in `dir`, checking that `postgres` and `initdb` are there.
    pub fn at(dir: &Path) -> Result<PgBinaries, LifecycleError> {
        for exe in ["postgres", "initdb"] {
            if !dir.join(exe).is_file() {
                return Err(LifecycleError::PgBin(format!(
                    "{} has no {exe} executable",
                    dir.display()
                )));
            }
        }
        let out = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| LifecycleError::PgBin(format!("running postgres --version: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = parse_major(&text).ok_or_else(|| {
            LifecycleError::PgBin(format!("cannot read the version from {:?}", text.trim()))
        })?;
        Ok(PgBinaries {
            bindir: dir.to_path_buf(),
            major,
        })
    }

    /// The `bin` directory.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Major version, e.g. 15.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Path of a binary in the directory (`postgres`, `initdb`, `pg_ctl`, ...).
    pub fn exe(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15.
fn parse_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split(')').nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

fn newest_debian_bindir(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1\n"), Some(17));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn locates_installed_server() {
        let found = PgBinaries::locate(None).expect("PostgreSQL must be installed for tests");
        assert!(found.major() >= 13);
        assert!(found.exe("postgres").is_file());
        assert!(PgBinaries::at(Path::new("/nonexistent")).is_err());
    }
}

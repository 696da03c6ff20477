//! `<data-dir>/env`: shell-sourceable `KEY=value` lines (`SPG_DSN`, `SPG_API_URL`, `SPG_API_KEY`,
//! `SPG_API_CA`). It holds secrets and is written with mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Parsed env file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile(pub BTreeMap<String, String>);

impl EnvFile {
    /// Read `path`; `None` if it does not exist.
    pub fn read(path: &Path) -> Result<Option<EnvFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                map.insert(k.trim().to_string(), unquote(v.trim()));
            }
        }
        Ok(Some(EnvFile(map)))
    }

    /// A value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Write to `path` (mode 0600), values single-quoted for the shell.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            writeln!(
                f,
                "# SPG connection settings. Load with: . {}",
                path.display()
            )?;
            for (k, v) in &self.0 {
                writeln!(f, "{k}={}", quote(v))?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("'\\''", "'")
    } else if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_shell_quoting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        let mut e = EnvFile::default();
        e.0.insert(
            "SPG_DSN".into(),
            "postgresql://a:b'c@h/d?sslmode=require".into(),
        );
        e.write(&p).unwrap();
        assert_eq!(EnvFile::read(&p).unwrap().unwrap(), e);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(". {} && printf %s \"$SPG_DSN\"", p.display()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), e.0["SPG_DSN"]);
        assert!(EnvFile::read(&dir.path().join("missing"))
            .unwrap()
            .is_none());
    }
}

//! Command-line pieces shared by `spg up` and `spg-controlplane`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::envfile::EnvFile;
use crate::platform::{Platform, PlatformConfig};

/// Flags of a process that runs the control plane.
#[derive(clap::Args, Debug, Clone)]
pub struct PlatformArgs {
    /// Where state, images, certificates and the env file live.
    #[arg(long, env = "SPG_DATA_DIR", default_value = "./.spg")]
    pub data_dir: PathBuf,
    /// Stop a database's compute after this long without sessions (e.g. 3s, 5m).
    #[arg(long, env = "SPG_IDLE_TIMEOUT", default_value = "5m", value_parser = crate::parse_duration)]
    pub idle_timeout: Duration,
    /// Lifetime of a gateway's lease between renewals.
    #[arg(long, env = "SPG_LEASE_TTL", default_value = "30s", value_parser = crate::parse_duration)]
    pub lease_ttl: Duration,
    /// HTTPS API.
    #[arg(long, env = "SPG_API_LISTEN", default_value = "127.0.0.1:9443")]
    pub api_listen: SocketAddr,
    /// Plain-HTTP Prometheus metrics (they are also on the API at /metrics).
    #[arg(long, env = "SPG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// PostgreSQL bin directory (default: pg_config --bindir, else the newest installed).
    #[arg(long, env = "SPG_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// TLS certificate (PEM) for the gateway and the API; default: self-signed, generated.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Safekeepers to run in this process (a majority must have a commit before it is
    /// acknowledged); at least one: the compute's local disk is never the only copy.
    #[arg(long, env = "SPG_SAFEKEEPERS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub safekeepers: u16,
}

impl PlatformArgs {
    /// The data directory (created, absolute), its env file as found, and a platform
    /// configuration from these flags (no gateway; the caller adds one). The API key of an
    /// existing env file is reused.
    pub fn prepare(&self) -> Result<(PathBuf, Option<EnvFile>, PlatformConfig)> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let data_dir = std::path::absolute(&self.data_dir)?;
        let existing = EnvFile::read(&env_path(&data_dir))?;
        let mut cfg = PlatformConfig::new(&data_dir);
        cfg.gateway_listen = None;
        cfg.idle_timeout = self.idle_timeout;
        cfg.lease_ttl = self.lease_ttl;
        cfg.api_listen = self.api_listen;
        cfg.metrics_listen = self.metrics_listen;
        cfg.pg_bin = self.pg_bin.clone();
        cfg.tls_cert = self.tls_cert.clone();
        cfg.tls_key = self.tls_key.clone();
        cfg.safekeepers = usize::from(self.safekeepers);
        cfg.api_key = existing
            .as_ref()
            .and_then(|e| e.get("SPG_API_KEY"))
            .map(String::from);
        Ok((data_dir, existing, cfg))
    }
}

/// `<data-dir>/env`.
pub fn env_path(data_dir: &Path) -> PathBuf {
    data_dir.join("env")
}

/// Write the env file: what `existing` had, updated with the platform's API URL, key and CA,
/// and with `dsn` when given.
pub fn write_env(
    data_dir: &Path,
    existing: Option<EnvFile>,
    platform: &Platform,
    dsn: Option<&str>,
) -> Result<EnvFile> {
    let mut env = existing.unwrap_or_default();
    if let Some(dsn) = dsn {
        env.0.insert("SPG_DSN".into(), dsn.to_string());
    }
    env.0.insert("SPG_API_URL".into(), platform.api_url());
    if let Some(k) = &platform.api_key {
        env.0.insert("SPG_API_KEY".into(), k.clone());
    }
    env.0
        .insert("SPG_API_CA".into(), platform.ca_file.display().to_string());
    env.write(&env_path(data_dir))?;
    Ok(env)
}

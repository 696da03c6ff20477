//! Command-line pieces shared by `spg up` and `spg-controlplane`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::envfile::EnvFile;
use crate::platform::{Platform, PlatformConfig};

/// Flags of a process that runs the control plane.
#[derive(clap::Args, Debug, Clone)]
pub struct PlatformArgs {
    /// Where state, images, certificates and the env file live.
    #[arg(long, env = "SPG_DATA_DIR", default_value = "./.spg")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub http: crate::HttpArgs,
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
    /// The cgroup hierarchy computes are limited in (their profile's CPU and memory).
    #[arg(long, env = "SPG_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Record the profiles' limits without enforcing them with cgroups.
    #[arg(long, env = "SPG_NO_CGROUPS")]
    pub no_cgroups: bool,
    /// How long a handoff waits, frozen, for transactions in flight before it gives up.
    #[arg(long, env = "SPG_HANDOFF_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = crate::parse_duration)]
    pub handoff_drain_timeout: Duration,
    /// How long a handoff's freeze may outlast its drain timeout: gateways whose control plane
    /// died mid-handoff let new work go by themselves after drain timeout + this.
    #[arg(long, env = "SPG_HANDOFF_FREEZE_MARGIN", default_value = "30s",
          value_parser = crate::parse_duration)]
    pub handoff_freeze_margin: Duration,
    /// How long a handoff waits for sessions pinned to the writer to end before it gives up.
    #[arg(long, env = "SPG_HANDOFF_PINNED_WAIT", default_value = "60s",
          value_parser = crate::parse_duration)]
    pub handoff_pinned_wait: Duration,
    /// Run the writer autoscaler: move databases between the L1 and L2 profiles by load.
    #[arg(long, env = "SPG_AUTOSCALE")]
    pub autoscale: bool,
    /// How long the load must stay high before the autoscaler moves a writer up.
    #[arg(long, env = "SPG_AUTOSCALE_UP_WINDOW", default_value = "30s",
          value_parser = crate::parse_duration)]
    pub autoscale_up_window: Duration,
    /// How long the load must stay low before the autoscaler moves a writer down.
    #[arg(long, env = "SPG_AUTOSCALE_DOWN_WINDOW", default_value = "2m",
          value_parser = crate::parse_duration)]
    pub autoscale_down_window: Duration,
    /// How long a writer keeps a profile after a change before the autoscaler moves it again.
    #[arg(long, env = "SPG_AUTOSCALE_DWELL", default_value = "5m",
          value_parser = crate::parse_duration)]
    pub autoscale_dwell: Duration,
}

impl PlatformArgs {
    /// The data directory (created, absolute), its env file as found, and a platform
    /// configuration from these flags (no gateway; the caller adds one). The API key of an
    /// existing env file is reused.
    pub fn prepare(&self) -> Result<(PathBuf, Option<EnvFile>, PlatformConfig)> {
        crate::secure_dir(&self.data_dir)?;
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
        cfg.cgroup_root = (!self.no_cgroups).then(|| self.cgroup_root.clone());
        cfg.handoff_drain_timeout = self.handoff_drain_timeout;
        cfg.handoff_freeze_margin = self.handoff_freeze_margin;
        cfg.http_limits = self.http.limits();
        cfg.handoff_pinned_wait = self.handoff_pinned_wait;
        cfg.autoscale.enabled = self.autoscale;
        cfg.autoscale.up_window = self.autoscale_up_window;
        cfg.autoscale.down_window = self.autoscale_down_window;
        cfg.autoscale.min_dwell = self.autoscale_dwell;
        cfg.api_key = existing
            .as_ref()
            .and_then(|e| e.get("SPG_API_KEY"))
            .map(String::from);
        cfg.gateway_api_key = existing
            .as_ref()
            .and_then(|e| e.get("SPG_GATEWAY_API_KEY"))
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
    if let Some(k) = &platform.gateway_api_key {
        env.0.insert("SPG_GATEWAY_API_KEY".into(), k.clone());
    }
    env.0
        .insert("SPG_API_CA".into(), platform.ca_file.display().to_string());
    env.write(&env_path(data_dir))?;
    Ok(env)
}

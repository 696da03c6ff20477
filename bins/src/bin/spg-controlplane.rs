//! `spg-controlplane`: the control plane as its own daemon — state, local computes and the HTTPS
//! API that gateways (`spg-gateway`) and the `spg` command talk to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use spg::envfile::EnvFile;
use spg::platform::{Platform, PlatformConfig};

#[derive(Parser)]
#[command(name = "spg-controlplane", version, about = "SPG control plane daemon")]
struct Args {
    /// Where state, images and certificates live.
    #[arg(long, env = "SPG_DATA_DIR", default_value = "./.spg")]
    data_dir: PathBuf,
    /// Stop a database's compute after this long without a lease.
    #[arg(long, env = "SPG_IDLE_TIMEOUT", default_value = "5m", value_parser = spg::parse_duration)]
    idle_timeout: Duration,
    /// Lease lifetime between renewals.
    #[arg(long, env = "SPG_LEASE_TTL", default_value = "30s", value_parser = spg::parse_duration)]
    lease_ttl: Duration,
    /// HTTPS API.
    #[arg(long, env = "SPG_API_LISTEN", default_value = "127.0.0.1:9443")]
    api_listen: SocketAddr,
    /// Plain-HTTP Prometheus metrics (also on the API at /metrics).
    #[arg(long, env = "SPG_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// PostgreSQL bin directory.
    #[arg(long, env = "SPG_PG_BIN")]
    pg_bin: Option<PathBuf>,
    /// TLS certificate (PEM); default: self-signed, generated.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let env_path = data_dir.join("env");
    let existing = EnvFile::read(&env_path)?;
    let mut cfg = PlatformConfig::new(&data_dir);
    cfg.gateway_listen = None;
    cfg.idle_timeout = args.idle_timeout;
    cfg.lease_ttl = args.lease_ttl;
    cfg.api_listen = args.api_listen;
    cfg.metrics_listen = args.metrics_listen;
    cfg.pg_bin = args.pg_bin;
    cfg.tls_cert = args.tls_cert;
    cfg.tls_key = args.tls_key;
    cfg.api_key = existing
        .as_ref()
        .and_then(|e| e.get("SPG_API_KEY"))
        .map(String::from);
    let platform = Platform::start(cfg).await?;
    let mut env = existing.unwrap_or_default();
    env.0.insert("SPG_API_URL".into(), platform.api_url());
    if let Some(k) = &platform.api_key {
        env.0.insert("SPG_API_KEY".into(), k.clone());
    }
    env.0
        .insert("SPG_API_CA".into(), platform.ca_file.display().to_string());
    env.write(&env_path)?;
    tracing::info!(api = %platform.api_url(), env = %env_path.display(), "control plane ready");
    spg::shutdown_signal().await;
    platform.shutdown().await;
    Ok(())
}

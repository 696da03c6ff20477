//! The daemons' settings (flags, environment variables, config file keys), so that `spg config
//! check` and embedders see the same settings the binaries parse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::PlatformArgs;

/// A daemon of the platform.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `spg up`.
    Up,
    /// `spg-controlplane`.
    Controlplane,
    /// `spg-gateway`.
    Gateway,
    /// `spg-safekeeper`.
    Safekeeper,
    /// `spg-pageserver`.
    Pageserver,
    /// `spg-compute`.
    Compute,
}

impl Daemon {
    /// Its program name.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Up => "spg up",
            Daemon::Controlplane => "spg-controlplane",
            Daemon::Gateway => "spg-gateway",
            Daemon::Safekeeper => "spg-safekeeper",
            Daemon::Pageserver => "spg-pageserver",
            Daemon::Compute => "spg-compute",
        }
    }

    /// Its command line (for `Up`, the caller supplies `spg up`'s own).
    pub fn command(self) -> clap::Command {
        match self {
            Daemon::Up | Daemon::Controlplane => ControlPlaneArgs::command(),
            Daemon::Gateway => GatewayArgs::command(),
            Daemon::Safekeeper => SafekeeperArgs::command(),
            Daemon::Pageserver => PageserverArgs::command(),
            Daemon::Compute => crate::compute_agent::ComputeArgs::command(),
        }
    }
}

/// Resolve the config `file` for `cmd` as the daemon would (with this process's environment
/// and the defaults): every setting, secrets masked, or the error naming the key.
pub fn check(
    cmd: clap::Command,
    file: &std::path::Path,
) -> anyhow::Result<Vec<crate::config::Resolved>> {
    let argv = vec![
        std::ffi::OsString::from(cmd.get_name().to_string()),
        "--config".into(),
        file.into(),
    ];
    let e = crate::config::expand(&cmd, argv, 1)?;
    let m = cmd.clone().try_get_matches_from(&e.argv).map_err(|err| {
        if err.kind() == clap::error::ErrorKind::MissingRequiredArgument {
            anyhow::anyhow!(crate::config::missing_message(&cmd, &err))
        } else {
            anyhow::anyhow!(err.render().to_string())
        }
    })?;
    Ok(crate::config::resolved(&cmd, &m, &e.from_file))
}

#[derive(clap::Parser)]
#[command(name = "spg-gateway", version, about = "SPG gateway daemon")]
pub struct GatewayArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    #[command(flatten)]
    pub http: crate::HttpArgs,
    /// PostgreSQL entry point.
    #[arg(long, env = "SPG_GATEWAY_LISTEN", default_value = "127.0.0.1:6432")]
    pub listen: SocketAddr,
    /// Control plane API URL.
    #[arg(long, env = "SPG_API_URL")]
    pub api_url: String,
    /// Control plane API key.
    #[arg(long, env = "SPG_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// CA certificate the API's certificate is checked against.
    #[arg(long, env = "SPG_API_CA")]
    pub api_ca: PathBuf,
    /// Directory for a generated TLS certificate (when none is configured).
    #[arg(long, env = "SPG_GATEWAY_DATA_DIR", default_value = "./.spg-gateway")]
    pub data_dir: PathBuf,
    /// TLS certificate (PEM); default: self-signed, generated.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept plaintext (non-TLS) client connections.
    #[arg(long, env = "SPG_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// Plain-HTTP Prometheus metrics.
    #[arg(long, env = "SPG_METRICS_LISTEN", default_value = "127.0.0.1:9187")]
    pub metrics_listen: SocketAddr,
    /// HTTPS control routes handoffs drive this gateway by (with its TLS certificate and a
    /// token of this run, registered with the control plane).
    #[arg(
        long,
        env = "SPG_GATEWAY_CONTROL_LISTEN",
        default_value = "127.0.0.1:9188"
    )]
    pub control_listen: SocketAddr,
    /// The URL the control plane reaches the control routes at (default: https:// and the
    /// control address, 127.0.0.1 for an unspecified one).
    #[arg(long, env = "SPG_GATEWAY_CONTROL_URL")]
    pub control_url: Option<String>,
    /// The CA (PEM) the control plane checks the control routes' certificate against (default:
    /// the CA of this gateway's TLS material).
    #[arg(long, env = "SPG_GATEWAY_CONTROL_CA")]
    pub control_ca: Option<PathBuf>,
    /// How long a connection may wait for its database to wake.
    #[arg(long, env = "SPG_WAKE_TIMEOUT", default_value = "30s", value_parser = crate::parse_duration)]
    pub wake_timeout: Duration,
    /// Client connections at once.
    #[arg(long, env = "SPG_MAX_CLIENT_CONN", default_value_t = 10_000)]
    pub max_client_conn: usize,
    /// Largest client message accepted, in bytes.
    #[arg(long, env = "SPG_MAX_MESSAGE_BYTES", default_value_t = 1 << 30)]
    pub max_message_bytes: usize,
    /// How clients authenticate: `scram` (SCRAM-SHA-256, the password never leaves the client)
    /// or `password` (the client sends it, over TLS unless plaintext is allowed; verified
    /// against the same stored verifier and cached, so connection-per-request clients skip
    /// the PBKDF2).
    #[arg(long, env = "SPG_CLIENT_AUTH", default_value = "scram")]
    pub client_auth: spg_gateway_lib::ClientAuth,
    #[command(flatten)]
    pub pool: crate::PoolArgs,
    #[command(flatten)]
    pub login: crate::LoginArgs,
}

#[derive(clap::Parser)]
#[command(name = "spg-safekeeper", version, about = "SPG safekeeper daemon")]
pub struct SafekeeperArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    #[command(flatten)]
    pub http: crate::HttpArgs,
    /// Name: the application_name it streams under (listed in synchronous_standby_names).
    #[arg(long, env = "SPG_SAFEKEEPER_NAME")]
    pub name: String,
    /// Where its WAL, control files and generated TLS material live.
    #[arg(long, env = "SPG_SAFEKEEPER_DIR")]
    pub dir: PathBuf,
    /// HTTPS API address (port 0: any free port; the chosen address is printed).
    #[arg(long, env = "SPG_SAFEKEEPER_LISTEN", default_value = "127.0.0.1:7676")]
    pub listen: SocketAddr,
    /// API key callers must present (Authorization: Bearer).
    #[arg(long, env = "SPG_SAFEKEEPER_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Object storage completed WAL segments are copied to (the same for every safekeeper of
    /// a set): `file:///dir` or `s3://bucket/prefix` (AWS_* environment variables). Without
    /// it, WAL stays only on local disk.
    #[arg(long, env = "SPG_OBJECT_STORE", value_parser = crate::cli::parse_object_store)]
    pub object_store: Option<String>,
    /// Object storage as a local directory (the same as --object-store file:///dir).
    #[arg(long, env = "SPG_ARCHIVE_DIR", conflicts_with = "object_store")]
    pub archive_dir: Option<PathBuf>,
    /// TLS certificate (PEM); default: self-signed, generated under --dir.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(clap::Parser)]
#[command(name = "spg-pageserver", version, about = "SPG pageserver daemon")]
pub struct PageserverArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    #[command(flatten)]
    pub http: crate::HttpArgs,
    /// Where its object cache and generated TLS material live.
    #[arg(long, env = "SPG_PAGESERVER_DIR")]
    pub dir: PathBuf,
    /// Object storage holding the images (`images/`) and archived WAL (`wal/`), the same the
    /// control planes and the safekeepers use: `file:///dir` or `s3://bucket/prefix` (AWS_*
    /// environment variables).
    #[arg(long, env = "SPG_OBJECT_STORE", value_parser = crate::cli::parse_object_store,
          required_unless_present = "archive_dir")]
    pub object_store: Option<String>,
    /// Object storage as a local directory (the same as --object-store file:///dir).
    #[arg(long, env = "SPG_ARCHIVE_DIR", conflicts_with = "object_store")]
    pub archive_dir: Option<PathBuf>,
    /// HTTPS API address (port 0: any free port; the chosen address is printed).
    #[arg(long, env = "SPG_PAGESERVER_LISTEN", default_value = "127.0.0.1:7677")]
    pub listen: SocketAddr,
    /// API key callers must present (Authorization: Bearer).
    #[arg(long, env = "SPG_PAGESERVER_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Budget of the object cache, in MiB.
    #[arg(long, env = "SPG_PAGESERVER_CACHE_MB", default_value_t = 1024)]
    pub cache_mb: u64,
    /// How often garbage is collected (0: never).
    #[arg(long, env = "SPG_PAGESERVER_GC_EVERY", default_value = "10m", value_parser = humantime::parse_duration)]
    pub gc_every: Duration,
    /// The history window: any moment this recent can be branched to (images younger than
    /// this, the newest one older, and the WAL after it are kept).
    #[arg(long, env = "SPG_PAGESERVER_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// TLS certificate (PEM); default: self-signed, generated under --dir.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(clap::Parser)]
#[command(name = "spg-controlplane", version, about = "SPG control plane daemon")]
pub struct ControlPlaneArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
}

//! `spg-gateway`: the PostgreSQL entry point as its own daemon, talking to a control plane
//! (`spg-controlplane` or `spg up`) over its HTTPS API for credentials, wakes and leases.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use prometheus_client::registry::Registry;
use spg::adapters::{OverApi, WithAdmin};
use spg::tls::TlsMaterial;
use spg_gateway_lib::{GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer};
use spg_lifecycle_lib::api::ApiClient;
use tokio_util::sync::CancellationToken;

/// mimalloc: a connection's buffers, task and session state come and go with it; glibc's
/// allocator spent several percent of the gateway's CPU on them under connection churn.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "spg-gateway", version, about = "SPG gateway daemon")]
struct Args {
    #[command(flatten)]
    http: spg::HttpArgs,
    /// PostgreSQL entry point.
    #[arg(long, env = "SPG_GATEWAY_LISTEN", default_value = "127.0.0.1:6432")]
    listen: SocketAddr,
    /// Control plane API URL.
    #[arg(long, env = "SPG_API_URL")]
    api_url: String,
    /// Control plane API key.
    #[arg(long, env = "SPG_API_KEY", hide_env_values = true)]
    api_key: String,
    /// CA certificate the API's certificate is checked against.
    #[arg(long, env = "SPG_API_CA")]
    api_ca: PathBuf,
    /// Directory for a generated TLS certificate (when none is configured).
    #[arg(long, env = "SPG_GATEWAY_DATA_DIR", default_value = "./.spg-gateway")]
    data_dir: PathBuf,
    /// TLS certificate (PEM); default: self-signed, generated.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept plaintext (non-TLS) client connections.
    #[arg(long, env = "SPG_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Plain-HTTP Prometheus metrics.
    #[arg(long, env = "SPG_METRICS_LISTEN", default_value = "127.0.0.1:9187")]
    metrics_listen: SocketAddr,
    /// HTTPS control routes handoffs drive this gateway by (with its TLS certificate and a
    /// token of this run, registered with the control plane).
    #[arg(
        long,
        env = "SPG_GATEWAY_CONTROL_LISTEN",
        default_value = "127.0.0.1:9188"
    )]
    control_listen: SocketAddr,
    /// The URL the control plane reaches the control routes at (default: https:// and the
    /// control address, 127.0.0.1 for an unspecified one).
    #[arg(long, env = "SPG_GATEWAY_CONTROL_URL")]
    control_url: Option<String>,
    /// The CA (PEM) the control plane checks the control routes' certificate against (default:
    /// the CA of this gateway's TLS material).
    #[arg(long, env = "SPG_GATEWAY_CONTROL_CA")]
    control_ca: Option<PathBuf>,
    /// How long a connection may wait for its database to wake.
    #[arg(long, env = "SPG_WAKE_TIMEOUT", default_value = "30s", value_parser = spg::parse_duration)]
    wake_timeout: Duration,
    /// Client connections at once.
    #[arg(long, env = "SPG_MAX_CLIENT_CONN", default_value_t = 10_000)]
    max_client_conn: usize,
    /// Largest client message accepted, in bytes.
    #[arg(long, env = "SPG_MAX_MESSAGE_BYTES", default_value_t = 1 << 30)]
    max_message_bytes: usize,
    /// How clients authenticate: `scram` (SCRAM-SHA-256, the password never leaves the client)
    /// or `password` (the client sends it, over TLS unless plaintext is allowed; verified
    /// against the same stored verifier and cached, so connection-per-request clients skip
    /// the PBKDF2).
    #[arg(long, env = "SPG_CLIENT_AUTH", default_value = "scram")]
    client_auth: spg_gateway_lib::ClientAuth,
    #[command(flatten)]
    pool: spg::PoolArgs,
    #[command(flatten)]
    login: spg::LoginArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args = Args::parse();
    spg::raise_fd_limit();
    let ca = std::fs::read(&args.api_ca)
        .with_context(|| format!("reading {}", args.api_ca.display()))?;
    let api = ApiClient::new(&args.api_url, &args.api_key, &ca)?;
    let tls = TlsMaterial::load_or_generate(
        &args.data_dir.join("tls"),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        None,
    )?;
    let pool = args.pool.config()?;
    let mut registry = Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let gateway = GatewayServer::new(
        GatewayConfig {
            tls: Some(tls.gateway()?),
            allow_plaintext: args.allow_plaintext,
            wake_timeout: args.wake_timeout,
            max_client_conn: args.max_client_conn,
            max_message_bytes: args.max_message_bytes,
            lease_holder: format!("spg-gateway-{}@{}", std::process::id(), args.listen),
            pool,
            client_auth: args.client_auth,
            limits: args.login.limits(),
            ..GatewayConfig::default()
        },
        GatewayDeps {
            // The admin console's password is the API key this gateway was given.
            auth: Arc::new(WithAdmin {
                inner: Arc::new(OverApi(api.clone())),
                admin: Some(spg_core::scram::ScramVerifier::from_password(&args.api_key)),
            }),
            waker: Arc::new(OverApi(api.clone())),
            lease: Some(Arc::new(api.clone())),
        },
        metrics,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("metrics cannot listen on {}", args.metrics_listen))?;
    let control_listener = tokio::net::TcpListener::bind(args.control_listen)
        .await
        .with_context(|| format!("control routes cannot listen on {}", args.control_listen))?;
    // The control routes, guarded by a token of this run, registered with the control plane
    // now and every few seconds (it forgets gateways that stop registering).
    let token = {
        use rand::RngExt;
        let raw: [u8; 24] = rand::rng().random();
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let control_url = match args.control_url.clone() {
        Some(u) => u,
        None => {
            let mut addr = control_listener.local_addr()?;
            if addr.ip().is_unspecified() {
                addr.set_ip([127, 0, 0, 1].into());
            }
            format!("https://{addr}")
        }
    };
    let ca_path = args
        .control_ca
        .clone()
        .unwrap_or_else(|| tls.ca_file.clone());
    let control_ca = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading {}", ca_path.display()))?;
    let control = spg_lifecycle_lib::api::gateway_control::router(
        Arc::new(gateway.clone()),
        spg_lifecycle_lib::api::server::ApiKey::new(&token),
    );
    let stop = CancellationToken::new();
    let http_limits = args.http.limits();
    http_limits
        .stats
        .register(&mut registry, "spg_gateway_control");
    let metrics_task = tokio::spawn(spg_lifecycle_lib::api::http::serve_http(
        metrics_listener,
        spg::platform::metrics_router(Arc::new(registry)),
        stop.clone(),
        http_limits.clone(),
    ));
    let control_task = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        control_listener,
        tls.https()?,
        control,
        stop.clone(),
        http_limits,
    ));
    let register_task = tokio::spawn({
        let (api, stop) = (api.clone(), stop.clone());
        async move {
            loop {
                if let Err(e) = api
                    .register_gateway(&control_url, &token, Some(&control_ca))
                    .await
                {
                    tracing::warn!(error = %e, "registering with the control plane failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    });
    let gw_stop = stop.clone();
    let serve = tokio::spawn(async move { gateway.serve(listener, gw_stop).await });
    spg::shutdown_signal().await;
    stop.cancel();
    let _ = serve.await;
    let _ = metrics_task.await;
    let _ = control_task.await;
    let _ = register_task.await;
    Ok(())
}

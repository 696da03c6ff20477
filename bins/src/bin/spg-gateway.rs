//! `spg-gateway`: the PostgreSQL entry point as its own daemon, talking to a control plane
//! (`spg-controlplane` or `spg up`) over its HTTPS API for credentials, wakes and leases.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
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

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args: spg::daemons::GatewayArgs = spg::config::parse();
    spg::raise_fd_limit();
    let ca = std::fs::read(&args.api_ca)
        .with_context(|| format!("reading {}", args.api_ca.display()))?;
    let api = ApiClient::new(&args.api_url, &args.api_key, &ca)?;
    let names: Vec<String> = [args.listen.ip(), args.control_listen.ip()]
        .iter()
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .collect();
    let tls = TlsMaterial::load_or_generate_for(
        &args.data_dir.join("tls"),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        None,
        &names,
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
    // Where it listens, in `<data-dir>/env`: the ports the OS chose when given port 0.
    let mut bound = spg::envfile::EnvFile::default();
    for (key, l) in [
        ("SPG_GATEWAY_ADDR", &listener),
        ("SPG_GATEWAY_METRICS_ADDR", &metrics_listener),
        ("SPG_GATEWAY_CONTROL_ADDR", &control_listener),
    ] {
        bound.0.insert(key.into(), l.local_addr()?.to_string());
    }
    bound.write(&args.data_dir.join("env"))?;
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
    let register_task = api.keep_registered(
        control_url,
        token,
        Some(control_ca),
        Duration::from_secs(5),
        stop.clone(),
    );
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

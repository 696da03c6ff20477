//! `spg-safekeeper`: one safekeeper as its own daemon. Computes' agents reach it over its HTTPS
//! API (elections, follow, WAL for recovery); it streams WAL from computes as a physical standby.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use prometheus_client::registry::Registry;
use spg::tls::TlsMaterial;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "spg-safekeeper", version, about = "SPG safekeeper daemon")]
struct Args {
    #[command(flatten)]
    http: spg::HttpArgs,
    /// Name: the application_name it streams under (listed in synchronous_standby_names).
    #[arg(long, env = "SPG_SAFEKEEPER_NAME")]
    name: String,
    /// Where its WAL, control files and generated TLS material live.
    #[arg(long, env = "SPG_SAFEKEEPER_DIR")]
    dir: PathBuf,
    /// HTTPS API address (port 0: any free port; the chosen address is printed).
    #[arg(long, env = "SPG_SAFEKEEPER_LISTEN", default_value = "127.0.0.1:7676")]
    listen: SocketAddr,
    /// API key callers must present (Authorization: Bearer).
    #[arg(long, env = "SPG_SAFEKEEPER_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Object storage directory completed WAL segments are copied to (local file system; the
    /// same for every safekeeper of a set). Without it, WAL stays only on local disk.
    #[arg(long, env = "SPG_ARCHIVE_DIR")]
    archive_dir: Option<PathBuf>,
    /// TLS certificate (PEM); default: self-signed, generated under --dir.
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
    spg::secure_dir(&args.dir)?;
    let tls = TlsMaterial::load_or_generate(
        &args.dir.join("tls"),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        None,
    )?;
    let node = SafekeeperNode::new(NodeConfig {
        name: args.name.clone(),
        dir: args.dir.join("wal"),
        segment_size: DEFAULT_SEGMENT_SIZE,
    })?;
    let mut registry = Registry::default();
    let http_limits = args.http.limits();
    http_limits.stats.register(&mut registry, "spg_safekeeper");
    node.metrics().register(&mut registry);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let router = spg::safekeeper_http::router(
        Arc::clone(&node),
        ApiKey::new(&args.api_key),
        Arc::new(registry),
    );
    let (offload_stop, offload_rx) = tokio::sync::watch::channel(false);
    let offloader = match &args.archive_dir {
        Some(dir) => {
            let archive: Arc<dyn object_store::ObjectStore> = Arc::new(
                spg_storage_lib::DurableLocalStore::open(dir)
                    .with_context(|| format!("opening {}", dir.display()))?,
            );
            Some(node.spawn_offloader(archive, std::time::Duration::from_secs(10), 4, offload_rx))
        }
        None => None,
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        listener,
        tls.https()?,
        router,
        stop.clone(),
        http_limits,
    ));
    println!(
        "spg-safekeeper {} listening on https://{addr} (CA {})",
        args.name,
        tls.ca_file.display()
    );
    spg::shutdown_signal().await;
    stop.cancel();
    let _ = offload_stop.send(true);
    if let Some(t) = offloader {
        let _ = t.await;
    }
    node.shutdown().await;
    let _ = server.await;
    Ok(())
}

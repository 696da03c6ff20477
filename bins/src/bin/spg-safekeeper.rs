//! `spg-safekeeper`: one safekeeper as its own daemon. Computes' agents reach it over its HTTPS
//! API (elections, follow, WAL for recovery); it streams WAL from computes as a physical standby.

use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use spg::tls::TlsMaterial;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args: spg::daemons::SafekeeperArgs = spg::config::parse();
    spg::secure_dir(&args.dir)?;
    let names: Vec<String> = (!args.listen.ip().is_unspecified())
        .then(|| args.listen.ip().to_string())
        .into_iter()
        .collect();
    let tls = TlsMaterial::load_or_generate_for(
        &args.dir.join("tls"),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        None,
        &names,
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
    let archive =
        spg::cli::object_store(args.object_store.as_deref(), args.archive_dir.as_deref())?;
    let offloader = archive.map(|archive| {
        node.spawn_offloader(archive, std::time::Duration::from_secs(10), 4, offload_rx)
    });
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

//! `spg-pageserver`: the pageserver as its own daemon. Computes' page stores reach it over its
//! HTTPS API (soft basebackups, chunks on demand, write-back); it keeps a bounded cache of
//! objects in front of object storage and collects garbage periodically.

use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use spg::tls::TlsMaterial;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::image::ObjectRepo;
use spg_storage_lib::pageserver::gc::GcPolicy;
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args: spg::daemons::PageserverArgs = spg::config::parse();
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
    let archive =
        spg::cli::object_store(args.object_store.as_deref(), args.archive_dir.as_deref())?
            .context("no object storage")?;
    let cfg = PageserverConfig {
        cache_bytes: args.cache_mb << 20,
        ..PageserverConfig::new(args.dir.join("cache"))
    };
    let ps = Arc::new(Pageserver::open(ObjectRepo::new(archive, "images"), &cfg)?);
    let mut registry = Registry::default();
    let http_limits = args.http.limits();
    http_limits.stats.register(&mut registry, "spg_pageserver");
    ps.metrics().register(&mut registry);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let router = spg::pageserver_http::router(
        Arc::clone(&ps),
        ApiKey::new(&args.api_key),
        Arc::new(registry),
        Some("wal".into()),
    );
    let stop = CancellationToken::new();
    let gc = (!args.gc_every.is_zero()).then(|| {
        spg::spawn_gc_loop(
            Arc::clone(&ps),
            args.gc_every,
            GcPolicy {
                retention: args.retention,
                ..GcPolicy::default()
            },
            stop.clone(),
        )
    });
    let server = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        listener,
        tls.https()?,
        router,
        stop.clone(),
        http_limits,
    ));
    println!(
        "spg-pageserver listening on https://{addr} (CA {})",
        tls.ca_file.display()
    );
    spg::shutdown_signal().await;
    stop.cancel();
    if let Some(t) = gc {
        let _ = t.await;
    }
    let _ = server.await;
    Ok(())
}

//! `spg-pageserver`: the pageserver as its own daemon. Computes' page stores reach it over its
//! HTTPS API (soft basebackups, chunks on demand, write-back); it keeps a bounded cache of
//! objects in front of object storage and collects garbage periodically.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use prometheus_client::registry::Registry;
use spg::tls::TlsMaterial;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::image::ObjectRepo;
use spg_storage_lib::pageserver::gc::GcPolicy;
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "spg-pageserver", version, about = "SPG pageserver daemon")]
struct Args {
    #[command(flatten)]
    http: spg::HttpArgs,
    /// Where its object cache and generated TLS material live.
    #[arg(long, env = "SPG_PAGESERVER_DIR")]
    dir: PathBuf,
    /// Object storage directory holding the images (`images/`) and archived WAL (`wal/`) — the
    /// same one the platform and the safekeepers use.
    #[arg(long, env = "SPG_ARCHIVE_DIR")]
    archive_dir: PathBuf,
    /// HTTPS API address (port 0: any free port; the chosen address is printed).
    #[arg(long, env = "SPG_PAGESERVER_LISTEN", default_value = "127.0.0.1:7677")]
    listen: SocketAddr,
    /// API key callers must present (Authorization: Bearer).
    #[arg(long, env = "SPG_PAGESERVER_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Budget of the object cache, in MiB.
    #[arg(long, env = "SPG_PAGESERVER_CACHE_MB", default_value_t = 1024)]
    cache_mb: u64,
    /// How often garbage is collected (0: never).
    #[arg(long, env = "SPG_PAGESERVER_GC_EVERY", default_value = "10m", value_parser = humantime::parse_duration)]
    gc_every: Duration,
    /// Images younger than this are kept.
    #[arg(long, env = "SPG_PAGESERVER_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    retention: Duration,
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
    let archive: Arc<dyn object_store::ObjectStore> = Arc::new(
        spg_storage_lib::DurableLocalStore::open(&args.archive_dir)
            .with_context(|| format!("opening {}", args.archive_dir.display()))?,
    );
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

//! Driving the platform through its HTTPS API: run SPG in-process (as `spg up` does), then create
//! a database and a role with the API client, and connect through the gateway.
//!
//! `cargo run -p spg-examples --example api_client`

use anyhow::Result;
use spg::platform::{ComputeRunner, Platform, PlatformConfig};
use spg_lifecycle_lib::api::ApiClient;

/// Start a platform, manage it over the API, run one query; returns what the query said.
async fn run() -> Result<String> {
    let dir = spg_examples::scratch_dir("api-client")?;
    let mut cfg = PlatformConfig::new(dir.join("data"));
    cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
    cfg.api_listen = ([127, 0, 0, 1], 0).into();
    // `spg up` runs each compute as its own `spg-compute` process; an embedder that ships no
    // such binary runs the compute agent inside its own process.
    cfg.computes = ComputeRunner::InProcess;
    let platform = Platform::start(cfg).await?;
    let key = platform
        .api_key
        .clone()
        .expect("a new platform has a new key");
    let api = ApiClient::new(
        &platform.api_url(),
        &key,
        &std::fs::read(&platform.ca_file)?,
    )?;

    let db = api.create_database("inventory").await?;
    println!(
        "created {} ({:?}, generation {})",
        db.name, db.state, db.generation.0
    );
    api.create_role("inventory", "stock", "stock-password")
        .await?;
    let dsn = platform
        .dsn("stock", "stock-password", "inventory")
        .expect("gateway runs");
    println!("DSN: {dsn}");

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&platform.ca_file)? {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (client, conn) =
        tokio_postgres::connect(&dsn, tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(conn);
    let answer: String = client
        .query_one("SELECT 'hello from ' || current_database()", &[])
        .await?
        .get(0);
    println!("{answer}");
    drop(client);

    let shown = api.database("inventory").await?;
    println!(
        "state {:?}, wakes {}, boot {:?}",
        shown.state,
        shown.wake_count,
        shown.last_boot.map(|b| b
            .steps
            .into_iter()
            .map(|s| (s.step, s.ms.round()))
            .collect::<Vec<_>>())
    );
    for t in api.transitions(Some("inventory"), 10).await?.iter().rev() {
        println!("  {} {:?} -> {:?} ({})", t.at, t.from, t.to, t.reason);
    }
    platform.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(answer)
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<()> {
    run().await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runs() {
    assert_eq!(run().await.unwrap(), "hello from inventory");
}

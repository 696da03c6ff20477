//! The reference daemons of the multi-host topology, on loopback: each daemon its own process on
//! its own address (127.0.0.x) with its own directory, started from its own config file — a
//! PostgreSQL holding the control planes' state, two `spg-controlplane`s, two `spg-gateway`s,
//! three `spg-safekeeper`s, one `spg-pageserver` — with an S3-protocol server for object
//! storage and one CA for every certificate (what an operator's PKI would issue). It prints
//! the config files, then connects through the DSN that names both gateways.
//!
//! `cargo build -p spg-bins && cargo run -p spg-examples --example reference_daemons`
//! (the daemons are found beside this example's directory, e.g. `target/debug`).

use anyhow::{bail, Context, Result};
use spg::testing::topology::{Programs, Topology};

/// The daemons built beside this example (`target/<profile>/`).
fn programs() -> Result<Programs> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("the example's directory")?;
    let programs = Programs::in_dir(dir);
    if !programs.exist() {
        bail!(
            "the daemons are not built in {}: cargo build -p spg-bins",
            dir.display()
        );
    }
    Ok(programs)
}

/// Bring the topology up, show its config files, query `shop` through both gateways; returns
/// the answer and the config files' names.
async fn run() -> Result<(String, Vec<String>)> {
    let root = spg_examples::scratch_dir("reference-daemons")?;
    let topology = Topology::start(&programs()?, &root).await;
    let mut configs: Vec<String> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    configs.sort();
    for name in &configs {
        println!("--- {name}\n{}", std::fs::read_to_string(root.join(name))?);
    }
    println!("DSN (both gateways): {}", topology.dsn);
    let (client, conn) = tokio_postgres::connect(&topology.dsn, topology.tls()).await?;
    tokio::spawn(conn);
    let answer: String = client
        .query_one(
            "SELECT current_database() || ' on ' || inet_server_addr()",
            &[],
        )
        .await?
        .get(0);
    println!("{answer}");
    drop(client);
    drop(topology);
    let _ = std::fs::remove_dir_all(&root);
    Ok((answer, configs))
}

#[tokio::main]
async fn main() -> Result<()> {
    run().await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_daemons_come_up_from_their_config_files() {
    let (answer, configs) = run().await.unwrap();
    assert!(answer.starts_with("shop on "), "{answer}");
    for daemon in ["cp1", "gw1", "pageserver", "sk1"] {
        assert!(
            configs.iter().any(|c| c.starts_with(daemon)),
            "no config file of {daemon}: {configs:?}"
        );
    }
}

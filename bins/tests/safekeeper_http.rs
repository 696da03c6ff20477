//! The WalQuorum conformance suite through `HttpSafekeeper`: three safekeeper nodes, each served
//! on its own loopback port over HTTPS, as a quorum.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use spg::safekeeper_http::{router, HttpSafekeeper};
use spg::tls::TlsMaterial;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-test-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_safekeepers_over_https_keep_the_wal_quorum_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = TlsMaterial::load_or_generate(&tmp.path().join("tls"), None, None, None).unwrap();
    let ca = std::fs::read(&tls.ca_file).unwrap();
    let stop = CancellationToken::new();
    let mut members: Vec<Arc<dyn SafekeeperApi>> = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=3 {
        let name = format!("sk{i}");
        let node = SafekeeperNode::new(NodeConfig {
            name: name.clone(),
            dir: tmp.path().join(&name),
            segment_size: DEFAULT_SEGMENT_SIZE,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        servers.push(tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
            listener,
            tls.https().unwrap(),
            router(node, ApiKey::new(KEY), Arc::new(Registry::default())),
            stop.clone(),
            spg_lifecycle_lib::api::http::HttpLimits::default(),
        )));
        members.push(Arc::new(
            HttpSafekeeper::new(&name, &url, KEY, &ca).unwrap(),
        ));
    }
    spg_storage_lib::wal_quorum_conformance::run_all(&SafekeeperSet::new(
        members,
        Duration::from_secs(5),
    ))
    .await;
    stop.cancel();
    for s in servers {
        let _ = s.await;
    }
}

//! The WalQuorum conformance suite through `HttpSafekeeper`: three safekeeper nodes, each served
//! on its own loopback port over HTTPS, as a quorum.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use spg::safekeeper_http::{router, HttpSafekeeper};
use spg::testing::https::Served;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};

const KEY: &str = "sk-test-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_safekeepers_over_https_keep_the_wal_quorum_contract() {
    let tmp = tempfile::tempdir().unwrap();
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
        // One CA (in one directory) for the three.
        let served = Served::start(
            router(node, ApiKey::new(KEY), Arc::new(Registry::default())),
            &tmp.path().join("tls"),
        )
        .await;
        members.push(Arc::new(
            HttpSafekeeper::new(&name, &served.url, KEY, &served.ca_pem).unwrap(),
        ));
        servers.push(served);
    }
    spg_storage_lib::wal_quorum_conformance::run_all(&SafekeeperSet::new(
        members,
        Duration::from_secs(5),
    ))
    .await;
    for s in servers {
        s.stop().await;
    }
}

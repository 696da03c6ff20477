//! The Gateway conformance suite through `RemoteGateway`: a gateway server's control routes
//! served over HTTPS, as a gateway daemon serves them to its control planes.

use std::sync::Arc;

use spg::tls::TlsMaterial;
use spg_core::DatabaseName;
use spg_gateway_lib::testing::gateway_of_nobody;
use spg_lifecycle_lib::api::gateway_control::{router, RemoteGateway};
use spg_lifecycle_lib::api::ApiKey;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "gw-control-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_over_its_control_routes_keeps_the_gateway_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway_of_nobody(Default::default());
    let tls = TlsMaterial::load_or_generate(&tmp.path().join("tls"), None, None, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        listener,
        tls.https().unwrap(),
        router(Arc::new(gw), ApiKey::new(TOKEN)),
        stop.clone(),
        spg_lifecycle_lib::api::http::HttpLimits::default(),
    ));
    let ca = std::fs::read(&tls.ca_file).unwrap();
    let remote = RemoteGateway::new(&url, TOKEN, Some(&ca)).unwrap();
    spg_core::testing::gateway_conformance::run_all(
        &remote,
        &DatabaseName::new("shop").unwrap(),
        &DatabaseName::new("other").unwrap(),
    )
    .await;
    stop.cancel();
    let _ = server.await;
}

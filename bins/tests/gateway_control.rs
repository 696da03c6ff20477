//! The Gateway conformance suite through `RemoteGateway`: a gateway server's control routes
//! served over HTTPS, as a gateway daemon serves them to its control planes.

use std::sync::Arc;

use spg::testing::https::Served;
use spg_core::DatabaseName;
use spg_gateway_lib::testing::gateway_of_nobody;
use spg_lifecycle_lib::api::gateway_control::{router, RemoteGateway};
use spg_lifecycle_lib::api::ApiKey;

const TOKEN: &str = "gw-control-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_over_its_control_routes_keeps_the_gateway_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway_of_nobody(Default::default());
    let served = Served::start(
        router(Arc::new(gw), ApiKey::new(TOKEN)),
        &tmp.path().join("tls"),
    )
    .await;
    let remote = RemoteGateway::new(&served.url, TOKEN, Some(&served.ca_pem)).unwrap();
    spg_core::testing::gateway_conformance::run_all(
        &remote,
        &DatabaseName::new("shop").unwrap(),
        &DatabaseName::new("other").unwrap(),
    )
    .await;
    served.stop().await;
}

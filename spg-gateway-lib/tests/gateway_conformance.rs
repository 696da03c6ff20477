//! The Gateway conformance suite (spg-core, feature `testing`) over the gateway server.

use spg_core::DatabaseName;
use spg_gateway_lib::testing::gateway_of_nobody;

#[tokio::test]
async fn the_gateway_server_keeps_the_gateway_contract() {
    spg_core::testing::gateway_conformance::run_all(
        &gateway_of_nobody(Default::default()),
        &DatabaseName::new("shop").unwrap(),
        &DatabaseName::new("other").unwrap(),
    )
    .await;
}

//! The Gateway conformance suite (spg-core, feature `testing`) over the gateway server.

use std::sync::Arc;

use async_trait::async_trait;
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeEndpoint, CoreError, CoreResult, DatabaseName, RoleName};
use spg_gateway_lib::{
    AuthSource, GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer, Waker,
};

/// Knows no roles and wakes nothing: the suite connects no client.
struct Nobody;

#[async_trait]
impl AuthSource for Nobody {
    async fn role_verifier(
        &self,
        _db: &DatabaseName,
        _role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>> {
        Ok(None)
    }
}

#[async_trait]
impl Waker for Nobody {
    async fn wake(&self, db: &DatabaseName) -> CoreResult<ComputeEndpoint> {
        Err(CoreError::DatabaseNotFound(db.to_string()))
    }
}

#[tokio::test]
async fn the_gateway_server_keeps_the_gateway_contract() {
    let gw = GatewayServer::new(
        GatewayConfig {
            allow_plaintext: true,
            ..GatewayConfig::default()
        },
        GatewayDeps {
            auth: Arc::new(Nobody),
            waker: Arc::new(Nobody),
            lease: None,
        },
        GatewayMetrics::default(),
    );
    spg_core::testing::gateway_conformance::run_all(
        &gw,
        &DatabaseName::new("shop").unwrap(),
        &DatabaseName::new("other").unwrap(),
    )
    .await;
}

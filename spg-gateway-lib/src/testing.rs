//! Test tooling (feature `testing`): a gateway no client can log in to, for tests of what it
//! serves besides sessions (its control surface, its shutdown).

use async_trait::async_trait;
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeEndpoint, CoreError, CoreResult, DatabaseName, RoleName};

use crate::{AuthSource, GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer, Waker};

/// Knows no role and wakes nothing.
#[derive(Debug, Clone, Copy)]
pub struct Nobody;

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

/// A gateway with `config` over [`Nobody`]: plaintext allowed, no lease.
pub fn gateway_of_nobody(config: GatewayConfig) -> GatewayServer {
    GatewayServer::new(
        GatewayConfig {
            allow_plaintext: true,
            ..config
        },
        GatewayDeps {
            auth: std::sync::Arc::new(Nobody),
            waker: std::sync::Arc::new(Nobody),
            lease: None,
        },
        GatewayMetrics::default(),
    )
}

//! The gateway's dependencies on top of the control plane: in-process (`spg up`) or over the
//! HTTPS API (a standalone `spg-gateway`).

use async_trait::async_trait;
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeEndpoint, CoreResult, DatabaseName, RoleName};
use spg_gateway_lib::{AuthSource, Waker};
use spg_lifecycle_lib::api::ApiClient;
use spg_lifecycle_lib::ControlPlane;

/// The control plane of this process.
#[derive(Clone, Debug)]
pub struct InProcess(pub ControlPlane);

#[async_trait]
impl AuthSource for InProcess {
    async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>> {
        Ok(self.0.role_verifier(db, role).await?)
    }
}

#[async_trait]
impl Waker for InProcess {
    async fn wake(&self, db: &DatabaseName) -> CoreResult<ComputeEndpoint> {
        Ok(self.0.wake(db).await?)
    }
}

/// A control plane reached through its API.
#[derive(Clone, Debug)]
pub struct OverApi(pub ApiClient);

#[async_trait]
impl AuthSource for OverApi {
    async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>> {
        Ok(self.0.role_verifier(db, role).await?)
    }
}

#[async_trait]
impl Waker for OverApi {
    async fn wake(&self, db: &DatabaseName) -> CoreResult<ComputeEndpoint> {
        Ok(self.0.wake(db.as_str()).await?)
    }
}

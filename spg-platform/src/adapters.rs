//! The gateway's dependencies on top of the control plane: in-process (`spg up`) or over the
//! HTTPS API (a standalone `spg-gateway`).

use std::sync::Arc;

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

/// Name of the admin console's login role.
pub const ADMIN_ROLE: &str = "admin";

/// Credentials from `inner`, plus the admin console's role [`ADMIN_ROLE`] whose password is the
/// platform's API key.
pub struct WithAdmin {
    /// Tenant credentials.
    pub inner: Arc<dyn AuthSource>,
    /// The admin role's verifier (`None`: no admin console login).
    pub admin: Option<ScramVerifier>,
}

#[async_trait]
impl AuthSource for WithAdmin {
    async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>> {
        self.inner.role_verifier(db, role).await
    }

    async fn admin_verifier(&self, role: &RoleName) -> CoreResult<Option<ScramVerifier>> {
        Ok(self.admin.clone().filter(|_| role.as_str() == ADMIN_ROLE))
    }
}

//! What a gateway needs from the rest of the platform. Embedders bring their own
//! implementations: e.g. a [`Waker`] that starts their own PostgreSQL fleet.

use async_trait::async_trait;
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeEndpoint, CoreResult, DatabaseName, RoleName};

/// Where the gateway finds the credentials it authenticates clients against.
#[async_trait]
pub trait AuthSource: Send + Sync + 'static {
    /// The role's SCRAM-SHA-256 verifier: `Ok(None)` for an unknown role, and
    /// `Err(CoreError::DatabaseNotFound)` for an unknown database. Must not wake anything.
    async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>>;

    /// The verifier of `role` on the gateway's admin console (`SHOW POOLS`, ...); `Ok(None)`
    /// when `role` is not an admin. The default has no admins.
    async fn admin_verifier(&self, role: &RoleName) -> CoreResult<Option<ScramVerifier>> {
        let _ = role;
        Ok(None)
    }
}

/// Wakes databases.
///
/// Contract: `wake` returns the endpoint of a running compute of `db` that holds the same role
/// verifiers the [`AuthSource`] returns, starting one if needed; it may take seconds. Retryable
/// errors ([`spg_core::CoreError::is_retryable`]) are retried by the gateway with backoff until its
/// wake deadline; `DatabaseNotFound` is reported to the client as such. The gateway merges
/// concurrent wakes of one database into one call.
#[async_trait]
pub trait Waker: Send + Sync + 'static {
    /// Make sure a compute of `db` runs; return where.
    async fn wake(&self, db: &DatabaseName) -> CoreResult<ComputeEndpoint>;
}

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoreResult, DatabaseName};

/// Opaque id of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct LeaseId(pub String);

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseGrant {
    /// Id to renew or release the lease with.
    pub id: LeaseId,
    /// The database the lease keeps awake.
    pub database: DatabaseName,
    /// The lease expires this long after it was granted or last renewed. Holders renew well
    /// before that (a third of it is customary). In JSON: milliseconds.
    #[serde(with = "duration_ms")]
    #[schema(value_type = u64)]
    pub ttl: Duration,
}

/// A claim that keeps a database's compute running.
///
/// Contract:
/// - While at least one unexpired lease on a database is held, the control plane does not stop
///   its compute for idleness. An explicit stop (operator, API) still stops it.
/// - When the last lease is released or expires, the idle clock starts; after `idle_timeout`
///   without a lease the compute is stopped.
/// - Acquiring a lease does not wake the compute; waking does not take a lease. A gateway takes
///   the lease first and wakes second, so no idle stop can fall between the two.
/// - Leases expire if not renewed, so a holder that dies cannot keep a database awake forever.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Take a new lease on `db` on behalf of `holder` (a free-form name for logs and the API).
    /// Fails with `DatabaseNotFound` for an unknown database.
    async fn acquire(&self, db: &DatabaseName, holder: &str) -> CoreResult<LeaseGrant>;

    /// Extend a lease by its ttl from now. Fails with `NotFound` when the lease has expired or was
    /// released: the holder must acquire a new one.
    async fn renew(&self, id: &LeaseId) -> CoreResult<LeaseGrant>;

    /// Give a lease back. Releasing an unknown or expired lease succeeds (it is idempotent).
    async fn release(&self, id: &LeaseId) -> CoreResult<()>;
}

/// Serde helper: a `Duration` as integer milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// Deserialize from milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

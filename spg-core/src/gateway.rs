use serde::{Deserialize, Serialize};

use crate::DatabaseName;

/// Session figures of one database on one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySessions {
    /// The database.
    pub database: DatabaseName,
    /// Client sessions currently open.
    pub sessions: usize,
    /// Whether new work for the database is held back.
    pub frozen: bool,
}

/// The public PostgreSQL entry point, as the control plane and the autoscaler see it.
///
/// Contract:
/// - A gateway authenticates clients before anything else happens; a failed login never wakes
///   a compute.
/// - `set_frozen(db, true)` makes the gateway stop handing the database's compute to new work:
///   new sessions (and, with pooling, new transactions) *wait* — they are not failed — until
///   `set_frozen(db, false)`. Work already running continues. Freezing is how a generation
///   handoff drains the old writer.
/// - `sessions` reports what this gateway currently serves; several gateways may serve one
///   database, each reports its own.
pub trait Gateway: Send + Sync {
    /// Open client sessions for `db` on this gateway, and whether it is frozen.
    fn sessions(&self, db: &DatabaseName) -> GatewaySessions;

    /// Freeze or unfreeze new work for `db` (see the trait contract).
    fn set_frozen(&self, db: &DatabaseName, frozen: bool);
}

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{ComputeEndpoint, CoreResult, DatabaseName};

/// Session figures of one database on one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySessions {
    /// The database.
    pub database: DatabaseName,
    /// Client sessions currently open.
    pub sessions: usize,
    /// Whether new work for the database is held back.
    pub frozen: bool,
    /// Transactions in flight: backend connections of the database's compute handed to
    /// clients right now (in session mode, and for pinned sessions, for the whole session).
    #[serde(default)]
    pub in_flight: usize,
    /// Sessions whose state cannot move to another compute (a handoff waits for them).
    #[serde(default)]
    pub pinned: Vec<PinnedSession>,
    /// Clients queued for a backend connection of the database right now (the pool is full).
    #[serde(default)]
    pub waiting: usize,
    /// Microseconds clients have waited in that queue, in total since the gateway started (the
    /// autoscaler reads the growth between two looks as the mean queue length).
    #[serde(default)]
    pub wait_us: u64,
}

/// A client session bound to its backend connection, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedSession {
    /// The gateway's id of the client connection (as in its admin view).
    pub client: u64,
    /// The login role.
    pub role: String,
    /// Why it cannot move: `temp table`, `listen`, `session mode`, ...
    pub reason: String,
    /// How long it has been in its current state, in milliseconds.
    pub for_ms: u64,
}

/// The public PostgreSQL entry point, as the control plane and the autoscaler see it: the
/// control surface of a generation handoff. Several gateways may serve one database; the
/// control plane drives each of them.
///
/// Contract:
/// - A gateway authenticates clients before anything else happens; a failed login never wakes
///   a compute.
/// - `set_frozen(db, Some(bound))` makes the gateway stop handing the database's compute to new
///   work: new sessions (and, with pooling, new transactions) *wait* — they are not failed —
///   until `set_frozen(db, None)`, or until `bound` has passed, when the gateway lets the work
///   go by itself (a freeze whose control plane died never holds clients forever). Freezing
///   again before then starts a new bound. Work already running continues. Freezing is how a
///   generation handoff drains the old writer.
/// - `sessions` reports what this gateway currently serves: open sessions, transactions in
///   flight, and the sessions pinned to their backend connection with the reason.
/// - `switch_target(db, endpoint)` makes `endpoint` the database's compute for everything that
///   starts afterwards: idle backend connections to older generations are closed and new ones
///   go to `endpoint`. Sessions still bound to an older generation keep it until they end.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// Open client sessions for `db` on this gateway, in flight, pinned, and whether frozen.
    async fn sessions(&self, db: &DatabaseName) -> CoreResult<GatewaySessions>;

    /// Freeze new work for `db` for at most the given bound, or unfreeze it (`None`); see the
    /// trait contract.
    async fn set_frozen(
        &self,
        db: &DatabaseName,
        freeze: Option<std::time::Duration>,
    ) -> CoreResult<()>;

    /// Send new work for `db` to `endpoint` (see the trait contract).
    async fn switch_target(&self, db: &DatabaseName, endpoint: &ComputeEndpoint) -> CoreResult<()>;
}

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoreResult, DatabaseName, Generation, Lsn, TimelineId};

/// The outcome of electing a generation on the safekeepers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Election {
    /// The generation now in force.
    pub generation: Generation,
    /// The newest timeline a quorum member holds WAL for.
    pub timeline: TimelineId,
    /// The highest flush LSN reported by the quorum that voted: every acknowledged commit lies at
    /// or below it, so the new compute must recover up to here before it promotes.
    pub flush_lsn: Lsn,
    /// How many safekeepers voted (at least a quorum).
    pub voters: usize,
}

/// WAL durability by quorum, with generations as fences (DESIGN §2–3).
///
/// Contract:
/// - `elect(db, g)` persists `g` on a quorum of safekeepers before returning. From then on, a
///   quorum refuses to acknowledge WAL from any generation older than `g`; so after the election
///   of `g + 1` no commit of generation `g` can be acknowledged (single writer).
/// - `elect` with a generation not newer than one already persisted on the quorum fails with
///   `StaleGeneration`.
/// - `commit_lsn` is an LSN at or below which every byte of WAL is flushed on a quorum.
/// - Neither call ever loses acknowledged WAL, whatever crashes happen while it runs.
#[async_trait]
pub trait WalQuorum: Send + Sync {
    /// Elect generation `generation` for `db` on a quorum; see the trait contract.
    async fn elect(&self, db: &DatabaseName, generation: Generation) -> CoreResult<Election>;

    /// The quorum-flushed LSN of `db`.
    async fn commit_lsn(&self, db: &DatabaseName) -> CoreResult<Lsn>;
}

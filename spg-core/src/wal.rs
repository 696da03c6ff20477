use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoreResult, DatabaseName, Generation, Lsn, TimelineId};

/// The outcome of electing a generation on the safekeepers: the fence is in place and this is
/// what the new compute must recover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Election {
    /// The generation now in force.
    pub generation: Generation,
    /// How many safekeepers promised (at least a quorum).
    pub voters: usize,
    /// The safekeeper whose log the compute recovers from; `None` when no voter holds WAL (a
    /// database that never ran with safekeepers).
    pub source: Option<String>,
    /// The timeline path of that log, oldest first: `(timeline, first LSN on it)`.
    pub history: Vec<(TimelineId, Lsn)>,
    /// The end of that log. Every acknowledged commit lies below it, so the compute recovers up
    /// to here before it promotes.
    pub flush_lsn: Lsn,
    /// The timeline this generation promotes onto (no other generation ever writes it).
    pub new_timeline: TimelineId,
}

impl Election {
    /// The timeline recovery targets: the newest one of the source log, if any.
    pub fn recovery_timeline(&self) -> Option<TimelineId> {
        self.history.last().map(|(t, _)| *t)
    }
}

/// How safekeepers reach the compute they are to follow.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSource {
    /// Host of the compute.
    pub host: String,
    /// Port of the compute.
    pub port: u16,
    /// The role with the REPLICATION attribute.
    pub user: String,
    /// Its password, minted for this generation (never logged).
    pub password: String,
}

impl std::fmt::Debug for ReplicationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// WAL durability by quorum, with generations as fences (DESIGN §2–3).
///
/// Contract:
/// - `elect(db, g)` persists `g` on a quorum of safekeepers before returning. From then on, a
///   quorum refuses WAL from any generation older than `g`; so after the election of `g + 1` no
///   commit written by generation `g` can be acknowledged (single writer). `elect` with a
///   generation older than one already promised by a quorum fails with `StaleGeneration`; an
///   unreachable quorum is `Unavailable` (retryable).
/// - The [`Election`] names the log that holds every acknowledged commit; `read_wal_file` serves
///   it file by file, as PostgreSQL's `restore_command` asks (`000000030000000000000002`,
///   `00000003.history`), including placeholder history files for the timelines between the
///   recovery target and `new_timeline`, so that PostgreSQL promotes onto exactly that timeline.
///   A read fenced by a newer generation fails with `StaleGeneration`.
/// - `follow(db, g, source)` makes the safekeepers stream from the compute of `g`, which runs
///   with `synchronous_standby_names` = [`WalQuorum::synchronous_standby_names`].
/// - No call ever loses acknowledged WAL, whatever crashes happen while it runs.
#[async_trait]
pub trait WalQuorum: Send + Sync {
    /// Elect generation `generation` for `db` on a quorum; see the trait contract.
    async fn elect(&self, db: &DatabaseName, generation: Generation) -> CoreResult<Election>;

    /// One WAL segment or timeline history file for recovery under `election`; `None` if it
    /// does not exist.
    async fn read_wal_file(
        &self,
        db: &DatabaseName,
        election: &Election,
        file_name: &str,
    ) -> CoreResult<Option<Vec<u8>>>;

    /// Have the safekeepers stream from the compute of `generation`.
    async fn follow(
        &self,
        db: &DatabaseName,
        generation: Generation,
        source: &ReplicationSource,
    ) -> CoreResult<()>;

    /// Stop following the compute of `generation` (it stopped). Its WAL stays.
    async fn unfollow(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()>;

    /// The value for the compute's `synchronous_standby_names`, e.g. `ANY 2 (sk1, sk2, sk3)`.
    fn synchronous_standby_names(&self) -> String;

    /// Start `db`'s log over, empty at `start`, on the timeline path `history` (oldest first),
    /// under generation `generation` (already elected): a point-in-time restore, whose image at
    /// `start` holds everything the database keeps, abandons the WAL past its restore point on
    /// purpose. A quorum must take it; its path ends on a timeline newer than any the old log
    /// had, so the next election picks it over a member that missed the reset. Fails with
    /// `StaleGeneration` once a newer generation is promised.
    async fn reset(
        &self,
        db: &DatabaseName,
        generation: Generation,
        start: Lsn,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<()>;

    /// Forget `db`, a deleted database whose compute is stopped: its log and fence go on a
    /// quorum (a member that was away keeps them; its promise then outranks a new database of
    /// the same name there until it is forgotten too).
    async fn forget(&self, db: &DatabaseName) -> CoreResult<()>;

    /// The log a recovery would read now, without electing anything: the newest generation a
    /// quorum of the answering safekeepers promised, and the log an election would pick among
    /// them. For readers that must not fence a running writer (a pageserver rolling an image
    /// forward); their `read_wal_file` calls fail with `StaleGeneration` once a newer generation
    /// is elected. `None` when no WAL is held.
    async fn observe(&self, db: &DatabaseName) -> CoreResult<Option<Election>>;
}

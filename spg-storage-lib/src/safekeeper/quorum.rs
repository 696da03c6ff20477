//! [`SafekeeperSet`]: the [`WalQuorum`] of a set of safekeepers, reached through
//! [`SafekeeperApi`] (in process, or over HTTP to `spg-safekeeper` daemons).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spg_core::{
    CoreError, CoreResult, DatabaseName, Election, Generation, Lsn, ReplicationSource, TimelineId,
    WalQuorum,
};

use super::node::{archive_path, parse_history_name, SafekeeperNode, SafekeeperStatus};
use super::{choose_source, timeline_of, History, Span, Vote, WalLog};
use crate::StorageError;

/// One safekeeper as the quorum sees it.
#[async_trait]
pub trait SafekeeperApi: Send + Sync {
    /// Its name (its `application_name`).
    fn name(&self) -> &str;
    /// Answer an election.
    async fn elect(&self, db: &DatabaseName, g: Generation) -> Result<Vote, StorageError>;
    /// A WAL or history file for the recovery of `g`.
    async fn wal_file(
        &self,
        db: &DatabaseName,
        g: Generation,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stream from the compute of `g`.
    async fn follow(
        &self,
        db: &DatabaseName,
        g: Generation,
        source: &ReplicationSource,
    ) -> Result<(), StorageError>;
    /// Start the log over (a point-in-time restore).
    async fn reset(
        &self,
        db: &DatabaseName,
        g: Generation,
        log: WalLog,
    ) -> Result<(), StorageError>;
    /// Forget a deleted database.
    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError>;
    /// Stop streaming from the compute of `g`.
    async fn unfollow(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError>;
    /// The state of `db` on it.
    async fn status(&self, db: &DatabaseName) -> Result<SafekeeperStatus, StorageError>;
}

#[async_trait]
impl SafekeeperApi for Arc<SafekeeperNode> {
    fn name(&self) -> &str {
        SafekeeperNode::name(self)
    }
    async fn elect(&self, db: &DatabaseName, g: Generation) -> Result<Vote, StorageError> {
        SafekeeperNode::elect(self, db, g).await
    }
    async fn wal_file(
        &self,
        db: &DatabaseName,
        g: Generation,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        SafekeeperNode::wal_file(self, db, g, name).await
    }
    async fn follow(
        &self,
        db: &DatabaseName,
        g: Generation,
        source: &ReplicationSource,
    ) -> Result<(), StorageError> {
        SafekeeperNode::follow(self, db, g, source).await
    }
    async fn reset(
        &self,
        db: &DatabaseName,
        g: Generation,
        log: WalLog,
    ) -> Result<(), StorageError> {
        SafekeeperNode::reset(self, db, g, log).await
    }
    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        SafekeeperNode::forget(self, db).await
    }
    async fn unfollow(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        SafekeeperNode::unfollow(self, db, g).await
    }
    async fn status(&self, db: &DatabaseName) -> Result<SafekeeperStatus, StorageError> {
        SafekeeperNode::status(self, db).await
    }
}

/// A set of safekeepers acting as one [`WalQuorum`].
pub struct SafekeeperSet {
    members: Vec<Arc<dyn SafekeeperApi>>,
    quorum: usize,
    timeout: Duration,
    archive: Option<Arc<dyn object_store::ObjectStore>>,
}

impl std::fmt::Debug for SafekeeperSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|m| m.name()).collect();
        f.debug_struct("SafekeeperSet")
            .field("members", &names)
            .field("quorum", &self.quorum)
            .finish()
    }
}

impl SafekeeperSet {
    /// A set with a majority quorum. Calls to one member give up after `timeout`.
    pub fn new(members: Vec<Arc<dyn SafekeeperApi>>, timeout: Duration) -> Self {
        let quorum = members.len() / 2 + 1;
        SafekeeperSet {
            members,
            quorum,
            timeout,
            archive: None,
        }
    }

    /// Also read WAL offloaded to `archive` (segments the safekeepers no longer keep).
    pub fn with_archive(mut self, archive: Arc<dyn object_store::ObjectStore>) -> Self {
        self.archive = Some(archive);
        self
    }

    /// The members.
    pub fn members(&self) -> &[Arc<dyn SafekeeperApi>] {
        &self.members
    }

    /// How many members make a quorum.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Call every member concurrently, each bounded by the timeout.
    /// Every member's status of `db` (those that answered in time, with their index).
    async fn statuses(
        &self,
        db: &DatabaseName,
    ) -> Vec<(usize, Result<SafekeeperStatus, StorageError>)> {
        let db = db.clone();
        self.all(move |m| {
            let db = db.clone();
            Box::pin(async move { m.status(&db).await })
        })
        .await
    }

    /// Count the answers of an operation every member was asked: `Unavailable` unless a
    /// quorum did it; `StaleGeneration` as soon as a member promised a generation newer than
    /// `g` (when the operation runs under one). Returns the other members' errors.
    fn tally(
        &self,
        did: &str,
        db: &DatabaseName,
        g: Option<Generation>,
        answers: Vec<(usize, Result<(), StorageError>)>,
    ) -> CoreResult<Vec<String>> {
        let mut done = 0;
        let mut errors = Vec::new();
        for (i, r) in answers {
            match (r, g) {
                (Ok(()), _) => done += 1,
                (Err(StorageError::StaleGeneration { current, .. }), Some(g)) if current > g.0 => {
                    return Err(CoreError::StaleGeneration {
                        offered: g.0,
                        current,
                    })
                }
                (Err(e), _) => errors.push(format!("{}: {e}", self.members[i].name())),
            }
        }
        if done < self.quorum {
            return Err(CoreError::Unavailable(format!(
                "only {done} of {} safekeepers {did} {db} (quorum {}): {}",
                self.members.len(),
                self.quorum,
                errors.join("; ")
            )));
        }
        Ok(errors)
    }

    async fn all<T, F>(&self, f: F) -> Vec<(usize, Result<T, StorageError>)>
    where
        T: Send + 'static,
        F: Fn(Arc<dyn SafekeeperApi>) -> futures_lite::BoxFuture<T>,
    {
        let mut set = tokio::task::JoinSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let fut = f(Arc::clone(m));
            let timeout = self.timeout;
            set.spawn(async move {
                let r = tokio::time::timeout(timeout, fut)
                    .await
                    .unwrap_or_else(|_| {
                        Err(StorageError::Protocol(
                            "safekeeper did not answer in time".into(),
                        ))
                    });
                (i, r)
            });
        }
        let mut out = Vec::with_capacity(self.members.len());
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }
}

/// Boxed futures without pulling in the `futures` crate.
mod futures_lite {
    use std::future::Future;
    use std::pin::Pin;

    use crate::StorageError;

    pub type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send>>;
}

fn placeholder_history(parent: TimelineId) -> Vec<u8> {
    // PostgreSQL only checks that the file exists when it picks the next timeline id.
    format!(
        "{}\t0/0\tplaceholder: timeline reserved for another generation\n",
        parent.0
    )
    .into_bytes()
}

#[async_trait]
impl WalQuorum for SafekeeperSet {
    async fn observe(&self, db: &DatabaseName) -> CoreResult<Option<Election>> {
        let answers = self.statuses(db).await;
        let mut seen: Vec<(usize, SafekeeperStatus)> = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in answers {
            match r {
                Ok(st) => seen.push((i, st)),
                Err(e) => errors.push(format!("{}: {e}", self.members[i].name())),
            }
        }
        if seen.len() < self.quorum {
            return Err(CoreError::Unavailable(format!(
                "only {} of {} safekeepers answered (quorum {}): {}",
                seen.len(),
                self.members.len(),
                self.quorum,
                errors.join("; ")
            )));
        }
        let generation = seen
            .iter()
            .map(|(_, s)| s.generation)
            .max()
            .unwrap_or(Generation::NONE);
        let logs: Vec<WalLog> = seen.iter().map(|(_, s)| s.log.clone()).collect();
        let Some(pick) = choose_source(&logs) else {
            return Ok(None);
        };
        let (idx, st) = &seen[pick];
        // A log reset by a restore holds no bytes but has its path: that is something to see.
        if st.log.history.spans().is_empty() {
            return Ok(None);
        }
        let history: Vec<(TimelineId, Lsn)> = st
            .log
            .history
            .spans()
            .iter()
            .map(|s| (s.tli, s.begin))
            .collect();
        // Nobody promotes onto it: it only has to lie past every timeline of the log.
        let newest = history.last().map_or(0, |(t, _)| t.0);
        Ok(Some(Election {
            generation,
            voters: 0,
            source: Some(self.members[*idx].name().to_owned()),
            history,
            flush_lsn: st.log.flush,
            new_timeline: TimelineId(timeline_of(generation).0.max(newest + 1)),
        }))
    }

    async fn elect(&self, db: &DatabaseName, g: Generation) -> CoreResult<Election> {
        let db2 = db.clone();
        let answers = self
            .all(move |m| {
                let db = db2.clone();
                Box::pin(async move { m.elect(&db, g).await })
            })
            .await;
        let mut promised: Vec<(usize, WalLog)> = Vec::new();
        let mut newest = Generation::NONE;
        let mut errors = Vec::new();
        for (i, r) in answers {
            match r {
                Ok(Vote::Promise { log, .. }) => promised.push((i, log)),
                Ok(Vote::Reject { current }) => newest = newest.max(current),
                Err(e) => errors.push(format!("{}: {e}", self.members[i].name())),
            }
        }
        if promised.len() < self.quorum {
            if newest > g {
                return Err(CoreError::StaleGeneration {
                    offered: g.0,
                    current: newest.0,
                });
            }
            return Err(CoreError::Unavailable(format!(
                "only {} of {} safekeepers promised generation {g} (quorum {}): {}",
                promised.len(),
                self.members.len(),
                self.quorum,
                errors.join("; ")
            )));
        }
        let logs: Vec<WalLog> = promised.iter().map(|(_, l)| l.clone()).collect();
        let pick = choose_source(&logs).unwrap_or(0);
        let (idx, log) = &promised[pick];
        // A log with no bytes may still have a path (a restore reset it): it is the source then.
        let (source, history) = if log.history.spans().is_empty() {
            (None, Vec::new())
        } else {
            (
                Some(self.members[*idx].name().to_owned()),
                log.history
                    .spans()
                    .iter()
                    .map(|s| (s.tli, s.begin))
                    .collect(),
            )
        };
        let flush_lsn = if history.is_empty() {
            Lsn::INVALID
        } else {
            log.flush
        };
        Ok(Election {
            generation: g,
            voters: promised.len(),
            source,
            history,
            flush_lsn,
            new_timeline: timeline_of(g),
        })
    }

    async fn read_wal_file(
        &self,
        db: &DatabaseName,
        election: &Election,
        file_name: &str,
    ) -> CoreResult<Option<Vec<u8>>> {
        if let Some(tli) = parse_history_name(file_name) {
            let target = election.recovery_timeline().unwrap_or(TimelineId(1));
            if tli > target && tli < election.new_timeline {
                return Ok(Some(placeholder_history(target)));
            }
            if tli >= election.new_timeline {
                return Ok(None);
            }
        }
        // The source first: it holds the recovered log. Others hold prefixes of it, or older
        // segments it no longer keeps.
        let mut order: Vec<&Arc<dyn SafekeeperApi>> = self.members.iter().collect();
        if let Some(src) = &election.source {
            order.sort_by_key(|m| m.name() != src);
        }
        let mut fenced = None;
        for m in order {
            let r =
                tokio::time::timeout(self.timeout, m.wal_file(db, election.generation, file_name))
                    .await;
            match r {
                Ok(Ok(Some(bytes))) => return Ok(Some(bytes)),
                Ok(Err(StorageError::StaleGeneration { offered, current })) => {
                    fenced = Some(CoreError::StaleGeneration { offered, current })
                }
                _ => {}
            }
        }
        if let Some(e) = fenced {
            return Err(e);
        }
        if let Some(archive) = &self.archive {
            match archive.get(&archive_path(db, file_name)).await {
                Ok(r) => {
                    let bytes = r
                        .bytes()
                        .await
                        .map_err(|e| CoreError::Unavailable(format!("object store: {e}")))?;
                    return Ok(Some(bytes.to_vec()));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CoreError::Unavailable(format!("object store: {e}"))),
            }
        }
        Ok(None)
    }

    async fn follow(
        &self,
        db: &DatabaseName,
        g: Generation,
        source: &ReplicationSource,
    ) -> CoreResult<()> {
        let (db2, src) = (db.clone(), source.clone());
        let answers = self
            .all(move |m| {
                let (db, src) = (db2.clone(), src.clone());
                Box::pin(async move { m.follow(&db, g, &src).await })
            })
            .await;
        let ok = answers.iter().filter(|(_, r)| r.is_ok()).count();
        if let Some((_, Err(StorageError::StaleGeneration { offered, current }))) = answers
            .iter()
            .find(|(_, r)| matches!(r, Err(StorageError::StaleGeneration { .. })))
        {
            if ok < self.quorum {
                return Err(CoreError::StaleGeneration {
                    offered: *offered,
                    current: *current,
                });
            }
        }
        if ok < self.quorum {
            return Err(CoreError::Unavailable(format!(
                "only {ok} safekeepers accepted to follow generation {g}"
            )));
        }
        Ok(())
    }

    async fn unfollow(&self, db: &DatabaseName, g: Generation) -> CoreResult<()> {
        let db2 = db.clone();
        self.all(move |m| {
            let db = db2.clone();
            Box::pin(async move { m.unfollow(&db, g).await })
        })
        .await;
        Ok(())
    }

    fn synchronous_standby_names(&self) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"{}\"", m.name()))
            .collect();
        format!("ANY {} ({})", self.quorum, names.join(", "))
    }

    async fn reset(
        &self,
        db: &DatabaseName,
        g: Generation,
        start: Lsn,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<()> {
        let path = History::from_spans(
            history
                .iter()
                .map(|&(tli, begin)| Span { tli, begin })
                .collect(),
        )
        .ok_or_else(|| CoreError::invalid("timeline path", format!("{history:?}")))?;
        let log = WalLog {
            start,
            flush: start,
            history: path,
        };
        let db2 = db.clone();
        let answers = self
            .all(move |m| {
                let (db, log) = (db2.clone(), log.clone());
                Box::pin(async move { m.reset(&db, g, log).await })
            })
            .await;
        self.tally("reset the log of", db, Some(g), answers)?;
        Ok(())
    }

    async fn forget(&self, db: &DatabaseName) -> CoreResult<()> {
        let db2 = db.clone();
        let answers = self
            .all(move |m| {
                let db = db2.clone();
                Box::pin(async move { m.forget(&db).await })
            })
            .await;
        let errors = self.tally("forgot", db, None, answers)?;
        if !errors.is_empty() {
            tracing::warn!(%db, errors = %errors.join("; "), "some safekeepers did not forget");
        }
        Ok(())
    }
}

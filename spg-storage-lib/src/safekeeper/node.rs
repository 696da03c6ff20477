//! [`SafekeeperNode`]: one safekeeper serving many databases, each in its own directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spg_core::{DatabaseName, Generation, Lsn, ReplicationSource, TimelineId};
use tokio::sync::watch;

use super::file::{parse_segment_file_name, FileWalStore};
use super::metrics::SafekeeperMetrics;
use super::spare::SpareSegments;
use super::stream::{
    follow_primary, lock, PrimaryConn, SharedSafekeeper, StreamEnd, StreamObserver,
};
use super::{wire, History, Safekeeper, Vote, WalLog};
use crate::StorageError;

/// Zeroed segment files a node keeps ready (two: databases are often made, or woken for the
/// first time, in bursts).
const SPARES: usize = 2;

/// Configuration of a safekeeper node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Its name: the `application_name` it streams under, listed in the compute's
    /// `synchronous_standby_names`.
    pub name: String,
    /// Where its databases' WAL lives.
    pub dir: PathBuf,
    /// WAL segment size of the computes (PostgreSQL's default 16 MiB).
    pub segment_size: u64,
}

/// What a safekeeper reports about one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafekeeperStatus {
    /// The safekeeper's name.
    pub name: String,
    /// The generation promised.
    pub generation: Generation,
    /// The durable WAL held.
    pub log: WalLog,
    /// The end of the WAL written (not necessarily durable yet).
    pub written: Lsn,
    /// The generation whose compute it streams from.
    pub following: Option<Generation>,
}

struct Follower {
    generation: Generation,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Db {
    name: DatabaseName,
    sk: SharedSafekeeper<FileWalStore>,
    follower: tokio::sync::Mutex<Option<Follower>>,
    /// Segments known to be durable in the archive (put by this process, or found there by a
    /// create-only put, which makes what it finds durable): segment number → file name.
    offloaded: Mutex<std::collections::BTreeMap<u64, String>>,
}

impl Db {
    fn offloaded_map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, String>> {
        self.offloaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A safekeeper: elections, streaming from computes, and WAL reads for recovery, per database.
pub struct SafekeeperNode {
    cfg: NodeConfig,
    spares: Arc<SpareSegments>,
    dbs: Mutex<HashMap<DatabaseName, Arc<Db>>>,
    metrics: Arc<SafekeeperMetrics>,
}

impl std::fmt::Debug for SafekeeperNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafekeeperNode")
            .field("name", &self.cfg.name)
            .finish()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Protocol(format!("storage task failed: {e}")))?
}

/// How long a shutdown waits for the spare segment being made.
const SPARES_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl SafekeeperNode {
    /// A node over `cfg.dir` (created if missing); databases are opened on first use.
    pub fn new(cfg: NodeConfig) -> Result<Arc<Self>, StorageError> {
        spg_core::fsmode::private_dir(&cfg.dir)
            .map_err(|e| StorageError::io("create dir", &cfg.dir, e))?;
        // Segments made ahead: a new database's first commit, or a commit crossing into a new
        // segment, takes one instead of waiting for 16 MiB to be written and synced.
        let spares = SpareSegments::open(cfg.dir.join(".spare"), cfg.segment_size, SPARES)?;
        spares.refill_in_background();
        Ok(Arc::new(SafekeeperNode {
            spares,
            metrics: Arc::new(SafekeeperMetrics::new(&cfg.name)),
            cfg,
            dbs: Mutex::new(HashMap::new()),
        }))
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<SafekeeperMetrics> {
        &self.metrics
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    async fn db(&self, db: &DatabaseName) -> Result<Arc<Db>, StorageError> {
        if let Some(d) = self.dbs.lock().unwrap_or_else(|p| p.into_inner()).get(db) {
            return Ok(Arc::clone(d));
        }
        let dir = self.cfg.dir.join(db.as_str());
        let seg = self.cfg.segment_size;
        let spares = Arc::clone(&self.spares);
        let sk =
            blocking(move || Safekeeper::open(FileWalStore::open(dir, seg)?.with_spares(spares)))
                .await?;
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        let d = dbs.entry(db.clone()).or_insert_with(|| {
            Arc::new(Db {
                name: db.clone(),
                sk: Arc::new(Mutex::new(sk)),
                follower: tokio::sync::Mutex::new(None),
                offloaded: Mutex::new(Default::default()),
            })
        });
        Ok(Arc::clone(d))
    }

    /// Answer an election; a promise stops streaming from any older generation.
    pub async fn elect(&self, db: &DatabaseName, g: Generation) -> Result<Vote, StorageError> {
        let d = self.db(db).await?;
        let sk = Arc::clone(&d.sk);
        let vote = blocking(move || lock(&sk).elect(g)).await?;
        if matches!(vote, Vote::Promise { .. }) {
            let mut f = d.follower.lock().await;
            if f.as_ref().is_some_and(|f| f.generation < g) {
                stop(f.take()).await;
            }
        }
        Ok(vote)
    }

    /// Start `db`'s log over as `log` (empty, on its path) under generation `g`; see
    /// [`Safekeeper::reset`]. Stops streaming from any generation up to `g`.
    pub async fn reset(
        &self,
        db: &DatabaseName,
        g: Generation,
        log: WalLog,
    ) -> Result<(), StorageError> {
        let d = self.db(db).await?;
        {
            let mut f = d.follower.lock().await;
            if f.as_ref().is_some_and(|f| f.generation <= g) {
                stop(f.take()).await;
            }
        }
        let sk = Arc::clone(&d.sk);
        blocking(move || lock(&sk).reset(g, log)).await?;
        d.offloaded_map().clear();
        tracing::info!(%db, %g, sk = %self.cfg.name, "log reset");
        Ok(())
    }

    /// Forget `db` (deleted): streaming stops and its directory (control state and WAL) goes,
    /// durably, so the name can be used afresh.
    pub async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        let d = self.db(db).await?;
        stop(d.follower.lock().await.take()).await;
        self.dbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(db);
        drop(d);
        let (root, dir) = (self.cfg.dir.clone(), self.cfg.dir.join(db.as_str()));
        blocking(move || {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &dir, e)),
            }
            crate::fsutil::sync_dir(&root)
        })
        .await?;
        tracing::info!(%db, sk = %self.cfg.name, "forgotten");
        Ok(())
    }

    /// Stream from the compute of `g` (idempotent; replaces streaming from an older generation).
    pub async fn follow(
        self: &Arc<Self>,
        db: &DatabaseName,
        g: Generation,
        source: &ReplicationSource,
    ) -> Result<(), StorageError> {
        let d = self.db(db).await?;
        let current = lock(&d.sk).generation();
        if g < current {
            return Err(StorageError::StaleGeneration {
                offered: g.0,
                current: current.0,
            });
        }
        let mut f = d.follower.lock().await;
        if let Some(existing) = f.as_ref() {
            if existing.generation == g && !existing.task.is_finished() {
                return Ok(());
            }
        }
        stop(f.take()).await;
        let conn = PrimaryConn {
            host: source.host.clone(),
            port: source.port,
            user: source.user.clone(),
            password: source.password.clone(),
            application_name: self.cfg.name.clone(),
        };
        let (tx, rx) = watch::channel(false);
        let node = Arc::clone(self);
        let db2 = Arc::clone(&d);
        let task = tokio::spawn(async move { node.stream_loop(db2, g, conn, rx).await });
        *f = Some(Follower {
            generation: g,
            stop: tx,
            task,
        });
        Ok(())
    }

    async fn stream_loop(
        self: Arc<Self>,
        d: Arc<Db>,
        g: Generation,
        conn: PrimaryConn,
        mut stop: watch::Receiver<bool>,
    ) {
        let observer: Arc<dyn StreamObserver> = Arc::new(self.metrics.observer(&d.name));
        let mut pause = Duration::from_millis(20);
        loop {
            let r = follow_primary(
                &d.sk,
                g,
                &conn,
                self.cfg.segment_size,
                Arc::clone(&observer),
                &mut stop,
            )
            .await;
            match r {
                Ok(StreamEnd::Stopped) => return,
                Ok(StreamEnd::Fenced { current }) => {
                    tracing::info!(db = %d.name, %g, %current, sk = %self.cfg.name, "fenced: stop streaming");
                    return;
                }
                Err(e) => {
                    tracing::debug!(db = %d.name, %g, sk = %self.cfg.name, error = %e, "replication stream ended");
                    self.metrics.stream_errors.inc();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Stop streaming from the compute of `g` (no-op if following another generation).
    pub async fn unfollow(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        let d = self.db(db).await?;
        let mut f = d.follower.lock().await;
        if f.as_ref().is_some_and(|f| f.generation == g) {
            stop(f.take()).await;
        }
        Ok(())
    }

    /// The state of `db` here.
    pub async fn status(&self, db: &DatabaseName) -> Result<SafekeeperStatus, StorageError> {
        let d = self.db(db).await?;
        let s = lock(&d.sk);
        Ok(SafekeeperStatus {
            name: self.cfg.name.clone(),
            generation: s.generation(),
            log: s.log().clone(),
            written: s.written(),
            following: s.following(),
        })
    }

    /// A WAL segment or timeline history file of `db`, for the recovery of generation `g`.
    /// Fails with `StaleGeneration` once a newer generation was promised here.
    pub async fn wal_file(
        &self,
        db: &DatabaseName,
        g: Generation,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let d = self.db(db).await?;
        let sk = Arc::clone(&d.sk);
        let seg = self.cfg.segment_size;
        let name = name.to_owned();
        blocking(move || {
            let s = lock(&sk);
            if s.generation() > g {
                return Err(StorageError::StaleGeneration {
                    offered: g.0,
                    current: s.generation().0,
                });
            }
            if let Some(tli) = parse_history_name(&name) {
                return Ok(history_file(&s.log().history, tli).map(String::into_bytes));
            }
            match parse_segment_file_name(&name, seg) {
                Some((tli, segno)) => s.segment_file(tli, segno, seg),
                None => Ok(None),
            }
        })
        .await
    }

    /// Stop every stream and the making of spare segments (for shutdown): afterwards the node
    /// writes nothing in its directory on its own.
    pub async fn shutdown(&self) {
        let spares = Arc::clone(&self.spares);
        if !matches!(
            tokio::task::spawn_blocking(move || spares.close(SPARES_CLOSE_TIMEOUT)).await,
            Ok(true)
        ) {
            tracing::warn!(node = %self.cfg.name, "a spare segment was still being made at shutdown");
        }
        let dbs: Vec<Arc<Db>> = self
            .dbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for d in dbs {
            stop(d.follower.lock().await.take()).await;
        }
    }
}

async fn stop(f: Option<Follower>) {
    if let Some(f) = f {
        let _ = f.stop.send(true);
        let _ = f.task.await;
    }
}

pub use spg_core::wal_files::parse_history_name;

impl Drop for SafekeeperNode {
    /// Dropped without [`SafekeeperNode::shutdown`] (a failed test, say): no spare segment is
    /// made after this (one being made is finished).
    fn drop(&mut self) {
        self.spares.close(std::time::Duration::ZERO);
    }
}

/// The history file of timeline `tli` as seen on `path`, if `tli` is on it.
pub fn history_file(path: &History, tli: TimelineId) -> Option<String> {
    if !path.contains(tli) {
        return None;
    }
    let spans: Vec<_> = path
        .spans()
        .iter()
        .copied()
        .take_while(|s| s.tli <= tli)
        .collect();
    History::from_spans(spans).map(|h| wire::format_history_file(&h))
}

/// Where offloaded WAL lives in object storage: `wal/<db>/<segment file name>`.
pub fn archive_path(db: &DatabaseName, file_name: &str) -> object_store::path::Path {
    archive_prefix(db).child(file_name)
}

/// The object-store prefix of `db`'s offloaded WAL: `wal/<db>`.
pub fn archive_prefix(db: &DatabaseName) -> object_store::path::Path {
    object_store::path::Path::from(format!("wal/{}", db.as_str()))
}

/// What one offload pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffloadReport {
    /// Segments uploaded now.
    pub uploaded: usize,
    /// Segments removed locally.
    pub removed: u64,
}

impl SafekeeperNode {
    fn databases_on_disk(&self) -> Vec<DatabaseName> {
        let Ok(entries) = std::fs::read_dir(&self.cfg.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| DatabaseName::new(e.file_name().to_string_lossy().into_owned()).ok())
            .collect()
    }

    /// Copy every complete WAL segment not yet in `archive` there (create-only: a segment, once
    /// there, never changes), then drop local segments that are offloaded, keeping the newest
    /// `keep_segments` complete ones for fast recovery reads.
    ///
    /// A segment counts as offloaded only once a put of it returned, created or found there:
    /// an object that merely exists (`head`) may be one a crashed writer never made durable, and
    /// the local copy is the one the safekeeper is about to delete. `archive` must make a put
    /// durable before it returns (S3 does; locally, use
    /// [`DurableLocalStore`](crate::DurableLocalStore)).
    pub async fn offload_once(
        &self,
        archive: &dyn object_store::ObjectStore,
        keep_segments: u64,
    ) -> Result<OffloadReport, StorageError> {
        let mut report = OffloadReport::default();
        let seg = self.cfg.segment_size;
        for db in self.databases_on_disk() {
            let d = match self.db(&db).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%db, sk = %self.cfg.name, error = %e, "offload: cannot open");
                    continue;
                }
            };
            let log = lock(&d.sk).log().clone();
            let complete_end = log.flush.0 / seg; // segments below this number are complete
            let mut offloaded_end = log.start.0 / seg;
            let first = log.start.0.div_ceil(seg);
            // Forget segments the log no longer holds.
            let mut known = std::mem::take(&mut *d.offloaded_map()).split_off(&first);
            for segno in first..complete_end {
                let Some(tli) = log.history.tli_at(Lsn((segno + 1) * seg - 1)) else {
                    break;
                };
                let name = super::file::segment_file_name(tli, segno, seg);
                if known.get(&segno) != Some(&name) {
                    let path = archive_path(&db, &name);
                    let sk = Arc::clone(&d.sk);
                    let bytes =
                        blocking(move || lock(&sk).read(Lsn(segno * seg), seg as usize)).await?;
                    match crate::objects::put_create_only(archive, &path, bytes.into()).await {
                        Ok(true) => {
                            report.uploaded += 1;
                            self.metrics.segments_offloaded.inc();
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(%db, segment = %name, error = %e, "offload failed");
                            break;
                        }
                    }
                    known.insert(segno, name);
                }
                offloaded_end = segno + 1;
            }
            *d.offloaded_map() = known;
            self.metrics
                .set_offload_lag(&db, log.flush.0.saturating_sub(offloaded_end * seg));
            let keep_from = complete_end.saturating_sub(keep_segments);
            let new_start = offloaded_end.min(keep_from) * seg;
            if new_start > log.start.0 {
                let sk = Arc::clone(&d.sk);
                blocking(move || lock(&sk).advance_start(Lsn(new_start))).await?;
                report.removed += (new_start - log.start.0) / seg;
            }
        }
        Ok(report)
    }

    /// Offload every `every` until `stop` fires.
    pub fn spawn_offloader(
        self: &Arc<Self>,
        archive: Arc<dyn object_store::ObjectStore>,
        every: Duration,
        keep_segments: u64,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(e) = node.offload_once(archive.as_ref(), keep_segments).await {
                    tracing::warn!(sk = %node.cfg.name, error = %e, "offload pass failed");
                }
            }
        })
    }
}

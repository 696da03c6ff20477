//! The pageserver: images served to computes from a bounded local cache in front of object
//! storage.
//!
//! [`Pageserver`] is an [`ImageRepo`]: computes reach it in process (`spg up`) or over the
//! `spg-pageserver` daemon's HTTP API (whose client is also an `ImageRepo`), and an
//! [`ImageStore`](crate::image::ImageStore) on top checks every byte end to end either way.
//!
//! - **Soft basebackup** ([`ImageRepo::basebackup`]): the manifest of the newest image on the
//!   caller's timeline path, plus the objects a compute needs first: the image's warm set (what
//!   the previous compute fetched right after it started), the checkpoint's WAL segment, and
//!   without a warm set the small non-relation files; bounded by a byte budget, compressed on the
//!   wire or streamed while it is read ([`wire`], [`Pageserver::stream_basebackup`]).
//! - **Objects on demand**, singly or in batches (lazyfs reads ahead in batches), from the
//!   [`cache::ObjectCache`]; misses go to object storage and are checked before being cached.
//! - **Write-back**: chunks, lists and manifests are written through to object storage (and
//!   cached: the next wake wants exactly them); manifests stay create-only and fenced.
//! - **Garbage collection** ([`gc`]): chunks, lists and archived WAL no retained image needs.

pub mod cache;
pub mod gc;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use spg_core::{DatabaseName, Generation, Lsn, StoredBytes, TimelineId};
use tracing::{debug, info};

use crate::image::repo::{latest_on_path, PARALLEL};
use crate::image::{
    ChunkHash, Content, ImageId, ImageRepo, Manifest, ObjectKind, ObjectRepo, RawBasebackup,
};
use crate::StorageError;

pub use cache::ObjectCache;

/// How a pageserver is set up.
#[derive(Debug, Clone)]
pub struct PageserverConfig {
    /// Where the object cache lives.
    pub cache_dir: PathBuf,
    /// The cache's budget in bytes.
    pub cache_bytes: u64,
    /// The most object bytes a soft basebackup sends along (before compression).
    pub basebackup_bytes: u64,
}

impl PageserverConfig {
    /// A cache in `cache_dir` with the default budgets (1 GiB cache, 8 MiB basebackups).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        PageserverConfig {
            cache_dir: cache_dir.into(),
            cache_bytes: 1 << 30,
            basebackup_bytes: 8 << 20,
        }
    }
}

/// Prometheus metrics of a pageserver.
#[derive(Debug, Clone)]
pub struct PageserverMetrics {
    /// Objects served from the cache.
    pub cache_hits: Counter,
    /// Objects fetched from object storage.
    pub cache_misses: Counter,
    /// Bytes held by the cache.
    pub cache_bytes: Gauge,
    /// Latency of object-storage reads on a cache miss.
    pub fetch_seconds: Histogram,
    /// Soft basebackups served.
    pub basebackups: Counter,
    /// Object bytes sent along with soft basebackups (before compression).
    pub basebackup_object_bytes: Counter,
    /// Object bytes served to computes (on demand and with basebackups, before compression).
    pub bytes_served: Counter,
    /// Objects written back by computes.
    pub objects_written: Counter,
    /// Images stored.
    pub images_written: Counter,
}

impl Default for PageserverMetrics {
    fn default() -> Self {
        PageserverMetrics {
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_bytes: Gauge::default(),
            fetch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            basebackups: Counter::default(),
            basebackup_object_bytes: Counter::default(),
            bytes_served: Counter::default(),
            objects_written: Counter::default(),
            images_written: Counter::default(),
        }
    }
}

impl PageserverMetrics {
    /// Register under `spg_pageserver_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("spg_pageserver");
        r.register(
            "cache_hits",
            "Objects served from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Objects fetched from object storage",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held by the object cache",
            self.cache_bytes.clone(),
        );
        r.register(
            "fetch_seconds",
            "Latency of object-storage reads on a cache miss",
            self.fetch_seconds.clone(),
        );
        r.register(
            "basebackups",
            "Soft basebackups served",
            self.basebackups.clone(),
        );
        r.register(
            "basebackup_object_bytes",
            "Object bytes sent along with soft basebackups, before compression",
            self.basebackup_object_bytes.clone(),
        );
        r.register(
            "bytes_served",
            "Object bytes served to computes, before compression",
            self.bytes_served.clone(),
        );
        r.register(
            "objects_written",
            "Chunks and lists written back",
            self.objects_written.clone(),
        );
        r.register(
            "images_written",
            "Image manifests stored",
            self.images_written.clone(),
        );
    }
}

/// A pageserver over the images in `objects`; see the module documentation.
#[derive(Debug)]
pub struct Pageserver {
    objects: ObjectRepo,
    cache: ObjectCache,
    /// Manifests are immutable: kept in memory once read (bounded by count).
    manifests: Mutex<HashMap<(DatabaseName, ImageId), Bytes>>,
    basebackup_bytes: u64,
    metrics: PageserverMetrics,
}

const MANIFESTS_KEPT: usize = 1024;

impl Pageserver {
    /// A pageserver for the images in `objects`, caching as `cfg` says.
    pub fn open(objects: ObjectRepo, cfg: &PageserverConfig) -> Result<Self, StorageError> {
        let cache = ObjectCache::open(&cfg.cache_dir, cfg.cache_bytes)?;
        let metrics = PageserverMetrics::default();
        metrics.cache_bytes.set(cache.used() as i64);
        info!(cache = %cfg.cache_dir.display(), objects = cache.len(), bytes = cache.used(),
              "pageserver cache opened");
        Ok(Pageserver {
            objects,
            cache,
            manifests: Mutex::default(),
            basebackup_bytes: cfg.basebackup_bytes,
            metrics,
        })
    }

    /// The object store repository behind it.
    pub fn objects(&self) -> &ObjectRepo {
        &self.objects
    }

    /// The object cache.
    pub fn cache(&self) -> &ObjectCache {
        &self.cache
    }

    /// Its metrics.
    pub fn metrics(&self) -> &PageserverMetrics {
        &self.metrics
    }

    fn keep_manifest(&self, db: &DatabaseName, id: ImageId, bytes: Bytes) {
        let mut m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MANIFESTS_KEPT {
            m.clear();
        }
        m.insert((db.clone(), id), bytes);
    }

    /// A decoded manifest (for the pageserver's own decisions).
    pub async fn decoded_manifest(
        &self,
        db: &DatabaseName,
        id: &ImageId,
    ) -> Result<Manifest, StorageError> {
        let m = Manifest::decode(&self.manifest(db, id).await?)?;
        if m.id != *id || &m.database != db {
            return Err(StorageError::Corrupt {
                what: format!("image manifest {id} of {db}"),
                reason: "it describes another image".into(),
            });
        }
        Ok(m)
    }

    /// The soft basebackup of the newest image of `db` on `history` as it is read: the
    /// image's encoded manifest, and the objects sent along as a stream, each as soon as it is
    /// read (so that a server sends while it reads); `None` when `db` has no image there.
    pub async fn stream_basebackup(
        self: &Arc<Self>,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<(Bytes, BasebackupObjects)>, StorageError> {
        let Some((manifest, want)) = self.basebackup_plan(db, history).await? else {
            return Ok(None);
        };
        Ok(Some((
            manifest,
            Box::pin(sent_along(Arc::clone(self), db.clone(), want)),
        )))
    }

    /// Which image a soft basebackup of `db` on `history` is of (its encoded manifest), and
    /// which objects go along.
    async fn basebackup_plan(
        &self,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<(Bytes, Vec<(ObjectKind, ChunkHash)>)>, StorageError> {
        let Some(id) = latest_on_path(self.images(db).await?, history) else {
            return Ok(None);
        };
        let manifest = self.manifest(db, &id).await?;
        let m = Manifest::decode(&manifest)?;
        let want = self.basebackup_objects(&m).await?;
        self.metrics.basebackups.inc();
        debug!(%db, image = %id, objects = want.len(), "soft basebackup");
        Ok(Some((manifest, want)))
    }

    /// What a soft basebackup of `m` sends along, in order: the part of its WAL segment that
    /// recovery reads (the segment's first page, which carries its header, and the span from
    /// the redo point to the checkpoint record); its warm set; without a warm set, the small
    /// files outside `base/`.
    async fn basebackup_objects(
        &self,
        m: &Manifest,
    ) -> Result<Vec<(ObjectKind, ChunkHash)>, StorageError> {
        let mut want: Vec<(ObjectKind, ChunkHash)> = Vec::new();
        let seg_size = crate::safekeeper::file::DEFAULT_SEGMENT_SIZE;
        let ckpt_seg = m.id.lsn.0 / seg_size;
        // Unknown redo point (no readable pg_control): the whole segment.
        let redo = self.redo_of(m).await.ok();
        let cs = u64::from(m.chunk_size);
        for f in m.files.iter().filter(|f| f.path.starts_with("pg_wal/")) {
            let name = f.path.rsplit('/').next().unwrap_or_default();
            let Some(segno) = gc::segment_number(name) else {
                continue;
            };
            let chunks = match &f.content {
                Some(Content::Chunks(c)) => c.clone(),
                Some(Content::List(h)) => {
                    want.push((ObjectKind::List, *h));
                    let list = self.get(&m.database, ObjectKind::List, h).await?;
                    crate::image::format::decode_list(&list)?.1
                }
                _ => continue,
            };
            let (from, to) = match redo {
                Some(r) if segno == ckpt_seg => {
                    let from = if r.0 / seg_size == segno {
                        r.0 % seg_size
                    } else {
                        0
                    };
                    (from / cs, (m.id.lsn.0 % seg_size + 8192) / cs)
                }
                _ => (0, u64::MAX),
            };
            for (i, h) in chunks.iter().enumerate() {
                let i = i as u64;
                if let Some(h) = h {
                    if i == 0 || (from..=to).contains(&i) {
                        want.push((ObjectKind::Chunk, *h));
                    }
                }
            }
        }
        want.extend(m.warm.iter().copied());
        if m.warm.is_empty() {
            for f in &m.files {
                if f.path.starts_with("base/") || f.path.starts_with("pg_wal/") {
                    continue;
                }
                if let Some(Content::Chunks(c)) = &f.content {
                    want.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)));
                }
            }
        }
        let mut seen = HashSet::new();
        want.retain(|o| seen.insert(*o));
        Ok(want)
    }
}

/// The objects of a soft basebackup, in order, as they are read.
pub type BasebackupObjects = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<(ObjectKind, Bytes), StorageError>> + Send>,
>;

/// The objects `want` of `db` read from `ps` (several at a time, in order), until the next
/// one would exceed the basebackup byte budget.
fn sent_along<'a, P>(
    ps: P,
    db: DatabaseName,
    want: Vec<(ObjectKind, ChunkHash)>,
) -> impl futures::Stream<Item = Result<(ObjectKind, Bytes), StorageError>> + Send + 'a
where
    P: std::ops::Deref<Target = Pageserver> + Clone + Send + Sync + 'a,
{
    let budget = ps.basebackup_bytes;
    let reader = ps.clone();
    futures::stream::iter(want)
        .map(move |(kind, h)| {
            let (ps, db) = (reader.clone(), db.clone());
            async move { Ok::<_, StorageError>((kind, ps.get(&db, kind, &h).await?)) }
        })
        .buffered(PARALLEL)
        .scan(budget, move |left, item| {
            let next = match item {
                Ok((_, b)) if b.len() as u64 > *left => None,
                Ok((kind, b)) => {
                    *left -= b.len() as u64;
                    ps.metrics.basebackup_object_bytes.inc_by(b.len() as u64);
                    Some(Ok((kind, b)))
                }
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(next)
        })
}

#[async_trait]
impl ImageRepo for Pageserver {
    async fn fence(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        self.objects.fence(db, g).await
    }

    async fn newest_fence(&self, db: &DatabaseName) -> Result<Option<Generation>, StorageError> {
        self.objects.newest_fence(db).await
    }

    async fn images(&self, db: &DatabaseName) -> Result<Vec<ImageId>, StorageError> {
        self.objects.images(db).await
    }

    async fn manifest(&self, db: &DatabaseName, id: &ImageId) -> Result<Bytes, StorageError> {
        let kept = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(db.clone(), *id))
            .cloned();
        if let Some(b) = kept {
            return Ok(b);
        }
        let b = self.objects.manifest(db, id).await?;
        // Only manifests that decode are kept: a damaged one is fetched (and refused) again.
        if Manifest::decode(&b).is_ok_and(|m| m.id == *id) {
            self.keep_manifest(db, *id, b.clone());
        }
        Ok(b)
    }

    async fn family(&self, db: &DatabaseName) -> Result<DatabaseName, StorageError> {
        self.objects.family(db).await
    }

    async fn link_family(&self, db: &DatabaseName, of: &DatabaseName) -> Result<(), StorageError> {
        self.objects.link_family(db, of).await
    }

    async fn forget_branch(&self, db: &DatabaseName) -> Result<(), StorageError> {
        self.objects.forget_branch(db).await
    }

    async fn retention(
        &self,
        db: &DatabaseName,
    ) -> Result<Option<std::time::Duration>, StorageError> {
        self.objects.retention(db).await
    }

    async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<std::time::Duration>,
    ) -> Result<(), StorageError> {
        self.objects.set_retention(db, retention).await
    }

    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        self.objects.forget(db).await?;
        // Its archived WAL too.
        let prefix = crate::safekeeper::node::archive_prefix(db);
        for meta in self.archived(&prefix).await? {
            self.objects.delete(&meta.location).await?;
        }
        Ok(())
    }

    async fn stored(&self, db: &DatabaseName) -> Result<Option<StoredBytes>, StorageError> {
        let wal = crate::safekeeper::node::archive_prefix(db);
        Ok(Some(self.objects.stored(db, &wal).await?))
    }

    async fn put_manifest(&self, m: &Manifest) -> Result<(), StorageError> {
        self.objects.put_manifest(m).await?;
        self.metrics.images_written.inc();
        self.keep_manifest(&m.database, m.id, Bytes::from(m.encode()));
        Ok(())
    }

    async fn get(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
    ) -> Result<Bytes, StorageError> {
        // Cached by family: a new database's first start reads the template's chunks, a
        // branch's its root's, warm from the other members' starts.
        let family = self.objects.family(db).await?;
        if let Some(b) = self.cache.get(&family, kind, h) {
            self.metrics.cache_hits.inc();
            self.metrics.bytes_served.inc_by(b.len() as u64);
            return Ok(b);
        }
        self.metrics.cache_misses.inc();
        let started = Instant::now();
        let b = self.objects.get(db, kind, h).await?;
        self.metrics
            .fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        if ChunkHash::of(&b) != *h {
            return Err(StorageError::Corrupt {
                what: format!("{} {h} of {db}", kind.plural()),
                reason: "its bytes in object storage do not match its hash".into(),
            });
        }
        self.cache.put(&family, kind, h, &b);
        self.metrics.cache_bytes.set(self.cache.used() as i64);
        self.metrics.bytes_served.inc_by(b.len() as u64);
        Ok(b)
    }

    async fn put(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        if ChunkHash::of(&bytes) != *h {
            return Err(StorageError::Corrupt {
                what: format!("{} {h} of {db} being written", kind.plural()),
                reason: "its bytes do not match its hash".into(),
            });
        }
        self.objects.put(db, kind, h, bytes.clone()).await?;
        self.metrics.objects_written.inc();
        let family = self.objects.family(db).await?;
        self.cache.put(&family, kind, h, &bytes);
        self.metrics.cache_bytes.set(self.cache.used() as i64);
        Ok(())
    }

    async fn basebackup(
        &self,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<RawBasebackup>, StorageError> {
        let Some((manifest, want)) = self.basebackup_plan(db, history).await? else {
            return Ok(None);
        };
        let objects = sent_along(self, db.clone(), want).try_collect().await?;
        Ok(Some(RawBasebackup { manifest, objects }))
    }
}

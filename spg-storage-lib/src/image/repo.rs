//! [`ImageRepo`]: the primitive operations an [`ImageStore`](super::ImageStore) is built on, and
//! [`ObjectRepo`], the implementation over any `object_store` backend.
//!
//! Everything above these primitives (capture, restore, the timeline-aware choice of the latest
//! image, hash checks) lives in `ImageStore` and is shared by every repository: the object store
//! itself, and a pageserver in front of it (in process, or remote over its HTTP API).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};
use spg_core::{DatabaseName, Generation, Lsn, StoredBytes, TimelineId};

pub use super::format::ObjectKind;
use super::format::{decode_list, ChunkHash, Content, ImageId, Manifest};
use crate::objects::put_create_only;
use crate::StorageError;

/// How many requests a batch keeps in flight.
pub(crate) const PARALLEL: usize = 16;

/// A soft basebackup as a repository hands it out: the encoded manifest of the image to start
/// from, and content-addressed objects (chunks and chunk lists) the compute will need first,
/// which it checks against their hashes before use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBasebackup {
    /// The image's manifest, encoded.
    pub manifest: Bytes,
    /// Chunks and chunk lists of the image, each checked by the receiver.
    pub objects: Vec<(ObjectKind, Bytes)>,
}

/// The primitive operations of an image repository. Implementations do not check hashes or
/// decode manifests: [`ImageStore`](super::ImageStore) does, end to end.
#[async_trait]
pub trait ImageRepo: Send + Sync + fmt::Debug + 'static {
    /// Record that generation `g` checked `db` out (creating the fence twice is fine).
    async fn fence(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError>;

    /// The newest generation that fenced `db`.
    async fn newest_fence(&self, db: &DatabaseName) -> Result<Option<Generation>, StorageError>;

    /// Every image of `db`, oldest first.
    async fn images(&self, db: &DatabaseName) -> Result<Vec<ImageId>, StorageError>;

    /// The encoded manifest of image `id`.
    async fn manifest(&self, db: &DatabaseName, id: &ImageId) -> Result<Bytes, StorageError>;

    /// Store the (validated) manifest `m`, create-only and fenced:
    /// [`StorageError::ImageExists`], [`StorageError::StaleGeneration`].
    async fn put_manifest(&self, m: &Manifest) -> Result<(), StorageError>;

    /// The object `h` of kind `kind`.
    async fn get(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
    ) -> Result<Bytes, StorageError>;

    /// Several objects at once, in the order asked (a remote repository answers in one round
    /// trip).
    async fn get_many(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        hs: &[ChunkHash],
    ) -> Result<Vec<Bytes>, StorageError> {
        futures::stream::iter(hs.iter().copied())
            .map(|h| async move { self.get(db, kind, &h).await })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// Store the object `h` (content-addressed: storing it again is harmless).
    async fn put(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
        bytes: Bytes,
    ) -> Result<(), StorageError>;

    /// What is stored for `db` (images and archived WAL), if this repository can tell.
    async fn stored(&self, _db: &DatabaseName) -> Result<Option<StoredBytes>, StorageError> {
        Ok(None)
    }

    /// The family whose chunks and lists `db` shares: the root database of the branches it
    /// belongs to (itself, unless it is a branch).
    async fn family(&self, db: &DatabaseName) -> Result<DatabaseName, StorageError> {
        Ok(db.clone())
    }

    /// Make `db` (which has no images yet) a member of `of`'s family: its chunks and lists are
    /// kept with the family's, so an image of `db` can name chunks of `of`'s images without a
    /// copy. Create-only: linking the same way again is fine, linking elsewhere is refused.
    async fn link_family(&self, db: &DatabaseName, of: &DatabaseName) -> Result<(), StorageError> {
        let _ = of;
        Err(StorageError::Unsupported(format!(
            "this image repository cannot branch {db}"
        )))
    }

    /// Forget `db`, a branch that never got an image (making it failed): its family link and
    /// generation fences go, so the name can be used afresh.
    async fn forget_branch(&self, db: &DatabaseName) -> Result<(), StorageError> {
        let _ = db;
        Ok(())
    }

    /// `db`'s own history window, when it has one (otherwise garbage collection's default).
    async fn retention(&self, db: &DatabaseName) -> Result<Option<Duration>, StorageError> {
        let _ = db;
        Ok(None)
    }

    /// Give `db` its own history window (`None`: back to the default). Garbage collection
    /// keeps every moment within it reachable.
    async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<Duration>,
    ) -> Result<(), StorageError> {
        let _ = retention;
        Err(StorageError::Unsupported(format!(
            "this image repository keeps no history window for {db}"
        )))
    }

    /// Forget `db`, a deleted database: its images go (manifests first), then its generation
    /// fences and family link, so the name can be used afresh. Chunks and lists of its own
    /// family go too when no other database shares them; otherwise the family root's garbage
    /// collection takes them once no image names them.
    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "this image repository cannot delete {db}"
        )))
    }

    /// Check `db` out for generation `g` in one step: refused
    /// ([`StorageError::StaleGeneration`]) when `g` or a newer generation fenced it already;
    /// else fenced at `g` ([`ImageRepo::fence`]), then the soft basebackup of the newest image
    /// on `history` ([`ImageRepo::basebackup`]). The default makes those calls one by one; a
    /// repository across a network does it in one round trip.
    async fn checkout(
        &self,
        db: &DatabaseName,
        g: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<RawBasebackup>, StorageError> {
        fence_for_checkout(self, db, g).await?;
        self.basebackup(db, history).await
    }

    /// The soft basebackup of the newest image of `db` on `history`: its manifest, plus whatever
    /// objects the repository chooses to send along (none by default).
    async fn basebackup(
        &self,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<RawBasebackup>, StorageError> {
        let Some(id) = latest_on_path(self.images(db).await?, history) else {
            return Ok(None);
        };
        Ok(Some(RawBasebackup {
            manifest: self.manifest(db, &id).await?,
            objects: Vec::new(),
        }))
    }
}

/// The fencing half of [`ImageRepo::checkout`]: refused
/// ([`StorageError::StaleGeneration`]) when `g` or a newer generation fenced `db` already, else
/// `db` is fenced at `g`.
pub async fn fence_for_checkout<R: ImageRepo + ?Sized>(
    repo: &R,
    db: &DatabaseName,
    g: Generation,
) -> Result<(), StorageError> {
    refuse_unless_newer(repo.newest_fence(db).await?, g)?;
    repo.fence(db, g).await
}

/// `StaleGeneration` when `g` is not newer than `newest` (a generation that fenced or checked
/// out already).
pub fn refuse_unless_newer(newest: Option<Generation>, g: Generation) -> Result<(), StorageError> {
    match newest.filter(|n| *n >= g) {
        Some(newest) => Err(StorageError::StaleGeneration {
            offered: g.0,
            current: newest.0,
        }),
        None => Ok(()),
    }
}

/// The newest of `ids` on `history` ([`ImageId::on_path`]).
pub fn latest_on_path(ids: Vec<ImageId>, history: &[(TimelineId, Lsn)]) -> Option<ImageId> {
    ids.into_iter()
        .filter(|id| id.on_path(history))
        .max_by_key(|id| (id.lsn, id.generation))
}

fn os_err(op: &'static str, key: &ObjectPath, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
        e => StorageError::ObjectStore {
            op,
            key: key.to_string(),
            source: Box::new(e),
        },
    }
}

/// An image repository in an `object_store` backend. Layout under `<prefix>/<database>/`:
///
/// ```text
/// images/<LSN>-<TLI>-<GEN>.json   manifests (create-only)
/// chunks/<h[..2]>/<h>             chunks
/// lists/<h>                       chunk lists
/// fences/<GEN>                    one empty object per generation that checked out
/// family                          a branch: the root database whose chunks and lists it shares
/// ```
///
/// Chunks and lists live under the database's family ([`ImageRepo::family`]): a branch's images
/// name its root's chunks, and a branch of a branch belongs to the same root.
#[derive(Debug, Clone)]
pub struct ObjectRepo {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    families: Arc<std::sync::Mutex<HashMap<DatabaseName, Family>>>,
}

/// A database's family as read: a link never changes once written; no link is only believed
/// for [`NO_LINK_TTL`] (a branch of that name may be made meanwhile).
#[derive(Debug, Clone)]
struct Family {
    root: DatabaseName,
    until: Option<Instant>,
}

const NO_LINK_TTL: Duration = Duration::from_secs(10);

impl ObjectRepo {
    /// Images under `prefix` (e.g. `images`) of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        ObjectRepo {
            store,
            prefix: prefix.into().trim_matches('/').to_owned(),
            families: Default::default(),
        }
    }

    fn remember_family(&self, db: &DatabaseName, root: DatabaseName, until: Option<Instant>) {
        self.families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.clone(), Family { root, until });
    }

    /// The key of object `h` of kind `kind` of `db`, under its family.
    pub async fn family_object_key(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
    ) -> Result<ObjectPath, StorageError> {
        Ok(self.object_key(&self.family(db).await?, kind, h))
    }

    /// Every database of `family` (those whose family it is, itself included when it has
    /// anything stored).
    pub async fn family_members(
        &self,
        family: &DatabaseName,
    ) -> Result<Vec<DatabaseName>, StorageError> {
        let mut out = Vec::new();
        for db in self.databases().await? {
            if &self.family(&db).await? == family {
                out.push(db);
            }
        }
        Ok(out)
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of `rest` (e.g. `images/…`) of `db`.
    pub fn key(&self, db: &DatabaseName, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(format!("{}/{rest}", db.as_str()))
        } else {
            ObjectPath::from(format!("{}/{}/{rest}", self.prefix, db.as_str()))
        }
    }

    /// The key of object `h` of kind `kind` of `db`.
    pub fn object_key(&self, db: &DatabaseName, kind: ObjectKind, h: &ChunkHash) -> ObjectPath {
        let hex = h.to_string();
        match kind {
            ObjectKind::Chunk => self.key(db, &format!("chunks/{}/{hex}", &hex[..2])),
            ObjectKind::List => self.key(db, &format!("lists/{hex}")),
        }
    }

    /// The key of the manifest of image `id` of `db`.
    pub fn manifest_key(&self, db: &DatabaseName, id: &ImageId) -> ObjectPath {
        self.key(db, &format!("images/{}", id.file_name()))
    }

    async fn get_key(&self, key: &ObjectPath) -> Result<Bytes, StorageError> {
        let r = self
            .store
            .get(key)
            .await
            .map_err(|e| os_err("get", key, e))?;
        r.bytes().await.map_err(|e| os_err("get", key, e))
    }

    /// What is stored for `db`: its images (manifests, and the chunks and lists they name)
    /// under this repository's prefix, and the WAL archived under `wal_prefix` of the same
    /// object store.
    pub async fn stored(
        &self,
        db: &DatabaseName,
        wal_prefix: &ObjectPath,
    ) -> Result<StoredBytes, StorageError> {
        let mut out = StoredBytes::default();
        // Chunks and lists are the family's: the database is charged for those its images
        // name (shared ones counted in every database naming them).
        let family = self.family(db).await?;
        let mut sizes: HashMap<(ObjectKind, ChunkHash), u64> = HashMap::new();
        for kind in [ObjectKind::Chunk, ObjectKind::List] {
            for meta in self.list_under(&family, kind.plural()).await? {
                if let Some(h) = meta.location.filename().and_then(ChunkHash::parse) {
                    sizes.insert((kind, h), meta.size);
                }
            }
        }
        let mut named: HashSet<(ObjectKind, ChunkHash)> = HashSet::new();
        for meta in self.list_under(db, "images").await? {
            out.image_bytes += meta.size;
            out.images += 1;
            let Some(id) = meta.location.filename().and_then(ImageId::parse_file_name) else {
                continue;
            };
            let m = Manifest::decode(&self.manifest(db, &id).await?)?;
            for f in &m.files {
                match &f.content {
                    Some(Content::Chunks(c)) => {
                        named.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)))
                    }
                    Some(Content::List(h)) => {
                        named.insert((ObjectKind::List, *h));
                        let (_, c) = decode_list(&self.get(db, ObjectKind::List, h).await?)?;
                        named.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)));
                    }
                    _ => {}
                }
            }
        }
        out.image_bytes += named.iter().filter_map(|k| sizes.get(k)).sum::<u64>();
        let wal: Vec<ObjectMeta> = self
            .store
            .list(Some(wal_prefix))
            .try_collect()
            .await
            .map_err(|e| os_err("list", wal_prefix, e))?;
        out.wal_archive_bytes = wal.iter().map(|m| m.size).sum();
        Ok(out)
    }

    /// Every object under `dir` (e.g. `chunks`) of `db`.
    pub async fn list_under(
        &self,
        db: &DatabaseName,
        dir: &str,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = self.key(db, dir);
        self.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| os_err("list", &prefix, e))
    }

    async fn names_under(&self, db: &DatabaseName, dir: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_under(db, dir)
            .await?
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect())
    }

    /// Delete the object at `key` (gone already is fine).
    pub async fn delete(&self, key: &ObjectPath) -> Result<(), StorageError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err("delete", key, e)),
        }
    }

    /// Drop `db`'s generation fences and its family link.
    async fn unlink(&self, db: &DatabaseName) -> Result<(), StorageError> {
        for fence in self.list_under(db, "fences").await? {
            self.delete(&fence.location).await?;
        }
        self.delete(&self.key(db, "family")).await?;
        self.families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(db);
        Ok(())
    }

    /// Every database with anything stored.
    pub async fn databases(&self) -> Result<Vec<DatabaseName>, StorageError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let listed = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| os_err("list", &prefix.clone().unwrap_or_default(), e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| DatabaseName::new(n).ok()))
            .collect())
    }
}

#[async_trait]
impl ImageRepo for ObjectRepo {
    async fn fence(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        let key = self.key(db, &format!("fences/{:016X}", g.0));
        put_create_only(self.store.as_ref(), &key, PutPayload::new())
            .await
            .map_err(|e| os_err("put", &key, e))?;
        Ok(())
    }

    async fn newest_fence(&self, db: &DatabaseName) -> Result<Option<Generation>, StorageError> {
        Ok(self
            .names_under(db, "fences")
            .await?
            .iter()
            .filter_map(|n| u64::from_str_radix(n, 16).ok())
            .max()
            .map(Generation))
    }

    async fn images(&self, db: &DatabaseName) -> Result<Vec<ImageId>, StorageError> {
        let mut ids: Vec<ImageId> = self
            .names_under(db, "images")
            .await?
            .iter()
            .filter_map(|n| ImageId::parse_file_name(n))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn manifest(&self, db: &DatabaseName, id: &ImageId) -> Result<Bytes, StorageError> {
        self.get_key(&self.manifest_key(db, id)).await
    }

    async fn put_manifest(&self, m: &Manifest) -> Result<(), StorageError> {
        if let Some(newest) = self.newest_fence(&m.database).await? {
            if newest > m.id.generation {
                return Err(StorageError::StaleGeneration {
                    offered: m.id.generation.0,
                    current: newest.0,
                });
            }
        }
        let key = self.manifest_key(&m.database, &m.id);
        match put_create_only(self.store.as_ref(), &key, m.encode().into()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StorageError::ImageExists(m.id)),
            Err(e) => Err(os_err("put", &key, e)),
        }
    }

    async fn get(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
    ) -> Result<Bytes, StorageError> {
        self.get_key(&self.family_object_key(db, kind, h).await?)
            .await
    }

    async fn family(&self, db: &DatabaseName) -> Result<DatabaseName, StorageError> {
        let known = self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(db)
            .filter(|f| f.until.is_none_or(|t| Instant::now() < t))
            .map(|f| f.root.clone());
        if let Some(root) = known {
            return Ok(root);
        }
        let key = self.key(db, "family");
        match self.get_key(&key).await {
            Ok(b) => {
                let root = std::str::from_utf8(&b)
                    .ok()
                    .and_then(|t| DatabaseName::new(t.trim()).ok())
                    .ok_or_else(|| StorageError::Corrupt {
                        what: key.to_string(),
                        reason: "not a database name".into(),
                    })?;
                self.remember_family(db, root.clone(), None);
                Ok(root)
            }
            Err(StorageError::NotFound(_)) => {
                self.remember_family(db, db.clone(), Some(Instant::now() + NO_LINK_TTL));
                Ok(db.clone())
            }
            Err(e) => Err(e),
        }
    }

    async fn link_family(&self, db: &DatabaseName, of: &DatabaseName) -> Result<(), StorageError> {
        let root = self.family(of).await?;
        if &root == db {
            return Err(StorageError::Protocol(format!(
                "{db} cannot join its own family"
            )));
        }
        let key = self.key(db, "family");
        let created = put_create_only(
            self.store.as_ref(),
            &key,
            PutPayload::from(root.as_str().to_owned()),
        )
        .await
        .map_err(|e| os_err("put", &key, e))?;
        self.families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(db);
        let now = self.family(db).await?;
        if !created && now != root {
            return Err(StorageError::Protocol(format!(
                "{db} belongs to the family of {now}, not of {root}"
            )));
        }
        Ok(())
    }

    async fn retention(&self, db: &DatabaseName) -> Result<Option<Duration>, StorageError> {
        let key = self.key(db, "retention");
        let bytes = match self.store.get(&key).await {
            Ok(r) => r.bytes().await.map_err(|e| os_err("get", &key, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err("get", &key, e)),
        };
        let secs = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| StorageError::Corrupt {
                what: key.to_string(),
                reason: "not a number of seconds".into(),
            })?;
        Ok(Some(Duration::from_secs(secs)))
    }

    async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<Duration>,
    ) -> Result<(), StorageError> {
        let key = self.key(db, "retention");
        match retention {
            Some(r) => {
                self.store
                    .put(&key, Bytes::from(r.as_secs().to_string()).into())
                    .await
                    .map_err(|e| os_err("put", &key, e))?;
                Ok(())
            }
            None => self.delete(&key).await,
        }
    }

    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        self.delete(&self.key(db, "retention")).await?;
        for image in self.list_under(db, "images").await? {
            self.delete(&image.location).await?;
        }
        self.unlink(db).await?;
        let others = self
            .family_members(db)
            .await?
            .into_iter()
            .filter(|m| m != db)
            .count();
        if others == 0 {
            for dir in [ObjectKind::Chunk.plural(), ObjectKind::List.plural()] {
                for object in self.list_under(db, dir).await? {
                    self.delete(&object.location).await?;
                }
            }
        }
        Ok(())
    }

    async fn forget_branch(&self, db: &DatabaseName) -> Result<(), StorageError> {
        if !self.images(db).await?.is_empty() {
            return Err(StorageError::Protocol(format!(
                "{db} has images: its family link stays"
            )));
        }
        self.unlink(db).await
    }

    async fn put(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let key = self.family_object_key(db, kind, h).await?;
        self.store
            .put(&key, bytes.into())
            .await
            .map_err(|e| os_err("put", &key, e))?;
        Ok(())
    }
}

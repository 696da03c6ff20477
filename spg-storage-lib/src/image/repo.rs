//! [`ImageRepo`]: the primitive operations an [`ImageStore`](super::ImageStore) is built on, and
//! [`ObjectRepo`], the implementation over any `object_store` backend.
//!
//! Everything above these primitives (capture, restore, the timeline-aware choice of the latest
//! image, hash checks) lives in `ImageStore` and is shared by every repository: the object store
//! itself, and a pageserver in front of it (in process, or remote over its HTTP API).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};
use spg_core::{DatabaseName, Generation, Lsn, StoredBytes, TimelineId};

pub use super::format::ObjectKind;
use super::format::{ChunkHash, ImageId, Manifest};
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
/// ```
#[derive(Debug, Clone)]
pub struct ObjectRepo {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl ObjectRepo {
    /// Images under `prefix` (e.g. `images`) of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        ObjectRepo {
            store,
            prefix: prefix.into().trim_matches('/').to_owned(),
        }
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

    /// What is stored for `db`: its images (manifests, chunks, lists) under this repository's
    /// prefix, and the WAL archived under `wal_prefix` of the same object store.
    pub async fn stored(
        &self,
        db: &DatabaseName,
        wal_prefix: &ObjectPath,
    ) -> Result<StoredBytes, StorageError> {
        let mut out = StoredBytes::default();
        for dir in ["images", "chunks", "lists"] {
            for meta in self.list_under(db, dir).await? {
                out.image_bytes += meta.size;
                out.images += u64::from(dir == "images");
            }
        }
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
        self.get_key(&self.object_key(db, kind, h)).await
    }

    async fn put(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let key = self.object_key(db, kind, h);
        self.store
            .put(&key, bytes.into())
            .await
            .map_err(|e| os_err("put", &key, e))?;
        Ok(())
    }
}

//! Garbage collection of images, chunks, lists and archived WAL.
//!
//! Which images stay: every image younger than the retention window and the newest one older
//! than it (replay to the window's first moment starts there), the newest
//! [`GcPolicy::keep_images`] images, and, when the caller knows the current timeline path, the
//! newest image on it and everything after it. Everything else is deleted, manifest first; then
//! every chunk and list no remaining image names is deleted, unless it is younger than the grace
//! period (a write-back in progress uploads its chunks before its manifest). Chunks and lists
//! belong to the database's family (its branches share them) and are swept with the family's
//! root: what any image of any member names stays. Archived WAL segments wholly before the oldest remaining image's redo point go
//! too.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spg_core::{DatabaseName, Lsn, TimelineId};
use tracing::info;

use super::Pageserver;
use crate::image::repo::latest_on_path;
use crate::image::{ChunkHash, Content, ImageRepo, ObjectKind};
use crate::pg_control::ControlFile;
use crate::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use crate::StorageError;

/// How long any moment of a database's history stays reachable (a branch or a restore can
/// start there) by default: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What garbage collection keeps.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// The history window: images younger than this stay, and the newest one older than it
    /// (where replay to the window's first moment starts), with the WAL after it.
    pub retention: Duration,
    /// At least this many of the newest images stay (at least one).
    pub keep_images: usize,
    /// Unreferenced objects younger than this stay (uploads of a capture in progress).
    pub grace: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            retention: DEFAULT_RETENTION,
            keep_images: 2,
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Images kept.
    pub images_kept: u64,
    /// Images deleted.
    pub images_deleted: u64,
    /// Chunks and lists deleted.
    pub objects_deleted: u64,
    /// Bytes of chunks and lists deleted.
    pub bytes_deleted: u64,
    /// Archived WAL segments deleted.
    pub wal_segments_deleted: u64,
}

impl Pageserver {
    /// Collect `db`'s garbage under `policy`, with `db`'s own history window instead of
    /// `policy.retention` where it has one; `history` is the current timeline path if known.
    /// `wal` is the object-store prefix of the database's archived WAL (e.g. `wal/<db>`), if
    /// archived WAL should be collected too.
    pub async fn gc(
        &self,
        db: &DatabaseName,
        policy: &GcPolicy,
        history: Option<&[(TimelineId, Lsn)]>,
        wal: Option<&object_store::path::Path>,
    ) -> Result<GcStats, StorageError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let own = ImageRepo::retention(&self.objects, db).await?;
        let policy = &GcPolicy {
            retention: own.unwrap_or(policy.retention),
            ..policy.clone()
        };
        let ids = self.images(db).await?;
        let mut keep: HashSet<_> = HashSet::new();
        let mut by_age = ids.clone();
        by_age.sort_by_key(|id| (id.lsn, id.generation));
        keep.extend(by_age.iter().rev().take(policy.keep_images.max(1)).copied());
        if let Some(path) = history {
            if let Some(current) = latest_on_path(ids.clone(), path) {
                keep.extend(
                    ids.iter()
                        .filter(|id| (id.lsn, id.generation) >= (current.lsn, current.generation))
                        .copied(),
                );
            }
        }
        let mut decoded = Vec::with_capacity(ids.len());
        for id in &ids {
            decoded.push(self.decoded_manifest(db, id).await?);
        }
        let old = |m: &crate::image::Manifest| {
            Duration::from_millis(now_ms.saturating_sub(m.created_at_ms)) >= policy.retention
        };
        // The window's first moment lies after the newest image older than the window.
        if let Some(start) = decoded
            .iter()
            .filter(|m| old(m))
            .max_by_key(|m| (m.id.lsn, m.id.generation))
        {
            keep.insert(start.id);
        }
        let mut manifests = Vec::new();
        let mut stats = GcStats::default();
        for m in decoded {
            let id = &m.id;
            if keep.contains(id) || !old(&m) {
                manifests.push(m);
            } else {
                self.objects
                    .delete(&self.objects.manifest_key(db, id))
                    .await?;
                stats.images_deleted += 1;
            }
        }
        stats.images_kept = manifests.len() as u64;
        // Mark.
        let mut live: HashSet<(ObjectKind, ChunkHash)> = HashSet::new();
        // The oldest redo point of a kept image; `None` also when one is unknown (then all WAL
        // stays).
        let mut redo: Option<Lsn> = None;
        let mut redo_known = true;
        for m in &manifests {
            self.mark(m, &mut live).await?;
            match self.redo_of(m).await {
                Ok(r) => redo = Some(redo.map_or(r, |x: Lsn| x.min(r))),
                Err(e) => {
                    tracing::warn!(%db, image = %m.id, error = %e, "no redo point: keeping all WAL");
                    redo_known = false;
                }
            }
        }
        // Chunks and lists are the family's, swept when its root is collected: every image of
        // every member (its branches, or the databases made from a template) keeps what it
        // names. A member without images is a branch being made, whose image will name chunks
        // no manifest names yet: nothing is swept meanwhile.
        let family = self.objects.family(db).await?;
        let mut sweep = &family == db;
        let members = if sweep {
            self.objects.family_members(&family).await?
        } else {
            Vec::new()
        };
        for other in members {
            if &other == db {
                continue;
            }
            let ids = self.images(&other).await?;
            if ids.is_empty() {
                info!(%db, branch = %other, "a branch is being made: chunks are not swept");
                sweep = false;
            }
            for id in ids {
                let m = self.decoded_manifest(&other, &id).await?;
                self.mark(&m, &mut live).await?;
            }
        }
        // Sweep.
        let grace_ms = policy.grace.as_millis() as u64;
        let kinds = if sweep {
            vec![ObjectKind::Chunk, ObjectKind::List]
        } else {
            Vec::new()
        };
        for kind in kinds {
            for meta in self.objects.list_under(&family, kind.plural()).await? {
                let Some(h) = meta.location.filename().and_then(ChunkHash::parse) else {
                    continue;
                };
                let age_ms = now_ms.saturating_sub(meta.last_modified.timestamp_millis() as u64);
                if live.contains(&(kind, h)) || age_ms < grace_ms {
                    continue;
                }
                self.objects.delete(&meta.location).await?;
                self.cache().remove(db, kind, &h);
                stats.objects_deleted += 1;
                stats.bytes_deleted += meta.size;
            }
        }
        // Archived WAL wholly before the oldest kept redo point (no image: keep it all).
        if let (Some(prefix), Some(redo), true) = (wal, redo, redo_known) {
            let listed = self.archived(prefix).await?;
            let first_needed = redo.0 / DEFAULT_SEGMENT_SIZE;
            for meta in listed {
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                if let Some(segno) = segment_number(name) {
                    if segno < first_needed {
                        self.objects.delete(&meta.location).await?;
                        stats.wal_segments_deleted += 1;
                    }
                }
            }
        }
        info!(%db, ?stats, "garbage collected");
        Ok(stats)
    }

    /// Add what image `m` names (chunks, lists and the lists' chunks) to `live`.
    /// Every archived WAL file under `prefix` (e.g. `wal/<db>`).
    pub(crate) async fn archived(
        &self,
        prefix: &object_store::path::Path,
    ) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
        futures::TryStreamExt::try_collect(self.objects.object_store().list(Some(prefix)))
            .await
            .map_err(|e| StorageError::ObjectStore {
                op: "list",
                key: prefix.to_string(),
                source: Box::new(e),
            })
    }

    /// Every chunk and list the images `db` holds now name (its family's objects it keeps).
    pub async fn named_objects(
        &self,
        db: &DatabaseName,
    ) -> Result<HashSet<(ObjectKind, ChunkHash)>, StorageError> {
        let mut live = HashSet::new();
        for id in self.images(db).await? {
            let m = self.decoded_manifest(db, &id).await?;
            self.mark(&m, &mut live).await?;
        }
        Ok(live)
    }

    async fn mark(
        &self,
        m: &crate::image::Manifest,
        live: &mut HashSet<(ObjectKind, ChunkHash)>,
    ) -> Result<(), StorageError> {
        for f in &m.files {
            match &f.content {
                Some(Content::Chunks(c)) => {
                    live.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)))
                }
                Some(Content::List(h)) => {
                    live.insert((ObjectKind::List, *h));
                    let list = self.get(&m.database, ObjectKind::List, h).await?;
                    let (_, c) = crate::image::format::decode_list(&list)?;
                    live.extend(c.iter().flatten().map(|h| (ObjectKind::Chunk, *h)));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The redo point of image `m`: replay from it needs WAL from there on.
    pub(crate) async fn redo_of(&self, m: &crate::image::Manifest) -> Result<Lsn, StorageError> {
        let entry = m
            .files
            .iter()
            .find(|f| f.path == "global/pg_control")
            .ok_or_else(|| StorageError::Corrupt {
                what: format!("image {}", m.id),
                reason: "it has no global/pg_control".into(),
            })?;
        let bytes = match &entry.content {
            Some(Content::Inline(b)) => bytes::Bytes::from(b.clone()),
            Some(Content::Chunks(c)) => match c.first() {
                Some(Some(h)) => self.get(&m.database, ObjectKind::Chunk, h).await?,
                _ => bytes::Bytes::from(vec![0u8; 512]),
            },
            _ => bytes::Bytes::new(),
        };
        Ok(ControlFile::parse(&bytes)?.redo)
    }
}

/// The segment number of a WAL segment file name (default segment size); `None` for anything
/// else (history files, partial segments).
pub(crate) fn segment_number(name: &str) -> Option<u64> {
    spg_core::wal_files::parse_segment_file_name(name, DEFAULT_SEGMENT_SIZE).map(|(_, segno)| segno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_numbers() {
        assert_eq!(segment_number("000000010000000000000003"), Some(3));
        assert_eq!(segment_number("0000000200000001000000FF"), Some(256 + 255));
        assert_eq!(segment_number("00000002.history"), None);
        assert_eq!(segment_number("000000010000000000000003.partial"), None);
    }
}

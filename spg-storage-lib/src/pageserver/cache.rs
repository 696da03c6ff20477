//! [`ObjectCache`]: a bounded, least-recently-used cache of content-addressed objects on local
//! disk.
//!
//! Objects are immutable (their name is their hash), so the cache never has to invalidate: it
//! only evicts, oldest use first, to stay under its byte budget. Every read is checked against
//! the hash; a damaged file is dropped and counts as a miss. The index is rebuilt from the
//! directory on open (by modification time), so a restarted pageserver starts warm.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use spg_core::DatabaseName;

use crate::image::{ChunkHash, ObjectKind};
use crate::StorageError;

type Key = (DatabaseName, ObjectKind, ChunkHash);

#[derive(Default)]
struct Index {
    /// key → (last use, size)
    entries: HashMap<Key, (u64, u64)>,
    /// last use → key
    order: BTreeMap<u64, Key>,
    used: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, key: &Key) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some((t, _)) => {
                self.order.remove(t);
                *t = tick;
                self.order.insert(tick, key.clone());
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, key: Key, size: u64) {
        if self.touch(&key) {
            return;
        }
        self.entries.insert(key.clone(), (self.tick, size));
        self.order.insert(self.tick, key);
        self.used += size;
    }

    fn remove(&mut self, key: &Key) -> Option<u64> {
        let (t, size) = self.entries.remove(key)?;
        self.order.remove(&t);
        self.used -= size;
        Some(size)
    }
}

/// Counters of an [`ObjectCache`].
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: AtomicU64,
    /// Reads the cache could not serve.
    pub misses: AtomicU64,
    /// Objects evicted to stay under the budget.
    pub evictions: AtomicU64,
}

/// A bounded cache of objects on local disk; see the module documentation.
pub struct ObjectCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    stats: CacheStats,
}

impl std::fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .finish()
    }
}

impl ObjectCache {
    /// A cache in `dir` holding at most `capacity` bytes; what is in `dir` already is kept
    /// (most recently modified counts as most recently used) and trimmed to the budget.
    pub fn open(dir: impl Into<PathBuf>, capacity: u64) -> Result<Self, StorageError> {
        let dir = dir.into();
        spg_core::fsmode::private_dir(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        let mut found = Vec::new();
        scan(&dir, &mut found)?;
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let cache = ObjectCache {
            dir,
            capacity,
            index: Mutex::default(),
            stats: CacheStats::default(),
        };
        {
            let mut ix = cache.lock();
            for (_, key, size) in found {
                ix.insert(key, size);
            }
        }
        cache.trim();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir
            .join(key.0.as_str())
            .join(key.1.plural())
            .join(key.2.to_string())
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache's counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The object, if cached and intact.
    pub fn get(&self, db: &DatabaseName, kind: ObjectKind, h: &ChunkHash) -> Option<Bytes> {
        let key = (db.clone(), kind, *h);
        if !self.lock().touch(&key) {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match std::fs::read(self.path(&key)) {
            Ok(b) if ChunkHash::of(&b) == *h => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(Bytes::from(b))
            }
            _ => {
                // Damaged or gone: forget it; the caller fetches it again.
                self.lock().remove(&key);
                let _ = std::fs::remove_file(self.path(&key));
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keep `bytes` (whose hash must be `h`), evicting the least recently used objects beyond
    /// the budget. A failure to write only means the object is not cached.
    pub fn put(&self, db: &DatabaseName, kind: ObjectKind, h: &ChunkHash, bytes: &[u8]) {
        let key = (db.clone(), kind, *h);
        if bytes.len() as u64 > self.capacity || self.lock().touch(&key) {
            return;
        }
        let path = self.path(&key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = path
            .parent()
            .map_or(Ok(()), spg_core::fsmode::private_dir)
            .and_then(|()| spg_core::fsmode::write_private(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "pageserver cache: write failed");
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        self.lock().insert(key, bytes.len() as u64);
        self.trim();
    }

    /// Drop `db`'s object `h`, if cached (garbage collection).
    pub fn remove(&self, db: &DatabaseName, kind: ObjectKind, h: &ChunkHash) {
        let key = (db.clone(), kind, *h);
        if self.lock().remove(&key).is_some() {
            let _ = std::fs::remove_file(self.path(&key));
        }
    }

    fn trim(&self) {
        loop {
            let victim = {
                let mut ix = self.lock();
                if ix.used <= self.capacity {
                    return;
                }
                let Some((_, key)) = ix.order.iter().next().map(|(t, k)| (*t, k.clone())) else {
                    return;
                };
                ix.remove(&key);
                key
            };
            let _ = std::fs::remove_file(self.path(&victim));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every cached object under `dir`: (modification time, key, size). Anything else (temporary
/// files of an interrupted write) is removed.
fn scan(dir: &Path, out: &mut Vec<(std::time::SystemTime, Key, u64)>) -> Result<(), StorageError> {
    let rd = |d: &Path| std::fs::read_dir(d).map_err(|e| StorageError::io("read dir", d, e));
    for db_entry in rd(dir)? {
        let db_path = db_entry
            .map_err(|e| StorageError::io("read dir", dir, e))?
            .path();
        let Some(db) = db_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| DatabaseName::new(n).ok())
        else {
            continue;
        };
        if !db_path.is_dir() {
            continue;
        }
        for kind in [ObjectKind::Chunk, ObjectKind::List] {
            let kdir = db_path.join(kind.plural());
            if !kdir.is_dir() {
                continue;
            }
            for e in rd(&kdir)? {
                let p = e
                    .map_err(|e| StorageError::io("read dir", &kdir, e))?
                    .path();
                let parsed = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(ChunkHash::parse);
                let meta = std::fs::metadata(&p).ok();
                match (parsed, meta) {
                    (Some(h), Some(m)) if m.is_file() => {
                        let mtime = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                        out.push((mtime, (db.clone(), kind, h), m.len()));
                    }
                    _ => {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> DatabaseName {
        DatabaseName::new("app").unwrap()
    }

    #[test]
    fn evicts_least_recently_used_and_reopens_warm() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ObjectCache::open(tmp.path(), 3000).unwrap();
        let objs: Vec<(ChunkHash, Vec<u8>)> = (0..4u8)
            .map(|i| {
                let b = vec![i + 1; 1000];
                (ChunkHash::of(&b), b)
            })
            .collect();
        for (h, b) in &objs[..3] {
            cache.put(&db(), ObjectKind::Chunk, h, b);
        }
        // Use the oldest: the second is now least recently used and goes first.
        assert!(cache.get(&db(), ObjectKind::Chunk, &objs[0].0).is_some());
        cache.put(&db(), ObjectKind::Chunk, &objs[3].0, &objs[3].1);
        assert_eq!(cache.used(), 3000);
        assert!(cache.get(&db(), ObjectKind::Chunk, &objs[1].0).is_none());
        assert_eq!(cache.stats().evictions.load(Ordering::Relaxed), 1);
        // Keyed by database and kind too.
        let other = DatabaseName::new("other").unwrap();
        assert!(cache.get(&other, ObjectKind::Chunk, &objs[0].0).is_none());
        assert!(cache.get(&db(), ObjectKind::List, &objs[0].0).is_none());
        drop(cache);
        let again = ObjectCache::open(tmp.path(), 2000).unwrap();
        assert_eq!(again.len(), 2, "reopened and trimmed to the new budget");
        assert!(again.used() <= 2000);
    }

    #[test]
    fn a_damaged_file_is_a_miss_not_wrong_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ObjectCache::open(tmp.path(), 1 << 20).unwrap();
        let b = b"page bytes".to_vec();
        let h = ChunkHash::of(&b);
        cache.put(&db(), ObjectKind::Chunk, &h, &b);
        let path = tmp.path().join("app/chunks").join(h.to_string());
        std::fs::write(&path, b"damaged!!!").unwrap();
        assert!(cache.get(&db(), ObjectKind::Chunk, &h).is_none());
        assert!(cache.is_empty());
        // Leftovers of an interrupted write are cleaned up on open.
        std::fs::write(tmp.path().join("app/chunks/xyz.tmp1"), b"x").unwrap();
        let again = ObjectCache::open(tmp.path(), 1 << 20).unwrap();
        assert!(again.is_empty());
        assert!(!tmp.path().join("app/chunks/xyz.tmp1").exists());
    }
}

//! [`SpareSegments`]: zeroed segment files made ahead of need.
//!
//! A safekeeper writes WAL into segment files filled with real zeros and synced before their
//! first byte is written (so that each later flush is one data flush, not a journal commit).
//! Making one is 16 MiB written and synced; on the write path, the commit that crosses into a
//! new segment (and a new database's first commit) waits for it. A node keeps a few made ahead
//! instead, in a directory of its own on the same filesystem, and a store takes one by a rename.
//!
//! ```text
//! <node dir>/.spare/spare-<n>      ready: zeros, synced, named only once complete
//! <node dir>/.spare/spare-<n>.tmp  being made (removed on open: a crash may have cut it short)
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::file::SEAL_AREA;
use crate::fsutil::sync_dir;
use crate::StorageError;

/// How long after a spare was taken the next one is made.
pub const REFILL_DELAY: Duration = Duration::from_secs(1);

/// How often a close and a delayed refill look at each other.
const CLOSE_POLL: Duration = Duration::from_millis(5);

/// Zeroed, synced segment files ready to be taken; see the module documentation.
#[derive(Debug)]
pub struct SpareSegments {
    dir: PathBuf,
    file_size: u64,
    want: usize,
    filling: AtomicBool,
    /// No more spares are made ([`SpareSegments::close`]).
    closed: AtomicBool,
    next: AtomicU64,
}

impl SpareSegments {
    /// Spares of segments of `segment_size` bytes (plus the seal area) in `dir` (created if
    /// missing; unfinished files there are removed), keeping `want` ready.
    pub fn open(
        dir: impl Into<PathBuf>,
        segment_size: u64,
        want: usize,
    ) -> Result<Arc<Self>, StorageError> {
        let dir = dir.into();
        spg_core::fsmode::private_dir(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        let mut next = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| StorageError::io("read dir", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("read dir", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())
                    .map_err(|e| StorageError::io("remove", entry.path(), e))?;
            } else if let Some(n) = name
                .strip_prefix("spare-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                next = next.max(n + 1);
            }
        }
        Ok(Arc::new(SpareSegments {
            dir,
            file_size: segment_size + SEAL_AREA,
            want,
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            next: AtomicU64::new(next),
        }))
    }

    /// The spares ready now.
    fn ready(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("spare-") && !name.ends_with(".tmp")
            })
            .map(|e| e.path())
            .collect()
    }

    /// Move a ready spare to `to` (a new segment file's path on the same filesystem); `false`
    /// when none is ready. Making the next one starts in the background, after
    /// [`REFILL_DELAY`] (the burst that took this one, a database's start, goes first). The
    /// caller syncs `to`'s directory before relying on the file being there.
    pub fn take_into(self: &Arc<Self>, to: &Path) -> bool {
        let mut taken = false;
        for spare in self.ready() {
            if std::fs::rename(&spare, to).is_ok() {
                taken = true;
                break;
            }
        }
        self.refill_after(REFILL_DELAY);
        taken
    }

    /// Make spares until `want` are ready, on a thread of their own (at most one at a time).
    pub fn refill_in_background(self: &Arc<Self>) {
        self.refill_after(Duration::ZERO)
    }

    fn refill_after(self: &Arc<Self>, delay: Duration) {
        // SeqCst here, in `fill` and in `close`: when `close` sees no fill running, a fill that
        // starts after it sees `closed`.
        if self.closed.load(Ordering::SeqCst) || self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("spg-spare-segments".into())
            .spawn(move || {
                // Waited out in steps, so that a close does not wait for the delay.
                let until = std::time::Instant::now() + delay;
                while !pool.closed.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    std::thread::sleep(CLOSE_POLL.min(delay));
                }
                if let Err(e) = pool.fill() {
                    tracing::debug!(dir = %pool.dir.display(), error = %e, "making spare segments");
                }
                pool.filling.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.filling.store(false, Ordering::SeqCst);
        }
    }

    /// Make no more spares, and wait (blocking, up to `timeout`) for the one being made to be
    /// finished: afterwards nothing writes in the directory (a node's shutdown; its directory
    /// may be removed next). `false` when the wait timed out.
    pub fn close(&self, timeout: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while self.filling.load(Ordering::SeqCst) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(CLOSE_POLL);
        }
        true
    }

    /// Make spares until `want` are ready (blocking); stops early once closed.
    pub fn fill(&self) -> Result<(), StorageError> {
        while !self.closed.load(Ordering::SeqCst) && self.ready().len() < self.want {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let tmp = self.dir.join(format!("spare-{n}.tmp"));
            let done = self.dir.join(format!("spare-{n}"));
            let file = spg_core::fsmode::private_options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| StorageError::io("create", &tmp, e))?;
            super::file::zero_fill(&file, 0, self.file_size)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io("zero-fill", &tmp, e))?;
            std::fs::rename(&tmp, &done).map_err(|e| StorageError::io("rename", &done, e))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pool_makes_no_more_spares() {
        let dir = tempfile::tempdir().unwrap();
        let pool = SpareSegments::open(dir.path().join("s"), 1 << 20, 2).unwrap();
        pool.refill_in_background();
        assert!(pool.close(Duration::from_secs(30)));
        let made = pool.ready().len();
        // A refill waiting out its delay ends at the close, not after the delay.
        let other = SpareSegments::open(dir.path().join("t"), 1 << 20, 1).unwrap();
        other.refill_after(Duration::from_secs(3600));
        // (Were the delay waited out, the close would give up after its 30 s and say so.)
        assert!(other.close(Duration::from_secs(30)));
        assert!(other.ready().is_empty());
        pool.refill_in_background();
        pool.fill().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pool.ready().len(), made, "nothing is made after close");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), made, "no unfinished file is left: {names:?}");
        // The directory can go now.
        std::fs::remove_dir_all(dir.path().join("s")).unwrap();
    }

    #[test]
    fn spares_are_zeroed_complete_and_taken_once() {
        let tmp = tempfile::tempdir().unwrap();
        let seg = 1 << 16;
        std::fs::write(tmp.path().join("spare-7.tmp"), b"cut short").unwrap();
        let pool = SpareSegments::open(tmp.path(), seg, 2).unwrap();
        assert!(
            !tmp.path().join("spare-7.tmp").exists(),
            "a partial file goes"
        );
        pool.fill().unwrap();
        assert_eq!(pool.ready().len(), 2);
        let to = tmp.path().join("taken");
        assert!(pool.take_into(&to));
        let bytes = std::fs::read(&to).unwrap();
        assert_eq!(bytes.len() as u64, seg + SEAL_AREA);
        assert!(bytes.iter().all(|&b| b == 0));
        // The background refill brings it back to two.
        let deadline = std::time::Instant::now() + REFILL_DELAY + Duration::from_secs(10);
        while pool.ready().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "not refilled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

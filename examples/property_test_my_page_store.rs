//! Property-test your own storage against SPG's exported suites (feature `testing` of
//! `spg-storage-lib`):
//!
//! - a [`PageStore`] of your own — here [`PlainDirPageStore`], images as plain copies in a
//!   directory — checked by `page_store_conformance`, the suite SPG's own stores pass;
//! - a [`WalStore`] of your own — here [`PlainDirWalStore`], a safekeeper's state as two plain
//!   files — run through the safekeeper's deterministic simulation (three safekeepers on your
//!   store, computes, crashes, partitions, lost messages; DESIGN §3's invariants checked), over
//!   seeded schedules and over `proptest`'s schedules of crashes and partitions.
//!
//! The suites also catch what they should: the same page store with its fencing switched off
//! fails the conformance suite.
//!
//! `cargo run -p spg-examples --example property_test_my_page_store`

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use spg_core::{
    Checkout, CoreError, CoreResult, DatabaseName, Generation, ImageInfo, Lsn, PageStore,
    TimelineId,
};
use spg_storage_lib::page_store_conformance;
use spg_storage_lib::pg_control::ControlFile;
use spg_storage_lib::safekeeper::simulation::{self, strategies, CrashableWalStore};
use spg_storage_lib::safekeeper::{Control, WalStore};
use spg_storage_lib::StorageError;

// ---------------------------------------------------------------------------------------------
// A PageStore over a plain directory.

/// Images are copies of the data directory: `<root>/<db>/images/<generation>/`, the newest
/// named by `<root>/<db>/latest`; `<root>/<db>/fence` holds the newest generation that checked
/// out; each generation runs on `<root>/<db>/run/<generation>/`.
pub struct PlainDirPageStore {
    root: PathBuf,
    /// Refuse older generations (switch it off to see the suite catch the bug).
    fencing: bool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> CoreError {
    CoreError::Internal(format!("{what} {}: {e}", path.display()))
}

/// Write `bytes` to `path` atomically and durably: a temporary file, synced, renamed over it,
/// the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> CoreResult<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
    f.sync_all().map_err(|e| io("sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> CoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

/// Copy the tree `from` to `to` (which must not exist), syncing every file.
fn copy_tree(from: &Path, to: &Path) -> CoreResult<()> {
    std::fs::create_dir_all(to).map_err(|e| io("create", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io("read", from, e))? {
        let entry = entry.map_err(|e| io("read", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(|e| io("stat", &src, e))?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| io("copy", &src, e))?;
            File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("sync", &dst, e))?;
        }
    }
    sync_dir(to)
}

impl PlainDirPageStore {
    /// A store under `root`.
    pub fn new(root: impl Into<PathBuf>, fencing: bool) -> Self {
        PlainDirPageStore {
            root: root.into(),
            fencing,
        }
    }

    fn dir(&self, db: &DatabaseName) -> PathBuf {
        self.root.join(db.as_str())
    }

    fn fence(&self, db: &DatabaseName) -> u64 {
        std::fs::read_to_string(self.dir(db).join("fence"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn stale(&self, db: &DatabaseName, g: Generation) -> CoreResult<()> {
        let fence = self.fence(db);
        if self.fencing && g.0 < fence {
            return Err(CoreError::StaleGeneration {
                offered: g.0,
                current: fence,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl PageStore for PlainDirPageStore {
    async fn checkout(
        &self,
        db: &DatabaseName,
        g: Generation,
        _history: &[(TimelineId, Lsn)],
    ) -> CoreResult<Checkout> {
        let fence = self.fence(db);
        if self.fencing && g.0 <= fence {
            return Err(CoreError::StaleGeneration {
                offered: g.0,
                current: fence,
            });
        }
        let dir = self.dir(db);
        std::fs::create_dir_all(dir.join("run")).map_err(|e| io("create", &dir, e))?;
        write_durably(&dir.join("fence"), g.0.to_string().as_bytes())?;
        let run = dir.join("run").join(g.0.to_string());
        let _ = std::fs::remove_dir_all(&run);
        let image = self.latest_image(db).await?;
        match &image {
            Some(i) => copy_tree(&dir.join("images").join(i.generation.0.to_string()), &run)?,
            None => std::fs::create_dir_all(&run).map_err(|e| io("create", &run, e))?,
        }
        Ok(Checkout {
            data_dir: run,
            image,
        })
    }

    async fn write_back(&self, db: &DatabaseName, g: Generation) -> CoreResult<ImageInfo> {
        self.stale(db, g)?;
        let dir = self.dir(db);
        let run = dir.join("run").join(g.0.to_string());
        let control = ControlFile::read(&run).map_err(|e| CoreError::Invalid {
            what: "data directory",
            reason: e.to_string(),
        })?;
        if !control.state.is_clean_shutdown() {
            return Err(CoreError::Invalid {
                what: "data directory",
                reason: format!("not shut down cleanly ({})", control.state),
            });
        }
        let image = dir.join("images").join(g.0.to_string());
        let _ = std::fs::remove_dir_all(&image);
        copy_tree(&run, &image)?;
        let info = ImageInfo {
            database: db.clone(),
            generation: g,
            lsn: control.checkpoint,
            created_at_ms: 0,
            bytes_written: 0,
        };
        let record = serde_json::to_vec(&info).map_err(|e| CoreError::Internal(e.to_string()))?;
        write_durably(&dir.join("latest"), &record)?;
        Ok(info)
    }

    async fn release(&self, db: &DatabaseName, g: Generation) -> CoreResult<()> {
        let run = self.dir(db).join("run").join(g.0.to_string());
        match std::fs::remove_dir_all(&run) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &run, e)),
            _ => Ok(()),
        }
    }

    async fn latest_image(&self, db: &DatabaseName) -> CoreResult<Option<ImageInfo>> {
        match std::fs::read(self.dir(db).join("latest")) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| CoreError::Internal(e.to_string()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &self.dir(db).join("latest"), e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A WalStore over a plain directory.

/// A safekeeper's state as `control.json` (replaced atomically and durably) and `wal.bin`
/// (WAL at its LSN's offset; `sync_wal` is an `fdatasync`, then the flush is recorded in
/// `flush`).
pub struct PlainDirWalStore {
    dir: PathBuf,
    wal: File,
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Corrupt {
        what: format!("{what} {}", path.display()),
        reason: e.to_string(),
    }
}

impl PlainDirWalStore {
    /// The store in `dir` (made when missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| storage("create", &dir, e))?;
        let path = dir.join("wal.bin");
        let wal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| storage("open", &path, e))?;
        Ok(PlainDirWalStore { dir, wal })
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        write_durably(&self.dir.join(name), bytes).map_err(|e| StorageError::Corrupt {
            what: name.into(),
            reason: e.to_string(),
        })
    }
}

impl WalStore for PlainDirWalStore {
    fn load(&mut self) -> Result<Option<Control>, StorageError> {
        let path = self.dir.join("control.json");
        let mut control: Control = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StorageError::Corrupt {
                what: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(storage("read", &path, e)),
        };
        // A flush recorded after the control was saved.
        if let Some(flush) = std::fs::read_to_string(self.dir.join("flush"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            control.log.flush = control.log.flush.max(Lsn(flush));
        }
        Ok(Some(control))
    }

    fn save_control(&mut self, control: &Control) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(control).map_err(|e| StorageError::Corrupt {
            what: "control".into(),
            reason: e.to_string(),
        })?;
        // The new control supersedes any flush recorded against the old one.
        let _ = std::fs::remove_file(self.dir.join("flush"));
        self.put("control.json", &bytes)
    }

    fn write_wal(&mut self, lsn: Lsn, _tli: TimelineId, bytes: &[u8]) -> Result<(), StorageError> {
        self.wal
            .write_all_at(bytes, lsn.0)
            .map_err(|e| storage("write", &self.dir, e))
    }

    fn sync_wal(&mut self, flush: Lsn) -> Result<(), StorageError> {
        self.wal
            .sync_data()
            .map_err(|e| storage("sync", &self.dir, e))?;
        self.put("flush", flush.0.to_string().as_bytes())
    }

    fn read_wal(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0u8; len];
        self.wal
            .read_exact_at(&mut buf, lsn.0)
            .map_err(|e| storage("read", &self.dir, e))?;
        Ok(buf)
    }

    fn truncate_wal(&mut self, end: Lsn) -> Result<(), StorageError> {
        let len = self
            .wal
            .metadata()
            .map_err(|e| storage("stat", &self.dir, e))?
            .len();
        if len > end.0 {
            self.wal
                .set_len(end.0)
                .map_err(|e| storage("truncate", &self.dir, e))?;
        }
        Ok(())
    }

    fn forget_before(&mut self, _start: Lsn) -> Result<(), StorageError> {
        // Bytes below the start stay in the file; nothing reads them again.
        Ok(())
    }
}

impl CrashableWalStore for PlainDirWalStore {
    fn crash(&mut self) {
        // A process crash: reopen what is on disk.
        *self = PlainDirWalStore::open(&self.dir).expect("the store reopens");
    }
}

// ---------------------------------------------------------------------------------------------

/// What the run checked.
#[derive(Debug)]
pub struct Checked {
    /// Seeded schedules the WAL store went through.
    pub schedules: usize,
    /// Commits acknowledged over them.
    pub acknowledged: usize,
    /// proptest schedules the WAL store went through.
    pub proptest_cases: u32,
    /// Whether the suite caught the page store without fencing.
    pub broken_store_caught: bool,
}

async fn check(scratch: &Path) -> anyhow::Result<Checked> {
    // 1. The page store passes the conformance suite.
    page_store_conformance::run_all(&PlainDirPageStore::new(scratch.join("pages"), true)).await;
    println!("PlainDirPageStore: conformance suite passed");

    // 2. ... and without its fencing, it does not.
    let broken = PlainDirPageStore::new(scratch.join("pages-unfenced"), false);
    let caught = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        page_store_conformance::run_all(&broken),
    ))
    .await
    .is_err();
    println!("PlainDirPageStore without fencing: caught by the suite: {caught}");

    // 3. The WAL store through the simulation, seeded schedules.
    let wal_root = scratch.join("wal");
    let n = std::sync::atomic::AtomicU32::new(0);
    let new_store = || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PlainDirWalStore::open(wal_root.join(i.to_string())).expect("a new store opens")
    };
    let sum = simulation::run_seeds(0..100, 300, new_store).map_err(anyhow::Error::new)?;
    println!(
        "PlainDirWalStore: {} seeded schedules, {} acknowledged commits, {} promotions",
        sum.schedules, sum.acknowledged, sum.promotions
    );

    // 4. ... and through proptest's schedules of crashes and partitions.
    let cases = 32;
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    runner
        .run(&strategies::crash_heavy(300), |schedule| {
            simulation::run(&schedule, new_store)
                .map(|_| ())
                .map_err(|f| TestCaseError::fail(f.to_string()))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("PlainDirWalStore: {cases} proptest schedules passed");
    Ok(Checked {
        schedules: sum.schedules,
        acknowledged: sum.acknowledged,
        proptest_cases: cases,
        broken_store_caught: caught,
    })
}

/// A scratch directory on tmpfs when there is one (the simulation syncs often).
fn scratch() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    Ok(if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = scratch()?;
    let checked = check(dir.path()).await?;
    println!("{checked:?}");
    Ok(())
}

#[tokio::test]
async fn my_stores_pass_the_suites_and_a_broken_one_is_caught() {
    let dir = scratch().unwrap();
    let checked = check(dir.path()).await.unwrap();
    assert!(checked.broken_store_caught);
    assert_eq!(checked.schedules, 100);
    assert!(checked.acknowledged > 0);
}

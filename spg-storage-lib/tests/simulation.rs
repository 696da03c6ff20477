//! The safekeeper simulation (DESIGN §3's invariants under crashes, partitions, lost and
//! reordered messages) over each WalStore SPG ships, through its proptest strategies too, and
//! over a deliberately broken store, which it must catch.

use std::path::PathBuf;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use spg_core::{Lsn, TimelineId};
use spg_storage_lib::safekeeper::simulation::{
    run, run_seeds, strategies, CrashableWalStore, Schedule,
};
use spg_storage_lib::safekeeper::{Control, FileWalStore, MemWalStore, WalStore};
use spg_storage_lib::StorageError;

/// The smallest segment FileWalStore takes; the simulated WAL stays within the first one.
const SEGMENT: u64 = 1 << 16;

/// SPG's file store in a directory of its own; a crash reopens the directory (a process crash:
/// the kernel keeps what was written). Directories go under /dev/shm when it exists, where an
/// fsync is free.
struct Reopening {
    dir: PathBuf,
    store: FileWalStore,
}

impl Reopening {
    fn new(root: &std::path::Path, n: &mut u32) -> Reopening {
        *n += 1;
        let dir = root.join(format!("sk{n}"));
        let store = FileWalStore::open(&dir, SEGMENT).expect("a new file store opens");
        Reopening { dir, store }
    }
}

impl WalStore for Reopening {
    fn load(&mut self) -> Result<Option<Control>, StorageError> {
        self.store.load()
    }
    fn save_control(&mut self, control: &Control) -> Result<(), StorageError> {
        self.store.save_control(control)
    }
    fn write_wal(&mut self, lsn: Lsn, tli: TimelineId, bytes: &[u8]) -> Result<(), StorageError> {
        self.store.write_wal(lsn, tli, bytes)
    }
    fn sync_wal(&mut self, flush: Lsn) -> Result<(), StorageError> {
        self.store.sync_wal(flush)
    }
    fn read_wal(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        self.store.read_wal(lsn, len)
    }
    fn truncate_wal(&mut self, end: Lsn) -> Result<(), StorageError> {
        self.store.truncate_wal(end)
    }
    fn forget_before(&mut self, start: Lsn) -> Result<(), StorageError> {
        self.store.forget_before(start)
    }
}

impl CrashableWalStore for Reopening {
    fn crash(&mut self) {
        self.store = FileWalStore::open(&self.dir, SEGMENT).expect("the file store reopens");
    }
}

fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// Deliberately broken: it acknowledges before syncing (its `sync_wal` returns at once, like a
/// store that forgot its fdatasync), so a crash loses WAL the quorum acknowledged.
struct AcksBeforeSync(MemWalStore);

impl WalStore for AcksBeforeSync {
    fn load(&mut self) -> Result<Option<Control>, StorageError> {
        self.0.load()
    }
    fn save_control(&mut self, control: &Control) -> Result<(), StorageError> {
        self.0.save_control(control)
    }
    fn write_wal(&mut self, lsn: Lsn, tli: TimelineId, bytes: &[u8]) -> Result<(), StorageError> {
        self.0.write_wal(lsn, tli, bytes)
    }
    fn sync_wal(&mut self, _flush: Lsn) -> Result<(), StorageError> {
        Ok(())
    }
    fn read_wal(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        self.0.read_wal(lsn, len)
    }
    fn truncate_wal(&mut self, end: Lsn) -> Result<(), StorageError> {
        self.0.truncate_wal(end)
    }
    fn forget_before(&mut self, start: Lsn) -> Result<(), StorageError> {
        self.0.forget_before(start)
    }
}

impl CrashableWalStore for AcksBeforeSync {
    fn crash(&mut self) {
        self.0.crash()
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

#[test]
fn the_file_store_keeps_the_invariants() {
    let dir = scratch();
    let mut n = 0;
    let sum = run_seeds(0..300, 400, || Reopening::new(dir.path(), &mut n))
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(sum.schedules, 300);
    println!("file store: {sum:?}");
}

#[test]
fn proptest_schedules_keep_the_invariants_of_the_memory_store() {
    let result = runner(500).run(&strategies::schedules(600), |s| {
        run(&s, MemWalStore::new)
            .map(|_| ())
            .map_err(|f| TestCaseError::fail(f.to_string()))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_store_that_acknowledges_before_syncing_is_caught() {
    let failure = run_seeds(0..2_000, 400, || AcksBeforeSync(MemWalStore::new()))
        .expect_err("the simulation passed a store that loses acknowledged WAL");
    println!("caught: {failure}");
    // Replaying the schedule fails the same way.
    let again = run(&failure.schedule, || AcksBeforeSync(MemWalStore::new()))
        .expect_err("the failing schedule replays");
    assert_eq!(again.error, failure.error);
    // The same schedule passes with the store that syncs.
    run(&failure.schedule, MemWalStore::new).unwrap_or_else(|f| panic!("{f}"));
    // Proptest's crash-heavy schedules find it as well, and shrink it.
    let found = runner(256).run(&strategies::crash_heavy(400), |s| {
        run(&s, || AcksBeforeSync(MemWalStore::new()))
            .map(|_| ())
            .map_err(|f| TestCaseError::fail(f.error))
    });
    assert!(
        found.is_err(),
        "crash-heavy schedules missed the broken store"
    );
    // A fixed schedule replays from its seed alone.
    assert_eq!(
        Schedule::from_seed(failure.schedule.seed, 400),
        failure.schedule
    );
}

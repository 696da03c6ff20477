//! The conformance suite of [`PageStore`]: the trait's contract, checked through its methods,
//! for SPG's stores and for yours (object_store's `integration` pattern).
//!
//! The computes of the suite are small synthetic data directories ([`write_cluster`]): a
//! `global/pg_control` that says where the last checkpoint is and whether the directory was
//! shut down cleanly, `PG_VERSION`, and a few files whose bytes are checked after a round trip.
//! No PostgreSQL runs. Each check uses its own database (named `conformance_*`), so run the
//! suite on a store that has none of them:
//!
//! ```
//! # async fn demo() {
//! let dir = tempfile::tempdir().unwrap();
//! let store = spg_storage_lib::LocalDirPageStore::new(dir.path().join("pages"));
//! spg_storage_lib::page_store_conformance::run_all(&store).await;
//! # }
//! ```
//!
//! A check that fails panics with what broke and where.

use std::path::Path;

use spg_core::{Checkout, CoreError, DatabaseName, Generation, ImageInfo, Lsn, PageStore};

/// A file the suite writes into every directory it writes back, and reads after a checkout.
pub const MARKER: &str = "base/1/spg_conformance_marker";
/// A file large enough to span several chunks of an image.
pub const BIG: &str = "base/1/spg_conformance_big";
const BIG_LEN: usize = 300 * 1024 + 17;

/// Run every check on `store`.
pub async fn run_all(store: &dyn PageStore) {
    write_back_makes_the_latest_image(store).await;
    older_generations_are_fenced(store).await;
    release_keeps_the_latest_image(store).await;
    an_unclean_directory_is_not_written_back(store).await;
    standbys_fence_nothing_until_adopted(store).await;
}

fn db(name: &str) -> DatabaseName {
    DatabaseName::new(format!("conformance_{name}")).expect("valid database name")
}

/// Whether the cluster [`write_cluster`] writes looks cleanly shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// `pg_control` says "shut down": a directory a write-back accepts.
    Clean,
    /// `pg_control` says "in production": PostgreSQL was killed; no image can be made of it.
    Crashed,
}

/// The bytes of a `pg_control` (layout of PostgreSQL 15, `pg_control_version` 1300) at
/// `checkpoint` on timeline 1, with a valid CRC.
pub fn pg_control(checkpoint: Lsn, state: Shutdown) -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    let put32 =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put64(&mut b, 0, 0x5350_4743_4f4e_4631); // system identifier
    put32(&mut b, 8, 1300); // pg_control_version
    put32(&mut b, 12, 202_209_061); // catalog_version_no
    put32(
        &mut b,
        16,
        match state {
            Shutdown::Clean => 1,   // DB_SHUTDOWNED
            Shutdown::Crashed => 6, // DB_IN_PRODUCTION
        },
    );
    put64(&mut b, 32, checkpoint.0); // checkPoint
    put64(&mut b, 40, checkpoint.0); // checkPointCopy.redo
    put32(&mut b, 48, 1); // checkPointCopy.ThisTimeLineID
                          // MaxConnections, max_worker_processes, max_wal_senders, max_prepared_xacts,
                          // max_locks_per_xact.
    for (i, v) in [100u32, 8, 10, 0, 64].into_iter().enumerate() {
        put32(&mut b, 180 + 4 * i, v);
    }
    const CRC_AT: usize = 288;
    let crc = crc32c::crc32c(&b[..CRC_AT]);
    put32(&mut b, CRC_AT, crc);
    b
}

/// Write a synthetic cluster into `data_dir`: `pg_control` at `checkpoint` in `state`,
/// `PG_VERSION`, [`MARKER`] holding `marker` and [`BIG`] filled from `marker`.
pub fn write_cluster(data_dir: &Path, checkpoint: Lsn, state: Shutdown, marker: &[u8]) {
    let write = |rel: &str, bytes: &[u8]| {
        let path = data_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };
    write("global/pg_control", &pg_control(checkpoint, state));
    write("PG_VERSION", b"15\n");
    write(MARKER, marker);
    write(BIG, &big(marker));
}

fn big(marker: &[u8]) -> Vec<u8> {
    let seed = marker
        .iter()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(*b));
    (0..BIG_LEN)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Panic unless `data_dir` holds the cluster [`write_cluster`] wrote with `marker`.
fn assert_holds(data_dir: &Path, marker: &[u8], what: &str) {
    let read = |rel: &str| {
        std::fs::read(data_dir.join(rel))
            .unwrap_or_else(|e| panic!("{what}: reading {rel} of {}: {e}", data_dir.display()))
    };
    assert_eq!(read(MARKER), marker, "{what}: {MARKER} differs");
    assert!(read(BIG) == big(marker), "{what}: {BIG} differs");
}

fn same_image(got: Option<&ImageInfo>, want: &ImageInfo, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no image, expected {want:?}"));
    assert_eq!(
        (&got.database, got.generation, got.lsn),
        (&want.database, want.generation, want.lsn),
        "{what}"
    );
}

fn stale<T: std::fmt::Debug>(r: Result<T, CoreError>, what: &str) {
    match r {
        Err(CoreError::StaleGeneration { .. }) => {}
        other => panic!("{what}: expected StaleGeneration, got {other:?}"),
    }
}

async fn checkout(store: &dyn PageStore, d: &DatabaseName, g: u64) -> Checkout {
    store
        .checkout(d, Generation(g), &[])
        .await
        .unwrap_or_else(|e| panic!("checkout of generation {g} of {d}: {e}"))
}

async fn write_back(store: &dyn PageStore, d: &DatabaseName, g: u64) -> ImageInfo {
    store
        .write_back(d, Generation(g))
        .await
        .unwrap_or_else(|e| panic!("write-back of generation {g} of {d}: {e}"))
}

/// Generation `g` checks `d` out, writes a clean cluster at `lsn` holding `marker`, and
/// writes it back.
async fn image(
    store: &dyn PageStore,
    d: &DatabaseName,
    g: u64,
    lsn: u64,
    marker: &[u8],
) -> ImageInfo {
    let c = checkout(store, d, g).await;
    write_cluster(&c.data_dir, Lsn(lsn), Shutdown::Clean, marker);
    write_back(store, d, g).await
}

async fn assert_latest(store: &dyn PageStore, d: &DatabaseName, want: &ImageInfo, what: &str) {
    let latest = store.latest_image(d).await.expect("latest image");
    same_image(latest.as_ref(), want, what);
}

async fn write_back_makes_the_latest_image(store: &dyn PageStore) {
    let d = db("images");
    assert!(
        store
            .latest_image(&d)
            .await
            .expect("latest image")
            .is_none(),
        "a database nobody wrote has no image"
    );
    let c1 = checkout(store, &d, 1).await;
    assert!(c1.image.is_none(), "a new database starts without an image");
    assert!(c1.data_dir.is_dir(), "the checkout's directory exists");
    write_cluster(&c1.data_dir, Lsn(0x100_0028), Shutdown::Clean, b"one");
    let i1 = write_back(store, &d, 1).await;
    assert_eq!(
        (&i1.database, i1.generation, i1.lsn),
        (&d, Generation(1), Lsn(0x100_0028)),
        "the image is of the generation that wrote it, at its checkpoint"
    );
    assert_latest(store, &d, &i1, "the write-back is the latest image").await;

    let c2 = checkout(store, &d, 2).await;
    same_image(c2.image.as_ref(), &i1, "the next checkout starts from it");
    assert_holds(&c2.data_dir, b"one", "the next checkout");
    write_cluster(&c2.data_dir, Lsn(0x200_0028), Shutdown::Clean, b"two");
    let i2 = write_back(store, &d, 2).await;
    assert_latest(store, &d, &i2, "a newer write-back is the latest image").await;
    let c3 = checkout(store, &d, 3).await;
    assert_holds(
        &c3.data_dir,
        b"two",
        "a checkout after the second write-back",
    );
    store.release(&d, Generation(3)).await.expect("release");
}

async fn older_generations_are_fenced(store: &dyn PageStore) {
    let d = db("fence");
    let i1 = image(store, &d, 1, 0x100_0028, b"one").await;
    let c2 = checkout(store, &d, 2).await;
    let c3 = checkout(store, &d, 3).await;
    // Generation 2 runs on, unaware that 3 took over: its write-back is refused.
    write_cluster(&c2.data_dir, Lsn(0x300_0028), Shutdown::Clean, b"stale");
    stale(
        store.write_back(&d, Generation(2)).await,
        "a write-back of a fenced generation",
    );
    stale(
        store.checkout(&d, Generation(3), &[]).await,
        "a second checkout of the same generation",
    );
    stale(
        store.checkout(&d, Generation(1), &[]).await,
        "a checkout of an older generation",
    );
    assert_latest(store, &d, &i1, "a refused write-back leaves the image").await;
    write_cluster(&c3.data_dir, Lsn(0x400_0028), Shutdown::Clean, b"three");
    let i3 = write_back(store, &d, 3).await;
    assert_latest(store, &d, &i3, "the newest generation writes back").await;
}

async fn release_keeps_the_latest_image(store: &dyn PageStore) {
    let d = db("release");
    let i1 = image(store, &d, 1, 0x100_0028, b"one").await;
    // A compute that crashed: its directory is given back without a write-back.
    let c2 = checkout(store, &d, 2).await;
    write_cluster(&c2.data_dir, Lsn(0x200_0028), Shutdown::Crashed, b"crashed");
    store.release(&d, Generation(2)).await.expect("release");
    assert_latest(store, &d, &i1, "a release makes no image").await;
    let c3 = checkout(store, &d, 3).await;
    same_image(
        c3.image.as_ref(),
        &i1,
        "the next checkout starts from the image",
    );
    stale(
        store.write_back(&d, Generation(2)).await,
        "a write-back of a released, fenced generation",
    );
    store.release(&d, Generation(3)).await.expect("release");
}

async fn an_unclean_directory_is_not_written_back(store: &dyn PageStore) {
    let d = db("unclean");
    let i1 = image(store, &d, 1, 0x100_0028, b"one").await;
    let c2 = checkout(store, &d, 2).await;
    write_cluster(&c2.data_dir, Lsn(0x200_0028), Shutdown::Crashed, b"killed");
    let r = store.write_back(&d, Generation(2)).await;
    assert!(
        r.is_err(),
        "a directory that was not shut down cleanly became an image: {r:?}"
    );
    assert_latest(store, &d, &i1, "a refused write-back leaves the image").await;
    store.release(&d, Generation(2)).await.expect("release");
}

async fn standbys_fence_nothing_until_adopted(store: &dyn PageStore) {
    let d = db("standby");
    image(store, &d, 1, 0x100_0028, b"one").await;
    let c2 = checkout(store, &d, 2).await;
    let standby = match store.checkout_standby(&d, Generation(3), &[]).await {
        Ok(s) => s,
        // One directory per database: no standbys, nothing more to check.
        Err(CoreError::Unavailable(_)) => {
            store.release(&d, Generation(2)).await.expect("release");
            return;
        }
        Err(e) => panic!("standby checkout: {e}"),
    };
    assert_ne!(
        standby.data_dir, c2.data_dir,
        "a standby gets its own directory beside the writer's"
    );
    // The writer still writes back: the standby fenced nothing.
    write_cluster(&c2.data_dir, Lsn(0x200_0028), Shutdown::Clean, b"two");
    let i2 = write_back(store, &d, 2).await;
    assert_latest(store, &d, &i2, "the writer's write-back beside a standby").await;
    store.adopt(&d, Generation(3)).await.expect("adopt");
    stale(
        store.checkout(&d, Generation(2), &[]).await,
        "a checkout of a generation older than the adopted standby",
    );
    write_cluster(
        &standby.data_dir,
        Lsn(0x300_0028),
        Shutdown::Clean,
        b"three",
    );
    let i3 = write_back(store, &d, 3).await;
    assert_latest(store, &d, &i3, "the adopted standby's write-back").await;
}

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoreResult, DatabaseName, Generation, Lsn};

/// A durable image of a database: a consistent data directory at an LSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The database.
    pub database: DatabaseName,
    /// The generation that wrote the image.
    pub generation: Generation,
    /// The checkpoint LSN the image is consistent at.
    pub lsn: Lsn,
    /// When the image was written, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// A data directory handed to one compute generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// Where the compute's PostgreSQL data directory is.
    pub data_dir: PathBuf,
    /// The image the directory holds; `None` when the database has no image yet, in which case
    /// the directory is empty and the caller initialises it (`initdb`).
    pub image: Option<ImageInfo>,
}

/// Durable database images that computes start from and write back to.
///
/// Contract:
/// - `checkout(db, g)` prepares a data directory for generation `g` and fences every older
///   generation: afterwards `write_back` from an older generation fails with `StaleGeneration`.
///   A checkout for a generation not newer than the newest one seen also fails with
///   `StaleGeneration`.
/// - `write_back(db, g)` makes the checked-out directory, which must have been shut down
///   cleanly, the database's latest image at its shutdown checkpoint LSN (the store reads the LSN
///   from the directory), atomically: afterwards the next checkout starts from it, and a crash
///   part-way leaves the previous image in place. A freshly initialised directory (`initdb`) is
///   written back the same way to become the base image.
/// - `release(db, g)` gives a checkout back without writing it back (compute crashed or was
///   killed); whatever the backend can still recover from is kept.
/// - An image, once written, is never changed by any generation.
#[async_trait]
pub trait PageStore: Send + Sync {
    /// Prepare a data directory for generation `generation` of `db`.
    async fn checkout(&self, db: &DatabaseName, generation: Generation) -> CoreResult<Checkout>;

    /// Persist the cleanly shut down directory of `generation` as the new latest image.
    async fn write_back(&self, db: &DatabaseName, generation: Generation) -> CoreResult<ImageInfo>;

    /// Give back the checkout of `generation` without writing it back.
    async fn release(&self, db: &DatabaseName, generation: Generation) -> CoreResult<()>;

    /// The latest image of `db`, if it has one.
    async fn latest_image(&self, db: &DatabaseName) -> CoreResult<Option<ImageInfo>>;
}

//! Database images in object storage.
//!
//! An image is a consistent data directory at a checkpoint LSN, split into content-addressed
//! chunks that consecutive images share; [`format`](mod@format) describes the layout and the codecs,
//! [`ImageStore`] reads and writes images through an [`ImageRepo`]: any `object_store`
//! backend (local filesystem, in-memory, S3) as [`ObjectRepo`], or a pageserver in front of one, and [`conformance`] is the suite every backend passes.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod format;
pub mod repo;
mod store;

pub use format::{ChunkHash, Content, FileEntry, ImageId, Manifest, DEFAULT_CHUNK_SIZE};
pub use repo::{
    fence_for_checkout, refuse_unless_newer, ImageRepo, ObjectKind, ObjectRepo, RawBasebackup,
};
pub use store::{
    Basebackup, CaptureSource, CaptureStats, ChunkOrigin, ImageStore, RestoreStats, SourceFile,
    WarmRef,
};

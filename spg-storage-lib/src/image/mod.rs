//! Database images in object storage.
//!
//! An image is a consistent data directory at a checkpoint LSN, split into content-addressed
//! chunks that consecutive images share; [`format`] describes the layout and the codecs,
//! [`ImageStore`] reads and writes images in any `object_store` backend (local filesystem,
//! in-memory, S3), and [`conformance`] is the suite every backend passes.

pub mod conformance;
pub mod format;
mod store;

pub use format::{ChunkHash, Content, FileEntry, ImageId, Manifest, DEFAULT_CHUNK_SIZE};
pub use store::{CaptureStats, ChunkOrigin, ImageStore, RestoreStats, SourceFile};

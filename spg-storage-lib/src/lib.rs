//! # spg-storage-lib
//!
//! Durable state of SPG databases, outside the compute.
//!
//! - [`local_dir::LocalDirPageStore`]: a development [`PageStore`](spg_core::PageStore) that
//!   keeps each database's data directory on local disk between generations (generation fencing,
//!   a crash-safe image record); the platform does not use it.
//! - [`object_pages::ObjectPageStore`]: a [`PageStore`](spg_core::PageStore) whose durable
//!   state is images in object storage; the local data directory is a disposable cache.
//! - [`durable_local::DurableLocalStore`]: object storage in a local directory whose writes are
//!   fsynced, file and directories, before they return (the default deployment's store).
//! - [`image`]: database images in object storage (content-addressed chunks, create-only
//!   manifests) over any `object_store` backend, with the conformance suite every backend runs.
//! - [`pageserver`]: images served to computes from a bounded cache in front of object storage
//!   (soft basebackups, objects on demand, write-back, garbage collection).
//! - [`lazyfs`]: a FUSE filesystem showing an image at once and fetching chunks on first read.
//! - [`pg_control`]: a reader of PostgreSQL's `global/pg_control`, used to learn the checkpoint LSN
//!   and whether a data directory was shut down cleanly.
//! - [`fuzzing`]: entry points of the fuzz targets over untrusted bytes.
//! - [`safekeeper`]: the WAL quorum — the protocol state machine over a [`safekeeper::WalStore`],
//!   its files, the replication client and the quorum ([`spg_core::WalQuorum`]).
//!
//! A page store over object storage (here in memory): a new database's first checkout is an
//! empty directory for `initdb`; after a clean shutdown, `write_back` makes it an image, and
//! every later checkout starts from the newest image.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use spg_core::{DatabaseName, Generation, PageStore};
//! use spg_storage_lib::image::ImageStore;
//! use spg_storage_lib::ObjectPageStore;
//!
//! let images = ImageStore::new(Arc::new(object_store::memory::InMemory::new()), "images");
//! let cache = std::env::temp_dir().join("spg-doc-cache");
//! let pages = ObjectPageStore::new(images, cache);
//! let db = DatabaseName::new("shop")?;
//! let c = pages.checkout(&db, Generation(1), &[]).await?;
//! assert!(c.image.is_none());
//! // ... initdb and run PostgreSQL in c.data_dir, shut it down cleanly, then:
//! // pages.write_back(&db, Generation(1)).await?;
//! # Ok(()) }
//! ```
//!
//! With the `testing` feature: the [`spg_core::PageStore`] conformance suite
//! (`page_store_conformance`), the [`spg_core::WalQuorum`] suite (`wal_quorum_conformance`),
//! the image-repository suite (`image::conformance`), the
//! safekeeper simulation over any `WalStore` with its `proptest` strategies
//! (`safekeeper::simulation`), and an S3-protocol server on loopback (`testing`).

#![deny(missing_docs)]

pub mod durable_local;
mod error;
mod fsutil;
pub mod fuzzing;
pub mod image;
pub mod lazyfs;
pub mod local_dir;
pub mod object_pages;
mod objects;
#[cfg(any(test, feature = "testing"))]
pub mod page_store_conformance;
#[cfg(any(test, feature = "testing"))]
pub mod wal_quorum_conformance;
pub use objects::open_url as open_object_store;
pub mod pageserver;
pub use spg_core::pg_control;
pub mod safekeeper;
#[cfg(feature = "testing")]
pub mod testing;

pub use durable_local::DurableLocalStore;
pub use error::StorageError;
pub use local_dir::LocalDirPageStore;
pub use object_pages::ObjectPageStore;

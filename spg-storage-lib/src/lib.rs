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

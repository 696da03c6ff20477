//! # spg-core
//!
//! Shared vocabulary of SPG, the serverless PostgreSQL platform: names, generations, LSNs, lifecycle
//! states, the SCRAM-SHA-256 verifier format, a reader of PostgreSQL's `pg_control`, and the five central traits every other crate is
//! written against:
//!
//! | trait | contract |
//! |---|---|
//! | [`Gateway`] | the public PostgreSQL entry point, as the control plane sees it |
//! | [`Lease`] | a claim that keeps a database's compute running |
//! | [`WalQuorum`] | WAL durability and generation fencing on a quorum of safekeepers |
//! | [`PageStore`] | durable database images that a compute starts from and writes back to |
//! | [`AutoscaleHandoff`] | replacing a database's writer by a new generation without client errors |
//!
//! Libraries (`spg-gateway-lib`, `spg-storage-lib`, `spg-lifecycle-lib`) depend on this crate only,
//! never on each other; binaries compose concrete implementations.
//!
//! Names are validated where they are made, and ordered types say what they are:
//!
//! ```
//! use spg_core::{DatabaseName, Generation, Lsn, RoleName};
//!
//! let db = DatabaseName::new("shop").unwrap();
//! assert!(DatabaseName::new("shop; DROP TABLE x").is_err());
//! assert!(RoleName::new("app").is_ok());
//! // A newer generation fences every older one (see `WalQuorum` and `PageStore`).
//! assert!(Generation(3) > Generation(2));
//! assert_eq!(Lsn(0x1_0000_0028).to_string(), "1/28");
//! # let _ = db;
//! ```
//!
//! With the `testing` feature, `testing::gateway_conformance` is the conformance suite of
//! [`Gateway`], whose implementations live in two crates. The suites of the other traits live
//! beside SPG's implementations of them: `spg_storage_lib::page_store_conformance`,
//! `spg_storage_lib::safekeeper::simulation` (a `WalStore` under the quorum protocol) and
//! `spg_lifecycle_lib::testing::lease_conformance`.

#![deny(missing_docs)]

mod autoscale;
mod endpoint;
mod error;
pub mod fsmode;
mod gateway;
mod lease;
mod names;
mod page_store;
pub mod pg_control;
pub mod scram;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
mod types;
mod wal;
pub mod wal_files;

pub use autoscale::{
    AutoscaleHandoff, ComputeLimits, HandoffPlan, HandoffReport, HandoffRun, ScaleProfile,
    ScaleState, RESERVED_SETTINGS,
};
pub use endpoint::ComputeEndpoint;
pub use error::{CoreError, CoreResult};
pub use gateway::{Gateway, GatewaySessions, PinnedSession};
pub use lease::{Lease, LeaseGrant, LeaseId};
pub use names::{DatabaseName, NameError, RoleName};
pub use page_store::{
    boot_id, lost_unsynced_writes, Checkout, ImageInfo, PageStore, StoredBytes, UNSYNCED_MARKER,
};
pub use state::ComputeState;
pub use types::{Generation, Lsn, ParseLsnError, TimelineId};
pub use wal::{Election, ReplicationSource, WalQuorum};

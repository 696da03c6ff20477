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

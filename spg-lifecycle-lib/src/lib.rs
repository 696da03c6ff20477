//! # spg-lifecycle-lib
//!
//! The lifecycle of SPG databases:
//!
//! - [`controlplane::ControlPlane`]: databases, roles, states (`stopped` → `booting` → `ready` →
//!   `stopping` → `stopped`), generations bumped by compare-and-set, leases, idle auto-stop,
//!   transition history — over a [`store::StateStore`] (embedded SQLite by default).
//! - [`provisioner::Provisioner`]: brings computes up and down; [`provisioner::LocalProvisioner`]
//!   runs them in this process through the [`compute`] agent;
//!   [`provisioner::process::ProcessProvisioner`] runs each generation as its own `spg-compute`
//!   process, and [`provisioner::kubernetes::KubernetesProvisioner`] as a Kubernetes pod, both
//!   driven over the [`agent`] API.
//! - [`compute`]: the compute agent — data directory from a [`spg_core::PageStore`], config,
//!   stock `postgres` as an unprivileged user, readiness, roles, fast shutdown, write-back, with
//!   every step timed.
//! - [`api`]: the HTTPS JSON API (server and client), authenticated by an API key.
//! - [`controlplane::ControlPlane`] implements [`spg_core::Lease`] (what gateways hold) and
//!   [`spg_core::AutoscaleHandoff`] (what its API and its autoscaler call).
//!
//! A control plane over SQLite, running computes in this process on a page store of your
//! choice (`spg-storage-lib` has two):
//!
//! ```no_run
//! # async fn demo(pages: std::sync::Arc<dyn spg_core::PageStore>) -> Result<(), spg_lifecycle_lib::LifecycleError> {
//! use std::sync::Arc;
//! use spg_lifecycle_lib::compute::AgentConfig;
//! use spg_lifecycle_lib::pg_bin::PgBinaries;
//! use spg_lifecycle_lib::provisioner::LocalProvisioner;
//! use spg_lifecycle_lib::store::SqliteStateStore;
//! use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig};
//!
//! let agent = AgentConfig::new("/var/lib/spg/run", PgBinaries::locate(None)?)?;
//! let cp = ControlPlane::start(
//!     ControlPlaneConfig::default(),
//!     Arc::new(SqliteStateStore::open("/var/lib/spg/state.db".as_ref())?),
//!     Arc::new(LocalProvisioner::new(agent, pages)?),
//!     Default::default(),
//! )
//! .await?;
//! let db = spg_core::DatabaseName::new("shop").unwrap();
//! cp.create_database(db.clone()).await?;
//! let endpoint = cp.wake(&db).await?; // PostgreSQL runs: connect to endpoint.addr
//! # let _ = endpoint;
//! # Ok(()) }
//! ```
//!
//! With the `testing` feature: the [`store::StateStore`] conformance suite
//! (`store::conformance`), the [`spg_core::Lease`] suite (`testing::lease_conformance`), a
//! scripted provisioner and gateway for tests of the control plane without PostgreSQL
//! (`testing::fake`), and a throwaway PostgreSQL server (`testing::TestPostgres`).

#![deny(missing_docs)]

pub mod agent;
pub mod api;
pub mod autoscale;
pub mod branching;
pub mod compute;
pub mod controlplane;
mod error;
pub mod events;
pub mod fuzzing;
pub mod metrics;
pub mod os_user;
pub mod pg_bin;
pub mod provisioner;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timing;
pub mod usage;
pub mod webhooks;

pub use controlplane::{ControlPlane, ControlPlaneConfig, DatabaseStatus, RoleSecret};
pub use error::LifecycleError;

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

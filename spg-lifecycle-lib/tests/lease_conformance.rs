//! The Lease conformance suite over the control plane (its computes scripted: no PostgreSQL),
//! and over a deliberately broken lease keeper, which it must catch. (The API client in front
//! of a control plane runs it in `bins/tests/api.rs`.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use spg_core::{CoreError, CoreResult, DatabaseName, Lease, LeaseGrant, LeaseId};
use spg_lifecycle_lib::store::SqliteStateStore;
use spg_lifecycle_lib::testing::fake::FakeProvisioner;
use spg_lifecycle_lib::testing::lease_conformance::run_all;
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig};

fn db() -> DatabaseName {
    DatabaseName::new("shop").unwrap()
}

#[tokio::test]
async fn the_control_plane_keeps_the_lease_contract() {
    let cfg = ControlPlaneConfig {
        lease_ttl: Duration::from_millis(600),
        ..ControlPlaneConfig::default()
    };
    let cp = ControlPlane::start(
        cfg,
        Arc::new(SqliteStateStore::in_memory().unwrap()),
        Arc::new(FakeProvisioner::new()),
        Default::default(),
    )
    .await
    .unwrap();
    cp.create_database(db()).await.unwrap();
    run_all(&cp, &db()).await;
}

/// Deliberately broken: it never forgets a lease, so a released or expired one renews.
#[derive(Default)]
struct Unforgetful {
    granted: Mutex<HashSet<String>>,
}

#[async_trait]
impl Lease for Unforgetful {
    async fn acquire(&self, db: &DatabaseName, holder: &str) -> CoreResult<LeaseGrant> {
        if db != &self::db() {
            return Err(CoreError::DatabaseNotFound(db.to_string()));
        }
        let mut granted = self.granted.lock().unwrap();
        let id = LeaseId(format!("{db}.{holder}-{}", granted.len()));
        granted.insert(id.0.clone());
        Ok(LeaseGrant {
            id,
            database: db.clone(),
            ttl: Duration::from_millis(300),
        })
    }

    async fn renew(&self, id: &LeaseId) -> CoreResult<LeaseGrant> {
        Ok(LeaseGrant {
            id: id.clone(),
            database: db(),
            ttl: Duration::from_millis(300),
        })
    }

    async fn release(&self, _id: &LeaseId) -> CoreResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_lease_keeper_that_never_forgets_is_caught() {
    let broken = Unforgetful::default();
    let caught = std::panic::AssertUnwindSafe(run_all(&broken, &db()))
        .catch_unwind()
        .await;
    assert!(
        caught.is_err(),
        "the suite passed a lease that renews after its release"
    );
}

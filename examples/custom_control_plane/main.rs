//! A control plane of your own, assembled from `spg-lifecycle-lib`: SPG's [`ControlPlane`]
//! (database actors, generations, leases, idle stops, handoffs) and its HTTPS API, over
//!
//! - your [`StateStore`](spg_lifecycle_lib::store::StateStore) — here [`MemoryStateStore`]
//!   (`memory_store.rs`), state in memory (it passes SPG's StateStore conformance suite, run
//!   in this example's test), and
//! - your [`Provisioner`] — here [`PoolProvisioner`], which runs computes on a fixed pool of
//!   data directories: a database gets a slot on its first start and keeps it; when every
//!   slot is taken, a start is refused with a clear error.
//!
//! `cargo run -p spg-examples --example custom_control_plane`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use async_trait::async_trait;
use spg_core::DatabaseName;
use spg_lifecycle_lib::api::server::{router, ApiKey, ApiKeys};
use spg_lifecycle_lib::api::ApiClient;
use spg_lifecycle_lib::compute::{AgentConfig, ComputeSpec};
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::provisioner::{Compute, LocalProvisioner, Provisioner};
#[cfg(test)]
use spg_lifecycle_lib::store::StateStore;
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig, LifecycleError};
use spg_storage_lib::LocalDirPageStore;

mod memory_store;
pub use memory_store::MemoryStateStore;

/// Computes on `slots` data directories (`<root>/slot-<i>`), one database per slot.
pub struct PoolProvisioner {
    slots: Vec<LocalProvisioner>,
    assigned: Mutex<BTreeMap<DatabaseName, usize>>,
}

impl PoolProvisioner {
    /// A pool of `slots` directories under `root`.
    pub fn new(root: &std::path::Path, slots: usize) -> Result<Self> {
        let mut pool = Vec::with_capacity(slots);
        for i in 0..slots {
            let dir = root.join(format!("slot-{i}"));
            // The compute's user (postgres, under root) passes through to its run directory.
            std::fs::create_dir_all(&dir)?;
            for d in [root, &dir] {
                std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            }
            let agent = AgentConfig::new(dir.join("run"), PgBinaries::locate(None)?)?;
            let pages = Arc::new(LocalDirPageStore::new(dir.join("data")));
            pool.push(LocalProvisioner::new(agent, pages)?);
        }
        Ok(PoolProvisioner {
            slots: pool,
            assigned: Mutex::default(),
        })
    }

    /// The slot of `db`: its own, else a free one.
    fn slot(&self, db: &DatabaseName) -> Result<usize, LifecycleError> {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = assigned.get(db) {
            return Ok(*i);
        }
        let free = (0..self.slots.len()).find(|i| !assigned.values().any(|a| a == i));
        let i = free.ok_or_else(|| {
            LifecycleError::WakeRefused(format!(
                "all {} data directories of the pool are taken",
                self.slots.len()
            ))
        })?;
        assigned.insert(db.clone(), i);
        Ok(i)
    }
}

#[async_trait]
impl Provisioner for PoolProvisioner {
    async fn start(&self, spec: ComputeSpec) -> Result<Box<dyn Compute>, LifecycleError> {
        let i = self.slot(&spec.database)?;
        self.slots[i].start(spec).await
    }

    async fn cleanup_stale(&self, db: &DatabaseName) -> Result<bool, LifecycleError> {
        let mut found = false;
        for s in &self.slots {
            found |= s.cleanup_stale(db).await?;
        }
        Ok(found)
    }
}

/// Start the control plane and its API, create two databases through the API, wake each, and
/// query one; a third database finds the pool of two full. Returns what the query said.
pub async fn run(dir: &std::path::Path) -> Result<String> {
    let pool = PoolProvisioner::new(&dir.join("pool"), 2)?;
    let metrics = Default::default();
    let cp = ControlPlane::start(
        ControlPlaneConfig::default(),
        Arc::new(MemoryStateStore::default()),
        Arc::new(pool),
        metrics,
    )
    .await?;

    // The same HTTPS API as SPG's control plane, on a port the OS chose.
    let tls = spg::tls::TlsMaterial::load_or_generate(&dir.join("tls"), None, None, None)?;
    let key = "an-example-key-of-at-least-32-characters";
    let app = router(cp.clone(), ApiKeys::admin(ApiKey::new(key)), Arc::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}", listener.local_addr()?.port());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        listener,
        tls.https()?,
        app,
        stop.clone(),
        Default::default(),
    ));

    let api = ApiClient::new(&url, key, &tls.ca_pem()?)?;
    for name in ["orders", "billing"] {
        api.create_database(name).await?;
        api.create_role(name, "app", "app-password").await?;
    }
    let orders = DatabaseName::new("orders")?;
    let ep = cp.wake(&orders).await?;
    cp.wake(&DatabaseName::new("billing")?).await?;
    let (client, conn) = tokio_postgres::Config::new()
        .host(ep.addr.ip().to_string())
        .port(ep.addr.port())
        .user("app")
        .password("app-password")
        .dbname("orders")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    let answer: String = client
        .query_one("SELECT 'hello from ' || current_database()", &[])
        .await?
        .get(0);
    println!("{answer} (generation {})", ep.generation.0);

    api.create_database("archive").await?;
    let full = cp
        .wake(&DatabaseName::new("archive")?)
        .await
        .expect_err("a pool of two has no third slot");
    println!("archive: {full}");

    cp.shutdown().await;
    stop.cancel();
    let _ = server.await;
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let dir = spg_examples::scratch_dir("custom-control-plane")?;
    run(&dir).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_of_my_own_serves_the_api_on_my_pool_and_my_store() {
    let dir = spg_examples::scratch_dir("custom-control-plane-test").unwrap();
    assert_eq!(run(&dir).await.unwrap(), "hello from orders");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_memory_store_passes_the_state_store_conformance_suite() {
    // One store, several handles: as several control planes sharing it.
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
    spg_lifecycle_lib::store::conformance::run(|| {
        let s = Arc::clone(&store);
        async move { s }
    })
    .await;
}

#[tokio::test]
async fn a_store_that_accepts_orphan_roles_is_caught() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::accepting_orphan_roles());
    let run = spg_lifecycle_lib::store::conformance::run(|| {
        let s = Arc::clone(&store);
        async move { s }
    });
    let caught = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await;
    assert!(
        caught.is_err(),
        "the suite passed a store that keeps orphan roles"
    );
}

//! A control plane of your own, assembled from `spg-lifecycle-lib`: SPG's [`ControlPlane`]
//! (database actors, generations, leases, idle stops, handoffs) and its HTTPS API, over
//!
//! - your [`StateStore`] — here [`MemoryStateStore`], state in memory (it passes SPG's
//!   StateStore conformance suite, run in this example's test), and
//! - your [`Provisioner`] — here [`PoolProvisioner`], which runs computes on a fixed pool of
//!   data directories: a database gets a slot on its first start and keeps it; when every
//!   slot is taken, a start is refused with a clear error.
//!
//! `cargo run -p spg-examples --example custom_control_plane`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use async_trait::async_trait;
use spg_core::{DatabaseName, RoleName};
use spg_lifecycle_lib::api::server::{router, ApiKey, ApiKeys};
use spg_lifecycle_lib::api::ApiClient;
use spg_lifecycle_lib::compute::{AgentConfig, ComputeSpec};
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::provisioner::{Compute, LocalProvisioner, Provisioner};
use spg_lifecycle_lib::store::{
    DatabaseRecord, Ownership, OwnershipClaim, RoleRecord, StateStore, Transition,
};
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig, LifecycleError};
use spg_storage_lib::LocalDirPageStore;

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

/// Databases, roles, transitions, metadata and ownerships in memory (gone with the process).
#[derive(Default)]
pub struct MemoryStateStore {
    state: Mutex<Memory>,
    /// Accept a role of a database that does not exist (a bug the conformance suite catches;
    /// for this example's test only).
    orphan_roles: bool,
}

#[derive(Default)]
struct Memory {
    databases: BTreeMap<DatabaseName, DatabaseRecord>,
    roles: BTreeMap<(DatabaseName, RoleName), RoleRecord>,
    transitions: Vec<Transition>,
    meta: BTreeMap<String, String>,
    /// Owner, its URL, token and lease end (ms), per database.
    owners: BTreeMap<DatabaseName, (Option<String>, Option<String>, u64, u64)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MemoryStateStore {
    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Memory {
    fn ownership(&self, db: &DatabaseName) -> Ownership {
        let (owner, url, token, until) = self.owners.get(db).cloned().unwrap_or_default();
        Ownership {
            database: db.clone(),
            owner,
            owner_url: url,
            token,
            remaining_ms: until.saturating_sub(now_ms()),
        }
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn insert_database(
        &self,
        rec: &DatabaseRecord,
        t: &Transition,
    ) -> Result<(), LifecycleError> {
        self.with(|m| {
            if m.databases.contains_key(&rec.name) {
                return Err(LifecycleError::AlreadyExists {
                    kind: "database",
                    name: rec.name.to_string(),
                });
            }
            m.databases.insert(rec.name.clone(), rec.clone());
            m.transitions.push(t.clone());
            Ok(())
        })
    }

    async fn database(
        &self,
        name: &DatabaseName,
    ) -> Result<Option<DatabaseRecord>, LifecycleError> {
        Ok(self.with(|m| m.databases.get(name).cloned()))
    }

    async fn databases(&self) -> Result<Vec<DatabaseRecord>, LifecycleError> {
        Ok(self.with(|m| m.databases.values().cloned().collect()))
    }

    async fn update_database(
        &self,
        rec: &DatabaseRecord,
        expected: u64,
        t: Option<&Transition>,
    ) -> Result<bool, LifecycleError> {
        self.with(|m| {
            let token = m.owners.get(&rec.name).map_or(0, |o| o.2);
            let Some(cur) = m.databases.get_mut(&rec.name) else {
                return Ok(false);
            };
            if cur.version != expected
                || cur.generation > rec.generation
                || rec.owner_token != token
            {
                return Ok(false);
            }
            *cur = DatabaseRecord {
                owner_token: token,
                ..rec.clone()
            };
            m.transitions.extend(t.cloned());
            Ok(true)
        })
    }

    async fn delete_database(
        &self,
        name: &DatabaseName,
        expected: u64,
        t: &Transition,
    ) -> Result<bool, LifecycleError> {
        self.with(|m| {
            if m.databases.get(name).is_none_or(|d| d.version != expected) {
                return Ok(false);
            }
            m.databases.remove(name);
            m.owners.remove(name);
            m.roles.retain(|(db, _), _| db != name);
            m.transitions.push(t.clone());
            Ok(true)
        })
    }

    async fn insert_role(&self, rec: &RoleRecord) -> Result<(), LifecycleError> {
        self.with(|m| {
            if !self.orphan_roles && !m.databases.contains_key(&rec.database) {
                return Err(LifecycleError::DatabaseNotFound(rec.database.to_string()));
            }
            let key = (rec.database.clone(), rec.name.clone());
            if m.roles.contains_key(&key) {
                return Err(LifecycleError::AlreadyExists {
                    kind: "role",
                    name: rec.name.to_string(),
                });
            }
            m.roles.insert(key, rec.clone());
            Ok(())
        })
    }

    async fn role(
        &self,
        db: &DatabaseName,
        name: &RoleName,
    ) -> Result<Option<RoleRecord>, LifecycleError> {
        Ok(self.with(|m| m.roles.get(&(db.clone(), name.clone())).cloned()))
    }

    async fn roles(&self, db: &DatabaseName) -> Result<Vec<RoleRecord>, LifecycleError> {
        Ok(self.with(|m| {
            m.roles
                .values()
                .filter(|r| &r.database == db)
                .cloned()
                .collect()
        }))
    }

    async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        Ok(self.with(|m| {
            let mine = |t: &&Transition| db.is_none_or(|d| &t.database == d);
            m.transitions
                .iter()
                .rev()
                .filter(mine)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn transitions_between(
        &self,
        db: &DatabaseName,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Transition>, LifecycleError> {
        Ok(self.with(|m| {
            let all: Vec<&Transition> =
                m.transitions.iter().filter(|t| &t.database == db).collect();
            let before = all
                .iter()
                .rev()
                .find(|t| t.at_ms < from_ms)
                .map(|t| (*t).clone());
            let within = all.iter().filter(|t| (from_ms..=to_ms).contains(&t.at_ms));
            before
                .into_iter()
                .chain(within.map(|t| (*t).clone()))
                .collect()
        }))
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, LifecycleError> {
        Ok(self.with(|m| m.meta.get(key).cloned()))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), LifecycleError> {
        self.with(|m| m.meta.insert(key.into(), value.into()));
        Ok(())
    }

    async fn claim_ownership(
        &self,
        db: &DatabaseName,
        claim: &OwnershipClaim<'_>,
    ) -> Result<Ownership, LifecycleError> {
        self.with(|m| {
            if !m.databases.contains_key(db) {
                return Err(LifecycleError::DatabaseNotFound(db.to_string()));
            }
            let cur = m.ownership(db);
            let until = now_ms().saturating_add(claim.ttl_ms);
            let entry = m.owners.entry(db.clone()).or_default();
            if cur.held_by(claim.owner) && claim.renew == Some(cur.token) {
                (entry.1, entry.3) = (Some(claim.owner_url.into()), until);
            } else if !cur.is_held() {
                *entry = (
                    Some(claim.owner.into()),
                    Some(claim.owner_url.into()),
                    cur.token + 1,
                    until,
                );
                if let Some(d) = m.databases.get_mut(db) {
                    d.version += 1;
                    d.owner_token = cur.token + 1;
                }
            }
            Ok(m.ownership(db))
        })
    }

    async fn release_ownership(
        &self,
        db: &DatabaseName,
        owner: &str,
        token: u64,
    ) -> Result<bool, LifecycleError> {
        Ok(self.with(|m| match m.owners.get_mut(db) {
            Some(o) if o.0.as_deref() == Some(owner) && o.2 == token && o.3 > now_ms() => {
                o.3 = 0;
                true
            }
            _ => false,
        }))
    }

    async fn ownerships(&self) -> Result<Vec<Ownership>, LifecycleError> {
        Ok(self.with(|m| m.databases.keys().map(|d| m.ownership(d)).collect()))
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
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore {
        orphan_roles: true,
        ..MemoryStateStore::default()
    });
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

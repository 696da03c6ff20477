//! Holding one [`Lease`] per database while the gateway serves it, renewed in the background and
//! released when the last session ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spg_core::{CoreError, CoreResult, DatabaseName, Lease, LeaseGrant};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

#[derive(Default)]
struct Entry {
    users: usize,
    grant: Option<Arc<Mutex<LeaseGrant>>>,
    renewer: Option<JoinHandle<()>>,
}

/// Reference-counted leases, one per database.
pub struct LeaseKeeper {
    lease: Arc<dyn Lease>,
    holder: String,
    entries: Mutex<HashMap<DatabaseName, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl LeaseKeeper {
    /// Keep leases through `lease`, naming this gateway `holder`.
    pub fn new(lease: Arc<dyn Lease>, holder: impl Into<String>) -> Arc<Self> {
        Arc::new(LeaseKeeper {
            lease,
            holder: holder.into(),
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn entry(&self, db: &DatabaseName) -> Arc<tokio::sync::Mutex<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(db.clone())
            .or_default()
            .clone()
    }

    /// Hold the database's lease until the guard is released or dropped; the first holder
    /// acquires it.
    pub async fn hold(self: &Arc<Self>, db: &DatabaseName) -> CoreResult<LeaseGuard> {
        let entry = self.entry(db);
        let mut e = entry.lock().await;
        if e.users == 0 {
            let grant = self.lease.acquire(db, &self.holder).await?;
            debug!(%db, lease = %grant.id.0, "lease acquired");
            let slot = Arc::new(Mutex::new(grant));
            e.renewer = Some(tokio::spawn(renew_loop(
                Arc::clone(&self.lease),
                self.holder.clone(),
                db.clone(),
                Arc::clone(&slot),
            )));
            e.grant = Some(slot);
        }
        e.users += 1;
        Ok(LeaseGuard {
            keeper: Some(Arc::clone(self)),
            db: db.clone(),
        })
    }

    async fn release_one(&self, db: &DatabaseName) {
        let entry = self.entry(db);
        let mut e = entry.lock().await;
        e.users = e.users.saturating_sub(1);
        if e.users > 0 {
            return;
        }
        if let Some(r) = e.renewer.take() {
            r.abort();
        }
        if let Some(slot) = e.grant.take() {
            let id = slot.lock().unwrap_or_else(|p| p.into_inner()).id.clone();
            if let Err(err) = self.lease.release(&id).await {
                warn!(%db, error = %err, "releasing lease failed; it will expire");
            } else {
                debug!(%db, lease = %id.0, "lease released");
            }
        }
    }

    /// How many sessions hold the database's lease.
    pub async fn holders(&self, db: &DatabaseName) -> usize {
        self.entry(db).lock().await.users
    }
}

async fn renew_loop(
    lease: Arc<dyn Lease>,
    holder: String,
    db: DatabaseName,
    slot: Arc<Mutex<LeaseGrant>>,
) {
    loop {
        let (id, ttl) = {
            let g = slot.lock().unwrap_or_else(|p| p.into_inner());
            (g.id.clone(), g.ttl)
        };
        tokio::time::sleep((ttl / 3).max(Duration::from_millis(50))).await;
        let renewed = match lease.renew(&id).await {
            Ok(g) => Ok(g),
            // Expired or forgotten (e.g. the control plane restarted): take a new one.
            Err(CoreError::NotFound { .. }) => lease.acquire(&db, &holder).await,
            Err(e) => Err(e),
        };
        match renewed {
            Ok(g) => *slot.lock().unwrap_or_else(|p| p.into_inner()) = g,
            Err(e) => warn!(%db, error = %e, "lease renewal failed; retrying"),
        }
    }
}

/// Holds a database's lease; release with [`LeaseGuard::release`] or by dropping it.
pub struct LeaseGuard {
    keeper: Option<Arc<LeaseKeeper>>,
    db: DatabaseName,
}

impl LeaseGuard {
    /// Release now and wait for it.
    pub async fn release(mut self) {
        if let Some(k) = self.keeper.take() {
            k.release_one(&self.db).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            let db = self.db.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { k.release_one(&db).await });
            }
        }
    }
}

//! Per-database session counts and freezes: the gateway's side of [`spg_core::Gateway`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use spg_core::{DatabaseName, GatewaySessions};
use tokio::sync::watch;

struct DbEntry {
    sessions: usize,
    frozen: watch::Sender<bool>,
    /// Counts freezes, so that the expiry of an earlier one leaves a later one alone.
    epoch: u64,
}

impl Default for DbEntry {
    fn default() -> Self {
        DbEntry {
            sessions: 0,
            frozen: watch::channel(false).0,
            epoch: 0,
        }
    }
}

/// Session counts and freeze flags per database.
#[derive(Default)]
pub struct SessionRegistry {
    dbs: Mutex<HashMap<DatabaseName, DbEntry>>,
}

impl SessionRegistry {
    /// A new registry.
    pub fn new() -> Arc<Self> {
        Arc::new(SessionRegistry::default())
    }

    /// Count a session of `db` until the guard drops.
    pub fn enter(self: &Arc<Self>, db: &DatabaseName) -> SessionGuard {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        dbs.entry(db.clone()).or_default().sessions += 1;
        SessionGuard {
            registry: Arc::clone(self),
            db: db.clone(),
        }
    }

    /// Wait while new work for `db` is frozen.
    pub async fn wait_unfrozen(&self, db: &DatabaseName) {
        let mut rx = {
            let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
            dbs.entry(db.clone()).or_default().frozen.subscribe()
        };
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }

    /// A receiver of `db`'s freeze flag (for pools, which check it on every checkout).
    pub fn frozen_receiver(&self, db: &DatabaseName) -> watch::Receiver<bool> {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        dbs.entry(db.clone()).or_default().frozen.subscribe()
    }

    /// Figures for `db`.
    pub fn sessions(&self, db: &DatabaseName) -> GatewaySessions {
        let dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        let (sessions, frozen) = dbs
            .get(db)
            .map(|e| (e.sessions, *e.frozen.borrow()))
            .unwrap_or((0, false));
        GatewaySessions {
            database: db.clone(),
            sessions,
            frozen,
            in_flight: 0,
            pinned: Vec::new(),
            waiting: 0,
            wait_us: 0,
        }
    }

    /// Freeze `db` for at most `bound` (it unfreezes by itself then), or unfreeze it (`None`).
    /// Must be called within a Tokio runtime (the expiry is a task).
    pub fn set_frozen(self: &Arc<Self>, db: &DatabaseName, freeze: Option<std::time::Duration>) {
        let epoch = {
            let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
            let e = dbs.entry(db.clone()).or_default();
            e.epoch += 1;
            e.frozen.send_replace(freeze.is_some());
            e.epoch
        };
        let Some(bound) = freeze else { return };
        let registry = Arc::downgrade(self);
        let db = db.clone();
        tokio::spawn(async move {
            tokio::time::sleep(bound).await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let mut dbs = registry.dbs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = dbs.get_mut(&db) {
                if e.epoch == epoch && *e.frozen.borrow() {
                    tracing::warn!(%db, ?bound, "freeze expired without an unfreeze; new work goes on");
                    e.frozen.send_replace(false);
                }
            }
        });
    }
}

/// A counted session.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    db: DatabaseName,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut dbs = self.registry.dbs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = dbs.get_mut(&self.db) {
            e.sessions = e.sessions.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn counts_and_freezes() {
        let r = SessionRegistry::new();
        let db = DatabaseName::new("shop").unwrap();
        let g = r.enter(&db);
        assert_eq!(r.sessions(&db).sessions, 1);
        drop(g);
        assert_eq!(r.sessions(&db).sessions, 0);

        r.set_frozen(&db, Some(Duration::from_secs(60)));
        let r2 = r.clone();
        let db2 = db.clone();
        let waiter = tokio::spawn(async move { r2.wait_unfrozen(&db2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "a frozen database must hold new work back"
        );
        r.set_frozen(&db, None);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_freeze_expires_by_itself_and_a_renewed_one_lasts() {
        let r = SessionRegistry::new();
        let db = DatabaseName::new("shop").unwrap();
        r.set_frozen(&db, Some(Duration::from_millis(100)));
        // Renewed before it expires: the first bound no longer applies.
        r.set_frozen(&db, Some(Duration::from_millis(400)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(r.sessions(&db).frozen, "the renewed freeze holds");
        tokio::time::timeout(Duration::from_secs(2), r.wait_unfrozen(&db))
            .await
            .expect("the freeze ends by itself");
        assert!(!r.sessions(&db).frozen);
    }
}

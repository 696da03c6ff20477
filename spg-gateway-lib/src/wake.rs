//! Merging concurrent wakes of one database into one call of the [`Waker`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use spg_core::{ComputeEndpoint, CoreError, DatabaseName};
use tokio::sync::watch;

use crate::deps::Waker;

/// Why a wake failed, in a form every merged waiter can share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeFailure {
    /// Retrying may succeed.
    pub retryable: bool,
    /// The database does not exist.
    pub not_found: bool,
    /// The platform refused to start it, with the operator's message (shown to the client).
    pub refused: Option<String>,
    /// What happened (for logs).
    pub message: String,
}

impl From<CoreError> for WakeFailure {
    fn from(e: CoreError) -> Self {
        WakeFailure {
            retryable: e.is_retryable(),
            not_found: matches!(e, CoreError::DatabaseNotFound(_)),
            refused: match &e {
                CoreError::Refused(m) => Some(m.clone()),
                _ => None,
            },
            message: e.to_string(),
        }
    }
}

type Outcome = Option<Result<ComputeEndpoint, WakeFailure>>;

/// Merges concurrent wakes: while a wake of a database is in flight, further callers wait for
/// its outcome instead of calling the [`Waker`] again. The call runs in its own task, so a
/// client giving up does not cancel it for the others.
pub struct WakeCoalescer {
    waker: Arc<dyn Waker>,
    inflight: Mutex<HashMap<DatabaseName, watch::Receiver<Outcome>>>,
}

impl WakeCoalescer {
    /// Merge calls to `waker`.
    pub fn new(waker: Arc<dyn Waker>) -> Arc<Self> {
        Arc::new(WakeCoalescer {
            waker,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Wake `db`, sharing an in-flight wake if there is one. Returns whether this call led the
    /// wake (called the [`Waker`]) along with the outcome.
    pub async fn wake(
        self: &Arc<Self>,
        db: &DatabaseName,
    ) -> (bool, Result<ComputeEndpoint, WakeFailure>) {
        let (leader, mut rx) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(db) {
                Some(rx) => (false, rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(db.clone(), rx.clone());
                    let this = Arc::clone(self);
                    let db = db.clone();
                    tokio::spawn(async move {
                        let r = this.waker.wake(&db).await.map_err(WakeFailure::from);
                        this.inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&db);
                        let _ = tx.send(Some(r));
                    });
                    (true, rx)
                }
            }
        };
        let outcome = match rx.wait_for(|o| o.is_some()).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err(lost())),
            Err(_) => Err(lost()),
        };
        (leader, outcome)
    }
}

fn lost() -> WakeFailure {
    WakeFailure {
        retryable: true,
        not_found: false,
        refused: None,
        message: "wake task ended without an outcome".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use spg_core::{CoreResult, Generation};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct SlowWaker(AtomicUsize);

    #[async_trait]
    impl Waker for SlowWaker {
        async fn wake(&self, _db: &DatabaseName) -> CoreResult<ComputeEndpoint> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(ComputeEndpoint {
                addr: ([127, 0, 0, 1], 1).into(),
                generation: Generation(n as u64 + 1),
            })
        }
    }

    #[tokio::test]
    async fn merges_concurrent_wakes() {
        let w = Arc::new(SlowWaker(AtomicUsize::new(0)));
        let c = WakeCoalescer::new(w.clone());
        let db = DatabaseName::new("shop").unwrap();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                let db = db.clone();
                tokio::spawn(async move { c.wake(&db).await })
            })
            .collect();
        let mut leaders = 0;
        for call in calls {
            let (leader, r) = call.await.unwrap();
            leaders += leader as usize;
            assert_eq!(r.unwrap().generation, Generation(1));
        }
        assert_eq!(leaders, 1);
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        // After it finished, the next wake calls again.
        assert_eq!(c.wake(&db).await.1.unwrap().generation, Generation(2));
    }
}

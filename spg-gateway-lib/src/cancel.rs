//! Cancel keys. The gateway hands each session its own random `BackendKeyData` and maps it to
//! the backend connection the session holds at the moment (under transaction pooling that
//! changes from one transaction to the next); a `CancelRequest` carrying the gateway's key is
//! forwarded to that backend, and does nothing while the session holds none.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proto::startup::encode_cancel;

/// Where a session's cancel requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    /// Compute address.
    pub addr: SocketAddr,
    /// Backend process id.
    pub pid: i32,
    /// Backend secret key.
    pub secret: i32,
}

/// Registry of live sessions' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Slot)>>,
}

type Slot = Arc<Mutex<Option<CancelTarget>>>;

impl CancelRegistry {
    /// A new registry.
    pub fn new() -> Arc<Self> {
        Arc::new(CancelRegistry::default())
    }

    /// Register a session; the returned key is what the client gets in `BackendKeyData`.
    /// Its target is `target` until [`CancelKey::set_target`] changes it.
    pub fn register(self: &Arc<Self>, target: Option<CancelTarget>) -> CancelKey {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::rng();
        let pid = loop {
            let p = rng.random_range(1..i32::MAX);
            if !map.contains_key(&p) {
                break p;
            }
        };
        let secret: i32 = rng.random();
        let slot = Arc::new(Mutex::new(target));
        map.insert(pid, (secret, Arc::clone(&slot)));
        CancelKey {
            registry: Arc::clone(self),
            slot,
            pid,
            secret,
        }
    }

    /// Forward a cancel request if the key matches a live session. Returns whether it did.
    pub async fn cancel(&self, pid: i32, secret: i32) -> bool {
        let target = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&pid) {
                Some((s, t)) if spg_core::scram::ct_eq(&s.to_be_bytes(), &secret.to_be_bytes()) => {
                    *t.lock().unwrap_or_else(|p| p.into_inner())
                }
                _ => None,
            }
        };
        let Some(t) = target else {
            return false;
        };
        let send = async {
            let mut s = TcpStream::connect(t.addr).await?;
            s.write_all(&encode_cancel(t.pid, t.secret)).await?;
            s.shutdown().await
        };
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => true,
            _ => {
                tracing::warn!(addr = %t.addr, "forwarding a cancel request failed");
                false
            }
        }
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered key; unregisters when dropped.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    slot: Slot,
    /// Process id shown to the client.
    pub pid: i32,
    /// Secret shown to the client.
    pub secret: i32,
}

impl CancelKey {
    /// Where cancel requests with this key go from now on (`None`: nowhere).
    pub fn set_target(&self, target: Option<CancelTarget>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrong_or_stale_keys_do_nothing() {
        let r = CancelRegistry::new();
        let key = r.register(Some(CancelTarget {
            addr: ([127, 0, 0, 1], 9).into(),
            pid: 1,
            secret: 2,
        }));
        assert!(!r.cancel(key.pid, key.secret.wrapping_add(1)).await);
        assert!(!r.cancel(key.pid.wrapping_add(1), key.secret).await);
        key.set_target(None);
        assert!(
            !r.cancel(key.pid, key.secret).await,
            "no target: nothing to cancel"
        );
        let (pid, secret) = (key.pid, key.secret);
        drop(key);
        assert!(r.is_empty());
        assert!(!r.cancel(pid, secret).await);
    }
}

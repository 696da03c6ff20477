//! How clients prove who they are, and the `password` method's verification cache.
//!
//! SCRAM-SHA-256 (the default) never shows the gateway a password, but makes every client derive
//! its key with PBKDF2 (4096 rounds of HMAC-SHA-256) on every connection: with libpq that is
//! ~4 ms of client CPU per connection, more than a whole pooled transaction. Clients that
//! connect per request (serverless functions, `pgbench -C`) can use PostgreSQL's `password`
//! method instead: the client sends its password (over TLS, unless plaintext was allowed), the
//! gateway checks it against the same stored SCRAM verifier — and remembers what it verified,
//! so the next connection with that password costs one HMAC instead of a PBKDF2. PostgreSQL's
//! own `password` method recomputes the PBKDF2 every time.
//!
//! The cache holds, for each verified (role, verifier, password), the ClientKey the gateway
//! needs anyway to open backends; entries are found by an HMAC under a per-process secret, so
//! the cache holds no password and nothing that can be checked against a guess without that
//! secret. A changed password changes the verifier, so old entries never match again. Failed
//! attempts are not cached: each one costs the gateway a PBKDF2 on a blocking thread.

use std::collections::HashMap;
use std::sync::Mutex;

use spg_core::scram::{
    hmac_sha256, normalize_password, salted_password, ClientKey, Key, ScramVerifier,
};
use zeroize::Zeroizing;

/// The authentication method the gateway asks clients for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// SCRAM-SHA-256 (with `-PLUS` channel binding on TLS): the password never leaves the
    /// client.
    #[default]
    Scram,
    /// PostgreSQL's `password` method: the client sends the password, the gateway verifies it
    /// against the stored verifier and caches the result. Requires TLS unless plaintext
    /// sessions are allowed.
    Password,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scram" | "scram-sha-256" => Ok(ClientAuth::Scram),
            "password" => Ok(ClientAuth::Password),
            other => Err(format!(
                "unknown client authentication method {other:?} (scram or password)"
            )),
        }
    }
}

/// Verified passwords, bounded.
pub(crate) struct PasswordCache {
    secret: [u8; 32],
    entries: Mutex<HashMap<Key, ClientKey>>,
    capacity: usize,
}

/// What checking a password found.
pub(crate) struct Checked {
    /// The ClientKey when the password matches.
    pub(crate) client_key: Option<ClientKey>,
    /// Whether the answer came from the cache.
    pub(crate) cached: bool,
}

impl PasswordCache {
    pub(crate) fn new(secret: [u8; 32], capacity: usize) -> Self {
        PasswordCache {
            secret,
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn tag(&self, role: &str, verifier: &ScramVerifier, password: &[u8]) -> Key {
        hmac_sha256(
            &self.secret,
            &[
                &(role.len() as u64).to_be_bytes(),
                role.as_bytes(),
                &verifier.stored_key,
                &verifier.iterations.to_be_bytes(),
                &(verifier.salt.len() as u64).to_be_bytes(),
                &verifier.salt,
                password,
            ],
        )
    }

    /// Check `password` for `role` against `verifier`.
    pub(crate) async fn check(
        &self,
        role: &str,
        verifier: &ScramVerifier,
        password: &[u8],
        gate: &crate::limits::Gate,
    ) -> Checked {
        let tag = self.tag(role, verifier, password);
        let hit = self.lock().get(&tag).cloned();
        if let Some(client_key) = hit {
            // The entry was made for this very verifier; the check is cheap, keep it.
            if verifier.matches_client_key(&client_key) {
                return Checked {
                    client_key: Some(client_key),
                    cached: true,
                };
            }
        }
        let normalized = match std::str::from_utf8(password) {
            Ok(s) => normalize_password(s),
            Err(_) => Zeroizing::new(password.to_vec()),
        };
        let salt = verifier.salt.clone();
        let iterations = verifier.iterations;
        // Key derivations are bounded: failed logins cannot take every blocking thread.
        let Some(permit) = gate.hash_permit().await else {
            return Checked {
                client_key: None,
                cached: false,
            };
        };
        let derived = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let salted = Zeroizing::new(salted_password(&normalized, &salt, iterations));
            ClientKey::new(hmac_sha256(&*salted, &[b"Client Key"]))
        })
        .await;
        let Ok(client_key) = derived else {
            return Checked {
                client_key: None,
                cached: false,
            };
        };
        if !verifier.matches_client_key(&client_key) {
            return Checked {
                client_key: None,
                cached: false,
            };
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            // Rare (a cap per process, not per role); start over rather than track recency.
            entries.clear();
        }
        entries.insert(tag, client_key.clone());
        Checked {
            client_key: Some(client_key),
            cached: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, ClientKey>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> std::sync::Arc<crate::limits::Gate> {
        crate::limits::Gate::new(crate::limits::LoginLimits::default())
    }

    #[tokio::test]
    async fn verifies_caches_and_forgets_a_changed_password() {
        let cache = PasswordCache::new([7; 32], 100);
        let gate = gate();
        let v = ScramVerifier::from_password_with("s3cret", b"saltsaltsalt", 4096);
        let first = cache.check("app", &v, b"s3cret", &gate).await;
        assert!(first.client_key.is_some() && !first.cached);
        let again = cache.check("app", &v, b"s3cret", &gate).await;
        assert!(again.cached);
        assert_eq!(again.client_key, first.client_key);
        // Same password, another role: not the same entry.
        assert!(!cache.check("other", &v, b"s3cret", &gate).await.cached);
        let wrong = cache.check("app", &v, b"guess", &gate).await;
        assert!(wrong.client_key.is_none());
        assert!(cache
            .check("app", &v, b"guess", &gate)
            .await
            .client_key
            .is_none());
        // The password changed: the old one no longer gets in, cached or not.
        let changed = ScramVerifier::from_password_with("n3w", b"saltsaltsalt", 4096);
        assert!(cache
            .check("app", &changed, b"s3cret", &gate)
            .await
            .client_key
            .is_none());
        assert!(cache
            .check("app", &changed, b"n3w", &gate)
            .await
            .client_key
            .is_some());
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = PasswordCache::new([1; 32], 2);
        let gate = gate();
        let v = ScramVerifier::from_password_with("pw", b"salt", 16);
        for role in ["a", "b", "c", "d"] {
            assert!(cache
                .check(role, &v, b"pw", &gate)
                .await
                .client_key
                .is_some());
        }
        assert!(cache.lock().len() <= 2);
    }

    #[test]
    fn method_names_parse() {
        assert_eq!("scram".parse::<ClientAuth>(), Ok(ClientAuth::Scram));
        assert_eq!("password".parse::<ClientAuth>(), Ok(ClientAuth::Password));
        assert!("md5".parse::<ClientAuth>().is_err());
    }
}

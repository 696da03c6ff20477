//! The client side of SCRAM-SHA-256, as PostgreSQL's servers expect it (no channel binding).
//!
//! Two ways to hold the secret: the password itself, or the **ClientKey** plus the role's verifier
//! (how the gateway logs in to a compute on behalf of a client it authenticated, and how a
//! safekeeper logs in for replication with a key the compute agent minted).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngExt;
use thiserror::Error;

use super::{ct_eq, hmac_sha256, normalize_password, salted_password, sha256, xor, ClientKey, Key};
use super::{ScramVerifier, MAX_ITERATIONS};

/// The SCRAM mechanism this client speaks.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Why a client-side exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScramClientError {
    /// A server message did not parse.
    #[error("malformed SCRAM message ({0})")]
    Malformed(&'static str),
    /// The server refused, or proved it does not hold the expected verifier.
    #[error("{0}")]
    Rejected(String),
}

fn malformed(what: &'static str) -> ScramClientError {
    ScramClientError::Malformed(what)
}

/// A fresh nonce: 18 random bytes, base64 (printable, no commas), as PostgreSQL makes them.
pub fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::rng().fill(&mut raw[..]);
    B64.encode(raw)
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A parsed `server-first-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst<'a> {
    /// Combined nonce.
    pub nonce: &'a str,
    /// Salt.
    pub salt: Vec<u8>,
    /// Iteration count.
    pub iterations: u32,
}

/// Parse a `server-first-message`.
pub fn parse_server_first(s: &str) -> Result<ServerFirst<'_>, ScramClientError> {
    if s.starts_with("m=") {
        return Err(malformed("server requires an extension"));
    }
    let mut attrs = s.split(',');
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| valid_nonce(n))
        .ok_or_else(|| malformed("nonce"))?;
    let salt = attrs
        .next()
        .and_then(|a| a.strip_prefix("s="))
        .and_then(|b| B64.decode(b).ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed("salt"))?;
    let iterations = attrs
        .next()
        .and_then(|a| a.strip_prefix("i="))
        .and_then(|i| i.parse::<u32>().ok())
        .filter(|i| (1..=MAX_ITERATIONS).contains(i))
        .ok_or_else(|| malformed("iteration count"))?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// Parse a `server-final-message`: the server signature, or the server's error.
pub fn parse_server_final(s: &str) -> Result<Key, ScramClientError> {
    if let Some(e) = s.strip_prefix("e=") {
        return Err(ScramClientError::Rejected(format!("SCRAM error: {e}")));
    }
    s.strip_prefix("v=")
        .and_then(|v| B64.decode(v.split(',').next().unwrap_or("")).ok())
        .and_then(|v| Key::try_from(v.as_slice()).ok())
        .ok_or_else(|| malformed("server signature"))
}

/// What the client proves it knows (wiped when dropped).
#[derive(Clone)]
enum Secret {
    /// The password (normalized).
    Password(zeroize::Zeroizing<Vec<u8>>),
    /// The ClientKey, and the verifier the server must hold identically.
    Key {
        client_key: ClientKey,
        verifier: ScramVerifier,
    },
}

/// One client-side exchange.
pub struct ScramClient {
    secret: Secret,
    client_first_bare: String,
    /// AuthMessage and the ServerKey expected to sign it.
    pending: Option<(String, Key)>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramClient { .. }")
    }
}

impl ScramClient {
    /// Log in with `client_key`; `verifier` is the role's verifier, which the server must hold
    /// identically (its salt and iteration count are checked, its ServerKey authenticates the
    /// server).
    pub fn with_client_key(client_key: ClientKey, verifier: ScramVerifier) -> Self {
        Self::new(Secret::Key {
            client_key,
            verifier,
        })
    }

    /// Log in with a password.
    pub fn with_password(password: &str) -> Self {
        Self::new(Secret::Password(normalize_password(password)))
    }

    fn new(secret: Secret) -> Self {
        ScramClient {
            secret,
            client_first_bare: format!("n=,r={}", nonce()),
            pending: None,
        }
    }

    /// The mechanism and `client-first-message`.
    pub fn client_first(&self) -> (&'static str, Vec<u8>) {
        (
            SCRAM_SHA_256,
            format!("n,,{}", self.client_first_bare).into_bytes(),
        )
    }

    /// Take the `server-first-message`; returns the `client-final-message`.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramClientError> {
        let s = std::str::from_utf8(data).map_err(|_| malformed("not UTF-8"))?;
        let first = parse_server_first(s)?;
        let own = &self.client_first_bare["n=,r=".len()..];
        if !first.nonce.starts_with(own) || first.nonce.len() == own.len() {
            return Err(ScramClientError::Rejected(
                "server answered with a bad SCRAM nonce".into(),
            ));
        }
        let (client_key, stored_key, server_key) = match &self.secret {
            Secret::Key {
                client_key,
                verifier,
            } => {
                if first.salt != verifier.salt || first.iterations != verifier.iterations {
                    return Err(ScramClientError::Rejected(
                        "server holds a different verifier for the role".into(),
                    ));
                }
                (client_key.clone(), verifier.stored_key, verifier.server_key)
            }
            Secret::Password(p) => {
                let salted =
                    zeroize::Zeroizing::new(salted_password(p, &first.salt, first.iterations));
                let client_key = ClientKey::new(hmac_sha256(&*salted, &[b"Client Key"]));
                let server_key = hmac_sha256(&*salted, &[b"Server Key"]);
                let stored_key = sha256(client_key.expose());
                (client_key, stored_key, server_key)
            }
        };
        let without_proof = format!("c=biws,r={}", first.nonce);
        let auth_message = format!("{},{s},{without_proof}", self.client_first_bare);
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof = xor(client_key.expose(), &signature);
        self.pending = Some((auth_message, server_key));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Take the `server-final-message` and check that the server knows the ServerKey.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), ScramClientError> {
        let (auth_message, server_key) = self
            .pending
            .take()
            .ok_or(malformed("unexpected server-final-message"))?;
        let s = std::str::from_utf8(data).map_err(|_| malformed("not UTF-8"))?;
        let got = parse_server_final(s)?;
        let expected = hmac_sha256(&server_key, &[auth_message.as_bytes()]);
        if !ct_eq(&got, &expected) {
            return Err(ScramClientError::Rejected(
                "server's SCRAM signature is wrong".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn server_messages() {
        let f = parse_server_first("r=abcdef,s=c2FsdA==,i=4096").unwrap();
        assert_eq!(
            (f.nonce, f.salt.as_slice(), f.iterations),
            ("abcdef", &b"salt"[..], 4096)
        );
        assert!(parse_server_first("r=abc,s=c2FsdA==,i=0").is_err());
        assert!(parse_server_first("r=abc,s=,i=10").is_err());
        assert!(parse_server_first("r=abc,s=c2FsdA==,i=99999999999").is_err());
        assert!(parse_server_final("e=invalid-proof").is_err());
        assert!(parse_server_final(&format!("v={}", B64.encode([0u8; 32]))).is_ok());
    }

    /// A password client and a key client produce the same proof for the same server.
    #[test]
    fn password_and_key_clients_agree() {
        let v = ScramVerifier::from_password("s3cret");
        let salted = salted_password(&normalize_password("s3cret"), &v.salt, v.iterations);
        let key = ClientKey::new(hmac_sha256(&salted, &[b"Client Key"]));
        let mut a = ScramClient::with_password("s3cret");
        let mut b = ScramClient::with_client_key(key, v.clone());
        b.client_first_bare = a.client_first_bare.clone();
        let own = &a.client_first_bare["n=,r=".len()..];
        let first = format!("r={own}srv,s={},i={}", B64.encode(&v.salt), v.iterations);
        let fa = a.server_first(first.as_bytes()).unwrap();
        let fb = b.server_first(first.as_bytes()).unwrap();
        assert_eq!(fa, fb);
        // The server signs with the ServerKey; both accept it, a wrong one is refused.
        let (auth, _) = a.pending.clone().unwrap();
        let sig = hmac_sha256(&v.server_key, &[auth.as_bytes()]);
        let fin = format!("v={}", B64.encode(sig));
        a.server_final(fin.as_bytes()).unwrap();
        b.server_final(fin.as_bytes()).unwrap();
        let mut c = ScramClient::with_password("wrong");
        c.client_first_bare = a.client_first_bare.clone();
        c.server_first(first.as_bytes()).unwrap();
        assert!(c.server_final(fin.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}") {
            let _ = parse_server_first(&s);
            let _ = parse_server_final(&s);
        }
    }
}

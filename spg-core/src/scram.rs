//! SCRAM-SHA-256 verifiers in PostgreSQL's storage format, and the primitives the SCRAM exchanges
//! of the gateway are built from (RFC 5802, RFC 7677).
//!
//! A verifier is what PostgreSQL keeps in `pg_authid.rolpassword`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). The control plane stores
//! only verifiers, never passwords; the gateway authenticates clients against them, and the compute
//! holds the identical verifier so that the gateway can log in on the client's behalf with the
//! ClientKey recovered from the client's proof.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::CoreError;

pub mod client;

/// Length of SHA-256 output, and so of every SCRAM key.
pub const KEY_LEN: usize = 32;
/// Iteration count PostgreSQL uses by default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length PostgreSQL uses.
pub const SALT_LEN: usize = 16;
/// Upper bound on iterations accepted from a stored verifier or a server, so that a hostile
/// value cannot burn minutes of CPU.
pub const MAX_ITERATIONS: u32 = 1 << 20;

/// A SCRAM key (ClientKey, StoredKey, ServerKey, SaltedPassword).
pub type Key = [u8; KEY_LEN];

/// A ClientKey: what a client proves it knows, and all the gateway needs to log in to a compute
/// as the client. A secret: wiped from memory when dropped, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct ClientKey(Key);

impl ClientKey {
    /// The key.
    pub fn new(key: Key) -> Self {
        ClientKey(key)
    }

    /// The key's bytes (for the SCRAM computations that need them).
    pub fn expose(&self) -> &Key {
        &self.0
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

impl std::hash::Hash for ClientKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

/// HMAC-SHA-256.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Key {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// `Hi(Normalize(password), salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// Normalise a password the way PostgreSQL does before hashing: SASLprep when the password is
/// valid for it, the raw bytes otherwise. Wiped when dropped.
pub fn normalize_password(password: &str) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    })
}

/// XOR of two keys.
pub fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for i in 0..KEY_LEN {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A SCRAM-SHA-256 verifier: what a server needs to check a client's proof, and nothing from
/// which the password could be recovered without a brute-force search.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: Key,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Key,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are secrets: never print them.
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Hash a password with a fresh random salt and the default iteration count.
    pub fn from_password(password: &str) -> Self {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill(&mut salt[..]);
        Self::from_password_with(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Hash a password with the given salt and iteration count.
    pub fn from_password_with(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(&normalize_password(password), salt, iterations);
        Self::from_salted_password(&salted, salt, iterations)
    }

    /// Build a verifier from an already salted password.
    pub fn from_salted_password(salted: &Key, salt: &[u8], iterations: u32) -> Self {
        let client_key = hmac_sha256(salted, &[b"Client Key"]);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(salted, &[b"Server Key"]),
        }
    }

    /// A verifier no password matches, with a salt derived from `role` and `secret` so that
    /// repeated attempts against an unknown role look exactly like attempts against a real one.
    pub fn mock(role: &str, secret: &[u8]) -> Self {
        let salt = hmac_sha256(secret, &[b"mock-salt:", role.as_bytes()]);
        let mut stored_key = [0u8; KEY_LEN];
        let mut server_key = [0u8; KEY_LEN];
        rand::rng().fill(&mut stored_key[..]);
        rand::rng().fill(&mut server_key[..]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..SALT_LEN].to_vec(),
            stored_key,
            server_key,
        }
    }

    /// Whether `client_key` is the ClientKey of this verifier (`H(ClientKey) == StoredKey`).
    pub fn matches_client_key(&self, client_key: &ClientKey) -> bool {
        ct_eq(&sha256(client_key.expose()), &self.stored_key)
    }

    /// Parse PostgreSQL's format `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let bad = |reason: &str| CoreError::invalid("SCRAM verifier", reason.to_string());
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("must start with SCRAM-SHA-256$"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or_else(|| bad("missing keys"))?;
        let (iter, salt) = iter_salt
            .split_once(':')
            .ok_or_else(|| bad("missing salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| bad("missing server key"))?;
        let iterations: u32 = iter.parse().map_err(|_| bad("bad iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(bad("iteration count out of range"));
        }
        let salt = B64.decode(salt).map_err(|_| bad("salt is not base64"))?;
        if salt.is_empty() {
            return Err(bad("empty salt"));
        }
        let key = |k: &str| -> Result<Key, CoreError> {
            B64.decode(k)
                .ok()
                .and_then(|v| Key::try_from(v.as_slice()).ok())
                .ok_or_else(|| bad("keys must be 32 bytes of base64"))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Format in PostgreSQL's storage format; `ALTER ROLE ... PASSWORD '<this>'` installs it as is.
    pub fn to_postgres_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7677 section 3 test vector: user "user", password "pencil".
    #[test]
    fn rfc7677_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::from_password_with("pencil", &salt, 4096);
        // The RFC's exchange: ServerSignature = HMAC(ServerKey, AuthMessage).
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_sig = hmac_sha256(&v.server_key, &[auth_message.as_bytes()]);
        assert_eq!(
            B64.encode(server_sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let client_sig = hmac_sha256(&v.stored_key, &[auth_message.as_bytes()]);
        let proof = B64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let client_key = xor(&Key::try_from(proof.as_slice()).unwrap(), &client_sig);
        assert!(v.matches_client_key(&ClientKey::new(client_key)));
    }

    #[test]
    fn postgres_format_roundtrip() {
        let v = ScramVerifier::from_password("secret");
        let s = v.to_postgres_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(ScramVerifier::parse(&s).unwrap(), v);
        assert!(!format!("{v:?}").contains(&B64.encode(v.stored_key)));
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==$a:b",
            "SCRAM-SHA-256$0:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "SCRAM-SHA-256$99999999:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert!(ScramVerifier::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_keys_are_never_shown_and_are_wiped() {
        use zeroize::Zeroize;
        let mut k = ClientKey::new([0xab; KEY_LEN]);
        assert_eq!(format!("{k:?}"), "ClientKey(<redacted>)");
        k.zeroize();
        assert_eq!(k.expose(), &[0u8; KEY_LEN]);
    }

    #[test]
    fn mock_never_matches() {
        let m = ScramVerifier::mock("ghost", b"k");
        assert_eq!(m.salt, ScramVerifier::mock("ghost", b"k").salt);
        assert_ne!(m.salt, ScramVerifier::mock("other", b"k").salt);
        let v = ScramVerifier::from_password_with("", &m.salt, m.iterations);
        let salted = salted_password(b"", &m.salt, m.iterations);
        assert!(!m.matches_client_key(&ClientKey::new(hmac_sha256(&salted, &[b"Client Key"]))));
        assert_ne!(v.stored_key, m.stored_key);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = ScramVerifier::parse(&s);
        }
    }
}

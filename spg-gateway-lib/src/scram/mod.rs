//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it, both ways:
//!
//! - [`server::ScramServer`] authenticates a client against a stored verifier and, on success,
//!   yields the client's **ClientKey** (`proof XOR HMAC(StoredKey, AuthMessage)`).
//! - [`client::ScramClient`] logs in to a compute holding the identical verifier using that
//!   ClientKey — no password needed ("SCRAM key passthrough").
//!
//! Channel binding `tls-server-end-point` (`SCRAM-SHA-256-PLUS`) is supported on TLS connections.

/// The client side lives in `spg-core`, shared with the safekeepers' replication login.
pub use spg_core::scram::client;
pub mod messages;
pub mod server;

/// Mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Mechanism name with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type offered.
pub const CB_TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// `tls-server-end-point` channel binding data: the hash of the server certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding(pub Vec<u8>);

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelBinding({} bytes)", self.0.len())
    }
}

pub(crate) use spg_core::scram::client::nonce;

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::server::ScramServer;
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use spg_core::scram::{hmac_sha256, ScramVerifier};

    /// A client that knows the password, as libpq computes it.
    fn password_client_final(
        password: &str,
        v: &ScramVerifier,
        gs2: &str,
        cbind_data: &[u8],
        bare: &str,
        server_first: &str,
    ) -> String {
        let salted = spg_core::scram::salted_password(password.as_bytes(), &v.salt, v.iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let stored = spg_core::scram::sha256(&client_key);
        let nonce = server_first
            .split(',')
            .next()
            .unwrap()
            .strip_prefix("r=")
            .unwrap();
        let mut c = gs2.as_bytes().to_vec();
        c.extend_from_slice(cbind_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(c));
        let auth = format!("{bare},{server_first},{without_proof}");
        let sig = hmac_sha256(&stored, &[auth.as_bytes()]);
        let proof = spg_core::scram::xor(&client_key, &sig);
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn server_accepts_right_password_and_recovers_client_key() {
        let v = ScramVerifier::from_password("pencil");
        let mut s = ScramServer::new(v.clone(), None);
        let bare = "n=,r=abcdefgh";
        let first = s
            .client_first(SCRAM_SHA_256, format!("n,,{bare}").as_bytes())
            .unwrap();
        assert!(first.starts_with("r=abcdefgh"));
        let fin = password_client_final("pencil", &v, "n,,", b"", bare, &first);
        let (server_final, client_key) = s.client_final(fin.as_bytes()).unwrap();
        assert!(server_final.starts_with("v="));
        assert!(v.matches_client_key(&client_key));
    }

    #[test]
    fn server_refuses_wrong_password() {
        let v = ScramVerifier::from_password("pencil");
        let mut s = ScramServer::new(v.clone(), None);
        let bare = "n=,r=abcdefgh";
        let first = s
            .client_first(SCRAM_SHA_256, format!("n,,{bare}").as_bytes())
            .unwrap();
        let fin = password_client_final("crayon", &v, "n,,", b"", bare, &first);
        assert!(matches!(
            s.client_final(fin.as_bytes()),
            Err(crate::GatewayError::AuthFailed)
        ));
    }

    #[test]
    fn channel_binding_is_checked() {
        let v = ScramVerifier::from_password("pencil");
        let cb = ChannelBinding(vec![7; 32]);
        // PLUS with the right binding data succeeds.
        let mut s = ScramServer::new(v.clone(), Some(cb.clone()));
        let gs2 = "p=tls-server-end-point,,";
        let bare = "n=,r=xyz";
        let first = s
            .client_first(SCRAM_SHA_256_PLUS, format!("{gs2}{bare}").as_bytes())
            .unwrap();
        let fin = password_client_final("pencil", &v, gs2, &cb.0, bare, &first);
        assert!(s.client_final(fin.as_bytes()).is_ok());
        // PLUS with other binding data (a man in the middle) fails.
        let mut s = ScramServer::new(v.clone(), Some(cb.clone()));
        let first = s
            .client_first(SCRAM_SHA_256_PLUS, format!("{gs2}{bare}").as_bytes())
            .unwrap();
        let fin = password_client_final("pencil", &v, gs2, &[8; 32], bare, &first);
        assert!(s.client_final(fin.as_bytes()).is_err());
        // "y" (client thinks the server cannot bind) while the server offered PLUS: downgrade.
        let mut s = ScramServer::new(v.clone(), Some(cb));
        assert!(s.client_first(SCRAM_SHA_256, b"y,,n=,r=xyz").is_err());
        // PLUS without TLS binding available.
        let mut s = ScramServer::new(v, None);
        assert!(s
            .client_first(SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=xyz")
            .is_err());
    }

    #[test]
    fn passthrough_client_talks_to_server_with_the_same_verifier() {
        // Gateway side: client authenticates, gateway recovers the ClientKey.
        let v = ScramVerifier::from_password("pencil");
        let mut gw = ScramServer::new(v.clone(), None);
        let bare = "n=,r=clientnonce";
        let first = gw
            .client_first(SCRAM_SHA_256, format!("n,,{bare}").as_bytes())
            .unwrap();
        let fin = password_client_final("pencil", &v, "n,,", b"", bare, &first);
        let (_, client_key) = gw.client_final(fin.as_bytes()).unwrap();

        // Compute side holds the same verifier; the gateway logs in with the key alone.
        let mut compute = ScramServer::new(v.clone(), None);
        let mut client = ScramClient::with_client_key(client_key.clone(), v.clone());
        let (mech, cf) = client.client_first();
        let sf = compute.client_first(mech, &cf).unwrap();
        let cfin = client.server_first(sf.as_bytes()).unwrap();
        let (sfin, key2) = compute.client_final(&cfin).unwrap();
        assert_eq!(key2, client_key);
        client.server_final(sfin.as_bytes()).unwrap();
    }

    #[test]
    fn passthrough_client_detects_a_different_verifier_or_forged_server() {
        let v = ScramVerifier::from_password("pencil");
        let other = ScramVerifier::from_password("pencil"); // new salt
        let salted = spg_core::scram::salted_password(b"pencil", &v.salt, v.iterations);
        let key = spg_core::scram::ClientKey::new(hmac_sha256(&salted, &[b"Client Key"]));
        let mut compute = ScramServer::new(other, None);
        let mut client = ScramClient::with_client_key(key.clone(), v.clone());
        let (mech, cf) = client.client_first();
        let sf = compute.client_first(mech, &cf).unwrap();
        assert!(client.server_first(sf.as_bytes()).is_err());

        let mut client = ScramClient::with_client_key(key, v.clone());
        let (_, cf) = client.client_first();
        let nonce = std::str::from_utf8(&cf)
            .unwrap()
            .split("r=")
            .nth(1)
            .unwrap()
            .to_string();
        let sf = format!("r={nonce}srv,s={},i={}", B64.encode(&v.salt), v.iterations);
        client.server_first(sf.as_bytes()).unwrap();
        assert!(client
            .server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .is_err());
    }
}

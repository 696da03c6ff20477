//! Client side of SCRAM-SHA-256 with a ClientKey instead of a password: how the gateway logs in
//! to a compute on behalf of a client it has authenticated.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use spg_core::scram::{ct_eq, hmac_sha256, xor, Key, ScramVerifier};

use super::messages::{parse_server_final, parse_server_first};
use super::{nonce, SCRAM_SHA_256};
use crate::GatewayError;

/// One client-side exchange.
#[derive(Debug)]
pub struct ScramClient {
    client_key: Key,
    verifier: ScramVerifier,
    client_first_bare: String,
    auth_message: Option<String>,
}

impl ScramClient {
    /// Log in with `client_key`; `verifier` is the role's verifier, which the server must hold
    /// identically (its salt and iteration count are checked, its ServerKey authenticates the
    /// server).
    pub fn new(client_key: Key, verifier: ScramVerifier) -> Self {
        ScramClient {
            client_key,
            verifier,
            client_first_bare: format!("n=,r={}", nonce()),
            auth_message: None,
        }
    }

    /// The mechanism and `client-first-message` (no channel binding: the compute link is
    /// loopback TCP).
    pub fn client_first(&self) -> (&'static str, Vec<u8>) {
        (
            SCRAM_SHA_256,
            format!("n,,{}", self.client_first_bare).into_bytes(),
        )
    }

    /// Take the `server-first-message`; returns the `client-final-message`.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, GatewayError> {
        let s = std::str::from_utf8(data)
            .map_err(|_| GatewayError::Protocol("SCRAM message is not UTF-8".into()))?;
        let first = parse_server_first(s)?;
        let own = &self.client_first_bare["n=,r=".len()..];
        if !first.nonce.starts_with(own) || first.nonce.len() == own.len() {
            return Err(GatewayError::BackendRejected(
                "compute answered with a bad SCRAM nonce".into(),
            ));
        }
        if first.salt != self.verifier.salt || first.iterations != self.verifier.iterations {
            return Err(GatewayError::BackendRejected(
                "compute holds a different verifier for the role".into(),
            ));
        }
        let without_proof = format!("c=biws,r={}", first.nonce);
        let auth_message = format!("{},{s},{without_proof}", self.client_first_bare);
        // StoredKey = H(ClientKey): the verifier's StoredKey, as the gateway checked.
        let signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let proof = xor(&self.client_key, &signature);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Take the `server-final-message` and check that the server knows the ServerKey.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), GatewayError> {
        let auth_message = self
            .auth_message
            .take()
            .ok_or_else(|| GatewayError::Protocol("unexpected SCRAM message".into()))?;
        let s = std::str::from_utf8(data)
            .map_err(|_| GatewayError::Protocol("SCRAM message is not UTF-8".into()))?;
        let got = parse_server_final(s)?;
        let expected = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        if !ct_eq(&got, &expected) {
            return Err(GatewayError::BackendRejected(
                "compute's SCRAM signature is wrong".into(),
            ));
        }
        Ok(())
    }
}

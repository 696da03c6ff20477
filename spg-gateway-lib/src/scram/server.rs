//! Server side of SCRAM-SHA-256: verifies a client's proof against a stored verifier.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use spg_core::scram::{ct_eq, hmac_sha256, xor, ClientKey, ScramVerifier};

use super::messages::{parse_client_final, parse_client_first, CbindFlag};
use super::{nonce, ChannelBinding, CB_TLS_SERVER_END_POINT, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use crate::GatewayError;

/// Mechanisms to offer: PLUS first when the connection can bind to its TLS channel.
pub fn mechanisms(channel_binding: Option<&ChannelBinding>) -> &'static [&'static str] {
    if channel_binding.is_some() {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    }
}

#[derive(Debug)]
enum State {
    Initial,
    SentServerFirst {
        expected_cbind: Vec<u8>,
        full_nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

/// One server-side SCRAM exchange.
#[derive(Debug)]
pub struct ScramServer {
    verifier: ScramVerifier,
    channel_binding: Option<ChannelBinding>,
    state: State,
}

impl ScramServer {
    /// An exchange against `verifier`; `channel_binding` is the TLS binding data when the
    /// connection is encrypted and PLUS was offered.
    pub fn new(verifier: ScramVerifier, channel_binding: Option<ChannelBinding>) -> Self {
        ScramServer {
            verifier,
            channel_binding,
            state: State::Initial,
        }
    }

    /// Take the client's `SASLInitialResponse`; returns the `server-first-message`.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<String, GatewayError> {
        if !matches!(self.state, State::Initial) {
            return Err(GatewayError::Protocol("unexpected SCRAM message".into()));
        }
        let s = std::str::from_utf8(data)
            .map_err(|_| GatewayError::Protocol("SCRAM message is not UTF-8".into()))?;
        let first = parse_client_first(s)?;
        let negotiation = |m: &str| {
            GatewayError::Protocol(format!("SCRAM channel binding negotiation error: {m}"))
        };
        let cbind_data: &[u8] = match (mechanism, &first.cbind) {
            (SCRAM_SHA_256_PLUS, CbindFlag::Required(t)) if t == CB_TLS_SERVER_END_POINT => {
                match &self.channel_binding {
                    Some(cb) => &cb.0,
                    None => return Err(negotiation("channel binding is not available")),
                }
            }
            (SCRAM_SHA_256_PLUS, CbindFlag::Required(t)) => {
                return Err(GatewayError::Unsupported(format!(
                    "unsupported SCRAM channel-binding type {t:?}"
                )))
            }
            (SCRAM_SHA_256_PLUS, _) => {
                return Err(negotiation("PLUS selected without channel binding"))
            }
            (SCRAM_SHA_256, CbindFlag::Required(_)) => {
                return Err(negotiation(
                    "channel binding used with a non-PLUS mechanism",
                ))
            }
            (SCRAM_SHA_256, CbindFlag::ClientSupports) if self.channel_binding.is_some() => {
                // The client can bind and we offered binding: someone removed PLUS on the way.
                return Err(negotiation(
                    "client believes the server does not support it",
                ));
            }
            (SCRAM_SHA_256, _) => &[],
            _ => {
                return Err(GatewayError::Protocol(
                    "client selected an invalid SASL authentication mechanism".into(),
                ))
            }
        };
        let mut expected_cbind = first.gs2_header.as_bytes().to_vec();
        expected_cbind.extend_from_slice(cbind_data);
        let full_nonce = format!("{}{}", first.nonce, nonce());
        let server_first = format!(
            "r={full_nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::SentServerFirst {
            expected_cbind,
            full_nonce,
            client_first_bare: first.bare.to_string(),
            server_first: server_first.clone(),
        };
        Ok(server_first)
    }

    /// Take the client's final message. On a valid proof returns the `server-final-message`
    /// and the client's ClientKey; on an invalid one [`GatewayError::AuthFailed`].
    pub fn client_final(&mut self, data: &[u8]) -> Result<(String, ClientKey), GatewayError> {
        let State::SentServerFirst {
            expected_cbind,
            full_nonce,
            client_first_bare,
            server_first,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(GatewayError::Protocol("unexpected SCRAM message".into()));
        };
        let s = std::str::from_utf8(data)
            .map_err(|_| GatewayError::Protocol("SCRAM message is not UTF-8".into()))?;
        let fin = parse_client_final(s)?;
        if !ct_eq(&fin.channel_binding, &expected_cbind) {
            return Err(GatewayError::Protocol(
                "SCRAM channel binding check failed".into(),
            ));
        }
        if fin.nonce != full_nonce {
            return Err(GatewayError::Protocol("SCRAM nonce mismatch".into()));
        }
        let auth_message = format!("{client_first_bare},{server_first},{}", fin.without_proof);
        let client_signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = ClientKey::new(xor(&fin.proof, &client_signature));
        if !self.verifier.matches_client_key(&client_key) {
            return Err(GatewayError::AuthFailed);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

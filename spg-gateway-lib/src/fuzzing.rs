//! Entry points of the fuzz targets in `fuzz/`, shared with the stable corpus tests, so every
//! parser of untrusted bytes runs on every `cargo test`. Each must never panic.

use spg_core::scram::ScramVerifier;

use crate::proto::backend::{parse_auth_request, parse_error_fields, parse_sasl_initial_response};
use crate::proto::framer::FrontendFramer;
use crate::proto::startup::parse_initial_packet;
use crate::scram::messages::{
    parse_client_final, parse_client_first, parse_server_final, parse_server_first,
};
use crate::scram::server::ScramServer;
use crate::scram::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};

/// A client's first packet.
pub fn startup_packet(data: &[u8]) {
    let _ = parse_initial_packet(data);
}

/// The client-to-server stream of a relayed session, cut into chunks at bytes equal to 0xff.
pub fn frontend_stream(data: &[u8]) {
    let mut f = FrontendFramer::new(1 << 16);
    for chunk in data.split(|b| *b == 0xff) {
        if f.feed(chunk).is_err() {
            return;
        }
    }
}

/// A SCRAM exchange driven by a hostile client: the input holds the SASLInitialResponse body
/// and the final message, separated by the first NUL after the mechanism's data.
pub fn scram_server(data: &[u8]) {
    let v = ScramVerifier::from_salted_password(&[7; 32], b"fuzz-salt", 4096);
    let split = data.iter().rposition(|b| *b == b'\n').unwrap_or(data.len());
    let (first, fin) = data.split_at(split);
    for cb in [None, Some(ChannelBinding(vec![1; 32]))] {
        let mut s = ScramServer::new(v.clone(), cb);
        if let Ok((mech, d)) = parse_sasl_initial_response(first) {
            if s.client_first(mech, d).is_ok() {
                let _ = s.client_final(fin.get(1..).unwrap_or_default());
            }
        }
        let mut s = ScramServer::new(v.clone(), None);
        for mech in [SCRAM_SHA_256, SCRAM_SHA_256_PLUS] {
            let _ = s.client_first(mech, first);
        }
    }
}

/// SCRAM message parsers, both directions.
pub fn scram_messages(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_client_first(s);
        let _ = parse_client_final(s);
        let _ = parse_server_first(s);
        let _ = parse_server_final(s);
    }
}

/// Backend messages a compute sends during startup.
pub fn backend_messages(data: &[u8]) {
    let _ = parse_auth_request(data);
    let _ = parse_error_fields(data);
    let _ = crate::proto::backend::parse_backend_key_data(data);
}

/// Certificate DER, for the channel binding hash choice.
pub fn certificate(data: &[u8]) {
    let _ = crate::tls::signature_hash(data);
}

/// A SCRAM verifier string (from the API or the state store).
pub fn scram_verifier(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(v) = ScramVerifier::parse(s) {
            // What parses must print back to something that parses to the same verifier.
            let again = ScramVerifier::parse(&v.to_postgres_string()).expect("roundtrip");
            assert_eq!(again, v);
        }
    }
}

/// A fuzz entry point.
pub type FuzzTarget = fn(&[u8]);

/// The fuzz targets of this crate, by name (for the corpus tests).
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("startup_packet", startup_packet),
    ("frontend_stream", frontend_stream),
    ("scram_server", scram_server),
    ("scram_messages", scram_messages),
    ("backend_messages", backend_messages),
    ("certificate", certificate),
    ("scram_verifier", scram_verifier),
];

//! Entry points of the fuzz targets in `fuzz/`, shared with the stable corpus tests, so every
//! parser of untrusted bytes runs on every `cargo test`. Each must never panic.

use spg_core::scram::ScramVerifier;

use crate::proto::backend::{parse_auth_request, parse_error_fields, parse_sasl_initial_response};
use bytes::BytesMut;

use crate::proto::messages::{self, Piece, Splitter};
use crate::proto::sql;
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

/// The client-to-server stream of a pooled session, arriving in chunks cut at bytes equal to
/// 0xff, split into messages as the session does (CopyData over 64 bytes streamed), each whole
/// message read by the parser of its type.
pub fn frontend_stream(data: &[u8]) {
    let mut buf = BytesMut::new();
    let mut split = Splitter::default();
    for chunk in data.split(|b| *b == 0xff) {
        buf.extend_from_slice(chunk);
        loop {
            match split.next(&mut buf, 1 << 16, 64, |t| t == b'd') {
                Ok(Some(Piece::Whole(m))) => frontend_message(&m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn frontend_message(m: &[u8]) {
    match m.first() {
        Some(b'Q') => {
            if let Ok(q) = messages::query_text(m) {
                let _ = sql::analyze(q, sql::Dialect::default());
            }
        }
        Some(b'P') => {
            if let Ok(p) = messages::parse_parse(m) {
                let _ = sql::analyze(p.query, sql::Dialect::default());
                let _ = messages::build_parse(p.name, p.query, p.types);
            }
        }
        Some(b'B') => {
            if let Ok((portal, stmt, rest)) = messages::parse_bind(m) {
                let _ = messages::rewrite_bind(m, portal, stmt, rest);
            }
        }
        Some(b'D' | b'C') => {
            let _ = messages::parse_target(m);
        }
        Some(b'E') => {
            let _ = messages::parse_execute(m);
        }
        _ => {}
    }
}

/// SQL text a client sends (what the pooler reads to learn about session state), in every
/// kind of client encoding: the first byte picks the encoding and the string syntax.
pub fn sql_effects(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let encoding = match pick & 3 {
        0 => sql::ClientEncoding::AsciiSafe,
        1 => sql::ClientEncoding::Sjis,
        2 => sql::ClientEncoding::DoubleByte,
        _ => sql::ClientEncoding::Gb18030,
    };
    let dialect = sql::Dialect {
        encoding,
        backslash_strings: pick & 4 != 0,
    };
    let a = sql::analyze(text, dialect);
    let _ = a.wants_check();
    let _ = a.sole_deallocate();
}

/// Messages of a pooled session: the first byte picks the direction (even: from a client,
/// odd: from a compute), the rest is the stream, split and read as the session does.
pub fn pooled_messages(data: &[u8]) {
    let Some((&dir, rest)) = data.split_first() else {
        return;
    };
    if dir % 2 == 0 {
        frontend_stream(rest);
        return;
    }
    let mut buf = BytesMut::from(rest);
    let mut split = Splitter::default();
    while let Ok(Some(piece)) = split.next(&mut buf, 1 << 16, 64, |t| matches!(t, b'D' | b'd')) {
        let Piece::Whole(m) = piece else { continue };
        match m[0] {
            b'Z' => {
                let _ = messages::ready_status(&m);
            }
            b'C' => {
                let _ = messages::command_tag(&m);
            }
            b'S' => {
                let _ = messages::parameter_status(&m);
            }
            b'E' | b'N' => {
                let _ = messages::error_is_fatal(&m);
            }
            b'D' => {
                if let Ok(cols) = messages::data_row(&m) {
                    let _ = sql::backend_state(&cols);
                }
            }
            b'A' => {
                let _ = messages::notification_with_pid(&m, 1);
            }
            _ => {}
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

/// Run a future over an in-memory reader to completion: every read is ready at once, so one
/// poll suffices (a future still pending then waits for bytes that will never come).
fn complete<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Fuzz entry: a client's bytes during login, framed as the gateway frames them (a first packet,
/// then authentication messages, through the buffered packet reader). Must never panic, and
/// never hold more than the bytes it was sent plus a bounded read-ahead.
pub fn login_packets(data: &[u8]) {
    use crate::proto::io::PacketReader;
    use crate::proto::MAX_AUTH_MESSAGE;
    let mut input = data;
    let mut reader = PacketReader::default();
    let Some(Ok(packet)) = complete(reader.startup_packet(&mut input)) else {
        return;
    };
    let _ = crate::proto::startup::parse_initial_packet(&packet);
    for _ in 0..4 {
        match complete(reader.message(&mut input, MAX_AUTH_MESSAGE)) {
            Some(Ok((_, body))) => assert!(body.len() <= data.len()),
            _ => return,
        }
    }
    assert!(reader.leftover().len() <= data.len());
}

/// Fuzz entry: the `options` startup parameter (`-c name=value --name=value`). Must never
/// panic; every setting it yields has a name.
pub fn startup_options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(settings) = crate::pool::params::parse_options(&text) {
        assert!(settings.iter().all(|(k, _)| !k.contains('=')));
    }
}

/// Fuzz entry: a query sent to the admin console. Must never panic.
pub fn admin_commands(data: &[u8]) {
    let _ = crate::admin::AdminCommand::parse(&String::from_utf8_lossy(data));
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
    ("sql_effects", sql_effects),
    ("pooled_messages", pooled_messages),
    ("login_packets", login_packets),
    ("startup_options", startup_options),
    ("admin_commands", admin_commands),
];

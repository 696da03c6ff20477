//! The first packet of a connection: `SSLRequest`, `GSSENCRequest`, `CancelRequest` or
//! `StartupMessage`. Unlike every later message it has no type byte: `int32 length`, `int32 code`,
//! body.

use super::{CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET, SSL_REQUEST_CODE};
use crate::GatewayError;

/// A parsed first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPacket {
    /// Asks for TLS.
    SslRequest,
    /// Asks for GSSAPI encryption (always refused).
    GssEncRequest,
    /// Cancels a query of another session.
    Cancel {
        /// The process id from `BackendKeyData`.
        pid: i32,
        /// The secret key from `BackendKeyData`.
        secret: i32,
    },
    /// Opens a session.
    Startup(StartupMessage),
}

/// A `StartupMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Major protocol version (3).
    pub major: u16,
    /// Minor protocol version the client asked for.
    pub minor: u16,
    /// Parameters in the order sent.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// Value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `user`, required.
    pub fn user(&self) -> Result<&str, GatewayError> {
        match self.param("user") {
            Some(u) if !u.is_empty() => Ok(u),
            _ => Err(GatewayError::Protocol(
                "no PostgreSQL user name specified in startup packet".into(),
            )),
        }
    }

    /// `database`, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Result<&str, GatewayError> {
        match self.param("database") {
            Some(d) if !d.is_empty() => Ok(d),
            _ => self.user(),
        }
    }

    /// Protocol options (`_pq_.*`), which the gateway does not support and reports back in
    /// `NegotiateProtocolVersion`.
    pub fn protocol_options(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Parse a whole first packet (including its 4-byte length).
pub fn parse_initial_packet(packet: &[u8]) -> Result<InitialPacket, GatewayError> {
    let bad = |m: &str| GatewayError::Protocol(format!("invalid startup packet: {m}"));
    if packet.len() < 8 {
        return Err(bad("too short"));
    }
    if packet.len() > MAX_STARTUP_PACKET {
        return Err(bad("too long"));
    }
    let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
    if len != packet.len() {
        return Err(bad("length does not match"));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => Err(bad("trailing bytes")),
        SSL_REQUEST_CODE => Ok(InitialPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(InitialPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            // Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256 but this gateway hands out 4.
            if body.len() != 8 {
                return Err(bad("cancel request of the wrong length"));
            }
            Ok(InitialPacket::Cancel {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(GatewayError::Unsupported(format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                )));
            }
            Ok(InitialPacket::Startup(StartupMessage {
                major,
                minor,
                params: parse_params(body)?,
            }))
        }
    }
}

/// `name\0value\0 ... \0`.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, GatewayError> {
    let bad = |m: &str| GatewayError::Protocol(format!("invalid startup packet layout: {m}"));
    let mut params = Vec::new();
    let mut rest = body;
    loop {
        let (name, after) = cstr(rest).ok_or_else(|| bad("missing terminator"))?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(bad("bytes after the terminator"));
            }
            return Ok(params);
        }
        let (value, after) = cstr(after).ok_or_else(|| bad("parameter without value"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("parameter name is not UTF-8"))?;
        // Values in another encoding than UTF-8 (an application name typed in LATIN9): each
        // non-ASCII byte becomes `?`, as PostgreSQL cleans such names itself. The user and the
        // database then name nothing that exists, which the login reports as such.
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => std::borrow::Cow::Owned(
                value
                    .iter()
                    .map(|&b| if b < 0x80 { b as char } else { '?' })
                    .collect::<String>(),
            ),
        };
        // A parameter given twice takes its last value, as PostgreSQL does (asyncpg sends
        // `client_encoding` itself and again from its server settings).
        match params.iter_mut().find(|(k, _)| k == name) {
            Some(p) => p.1 = value.to_string(),
            None => params.push((name.to_string(), value.to_string())),
        }
        rest = after;
    }
}

/// Split a NUL-terminated string off the front of `b`.
pub(crate) fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// Encode a `StartupMessage` (as the gateway sends it to a compute).
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&super::PROTOCOL_V3.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Encode a `CancelRequest`.
pub fn encode_cancel(pid: i32, secret: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..16].copy_from_slice(&secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_startup() {
        let p = encode_startup(&[
            ("user", "app"),
            ("database", "shop"),
            ("application_name", "x"),
        ]);
        let InitialPacket::Startup(s) = parse_initial_packet(&p).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.user().unwrap(), "app");
        assert_eq!(s.database().unwrap(), "shop");
        assert_eq!(s.param("application_name"), Some("x"));
    }

    #[test]
    fn database_defaults_to_user_and_user_is_required() {
        let p = encode_startup(&[("user", "app")]);
        let InitialPacket::Startup(s) = parse_initial_packet(&p).unwrap() else {
            panic!()
        };
        assert_eq!(s.database().unwrap(), "app");
        let p = encode_startup(&[("database", "shop")]);
        let InitialPacket::Startup(s) = parse_initial_packet(&p).unwrap() else {
            panic!()
        };
        assert!(s.user().is_err());
    }

    #[test]
    fn parses_requests() {
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        assert_eq!(
            parse_initial_packet(&ssl).unwrap(),
            InitialPacket::SslRequest
        );
        assert_eq!(
            parse_initial_packet(&encode_cancel(7, -3)).unwrap(),
            InitialPacket::Cancel { pid: 7, secret: -3 }
        );
    }

    #[test]
    fn refuses_malformed() {
        let good = encode_startup(&[("user", "app")]);
        // Missing final terminator.
        let mut p = good[..good.len() - 1].to_vec();
        p[3] -= 1;
        assert!(parse_initial_packet(&p).is_err());
        // Length mismatch.
        let mut p = good.clone();
        p[3] += 1;
        assert!(parse_initial_packet(&p).is_err());
        // Protocol 2.
        let mut p = good.clone();
        p[4..8].copy_from_slice(&(2u32 << 16).to_be_bytes());
        assert!(matches!(
            parse_initial_packet(&p),
            Err(GatewayError::Unsupported(_))
        ));
        // Name without value.
        let mut body = PROTOCOL_V3_BYTES.to_vec();
        body.extend_from_slice(b"user\0");
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        assert!(parse_initial_packet(&p).is_err());
        // A parameter given twice: the last value, as PostgreSQL takes it.
        let p = encode_startup(&[("user", "a"), ("client_encoding", "x"), ("user", "b")]);
        let InitialPacket::Startup(s) = parse_initial_packet(&p).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.user().unwrap(), "b");
        assert_eq!(s.params.len(), 2);
        // A value in another encoding than UTF-8: non-ASCII bytes become `?`.
        let mut body = PROTOCOL_V3_BYTES.to_vec();
        body.extend_from_slice(b"user\0u\0application_name\0caf\xe9\0\0");
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        let InitialPacket::Startup(s) = parse_initial_packet(&p).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.param("application_name"), Some("caf?"));
    }

    const PROTOCOL_V3_BYTES: [u8; 4] = (3u32 << 16).to_be_bytes();

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_initial_packet(&bytes);
        }

        #[test]
        fn roundtrips(params in proptest::collection::btree_map("[a-z_]{1,12}", "[ -~]{0,20}", 0..6)) {
            let list: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let p = encode_startup(&list);
            let InitialPacket::Startup(s) = parse_initial_packet(&p).unwrap() else { panic!() };
            prop_assert_eq!(s.params.len(), list.len());
        }
    }
}

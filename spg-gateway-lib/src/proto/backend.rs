//! Messages the gateway builds (backend messages to clients, SASL messages to computes) and the
//! backend messages it reads from computes during startup.

use bytes::{BufMut, BytesMut};

use super::startup::cstr;
use crate::GatewayError;

/// Append a typed message: tag, `int32` length (including itself), body.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - len_at) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Severity of an `ErrorResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the session.
    Fatal,
    /// Ends the current command.
    Error,
}

/// `ErrorResponse` with severity, SQLSTATE, message and optional hint.
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    msg: &str,
    hint: Option<&str>,
) {
    let sev = match severity {
        Severity::Fatal => "FATAL",
        Severity::Error => "ERROR",
    };
    message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, sev);
        b.put_u8(b'V');
        put_cstr(b, sev);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, msg);
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h);
        }
        b.put_u8(0);
    });
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_i32(0));
}

/// `AuthenticationCleartextPassword`.
pub fn auth_cleartext_password(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_i32(3));
}

/// `AuthenticationSASL` offering `mechanisms`.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// `AuthenticationSASLContinue`.
pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// `AuthenticationSASLFinal`.
pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// `ParameterStatus`.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &[u8]) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        b.put_slice(value);
        b.put_u8(0);
    });
}

/// `BackendKeyData`.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// `ReadyForQuery` with transaction status `I`, `T` or `E`.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

/// `NegotiateProtocolVersion`: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: u32, unrecognized: &[&str]) {
    message(out, b'v', |b| {
        b.put_u32(minor);
        b.put_u32(unrecognized.len() as u32);
        for o in unrecognized {
            put_cstr(b, o);
        }
    });
}

/// Frontend `SASLInitialResponse` (sent to a compute).
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// Frontend `SASLResponse` (sent to a compute).
pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    message(out, b'p', |b| b.put_slice(data));
}

/// Parse the body of a client's `SASLInitialResponse`: mechanism and initial data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), GatewayError> {
    let bad = || GatewayError::Protocol("malformed SASLInitialResponse".into());
    let (mech, rest) = cstr(body).ok_or_else(bad)?;
    let mech = std::str::from_utf8(mech).map_err(|_| bad())?;
    if rest.len() < 4 {
        return Err(bad());
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    Ok((mech, data))
}

/// An `Authentication*` message from a compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `AuthenticationOk`.
    Ok,
    /// `AuthenticationSASL` with the offered mechanisms.
    Sasl(Vec<String>),
    /// `AuthenticationSASLContinue`.
    SaslContinue(Vec<u8>),
    /// `AuthenticationSASLFinal`.
    SaslFinal(Vec<u8>),
    /// Anything else (cleartext, MD5, GSS, ...), which the gateway refuses to use.
    Other(i32),
}

/// Parse the body of an `R` message.
pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest, GatewayError> {
    let bad = || GatewayError::Protocol("malformed authentication request".into());
    if body.len() < 4 {
        return Err(bad());
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    Ok(match code {
        0 => AuthRequest::Ok,
        10 => {
            let mut mechs = Vec::new();
            let mut r = rest;
            loop {
                let (m, after) = cstr(r).ok_or_else(bad)?;
                if m.is_empty() {
                    break;
                }
                mechs.push(String::from_utf8_lossy(m).into_owned());
                r = after;
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue(rest.to_vec()),
        12 => AuthRequest::SaslFinal(rest.to_vec()),
        other => AuthRequest::Other(other),
    })
}

/// The fields of an `ErrorResponse` or `NoticeResponse` the gateway looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// SQLSTATE (`C`).
    pub code: String,
    /// Message (`M`).
    pub message: String,
}

/// Parse the body of an `E` or `N` message.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut f = ErrorFields::default();
    let mut rest = body;
    while let Some((&tag, after)) = rest.split_first() {
        if tag == 0 {
            break;
        }
        let Some((value, after)) = cstr(after) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match tag {
            b'C' => f.code = value,
            b'M' => f.message = value,
            _ => {}
        }
        rest = after;
    }
    f
}

/// Parse the body of `BackendKeyData`.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), GatewayError> {
    if body.len() != 8 {
        return Err(GatewayError::Protocol(
            "BackendKeyData of unexpected length".into(),
        ));
    }
    Ok((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let mut b = BytesMut::new();
        error_response(&mut b, Severity::Fatal, "28P01", "nope", Some("try again"));
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let f = parse_error_fields(&b[5..]);
        assert_eq!(f.code, "28P01");
        assert_eq!(f.message, "nope");
    }

    #[test]
    fn sasl_roundtrip() {
        let mut b = BytesMut::new();
        sasl_initial_response(&mut b, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let (m, d) = parse_sasl_initial_response(&b[5..]).unwrap();
        assert_eq!(m, "SCRAM-SHA-256");
        assert_eq!(d, b"n,,n=,r=abc");
        assert!(parse_sasl_initial_response(b"X\0\0\0\0\x09abc").is_err());
        assert!(parse_sasl_initial_response(b"X").is_err());

        let mut b = BytesMut::new();
        auth_sasl(&mut b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            parse_auth_request(&b[5..]).unwrap(),
            AuthRequest::Sasl(vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()])
        );
        assert!(parse_auth_request(b"\0\0").is_err());
        assert!(parse_auth_request(b"\0\0\0\x0aabc").is_err());
        assert_eq!(
            parse_auth_request(b"\0\0\0\x05salt").unwrap(),
            AuthRequest::Other(5)
        );
    }
}

//! Connecting to a compute as the client's role, by SCRAM key passthrough.

use bytes::BytesMut;
use spg_core::scram::{ClientKey, ScramVerifier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proto::backend::{
    parse_auth_request, parse_backend_key_data, parse_error_fields, sasl_initial_response,
    sasl_response, AuthRequest,
};
use crate::proto::io::read_message;
use crate::proto::startup::encode_startup;
use crate::scram::client::ScramClient;
use crate::scram::SCRAM_SHA_256;
use crate::GatewayError;

/// Largest message accepted from a compute during startup.
const MAX_STARTUP_REPLY: usize = 1 << 20;

/// A compute connection after its startup, ready to relay.
#[derive(Debug)]
pub struct BackendConn {
    /// The socket.
    pub stream: TcpStream,
    /// Messages to forward to the client as they are (`ParameterStatus`, `NoticeResponse`),
    /// each complete with its tag and length.
    pub forward: BytesMut,
    /// The compute's `BackendKeyData`.
    pub key: Option<(i32, i32)>,
    /// Transaction status from `ReadyForQuery`.
    pub ready_status: u8,
}

/// Startup parameters a client may pass through to the compute.
pub fn forwardable(name: &str) -> bool {
    !matches!(name, "user" | "database" | "replication") && !name.starts_with("_pq_.")
}

/// Connect to `addr` and log in as `role` to `database` with the client's ClientKey.
pub async fn connect(
    addr: std::net::SocketAddr,
    role: &str,
    database: &str,
    client_key: ClientKey,
    verifier: &ScramVerifier,
    params: &[(String, String)],
) -> Result<BackendConn, GatewayError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| GatewayError::BackendUnavailable(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut startup: Vec<(&str, &str)> = vec![("user", role), ("database", database)];
    startup.extend(
        params
            .iter()
            .filter(|(k, _)| forwardable(k))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    stream
        .write_all(&encode_startup(&startup))
        .await
        .map_err(unavailable)?;

    let mut scram = ScramClient::with_client_key(client_key, verifier.clone());
    let mut forward = BytesMut::new();
    let mut key = None;
    let mut out = BytesMut::new();
    loop {
        let (tag, body) =
            read_message(&mut stream, MAX_STARTUP_REPLY)
                .await
                .map_err(|e| match e {
                    GatewayError::Io(e) => unavailable(e),
                    // The compute went away during startup (shutting down, crashed): try again.
                    GatewayError::Truncated(what) => GatewayError::BackendUnavailable(format!(
                        "compute closed the connection in {what}"
                    )),
                    other => other,
                })?;
        match tag {
            b'R' => match parse_auth_request(&body)? {
                AuthRequest::Ok => {}
                AuthRequest::Sasl(mechs) => {
                    if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(GatewayError::BackendRejected(
                            "compute does not offer SCRAM-SHA-256".into(),
                        ));
                    }
                    let (mech, data) = scram.client_first();
                    sasl_initial_response(&mut out, mech, &data);
                }
                AuthRequest::SaslContinue(data) => {
                    let reply = scram.server_first(&data)?;
                    sasl_response(&mut out, &reply);
                }
                AuthRequest::SaslFinal(data) => scram.server_final(&data)?,
                AuthRequest::Other(code) => {
                    return Err(GatewayError::BackendRejected(format!(
                        "compute asks for authentication method {code}, expected SCRAM"
                    )))
                }
            },
            b'S' | b'N' => push_message(&mut forward, tag, &body),
            b'K' => key = Some(parse_backend_key_data(&body)?),
            b'v' => {} // NegotiateProtocolVersion: nothing was requested beyond 3.0
            b'E' => {
                let f = parse_error_fields(&body);
                return Err(match f.code.as_str() {
                    // Starting up, shutting down, in recovery: try again.
                    "57P03" | "57P01" | "57P02" | "08006" => {
                        GatewayError::BackendUnavailable(format!("{}: {}", f.code, f.message))
                    }
                    "53300" => GatewayError::TooManyConnections,
                    _ => GatewayError::BackendRejected(format!("{}: {}", f.code, f.message)),
                });
            }
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                return Ok(BackendConn {
                    stream,
                    forward,
                    key,
                    ready_status: status,
                });
            }
            other => {
                return Err(GatewayError::BackendRejected(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )))
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(unavailable)?;
            out.clear();
        }
    }
}

fn unavailable(e: std::io::Error) -> GatewayError {
    GatewayError::BackendUnavailable(e.to_string())
}

fn push_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

//! The parts of the PostgreSQL wire protocol (v3) the gateway speaks itself.
//!
//! Reference: PostgreSQL documentation, "Frontend/Backend Protocol" — Message Flow and Message
//! Formats. Every parser here takes untrusted bytes and returns an error instead of panicking;
//! each has a fuzz target under `fuzz/`.

pub mod backend;
pub mod io;
pub mod messages;
pub mod sql;
pub mod startup;

/// Protocol version 3.0 (`196608`).
pub const PROTOCOL_V3: u32 = 3 << 16;
/// `SSLRequest` code.
pub const SSL_REQUEST_CODE: u32 = 80877103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Largest startup packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Largest message accepted during authentication (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE: usize = 65_535;
/// First byte of a TLS handshake record: a client opening with direct TLS (`sslnegotiation=direct`).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// ALPN protocol id PostgreSQL registers for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

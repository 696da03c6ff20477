//! One client connection, from its first byte to its end:
//!
//! 1. negotiation: direct TLS, `SSLRequest`, `GSSENCRequest` (refused), `CancelRequest`,
//!    `StartupMessage`; plaintext refused unless allowed;
//! 2. SCRAM-SHA-256 against the role's verifier, before anything is woken;
//! 3. the client's pool: its session parameters are settled (waking the database and opening a
//!    backend connection by SCRAM key passthrough when the pool cannot tell them alone);
//! 4. the gateway's own cancel key, then the pooled relay ([`crate::pooled`]); or, for the admin
//!    database, the admin console ([`crate::admin`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spg_core::scram::{ClientKey, ScramVerifier};
use spg_core::{CoreError, DatabaseName, RoleName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::limits::Refusal;
use crate::password::ClientAuth;
use crate::pooled::Session;
use crate::proto::backend as msg;
use crate::proto::io::PacketReader;
use crate::proto::startup::{parse_initial_packet, InitialPacket, StartupMessage};
use crate::proto::{ALPN_POSTGRESQL, MAX_AUTH_MESSAGE, TLS_HANDSHAKE_BYTE};
use crate::scram::server::{mechanisms, ScramServer};
use crate::server::Shared;
use crate::stream::ClientStream;
use crate::GatewayError;

/// Outcome of negotiation.
enum Negotiated {
    Session(ClientStream, StartupMessage, PacketReader),
    /// Cancel request handled, or the client went away.
    Done,
}

type Failed = (Option<ClientStream>, GatewayError);

/// Serve one connection. Errors are reported to the client (when possible) and logged.
pub(crate) async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let _conn = shared.connections.enter();
    // A slot among the pending logins, unless the address may not try now.
    let slot = match shared.gate.admit(peer.ip()) {
        Ok(s) => s,
        Err(r) => {
            refuse(&shared, tcp, r).await;
            return;
        }
    };
    let ip = peer.ip();
    let peer = Some(peer);
    let handshake = tokio::time::timeout(shared.gate.limits().handshake_timeout, async {
        let (stream, startup, mut reader) = match negotiate(&shared, tcp).await {
            Ok(Negotiated::Session(s, st, r)) => (s, st, r),
            Ok(Negotiated::Done) => return Ok(None),
            Err((stream, e)) => return Err((stream, e, String::new(), String::new())),
        };
        let mut stream = stream;
        match authenticate(&shared, &mut stream, &mut reader, &startup, ip).await {
            Ok(auth) => Ok(Some((stream, startup, auth, reader.leftover()))),
            Err(e) => {
                let user = startup.param("user").unwrap_or_default().to_string();
                let db = startup.database().unwrap_or_default().to_string();
                Err((Some(stream), e, user, db))
            }
        }
    });
    let setup = tokio::select! {
        r = handshake => r,
        _ = slot.evicted.cancelled() => {
            shared.refused(Refusal::PreauthEvicted);
            debug!("pending login closed to make room for a newer one");
            return;
        }
    };
    let (mut stream, startup, auth, leftover) = match setup {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err((stream, e, user, db))) => {
            if matches!(e, GatewayError::AuthFailed) {
                // Answered only after a delay that grows with the failures of this address
                // and this role (the pending-login slot is held meanwhile).
                let delay = shared.gate.failed(ip, &db, &user);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            report(&shared, stream, &e, &user, &db).await;
            return;
        }
        Err(_) => {
            shared.refused(Refusal::HandshakeTimeout);
            debug!("handshake timed out");
            return;
        }
    };
    drop(slot);
    let _session = shared.authenticated.enter();
    let user = auth.role_text.clone();
    let dbname = auth.db.to_string();
    let span = tracing::Span::current();
    span.record("db", dbname.as_str());
    span.record("user", user.as_str());
    if let Err(e) = run_session(&shared, &mut stream, &startup, auth, leftover, peer).await {
        report(&shared, Some(stream), &e, &user, &dbname).await;
    }
}

/// Refuse a connection before reading anything from it: a plaintext `ErrorResponse` (which
/// libpq reports even in answer to its `SSLRequest`), then close.
async fn refuse(shared: &Shared, mut tcp: TcpStream, why: Refusal) {
    shared.refused(why);
    let text = match why {
        Refusal::AddressLocked => {
            "too many failed login attempts from this address; try again later"
        }
        _ => "too many connections from this address are logging in; try again later",
    };
    debug!(reason = why.as_str(), "connection refused before login");
    let mut out = BytesMut::new();
    msg::error_response(&mut out, msg::Severity::Fatal, "53300", text, None);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(&out).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Write an error to the client (if the stream is usable) and log it.
async fn report(
    shared: &Shared,
    stream: Option<ClientStream>,
    e: &GatewayError,
    user: &str,
    db: &str,
) {
    match e {
        GatewayError::Io(_) | GatewayError::Tls(_) => debug!(error = %e, "connection failed"),
        GatewayError::AuthFailed => info!(%user, %db, "authentication failed"),
        GatewayError::Truncated(_) => debug!(error = %e, "client went away"),
        _ => warn!(error = %e, "connection refused"),
    }
    let (Some(mut stream), Some(code)) = (stream, e.code()) else {
        return;
    };
    shared
        .metrics
        .errors
        .get_or_create(&crate::metrics::SqlstateLabel {
            sqlstate: code.to_string(),
        })
        .inc();
    let (text, hint) = e.client_message(user, db);
    let mut out = BytesMut::new();
    msg::error_response(&mut out, e.severity(), code, &text, hint);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn negotiate(shared: &Shared, tcp: TcpStream) -> Result<Negotiated, Failed> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Ok(Negotiated::Done),
        Ok(_) => {}
        Err(e) => return Err((None, e.into())),
    }
    let mut stream = if first[0] == TLS_HANDSHAKE_BYTE {
        // Direct TLS (PostgreSQL 17 `sslnegotiation=direct`): ALPN `postgresql` is mandatory.
        let Some(tls) = &shared.config.tls else {
            return Err((
                None,
                GatewayError::Tls("direct TLS, but TLS is not configured".into()),
            ));
        };
        let s = tls
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| (None, GatewayError::Tls(e.to_string())))?;
        if s.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err((
                None,
                GatewayError::Tls("direct TLS connection without ALPN postgresql".into()),
            ));
        }
        ClientStream::Tls(Box::new(s))
    } else {
        ClientStream::Plain(tcp)
    };
    let mut negotiated_tls = stream.is_tls();
    let mut negotiated_gss = false;
    let mut reader = PacketReader::default();
    loop {
        let packet = match reader.startup_packet(&mut stream).await {
            Ok(p) => p,
            Err(e) => return Err((Some(stream), e)),
        };
        let parsed = match parse_initial_packet(&packet) {
            Ok(p) => p,
            Err(e) => return Err((Some(stream), e)),
        };
        match parsed {
            InitialPacket::SslRequest => {
                if negotiated_tls {
                    return Err((
                        Some(stream),
                        GatewayError::Protocol("SSLRequest after encryption was negotiated".into()),
                    ));
                }
                negotiated_tls = true;
                if !reader.is_empty() {
                    // Bytes sent before the handshake would pass for bytes sent over TLS.
                    return Err((
                        Some(stream),
                        GatewayError::Protocol("data after SSLRequest".into()),
                    ));
                }
                let ClientStream::Plain(mut tcp) = stream else {
                    unreachable!("negotiated_tls is set for TLS streams")
                };
                match &shared.config.tls {
                    Some(tls) => {
                        tcp.write_all(b"S").await.map_err(|e| (None, e.into()))?;
                        let s = tls
                            .acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| (None, GatewayError::Tls(e.to_string())))?;
                        stream = ClientStream::Tls(Box::new(s));
                    }
                    None => {
                        tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?;
                        stream = ClientStream::Plain(tcp);
                    }
                }
            }
            InitialPacket::GssEncRequest => {
                if negotiated_gss || stream.is_tls() {
                    return Err((
                        Some(stream),
                        GatewayError::Protocol("unexpected GSSENCRequest".into()),
                    ));
                }
                negotiated_gss = true;
                if let Err(e) = stream.write_all(b"N").await {
                    return Err((None, e.into()));
                }
            }
            InitialPacket::Cancel { pid, secret } => {
                shared.metrics.cancel_requests.inc();
                let forwarded = shared.cancels.cancel(pid, secret).await;
                debug!(forwarded, "cancel request");
                // A cancel request sent over TLS (libpq 17 encrypts them) is answered by a clean
                // close: without close_notify the client reports the cancel as failed.
                if stream.is_tls() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
                }
                return Ok(Negotiated::Done);
            }
            InitialPacket::Startup(startup) => {
                if !stream.is_tls() && !shared.config.allow_plaintext {
                    return Err((Some(stream), GatewayError::TlsRequired));
                }
                return Ok(Negotiated::Session(stream, startup, reader));
            }
        }
    }
}

/// A client that proved who it is.
pub(crate) struct Authenticated {
    db: DatabaseName,
    role: RoleName,
    role_text: String,
    client_key: ClientKey,
    verifier: ScramVerifier,
    /// A login to the admin console.
    admin: bool,
    /// What the client is still to be sent of the authentication (`AuthenticationOk`, after
    /// `AuthenticationSASLFinal`).
    greeting: BytesMut,
}

async fn authenticate(
    shared: &Shared,
    stream: &mut ClientStream,
    reader: &mut PacketReader,
    startup: &StartupMessage,
    ip: std::net::IpAddr,
) -> Result<Authenticated, GatewayError> {
    let user = startup.user()?.to_string();
    let dbname = startup.database()?.to_string();
    if let Some(r) = startup.param("replication") {
        if !matches!(r, "false" | "off" | "no" | "0") {
            return Err(GatewayError::Unsupported(
                "replication connections are not supported through the gateway".into(),
            ));
        }
    }
    if shared.authenticated.count() >= shared.config.max_client_conn {
        shared.refused(Refusal::TooManyClients);
        return Err(GatewayError::TooManyConnections);
    }
    // The role is locked out after many failed logins: addresses that failed against it
    // recently wait; everyone else may still try (before any credential lookup or wake).
    if !shared.gate.address_allows(ip) {
        shared.refused(Refusal::AddressLocked);
        return Err(GatewayError::TooManyFailures);
    }
    if !shared.gate.role_allows(ip, &dbname, &user) {
        shared.refused(Refusal::RoleLocked);
        return Err(GatewayError::TooManyFailures);
    }
    let mut out = BytesMut::new();
    let options = startup.protocol_options();
    if startup.minor > 0 || !options.is_empty() {
        msg::negotiate_protocol_version(&mut out, 0, &options);
    }
    let admin = dbname == shared.config.admin_database;
    // The admin console's name is reserved for the platform (`spg_` prefix): no tenant database
    // can have it. Its sessions carry a placeholder database name.
    let db = if admin {
        DatabaseName::new("admin_console")
    } else {
        DatabaseName::new(dbname.clone())
    }
    .map_err(|_| GatewayError::UnknownDatabase(dbname.clone()))?;
    // A name that cannot be a role is an unknown role: authenticate against a mock verifier so
    // the client cannot tell, and fail at the end.
    let role = RoleName::new(user.clone()).ok();
    let stored = match &role {
        Some(r) if admin => shared.auth.admin_verifier(r).await,
        Some(r) => shared.auth.role_verifier(&db, r).await,
        None => Ok(None),
    };
    let verifier = match stored {
        Ok(v) => v,
        Err(CoreError::DatabaseNotFound(_)) => return Err(GatewayError::UnknownDatabase(dbname)),
        Err(e) if e.is_retryable() => {
            return Err(GatewayError::WakeTimeout {
                database: dbname,
                detail: format!("credential lookup: {e}"),
            })
        }
        Err(e) => {
            return Err(GatewayError::Internal(format!("credential lookup: {e}")));
        }
    };
    let known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(|| ScramVerifier::mock(&user, &shared.mock_secret));
    let client_key = match shared.config.client_auth {
        ClientAuth::Password => {
            password_exchange(
                shared, stream, reader, &mut out, &user, &verifier, known, ip,
            )
            .await?
        }
        ClientAuth::Scram => {
            scram_exchange(shared, stream, reader, &mut out, &verifier, known, ip).await?
        }
    };
    // An unknown role was checked against a mock verifier, which nothing matches.
    let Some(role) = role else {
        return Err(GatewayError::AuthFailed);
    };
    // Sent with the session's first messages: one write where there were two.
    msg::auth_ok(&mut out);
    Ok(Authenticated {
        db,
        role,
        role_text: user,
        client_key,
        verifier,
        admin,
        greeting: out,
    })
}

/// The `password` method: ask for the password (after what `out` holds), check it (cached).
/// Returns the ClientKey.
#[allow(clippy::too_many_arguments)]
async fn password_exchange(
    shared: &Shared,
    stream: &mut ClientStream,
    reader: &mut PacketReader,
    out: &mut BytesMut,
    user: &str,
    verifier: &ScramVerifier,
    known: bool,
    ip: std::net::IpAddr,
) -> Result<ClientKey, GatewayError> {
    msg::auth_cleartext_password(out);
    stream.write_all(out).await?;
    out.clear();
    // The password itself: wiped when dropped.
    let body = zeroize::Zeroizing::new(expect_password_message(stream, reader).await?);
    locked_out_now(shared, ip)?;
    let password = body
        .strip_suffix(&[0])
        .ok_or_else(|| GatewayError::Protocol("password message without terminator".into()))?;
    let checked = shared
        .passwords
        .check(user, verifier, password, &shared.gate)
        .await;
    if checked.cached {
        shared.metrics.password_cache_hits.inc();
    }
    match checked.client_key {
        Some(client_key) if known => Ok(client_key),
        _ => {
            shared.metrics.auth_failures.inc();
            Err(GatewayError::AuthFailed)
        }
    }
}

/// SCRAM-SHA-256 (with channel binding on TLS), after what `out` holds. Leaves
/// `AuthenticationSASLFinal` in `out` and returns the ClientKey recovered from the client's proof.
async fn scram_exchange(
    shared: &Shared,
    stream: &mut ClientStream,
    reader: &mut PacketReader,
    out: &mut BytesMut,
    verifier: &ScramVerifier,
    known: bool,
    ip: std::net::IpAddr,
) -> Result<ClientKey, GatewayError> {
    let channel_binding = if stream.is_tls() {
        shared
            .config
            .tls
            .as_ref()
            .and_then(|t| t.channel_binding.clone())
    } else {
        None
    };
    msg::auth_sasl(out, mechanisms(channel_binding.as_ref()));
    stream.write_all(out).await?;
    out.clear();

    let mut server = ScramServer::new(verifier.clone(), channel_binding);
    let body = expect_password_message(stream, reader).await?;
    let (mechanism, data) = msg::parse_sasl_initial_response(&body)?;
    let server_first = server.client_first(mechanism, data)?;
    msg::auth_sasl_continue(out, server_first.as_bytes());
    stream.write_all(out).await?;
    out.clear();

    let body = expect_password_message(stream, reader).await?;
    locked_out_now(shared, ip)?;
    let (server_final, client_key) = match server.client_final(&body) {
        Ok(x) if known => x,
        Ok(_) | Err(GatewayError::AuthFailed) => {
            shared.metrics.auth_failures.inc();
            return Err(GatewayError::AuthFailed);
        }
        Err(e) => {
            shared.metrics.auth_failures.inc();
            return Err(e);
        }
    };
    msg::auth_sasl_final(out, server_final.as_bytes());
    Ok(client_key)
}

/// Refuse to check a password once the address was locked out while this login was under way
/// (concurrent attempts of one guesser all passed the first check).
fn locked_out_now(shared: &Shared, ip: std::net::IpAddr) -> Result<(), GatewayError> {
    if shared.gate.address_allows(ip) {
        return Ok(());
    }
    shared.refused(Refusal::AddressLocked);
    Err(GatewayError::TooManyFailures)
}

/// Read a `PasswordMessage`, `SASLInitialResponse` or `SASLResponse` (all `p`).
async fn expect_password_message(
    stream: &mut ClientStream,
    reader: &mut PacketReader,
) -> Result<Vec<u8>, GatewayError> {
    let (tag, body) = reader.message(stream, MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(GatewayError::Protocol(format!(
            "expected an authentication response, got message type {}",
            tag as char
        )));
    }
    Ok(body)
}

async fn run_session(
    shared: &Arc<Shared>,
    stream: &mut ClientStream,
    startup: &StartupMessage,
    auth: Authenticated,
    leftover: BytesMut,
    peer: Option<SocketAddr>,
) -> Result<(), GatewayError> {
    if auth.admin {
        info!(user = %auth.role_text, "admin console session");
        if !leftover.is_empty() {
            return Err(GatewayError::Protocol(
                "messages sent before the session was ready".into(),
            ));
        }
        stream.write_all(&auth.greeting).await?;
        return crate::admin::serve(&shared.pools, stream, &auth.role_text).await;
    }
    let _session = shared.sessions.enter(&auth.db);
    let pool = shared.pools.get(&auth.db, &auth.role);
    pool.set_credentials(auth.client_key, auth.verifier);
    let id = shared.client_ids.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let session = Session::login(
        shared,
        stream,
        startup,
        pool,
        peer,
        id,
        auth.greeting,
        leftover,
    )
    .await?;
    debug!(ms = started.elapsed().as_millis() as u64, "session ready");
    shared.metrics.active_sessions.inc();
    let ended = session.run().await;
    shared.metrics.active_sessions.dec();
    ended
}

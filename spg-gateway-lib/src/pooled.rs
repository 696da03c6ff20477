//! A client session over a pool: login, then a message-level relay that takes a backend
//! connection when the client starts work and gives it back when `ReadyForQuery` says the
//! transaction is over (transaction mode), or at the end (session mode).
//!
//! What moves with the client from one backend to another:
//! - session parameters: `ParameterStatus` values and `SET`s, re-applied when the client gets a
//!   backend whose values differ;
//! - protocol-level named prepared statements: the client's names map to gateway-owned names
//!   (derived from the statement text and parameter types); a statement is prepared on whichever
//!   backend the client gets, and answered from that backend's cache when it is already there;
//! - the unnamed statement, re-prepared if a `Bind` finds another backend than its `Parse`.
//!
//! What cannot move pins the client to its backend until it is gone (see [`crate::proto::sql`]).
//! Responses to messages the gateway adds are swallowed, and responses the gateway answers itself
//! are put in the stream in order, by a queue of what each forwarded message will produce.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use crate::cancel::CancelKey;
use crate::pool::clock::coarse_us;
use crate::pool::{ClientInfo, ClientState, Param, Params, Pool, PoolMode, Server, ServerState};
use crate::proto::backend::{self as msg, Severity};
use crate::proto::messages::{self as m, Piece, Span, Splitter};
use crate::proto::sql::{self, Effect, PinKind};
use crate::proto::startup::StartupMessage;
use crate::server::Shared;
use crate::stream::ClientStream;
use crate::GatewayError;

/// Prefix of gateway-owned statement names.
const STMT_PREFIX: &str = "spg_";
/// Messages with bodies above this many bytes stream through instead of being held whole.
const STREAM_OVER: usize = 64 * 1024;
/// Stop reading a side while this much is queued for the other.
const HIGH_WATER: usize = 1 << 20;
/// Client messages kept for sending again on another backend (beyond: no retry).
const MAX_REPLAY: usize = 64;
/// Times one transaction is sent to another backend after finding its backend gone.
const MAX_RETRIES: u32 = 3;

/// What a forwarded message will produce, in order.
#[derive(Debug)]
enum Expect {
    /// A reply from the backend: forwarded, or swallowed for messages the gateway added.
    Reply {
        kind: Kind,
        internal: bool,
        /// A `Parse` that creates a gateway-owned statement (undone if it fails or is skipped).
        created: Option<Created>,
    },
    /// Bytes the gateway answers itself, sent when their turn comes.
    Fake(Bytes),
    /// `CommandComplete DEALLOCATE` and `ReadyForQuery` for a client-side `DEALLOCATE`.
    FakeDeallocate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    Call,
}

impl Kind {
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::Describe => tag == b'T' || tag == b'n',
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::Close => tag == b'3',
            Kind::Sync | Kind::Query | Kind::Call => tag == b'Z',
        }
    }

    /// Ends with `ReadyForQuery`, and errors do not skip what follows.
    fn is_sync_point(self) -> bool {
        matches!(self, Kind::Sync | Kind::Query | Kind::Call)
    }
}

/// What woke the relay.
enum Event {
    /// The backend sent bytes (0: it closed).
    Backend(std::io::Result<usize>),
    /// Queued bytes went to the backend.
    Written(std::io::Result<()>),
    /// The client sent bytes (0: it closed).
    Client(std::io::Result<usize>),
}

#[derive(Debug)]
struct Created {
    gw: Arc<str>,
    client_name: Option<String>,
}

/// A statement a client prepared.
#[derive(Debug)]
struct Stmt {
    gw: Arc<str>,
    /// `Parse` message under the gateway's name (or the unnamed statement's own message).
    parse: Bytes,
    effects: Vec<Effect>,
}

/// A backend connection while a client holds it.
struct Attached {
    server: Server,
    queue: VecDeque<Expect>,
    out: BytesMut,
    /// Extended-protocol messages forwarded since the last `Sync`.
    unsynced: bool,
    /// The client's unnamed statement was parsed on this backend.
    unnamed_here: bool,
    status: u8,
    /// When it was attached ([`coarse_us`]).
    since: u64,
    /// An error or `ROLLBACK` since the last idle `ReadyForQuery`.
    failed: bool,
    /// Nothing came back from the backend yet and nothing was answered for it: the client's
    /// messages in `log` can go to another backend if this one turns out to be gone.
    fresh: bool,
    /// The client's messages since the attachment, while `fresh`.
    log: Vec<Bytes>,
    /// The backend is skipping messages after an extended-protocol error and no `Sync` has
    /// been sent since: what the client sends now produces no replies until its `Sync`.
    skipping: bool,
    broken: bool,
}

/// Why a session ended.
enum End {
    Client,
    /// The backend went away under the client; it was told.
    Backend,
}

pub(crate) struct Session<'a> {
    shared: &'a Arc<Shared>,
    pool: Arc<Pool>,
    info: Arc<ClientInfo>,
    cancel: CancelKey,
    client: &'a mut ClientStream,
    cin: BytesMut,
    csplit: Splitter,
    cout: BytesMut,
    /// The client's session parameters.
    params: Arc<Params>,
    /// Its parameters right after login (what `RESET ALL` returns to).
    startup: Arc<Params>,
    statements: HashMap<String, Arc<Stmt>>,
    unnamed: Option<Arc<Stmt>>,
    pins: BTreeMap<PinKind, BTreeSet<String>>,
    /// Pin kinds counted in the pool's metrics for this client.
    counted_pins: BTreeSet<PinKind>,
    /// Session effects waiting for the transaction's outcome.
    pending: Vec<Effect>,
    att: Option<Attached>,
    /// After a failed checkout: drop extended-protocol messages until `Sync`.
    skip_until_sync: bool,
    /// Dropping a streamed message (no backend to send it to).
    dropping_stream: bool,
    /// The streamed message's bytes go to the backend.
    streaming: bool,
    max_message: usize,
    terminated: bool,
    /// Client messages to send again on another backend (the one they went to was gone).
    retry: Option<Vec<Bytes>>,
    /// Retries for the current transaction.
    retries: u32,
    /// The reply queue, output buffer and replay log of the last attachment, kept for the
    /// next (their allocations).
    spare: Option<(VecDeque<Expect>, BytesMut, Vec<Bytes>)>,
    /// Figures not yet added to the pool's.
    local: LocalStats,
    /// The backend message being handled (its allocation kept from one message to the next).
    scratch: Vec<u8>,
}

/// How often a working session adds its figures to the pool's.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A session's figures since it last added them to the pool's (shared counters cost cache-line
/// traffic on every transaction otherwise).
struct LocalStats {
    /// [`coarse_us`] of the last flush.
    since: u64,
    received: u64,
    sent: u64,
    queries: u64,
    xacts: u64,
    xact_us: u64,
    checkouts: u64,
}

impl LocalStats {
    fn new() -> Self {
        LocalStats {
            since: coarse_us(),
            received: 0,
            sent: 0,
            queries: 0,
            xacts: 0,
            xact_us: 0,
            checkouts: 0,
        }
    }

    fn flush(&mut self, pool: &Pool, now: u64) {
        let s = &pool.stats;
        for (counter, v) in [
            (&s.received, self.received),
            (&s.sent, self.sent),
            (&s.queries, self.queries),
            (&s.xacts, self.xacts),
            (&s.xact_us, self.xact_us),
            (&s.checkouts, self.checkouts),
        ] {
            if v > 0 {
                counter.fetch_add(v, Ordering::Relaxed);
            }
        }
        *self = LocalStats::new();
        self.since = now;
    }
}

/// Parameters a client's startup packet asks for, as (lower-case name, display name, value).
fn startup_settings(
    startup: &StartupMessage,
) -> Result<Vec<(String, String, String)>, GatewayError> {
    let mut out = Vec::new();
    for (k, v) in &startup.params {
        if !crate::backend::forwardable(k) {
            continue;
        }
        if k == "options" {
            let opts =
                crate::pool::params::parse_options(v).map_err(|e| GatewayError::ServerError {
                    code: "22023".into(),
                    message: format!("invalid startup options: {e}"),
                })?;
            for (k, v) in opts {
                out.push((k.to_ascii_lowercase(), k, v));
            }
            continue;
        }
        out.push((k.to_ascii_lowercase(), k.clone(), v.clone()));
    }
    Ok(out)
}

/// The client's parameters from the pool's baseline and its startup settings; `None` when a
/// reported value's canonical form is not known yet.
fn desired(
    pool: &Pool,
    baseline: &Params,
    settings: &[(String, String, String)],
    exact: bool,
) -> Option<Params> {
    let mut p = baseline.clone();
    for (key, display, value) in settings {
        if let Some(cur) = p.map.get_mut(key).filter(|c| c.reported) {
            match pool.canonical(key, value) {
                Some(c) => cur.value = c,
                None if exact => return None,
                None => cur.value = value.clone(),
            }
        } else {
            p.map.insert(
                key.clone(),
                Param {
                    display: display.clone(),
                    value: value.clone(),
                    sql: false,
                    reported: false,
                },
            );
        }
    }
    Some(p)
}

impl<'a> Session<'a> {
    /// Log the client in on its pool: its parameters are settled (on a backend when the pool
    /// cannot tell them alone, which also wakes the database), then it gets `ParameterStatus`,
    /// the gateway's `BackendKeyData` and `ReadyForQuery`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn login(
        shared: &'a Arc<Shared>,
        client: &'a mut ClientStream,
        startup: &StartupMessage,
        pool: Arc<Pool>,
        peer: Option<SocketAddr>,
        id: u64,
        greeting: BytesMut,
        leftover: BytesMut,
    ) -> Result<Session<'a>, GatewayError> {
        let settings = startup_settings(startup)?;
        let app = startup.param("application_name").unwrap_or("").to_string();
        let info = Arc::new(ClientInfo::new(id, peer, app));
        let cancel = shared.cancels.register(None);
        let deadline = Instant::now() + shared.config.wake_timeout;
        let fast = match pool.baseline() {
            Some(b) if pool.mode == PoolMode::Transaction && pool.has_servers() => {
                desired(&pool, &b, &settings, true)
            }
            _ => None,
        };
        let mut att = None;
        let params = match fast {
            Some(p) => pool.intern(p),
            None => {
                pool.lease_enter(deadline).await?;
                let server = match pool.checkout(&info, deadline).await {
                    Ok(s) => s,
                    Err(e) => {
                        pool.lease_exit();
                        return Err(e);
                    }
                };
                let (params, server) = match settle(&pool, server, &settings).await {
                    Ok(x) => x,
                    Err(e) => {
                        pool.lease_exit();
                        return Err(e);
                    }
                };
                if pool.mode == PoolMode::Session {
                    info.set_state(ClientState::Active, server.info.id);
                    cancel.set_target(Some(server.target));
                    att = Some(Attached::new(server));
                } else {
                    pool.release(server);
                    pool.lease_exit();
                }
                params
            }
        };
        pool.add_client(Arc::clone(&info));
        // The rest of the authentication, the parameters, the key and ready: one write.
        let mut out = greeting;
        for (k, v) in params.reported_pairs() {
            msg::parameter_status(&mut out, k, v);
        }
        msg::backend_key_data(&mut out, cancel.pid, cancel.secret);
        msg::ready_for_query(&mut out, b'I');
        client.write_all(&out).await?;
        client.flush().await?;
        Ok(Session {
            shared,
            max_message: shared.config.max_message_bytes,
            pool,
            info,
            cancel,
            client,
            cin: {
                // What the client sent past its login, first.
                let mut cin = leftover;
                cin.reserve(1024);
                cin
            },
            csplit: Splitter::default(),
            cout: BytesMut::new(),
            startup: Arc::clone(&params),
            params,
            statements: HashMap::new(),
            unnamed: None,
            pins: BTreeMap::new(),
            counted_pins: BTreeSet::new(),
            pending: Vec::new(),
            att,
            skip_until_sync: false,
            dropping_stream: false,
            streaming: false,
            terminated: false,
            spare: None,
            retry: None,
            retries: 0,
            local: LocalStats::new(),
            scratch: Vec::new(),
        })
    }

    /// Relay until the client leaves or its backend goes away; then give the backend back
    /// (reset when pinned or in session mode; closed when not clean).
    pub(crate) async fn run(mut self) -> Result<(), GatewayError> {
        let r = self.relay().await;
        self.finish().await;
        match r {
            Ok(End::Client) | Ok(End::Backend) => Ok(()),
            Err(GatewayError::Io(e)) => {
                debug!(error = %e, "session ended by a socket error");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn finish(&mut self) {
        self.local.flush(&self.pool, coarse_us());
        self.set_pins_metrics(&BTreeSet::new());
        self.pool.remove_client(self.info.id);
        if let Some(att) = self.att.take() {
            self.cancel.set_target(None);
            let clean = !att.broken
                && att.queue.is_empty()
                && !att.unsynced
                && att.status == b'I'
                && att.server.inbuf.is_empty()
                && att.out.is_empty();
            let needs_reset = self.pool.mode == PoolMode::Session || !self.pins.is_empty();
            let server = att.server;
            if !clean {
                self.pool.close(server);
            } else if needs_reset {
                self.pool.reset_and_release(server).await;
            } else {
                self.pool.release(server);
            }
            self.pool.lease_exit();
        }
    }

    async fn relay(&mut self) -> Result<End, GatewayError> {
        loop {
            if let Some(end) = self.process_client().await? {
                return Ok(end);
            }
            if !self.cout.is_empty() {
                self.client.write_all(&self.cout).await?;
                self.client.flush().await?;
                self.local.sent += self.cout.len() as u64;
                self.cout.clear();
            }
            if self
                .att
                .as_ref()
                .is_some_and(|a| !a.server.inbuf.is_empty())
            {
                // Replies held back while the client's side was full.
                self.process_backend()?;
                if !self.cout.is_empty() {
                    continue;
                }
            }
            if let Some(att) = &mut self.att {
                flush_backend(att)?;
            } else {
                if self.cout.capacity() > 16 * 1024 {
                    self.cout = BytesMut::new();
                }
                if self.cin.is_empty() && self.cin.capacity() > 16 * 1024 {
                    self.cin = BytesMut::with_capacity(1024);
                }
            }
            if self.terminated {
                return Ok(End::Client);
            }
            let client_room = self.att.as_ref().is_none_or(|a| a.out.len() < HIGH_WATER);
            let (srv, mut inbuf, mut out) = match &mut self.att {
                Some(a) => (
                    Some(&a.server.stream),
                    Some(&mut a.server.inbuf),
                    Some(&mut a.out),
                ),
                None => (None, None, None),
            };
            // One poll of the three sources, in this order (replies first); each waits in its
            // socket's single reader or writer slot, so a pass that finds nothing registers
            // nothing anew.
            let client = &mut *self.client;
            let cin = &mut self.cin;
            let event = std::future::poll_fn(|cx| {
                if let (Some(s), Some(buf)) = (srv, inbuf.as_deref_mut()) {
                    if let Poll::Ready(r) = s.poll_read_buf(cx, buf) {
                        return Poll::Ready(Event::Backend(r));
                    }
                }
                if let (Some(s), Some(out)) = (srv, out.as_deref_mut()) {
                    if !out.is_empty() {
                        if let Poll::Ready(r) = s.poll_write_some(cx, out) {
                            return Poll::Ready(Event::Written(r));
                        }
                    }
                }
                if client_room {
                    if let Poll::Ready(r) = poll_read_client(client, cx, cin) {
                        return Poll::Ready(Event::Client(r));
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Backend(r) => {
                    let n = match r {
                        Ok(n) => n,
                        Err(e) => {
                            debug!(error = %e, "backend connection failed");
                            0
                        }
                    };
                    if let Some(end) = self.on_backend_data(n)? {
                        self.client.write_all(&self.cout).await?;
                        self.client.flush().await?;
                        return Ok(end);
                    }
                    if let Some(msgs) = self.retry.take() {
                        self.drop_dead_backend();
                        for m in msgs {
                            self.on_client_message(m).await?;
                        }
                    }
                }
                Event::Written(r) => {
                    if let Err(e) = r {
                        if let Some(att) = &mut self.att {
                            att.broken = true;
                        }
                        return Err(GatewayError::BackendUnavailable(e.to_string()));
                    }
                }
                Event::Client(r) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(End::Client);
                    }
                    self.local.received += n as u64;
                }
            }
        }
    }

    /// The backend sent `n` bytes (0: it closed); process them. `Some` when the backend is
    /// gone.
    fn on_backend_data(&mut self, n: usize) -> Result<Option<End>, GatewayError> {
        let eof = n == 0;
        self.process_backend()?;
        if self.retry.is_some() {
            return Ok(None);
        }
        if eof {
            if let Some(att) = &mut self.att {
                att.broken = true;
            }
            // Its compute may have gone as a whole: no idle sibling may go to the next client.
            self.pool.probe_idle();
            warn!(
                server = self.att.as_ref().map(|a| a.server.info.id),
                "backend connection lost under a client"
            );
            msg::error_response(
                &mut self.cout,
                Severity::Fatal,
                "08006",
                "server connection lost while the client was using it",
                Some("Reconnect; the transaction in progress was not committed."),
            );
            return Ok(Some(End::Backend));
        }
        Ok(None)
    }

    // ---- client → backend -------------------------------------------------------------

    /// Handle every whole message the client sent. `Some` when the session is over.
    async fn process_client(&mut self) -> Result<Option<End>, GatewayError> {
        loop {
            if self.terminated {
                return Ok(None);
            }
            let stream = |t: u8| t == b'd';
            let piece = self
                .csplit
                .next(&mut self.cin, self.max_message, STREAM_OVER, stream)?;
            let Some(piece) = piece else {
                return Ok(None);
            };
            match piece {
                Piece::StreamStart(_) => {
                    // CopyData: only meaningful inside COPY, on the backend that runs it.
                    self.dropping_stream = self.att.is_none();
                    self.streaming = !self.dropping_stream;
                }
                Piece::Raw(b) => {
                    if self.streaming {
                        if let Some(att) = &mut self.att {
                            att.out.extend_from_slice(&b);
                            flush_backend(att)?;
                        }
                    }
                    if self.csplit.at_boundary() {
                        self.streaming = false;
                        self.dropping_stream = false;
                    }
                }
                Piece::Whole(msg) => {
                    self.on_client_message(msg.clone()).await?;
                    if let Some(att) = &mut self.att {
                        if att.fresh && att.log.len() < MAX_REPLAY {
                            att.log.push(msg);
                        } else {
                            att.fresh = false;
                            att.log.clear();
                        }
                    }
                    if let Some(att) = &mut self.att {
                        if att.out.len() >= HIGH_WATER {
                            flush_backend(att)?;
                            if att.out.len() >= HIGH_WATER {
                                return Ok(None);
                            }
                        }
                    }
                }
            }
        }
    }

    async fn on_client_message(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let tag = msg[0];
        if self.skip_until_sync {
            if tag == b'S' {
                self.skip_until_sync = false;
                msg::ready_for_query(&mut self.cout, b'I');
            } else if tag == b'X' {
                self.terminated = true;
            }
            return Ok(());
        }
        match tag {
            b'X' => {
                self.terminated = true;
                Ok(())
            }
            b'S' => {
                match &mut self.att {
                    Some(att) => {
                        att.unsynced = false;
                        forward(att, &msg, Kind::Sync);
                    }
                    None => msg::ready_for_query(&mut self.cout, b'I'),
                }
                Ok(())
            }
            b'H' => {
                if let Some(att) = &mut self.att {
                    att.out.extend_from_slice(&msg);
                    if att.fresh && matches!(att.queue.front(), Some(Expect::Fake(_))) {
                        att.fresh = false;
                        att.log.clear();
                    }
                }
                self.flush_fakes();
                Ok(())
            }
            b'd' | b'c' | b'f' => {
                if let Some(att) = &mut self.att {
                    att.out.extend_from_slice(&msg);
                }
                Ok(())
            }
            b'Q' => self.on_query(msg).await,
            b'P' => self.on_parse(msg).await,
            b'B' => self.on_bind(msg).await,
            b'D' => self.on_describe(msg).await,
            b'C' => self.on_close(msg).await,
            b'E' => {
                self.local.queries += 1;
                let Some(att) = self.attach_for(tag).await? else {
                    return Ok(());
                };
                att.unsynced = true;
                forward(att, &msg, Kind::Execute);
                Ok(())
            }
            b'F' => {
                let Some(att) = self.attach_for(tag).await? else {
                    return Ok(());
                };
                forward(att, &msg, Kind::Call);
                Ok(())
            }
            other => Err(GatewayError::Protocol(format!(
                "invalid frontend message type {other}"
            ))),
        }
    }

    async fn on_query(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        self.local.queries += 1;
        let sql = m::query_text(&msg)?;
        let analysis = sql::analyze(sql);
        // `DEALLOCATE name` of a protocol-level statement: the gateway owns those.
        if let [Effect::Deallocate(name)] = analysis.effects.as_slice() {
            if analysis.statements == 1 && self.statements.contains_key(name) {
                self.statements.remove(name);
                match &mut self.att {
                    Some(att) => push_fake(att, &mut self.cout, Expect::FakeDeallocate),
                    None => {
                        m::command_complete(&mut self.cout, "DEALLOCATE");
                        msg::ready_for_query(&mut self.cout, b'I');
                    }
                }
                return Ok(());
            }
        }
        self.apply_effects_at_send(&analysis.effects);
        let Some(att) = self.attach_for(b'Q').await? else {
            return Ok(());
        };
        forward(att, &msg, Kind::Query);
        Ok(())
    }

    async fn on_parse(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let p = m::parse_parse(&msg)?;
        let effects = sql::analyze(p.query).effects;
        if p.name.is_empty() {
            let stmt = Arc::new(Stmt {
                gw: Arc::from(""),
                parse: msg.clone(),
                effects,
            });
            self.apply_effects_at_send(&stmt.effects);
            self.unnamed = Some(stmt);
            let Some(att) = self.attach_for(b'P').await? else {
                return Ok(());
            };
            att.unsynced = true;
            att.unnamed_here = true;
            forward(att, &msg, Kind::Parse);
            return Ok(());
        }
        let gw = gateway_name(p.query, p.types);
        let stmt = Arc::new(Stmt {
            parse: m::build_parse(&gw, p.query, p.types),
            gw: Arc::from(gw.as_str()),
            effects,
        });
        let client_name = p.name.to_string();
        self.apply_effects_at_send(&stmt.effects);
        self.statements
            .insert(client_name.clone(), Arc::clone(&stmt));
        // A lone `Parse` + `Sync` (libpq's PQprepare) between transactions while every backend
        // is busy: answer it here and prepare the statement where it is first used (errors in
        // it are reported then). Waiting could deadlock a client program that prepares on one
        // connection while its other connections hold the backends (pgbench -M prepared).
        if self.att.is_none() && self.cin.first() == Some(&b'S') && !self.pool.has_free() {
            self.pool
                .stats
                .prepares_deferred
                .fetch_add(1, Ordering::Relaxed);
            m::empty(&mut self.cout, b'1');
            return Ok(());
        }
        let max_prepared = self.pool.config().max_prepared_per_server;
        let pool = Arc::clone(&self.pool);
        if self.attach_for(b'P').await?.is_none() {
            return Ok(());
        }
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        att.unsynced = true;
        if att.skipping {
            // PostgreSQL would skip this Parse (an earlier error, no Sync yet): no statement.
            self.statements.remove(&client_name);
            return Ok(());
        }
        if att.server.prepared.contains(&stmt.gw) {
            pool.stats.prepare_hits.fetch_add(1, Ordering::Relaxed);
            let mut done = BytesMut::new();
            m::empty(&mut done, b'1');
            push_fake(att, &mut self.cout, Expect::Fake(done.freeze()));
        } else {
            evict(att, max_prepared);
            pool.stats.prepares.fetch_add(1, Ordering::Relaxed);
            att.server.prepared.insert(Arc::clone(&stmt.gw));
            att.server.note_prepared();
            att.out.extend_from_slice(&stmt.parse);
            att.queue.push_back(Expect::Reply {
                kind: Kind::Parse,
                internal: false,
                created: Some(Created {
                    gw: Arc::clone(&stmt.gw),
                    client_name: Some(client_name),
                }),
            });
        }
        Ok(())
    }

    /// Make sure the statement `name` refers to exists on the attached backend; returns the
    /// name to use there (`None`: pass the client's name through, unknown to the gateway).
    fn ensure_prepared(&mut self, name: &str) -> Option<Arc<str>> {
        let max_prepared = self.pool.config().max_prepared_per_server;
        let att = self.att.as_mut()?;
        if name.is_empty() {
            if !att.unnamed_here && !att.skipping {
                if let Some(stmt) = &self.unnamed {
                    att.out.extend_from_slice(&stmt.parse);
                    att.queue.push_back(Expect::Reply {
                        kind: Kind::Parse,
                        internal: true,
                        created: None,
                    });
                    att.unnamed_here = true;
                }
            }
            return None;
        }
        let stmt = self.statements.get(name)?;
        if !att.skipping && !att.server.prepared.contains(&stmt.gw) {
            evict(att, max_prepared);
            self.pool.stats.prepares.fetch_add(1, Ordering::Relaxed);
            att.server.prepared.insert(Arc::clone(&stmt.gw));
            att.server.note_prepared();
            att.out.extend_from_slice(&stmt.parse);
            att.queue.push_back(Expect::Reply {
                kind: Kind::Parse,
                internal: true,
                created: Some(Created {
                    gw: Arc::clone(&stmt.gw),
                    client_name: None,
                }),
            });
        }
        Some(Arc::clone(&stmt.gw))
    }

    async fn on_bind(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let (portal, stmt, rest_at) = m::parse_bind(&msg)?;
        let (portal, stmt) = (portal.to_string(), stmt.to_string());
        if self.attach_for(b'B').await?.is_none() {
            return Ok(());
        }
        let mapped = self.ensure_prepared(&stmt);
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        att.unsynced = true;
        match mapped {
            Some(gw) => {
                let rewritten = m::rewrite_bind(&msg, &portal, &gw, rest_at);
                forward(att, &rewritten, Kind::Bind);
            }
            None => forward(att, &msg, Kind::Bind),
        }
        Ok(())
    }

    async fn on_describe(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let (kind, name) = m::parse_target(&msg)?;
        let name = name.to_string();
        if self.attach_for(b'D').await?.is_none() {
            return Ok(());
        }
        let mapped = if kind == b'S' {
            self.ensure_prepared(&name)
        } else {
            None
        };
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        att.unsynced = true;
        match mapped {
            Some(gw) => forward(att, &m::build_target(b'D', b'S', &gw), Kind::Describe),
            None => forward(att, &msg, Kind::Describe),
        }
        Ok(())
    }

    async fn on_close(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let (kind, name) = m::parse_target(&msg)?;
        let ours = kind == b'S' && !name.is_empty();
        if ours {
            // The statement stays in the backend's cache; the client's name goes.
            self.statements.remove(name);
        }
        match &mut self.att {
            Some(att) if !ours => {
                att.unsynced = true;
                forward(att, &msg, Kind::Close);
            }
            Some(att) => {
                att.unsynced = true;
                let mut done = BytesMut::new();
                m::empty(&mut done, b'3');
                push_fake(att, &mut self.cout, Expect::Fake(done.freeze()));
            }
            None => m::empty(&mut self.cout, b'3'),
        }
        Ok(())
    }

    /// The attached backend, taking one when the client has none. `None` when none could be
    /// had: the client got an error (and, for extended-protocol messages, the rest of its
    /// batch up to `Sync` is dropped).
    async fn attach_for(&mut self, tag: u8) -> Result<Option<&mut Attached>, GatewayError> {
        if self.att.is_none() {
            if let Err(e) = self.attach().await {
                if e.severity() == Severity::Fatal
                    && !matches!(
                        e,
                        GatewayError::WakeTimeout { .. } | GatewayError::BackendUnavailable(_)
                    )
                {
                    return Err(e);
                }
                warn!(error = %e, "no backend connection for a transaction");
                let code = e.code().unwrap_or("08006").to_string();
                let (text, hint) = e.client_message("", self.pool.db.as_str());
                msg::error_response(&mut self.cout, Severity::Error, &code, &text, hint);
                if matches!(tag, b'Q' | b'F') {
                    msg::ready_for_query(&mut self.cout, b'I');
                } else {
                    self.skip_until_sync = true;
                }
                self.pending.clear();
                return Ok(None);
            }
        }
        Ok(self.att.as_mut())
    }

    async fn attach(&mut self) -> Result<(), GatewayError> {
        let deadline = Instant::now() + self.shared.config.wake_timeout;
        self.pool.lease_enter(deadline).await?;
        let server = match self.pool.checkout(&self.info, deadline).await {
            Ok(s) => s,
            Err(e) => {
                self.pool.lease_exit();
                self.info.set_state(ClientState::Idle, 0);
                return Err(e);
            }
        };
        self.info.set_state(ClientState::Active, server.info.id);
        self.cancel.set_target(Some(server.target));
        let mut att = Attached::new(server);
        if let Some((queue, out, log)) = self.spare.take() {
            att.queue = queue;
            att.out = out;
            att.log = log;
        }
        if !Arc::ptr_eq(&att.server.values, &self.params) {
            let have = Arc::clone(&att.server.values);
            sync_settings(&mut att, &self.params, &have);
        }
        self.att = Some(att);
        Ok(())
    }

    /// The attached backend connection was found gone: close it, hold nothing.
    fn drop_dead_backend(&mut self) {
        if let Some(att) = self.att.take() {
            self.cancel.set_target(None);
            self.info.set_state(ClientState::Idle, 0);
            self.pool.close(att.server);
            self.pool.lease_exit();
            self.pool.probe_idle();
        }
    }

    /// Give the backend back if the client is between transactions and not pinned.
    fn maybe_release(&mut self) {
        let Some(att) = &self.att else {
            return;
        };
        if self.pool.mode != PoolMode::Transaction
            || att.status != b'I'
            || !att.queue.is_empty()
            || att.unsynced
            || !att.out.is_empty()
            || !att.server.inbuf.is_empty()
            || !self.pins.is_empty()
        {
            return;
        }
        let Some(att) = self.att.take() else {
            return;
        };
        self.cancel.set_target(None);
        let now = coarse_us();
        self.local.xact_us += now.saturating_sub(att.since);
        self.local.checkouts += 1;
        if now.saturating_sub(self.local.since) >= STATS_EVERY.as_micros() as u64 {
            self.local.flush(&self.pool, now);
        }
        let Attached {
            server,
            queue,
            out,
            mut log,
            ..
        } = att;
        log.clear();
        self.spare = Some((queue, out, log));
        self.info.set_state(ClientState::Idle, 0);
        self.pool.release(server);
        self.pool.lease_exit();
    }

    // ---- session effects -----------------------------------------------------------------

    /// Effects that take hold when the statement is sent: pins (conservatively), statement
    /// names; settings wait for the transaction's outcome.
    fn apply_effects_at_send(&mut self, effects: &[Effect]) {
        if effects.is_empty() {
            return;
        }
        for e in effects {
            match e {
                Effect::Pin(kind, name) => {
                    self.pins
                        .entry(*kind)
                        .or_default()
                        .insert(name.clone().unwrap_or_default());
                }
                Effect::Unpin(kind, None) => {
                    self.pins.remove(kind);
                }
                Effect::Unpin(kind, Some(name)) => {
                    if let Some(set) = self.pins.get_mut(kind) {
                        set.remove(name);
                        if set.is_empty() {
                            self.pins.remove(kind);
                        }
                    }
                }
                Effect::DiscardAll => {
                    self.pins.clear();
                    self.statements.clear();
                    self.unnamed = None;
                    self.pending.push(Effect::DiscardAll);
                }
                Effect::DeallocateAll => {
                    self.statements.clear();
                    self.pins.remove(&PinKind::SqlPrepare);
                }
                Effect::Deallocate(name) => {
                    if let Some(set) = self.pins.get_mut(&PinKind::SqlPrepare) {
                        set.remove(name);
                        if set.is_empty() {
                            self.pins.remove(&PinKind::SqlPrepare);
                        }
                    }
                }
                Effect::ResetAll => {
                    self.pins.remove(&PinKind::UntrackedSet);
                    self.pending.push(Effect::ResetAll);
                }
                Effect::Set { name, .. } | Effect::Reset(name) => {
                    // Reported parameters follow ParameterStatus; the rest wait for commit.
                    if !self.params.is_reported(name) {
                        self.pending.push(e.clone());
                    }
                }
            }
        }
        let after: BTreeSet<PinKind> = self.pins.keys().copied().collect();
        self.set_pins_metrics(&after);
    }

    fn set_pins_metrics(&mut self, after: &BTreeSet<PinKind>) {
        let before = std::mem::replace(&mut self.counted_pins, after.clone());
        for k in before.difference(after) {
            self.pool.pins.add(*k, -1);
        }
        for k in after.difference(&before) {
            self.pool.pins.add(*k, 1);
        }
        let reason = (!after.is_empty()).then(|| {
            after
                .iter()
                .map(|k| {
                    let names: Vec<_> = self
                        .pins
                        .get(k)
                        .map(|s| s.iter().filter(|n| !n.is_empty()).cloned().collect())
                        .unwrap_or_default();
                    if names.is_empty() {
                        k.as_str().to_string()
                    } else {
                        format!("{}({})", k.as_str(), names.join(","))
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        if reason.is_some() && before.is_empty() {
            debug!(reason = reason.as_deref(), "client pinned to its backend");
        }
        self.info.set_pinned(reason);
    }

    /// The transaction ended (`ReadyForQuery` idle): settings it made take hold unless it
    /// failed.
    fn commit_pending(&mut self, failed: bool) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if failed {
            return;
        }
        let mut p = (*self.params).clone();
        let mut server_reset = false;
        let mut reset = Vec::new();
        for e in pending {
            match e {
                Effect::Set { name, value } => {
                    p.map.insert(
                        name.clone(),
                        Param {
                            display: name,
                            value,
                            sql: true,
                            reported: false,
                        },
                    );
                }
                Effect::Reset(name) => {
                    match self.startup.map.get(&name) {
                        Some(v) => p.map.insert(name.clone(), v.clone()),
                        None => p.map.remove(&name),
                    };
                    reset.push(name);
                }
                Effect::ResetAll | Effect::DiscardAll => {
                    // The backend went back to its defaults, the client to its startup values.
                    p = (*self.startup).clone();
                    server_reset = true;
                }
                _ => {}
            }
        }
        // What the backend has now: its own defaults after RESET ALL / DISCARD ALL, and no
        // value for a RESET parameter (the client's RESET means its startup value, the
        // backend's its server default).
        let mut have = if server_reset {
            self.pool
                .baseline()
                .map(|b| (*b).clone())
                .unwrap_or_default()
        } else {
            p.clone()
        };
        for name in &reset {
            have.map.remove(name);
        }
        self.params = self.pool.intern(p);
        if let Some(att) = &mut self.att {
            // Bring the backend in line at once (the client may keep it: pinned, session mode).
            sync_settings(att, &self.params, &have);
        }
    }

    // ---- backend → client -------------------------------------------------------------

    fn process_backend(&mut self) -> Result<(), GatewayError> {
        loop {
            let Some(att) = &mut self.att else {
                return Ok(());
            };
            let stream = |t: u8| matches!(t, b'D' | b'd');
            let inbuf = &mut att.server.inbuf;
            let span = att
                .server
                .splitter
                .next_span(inbuf, usize::MAX >> 1, STREAM_OVER, stream)
                .map_err(|e| GatewayError::BackendRejected(e.to_string()))?;
            let Some(span) = span else {
                if att.server.splitter.at_boundary() && inbuf.len() >= m::HEADER {
                    // Room for the rest of the message, read in as few reads as it takes.
                    let len = u32::from_be_bytes([inbuf[1], inbuf[2], inbuf[3], inbuf[4]]);
                    inbuf.reserve((1 + len as usize).saturating_sub(inbuf.len()));
                }
                // Something asynchronous (a notice) after the transaction's ReadyForQuery.
                self.maybe_release();
                return Ok(());
            };
            let internal = matches!(
                att.queue.front(),
                Some(Expect::Reply { internal: true, .. })
            );
            match span {
                Span::StreamStart(_) => {}
                Span::Raw(n) => {
                    if !internal {
                        self.cout.extend_from_slice(&inbuf[..n]);
                    }
                    inbuf.advance(n);
                }
                Span::Whole(n) => {
                    // Handled from a copy kept across messages (no allocation, no reference
                    // counting per message): the handler may give the backend back.
                    let mut msg = std::mem::take(&mut self.scratch);
                    msg.clear();
                    msg.extend_from_slice(&inbuf[..n]);
                    inbuf.advance(n);
                    let r = self.on_backend_message(&msg);
                    if msg.capacity() <= 64 * 1024 {
                        self.scratch = msg;
                    }
                    r?;
                }
            }
            if self.retry.is_some() {
                return Ok(());
            }
            if self.cout.len() >= HIGH_WATER {
                return Ok(());
            }
        }
    }

    fn on_backend_message(&mut self, msg: &[u8]) -> Result<(), GatewayError> {
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        let tag = msg[0];
        if att.fresh {
            att.fresh = false;
            let log = std::mem::take(&mut att.log);
            if tag == b'E' && m::error_is_fatal(msg) && self.retries < MAX_RETRIES {
                let code = msg::parse_error_fields(m::body(msg)).code;
                // Shutting down or gone before it read anything (a reply would come first):
                // nothing ran, the messages can go to another backend.
                if code.starts_with("57P") && !log.is_empty() {
                    self.retries += 1;
                    att.broken = true;
                    debug!(
                        code,
                        "backend connection was gone; sending the transaction to another"
                    );
                    self.retry = Some(log);
                    return Ok(());
                }
            }
            // Answers held back for this moment go first.
            self.flush_fakes();
        }
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        let head = att.queue.front();
        let internal = matches!(head, Some(Expect::Reply { internal: true, .. }));
        match tag {
            b'A' => self.cout.extend_from_slice(msg),
            b'N' => {
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
            b'S' => {
                let (k, v) = m::parameter_status(msg)?;
                let key = k.to_ascii_lowercase();
                if self.params.map.get(&key).is_none_or(|p| p.value != v) {
                    let mut p = (*self.params).clone();
                    p.reported(k, v);
                    self.params = self.pool.intern(p);
                }
                att.server.values = Arc::clone(&self.params);
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
            b'E' => {
                if m::error_is_fatal(msg) {
                    att.broken = true;
                }
                if !internal {
                    att.failed = true;
                }
                match att.queue.front() {
                    Some(Expect::Reply { kind, .. }) if kind.is_sync_point() => {
                        if internal {
                            warn!("a settings query the gateway sent failed");
                        } else {
                            self.cout.extend_from_slice(msg);
                        }
                    }
                    Some(Expect::Reply { .. }) => {
                        let Some(Expect::Reply { kind, created, .. }) = att.queue.pop_front()
                        else {
                            return Ok(());
                        };
                        undo(att, &mut self.statements, created);
                        // Errors of a statement the gateway re-prepared are the client's own.
                        if !internal || kind == Kind::Parse {
                            self.cout.extend_from_slice(msg);
                        }
                        // The backend skips everything up to Sync.
                        while let Some(front) = att.queue.front() {
                            if let Expect::Reply {
                                kind: Kind::Sync, ..
                            } = front
                            {
                                break;
                            }
                            if let Some(Expect::Reply { created, .. }) = att.queue.pop_front() {
                                undo(att, &mut self.statements, created);
                            }
                        }
                        // No Sync sent yet: what the client sends until then gets no reply.
                        att.skipping = att.queue.is_empty();
                    }
                    _ => self.cout.extend_from_slice(msg),
                }
            }
            b'Z' => {
                let status = m::ready_status(msg)?;
                match att.queue.pop_front() {
                    Some(Expect::Reply { kind, internal, .. }) if kind.is_sync_point() => {
                        att.status = status;
                        if !internal {
                            self.cout.extend_from_slice(msg);
                            if status == b'I' {
                                self.local.xacts += 1;
                            }
                        }
                    }
                    _ => {
                        return Err(GatewayError::BackendRejected(
                            "unexpected ReadyForQuery from the compute".into(),
                        ))
                    }
                }
                if status == b'I' && !internal {
                    self.retries = 0;
                    let failed = std::mem::take(&mut att.failed);
                    self.commit_pending(failed);
                }
                self.flush_fakes();
                self.maybe_release();
                return Ok(());
            }
            b'C' => {
                let ctag = m::command_tag(msg)?;
                match ctag {
                    "DISCARD ALL" | "DEALLOCATE ALL" => {
                        att.server.prepared.clear();
                        att.server.note_prepared();
                    }
                    "ROLLBACK" => att.failed = true,
                    _ => {}
                }
                complete(att, tag);
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
            _ => {
                if head.is_none() {
                    return Err(GatewayError::BackendRejected(format!(
                        "unexpected message {:?} from the compute",
                        tag as char
                    )));
                }
                complete(att, tag);
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
        }
        self.flush_fakes();
        Ok(())
    }

    /// Send the gateway's own answers that are next in line.
    fn flush_fakes(&mut self) {
        let Some(att) = &mut self.att else {
            return;
        };
        loop {
            match att.queue.front() {
                Some(Expect::Fake(_)) => {
                    if let Some(Expect::Fake(b)) = att.queue.pop_front() {
                        self.cout.extend_from_slice(&b);
                    }
                }
                Some(Expect::FakeDeallocate) => {
                    att.queue.pop_front();
                    m::command_complete(&mut self.cout, "DEALLOCATE");
                    msg::ready_for_query(&mut self.cout, att.status);
                }
                _ => return,
            }
        }
    }
}

impl Attached {
    fn new(server: Server) -> Attached {
        Attached {
            server,
            queue: VecDeque::new(),
            out: BytesMut::new(),
            unsynced: false,
            unnamed_here: false,
            status: b'I',
            since: coarse_us(),
            failed: false,
            fresh: true,
            log: Vec::new(),
            skipping: false,
            broken: false,
        }
    }
}

/// Make the attached backend's settings, now `have`, the client's `want` (one internal query
/// whose replies are swallowed) and record that it has them.
fn sync_settings(att: &mut Attached, want: &Arc<Params>, have: &Params) {
    let sql = want.sync_sql(have);
    if !sql.is_empty() {
        att.out.extend_from_slice(&m::build_query(&sql));
        att.queue.push_back(Expect::Reply {
            kind: Kind::Query,
            internal: true,
            created: None,
        });
    }
    att.server.values = Arc::clone(want);
}

/// Forward a client message and expect its reply (none while the backend skips to `Sync`).
fn forward(att: &mut Attached, msg: &[u8], kind: Kind) {
    att.out.extend_from_slice(msg);
    if kind == Kind::Sync {
        att.skipping = false;
    } else if att.skipping {
        return;
    }
    att.queue.push_back(Expect::Reply {
        kind,
        internal: false,
        created: None,
    });
}

/// Queue an answer of the gateway's own; sent at once when nothing is ahead of it. While the
/// backend skips to `Sync`, PostgreSQL would not answer either.
fn push_fake(att: &mut Attached, cout: &mut BytesMut, fake: Expect) {
    if att.skipping && !matches!(fake, Expect::FakeDeallocate) {
        return;
    }
    if att.fresh && matches!(fake, Expect::Fake(_)) {
        // Held back until the backend's first reply (or the client's Flush): if the backend
        // turns out to be gone, the attachment's messages can still go to another one.
        att.queue.push_back(fake);
        return;
    }
    if att.queue.is_empty() {
        // Answered to the client: the attachment's messages can no longer be sent again.
        att.fresh = false;
        att.log.clear();
        match fake {
            Expect::Fake(b) => cout.extend_from_slice(&b),
            Expect::FakeDeallocate => {
                m::command_complete(cout, "DEALLOCATE");
                msg::ready_for_query(cout, att.status);
            }
            Expect::Reply { .. } => att.queue.push_back(fake),
        }
    } else {
        att.queue.push_back(fake);
    }
}

/// The head reply is complete if `tag` ends it.
fn complete(att: &mut Attached, tag: u8) {
    if let Some(Expect::Reply { kind, .. }) = att.queue.front() {
        if kind.completed_by(tag) {
            att.queue.pop_front();
        }
    }
}

/// A `Parse` failed or was skipped: the statement does not exist.
fn undo(att: &mut Attached, statements: &mut HashMap<String, Arc<Stmt>>, created: Option<Created>) {
    let Some(c) = created else {
        return;
    };
    att.server.prepared.remove(&c.gw);
    att.server.note_prepared();
    if let Some(name) = c.client_name {
        if statements.get(&name).is_some_and(|s| s.gw == c.gw) {
            statements.remove(&name);
        }
    }
}

/// Make room in the backend's statement cache (closing the least recently used statement).
fn evict(att: &mut Attached, max: usize) {
    while att.server.prepared.len() >= max.max(1) {
        let Some(old) = att.server.prepared.pop_oldest() else {
            return;
        };
        att.out
            .extend_from_slice(&m::build_target(b'C', b'S', &old));
        att.queue.push_back(Expect::Reply {
            kind: Kind::Close,
            internal: true,
            created: None,
        });
    }
}

/// Read what the client sent, or register `cx` for the client's next readiness. On plain TCP a
/// read that did not fill the buffer drained the socket: its readiness is cleared at once (by
/// reporting `WouldBlock` to the reactor) instead of being learned from one more `recv` failing
/// with `EAGAIN` before every wait.
fn poll_read_client(
    client: &mut ClientStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(8 * 1024);
    }
    let tcp = match client {
        ClientStream::Plain(tcp) => tcp,
        ClientStream::Tls(_) => return tokio_util::io::poll_read_buf(Pin::new(client), cx, buf),
    };
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        let room = buf.capacity() - buf.len();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*tcp);
        let mut got = None;
        let r = tcp.try_io(tokio::io::Interest::READABLE, || {
            let n = crate::pool::socket::recv_into(fd, buf)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (r, got) {
            (_, Some(n)) => return Poll::Ready(Ok(n)),
            (Err(e), None) if e.kind() != std::io::ErrorKind::WouldBlock => {
                return Poll::Ready(Err(e))
            }
            _ => {}
        }
    }
}

/// Write what is queued for the backend without waiting.
fn flush_backend(att: &mut Attached) -> Result<(), GatewayError> {
    if let Err(e) = att.server.stream.write_now(&mut att.out) {
        att.broken = true;
        return Err(GatewayError::BackendUnavailable(e.to_string()));
    }
    if att.out.is_empty() && att.out.capacity() > 64 * 1024 {
        att.out = BytesMut::new();
    }
    Ok(())
}

/// The gateway's name of a statement: derived from its text and parameter types, so equal
/// statements of different clients share one preparation per backend.
fn gateway_name(query: &str, types: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((query.len() as u64).to_be_bytes());
    h.update(query.as_bytes());
    h.update(types);
    let d = h.finalize();
    let mut s = String::with_capacity(STMT_PREFIX.len() + 32);
    s.push_str(STMT_PREFIX);
    for b in &d[..16] {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Settle a logging-in client's parameters on `server`: apply its startup settings, learn the
/// values PostgreSQL reports for them. Returns the client's parameters.
async fn settle(
    pool: &Pool,
    mut server: Server,
    settings: &[(String, String, String)],
) -> Result<(Arc<Params>, Server), GatewayError> {
    let baseline = pool
        .baseline()
        .unwrap_or_else(|| Arc::clone(&server.values));
    let want = desired(pool, &baseline, settings, false).unwrap_or_else(|| (*baseline).clone());
    let sql = want.sync_sql(&server.values);
    if sql.is_empty() {
        for (key, _, given) in settings {
            if let Some(p) = want.map.get(key).filter(|p| p.reported) {
                pool.learn_canonical(key, given, &p.value);
            }
        }
        let params = pool.intern(want);
        server.values = Arc::clone(&params);
        return Ok((params, server));
    }
    server.info.set_state(ServerState::Login, 0);
    let result = server.simple_query(&sql).await;
    let (reported, error) = match result {
        Ok(x) => x,
        Err(e) => {
            pool.close(server);
            return Err(e);
        }
    };
    if let Some(err) = error {
        // The server still has its old values: the settings ran in one implicit transaction.
        let f = msg::parse_error_fields(m::body(&err));
        pool.release(server);
        return Err(GatewayError::ServerError {
            code: f.code,
            message: f.message,
        });
    }
    let mut params = want;
    for (k, v) in &reported {
        params.reported(k, v);
    }
    // What PostgreSQL made of each reported setting (also of those it already had, which it
    // does not report again): later logins with the same settings need no backend.
    for (key, _, given) in settings {
        if let Some(p) = params.map.get(key).filter(|p| p.reported) {
            pool.learn_canonical(key, given, &p.value);
        }
    }
    let params = pool.intern(params);
    server.values = Arc::clone(&params);
    server.info.set_state(ServerState::Active, 0);
    Ok((params, server))
}

/// A random cancel key for sessions the gateway answers itself (admin console).
pub(crate) fn random_key() -> (i32, i32) {
    (rand::rng().random_range(1..i32::MAX), rand::rng().random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_are_stable_and_distinct() {
        let a = gateway_name("select $1", &[0, 1, 0, 0, 0, 23]);
        assert_eq!(a, gateway_name("select $1", &[0, 1, 0, 0, 0, 23]));
        assert_ne!(a, gateway_name("select $1", &[0, 0]));
        assert_ne!(a, gateway_name("select $2", &[0, 1, 0, 0, 0, 23]));
        assert!(a.starts_with(STMT_PREFIX) && a.len() == STMT_PREFIX.len() + 32);
    }

    #[test]
    fn reply_kinds_complete_on_their_messages() {
        assert!(Kind::Parse.completed_by(b'1'));
        assert!(Kind::Describe.completed_by(b'n'));
        assert!(!Kind::Describe.completed_by(b't'));
        assert!(Kind::Execute.completed_by(b's'));
        assert!(!Kind::Execute.completed_by(b'G'));
        assert!(Kind::Query.is_sync_point() && !Kind::Bind.is_sync_point());
    }
}

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
//! What cannot move pins the client to its backend while the backend holds it: settings follow
//! the outcome of the statements that make them, pinned state is what the backend reports (see
//! [`state`] and [`crate::proto::sql`]). Responses to messages the gateway adds are swallowed, and responses the gateway answers itself
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
use state::{Pins, Track, Tracker};

mod client;
mod login;
mod replies;
mod state;

use replies::{Expect, Kind};

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
    client_name: Option<Vec<u8>>,
}

/// A statement a client prepared.
#[derive(Debug)]
struct Stmt {
    gw: Arc<str>,
    /// `Parse` message under the gateway's name (or the unnamed statement's own message).
    parse: Bytes,
    /// What executing it does to the session.
    analysis: Arc<sql::Analysis>,
    /// When the client last used it (a counter of the session's), for eviction.
    used: std::sync::atomic::AtomicU64,
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
    /// The client's named protocol-level statements (bounded: see [`client`]).
    statements: HashMap<Vec<u8>, Arc<Stmt>>,
    /// Bytes of the `Parse` messages in `statements`.
    statement_bytes: usize,
    /// A counter of statement uses, for eviction.
    uses: u64,
    unnamed: Option<Arc<Stmt>>,
    /// What the open transaction's portals run (named and unnamed), when it matters.
    portals: HashMap<Vec<u8>, Arc<sql::Analysis>>,
    /// State the client holds on its backend (it stays there while any is held).
    pins: Pins,
    /// Pin kinds counted in the pool's metrics for this client.
    counted_pins: BTreeSet<PinKind>,
    /// Settings in flight, pinned state, the state check.
    state: Tracker,
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

impl<'a> Session<'a> {
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
            // A client that may have left state behind (pinned, or a check not yet made): the
            // backend is reset before anyone else gets it, or closed if a reset cannot undo it.
            let needs_reset = self.pool.mode == PoolMode::Session
                || !self.pins.is_empty()
                || self.state.check_wanted;
            let server = att.server;
            if !clean || self.state.needs_close() {
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
    pub(super) fn maybe_release(&mut self) {
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
            fresh: true,
            log: Vec::new(),
            skipping: false,
            broken: false,
        }
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

/// A random cancel key for sessions the gateway answers itself (admin console).
pub(crate) fn random_key() -> (i32, i32) {
    (rand::rng().random_range(1..i32::MAX), rand::rng().random())
}

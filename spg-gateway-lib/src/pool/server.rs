//! One backend (compute) connection of a pool and what the gateway knows about its session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use spg_core::Generation;
use tokio::net::TcpStream;

use super::clock::coarse_us;
use super::params::Params;
use super::socket::BackendSocket;
use crate::cancel::CancelTarget;
use crate::proto::messages::{self, Piece, Splitter};
use crate::GatewayError;

/// Largest message the gateway reads whole from a compute outside a client's session.
const MAX_INTERNAL_REPLY: usize = 64 << 20;

/// State of a backend connection, for the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// In the pool, free.
    Idle = 0,
    /// Serving a client.
    Active = 1,
    /// Being reset or opened.
    Login = 2,
}

/// What the admin view shows about a backend connection.
#[derive(Debug)]
pub struct ServerInfo {
    /// Gateway-wide id.
    pub id: u64,
    /// Compute address.
    pub addr: SocketAddr,
    /// Backend process id.
    pub pid: i32,
    /// Compute generation.
    pub generation: Generation,
    /// When it was opened.
    pub connect_time: SystemTime,
    state: AtomicU8,
    client: AtomicU64,
    prepared: AtomicU64,
    /// When the state last changed ([`super::clock::coarse_us`]).
    since_us: AtomicU64,
}

impl ServerInfo {
    /// Current state.
    pub fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            1 => ServerState::Active,
            2 => ServerState::Login,
            _ => ServerState::Idle,
        }
    }

    /// Id of the client it serves (0: none).
    pub fn client(&self) -> u64 {
        self.client.load(Ordering::Relaxed)
    }

    /// Statements the gateway has prepared on it.
    pub fn prepared(&self) -> u64 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// Time since its state last changed.
    pub fn in_state_for(&self) -> Duration {
        let now = coarse_us();
        Duration::from_micros(now.saturating_sub(self.since_us.load(Ordering::Relaxed)))
    }

    pub(crate) fn set_state(&self, state: ServerState, client: u64) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.client.store(client, Ordering::Relaxed);
        self.since_us.store(coarse_us(), Ordering::Relaxed);
    }
}

/// Gateway-owned prepared statements on one backend, least recently used first out.
#[derive(Debug, Default)]
pub(crate) struct PreparedSet {
    names: HashMap<Arc<str>, u64>,
    tick: u64,
}

impl PreparedSet {
    pub(crate) fn contains(&mut self, name: &Arc<str>) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub(crate) fn insert(&mut self, name: Arc<str>) {
        self.tick += 1;
        self.names.insert(name, self.tick);
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub(crate) fn clear(&mut self) {
        self.names.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// The least recently used name, removed.
    pub(crate) fn pop_oldest(&mut self) -> Option<Arc<str>> {
        let oldest = self
            .names
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.names.remove(&oldest);
        Some(oldest)
    }
}

/// A backend connection, owned by the pool when idle and by one client session when active.
#[derive(Debug)]
pub struct Server {
    pub(crate) stream: BackendSocket,
    pub(crate) inbuf: BytesMut,
    pub(crate) splitter: Splitter,
    pub(crate) target: CancelTarget,
    pub(crate) values: Arc<Params>,
    pub(crate) prepared: PreparedSet,
    pub(crate) info: Arc<ServerInfo>,
    /// When it was last given back to the pool ([`super::clock::coarse_us`]).
    pub(crate) idle_since: u64,
}

/// A connection back in the pool for less than this is taken as alive without a probe.
const PROBE_AFTER: Duration = Duration::from_millis(500);

impl Server {
    pub(crate) fn new(
        id: u64,
        stream: TcpStream,
        target: CancelTarget,
        generation: Generation,
        values: Arc<Params>,
    ) -> std::io::Result<Server> {
        Ok(Server {
            stream: BackendSocket::new(stream)?,
            inbuf: BytesMut::new(),
            splitter: Splitter::default(),
            info: Arc::new(ServerInfo {
                id,
                addr: target.addr,
                pid: target.pid,
                generation,
                connect_time: SystemTime::now(),
                state: AtomicU8::new(ServerState::Login as u8),
                client: AtomicU64::new(0),
                prepared: AtomicU64::new(0),
                since_us: AtomicU64::new(coarse_us()),
            }),
            target,
            values,
            prepared: PreparedSet::default(),
            idle_since: coarse_us(),
        })
    }

    /// Whether the connection still looks usable: nothing arrived while it sat idle (a
    /// compute that shuts down sends an error and closes).
    pub(crate) fn looks_alive(&mut self) -> bool {
        if !self.inbuf.is_empty() {
            return false;
        }
        if coarse_us().saturating_sub(self.idle_since) < PROBE_AFTER.as_micros() as u64 {
            // Just given back by a client that used it: the socket was fine then, and unless
            // the reactor has seen it readable since (the backend closed it: its compute may
            // have been killed a moment ago), it still is.
            return !self.stream.seen_readable();
        }
        !self.stream.closed_or_talking()
    }

    pub(crate) fn note_prepared(&self) {
        self.info
            .prepared
            .store(self.prepared.len() as u64, Ordering::Relaxed);
    }

    /// Run `sql` as a simple query outside any client session and wait for its
    /// `ReadyForQuery`. Returns the `ParameterStatus` pairs seen and the first error (whole
    /// `ErrorResponse` message), if any.
    pub(crate) async fn simple_query(
        &mut self,
        sql: &[u8],
    ) -> Result<(Vec<(String, Vec<u8>)>, Option<Bytes>), GatewayError> {
        self.stream
            .write_all(&messages::build_query(sql))
            .await
            .map_err(lost)?;
        let mut reported = Vec::new();
        let mut error = None;
        loop {
            let piece =
                self.splitter
                    .next(&mut self.inbuf, MAX_INTERNAL_REPLY, usize::MAX, |_| false)?;
            let Some(piece) = piece else {
                let n = self.stream.read_buf(&mut self.inbuf).await.map_err(lost)?;
                if n == 0 {
                    return Err(GatewayError::BackendUnavailable(
                        "compute closed the connection".into(),
                    ));
                }
                continue;
            };
            let Piece::Whole(msg) = piece else {
                continue;
            };
            match msg[0] {
                b'S' => {
                    let (k, v) = messages::parameter_status(&msg)?;
                    reported.push((k.to_string(), v.to_vec()));
                }
                b'E' => {
                    if messages::error_is_fatal(&msg) {
                        return Err(GatewayError::BackendUnavailable(
                            "compute ended the connection".into(),
                        ));
                    }
                    error.get_or_insert(msg);
                }
                b'Z' => {
                    if messages::ready_status(&msg)? != b'I' {
                        return Err(GatewayError::BackendRejected(
                            "compute left a transaction open after a reset".into(),
                        ));
                    }
                    return Ok((reported, error));
                }
                _ => {}
            }
        }
    }
}

fn lost(e: std::io::Error) -> GatewayError {
    GatewayError::BackendUnavailable(e.to_string())
}

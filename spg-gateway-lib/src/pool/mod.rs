//! Backend connection pools, one per (database, role).
//!
//! A pool owns the backend connections of its database and role. A client session checks one
//! out for a transaction (transaction mode) or for its whole life (session mode) and gives it
//! back. When every connection is busy, clients queue (first come, first served) for at most
//! `query_wait_timeout` and then get SQLSTATE `57014`. While any connection is checked out, or
//! for `lease_linger` after the last one came back, the pool holds the database's lease; an idle
//! pool holds none, so the compute may stop. Connections that died while idle (the compute
//! stopped) are noticed at checkout and replaced, waking the database again.

pub(crate) mod clock;
pub mod params;
pub mod server;
pub mod socket;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use spg_core::scram::{ClientKey, ScramVerifier};
use spg_core::{DatabaseName, RoleName};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

use crate::cancel::CancelTarget;
use crate::leases::{LeaseGuard, LeaseKeeper};
use crate::metrics::GatewayMetrics;
use crate::proto::messages;
use crate::proto::sql::PinKind;
use crate::sessions::SessionRegistry;
use crate::wake::WakeCoalescer;
use crate::GatewayError;

pub use params::{Param, Params};
pub use server::{Server, ServerInfo, ServerState};

/// How long clients keep a backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// For one transaction at a time; idle clients hold nothing.
    #[default]
    Transaction,
    /// For the whole client session.
    Session,
}

impl PoolMode {
    /// `transaction` or `session`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

impl std::str::FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "transaction" => Ok(PoolMode::Transaction),
            "session" => Ok(PoolMode::Session),
            other => Err(format!(
                "unknown pool mode {other:?} (transaction or session)"
            )),
        }
    }
}

/// Pool settings of one database (unset fields take the defaults of [`PoolConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabasePool {
    /// Pool mode.
    pub mode: Option<PoolMode>,
    /// Backend connections per role.
    pub size: Option<usize>,
}

/// Pooling settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Mode of databases without their own (default: transaction).
    pub mode: PoolMode,
    /// Backend connections per (database, role) (default 20).
    pub size: usize,
    /// Per-database settings.
    pub databases: HashMap<String, DatabasePool>,
    /// How long a client waits for a free backend connection before `57014` (default 120 s).
    pub query_wait_timeout: Duration,
    /// Statements the gateway keeps prepared per backend connection (default 500).
    pub max_prepared_per_server: usize,
    /// How long a pool keeps the database's lease after its last transaction (default 1 s).
    pub lease_linger: Duration,
    /// Time a reset (`DISCARD ALL`) may take before the connection is closed instead (5 s).
    pub reset_timeout: Duration,
    /// Named protocol-level statements one client may hold (default 5 000); past it, the least
    /// recently used is forgotten (its name then reaches the backend unknown: `26000`).
    pub max_statements_per_client: usize,
    /// Bytes of statement text one client may hold (default 32 MiB), likewise.
    pub max_statement_bytes_per_client: usize,
    /// Ask the backend what session state it holds after every transaction, not only after
    /// those with a statement that may have changed it (default false; see `proto::sql`).
    pub check_state_always: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Transaction,
            size: 20,
            databases: HashMap::new(),
            query_wait_timeout: Duration::from_secs(120),
            max_prepared_per_server: 500,
            lease_linger: Duration::from_secs(1),
            reset_timeout: Duration::from_secs(5),
            max_statements_per_client: 5_000,
            max_statement_bytes_per_client: 32 << 20,
            check_state_always: false,
        }
    }
}

impl PoolConfig {
    /// Mode and size for `db`.
    pub fn for_database(&self, db: &str) -> (PoolMode, usize) {
        let d = self.databases.get(db);
        (
            d.and_then(|d| d.mode).unwrap_or(self.mode),
            d.and_then(|d| d.size).unwrap_or(self.size).max(1),
        )
    }
}

/// State of a client, for the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, holding nothing.
    Idle = 0,
    /// Holding a backend connection.
    Active = 1,
    /// Queued for a backend connection.
    Waiting = 2,
}

/// What the admin view shows about a client.
#[derive(Debug)]
pub struct ClientInfo {
    /// Gateway-wide id.
    pub id: u64,
    /// Client address.
    pub addr: Option<SocketAddr>,
    /// When it logged in.
    pub connect_time: SystemTime,
    /// `application_name` it gave.
    pub application_name: String,
    state: AtomicU8,
    server: AtomicU64,
    /// When the state last changed ([`clock::coarse_us`]).
    since_us: AtomicU64,
    pinned: Mutex<Option<String>>,
    /// Its session's `synchronous_commit` is `off` or `local`: its commits are acknowledged
    /// before a safekeeper quorum has them.
    async_commit: std::sync::atomic::AtomicBool,
}

impl ClientInfo {
    pub(crate) fn new(id: u64, addr: Option<SocketAddr>, application_name: String) -> Self {
        ClientInfo {
            id,
            addr,
            connect_time: SystemTime::now(),
            application_name,
            state: AtomicU8::new(0),
            server: AtomicU64::new(0),
            since_us: AtomicU64::new(clock::coarse_us()),
            pinned: Mutex::new(None),
            async_commit: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the session's `synchronous_commit` gives up the quorum (`off`, `local`).
    pub fn async_commit(&self) -> bool {
        self.async_commit.load(Ordering::Relaxed)
    }

    pub(crate) fn set_async_commit(&self, on: bool) {
        self.async_commit.store(on, Ordering::Relaxed);
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    /// The backend connection it holds (0: none).
    pub fn server(&self) -> u64 {
        self.server.load(Ordering::Relaxed)
    }

    /// Time in the current state.
    pub fn in_state_for(&self) -> Duration {
        let now = clock::coarse_us();
        Duration::from_micros(now.saturating_sub(self.since_us.load(Ordering::Relaxed)))
    }

    /// Why it is pinned to its backend, if it is.
    pub fn pinned(&self) -> Option<String> {
        self.pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_state(&self, state: ClientState, server: u64) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.server.store(server, Ordering::Relaxed);
        self.since_us.store(clock::coarse_us(), Ordering::Relaxed);
    }

    pub(crate) fn set_pinned(&self, reason: Option<String>) {
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }
}

/// A setting's name and a value a client gave for it.
type CanonKey = (String, Vec<u8>);

/// Counters of a pool (since the gateway started).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Transactions served (a `ReadyForQuery` back to idle). Sessions add their figures in
    /// batches (at least every half second while they work, and when they end).
    pub xacts: AtomicU64,
    /// Queries (`Query` and `Execute` messages).
    pub queries: AtomicU64,
    /// Bytes from clients.
    pub received: AtomicU64,
    /// Bytes to clients.
    pub sent: AtomicU64,
    /// Microseconds clients held backend connections.
    pub xact_us: AtomicU64,
    /// Microseconds clients waited in the queue for a backend connection.
    pub wait_us: AtomicU64,
    /// Checkouts (counted by sessions in batches).
    pub checkouts: AtomicU64,
    /// Checkouts that had to queue.
    pub queued: AtomicU64,
    /// Clients that gave up queueing (`57014`).
    pub queue_timeouts: AtomicU64,
    /// `Parse` messages sent to backends.
    pub prepares: AtomicU64,
    /// `Parse` messages answered from a backend's statement cache.
    pub prepare_hits: AtomicU64,
    /// `Parse` + `Sync` answered while every backend was busy (prepared on first use).
    pub prepares_deferred: AtomicU64,
    /// Client statements forgotten because a client held more than its bound.
    pub statements_evicted: AtomicU64,
    /// Session state checks sent to backends (after transactions that may have changed state
    /// only the backend can tell).
    pub state_checks: AtomicU64,
    /// Backend connections opened.
    pub servers_opened: AtomicU64,
    /// Backend connections closed (broken, unclean, or failed reset).
    pub servers_closed: AtomicU64,
}

/// Pinned clients of a pool, by reason.
#[derive(Debug, Default)]
pub struct PinCounts([AtomicUsize; PinKind::ALL.len()]);

impl PinCounts {
    pub(crate) fn add(&self, kind: PinKind, delta: isize) {
        let i = PinKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        if delta >= 0 {
            self.0[i].fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            self.0[i].fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Pinned clients per reason.
    pub fn get(&self, kind: PinKind) -> usize {
        let i = PinKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.0[i].load(Ordering::Relaxed)
    }
}

enum Grant {
    Server(Server),
    /// Room to open a new connection.
    Slot,
    /// Waited `query_wait_timeout` in the queue.
    Expired,
}

struct Waiter {
    since: Instant,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Server>,
    /// Open connections plus ones being opened.
    total: usize,
    waiters: VecDeque<Waiter>,
    servers: HashMap<u64, Arc<ServerInfo>>,
}

/// What pools share: waking, leases, settings, metrics.
pub(crate) struct PoolDeps {
    pub(crate) wakes: Arc<WakeCoalescer>,
    pub(crate) leases: Option<Arc<LeaseKeeper>>,
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) config: PoolConfig,
    pub(crate) connect_timeout: Duration,
    pub(crate) ids: AtomicU64,
}

/// The database's lease as one pool holds it: while connections are checked out, and for
/// `lease_linger` after.
#[derive(Default)]
struct PoolLease {
    active: AtomicUsize,
    epoch: AtomicU64,
    held: AtomicBool,
    guard: tokio::sync::Mutex<Option<LeaseGuard>>,
}

/// The pool of one (database, role).
pub struct Pool {
    /// Database.
    pub db: DatabaseName,
    /// Role.
    pub role: RoleName,
    /// Mode.
    pub mode: PoolMode,
    /// Backend connections at most.
    pub size: usize,
    /// Counters.
    pub stats: PoolStats,
    /// Pinned clients by reason.
    pub pins: PinCounts,
    deps: Arc<PoolDeps>,
    state: Mutex<PoolState>,
    creds: Mutex<Option<(ClientKey, ScramVerifier)>>,
    baseline: Mutex<Option<Arc<Params>>>,
    /// What PostgreSQL reported after a client's startup value: (name, given) → reported.
    canon: Mutex<HashMap<CanonKey, Vec<u8>>>,
    interned: Mutex<VecDeque<Arc<Params>>>,
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    lease: Arc<PoolLease>,
    frozen: watch::Receiver<bool>,
}

/// Distinct parameter sets a pool keeps shared (so equal sets compare by pointer).
const INTERNED: usize = 64;

impl Pool {
    fn new(
        deps: Arc<PoolDeps>,
        db: DatabaseName,
        role: RoleName,
        mode: PoolMode,
        size: usize,
    ) -> Pool {
        let frozen = deps.sessions.frozen_receiver(&db);
        Pool {
            db,
            role,
            mode,
            size,
            stats: PoolStats::default(),
            pins: PinCounts::default(),
            deps,
            state: Mutex::new(PoolState::default()),
            creds: Mutex::new(None),
            baseline: Mutex::new(None),
            canon: Mutex::new(HashMap::new()),
            interned: Mutex::new(VecDeque::new()),
            clients: Mutex::new(HashMap::new()),
            lease: Arc::new(PoolLease::default()),
            frozen,
        }
    }

    pub(crate) fn config(&self) -> &PoolConfig {
        &self.deps.config
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.deps.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The credentials new backend connections log in with (the latest client's key).
    pub(crate) fn set_credentials(&self, key: ClientKey, verifier: ScramVerifier) {
        *self.creds.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, verifier));
    }

    /// Share `p` with equal sets already in use.
    pub(crate) fn intern(&self, p: Params) -> Arc<Params> {
        let mut interned = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = interned.iter().find(|x| ***x == p) {
            return Arc::clone(found);
        }
        let a = Arc::new(p);
        if interned.len() >= INTERNED {
            interned.pop_front();
        }
        interned.push_back(Arc::clone(&a));
        a
    }

    /// Parameters of a fresh backend connection, once one was opened.
    pub(crate) fn baseline(&self) -> Option<Arc<Params>> {
        self.baseline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The value PostgreSQL reports for `name` after a client gave `given` (learned).
    pub(crate) fn canonical(&self, name: &str, given: &[u8]) -> Option<Vec<u8>> {
        self.canon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.to_string(), given.to_vec()))
            .cloned()
    }

    pub(crate) fn learn_canonical(&self, name: &str, given: &[u8], reported: &[u8]) {
        let mut c = self.canon.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() < 1024 {
            c.insert((name.to_string(), given.to_vec()), reported.to_vec());
        }
    }

    /// Whether a checkout now would not wait (a free connection, or room for one).
    pub(crate) fn has_free(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        !st.idle.is_empty() || st.total < self.size
    }

    /// Whether backend connections are open (so the compute was running a moment ago).
    pub(crate) fn has_servers(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total > 0
    }

    pub(crate) fn add_client(&self, info: Arc<ClientInfo>) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id, info);
    }

    pub(crate) fn remove_client(&self, id: u64) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// The pool's clients now.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The pool's backend connections now.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .servers
            .values()
            .cloned()
            .collect()
    }

    /// Figures of the admin view's `SHOW POOLS`.
    pub fn snapshot(&self) -> PoolSnapshot {
        let (waiting, maxwait, sv_total) = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (
                st.waiters.len(),
                st.waiters
                    .front()
                    .map(|w| w.since.elapsed())
                    .unwrap_or_default(),
                st.total,
            )
        };
        let mut s = PoolSnapshot {
            cl_waiting: waiting,
            maxwait,
            sv_total,
            ..PoolSnapshot::default()
        };
        for c in self.clients() {
            match c.state() {
                ClientState::Active => s.cl_active += 1,
                ClientState::Idle => s.cl_idle += 1,
                ClientState::Waiting => {}
            }
            if c.pinned().is_some() {
                s.cl_pinned += 1;
            }
        }
        for sv in self.servers() {
            match sv.state() {
                ServerState::Active => s.sv_active += 1,
                ServerState::Idle => s.sv_idle += 1,
                ServerState::Login => s.sv_login += 1,
            }
        }
        s
    }

    /// Count a checked-out connection against the lease; takes the lease if the pool holds
    /// none. Pair with [`Pool::lease_exit`].
    pub(crate) async fn lease_enter(&self, deadline: Instant) -> Result<(), GatewayError> {
        let l = &self.lease;
        if l.active.fetch_add(1, Ordering::SeqCst) == 0 {
            // Cancels a pending linger release (it checks the epoch).
            l.epoch.fetch_add(1, Ordering::SeqCst);
        }
        if l.held.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(keeper) = &self.deps.leases else {
            return Ok(());
        };
        // Boxed: taking the lease is rare, and its future is large; inline, it would be
        // copied into every client message's future.
        Box::pin(self.take_lease(keeper, deadline)).await
    }

    /// The slow path of [`Pool::lease_enter`]: the pool holds no lease yet.
    async fn take_lease(
        &self,
        keeper: &Arc<LeaseKeeper>,
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        let l = &self.lease;
        let mut g = l.guard.lock().await;
        if g.is_none() {
            let db = &self.db;
            let got = crate::connect::retry_until(
                deadline,
                db,
                || keeper.hold(db),
                |e| crate::connect::classify_core(&e, db),
            )
            .await;
            match got {
                Ok(guard) => *g = Some(guard),
                Err(e) => {
                    drop(g);
                    self.lease_exit();
                    return Err(e);
                }
            }
        }
        l.held.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Undo one [`Pool::lease_enter`]; the last one lets the lease go after the linger time.
    pub(crate) fn lease_exit(&self) {
        let l = &self.lease;
        if l.active.fetch_sub(1, Ordering::SeqCst) != 1 || self.deps.leases.is_none() {
            return;
        }
        let epoch = l.epoch.load(Ordering::SeqCst);
        let lease = Arc::clone(&self.lease);
        let linger = self.deps.config.lease_linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            if lease.active.load(Ordering::SeqCst) != 0
                || lease.epoch.load(Ordering::SeqCst) != epoch
            {
                return;
            }
            let mut g = lease.guard.lock().await;
            lease.held.store(false, Ordering::SeqCst);
            if lease.active.load(Ordering::SeqCst) != 0
                || lease.epoch.load(Ordering::SeqCst) != epoch
            {
                // A checkout came in meanwhile and counted on the lease being held.
                lease.held.store(g.is_some(), Ordering::SeqCst);
                return;
            }
            if let Some(guard) = g.take() {
                guard.release().await;
            }
        });
    }

    /// Whether the pool holds its lease now.
    pub fn holds_lease(&self) -> bool {
        self.lease.held.load(Ordering::SeqCst)
    }

    /// Check out a backend connection for `client`: a free one, a new one, or one another
    /// client gives back (queued). Waits while the database is frozen. The caller holds the
    /// lease ([`Pool::lease_enter`]).
    pub(crate) async fn checkout(
        &self,
        client: &ClientInfo,
        deadline: Instant,
    ) -> Result<Server, GatewayError> {
        if *self.frozen.borrow() {
            client.set_state(ClientState::Waiting, 0);
            let mut rx = self.frozen.clone();
            let _ = rx.wait_for(|f| !*f).await;
        }
        let grant = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = st.idle.pop() {
                Ok(Grant::Server(s))
            } else if st.total < self.size {
                st.total += 1;
                Ok(Grant::Slot)
            } else {
                let (tx, rx) = oneshot::channel();
                let since = Instant::now();
                st.waiters.push_back(Waiter { since, tx });
                Err((rx, since))
            }
        };
        let queued = grant.is_err();
        let grant = match grant {
            Ok(g) => g,
            Err((rx, started)) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                client.set_state(ClientState::Waiting, 0);
                // No timer per waiter: the pool's sweeper expires waiters that queued too long.
                let got = rx.await;
                let waited = started.elapsed();
                self.stats
                    .wait_us
                    .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                self.deps
                    .metrics
                    .pool_wait_seconds
                    .observe(waited.as_secs_f64());
                match got {
                    Ok(Grant::Expired) => {
                        self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(GatewayError::QueueTimeout(
                            self.deps.config.query_wait_timeout,
                        ));
                    }
                    Ok(g) => g,
                    Err(_) => return Err(GatewayError::ShuttingDown),
                }
            }
        };
        match grant {
            Grant::Server(mut s) => {
                if s.looks_alive() {
                    s.info.set_state(ServerState::Active, client.id);
                    return Ok(s);
                }
                debug!(
                    server = s.info.id,
                    "idle backend connection is gone; replacing it"
                );
                self.forget(&s);
                drop(s);
                self.probe_idle();
            }
            Grant::Slot | Grant::Expired => {}
        }
        // We own a slot: open a connection in it (a client that was handed the slot after
        // queueing past its deadline still gets a fair attempt).
        let deadline = if queued {
            deadline.max(Instant::now() + 2 * self.deps.connect_timeout)
        } else {
            deadline
        };
        // Boxed: opening a connection is rare next to checkouts, and its future is large.
        match Box::pin(self.open(deadline)).await {
            Ok(s) => {
                s.info.set_state(ServerState::Active, client.id);
                Ok(s)
            }
            Err(e) => {
                self.give_slot_back();
                Err(e)
            }
        }
    }

    /// Open a backend connection (waking the database if needed) in a slot already counted.
    async fn open(&self, deadline: Instant) -> Result<Server, GatewayError> {
        let creds = self.creds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some((key, verifier)) = creds else {
            return Err(GatewayError::Internal("pool without credentials".into()));
        };
        let started = Instant::now();
        let (conn, endpoint) = crate::connect::open(
            &self.deps.wakes,
            &self.deps.metrics,
            &self.db,
            &self.role,
            &key,
            &verifier,
            self.deps.connect_timeout,
            deadline,
        )
        .await?;
        self.deps
            .metrics
            .wake_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut values = Params::default();
        let mut rest = &conn.forward[..];
        while rest.len() >= messages::HEADER {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
            let Some(msg) = rest.get(..len) else { break };
            if msg[0] == b'S' {
                if let Ok((k, v)) = messages::parameter_status(msg) {
                    values.reported(k, v);
                }
            }
            rest = &rest[len..];
        }
        let values = self.intern(values);
        {
            let mut b = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
            if b.is_none() {
                *b = Some(Arc::clone(&values));
            }
        }
        let addr = conn.stream.peer_addr().unwrap_or(endpoint.addr);
        let (pid, secret) = conn.key.unwrap_or((0, 0));
        let server = Server::new(
            self.next_id(),
            conn.stream,
            CancelTarget { addr, pid, secret },
            endpoint.generation,
            values,
        )
        .map_err(|e| GatewayError::BackendUnavailable(e.to_string()))?;
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .servers
            .insert(server.info.id, Arc::clone(&server.info));
        self.stats.servers_opened.fetch_add(1, Ordering::Relaxed);
        debug!(server = server.info.id, pid, "backend connection opened");
        Ok(server)
    }

    /// Fail the clients that queued longer than `query_wait_timeout` (the queue is in arrival
    /// order: only its front can have expired).
    fn expire_waiters(&self) {
        let wait = self.deps.config.query_wait_timeout;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st
            .waiters
            .front()
            .is_some_and(|w| w.since.elapsed() >= wait)
        {
            if let Some(w) = st.waiters.pop_front() {
                let _ = w.tx.send(Grant::Expired);
            }
        }
    }

    /// Give a clean backend connection back: to the first waiting client, else to the pool.
    pub(crate) fn release(&self, mut server: Server) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = st.waiters.pop_front() {
            server.info.set_state(ServerState::Active, 0);
            match w.tx.send(Grant::Server(server)) {
                Ok(()) => return,
                Err(Grant::Server(s)) => server = s,
                Err(Grant::Slot | Grant::Expired) => return,
            }
        }
        server.info.set_state(ServerState::Idle, 0);
        server.idle_since = clock::coarse_us();
        st.idle.push(server);
    }

    /// Close the idle connections whose backend is gone (probed). Called when a connection was
    /// found dead: the others often went with it (a compute crash), and a client must not be
    /// handed one of them because it was given back a moment ago.
    pub(crate) fn probe_idle(&self) {
        let dead: Vec<Server> = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (dead, alive): (Vec<Server>, Vec<Server>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|s| !s.inbuf.is_empty() || s.stream.closed_or_talking());
            st.idle = alive;
            dead
        };
        if !dead.is_empty() {
            debug!(closed = dead.len(), "idle backend connections found gone");
        }
        for s in dead {
            self.close(s);
        }
    }

    /// Close a backend connection (broken, or in a state that cannot be reused).
    pub(crate) fn close(&self, server: Server) {
        self.forget(&server);
        drop(server);
        self.give_slot_back();
    }

    fn forget(&self, server: &Server) {
        self.stats.servers_closed.fetch_add(1, Ordering::Relaxed);
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .servers
            .remove(&server.info.id);
    }

    /// A slot is free again: hand it to the first waiter, else shrink.
    fn give_slot_back(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = st.waiters.pop_front() {
            if w.tx.send(Grant::Slot).is_ok() {
                return;
            }
        }
        st.total = st.total.saturating_sub(1);
    }

    /// Reset a connection a pinned or session-mode client used (`DISCARD ALL`), then give it
    /// back; close it if that fails.
    pub(crate) async fn reset_and_release(&self, mut server: Server) {
        server.info.set_state(ServerState::Login, 0);
        let reset = tokio::time::timeout(
            self.deps.config.reset_timeout,
            server.simple_query(b"DISCARD ALL"),
        )
        .await;
        match reset {
            Ok(Ok((_, None))) => {
                server.prepared.clear();
                server.note_prepared();
                if let Some(b) = self.baseline() {
                    server.values = b;
                }
                self.release(server);
            }
            other => {
                warn!(
                    server = server.info.id,
                    ?other,
                    "reset failed; closing the connection"
                );
                self.close(server);
            }
        }
    }
}

/// Expire queued clients of `pool` until it is gone.
async fn sweep(pool: std::sync::Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(p) => (p.deps.config.query_wait_timeout / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else {
            return;
        };
        p.expire_waiters();
    }
}

/// Figures of one pool, as `SHOW POOLS` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Clients holding a backend connection.
    pub cl_active: usize,
    /// Clients queued for one.
    pub cl_waiting: usize,
    /// Clients between transactions.
    pub cl_idle: usize,
    /// Clients pinned to their backend connection.
    pub cl_pinned: usize,
    /// Backend connections in use.
    pub sv_active: usize,
    /// Free backend connections.
    pub sv_idle: usize,
    /// Backend connections being opened or reset.
    pub sv_login: usize,
    /// Backend connections counted against the pool size.
    pub sv_total: usize,
    /// Longest current wait in the queue.
    pub maxwait: Duration,
}

/// Every pool of a gateway.
pub struct Pools {
    deps: Arc<PoolDeps>,
    pools: RwLock<HashMap<(DatabaseName, RoleName), Arc<Pool>>>,
}

impl Pools {
    pub(crate) fn new(deps: PoolDeps) -> Arc<Pools> {
        Arc::new(Pools {
            deps: Arc::new(deps),
            pools: RwLock::new(HashMap::new()),
        })
    }

    /// The pool of (`db`, `role`), created on first use.
    pub(crate) fn get(&self, db: &DatabaseName, role: &RoleName) -> Arc<Pool> {
        let key = (db.clone(), role.clone());
        if let Some(p) = self
            .pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Arc::clone(p);
        }
        let mut w = self.pools.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(w.entry(key).or_insert_with(|| {
            let (mode, size) = self.deps.config.for_database(db.as_str());
            let pool = Arc::new(Pool::new(
                Arc::clone(&self.deps),
                db.clone(),
                role.clone(),
                mode,
                size,
            ));
            tokio::spawn(sweep(Arc::downgrade(&pool)));
            pool
        }))
    }

    /// All pools, sorted by database and role.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self
            .pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.db.as_str(), a.role.as_str()).cmp(&(b.db.as_str(), b.role.as_str())));
        v
    }

    /// Sessions of `db` bound to their backend connection, with the reason: pinned clients in
    /// transaction mode, and in session mode every client holding a connection.
    pub fn pinned(&self, db: &DatabaseName) -> Vec<spg_core::PinnedSession> {
        let mut out = Vec::new();
        for p in self.all().iter().filter(|p| &p.db == db) {
            for c in p.clients() {
                let reason = match (p.mode, c.pinned()) {
                    (_, Some(r)) => r,
                    (PoolMode::Session, None) if c.server() != 0 => "session mode".to_owned(),
                    _ => continue,
                };
                out.push(spg_core::PinnedSession {
                    client: c.id,
                    role: p.role.to_string(),
                    reason,
                    for_ms: c.in_state_for().as_millis() as u64,
                });
            }
        }
        out.sort_by_key(|s| s.client);
        out
    }

    /// Make `generation` the compute of `db` for new work: idle backend connections to older
    /// generations are closed (their compute is being replaced). Returns how many were closed.
    pub fn retire_older(&self, db: &DatabaseName, generation: spg_core::Generation) -> usize {
        let mut closed = 0;
        for p in self.all().iter().filter(|p| &p.db == db) {
            let old: Vec<Server> = {
                let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
                let (old, keep): (Vec<Server>, Vec<Server>) = std::mem::take(&mut st.idle)
                    .into_iter()
                    .partition(|s| s.info.generation < generation);
                st.idle = keep;
                old
            };
            for s in old {
                closed += 1;
                p.close(s);
            }
        }
        closed
    }

    /// Clients of `db` queued for a backend connection now, and the microseconds clients of
    /// `db` have waited in such queues in total.
    pub fn queue(&self, db: &DatabaseName) -> (usize, u64) {
        self.all()
            .iter()
            .filter(|p| &p.db == db)
            .fold((0, 0), |(n, us), p| {
                let waiting = p
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .waiters
                    .len();
                (n + waiting, us + p.stats.wait_us.load(Ordering::Relaxed))
            })
    }

    /// Transactions in flight for `db`, over all roles: backend connections handed to clients,
    /// being reset, or being opened (clients held back by a freeze hold none).
    pub fn in_flight(&self, db: &DatabaseName) -> usize {
        self.all()
            .iter()
            .filter(|p| &p.db == db)
            .map(|p| {
                let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
                st.total.saturating_sub(st.idle.len())
            })
            .sum()
    }
}

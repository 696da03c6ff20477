//! The gateway server: accept loop, shared state, graceful shutdown, and the
//! [`spg_core::Gateway`] handle the control plane uses.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use spg_core::{DatabaseName, GatewaySessions, Lease};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::cancel::CancelRegistry;
use crate::deps::{AuthSource, Waker};
use crate::leases::LeaseKeeper;
use crate::metrics::GatewayMetrics;
use crate::password::{ClientAuth, PasswordCache};
use crate::pool::{PoolConfig, PoolDeps, Pools};
use crate::sessions::SessionRegistry;
use crate::tls::GatewayTls;
use crate::wake::WakeCoalescer;

/// Passwords the `password` method remembers at most (a few MB).
const PASSWORD_CACHE_ENTRIES: usize = 50_000;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// TLS; `None` leaves only plaintext (which must then be allowed).
    pub tls: Option<GatewayTls>,
    /// Accept plaintext sessions (default false: `SSLRequest` or direct TLS is required).
    pub allow_plaintext: bool,
    /// Client connections at once (default 10 000); beyond, clients get `53300`.
    pub max_client_conn: usize,
    /// Largest client message body relayed (default 1 GiB, PostgreSQL's own limit).
    pub max_message_bytes: usize,
    /// What a client may hold before it logs in, and what failed logins cost.
    pub limits: crate::limits::LoginLimits,
    /// Time to wake the database and connect to it, retries included (default 30 s).
    pub wake_timeout: Duration,
    /// Time one compute connection attempt may take (default 5 s).
    pub connect_timeout: Duration,
    /// On shutdown, how long open sessions may continue before they are closed (default 10 s).
    pub shutdown_grace: Duration,
    /// Name this gateway gives when taking leases.
    pub lease_holder: String,
    /// Connection pooling: modes, sizes, queue timeout.
    pub pool: PoolConfig,
    /// Name of the admin console's database (default `spg_admin`).
    pub admin_database: String,
    /// How clients authenticate (default SCRAM-SHA-256).
    pub client_auth: ClientAuth,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tls: None,
            allow_plaintext: false,
            max_client_conn: 10_000,
            max_message_bytes: 1 << 30,
            limits: crate::limits::LoginLimits::default(),
            wake_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            lease_holder: format!("gateway-{}", std::process::id()),
            pool: PoolConfig::default(),
            admin_database: "spg_admin".into(),
            client_auth: ClientAuth::Scram,
        }
    }
}

/// What the gateway is built on.
#[derive(Clone)]
pub struct GatewayDeps {
    /// Credentials.
    pub auth: Arc<dyn AuthSource>,
    /// Waking databases.
    pub waker: Arc<dyn Waker>,
    /// Leases that keep databases awake while sessions are open (`None`: no leases, e.g. for
    /// a fleet that never idles).
    pub lease: Option<Arc<dyn Lease>>,
}

/// Counts client connections.
#[derive(Default)]
pub(crate) struct ConnectionCounter(AtomicUsize);

pub(crate) struct ConnectionGuard<'a>(&'a ConnectionCounter);

impl ConnectionCounter {
    pub(crate) fn enter(&self) -> ConnectionGuard<'_> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(self)
    }

    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) auth: Arc<dyn AuthSource>,
    pub(crate) cancels: Arc<CancelRegistry>,
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) connections: ConnectionCounter,
    /// Sessions that logged in (what `max_client_conn` bounds).
    pub(crate) authenticated: ConnectionCounter,
    /// Pending logins and failed-login throttling.
    pub(crate) gate: Arc<crate::limits::Gate>,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) pools: Arc<Pools>,
    /// Ids of client sessions.
    pub(crate) client_ids: AtomicU64,
    /// Per-process secret for mock salts of unknown roles.
    pub(crate) mock_secret: [u8; 32],
    /// Passwords verified for the `password` method.
    pub(crate) passwords: PasswordCache,
}

impl Shared {
    /// Count a connection refused before it logged in.
    pub(crate) fn refused(&self, why: crate::limits::Refusal) {
        self.metrics
            .refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: why.as_str().to_string(),
            })
            .inc();
    }
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct GatewayServer {
    shared: Arc<Shared>,
}

impl GatewayServer {
    /// A gateway with `config` over `deps`, reporting to `metrics`.
    pub fn new(config: GatewayConfig, deps: GatewayDeps, metrics: GatewayMetrics) -> Self {
        let mut mock_secret = [0u8; 32];
        rand::rng().fill(&mut mock_secret[..]);
        let mut password_secret = [0u8; 32];
        rand::rng().fill(&mut password_secret[..]);
        let leases = deps
            .lease
            .map(|l| LeaseKeeper::new(l, config.lease_holder.clone()));
        let wakes = WakeCoalescer::new(deps.waker);
        let sessions = SessionRegistry::new();
        let pools = Pools::new(PoolDeps {
            wakes,
            leases,
            sessions: Arc::clone(&sessions),
            metrics: metrics.clone(),
            config: config.pool.clone(),
            connect_timeout: config.connect_timeout,
            ids: AtomicU64::new(1),
        });
        metrics.pools.set(&pools);
        GatewayServer {
            shared: Arc::new(Shared {
                auth: deps.auth,
                cancels: CancelRegistry::new(),
                sessions,
                pools,
                client_ids: AtomicU64::new(1),
                connections: ConnectionCounter::default(),
                authenticated: ConnectionCounter::default(),
                gate: crate::limits::Gate::new(config.limits.clone()),
                metrics,
                mock_secret,
                passwords: PasswordCache::new(password_secret, PASSWORD_CACHE_ENTRIES),
                config,
            }),
        }
    }

    /// Client connections open now (including ones still logging in).
    pub fn connections(&self) -> usize {
        self.shared.connections.count()
    }

    /// Client connections still logging in.
    pub fn pending_logins(&self) -> usize {
        self.shared.gate.pending()
    }

    /// The connection pools (what the admin console and metrics show).
    pub fn pools(&self) -> &Arc<Pools> {
        &self.shared.pools
    }

    /// Serve clients from `listener` until `shutdown` is cancelled; then stop accepting, let
    /// open sessions finish for up to `shutdown_grace`, close the rest and return.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        // Sessions are aborted through the set only when the grace period ends: nothing is
        // polled per session for it while they run.
        let mut tasks = JoinSet::new();
        let ids = AtomicU64::new(1);
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "gateway listening");
        }
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            // Reap sessions that ended.
            while tasks.try_join_next().is_some() {}
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.shared.metrics.connections.inc();
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let span = info_span!(
                "conn",
                id,
                %peer,
                db = tracing::field::Empty,
                user = tracing::field::Empty
            );
            let shared = Arc::clone(&self.shared);
            tasks.spawn(crate::session::serve_connection(shared, tcp, peer).instrument(span));
        }
        drop(listener);
        while tasks.try_join_next().is_some() {}
        if !tasks.is_empty() {
            info!(open = tasks.len(), "gateway draining sessions");
        }
        let drained = tokio::time::timeout(self.shared.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                open = tasks.len(),
                "closing sessions still open after the grace period"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        info!("gateway stopped");
    }
}

#[async_trait::async_trait]
impl spg_core::Gateway for GatewayServer {
    async fn sessions(&self, db: &DatabaseName) -> spg_core::CoreResult<GatewaySessions> {
        let mut s = self.shared.sessions.sessions(db);
        s.in_flight = self.shared.pools.in_flight(db);
        s.pinned = self.shared.pools.pinned(db);
        (s.waiting, s.wait_us) = self.shared.pools.queue(db);
        Ok(s)
    }

    async fn set_frozen(
        &self,
        db: &DatabaseName,
        freeze: Option<Duration>,
    ) -> spg_core::CoreResult<()> {
        match freeze {
            Some(bound) => info!(%db, ?bound, "new work frozen"),
            None => info!(%db, "new work unfrozen"),
        }
        self.shared.sessions.set_frozen(db, freeze);
        Ok(())
    }

    async fn switch_target(
        &self,
        db: &DatabaseName,
        endpoint: &spg_core::ComputeEndpoint,
    ) -> spg_core::CoreResult<()> {
        let closed = self.shared.pools.retire_older(db, endpoint.generation);
        info!(%db, generation = %endpoint.generation, addr = %endpoint.addr, closed,
              "switched to a new compute generation");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn shutdown_waits_the_grace_period_then_closes_what_is_left() {
        let gw = crate::testing::gateway_of_nobody(GatewayConfig {
            shutdown_grace: Duration::from_millis(300),
            ..GatewayConfig::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let gw = gw.clone();
            let stop = stop.clone();
            async move { gw.serve(listener, stop).await }
        });
        // A client that never finishes its startup: its session would wait 30 s for it.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        while gw.connections() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = std::time::Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("serve returns after the grace period")
            .unwrap();
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        // The session was closed: the client reads EOF (or a reset).
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut b))
            .await
            .expect("the connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(gw.connections(), 0);
    }
}

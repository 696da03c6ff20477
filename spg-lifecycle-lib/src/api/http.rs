//! Serving an axum router over HTTPS (rustls) or plain HTTP, with limits and graceful shutdown.
//!
//! Every server of the platform (control plane API, safekeeper, pageserver, gateway control
//! routes, metrics) runs here, under [`HttpLimits`]:
//!
//! - at most `max_connections` connections; beyond, new ones are closed at once;
//! - a TLS handshake must finish within `header_timeout`;
//! - a request's head must arrive within `header_timeout` of its first byte (a client
//!   trickling headers — slowloris — is closed), HTTP/1 and HTTP/2 alike;
//! - a connection with no request in progress and no bytes moving for `idle_timeout` is
//!   closed, and so is one whose request makes no progress (nothing read or written) for as
//!   long;
//! - request bodies are bounded by the routes' extractors (axum's default 2 MiB, raised only
//!   where a route needs it);
//! - wrong API keys are throttled per source address ([`key_check`]): growing delays, then
//!   `429 Too Many Requests` until the lockout ends.
//!
//! Refusals are counted in [`HttpStats`].

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use spg_core::throttle::{address_key, FailureThrottle, ThrottlePolicy, Verdict};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long in-flight requests may run on after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits of one HTTP server (see the module documentation).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// TLS handshake, and a request's head from its first byte (default 10 s).
    pub header_timeout: Duration,
    /// A connection without progress (default 60 s).
    pub idle_timeout: Duration,
    /// Connections at once (default 512).
    pub max_connections: usize,
    /// Throttling of wrong API keys per source address.
    pub key_throttle: ThrottlePolicy,
    /// What was refused.
    pub stats: Arc<HttpStats>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            key_throttle: ThrottlePolicy::default(),
            stats: Arc::default(),
        }
    }
}

/// Counters of an HTTP server's refusals.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections closed at once: `max_connections` were open.
    pub over_capacity: AtomicU64,
    /// Connections closed: TLS handshake or request head not done in time.
    pub header_timeouts: AtomicU64,
    /// Connections closed for making no progress.
    pub idle_closed: AtomicU64,
    /// Requests with a missing or wrong API key.
    pub key_failures: AtomicU64,
    /// Requests refused because their address is locked out after wrong keys.
    pub key_lockouts: AtomicU64,
}

impl HttpStats {
    /// Export under `<prefix>_http_*` in `registry`.
    pub fn register(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
        prefix: &str,
    ) {
        registry
            .sub_registry_with_prefix(prefix)
            .register_collector(Box::new(StatsCollector(Arc::clone(self))));
    }
}

#[derive(Debug)]
struct StatsCollector(Arc<HttpStats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        for (name, help, v) in [
            (
                "http_over_capacity",
                "HTTP connections closed because the server had its maximum open",
                &s.over_capacity,
            ),
            (
                "http_header_timeouts",
                "HTTP connections closed: TLS handshake or request head not done in time",
                &s.header_timeouts,
            ),
            (
                "http_idle_closed",
                "HTTP connections closed for making no progress",
                &s.idle_closed,
            ),
            (
                "http_key_failures",
                "HTTP requests with a missing or wrong API key",
                &s.key_failures,
            ),
            (
                "http_key_lockouts",
                "HTTP requests refused: their address is locked out after wrong API keys",
                &s.key_lockouts,
            ),
        ] {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            let e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            c.encode(e)?;
        }
        Ok(())
    }
}

/// The address a request came from (a request extension every server here sets).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The server's throttle of wrong API keys (a request extension every server here sets).
#[derive(Clone)]
pub struct KeyThrottle {
    throttle: Arc<FailureThrottle<IpAddr>>,
    stats: Arc<HttpStats>,
}

/// Check a request's API key with `accepts`, under the server's throttle: a locked-out address
/// gets `429` (with `Retry-After`) without the key being looked at; a wrong key gets `401`
/// after a delay that grows with the address's failures. The check is made at once; the
/// returned [`KeyCheck`] waits out the delay (`outcome`), holding nothing of the request.
pub fn key_check(req: &Request, accepts: impl FnOnce(&axum::http::HeaderMap) -> bool) -> KeyCheck {
    let ip = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| address_key(p.0.ip()));
    let throttle = req.extensions().get::<KeyThrottle>().cloned();
    let guarded = ip.zip(throttle);
    if let Some((ip, t)) = &guarded {
        if let Verdict::Locked(left) = t.throttle.check(ip) {
            t.stats.key_lockouts.fetch_add(1, Ordering::Relaxed);
            return KeyCheck::Locked(left);
        }
    }
    if accepts(req.headers()) {
        return KeyCheck::Accepted;
    }
    let delay = match &guarded {
        Some((ip, t)) => {
            t.stats.key_failures.fetch_add(1, Ordering::Relaxed);
            t.throttle.failure(ip)
        }
        None => Duration::ZERO,
    };
    KeyCheck::Wrong(delay)
}

/// The result of [`key_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is accepted.
    Accepted,
    /// Missing or wrong: answer `401` after this delay.
    Wrong(Duration),
    /// The address is locked out for this much longer: `429`.
    Locked(Duration),
}

impl KeyCheck {
    /// `Ok` for an accepted key; else the answer to send, after the throttle's delay.
    pub async fn outcome(self) -> Result<(), Response> {
        match self {
            KeyCheck::Accepted => Ok(()),
            KeyCheck::Locked(left) => Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, left.as_secs().max(1).to_string())],
                error_body(
                    "too_many_requests",
                    "too many requests with a wrong API key from this address; retry later",
                ),
            )
                .into_response()),
            KeyCheck::Wrong(delay) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Err((
                    StatusCode::UNAUTHORIZED,
                    error_body(
                        "unauthorized",
                        "missing or wrong API key (Authorization: Bearer <key>)",
                    ),
                )
                    .into_response())
            }
        }
    }
}

/// `router` with every route guarded by `key` (`Authorization: Bearer <key>`), under the
/// server's throttle of wrong keys ([`key_check`]).
pub fn guarded<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    key: super::ApiKey,
) -> Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(key, require_key))
}

async fn require_key(
    axum::extract::State(key): axum::extract::State<super::ApiKey>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(refused) = key_check(&req, |h| key.authorizes(h)).outcome().await {
        return refused;
    }
    next.run(req).await
}

/// The API's error body: `{"error": {"code", "message"}}`.
fn error_body(code: &str, message: &str) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "error": { "code": code, "message": message } }))
}

/// Serve `router` on `listener` over TLS under `limits` until `shutdown` is cancelled, then
/// drain. The TLS config should offer ALPN `h2` and `http/1.1`.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) {
    serve(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        router,
        shutdown,
        limits,
    )
    .await
}

/// Serve `router` on `listener` over plain HTTP (for `/metrics` listeners) under `limits`.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) {
    serve(listener, None, router, shutdown, limits).await
}

/// Serve `router` over plain HTTP on a Unix socket under `limits`: for peers on the same host
/// only, where the socket's directory decides who may connect (API keys are still checked).
/// Every peer counts as one source address, [`UNIX_PEER`], for the throttling of wrong keys.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) {
    serve(listener, None, router, shutdown, limits).await
}

/// The source address a Unix socket's peers are known by.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A listener [`serve`] accepts connections from.
trait Listener {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, SocketAddr)>;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, SocketAddr)> {
        let (tcp, peer) = self.accept().await?;
        let _ = tcp.set_nodelay(true);
        Ok((tcp, peer))
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, SocketAddr)> {
        Ok((self.accept().await?.0, UNIX_PEER))
    }
}

async fn serve<L: Listener>(
    listener: L,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) {
    let tasks = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    let keys = KeyThrottle {
        throttle: Arc::new(FailureThrottle::new(limits.key_throttle)),
        stats: Arc::clone(&limits.stats),
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept_one() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections.max(1) {
            open.fetch_sub(1, Ordering::AcqRel);
            limits.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection refused: the server is at its maximum");
            drop(tcp);
            continue;
        }
        let router = router.clone();
        let token = shutdown.clone();
        let acceptor = acceptor.clone();
        let limits = limits.clone();
        let keys = keys.clone();
        let open = Arc::clone(&open);
        tasks.spawn(async move {
            let conn = Conn {
                peer,
                router,
                shutdown: token,
                limits,
                keys,
            };
            match acceptor {
                Some(acceptor) => {
                    let timeout = conn.limits.header_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => conn.serve(tls).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            conn.limits
                                .stats
                                .header_timeouts
                                .fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
                None => conn.serve(tcp).await,
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT * 2, tasks.wait()).await;
}

struct Conn {
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
    keys: KeyThrottle,
}

/// What a connection's watchdog sees: when bytes last moved, when a request's head began
/// arriving (0: none pending), and the requests being answered. Times are milliseconds since
/// the connection began.
struct Activity {
    start: Instant,
    last_io: AtomicU64,
    head_since: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
}

impl Conn {
    async fn serve<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            start: Instant::now(),
            last_io: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let watched = Watched {
            inner: io,
            activity: Arc::clone(&activity),
        };
        let (peer, keys, tracked) = (self.peer, self.keys, Arc::clone(&activity));
        let svc = tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut().insert(keys.clone());
            let router = self.router.clone();
            let tracked = Arc::clone(&tracked);
            // The head is complete: the request is in progress until its response is ready.
            tracked.head_since.store(0, Ordering::Relaxed);
            tracked.in_flight.fetch_add(1, Ordering::AcqRel);
            async move {
                let _done = InFlight(tracked);
                tower::ServiceExt::oneshot(router, req).await
            }
        });
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(64)
            .max_header_list_size(64 * 1024);
        let conn = builder.serve_connection(TokioIo::new(watched), TowerToHyperService::new(svc));
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
            }
            why = watchdog(&activity, &self.limits) => {
                debug!(peer = %self.peer, why, "HTTP connection closed");
            }
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
            }
        }
    }
}

/// Marks a request done when its handling ends (the response is ready, or it was dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_io.store(self.0.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wait until the connection breaks a rule; returns which.
async fn watchdog(a: &Activity, limits: &HttpLimits) -> &'static str {
    let header = limits.header_timeout.as_millis() as u64;
    let idle = limits.idle_timeout.as_millis() as u64;
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let now = a.now();
        let head = a.head_since.load(Ordering::Relaxed);
        if head != 0 && now.saturating_sub(head) > header {
            limits.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return "request head not received in time";
        }
        if now.saturating_sub(a.last_io.load(Ordering::Relaxed)) > idle {
            limits.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            return if a.in_flight.load(Ordering::Acquire) > 0 {
                "request made no progress"
            } else {
                "idle"
            };
        }
    }
}

/// The connection's I/O, noting when bytes move and when a request's head starts arriving.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let a = &self.activity;
            let now = a.now();
            a.last_io.store(now, Ordering::Relaxed);
            if a.in_flight.load(Ordering::Acquire) == 0 {
                let _ = a
                    .head_since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.activity
                    .last_io
                    .store(self.activity.now(), Ordering::Relaxed);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTPS client builder that trusts exactly the certificates of `ca_pem` (a PEM bundle: one
/// CA, or several when the peers were issued by different CAs) and no built-in roots.
pub fn client_trusting(ca_pem: &[u8]) -> Result<reqwest::ClientBuilder, String> {
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the CA file holds no PEM certificate".into());
    }
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for c in certs {
        builder = builder.add_root_certificate(c);
    }
    Ok(builder)
}

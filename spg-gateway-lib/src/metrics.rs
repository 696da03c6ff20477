//! Prometheus metrics of the gateway.

use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::pool::Pools;
use crate::proto::sql::PinKind;

/// Label: SQLSTATE of an error sent to a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SqlstateLabel {
    /// SQLSTATE.
    pub sqlstate: String,
}

/// Label: why a connection was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: String,
}

/// The gateway's metrics.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// Accepted TCP connections.
    pub connections: Counter,
    /// Client sessions open now (logged in, pooled or not).
    pub active_sessions: Gauge,
    /// Failed logins.
    pub auth_failures: Counter,
    /// Connections refused or closed before logging in, by reason ([`crate::limits::Refusal`]).
    pub refused: Family<ReasonLabel, Counter>,
    /// `password` logins answered from the verification cache.
    pub password_cache_hits: Counter,
    /// Wakes the gateway asked for (merged wakes count once).
    pub wakes: Counter,
    /// Time from a successful login to a ready compute connection (wake + connect).
    pub wake_seconds: Histogram,
    /// Cancel requests received.
    pub cancel_requests: Counter,
    /// Errors sent to clients, by SQLSTATE.
    pub errors: Family<SqlstateLabel, Counter>,
    /// Time clients waited in the queue for a pooled backend connection (checkouts that had
    /// to queue; the others are counted in `spg_gateway_pool_checkouts`).
    pub pool_wait_seconds: Histogram,
    /// The pools whose figures are exported at scrape time.
    pub(crate) pools: PoolsSlot,
}

/// Where the metrics find the gateway's pools (set when the gateway is built).
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolsSlot(Arc<Mutex<Option<Weak<Pools>>>>);

impl PoolsSlot {
    pub(crate) fn set(&self, pools: &Arc<Pools>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(pools));
    }

    fn get(&self) -> Option<Arc<Pools>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

/// Exports every pool's clients, servers, pins and counters, read at scrape time.
#[derive(Debug)]
struct PoolCollector(PoolsSlot);

type Labels = Vec<(&'static str, String)>;
/// Name, help and labelled values of one exported family.
type Exported<V> = (&'static str, &'static str, Vec<(Labels, V)>);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pools) = self.0.get() else {
            return Ok(());
        };
        let pools = pools.all();
        let base = |p: &crate::pool::Pool| -> Labels {
            vec![("database", p.db.to_string()), ("user", p.role.to_string())]
        };
        let mut gauges: Vec<Exported<i64>> = vec![
            ("pool_clients", "Client sessions by state", vec![]),
            (
                "pool_pinned_clients",
                "Clients pinned to a backend, by reason",
                vec![],
            ),
            ("pool_servers", "Backend connections by state", vec![]),
            (
                "pool_async_commit_clients",
                "Clients whose session set synchronous_commit to off or local: their commits are acknowledged before the safekeeper quorum has them",
                vec![],
            ),
        ];
        let mut counters: Vec<Exported<u64>> = vec![
            ("pool_transactions", "Transactions served", vec![]),
            (
                "pool_queries",
                "Queries (Query and Execute messages)",
                vec![],
            ),
            ("pool_queued", "Checkouts that waited in the queue", vec![]),
            (
                "pool_queue_timeouts",
                "Clients that gave up waiting (57014)",
                vec![],
            ),
            ("pool_prepares", "Parse messages sent to backends", vec![]),
            (
                "pool_prepare_hits",
                "Parse messages answered from a backend's statement cache",
                vec![],
            ),
            (
                "pool_state_checks",
                "Session state checks sent to backends after transactions that may have changed it",
                vec![],
            ),
            (
                "pool_statements_evicted",
                "Client statements forgotten because a client held more than its bound",
                vec![],
            ),
        ];
        for p in &pools {
            let snap = p.snapshot();
            for (state, n) in [
                ("active", snap.cl_active),
                ("idle", snap.cl_idle),
                ("waiting", snap.cl_waiting),
            ] {
                let mut l = base(p);
                l.push(("state", state.into()));
                gauges[0].2.push((l, n as i64));
            }
            for k in PinKind::ALL {
                let mut l = base(p);
                l.push(("reason", k.as_str().into()));
                gauges[1].2.push((l, p.pins.get(k) as i64));
            }
            for (state, n) in [
                ("active", snap.sv_active),
                ("idle", snap.sv_idle),
                ("login", snap.sv_login),
            ] {
                let mut l = base(p);
                l.push(("state", state.into()));
                gauges[2].2.push((l, n as i64));
            }
            let async_commit = p.clients().iter().filter(|c| c.async_commit()).count();
            gauges[3].2.push((base(p), async_commit as i64));
            let s = &p.stats;
            let ld =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            for (i, v) in [
                ld(&s.xacts),
                ld(&s.queries),
                ld(&s.queued),
                ld(&s.queue_timeouts),
                ld(&s.prepares),
                ld(&s.prepare_hits),
                ld(&s.state_checks),
                ld(&s.statements_evicted),
            ]
            .into_iter()
            .enumerate()
            {
                counters[i].2.push((base(p), v));
            }
        }
        for (name, help, values) in &gauges {
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, v) in values {
                ConstGauge::new(*v).encode(fam.encode_family(labels)?)?;
            }
        }
        for (name, help, values) in &counters {
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, v) in values {
                ConstCounter::new(*v).encode(fam.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics {
            connections: Counter::default(),
            active_sessions: Gauge::default(),
            auth_failures: Counter::default(),
            refused: Family::default(),
            password_cache_hits: Counter::default(),
            wakes: Counter::default(),
            wake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            cancel_requests: Counter::default(),
            errors: Family::default(),
            pool_wait_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            pools: PoolsSlot::default(),
        }
    }
}

impl GatewayMetrics {
    /// Create and register under `spg_gateway_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = GatewayMetrics::default();
        let r = registry.sub_registry_with_prefix("spg_gateway");
        r.register(
            "connections",
            "Accepted TCP connections",
            m.connections.clone(),
        );
        r.register(
            "active_sessions",
            "Client sessions being relayed",
            m.active_sessions.clone(),
        );
        r.register("auth_failures", "Failed logins", m.auth_failures.clone());
        r.register(
            "refused",
            "Connections refused or closed before logging in, by reason",
            m.refused.clone(),
        );
        r.register(
            "password_cache_hits",
            "Logins by the password method verified from the cache (no key derivation)",
            m.password_cache_hits.clone(),
        );
        r.register(
            "wakes",
            "Wakes requested (merged wakes count once)",
            m.wakes.clone(),
        );
        r.register(
            "wake_seconds",
            "Time from login to a ready compute connection",
            m.wake_seconds.clone(),
        );
        r.register(
            "cancel_requests",
            "Cancel requests received",
            m.cancel_requests.clone(),
        );
        r.register(
            "errors",
            "Errors sent to clients by SQLSTATE",
            m.errors.clone(),
        );
        r.register(
            "pool_wait_seconds",
            "Time clients waited in the queue for a pooled backend connection",
            m.pool_wait_seconds.clone(),
        );
        r.register_collector(Box::new(PoolCollector(m.pools.clone())));
        m
    }
}

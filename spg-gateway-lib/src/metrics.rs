//! Prometheus metrics of the gateway.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label: SQLSTATE of an error sent to a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SqlstateLabel {
    /// SQLSTATE.
    pub sqlstate: String,
}

/// The gateway's metrics.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// Accepted TCP connections.
    pub connections: Counter,
    /// Client sessions being relayed now.
    pub active_sessions: Gauge,
    /// Failed logins.
    pub auth_failures: Counter,
    /// Wakes the gateway asked for (merged wakes count once).
    pub wakes: Counter,
    /// Time from a successful login to a ready compute connection (wake + connect).
    pub wake_seconds: Histogram,
    /// Cancel requests received.
    pub cancel_requests: Counter,
    /// Errors sent to clients, by SQLSTATE.
    pub errors: Family<SqlstateLabel, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics {
            connections: Counter::default(),
            active_sessions: Gauge::default(),
            auth_failures: Counter::default(),
            wakes: Counter::default(),
            wake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            cancel_requests: Counter::default(),
            errors: Family::default(),
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
        m
    }
}

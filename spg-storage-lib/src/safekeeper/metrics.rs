//! Prometheus metrics of a safekeeper.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use spg_core::{DatabaseName, Lsn};

use super::stream::StreamObserver;

/// Labels: safekeeper and database.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabel {
    /// The safekeeper's name.
    pub safekeeper: String,
    /// The database.
    pub db: String,
}

/// Labels: safekeeper.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkLabel {
    /// The safekeeper's name.
    pub safekeeper: String,
}

/// A safekeeper's metrics. Register them with [`SafekeeperMetrics::register`]; several nodes in
/// one process share a registry through the `safekeeper` label.
#[derive(Debug, Clone)]
pub struct SafekeeperMetrics {
    name: String,
    /// Durable WAL position, per database (bytes of LSN).
    pub flush_lsn: Family<DbLabel, Gauge>,
    /// The compute's end of WAL as last reported to this safekeeper (bytes of LSN).
    pub primary_lsn: Family<DbLabel, Gauge>,
    /// How far the durable WAL is behind the compute's last reported end of WAL (bytes).
    pub lag_bytes: Family<DbLabel, Gauge>,
    /// WAL not yet in object storage (bytes).
    pub offload_lag_bytes: Family<DbLabel, Gauge>,
    /// Duration of each WAL fsync.
    pub fsync_seconds: Family<SkLabel, Histogram>,
    /// Replication streams that ended in an error (then retried).
    pub stream_errors: Counter,
    /// Segments copied to object storage.
    pub segments_offloaded: Counter,
}

impl SafekeeperMetrics {
    /// Metrics of the node `name`.
    pub fn new(name: &str) -> Self {
        SafekeeperMetrics {
            name: name.to_owned(),
            flush_lsn: Family::default(),
            primary_lsn: Family::default(),
            lag_bytes: Family::default(),
            offload_lag_bytes: Family::default(),
            fsync_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            stream_errors: Counter::default(),
            segments_offloaded: Counter::default(),
        }
    }

    /// Register under `spg_safekeeper_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("spg_safekeeper");
        r.register(
            "flush_lsn",
            "Durable WAL position (LSN as bytes)",
            self.flush_lsn.clone(),
        );
        r.register(
            "primary_lsn",
            "The compute's end of WAL as last reported (LSN as bytes)",
            self.primary_lsn.clone(),
        );
        r.register(
            "lag_bytes",
            "Durable WAL behind the compute's end of WAL",
            self.lag_bytes.clone(),
        );
        r.register(
            "offload_lag_bytes",
            "Durable WAL not yet in object storage",
            self.offload_lag_bytes.clone(),
        );
        r.register(
            "fsync_seconds",
            "WAL fsync latency",
            self.fsync_seconds.clone(),
        );
        r.register(
            "stream_errors",
            "Replication streams ended by an error",
            self.stream_errors.clone(),
        );
        r.register(
            "segments_offloaded",
            "WAL segments copied to object storage",
            self.segments_offloaded.clone(),
        );
    }

    fn label(&self, db: &DatabaseName) -> DbLabel {
        DbLabel {
            safekeeper: self.name.clone(),
            db: db.to_string(),
        }
    }

    /// A stream observer feeding these metrics for `db`.
    pub fn observer(&self, db: &DatabaseName) -> DbObserver {
        let label = self.label(db);
        DbObserver {
            fsync_seconds: self
                .fsync_seconds
                .get_or_create(&SkLabel {
                    safekeeper: self.name.clone(),
                })
                .clone(),
            flush_lsn: self.flush_lsn.get_or_create(&label).clone(),
            primary_lsn: self.primary_lsn.get_or_create(&label).clone(),
            lag_bytes: self.lag_bytes.get_or_create(&label).clone(),
        }
    }

    /// Record how much of `db`'s WAL is not yet offloaded.
    pub fn set_offload_lag(&self, db: &DatabaseName, bytes: u64) {
        self.offload_lag_bytes
            .get_or_create(&self.label(db))
            .set(bytes as i64);
    }
}

/// [`StreamObserver`] of one database on one node. It holds the metric handles themselves, so
/// the stream's hot path takes no registry lock.
#[derive(Debug, Clone)]
pub struct DbObserver {
    fsync_seconds: Histogram,
    flush_lsn: Gauge,
    primary_lsn: Gauge,
    lag_bytes: Gauge,
}

impl DbObserver {
    fn update_lag(&self) {
        let lag = self.primary_lsn.get().saturating_sub(self.flush_lsn.get());
        self.lag_bytes.set(lag.max(0));
    }
}

impl StreamObserver for DbObserver {
    fn flushed(&self, took: Duration, _bytes: u64, flush: Lsn) {
        self.fsync_seconds.observe(took.as_secs_f64());
        self.flush_lsn.set(flush.0 as i64);
        self.update_lag();
    }

    fn primary_end(&self, end: Lsn) {
        self.primary_lsn.set(end.0 as i64);
        self.update_lag();
    }
}

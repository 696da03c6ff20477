//! Prometheus metrics of the control plane.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use spg_core::ComputeState;

/// Label: a lifecycle step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// Operation (`boot` or `stop`).
    pub op: String,
    /// Step name.
    pub step: String,
}

/// Label: why something happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason.
    pub reason: String,
}

/// Label: a state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// State name.
    pub state: String,
}

/// Label: a figure of one database's writer load.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabel {
    /// The database.
    pub database: String,
    /// `cpu_cores`, `active`, `waiting` or `hit_ratio`.
    pub signal: String,
}

/// Label: which way an autoscaler decision went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `up` or `down`.
    pub direction: String,
}

/// Label: a database and the writer profile it ran with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabel {
    /// The database.
    pub database: String,
    /// The writer profile.
    pub profile: String,
}

/// Label: a database.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabel {
    /// The database.
    pub database: String,
}

/// A counter of a fractional figure.
pub type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// A gauge of a fractional figure.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The control plane's metrics.
#[derive(Clone, Debug)]
pub struct ControlPlaneMetrics {
    /// Successful compute starts (wakes).
    pub wakes: Counter,
    /// Failed compute starts.
    pub boot_failures: Counter,
    /// Time from wake decision to a ready compute.
    pub boot_seconds: Histogram,
    /// Time of each lifecycle step.
    pub step_seconds: Family<StepLabel, Histogram>,
    /// Compute stops by reason (`idle`, `api`, `exit`, `shutdown`).
    pub stops: Family<ReasonLabel, Counter>,
    /// Databases per state.
    pub databases: Family<StateLabel, Gauge>,
    /// Leases held.
    pub leases: Gauge,
    /// Autoscale handoff phases entered (`preparing`, `frozen`, ..., `steady`, `aborted`).
    pub scale_phases: Family<StateLabel, Counter>,
    /// Sessions pinned to a writer that a handoff is waiting for.
    pub handoff_blocking_sessions: Gauge,
    /// The autoscaler's latest view of each writer's load (means over its up window).
    pub autoscale_load: Family<LoadLabel, FloatGauge>,
    /// Autoscaler decisions, by direction.
    pub autoscale_decisions: Family<DirectionLabel, Counter>,
    /// Usage: seconds each database's compute was ready, by writer profile (counted when a
    /// ready span ends or changes profile).
    pub compute_seconds: Family<UsageLabel, FloatCounter>,
    /// Usage: starts of each database that became ready.
    pub database_wakes: Family<DatabaseLabel, Counter>,
    /// Usage: bytes each database's write-backs uploaded to object storage.
    pub written_back_bytes: Family<DatabaseLabel, Counter>,
    /// Wakes the pre-wake hook refused.
    pub wake_refusals: Counter,
    /// Wakes that went on without a verdict of the pre-wake hook (timeout, error).
    pub pre_wake_unanswered: Counter,
    /// Usage: bytes durable storage keeps for each database (`kind`: `image`, `wal_archive`),
    /// as of its last stop or usage query.
    pub stored_bytes: Family<StoredLabel, Gauge>,
}

/// Label: a database and a kind of stored bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoredLabel {
    /// The database.
    pub database: String,
    /// `image` or `wal_archive`.
    pub kind: String,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        ControlPlaneMetrics {
            wakes: Counter::default(),
            boot_failures: Counter::default(),
            boot_seconds: Histogram::new(exponential_buckets(0.01, 1.6, 16)),
            step_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            stops: Family::default(),
            databases: Family::default(),
            leases: Gauge::default(),
            scale_phases: Family::default(),
            handoff_blocking_sessions: Gauge::default(),
            autoscale_load: Family::default(),
            autoscale_decisions: Family::default(),
            compute_seconds: Family::default(),
            database_wakes: Family::default(),
            written_back_bytes: Family::default(),
            wake_refusals: Counter::default(),
            pre_wake_unanswered: Counter::default(),
            stored_bytes: Family::default(),
        }
    }
}

impl ControlPlaneMetrics {
    /// Create and register under `spg_controlplane_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ControlPlaneMetrics::default();
        let r = registry.sub_registry_with_prefix("spg_controlplane");
        r.register("wakes", "Successful compute starts", m.wakes.clone());
        r.register(
            "boot_failures",
            "Failed compute starts",
            m.boot_failures.clone(),
        );
        r.register(
            "boot_seconds",
            "Time from wake decision to a ready compute",
            m.boot_seconds.clone(),
        );
        r.register(
            "step_seconds",
            "Time of each compute lifecycle step",
            m.step_seconds.clone(),
        );
        r.register("stops", "Compute stops by reason", m.stops.clone());
        r.register(
            "databases",
            "Databases per lifecycle state",
            m.databases.clone(),
        );
        r.register("leases", "Leases currently held", m.leases.clone());
        r.register(
            "scale_phases",
            "Autoscale handoff phases entered",
            m.scale_phases.clone(),
        );
        r.register(
            "handoff_blocking_sessions",
            "Sessions pinned to the writer that a handoff waits for",
            m.handoff_blocking_sessions.clone(),
        );
        r.register(
            "autoscale_load",
            "The autoscaler's view of each writer's load: mean cores used, active sessions, \
             clients waiting for a backend, and buffer hit ratio over its up window",
            m.autoscale_load.clone(),
        );
        r.register(
            "autoscale_decisions",
            "Profile changes the autoscaler decided, by direction",
            m.autoscale_decisions.clone(),
        );
        r.register(
            "compute_seconds",
            "Seconds each database's compute was ready, by writer profile",
            m.compute_seconds.clone(),
        );
        r.register(
            "database_wakes",
            "Starts of each database that became ready",
            m.database_wakes.clone(),
        );
        r.register(
            "written_back_bytes",
            "Bytes each database's write-backs uploaded to object storage",
            m.written_back_bytes.clone(),
        );
        r.register(
            "wake_refusals",
            "Wakes the pre-wake hook refused",
            m.wake_refusals.clone(),
        );
        r.register(
            "pre_wake_unanswered",
            "Wakes that went on without a verdict of the pre-wake hook",
            m.pre_wake_unanswered.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes durable storage keeps for each database (images, archived WAL), as of its \
             last stop or usage query",
            m.stored_bytes.clone(),
        );
        m
    }

    /// What durable storage keeps for `database`.
    pub(crate) fn stored(&self, database: &str, s: &spg_core::StoredBytes) {
        for (kind, bytes) in [
            ("image", s.image_bytes),
            ("wal_archive", s.wal_archive_bytes),
        ] {
            self.stored_bytes
                .get_or_create(&StoredLabel {
                    database: database.into(),
                    kind: kind.into(),
                })
                .set(bytes.min(i64::MAX as u64) as i64);
        }
    }

    /// A ready span of `database` on `profile` ended (or changed profile) after `ms`.
    pub(crate) fn ran(&self, database: &str, profile: &str, ms: u64) {
        if ms > 0 {
            self.compute_seconds
                .get_or_create(&UsageLabel {
                    database: database.into(),
                    profile: profile.into(),
                })
                .inc_by(ms as f64 / 1000.0);
        }
    }

    /// `database` became ready after a start.
    pub(crate) fn woke(&self, database: &str) {
        self.database_wakes
            .get_or_create(&DatabaseLabel {
                database: database.into(),
            })
            .inc();
    }

    pub(crate) fn scale_changed(&self, to: spg_core::ScaleState) {
        self.scale_phases
            .get_or_create(&StateLabel {
                state: to.as_str().into(),
            })
            .inc();
    }

    pub(crate) fn state_changed(&self, from: Option<ComputeState>, to: ComputeState) {
        if let Some(from) = from {
            self.databases
                .get_or_create(&StateLabel {
                    state: from.as_str().into(),
                })
                .dec();
        }
        self.databases
            .get_or_create(&StateLabel {
                state: to.as_str().into(),
            })
            .inc();
    }

    /// A database in state `state` is gone.
    pub(crate) fn state_removed(&self, state: ComputeState) {
        self.databases
            .get_or_create(&StateLabel {
                state: state.as_str().into(),
            })
            .dec();
    }

    pub(crate) fn record_steps(&self, op: &str, timings: &crate::timing::StepTimings) {
        for s in &timings.steps {
            self.step_seconds
                .get_or_create(&StepLabel {
                    op: op.into(),
                    step: s.step.clone(),
                })
                .observe(s.ms / 1000.0);
        }
    }
}

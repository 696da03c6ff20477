//! A scripted [`Provisioner`] and [`Gateway`], for tests of the control plane's state machines
//! (wake, idle stop, crash, handoff) without PostgreSQL: computes are records that "run" until
//! stopped or crashed by the test, standbys promote when told, and failures are scripted.
//!
//! ```
//! # async fn demo() -> Result<(), spg_lifecycle_lib::LifecycleError> {
//! use std::sync::Arc;
//! use spg_lifecycle_lib::store::SqliteStateStore;
//! use spg_lifecycle_lib::testing::fake::FakeProvisioner;
//! use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig};
//!
//! let computes = FakeProvisioner::new();
//! let cp = ControlPlane::start(
//!     ControlPlaneConfig::default(),
//!     Arc::new(SqliteStateStore::in_memory()?),
//!     Arc::new(computes.clone()),
//!     Default::default(),
//! )
//! .await?;
//! let db = spg_core::DatabaseName::new("shop").unwrap();
//! cp.create_database(db.clone()).await?;
//! let endpoint = cp.wake(&db).await?;
//! assert_eq!(computes.running(), vec![(db, endpoint.generation)]);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spg_core::{
    ComputeEndpoint, CoreResult, DatabaseName, Gateway, GatewaySessions, Generation, PinnedSession,
    ScaleProfile,
};
use tokio::sync::watch;

use crate::compute::load::ComputeLoad;
use crate::compute::process::{ExitInfo, ExitWatch};
use crate::compute::{ComputeSpec, RoleSpec, StopReport};
use crate::provisioner::{Compute, Provisioner, Standby};
use crate::timing::StepTimings;
use crate::LifecycleError;

/// What happened to a fake compute, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeEvent {
    /// A compute started (its generation, its profile's name).
    Started(DatabaseName, Generation, String),
    /// A start failed as scripted.
    StartFailed(DatabaseName, Generation),
    /// A compute was stopped (with a write-back).
    Stopped(DatabaseName, Generation),
    /// A compute was stopped for a handoff.
    StoppedForHandoff(DatabaseName, Generation),
    /// A compute that exited on its own was cleaned up.
    Abandoned(DatabaseName, Generation),
    /// A standby was prepared (its generation, its profile's name).
    StandbyStarted(DatabaseName, Generation, String),
    /// A standby was promoted.
    Promoted(DatabaseName, Generation),
    /// A standby was discarded.
    Discarded(DatabaseName, Generation),
}

#[derive(Default)]
struct State {
    events: Vec<FakeEvent>,
    /// Running computes and standbys: what ends them when the test crashes them.
    running: BTreeMap<(DatabaseName, Generation), watch::Sender<Option<ExitInfo>>>,
    fail_starts: usize,
    fail_standbys: usize,
    start_delay: Duration,
    cannot_flush: bool,
}

/// A [`Provisioner`] of scripted computes; see the module documentation. Cheap to clone: clones
/// share their computes.
#[derive(Clone, Default)]
pub struct FakeProvisioner {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvisioner")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl FakeProvisioner {
    /// A provisioner whose computes all start.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` starts fail.
    pub fn fail_next_starts(&self, n: usize) {
        self.lock().fail_starts = n;
    }

    /// The next `n` standbys fail to start.
    pub fn fail_next_standbys(&self, n: usize) {
        self.lock().fail_standbys = n;
    }

    /// Whether computes refuse [`Compute::flush_for_handoff`] (a handoff then stops the
    /// writer before it promotes the standby).
    pub fn cannot_flush(&self, yes: bool) {
        self.lock().cannot_flush = yes;
    }

    /// Every start takes `d` (a slow boot).
    pub fn start_delay(&self, d: Duration) {
        self.lock().start_delay = d;
    }

    /// What happened, in order.
    pub fn events(&self) -> Vec<FakeEvent> {
        self.lock().events.clone()
    }

    /// The computes and standbys running now.
    pub fn running(&self) -> Vec<(DatabaseName, Generation)> {
        self.lock().running.keys().cloned().collect()
    }

    /// Crash generation `g` of `db` (as a `kill -9` would): its exit watch fires. Returns
    /// whether it was running.
    pub fn crash(&self, db: &DatabaseName, g: Generation) -> bool {
        let Some(tx) = self.lock().running.remove(&(db.clone(), g)) else {
            return false;
        };
        let _ = tx.send(Some(ExitInfo {
            code: None,
            signal: Some(9),
            reason: Some("crashed by the test".into()),
        }));
        true
    }

    fn record(&self, e: FakeEvent) {
        self.lock().events.push(e);
    }

    fn launch(&self, spec: &ComputeSpec) -> (FakeCompute, watch::Receiver<Option<ExitInfo>>) {
        let (tx, rx) = watch::channel(None);
        self.lock()
            .running
            .insert((spec.database.clone(), spec.generation), tx);
        let compute = FakeCompute {
            owner: self.clone(),
            spec: spec.clone(),
            exit: rx.clone(),
            started: Instant::now(),
        };
        (compute, rx)
    }

    fn end(&self, db: &DatabaseName, g: Generation, e: FakeEvent) {
        self.lock().running.remove(&(db.clone(), g));
        self.record(e);
    }
}

fn failed(spec: &ComputeSpec, step: &'static str) -> LifecycleError {
    LifecycleError::Compute {
        database: spec.database.to_string(),
        generation: spec.generation.0,
        step,
        reason: "failed as the test scripted".into(),
    }
}

#[async_trait]
impl Provisioner for FakeProvisioner {
    async fn start(&self, spec: ComputeSpec) -> Result<Box<dyn Compute>, LifecycleError> {
        let delay = self.lock().start_delay;
        tokio::time::sleep(delay).await;
        let fail = {
            let mut st = self.lock();
            let fail = st.fail_starts > 0;
            st.fail_starts = st.fail_starts.saturating_sub(1);
            fail
        };
        if fail {
            self.record(FakeEvent::StartFailed(
                spec.database.clone(),
                spec.generation,
            ));
            return Err(failed(&spec, "start"));
        }
        let (compute, _) = self.launch(&spec);
        self.record(FakeEvent::Started(
            spec.database.clone(),
            spec.generation,
            spec.profile.name.clone(),
        ));
        Ok(Box::new(compute))
    }

    async fn cleanup_stale(&self, _db: &DatabaseName) -> Result<bool, LifecycleError> {
        Ok(false)
    }

    async fn start_standby(
        &self,
        spec: ComputeSpec,
        _primary: &ScaleProfile,
    ) -> Result<Box<dyn Standby>, LifecycleError> {
        let fail = {
            let mut st = self.lock();
            let fail = st.fail_standbys > 0;
            st.fail_standbys = st.fail_standbys.saturating_sub(1);
            fail
        };
        if fail {
            return Err(failed(&spec, "standby"));
        }
        let (compute, _) = self.launch(&spec);
        self.record(FakeEvent::StandbyStarted(
            spec.database.clone(),
            spec.generation,
            spec.profile.name.clone(),
        ));
        Ok(Box::new(FakeStandby { compute }))
    }
}

/// A compute of a [`FakeProvisioner`].
struct FakeCompute {
    owner: FakeProvisioner,
    spec: ComputeSpec,
    exit: watch::Receiver<Option<ExitInfo>>,
    started: Instant,
}

impl FakeCompute {
    fn stopped(&self) -> StopReport {
        StopReport {
            timings: StepTimings::default(),
            clean: true,
            image: None,
            error: None,
        }
    }
}

#[async_trait]
impl Compute for FakeCompute {
    fn endpoint(&self) -> ComputeEndpoint {
        // Nothing listens there: the control plane never connects to a compute itself.
        let port = 40_000 + (self.spec.generation.0 % 20_000) as u16;
        ComputeEndpoint {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            generation: self.spec.generation,
        }
    }

    fn boot_timings(&self) -> StepTimings {
        StepTimings::default()
    }

    fn exit_watch(&self) -> Option<ExitWatch> {
        Some(self.exit.clone())
    }

    async fn apply_roles(&self, _roles: &[RoleSpec]) -> Result<(), LifecycleError> {
        Ok(())
    }

    fn profile(&self) -> Option<ScaleProfile> {
        Some(self.spec.profile.clone())
    }

    async fn load(&self) -> Result<ComputeLoad, LifecycleError> {
        Ok(ComputeLoad {
            at: Instant::now(),
            cpu_us: self.started.elapsed().as_micros() as u64,
            active: 0,
            blocks_hit: 0,
            blocks_read: 0,
        })
    }

    async fn stop(self: Box<Self>) -> StopReport {
        let (db, g) = (self.spec.database.clone(), self.spec.generation);
        self.owner.end(&db, g, FakeEvent::Stopped(db.clone(), g));
        self.stopped()
    }

    async fn flush_for_handoff(&self) -> Result<(), LifecycleError> {
        if self.owner.lock().cannot_flush {
            return Err(failed(&self.spec, "flush"));
        }
        Ok(())
    }

    async fn stop_for_handoff(self: Box<Self>) -> StopReport {
        let (db, g) = (self.spec.database.clone(), self.spec.generation);
        self.owner
            .end(&db, g, FakeEvent::StoppedForHandoff(db.clone(), g));
        self.stopped()
    }

    async fn abandon(self: Box<Self>) {
        let (db, g) = (self.spec.database.clone(), self.spec.generation);
        self.owner.end(&db, g, FakeEvent::Abandoned(db.clone(), g));
    }
}

/// A standby of a [`FakeProvisioner`].
struct FakeStandby {
    compute: FakeCompute,
}

#[async_trait]
impl Standby for FakeStandby {
    fn generation(&self) -> Generation {
        self.compute.spec.generation
    }

    fn is_hot(&self) -> bool {
        true
    }

    fn is_running(&self) -> bool {
        self.compute.exit.borrow().is_none()
    }

    fn prepare_timings(&self) -> StepTimings {
        StepTimings::default()
    }

    async fn promote(self: Box<Self>) -> Result<Box<dyn Compute>, LifecycleError> {
        let (db, g) = (
            self.compute.spec.database.clone(),
            self.compute.spec.generation,
        );
        self.compute.owner.record(FakeEvent::Promoted(db, g));
        Ok(Box::new(self.compute))
    }

    async fn discard(self: Box<Self>) {
        let (db, g) = (
            self.compute.spec.database.clone(),
            self.compute.spec.generation,
        );
        self.compute
            .owner
            .end(&db, g, FakeEvent::Discarded(db.clone(), g));
    }
}

#[derive(Default)]
struct GatewayState {
    pinned: BTreeMap<DatabaseName, Vec<PinnedSession>>,
    in_flight: BTreeMap<DatabaseName, usize>,
    /// Until when new work is held back, per database.
    frozen: BTreeMap<DatabaseName, Instant>,
    targets: BTreeMap<DatabaseName, ComputeEndpoint>,
    freezes: usize,
}

/// A [`Gateway`] whose sessions the test sets: pinned sessions and transactions in flight
/// hold a handoff up exactly as a real gateway's would.
#[derive(Clone, Default)]
pub struct FakeGateway {
    state: Arc<Mutex<GatewayState>>,
}

impl std::fmt::Debug for FakeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGateway").finish_non_exhaustive()
    }
}

impl FakeGateway {
    /// A gateway with no sessions.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GatewayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions pinned to `db`'s writer (a temporary table, `LISTEN`, ...).
    pub fn set_pinned(&self, db: &DatabaseName, pinned: Vec<PinnedSession>) {
        self.lock().pinned.insert(db.clone(), pinned);
    }

    /// Transactions in flight on `db`.
    pub fn set_in_flight(&self, db: &DatabaseName, n: usize) {
        self.lock().in_flight.insert(db.clone(), n);
    }

    /// Whether new work for `db` is frozen now (a freeze ends with its bound).
    pub fn is_frozen(&self, db: &DatabaseName) -> bool {
        self.lock()
            .frozen
            .get(db)
            .is_some_and(|until| *until > Instant::now())
    }

    /// How many freezes it was asked for, over all databases.
    pub fn freezes(&self) -> usize {
        self.lock().freezes
    }

    /// Where it sends `db`'s new connections, once a handoff switched it.
    pub fn target(&self, db: &DatabaseName) -> Option<ComputeEndpoint> {
        self.lock().targets.get(db).copied()
    }
}

#[async_trait]
impl Gateway for FakeGateway {
    async fn sessions(&self, db: &DatabaseName) -> CoreResult<GatewaySessions> {
        let frozen = self.is_frozen(db);
        let st = self.lock();
        let pinned = st.pinned.get(db).cloned().unwrap_or_default();
        Ok(GatewaySessions {
            database: db.clone(),
            sessions: pinned.len(),
            frozen,
            in_flight: st.in_flight.get(db).copied().unwrap_or(0),
            pinned,
            waiting: 0,
            wait_us: 0,
        })
    }

    async fn set_frozen(&self, db: &DatabaseName, bound: Option<Duration>) -> CoreResult<()> {
        let mut st = self.lock();
        match bound {
            Some(bound) => {
                st.freezes += 1;
                st.frozen.insert(db.clone(), Instant::now() + bound);
            }
            None => {
                st.frozen.remove(db);
            }
        }
        Ok(())
    }

    async fn switch_target(&self, db: &DatabaseName, endpoint: &ComputeEndpoint) -> CoreResult<()> {
        self.lock().targets.insert(db.clone(), *endpoint);
        Ok(())
    }
}

//! The control plane's state machines (a database's actor and the handoff) over a scripted
//! provisioner and gateway (`testing::fake`): no PostgreSQL runs, so every path — failed
//! starts, crashes, idle stops, handoffs that complete, abort on pinned sessions or on a drain
//! timeout, a standby that fails — is checked quickly and exactly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spg_core::{
    AutoscaleHandoff, ComputeState, CoreError, DatabaseName, Generation, HandoffPlan,
    PinnedSession, ScaleState,
};
use spg_lifecycle_lib::store::SqliteStateStore;
use spg_lifecycle_lib::testing::fake::{FakeEvent, FakeGateway, FakeProvisioner};
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig, DatabaseStatus};

fn db() -> DatabaseName {
    DatabaseName::new("shop").unwrap()
}

struct Fixture {
    cp: ControlPlane,
    computes: FakeProvisioner,
    gateway: FakeGateway,
}

async fn fixture(tune: impl FnOnce(&mut ControlPlaneConfig)) -> Fixture {
    let mut cfg = ControlPlaneConfig {
        drain_timeout: Duration::from_millis(400),
        pinned_wait: Duration::from_millis(400),
        ..ControlPlaneConfig::default()
    };
    tune(&mut cfg);
    let computes = FakeProvisioner::new();
    let cp = ControlPlane::start(
        cfg,
        Arc::new(SqliteStateStore::in_memory().unwrap()),
        Arc::new(computes.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    let gateway = FakeGateway::new();
    cp.add_gateway(Arc::new(gateway.clone()));
    cp.create_database(db()).await.unwrap();
    Fixture {
        cp,
        computes,
        gateway,
    }
}

impl Fixture {
    /// A handoff to L2 that must fail: what it failed with.
    async fn failed_handoff(&self) -> String {
        let run = self.cp.start_handoff(&db(), "L2").await.unwrap();
        run.wait().await.unwrap_err().to_string()
    }

    async fn status(&self) -> DatabaseStatus {
        self.cp.database(&db()).await.unwrap()
    }

    /// Wait until the record satisfies `ok`.
    async fn until(&self, what: &str, ok: impl Fn(&DatabaseStatus) -> bool) -> DatabaseStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.status().await;
            if ok(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{what}: still {:?}", st.record);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn concurrent_wakes_start_one_compute_and_a_stop_ends_it() {
    let f = fixture(|_| {}).await;
    let d = db();
    let wakes: Vec<_> = (0..5).map(|_| f.cp.wake(&d)).collect();
    let endpoints = futures::future::join_all(wakes).await;
    let g = endpoints[0].as_ref().unwrap().generation;
    assert!(endpoints
        .iter()
        .all(|e| e.as_ref().unwrap().generation == g));
    assert_eq!(f.computes.running(), vec![(db(), g)]);
    let st = f.status().await;
    assert_eq!(st.record.state, ComputeState::Ready);
    assert_eq!(st.record.generation, g);

    f.cp.stop_database(&db()).await.unwrap();
    assert_eq!(f.status().await.record.state, ComputeState::Stopped);
    assert!(f.computes.running().is_empty());
    let next = f.cp.wake(&db()).await.unwrap().generation;
    assert!(
        next > g,
        "a new start is a new generation: {next} after {g}"
    );
    assert_eq!(
        f.computes.events(),
        vec![
            FakeEvent::Started(db(), g, "L1".into()),
            FakeEvent::Stopped(db(), g),
            FakeEvent::Started(db(), next, "L1".into()),
        ]
    );
}

#[tokio::test]
async fn a_failed_start_is_recorded_and_the_next_wake_starts_again() {
    let f = fixture(|_| {}).await;
    f.computes.fail_next_starts(1);
    let err = f.cp.wake(&db()).await.unwrap_err().to_string();
    assert!(err.contains("failed as the test scripted"), "{err}");
    let st = f.status().await;
    assert_ne!(st.record.state, ComputeState::Ready);
    assert!(st.record.last_error.is_some(), "{:?}", st.record);
    assert!(f.computes.running().is_empty());
    let ep = f.cp.wake(&db()).await.unwrap();
    assert_eq!(f.computes.running(), vec![(db(), ep.generation)]);
}

#[tokio::test]
async fn a_crash_is_noticed_and_the_next_wake_starts_a_new_generation() {
    let f = fixture(|_| {}).await;
    let g = f.cp.wake(&db()).await.unwrap().generation;
    assert!(f.computes.crash(&db(), g));
    let st = f
        .until("the crash is noticed", |s| {
            s.record.state == ComputeState::Stopped
        })
        .await;
    let why = st.record.last_error.unwrap_or_default();
    assert!(why.contains("crashed by the test"), "{why}");
    let next = f.cp.wake(&db()).await.unwrap().generation;
    assert!(next > g);
    assert!(f.computes.events().contains(&FakeEvent::Abandoned(db(), g)));
}

#[tokio::test]
async fn a_database_without_leases_stops_after_its_idle_timeout() {
    let f = fixture(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let g = f.cp.wake(&db()).await.unwrap().generation;
    f.until("the idle stop", |s| s.record.state == ComputeState::Stopped)
        .await;
    assert!(f.computes.events().contains(&FakeEvent::Stopped(db(), g)));
}

/// A handoff L1 -> L2; `flushed`: whether the writer could flush for it (then it stops while
/// the standby is elected and promoted, the election fencing it; otherwise it stops first).
async fn handoff_to_l2(flushed: bool) {
    let f = fixture(|_| {}).await;
    f.computes.cannot_flush(!flushed);
    let from = f.cp.wake(&db()).await.unwrap().generation;
    let run = f.cp.start_handoff(&db(), "L2").await.unwrap();
    assert!(run.to > from);
    let to = run.to;
    let report = run.wait().await.unwrap();
    assert_eq!((report.from, report.to), (from, to));
    let st = f.status().await;
    assert_eq!(st.record.generation, to);
    assert_eq!(st.profile, "L2");
    assert_eq!(st.record.scale_state, ScaleState::Steady);
    assert_eq!(f.computes.running(), vec![(db(), to)]);
    let events = f.computes.events();
    let at = |e: &FakeEvent| events.iter().position(|x| x == e).unwrap();
    let standby = at(&FakeEvent::StandbyStarted(db(), to, "L2".into()));
    let stopped = at(&FakeEvent::StoppedForHandoff(db(), from));
    let promoted = at(&FakeEvent::Promoted(db(), to));
    assert!(standby < stopped && standby < promoted, "{events:?}");
    if !flushed {
        assert!(stopped < promoted, "{events:?}");
    }
    // The gateway was frozen, pointed at the new writer, and let go.
    assert!(f.gateway.freezes() >= 1);
    assert!(!f.gateway.is_frozen(&db()));
    assert_eq!(f.gateway.target(&db()).map(|e| e.generation), Some(to));
}

#[tokio::test]
async fn a_handoff_moves_the_writer_to_a_standby_of_the_new_profile() {
    handoff_to_l2(true).await;
}

#[tokio::test]
async fn a_writer_that_cannot_flush_is_stopped_before_the_standby_promotes() {
    handoff_to_l2(false).await;
}

#[tokio::test]
async fn a_pinned_session_aborts_the_handoff_and_the_writer_runs_on() {
    let f = fixture(|_| {}).await;
    let from = f.cp.wake(&db()).await.unwrap().generation;
    f.gateway.set_pinned(
        &db(),
        vec![PinnedSession {
            client: 7,
            role: "app".into(),
            reason: "temp table".into(),
            for_ms: 0,
        }],
    );
    let run = f.cp.start_handoff(&db(), "L2").await.unwrap();
    let to = run.to;
    let err = run.wait().await.unwrap_err().to_string();
    assert!(err.contains("temp table"), "{err}");
    let st = f.status().await;
    assert_eq!(st.record.scale_state, ScaleState::Aborted);
    assert_eq!(st.record.generation, from, "the writer runs on");
    assert_eq!(st.profile, "L1");
    assert_eq!(f.computes.running(), vec![(db(), from)]);
    assert!(f
        .computes
        .events()
        .contains(&FakeEvent::Discarded(db(), to)));
    assert_eq!(f.gateway.freezes(), 0, "nothing was frozen while it waited");
}

#[tokio::test]
async fn work_that_does_not_drain_aborts_the_handoff_and_unfreezes() {
    let f = fixture(|_| {}).await;
    let from = f.cp.wake(&db()).await.unwrap().generation;
    f.gateway.set_in_flight(&db(), 1);
    let err = f.failed_handoff().await;
    assert!(err.contains("drain timed out"), "{err}");
    assert!(f.gateway.freezes() >= 1);
    assert!(!f.gateway.is_frozen(&db()), "unfrozen after the abort");
    let st = f.status().await;
    assert_eq!(st.record.scale_state, ScaleState::Aborted);
    assert_eq!(st.record.generation, from);
    assert_eq!(f.computes.running(), vec![(db(), from)]);
}

#[tokio::test]
async fn a_standby_that_fails_aborts_the_handoff() {
    let f = fixture(|_| {}).await;
    let from = f.cp.wake(&db()).await.unwrap().generation;
    f.computes.fail_next_standbys(1);
    let err = f.failed_handoff().await;
    assert!(err.contains("standby did not start"), "{err}");
    let st = f.status().await;
    assert_eq!(st.record.scale_state, ScaleState::Aborted);
    assert_eq!(st.record.generation, from);
    // The next handoff goes through.
    f.cp.start_handoff(&db(), "L2")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(f.status().await.profile, "L2");
}

#[tokio::test]
async fn handoffs_are_refused_at_once_when_they_cannot_start() {
    let f = fixture(|_| {}).await;
    // Not running.
    assert!(f.cp.start_handoff(&db(), "L2").await.is_err());
    let from = f.cp.wake(&db()).await.unwrap().generation;
    // Unknown profile.
    assert!(f.cp.start_handoff(&db(), "L9").await.is_err());
    // A plan from a generation that no longer runs.
    let mut plan: HandoffPlan = f.cp.handoff_plan(&db(), "L2", "test".into()).await.unwrap();
    plan.from = Generation(from.0 + 100);
    match AutoscaleHandoff::begin_handoff(&f.cp, plan).await {
        Err(CoreError::StaleGeneration { offered, current }) => {
            assert_eq!((offered, current), (from.0 + 100, from.0))
        }
        other => panic!("expected StaleGeneration, got {other:?}"),
    }
    // One at a time.
    f.gateway.set_pinned(
        &db(),
        vec![PinnedSession {
            client: 1,
            role: "app".into(),
            reason: "listen".into(),
            for_ms: 0,
        }],
    );
    let first = f.cp.start_handoff(&db(), "L2").await.unwrap();
    let second =
        f.cp.start_handoff(&db(), "L2")
            .await
            .unwrap_err()
            .to_string();
    assert!(second.contains("in progress"), "{second}");
    assert!(first.wait().await.is_err());
    assert!(f
        .computes
        .events()
        .iter()
        .all(|e| !matches!(e, FakeEvent::Promoted(..))));
}

#[tokio::test]
async fn the_fake_gateway_keeps_the_gateway_contract() {
    spg_core::testing::gateway_conformance::run_all(
        &FakeGateway::new(),
        &db(),
        &DatabaseName::new("other").unwrap(),
    )
    .await;
}

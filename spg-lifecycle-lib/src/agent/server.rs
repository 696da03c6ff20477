//! The agent's side of the API: one [`AgentService`] per `spg-compute` process, holding at most
//! one generation (a writer, or a standby until it is promoted).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use spg_core::PageStore;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    AgentError, AgentStatus, CatchUpRequest, CaughtUp, LoadSample, Phase, RolesRequest,
    StandbyRequest, StandbyStarted, StartRequest, Started,
};
use crate::api::ApiKey;
use crate::compute::process::ExitWatch;
use crate::compute::standby::StandbyCompute;
use crate::compute::wal::WalSetup;
use crate::compute::{AgentConfig, ComputeSpec, RunningCompute, StopReport};
use crate::LifecycleError;

/// The longest a status request waits for an exit.
const MAX_STATUS_WAIT: Duration = Duration::from_secs(30);

/// What the agent holds.
enum Slot {
    Empty,
    Running(RunningCompute),
    Standby(StandbyCompute),
    Done,
}

struct Inner {
    cfg: Arc<AgentConfig>,
    page_store: Arc<dyn PageStore>,
    wal: Option<WalSetup>,
    slot: Mutex<Slot>,
    status: watch::Sender<AgentStatus>,
    /// Turns a compute's exit into [`Phase::Exited`]; aborted before a requested stop.
    watcher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// One agent: runs the generation the control plane asks for, on the page store and WAL quorum
/// it was built with. Cheap to clone.
#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

impl AgentService {
    /// An idle agent running computes with `cfg` on data directories from `page_store`, in the
    /// WAL quorum `wal` (without one, computes run on their local WAL only and standbys cannot
    /// be prepared).
    pub fn new(cfg: AgentConfig, page_store: Arc<dyn PageStore>, wal: Option<WalSetup>) -> Self {
        let (status, _) = watch::channel(AgentStatus {
            phase: Phase::Idle,
            generation: None,
            exit: None,
        });
        AgentService {
            inner: Arc::new(Inner {
                cfg: Arc::new(cfg),
                page_store,
                wal,
                slot: Mutex::new(Slot::Empty),
                status,
                watcher: std::sync::Mutex::new(None),
            }),
        }
    }

    /// What it is doing now.
    pub fn status(&self) -> AgentStatus {
        self.inner.status.borrow().clone()
    }

    /// The API: `/v1/...` guarded by `key`, `/healthz` and `/readyz` open.
    pub fn router(&self, key: ApiKey) -> Router {
        let v1 = Router::new()
            .route("/v1/start", post(start))
            .route("/v1/standby", post(standby))
            .route("/v1/catch-up", post(catch_up))
            .route("/v1/promote", post(promote))
            .route("/v1/roles", post(roles))
            .route("/v1/load", get(load))
            .route("/v1/flush", post(flush))
            .route("/v1/stop", post(stop))
            .route("/v1/stop-for-handoff", post(stop_for_handoff))
            .route("/v1/abandon", post(abandon))
            .route("/v1/status", get(status));
        crate::api::http::guarded(v1, key)
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .with_state(self.clone())
    }

    /// Stop whatever still runs without a write-back (the agent is told to go, or its control
    /// plane is gone): PostgreSQL killed, the safekeepers no longer following, the checkout
    /// released (its mount unmounted).
    pub async fn shutdown(&self) {
        self.stop_watching();
        let slot = std::mem::replace(&mut *self.inner.slot.lock().await, Slot::Done);
        match slot {
            Slot::Running(c) => {
                warn!(generation = %c.endpoint().generation, "agent going away: abandoning the compute");
                c.abandon().await;
            }
            Slot::Standby(mut s) => {
                warn!(generation = %s.generation(), "agent going away: discarding the standby");
                s.discard().await;
            }
            Slot::Empty | Slot::Done => {}
        }
        self.set_phase(Phase::Done);
    }

    fn set_phase(&self, phase: Phase) {
        self.inner.status.send_modify(|s| s.phase = phase);
    }

    fn watch_exit(&self, exit: Option<ExitWatch>) {
        let Some(mut exit) = exit else { return };
        let me = self.clone();
        let task = tokio::spawn(async move {
            let info = loop {
                if let Some(info) = exit.borrow_and_update().clone() {
                    break Some(info);
                }
                if exit.changed().await.is_err() {
                    break None;
                }
            };
            warn!(exit = ?info, "the compute exited on its own");
            me.inner.status.send_modify(|s| {
                s.phase = Phase::Exited;
                s.exit = info;
            });
        });
        if let Some(old) = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    fn stop_watching(&self) {
        if let Some(t) = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }

    /// Take the writer out of the slot for a stop.
    async fn take_running(&self, step: &'static str) -> Result<RunningCompute, Refusal> {
        let mut slot = self.inner.slot.lock().await;
        match std::mem::replace(&mut *slot, Slot::Done) {
            Slot::Running(c) => {
                self.stop_watching();
                Ok(c)
            }
            other => {
                *slot = other;
                Err(Refusal::state(step, "no compute runs here"))
            }
        }
    }
}

/// An error answer.
struct Refusal {
    status: StatusCode,
    body: AgentError,
}

impl Refusal {
    fn state(step: &str, reason: &str) -> Refusal {
        Refusal {
            status: StatusCode::CONFLICT,
            body: AgentError {
                step: step.into(),
                reason: reason.into(),
                retryable: false,
            },
        }
    }
}

impl From<LifecycleError> for Refusal {
    fn from(e: LifecycleError) -> Self {
        let retryable = e.is_retryable();
        let (status, step, reason) = match e {
            LifecycleError::Compute { step, reason, .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, step.to_string(), reason)
            }
            LifecycleError::Invalid { .. } => {
                (StatusCode::BAD_REQUEST, "request".into(), e.to_string())
            }
            LifecycleError::WalQuorum(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "elect".into(),
                e.to_string(),
            ),
            LifecycleError::PageStore(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "checkout".into(),
                e.to_string(),
            ),
            other => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "agent".into(),
                other.to_string(),
            ),
        };
        Refusal {
            status,
            body: AgentError {
                step,
                reason,
                retryable,
            },
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

fn started(c: &RunningCompute, timings: crate::timing::StepTimings) -> Started {
    Started {
        port: c.endpoint().addr.port(),
        profile: c.profile().clone(),
        timings,
    }
}

/// Claim the empty `slot` for `spec` (one generation per agent).
fn claim(agent: &AgentService, slot: &Slot, spec: &ComputeSpec) -> Result<(), Refusal> {
    if !matches!(*slot, Slot::Empty) {
        return Err(Refusal::state(
            "start",
            "this agent was asked to run a generation already",
        ));
    }
    agent.inner.status.send_modify(|s| {
        s.phase = Phase::Starting;
        s.generation = Some(spec.generation.0);
    });
    Ok(())
}

async fn start(
    State(agent): State<AgentService>,
    Json(req): Json<StartRequest>,
) -> Result<Json<Started>, Refusal> {
    let spec = ComputeSpec::try_from(req.spec)?;
    let mut slot = agent.inner.slot.lock().await;
    claim(&agent, &slot, &spec)?;
    let i = &agent.inner;
    info!(db = %spec.database, generation = %spec.generation, "starting");
    let r = RunningCompute::start(
        Arc::clone(&i.cfg),
        Arc::clone(&i.page_store),
        i.wal.clone(),
        spec,
    )
    .await
    .map(|c| {
        (
            started(&c, c.boot_timings().clone()),
            c.exit_watch(),
            Slot::Running(c),
        )
    });
    settle(&agent, &mut slot, r, Phase::Running).map(Json)
}

/// Put what a start made into `slot` (watching it for an exit) and answer with `answer`; after a
/// failed start the agent has nothing left to do.
fn settle<A>(
    agent: &AgentService,
    slot: &mut Slot,
    r: Result<(A, Option<ExitWatch>, Slot), LifecycleError>,
    phase: Phase,
) -> Result<A, Refusal> {
    match r {
        Ok((answer, exit, made)) => {
            agent.watch_exit(exit);
            *slot = made;
            agent.set_phase(phase);
            Ok(answer)
        }
        Err(e) => {
            *slot = Slot::Done;
            agent.set_phase(Phase::Done);
            Err(e.into())
        }
    }
}

async fn standby(
    State(agent): State<AgentService>,
    Json(req): Json<StandbyRequest>,
) -> Result<Json<StandbyStarted>, Refusal> {
    let spec = ComputeSpec::try_from(req.spec)?;
    let Some(wal) = agent.inner.wal.clone() else {
        return Err(Refusal::state(
            "standby",
            "standbys follow the WAL quorum, and this agent runs without one",
        ));
    };
    let mut slot = agent.inner.slot.lock().await;
    claim(&agent, &slot, &spec)?;
    let i = &agent.inner;
    let r = StandbyCompute::start(
        Arc::clone(&i.cfg),
        Arc::clone(&i.page_store),
        wal,
        spec,
        &req.primary,
    )
    .await
    .map(|s| {
        let answer = StandbyStarted {
            hot: s.is_hot(),
            timings: s.prepare_timings().clone(),
        };
        (answer, s.exit_watch(), Slot::Standby(s))
    });
    settle(&agent, &mut slot, r, Phase::Standby).map(Json)
}

async fn catch_up(
    State(agent): State<AgentService>,
    Json(req): Json<CatchUpRequest>,
) -> Result<Json<CaughtUp>, Refusal> {
    let slot = agent.inner.slot.lock().await;
    let Slot::Standby(s) = &*slot else {
        return Err(Refusal::state("catch_up", "no standby runs here"));
    };
    let behind = s
        .catch_up(Duration::from_millis(req.timeout_ms.min(600_000)))
        .await?;
    Ok(Json(CaughtUp { behind }))
}

async fn promote(State(agent): State<AgentService>) -> Result<Json<Started>, Refusal> {
    let mut slot = agent.inner.slot.lock().await;
    let s = match std::mem::replace(&mut *slot, Slot::Done) {
        Slot::Standby(s) => s,
        other => {
            *slot = other;
            return Err(Refusal::state("promote", "no standby runs here"));
        }
    };
    agent.stop_watching();
    let r = s.promote().await.map(|c| {
        (
            started(&c, c.boot_timings().clone()),
            c.exit_watch(),
            Slot::Running(c),
        )
    });
    settle(&agent, &mut slot, r, Phase::Running).map(Json)
}

async fn roles(
    State(agent): State<AgentService>,
    Json(req): Json<RolesRequest>,
) -> Result<StatusCode, Refusal> {
    let roles = super::roles_from_wire(req.roles)?;
    let slot = agent.inner.slot.lock().await;
    let Slot::Running(c) = &*slot else {
        return Err(Refusal::state("roles", "no compute runs here"));
    };
    c.apply_roles(&roles).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn load(State(agent): State<AgentService>) -> Result<Json<LoadSample>, Refusal> {
    let slot = agent.inner.slot.lock().await;
    let Slot::Running(c) = &*slot else {
        return Err(Refusal::state("load", "no compute runs here"));
    };
    let l = c.load().await?;
    Ok(Json(LoadSample {
        cpu_us: l.cpu_us,
        active: l.active,
        blocks_hit: l.blocks_hit,
        blocks_read: l.blocks_read,
    }))
}

async fn flush(State(agent): State<AgentService>) -> Result<StatusCode, Refusal> {
    let slot = agent.inner.slot.lock().await;
    let Slot::Running(c) = &*slot else {
        return Err(Refusal::state("flush", "no compute runs here"));
    };
    c.flush_for_handoff().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop(State(agent): State<AgentService>) -> Result<Json<StopReport>, Refusal> {
    let c = agent.take_running("stop").await?;
    let report = c.stop().await;
    agent.set_phase(Phase::Done);
    Ok(Json(report))
}

async fn stop_for_handoff(State(agent): State<AgentService>) -> Result<Json<StopReport>, Refusal> {
    let c = agent.take_running("stop").await?;
    let report = c.stop_for_handoff().await;
    agent.set_phase(Phase::Done);
    Ok(Json(report))
}

async fn abandon(State(agent): State<AgentService>) -> StatusCode {
    agent.shutdown().await;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct StatusQuery {
    wait_ms: Option<u64>,
}

async fn status(
    State(agent): State<AgentService>,
    Query(q): Query<StatusQuery>,
) -> Json<AgentStatus> {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_STATUS_WAIT);
    let mut rx = agent.inner.status.subscribe();
    let ended = |s: &AgentStatus| matches!(s.phase, Phase::Exited | Phase::Done);
    if !wait.is_zero() && !ended(&rx.borrow_and_update()) {
        let _ = tokio::time::timeout(wait, rx.wait_for(ended)).await;
    }
    let s = rx.borrow().clone();
    Json(s)
}

async fn ready(State(agent): State<AgentService>) -> StatusCode {
    match agent.status().phase {
        Phase::Running | Phase::Standby => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

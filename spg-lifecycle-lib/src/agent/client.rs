//! The control plane's side of the agent API: [`AgentClient`] for the calls, and
//! [`RemoteCompute`] / [`RemoteStandby`], which are the [`Compute`] and [`Standby`] a
//! provisioner hands the control plane for a generation whose agent runs on an [`AgentHost`]
//! (a child process, a pod).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use spg_core::{ComputeEndpoint, DatabaseName, Generation, ScaleProfile};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;
use zeroize::Zeroizing;

use super::{
    known_step, roles_to_wire, AgentError, AgentStatus, CatchUpRequest, CaughtUp, LoadSample,
    Phase, RolesRequest, SpecWire, StandbyRequest, StandbyStarted, StartRequest, Started,
};
use crate::compute::load::ComputeLoad;
use crate::compute::process::{ExitInfo, ExitWatch};
use crate::compute::{ComputeSpec, RoleSpec, StopReport};
use crate::provisioner::{Compute, Standby};
use crate::timing::{StepTiming, StepTimings};
use crate::LifecycleError;

/// How long a status request waits for an exit before it is asked again.
const STATUS_WAIT: Duration = Duration::from_secs(20);
/// Starts, promotions and stops: the agent bounds each of its steps itself.
const LONG_CALL: Duration = Duration::from_secs(900);
/// Everything else.
const SHORT_CALL: Duration = Duration::from_secs(60);

/// Where an agent runs.
#[async_trait]
pub trait AgentHost: Send + Sync + 'static {
    /// Turns `Some` when the host ended on its own (the process exited, the pod failed or was
    /// deleted), saying why.
    fn ended(&self) -> watch::Receiver<Option<ExitInfo>>;
    /// End it (if it still runs) and remove what it left behind. Safe to call more than once.
    async fn remove(&self);
    /// End it now, without waiting (a compute handle dropped without a stop: the platform lost
    /// the database, or gave up on a start); what it left is removed in the background.
    fn kill(&self);
}

/// Kills its host when dropped while armed: whoever drops a compute without stopping it (an
/// ownership lost, an error path) ends its processes, as for an in-process compute.
struct Armed(Option<Arc<dyn AgentHost>>);

impl Armed {
    fn new(host: &Arc<dyn AgentHost>) -> Self {
        Armed(Some(Arc::clone(host)))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(host) = self.0.take() {
            warn!("a compute was dropped without a stop: killing its agent");
            host.kill();
        }
    }
}

/// Calls to one agent, about one generation.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    key: Arc<Zeroizing<String>>,
    database: DatabaseName,
    generation: Generation,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .field("database", &self.database)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// The agent at `base_url` (`https://host:port`), reached with `http` (which trusts the
    /// agent's certificate) and authenticated by `key`, for generation `generation` of
    /// `database`.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        key: &str,
        database: DatabaseName,
        generation: Generation,
    ) -> Self {
        AgentClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            key: Arc::new(Zeroizing::new(key.to_string())),
            database,
            generation,
        }
    }

    fn fail(&self, step: &'static str, reason: String) -> LifecycleError {
        LifecycleError::Compute {
            database: self.database.to_string(),
            generation: self.generation.0,
            step,
            reason,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        step: &'static str,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<Option<T>, LifecycleError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.key.as_str())
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.fail(step, format!("the compute agent cannot be reached: {e}")))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return resp
                .json::<T>()
                .await
                .map(Some)
                .map_err(|e| self.fail(step, format!("the compute agent's answer: {e}")));
        }
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<AgentError>(&text) {
            Ok(e) => self.fail(known_step(&e.step), e.reason),
            Err(_) => self.fail(
                step,
                format!("the compute agent answered {status}: {}", text.trim()),
            ),
        })
    }

    async fn post<T: DeserializeOwned>(
        &self,
        step: &'static str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T, LifecycleError> {
        self.call(step, reqwest::Method::POST, path, body, timeout)
            .await?
            .ok_or_else(|| self.fail(step, "the compute agent answered without a body".into()))
    }

    async fn post_empty(
        &self,
        step: &'static str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<(), LifecycleError> {
        self.call::<serde_json::Value>(step, reqwest::Method::POST, path, body, timeout)
            .await
            .map(|_| ())
    }

    /// `POST /v1/start`.
    pub async fn start(&self, spec: &ComputeSpec) -> Result<Started, LifecycleError> {
        let req = StartRequest {
            spec: SpecWire::from(spec),
        };
        self.post("start", "/v1/start", Some(&req), LONG_CALL).await
    }

    /// `POST /v1/standby`.
    pub async fn standby(
        &self,
        spec: &ComputeSpec,
        primary: &ScaleProfile,
    ) -> Result<StandbyStarted, LifecycleError> {
        let req = StandbyRequest {
            spec: SpecWire::from(spec),
            primary: primary.clone(),
        };
        self.post("standby", "/v1/standby", Some(&req), LONG_CALL)
            .await
    }

    /// `GET /v1/status`, waiting up to `wait` for the compute to end.
    pub async fn status(&self, wait: Duration) -> Result<AgentStatus, LifecycleError> {
        let path = format!("/v1/status?wait_ms={}", wait.as_millis());
        self.call::<AgentStatus>(
            "agent",
            reqwest::Method::GET,
            &path,
            None::<&()>,
            wait + SHORT_CALL,
        )
        .await?
        .ok_or_else(|| self.fail("agent", "the compute agent answered without a body".into()))
    }

    /// `POST /v1/stop` or `/v1/stop-for-handoff`; a failed call is a report saying so.
    async fn stop(&self, path: &str) -> StopReport {
        let t = Instant::now();
        match self
            .post::<StopReport>("stop", path, None::<&()>, LONG_CALL)
            .await
        {
            Ok(r) => r,
            Err(e) => StopReport {
                timings: StepTimings {
                    steps: vec![StepTiming {
                        step: "total".into(),
                        ms: t.elapsed().as_secs_f64() * 1000.0,
                    }],
                },
                clean: false,
                image: None,
                error: Some(e.to_string()),
            },
        }
    }

    /// `POST /v1/abandon` (a gone agent is fine: its host is removed next).
    async fn abandon(&self) {
        if let Err(e) = self
            .post_empty("agent", "/v1/abandon", None::<&()>, SHORT_CALL)
            .await
        {
            tracing::debug!(error = %e, "abandon: the agent did not answer");
        }
    }
}

/// An agent that runs, and what runs it.
pub struct AgentHandle {
    /// Calls to it.
    pub client: AgentClient,
    /// What runs it.
    pub host: Arc<dyn AgentHost>,
    /// Where computes on it accept connections (the port comes from the agent).
    pub compute_ip: std::net::IpAddr,
    /// Timings of bringing it up (`launch`, ...), put before the agent's own.
    pub launch: StepTimings,
}

/// Start `spec` on the agent of `handle`. On error the host is removed.
pub async fn start_compute(
    handle: AgentHandle,
    spec: &ComputeSpec,
) -> Result<Box<dyn Compute>, LifecycleError> {
    let t = Instant::now();
    match handle.client.start(spec).await {
        Ok(s) => Ok(Box::new(RemoteCompute::new(handle, s, t))),
        Err(e) => {
            handle.host.remove().await;
            Err(e)
        }
    }
}

/// Prepare `spec` as a standby of the writer (whose profile is `primary`) on the agent of
/// `handle`. On error the host is removed.
pub async fn start_standby(
    handle: AgentHandle,
    spec: &ComputeSpec,
    primary: &ScaleProfile,
) -> Result<Box<dyn Standby>, LifecycleError> {
    let t = Instant::now();
    match handle.client.standby(spec, primary).await {
        Ok(s) => {
            let prepared = joined(&handle.launch, &s.timings, t);
            let exit = spawn_monitor(&handle);
            Ok(Box::new(RemoteStandby {
                armed: Armed::new(&handle.host),
                handle,
                hot: s.hot,
                prepared,
                exit,
            }))
        }
        Err(e) => {
            handle.host.remove().await;
            Err(e)
        }
    }
}

/// `launch`'s steps, then the agent's (without its `total`), then a `total` from the launch
/// to now (`agent_since` is when the agent was asked).
fn joined(launch: &StepTimings, agent: &StepTimings, agent_since: Instant) -> StepTimings {
    let launched: f64 = launch
        .steps
        .iter()
        .filter(|s| s.step != "total")
        .map(|s| s.ms)
        .sum();
    let mut steps: Vec<StepTiming> = launch
        .steps
        .iter()
        .filter(|s| s.step != "total")
        .cloned()
        .collect();
    steps.extend(agent.steps.iter().filter(|s| s.step != "total").cloned());
    steps.push(StepTiming {
        step: "total".into(),
        ms: launched + agent_since.elapsed().as_secs_f64() * 1000.0,
    });
    StepTimings { steps }
}

/// The exit watch of an agent's compute: `Some` once the agent says its compute ended, or its
/// host ended.
struct ExitMonitor {
    rx: ExitWatch,
    task: JoinHandle<()>,
}

impl Drop for ExitMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_monitor(handle: &AgentHandle) -> ExitMonitor {
    let (tx, rx) = watch::channel(None);
    let client = handle.client.clone();
    let mut ended = handle.host.ended();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = async { ended.wait_for(Option::is_some).await.map(|i| i.clone()) } => {
                    let info = match r {
                        Ok(info) => info,
                        Err(_) => Some(ExitInfo {
                            reason: Some("its host is gone".into()),
                            ..ExitInfo::default()
                        }),
                    };
                    let _ = tx.send(info);
                    return;
                }
                r = client.status(STATUS_WAIT) => match r {
                    Ok(s) if s.phase == Phase::Exited => {
                        let _ = tx.send(Some(s.exit.unwrap_or_default()));
                        return;
                    }
                    Ok(_) => {}
                    // The host says whether it ended; until then, ask again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    });
    ExitMonitor { rx, task }
}

/// A generation whose agent runs elsewhere, as the control plane handles it.
pub struct RemoteCompute {
    handle: AgentHandle,
    armed: Armed,
    endpoint: ComputeEndpoint,
    profile: ScaleProfile,
    boot: StepTimings,
    exit: ExitMonitor,
}

impl RemoteCompute {
    fn new(handle: AgentHandle, started: Started, asked: Instant) -> Self {
        let boot = joined(&handle.launch, &started.timings, asked);
        let endpoint = ComputeEndpoint {
            addr: SocketAddr::new(handle.compute_ip, started.port),
            generation: handle.client.generation,
        };
        let exit = spawn_monitor(&handle);
        RemoteCompute {
            armed: Armed::new(&handle.host),
            handle,
            endpoint,
            profile: started.profile,
            boot,
            exit,
        }
    }

    async fn finish(mut self, report: StopReport) -> StopReport {
        self.armed.disarm();
        drop(self.exit);
        self.handle.host.remove().await;
        report
    }
}

#[async_trait]
impl Compute for RemoteCompute {
    fn endpoint(&self) -> ComputeEndpoint {
        self.endpoint
    }

    fn boot_timings(&self) -> StepTimings {
        self.boot.clone()
    }

    fn exit_watch(&self) -> Option<ExitWatch> {
        Some(self.exit.rx.clone())
    }

    async fn apply_roles(&self, roles: &[RoleSpec]) -> Result<(), LifecycleError> {
        let req = RolesRequest {
            roles: roles_to_wire(roles),
        };
        self.handle
            .client
            .post_empty("roles", "/v1/roles", Some(&req), SHORT_CALL)
            .await
    }

    fn profile(&self) -> Option<ScaleProfile> {
        Some(self.profile.clone())
    }

    async fn load(&self) -> Result<ComputeLoad, LifecycleError> {
        let l: LoadSample = self
            .handle
            .client
            .call(
                "load",
                reqwest::Method::GET,
                "/v1/load",
                None::<&()>,
                SHORT_CALL,
            )
            .await?
            .ok_or_else(|| {
                self.handle
                    .client
                    .fail("load", "the compute agent answered without a body".into())
            })?;
        Ok(ComputeLoad {
            at: Instant::now(),
            cpu_us: l.cpu_us,
            active: l.active,
            blocks_hit: l.blocks_hit,
            blocks_read: l.blocks_read,
        })
    }

    async fn stop(self: Box<Self>) -> StopReport {
        let report = self.handle.client.stop("/v1/stop").await;
        self.finish(report).await
    }

    async fn flush_for_handoff(&self) -> Result<(), LifecycleError> {
        self.handle
            .client
            .post_empty("flush", "/v1/flush", None::<&()>, SHORT_CALL)
            .await
    }

    async fn stop_for_handoff(self: Box<Self>) -> StopReport {
        let report = self.handle.client.stop("/v1/stop-for-handoff").await;
        self.finish(report).await
    }

    async fn abandon(mut self: Box<Self>) {
        self.armed.disarm();
        self.handle.client.abandon().await;
        drop(self.exit);
        self.handle.host.remove().await;
    }
}

/// A standby whose agent runs elsewhere.
pub struct RemoteStandby {
    handle: AgentHandle,
    armed: Armed,
    hot: bool,
    prepared: StepTimings,
    exit: ExitMonitor,
}

#[async_trait]
impl Standby for RemoteStandby {
    fn generation(&self) -> Generation {
        self.handle.client.generation
    }

    fn is_hot(&self) -> bool {
        self.hot
    }

    fn is_running(&self) -> bool {
        self.exit.rx.borrow().is_none()
    }

    async fn catch_up(&self, timeout: Duration) -> Result<u64, LifecycleError> {
        let req = CatchUpRequest {
            timeout_ms: timeout.as_millis() as u64,
        };
        let c: CaughtUp = self
            .handle
            .client
            .post("catch_up", "/v1/catch-up", Some(&req), timeout + SHORT_CALL)
            .await?;
        Ok(c.behind)
    }

    fn prepare_timings(&self) -> StepTimings {
        self.prepared.clone()
    }

    async fn promote(self: Box<Self>) -> Result<Box<dyn Compute>, LifecycleError> {
        let t = Instant::now();
        let RemoteStandby {
            handle,
            exit,
            mut armed,
            ..
        } = *self;
        drop(exit);
        match handle
            .client
            .post::<Started>("promote", "/v1/promote", None::<&()>, LONG_CALL)
            .await
        {
            Ok(s) => {
                armed.disarm();
                let handle = AgentHandle {
                    launch: StepTimings::default(),
                    ..handle
                };
                Ok(Box::new(RemoteCompute::new(handle, s, t)))
            }
            Err(e) => {
                armed.disarm();
                warn!(error = %e, "promotion failed; removing the standby's agent");
                handle.client.abandon().await;
                handle.host.remove().await;
                Err(e)
            }
        }
    }

    async fn discard(mut self: Box<Self>) {
        self.armed.disarm();
        self.handle.client.abandon().await;
        drop(self.exit);
        self.handle.host.remove().await;
    }
}

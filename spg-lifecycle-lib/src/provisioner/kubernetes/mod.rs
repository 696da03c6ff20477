//! Computes as Kubernetes pods: one pod per generation running `spg-compute` ([`pod::pod_for`]),
//! reached at its pod IP, driven over the agent API like a local compute process. The pod is
//! deleted at stop; a pod that fails (evicted, its container ended) marks the database's compute
//! as exited with the pod's reason; the platform's stale pods of a database are found by label
//! and deleted when a control plane takes the database on; an image that cannot be pulled fails
//! the start with Kubernetes' message, and further starts with that image fail at once for a
//! while instead of making a pod each.

pub mod pod;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use spg_core::{DatabaseName, Generation, ScaleProfile};
use tokio::sync::watch;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{Compute, Provisioner, Standby};
use crate::agent::client::{start_compute, start_standby, AgentClient, AgentHandle, AgentHost};
use crate::compute::process::ExitInfo;
use crate::compute::ComputeSpec;
use crate::timing::StepTimer;
use crate::LifecycleError;
use pod::*;

/// Container states in which a pod's image will not run.
const PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
/// Container states that end a start at once.
const START_FAILURES: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Runs each compute generation as a Kubernetes pod. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesProvisioner {
    inner: Arc<Inner>,
}

struct Inner {
    pods: Api<Pod>,
    events: Api<Event>,
    secrets: Api<Secret>,
    settings: KubeSettings,
    agent_key: Zeroizing<String>,
    agent_ca: Vec<u8>,
    /// Images whose pods failed at their start (could not be pulled, exited): when, and how.
    start_failures: Mutex<HashMap<String, (Instant, String)>>,
}

impl std::fmt::Debug for KubernetesProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvisioner")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn kube_error(
    step: &'static str,
    spec: (&DatabaseName, Generation),
    reason: String,
) -> LifecycleError {
    LifecycleError::Compute {
        database: spec.0.to_string(),
        generation: spec.1 .0,
        step,
        reason,
    }
}

impl KubernetesProvisioner {
    /// Pods made as `settings` say, through `client`; their agents are authenticated with
    /// `agent_key` and present certificates for [`AGENT_TLS_NAME`] that `agent_ca_pem` signed.
    pub fn new(
        client: kube::Client,
        settings: KubeSettings,
        agent_key: &str,
        agent_ca_pem: Vec<u8>,
    ) -> Self {
        let ns = settings.namespace.clone();
        KubernetesProvisioner {
            inner: Arc::new(Inner {
                pods: Api::namespaced(client.clone(), &ns),
                events: Api::namespaced(client.clone(), &ns),
                secrets: Api::namespaced(client, &ns),
                settings,
                agent_key: Zeroizing::new(agent_key.to_string()),
                agent_ca: agent_ca_pem,
                start_failures: Mutex::default(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &KubeSettings {
        &self.inner.settings
    }

    /// Create or replace the agents' Secret ([`KubeSettings::agent_secret`]) with `data`
    /// (`agent.toml`, the certificate and key, the CAs the agents trust).
    pub async fn apply_agent_secret(
        &self,
        data: BTreeMap<String, Vec<u8>>,
    ) -> Result<(), LifecycleError> {
        let s = &self.inner.settings;
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": s.agent_secret,
                "namespace": s.namespace,
                "labels": { LABEL_PLATFORM: s.platform, "app.kubernetes.io/managed-by": "spg" },
            },
            "type": "Opaque",
            "data": data.into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(v))).collect::<BTreeMap<_, _>>(),
        }))
        .map_err(|e| LifecycleError::Setup(format!("the agents' Secret: {e}")))?;
        let api = &self.inner.secrets;
        let failed = |e: kube::Error| {
            LifecycleError::Setup(format!(
                "writing Secret {}: {}",
                s.agent_secret,
                describe(&e)
            ))
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(st)) if st.code == 409 => {
                let current = api.get(&s.agent_secret).await.map_err(failed)?;
                let mut secret = secret;
                secret.metadata.resource_version = current.metadata.resource_version;
                api.replace(&s.agent_secret, &PostParams::default(), &secret)
                    .await
                    .map(|_| ())
                    .map_err(failed)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// Create the pod of `spec` and wait until its agent answers.
    async fn launch(
        &self,
        spec: &ComputeSpec,
        standby: bool,
    ) -> Result<AgentHandle, LifecycleError> {
        let i = &self.inner;
        let s = &i.settings;
        let at = (&spec.database, spec.generation);
        let mut timer = StepTimer::new();
        if let Some(msg) = self.recent_failure() {
            return Err(self.launch_error(at, msg));
        }
        let pod = pod_for(s, &spec.database, spec.generation, &spec.profile, standby)
            .map_err(|e| kube_error("launch", at, format!("building the pod: {e}")))?;
        let name = pod_name(&spec.database, spec.generation);
        let created = match i.pods.create(&PostParams::default(), &pod).await {
            Ok(p) => p,
            Err(kube::Error::Api(st)) if st.code == 409 => {
                // A pod of this name exists: ours from an earlier attempt goes; another's stays.
                let existing = i.pods.get_opt(&name).await.ok().flatten();
                let ours = existing.as_ref().is_some_and(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_PLATFORM))
                        == Some(&s.platform)
                });
                if !ours {
                    return Err(kube_error(
                        "launch",
                        at,
                        format!(
                            "pod {name} exists and is not this platform's ({})",
                            st.message
                        ),
                    ));
                }
                warn!(pod = %name, "deleting a pod an earlier attempt left");
                delete_and_wait(&i.pods, &name, Duration::ZERO, s.stop_grace).await;
                i.pods
                    .create(&PostParams::default(), &pod)
                    .await
                    .map_err(|e| {
                        kube_error(
                            "launch",
                            at,
                            format!("creating pod {name}: {}", describe(&e)),
                        )
                    })?
            }
            Err(e) => {
                return Err(kube_error(
                    "launch",
                    at,
                    format!("creating pod {name}: {}", describe(&e)),
                ))
            }
        };
        info!(db = %spec.database, generation = %spec.generation, pod = %name, "pod created");
        let ip = match self.wait_running(&name, created).await {
            Ok(ip) => ip,
            Err(reason) => {
                delete_and_wait(&i.pods, &name, Duration::ZERO, Duration::from_secs(5)).await;
                return Err(self.launch_error(at, reason));
            }
        };
        timer.step("pod");
        let agent = SocketAddr::new(ip, s.agent_port);
        let http = crate::api::http::client_trusting(&i.agent_ca)
            .map_err(LifecycleError::Tls)?
            .resolve(AGENT_TLS_NAME, agent)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| LifecycleError::Tls(e.to_string()))?;
        let base = format!("https://{AGENT_TLS_NAME}:{}", s.agent_port);
        let host = PodHost::watch(i.pods.clone(), name.clone(), s.stop_grace);
        // The container runs; its agent listens a moment later.
        let deadline = Instant::now() + s.start_timeout;
        loop {
            let ok = http
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            let ended = host.ended().borrow().clone();
            if let Some(e) = ended {
                host.remove().await;
                let msg = format!("the pod ended at its start ({e})");
                self.note_failure(&msg);
                return Err(self.launch_error(at, msg));
            }
            if Instant::now() > deadline {
                host.remove().await;
                return Err(kube_error(
                    "launch",
                    at,
                    format!(
                        "the agent in pod {name} did not answer within {:?}",
                        s.start_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        timer.step("agent");
        let client = AgentClient::new(
            http,
            &base,
            &i.agent_key,
            spec.database.clone(),
            spec.generation,
        );
        Ok(AgentHandle {
            client,
            host,
            compute_ip: ip,
            launch: timer.finish(),
        })
    }

    /// A failed launch: one that retrying soon would repeat (the image's pods fail at their
    /// start: not pulled, exited) is final, so that no wake retries it into a pod per attempt;
    /// others (a timeout, the API unreachable) may be retried.
    fn launch_error(&self, at: (&DatabaseName, Generation), reason: String) -> LifecycleError {
        if self.recent_failure().is_some() {
            LifecycleError::Setup(format!(
                "compute {} g{}: launch failed: {reason}",
                at.0, at.1 .0
            ))
        } else {
            kube_error("launch", at, reason)
        }
    }

    /// Remember that pods of the image failed at their start (`msg`: how).
    fn note_failure(&self, msg: &str) {
        self.inner
            .start_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                self.inner.settings.image.clone(),
                (Instant::now(), msg.to_string()),
            );
    }

    /// A start failure of the image within the backoff: starts fail at once with it.
    fn recent_failure(&self) -> Option<String> {
        let mut failures = self
            .inner
            .start_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let image = &self.inner.settings.image;
        match failures.get(image) {
            Some((at, msg)) if at.elapsed() < self.inner.settings.pull_backoff => Some(format!(
                "{msg} (not trying again for {:?})",
                self.inner
                    .settings
                    .pull_backoff
                    .saturating_sub(at.elapsed())
            )),
            Some(_) => {
                failures.remove(image);
                None
            }
            None => None,
        }
    }

    /// Wait until pod `name` runs its container with an IP; a pull failure, a failed pod or
    /// the start timeout is an error saying what Kubernetes said.
    async fn wait_running(&self, name: &str, created: Pod) -> Result<IpAddr, String> {
        let i = &self.inner;
        let deadline = tokio::time::Instant::now() + i.settings.start_timeout;
        let mut last = created;
        loop {
            if let Some(verdict) = self.judge(&last) {
                return verdict;
            }
            let rv = last.metadata.resource_version.clone().unwrap_or_default();
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(10);
            let stream = match i.pods.watch(&wp, &rv).await {
                Ok(s) => s,
                Err(e) => return Err(format!("watching pod {name}: {}", describe(&e))),
            };
            let mut stream = Box::pin(stream);
            loop {
                let next = tokio::time::timeout_at(deadline, stream.next()).await;
                match next {
                    Err(_) => return Err(self.not_started(name, &last).await),
                    Ok(None) => break,
                    Ok(Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)))) => {
                        last = p;
                        if let Some(verdict) = self.judge(&last) {
                            return verdict;
                        }
                    }
                    Ok(Some(Ok(WatchEvent::Deleted(_)))) => {
                        return Err(format!("pod {name} was deleted while it started"))
                    }
                    Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {}
                    Ok(Some(Ok(WatchEvent::Error(st)))) if st.code == 410 => {
                        // Expired: read the pod again and watch from there.
                        match i.pods.get_opt(name).await {
                            Ok(Some(p)) => last = p,
                            Ok(None) => return Err(format!("pod {name} is gone")),
                            Err(e) => return Err(format!("reading pod {name}: {}", describe(&e))),
                        }
                        break;
                    }
                    Ok(Some(Ok(WatchEvent::Error(st)))) => {
                        return Err(format!("watching pod {name}: {}", st.message))
                    }
                    Ok(Some(Err(e))) => {
                        warn!(pod = %name, error = %describe(&e), "pod watch failed; watching again");
                        break;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.not_started(name, &last).await);
            }
        }
    }

    /// `Some` once `pod` is decided: its IP when its container runs, or why it will not.
    fn judge(&self, pod: &Pod) -> Option<Result<IpAddr, String>> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref()?;
        let phase = status.phase.as_deref().unwrap_or("");
        if matches!(phase, "Failed" | "Succeeded") {
            let msg = format!("pod {name} ended at its start: {}", pod_end(pod));
            self.note_failure(&msg);
            return Some(Err(msg));
        }
        for cs in status.container_statuses.iter().flatten() {
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = w.reason.as_deref().unwrap_or("");
                let message = w.message.as_deref().unwrap_or("").trim();
                if PULL_FAILURES.contains(&reason) {
                    let msg = format!(
                        "image {} cannot be pulled ({reason}: {message})",
                        self.inner.settings.image
                    );
                    self.note_failure(&msg);
                    return Some(Err(msg));
                }
                if START_FAILURES.contains(&reason) {
                    let msg = format!("pod {name}: {reason}: {message}");
                    self.note_failure(&msg);
                    return Some(Err(msg));
                }
            }
            if cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some() {
                let ip = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())?;
                return Some(Ok(ip));
            }
        }
        None
    }

    /// Why pod `name` did not run in time: its phase, its conditions' reasons and its newest
    /// warning event.
    async fn not_started(&self, name: &str, pod: &Pod) -> String {
        let mut why = vec![format!(
            "pod {name} did not run within {:?} (phase {})",
            self.inner.settings.start_timeout,
            pod.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "unknown".into())
        )];
        for c in pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            if c.status != "True" {
                if let Some(m) = &c.message {
                    why.push(format!("{}: {}", c.type_, m));
                }
            }
        }
        let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
        if let Ok(events) = self.inner.events.list(&lp).await {
            if let Some(e) = events
                .items
                .iter()
                .rfind(|e| e.type_.as_deref() == Some("Warning"))
            {
                why.push(format!(
                    "event {}: {}",
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                ));
            }
        }
        why.join("; ")
    }
}

#[async_trait]
impl Provisioner for KubernetesProvisioner {
    async fn start(&self, spec: ComputeSpec) -> Result<Box<dyn Compute>, LifecycleError> {
        let handle = self.launch(&spec, false).await?;
        start_compute(handle, &spec).await
    }

    async fn cleanup_stale(&self, db: &DatabaseName) -> Result<bool, LifecycleError> {
        let i = &self.inner;
        let lp = ListParams::default().labels(&database_selector(&i.settings, db));
        let pods = i.pods.list(&lp).await.map_err(|e| {
            LifecycleError::Setup(format!("listing the pods of {db}: {}", describe(&e)))
        })?;
        let mut found = false;
        for p in pods.items {
            let exact = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_DATABASE))
                .is_some_and(|d| d == db.as_str());
            let Some(name) = p.metadata.name.filter(|_| exact) else {
                continue;
            };
            warn!(%db, pod = %name, "deleting a compute pod left by an earlier run");
            match i
                .pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => found = true,
                Err(kube::Error::Api(st)) if st.code == 404 => {}
                Err(e) => warn!(pod = %name, error = %describe(&e), "deleting a stale pod failed"),
            }
        }
        Ok(found)
    }

    async fn start_standby(
        &self,
        spec: ComputeSpec,
        primary: &ScaleProfile,
    ) -> Result<Box<dyn Standby>, LifecycleError> {
        let handle = self.launch(&spec, true).await?;
        start_standby(handle, &spec, primary).await
    }
}

/// What Kubernetes says of an ended pod: its reason and message, else its container's end.
fn pod_end(pod: &Pod) -> String {
    let Some(st) = pod.status.as_ref() else {
        return "no status".into();
    };
    let mut parts = Vec::new();
    if let Some(r) = &st.reason {
        parts.push(r.clone());
    }
    if let Some(m) = &st.message {
        parts.push(m.clone());
    }
    for cs in st.container_statuses.iter().flatten() {
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "container {} exited with code {}{}",
                cs.name,
                t.exit_code,
                t.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
            // The end of its log: the last line that says something.
            if let Some(line) = t
                .message
                .as_deref()
                .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
            {
                parts.push(line.trim().chars().take(300).collect());
            }
        }
    }
    if parts.is_empty() {
        format!("phase {}", st.phase.clone().unwrap_or_default())
    } else {
        parts.join(": ")
    }
}

/// A Kubernetes API error in a sentence.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(st) => format!("{} ({}, {})", st.message, st.reason, st.code),
        other => other.to_string(),
    }
}

/// Delete pod `name` with `grace` and wait (at most `wait`) until it is gone.
async fn delete_and_wait(pods: &Api<Pod>, name: &str, grace: Duration, wait: Duration) {
    let dp = DeleteParams::default().grace_period(grace.as_secs() as u32);
    match pods.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(st)) if st.code == 404 => return,
        Err(e) => {
            warn!(pod = %name, error = %describe(&e), "deleting the pod failed");
            return;
        }
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match pods.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    warn!(pod = %name, "the pod was not gone in time");
}

/// An agent running in a pod.
struct PodHost {
    pods: Api<Pod>,
    name: String,
    grace: Duration,
    ended: watch::Receiver<Option<ExitInfo>>,
    watcher: tokio::task::JoinHandle<()>,
    removed: tokio::sync::Mutex<bool>,
}

impl PodHost {
    /// Watch pod `name` for its end (failed, evicted, deleted).
    fn watch(pods: Api<Pod>, name: String, grace: Duration) -> Arc<PodHost> {
        let (tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(watch_end(pods.clone(), name.clone(), tx));
        Arc::new(PodHost {
            pods,
            name,
            grace,
            ended: rx,
            watcher,
            removed: tokio::sync::Mutex::new(false),
        })
    }
}

/// Follow pod `name` until it ends; then say how.
async fn watch_end(pods: Api<Pod>, name: String, tx: watch::Sender<Option<ExitInfo>>) {
    let ended = |reason: String| ExitInfo {
        reason: Some(reason),
        ..ExitInfo::default()
    };
    let mut rv = String::from("0");
    loop {
        match pods.get_opt(&name).await {
            Ok(None) => {
                let _ = tx.send(Some(ended(format!("pod {name} was deleted"))));
                return;
            }
            Ok(Some(p)) => {
                if let Some(end) = ended_pod(&p) {
                    let _ = tx.send(Some(ended(end)));
                    return;
                }
                rv = p.metadata.resource_version.unwrap_or(rv);
            }
            Err(e) => {
                warn!(pod = %name, error = %describe(&e), "reading the pod failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let Ok(stream) = pods.watch(&wp, &rv).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut stream = Box::pin(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                    if let Some(end) = ended_pod(&p) {
                        let _ = tx.send(Some(ended(end)));
                        return;
                    }
                }
                Ok(WatchEvent::Deleted(_)) => {
                    let _ = tx.send(Some(ended(format!("pod {name} was deleted"))));
                    return;
                }
                Ok(WatchEvent::Bookmark(_)) => {}
                Ok(WatchEvent::Error(_)) | Err(_) => break,
            }
        }
    }
}

/// How a running compute pod ended, if it did: failed (evicted, its container exited), or being
/// deleted.
fn ended_pod(p: &Pod) -> Option<String> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let evicted = p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
    if evicted {
        let msg = p
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        return Some(format!("pod {name} was evicted: {msg}"));
    }
    if matches!(phase, "Failed" | "Succeeded") {
        return Some(format!("pod {name} ended: {}", pod_end(p)));
    }
    if p.metadata.deletion_timestamp.is_some() {
        return Some(format!("pod {name} is being deleted"));
    }
    None
}

#[async_trait]
impl AgentHost for PodHost {
    fn ended(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.ended.clone()
    }

    async fn remove(&self) {
        let mut removed = self.removed.lock().await;
        if *removed {
            return;
        }
        self.watcher.abort();
        delete_and_wait(
            &self.pods,
            &self.name,
            self.grace,
            self.grace + Duration::from_secs(10),
        )
        .await;
        *removed = true;
    }

    fn kill(&self) {
        self.watcher.abort();
        let (pods, name) = (self.pods.clone(), self.name.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            });
        }
    }
}

//! A simulated Kubernetes API server with a simulated kubelet, for testing the Kubernetes
//! provisioner where no cluster can run.
//!
//! What it follows of Kubernetes, for the calls the provisioner makes:
//!
//! - **API**: core/v1 pods (create, get, list, watch, delete), secrets (create, get, replace) and
//!   events (list) in namespaces, over HTTPS with a Bearer token; `409 AlreadyExists` on a
//!   second create, `409 Conflict` on a replace with a stale `resourceVersion`, `404 NotFound`,
//!   `401` without the token, `Status` bodies; label selectors (`=`, `==`, `!=`, `in`, `notin`,
//!   exists, `!`exists) and field selectors (`=`, `!=` on dotted paths); watches from a
//!   `resourceVersion` (replayed from a history; `410 Expired` before it), ended after
//!   `timeoutSeconds`; every change bumps the resource version.
//! - **Scheduling and images**: a pod is scheduled at once (condition `PodScheduled`, event
//!   `Scheduled`), unless the simulation is told no node fits (`Unschedulable`, a
//!   `FailedScheduling` warning, phase `Pending` forever). An image the simulation does not
//!   know fails to pull: `ErrImagePull`, then `ImagePullBackOff`, with `Failed` warnings; the
//!   pod stays `Pending`.
//! - **Containers**: a known image maps to a directory of local executables; the container's
//!   `command[0]` is run from it as a local process, with the container's `env` (values,
//!   `fieldRef: status.podIP`, `envFrom` secrets) and `$(VAR)` expanded in `command` and `args`.
//!   Each pod gets its own loopback address as its IP. Volumes (`secret`, `emptyDir`,
//!   `hostPath`) are materialized under the pod's directory, and arguments and environment values
//!   naming a path under a `mountPath` are rewritten to it (a process cannot have its own mount
//!   namespace here: this is the one liberty taken). The phase turns `Running` when the process
//!   starts, `Failed`/`Succeeded` when it exits (`restartPolicy: Never`), with the container's
//!   `terminated` state.
//! - **Readiness**: `httpGet` readiness probes (HTTPS without verification, as the kubelet) set
//!   the `Ready` condition and the container's `ready`.
//! - **Deletion**: `deletionTimestamp` is set; the processes get SIGTERM, then SIGKILL after the
//!   grace period; then the pod object goes (`DELETED`). Every process of the pod and every mount
//!   under its directory go with it, as with a container.
//! - **Eviction** ([`KubeSim::evict`]): the processes are killed, the pod turns `Failed` with
//!   reason `Evicted` and the message given, with an `Evicted` warning.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsMaterial;

/// How many changes a watch can be resumed from.
const HISTORY: usize = 10_000;

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct KubeSimConfig {
    /// Where pods' directories (volumes, logs) go.
    pub dir: PathBuf,
    /// Images the simulated nodes can pull: image → directory of its executables.
    pub images: HashMap<String, PathBuf>,
    /// The first pod IP (`127.0.0.<first_ip>`, counting up).
    pub first_ip: u8,
}

/// A running simulation; dropping it kills every pod's processes.
pub struct KubeSim {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The Bearer token it accepts.
    pub token: String,
    /// The CA (PEM) of its certificate.
    pub ca_pem: Vec<u8>,
    state: Arc<Sim>,
    stop: CancellationToken,
}

struct Sim {
    cfg: KubeSimConfig,
    token: String,
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
}

#[derive(Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    kind_type: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: VecDeque<Change>,
    pids: HashMap<(String, String), i32>,
    next_ip: u8,
    unschedulable: Option<String>,
    created: HashMap<&'static str, u64>,
    images: HashMap<String, PathBuf>,
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.stop.cancel();
        let pids: Vec<i32> = self
            .state
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pids
            .values()
            .copied()
            .collect();
        for pid in pids {
            kill_tree(pid);
        }
        super::procs::detach_mounts_under(&self.state.cfg.dir);
    }
}

fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn now() -> String {
    spg_lifecycle_lib::api::model::now_rfc3339()
}

impl KubeSim {
    /// Start a simulation serving on a free loopback port.
    pub async fn start(cfg: KubeSimConfig) -> anyhow::Result<KubeSim> {
        std::fs::create_dir_all(&cfg.dir)?;
        let tls = TlsMaterial::load_or_generate(&cfg.dir.join("tls"), None, None, None)?;
        let token = crate::random_secret(32);
        let (changes, _) = broadcast::channel(4096);
        let state = Arc::new(Sim {
            store: Mutex::new(Store {
                next_ip: cfg.first_ip,
                images: cfg.images.clone(),
                ..Store::default()
            }),
            cfg,
            token: token.clone(),
            changes,
        });
        let router = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(list_pods).post(create_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).delete(delete_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                get(list_secrets).post(create_secret),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_secret).put(replace_secret),
            )
            .route("/api/v1/namespaces/{ns}/events", get(list_events))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                authenticate,
            ))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("https://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
            listener,
            tls.https()?,
            router,
            stop.clone(),
            spg_lifecycle_lib::api::http::HttpLimits {
                idle_timeout: Duration::from_secs(600),
                ..Default::default()
            },
        ));
        Ok(KubeSim {
            url,
            token,
            ca_pem: tls.ca_pem()?,
            state,
            stop,
        })
    }

    /// From now on image `image` can be pulled (`Some`: its executables are in that directory)
    /// or not (`None`, as when a registry lost it).
    pub fn set_image(&self, image: &str, dir: Option<PathBuf>) {
        let mut st = self.state.lock();
        match dir {
            Some(d) => st.images.insert(image.into(), d),
            None => st.images.remove(image),
        };
    }

    /// From now on no node fits a new pod (`message` is the scheduler's).
    pub fn set_unschedulable(&self, message: Option<&str>) {
        self.state.lock().unschedulable = message.map(String::from);
    }

    /// Pods now, as the API returns them.
    pub fn pods(&self) -> Vec<Value> {
        self.state
            .lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == "Pod")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many pods were ever created.
    pub fn pods_created(&self) -> u64 {
        self.state.lock().created.get("Pod").copied().unwrap_or(0)
    }

    /// Warning and normal events recorded so far.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == "Event")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Evict pod `name`: its processes are killed, it turns `Failed`, reason `Evicted`.
    pub fn evict(&self, ns: &str, name: &str, message: &str) -> bool {
        // The status first (one update: failed, evicted, the container killed), then the kill:
        // the container's end then finds the pod evicted already.
        let pid = self.state.lock().pids.remove(&(ns.into(), name.into()));
        let found = self.state.update("Pod", ns, name, |p| {
            p["status"]["phase"] = json!("Failed");
            p["status"]["reason"] = json!("Evicted");
            p["status"]["message"] = json!(message);
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
            p["status"]["containerStatuses"][0]["ready"] = json!(false);
            p["status"]["containerStatuses"][0]["state"] = json!({
                "terminated": { "exitCode": 137, "reason": "Error", "finishedAt": now() }
            });
        });
        if let Some(pid) = pid {
            kill_tree(pid);
        }
        if found {
            self.state.event(ns, name, "Warning", "Evicted", message);
        }
        found
    }
}

impl Sim {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `object` (kind `kind`) as changed (`ADDED`, `MODIFIED`, `DELETED`).
    fn commit(
        &self,
        st: &mut Store,
        kind: &'static str,
        kind_type: &'static str,
        mut object: Value,
    ) -> Value {
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if kind_type == "DELETED" {
            st.objects.remove(&(kind, ns, name));
        } else {
            st.objects.insert((kind, ns, name), object.clone());
        }
        let change = Change {
            rv: st.rv,
            kind,
            kind_type,
            object: object.clone(),
        };
        st.history.push_back(change.clone());
        if st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.changes.send(change);
        object
    }

    /// Change object `name` with `f`; whether it exists.
    fn update(&self, kind: &'static str, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let mut st = self.lock();
        let Some(mut obj) = st
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
        else {
            return false;
        };
        f(&mut obj);
        self.commit(&mut st, kind, "MODIFIED", obj);
        true
    }

    fn event(&self, ns: &str, pod: &str, kind_type: &str, reason: &str, message: &str) {
        let mut st = self.lock();
        let n = st.created.entry("Event").or_default();
        *n += 1;
        let name = format!("{pod}.{n}");
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": { "name": name, "namespace": ns },
            "involvedObject": { "kind": "Pod", "name": pod, "namespace": ns },
            "type": kind_type, "reason": reason, "message": message,
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
            "source": { "component": "kubesim" },
        });
        self.commit(&mut st, "Event", "ADDED", ev);
    }
}

async fn authenticate(
    State(sim): State<Arc<Sim>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == sim.token);
    if !ok {
        return status(401, "Unauthorized", "Unauthorized");
    }
    next.run(req).await
}

/// A parsed label or field selector requirement.
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Parse a label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut reqs = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        // A requirement ends at a comma outside parentheses.
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let part = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("").trim();
        let set = |op: &str| -> Option<(String, Vec<String>)> {
            let (k, v) = part.split_once(op)?;
            let v = v.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some((
                k.trim().to_string(),
                v.split(',').map(|x| x.trim().to_string()).collect(),
            ))
        };
        let req = if let Some((k, v)) = set(" notin ") {
            Req::NotIn(k, v)
        } else if let Some((k, v)) = set(" in ") {
            Req::In(k, v)
        } else if let Some((k, v)) = part.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Req::NotExists(k.trim().into())
        } else if !part.is_empty() && !part.contains([' ', '(', ')']) {
            Req::Exists(part.into())
        } else {
            return Err(format!("unable to parse requirement: {part:?}"));
        };
        reqs.push(req);
    }
    Ok(reqs)
}

fn matches(reqs: &[Req], get: impl Fn(&str) -> Option<String>) -> bool {
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
        Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

/// Whether `obj` passes the request's label and field selectors.
#[derive(Default)]
struct Filter {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

impl Filter {
    // The refusal is the answer itself (a test server: its size does not matter).
    #[allow(clippy::result_large_err)]
    fn from_query(q: &HashMap<String, String>) -> Result<Filter, Response> {
        let bad = |e: String| status(400, "BadRequest", e);
        Ok(Filter {
            labels: parse_selector(q.get("labelSelector").map_or("", |s| s)).map_err(bad)?,
            fields: parse_selector(q.get("fieldSelector").map_or("", |s| s)).map_err(bad)?,
        })
    }

    fn accepts(&self, obj: &Value) -> bool {
        matches(&self.labels, |k| {
            obj["metadata"]["labels"][k].as_str().map(String::from)
        }) && matches(&self.fields, |path| {
            let mut v = obj;
            for p in path.split('.') {
                v = &v[p];
            }
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        })
    }
}

fn list_of(sim: &Sim, kind: &'static str, ns: &str, filter: &Filter) -> Value {
    let st = sim.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((k, n, _), _)| *k == kind && n == ns)
        .map(|(_, v)| v)
        .filter(|v| filter.accepts(v))
        .cloned()
        .collect();
    json!({
        "apiVersion": "v1", "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": st.rv.to_string() },
        "items": items,
    })
}

async fn list_pods(
    State(sim): State<Arc<Sim>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(sim, "Pod", ns, q).await
}

async fn list_secrets(
    State(sim): State<Arc<Sim>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(sim, "Secret", ns, q).await
}

async fn list_events(
    State(sim): State<Arc<Sim>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(sim, "Event", ns, q).await
}

async fn list_or_watch(
    sim: Arc<Sim>,
    kind: &'static str,
    ns: String,
    q: HashMap<String, String>,
) -> Response {
    let filter = match Filter::from_query(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if q.get("watch").map(String::as_str) != Some("true") {
        return Json(list_of(&sim, kind, &ns, &filter)).into_response();
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(300);
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Subscribe first, then replay: nothing falls between.
    let rx = sim.changes.subscribe();
    let (replay, expired) = {
        let st = sim.lock();
        let oldest = st.history.front().map_or(st.rv + 1, |c| c.rv);
        let expired = from != 0 && from + 1 < oldest;
        let replay: Vec<Change> = if from == 0 {
            // "0": start with the current state, as ADDED events.
            st.objects
                .iter()
                .filter(|((k, n, _), _)| *k == kind && *n == ns)
                .map(|(_, v)| Change {
                    rv: v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    kind,
                    kind_type: "ADDED",
                    object: v.clone(),
                })
                .collect()
        } else {
            st.history.iter().filter(|c| c.rv > from).cloned().collect()
        };
        (replay, expired)
    };
    let line = |t: &str, o: &Value| {
        let mut b = serde_json::to_vec(&json!({ "type": t, "object": o })).unwrap_or_default();
        b.push(b'\n');
        bytes::Bytes::from(b)
    };
    if expired {
        let gone = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410,
        });
        return Response::new(Body::from(line("ERROR", &gone)));
    }
    let filter = Arc::new(filter);
    let mut last = from;
    let mut first: VecDeque<bytes::Bytes> = VecDeque::new();
    for c in replay {
        if c.kind == kind
            && c.object["metadata"]["namespace"] == json!(ns)
            && filter.accepts(&c.object)
        {
            first.push_back(line(c.kind_type, &c.object));
        }
        last = last.max(c.rv);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stream = futures::stream::unfold((first, rx, last), move |(mut pending, mut rx, last)| {
        let filter = Arc::clone(&filter);
        let ns = ns.clone();
        async move {
            if let Some(b) = pending.pop_front() {
                return Some((Ok::<_, std::io::Error>(b), (pending, rx, last)));
            }
            loop {
                let c = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return None,
                    c = rx.recv() => c,
                };
                match c {
                    Ok(c)
                        if c.rv > last
                            && c.kind == kind
                            && c.object["metadata"]["namespace"] == json!(ns)
                            && filter.accepts(&c.object) =>
                    {
                        let b = line(c.kind_type, &c.object);
                        return Some((Ok(b), (pending, rx, c.rv)));
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return None,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Response::new(Body::from_stream(stream))
}

fn get_object(sim: &Sim, kind: &'static str, ns: &str, name: &str) -> Response {
    match sim
        .lock()
        .objects
        .get(&(kind, ns.to_string(), name.to_string()))
    {
        Some(v) => Json(v.clone()).into_response(),
        None => status(
            404,
            "NotFound",
            format!("{}s \"{name}\" not found", kind.to_lowercase()),
        ),
    }
}

async fn get_pod(
    State(sim): State<Arc<Sim>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    get_object(&sim, "Pod", &ns, &name)
}

async fn get_secret(
    State(sim): State<Arc<Sim>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    get_object(&sim, "Secret", &ns, &name)
}

/// Fill in what the API server sets on create; `Err` for what it refuses.
#[allow(clippy::result_large_err)]
fn admit(sim: &Sim, kind: &'static str, ns: &str, mut obj: Value) -> Result<Value, Response> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !dns(&name) {
        return Err(status(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: metadata.name"),
        ));
    }
    if let Some(n) = obj["metadata"]["namespace"].as_str() {
        if n != ns {
            return Err(status(
                400,
                "BadRequest",
                "the namespace of the object does not match",
            ));
        }
    }
    if sim
        .lock()
        .objects
        .contains_key(&(kind, ns.to_string(), name.clone()))
    {
        return Err(status(
            409,
            "AlreadyExists",
            format!("{}s \"{name}\" already exists", kind.to_lowercase()),
        ));
    }
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!(format!("{:032x}", rand::random::<u128>()));
    obj["metadata"]["creationTimestamp"] = json!(now());
    Ok(obj)
}

async fn create_secret(
    State(sim): State<Arc<Sim>>,
    UrlPath(ns): UrlPath<String>,
    Json(obj): Json<Value>,
) -> Response {
    let obj = match admit(&sim, "Secret", &ns, obj) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let mut st = sim.lock();
    let obj = sim.commit(&mut st, "Secret", "ADDED", obj);
    (StatusCode::CREATED, Json(obj)).into_response()
}

async fn replace_secret(
    State(sim): State<Arc<Sim>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Json(mut obj): Json<Value>,
) -> Response {
    let mut st = sim.lock();
    let Some(current) = st
        .objects
        .get(&("Secret", ns.clone(), name.clone()))
        .cloned()
    else {
        return status(404, "NotFound", format!("secrets \"{name}\" not found"));
    };
    let want = obj["metadata"]["resourceVersion"].clone();
    if !want.is_null() && want != current["metadata"]["resourceVersion"] {
        return status(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on secrets \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        );
    }
    obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
    obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    obj["metadata"]["namespace"] = json!(ns);
    let obj = sim.commit(&mut st, "Secret", "MODIFIED", obj);
    Json(obj).into_response()
}

async fn create_pod(
    State(sim): State<Arc<Sim>>,
    UrlPath(ns): UrlPath<String>,
    Json(obj): Json<Value>,
) -> Response {
    if obj["spec"]["containers"]
        .as_array()
        .is_none_or(|c| c.is_empty())
    {
        return status(
            422,
            "Invalid",
            "Pod is invalid: spec.containers: Required value",
        );
    }
    let mut obj = match admit(&sim, "Pod", &ns, obj) {
        Ok(o) => o,
        Err(r) => return r,
    };
    obj["status"] = json!({ "phase": "Pending", "qosClass": "Guaranteed" });
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let created = {
        let mut st = sim.lock();
        *st.created.entry("Pod").or_default() += 1;
        sim.commit(&mut st, "Pod", "ADDED", obj)
    };
    tokio::spawn(kubelet(Arc::clone(&sim), ns, name));
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn delete_pod(
    State(sim): State<Arc<Sim>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let grace = opts["gracePeriodSeconds"]
        .as_u64()
        .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let (pod, pid) = {
        let mut st = sim.lock();
        let Some(mut pod) = st.objects.get(&("Pod", ns.clone(), name.clone())).cloned() else {
            return status(404, "NotFound", format!("pods \"{name}\" not found"));
        };
        let grace = grace
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30);
        if pod["metadata"]["deletionTimestamp"].is_null() {
            pod["metadata"]["deletionTimestamp"] = json!(now());
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            pod = sim.commit(&mut st, "Pod", "MODIFIED", pod);
        }
        (pod, st.pids.get(&(ns.clone(), name.clone())).copied())
    };
    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(0);
    let sim2 = Arc::clone(&sim);
    tokio::spawn(async move {
        if let Some(pid) = pid {
            terminate(pid, Duration::from_secs(grace)).await;
        }
        sim2.lock().pids.remove(&(ns.clone(), name.clone()));
        sim2.event(
            &ns,
            &name,
            "Normal",
            "Killing",
            "Stopping container compute",
        );
        let dir = sim2.cfg.dir.join(&ns).join(&name);
        super::procs::detach_mounts_under(&dir);
        // The container's log outlives the pod (kept for whoever looks into a failure).
        let logs = sim2.cfg.dir.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let _ = std::fs::rename(
            dir.join("container.log"),
            logs.join(format!("{ns}-{name}.log")),
        );
        let _ = std::fs::remove_dir_all(&dir);
        let mut st = sim2.lock();
        if let Some(p) = st.objects.get(&("Pod", ns.clone(), name.clone())).cloned() {
            sim2.commit(&mut st, "Pod", "DELETED", p);
        }
    });
    Json(pod).into_response()
}

/// SIGTERM to the pod's main process, SIGKILL to all of it after `grace` (at once for zero).
async fn terminate(pid: i32, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !grace.is_zero() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    kill_tree(pid);
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// SIGKILL `pid` and everything below it (a container's processes all end with it).
fn kill_tree(pid: i32) {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(super::procs::children_of(all[i]));
        i += 1;
    }
    for p in all {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The simulated kubelet of one pod: schedule, pull, start, probe, watch the process.
async fn kubelet(sim: Arc<Sim>, ns: String, name: String) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let unschedulable = sim.lock().unschedulable.clone();
    if let Some(msg) = unschedulable {
        sim.update("Pod", &ns, &name, |p| {
            p["status"]["conditions"] = json!([{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                "lastTransitionTime": now(),
            }]);
        });
        sim.event(&ns, &name, "Warning", "FailedScheduling", &msg);
        return;
    }
    let ip = {
        let mut st = sim.lock();
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, st.next_ip));
        st.next_ip = st.next_ip.wrapping_add(1).max(2);
        ip
    };
    let Some(pod) = sim
        .lock()
        .objects
        .get(&("Pod", ns.clone(), name.clone()))
        .cloned()
    else {
        return;
    };
    sim.update("Pod", &ns, &name, |p| {
        p["spec"]["nodeName"] = json!("kubesim-node");
        p["status"]["conditions"] = json!([
            { "type": "PodScheduled", "status": "True", "lastTransitionTime": now() },
        ]);
    });
    sim.event(
        &ns,
        &name,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to kubesim-node"),
    );
    let container = pod["spec"]["containers"][0].clone();
    let image = container["image"].as_str().unwrap_or("").to_string();
    sim.event(
        &ns,
        &name,
        "Normal",
        "Pulling",
        &format!("Pulling image \"{image}\""),
    );
    let known = sim.lock().images.get(&image).cloned();
    let Some(bin_dir) = known else {
        let msg = format!(
            "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"
        );
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            sim.update("Pod", &ns, &name, |p| {
                p["status"]["containerStatuses"] = json!([{
                    "name": container["name"], "image": image, "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": { "waiting": { "reason": reason, "message": msg } },
                }]);
            });
            sim.event(&ns, &name, "Warning", "Failed", &msg);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    };
    match run_container(&sim, &ns, &name, &pod, &bin_dir, ip).await {
        Ok(pid) => {
            sim.event(&ns, &name, "Normal", "Started", "Started container compute");
            let probe = container["readinessProbe"]["httpGet"].clone();
            tokio::spawn(probe_loop(
                Arc::clone(&sim),
                ns.clone(),
                name.clone(),
                ip,
                probe,
                pid,
            ));
        }
        Err(e) => {
            sim.update("Pod", &ns, &name, |p| {
                p["status"]["containerStatuses"] = json!([{
                    "name": container["name"], "image": image, "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": { "waiting": { "reason": "RunContainerError", "message": e } },
                }]);
            });
            sim.event(&ns, &name, "Warning", "Failed", &e);
        }
    }
}

/// Materialize the volumes, build the environment and the command line, start the process.
async fn run_container(
    sim: &Arc<Sim>,
    ns: &str,
    name: &str,
    pod: &Value,
    bin_dir: &Path,
    ip: IpAddr,
) -> Result<i32, String> {
    let dir = sim.cfg.dir.join(ns).join(name);
    let vol_dir = dir.join("volumes");
    std::fs::create_dir_all(&vol_dir).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let secret_data = |secret: &str| -> Result<BTreeMap<String, Vec<u8>>, String> {
        let st = sim.lock();
        let s = st
            .objects
            .get(&("Secret", ns.to_string(), secret.to_string()))
            .ok_or_else(|| format!("secret \"{secret}\" not found"))?;
        let mut out = BTreeMap::new();
        for (k, v) in s["data"].as_object().into_iter().flatten() {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or(""))
                .map_err(|e| format!("secret {secret} key {k}: {e}"))?;
            out.insert(k.clone(), b);
        }
        Ok(out)
    };
    let mut volumes: HashMap<String, PathBuf> = HashMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or("").to_string();
        let at = vol_dir.join(&vname);
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
            for (k, bytes) in
                secret_data(secret).map_err(|e| format!("MountVolume.SetUp failed: {e}"))?
            {
                spg_core::fsmode::write_private(&at.join(&k), bytes).map_err(|e| e.to_string())?;
            }
            volumes.insert(vname, at);
        } else if v.get("emptyDir").is_some() {
            std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            volumes.insert(vname, at);
        } else if let Some(p) = v["hostPath"]["path"].as_str() {
            volumes.insert(vname, PathBuf::from(p));
        }
    }
    let c = &pod["spec"]["containers"][0];
    let mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let at = m["mountPath"].as_str()?.to_string();
            let host = volumes.get(m["name"].as_str()?)?.clone();
            Some((at, host))
        })
        .collect();
    let rewrite = |s: &str| -> String {
        for (at, host) in &mounts {
            if s == at || s.starts_with(&format!("{at}/")) {
                return format!("{}{}", host.display(), &s[at.len()..]);
            }
        }
        s.to_string()
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for f in c["envFrom"].as_array().into_iter().flatten() {
        if let Some(secret) = f["secretRef"]["name"].as_str() {
            for (k, v) in secret_data(secret)? {
                env.push((k, String::from_utf8_lossy(&v).into_owned()));
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let k = e["name"].as_str().unwrap_or("").to_string();
        let v = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == json!("status.podIP") {
            ip.to_string()
        } else {
            String::new()
        };
        env.push((k, rewrite(&v)));
    }
    let command: Vec<String> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(c["args"].as_array().into_iter().flatten())
        .map(|a| rewrite(&expand(a.as_str().unwrap_or(""), &env)))
        .collect();
    let Some(program) = command.first() else {
        return Err("the container has no command".into());
    };
    let exe = bin_dir.join(Path::new(program).file_name().unwrap_or_default());
    let log = std::fs::File::create(dir.join("container.log")).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    if let Ok(v) = std::env::var("SPG_REQUIRE_FUSE") {
        cmd.env("SPG_REQUIRE_FUSE", v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", exe.display()))?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    sim.lock()
        .pids
        .insert((ns.to_string(), name.to_string()), pid);
    sim.update("Pod", ns, name, |p| {
        p["status"]["phase"] = json!("Running");
        p["status"]["podIP"] = json!(ip.to_string());
        p["status"]["podIPs"] = json!([{ "ip": ip.to_string() }]);
        p["status"]["hostIP"] = json!("127.0.0.1");
        p["status"]["startTime"] = json!(now());
        p["status"]["conditions"] = json!([
            { "type": "PodScheduled", "status": "True" },
            { "type": "Initialized", "status": "True" },
            { "type": "ContainersReady", "status": "False" },
            { "type": "Ready", "status": "False" },
        ]);
        p["status"]["containerStatuses"] = json!([{
            "name": c["name"], "image": c["image"], "imageID": "kubesim", "ready": false,
            "restartCount": 0, "started": true,
            "state": { "running": { "startedAt": now() } },
        }]);
    });
    // The container's end.
    let fallback = c["terminationMessagePolicy"] == json!("FallbackToLogsOnError");
    let log_path = dir.join("container.log");
    let (sim2, ns2, name2) = (Arc::clone(sim), ns.to_string(), name.to_string());
    tokio::spawn(async move {
        let status = child.wait().await.ok();
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .as_ref()
            .and_then(|s| s.code().or_else(|| s.signal().map(|g| 128 + g)))
            .unwrap_or(255);
        // Whatever it started ends with the container.
        kill_tree(pid);
        // As the kubelet: on an error, the end of the log is the termination message (at most
        // 80 lines and 2048 bytes).
        let message = (fallback && code != 0).then(|| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            let start = tail.len().saturating_sub(2048);
            let start = (start..=tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(0);
            tail[start..].to_string()
        });
        sim2.update("Pod", &ns2, &name2, |p| {
            if p["status"]["reason"] == json!("Evicted") {
                return;
            }
            p["status"]["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
            p["status"]["conditions"] = json!([{ "type": "Ready", "status": "False" }]);
            p["status"]["containerStatuses"][0]["ready"] = json!(false);
            p["status"]["containerStatuses"][0]["state"] = json!({
                "terminated": {
                    "exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" },
                    "message": message,
                    "finishedAt": now(),
                }
            });
        });
    });
    Ok(pid)
}

/// Expand `$(VAR)` from `env` (an unknown one stays as written, as Kubernetes does).
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                let var = &after[..j];
                match env.iter().rev().find(|(k, _)| k == var) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("$(");
                        out.push_str(var);
                        out.push(')');
                    }
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The readiness probe: HTTPS GET without verification, as often as the simulation can.
async fn probe_loop(sim: Arc<Sim>, ns: String, name: String, ip: IpAddr, probe: Value, pid: i32) {
    let Some(port) = probe["port"].as_u64() else {
        return;
    };
    let path = probe["path"].as_str().unwrap_or("/").to_string();
    let scheme = probe["scheme"].as_str().unwrap_or("HTTP").to_lowercase();
    let Ok(http) = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(1))
        .build()
    else {
        return;
    };
    let url = format!("{scheme}://{}{path}", SocketAddr::new(ip, port as u16));
    let mut ready = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if sim.lock().pids.get(&(ns.clone(), name.clone())) != Some(&pid) || !alive(pid) {
            return;
        }
        let now_ready = http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if now_ready != ready {
            ready = now_ready;
            let flag = if ready { "True" } else { "False" };
            sim.update("Pod", &ns, &name, |p| {
                for c in p["status"]["conditions"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if c["type"] == json!("Ready") || c["type"] == json!("ContainersReady") {
                        c["status"] = json!(flag);
                    }
                }
                p["status"]["containerStatuses"][0]["ready"] = json!(ready);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_kubernetes() {
        let labels = json!({ "metadata": { "labels": { "a": "1", "b": "x" }, "name": "p" } });
        let ok = |s: &str| {
            Filter {
                labels: parse_selector(s).unwrap(),
                fields: vec![],
            }
            .accepts(&labels)
        };
        assert!(ok("a=1"));
        assert!(ok("a==1,b=x"));
        assert!(!ok("a!=1"));
        assert!(ok("a in (1,2)"));
        assert!(!ok("a notin (1,2)"));
        assert!(ok("b,!c"));
        assert!(!ok("c"));
        assert!(ok(""));
        assert!(parse_selector("a in (1").is_err());
        let f = Filter {
            labels: vec![],
            fields: parse_selector("metadata.name=p").unwrap(),
        };
        assert!(f.accepts(&labels));
    }

    #[test]
    fn variables_expand_as_kubernetes_does() {
        let env = vec![("POD_IP".to_string(), "10.0.0.7".to_string())];
        assert_eq!(expand("$(POD_IP):7443", &env), "10.0.0.7:7443");
        assert_eq!(expand("$(NOPE)/x", &env), "$(NOPE)/x");
        assert_eq!(expand("plain", &env), "plain");
    }
}

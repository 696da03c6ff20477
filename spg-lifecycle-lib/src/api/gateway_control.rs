//! The [`Gateway`] control surface over HTTP, for gateways that run as daemons of their own: the
//! routes a gateway daemon serves ([`router`]) and the client the control plane drives them
//! with ([`RemoteGateway`]). A daemon registers its control URL with the control plane
//! (`POST /v1/gateways`), again every few seconds; handoffs then freeze, drain and switch it
//! like the control plane's own gateway.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/gateway/databases/{name}` | its [`GatewaySessions`] |
//! | PUT | `/v1/gateway/databases/{name}/frozen` `{"frozen": true, "bound_ms": 40000}` | freeze (for at most `bound_ms`) or unfreeze |
//! | POST | `/v1/gateway/databases/{name}/target` `{"addr", "generation"}` | switch target |
//!
//! Every route requires the token the daemon registered with (a random one per daemon run, sent
//! to the control plane over its HTTPS API) as a Bearer token; wrong tokens are throttled per
//! address. The daemon serves them over HTTPS and registers the CA its certificate is checked
//! against; plain `http://` is accepted only for loopback addresses (embedded uses, tests).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use spg_core::{ComputeEndpoint, CoreError, CoreResult, DatabaseName, Gateway, GatewaySessions};

use super::server::ApiKey;

/// Body of the freeze route.
#[derive(Debug, Serialize, Deserialize)]
pub struct FrozenBody {
    /// Freeze (`true`) or unfreeze.
    pub frozen: bool,
    /// How long a freeze lasts at most, in milliseconds (default: 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_ms: Option<u64>,
}

/// A freeze's bound when the request gives none.
const DEFAULT_FREEZE_BOUND: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct ControlState {
    gateway: Arc<dyn Gateway>,
    key: ApiKey,
}

/// The control routes of `gateway`, guarded by `key` (the token it registered with).
pub fn router(gateway: Arc<dyn Gateway>, key: ApiKey) -> Router {
    let st = ControlState { gateway, key };
    Router::new()
        .route("/v1/gateway/databases/{name}", get(sessions))
        .route("/v1/gateway/databases/{name}/frozen", put(set_frozen))
        .route("/v1/gateway/databases/{name}/target", post(switch_target))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_key))
        .with_state(st)
}

async fn require_key(State(st): State<ControlState>, req: Request, next: Next) -> Response {
    if let Err(refused) = super::http::key_check(&req, |h| st.key.authorizes(h))
        .outcome()
        .await
    {
        return refused;
    }
    next.run(req).await
}

fn db_name(name: &str) -> Result<DatabaseName, (StatusCode, String)> {
    DatabaseName::new(name).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))
}

fn failed(e: CoreError) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

async fn sessions(State(st): State<ControlState>, Path(name): Path<String>) -> Response {
    let db = match db_name(&name) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    match st.gateway.sessions(&db).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => failed(e),
    }
}

async fn set_frozen(
    State(st): State<ControlState>,
    Path(name): Path<String>,
    Json(body): Json<FrozenBody>,
) -> Response {
    let db = match db_name(&name) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let freeze = body.frozen.then(|| {
        body.bound_ms
            .map_or(DEFAULT_FREEZE_BOUND, Duration::from_millis)
    });
    match st.gateway.set_frozen(&db, freeze).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

async fn switch_target(
    State(st): State<ControlState>,
    Path(name): Path<String>,
    Json(endpoint): Json<ComputeEndpoint>,
) -> Response {
    let db = match db_name(&name) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    match st.gateway.switch_target(&db, &endpoint).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

/// Whether `url` (`http://host:port...`) names a loopback host.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A gateway daemon, driven over its control routes.
#[derive(Clone)]
pub struct RemoteGateway {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for RemoteGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteGateway")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RemoteGateway {
    /// The gateway whose control routes are at `base` (`https://host:port`, checked against
    /// `ca_pem` only; `http://` for loopback addresses), with the token it registered.
    pub fn new(base: &str, key: &str, ca_pem: Option<&[u8]>) -> CoreResult<RemoteGateway> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        if base.starts_with("https://") {
            let ca = ca_pem.ok_or_else(|| {
                CoreError::Unavailable("an https gateway needs the CA of its certificate".into())
            })?;
            builder = crate::api::http::client_trusting(ca)
                .map_err(|e| CoreError::Unavailable(format!("gateway CA: {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5));
        } else if !is_loopback_url(base) {
            return Err(CoreError::Unavailable(
                "gateway control routes must be https:// (plain http only on loopback)".into(),
            ));
        }
        let http = builder
            .build()
            .map_err(|e| CoreError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(RemoteGateway {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http,
        })
    }

    /// Where its control routes are.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> CoreResult<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| CoreError::Unavailable(format!("gateway {}: {e}", self.base)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(CoreError::Unavailable(format!(
            "gateway {}: {status}: {}",
            self.base,
            text.trim()
        )))
    }

    fn url(&self, db: &DatabaseName, tail: &str) -> String {
        format!("{}/v1/gateway/databases/{db}{tail}", self.base)
    }
}

#[async_trait]
impl Gateway for RemoteGateway {
    async fn sessions(&self, db: &DatabaseName) -> CoreResult<GatewaySessions> {
        self.send(self.http.get(self.url(db, "")))
            .await?
            .json()
            .await
            .map_err(|e| CoreError::Unavailable(format!("gateway {}: {e}", self.base)))
    }

    async fn set_frozen(&self, db: &DatabaseName, freeze: Option<Duration>) -> CoreResult<()> {
        self.send(self.http.put(self.url(db, "/frozen")).json(&FrozenBody {
            frozen: freeze.is_some(),
            bound_ms: freeze.map(|b| b.as_millis() as u64),
        }))
        .await
        .map(|_| ())
    }

    async fn switch_target(&self, db: &DatabaseName, endpoint: &ComputeEndpoint) -> CoreResult<()> {
        self.send(self.http.post(self.url(db, "/target")).json(endpoint))
            .await
            .map(|_| ())
    }
}

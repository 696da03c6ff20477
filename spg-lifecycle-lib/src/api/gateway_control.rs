//! The [`Gateway`] control surface over HTTP, for gateways that run as daemons of their own: the
//! routes a gateway daemon serves ([`router`]) and the client the control plane drives them
//! with ([`RemoteGateway`]). A daemon registers its control URL with the control plane
//! (`POST /v1/gateways`), again every few seconds; handoffs then freeze, drain and switch it
//! like the control plane's own gateway.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/gateway/databases/{name}` | its [`GatewaySessions`] |
//! | PUT | `/v1/gateway/databases/{name}/frozen` `{"frozen": true}` | freeze or unfreeze |
//! | POST | `/v1/gateway/databases/{name}/target` `{"addr", "generation"}` | switch target |
//!
//! Every route requires the token the daemon registered with (a random one per daemon run, sent
//! to the control plane over its HTTPS API) as a Bearer token. The routes are plain HTTP: put
//! them on an interface only the control plane reaches.

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
}

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
    if !st.key.authorizes(req.headers()) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong API key\n").into_response();
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
    match st.gateway.set_frozen(&db, body.frozen).await {
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
    /// The gateway whose control routes are at `base` (`http://host:port`), with the token it
    /// registered.
    pub fn new(base: &str, key: &str) -> CoreResult<RemoteGateway> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
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

    async fn set_frozen(&self, db: &DatabaseName, frozen: bool) -> CoreResult<()> {
        self.send(
            self.http
                .put(self.url(db, "/frozen"))
                .json(&FrozenBody { frozen }),
        )
        .await
        .map(|_| ())
    }

    async fn switch_target(&self, db: &DatabaseName, endpoint: &ComputeEndpoint) -> CoreResult<()> {
        self.send(self.http.post(self.url(db, "/target")).json(endpoint))
            .await
            .map(|_| ())
    }
}

//! Routes of the API.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use spg_core::scram::{ct_eq, sha256, ScramVerifier};
use spg_core::{CoreError, DatabaseName, Lease, LeaseId, RoleName};

use super::model::*;
use crate::{ControlPlane, LifecycleError, RoleSecret};

/// The API key, kept only as its SHA-256 hash; compared in constant time.
#[derive(Clone)]
pub struct ApiKey {
    hash: [u8; 32],
}

impl ApiKey {
    /// From the plaintext key.
    pub fn new(key: &str) -> Self {
        ApiKey {
            hash: sha256(key.as_bytes()),
        }
    }

    /// From a hex-encoded SHA-256 hash of the key (as stored).
    pub fn from_hash_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            hash[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(ApiKey { hash })
    }

    /// Hex-encoded SHA-256 hash, for storage.
    pub fn hash_hex(&self) -> String {
        self.hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `presented` is the key.
    pub fn matches(&self, presented: &str) -> bool {
        ct_eq(&sha256(presented.as_bytes()), &self.hash)
    }

    /// Whether a request's `Authorization: Bearer <key>` header carries the key.
    pub fn authorizes(&self, headers: &axum::http::HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| self.matches(k.trim()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[derive(Clone)]
struct AppState {
    cp: ControlPlane,
    keys: ApiKeys,
    metrics: Arc<Registry>,
    /// How requests for databases another control plane owns reach it.
    peers: Option<reqwest::Client>,
}

/// Header marking a request one control plane forwarded to another (never forwarded again).
pub const FORWARDED_HEADER: &str = "x-spg-forwarded-by";

/// Largest request body forwarded to the owning control plane.
const MAX_FORWARD_BODY: usize = 2 << 20;

/// Set on a response whose database another control plane owns: where it answers.
#[derive(Clone)]
struct OwnerUrl(String);

/// The keys the API accepts: the admin key, good for every route, and a gateway key, good only
/// for what a gateway needs (role verifiers, wakes, leases, registering its control routes).
#[derive(Clone)]
pub struct ApiKeys {
    /// Every route.
    pub admin: ApiKey,
    /// The gateway routes only.
    pub gateway: Option<ApiKey>,
}

impl ApiKeys {
    /// Only an admin key.
    pub fn admin(key: ApiKey) -> ApiKeys {
        ApiKeys {
            admin: key,
            gateway: None,
        }
    }

    fn any(&self, headers: &HeaderMap) -> bool {
        self.admin.authorizes(headers)
            || self.gateway.as_ref().is_some_and(|g| g.authorizes(headers))
    }
}

/// An API error response.
/// (With where the owning control plane answers, for a `NotOwner`.)
struct ApiError(StatusCode, &'static str, String, Option<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.1.into(),
                message: self.2,
            },
        };
        let mut resp = (self.0, Json(body)).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if let Some(url) = self.3 {
            resp.extensions_mut().insert(OwnerUrl(url));
        }
        resp
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        use LifecycleError as L;
        match &e {
            L::NotOwner { url, .. } => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_owner",
                e.to_string(),
                url.clone(),
            ),
            L::DatabaseNotFound(_) | L::RoleNotFound { .. } => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string(), None)
            }
            L::AlreadyExists { .. } => {
                ApiError(StatusCode::CONFLICT, "already_exists", e.to_string(), None)
            }
            L::Invalid { .. } => ApiError(StatusCode::BAD_REQUEST, "invalid", e.to_string(), None),
            L::ShuttingDown => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
                None,
            ),
            _ if e.is_retryable() => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
                None,
            ),
            _ => {
                tracing::error!(error = %e, "API request failed");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the control plane log".into(),
                    None,
                )
            }
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound { .. } | CoreError::DatabaseNotFound(_) => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string(), None)
            }
            other => LifecycleError::from_core(other).into(),
        }
    }
}

impl LifecycleError {
    fn from_core(e: CoreError) -> LifecycleError {
        match e {
            CoreError::ShuttingDown => LifecycleError::ShuttingDown,
            CoreError::Invalid { what, reason } => LifecycleError::Invalid { what, reason },
            other if other.is_retryable() => LifecycleError::Timeout(other.to_string()),
            other => LifecycleError::Store(other.to_string()),
        }
    }
}

fn bad_request(what: &'static str, reason: impl ToString) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        "invalid",
        format!("invalid {what}: {}", reason.to_string()),
        None,
    )
}

fn db_name(s: &str) -> Result<DatabaseName, ApiError> {
    DatabaseName::new(s).map_err(|e| bad_request("database name", e))
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "request body too large".to_owned(),
                None,
            )
        } else {
            bad_request("request body", e.body_text())
        }
    })
}

/// Any key of the platform (the gateway routes), under the server's throttle of wrong keys.
async fn require_gateway_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(refused) = super::http::key_check(&req, |h| st.keys.any(h))
        .outcome()
        .await
    {
        return refused;
    }
    next.run(req).await
}

/// The admin key (every other route); the gateway key gets `403`.
async fn require_admin_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(refused) = super::http::key_check(&req, |h| st.keys.any(h))
        .outcome()
        .await
    {
        return refused;
    }
    if !st.keys.admin.authorizes(req.headers()) {
        return ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this is a gateway key: it may read role verifiers, wake databases, hold leases \
             and register a gateway, nothing else"
                .into(),
            None,
        )
        .into_response();
    }
    next.run(req).await
}

/// A request for a database another control plane owns goes on to the owner (once: the owner
/// answers it itself), with the caller's key; the owner's answer is returned as is. An owner
/// that does not answer is a 503 the caller retries (its lease expires, another takes over).
async fn forward_to_owner(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(client) = st.peers.clone() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_FORWARD_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "request body too large".into(),
                None,
            )
            .into_response()
        }
    };
    let resp = next
        .run(Request::from_parts(
            parts.clone(),
            axum::body::Body::from(bytes.clone()),
        ))
        .await;
    let Some(OwnerUrl(url)) = resp.extensions().get::<OwnerUrl>().cloned() else {
        return resp;
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut fwd = client
        .request(
            parts.method.clone(),
            format!("{}{path}", url.trim_end_matches('/')),
        )
        .header(
            FORWARDED_HEADER,
            st.cp.owner_id().unwrap_or("control-plane"),
        )
        .body(bytes);
    for h in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&h) {
            fwd = fwd.header(h, v.clone());
        }
    }
    let unavailable = |why: String| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the control plane that owns the database ({url}) {why}; retry"),
            None,
        )
        .into_response()
    };
    let answer = match fwd.send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%url, error = %e, "forwarding to the owner failed");
            return unavailable("does not answer".into());
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(body) => {
            let mut out = Response::new(axum::body::Body::from(body));
            *out.status_mut() = status;
            if let Some(ct) = content_type {
                out.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(e) => unavailable(format!("broke off its answer ({e})")),
    }
}

/// The API router for `cp`, guarded by `keys`, with `/metrics` rendering `metrics`.
pub fn router(cp: ControlPlane, keys: ApiKeys, metrics: Arc<Registry>) -> Router {
    router_with_peers(cp, keys, metrics, None)
}

/// [`router`] for a control plane sharing its store with others: requests for databases
/// another one owns are forwarded to it through `peers` (an HTTPS client trusting their CA).
pub fn router_with_peers(
    cp: ControlPlane,
    keys: ApiKeys,
    metrics: Arc<Registry>,
    peers: Option<reqwest::Client>,
) -> Router {
    let st = AppState {
        cp,
        keys,
        metrics,
        peers,
    };
    // What a gateway needs, with either key.
    let gateway = Router::new()
        .route("/v1/databases/{name}/wake", post(wake_database))
        .route(
            "/v1/databases/{name}/roles/{role}/verifier",
            get(role_verifier),
        )
        .route("/v1/databases/{name}/leases", post(acquire_lease))
        .route("/v1/leases/{id}/renew", post(renew_lease))
        .route("/v1/leases/{id}", delete(release_lease))
        .route("/v1/gateways", post(register_gateway))
        .route_layer(middleware::from_fn_with_state(st.clone(), forward_to_owner))
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            require_gateway_key,
        ));
    let v1 = Router::new()
        .route("/v1/databases", post(create_database).get(list_databases))
        .route("/v1/databases/{name}", get(show_database))
        .route("/v1/databases/{name}/stop", post(stop_database))
        .route("/v1/databases/{name}/handoff", post(handoff_database))
        .route(
            "/v1/databases/{name}/transitions",
            get(database_transitions),
        )
        .route("/v1/transitions", get(all_transitions))
        .route(
            "/v1/databases/{name}/roles",
            post(create_role).get(list_roles),
        )
        .route_layer(middleware::from_fn_with_state(st.clone(), forward_to_owner))
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            require_admin_key,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .merge(gateway)
        .merge(v1)
        .with_state(st)
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    render_metrics(&st.metrics)
}

/// Render a registry as a Prometheus text response.
pub fn render_metrics(registry: &Registry) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
                    .parse()
                    .expect("static header value"),
            );
            (headers, out).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn create_database(
    State(st): State<AppState>,
    body: Result<Json<CreateDatabase>, JsonRejection>,
) -> Result<(StatusCode, Json<DatabaseView>), ApiError> {
    let body = json_body(body)?;
    let name = db_name(&body.name)?;
    let status = st.cp.create_database(name).await?;
    Ok((StatusCode::CREATED, Json(status.into())))
}

async fn list_databases(State(st): State<AppState>) -> Result<Json<Vec<DatabaseView>>, ApiError> {
    let all = st.cp.databases().await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

async fn show_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DatabaseView>, ApiError> {
    Ok(Json(st.cp.database(&db_name(&name)?).await?.into()))
}

async fn stop_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DatabaseView>, ApiError> {
    Ok(Json(st.cp.stop_database(&db_name(&name)?).await?.into()))
}

async fn wake_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<WakeView>, ApiError> {
    let ep = st.cp.wake(&db_name(&name)?).await?;
    Ok(Json(WakeView {
        addr: ep.addr.to_string(),
        generation: ep.generation,
    }))
}

/// Start a handoff of the writer to another profile; 202 with the database (its `scale_state`
/// shows the progress).
async fn handoff_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<HandoffRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DatabaseView>), ApiError> {
    let db = db_name(&name)?;
    let req = json_body(body)?;
    // The handoff runs on in the background; its outcome is in the database's record.
    let _running = st
        .cp
        .start_handoff_because(&db, &req.profile, "requested through the API".into())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cp.database(&db).await?.into()),
    ))
}

/// A gateway daemon's control routes, registered (again) by the daemon.
#[derive(Deserialize, serde::Serialize)]
pub struct RegisterGateway {
    /// Where its control routes are (`https://host:port`; `http://` only on loopback).
    pub url: String,
    /// The Bearer token they accept.
    pub token: String,
    /// The CA (PEM) their certificate is checked against, for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

async fn register_gateway(
    State(st): State<AppState>,
    body: Result<Json<RegisterGateway>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let req = json_body(body)?;
    st.cp.register_gateway(
        &req.url,
        &req.token,
        req.ca_pem.as_deref().map(str::as_bytes),
    )?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn database_transitions(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<TransitionView>>, ApiError> {
    let db = db_name(&name)?;
    let ts = st
        .cp
        .transitions(Some(&db), q.limit.unwrap_or(50).min(1000))
        .await?;
    Ok(Json(ts.into_iter().map(Into::into).collect()))
}

async fn all_transitions(
    State(st): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<TransitionView>>, ApiError> {
    let ts = st
        .cp
        .transitions(None, q.limit.unwrap_or(50).min(1000))
        .await?;
    Ok(Json(ts.into_iter().map(Into::into).collect()))
}

async fn create_role(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<CreateRole>, JsonRejection>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let db = db_name(&name)?;
    let body = json_body(body)?;
    let role = RoleName::new(body.name).map_err(|e| bad_request("role name", e))?;
    let secret = match (body.password, body.scram_verifier) {
        (Some(pw), None) => RoleSecret::Password(pw),
        (None, Some(v)) => RoleSecret::Verifier(
            ScramVerifier::parse(&v).map_err(|e| bad_request("scram_verifier", e))?,
        ),
        _ => {
            return Err(bad_request(
                "role",
                "give exactly one of password and scram_verifier",
            ))
        }
    };
    let rec = st.cp.create_role(&db, role, secret).await?;
    Ok((StatusCode::CREATED, Json(rec.into())))
}

async fn list_roles(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<RoleView>>, ApiError> {
    let roles = st.cp.roles(&db_name(&name)?).await?;
    Ok(Json(roles.into_iter().map(Into::into).collect()))
}

async fn role_verifier(
    State(st): State<AppState>,
    Path((name, role)): Path<(String, String)>,
) -> Result<Json<VerifierView>, ApiError> {
    let db = db_name(&name)?;
    let role_name = RoleName::new(role.clone()).map_err(|_| {
        ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("role {role:?} does not exist"),
            None,
        )
    })?;
    match st.cp.role_verifier(&db, &role_name).await? {
        Some(v) => Ok(Json(VerifierView {
            scram_verifier: v.to_postgres_string(),
        })),
        None => Err(LifecycleError::RoleNotFound {
            database: db.to_string(),
            role,
        }
        .into()),
    }
}

async fn acquire_lease(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<AcquireLease>, JsonRejection>,
) -> Result<(StatusCode, Json<spg_core::LeaseGrant>), ApiError> {
    let db = db_name(&name)?;
    let body = json_body(body)?;
    let grant = st.cp.acquire(&db, &body.holder).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

async fn renew_lease(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<spg_core::LeaseGrant>, ApiError> {
    Ok(Json(st.cp.renew(&LeaseId(id)).await?))
}

async fn release_lease(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.cp.release(&LeaseId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_hash_roundtrip() {
        let k = ApiKey::new("s3cret");
        assert!(k.matches("s3cret"));
        assert!(!k.matches("s3cre"));
        let again = ApiKey::from_hash_hex(&k.hash_hex()).unwrap();
        assert!(again.matches("s3cret"));
        assert!(ApiKey::from_hash_hex("zz").is_none());
        assert!(!format!("{k:?}").contains("s3cret"));
    }
}

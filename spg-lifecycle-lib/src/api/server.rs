//! Routes of the API.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use spg_core::scram::{ct_eq, sha256, ScramVerifier};
use spg_core::{CoreError, DatabaseName, Lease, LeaseId, RoleName};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
pub(crate) struct AppState {
    pub(crate) cp: ControlPlane,
    pub(crate) keys: ApiKeys,
    /// The web console's sessions.
    pub(crate) console: Arc<super::console::Console>,
    metrics: Arc<Registry>,
    /// How requests for databases another control plane owns reach it.
    peers: Option<reqwest::Client>,
    /// The OpenAPI document of this router, rendered once it is built.
    openapi: Arc<std::sync::OnceLock<String>>,
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
            L::WakeRefused(message) => {
                ApiError(StatusCode::FORBIDDEN, "wake_refused", message.clone(), None)
            }
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

/// Any key of the platform (the gateway routes), under the server's throttle of wrong keys;
/// or a console session.
async fn require_gateway_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.console.admit(req.method(), req.headers()) {
        super::console::Admission::Admitted => return next.run(req).await,
        super::console::Admission::Refused(r) => return r,
        super::console::Admission::NoSession => {}
    }
    if let Err(refused) = super::http::key_check(&req, |h| st.keys.any(h))
        .outcome()
        .await
    {
        return refused;
    }
    next.run(req).await
}

/// The admin key (every other route), or a console session; the gateway key gets `403`.
async fn require_admin_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.console.admit(req.method(), req.headers()) {
        super::console::Admission::Admitted => return next.run(req).await,
        super::console::Admission::Refused(r) => return r,
        super::console::Admission::NoSession => {}
    }
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
    if !parts.headers.contains_key(header::AUTHORIZATION) {
        // A console session is this control plane's own: the owner would not know it.
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_owner",
            format!(
                "the control plane at {url} owns this database now; use its console, or the \
                 API with a key"
            ),
            None,
        )
        .into_response();
    }
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
    router_with_console(cp, keys, metrics, peers, Arc::default())
}

/// [`router_with_peers`], with the web console's state (`/console`; its sessions may use the
/// `/v1` API in place of a key).
pub fn router_with_console(
    cp: ControlPlane,
    keys: ApiKeys,
    metrics: Arc<Registry>,
    peers: Option<reqwest::Client>,
    console: Arc<super::console::Console>,
) -> Router {
    let st = AppState {
        cp,
        keys,
        console,
        metrics,
        peers,
        openapi: Arc::default(),
    };
    let (router, mut doc) = documented_router(st.clone()).split_for_parts();
    // After the routes joined the document (a derive's modifiers run before).
    utoipa::Modify::modify(&Conventions, &mut doc);
    let json = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"rendering the document: {e}\"}}"));
    let _ = st.openapi.set(json);
    router.with_state(st)
}

/// Every route, each registered together with its OpenAPI description (so that the two cannot
/// drift apart): what a gateway needs (either key), the admin routes, and the open ones.
fn documented_router(st: AppState) -> OpenApiRouter<AppState> {
    let gateway = OpenApiRouter::new()
        .routes(routes!(wake_database))
        .routes(routes!(role_verifier))
        .routes(routes!(acquire_lease))
        .routes(routes!(renew_lease))
        .routes(routes!(release_lease))
        .routes(routes!(register_gateway))
        .route_layer(middleware::from_fn_with_state(st.clone(), forward_to_owner))
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            require_gateway_key,
        ));
    let admin = OpenApiRouter::new()
        .routes(routes!(create_database, list_databases))
        .routes(routes!(show_database, delete_database))
        .routes(routes!(branch_database))
        .routes(routes!(restore_database))
        .routes(routes!(database_history))
        .routes(routes!(set_retention))
        .routes(routes!(stop_database))
        .routes(routes!(handoff_database))
        .routes(routes!(database_transitions))
        .routes(routes!(all_transitions))
        .routes(routes!(database_usage))
        .routes(routes!(event_stream))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(create_role, list_roles))
        .route_layer(middleware::from_fn_with_state(st.clone(), forward_to_owner))
        .route_layer(middleware::from_fn_with_state(st, require_admin_key));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(super::console::index))
        .routes(routes!(super::console::asset))
        .routes(routes!(
            super::console::session,
            super::console::sign_in,
            super::console::sign_out
        ))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi_json))
        .merge(gateway)
        .merge(admin)
}

/// The document's frame: what the routes do not say themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "SPG control plane API",
        description = "Databases, roles, wakes, leases and handoffs of a serverless PostgreSQL \
                       platform. Every `/v1` route but this document wants \
                       `Authorization: Bearer <API key>`; errors are `{\"error\": {\"code\", \
                       \"message\"}}`, and `503` means retrying may succeed."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "databases", description = "Databases and their computes"),
        (name = "roles", description = "Tenant roles"),
        (name = "gateway", description = "What a gateway needs; the gateway key is enough"),
        (name = "operations", description = "Health, metrics and this document"),
        (name = "console", description = "The web console: its page and its sessions"),
    )
)]
struct ApiDoc;

/// What every `/v1` route shares, added to each operation: the Bearer key, and the errors the
/// guards and the error mapping answer with.
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, SecurityRequirement};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin key, or for the `gateway` routes the gateway key",
                    ))
                    .build(),
            ),
        );
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.security = Some(vec![SecurityRequirement::new(
                    "api_key",
                    Vec::<String>::new(),
                )]);
                let gateway = op
                    .tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == "gateway"));
                let mut common = vec![
                    ("400", "The request is not valid (`invalid`)"),
                    (
                        "401",
                        "No key, or a wrong one, or an ended console session (`unauthorized`)",
                    ),
                    (
                        "429",
                        "Too many wrong keys from this address (`too_many_requests`)",
                    ),
                    (
                        "503",
                        "Not now; retry (`unavailable`, `shutting_down`, `not_owner`)",
                    ),
                ];
                common.push(match gateway {
                    false => (
                        "403",
                        "A gateway key on an admin route (`forbidden`), or a console session's \
                         change without its CSRF token (`csrf`)",
                    ),
                    true => (
                        "403",
                        "A console session's change without its CSRF token (`csrf`)",
                    ),
                });
                if path.contains('{') {
                    common.push(("404", "No such database, role or lease (`not_found`)"));
                }
                for (status, what) in common {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(what).into());
                }
            }
        }
    }
}

/// The service answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// This document (OpenAPI 3.1), generated from the routes themselves.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json(State(st): State<AppState>) -> Response {
    let body = st.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The control plane's Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", body = String,
               content_type = "application/openmetrics-text")))]
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

/// Create a database (stopped; the first connection wakes it).
#[utoipa::path(post, path = "/v1/databases", tag = "databases", request_body = CreateDatabase,
    responses((status = 201, description = "Created", body = DatabaseView),
              (status = 409, description = "It exists (`already_exists`)", body = ErrorBody)))]
async fn create_database(
    State(st): State<AppState>,
    body: Result<Json<CreateDatabase>, JsonRejection>,
) -> Result<(StatusCode, Json<DatabaseView>), ApiError> {
    let body = json_body(body)?;
    let name = db_name(&body.name)?;
    let status = st.cp.create_database(name).await?;
    Ok((StatusCode::CREATED, Json(status.into())))
}

/// Create a database as a branch of this one, at a point of its history: a copy made in
/// about a second whatever the size (it shares the parent's storage), with the parent's roles.
/// The parent is not woken or disturbed.
#[utoipa::path(post, path = "/v1/databases/{name}/branches", tag = "databases", params(("name" = DatabaseName, Path, description = "The parent")),
    request_body = BranchRequest,
    responses((status = 201, description = "Created (stopped; the first connection wakes it)", body = BranchView),
              (status = 409, description = "The name is taken (`already_exists`)", body = ErrorBody)))]
async fn branch_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<BranchRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BranchView>), ApiError> {
    let parent = db_name(&name)?;
    let body = json_body(body)?;
    let child = db_name(&body.name)?;
    let at = body.at.as_deref().unwrap_or("now").parse()?;
    let passwords = if body.regenerate_passwords {
        crate::controlplane::BranchPasswords::Regenerate
    } else {
        crate::controlplane::BranchPasswords::Keep
    };
    let made = st
        .cp
        .branch_database_as(child, &parent, at, passwords, body.ephemeral)
        .await?;
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// Move the database back to a moment of its history (point-in-time restore). Its compute
/// stops (sessions are disconnected); the state it had is kept as a branch, so a restore can
/// be undone; it continues from the moment as a new generation.
#[utoipa::path(post, path = "/v1/databases/{name}/restore", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    request_body = RestoreRequest,
    responses((status = 200, description = "Restored (stopped; the next connection wakes it)", body = RestoreView),
              (status = 400, description = "The moment is outside its history (`invalid`)", body = ErrorBody),
              (status = 409, description = "The kept branch's name is taken (`already_exists`)", body = ErrorBody)))]
async fn restore_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<RestoreRequest>, JsonRejection>,
) -> Result<Json<RestoreView>, ApiError> {
    let db = db_name(&name)?;
    let body = json_body(body)?;
    let at = body.to.parse()?;
    let keep = body.keep_as.as_deref().map(db_name).transpose()?;
    let restored = st.cp.restore_database(&db, at, keep).await?;
    Ok(Json(restored.into()))
}

/// How far back its history reaches: the first moment and LSN a branch can start at, the end,
/// and the bytes storage keeps for it.
#[utoipa::path(get, path = "/v1/databases/{name}/history", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    responses((status = 200, description = "Its history window", body = HistoryView)))]
async fn database_history(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HistoryView>, ApiError> {
    let db = db_name(&name)?;
    history_view(&st, db).await.map(Json)
}

/// Give the database its own history window (or `null`: back to the platform's default): every
/// moment within it stays reachable for branches and restores; garbage collection takes what is
/// older.
#[utoipa::path(put, path = "/v1/databases/{name}/retention", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    request_body = RetentionRequest,
    responses((status = 200, description = "Its history window", body = HistoryView)))]
async fn set_retention(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<RetentionRequest>, JsonRejection>,
) -> Result<Json<HistoryView>, ApiError> {
    let db = db_name(&name)?;
    let body = json_body(body)?;
    st.cp
        .set_retention(
            &db,
            body.retention_seconds.map(std::time::Duration::from_secs),
        )
        .await?;
    history_view(&st, db).await.map(Json)
}

async fn history_view(st: &AppState, db: DatabaseName) -> Result<HistoryView, ApiError> {
    let (reachable, stored) = st.cp.history_window(&db).await?;
    let retention = st.cp.retention(&db).await?;
    Ok(HistoryView {
        database: db.to_string(),
        oldest_at: reachable.map(|r| rfc3339(r.oldest_at_ms)),
        oldest_lsn: reachable.map(|r| r.oldest_lsn.to_string()),
        newest_lsn: reachable.map(|r| r.newest_lsn.to_string()),
        images: reachable.map_or(0, |r| r.images),
        pinned_bytes: stored.map(|s| s.image_bytes + s.wal_archive_bytes),
        retention_seconds: retention.map(|d| d.as_secs()),
    })
}

/// Every database.
#[utoipa::path(get, path = "/v1/databases", tag = "databases",
    responses((status = 200, description = "The databases", body = Vec<DatabaseView>)))]
async fn list_databases(State(st): State<AppState>) -> Result<Json<Vec<DatabaseView>>, ApiError> {
    let all = st.cp.databases().await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

/// One database: state, generation, profile, handoff, last boot and stop.
#[utoipa::path(get, path = "/v1/databases/{name}", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    responses((status = 200, description = "The database", body = DatabaseView)))]
async fn show_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DatabaseView>, ApiError> {
    Ok(Json(st.cp.database(&db_name(&name)?).await?.into()))
}

/// Delete the database: its compute stops (sessions are disconnected), its record and roles go,
/// and storage releases its images, archived WAL and WAL log. Its branches live on (the chunks
/// they share stay theirs). The name is free afterwards.
#[utoipa::path(delete, path = "/v1/databases/{name}", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    responses((status = 200, description = "Deleted", body = DeletedView),
              (status = 404, description = "No such database (`not_found`)", body = ErrorBody)))]
async fn delete_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeletedView>, ApiError> {
    let db = db_name(&name)?;
    st.cp.delete_database(&db).await?;
    Ok(Json(DeletedView {
        database: db.to_string(),
    }))
}

/// Stop its compute now (it wakes again on the next connection).
#[utoipa::path(post, path = "/v1/databases/{name}/stop", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    responses((status = 200, description = "Stopped", body = DatabaseView)))]
async fn stop_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DatabaseView>, ApiError> {
    Ok(Json(st.cp.stop_database(&db_name(&name)?).await?.into()))
}

/// Start its compute (if it is not running); returns where it listens.
#[utoipa::path(post, path = "/v1/databases/{name}/wake", tag = "gateway", params(("name" = DatabaseName, Path, description = "The database")),
    responses((status = 200, description = "It runs", body = WakeView),
              (status = 403, description = "The pre-wake hook refused it (`wake_refused`; the message is the hook's)", body = ErrorBody)))]
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
#[utoipa::path(post, path = "/v1/databases/{name}/handoff", tag = "databases", params(("name" = DatabaseName, Path, description = "The database")),
    request_body = HandoffRequest,
    responses((status = 202, description = "Started; `scale_state` shows its progress", body = DatabaseView)))]
async fn handoff_database(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<HandoffRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DatabaseView>), ApiError> {
    let db = db_name(&name)?;
    let req = json_body(body)?;
    // The handoff runs on in the background; its outcome is in the database's record.
    let plan = st
        .cp
        .handoff_plan(&db, &req.profile, "requested through the API".into())
        .await?;
    let _running = spg_core::AutoscaleHandoff::begin_handoff(&st.cp, plan).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cp.database(&db).await?.into()),
    ))
}

/// A gateway daemon's control routes, registered (again) by the daemon.
#[derive(Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct RegisterGateway {
    /// Where its control routes are (`https://host:port`; `http://` only on loopback).
    pub url: String,
    /// The Bearer token they accept.
    pub token: String,
    /// The CA (PEM) their certificate is checked against, for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// Register (or refresh) a gateway daemon's control routes.
#[utoipa::path(post, path = "/v1/gateways", tag = "gateway", request_body = RegisterGateway,
    responses((status = 204, description = "Registered")))]
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

/// Which events a stream carries.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only this database's.
    database: Option<String>,
}

/// Lifecycle events as they happen (server-sent events: `event:` the kind, `id:` the event's
/// id, `data:` the event as JSON); a comment every 15 s keeps the stream open.
#[utoipa::path(get, path = "/v1/events", tag = "operations", params(EventQuery),
    responses((status = 200, description = "An endless `text/event-stream` of events",
               body = crate::events::Event, content_type = "text/event-stream")))]
async fn event_stream(
    State(st): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let only = q.database.as_deref().map(db_name).transpose()?;
    let rx = st.cp.events();
    let stream = futures::stream::unfold((rx, only), |(mut rx, only)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if only.as_ref().is_none_or(|d| *d == e.database) => {
                    let sse = SseEvent::default()
                        .event(e.kind.as_str())
                        .id(e.id.clone())
                        .json_data(&e)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                    return Some((Ok::<_, std::convert::Infallible>(sse), (rx, only)));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let sse = SseEvent::default().comment(format!("{n} events missed"));
                    return Some((Ok(sse), (rx, only)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// The newest webhook deliveries (every try), newest first.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "operations", params(LimitQuery),
    responses((status = 200, description = "Deliveries", body = Vec<crate::webhooks::Delivery>)))]
async fn webhook_deliveries(
    State(st): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> Json<Vec<crate::webhooks::Delivery>> {
    Json(st.cp.webhook_deliveries(q.limit.unwrap_or(50).min(1000)))
}

/// The span usage is metered over.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SpanQuery {
    /// Start (RFC 3339; default: the database's creation).
    from: Option<String>,
    /// End (RFC 3339; default and at most: now).
    to: Option<String>,
}

fn instant_ms(what: &'static str, s: &str) -> Result<u64, ApiError> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| bad_request(what, e))?;
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| bad_request(what, e))?;
    Ok(since.as_millis() as u64)
}

/// What the database used: compute seconds (time ready) by profile, wakes and handoffs,
/// metered from its transitions.
#[utoipa::path(get, path = "/v1/databases/{name}/usage", tag = "databases",
    params(("name" = DatabaseName, Path, description = "The database"), SpanQuery),
    responses((status = 200, description = "Usage over the span", body = UsageView)))]
async fn database_usage(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<SpanQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let db = db_name(&name)?;
    let from = q
        .from
        .as_deref()
        .map(|s| instant_ms("from", s))
        .transpose()?;
    let to = match &q.to {
        Some(s) => instant_ms("to", s)?,
        None => u64::MAX,
    };
    if from.is_some_and(|f| to < f) {
        return Err(bad_request("span", "`to` is before `from`"));
    }
    let (usage, stored) = st.cp.usage(&db, from, to).await?;
    Ok(Json(UsageView::new(db, &usage, stored)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// How many (default 50, at most 1000).
    limit: Option<usize>,
}

/// Its recent state transitions, newest first.
#[utoipa::path(get, path = "/v1/databases/{name}/transitions", tag = "databases",
    params(("name" = DatabaseName, Path, description = "The database"), LimitQuery),
    responses((status = 200, description = "Transitions", body = Vec<TransitionView>)))]
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

/// Recent state transitions of all databases, newest first.
#[utoipa::path(get, path = "/v1/transitions", tag = "databases", params(LimitQuery),
    responses((status = 200, description = "Transitions", body = Vec<TransitionView>)))]
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

/// Create a role: with a password (hashed at once) or a SCRAM verifier.
#[utoipa::path(post, path = "/v1/databases/{name}/roles", tag = "roles", params(("name" = DatabaseName, Path, description = "The database")),
    request_body = CreateRole,
    responses((status = 201, description = "Created", body = RoleView),
              (status = 409, description = "It exists (`already_exists`)", body = ErrorBody)))]
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

/// Its roles (names only).
#[utoipa::path(get, path = "/v1/databases/{name}/roles", tag = "roles", params(("name" = DatabaseName, Path, description = "The database")),
    responses((status = 200, description = "Roles", body = Vec<RoleView>)))]
async fn list_roles(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<RoleView>>, ApiError> {
    let roles = st.cp.roles(&db_name(&name)?).await?;
    Ok(Json(roles.into_iter().map(Into::into).collect()))
}

/// A role's SCRAM verifier, for a gateway to authenticate clients.
#[utoipa::path(get, path = "/v1/databases/{name}/roles/{role}/verifier", tag = "gateway",
    params(("name" = DatabaseName, Path, description = "The database"), ("role" = RoleName, Path, description = "The role")),
    responses((status = 200, description = "The verifier", body = VerifierView)))]
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

/// Take a lease that keeps the database awake.
#[utoipa::path(post, path = "/v1/databases/{name}/leases", tag = "gateway", params(("name" = DatabaseName, Path, description = "The database")),
    request_body = AcquireLease,
    responses((status = 201, description = "Granted", body = spg_core::LeaseGrant)))]
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

/// Renew a lease.
#[utoipa::path(post, path = "/v1/leases/{id}/renew", tag = "gateway",
    params(("id" = String, Path, description = "The lease")),
    responses((status = 200, description = "Renewed", body = spg_core::LeaseGrant)))]
async fn renew_lease(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<spg_core::LeaseGrant>, ApiError> {
    Ok(Json(st.cp.renew(&LeaseId(id)).await?))
}

/// Release a lease.
#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "gateway",
    params(("id" = String, Path, description = "The lease")),
    responses((status = 204, description = "Released")))]
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

    /// Every route goes through `routes!` (registered with its description): none is added
    /// to the router undocumented.
    #[test]
    fn every_route_is_registered_with_its_description() {
        let source = include_str!("server.rs");
        for untracked in [concat!(".route", "("), concat!(".route_service", "(")] {
            assert!(
                !source.contains(untracked),
                "a route added with `{untracked}` is missing from /v1/openapi.json"
            );
        }
    }

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

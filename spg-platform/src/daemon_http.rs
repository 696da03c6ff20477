//! What the daemons' HTTPS APIs share: Bearer-key authentication on `/v1`, open `/healthz` and
//! `/metrics`, storage errors as JSON bodies with a code clients map back, and clients that trust
//! only the daemon's CA.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use spg_core::DatabaseName;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::StorageError;

/// The body of an error answer: a code clients map back to the error (`stale_generation`,
/// `image_exists`, `not_found`, `corrupt`, `unavailable`), the message, and for a stale
/// generation the current one.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrBody {
    /// The code.
    pub error: String,
    /// What happened.
    pub message: String,
    /// The generation in force, for `stale_generation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
}

/// An error answer of a daemon's API.
pub enum ApiErr {
    /// The request itself is wrong (400).
    Bad(String),
    /// The storage operation failed.
    Storage(StorageError),
}

impl From<StorageError> for ApiErr {
    fn from(e: StorageError) -> Self {
        ApiErr::Storage(e)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let e = match self {
            ApiErr::Bad(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
            ApiErr::Storage(e) => e,
        };
        let (status, code, current) = match &e {
            StorageError::StaleGeneration { current, .. } => {
                (StatusCode::CONFLICT, "stale_generation", Some(*current))
            }
            StorageError::ImageExists(_) => (StatusCode::CONFLICT, "image_exists", None),
            StorageError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            StorageError::Protocol(_) => (StatusCode::CONFLICT, "conflict", None),
            StorageError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt", None),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
        };
        if status != StatusCode::NOT_FOUND {
            tracing::warn!(error = %e, "request failed");
        }
        let body = ErrBody {
            error: code.into(),
            message: e.to_string(),
            current,
        };
        (status, Json(body)).into_response()
    }
}

/// A database name from a URL, or a 400.
pub fn db_name(name: &str) -> Result<DatabaseName, ApiErr> {
    DatabaseName::new(name).map_err(|e| ApiErr::Bad(e.to_string()))
}

/// `v1` (every route needing `Authorization: Bearer <key>`), plus unauthenticated `/healthz`
/// and `/metrics` (rendering `metrics`).
pub fn with_open_routes(v1: Router, key: ApiKey, metrics: Arc<Registry>) -> Router {
    let v1 = spg_lifecycle_lib::api::http::guarded(v1, key);
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&metrics);
                async move { spg_lifecycle_lib::api::server::render_metrics(&m) }
            }),
        )
}

/// An HTTPS client of a daemon whose certificate `ca_pem` signed (no other roots).
pub fn client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    let builder = spg_lifecycle_lib::api::http::client_trusting(ca_pem)
        .map_err(|e| anyhow::anyhow!("CA certificate: {e}"))?;
    Ok(daemon_settings(builder).build()?)
}

/// Timeouts and pool of every daemon client.
fn daemon_settings(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
}

/// A plain-HTTP client of daemons on this host behind the Unix socket at `socket`: every
/// request goes there whatever its URL's host (`http://localhost/...`). Same timeouts and pool
/// as [`client`]; no TLS (the socket's directory is the access control).
pub fn socket_client(socket: &std::path::Path) -> anyhow::Result<reqwest::Client> {
    Ok(daemon_settings(reqwest::Client::builder().unix_socket(socket).no_proxy()).build()?)
}

/// Open (or keep open) a pooled connection of `http` to the daemon at `base`: a request to its
/// open `/healthz`, whose answer does not matter.
pub async fn warm(http: &reqwest::Client, base: &str) {
    let _ = http
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
}

//! What the daemons' HTTPS APIs share: Bearer-key authentication on `/v1`, open `/healthz` and
//! `/metrics`, and clients that trust only the daemon's CA.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use spg_lifecycle_lib::api::ApiKey;

/// `v1` (every route needing `Authorization: Bearer <key>`), plus unauthenticated `/healthz`
/// and `/metrics` (rendering `metrics`).
pub fn with_open_routes(v1: Router, key: ApiKey, metrics: Arc<Registry>) -> Router {
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(key, require_key));
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

async fn require_key(State(key): State<ApiKey>, req: Request, next: Next) -> Response {
    if !key.authorizes(req.headers()) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong API key").into_response();
    }
    next.run(req).await
}

/// An HTTPS client of a daemon whose certificate `ca_pem` signed (no other roots).
pub fn client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem)?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build()?)
}

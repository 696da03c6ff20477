//! The safekeeper daemon's HTTPS API, and the client that makes a remote safekeeper a
//! [`SafekeeperApi`] member of a [`SafekeeperSet`](spg_storage_lib::safekeeper::quorum::SafekeeperSet).
//!
//! | route | |
//! |---|---|
//! | `POST /v1/safekeeper/{db}/elect` `{generation}` | promise (or reject) a generation |
//! | `POST /v1/safekeeper/{db}/follow` `{generation, source}` | stream from that compute |
//! | `POST /v1/safekeeper/{db}/unfollow` `{generation}` | stop streaming from it |
//! | `POST /v1/safekeeper/{db}/reset` `{generation, log}` | start the log over (a restore) |
//! | `GET /v1/safekeeper/{db}` | generation, log, following |
//! | `DELETE /v1/safekeeper/{db}` | forget a deleted database |
//! | `GET /v1/safekeeper/{db}/wal/{file}?generation=g` | a WAL or history file, for recovery |
//! | `GET /metrics`, `GET /healthz` | unauthenticated |
//!
//! Everything under `/v1` needs `Authorization: Bearer <key>`: an election fences a database.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use spg_core::{DatabaseName, Generation, ReplicationSource};
use spg_lifecycle_lib::api::ApiKey;

use crate::daemon_http::{db_name, ApiErr, ErrBody};
use spg_storage_lib::safekeeper::node::{SafekeeperNode, SafekeeperStatus};
use spg_storage_lib::safekeeper::quorum::SafekeeperApi;
use spg_storage_lib::safekeeper::{Vote, WalLog};
use spg_storage_lib::StorageError;

#[derive(Clone)]
struct St {
    node: Arc<SafekeeperNode>,
}

#[derive(Serialize, Deserialize)]
struct GenBody {
    generation: Generation,
}

#[derive(Serialize, Deserialize)]
struct ResetBody {
    generation: Generation,
    log: WalLog,
}

#[derive(Serialize, Deserialize)]
struct FollowBody {
    generation: Generation,
    source: ReplicationSource,
}

async fn elect(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(b): Json<GenBody>,
) -> Result<Json<Vote>, ApiErr> {
    let db = db_name(&db)?;
    st.node
        .elect(&db, b.generation)
        .await
        .map(Json)
        .map_err(ApiErr::from)
}

async fn follow(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(b): Json<FollowBody>,
) -> Result<StatusCode, ApiErr> {
    let db = db_name(&db)?;
    st.node
        .follow(&db, b.generation, &b.source)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(ApiErr::from)
}

async fn unfollow(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(b): Json<GenBody>,
) -> Result<StatusCode, ApiErr> {
    let db = db_name(&db)?;
    st.node
        .unfollow(&db, b.generation)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(ApiErr::from)
}

async fn reset(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(b): Json<ResetBody>,
) -> Result<StatusCode, ApiErr> {
    let db = db_name(&db)?;
    st.node
        .reset(&db, b.generation, b.log)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(ApiErr::from)
}

async fn forget(State(st): State<St>, Path(db): Path<String>) -> Result<StatusCode, ApiErr> {
    let db = db_name(&db)?;
    st.node
        .forget(&db)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(ApiErr::from)
}

async fn status(
    State(st): State<St>,
    Path(db): Path<String>,
) -> Result<Json<SafekeeperStatus>, ApiErr> {
    let db = db_name(&db)?;
    st.node.status(&db).await.map(Json).map_err(ApiErr::from)
}

async fn wal_file(
    State(st): State<St>,
    Path((db, file)): Path<(String, String)>,
    Query(q): Query<GenBody>,
) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    match st.node.wal_file(&db, q.generation, &file).await {
        Ok(Some(bytes)) => Ok(bytes.into_response()),
        Ok(None) => Ok(StatusCode::NOT_FOUND.into_response()),
        Err(e) => Err(e.into()),
    }
}

/// The daemon's router: the API guarded by `key`, and `/metrics` rendering `metrics`.
pub fn router(node: Arc<SafekeeperNode>, key: ApiKey, metrics: Arc<Registry>) -> Router {
    let v1 = Router::new()
        .route("/v1/safekeeper/{db}", get(status).delete(forget))
        .route("/v1/safekeeper/{db}/elect", post(elect))
        .route("/v1/safekeeper/{db}/follow", post(follow))
        .route("/v1/safekeeper/{db}/unfollow", post(unfollow))
        .route("/v1/safekeeper/{db}/reset", post(reset))
        .route("/v1/safekeeper/{db}/wal/{file}", get(wal_file))
        .with_state(St { node });
    crate::daemon_http::with_open_routes(v1, key, metrics)
}

/// A safekeeper over its HTTP API (HTTPS, or plain HTTP on this host's storage socket).
pub struct HttpSafekeeper {
    name: String,
    base: String,
    key: String,
    http: reqwest::Client,
}

impl HttpSafekeeper {
    /// The safekeeper `name` at `base_url`, trusting `ca_pem` only.
    pub fn new(name: &str, base_url: &str, api_key: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Self::with_client(
            name,
            base_url,
            api_key,
            crate::daemon_http::client(ca_pem)?,
        ))
    }

    /// The safekeeper `name` at `base_url`, reached with `http` (see
    /// [`crate::pageserver_http::HttpPageserver::with_client`]).
    pub fn with_client(name: &str, base_url: &str, api_key: &str, http: reqwest::Client) -> Self {
        HttpSafekeeper {
            name: name.into(),
            base: base_url.trim_end_matches('/').into(),
            key: api_key.into(),
            http,
        }
    }

    fn url(&self, db: &DatabaseName, rest: &str) -> String {
        format!("{}/v1/safekeeper/{}{rest}", self.base, db.as_str())
    }

    /// Open (or keep open) a connection to the safekeeper ahead of need.
    pub async fn warm(&self) {
        crate::daemon_http::warm(&self.http, &self.base).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, StorageError> {
        let started = std::time::Instant::now();
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        tracing::debug!(url = %resp.url().path(), ms = started.elapsed().as_secs_f64() * 1e3, "safekeeper answered");
        if resp.status() == reqwest::StatusCode::CONFLICT {
            let body: ErrBody = resp.json().await.map_err(|e| unavailable(&self.name, e))?;
            return Err(StorageError::StaleGeneration {
                offered: 0,
                current: body.current.unwrap_or(0),
            });
        }
        Ok(resp)
    }

    async fn ok(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, StorageError> {
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(StorageError::Protocol(format!(
                "safekeeper {} answered {status}: {}",
                self.name,
                text.chars().take(300).collect::<String>()
            )));
        }
        Ok(resp)
    }
}

fn unavailable(name: &str, e: reqwest::Error) -> StorageError {
    StorageError::Io {
        op: "request",
        path: format!("safekeeper {name}").into(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[async_trait]
impl SafekeeperApi for HttpSafekeeper {
    fn name(&self) -> &str {
        &self.name
    }

    async fn elect(&self, db: &DatabaseName, g: Generation) -> Result<Vote, StorageError> {
        let req = self
            .http
            .post(self.url(db, "/elect"))
            .json(&GenBody { generation: g });
        self.ok(req)
            .await?
            .json()
            .await
            .map_err(|e| unavailable(&self.name, e))
    }

    async fn wal_file(
        &self,
        db: &DatabaseName,
        g: Generation,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let req = self
            .http
            .get(self.url(db, &format!("/wal/{name}")))
            .query(&[("generation", g.0)]);
        let resp = self.send(req).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(StorageError::Protocol(format!(
                "safekeeper {} answered {}",
                self.name,
                resp.status()
            )));
        }
        let bytes = resp.bytes().await.map_err(|e| unavailable(&self.name, e))?;
        Ok(Some(bytes.to_vec()))
    }

    async fn follow(
        &self,
        db: &DatabaseName,
        g: Generation,
        source: &ReplicationSource,
    ) -> Result<(), StorageError> {
        let body = FollowBody {
            generation: g,
            source: source.clone(),
        };
        self.ok(self.http.post(self.url(db, "/follow")).json(&body))
            .await
            .map(|_| ())
    }

    async fn reset(
        &self,
        db: &DatabaseName,
        g: Generation,
        log: WalLog,
    ) -> Result<(), StorageError> {
        let body = ResetBody { generation: g, log };
        self.ok(self.http.post(self.url(db, "/reset")).json(&body))
            .await
            .map(|_| ())
    }

    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        self.ok(self.http.delete(self.url(db, "")))
            .await
            .map(|_| ())
    }

    async fn unfollow(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        let req = self
            .http
            .post(self.url(db, "/unfollow"))
            .json(&GenBody { generation: g });
        self.ok(req).await.map(|_| ())
    }

    async fn status(&self, db: &DatabaseName) -> Result<SafekeeperStatus, StorageError> {
        self.ok(self.http.get(self.url(db, "")))
            .await?
            .json()
            .await
            .map_err(|e| unavailable(&self.name, e))
    }
}

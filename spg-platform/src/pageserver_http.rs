//! The pageserver daemon's HTTPS API, and [`HttpPageserver`], the client that makes a remote
//! pageserver an [`ImageRepo`] (so an `ImageStore` — and a compute's lazy mount — run over it
//! exactly as over object storage, checking every byte end to end).
//!
//! | route | |
//! |---|---|
//! | `GET /v1/pageserver/{db}/basebackup?history=TLI:LSN,…[&plain=1]` | soft basebackup (zstd frames; `plain=1`: plain frames, streamed) |
//! | `GET /v1/pageserver/{db}/{chunks\|lists}/{hash}` | one object |
//! | `POST /v1/pageserver/{db}/{chunks\|lists}` `["hash", …]` | several objects (frames) |
//! | `PUT /v1/pageserver/{db}/{chunks\|lists}/{hash}` | write back an object |
//! | `GET /v1/pageserver/{db}/images` | image file names, oldest first |
//! | `GET`/`PUT /v1/pageserver/{db}/images/{name}` | a manifest (PUT: create-only, fenced) |
//! | `GET /v1/pageserver/{db}/fences`, `PUT …/fences/{generation}` | generation fences |
//! | `POST /v1/pageserver/{db}/gc` | garbage collection |
//! | `GET /v1/pageserver/{db}/stored` | bytes of images and archived WAL kept (usage metering) |
//! | `GET`/`PUT /v1/pageserver/{db}/retention` | its own history window (`{"retention_secs": …}`) |
//! | `DELETE /v1/pageserver/{db}` | forget a deleted database (images, fences, family link, archived WAL) |
//! | `GET`/`PUT`/`DELETE /v1/pageserver/{db}/family` | the family whose chunks a branch shares (`{"family": …}`) |
//! | `GET /metrics`, `GET /healthz` | unauthenticated |
//!
//! Everything under `/v1` needs `Authorization: Bearer <key>`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes as BodyBytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use spg_core::{DatabaseName, Generation, Lsn, StoredBytes, TimelineId};
use spg_lifecycle_lib::api::ApiKey;

use crate::daemon_http::{db_name, ApiErr, ErrBody};
use spg_storage_lib::image::format::MANIFEST_MAX;
use spg_storage_lib::image::{
    fence_for_checkout, ChunkHash, ImageId, ImageRepo, Manifest, ObjectKind, RawBasebackup,
};
use spg_storage_lib::pageserver::gc::{GcPolicy, GcStats};
use spg_storage_lib::pageserver::{wire, Pageserver};
use spg_storage_lib::StorageError;

#[derive(Clone)]
struct St {
    ps: Arc<Pageserver>,
    /// Object-store prefix of archived WAL (`<prefix>/<db>`), collected with images.
    wal_prefix: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct FenceBody {
    newest: Option<Generation>,
}

/// Body of `POST …/gc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRequest {
    /// Images younger than this many seconds stay.
    pub retention_secs: u64,
    /// At least this many newest images stay.
    pub keep_images: usize,
    /// Unreferenced objects younger than this many seconds stay.
    pub grace_secs: u64,
    /// The current timeline path, if known (`[[timeline, lsn], …]`).
    #[serde(default)]
    pub history: Option<Vec<(TimelineId, Lsn)>>,
}

/// Response of `POST …/gc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcResponse {
    /// Images kept.
    pub images_kept: u64,
    /// Images deleted.
    pub images_deleted: u64,
    /// Chunks and lists deleted.
    pub objects_deleted: u64,
    /// Bytes of them.
    pub bytes_deleted: u64,
    /// Archived WAL segments deleted.
    pub wal_segments_deleted: u64,
}

impl From<GcStats> for GcResponse {
    fn from(s: GcStats) -> Self {
        GcResponse {
            images_kept: s.images_kept,
            images_deleted: s.images_deleted,
            objects_deleted: s.objects_deleted,
            bytes_deleted: s.bytes_deleted,
            wal_segments_deleted: s.wal_segments_deleted,
        }
    }
}

fn kind_of(s: &str) -> Result<ObjectKind, ApiErr> {
    ObjectKind::from_plural(s).ok_or_else(|| ApiErr::Bad(format!("no object kind {s:?}")))
}

fn hash_of(s: &str) -> Result<ChunkHash, ApiErr> {
    ChunkHash::parse(s).ok_or_else(|| ApiErr::Bad(format!("bad hash {s:?}")))
}

fn image_of(s: &str) -> Result<ImageId, ApiErr> {
    ImageId::parse_file_name(s).ok_or_else(|| ApiErr::Bad(format!("bad image name {s:?}")))
}

/// `TLI:LSN,TLI:LSN` (LSN as hex) — the timeline path of a basebackup request.
fn format_history(h: &[(TimelineId, Lsn)]) -> String {
    h.iter()
        .map(|(t, l)| format!("{}:{:X}", t.0, l.0))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_history(s: &str) -> Result<Vec<(TimelineId, Lsn)>, ApiErr> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| {
            let (t, l) = p
                .split_once(':')
                .ok_or_else(|| ApiErr::Bad(format!("bad history entry {p:?}")))?;
            let t = t
                .parse::<u32>()
                .map_err(|_| ApiErr::Bad(format!("bad timeline {t:?}")))?;
            let l =
                u64::from_str_radix(l, 16).map_err(|_| ApiErr::Bad(format!("bad LSN {l:?}")))?;
            Ok((TimelineId(t), Lsn(l)))
        })
        .collect()
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    history: String,
    /// `plain=1`: not compressed (the client is on this host).
    #[serde(default)]
    plain: u8,
}

async fn basebackup(
    State(st): State<St>,
    Path(db): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    Ok(send_basebackup(&st, &db, &q)
        .await?
        .unwrap_or_else(|| StatusCode::NOT_FOUND.into_response()))
}

/// (Not `#[serde(flatten)]` of a [`HistoryQuery`]: flattened query strings lose their types.)
#[derive(Deserialize)]
struct CheckoutQuery {
    generation: u64,
    #[serde(default)]
    history: String,
    #[serde(default)]
    plain: u8,
}

/// `POST .../checkout?generation=G&history=...`: [`ImageRepo::checkout`] in one round trip.
async fn checkout(
    State(st): State<St>,
    Path(db): Path<String>,
    Query(q): Query<CheckoutQuery>,
) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    let bb = HistoryQuery {
        history: q.history,
        plain: q.plain,
    };
    // The history is checked before anything is fenced.
    parse_history(&bb.history)?;
    fence_for_checkout(st.ps.as_ref(), &db, Generation(q.generation)).await?;
    // No image yet: 204, which a client cannot mistake for a route it does not know.
    Ok(send_basebackup(&st, &db, &bb)
        .await?
        .unwrap_or_else(|| StatusCode::NO_CONTENT.into_response()))
}

/// The basebackup of the newest image on `q`'s history, framed; `None` when there is none.
async fn send_basebackup(
    st: &St,
    db: &DatabaseName,
    q: &HistoryQuery,
) -> Result<Option<Response>, ApiErr> {
    let history = parse_history(&q.history)?;
    let Some((manifest, objects)) = st.ps.stream_basebackup(db, &history).await? else {
        return Ok(None);
    };
    if q.plain == 1 {
        // Sent while it is read: the client decodes frames as they arrive. An object that
        // cannot be read ends the body short of its end, which the client sees.
        let head = Bytes::from(wire::encode_frames([(
            wire::Frame::Manifest,
            &manifest[..],
        )]));
        let frames = objects.flat_map(|item| {
            let parts = match item {
                Ok((kind, b)) => {
                    let head = wire::frame_head(wire::Frame::Object(kind), b.len());
                    vec![Ok(Bytes::copy_from_slice(&head)), Ok(b)]
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(parts)
        });
        let body = futures::stream::once(async move { Ok::<_, StorageError>(head) }).chain(frames);
        return Ok(Some(axum::body::Body::from_stream(body).into_response()));
    }
    let objects: Vec<_> = objects.try_collect().await?;
    let bb = RawBasebackup { manifest, objects };
    Ok(Some(wire::encode_basebackup(&bb)?.into_response()))
}

async fn get_object(
    State(st): State<St>,
    Path((db, kind, hash)): Path<(String, String, String)>,
) -> Result<Response, ApiErr> {
    let (db, kind, h) = (db_name(&db)?, kind_of(&kind)?, hash_of(&hash)?);
    Ok(st.ps.get(&db, kind, &h).await?.into_response())
}

async fn get_objects(
    State(st): State<St>,
    Path((db, kind)): Path<(String, String)>,
    Json(hashes): Json<Vec<String>>,
) -> Result<Response, ApiErr> {
    let (db, kind) = (db_name(&db)?, kind_of(&kind)?);
    let hs = hashes
        .iter()
        .map(|h| hash_of(h))
        .collect::<Result<Vec<_>, _>>()?;
    let got = st.ps.get_many(&db, kind, &hs).await?;
    Ok(wire::encode_batch(kind, &got).into_response())
}

async fn put_object(
    State(st): State<St>,
    Path((db, kind, hash)): Path<(String, String, String)>,
    body: BodyBytes,
) -> Result<StatusCode, ApiErr> {
    let (db, kind, h) = (db_name(&db)?, kind_of(&kind)?, hash_of(&hash)?);
    st.ps.put(&db, kind, &h, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_images(
    State(st): State<St>,
    Path(db): Path<String>,
) -> Result<Json<Vec<String>>, ApiErr> {
    let db = db_name(&db)?;
    Ok(Json(
        st.ps
            .images(&db)
            .await?
            .iter()
            .map(ImageId::file_name)
            .collect(),
    ))
}

async fn stored(State(st): State<St>, Path(db): Path<String>) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    Ok(Json(st.ps.stored(&db).await?.unwrap_or_default()).into_response())
}

/// Body of `GET`/`PUT …/family`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FamilyBody {
    family: String,
}

async fn get_family(State(st): State<St>, Path(db): Path<String>) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    let family = st.ps.family(&db).await?.as_str().to_owned();
    Ok(Json(FamilyBody { family }).into_response())
}

async fn put_family(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(body): Json<FamilyBody>,
) -> Result<Response, ApiErr> {
    let (db, of) = (db_name(&db)?, db_name(&body.family)?);
    st.ps.link_family(&db, &of).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_family(State(st): State<St>, Path(db): Path<String>) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    st.ps.forget_branch(&db).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn forget(State(st): State<St>, Path(db): Path<String>) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    st.ps.forget(&db).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `GET`/`PUT …/retention`.
#[derive(Serialize, Deserialize)]
struct RetentionBody {
    /// Seconds; `null`: the default window.
    retention_secs: Option<u64>,
}

async fn get_retention(State(st): State<St>, Path(db): Path<String>) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    let retention_secs = st.ps.retention(&db).await?.map(|d| d.as_secs());
    Ok(Json(RetentionBody { retention_secs }).into_response())
}

async fn put_retention(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(body): Json<RetentionBody>,
) -> Result<Response, ApiErr> {
    let db = db_name(&db)?;
    st.ps
        .set_retention(&db, body.retention_secs.map(Duration::from_secs))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_manifest(
    State(st): State<St>,
    Path((db, name)): Path<(String, String)>,
) -> Result<Response, ApiErr> {
    let (db, id) = (db_name(&db)?, image_of(&name)?);
    Ok(st.ps.manifest(&db, &id).await?.into_response())
}

async fn put_manifest(
    State(st): State<St>,
    Path((db, name)): Path<(String, String)>,
    body: BodyBytes,
) -> Result<StatusCode, ApiErr> {
    let (db, id) = (db_name(&db)?, image_of(&name)?);
    let m = Manifest::decode(&body)?;
    if m.id != id || m.database != db {
        return Err(ApiErr::Bad("the manifest describes another image".into()));
    }
    st.ps.put_manifest(&m).await?;
    Ok(StatusCode::CREATED)
}

async fn newest_fence(
    State(st): State<St>,
    Path(db): Path<String>,
) -> Result<Json<FenceBody>, ApiErr> {
    let db = db_name(&db)?;
    Ok(Json(FenceBody {
        newest: st.ps.newest_fence(&db).await?,
    }))
}

async fn put_fence(
    State(st): State<St>,
    Path((db, g)): Path<(String, u64)>,
) -> Result<StatusCode, ApiErr> {
    let db = db_name(&db)?;
    st.ps.fence(&db, Generation(g)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn gc(
    State(st): State<St>,
    Path(db): Path<String>,
    Json(req): Json<GcRequest>,
) -> Result<Json<GcResponse>, ApiErr> {
    let db = db_name(&db)?;
    let policy = GcPolicy {
        retention: Duration::from_secs(req.retention_secs),
        keep_images: req.keep_images,
        grace: Duration::from_secs(req.grace_secs),
    };
    let wal = st
        .wal_prefix
        .as_ref()
        .map(|p| object_store::path::Path::from(format!("{p}/{}", db.as_str())));
    let stats = st
        .ps
        .gc(&db, &policy, req.history.as_deref(), wal.as_ref())
        .await?;
    Ok(Json(stats.into()))
}

/// The daemon's router: the API guarded by `key`, and `/metrics` rendering `metrics`.
/// `wal_prefix` is where archived WAL lives in the same object store (`wal`), if garbage
/// collection should remove WAL too.
pub fn router(
    ps: Arc<Pageserver>,
    key: ApiKey,
    metrics: Arc<Registry>,
    wal_prefix: Option<String>,
) -> Router {
    let v1 = Router::new()
        .route("/v1/pageserver/{db}", delete(forget))
        .route("/v1/pageserver/{db}/basebackup", get(basebackup))
        .route("/v1/pageserver/{db}/checkout", post(checkout))
        .route("/v1/pageserver/{db}/images", get(list_images))
        .route(
            "/v1/pageserver/{db}/images/{name}",
            get(get_manifest).put(put_manifest),
        )
        .route("/v1/pageserver/{db}/fences", get(newest_fence))
        .route("/v1/pageserver/{db}/fences/{g}", put(put_fence))
        .route("/v1/pageserver/{db}/gc", post(gc))
        .route("/v1/pageserver/{db}/stored", get(stored))
        .route(
            "/v1/pageserver/{db}/retention",
            get(get_retention).put(put_retention),
        )
        .route(
            "/v1/pageserver/{db}/family",
            get(get_family).put(put_family).delete(delete_family),
        )
        .route("/v1/pageserver/{db}/{kind}", post(get_objects))
        .route(
            "/v1/pageserver/{db}/{kind}/{hash}",
            get(get_object).put(put_object),
        )
        .layer(DefaultBodyLimit::max(MANIFEST_MAX))
        .with_state(St { ps, wal_prefix });
    crate::daemon_http::with_open_routes(v1, key, metrics)
}

/// A pageserver over its HTTP API (HTTPS, or plain HTTP on this host's storage socket), as an
/// [`ImageRepo`].
pub struct HttpPageserver {
    base: String,
    key: String,
    http: reqwest::Client,
    /// On this host: basebackups are asked for uncompressed.
    local: bool,
}

impl std::fmt::Debug for HttpPageserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPageserver")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpPageserver {
    /// The pageserver at `base_url`, trusting `ca_pem` only.
    pub fn new(base_url: &str, api_key: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Self::with_client(
            base_url,
            api_key,
            crate::daemon_http::client(ca_pem)?,
        ))
    }

    /// The pageserver at `base_url`, reached with `http` (an HTTPS client of
    /// [`crate::daemon_http::client`], or [`crate::daemon_http::socket_client`] for
    /// `http://localhost/<prefix>` on this host's storage socket).
    pub fn with_client(base_url: &str, api_key: &str, http: reqwest::Client) -> Self {
        // On the same host, compressing a basebackup costs more than moving it.
        let local = spg_lifecycle_lib::api::gateway_control::is_loopback_url(base_url);
        HttpPageserver {
            base: base_url.trim_end_matches('/').into(),
            key: api_key.into(),
            http,
            local,
        }
    }

    fn url(&self, db: &DatabaseName, rest: &str) -> String {
        format!("{}/v1/pageserver/{}/{rest}", self.base, db.as_str())
    }

    /// Open (or keep open) a connection to the pageserver ahead of need.
    pub async fn warm(&self) {
        crate::daemon_http::warm(&self.http, &self.base).await
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError::Unavailable {
            service: format!("pageserver {}", self.base),
            reason: e.to_string(),
        }
    }

    /// Send `req`; errors the server reports come back as the storage errors they were.
    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        offered: Option<Generation>,
        image: Option<ImageId>,
    ) -> Result<reqwest::Response, StorageError> {
        let started = std::time::Instant::now();
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        tracing::debug!(url = %resp.url().path(), ms = started.elapsed().as_secs_f64() * 1e3, "pageserver answered");
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let body: Option<ErrBody> = serde_json::from_str(&text).ok();
        let message = body
            .as_ref()
            .map(|b| b.message.clone())
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(match body.as_ref().map(|b| b.error.as_str()) {
            Some("stale_generation") => StorageError::StaleGeneration {
                offered: offered.map_or(0, |g| g.0),
                current: body.as_ref().and_then(|b| b.current).unwrap_or(0),
            },
            Some("image_exists") => match image {
                Some(id) => StorageError::ImageExists(id),
                None => StorageError::Protocol(message),
            },
            Some("not_found") => StorageError::NotFound(message),
            Some("conflict") => StorageError::Protocol(message),
            Some("corrupt") => StorageError::Corrupt {
                what: format!("pageserver {}", self.base),
                reason: message,
            },
            _ if status == reqwest::StatusCode::NOT_FOUND => StorageError::NotFound(message),
            _ if status.is_client_error() => {
                StorageError::Protocol(format!("pageserver answered {status}: {message}"))
            }
            _ => self.unavailable(format!("{status}: {message}")),
        })
    }

    async fn bytes(&self, resp: reqwest::Response) -> Result<Bytes, StorageError> {
        resp.bytes().await.map_err(|e| self.unavailable(e))
    }

    /// Run garbage collection of `db` on the pageserver.
    pub async fn gc(&self, db: &DatabaseName, req: &GcRequest) -> Result<GcResponse, StorageError> {
        let resp = self
            .call(self.http.post(self.url(db, "gc")).json(req), None, None)
            .await?;
        resp.json().await.map_err(|e| self.unavailable(e))
    }
}

#[async_trait]
impl ImageRepo for HttpPageserver {
    async fn fence(&self, db: &DatabaseName, g: Generation) -> Result<(), StorageError> {
        self.call(
            self.http.put(self.url(db, &format!("fences/{}", g.0))),
            Some(g),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn newest_fence(&self, db: &DatabaseName) -> Result<Option<Generation>, StorageError> {
        let resp = self
            .call(self.http.get(self.url(db, "fences")), None, None)
            .await?;
        let b: FenceBody = resp.json().await.map_err(|e| self.unavailable(e))?;
        Ok(b.newest)
    }

    async fn family(&self, db: &DatabaseName) -> Result<DatabaseName, StorageError> {
        let resp = self
            .call(self.http.get(self.url(db, "family")), None, None)
            .await?;
        let b: FamilyBody = resp.json().await.map_err(|e| self.unavailable(e))?;
        DatabaseName::new(&b.family).map_err(|e| StorageError::Corrupt {
            what: format!("pageserver {}", self.base),
            reason: format!("bad family name: {e}"),
        })
    }

    async fn link_family(&self, db: &DatabaseName, of: &DatabaseName) -> Result<(), StorageError> {
        let body = FamilyBody {
            family: of.as_str().to_owned(),
        };
        self.call(
            self.http.put(self.url(db, "family")).json(&body),
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    async fn forget_branch(&self, db: &DatabaseName) -> Result<(), StorageError> {
        self.call(self.http.delete(self.url(db, "family")), None, None)
            .await
            .map(|_| ())
    }

    async fn retention(&self, db: &DatabaseName) -> Result<Option<Duration>, StorageError> {
        let resp = self
            .call(self.http.get(self.url(db, "retention")), None, None)
            .await?;
        let body: RetentionBody = resp.json().await.map_err(|e| self.unavailable(e))?;
        Ok(body.retention_secs.map(Duration::from_secs))
    }

    async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<Duration>,
    ) -> Result<(), StorageError> {
        let body = RetentionBody {
            retention_secs: retention.map(|d| d.as_secs()),
        };
        self.call(
            self.http.put(self.url(db, "retention")).json(&body),
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    async fn forget(&self, db: &DatabaseName) -> Result<(), StorageError> {
        let url = format!("{}/v1/pageserver/{}", self.base, db.as_str());
        self.call(self.http.delete(url), None, None)
            .await
            .map(|_| ())
    }

    async fn stored(&self, db: &DatabaseName) -> Result<Option<StoredBytes>, StorageError> {
        let resp = self
            .call(self.http.get(self.url(db, "stored")), None, None)
            .await?;
        Ok(Some(resp.json().await.map_err(|e| self.unavailable(e))?))
    }

    async fn images(&self, db: &DatabaseName) -> Result<Vec<ImageId>, StorageError> {
        let resp = self
            .call(self.http.get(self.url(db, "images")), None, None)
            .await?;
        let names: Vec<String> = resp.json().await.map_err(|e| self.unavailable(e))?;
        let mut ids = names
            .iter()
            .map(|n| {
                ImageId::parse_file_name(n).ok_or_else(|| StorageError::Corrupt {
                    what: format!("pageserver {}", self.base),
                    reason: format!("bad image name {n:?}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn manifest(&self, db: &DatabaseName, id: &ImageId) -> Result<Bytes, StorageError> {
        let resp = self
            .call(
                self.http
                    .get(self.url(db, &format!("images/{}", id.file_name()))),
                None,
                Some(*id),
            )
            .await?;
        self.bytes(resp).await
    }

    async fn put_manifest(&self, m: &Manifest) -> Result<(), StorageError> {
        let req = self
            .http
            .put(self.url(&m.database, &format!("images/{}", m.id.file_name())))
            .body(m.encode());
        self.call(req, Some(m.id.generation), Some(m.id))
            .await
            .map(|_| ())
    }

    async fn get(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
    ) -> Result<Bytes, StorageError> {
        let resp = self
            .call(
                self.http
                    .get(self.url(db, &format!("{}/{h}", kind.plural()))),
                None,
                None,
            )
            .await?;
        self.bytes(resp).await
    }

    async fn get_many(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        hs: &[ChunkHash],
    ) -> Result<Vec<Bytes>, StorageError> {
        if let [h] = hs {
            return Ok(vec![self.get(db, kind, h).await?]);
        }
        let names: Vec<String> = hs.iter().map(ToString::to_string).collect();
        let resp = self
            .call(
                self.http.post(self.url(db, kind.plural())).json(&names),
                None,
                None,
            )
            .await?;
        wire::decode_batch(kind, &self.bytes(resp).await?)
    }

    async fn put(
        &self,
        db: &DatabaseName,
        kind: ObjectKind,
        h: &ChunkHash,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let req = self
            .http
            .put(self.url(db, &format!("{}/{h}", kind.plural())))
            .body(bytes);
        self.call(req, None, None).await.map(|_| ())
    }

    async fn checkout(
        &self,
        db: &DatabaseName,
        g: Generation,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<RawBasebackup>, StorageError> {
        let req = self
            .http
            .post(self.url(db, "checkout"))
            .query(&[("generation", g.0)]);
        match self.receive_basebackup(req, history, Some(g)).await {
            // Only 204 means "no image" here: a 404 is a pageserver without this route.
            Err(StorageError::NotFound(m)) => Err(StorageError::Protocol(format!(
                "the pageserver cannot check out ({m}): is it older than this compute?"
            ))),
            r => r,
        }
    }

    async fn basebackup(
        &self,
        db: &DatabaseName,
        history: &[(TimelineId, Lsn)],
    ) -> Result<Option<RawBasebackup>, StorageError> {
        let req = self.http.get(self.url(db, "basebackup"));
        match self.receive_basebackup(req, history, None).await {
            Err(StorageError::NotFound(_)) => Ok(None),
            r => r,
        }
    }
}

impl HttpPageserver {
    /// Send `req` (a basebackup or a checkout) for `history`; the basebackup it answers with,
    /// `None` when the answer is 204 (no image).
    async fn receive_basebackup(
        &self,
        req: reqwest::RequestBuilder,
        history: &[(TimelineId, Lsn)],
        offered: Option<Generation>,
    ) -> Result<Option<RawBasebackup>, StorageError> {
        let req = req
            .query(&[("history", format_history(history))])
            .query(&[("plain", if self.local { "1" } else { "0" })]);
        match self.call(req, offered, None).await {
            Ok(resp) if resp.status() == reqwest::StatusCode::NO_CONTENT => Ok(None),
            Ok(mut resp) => {
                // Decoded as it arrives (a plain one is streamed while the pageserver reads).
                let mut reader = wire::BasebackupReader::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| self.unavailable(e))? {
                    reader.push(chunk)?;
                }
                Ok(Some(reader.finish()?))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_round_trip() {
        let h = vec![(TimelineId(2), Lsn(0)), (TimelineId(3), Lsn(0x1_0000_00A8))];
        assert_eq!(parse_history(&format_history(&h)).ok(), Some(h));
        assert!(parse_history("2").is_err());
        assert!(parse_history("x:0").is_err());
        assert_eq!(parse_history("").ok(), Some(vec![]));
    }
}

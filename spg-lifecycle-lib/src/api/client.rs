//! A client of the API, used by the `spg` command and by daemons (a standalone gateway takes
//! leases, wakes databases and reads verifiers through it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spg_core::scram::ScramVerifier;
use spg_core::{
    ComputeEndpoint, CoreError, CoreResult, DatabaseName, Lease, LeaseGrant, LeaseId, RoleName,
};

use super::model::*;
use crate::LifecycleError;

/// API client. Cheap to clone.
///
/// It may be given several control planes (sharing one state store): a call goes to the one
/// that answered last, and on to the next when that one cannot be reached or answers 503
/// (shutting down, the database's owner unreachable).
#[derive(Clone)]
pub struct ApiClient {
    bases: Arc<Vec<String>>,
    /// Index into `bases` of the control plane that answered last.
    preferred: Arc<AtomicUsize>,
    /// The API key (wiped when dropped).
    key: zeroize::Zeroizing<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client of the API at `base_url` (e.g. `https://127.0.0.1:9443`; several control
    /// planes separated by commas), trusting the CA certificate `ca_pem` (the platform's
    /// self-signed CA, or the CA of the control planes' certificates) and none other.
    pub fn new(base_url: &str, api_key: &str, ca_pem: &[u8]) -> Result<Self, LifecycleError> {
        let bases: Vec<String> = base_url
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(LifecycleError::invalid("API URL", "no URL given"));
        }
        for b in &bases {
            let parsed = reqwest::Url::parse(b)
                .map_err(|e| LifecycleError::invalid("API URL", format!("{b:?}: {e}")))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err(LifecycleError::invalid(
                    "API URL",
                    format!("{b:?}: expected https://host:port"),
                ));
            }
        }
        let http = crate::api::http::client_trusting(ca_pem)
            .map_err(|e| LifecycleError::Tls(format!("CA certificate: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(180))
            .build()
            .map_err(|e| LifecycleError::Tls(e.to_string()))?;
        Ok(ApiClient {
            bases: Arc::new(bases),
            preferred: Arc::new(AtomicUsize::new(0)),
            key: zeroize::Zeroizing::new(api_key.to_string()),
            http,
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, LifecycleError> {
        let resp = self.send(method, path, body).await?;
        resp.json::<T>().await.map_err(|e| LifecycleError::Api {
            status: None,
            message: format!("bad response body: {e}"),
        })
    }

    /// The control planes this client talks to.
    pub fn urls(&self) -> &[String] {
        &self.bases
    }

    /// Send to the preferred control plane, then to each other one while they cannot be
    /// reached or answer 503.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, LifecycleError> {
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        let mut last = None;
        for i in 0..self.bases.len() {
            let at = (first + i) % self.bases.len();
            match self.send_to(at, method.clone(), path, body).await {
                Err(e) if e.is_retryable() && i + 1 < self.bases.len() => {
                    tracing::debug!(url = %self.bases[at], error = %e, "trying the next control plane");
                    last = Some(e);
                }
                r => {
                    if r.is_ok() && at != first {
                        self.preferred.store(at, Ordering::Relaxed);
                    }
                    return r;
                }
            }
        }
        Err(last.unwrap_or(LifecycleError::ShuttingDown))
    }

    async fn send_to<B: Serialize>(
        &self,
        at: usize,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, LifecycleError> {
        let base = &self.bases[at];
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(self.key.as_str());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| LifecycleError::Api {
            status: None,
            message: format!("{base}: {}", describe(&e)),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let (code, message) = match resp.json::<ErrorBody>().await {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (String::new(), status.to_string()),
        };
        Err(match status {
            StatusCode::FORBIDDEN if code == "wake_refused" => LifecycleError::WakeRefused(message),
            StatusCode::NOT_FOUND if message.starts_with("database") => {
                LifecycleError::DatabaseNotFound(message)
            }
            StatusCode::CONFLICT => LifecycleError::AlreadyExists {
                kind: "object",
                name: message,
            },
            _ => LifecycleError::Api {
                status: Some(status.as_u16()),
                message,
            },
        })
    }

    /// Create a database.
    pub async fn create_database(&self, name: &str) -> Result<DatabaseView, LifecycleError> {
        let body = CreateDatabase { name: name.into() };
        self.call(Method::POST, "/v1/databases", Some(&body)).await
    }

    /// Create a database as a branch of `parent` ([`BranchRequest`]).
    pub async fn branch_database(
        &self,
        parent: &str,
        req: &BranchRequest,
    ) -> Result<BranchView, LifecycleError> {
        self.call(
            Method::POST,
            &format!("/v1/databases/{parent}/branches"),
            Some(req),
        )
        .await
    }

    /// Move a database back to a moment of its history; the state before is kept as a branch.
    pub async fn restore_database(
        &self,
        name: &str,
        req: &RestoreRequest,
    ) -> Result<RestoreView, LifecycleError> {
        self.call(
            Method::POST,
            &format!("/v1/databases/{name}/restore"),
            Some(req),
        )
        .await
    }

    /// Give a database its own history window (`None`: the default).
    pub async fn set_retention(
        &self,
        name: &str,
        req: &RetentionRequest,
    ) -> Result<HistoryView, LifecycleError> {
        self.call(
            Method::PUT,
            &format!("/v1/databases/{name}/retention"),
            Some(req),
        )
        .await
    }

    /// How far back a database's history reaches.
    pub async fn history_window(&self, name: &str) -> Result<HistoryView, LifecycleError> {
        self.call::<(), _>(Method::GET, &format!("/v1/databases/{name}/history"), None)
            .await
    }

    /// List databases.
    pub async fn databases(&self) -> Result<Vec<DatabaseView>, LifecycleError> {
        self.call::<(), _>(Method::GET, "/v1/databases", None).await
    }

    /// Show one database.
    pub async fn database(&self, name: &str) -> Result<DatabaseView, LifecycleError> {
        self.call::<(), _>(Method::GET, &format!("/v1/databases/{name}"), None)
            .await
    }

    /// Delete a database (its storage is released; its branches live on).
    pub async fn delete_database(&self, name: &str) -> Result<DeletedView, LifecycleError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/databases/{name}"), None)
            .await
    }

    /// Stop a database's compute.
    pub async fn stop_database(&self, name: &str) -> Result<DatabaseView, LifecycleError> {
        self.call::<(), _>(Method::POST, &format!("/v1/databases/{name}/stop"), None)
            .await
    }

    /// Register a gateway's control routes (`url`, `token`, `ca_pem`) with every control
    /// plane now and every `every` until `stop` (control planes forget gateways that stop
    /// registering); failures are logged and retried.
    pub fn keep_registered(
        &self,
        url: String,
        token: String,
        ca_pem: Option<String>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = api.register_gateway(&url, &token, ca_pem.as_deref()).await {
                    tracing::warn!(error = %e, "registering with the control plane failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }

    /// Register (or refresh) a gateway daemon's control routes at `url`, guarded by `token`,
    /// served with a certificate `ca_pem` signed (for `https://`).
    pub async fn register_gateway(
        &self,
        url: &str,
        token: &str,
        ca_pem: Option<&str>,
    ) -> Result<(), LifecycleError> {
        let body = super::server::RegisterGateway {
            url: url.into(),
            token: token.into(),
            ca_pem: ca_pem.map(str::to_string),
        };
        // Every control plane: whichever owns a database drives its handoffs.
        let mut errors = Vec::new();
        for at in 0..self.bases.len() {
            if let Err(e) = self
                .send_to(at, Method::POST, "/v1/gateways", Some(&body))
                .await
            {
                errors.push(e);
            }
        }
        match errors.len() {
            0 => Ok(()),
            n if n < self.bases.len() => {
                for e in errors {
                    tracing::warn!(error = %e, "registering with a control plane failed");
                }
                Ok(())
            }
            _ => Err(errors.remove(0)),
        }
    }

    /// Wake a database; returns its compute's endpoint.
    pub async fn wake(&self, name: &str) -> Result<ComputeEndpoint, LifecycleError> {
        let w: WakeView = self
            .call::<(), _>(Method::POST, &format!("/v1/databases/{name}/wake"), None)
            .await?;
        let addr = w.addr.parse().map_err(|_| LifecycleError::Api {
            status: None,
            message: format!("bad compute address {:?}", w.addr),
        })?;
        Ok(ComputeEndpoint {
            addr,
            generation: w.generation,
        })
    }

    /// Create a role with a password.
    pub async fn create_role(
        &self,
        db: &str,
        role: &str,
        password: &str,
    ) -> Result<RoleView, LifecycleError> {
        let body = CreateRole {
            name: role.into(),
            password: Some(password.into()),
            scram_verifier: None,
        };
        self.call(
            Method::POST,
            &format!("/v1/databases/{db}/roles"),
            Some(&body),
        )
        .await
    }

    /// List roles.
    pub async fn roles(&self, db: &str) -> Result<Vec<RoleView>, LifecycleError> {
        self.call::<(), _>(Method::GET, &format!("/v1/databases/{db}/roles"), None)
            .await
    }

    /// A role's verifier; `None` when the role does not exist.
    pub async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> Result<Option<ScramVerifier>, LifecycleError> {
        let path = format!("/v1/databases/{db}/roles/{role}/verifier");
        match self
            .call::<(), VerifierView>(Method::GET, &path, None)
            .await
        {
            Ok(v) => ScramVerifier::parse(&v.scram_verifier)
                .map(Some)
                .map_err(|e| LifecycleError::Api {
                    status: None,
                    message: e.to_string(),
                }),
            Err(LifecycleError::Api {
                status: Some(404), ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `db` used from `from` to `to` (RFC 3339; defaults: its creation, now).
    pub async fn usage(
        &self,
        db: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<UsageView, LifecycleError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("from", from), ("to", to)] {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
        let path = format!("/v1/databases/{db}/usage?{}", query.finish());
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// Recent transitions of one database, or of all.
    pub async fn transitions(
        &self,
        db: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TransitionView>, LifecycleError> {
        let path = match db {
            Some(db) => format!("/v1/databases/{db}/transitions?limit={limit}"),
            None => format!("/v1/transitions?limit={limit}"),
        };
        self.call::<(), _>(Method::GET, &path, None).await
    }
}

/// A reqwest error with its chain of causes (their messages are where the reason is).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[async_trait]
impl Lease for ApiClient {
    async fn acquire(&self, db: &DatabaseName, holder: &str) -> CoreResult<LeaseGrant> {
        let body = AcquireLease {
            holder: holder.into(),
        };
        Ok(self
            .call(
                Method::POST,
                &format!("/v1/databases/{db}/leases"),
                Some(&body),
            )
            .await?)
    }

    async fn renew(&self, id: &LeaseId) -> CoreResult<LeaseGrant> {
        match self
            .call::<(), _>(Method::POST, &format!("/v1/leases/{}/renew", id.0), None)
            .await
        {
            Err(LifecycleError::Api {
                status: Some(404), ..
            })
            | Err(LifecycleError::DatabaseNotFound(_)) => {
                Err(CoreError::not_found("lease", id.0.clone()))
            }
            other => Ok(other?),
        }
    }

    async fn release(&self, id: &LeaseId) -> CoreResult<()> {
        self.send::<()>(Method::DELETE, &format!("/v1/leases/{}", id.0), None)
            .await?;
        Ok(())
    }
}

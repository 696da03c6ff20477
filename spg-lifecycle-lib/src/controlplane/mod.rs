//! The control plane: source of truth for databases, roles and lifecycle states; wakes computes
//! through a [`Provisioner`], stops them when idle, and hands out [`Lease`]s.

mod actor;
mod autoscaler;
mod handoff;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use spg_core::scram::ScramVerifier;
use spg_core::{
    ComputeEndpoint, ComputeState, CoreResult, DatabaseName, Lease, LeaseGrant, LeaseId, RoleName,
    ScaleProfile,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::autoscale::AutoscalePolicy;
use crate::compute::config::{builtin_profiles, default_profile};
use crate::metrics::ControlPlaneMetrics;
use crate::provisioner::Provisioner;
use crate::store::{DatabaseRecord, RoleRecord, StateStore, Transition};
use crate::LifecycleError;
use actor::{Command, DbActor, LiveStatus};
pub use handoff::{HandoffHandle, REMOTE_GATEWAY_TTL};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Stop a compute after this long without a lease (default 300 s).
    pub idle_timeout: Duration,
    /// Lifetime of a lease between renewals (default 30 s).
    pub lease_ttl: Duration,
    /// Upper bound on one compute start (default 120 s; the first start runs `initdb`).
    pub boot_timeout: Duration,
    /// Writer profile of computes of databases that have not been given another.
    pub profile: ScaleProfile,
    /// Named writer profiles a handoff can switch to (the default one is always among them).
    pub profiles: BTreeMap<String, ScaleProfile>,
    /// How long a handoff waits, frozen, for transactions in flight to end before it gives up
    /// (default 10 s).
    pub drain_timeout: Duration,
    /// How long a freeze lasts beyond the drain timeout at most (default 30 s): a gateway whose
    /// control plane died mid-handoff lets new work go by itself after this.
    pub freeze_margin: Duration,
    /// How long a handoff waits for a window without sessions pinned to the writer before it
    /// gives up (default 60 s). Nothing is frozen while it waits.
    pub pinned_wait: Duration,
    /// The writer autoscaler (off by default: profiles change only when asked).
    pub autoscale: AutoscalePolicy,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            idle_timeout: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(120),
            profile: default_profile(),
            profiles: builtin_profiles()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            drain_timeout: Duration::from_secs(10),
            freeze_margin: Duration::from_secs(30),
            pinned_wait: Duration::from_secs(60),
            autoscale: AutoscalePolicy::default(),
        }
    }
}

impl ControlPlaneConfig {
    /// The profile named `name`: one of `profiles`, or the default profile.
    pub fn profile_named(&self, name: &str) -> Option<&ScaleProfile> {
        if self.profile.name == name {
            return Some(&self.profile);
        }
        self.profiles.get(name)
    }

    /// The profile a database runs with.
    pub fn profile_of(&self, rec: &DatabaseRecord) -> ScaleProfile {
        rec.profile
            .as_deref()
            .and_then(|n| self.profile_named(n))
            .unwrap_or(&self.profile)
            .clone()
    }
}

/// A database as the control plane sees it: the stored record plus live figures.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseStatus {
    /// Stored record.
    pub record: DatabaseRecord,
    /// Where its compute listens, when ready.
    pub endpoint: Option<ComputeEndpoint>,
    /// Leases held.
    pub leases: usize,
    /// The writer profile it runs (or starts) with.
    pub profile: String,
}

pub(crate) struct Shared {
    pub(crate) config: ControlPlaneConfig,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) provisioner: Arc<dyn Provisioner>,
    pub(crate) metrics: ControlPlaneMetrics,
    pub(crate) tasks: TaskTracker,
    actors: Mutex<HashMap<DatabaseName, ActorHandle>>,
    /// Gateways a handoff freezes, drains and switches.
    gateways: Mutex<Vec<Arc<dyn spg_core::Gateway>>>,
    /// Gateway daemons by control URL, with when they last registered.
    remote_gateways: Mutex<HashMap<String, RegisteredGateway>>,
    /// Cancelled at shutdown (ends the autoscaler).
    stop: CancellationToken,
}

/// A gateway daemon and when it last registered.
type RegisteredGateway = (Arc<dyn spg_core::Gateway>, Instant);

#[derive(Clone)]
struct ActorHandle {
    tx: mpsc::Sender<Command>,
    live: watch::Receiver<LiveStatus>,
}

impl Shared {
    pub(crate) fn refresh_lease_gauge(&self) {
        let total: usize = self
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|a| a.live.borrow().leases)
            .sum();
        self.metrics.leases.set(total as i64);
    }
}

/// The control plane. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ControlPlane {
    /// Start the control plane over `store` and `provisioner`. Databases left in a running state
    /// by an earlier run (the platform was killed) are cleaned up and marked stopped.
    pub async fn start(
        config: ControlPlaneConfig,
        store: Arc<dyn StateStore>,
        provisioner: Arc<dyn Provisioner>,
        metrics: ControlPlaneMetrics,
    ) -> Result<ControlPlane, LifecycleError> {
        let shared = Arc::new(Shared {
            config,
            store,
            provisioner,
            metrics,
            tasks: TaskTracker::new(),
            actors: Mutex::new(HashMap::new()),
            gateways: Mutex::new(Vec::new()),
            remote_gateways: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        if shared.config.autoscale.enabled {
            shared
                .config
                .autoscale
                .validate()
                .map_err(|r| LifecycleError::invalid("autoscale", r))?;
            for name in &shared.config.autoscale.ladder {
                if shared.config.profile_named(name).is_none() {
                    return Err(LifecycleError::invalid(
                        "autoscale",
                        format!("the ladder names {name:?}, which is no profile"),
                    ));
                }
            }
        }
        for rec in shared.store.databases().await? {
            match shared.provisioner.cleanup_stale(&rec.name).await {
                Ok(true) => warn!(db = %rec.name, "stopped a compute left by an earlier run"),
                Ok(false) => {}
                Err(e) => warn!(db = %rec.name, error = %e, "cleanup of an earlier run failed"),
            }
        }
        for mut rec in shared.store.databases().await? {
            if rec.scale_state.in_progress() {
                // A handoff this process was running: its standby was stopped above, the
                // gateways it froze went with the process.
                rec.scale_state = spg_core::ScaleState::Aborted;
                rec.scale_reason = Some("the control plane restarted during the handoff".into());
                if rec.state == ComputeState::Stopped {
                    let expected = rec.version;
                    rec.version += 1;
                    if !shared.store.update_database(&rec, expected, None).await? {
                        return Err(LifecycleError::Conflict(rec.name.to_string()));
                    }
                }
            }
            if rec.state != ComputeState::Stopped {
                let from = rec.state;
                let expected = rec.version;
                let now = now_ms();
                rec.state = ComputeState::Stopped;
                rec.target_scale = 0;
                rec.version += 1;
                rec.state_since_ms = now;
                rec.last_stopped_ms = Some(now);
                let t = Transition {
                    database: rec.name.clone(),
                    from: Some(from),
                    to: ComputeState::Stopped,
                    generation: rec.generation,
                    at_ms: now,
                    reason: "recovered at control plane start".into(),
                };
                if !shared
                    .store
                    .update_database(&rec, expected, Some(&t))
                    .await?
                {
                    return Err(LifecycleError::Conflict(rec.name.to_string()));
                }
            }
            shared.metrics.state_changed(None, rec.state);
            let (tx, live) = DbActor::spawn(Arc::clone(&shared), rec.clone());
            shared
                .actors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rec.name, ActorHandle { tx, live });
        }
        let cp = ControlPlane { shared };
        if cp.shared.config.autoscale.enabled {
            let stop = cp.shared.stop.clone();
            cp.shared.tasks.spawn(cp.clone().autoscale(stop));
        }
        Ok(cp)
    }

    /// The configuration.
    pub fn config(&self) -> &ControlPlaneConfig {
        &self.shared.config
    }

    fn actor(&self, db: &DatabaseName) -> Result<ActorHandle, LifecycleError> {
        self.shared
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(db)
            .cloned()
            .ok_or_else(|| LifecycleError::DatabaseNotFound(db.to_string()))
    }

    async fn ask<T>(
        &self,
        db: &DatabaseName,
        make: impl FnOnce(oneshot::Sender<Result<T, LifecycleError>>) -> Command,
    ) -> Result<T, LifecycleError> {
        let actor = self.actor(db)?;
        let (tx, rx) = oneshot::channel();
        actor
            .tx
            .send(make(tx))
            .await
            .map_err(|_| LifecycleError::ShuttingDown)?;
        rx.await.map_err(|_| LifecycleError::ShuttingDown)?
    }

    /// Create a database (stopped; its first start initialises it).
    pub async fn create_database(
        &self,
        name: DatabaseName,
    ) -> Result<DatabaseStatus, LifecycleError> {
        let now = now_ms();
        let rec = DatabaseRecord::new(name.clone(), now);
        let created = Transition {
            database: name.clone(),
            from: None,
            to: ComputeState::Stopped,
            generation: rec.generation,
            at_ms: now,
            reason: "created".into(),
        };
        self.shared.store.insert_database(&rec, &created).await?;
        self.shared.metrics.state_changed(None, rec.state);
        let (tx, live) = DbActor::spawn(Arc::clone(&self.shared), rec.clone());
        self.shared
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), ActorHandle { tx, live });
        info!(db = %name, "database created");
        Ok(DatabaseStatus {
            profile: self.shared.config.profile_of(&rec).name,
            record: rec,
            endpoint: None,
            leases: 0,
        })
    }

    /// One database.
    pub async fn database(&self, name: &DatabaseName) -> Result<DatabaseStatus, LifecycleError> {
        let actor = self.actor(name)?;
        let live = actor.live.borrow().clone();
        let record = match live.record {
            Some(r) => r,
            None => self
                .shared
                .store
                .database(name)
                .await?
                .ok_or_else(|| LifecycleError::DatabaseNotFound(name.to_string()))?,
        };
        Ok(DatabaseStatus {
            profile: self.shared.config.profile_of(&record).name,
            record,
            endpoint: live.endpoint,
            leases: live.leases,
        })
    }

    /// The names of all databases, in no order.
    fn names(&self) -> Vec<DatabaseName> {
        self.shared
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Whether a database exists.
    pub fn exists(&self, name: &DatabaseName) -> bool {
        self.actor(name).is_ok()
    }

    /// All databases, by name.
    pub async fn databases(&self) -> Result<Vec<DatabaseStatus>, LifecycleError> {
        let mut names = self.names();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.database(&n).await?);
        }
        Ok(out)
    }

    /// Make sure a compute of the database runs; returns where it listens. Concurrent calls for
    /// one database share one start.
    pub async fn wake(&self, db: &DatabaseName) -> Result<ComputeEndpoint, LifecycleError> {
        let requested = Instant::now();
        self.ask(db, |reply| Command::Wake { requested, reply })
            .await
    }

    /// Stop the database's compute now (sessions are disconnected), whatever leases are held.
    pub async fn stop_database(&self, db: &DatabaseName) -> Result<DatabaseStatus, LifecycleError> {
        self.ask(db, |reply| Command::Stop {
            reason: "api",
            reply,
        })
        .await?;
        self.database(db).await
    }

    /// Create a role. `password` is hashed into a SCRAM-SHA-256 verifier at once; only the
    /// verifier is stored. A running compute gets the role immediately.
    pub async fn create_role(
        &self,
        db: &DatabaseName,
        name: RoleName,
        secret: RoleSecret,
    ) -> Result<RoleRecord, LifecycleError> {
        self.actor(db)?;
        let verifier = match secret {
            RoleSecret::Password(pw) => {
                // Wiped once hashed (the verifier is all that is kept).
                let pw = zeroize::Zeroizing::new(pw);
                if pw.is_empty() {
                    return Err(LifecycleError::invalid("password", "must not be empty"));
                }
                tokio::task::spawn_blocking(move || ScramVerifier::from_password(&pw))
                    .await
                    .map_err(|e| LifecycleError::Store(format!("hashing task failed: {e}")))?
            }
            RoleSecret::Verifier(v) => v,
        };
        let rec = RoleRecord {
            database: db.clone(),
            name,
            verifier,
            created_at_ms: now_ms(),
        };
        self.shared.store.insert_role(&rec).await?;
        info!(%db, role = %rec.name, "role created");
        self.ask(db, |reply| Command::ApplyRoles { reply }).await?;
        Ok(rec)
    }

    /// Roles of a database.
    pub async fn roles(&self, db: &DatabaseName) -> Result<Vec<RoleRecord>, LifecycleError> {
        self.actor(db)?;
        self.shared.store.roles(db).await
    }

    /// A role's verifier (`None` for an unknown role); `DatabaseNotFound` for an unknown database.
    pub async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> Result<Option<ScramVerifier>, LifecycleError> {
        self.actor(db)?;
        Ok(self.shared.store.role(db, role).await?.map(|r| r.verifier))
    }

    /// The newest transitions, newest first, of one database or of all.
    pub async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        if let Some(db) = db {
            self.actor(db)?;
        }
        self.shared.store.transitions(db, limit).await
    }

    /// Stop every compute and end all database tasks. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let actors: Vec<ActorHandle> = self
            .shared
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut waits = Vec::new();
        for a in actors {
            let (tx, rx) = oneshot::channel();
            if a.tx.send(Command::Shutdown { reply: tx }).await.is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

/// How a role's password is given.
pub enum RoleSecret {
    /// A plaintext password, hashed at once and never stored.
    Password(String),
    /// A ready SCRAM-SHA-256 verifier.
    Verifier(ScramVerifier),
}

impl std::fmt::Debug for RoleSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleSecret::Password(_) => f.write_str("Password(<redacted>)"),
            RoleSecret::Verifier(v) => f.debug_tuple("Verifier").field(v).finish(),
        }
    }
}

/// Parse the database name a lease id starts with (`<db>.<random>`).
fn lease_database(id: &LeaseId) -> CoreResult<DatabaseName> {
    let (db, _) =
        id.0.split_once('.')
            .ok_or_else(|| spg_core::CoreError::not_found("lease", id.0.clone()))?;
    DatabaseName::new(db).map_err(|_| spg_core::CoreError::not_found("lease", id.0.clone()))
}

#[async_trait]
impl Lease for ControlPlane {
    async fn acquire(&self, db: &DatabaseName, holder: &str) -> CoreResult<LeaseGrant> {
        let holder = holder.to_string();
        Ok(self
            .ask(db, |reply| Command::AcquireLease { holder, reply })
            .await?)
    }

    async fn renew(&self, id: &LeaseId) -> CoreResult<LeaseGrant> {
        let db = lease_database(id)?;
        let id2 = id.clone();
        self.ask(&db, |reply| Command::RenewLease { id: id2, reply })
            .await
            .map_err(|e| match e {
                LifecycleError::Invalid { .. } | LifecycleError::DatabaseNotFound(_) => {
                    spg_core::CoreError::not_found("lease", id.0.clone())
                }
                other => other.into(),
            })
    }

    async fn release(&self, id: &LeaseId) -> CoreResult<()> {
        let Ok(db) = lease_database(id) else {
            return Ok(());
        };
        let id = id.clone();
        match self
            .ask(&db, |reply| Command::ReleaseLease { id, reply })
            .await
        {
            Ok(()) | Err(LifecycleError::DatabaseNotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

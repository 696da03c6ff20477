//! The control plane: source of truth for databases, roles and lifecycle states; wakes computes
//! through a [`Provisioner`], stops them when idle, and hands out [`Lease`]s.

mod actor;
mod autoscaler;
mod handoff;
mod ownership;

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
use crate::branching::{BranchPoint, Brancher};
use crate::compute::config::{builtin_profiles, default_profile};
use crate::metrics::ControlPlaneMetrics;
use crate::provisioner::Provisioner;
use crate::store::{DatabaseRecord, OwnershipClaim, RoleRecord, StateStore, Transition};
use crate::LifecycleError;
use actor::{Command, DbActor, LiveStatus};
pub use handoff::REMOTE_GATEWAY_TTL;
pub use ownership::OwnershipConfig;
use ownership::Ownerships;

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
    /// Sharing the state store with other control planes (`None`: this is the only one, and
    /// owns every database).
    pub ownership: Option<OwnershipConfig>,
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
            ownership: None,
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
    /// The databases this control plane owns, when it shares its store.
    ownership: Option<Ownerships>,
    /// Where usage metering reads what durable storage keeps ([`ControlPlane::meter_storage`]).
    pub(crate) storage: std::sync::OnceLock<Arc<dyn spg_core::PageStore>>,
    /// Lifecycle events, as the store records them.
    pub(crate) events: crate::events::EventBus,
    /// The webhooks' delivery log, once [`ControlPlane::start_webhooks`] ran.
    pub(crate) deliveries: std::sync::OnceLock<Arc<crate::webhooks::DeliveryLog>>,
    /// The pre-wake hook and the client it is asked with ([`ControlPlane::set_pre_wake_hook`]).
    pub(crate) pre_wake: std::sync::OnceLock<(crate::webhooks::PreWakeHook, reqwest::Client)>,
    /// What makes branches' images ([`ControlPlane::set_brancher`]).
    brancher: std::sync::OnceLock<Arc<dyn Brancher>>,
}

/// How a branch's roles get their passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BranchPasswords {
    /// The parent's (the same verifiers).
    #[default]
    Keep,
    /// New generated ones, returned once.
    Regenerate,
}

/// A branch made by [`ControlPlane::branch_database`].
pub struct Branched {
    /// The new database.
    pub status: DatabaseStatus,
    /// Its parent.
    pub parent: DatabaseName,
    /// The point asked for.
    pub at: BranchPoint,
    /// Where the parent's history was cut.
    pub lsn: spg_core::Lsn,
    /// Bytes of new objects its first image took.
    pub bytes_written: u64,
    /// How long making it took.
    pub took: Duration,
    /// The roles' new passwords ([`BranchPasswords::Regenerate`]; wiped when dropped).
    pub passwords: Vec<(RoleName, zeroize::Zeroizing<String>)>,
}

/// A restore done by [`ControlPlane::restore_database`].
pub struct Restored {
    /// The database, now at the point.
    pub status: DatabaseStatus,
    /// The point asked for.
    pub at: BranchPoint,
    /// Where its history was cut.
    pub lsn: spg_core::Lsn,
    /// The branch that keeps the state it had before.
    pub kept: DatabaseStatus,
    /// How long the restore itself took (keeping the state before not counted).
    pub took: Duration,
}

/// The default name of the branch a restore of `db` at `now_ms` keeps: `<db>_pre_restore_`
/// and the UTC time to the second (`db` shortened to fit PostgreSQL's 63 bytes).
fn kept_name(db: &DatabaseName, now_ms: u64) -> Result<DatabaseName, LifecycleError> {
    let stamp: String = BranchPoint::rfc3339(now_ms)
        .chars()
        .take(19)
        .filter(char::is_ascii_digit)
        .collect();
    let suffix = format!("_pre_restore_{stamp}");
    let mut base = db.as_str().to_owned();
    base.truncate(63 - suffix.len());
    DatabaseName::new(format!("{base}{suffix}"))
        .map_err(|e| LifecycleError::invalid("database name", e.to_string()))
}

/// Template databases are the platform's own.
fn refuse_template(name: &DatabaseName) -> Result<(), LifecycleError> {
    if name.is_template() {
        return Err(LifecycleError::invalid(
            "database name",
            "names like spg_template_pg15 are the platform's templates",
        ));
    }
    Ok(())
}

/// A new role password: 24 random alphanumerics.
fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// A gateway daemon and when it last registered.
type RegisteredGateway = (Arc<dyn spg_core::Gateway>, Instant);

#[derive(Clone)]
struct ActorHandle {
    tx: mpsc::Sender<Command>,
    live: watch::Receiver<LiveStatus>,
}

impl Shared {
    /// After `name`'s record was deleted: its actor and ownership go here, and storage
    /// releases what it kept.
    pub(crate) async fn forget_deleted(&self, name: &DatabaseName) -> Result<(), LifecycleError> {
        self.actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(o) = &self.ownership {
            o.forget(name);
        }
        self.refresh_lease_gauge();
        if let Some(brancher) = self.brancher.get().cloned() {
            if let Err(e) = brancher.forget(name).await {
                warn!(db = %name, error = %e, "deleted, but its storage was not all released");
                return Err(e);
            }
        }
        Ok(())
    }

    /// What durable storage keeps for `db` now, also set on the gauges (`None`: not metered).
    pub(crate) async fn stored_bytes(
        &self,
        db: &DatabaseName,
    ) -> Result<Option<spg_core::StoredBytes>, LifecycleError> {
        let Some(pages) = self.storage.get() else {
            return Ok(None);
        };
        let stored = pages
            .stored_bytes(db)
            .await
            .map_err(LifecycleError::PageStore)?;
        if let Some(s) = &stored {
            self.metrics.stored(db.as_str(), s);
        }
        Ok(stored)
    }

    /// `Ok` if this control plane may act on `db` under ownership token `token` now (always,
    /// for a control plane that does not share its store).
    pub(crate) fn may_act(&self, db: &DatabaseName, token: u64) -> Result<(), LifecycleError> {
        match &self.ownership {
            None => Ok(()),
            Some(o) => o.check(db, token),
        }
    }

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
        let ownership = match config.ownership.clone() {
            Some(o) => {
                o.validate()?;
                Some(Ownerships::new(o))
            }
            None => None,
        };
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
            ownership,
            storage: std::sync::OnceLock::new(),
            events: crate::events::EventBus::default(),
            deliveries: std::sync::OnceLock::new(),
            pre_wake: std::sync::OnceLock::new(),
            brancher: std::sync::OnceLock::new(),
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
        if shared.ownership.is_none() {
            for rec in shared.store.databases().await? {
                let rec = recover(
                    &shared,
                    rec,
                    "recovered at control plane start",
                    "the control plane restarted during the handoff",
                )
                .await?;
                shared.metrics.state_changed(None, rec.state);
                let (tx, live) = DbActor::spawn(Arc::clone(&shared), rec.clone());
                shared
                    .actors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rec.name, ActorHandle { tx, live });
            }
        }
        let cp = ControlPlane { shared };
        if let Some(o) = &cp.shared.ownership {
            info!(id = %o.id, url = %o.cfg.url, "sharing the state store: databases are owned by lease");
            let stop = cp.shared.stop.clone();
            cp.shared.tasks.spawn(cp.clone().keep_ownership(stop));
        }
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

    /// The actor of `db`, taking the database's ownership first where control planes share
    /// the store (`NotOwner` when another holds it).
    async fn owned_actor(&self, db: &DatabaseName) -> Result<ActorHandle, LifecycleError> {
        match &self.shared.ownership {
            None => self.actor(db),
            Some(o) => match self.actor(db) {
                Ok(a) if o.is_valid(db) => Ok(a),
                _ => self.claim(db).await,
            },
        }
    }

    /// Whether the database exists (in the store: it may be owned elsewhere).
    async fn known(&self, db: &DatabaseName) -> Result<(), LifecycleError> {
        if self.actor(db).is_ok() {
            return Ok(());
        }
        match self.shared.store.database(db).await? {
            Some(_) => Ok(()),
            None => Err(LifecycleError::DatabaseNotFound(db.to_string())),
        }
    }

    async fn ask<T>(
        &self,
        db: &DatabaseName,
        make: impl FnOnce(oneshot::Sender<Result<T, LifecycleError>>) -> Command,
    ) -> Result<T, LifecycleError> {
        let actor = self.owned_actor(db).await?;
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
        refuse_template(&name)?;
        if let Some(brancher) = self.shared.brancher.get().cloned() {
            if self.shared.store.database(&name).await?.is_some() {
                return Err(LifecycleError::AlreadyExists {
                    kind: "database",
                    name: name.to_string(),
                });
            }
            // Its first start is then a wake from an image like any other (no `initdb`).
            match brancher.fresh(&name).await {
                Ok(Some(image)) => info!(db = %name, lsn = %image.lsn, "started from the template"),
                Ok(None) => {}
                Err(e) => {
                    warn!(db = %name, error = %e, "no template image: the first start runs initdb")
                }
            }
        }
        let rec = DatabaseRecord::new(name.clone(), now_ms());
        let created = self.creation(&rec, "created".into(), None);
        self.shared.store.insert_database(&rec, &created).await?;
        Ok(self.created(rec, &created, crate::events::EventKind::Created))
    }

    /// The transition that creates `rec`.
    fn creation(
        &self,
        rec: &DatabaseRecord,
        reason: String,
        bytes_written: Option<u64>,
    ) -> Transition {
        Transition {
            database: rec.name.clone(),
            from: None,
            to: rec.state,
            generation: rec.generation,
            at_ms: rec.created_at_ms,
            reason,
            profile: Some(self.shared.config.profile_of(rec).name),
            bytes_written,
        }
    }

    /// Account for `rec`, just inserted with transition `created`: metrics, the event, its
    /// actor.
    fn created(
        &self,
        rec: DatabaseRecord,
        created: &Transition,
        kind: crate::events::EventKind,
    ) -> DatabaseStatus {
        let name = rec.name.clone();
        self.shared.metrics.state_changed(None, rec.state);
        self.shared.events.publish(
            kind,
            &name,
            rec.generation,
            created.at_ms,
            &created.reason,
            created.profile.clone(),
        );
        if self.shared.ownership.is_none() {
            // Shared stores: whoever first acts on it takes it.
            let (tx, live) = DbActor::spawn(Arc::clone(&self.shared), rec.clone());
            self.shared
                .actors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), ActorHandle { tx, live });
        }
        info!(db = %name, reason = %created.reason, "database created");
        DatabaseStatus {
            profile: self.shared.config.profile_of(&rec).name,
            record: rec,
            endpoint: None,
            leases: 0,
        }
    }

    /// How far back `db`'s history reaches (branches can start anywhere in it), and what it
    /// keeps in storage for that.
    pub async fn history_window(
        &self,
        db: &DatabaseName,
    ) -> Result<
        (
            Option<crate::branching::Reachable>,
            Option<spg_core::StoredBytes>,
        ),
        LifecycleError,
    > {
        self.known(db).await?;
        let reachable = match self.shared.brancher.get() {
            Some(b) => b.reachable(db).await?,
            None => None,
        };
        let stored = match self.shared.storage.get() {
            Some(s) => s
                .stored_bytes(db)
                .await
                .map_err(LifecycleError::PageStore)?,
            None => None,
        };
        Ok((reachable, stored))
    }

    /// Give `db` its own history window (`None`: back to the platform's default): every moment
    /// within it stays reachable for branches and restores; garbage collection takes what is
    /// older.
    pub async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<Duration>,
    ) -> Result<(), LifecycleError> {
        self.known(db).await?;
        let brancher = self.shared.brancher.get().cloned().ok_or_else(|| {
            LifecycleError::invalid("request", "this control plane keeps no history windows")
        })?;
        brancher.set_retention(db, retention).await
    }

    /// `db`'s own history window, if it has one.
    pub async fn retention(&self, db: &DatabaseName) -> Result<Option<Duration>, LifecycleError> {
        self.known(db).await?;
        match self.shared.brancher.get() {
            Some(b) => b.retention(db).await,
            None => Ok(None),
        }
    }

    /// Let this control plane make branches ([`ControlPlane::branch_database`]) with `brancher`.
    pub fn set_brancher(&self, brancher: Arc<dyn Brancher>) {
        let _ = self.shared.brancher.set(brancher);
    }

    /// Create database `name` as a branch of `parent` at `at`: its first image is the parent's
    /// at that point (sharing the parent's chunks), its roles are the parent's (with their
    /// passwords, or new generated ones), and its generations continue past the parent's.
    /// The parent is not woken, fenced or changed.
    pub async fn branch_database(
        &self,
        name: DatabaseName,
        parent: &DatabaseName,
        at: BranchPoint,
        passwords: BranchPasswords,
    ) -> Result<Branched, LifecycleError> {
        self.branch_database_as(name, parent, at, passwords, false)
            .await
    }

    /// As [`ControlPlane::branch_database`]; `ephemeral` makes a read-only branch (its roles
    /// read every table and write nothing) that is deleted after its idle stop.
    pub async fn branch_database_as(
        &self,
        name: DatabaseName,
        parent: &DatabaseName,
        at: BranchPoint,
        passwords: BranchPasswords,
        ephemeral: bool,
    ) -> Result<Branched, LifecycleError> {
        refuse_template(&name)?;
        let brancher = self.shared.brancher.get().cloned().ok_or_else(|| {
            LifecycleError::invalid("request", "this control plane cannot make branches")
        })?;
        let Some(parent_rec) = self.shared.store.database(parent).await? else {
            return Err(LifecycleError::DatabaseNotFound(parent.to_string()));
        };
        if self.shared.store.database(&name).await?.is_some() {
            return Err(LifecycleError::AlreadyExists {
                kind: "database",
                name: name.to_string(),
            });
        }
        let made = if ephemeral {
            brancher.branch_read_only(parent, &name, at).await?
        } else {
            brancher.branch(parent, &name, at).await?
        };
        self.record_branch(name, &parent_rec, at, made, passwords, ephemeral)
            .await
    }

    /// Record `name`, just made by the brancher from `parent` at `at`: its database record
    /// (continuing the parent's generations) and the parent's roles.
    async fn record_branch(
        &self,
        name: DatabaseName,
        parent_rec: &DatabaseRecord,
        at: BranchPoint,
        made: crate::branching::BranchMade,
        passwords: BranchPasswords,
        ephemeral: bool,
    ) -> Result<Branched, LifecycleError> {
        let parent = &parent_rec.name;
        let parent_roles = self.shared.store.roles(parent).await?;
        let now = now_ms();
        let mut rec = DatabaseRecord::new(name.clone(), now);
        rec.generation = made.generation;
        rec.profile = parent_rec.profile.clone();
        rec.ephemeral = ephemeral;
        let created = self.creation(
            &rec,
            format!("branched from {parent} at {at} (LSN {})", made.lsn),
            made.image.as_ref().map(|i| i.bytes_written),
        );
        self.shared.store.insert_database(&rec, &created).await?;
        let mut new_passwords = Vec::new();
        for role in parent_roles {
            let verifier = match passwords {
                BranchPasswords::Keep => role.verifier,
                BranchPasswords::Regenerate => {
                    let pw = zeroize::Zeroizing::new(random_password());
                    let hashed = pw.clone();
                    let v =
                        tokio::task::spawn_blocking(move || ScramVerifier::from_password(&hashed))
                            .await
                            .map_err(|e| {
                                LifecycleError::Store(format!("hashing task failed: {e}"))
                            })?;
                    new_passwords.push((role.name.clone(), pw));
                    v
                }
            };
            self.shared
                .store
                .insert_role(&RoleRecord {
                    database: name.clone(),
                    name: role.name,
                    verifier,
                    created_at_ms: now,
                })
                .await?;
        }
        let status = self.created(rec, &created, crate::events::EventKind::BranchCreated);
        Ok(Branched {
            status,
            parent: parent.clone(),
            at,
            lsn: made.lsn,
            bytes_written: made.image.as_ref().map_or(0, |i| i.bytes_written),
            took: made.took,
            passwords: new_passwords,
        })
    }

    /// Delete `name`: its compute stops (sessions are disconnected), its record and roles go
    /// from the store, then storage releases its images, archived WAL and safekeeper log (chunks
    /// its branches share stay theirs). Branches of it live on. The name is free afterwards.
    pub async fn delete_database(&self, name: &DatabaseName) -> Result<(), LifecycleError> {
        refuse_template(name)?;
        self.known(name).await?;
        self.ask(name, |reply| Command::Delete { reply }).await?;
        self.shared.forget_deleted(name).await
    }

    /// Move `name` back to `at` (a point-in-time restore): its compute stops (sessions are
    /// disconnected), the state it had is kept as the branch `keep` (by default
    /// `<name>_pre_restore_<UTC time>`, same roles and passwords), and the database continues
    /// from `at` as a new generation on a new timeline. A restore of a restore works the same
    /// way; the kept branch undoes one.
    pub async fn restore_database(
        &self,
        name: &DatabaseName,
        at: BranchPoint,
        keep: Option<DatabaseName>,
    ) -> Result<Restored, LifecycleError> {
        if self.shared.brancher.get().is_none() {
            return Err(LifecycleError::invalid(
                "request",
                "this control plane cannot restore databases",
            ));
        }
        if let BranchPoint::Time(ms) = at {
            if ms > now_ms() {
                return Err(LifecycleError::invalid(
                    "restore point",
                    format!("{at} is in the future"),
                ));
            }
        }
        let Some(rec) = self.shared.store.database(name).await? else {
            return Err(LifecycleError::DatabaseNotFound(name.to_string()));
        };
        let keep = match keep {
            Some(k) => k,
            None => kept_name(name, now_ms())?,
        };
        refuse_template(&keep)?;
        if self.shared.store.database(&keep).await?.is_some() {
            return Err(LifecycleError::AlreadyExists {
                kind: "database",
                name: keep.to_string(),
            });
        }
        let keep2 = keep.clone();
        let outcome = self
            .ask(name, |reply| Command::Restore {
                keep: keep2,
                at,
                reply,
            })
            .await?;
        let kept = self
            .record_branch(
                keep,
                &rec,
                BranchPoint::Newest,
                outcome.kept,
                BranchPasswords::Keep,
                false,
            )
            .await?;
        let made = outcome.restored?;
        Ok(Restored {
            status: self.database(name).await?,
            at,
            lsn: made.lsn,
            kept: kept.status,
            took: made.took,
        })
    }

    /// One database.
    pub async fn database(&self, name: &DatabaseName) -> Result<DatabaseStatus, LifecycleError> {
        let live = match self.actor(name) {
            Ok(actor) => actor.live.borrow().clone(),
            Err(_) if self.shared.ownership.is_some() => LiveStatus::default(),
            Err(e) => return Err(e),
        };
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
        if self.shared.ownership.is_some() {
            let mut out = Vec::new();
            for rec in self.shared.store.databases().await? {
                let live = self
                    .actor(&rec.name)
                    .map(|a| a.live.borrow().clone())
                    .unwrap_or_default();
                let record = live.record.unwrap_or(rec);
                out.push(DatabaseStatus {
                    profile: self.shared.config.profile_of(&record).name,
                    record,
                    endpoint: live.endpoint,
                    leases: live.leases,
                });
            }
            return Ok(out);
        }
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
        // The owner creates it (and installs it in a running compute).
        self.owned_actor(db).await?;
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
        self.known(db).await?;
        self.shared.store.roles(db).await
    }

    /// A role's verifier (`None` for an unknown role); `DatabaseNotFound` for an unknown database.
    pub async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> Result<Option<ScramVerifier>, LifecycleError> {
        self.known(db).await?;
        Ok(self.shared.store.role(db, role).await?.map(|r| r.verifier))
    }

    /// The newest transitions, newest first, of one database or of all.
    pub async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        if let Some(db) = db {
            self.known(db).await?;
        }
        self.shared.store.transitions(db, limit).await
    }

    /// What `db` used from `from_ms` (default: its creation) to `to_ms` (ms since the epoch;
    /// `to_ms` is cut at now), metered from its transitions ([`crate::usage`]), and what
    /// durable storage keeps for it now (when [`ControlPlane::meter_storage`] named where to
    /// ask).
    pub async fn usage(
        &self,
        db: &DatabaseName,
        from_ms: Option<u64>,
        to_ms: u64,
    ) -> Result<(crate::usage::Usage, Option<spg_core::StoredBytes>), LifecycleError> {
        let from_ms = match from_ms {
            Some(f) => {
                self.known(db).await?;
                f
            }
            None => {
                let rec = self.shared.store.database(db).await?;
                rec.ok_or_else(|| LifecycleError::DatabaseNotFound(db.to_string()))?
                    .created_at_ms
            }
        };
        let to_ms = to_ms.min(now_ms());
        let ts = self
            .shared
            .store
            .transitions_between(db, from_ms, to_ms)
            .await?;
        let stored = self.shared.stored_bytes(db).await?;
        Ok((crate::usage::meter(&ts, from_ms, to_ms), stored))
    }

    /// Lifecycle events from now on (created, branched, woken, stopped, crashed, handoffs), as the state
    /// store records them.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::events::Event> {
        self.shared.events.subscribe()
    }

    /// Deliver every lifecycle event to `hooks` ([`crate::webhooks`]) with `client`, until
    /// shutdown. Once; later calls are ignored.
    pub fn start_webhooks(
        &self,
        hooks: Vec<crate::webhooks::Webhook>,
        policy: crate::webhooks::RetryPolicy,
        client: reqwest::Client,
    ) {
        let log = Arc::new(crate::webhooks::DeliveryLog::new(1000));
        if self.shared.deliveries.set(Arc::clone(&log)).is_err() {
            return;
        }
        for hook in hooks {
            let task = crate::webhooks::deliver(
                hook,
                self.shared.events.subscribe(),
                policy.clone(),
                client.clone(),
                Arc::clone(&log),
                self.shared.stop.clone(),
            );
            self.shared.tasks.spawn(task);
        }
    }

    /// Ask `hook` (with `client`) before every start of a stopped database
    /// ([`crate::webhooks::PreWakeHook`]). Once; later calls are ignored.
    pub fn set_pre_wake_hook(&self, hook: crate::webhooks::PreWakeHook, client: reqwest::Client) {
        let _ = self.shared.pre_wake.set((hook, client));
    }

    /// The newest `limit` webhook deliveries, newest first (none without webhooks).
    pub fn webhook_deliveries(&self, limit: usize) -> Vec<crate::webhooks::Delivery> {
        self.shared
            .deliveries
            .get()
            .map(|log| log.newest(limit))
            .unwrap_or_default()
    }

    /// Meter what durable storage keeps for each database through `pages` (its
    /// [`spg_core::PageStore::stored_bytes`]): in [`ControlPlane::usage`], and as Prometheus
    /// gauges refreshed after each stop. Set once; later calls are ignored.
    pub fn meter_storage(&self, pages: Arc<dyn spg_core::PageStore>) {
        let _ = self.shared.storage.set(pages);
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
        // Computes stopped: whoever is asked next may take the databases at once.
        if let Some(o) = &self.shared.ownership {
            for (db, term) in o.held() {
                o.forget(&db);
                if let Err(e) = self
                    .shared
                    .store
                    .release_ownership(&db, &o.id, term.token)
                    .await
                {
                    warn!(%db, error = %e, "releasing the ownership failed (it expires)");
                }
            }
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.provisioner.shutdown().await;
    }
}

/// Bring a record left in a running state (its control plane died, or another one owned it)
/// back to `stopped`, and a handoff left in progress to `aborted`. Computes of this host left
/// behind are stopped; those elsewhere are fenced by the next generation.
async fn recover(
    shared: &Shared,
    mut rec: DatabaseRecord,
    reason: &str,
    handoff_reason: &str,
) -> Result<DatabaseRecord, LifecycleError> {
    if rec.scale_state.in_progress() {
        // A handoff the previous owner was running: its standby is gone with it (or was
        // stopped as a leftover), the gateways it froze thaw by themselves.
        rec.scale_state = spg_core::ScaleState::Aborted;
        rec.scale_reason = Some(handoff_reason.into());
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
            reason: reason.into(),
            profile: Some(shared.config.profile_of(&rec).name),
            bytes_written: None,
        };
        if !shared
            .store
            .update_database(&rec, expected, Some(&t))
            .await?
        {
            return Err(LifecycleError::Conflict(rec.name.to_string()));
        }
        shared.events.publish(
            crate::events::EventKind::Stopped,
            &rec.name,
            rec.generation,
            now,
            reason,
            t.profile.clone(),
        );
    }
    Ok(rec)
}

impl ControlPlane {
    /// This control plane's id in a shared store (`None`: it does not share its store).
    pub fn owner_id(&self) -> Option<&str> {
        self.shared.ownership.as_ref().map(|o| o.id.as_str())
    }

    /// Whether this control plane may act on `db` now (always true without a shared store).
    pub fn owns(&self, db: &DatabaseName) -> bool {
        match &self.shared.ownership {
            None => self.actor(db).is_ok(),
            Some(o) => o.is_valid(db) && self.actor(db).is_ok(),
        }
    }

    /// Take or renew the ownership of `db`, and return its actor; `NotOwner` (with where the
    /// owner answers) when another control plane holds it.
    async fn claim(&self, db: &DatabaseName) -> Result<ActorHandle, LifecycleError> {
        self.claim_with(db, false).await
    }

    /// [`claim`](Self::claim); `renew` asks the store even while the term held is fresh (the
    /// renewal loop: it must not let a term run down to its margin).
    async fn claim_with(
        &self,
        db: &DatabaseName,
        renew: bool,
    ) -> Result<ActorHandle, LifecycleError> {
        let Some(own) = &self.shared.ownership else {
            return self.actor(db);
        };
        let _one_at_a_time = own.claiming.lock().await;
        // Claimed (or renewed) while this call waited for the lock: nothing to do.
        let fresh = !renew
            && own
                .term(db)
                .is_some_and(|t| t.valid_until > Instant::now() + own.cfg.renew_interval);
        if let (true, Ok(a)) = (fresh, self.actor(db)) {
            return Ok(a);
        }
        let held = own.term(db);
        let sent = Instant::now();
        let ownership = self
            .shared
            .store
            .claim_ownership(
                db,
                &OwnershipClaim {
                    owner: &own.id,
                    owner_url: &own.cfg.url,
                    ttl_ms: own.cfg.ttl.as_millis() as u64,
                    renew: held.map(|t| t.token),
                },
            )
            .await?;
        if !ownership.held_by(&own.id) {
            if held.is_some() {
                warn!(%db, owner = ?ownership.owner, "ownership lost");
                own.forget(db);
                self.abdicate(db).await;
            }
            return Err(LifecycleError::NotOwner {
                database: db.to_string(),
                owner: ownership.owner,
                url: ownership.owner_url,
            });
        }
        let actor = self.actor(db).ok();
        match (held, actor) {
            (Some(t), Some(a)) if t.token == ownership.token => {
                own.hold(db, t.token, sent);
                Ok(a)
            }
            (Some(t), Some(a)) if t.token + 1 == ownership.token => {
                // The lease lapsed (the store was out of reach) and nobody took it in
                // between: the same compute carries on under the new term.
                info!(%db, token = ownership.token, "ownership renewed under a new term");
                own.hold(db, ownership.token, sent);
                let (tx, rx) = oneshot::channel();
                a.tx.send(Command::NewTerm {
                    token: ownership.token,
                    reply: tx,
                })
                .await
                .map_err(|_| LifecycleError::ShuttingDown)?;
                rx.await.map_err(|_| LifecycleError::ShuttingDown)??;
                Ok(a)
            }
            (_, actor) => {
                if actor.is_some() {
                    // Another term came between: what this process ran is no longer its own.
                    self.abdicate(db).await;
                }
                own.hold(db, ownership.token, sent);
                match self.adopt(db, ownership.token).await {
                    Ok(a) => Ok(a),
                    Err(e) => {
                        own.forget(db);
                        if let Err(r) = self
                            .shared
                            .store
                            .release_ownership(db, &own.id, ownership.token)
                            .await
                        {
                            warn!(%db, error = %r, "releasing a failed takeover");
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// Start looking after `db` under the term `token` just won.
    async fn adopt(&self, db: &DatabaseName, token: u64) -> Result<ActorHandle, LifecycleError> {
        let rec = self
            .shared
            .store
            .database(db)
            .await?
            .ok_or_else(|| LifecycleError::DatabaseNotFound(db.to_string()))?;
        if rec.owner_token != token {
            return Err(LifecycleError::NotOwner {
                database: db.to_string(),
                owner: None,
                url: None,
            });
        }
        match self.shared.provisioner.cleanup_stale(db).await {
            Ok(true) => warn!(%db, "stopped a compute this host had left of the database"),
            Ok(false) => {}
            Err(e) => warn!(%db, error = %e, "cleanup of a leftover compute failed"),
        }
        let id = self.owner_id().unwrap_or_default().to_string();
        let reason = format!("taken over by control plane {id}");
        let rec = recover(
            &self.shared,
            rec,
            &reason,
            &format!("the owning control plane went away during the handoff ({reason})"),
        )
        .await?;
        info!(%db, token, state = %rec.state, generation = %rec.generation, "database adopted");
        self.shared.metrics.state_changed(None, rec.state);
        let (tx, live) = DbActor::spawn(Arc::clone(&self.shared), rec);
        let handle = ActorHandle { tx, live };
        self.shared
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.clone(), handle.clone());
        Ok(handle)
    }

    /// Stop looking after `db`: its compute here is killed without a word to the store (the
    /// new owner decides), its actor ends.
    async fn abdicate(&self, db: &DatabaseName) {
        let actor = self
            .shared
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(db);
        if let Some(a) = actor {
            let (tx, rx) = oneshot::channel();
            if a.tx.send(Command::Abdicate { reply: tx }).await.is_ok() {
                let _ = rx.await;
            }
            self.shared.refresh_lease_gauge();
        }
    }

    /// Renew what this control plane owns; take databases whose owner stopped renewing while
    /// a compute should run (or a handoff was under way).
    async fn keep_ownership(self, stop: CancellationToken) {
        let Some(own) = &self.shared.ownership else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(own.cfg.renew_interval) => {}
            }
            for (db, _) in own.held() {
                match self.claim_with(&db, true).await {
                    Ok(_) => {}
                    Err(LifecycleError::NotOwner { owner, .. }) => {
                        info!(%db, ?owner, "no longer the owner")
                    }
                    Err(e) => warn!(%db, error = %e, "renewing the ownership failed"),
                }
            }
            let Ok(all) = self.shared.store.ownerships().await else {
                continue;
            };
            for o in all.into_iter().filter(|o| !o.is_held()) {
                if own.term(&o.database).is_some() {
                    continue;
                }
                let needs_owner = match self.shared.store.database(&o.database).await {
                    Ok(Some(rec)) => {
                        rec.state != ComputeState::Stopped || rec.scale_state.in_progress()
                    }
                    _ => false,
                };
                if needs_owner {
                    match self.claim(&o.database).await {
                        Ok(_) => {
                            info!(db = %o.database, previous = ?o.owner, "took over an ownerless database")
                        }
                        Err(LifecycleError::NotOwner { .. }) => {}
                        Err(e) => warn!(db = %o.database, error = %e, "taking over failed"),
                    }
                }
            }
        }
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

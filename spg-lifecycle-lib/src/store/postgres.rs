//! State store in a PostgreSQL database, for several control planes sharing their state.
//!
//! One connection per store, used by one operation at a time (like the SQLite store); a
//! connection that broke (the server restarted, the network dropped) is replaced on the next
//! call, so a restart of the state PostgreSQL costs the calls made while it was down, nothing
//! more. The schema is created and upgraded by numbered migrations, applied under an advisory
//! lock so that control planes starting together do not race. Commits are synchronous (a
//! `synchronous_commit` of `off` or `local` inherited from the server or role is raised to
//! `on`): a generation bump is durable before a compute of that generation starts.

use std::time::Duration;

use async_trait::async_trait;
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls, Row};
use tracing::{info, warn};

use super::{DatabaseRecord, Ownership, OwnershipClaim, RoleRecord, StateStore, Transition};
use crate::LifecycleError;

/// Numbered schema migrations: entry `i` takes the schema from version `i` to `i + 1`. Never
/// edit one that has shipped; append.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE databases (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    record TEXT NOT NULL,
    owner TEXT,
    owner_url TEXT,
    owner_token BIGINT NOT NULL DEFAULT 0,
    lease_expires_ms BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE roles (
    database TEXT NOT NULL REFERENCES databases(name),
    name TEXT NOT NULL,
    verifier TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (database, name)
);
CREATE TABLE transitions (
    id BIGSERIAL PRIMARY KEY,
    database TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    generation BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX transitions_by_db ON transitions (database, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
",
    "
ALTER TABLE transitions ADD COLUMN profile TEXT;
ALTER TABLE transitions ADD COLUMN bytes_written BIGINT;
CREATE INDEX transitions_by_db_time ON transitions (database, at_ms);
",
];

/// The columns a transition is read from ([`transition_from_row`]).
const COLS: &str =
    "database, from_state, to_state, generation, at_ms, reason, profile, bytes_written";

/// The columns a database record is read from: the JSON document, then the columns that
/// override it (the version and the token change without the document: a takeover).
const RECORD_COLS: &str = "record, version, owner_token";

/// The ownership columns, and how long the lease still runs by the server's clock.
const OWNERSHIP_COLS: &str = "name, owner, owner_url, owner_token,
    greatest(lease_expires_ms - (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 0)";

/// The server's clock in ms since the epoch, as SQL.
const SERVER_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Key of the advisory lock migrations run under (any constant; "spg state" in ASCII).
const MIGRATION_LOCK: i64 = 0x7370_6720_7374_6174;

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// State store in PostgreSQL (`postgres://user:password@host:port/dbname?sslmode=...`).
pub struct PostgresStateStore {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    conn: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password: show where, never how.
        f.debug_struct("PostgresStateStore")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

fn pg_err(e: tokio_postgres::Error) -> LifecycleError {
    match e.as_db_error() {
        // Class 57 (operator intervention: shutting down, starting up), 08 (connection) and
        // 53 (insufficient resources, e.g. too many connections) pass: retry.
        Some(d)
            if ["57", "08", "53"]
                .iter()
                .any(|c| d.code().code().starts_with(c)) =>
        {
            LifecycleError::StoreUnavailable(format!("{} ({})", d.message(), d.code().code()))
        }
        Some(d) => LifecycleError::Store(format!("{} ({})", d.message(), d.code().code())),
        // No answer from the server: the connection failed or broke.
        None => LifecycleError::StoreUnavailable(describe(&e)),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Store(format!("corrupt {what} in the state store: {e}"))
}

/// The control plane's clock, as the store's integer columns take it.
fn now_ms() -> i64 {
    crate::controlplane::now_ms() as i64
}

impl PostgresStateStore {
    /// Connect to the PostgreSQL at `url` and bring its schema up to date. With `tls`, the
    /// connection is encrypted and the server checked against it (`sslmode` in the URL decides
    /// whether TLS is required); without, it is plaintext (`sslmode=require` then fails).
    pub async fn connect(
        url: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, LifecycleError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| LifecycleError::Invalid {
                what: "state store URL",
                reason: format!("{e}"),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("spg-controlplane");
        }
        let store = PostgresStateStore {
            config,
            tls: tls.map(tokio_postgres_rustls::MakeRustlsConnect::new),
            conn: Mutex::new(None),
        };
        let mut client = store.client().await?;
        migrate(&mut client).await?;
        drop(client);
        Ok(store)
    }

    async fn open(&self) -> Result<Client, tokio_postgres::Error> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(drive(conn));
                client
            }
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                tokio::spawn(drive(conn));
                client
            }
        };
        let sync: String = client
            .query_one("SELECT current_setting('synchronous_commit')", &[])
            .await?
            .get(0);
        if sync == "off" || sync == "local" {
            client.batch_execute("SET synchronous_commit = on").await?;
        }
        Ok(client)
    }

    /// The connection, opened (again) if there is none or it broke.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, LifecycleError> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            if guard.is_some() {
                info!("reconnecting to the state store");
            }
            *guard = None;
            *guard = Some(self.open().await.map_err(|e| match pg_err(e) {
                LifecycleError::StoreUnavailable(m) => {
                    LifecycleError::StoreUnavailable(format!("cannot reach the state store: {m}"))
                }
                other => other,
            })?);
        }
        MutexGuard::try_map(guard, |c| c.as_mut())
            .map_err(|_| LifecycleError::Store("no state store connection".into()))
    }
}

/// Run a connection until it ends (the client sees it closed and reconnects).
async fn drive<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        warn!(error = %e, "state store connection ended");
    }
}

/// An error's message with its cause (tokio-postgres keeps the I/O error as the source).
fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

async fn migrate(c: &mut Client) -> Result<(), LifecycleError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS spg_schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at_ms BIGINT NOT NULL
         )",
    )
    .await
    .map_err(pg_err)?;
    let done: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM spg_schema_migrations",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(LifecycleError::Store(format!(
            "the state store's schema is at version {done}, newer than this control plane \
             knows ({}): upgrade the control plane",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(m).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO spg_schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[&(i as i32 + 1), &now_ms()],
        )
        .await
        .map_err(pg_err)?;
        info!(version = i + 1, "state store schema migrated");
    }
    tx.commit().await.map_err(pg_err)
}

fn record_from_row(row: &Row) -> Result<DatabaseRecord, LifecycleError> {
    let json: String = row.try_get(0).map_err(pg_err)?;
    let mut rec: DatabaseRecord =
        serde_json::from_str(&json).map_err(|e| corrupt("database record", e))?;
    rec.version = row.try_get::<_, i64>(1).map_err(pg_err)? as u64;
    rec.owner_token = row.try_get::<_, i64>(2).map_err(pg_err)? as u64;
    Ok(rec)
}

fn ownership_from_row(row: &Row) -> Result<Ownership, LifecycleError> {
    let name: String = row.try_get(0).map_err(pg_err)?;
    Ok(Ownership {
        database: DatabaseName::new(name).map_err(|e| corrupt("database name", e))?,
        owner: row.try_get(1).map_err(pg_err)?,
        owner_url: row.try_get(2).map_err(pg_err)?,
        token: row.try_get::<_, i64>(3).map_err(pg_err)? as u64,
        remaining_ms: row.try_get::<_, i64>(4).map_err(pg_err)?.max(0) as u64,
    })
}

fn role_from_row(row: &Row) -> Result<RoleRecord, LifecycleError> {
    let db: String = row.try_get(0).map_err(pg_err)?;
    let name: String = row.try_get(1).map_err(pg_err)?;
    let verifier: String = row.try_get(2).map_err(pg_err)?;
    let created: i64 = row.try_get(3).map_err(pg_err)?;
    Ok(RoleRecord {
        database: DatabaseName::new(db).map_err(|e| corrupt("database name", e))?,
        name: RoleName::new(name).map_err(|e| corrupt("role name", e))?,
        verifier: ScramVerifier::parse(&verifier).map_err(|e| corrupt("verifier", e))?,
        created_at_ms: created as u64,
    })
}

fn transition_from_row(row: &Row) -> Result<Transition, LifecycleError> {
    let db: String = row.try_get(0).map_err(pg_err)?;
    let from: Option<String> = row.try_get(1).map_err(pg_err)?;
    let to: String = row.try_get(2).map_err(pg_err)?;
    let state = |s: &str| s.parse::<ComputeState>().map_err(|e| corrupt("state", e));
    Ok(Transition {
        database: DatabaseName::new(db).map_err(|e| corrupt("database name", e))?,
        from: from.as_deref().map(state).transpose()?,
        to: state(&to)?,
        generation: Generation(row.try_get::<_, i64>(3).map_err(pg_err)? as u64),
        at_ms: row.try_get::<_, i64>(4).map_err(pg_err)? as u64,
        reason: row.try_get(5).map_err(pg_err)?,
        profile: row.try_get(6).map_err(pg_err)?,
        bytes_written: row
            .try_get::<_, Option<i64>>(7)
            .map_err(pg_err)?
            .map(|b| b.max(0) as u64),
    })
}

async fn insert_transition(c: &impl GenericClient, t: &Transition) -> Result<(), LifecycleError> {
    c.execute(
        "INSERT INTO transitions (database, from_state, to_state, generation, at_ms, reason,
                                  profile, bytes_written)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &t.database.as_str(),
            &t.from.map(|s| s.as_str()),
            &t.to.as_str(),
            &(t.generation.0 as i64),
            &(t.at_ms as i64),
            &t.reason,
            &t.profile,
            &t.bytes_written.map(|b| b.min(i64::MAX as u64) as i64),
        ],
    )
    .await
    .map(drop)
    .map_err(pg_err)
}

fn to_json(rec: &DatabaseRecord) -> Result<String, LifecycleError> {
    serde_json::to_string(rec).map_err(|e| LifecycleError::Store(e.to_string()))
}

#[async_trait]
impl StateStore for PostgresStateStore {
    async fn insert_database(
        &self,
        rec: &DatabaseRecord,
        created: &Transition,
    ) -> Result<(), LifecycleError> {
        let json = to_json(rec)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        match tx
            .execute(
                "INSERT INTO databases (name, version, generation, record) VALUES ($1, $2, $3, $4)",
                &[
                    &rec.name.as_str(),
                    &(rec.version as i64),
                    &(rec.generation.0 as i64),
                    &json,
                ],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(LifecycleError::AlreadyExists {
                    kind: "database",
                    name: rec.name.to_string(),
                })
            }
            Err(e) => return Err(pg_err(e)),
        }
        insert_transition(&tx, created).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn database(
        &self,
        name: &DatabaseName,
    ) -> Result<Option<DatabaseRecord>, LifecycleError> {
        let c = self.client().await?;
        c.query_opt(
            &format!("SELECT {RECORD_COLS} FROM databases WHERE name = $1"),
            &[&name.as_str()],
        )
        .await
        .map_err(pg_err)?
        .as_ref()
        .map(record_from_row)
        .transpose()
    }

    async fn databases(&self) -> Result<Vec<DatabaseRecord>, LifecycleError> {
        let c = self.client().await?;
        c.query(
            &format!("SELECT {RECORD_COLS} FROM databases ORDER BY name COLLATE \"C\""),
            &[],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(record_from_row)
        .collect()
    }

    async fn update_database(
        &self,
        rec: &DatabaseRecord,
        expected_version: u64,
        transition: Option<&Transition>,
    ) -> Result<bool, LifecycleError> {
        let json = to_json(rec)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let changed = tx
            .execute(
                "UPDATE databases SET version = $1, generation = $2, record = $3
                 WHERE name = $4 AND version = $5 AND generation <= $2 AND owner_token = $6",
                &[
                    &(rec.version as i64),
                    &(rec.generation.0 as i64),
                    &json,
                    &rec.name.as_str(),
                    &(expected_version as i64),
                    &(rec.owner_token as i64),
                ],
            )
            .await
            .map_err(pg_err)?;
        if changed != 1 {
            return Ok(false);
        }
        if let Some(t) = transition {
            insert_transition(&tx, t).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn delete_database(
        &self,
        name: &DatabaseName,
        expected_version: u64,
        transition: &Transition,
    ) -> Result<bool, LifecycleError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let locked = tx
            .query_opt(
                "SELECT version FROM databases WHERE name = $1 FOR UPDATE",
                &[&name.as_str()],
            )
            .await
            .map_err(pg_err)?;
        if locked.map(|r| r.get::<_, i64>(0)) != Some(expected_version as i64) {
            return Ok(false);
        }
        tx.execute("DELETE FROM roles WHERE database = $1", &[&name.as_str()])
            .await
            .map_err(pg_err)?;
        tx.execute("DELETE FROM databases WHERE name = $1", &[&name.as_str()])
            .await
            .map_err(pg_err)?;
        insert_transition(&tx, transition).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn insert_role(&self, rec: &RoleRecord) -> Result<(), LifecycleError> {
        let c = self.client().await?;
        match c
            .execute(
                "INSERT INTO roles (database, name, verifier, created_at_ms)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &rec.database.as_str(),
                    &rec.name.as_str(),
                    &rec.verifier.to_postgres_string(),
                    &(rec.created_at_ms as i64),
                ],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(LifecycleError::AlreadyExists {
                kind: "role",
                name: rec.name.to_string(),
            }),
            Err(e) => Err(pg_err(e)),
        }
    }

    async fn role(
        &self,
        db: &DatabaseName,
        name: &RoleName,
    ) -> Result<Option<RoleRecord>, LifecycleError> {
        let c = self.client().await?;
        c.query_opt(
            "SELECT database, name, verifier, created_at_ms FROM roles
             WHERE database = $1 AND name = $2",
            &[&db.as_str(), &name.as_str()],
        )
        .await
        .map_err(pg_err)?
        .as_ref()
        .map(role_from_row)
        .transpose()
    }

    async fn roles(&self, db: &DatabaseName) -> Result<Vec<RoleRecord>, LifecycleError> {
        let c = self.client().await?;
        c.query(
            "SELECT database, name, verifier, created_at_ms FROM roles
             WHERE database = $1 ORDER BY name COLLATE \"C\"",
            &[&db.as_str()],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(role_from_row)
        .collect()
    }

    async fn transitions_between(
        &self,
        db: &DatabaseName,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Transition>, LifecycleError> {
        let (from, to) = (
            from_ms.min(i64::MAX as u64) as i64,
            to_ms.min(i64::MAX as u64) as i64,
        );
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {COLS} FROM (
                         (SELECT * FROM transitions WHERE database = $1 AND at_ms < $2
                          ORDER BY id DESC LIMIT 1)
                         UNION ALL
                         (SELECT * FROM transitions
                          WHERE database = $1 AND at_ms >= $2 AND at_ms <= $3)
                     ) t ORDER BY id"
                ),
                &[&db.as_str(), &from, &to],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(transition_from_row).collect()
    }

    async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        let limit = limit.min(100_000) as i64;
        let c = self.client().await?;
        let rows = match db {
            Some(db) => {
                c.query(
                    &format!(
                        "SELECT {COLS} FROM transitions WHERE database = $1
                         ORDER BY id DESC LIMIT $2"
                    ),
                    &[&db.as_str(), &limit],
                )
                .await
            }
            None => {
                c.query(
                    &format!("SELECT {COLS} FROM transitions ORDER BY id DESC LIMIT $1"),
                    &[&limit],
                )
                .await
            }
        }
        .map_err(pg_err)?;
        rows.iter().map(transition_from_row).collect()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, LifecycleError> {
        let c = self.client().await?;
        c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .await
            .map_err(pg_err)?
            .map(|r| r.try_get(0).map_err(pg_err))
            .transpose()
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), LifecycleError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await
        .map(drop)
        .map_err(pg_err)
    }

    async fn claim_ownership(
        &self,
        db: &DatabaseName,
        claim: &OwnershipClaim<'_>,
    ) -> Result<Ownership, LifecycleError> {
        let ttl = claim.ttl_ms.min(i64::MAX as u64 / 4) as i64;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let select = format!("SELECT {OWNERSHIP_COLS} FROM databases WHERE name = $1");
        let cur = tx
            .query_opt(&format!("{select} FOR UPDATE"), &[&db.as_str()])
            .await
            .map_err(pg_err)?
            .as_ref()
            .map(ownership_from_row)
            .transpose()?
            .ok_or_else(|| LifecycleError::DatabaseNotFound(db.to_string()))?;
        if cur.held_by(claim.owner) && claim.renew == Some(cur.token) {
            tx.execute(
                &format!(
                    "UPDATE databases SET lease_expires_ms = {SERVER_NOW_MS} + $1, owner_url = $2
                     WHERE name = $3"
                ),
                &[&ttl, &claim.owner_url, &db.as_str()],
            )
            .await
            .map_err(pg_err)?;
        } else if !cur.is_held() {
            tx.execute(
                &format!(
                    "UPDATE databases SET owner = $1, owner_url = $2,
                         lease_expires_ms = {SERVER_NOW_MS} + $3,
                         owner_token = owner_token + 1, version = version + 1
                     WHERE name = $4"
                ),
                &[&claim.owner, &claim.owner_url, &ttl, &db.as_str()],
            )
            .await
            .map_err(pg_err)?;
        } else {
            return Ok(cur);
        }
        let after = tx
            .query_one(&select, &[&db.as_str()])
            .await
            .map_err(pg_err)
            .and_then(|r| ownership_from_row(&r))?;
        tx.commit().await.map_err(pg_err)?;
        Ok(after)
    }

    async fn release_ownership(
        &self,
        db: &DatabaseName,
        owner: &str,
        token: u64,
    ) -> Result<bool, LifecycleError> {
        let c = self.client().await?;
        c.execute(
            &format!(
                "UPDATE databases SET lease_expires_ms = 0
                 WHERE name = $1 AND owner = $2 AND owner_token = $3
                   AND lease_expires_ms > {SERVER_NOW_MS}"
            ),
            &[&db.as_str(), &owner, &(token as i64)],
        )
        .await
        .map(|n| n == 1)
        .map_err(pg_err)
    }

    async fn ownerships(&self) -> Result<Vec<Ownership>, LifecycleError> {
        let c = self.client().await?;
        c.query(
            &format!("SELECT {OWNERSHIP_COLS} FROM databases ORDER BY name COLLATE \"C\""),
            &[],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(ownership_from_row)
        .collect()
    }
}

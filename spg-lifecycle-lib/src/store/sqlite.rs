//! Embedded SQLite state store.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName};

use super::{DatabaseRecord, Ownership, OwnershipClaim, RoleRecord, StateStore, Transition};
use crate::LifecycleError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS databases (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (
    database TEXT NOT NULL REFERENCES databases(name),
    name TEXT NOT NULL,
    verifier TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (database, name)
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    database TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_db ON transitions(database, id);
CREATE INDEX IF NOT EXISTS transitions_by_db_time ON transitions(database, at_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Columns added after the first schema, with their definitions: added where missing.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("databases", "owner", "TEXT"),
    ("databases", "owner_url", "TEXT"),
    ("databases", "owner_token", "INTEGER NOT NULL DEFAULT 0"),
    (
        "databases",
        "lease_expires_ms",
        "INTEGER NOT NULL DEFAULT 0",
    ),
    ("transitions", "profile", "TEXT"),
    ("transitions", "bytes_written", "INTEGER"),
];

/// The columns a transition is read from ([`transition_from_row`]).
const COLS: &str =
    "database, from_state, to_state, generation, at_ms, reason, profile, bytes_written";

/// The columns a database record is read from: the JSON document, then the columns that
/// override it (the version and the token change without the document: a takeover).
const RECORD_COLS: &str = "record, version, owner_token";

/// State store in one SQLite file (WAL journal, synchronous=FULL: a generation bump is durable
/// before a compute of that generation starts).
#[derive(Clone)]
pub struct SqliteStateStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStateStore").finish_non_exhaustive()
    }
}

fn store_err(e: rusqlite::Error) -> LifecycleError {
    LifecycleError::Store(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("corrupt {what}: {e}").into(),
    )
}

impl SqliteStateStore {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, LifecycleError> {
        // Role verifiers live here: the database is 0600 (SQLite gives its `-wal` and `-shm`
        // files the database's mode), and what an older version left looser is tightened.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            let tightened = match spg_core::fsmode::tighten(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && suffix.is_empty() => {
                    spg_core::fsmode::private_options()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&p)
                        .map(drop)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            };
            tightened.map_err(|e| LifecycleError::io("create", &p, e))?;
        }
        let conn = Connection::open(path).map_err(store_err)?;
        Self::init(conn)
    }

    /// An in-memory store (for tests and experiments; nothing survives the process).
    pub fn in_memory() -> Result<Self, LifecycleError> {
        Self::init(Connection::open_in_memory().map_err(store_err)?)
    }

    fn init(conn: Connection) -> Result<Self, LifecycleError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(store_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(store_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(store_err)?;
        conn.execute_batch(SCHEMA).map_err(store_err)?;
        for (table, column, def) in ADDED_COLUMNS {
            let present: bool = conn
                .query_row(
                    &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(store_err)?
                > 0;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))
                    .map_err(store_err)?;
            }
        }
        Ok(SqliteStateStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LifecycleError> + Send + 'static,
    ) -> Result<T, LifecycleError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| LifecycleError::Store(format!("store task failed: {e}")))?
    }
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DatabaseRecord> {
    let json: String = row.get(0)?;
    let mut rec: DatabaseRecord =
        serde_json::from_str(&json).map_err(|e| corrupt("database record", e))?;
    rec.version = row.get::<_, i64>(1)? as u64;
    rec.owner_token = row.get::<_, i64>(2)? as u64;
    Ok(rec)
}

fn ownership_from_row(row: &rusqlite::Row<'_>, now: i64) -> rusqlite::Result<Ownership> {
    let name: String = row.get(0)?;
    let expires: i64 = row.get(4)?;
    Ok(Ownership {
        database: DatabaseName::new(name).map_err(|e| corrupt("database name", e))?,
        owner: row.get(1)?,
        owner_url: row.get(2)?,
        token: row.get::<_, i64>(3)? as u64,
        remaining_ms: expires.saturating_sub(now).max(0) as u64,
    })
}

const OWNERSHIP_COLS: &str = "name, owner, owner_url, owner_token, lease_expires_ms";

/// The control plane's clock, as the store's integer columns take it.
fn now_ms() -> i64 {
    crate::controlplane::now_ms() as i64
}

fn insert_transition(tx: &rusqlite::Transaction<'_>, t: &Transition) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO transitions (database, from_state, to_state, generation, at_ms, reason,
                                  profile, bytes_written)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.database.as_str(),
            t.from.map(|s| s.as_str()),
            t.to.as_str(),
            t.generation.0 as i64,
            t.at_ms as i64,
            t.reason,
            t.profile,
            t.bytes_written.map(|b| b.min(i64::MAX as u64) as i64)
        ],
    )?;
    Ok(())
}

fn role_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RoleRecord> {
    let db: String = row.get(0)?;
    let name: String = row.get(1)?;
    let verifier: String = row.get(2)?;
    let created: i64 = row.get(3)?;
    Ok(RoleRecord {
        database: DatabaseName::new(db).map_err(|e| corrupt("database name", e))?,
        name: RoleName::new(name).map_err(|e| corrupt("role name", e))?,
        verifier: ScramVerifier::parse(&verifier).map_err(|e| corrupt("verifier", e))?,
        created_at_ms: created as u64,
    })
}

fn transition_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Transition> {
    let db: String = row.get(0)?;
    let from: Option<String> = row.get(1)?;
    let to: String = row.get(2)?;
    let state = |s: &str| s.parse::<ComputeState>().map_err(|e| corrupt("state", e));
    Ok(Transition {
        database: DatabaseName::new(db).map_err(|e| corrupt("database name", e))?,
        from: from.as_deref().map(state).transpose()?,
        to: state(&to)?,
        generation: Generation(row.get::<_, i64>(3)? as u64),
        at_ms: row.get::<_, i64>(4)? as u64,
        reason: row.get(5)?,
        profile: row.get(6)?,
        bytes_written: row.get::<_, Option<i64>>(7)?.map(|b| b.max(0) as u64),
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn insert_database(
        &self,
        rec: &DatabaseRecord,
        created: &Transition,
    ) -> Result<(), LifecycleError> {
        let rec = rec.clone();
        let created = created.clone();
        self.with(move |c| {
            let json =
                serde_json::to_string(&rec).map_err(|e| LifecycleError::Store(e.to_string()))?;
            let tx = c.transaction().map_err(store_err)?;
            match tx.execute(
                "INSERT INTO databases (name, version, generation, record) VALUES (?1, ?2, ?3, ?4)",
                params![
                    rec.name.as_str(),
                    rec.version as i64,
                    rec.generation.0 as i64,
                    json
                ],
            ) {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(LifecycleError::AlreadyExists {
                        kind: "database",
                        name: rec.name.to_string(),
                    })
                }
                Err(e) => return Err(store_err(e)),
            }
            insert_transition(&tx, &created).map_err(store_err)?;
            tx.commit().map_err(store_err)
        })
        .await
    }

    async fn database(
        &self,
        name: &DatabaseName,
    ) -> Result<Option<DatabaseRecord>, LifecycleError> {
        let name = name.clone();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {RECORD_COLS} FROM databases WHERE name = ?1"),
                [name.as_str()],
                record_from_row,
            )
            .optional()
            .map_err(store_err)
        })
        .await
    }

    async fn databases(&self) -> Result<Vec<DatabaseRecord>, LifecycleError> {
        self.with(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {RECORD_COLS} FROM databases ORDER BY name"
                ))
                .map_err(store_err)?;
            let rows = st.query_map([], record_from_row).map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(store_err)
        })
        .await
    }

    async fn update_database(
        &self,
        rec: &DatabaseRecord,
        expected_version: u64,
        transition: Option<&Transition>,
    ) -> Result<bool, LifecycleError> {
        let rec = rec.clone();
        let transition = transition.cloned();
        self.with(move |c| {
            let json =
                serde_json::to_string(&rec).map_err(|e| LifecycleError::Store(e.to_string()))?;
            let tx = c.transaction().map_err(store_err)?;
            let changed = tx
                .execute(
                    "UPDATE databases SET version = ?1, generation = ?2, record = ?3
                     WHERE name = ?4 AND version = ?5 AND generation <= ?2
                       AND owner_token = ?6",
                    params![
                        rec.version as i64,
                        rec.generation.0 as i64,
                        json,
                        rec.name.as_str(),
                        expected_version as i64,
                        rec.owner_token as i64
                    ],
                )
                .map_err(store_err)?;
            if changed != 1 {
                return Ok(false);
            }
            if let Some(t) = &transition {
                insert_transition(&tx, t).map_err(store_err)?;
            }
            tx.commit().map_err(store_err)?;
            Ok(true)
        })
        .await
    }

    async fn delete_database(
        &self,
        name: &DatabaseName,
        expected_version: u64,
        transition: &Transition,
    ) -> Result<bool, LifecycleError> {
        let (name, transition) = (name.clone(), transition.clone());
        self.with(move |c| {
            let tx = c.transaction().map_err(store_err)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT version FROM databases WHERE name = ?1",
                    params![name.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(store_err)?;
            if current != Some(expected_version as i64) {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM roles WHERE database = ?1",
                params![name.as_str()],
            )
            .map_err(store_err)?;
            tx.execute(
                "DELETE FROM databases WHERE name = ?1",
                params![name.as_str()],
            )
            .map_err(store_err)?;
            insert_transition(&tx, &transition).map_err(store_err)?;
            tx.commit().map_err(store_err)?;
            Ok(true)
        })
        .await
    }

    async fn insert_role(&self, rec: &RoleRecord) -> Result<(), LifecycleError> {
        let rec = rec.clone();
        self.with(move |c| {
            match c.execute(
                "INSERT INTO roles (database, name, verifier, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    rec.database.as_str(),
                    rec.name.as_str(),
                    rec.verifier.to_postgres_string(),
                    rec.created_at_ms as i64
                ],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(LifecycleError::AlreadyExists {
                    kind: "role",
                    name: rec.name.to_string(),
                }),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn role(
        &self,
        db: &DatabaseName,
        name: &RoleName,
    ) -> Result<Option<RoleRecord>, LifecycleError> {
        let (db, name) = (db.clone(), name.clone());
        self.with(move |c| {
            c.query_row(
                "SELECT database, name, verifier, created_at_ms FROM roles
                 WHERE database = ?1 AND name = ?2",
                [db.as_str(), name.as_str()],
                role_from_row,
            )
            .optional()
            .map_err(store_err)
        })
        .await
    }

    async fn roles(&self, db: &DatabaseName) -> Result<Vec<RoleRecord>, LifecycleError> {
        let db = db.clone();
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT database, name, verifier, created_at_ms FROM roles
                     WHERE database = ?1 ORDER BY name",
                )
                .map_err(store_err)?;
            let rows = st
                .query_map([db.as_str()], role_from_row)
                .map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(store_err)
        })
        .await
    }

    async fn transitions_between(
        &self,
        db: &DatabaseName,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Transition>, LifecycleError> {
        let db = db.clone();
        self.with(move |c| {
            let (from, to) = (
                from_ms.min(i64::MAX as u64) as i64,
                to_ms.min(i64::MAX as u64) as i64,
            );
            let mut st = c
                .prepare(&format!(
                    "SELECT {COLS} FROM (
                         SELECT * FROM (SELECT * FROM transitions
                                        WHERE database = ?1 AND at_ms < ?2
                                        ORDER BY id DESC LIMIT 1)
                         UNION ALL
                         SELECT * FROM transitions
                         WHERE database = ?1 AND at_ms >= ?2 AND at_ms <= ?3
                     ) ORDER BY id"
                ))
                .map_err(store_err)?;
            let rows = st
                .query_map(params![db.as_str(), from, to], transition_from_row)
                .map_err(store_err)?
                .collect::<rusqlite::Result<Vec<_>>>();
            rows.map_err(store_err)
        })
        .await
    }

    async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        let db = db.cloned();
        let limit = limit.min(100_000) as i64;
        self.with(move |c| {
            let rows = match &db {
                Some(db) => {
                    let mut st = c
                        .prepare(&format!(
                            "SELECT {COLS} FROM transitions WHERE database = ?1
                             ORDER BY id DESC LIMIT ?2"
                        ))
                        .map_err(store_err)?;
                    let r = st
                        .query_map(params![db.as_str(), limit], transition_from_row)
                        .map_err(store_err)?
                        .collect::<rusqlite::Result<Vec<_>>>();
                    r
                }
                None => {
                    let mut st = c
                        .prepare(&format!(
                            "SELECT {COLS} FROM transitions ORDER BY id DESC LIMIT ?1"
                        ))
                        .map_err(store_err)?;
                    let r = st
                        .query_map(params![limit], transition_from_row)
                        .map_err(store_err)?
                        .collect::<rusqlite::Result<Vec<_>>>();
                    r
                }
            };
            rows.map_err(store_err)
        })
        .await
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, LifecycleError> {
        let key = key.to_string();
        self.with(move |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(store_err)
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), LifecycleError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
            .map_err(store_err)
        })
        .await
    }

    async fn claim_ownership(
        &self,
        db: &DatabaseName,
        claim: &OwnershipClaim<'_>,
    ) -> Result<Ownership, LifecycleError> {
        let db = db.clone();
        let (owner, url) = (claim.owner.to_string(), claim.owner_url.to_string());
        let (ttl, renew) = (claim.ttl_ms.min(i64::MAX as u64 / 2) as i64, claim.renew);
        self.with(move |c| {
            // IMMEDIATE: the read and the write below are one step for every other writer.
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(store_err)?;
            let now = now_ms();
            let cur = tx
                .query_row(
                    &format!("SELECT {OWNERSHIP_COLS} FROM databases WHERE name = ?1"),
                    [db.as_str()],
                    |r| ownership_from_row(r, now),
                )
                .optional()
                .map_err(store_err)?
                .ok_or_else(|| LifecycleError::DatabaseNotFound(db.to_string()))?;
            if cur.held_by(&owner) && renew == Some(cur.token) {
                tx.execute(
                    "UPDATE databases SET lease_expires_ms = ?1, owner_url = ?2 WHERE name = ?3",
                    params![now + ttl, url, db.as_str()],
                )
                .map_err(store_err)?;
            } else if !cur.is_held() {
                tx.execute(
                    "UPDATE databases SET owner = ?1, owner_url = ?2, lease_expires_ms = ?3,
                         owner_token = owner_token + 1, version = version + 1
                     WHERE name = ?4",
                    params![owner, url, now + ttl, db.as_str()],
                )
                .map_err(store_err)?;
            } else {
                return Ok(cur);
            }
            let after = tx
                .query_row(
                    &format!("SELECT {OWNERSHIP_COLS} FROM databases WHERE name = ?1"),
                    [db.as_str()],
                    |r| ownership_from_row(r, now),
                )
                .map_err(store_err)?;
            tx.commit().map_err(store_err)?;
            Ok(after)
        })
        .await
    }

    async fn release_ownership(
        &self,
        db: &DatabaseName,
        owner: &str,
        token: u64,
    ) -> Result<bool, LifecycleError> {
        let (db, owner) = (db.clone(), owner.to_string());
        self.with(move |c| {
            c.execute(
                "UPDATE databases SET lease_expires_ms = 0
                 WHERE name = ?1 AND owner = ?2 AND owner_token = ?3 AND lease_expires_ms > ?4",
                params![db.as_str(), owner, token as i64, now_ms()],
            )
            .map(|n| n == 1)
            .map_err(store_err)
        })
        .await
    }

    async fn ownerships(&self) -> Result<Vec<Ownership>, LifecycleError> {
        self.with(|c| {
            let now = now_ms();
            let mut st = c
                .prepare(&format!(
                    "SELECT {OWNERSHIP_COLS} FROM databases ORDER BY name"
                ))
                .map_err(store_err)?;
            let rows = st
                .query_map([], |r| ownership_from_row(r, now))
                .map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(store_err)
        })
        .await
    }
}

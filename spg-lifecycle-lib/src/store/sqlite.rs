//! Embedded SQLite state store.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName};

use super::{DatabaseRecord, RoleRecord, StateStore, Transition};
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

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

fn record_from_json(json: String) -> rusqlite::Result<DatabaseRecord> {
    serde_json::from_str(&json).map_err(|e| corrupt("database record", e))
}

fn insert_transition(tx: &rusqlite::Transaction<'_>, t: &Transition) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO transitions (database, from_state, to_state, generation, at_ms, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            t.database.as_str(),
            t.from.map(|s| s.as_str()),
            t.to.as_str(),
            t.generation.0 as i64,
            t.at_ms as i64,
            t.reason
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
                "SELECT record FROM databases WHERE name = ?1",
                [name.as_str()],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .and_then(|o| o.map(record_from_json).transpose())
            .map_err(store_err)
        })
        .await
    }

    async fn databases(&self) -> Result<Vec<DatabaseRecord>, LifecycleError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT record FROM databases ORDER BY name")
                .map_err(store_err)?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(store_err)?;
            rows.map(|r| r.and_then(record_from_json))
                .collect::<rusqlite::Result<Vec<_>>>()
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
                     WHERE name = ?4 AND version = ?5 AND generation <= ?2",
                    params![
                        rec.version as i64,
                        rec.generation.0 as i64,
                        json,
                        rec.name.as_str(),
                        expected_version as i64
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

    async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        let db = db.cloned();
        let limit = limit.min(100_000) as i64;
        self.with(move |c| {
            const COLS: &str = "database, from_state, to_state, generation, at_ms, reason";
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(n: &str) -> DatabaseName {
        DatabaseName::new(n).unwrap()
    }

    fn created(rec: &DatabaseRecord) -> Transition {
        Transition {
            database: rec.name.clone(),
            from: None,
            to: ComputeState::Stopped,
            generation: Generation::NONE,
            at_ms: 1,
            reason: "created".into(),
        }
    }

    #[tokio::test]
    async fn databases_roundtrip_and_cas() {
        let s = SqliteStateStore::in_memory().unwrap();
        let rec = DatabaseRecord::new(db("shop"), 1);
        s.insert_database(&rec, &created(&rec)).await.unwrap();
        assert!(matches!(
            s.insert_database(&rec, &created(&rec)).await,
            Err(LifecycleError::AlreadyExists { .. })
        ));
        assert_eq!(s.database(&db("shop")).await.unwrap(), Some(rec.clone()));
        assert_eq!(s.database(&db("nope")).await.unwrap(), None);

        let mut next = rec.clone();
        next.version = 2;
        next.generation = Generation(1);
        next.state = ComputeState::Booting;
        let t = Transition {
            database: rec.name.clone(),
            from: Some(ComputeState::Stopped),
            to: ComputeState::Booting,
            generation: Generation(1),
            at_ms: 2,
            reason: "wake".into(),
        };
        assert!(s.update_database(&next, 1, Some(&t)).await.unwrap());
        // A second writer with the old version loses, and its transition is not recorded.
        let mut rival = rec.clone();
        rival.version = 2;
        rival.generation = Generation(1);
        assert!(!s.update_database(&rival, 1, Some(&t)).await.unwrap());
        // The generation never goes backwards, even with the right version.
        let mut back = next.clone();
        back.version = 3;
        back.generation = Generation(0);
        assert!(!s.update_database(&back, 2, None).await.unwrap());

        let ts = s.transitions(Some(&db("shop")), 10).await.unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0].to, ComputeState::Booting);
        assert_eq!(ts[1].from, None);
        assert_eq!(s.databases().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn roles_and_meta() {
        let s = SqliteStateStore::in_memory().unwrap();
        let rec = DatabaseRecord::new(db("shop"), 1);
        s.insert_database(&rec, &created(&rec)).await.unwrap();
        let role = RoleRecord {
            database: db("shop"),
            name: RoleName::new("app").unwrap(),
            verifier: ScramVerifier::from_password_with("pw", b"0123456789abcdef", 4096),
            created_at_ms: 5,
        };
        s.insert_role(&role).await.unwrap();
        assert!(matches!(
            s.insert_role(&role).await,
            Err(LifecycleError::AlreadyExists { .. })
        ));
        let got = s.role(&db("shop"), &role.name).await.unwrap().unwrap();
        assert_eq!(got, role);
        assert_eq!(s.roles(&db("shop")).await.unwrap().len(), 1);
        // Roles of unknown databases are refused by the foreign key.
        let mut orphan = role.clone();
        orphan.database = db("ghost");
        assert!(s.insert_role(&orphan).await.is_err());

        assert_eq!(s.meta("k").await.unwrap(), None);
        s.set_meta("k", "v1").await.unwrap();
        s.set_meta("k", "v2").await.unwrap();
        assert_eq!(s.meta("k").await.unwrap().as_deref(), Some("v2"));
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStateStore::open(&path).unwrap();
            let rec = DatabaseRecord::new(db("shop"), 1);
            s.insert_database(&rec, &created(&rec)).await.unwrap();
        }
        let s = SqliteStateStore::open(&path).unwrap();
        assert!(s.database(&db("shop")).await.unwrap().is_some());
    }
}

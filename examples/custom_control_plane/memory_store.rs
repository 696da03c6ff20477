//! The example's [`StateStore`]: databases, roles, transitions, metadata and ownerships in
//! memory, compare-and-set like SPG's SQLite and PostgreSQL stores.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use spg_core::{DatabaseName, RoleName};
use spg_lifecycle_lib::store::{
    DatabaseRecord, Ownership, OwnershipClaim, RoleRecord, StateStore, Transition,
};
use spg_lifecycle_lib::LifecycleError;

/// Databases, roles, transitions, metadata and ownerships in memory (gone with the process).
#[derive(Default)]
pub struct MemoryStateStore {
    state: Mutex<Memory>,
    /// Accept a role of a database that does not exist (a bug the conformance suite catches;
    /// for this example's test only).
    orphan_roles: bool,
}

#[derive(Default)]
struct Memory {
    databases: BTreeMap<DatabaseName, DatabaseRecord>,
    roles: BTreeMap<(DatabaseName, RoleName), RoleRecord>,
    transitions: Vec<Transition>,
    meta: BTreeMap<String, String>,
    /// Owner, its URL, token and lease end (ms), per database.
    owners: BTreeMap<DatabaseName, (Option<String>, Option<String>, u64, u64)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MemoryStateStore {
    /// A store with a bug: it accepts a role of a database that does not exist (the
    /// conformance suite catches it; for this example's test).
    #[cfg(test)]
    pub fn accepting_orphan_roles() -> Self {
        MemoryStateStore {
            orphan_roles: true,
            ..MemoryStateStore::default()
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Memory {
    fn ownership(&self, db: &DatabaseName) -> Ownership {
        let (owner, url, token, until) = self.owners.get(db).cloned().unwrap_or_default();
        Ownership {
            database: db.clone(),
            owner,
            owner_url: url,
            token,
            remaining_ms: until.saturating_sub(now_ms()),
        }
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn insert_database(
        &self,
        rec: &DatabaseRecord,
        t: &Transition,
    ) -> Result<(), LifecycleError> {
        self.with(|m| {
            if m.databases.contains_key(&rec.name) {
                return Err(LifecycleError::AlreadyExists {
                    kind: "database",
                    name: rec.name.to_string(),
                });
            }
            m.databases.insert(rec.name.clone(), rec.clone());
            m.transitions.push(t.clone());
            Ok(())
        })
    }

    async fn database(
        &self,
        name: &DatabaseName,
    ) -> Result<Option<DatabaseRecord>, LifecycleError> {
        Ok(self.with(|m| m.databases.get(name).cloned()))
    }

    async fn databases(&self) -> Result<Vec<DatabaseRecord>, LifecycleError> {
        Ok(self.with(|m| m.databases.values().cloned().collect()))
    }

    async fn update_database(
        &self,
        rec: &DatabaseRecord,
        expected: u64,
        t: Option<&Transition>,
    ) -> Result<bool, LifecycleError> {
        self.with(|m| {
            let token = m.owners.get(&rec.name).map_or(0, |o| o.2);
            let Some(cur) = m.databases.get_mut(&rec.name) else {
                return Ok(false);
            };
            if cur.version != expected
                || cur.generation > rec.generation
                || rec.owner_token != token
            {
                return Ok(false);
            }
            *cur = DatabaseRecord {
                owner_token: token,
                ..rec.clone()
            };
            m.transitions.extend(t.cloned());
            Ok(true)
        })
    }

    async fn delete_database(
        &self,
        name: &DatabaseName,
        expected: u64,
        t: &Transition,
    ) -> Result<bool, LifecycleError> {
        self.with(|m| {
            if m.databases.get(name).is_none_or(|d| d.version != expected) {
                return Ok(false);
            }
            m.databases.remove(name);
            m.owners.remove(name);
            m.roles.retain(|(db, _), _| db != name);
            m.transitions.push(t.clone());
            Ok(true)
        })
    }

    async fn insert_role(&self, rec: &RoleRecord) -> Result<(), LifecycleError> {
        self.with(|m| {
            if !self.orphan_roles && !m.databases.contains_key(&rec.database) {
                return Err(LifecycleError::DatabaseNotFound(rec.database.to_string()));
            }
            let key = (rec.database.clone(), rec.name.clone());
            if m.roles.contains_key(&key) {
                return Err(LifecycleError::AlreadyExists {
                    kind: "role",
                    name: rec.name.to_string(),
                });
            }
            m.roles.insert(key, rec.clone());
            Ok(())
        })
    }

    async fn role(
        &self,
        db: &DatabaseName,
        name: &RoleName,
    ) -> Result<Option<RoleRecord>, LifecycleError> {
        Ok(self.with(|m| m.roles.get(&(db.clone(), name.clone())).cloned()))
    }

    async fn roles(&self, db: &DatabaseName) -> Result<Vec<RoleRecord>, LifecycleError> {
        Ok(self.with(|m| {
            m.roles
                .values()
                .filter(|r| &r.database == db)
                .cloned()
                .collect()
        }))
    }

    async fn transitions(
        &self,
        db: Option<&DatabaseName>,
        limit: usize,
    ) -> Result<Vec<Transition>, LifecycleError> {
        Ok(self.with(|m| {
            let mine = |t: &&Transition| db.is_none_or(|d| &t.database == d);
            m.transitions
                .iter()
                .rev()
                .filter(mine)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn transitions_between(
        &self,
        db: &DatabaseName,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Transition>, LifecycleError> {
        Ok(self.with(|m| {
            let all: Vec<&Transition> =
                m.transitions.iter().filter(|t| &t.database == db).collect();
            let before = all
                .iter()
                .rev()
                .find(|t| t.at_ms < from_ms)
                .map(|t| (*t).clone());
            let within = all.iter().filter(|t| (from_ms..=to_ms).contains(&t.at_ms));
            before
                .into_iter()
                .chain(within.map(|t| (*t).clone()))
                .collect()
        }))
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, LifecycleError> {
        Ok(self.with(|m| m.meta.get(key).cloned()))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), LifecycleError> {
        self.with(|m| m.meta.insert(key.into(), value.into()));
        Ok(())
    }

    async fn claim_ownership(
        &self,
        db: &DatabaseName,
        claim: &OwnershipClaim<'_>,
    ) -> Result<Ownership, LifecycleError> {
        self.with(|m| {
            if !m.databases.contains_key(db) {
                return Err(LifecycleError::DatabaseNotFound(db.to_string()));
            }
            let cur = m.ownership(db);
            let until = now_ms().saturating_add(claim.ttl_ms);
            let entry = m.owners.entry(db.clone()).or_default();
            if cur.held_by(claim.owner) && claim.renew == Some(cur.token) {
                (entry.1, entry.3) = (Some(claim.owner_url.into()), until);
            } else if !cur.is_held() {
                *entry = (
                    Some(claim.owner.into()),
                    Some(claim.owner_url.into()),
                    cur.token + 1,
                    until,
                );
                if let Some(d) = m.databases.get_mut(db) {
                    d.version += 1;
                    d.owner_token = cur.token + 1;
                }
            }
            Ok(m.ownership(db))
        })
    }

    async fn release_ownership(
        &self,
        db: &DatabaseName,
        owner: &str,
        token: u64,
    ) -> Result<bool, LifecycleError> {
        Ok(self.with(|m| match m.owners.get_mut(db) {
            Some(o) if o.0.as_deref() == Some(owner) && o.2 == token && o.3 > now_ms() => {
                o.3 = 0;
                true
            }
            _ => false,
        }))
    }

    async fn ownerships(&self) -> Result<Vec<Ownership>, LifecycleError> {
        Ok(self.with(|m| m.databases.keys().map(|d| m.ownership(d)).collect()))
    }
}

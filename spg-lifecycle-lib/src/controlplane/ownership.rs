//! Several control planes over one state store: each database is owned by one of them at a
//! time, through an expiring lease with a fencing token in the store
//! ([`StateStore::claim_ownership`](crate::store::StateStore::claim_ownership)).
//!
//! - A control plane takes a database when it is asked to act on it (a wake, a stop, a lease,
//!   a handoff) and nobody holds it, and sweeps for databases whose owner stopped renewing
//!   while a compute should run, so that a crashed owner's databases are looked after.
//! - It renews what it owns every `renew_interval`. It counts its lease from the moment it
//!   *sent* the claim, minus a margin, so its own view always ends before the store's: a
//!   control plane that could not renew (paused, partitioned, store down) stops acting before
//!   anyone else may take over.
//! - Every write of a database's record carries the token of the term it was made under; the
//!   store refuses stale ones. And the safekeepers' generation fence still guarantees one writer
//!   should two control planes ever start computes of the same database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngExt;
use spg_core::DatabaseName;

use crate::LifecycleError;

/// How a control plane shares its state store with others.
#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    /// This control plane's name (e.g. `cp-1`); its id in the store is the name plus a suffix
    /// random per start, so a restarted process never mistakes its predecessor's leases for
    /// its own.
    pub name: String,
    /// Where this control plane's API answers, for the others to forward requests to.
    pub url: String,
    /// Lease length (default 3 s): a crashed owner's databases wait this long at most.
    pub ttl: Duration,
    /// How often leases are renewed and ownerless running databases looked for (default 1 s).
    pub renew_interval: Duration,
}

impl OwnershipConfig {
    /// Defaults for a control plane named `name` answering at `url`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        OwnershipConfig {
            name: name.into(),
            url: url.into(),
            ttl: Duration::from_secs(3),
            renew_interval: Duration::from_secs(1),
        }
    }

    /// Check the settings: the renewal must come around well within the lease.
    pub fn validate(&self) -> Result<(), LifecycleError> {
        if self.name.is_empty() || self.url.is_empty() {
            return Err(LifecycleError::invalid(
                "ownership",
                "a control plane sharing its store needs a name and a URL",
            ));
        }
        if self.ttl < Duration::from_millis(500) {
            return Err(LifecycleError::invalid(
                "ownership",
                "the ownership lease must last at least 500 ms",
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval * 2 > self.ttl - self.margin() {
            return Err(LifecycleError::invalid(
                "ownership",
                format!(
                    "renewing every {:?} leaves too little of a {:?} lease: renew at least \
                     twice within the lease less its safety margin ({:?})",
                    self.renew_interval,
                    self.ttl,
                    self.margin()
                ),
            ));
        }
        Ok(())
    }

    /// How much sooner than the store this control plane considers its lease over (clock
    /// rate differences, scheduling delays between the check and the act).
    pub fn margin(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(250))
    }
}

/// One term of ownership as this control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term {
    pub(crate) token: u64,
    /// Acting is allowed until then.
    pub(crate) valid_until: Instant,
}

/// The terms this control plane holds.
pub(crate) struct Ownerships {
    pub(crate) cfg: OwnershipConfig,
    /// Id in the store.
    pub(crate) id: String,
    terms: Mutex<HashMap<DatabaseName, Term>>,
    /// One claim at a time in this process: concurrent requests for a database that nobody
    /// holds end up with one term and one actor.
    pub(crate) claiming: tokio::sync::Mutex<()>,
}

impl Ownerships {
    pub(crate) fn new(cfg: OwnershipConfig) -> Self {
        let id = format!("{}-{:08x}", cfg.name, rand::rng().random::<u32>());
        Ownerships {
            cfg,
            id,
            terms: Mutex::new(HashMap::new()),
            claiming: tokio::sync::Mutex::new(()),
        }
    }

    fn terms(&self) -> std::sync::MutexGuard<'_, HashMap<DatabaseName, Term>> {
        self.terms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term held on `db`, valid or not.
    pub(crate) fn term(&self, db: &DatabaseName) -> Option<Term> {
        self.terms().get(db).copied()
    }

    /// Whether this control plane may act on `db` now.
    pub(crate) fn is_valid(&self, db: &DatabaseName) -> bool {
        self.term(db)
            .is_some_and(|t| Instant::now() < t.valid_until)
    }

    /// Record a term won or renewed by a claim sent at `sent`.
    pub(crate) fn hold(&self, db: &DatabaseName, token: u64, sent: Instant) {
        let valid_until = sent + self.cfg.ttl.saturating_sub(self.cfg.margin());
        self.terms().insert(db.clone(), Term { token, valid_until });
    }

    pub(crate) fn forget(&self, db: &DatabaseName) -> Option<Term> {
        self.terms().remove(db)
    }

    /// Databases held (validly or not).
    pub(crate) fn held(&self) -> Vec<(DatabaseName, Term)> {
        self.terms().iter().map(|(d, t)| (d.clone(), *t)).collect()
    }

    /// `Ok` if a write or an act under `token` on `db` is allowed now.
    pub(crate) fn check(&self, db: &DatabaseName, token: u64) -> Result<(), LifecycleError> {
        match self.term(db) {
            Some(t) if t.token == token && Instant::now() < t.valid_until => Ok(()),
            _ => Err(LifecycleError::NotOwner {
                database: db.to_string(),
                owner: None,
                url: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = OwnershipConfig::new("cp-1", "https://127.0.0.1:1");
        ok.validate().unwrap();
        let mut slow = ok.clone();
        slow.renew_interval = Duration::from_secs(2);
        assert!(slow.validate().is_err());
        let mut short = ok.clone();
        short.ttl = Duration::from_millis(100);
        assert!(short.validate().is_err());
        let mut unnamed = ok;
        unnamed.name.clear();
        assert!(unnamed.validate().is_err());
    }

    #[test]
    fn a_term_is_valid_until_its_margin() {
        let o = Ownerships::new(OwnershipConfig::new("cp-1", "https://127.0.0.1:1"));
        assert!(o.id.starts_with("cp-1-"));
        let db = DatabaseName::new("shop").unwrap();
        assert!(o.check(&db, 0).is_err(), "nothing held");
        o.hold(&db, 3, Instant::now());
        assert!(o.is_valid(&db));
        o.check(&db, 3).unwrap();
        assert!(o.check(&db, 2).is_err(), "another term's token");
        // Claimed long ago: over, whatever the store says.
        o.hold(&db, 3, Instant::now() - Duration::from_secs(10));
        assert!(!o.is_valid(&db));
        assert!(o.check(&db, 3).is_err());
        assert_eq!(o.forget(&db).map(|t| t.token), Some(3));
        assert!(o.held().is_empty());
    }
}

//! Session state from outcomes, not intentions.
//!
//! - **Settings** (`SET`, `RESET`, `RESET ALL`, `DISCARD ALL`) and statement names
//!   (`DEALLOCATE`) take hold when their statement succeeded (its `CommandComplete` arrived) and
//!   its transaction committed: the effects of the open transaction are kept in a log with its
//!   savepoints; `ROLLBACK` drops the log, `ROLLBACK TO` drops what followed the savepoint,
//!   `COMMIT` (reported as `COMMIT`) and the end of an implicit transaction without an error
//!   apply it.
//! - **Pinned state** (temporary objects, `LISTEN`, SQL-level prepared statements, session
//!   advisory locks, `WITH HOLD` cursors, `SET ROLE`) is what the backend says is there. After a
//!   transaction with a statement that may have created or removed such state, and before the
//!   backend can go to anyone else, the gateway asks the backend ([`sql::CHECK_QUERY`]); the
//!   client is pinned exactly while something is found. A backend whose client leaves while
//!   pinned, or before the answer came, is reset (`DISCARD ALL`) before reuse, or closed when a
//!   reset cannot undo what is there (`LOAD`).

use super::replies::sync_settings;
use super::*;
use crate::proto::sql::{BackendState, Control, Statement};

/// Pinned state by kind, with names where known.
pub(super) type Pins = BTreeMap<PinKind, BTreeSet<String>>;

/// Settings tracked for one client at most; beyond, a new one pins it.
const MAX_TRACKED_SETTINGS: usize = 1000;

/// One entry of the open transaction's log.
#[derive(Debug)]
enum Entry {
    Effect(Effect),
    Savepoint(Vec<u8>),
}

/// What the gateway knows of a client's session beyond its settings.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Effects of the open transaction, with its savepoints.
    log: Vec<Entry>,
    /// An error answered one of the client's messages since the last idle `ReadyForQuery`.
    pub(super) txn_error: bool,
    /// A statement since the last check may have changed state only the backend can tell.
    pub(super) check_wanted: bool,
    /// What the check in flight found (its row).
    found: Option<BackendState>,
    /// Pins the last check found.
    checked: Pins,
    /// Pins the gateway holds on its own: settings it cannot carry, a loaded library.
    sticky: Pins,
}

impl Tracker {
    /// Whether the backend must be closed, not reset, when the client leaves.
    pub(super) fn needs_close(&self) -> bool {
        self.sticky.contains_key(&PinKind::Library)
    }
}

/// Where a statement's reply stands: the statements of a forwarded `Query` (or the one of an
/// `Execute`), and how many completed.
#[derive(Debug)]
pub(super) struct Track {
    pub(super) analysis: Arc<sql::Analysis>,
    pub(super) next: usize,
}

impl<'a> Session<'a> {
    /// A statement the client sent may change state only the backend can tell.
    pub(super) fn want_check(&mut self, analysis: &sql::Analysis) {
        if analysis.wants_check() {
            self.state.check_wanted = true;
        }
    }

    /// The statement `track` points at completed with `tag`.
    pub(super) fn statement_done(&mut self, stmt: &Statement, tag: &str) {
        if let Some(c) = &stmt.control {
            let log = &mut self.state.log;
            match c {
                Control::Begin => {}
                Control::Commit => {
                    // A failed transaction's COMMIT reports ROLLBACK.
                    let log = std::mem::take(log);
                    if tag == "COMMIT" {
                        self.apply(log);
                    }
                }
                Control::Rollback | Control::Prepare => log.clear(),
                Control::Savepoint(name) => log.push(Entry::Savepoint(name.clone())),
                Control::RollbackTo(name) => match last_savepoint(log, name) {
                    Some(i) => log.truncate(i + 1),
                    None => self.lost_track("ROLLBACK TO an unknown savepoint"),
                },
                Control::Release(name) => match last_savepoint(log, name) {
                    Some(i) => {
                        let tail = log.split_off(i);
                        log.extend(tail.into_iter().filter(|e| matches!(e, Entry::Effect(_))));
                    }
                    None => self.lost_track("RELEASE of an unknown savepoint"),
                },
            }
        }
        self.state
            .log
            .extend(stmt.effects.iter().cloned().map(Entry::Effect));
    }

    /// More statements completed than the gateway counted in the query: it can no longer tell
    /// which did what.
    pub(super) fn lost_count(&mut self) {
        self.lost_track("more statements completed than were counted");
    }

    /// The gateway could not follow the client's transactions: what the client set since is
    /// unknown, so it stays on its backend (which is reset when it leaves).
    fn lost_track(&mut self, why: &str) {
        warn!(
            why,
            "session settings can no longer be followed; the client is pinned"
        );
        self.state
            .sticky
            .entry(PinKind::UntrackedSet)
            .or_default()
            .insert(why.to_string());
        self.state.check_wanted = true;
        self.refresh_pins();
    }

    /// The backend went idle after the client's transaction (`rfq` is its `ReadyForQuery`): an
    /// implicit transaction's effects apply unless it failed; then, if wanted, the state check
    /// goes out before the backend can be given back. Returns whether `rfq` was queued behind
    /// the check (the client then learns the transaction ended once its pins are known, so
    /// what it does next finds them settled).
    pub(super) fn transaction_ended(&mut self, rfq: &[u8]) -> bool {
        let log = std::mem::take(&mut self.state.log);
        let failed = std::mem::take(&mut self.state.txn_error);
        if !log.is_empty() && !failed {
            self.apply(log);
        }
        self.portals.clear();
        let wanted = self.pool.mode == PoolMode::Transaction
            && (self.state.check_wanted || self.pool.config().check_state_always);
        let Some(att) = &mut self.att else {
            return false;
        };
        if !wanted {
            return false;
        }
        // Messages the client pipelined after this transaction are ahead of the check: its
        // answer then goes now, and the check follows them.
        let hold = att.queue.is_empty();
        self.send_check();
        if let (true, Some(att)) = (hold, &mut self.att) {
            att.queue
                .push_back(Expect::Fake(Bytes::copy_from_slice(rfq)));
        }
        hold
    }

    fn send_check(&mut self) {
        let Some(att) = &mut self.att else {
            return;
        };
        self.state.check_wanted = false;
        self.state.found = None;
        att.out
            .extend_from_slice(&m::build_query(sql::CHECK_QUERY.as_bytes()));
        att.queue.push_back(Expect::Reply {
            kind: Kind::Query,
            internal: true,
            created: None,
            track: None,
            check: true,
        });
        self.pool.stats.state_checks.fetch_add(1, Ordering::Relaxed);
    }

    /// A row of the state check.
    pub(super) fn check_row(&mut self, msg: &[u8]) {
        self.state.found = m::data_row(msg)
            .ok()
            .and_then(|cols| sql::backend_state(&cols));
    }

    /// The state check is over: the client is pinned by what it found (or, when it failed, by
    /// not knowing).
    pub(super) fn check_done(&mut self) {
        let found = self.state.found.take();
        self.state.checked = match found {
            Some(st) => {
                let mut pins = st.pins;
                let untracked: BTreeSet<String> = st
                    .settings
                    .into_iter()
                    // pg_settings spells some names in mixed case (TimeZone, DateStyle).
                    .filter(|name| !self.params.map.contains_key(&name.to_ascii_lowercase()))
                    .collect();
                if !untracked.is_empty() {
                    pins.insert(PinKind::UntrackedSet, untracked);
                }
                pins
            }
            None => {
                warn!("the session state check failed; the client stays pinned");
                [(PinKind::Unverified, BTreeSet::new())].into()
            }
        };
        self.refresh_pins();
    }

    /// Apply committed effects.
    fn apply(&mut self, log: Vec<Entry>) {
        let mut p = (*self.params).clone();
        let mut server_reset = false;
        let mut reset = Vec::new();
        let mut changed = false;
        for e in log {
            let Entry::Effect(e) = e else { continue };
            match e {
                // Reported parameters follow ParameterStatus.
                Effect::Set { name, .. } | Effect::Reset(name)
                    if self.params.is_reported(&name) => {}
                Effect::Set { name, value } => {
                    if !p.map.contains_key(&name) && p.map.len() >= MAX_TRACKED_SETTINGS {
                        self.pin_sticky(PinKind::UntrackedSet, &name);
                        continue;
                    }
                    p.map.insert(
                        name.clone(),
                        Param {
                            display: name,
                            value,
                            sql: true,
                            reported: false,
                        },
                    );
                    changed = true;
                }
                Effect::Reset(name) => {
                    match self.startup.map.get(&name) {
                        Some(v) => p.map.insert(name.clone(), v.clone()),
                        None => p.map.remove(&name),
                    };
                    reset.push(name);
                    changed = true;
                }
                Effect::ResetAll | Effect::DiscardAll => {
                    // The backend went back to its defaults, the client to its startup values.
                    p = (*self.startup).clone();
                    server_reset = true;
                    changed = true;
                    self.state.sticky.remove(&PinKind::UntrackedSet);
                    if matches!(e, Effect::DiscardAll) {
                        self.statements.clear();
                        self.statement_bytes = 0;
                        self.unnamed = None;
                    }
                }
                Effect::DeallocateAll => {
                    self.statements.clear();
                    self.statement_bytes = 0;
                }
                Effect::Deallocate(_) => {}
                Effect::Untracked(name) => self.pin_sticky(PinKind::UntrackedSet, &name),
                Effect::Library => self.pin_sticky(PinKind::Library, "LOAD"),
            }
        }
        self.refresh_pins();
        if !changed {
            return;
        }
        // What the backend has now: its own defaults after RESET ALL / DISCARD ALL, and no
        // value for a RESET parameter (the client's RESET means its startup value, the
        // backend's its server default).
        let mut have = if server_reset {
            self.pool
                .baseline()
                .map(|b| (*b).clone())
                .unwrap_or_default()
        } else {
            p.clone()
        };
        for name in &reset {
            have.map.remove(name);
        }
        self.params = self.pool.intern(p);
        self.note_async_commit();
        if let Some(att) = &mut self.att {
            // Bring the backend in line at once (the client may keep it: pinned, session mode).
            sync_settings(att, &self.params, &have);
        }
    }

    /// Record whether the session's `synchronous_commit` gives up the quorum (`off`, `local`,
    /// or a boolean false): PostgreSQL then acknowledges commits before a safekeeper quorum
    /// has them (counted in `spg_gateway_pool_async_commit_clients`). Settings made per
    /// transaction (`SET LOCAL`) or per role (`ALTER ROLE ... SET`) are not seen here.
    pub(super) fn note_async_commit(&self) {
        let off = self.params.map.get("synchronous_commit").is_some_and(|p| {
            let v: Vec<u8> = p
                .value
                .iter()
                .filter(|b| !matches!(b, b'\'' | b'"' | b' '))
                .map(u8::to_ascii_lowercase)
                .collect();
            matches!(v.as_slice(), b"off" | b"local" | b"false" | b"no" | b"0")
        });
        self.info.set_async_commit(off);
    }

    fn pin_sticky(&mut self, kind: PinKind, name: &str) {
        self.state
            .sticky
            .entry(kind)
            .or_default()
            .insert(name.to_string());
    }

    /// Recompute the client's pins from what the check found and what the gateway holds.
    pub(super) fn refresh_pins(&mut self) {
        let mut pins = self.state.checked.clone();
        for (k, names) in &self.state.sticky {
            pins.entry(*k).or_default().extend(names.iter().cloned());
        }
        if pins != self.pins {
            self.pins = pins;
            let after: BTreeSet<PinKind> = self.pins.keys().copied().collect();
            self.set_pins_metrics(&after);
        }
    }

    pub(super) fn set_pins_metrics(&mut self, after: &BTreeSet<PinKind>) {
        let before = std::mem::replace(&mut self.counted_pins, after.clone());
        for k in before.difference(after) {
            self.pool.pins.add(*k, -1);
        }
        for k in after.difference(&before) {
            self.pool.pins.add(*k, 1);
        }
        let reason = (!after.is_empty()).then(|| {
            after
                .iter()
                .map(|k| {
                    let names: Vec<_> = self
                        .pins
                        .get(k)
                        .map(|s| s.iter().filter(|n| !n.is_empty()).cloned().collect())
                        .unwrap_or_default();
                    if names.is_empty() {
                        k.as_str().to_string()
                    } else {
                        format!("{}({})", k.as_str(), names.join(","))
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        if reason.is_some() && before.is_empty() {
            debug!(reason = reason.as_deref(), "client pinned to its backend");
        }
        self.info.set_pinned(reason);
    }
}

/// Index of the newest savepoint `name` in the log.
fn last_savepoint(log: &[Entry], name: &[u8]) -> Option<usize> {
    log.iter()
        .rposition(|e| matches!(e, Entry::Savepoint(n) if n == name))
}

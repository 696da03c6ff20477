//! Session state: the effects of the client's statements on its session (settings carried
//! to the next backend, state that pins it to this one).

use super::replies::sync_settings;
use super::*;

impl<'a> Session<'a> {
    // ---- session effects -----------------------------------------------------------------

    /// Effects that take hold when the statement is sent: pins (conservatively), statement
    /// names; settings wait for the transaction's outcome.
    pub(super) fn apply_effects_at_send(&mut self, effects: &[Effect]) {
        if effects.is_empty() {
            return;
        }
        for e in effects {
            match e {
                Effect::Pin(kind, name) => {
                    self.pins
                        .entry(*kind)
                        .or_default()
                        .insert(name.clone().unwrap_or_default());
                }
                Effect::Unpin(kind, None) => {
                    self.pins.remove(kind);
                }
                Effect::Unpin(kind, Some(name)) => {
                    if let Some(set) = self.pins.get_mut(kind) {
                        set.remove(name);
                        if set.is_empty() {
                            self.pins.remove(kind);
                        }
                    }
                }
                Effect::DiscardAll => {
                    self.pins.clear();
                    self.statements.clear();
                    self.unnamed = None;
                    self.pending.push(Effect::DiscardAll);
                }
                Effect::DeallocateAll => {
                    self.statements.clear();
                    self.pins.remove(&PinKind::SqlPrepare);
                }
                Effect::Deallocate(name) => {
                    if let Some(set) = self.pins.get_mut(&PinKind::SqlPrepare) {
                        set.remove(name);
                        if set.is_empty() {
                            self.pins.remove(&PinKind::SqlPrepare);
                        }
                    }
                }
                Effect::ResetAll => {
                    self.pins.remove(&PinKind::UntrackedSet);
                    self.pending.push(Effect::ResetAll);
                }
                Effect::Set { name, .. } | Effect::Reset(name) => {
                    // Reported parameters follow ParameterStatus; the rest wait for commit.
                    if !self.params.is_reported(name) {
                        self.pending.push(e.clone());
                    }
                }
            }
        }
        let after: BTreeSet<PinKind> = self.pins.keys().copied().collect();
        self.set_pins_metrics(&after);
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

    /// The transaction ended (`ReadyForQuery` idle): settings it made take hold unless it
    /// failed.
    pub(super) fn commit_pending(&mut self, failed: bool) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if failed {
            return;
        }
        let mut p = (*self.params).clone();
        let mut server_reset = false;
        let mut reset = Vec::new();
        for e in pending {
            match e {
                Effect::Set { name, value } => {
                    p.map.insert(
                        name.clone(),
                        Param {
                            display: name,
                            value,
                            sql: true,
                            reported: false,
                        },
                    );
                }
                Effect::Reset(name) => {
                    match self.startup.map.get(&name) {
                        Some(v) => p.map.insert(name.clone(), v.clone()),
                        None => p.map.remove(&name),
                    };
                    reset.push(name);
                }
                Effect::ResetAll | Effect::DiscardAll => {
                    // The backend went back to its defaults, the client to its startup values.
                    p = (*self.startup).clone();
                    server_reset = true;
                }
                _ => {}
            }
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
        if let Some(att) = &mut self.att {
            // Bring the backend in line at once (the client may keep it: pinned, session mode).
            sync_settings(att, &self.params, &have);
        }
    }
}

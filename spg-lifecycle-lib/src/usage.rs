//! Usage metering: what a database used over a span of time, read from its transitions (the
//! state store's ledger of every state change, each with the writer profile after it).
//!
//! Compute time is the time a compute was `ready` (serving), split by the profile it ran
//! with; a handoff that changes the profile splits the span where the new writer took over.
//! Wakes are starts that became ready (`booting` → `ready`); handoffs are not wakes. Bytes
//! written back are what each stop's write-back uploaded to object storage (a handoff writes
//! no image: the new writer goes on from the WAL quorum).

use std::collections::BTreeMap;

use spg_core::ComputeState;

use crate::store::Transition;

/// The profile name recorded for spans whose transitions predate profile records.
pub const UNRECORDED_PROFILE: &str = "unrecorded";

/// What one database used from `from_ms` to `to_ms`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Usage {
    /// Start of the span, ms since the epoch.
    pub from_ms: u64,
    /// End of the span, ms since the epoch.
    pub to_ms: u64,
    /// Milliseconds a compute was ready, by writer profile.
    pub ready_ms_by_profile: BTreeMap<String, u64>,
    /// Starts that became ready within the span.
    pub wakes: u64,
    /// Handoffs that completed within the span (a new writer generation promoted in place).
    pub handoffs: u64,
    /// Bytes the write-backs that ended within the span uploaded to object storage.
    pub bytes_written: u64,
}

impl Usage {
    /// Milliseconds a compute was ready, whatever its profile.
    pub fn ready_ms(&self) -> u64 {
        self.ready_ms_by_profile.values().sum()
    }
}

/// Meter `transitions` (one database's, oldest first, starting with the newest one before
/// `from_ms` if there is one: [`crate::store::StateStore::transitions_between`]) over
/// `from_ms..to_ms`.
pub fn meter(transitions: &[Transition], from_ms: u64, to_ms: u64) -> Usage {
    let to_ms = to_ms.max(from_ms);
    let mut usage = Usage {
        from_ms,
        to_ms,
        ..Usage::default()
    };
    let mut state = ComputeState::Stopped;
    let mut profile: Option<String> = None;
    let mut generation = None;
    let mut cursor = from_ms;
    for t in transitions {
        let at = t.at_ms.clamp(from_ms, to_ms);
        if state == ComputeState::Ready && at > cursor {
            let p = profile.clone().unwrap_or_else(|| UNRECORDED_PROFILE.into());
            *usage.ready_ms_by_profile.entry(p).or_default() += at - cursor;
        }
        cursor = cursor.max(at);
        let within = (from_ms..=to_ms).contains(&t.at_ms);
        if within {
            usage.bytes_written += t.bytes_written.unwrap_or(0);
        }
        if within && t.to == ComputeState::Ready {
            if t.from == Some(ComputeState::Booting) {
                usage.wakes += 1;
            } else if state == ComputeState::Ready && generation.is_some_and(|g| g < t.generation) {
                usage.handoffs += 1;
            }
        }
        state = t.to;
        profile = t.profile.clone();
        generation = Some(t.generation);
    }
    if state == ComputeState::Ready && to_ms > cursor {
        let p = profile.unwrap_or_else(|| UNRECORDED_PROFILE.into());
        *usage.ready_ms_by_profile.entry(p).or_default() += to_ms - cursor;
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use spg_core::{DatabaseName, Generation};

    fn t(from: Option<ComputeState>, to: ComputeState, g: u64, at: u64, p: &str) -> Transition {
        Transition {
            database: DatabaseName::new("db").unwrap(),
            from,
            to,
            generation: Generation(g),
            at_ms: at,
            reason: String::new(),
            profile: Some(p.into()),
            bytes_written: None,
        }
    }

    use ComputeState::{Booting, Ready, Stopped, Stopping};

    #[test]
    fn ready_spans_by_profile_wakes_and_handoffs() {
        let ts = [
            t(None, Stopped, 0, 100, "L1"),
            t(Some(Stopped), Booting, 1, 1_000, "L1"),
            t(Some(Booting), Ready, 1, 1_200, "L1"),
            // A handoff's phases keep the state; the switch records the new generation and
            // profile.
            t(Some(Ready), Ready, 1, 2_000, "L1"),
            t(Some(Ready), Ready, 2, 3_000, "L2"),
            t(Some(Ready), Stopping, 2, 5_000, "L2"),
            t(Some(Stopping), Stopped, 2, 5_300, "L2"),
            t(Some(Stopped), Booting, 3, 9_000, "L2"),
            t(Some(Booting), Ready, 3, 9_100, "L2"),
        ];
        let mut ts = ts.to_vec();
        ts[4].bytes_written = Some(700);
        ts[6].bytes_written = Some(1_000);
        let u = meter(&ts, 0, 10_000);
        assert_eq!(u.bytes_written, 1_700);
        assert_eq!(meter(&ts, 5_000, 10_000).bytes_written, 1_000);
        assert_eq!(u.ready_ms_by_profile["L1"], 3_000 - 1_200);
        assert_eq!(
            u.ready_ms_by_profile["L2"],
            (5_000 - 3_000) + (10_000 - 9_100)
        );
        assert_eq!(u.ready_ms(), 1_800 + 2_900);
        assert_eq!((u.wakes, u.handoffs), (2, 1));

        // A span that starts while ready (the transition before it says so) and ends early.
        let u = meter(&ts[4..], 4_000, 4_500);
        assert_eq!(u.ready_ms_by_profile["L2"], 500);
        assert_eq!(
            (u.wakes, u.handoffs),
            (0, 0),
            "before the span is not within it"
        );
        // Nothing ran.
        let u = meter(&ts[..2], 0, 900);
        assert_eq!(u.ready_ms(), 0);
        // An empty or reversed span.
        assert_eq!(meter(&ts, 5_000, 4_000).ready_ms(), 0);
        // No profile recorded (older records).
        let mut old = ts[1..4].to_vec();
        for o in &mut old {
            o.profile = None;
        }
        assert_eq!(
            meter(&old, 0, 2_500).ready_ms_by_profile[UNRECORDED_PROFILE],
            1_300
        );
    }
}

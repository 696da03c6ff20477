//! Lifecycle events: what happened to a database (created, branched, woken, stopped, crashed,
//! handoffs), published by the control plane on an [`EventBus`] as its state store records it.
//! Webhooks ([`crate::webhooks`]) and the API's event stream (`GET /v1/events`) subscribe.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use spg_core::{ComputeState, DatabaseName, Generation, ScaleState};
use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A database was created.
    Created,
    /// A compute started and became ready.
    Woken,
    /// A compute stopped (idle, asked, a failed start, shutdown).
    Stopped,
    /// A compute ended on its own (crash, kill, eviction).
    Crashed,
    /// A handoff to another writer generation began.
    HandoffStarted,
    /// A handoff ended: completed or aborted (see `detail`).
    HandoffEnded,
    /// A database was created as a branch of another (`detail` names the parent and the
    /// point).
    BranchCreated,
    /// A database was moved back to an earlier moment (`detail` names the point and the
    /// branch keeping the state before).
    Restored,
    /// A database was deleted (its storage is released).
    Deleted,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::Created,
        EventKind::Woken,
        EventKind::Stopped,
        EventKind::Crashed,
        EventKind::HandoffStarted,
        EventKind::HandoffEnded,
        EventKind::BranchCreated,
        EventKind::Restored,
        EventKind::Deleted,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Woken => "woken",
            EventKind::Stopped => "stopped",
            EventKind::Crashed => "crashed",
            EventKind::HandoffStarted => "handoff_started",
            EventKind::HandoffEnded => "handoff_ended",
            EventKind::BranchCreated => "branch_created",
            EventKind::Restored => "restored",
            EventKind::Deleted => "deleted",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The event a state change from `from` to `to` for `reason` is, if any.
    pub fn of_state_change(
        from: Option<ComputeState>,
        to: ComputeState,
        reason: &str,
    ) -> Option<Self> {
        match (from, to) {
            (None, _) => Some(EventKind::Created),
            (Some(ComputeState::Booting), ComputeState::Ready) => Some(EventKind::Woken),
            (Some(f), ComputeState::Stopped) if f != ComputeState::Stopped => {
                Some(match reason == CRASH_REASON {
                    true => EventKind::Crashed,
                    false => EventKind::Stopped,
                })
            }
            _ => None,
        }
    }

    /// The event a handoff's scale-state change from `from` to `to` is, if any.
    pub fn of_scale_change(from: ScaleState, to: ScaleState) -> Option<Self> {
        match (from.in_progress(), to) {
            (false, ScaleState::Preparing) => Some(EventKind::HandoffStarted),
            (true, ScaleState::Steady | ScaleState::Aborted) => Some(EventKind::HandoffEnded),
            _ => None,
        }
    }
}

/// The reason recorded when a compute ended on its own.
pub const CRASH_REASON: &str = "compute exited";

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Unique per control plane run (`<run>-<sequence>`): a receiver's idempotency key.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The database.
    pub database: DatabaseName,
    /// Its generation then.
    pub generation: Generation,
    /// When (RFC 3339).
    pub at: String,
    /// Why, as the transition records it (for a handoff's end: completed, or why it gave up).
    pub detail: String,
    /// The writer profile after it.
    pub profile: Option<String>,
}

/// Where events are published; cheap to share. Subscribers that fall more than its capacity
/// behind miss the oldest ones (and are told how many).
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    run: u32,
    seq: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl EventBus {
    /// A bus keeping up to `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        EventBus {
            tx: broadcast::channel(capacity.max(1)).0,
            run: rand::random(),
            seq: AtomicU64::new(0),
        }
    }

    /// Publish an event (nobody listening is fine).
    pub fn publish(
        &self,
        kind: EventKind,
        database: &DatabaseName,
        generation: Generation,
        at_ms: u64,
        detail: &str,
        profile: Option<String>,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.tx.send(Event {
            id: format!("{:08x}-{seq}", self.run),
            kind,
            database: database.clone(),
            generation,
            at: crate::api::model::rfc3339(at_ms),
            detail: detail.to_string(),
            profile,
        });
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ComputeState::*;

    #[test]
    fn state_and_scale_changes_map_to_events() {
        let k = |f, t, r| EventKind::of_state_change(f, t, r);
        assert_eq!(k(None, Stopped, "created"), Some(EventKind::Created));
        assert_eq!(k(Some(Booting), Ready, "wake"), Some(EventKind::Woken));
        assert_eq!(
            k(Some(Ready), Stopped, CRASH_REASON),
            Some(EventKind::Crashed)
        );
        assert_eq!(k(Some(Stopping), Stopped, "idle"), Some(EventKind::Stopped));
        assert_eq!(
            k(Some(Booting), Stopped, "start failed"),
            Some(EventKind::Stopped)
        );
        assert_eq!(k(Some(Ready), Stopping, "idle"), None);
        assert_eq!(k(Some(Ready), Ready, "scale"), None);
        let s = EventKind::of_scale_change;
        assert_eq!(
            s(ScaleState::Steady, ScaleState::Preparing),
            Some(EventKind::HandoffStarted)
        );
        assert_eq!(s(ScaleState::Preparing, ScaleState::Frozen), None);
        assert_eq!(
            s(ScaleState::Switching, ScaleState::Steady),
            Some(EventKind::HandoffEnded)
        );
        assert_eq!(
            s(ScaleState::Draining, ScaleState::Aborted),
            Some(EventKind::HandoffEnded)
        );
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_with_unique_ids() {
        let bus = EventBus::new(8);
        let mut rx = bus.subscribe();
        let db = DatabaseName::new("db").unwrap();
        bus.publish(EventKind::Created, &db, Generation(0), 0, "created", None);
        bus.publish(
            EventKind::Woken,
            &db,
            Generation(1),
            5,
            "wake",
            Some("L1".into()),
        );
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!((a.kind, b.kind), (EventKind::Created, EventKind::Woken));
        assert_ne!(a.id, b.id);
        assert_eq!(b.profile.as_deref(), Some("L1"));
    }
}

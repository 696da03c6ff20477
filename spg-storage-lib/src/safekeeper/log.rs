//! The shape of the WAL a safekeeper holds: one linear path through the timeline tree.

use serde::{Deserialize, Serialize};
use spg_core::{Lsn, TimelineId};

/// Where a timeline begins on a linear WAL path: from `begin` on (until the next span), the bytes
/// are those written on timeline `tli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The timeline.
    pub tli: TimelineId,
    /// The first LSN of the path that belongs to it.
    pub begin: Lsn,
}

/// A linear WAL path: the timelines it crosses, in order, with their switch points.
///
/// This is a PostgreSQL timeline history read as a path: `[(1, 0/0), (5, 0/1500790)]` means LSNs
/// below `0/1500790` are timeline 1 and the rest timeline 5. The spans' `begin`s strictly increase,
/// and so do their timelines (a timeline is always newer than the one it branched from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    spans: Vec<Span>,
}

impl History {
    /// A path that is on `tli` from `begin` on.
    pub fn starting(tli: TimelineId, begin: Lsn) -> History {
        History {
            spans: vec![Span { tli, begin }],
        }
    }

    /// Build a path from spans; `None` unless begins and timelines strictly increase.
    pub fn from_spans(spans: Vec<Span>) -> Option<History> {
        let ordered = spans
            .windows(2)
            .all(|w| w[0].begin < w[1].begin && w[0].tli < w[1].tli);
        ordered.then_some(History { spans })
    }

    /// The spans, oldest first.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The timeline of the newest span, if any.
    pub fn last_tli(&self) -> Option<TimelineId> {
        self.spans.last().map(|s| s.tli)
    }

    /// The timeline a byte at `lsn` belongs to on this path.
    pub fn tli_at(&self, lsn: Lsn) -> Option<TimelineId> {
        self.spans
            .iter()
            .rev()
            .find(|s| s.begin <= lsn)
            .map(|s| s.tli)
    }

    /// Where `tli` ends on this path (the next span's begin), or `None` when it is the newest
    /// span or not on the path.
    pub fn end_of(&self, tli: TimelineId) -> Option<Lsn> {
        let i = self.spans.iter().position(|s| s.tli == tli)?;
        self.spans.get(i + 1).map(|s| s.begin)
    }

    /// Whether `tli` is on this path.
    pub fn contains(&self, tli: TimelineId) -> bool {
        self.spans.iter().any(|s| s.tli == tli)
    }

    /// The first LSN at which the two paths put a byte on different timelines (`Lsn(u64::MAX)` if
    /// they never do). Two holders of the same WAL agree on every byte below this point, because
    /// each timeline has exactly one writer.
    pub fn divergence(&self, other: &History) -> Lsn {
        let mut points: Vec<Lsn> = self
            .spans
            .iter()
            .chain(other.spans.iter())
            .map(|s| s.begin)
            .collect();
        points.push(Lsn::INVALID);
        points.sort();
        points.dedup();
        points
            .into_iter()
            .find(|&p| self.tli_at(p) != other.tli_at(p))
            .unwrap_or(Lsn(u64::MAX))
    }

    /// Cut the path at `end`: spans beginning at or after `end` are dropped.
    pub fn truncate(&mut self, end: Lsn) {
        self.spans.retain(|s| s.begin < end);
    }

    /// This path cut at `at`, then continued on `tli`: the history of a timeline that branched
    /// from this one at `at`. `None` if `tli` is not newer than every timeline on the path.
    pub fn branch(&self, at: Lsn, tli: TimelineId) -> Option<History> {
        let mut h = self.clone();
        h.truncate(at);
        if h.last_tli().is_some_and(|t| t >= tli) {
            return None;
        }
        h.spans.push(Span { tli, begin: at });
        Some(h)
    }
}

/// A safekeeper's durable WAL: the bytes in `[start, flush)` on the path `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalLog {
    /// The first LSN held (older WAL lives in an image or in object storage).
    pub start: Lsn,
    /// The end of the contiguous WAL that is durable on disk.
    pub flush: Lsn,
    /// The timelines the held WAL belongs to.
    pub history: History,
}

impl WalLog {
    /// Whether the log holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.flush <= self.start
    }

    /// The order by which an election picks its recovery source: newest timeline first, then the
    /// longest log. Any log that wins this order contains every acknowledged commit the voters
    /// have seen (the argument is in the module documentation of `safekeeper`).
    ///
    /// An empty log ranks by its path too: a log reset by a restore holds no bytes, but its
    /// path is newer than every log it replaced.
    pub fn rank(&self) -> (TimelineId, Lsn) {
        (self.history.last_tli().unwrap_or_default(), self.flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(spans: &[(u32, u64)]) -> History {
        History::from_spans(
            spans
                .iter()
                .map(|&(t, b)| Span {
                    tli: TimelineId(t),
                    begin: Lsn(b),
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn divergence_and_lookup() {
        let a = h(&[(1, 0), (3, 100)]);
        let b = h(&[(1, 0), (4, 120)]);
        assert_eq!(a.divergence(&b), Lsn(100));
        assert_eq!(a.divergence(&a), Lsn(u64::MAX));
        assert_eq!(a.tli_at(Lsn(99)), Some(TimelineId(1)));
        assert_eq!(a.tli_at(Lsn(100)), Some(TimelineId(3)));
        assert_eq!(a.end_of(TimelineId(1)), Some(Lsn(100)));
        assert_eq!(a.end_of(TimelineId(3)), None);
        let c = a.branch(Lsn(150), TimelineId(7)).unwrap();
        assert_eq!(c.divergence(&a), Lsn(150));
        assert!(a.branch(Lsn(150), TimelineId(2)).is_none());
        assert!(History::from_spans(vec![
            Span {
                tli: TimelineId(2),
                begin: Lsn(0)
            },
            Span {
                tli: TimelineId(1),
                begin: Lsn(5)
            },
        ])
        .is_none());
        // An empty path diverges from a non-empty one at its first byte.
        assert_eq!(History::default().divergence(&a), Lsn(0));
    }
}

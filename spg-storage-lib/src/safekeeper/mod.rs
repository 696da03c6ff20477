//! Safekeepers: WAL durability by quorum, with generations as fences (DESIGN §2–3).
//!
//! A safekeeper is a physical-replication standby of a database's compute. The compute runs with
//! `synchronous_standby_names = 'ANY 2 (...)'`, so a commit is acknowledged to the client only once
//! two safekeepers report it flushed. Before a compute of generation `g` starts, `g` is *elected*:
//! a quorum of safekeepers durably promises `g` and reports the WAL it holds. The compute recovers
//! from the best of those logs and promotes onto a timeline of its own ([`timeline_of`]), so every
//! timeline has exactly one writer.
//!
//! # Why no acknowledged commit is lost
//! Rank logs by (timeline of their newest byte, flush LSN). Take a commit `c` acknowledged by a
//! quorum `Q` while generation `a` wrote timeline `t`. Any election of `g > a` is answered by a
//! quorum `Q'` that meets `Q` in some safekeeper `k`. `k` acknowledged `c` before promising `g`
//! (after the promise it acknowledges nothing of `a`), so its promised log holds `c` and ends on
//! timeline `t` or newer. The chosen source `s` ranks at least as high as `k`: if its newest
//! timeline is `t`, `s` and `k` both hold prefixes of `t`'s single writer and `s` is longer, so it
//! holds `c`; if it is newer, that timeline's writer was elected after `c` was acknowledged and (by
//! induction) recovered it, and a safekeeper only holds a prefix of its writer's path
//! ([`Safekeeper::follow`] cuts everything else). So the new timeline starts after `c`.
//!
//! # Why there is a single writer
//! A promise to `g` is durable before it is answered, and afterwards the safekeeper acknowledges
//! nothing older ([`Safekeeper::ack`]). Once a quorum promised `g`, at most a minority can still
//! acknowledge an older generation, which is not enough for any commit.
//!
//! The protocol is the state machine [`Safekeeper`] over the storage trait [`WalStore`]; the
//! daemon and the deterministic simulation in this module's tests run the same code.

mod core;
pub mod file;
mod log;
pub mod metrics;
pub mod node;
pub mod quorum;
pub mod spare;
mod store;
pub mod stream;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod simulation;

pub use self::core::{Safekeeper, Vote};
pub use self::file::FileWalStore;
pub use self::log::{History, Span, WalLog};
pub use self::store::{Control, MemWalStore, WalStore};

use spg_core::{Generation, TimelineId};

/// The timeline a compute of generation `g` promotes onto. `initdb` writes timeline 1, so
/// generation `g` writes timeline `g + 1`; timelines therefore order exactly as generations do,
/// and no two generations ever write the same timeline.
pub fn timeline_of(g: Generation) -> TimelineId {
    TimelineId(u32::try_from(g.0.saturating_add(1)).unwrap_or(u32::MAX))
}

/// Pick the recovery source among the logs a quorum promised: the highest [`WalLog::rank`].
/// Returns the index into `logs`.
pub fn choose_source(logs: &[WalLog]) -> Option<usize> {
    logs.iter()
        .enumerate()
        .max_by_key(|(_, l)| l.rank())
        .map(|(i, _)| i)
}

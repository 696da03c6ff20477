//! The writer autoscaler's policy: from load samples of a database's writer, decide when it
//! should move to the next larger or the next smaller writer profile.
//!
//! The policy is a pure state machine over samples (no clock, no I/O), so it is tested by
//! feeding it load histories. What keeps it from flapping:
//! - **windows**: a move up needs the load high in most samples ([`SUSTAINED`]) of `up_window`;
//!   a move down needs it low in most samples of the (longer) `down_window`, observed on the
//!   current generation: a burst does not move it up, a spike does not keep it up;
//! - **hysteresis**: a move down needs the load to fit the *smaller* profile with room to spare
//!   (`cpu_down` of its cores, well under `cpu_up`), so the move itself cannot push it over the
//!   threshold that would bring it back;
//! - **dwell**: after a change (or an attempt that failed) the profile is kept for `min_dwell`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Settings of the autoscaler.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalePolicy {
    /// Whether the control plane runs it (manual handoffs work either way).
    pub enabled: bool,
    /// Profile names from the smallest to the largest: moves go one step along it.
    pub ladder: Vec<String>,
    /// How often the writer is sampled (default 1 s).
    pub interval: Duration,
    /// How long the load must stay high before a move up (default 30 s).
    pub up_window: Duration,
    /// How long the load must stay low before a move down (default 120 s).
    pub down_window: Duration,
    /// How long a profile is kept after a change or a failed attempt (default 300 s).
    pub min_dwell: Duration,
    /// Move up when the writer uses this share of its profile's cores (default 0.75).
    pub cpu_up: f64,
    /// Move down only when the writer uses at most this share of the smaller profile's cores
    /// (default 0.30).
    pub cpu_down: f64,
    /// Move up when this many sessions per core of the profile are active (running a query or
    /// inside a transaction) on average (default 4).
    pub active_per_core_up: f64,
    /// Move down only with at most this many active sessions per core of the smaller profile
    /// (default 1).
    pub active_per_core_down: f64,
    /// Move up when on average this many clients wait in the gateways' queues for a backend
    /// connection (default 1).
    pub wait_up: f64,
    /// Move down only with at most this many clients waiting on average (default 0.05).
    pub wait_down: f64,
    /// Move up when fewer than this share of block reads are served from shared buffers
    /// (default 0.90), ...
    pub hit_ratio_up: f64,
    /// ... provided at least this many blocks per second are read at all (default 1000).
    pub hit_ratio_min_rate: f64,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        AutoscalePolicy {
            enabled: false,
            ladder: vec!["L1".into(), "L2".into()],
            interval: Duration::from_secs(1),
            up_window: Duration::from_secs(30),
            down_window: Duration::from_secs(120),
            min_dwell: Duration::from_secs(300),
            cpu_up: 0.75,
            cpu_down: 0.30,
            active_per_core_up: 4.0,
            active_per_core_down: 1.0,
            wait_up: 1.0,
            wait_down: 0.05,
            hit_ratio_up: 0.90,
            hit_ratio_min_rate: 1000.0,
        }
    }
}

impl AutoscalePolicy {
    /// Check the settings: thresholds that leave a band between moving up and moving down.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("the sampling interval must be positive".into());
        }
        if self.up_window < self.interval || self.down_window < self.interval {
            return Err("the windows must hold at least one sampling interval".into());
        }
        let ratio = |x: f64| x.is_finite() && x > 0.0;
        if !(ratio(self.cpu_up) && ratio(self.cpu_down) && self.cpu_down < self.cpu_up) {
            return Err(format!(
                "cpu_down ({}) must be positive and below cpu_up ({})",
                self.cpu_down, self.cpu_up
            ));
        }
        if !(ratio(self.active_per_core_up)
            && self.active_per_core_down.is_finite()
            && self.active_per_core_down >= 0.0
            && self.active_per_core_down < self.active_per_core_up)
        {
            return Err(
                "active_per_core_down must be at least 0 and below active_per_core_up".into(),
            );
        }
        if !(ratio(self.wait_up)
            && self.wait_down.is_finite()
            && self.wait_down >= 0.0
            && self.wait_down < self.wait_up)
        {
            return Err("wait_down must be at least 0 and below wait_up".into());
        }
        if !(self.hit_ratio_up.is_finite() && (0.0..=1.0).contains(&self.hit_ratio_up)) {
            return Err("hit_ratio_up must be within 0..=1".into());
        }
        let mut names = self.ladder.clone();
        names.sort();
        names.dedup();
        if names.len() != self.ladder.len() {
            return Err("a profile appears twice in the ladder".into());
        }
        Ok(())
    }

    /// The profiles next to `current` on the ladder: (smaller, larger).
    pub fn neighbours(&self, current: &str) -> (Option<&str>, Option<&str>) {
        match self.ladder.iter().position(|p| p == current) {
            Some(i) => (
                i.checked_sub(1).map(|j| self.ladder[j].as_str()),
                self.ladder.get(i + 1).map(String::as_str),
            ),
            None => (None, None),
        }
    }
}

/// A profile as the policy weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// Profile name.
    pub name: String,
    /// Its cores (its CPU limit; one core where it sets none).
    pub cores: f64,
}

/// Where the writer stands: its profile and the neighbouring ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Rungs {
    /// The profile it runs.
    pub current: Rung,
    /// The next smaller profile, if any.
    pub smaller: Option<Rung>,
    /// The next larger profile, if any.
    pub larger: Option<Rung>,
}

/// The writer's load over one sampling interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// When the interval ended.
    pub at: Instant,
    /// Cores used on average (CPU time of the compute's processes over the interval).
    pub cpu_cores: f64,
    /// Sessions running a query or inside a transaction.
    pub active: f64,
    /// Clients waiting in the gateways' queues, on average.
    pub waiting: f64,
    /// Blocks found in shared buffers, per second.
    pub blocks_hit: f64,
    /// Blocks read from outside shared buffers, per second.
    pub blocks_read: f64,
}

/// Which way a decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// To the next larger profile.
    Up,
    /// To the next smaller profile.
    Down,
}

/// A move the policy asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Which way.
    pub direction: Direction,
    /// The profile to move to.
    pub to: String,
    /// Why, in words (kept in the database's transitions).
    pub reason: String,
}

/// Share of a window's samples a level must hold in to count: a move up needs the load at or
/// above its threshold in this share of the samples, a move down needs it at or below.
pub const SUSTAINED: f64 = 0.8;

/// CPU, active sessions and waiting clients.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Cores used.
    pub cpu_cores: f64,
    /// Active sessions.
    pub active: f64,
    /// Clients waiting.
    pub waiting: f64,
}

/// The load over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    /// Means.
    pub mean: Figures,
    /// Levels reached or exceeded by [`SUSTAINED`] of the samples: what the load sustained.
    pub floor: Figures,
    /// Levels not exceeded by [`SUSTAINED`] of the samples: the load apart from brief spikes.
    pub ceiling: Figures,
    /// Share of block reads served from shared buffers (1 when nothing was read).
    pub hit_ratio: f64,
    /// Blocks read per second, hits and misses.
    pub block_rate: f64,
}

/// The policy's memory of one database.
#[derive(Debug, Clone)]
pub struct PolicyState {
    samples: VecDeque<LoadSample>,
    /// Since when the current generation has been observed.
    since: Instant,
    /// When the profile last changed (or a change was last attempted).
    last_change: Option<Instant>,
}

impl PolicyState {
    /// A database first observed at `now`.
    pub fn new(now: Instant) -> Self {
        PolicyState {
            samples: VecDeque::new(),
            since: now,
            last_change: None,
        }
    }

    /// Start over on a new generation observed from `now`, keeping the time of the last change.
    pub fn restart(&mut self, now: Instant) {
        self.samples.clear();
        self.since = now;
    }

    /// Record that the profile changed (or a change was attempted) at `now`: the dwell starts
    /// and the samples of the old generation are dropped.
    pub fn changed(&mut self, now: Instant) {
        self.restart(now);
        self.last_change = Some(now);
    }

    /// The load over the `window` before `now` (None with no sample in it).
    pub fn stats(&self, now: Instant, window: Duration) -> Option<WindowStats> {
        let from = now.checked_sub(window);
        let inside: Vec<&LoadSample> = self
            .samples
            .iter()
            .filter(|s| from.is_none_or(|f| s.at > f))
            .collect();
        if inside.is_empty() {
            return None;
        }
        let n = inside.len();
        let mean = |f: fn(&LoadSample) -> f64| inside.iter().map(|s| f(s)).sum::<f64>() / n as f64;
        // Sorted ascending: the floor is the value at or below which at most 1 - SUSTAINED of
        // the samples lie, the ceiling the one at or above which at most 1 - SUSTAINED lie.
        let sustained = (SUSTAINED * n as f64).ceil() as usize;
        let level = |f: fn(&LoadSample) -> f64, floor: bool| {
            let mut v: Vec<f64> = inside.iter().map(|s| f(s)).collect();
            v.sort_by(f64::total_cmp);
            if floor {
                v[n - sustained]
            } else {
                v[sustained - 1]
            }
        };
        let figures = |pick: &dyn Fn(fn(&LoadSample) -> f64) -> f64| Figures {
            cpu_cores: pick(|s| s.cpu_cores),
            active: pick(|s| s.active),
            waiting: pick(|s| s.waiting),
        };
        let hit = mean(|s| s.blocks_hit);
        let read = mean(|s| s.blocks_read);
        Some(WindowStats {
            mean: figures(&|f| mean(f)),
            floor: figures(&|f| level(f, true)),
            ceiling: figures(&|f| level(f, false)),
            hit_ratio: if hit + read > 0.0 {
                hit / (hit + read)
            } else {
                1.0
            },
            block_rate: hit + read,
        })
    }

    /// Take a sample of the writer running `rungs.current`; returns the move to make, if any.
    /// Samples with figures that are not finite and non-negative are dropped.
    pub fn observe(
        &mut self,
        policy: &AutoscalePolicy,
        rungs: &Rungs,
        sample: LoadSample,
    ) -> Option<Decision> {
        let sane = |x: f64| x.is_finite() && x >= 0.0;
        if !(sane(sample.cpu_cores)
            && sane(sample.active)
            && sane(sample.waiting)
            && sane(sample.blocks_hit)
            && sane(sample.blocks_read))
        {
            return None;
        }
        let now = sample.at;
        self.samples.push_back(sample);
        let keep = policy.up_window.max(policy.down_window);
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > keep)
        {
            self.samples.pop_front();
        }
        if self
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t) < policy.min_dwell)
        {
            return None;
        }
        let observed = now.saturating_duration_since(self.since);
        if let Some(larger) = &rungs.larger {
            if observed >= policy.up_window {
                if let Some(m) = self.stats(now, policy.up_window) {
                    let why = up_reasons(policy, &rungs.current, &m);
                    if !why.is_empty() {
                        return Some(Decision {
                            direction: Direction::Up,
                            to: larger.name.clone(),
                            reason: format!(
                                "over {:?}: {} on {}",
                                policy.up_window,
                                why.join(", "),
                                rungs.current.name
                            ),
                        });
                    }
                }
            }
        }
        if let Some(smaller) = &rungs.smaller {
            if observed >= policy.down_window {
                if let Some(m) = self.stats(now, policy.down_window) {
                    let m = m.ceiling;
                    let fits = m.cpu_cores <= policy.cpu_down * smaller.cores
                        && m.active <= policy.active_per_core_down * smaller.cores
                        && m.waiting <= policy.wait_down;
                    if fits {
                        return Some(Decision {
                            direction: Direction::Down,
                            to: smaller.name.clone(),
                            reason: format!(
                                "over {:?}: at most {:.2} cores, {:.1} active sessions and {:.2} \
                                 clients waiting fit {}",
                                policy.down_window, m.cpu_cores, m.active, m.waiting, smaller.name
                            ),
                        });
                    }
                }
            }
        }
        None
    }
}

fn up_reasons(policy: &AutoscalePolicy, current: &Rung, m: &WindowStats) -> Vec<String> {
    let f = m.floor;
    let mut why = Vec::new();
    if f.cpu_cores >= policy.cpu_up * current.cores {
        why.push(format!(
            "CPU at least {:.2} of {} cores",
            f.cpu_cores, current.cores
        ));
    }
    if f.active >= policy.active_per_core_up * current.cores {
        why.push(format!("at least {:.1} active sessions", f.active));
    }
    if f.waiting >= policy.wait_up {
        why.push(format!(
            "at least {:.1} clients waiting for a connection",
            f.waiting
        ));
    }
    if m.block_rate >= policy.hit_ratio_min_rate && m.hit_ratio < policy.hit_ratio_up {
        why.push(format!(
            "cache hit ratio {:.3} at {:.0} blocks/s",
            m.hit_ratio, m.block_rate
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> AutoscalePolicy {
        AutoscalePolicy {
            enabled: true,
            interval: Duration::from_secs(1),
            up_window: Duration::from_secs(10),
            down_window: Duration::from_secs(30),
            min_dwell: Duration::from_secs(60),
            ..AutoscalePolicy::default()
        }
    }

    fn rung(name: &str, cores: f64) -> Rung {
        Rung {
            name: name.into(),
            cores,
        }
    }

    fn on(current: &str) -> Rungs {
        match current {
            "L1" => Rungs {
                current: rung("L1", 1.0),
                smaller: None,
                larger: Some(rung("L2", 2.0)),
            },
            _ => Rungs {
                current: rung("L2", 2.0),
                smaller: Some(rung("L1", 1.0)),
                larger: None,
            },
        }
    }

    fn load(at: Instant, cpu: f64) -> LoadSample {
        LoadSample {
            at,
            cpu_cores: cpu,
            active: cpu,
            waiting: 0.0,
            blocks_hit: 100.0,
            blocks_read: 0.0,
        }
    }

    /// Feed `cpu(t)` once a second for `secs` seconds, moving along the ladder as decided;
    /// returns (second, decision) of every move.
    fn simulate(cpu: impl Fn(u64) -> f64, secs: u64) -> Vec<(u64, Decision)> {
        let p = policy();
        let t0 = Instant::now();
        let mut st = PolicyState::new(t0);
        let mut current = "L1".to_string();
        let mut moves = Vec::new();
        for s in 1..=secs {
            let at = t0 + Duration::from_secs(s);
            if let Some(d) = st.observe(&p, &on(&current), load(at, cpu(s))) {
                current = d.to.clone();
                st.changed(at);
                moves.push((s, d));
            }
        }
        moves
    }

    #[test]
    fn sustained_load_moves_up_and_quiet_moves_back_down_once_each() {
        // 90 s of one busy core, then quiet.
        let moves = simulate(|s| if s <= 90 { 0.95 } else { 0.02 }, 400);
        let dirs: Vec<_> = moves.iter().map(|(s, d)| (*s, d.direction)).collect();
        assert_eq!(dirs.len(), 2, "{moves:?}");
        assert_eq!(dirs[0], (10, Direction::Up));
        assert_eq!(dirs[1].1, Direction::Down);
        // Down only once the load was quiet over most of the window on L2 (the dwell, 60 s
        // from the move up, ended earlier).
        assert!(dirs[1].0 > 90 + 15, "{moves:?}");
        assert!(
            moves[0].1.reason.contains("CPU at least 0.95 of 1 cores"),
            "{moves:?}"
        );
        assert!(moves[1].1.reason.contains("fit L1"), "{moves:?}");
    }

    #[test]
    fn levels_are_what_most_samples_reach() {
        let t0 = Instant::now();
        let mut st = PolicyState::new(t0);
        let p = policy();
        // Ten samples: 0.0, 0.1, ..., 0.9.
        for s in 0..10 {
            let at = t0 + Duration::from_secs(s + 1);
            st.observe(&p, &on("L2"), load(at, s as f64 / 10.0));
        }
        let m = st.stats(t0 + Duration::from_secs(10), p.up_window).unwrap();
        assert!((m.mean.cpu_cores - 0.45).abs() < 1e-9);
        assert_eq!(m.floor.cpu_cores, 0.2, "8 of 10 samples at or above");
        assert_eq!(m.ceiling.cpu_cores, 0.7, "8 of 10 samples at or below");
        assert_eq!(m.hit_ratio, 1.0);
    }

    #[test]
    fn a_short_burst_does_not_move() {
        let moves = simulate(|s| if (20..25).contains(&s) { 1.0 } else { 0.1 }, 200);
        assert!(moves.is_empty(), "{moves:?}");
    }

    #[test]
    fn load_between_the_thresholds_stays_where_it_is() {
        // After the move up, 0.9 cores is 45% of L2: above what fits L1 comfortably (0.3) and
        // below L2's threshold (1.5): it stays on L2.
        let moves = simulate(|_| 0.9, 600);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].1.direction, Direction::Up);
    }

    #[test]
    fn each_signal_moves_up_on_its_own() {
        let p = policy();
        let t0 = Instant::now();
        let quiet = |at| load(at, 0.1);
        type Make = Box<dyn Fn(Instant) -> LoadSample>;
        let cases: Vec<(&str, Make)> = vec![
            (
                "active sessions",
                Box::new(move |at| LoadSample {
                    active: 6.0,
                    ..quiet(at)
                }),
            ),
            (
                "waiting",
                Box::new(move |at| LoadSample {
                    waiting: 3.0,
                    ..quiet(at)
                }),
            ),
            (
                "cache hit ratio",
                Box::new(move |at| LoadSample {
                    blocks_hit: 5000.0,
                    blocks_read: 2000.0,
                    ..quiet(at)
                }),
            ),
        ];
        for (what, make) in cases {
            let mut st = PolicyState::new(t0);
            let mut decided = None;
            for s in 1..=15 {
                let at = t0 + Duration::from_secs(s);
                if let Some(d) = st.observe(&p, &on("L1"), make(at)) {
                    decided = Some((s, d));
                    break;
                }
            }
            let (s, d) = decided.unwrap_or_else(|| panic!("{what}: no move"));
            assert_eq!((s, d.direction), (10, Direction::Up), "{what}");
            assert!(d.reason.contains(what), "{what}: {}", d.reason);
        }
        // Few block reads: the ratio says nothing.
        let mut st = PolicyState::new(t0);
        for s in 1..=30 {
            let at = t0 + Duration::from_secs(s);
            let sample = LoadSample {
                blocks_hit: 10.0,
                blocks_read: 50.0,
                ..quiet(at)
            };
            assert_eq!(st.observe(&p, &on("L1"), sample), None);
        }
    }

    #[test]
    fn bad_samples_are_dropped_and_bad_settings_refused() {
        let p = policy();
        let t0 = Instant::now();
        let mut st = PolicyState::new(t0);
        for s in 1..=20 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(st.observe(&p, &on("L1"), load(at, f64::NAN)), None);
            assert_eq!(st.observe(&p, &on("L1"), load(at, -1.0)), None);
        }
        assert!(st
            .stats(t0 + Duration::from_secs(20), p.up_window)
            .is_none());
        assert!(p.validate().is_ok());
        let inverted = AutoscalePolicy {
            cpu_down: 0.9,
            cpu_up: 0.5,
            ..policy()
        };
        assert!(inverted.validate().is_err());
        let twice = AutoscalePolicy {
            ladder: vec!["L1".into(), "L1".into()],
            ..policy()
        };
        assert!(twice.validate().is_err());
        assert_eq!(policy().neighbours("L1"), (None, Some("L2")));
        assert_eq!(policy().neighbours("L2"), (Some("L1"), None));
        assert_eq!(policy().neighbours("L9"), (None, None));
    }

    proptest! {
        /// Whatever the load, two moves are at least the dwell apart, and a move down never
        /// follows load that a move back up would answer within the down window.
        #[test]
        fn moves_never_come_closer_than_the_dwell(
            cpu in proptest::collection::vec(0.0f64..2.5, 50..400),
        ) {
            let moves = simulate(|s| cpu[(s as usize - 1) % cpu.len()], cpu.len() as u64);
            for pair in moves.windows(2) {
                prop_assert!(pair[1].0 - pair[0].0 >= 60, "{:?}", moves);
            }
            for (s, d) in &moves {
                // A move down was preceded by a quiet down window (80% of its samples at most
                // 0.3 of L1's core); a move up by a busy up window (80% at least 0.75).
                let window = if d.direction == Direction::Down { 30 } else { 10 };
                let samples: Vec<f64> =
                    (s - window + 1..=*s).map(|t| cpu[(t as usize - 1) % cpu.len()]).collect();
                let held = match d.direction {
                    Direction::Down => samples.iter().filter(|c| **c <= 0.3).count(),
                    Direction::Up => samples.iter().filter(|c| **c >= 0.75).count(),
                };
                prop_assert!(held * 10 >= samples.len() * 8, "{:?} {:?}", moves, samples);
            }
        }
    }
}

//! Throttling of failed attempts: logins at the gateway, API keys at the HTTPS servers.
//!
//! A [`FailureThrottle`] counts failures per key (a source address, a database role). The first
//! few cost nothing; each further one is answered only after a delay that doubles up to a cap;
//! past a limit the key is locked out for a while, and attempts under it are refused before any
//! work is done for them. Failures are forgotten after a quiet period, and the table is bounded
//! (the oldest entries go first), so a flood of addresses cannot exhaust memory.
//!
//! Successes do not reset a key: an attacker holding one valid credential could otherwise wipe
//! the record of its guesses at another.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How failures are punished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures answered at once.
    pub free_failures: u32,
    /// Delay of the first failure past the free ones; each further failure doubles it.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Failures after which the key is locked out.
    pub lockout_after: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// A key with no failure for this long starts over.
    pub forget_after: Duration,
    /// Keys remembered at most.
    pub max_entries: usize,
}

impl Default for ThrottlePolicy {
    /// 5 free failures, then 100 ms doubling up to 5 s; locked out for 5 minutes after 20;
    /// forgotten after 15 quiet minutes; 100 000 keys.
    fn default() -> Self {
        ThrottlePolicy {
            free_failures: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            lockout_after: 20,
            lockout: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
            max_entries: 100_000,
        }
    }
}

/// What a key may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Locked out for this much longer: refuse without doing any work.
    Locked(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts per key under a [`ThrottlePolicy`]; see the module documentation.
#[derive(Debug)]
pub struct FailureThrottle<K> {
    policy: ThrottlePolicy,
    entries: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq + Clone> FailureThrottle<K> {
    /// An empty throttle.
    pub fn new(policy: ThrottlePolicy) -> Self {
        FailureThrottle {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    /// Whether `key` may make an attempt now.
    pub fn check(&self, key: &K) -> Verdict {
        self.check_at(key, Instant::now())
    }

    /// Whether `key` has failed recently (within the quiet period).
    pub fn has_failed(&self, key: &K) -> bool {
        let now = Instant::now();
        self.lock()
            .get(key)
            .is_some_and(|e| now.saturating_duration_since(e.last) < self.policy.forget_after)
    }

    /// Record a failure of `key`; returns how long to wait before answering it.
    pub fn failure(&self, key: &K) -> Duration {
        self.failure_at(key, Instant::now())
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_at(&self, key: &K, now: Instant) -> Verdict {
        let entries = self.lock();
        match entries.get(key).and_then(|e| e.locked_until) {
            Some(until) if until > now => Verdict::Locked(until - now),
            _ => Verdict::Allow,
        }
    }

    fn failure_at(&self, key: &K, now: Instant) -> Duration {
        let p = self.policy;
        let mut entries = self.lock();
        if !entries.contains_key(key) && entries.len() >= p.max_entries.max(1) {
            make_room(&mut entries, &p, now);
        }
        let e = entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        let lock_over = e.locked_until.is_some_and(|u| u <= now);
        if now.saturating_duration_since(e.last) >= p.forget_after || lock_over {
            e.failures = 0;
            e.locked_until = None;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= p.lockout_after && e.locked_until.is_none() {
            e.locked_until = Some(now + p.lockout);
        }
        delay_for(&p, e.failures)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn delay_for(p: &ThrottlePolicy, failures: u32) -> Duration {
    let over = failures.saturating_sub(p.free_failures);
    if over == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (over - 1).min(20);
    p.base_delay.saturating_mul(factor).min(p.max_delay)
}

/// Drop forgotten entries; if that is not enough, the oldest tenth.
fn make_room<K: Hash + Eq + Clone>(
    entries: &mut HashMap<K, Entry>,
    p: &ThrottlePolicy,
    now: Instant,
) {
    entries.retain(|_, e| {
        now.saturating_duration_since(e.last) < p.forget_after
            || e.locked_until.is_some_and(|u| u > now)
    });
    if entries.len() < p.max_entries.max(1) {
        return;
    }
    let mut ages: Vec<(Instant, K)> = entries.iter().map(|(k, e)| (e.last, k.clone())).collect();
    ages.sort_by_key(|(t, _)| *t);
    let drop = (ages.len() / 10).max(1);
    for (_, k) in ages.into_iter().take(drop) {
        entries.remove(&k);
    }
}

/// The key of a source address: IPv4 addresses as they are, IPv6 ones by their `/64` (one
/// host commonly holds a whole `/64`).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            free_failures: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            lockout_after: 6,
            lockout: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
            max_entries: 10,
        }
    }

    #[test]
    fn delays_grow_then_the_key_is_locked_out_for_a_while() {
        let t = FailureThrottle::new(policy());
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..6)
            .map(|i| t.failure_at(&"a", t0 + Duration::from_secs(i)).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![0, 0, 100, 200, 350, 350]);
        assert_eq!(
            t.check_at(&"a", t0 + Duration::from_secs(6)),
            Verdict::Locked(Duration::from_secs(59))
        );
        assert_eq!(
            t.check_at(&"b", t0),
            Verdict::Allow,
            "other keys are not affected"
        );
        // After the lockout the key starts over.
        let later = t0 + Duration::from_secs(70);
        assert_eq!(t.check_at(&"a", later), Verdict::Allow);
        assert_eq!(t.failure_at(&"a", later), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let t = FailureThrottle::new(policy());
        let t0 = Instant::now();
        for _ in 0..4 {
            t.failure_at(&"a", t0);
        }
        assert_eq!(
            t.failure_at(&"a", t0 + Duration::from_secs(601)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let t = FailureThrottle::new(policy());
        let t0 = Instant::now();
        for i in 0..1000u32 {
            t.failure_at(&i, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(t.len() <= 10, "{}", t.len());
        // The newest keys are the ones kept.
        assert!(t.has_failed(&999));
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(address_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}

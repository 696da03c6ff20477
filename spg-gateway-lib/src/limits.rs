//! What a client may hold before it has proved who it is, and what failing to prove it costs.
//!
//! - **Pre-authentication slots**: connections that have not logged in yet are counted apart
//!   from `max_client_conn`, per source address ([`LoginLimits::max_preauth_per_address`]) and
//!   in total ([`LoginLimits::max_preauth`]). One address over its share is refused at once;
//!   when the total is reached, the *oldest* pending login is closed to make room, so idle
//!   sockets from many addresses cannot keep everyone else out for longer than it takes to
//!   open new ones. Every pending login ends at the handshake deadline (TLS, startup and
//!   authentication together).
//! - **Failed-login throttling** ([`spg_core::throttle`]): per source address (IPv6 by /64),
//!   growing delays before a failure is answered, then a lockout during which the address is
//!   refused before any work is done; per (database, role), growing delays, and during its
//!   lockout only addresses that have not failed recently may try. A correct client elsewhere
//!   is never slowed by someone else's guesses.
//! - **Password hashing**: the `password` method's key derivations run on at most
//!   [`LoginLimits::max_password_hashes`] blocking threads at once.
//!
//! Each refusal is counted in `spg_gateway_refused_total{reason}`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spg_core::throttle::{address_key, FailureThrottle, ThrottlePolicy, Verdict};
use tokio_util::sync::CancellationToken;

/// Limits of the gateway's logins (part of [`GatewayConfig`](crate::GatewayConfig)).
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Time from accept to a completed login: TLS handshake, startup and authentication
    /// (default 10 s).
    pub handshake_timeout: Duration,
    /// Connections not logged in yet, in total (default 2 000).
    pub max_preauth: usize,
    /// Connections not logged in yet from one source address (default 1 000: an application
    /// server opening hundreds of connections at once is one address).
    pub max_preauth_per_address: usize,
    /// Throttling of failed logins per source address.
    pub address_throttle: ThrottlePolicy,
    /// Throttling of failed logins per (database, role).
    pub role_throttle: ThrottlePolicy,
    /// `password`-method key derivations at once (default: the number of CPUs).
    pub max_password_hashes: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            handshake_timeout: Duration::from_secs(10),
            max_preauth: 2_000,
            max_preauth_per_address: 1_000,
            address_throttle: ThrottlePolicy::default(),
            role_throttle: ThrottlePolicy::default(),
            max_password_hashes: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// Why a connection was refused before it could log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address has too many logins pending.
    PreauthPerAddress,
    /// Its address is locked out after failed logins.
    AddressLocked,
    /// The role is locked out and this address failed against it recently.
    RoleLocked,
    /// Closed to make room for a newer login (the total of pending logins was reached).
    PreauthEvicted,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// `max_client_conn` sessions are open.
    TooManyClients,
}

impl Refusal {
    /// Label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PreauthPerAddress => "preauth_per_address",
            Refusal::AddressLocked => "address_locked",
            Refusal::RoleLocked => "role_locked",
            Refusal::PreauthEvicted => "preauth_evicted",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::TooManyClients => "max_client_conn",
        }
    }
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    /// Pending logins by age: id → (address key, what closes it).
    by_age: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
}

/// The gateway's login limits in force: pending logins and failure throttles.
pub(crate) struct Gate {
    limits: LoginLimits,
    pending: Mutex<Pending>,
    addresses: FailureThrottle<IpAddr>,
    roles: FailureThrottle<(String, String)>,
    hashes: Arc<tokio::sync::Semaphore>,
}

/// A pending login's slot; given back when dropped (or when the login completes).
pub(crate) struct Slot {
    gate: Arc<Gate>,
    id: u64,
    /// Cancelled when the slot is taken away to make room for a newer login.
    pub(crate) evicted: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = self.gate.lock();
        if let Some((ip, _)) = p.by_age.remove(&self.id) {
            if let Some(n) = p.per_address.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    p.per_address.remove(&ip);
                }
            }
        }
    }
}

impl Gate {
    pub(crate) fn new(limits: LoginLimits) -> Arc<Gate> {
        Arc::new(Gate {
            addresses: FailureThrottle::new(limits.address_throttle),
            roles: FailureThrottle::new(limits.role_throttle),
            hashes: Arc::new(tokio::sync::Semaphore::new(
                limits.max_password_hashes.max(1),
            )),
            pending: Mutex::new(Pending::default()),
            limits,
        })
    }

    pub(crate) fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a login from `ip`, unless its address may not try now.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = address_key(ip);
        if let Verdict::Locked(_) = self.addresses.check(&key) {
            return Err(Refusal::AddressLocked);
        }
        let mut p = self.lock();
        if p.per_address.get(&key).copied().unwrap_or(0) >= self.limits.max_preauth_per_address {
            return Err(Refusal::PreauthPerAddress);
        }
        while p.by_age.len() >= self.limits.max_preauth.max(1) {
            // Make room: the oldest pending login goes (its slot is given back when its task
            // sees the cancellation and drops it; it no longer counts from now).
            let Some((_, (old_ip, token))) = p.by_age.pop_first() else {
                break;
            };
            if let Some(n) = p.per_address.get_mut(&old_ip) {
                *n -= 1;
                if *n == 0 {
                    p.per_address.remove(&old_ip);
                }
            }
            token.cancel();
        }
        p.next_id += 1;
        let id = p.next_id;
        let evicted = CancellationToken::new();
        p.by_age.insert(id, (key, evicted.clone()));
        *p.per_address.entry(key).or_insert(0) += 1;
        Ok(Slot {
            gate: Arc::clone(self),
            id,
            evicted,
        })
    }

    /// Logins pending now.
    pub(crate) fn pending(&self) -> usize {
        self.lock().by_age.len()
    }

    /// Whether `ip` may try a password now (checked again once the client said who it is: an
    /// attempt admitted before its address was locked out gets no guess after).
    pub(crate) fn address_allows(&self, ip: IpAddr) -> bool {
        matches!(self.addresses.check(&address_key(ip)), Verdict::Allow)
    }

    /// Whether `role` of `db` may be tried from `ip` now (its lockout spares addresses with
    /// no recent failures).
    pub(crate) fn role_allows(&self, ip: IpAddr, db: &str, role: &str) -> bool {
        match self.roles.check(&(db.to_string(), role.to_string())) {
            Verdict::Allow => true,
            Verdict::Locked(_) => !self.addresses.has_failed(&address_key(ip)),
        }
    }

    /// A login from `ip` as `role` of `db` failed: how long to wait before saying so.
    pub(crate) fn failed(&self, ip: IpAddr, db: &str, role: &str) -> Duration {
        let a = self.addresses.failure(&address_key(ip));
        let r = self.roles.failure(&(db.to_string(), role.to_string()));
        a.max(r)
    }

    /// A permit for one `password`-method key derivation.
    pub(crate) async fn hash_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.hashes).acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, per: usize) -> Arc<Gate> {
        Gate::new(LoginLimits {
            max_preauth: max,
            max_preauth_per_address: per,
            address_throttle: ThrottlePolicy {
                free_failures: 1,
                lockout_after: 3,
                base_delay: Duration::from_millis(10),
                ..ThrottlePolicy::default()
            },
            ..LoginLimits::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let g = gate(100, 2);
        let a = g.admit(ip("10.0.0.1")).unwrap();
        let _b = g.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            g.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PreauthPerAddress)
        );
        assert!(
            g.admit(ip("10.0.0.2")).is_ok(),
            "other addresses are not affected"
        );
        drop(a);
        assert!(
            g.admit(ip("10.0.0.1")).is_ok(),
            "a slot given back is free again"
        );
    }

    #[test]
    fn a_full_gate_closes_the_oldest_pending_login() {
        let g = gate(3, 10);
        let slots: Vec<Slot> = (1..=3)
            .map(|i| g.admit(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        let newest = g.admit(ip("10.0.0.9")).unwrap();
        assert!(slots[0].evicted.is_cancelled(), "the oldest is closed");
        assert!(!slots[1].evicted.is_cancelled() && !newest.evicted.is_cancelled());
        assert_eq!(g.pending(), 3);
        drop(slots);
        assert_eq!(g.pending(), 1);
    }

    #[test]
    fn failures_lock_the_address_and_spare_other_addresses_of_the_role() {
        let g = gate(100, 100);
        let bad = ip("10.0.0.66");
        let delays: Vec<Duration> = (0..3).map(|_| g.failed(bad, "db", "app")).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert!(delays[2] > delays[1]);
        assert_eq!(g.admit(bad).err(), Some(Refusal::AddressLocked));
        assert!(g.admit(ip("10.0.0.7")).is_ok());
        // The role's own lockout (after more failures, from several addresses) keeps only the
        // failing addresses out.
        for i in 0..30 {
            g.failed(ip(&format!("10.1.0.{i}")), "db", "app");
        }
        assert!(!g.role_allows(ip("10.1.0.3"), "db", "app"));
        assert!(g.role_allows(ip("10.0.0.7"), "db", "app"));
        assert!(g.role_allows(ip("10.1.0.3"), "db", "other"));
    }
}

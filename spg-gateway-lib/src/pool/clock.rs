//! A cheap clock for the figures the pool keeps on every transaction.
//!
//! `CLOCK_MONOTONIC_COARSE` reads the kernel's last timer tick (a few milliseconds of
//! resolution) without reading the CPU's time stamp counter, which on virtual machines can cost
//! as much as the rest of a transaction's bookkeeping. Good for "in this state for", "idle
//! since" and transaction-time sums (a tick boundary falls inside a short transaction with the
//! probability its length bears to the tick, so sums stay right on average); deadlines and
//! queue waits use `Instant`.

/// Microseconds of the coarse monotonic clock.
pub(crate) fn coarse_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_coarse_clock_moves_forward() {
        let a = super::coarse_us();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = super::coarse_us();
        assert!(a > 0 && b >= a + 10_000, "{a} {b}");
    }
}

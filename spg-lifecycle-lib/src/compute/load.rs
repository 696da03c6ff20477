//! Load figures of a running compute, as the autoscaler samples them: CPU time of its processes
//! (from `/proc`, so it works with and without cgroups), and from PostgreSQL's statistics the
//! active sessions and the shared-buffer hits and reads.

use std::time::Instant;

/// Cumulative counters of a compute at one moment; the autoscaler turns two of them into rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComputeLoad {
    /// When they were read.
    pub at: Instant,
    /// CPU time, in microseconds, used by the postmaster and its processes (live and exited).
    pub cpu_us: u64,
    /// Client sessions running a query or inside a transaction.
    pub active: u32,
    /// Blocks found in shared buffers, over all databases, since the compute started.
    pub blocks_hit: u64,
    /// Blocks read from outside shared buffers, likewise.
    pub blocks_read: u64,
}

/// The query reading the PostgreSQL side of a [`ComputeLoad`] (run by the platform's admin
/// role, whose own session is left out).
pub(crate) const LOAD_SQL: &str = "SELECT \
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
        AND state IS NOT NULL AND state <> 'idle' AND pid <> pg_backend_pid())::text, \
    (SELECT coalesce(sum(blks_hit), 0) FROM pg_stat_database)::text, \
    (SELECT coalesce(sum(blks_read), 0) FROM pg_stat_database)::text";

/// CPU time of process `pid` and its children, in microseconds: its own time, the time of the
/// children it waited for (a postmaster reaps every backend that ended), and the time of the
/// children still running. `None` when the process is gone.
pub fn process_tree_cpu_us(pid: u32) -> Option<u64> {
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut ticks = stat_ticks(&own, true)?;
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        // A child that ended meanwhile is counted once its parent reaps it.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            ticks += stat_ticks(&stat, true).unwrap_or(0);
        }
    }
    Some(ticks.saturating_mul(1_000_000) / ticks_per_s)
}

/// utime + stime (+ cutime + cstime with `with_children`) from a `/proc/<pid>/stat` line, in
/// clock ticks. The command name (field 2) may hold spaces and parentheses: fields are counted
/// after its last `)`.
fn stat_ticks(stat: &str, with_children: bool) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3; utime is field 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
    let mut sum = field(14)? + field(15)?;
    if with_children {
        sum += field(16)?.max(0) + field(17)?.max(0);
    }
    u64::try_from(sum).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let line = "4242 (postgres: a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 100 1000 10 18446744073709551615";
        assert_eq!(stat_ticks(line, false), Some(300));
        assert_eq!(stat_ticks(line, true), Some(310));
        assert_eq!(stat_ticks("garbage", true), None);
        assert_eq!(stat_ticks("1 (x) S 1 2", true), None);
    }

    #[test]
    fn a_busy_child_shows_in_its_parents_tree() {
        let me = std::process::id();
        let before = process_tree_cpu_us(me).expect("this process");
        // Burn about 50 ms of CPU in this process.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = process_tree_cpu_us(me).expect("this process");
        assert!(after > before, "{before} -> {after}");
        assert_eq!(process_tree_cpu_us(u32::MAX), None);
    }
}

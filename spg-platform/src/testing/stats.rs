//! Figures of the benchmarks: percentiles of samples and medians of timed steps.

use std::time::Duration;

/// The `p`th percentile (0–100, nearest rank) of `samples` (not empty).
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let idx = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// `step=median` for every step of the first run, over all runs (runs: `(step, ms)` lists).
pub fn step_medians(runs: &[Vec<(String, f64)>]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut names: Vec<&String> = first.iter().map(|(n, _)| n).collect();
    names.dedup();
    names
        .iter()
        .map(|n| {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(|s| s.iter().find(|(k, _)| k == *n).map(|(_, ms)| *ms))
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            format!("{n}={:.1}", v[v.len() / 2])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

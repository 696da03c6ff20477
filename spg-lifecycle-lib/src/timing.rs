//! Timings of lifecycle steps.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One timed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepTiming {
    /// Step name (`checkout`, `initdb`, `configure`, `start`, `roles`, `shutdown`, ...).
    pub step: String,
    /// Duration in milliseconds.
    pub ms: f64,
}

/// The timed steps of one lifecycle operation, in order, ending with `total`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepTimings {
    /// Steps in execution order.
    pub steps: Vec<StepTiming>,
}

impl StepTimings {
    /// Duration of a step, if it ran.
    pub fn get(&self, step: &str) -> Option<Duration> {
        self.steps
            .iter()
            .find(|s| s.step == step)
            .map(|s| Duration::from_secs_f64(s.ms / 1000.0))
    }
}

/// Records consecutive steps.
#[derive(Debug)]
pub struct StepTimer {
    start: Instant,
    last: Instant,
    timings: StepTimings,
}

impl Default for StepTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl StepTimer {
    /// Start timing.
    pub fn new() -> Self {
        let now = Instant::now();
        StepTimer {
            start: now,
            last: now,
            timings: StepTimings::default(),
        }
    }

    /// Close the current step under `name`; returns its duration.
    pub fn step(&mut self, name: &str) -> Duration {
        let now = Instant::now();
        let d = now - self.last;
        self.last = now;
        self.timings.steps.push(StepTiming {
            step: name.to_string(),
            ms: d.as_secs_f64() * 1000.0,
        });
        d
    }

    /// Finish, appending `total`.
    pub fn finish(mut self) -> StepTimings {
        self.timings.steps.push(StepTiming {
            step: "total".into(),
            ms: self.start.elapsed().as_secs_f64() * 1000.0,
        });
        self.timings
    }
}

//! Lifecycle states of a database's compute.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a database's compute is in its lifecycle.
///
/// ```text
/// stopped ──wake──▶ booting ──ready──▶ ready ──idle / stop──▶ stopping ──▶ stopped
///                      │                                          ▲
///                      └──────────── boot failed ─────────────────┘ (to stopped)
/// ```
///
/// `stopped` is a normal state: nothing runs and nothing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComputeState {
    /// No compute runs. The next connection wakes it.
    Stopped,
    /// A compute of a new generation is starting.
    Booting,
    /// A compute accepts connections.
    Ready,
    /// The compute is shutting down and writing back its state.
    Stopping,
}

impl ComputeState {
    /// Lowercase name, as stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeState::Stopped => "stopped",
            ComputeState::Booting => "booting",
            ComputeState::Ready => "ready",
            ComputeState::Stopping => "stopping",
        }
    }

    /// Whether moving from `self` to `to` is a legal transition of the state machine.
    pub fn can_become(self, to: ComputeState) -> bool {
        use ComputeState::*;
        matches!(
            (self, to),
            (Stopped, Booting)
                | (Booting, Ready)
                | (Booting, Stopped)
                | (Booting, Stopping)
                | (Ready, Stopping)
                | (Ready, Stopped)
                | (Stopping, Stopped)
        )
    }

    /// All states, in lifecycle order.
    pub const ALL: [ComputeState; 4] = [
        ComputeState::Stopped,
        ComputeState::Booting,
        ComputeState::Ready,
        ComputeState::Stopping,
    ];
}

impl fmt::Display for ComputeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComputeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ComputeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown compute state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use ComputeState::*;
        assert!(Stopped.can_become(Booting));
        assert!(!Stopped.can_become(Ready));
        assert!(!Ready.can_become(Booting));
        assert!(Stopping.can_become(Stopped));
        for s in ComputeState::ALL {
            assert_eq!(s.as_str().parse::<ComputeState>().unwrap(), s);
            assert!(!s.can_become(s));
        }
    }
}

//! The stage a run is in: the one the main thread sets for every worker, and the one each
//! interval of the run's second-by-second record belongs to.

use serde::{Deserialize, Serialize};

/// What the workers are doing, set by the main thread; an interval is recorded in one of the
/// first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub(crate) enum Stage {
    /// Connecting and running, not yet counting (hold: opening the connections).
    Warmup = 0,
    /// Counting (hold: holding the connections open).
    Measure = 1,
    /// hold only: one message on every connection, then each worker ends by itself (its
    /// latency is hold's).
    Check = 2,
    /// Every mode but hold: no new messages or connections; each worker ends by itself once
    /// nothing is owed, counting what is still owed after the timeout as timed out (UDP: lost).
    Drain = 3,
    /// Close everything and return.
    Stop = 4,
}

impl Stage {
    pub(crate) fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Warmup,
            1 => Stage::Measure,
            2 => Stage::Check,
            3 => Stage::Drain,
            _ => Stage::Stop,
        }
    }

    /// The order of the stages' intervals.
    pub(crate) fn rank(self) -> u8 {
        self as u8
    }

    /// Whether an interval of this stage is part of what the run reports (its histogram is in
    /// the total).
    pub(crate) fn measured(self) -> bool {
        matches!(self, Stage::Measure | Stage::Check)
    }

    /// The stage as a person reads it: hold opens, holds and checks; the other modes warm up
    /// and run.
    pub(crate) fn name(self, hold: bool) -> &'static str {
        match (self, hold) {
            (Stage::Warmup, false) => "warmup",
            (Stage::Warmup, true) => "open",
            (Stage::Measure, false) => "run",
            (Stage::Measure, true) => "hold",
            (Stage::Check, _) => "check",
            (Stage::Drain, _) => "drain",
            (Stage::Stop, _) => "stop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_their_number_and_read_as_their_mode_names_them() {
        for s in [
            Stage::Warmup,
            Stage::Measure,
            Stage::Check,
            Stage::Drain,
            Stage::Stop,
        ] {
            assert_eq!(Stage::from_u8(s as u8), s);
        }
        assert_eq!(Stage::Measure.name(true), "hold");
        assert_eq!(Stage::Measure.name(false), "run");
        assert_eq!(Stage::Warmup.name(true), "open");
        assert!(Stage::Check.measured() && !Stage::Warmup.measured());
    }
}

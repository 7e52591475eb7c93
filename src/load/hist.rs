//! The latency histogram: its bounds, how a latency is recorded into it, and the percentiles
//! read back out of it (the whole run's [`Latency`], one interval's [`Spot`]).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency the histogram tells apart (longer ones are recorded as this): one minute.
pub(crate) const HIST_MAX_NS: u64 = 60_000_000_000;

/// Records one latency into `h`.
#[inline]
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    // Clamped before narrowing, so no duration can wrap around to a small one.
    let ns = d.as_nanos().clamp(1, u128::from(HIST_MAX_NS)) as u64;
    h.saturating_record(ns);
}

/// A new empty latency histogram (nanoseconds, 1 ns to a minute, 3 significant figures).
pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// The percentiles of one interval, in microseconds.
#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub struct Spot {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Spot {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Spot> {
        let l = Latency::of(h)?;
        Some(Spot {
            count: l.count,
            p50: l.p50,
            p90: l.p90,
            p99: l.p99,
            p999: l.p999,
            max: l.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_in_microseconds() {
        let mut h = new_hist();
        for us in 1..=100u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = Latency::of(&h).unwrap();
        assert!((l.p50 - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert!(Latency::of(&new_hist()).is_none());
    }
}

//! When messages are due, and when each in-flight message counts from.
//!
//! [`RateSchedule`] is the open-loop clock of `--rate`: message `k` of a worker is due at
//! `start + k / rate`, whatever happened to the messages before it, and is handed to connection
//! `k % n`. A message that cannot be sent on time (its connection already has `--depth` in flight)
//! waits, but its latency still counts from its due time, so a stalled server shows up in the
//! percentiles instead of silently slowing the generator down (the coordinated-omission trap that
//! wrk2 avoids the same way).
//!
//! [`InFlight`] remembers, per connection, the time each in-flight message counts from, in a
//! fixed ring allocated once per connection.

use std::ops::Range;
use std::time::{Duration, Instant};

/// Latest a message is ever due, in seconds after the start: far beyond the longest run (a
/// day), near enough that adding it to an `Instant` cannot overflow, whatever the rate.
const HORIZON_SECS: f64 = 1e9;

/// The open-loop send clock of one worker.
#[derive(Debug, Clone)]
pub struct RateSchedule {
    start: Instant,
    /// Seconds between consecutive messages of this worker.
    interval: f64,
    next: u64,
}

impl RateSchedule {
    /// A schedule of `rate` messages per second starting at `start`.
    pub fn new(start: Instant, rate: f64) -> RateSchedule {
        // `!(rate > 0)` also catches NaN; a rate too slow to matter is one that never sends again.
        let interval = if rate > 0.0 {
            (1.0 / rate).min(HORIZON_SECS)
        } else {
            HORIZON_SECS
        };
        RateSchedule {
            start,
            interval,
            next: 0,
        }
    }

    /// The due time of message `k` (never later than the horizon).
    #[inline]
    pub fn due_time(&self, k: u64) -> Instant {
        // f64 keeps nanosecond precision for ~100 days of schedule, far past any run.
        let secs = (k as f64 * self.interval).min(HORIZON_SECS);
        self.start + Duration::from_secs_f64(secs)
    }

    /// The next message not yet handed out, and its due time.
    pub fn peek(&self) -> (u64, Instant) {
        (self.next, self.due_time(self.next))
    }

    /// Hands out the next message if it is due at `now` (the one-at-a-time model `take_due` is
    /// tested against).
    #[cfg(test)]
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        if self.due_time(self.next) <= now {
            self.next += 1;
            Some(self.next - 1)
        } else {
            None
        }
    }

    /// Hands out every message due by `now` at once, as a range of message numbers. Its cost
    /// does not depend on how many are due, so a schedule far ahead of what the machine can
    /// send (the generator is behind) cannot make a loop turn longer and longer.
    pub fn take_due(&mut self, now: Instant) -> Range<u64> {
        let first = self.next;
        if self.due_time(first) > now {
            return first..first;
        }
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        // The estimate is off by a message or so from rounding; settle on the exact boundary.
        let mut end = ((elapsed / self.interval) as u64)
            .saturating_add(1)
            .max(first + 1);
        while end > first + 1 && self.due_time(end - 1) > now {
            end -= 1;
        }
        while self.due_time(end) <= now {
            end += 1;
        }
        self.next = end;
        first..end
    }
}

/// How many of the messages `0..end`, dealt round-robin over `lanes` lanes, fall to `lane`.
#[inline]
pub fn lane_share(end: u64, lane: u64, lanes: u64) -> u64 {
    debug_assert!(lane < lanes);
    (end + (lanes - 1 - lane)) / lanes
}

/// Latency origins of the messages in flight on one connection, oldest first.
#[derive(Debug)]
pub struct InFlight {
    times: Box<[Instant]>,
    head: usize,
    len: usize,
}

impl InFlight {
    /// Room for `cap` messages (the connection's depth), allocated now and never again.
    pub fn new(cap: usize, fill: Instant) -> InFlight {
        InFlight {
            times: vec![fill; cap.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.times.len()
    }

    /// Adds a message; `false` (and nothing stored) when already `cap` are in flight.
    #[inline]
    pub fn push(&mut self, t: Instant) -> bool {
        if self.is_full() {
            return false;
        }
        let i = (self.head + self.len) % self.times.len();
        self.times[i] = t;
        self.len += 1;
        true
    }

    /// Removes the oldest message and returns the time it counts from.
    #[inline]
    pub fn pop(&mut self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let t = self.times[self.head];
        self.head = (self.head + 1) % self.times.len();
        self.len -= 1;
        Some(t)
    }

    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn schedule_hands_out_exactly_the_due_messages() {
        let t0 = Instant::now();
        let mut s = RateSchedule::new(t0, 1000.0);
        let mut got = Vec::new();
        while let Some(k) = s.pop_due(t0 + Duration::from_micros(10_500)) {
            got.push(k);
        }
        // Messages 0..=10 are due by 10.5 ms at 1 per ms.
        assert_eq!(got, (0..=10).collect::<Vec<_>>());
        let (k, due) = s.peek();
        assert_eq!(k, 11);
        assert_eq!(due - t0, Duration::from_millis(11));
    }

    #[test]
    fn schedule_does_not_drift_over_a_long_run() {
        let t0 = Instant::now();
        let s = RateSchedule::new(t0, 3.0);
        let d = s.due_time(3 * 86_400 * 30) - t0;
        assert!(
            d.abs_diff(Duration::from_secs(86_400 * 30)) < Duration::from_micros(1),
            "{d:?}"
        );
    }

    #[test]
    fn a_stall_leaves_the_schedule_behind_not_the_latency() {
        // After a 100 ms stall at 1000/s, 100 messages are due at once and the oldest of them
        // counts from 100 ms ago.
        let t0 = Instant::now();
        let mut s = RateSchedule::new(t0, 1000.0);
        let now = t0 + Duration::from_millis(100);
        let first = s.pop_due(now).unwrap();
        assert_eq!(now - s.due_time(first), Duration::from_millis(100));
        let mut n = 1;
        while s.pop_due(now).is_some() {
            n += 1;
        }
        assert_eq!(n, 101);
    }

    #[test]
    fn absurdly_slow_rates_saturate_instead_of_overflowing() {
        let t0 = Instant::now();
        for rate in [1e-19, 1e-300, 5e-324, 0.0, f64::NAN] {
            let mut s = RateSchedule::new(t0, rate);
            let far = t0 + Duration::from_secs(86_400);
            // Message 0 is due at once, and none after it within a day.
            assert_eq!(s.take_due(far), 0..1, "rate {rate}");
            assert!(s.due_time(u64::MAX) > far, "rate {rate}");
            assert_eq!(s.pop_due(far), None);
        }
    }

    #[test]
    fn take_due_hands_out_the_same_messages_as_pop_due() {
        let t0 = Instant::now();
        for rate in [3.0, 1000.0, 7_777.7, 1e7] {
            let mut a = RateSchedule::new(t0, rate);
            let mut b = a.clone();
            for step_us in [0u64, 1, 10, 333, 1000, 5000, 100_000] {
                let now = t0 + Duration::from_micros(step_us);
                let r = a.take_due(now);
                let mut n = 0;
                while b.pop_due(now).is_some() {
                    n += 1;
                }
                assert_eq!(r.end - r.start, n, "rate {rate} at {step_us} µs");
                assert_eq!(a.peek(), b.peek());
            }
        }
    }

    #[test]
    fn lane_shares_add_up_to_round_robin() {
        for lanes in 1..6u64 {
            for end in 0..40u64 {
                let shares: Vec<u64> = (0..lanes).map(|j| lane_share(end, j, lanes)).collect();
                let want: Vec<u64> = (0..lanes)
                    .map(|j| (0..end).filter(|k| k % lanes == j).count() as u64)
                    .collect();
                assert_eq!(shares, want, "{end} over {lanes}");
            }
        }
    }

    proptest! {
        #[test]
        fn inflight_is_a_bounded_fifo(cap in 1usize..20, ops in proptest::collection::vec(any::<bool>(), 0..200)) {
            let t0 = Instant::now();
            let mut r = InFlight::new(cap, t0);
            let mut model = std::collections::VecDeque::new();
            for (i, push) in ops.into_iter().enumerate() {
                let t = t0 + Duration::from_nanos(i as u64);
                if push {
                    let ok = r.push(t);
                    prop_assert_eq!(ok, model.len() < cap);
                    if ok { model.push_back(t); }
                } else {
                    prop_assert_eq!(r.pop(), model.pop_front());
                }
                prop_assert_eq!(r.len(), model.len());
            }
        }
    }
}

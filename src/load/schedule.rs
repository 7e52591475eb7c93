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

use std::time::{Duration, Instant};

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
        RateSchedule {
            start,
            interval: 1.0 / rate,
            next: 0,
        }
    }

    /// The due time of message `k`.
    #[inline]
    pub fn due_time(&self, k: u64) -> Instant {
        // f64 keeps nanosecond precision for ~100 days of schedule, far past any run.
        self.start + Duration::from_secs_f64(k as f64 * self.interval)
    }

    /// The next message not yet handed out, and its due time.
    pub fn peek(&self) -> (u64, Instant) {
        (self.next, self.due_time(self.next))
    }

    /// Hands out the next message if it is due at `now`.
    #[inline]
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        if self.due_time(self.next) <= now {
            self.next += 1;
            Some(self.next - 1)
        } else {
            None
        }
    }
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

//! The server's counters: plain integers owned by the single reactor thread (no atomics on the hot
//! path), logged on an interval and at exit, returned to whoever ran the reactor.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Everything the reactor counts. Serialisable, so that a worker can report its counters to the
/// supervisor (`--workers`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// TCP connections accepted and served.
    pub accepted: u64,
    /// TCP connections open right now.
    pub active: u64,
    /// Connections accepted and closed at once because `--max-connections` was reached (with
    /// `--workers`: because every worker had reached it).
    pub refused: u64,
    /// Connections accepted at `--max-connections` and passed to a sibling worker with room
    /// (`--workers`); the sibling counts them as accepted.
    pub handed_off: u64,
    /// Connections moved to a new-generation worker by a reload's hand-over (`--workers`),
    /// and connections taken over from an old one; neither counts as accepted or closed.
    pub moved_out: u64,
    pub moved_in: u64,
    /// Connections the peer (or the path to it) ended abnormally: reset, broken pipe, timed out.
    pub reset: u64,
    /// Connections ended by an error on this side (out of memory or buffers, ...), logged at warn.
    pub errors: u64,
    /// Connections closed by the idle timeout.
    pub idle_closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Replies dropped: the send queue was full, or the send failed.
    pub datagrams_dropped: u64,
    /// Datagrams not answered: the reflection guard (privileged port, broadcast, ...) or the
    /// per-source reply budget.
    pub datagrams_ignored: u64,
    /// Output owed to clients right now, all connections together.
    pub pending_bytes: u64,
    /// Times the pending-output ceiling (`--max-pending-total`) was reached.
    pub ceiling_reached: u64,
    /// Events whose token named nothing the reactor registered (ignored).
    pub unknown_events: u64,
    /// Episodes of accepting paused for want of descriptors or memory (EMFILE and the like).
    pub accept_pauses: u64,
    /// Time spent in those episodes, in nanoseconds.
    pub accept_paused_ns: u64,
    /// Metrics requests answered (`--metrics`).
    pub scrapes: u64,
    /// PROXY headers read from trusted sources (`--proxy-protocol`).
    pub proxy_headers: u64,
    /// Connections from trusted sources closed for a missing, malformed, oversized, truncated
    /// or late PROXY header.
    pub proxy_rejected: u64,
}

impl Stats {
    /// Adds `other` to these counters: the totals over several workers. Gauges (`active`,
    /// `pending_bytes`) add up too, which is right for workers serving at the same time.
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            accepted,
            active,
            refused,
            handed_off,
            moved_out,
            moved_in,
            reset,
            errors,
            idle_closed,
            bytes_in,
            bytes_out,
            datagrams_in,
            datagrams_out,
            datagrams_dropped,
            datagrams_ignored,
            pending_bytes,
            ceiling_reached,
            unknown_events,
            accept_pauses,
            accept_paused_ns,
            scrapes,
            proxy_headers,
            proxy_rejected,
        } = other;
        // Destructured, so that a new counter cannot be forgotten here.
        self.accepted += accepted;
        self.active += active;
        self.refused += refused;
        self.handed_off += handed_off;
        self.moved_out += moved_out;
        self.moved_in += moved_in;
        self.reset += reset;
        self.errors += errors;
        self.idle_closed += idle_closed;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.datagrams_in += datagrams_in;
        self.datagrams_out += datagrams_out;
        self.datagrams_dropped += datagrams_dropped;
        self.datagrams_ignored += datagrams_ignored;
        self.pending_bytes += pending_bytes;
        self.ceiling_reached += ceiling_reached;
        self.unknown_events += unknown_events;
        self.accept_pauses += accept_pauses;
        self.accept_paused_ns += accept_paused_ns;
        self.scrapes += scrapes;
        self.proxy_headers += proxy_headers;
        self.proxy_rejected += proxy_rejected;
    }
}

/// When the periodic counters line is due, and the counters at the last one, for its rates.
pub(crate) struct StatsLog {
    every: Option<Duration>,
    next: Option<Instant>,
    last: Stats,
    last_at: Instant,
}

impl StatsLog {
    pub(crate) fn new(every: Option<Duration>, now: Instant) -> StatsLog {
        StatsLog {
            every,
            next: every.and_then(|e| now.checked_add(e)),
            last: Stats::default(),
            last_at: now,
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// If a line is due at `now`: the rates since the last one (the next one is scheduled).
    pub(crate) fn due(&mut self, now: Instant, stats: &Stats) -> Option<Rates> {
        match (self.next, self.every) {
            (Some(t), Some(every)) if now >= t => {
                self.next = now.checked_add(every);
                let rates = Rates::between(&self.last, stats, now - self.last_at);
                self.last = stats.clone();
                self.last_at = now;
                Some(rates)
            }
            _ => None,
        }
    }
}

/// Per-second rates over one stats interval, for the line beside the totals:
/// `over 10.0s: accepted/s=12.0 bytes_in/s=... bytes_out/s=... datagrams_in/s=... datagrams_out/s=...`
/// (the names carry `/s` so that they are never mistaken for the totals of the same name).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    pub(crate) secs: f64,
    pub(crate) accepted: f64,
    pub(crate) bytes_in: f64,
    pub(crate) bytes_out: f64,
    pub(crate) datagrams_in: f64,
    pub(crate) datagrams_out: f64,
}

impl Rates {
    pub(crate) fn between(before: &Stats, after: &Stats, elapsed: Duration) -> Rates {
        // An interval is at least 100 ms (the flag's floor); guard the division all the same.
        let secs = elapsed.as_secs_f64();
        let per_sec = |a: u64, b: u64| {
            if secs > 0.0 {
                b.saturating_sub(a) as f64 / secs
            } else {
                0.0
            }
        };
        Rates {
            secs,
            accepted: per_sec(before.accepted, after.accepted),
            bytes_in: per_sec(before.bytes_in, after.bytes_in),
            bytes_out: per_sec(before.bytes_out, after.bytes_out),
            datagrams_in: per_sec(before.datagrams_in, after.datagrams_in),
            datagrams_out: per_sec(before.datagrams_out, after.datagrams_out),
        }
    }
}

impl fmt::Display for Rates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "over {:.1}s: accepted/s={:.1} bytes_in/s={:.0} bytes_out/s={:.0} datagrams_in/s={:.1} \
             datagrams_out/s={:.1}",
            self.secs,
            self.accepted,
            self.bytes_in,
            self.bytes_out,
            self.datagrams_in,
            self.datagrams_out,
        )
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp: active={} accepted={} refused={} handed_off={} moved_out={} moved_in={} reset={} errors={} idle_closed={} bytes_in={} bytes_out={} \
             pending={} ceiling_reached={} proxy_headers={} proxy_rejected={}; udp: in={} out={} \
             dropped={} ignored={}",
            self.active,
            self.accepted,
            self.refused,
            self.handed_off,
            self.moved_out,
            self.moved_in,
            self.reset,
            self.errors,
            self.idle_closed,
            self.bytes_in,
            self.bytes_out,
            self.pending_bytes,
            self.ceiling_reached,
            self.proxy_headers,
            self.proxy_rejected,
            self.datagrams_in,
            self.datagrams_out,
            self.datagrams_dropped,
            self.datagrams_ignored,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stats_line_carries_the_rates_since_the_last_one() {
        let t0 = Instant::now();
        let mut log = StatsLog::new(Some(Duration::from_secs(2)), t0);
        let mut s = Stats::default();
        assert_eq!(log.due(t0 + Duration::from_secs(1), &s), None, "not yet");
        s.accepted = 10;
        s.bytes_in = 4000;
        s.bytes_out = 3000;
        s.datagrams_in = 20;
        s.datagrams_out = 18;
        let r = log.due(t0 + Duration::from_secs(2), &s).expect("due");
        assert_eq!(
            r.to_string(),
            "over 2.0s: accepted/s=5.0 bytes_in/s=2000 bytes_out/s=1500 datagrams_in/s=10.0 \
             datagrams_out/s=9.0"
        );
        // The next interval counts only what happened in it.
        s.accepted = 14;
        let r = log.due(t0 + Duration::from_secs(4), &s).expect("due");
        assert_eq!((r.accepted, r.bytes_in), (2.0, 0.0));
    }
}

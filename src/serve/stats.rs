//! The server's counters: plain integers owned by the single reactor thread (no atomics on the hot
//! path), logged on an interval and at exit, returned to whoever ran the reactor.

use std::fmt;
use std::time::{Duration, Instant};

/// Everything the reactor counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted and served.
    pub accepted: u64,
    /// TCP connections open right now.
    pub active: u64,
    /// Connections accepted and closed at once because `--max-connections` was reached.
    pub refused: u64,
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
}

/// When the periodic counters line is due.
pub(crate) struct StatsLog {
    every: Option<Duration>,
    next: Option<Instant>,
}

impl StatsLog {
    pub(crate) fn new(every: Option<Duration>, now: Instant) -> StatsLog {
        StatsLog {
            every,
            next: every.and_then(|e| now.checked_add(e)),
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a line is due at `now`; if so the next one is scheduled.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        match (self.next, self.every) {
            (Some(t), Some(every)) if now >= t => {
                self.next = now.checked_add(every);
                true
            }
            _ => false,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp: active={} accepted={} refused={} reset={} errors={} idle_closed={} bytes_in={} bytes_out={} \
             pending={} ceiling_reached={}; udp: in={} out={} dropped={} ignored={}",
            self.active,
            self.accepted,
            self.refused,
            self.reset,
            self.errors,
            self.idle_closed,
            self.bytes_in,
            self.bytes_out,
            self.pending_bytes,
            self.ceiling_reached,
            self.datagrams_in,
            self.datagrams_out,
            self.datagrams_dropped,
            self.datagrams_ignored,
        )
    }
}

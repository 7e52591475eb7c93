//! The server's counters: plain integers owned by the single reactor thread (no atomics on the hot
//! path), logged on an interval and at exit, returned to whoever ran the reactor.

use std::fmt;

/// Everything the reactor counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted and served.
    pub accepted: u64,
    /// TCP connections open right now.
    pub active: u64,
    /// Connections accepted and closed at once because `--max-connections` was reached.
    pub refused: u64,
    /// Connections that ended with a reset, broken pipe or other socket error.
    pub reset: u64,
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
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp: active={} accepted={} refused={} reset={} idle_closed={} bytes_in={} bytes_out={} \
             pending={} ceiling_reached={}; udp: in={} out={} dropped={} ignored={}",
            self.active,
            self.accepted,
            self.refused,
            self.reset,
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

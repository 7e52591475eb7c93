//! What the log lines need and serving does not: the per-connection record behind the debug close
//! line, which UDP sources get a "not answering" line (the rate itself is a `throttle`), and
//! counts that read right.
//!
//! Serving never depends on anything here. The connection record ([`ConnLog`]) is a side table
//! indexed by slab key, as the idle timeout's stamps are (`timer.rs`), and it exists only when
//! debug logging is enabled at start: without it a connection stays 16 bytes in the slab, nothing
//! here is allocated, and the hot path pays one branch on an `Option`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::Moved;
use super::proxy::HeaderError;
use super::throttle::Throttle;

/// `n` and a noun, plural unless `n` is 1: "1 connection", "2 connections", "0 bytes".
pub(crate) struct Count(pub(crate) u64, pub(crate) &'static str);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} {}{s}", self.0, self.1)
    }
}

/// What the debug log knows of one open connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnMeta {
    /// Unique for the life of the process (the slab key is reused as soon as a connection
    /// closes, so it cannot tell two connections apart in a log).
    pub(crate) id: u64,
    /// As `accept` gave it: after a reset `getpeername` fails, and the close line still needs it.
    pub(crate) peer: SocketAddr,
    /// The balancer it came through, when a PROXY header named the client (then `peer` is the
    /// client).
    pub(crate) via: Option<SocketAddr>,
    pub(crate) since: Instant,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// The side table of [`ConnMeta`], indexed by slab key; only built when debug logging is on.
pub(crate) struct ConnLog {
    next_id: u64,
    meta: Vec<Option<ConnMeta>>,
    /// Trace logging was on at start too: log every turn of every connection.
    pub(crate) trace: bool,
}

impl ConnLog {
    pub(crate) fn new(trace: bool) -> ConnLog {
        ConnLog {
            next_id: 0,
            meta: Vec::new(),
            trace,
        }
    }

    /// Records a connection accepted at slab key `key`; returns its id.
    pub(crate) fn opened(&mut self, key: usize, peer: SocketAddr, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.meta.len() <= key {
            self.meta.resize(key + 1, None);
        }
        self.meta[key] = Some(ConnMeta {
            id,
            peer,
            via: None,
            since: now,
            bytes_in: 0,
            bytes_out: 0,
        });
        id
    }

    /// Records a connection moved in from another process at slab key `key`, as it was known
    /// there: its id goes on (ids are per process, as the log lines' worker tag says), and
    /// this process's later ones follow it.
    pub(crate) fn resumed(&mut self, key: usize, meta: ConnMeta) {
        self.next_id = self.next_id.max(meta.id + 1);
        if self.meta.len() <= key {
            self.meta.resize(key + 1, None);
        }
        self.meta[key] = Some(meta);
    }

    pub(crate) fn moved(&mut self, key: usize, moved: Moved) {
        if let Some(Some(m)) = self.meta.get_mut(key) {
            m.bytes_in += moved.read as u64;
            m.bytes_out += moved.written as u64;
        }
    }

    /// A PROXY header named connection `key`'s real client.
    pub(crate) fn proxied(&mut self, key: usize, client: SocketAddr) -> Option<&ConnMeta> {
        let m = self.meta.get_mut(key)?.as_mut()?;
        m.via = Some(m.peer);
        m.peer = client;
        Some(m)
    }

    pub(crate) fn get(&self, key: usize) -> Option<&ConnMeta> {
        self.meta.get(key).and_then(Option::as_ref)
    }

    /// Forgets connection `key` and returns what was known of it.
    pub(crate) fn closed(&mut self, key: usize) -> Option<ConnMeta> {
        self.meta.get_mut(key).and_then(Option::take)
    }
}

/// Why a connection closed, as its close line says it.
pub(crate) enum Reason<'a> {
    /// The peer half-closed and got everything it was owed.
    ByPeer,
    /// The server was draining and the connection had nothing owed and nothing unread.
    Drained,
    Reset(&'a io::Error),
    Idle,
    DrainTimeout,
    Local(&'a io::Error),
    BadHeader(&'a HeaderError),
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ByPeer => f.write_str("closed by peer"),
            Reason::Drained => f.write_str("closed at shutdown, nothing owed"),
            Reason::Reset(e) => write!(f, "reset by peer ({e})"),
            Reason::Idle => f.write_str("idle timeout"),
            Reason::DrainTimeout => f.write_str("drain timeout"),
            Reason::Local(e) => write!(f, "local error: {e}"),
            Reason::BadHeader(e) => write!(f, "{e}"),
        }
    }
}

/// `conn 17 127.0.0.1:58236 closed: closed by peer; lived 1.204s, 5 bytes in, 5 bytes out`.
pub(crate) struct CloseLine<'a> {
    pub(crate) meta: &'a ConnMeta,
    pub(crate) reason: Reason<'a>,
    pub(crate) now: Instant,
}

impl fmt::Display for CloseLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.meta;
        write!(
            f,
            "conn {} {}{} closed: {}; lived {:.3}s, {} in, {} out",
            m.id,
            m.peer,
            Via(m.via),
            self.reason,
            self.now.saturating_duration_since(m.since).as_secs_f64(),
            Count(m.bytes_in, "byte"),
            Count(m.bytes_out, "byte"),
        )
    }
}

/// ` via 127.0.0.1:40312` after a proxied client's address, nothing otherwise.
pub(crate) struct Via(pub(crate) Option<SocketAddr>);

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, " via {a}"),
            None => Ok(()),
        }
    }
}

/// A peer address that may be unknown, shown as an address or as `unknown peer`, never as
/// `Some(..)` / `None`.
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("unknown peer"),
        }
    }
}

/// A source is named in a "not answering" line at most this often.
pub(crate) const IGNORED_LOG_EVERY: Duration = Duration::from_secs(60);
/// At most this many "not answering" lines a second in all, whatever the number of sources (a
/// flood of spoofed sources must not become a flood of log).
pub(crate) const IGNORED_LINES_PER_SEC: u32 = 10;
/// Most sources remembered (~50 B each with the map's overhead). A source that finds the table
/// full of sources named within the minute is not logged: the counters still count it.
pub(crate) const IGNORED_SOURCES_MAX: usize = 4096;
/// Sweeping a full table is O(n): at most once a second.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Decides which ignored datagrams get a log line: once per source a minute, a few a second in
/// all, in bounded memory.
pub(crate) struct SourceLog {
    logged_at: HashMap<SocketAddr, Instant>,
    /// The cap on lines a second over all sources.
    lines: Throttle,
    swept_at: Option<Instant>,
}

impl SourceLog {
    pub(crate) fn new() -> SourceLog {
        SourceLog {
            logged_at: HashMap::new(),
            lines: Throttle::new(IGNORED_LINES_PER_SEC, Duration::from_secs(1)),
            swept_at: None,
        }
    }

    /// Whether a datagram ignored from `src` at `now` should be logged; if so it is remembered.
    pub(crate) fn should_log(&mut self, src: SocketAddr, now: Instant) -> bool {
        let known = match self.logged_at.get(&src) {
            Some(&t) if now.saturating_duration_since(t) < IGNORED_LOG_EVERY => return false,
            Some(_) => true,
            None => false,
        };
        if !known && self.logged_at.len() >= IGNORED_SOURCES_MAX {
            if self
                .swept_at
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
            {
                self.swept_at = Some(now);
                self.logged_at
                    .retain(|_, t| now.saturating_duration_since(*t) < IGNORED_LOG_EVERY);
            }
            if self.logged_at.len() >= IGNORED_SOURCES_MAX {
                return false;
            }
        }
        // The lines do not say how many datagrams they stand for: the counter does.
        if self.lines.event(now).is_none() {
            return false;
        }
        self.logged_at.insert(src, now);
        true
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.logged_at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((u32::to_be_bytes(0x0a00_0000 + i), 5000))
    }

    #[test]
    fn counts_are_singular_for_one_and_plural_otherwise() {
        assert_eq!(Count(1, "connection").to_string(), "1 connection");
        assert_eq!(Count(2, "connection").to_string(), "2 connections");
        assert_eq!(Count(0, "byte").to_string(), "0 bytes");
    }

    #[test]
    fn ids_are_unique_although_slab_keys_are_reused() {
        let mut log = ConnLog::new(false);
        let t = Instant::now();
        let a = log.opened(0, addr(1), t);
        log.closed(0);
        let b = log.opened(0, addr(2), t);
        assert_ne!(a, b);
        assert_eq!(log.get(0).map(|m| m.peer), Some(addr(2)));
    }

    #[test]
    fn a_close_line_says_who_why_how_long_and_how_many_bytes() {
        let mut log = ConnLog::new(false);
        let t = Instant::now();
        let id = log.opened(3, "127.0.0.1:58236".parse().unwrap(), t);
        log.moved(
            3,
            Moved {
                read: 1,
                written: 7,
            },
        );
        let meta = log.closed(3).unwrap();
        let e = io::Error::from_raw_os_error(libc::ENOBUFS);
        let line = CloseLine {
            meta: &meta,
            reason: Reason::Local(&e),
            now: t + Duration::from_millis(1500),
        }
        .to_string();
        assert!(
            line.starts_with(&format!("conn {id} 127.0.0.1:58236 closed: local error: ")),
            "{line}"
        );
        assert!(
            line.ends_with("; lived 1.500s, 1 byte in, 7 bytes out"),
            "{line}"
        );
        assert_eq!(Peer(None).to_string(), "unknown peer");
    }

    #[test]
    fn an_ignored_source_is_logged_once_a_minute() {
        let mut log = SourceLog::new();
        let t = Instant::now();
        assert!(log.should_log(addr(1), t));
        assert!(!log.should_log(addr(1), t + Duration::from_secs(59)));
        assert!(log.should_log(addr(2), t + Duration::from_secs(59)));
        assert!(log.should_log(addr(1), t + Duration::from_secs(60)));
    }

    #[test]
    fn ignored_lines_are_capped_per_second_over_all_sources() {
        let mut log = SourceLog::new();
        let t = Instant::now();
        let logged = (0..100).filter(|&i| log.should_log(addr(i), t)).count();
        assert_eq!(logged, IGNORED_LINES_PER_SEC as usize);
        assert!(log.should_log(addr(500), t + Duration::from_secs(1)));
    }

    #[test]
    fn the_ignored_source_table_is_bounded() {
        let mut log = SourceLog::new();
        let t = Instant::now();
        // A table full of sources all named within the last minute.
        for i in 0..IGNORED_SOURCES_MAX as u32 {
            log.logged_at.insert(addr(i), t);
        }
        let newcomer = addr(1 << 20);
        assert!(
            !log.should_log(newcomer, t + Duration::from_secs(2)),
            "no room: not logged"
        );
        assert_eq!(log.tracked(), IGNORED_SOURCES_MAX);
        // A minute on, the old entries are swept and there is room again.
        assert!(log.should_log(newcomer, t + IGNORED_LOG_EVERY));
        assert_eq!(log.tracked(), 1);
    }
}

//! Counting: what each worker measures, and how workers publish progress.
//!
//! A worker owns its [`Counts`] outright (no sharing on the hot path) and hands them back when it
//! ends; the main thread merges them (with `--processes`, each process's merged counts cross a
//! pipe to the parent, which merges them again). The once-a-second figures (progress line, the
//! report's `series`, the interval log) come from the intervals of `interval`, not from here; the
//! report built from the counts is `report`'s.
//!
//! Errors are classified from [`crate::io_outcome::classify`], the crate's one classifier, and
//! then split the finer way a load report needs (refused, reset, timed out, out of ports).

use std::io;
use std::sync::atomic::AtomicBool;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::hist::new_hist;
use super::payload::Mismatch;
use crate::io_outcome::{Class, classify};

/// How an error is counted in the report: a small set of classes, decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// The server refused the connection (or, UDP, an ICMP port unreachable came back).
    Refused,
    /// The peer or the path failed: reset, broken pipe, unreachable.
    Reset,
    Timeout,
    /// The server closed (FIN) a connection the generator was still using.
    Closed,
    /// No local port or address left (EADDRNOTAVAIL): spread over more `--source` addresses.
    NoPorts,
    /// This side failed: out of memory, buffers or descriptors, the poll, a thread.
    Local,
    /// The server broke the protocol in a way that ends the connection (unsolicited bytes).
    Other,
}

impl ErrorClass {
    /// Classifies an I/O error from connect, read, write, send or recv: the crate's
    /// [`classify`] says whose failure it was, and only its peer failures are split further.
    pub(crate) fn of(e: &io::Error) -> ErrorClass {
        use io::ErrorKind as K;
        match classify(e) {
            Class::PeerReset => match e.kind() {
                K::ConnectionRefused => ErrorClass::Refused,
                K::TimedOut => ErrorClass::Timeout,
                _ => ErrorClass::Reset,
            },
            Class::PeerClosed => ErrorClass::Closed,
            Class::Local => match e.kind() {
                K::AddrNotAvailable | K::AddrInUse => ErrorClass::NoPorts,
                _ => ErrorClass::Local,
            },
            // Callers retry or wait on these and never count them; were one counted, it would
            // be this side's doing.
            Class::WouldBlock | Class::Interrupted => ErrorClass::Local,
        }
    }
}

/// Error counts by class.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub closed: u64,
    pub no_ports: u64,
    /// This side's own failures (out of buffers or descriptors, the poll), told apart from the
    /// peer's.
    pub local: u64,
    pub other: u64,
    /// The first error seen, as text, so a summary can say what went wrong.
    pub first: Option<String>,
}

impl ErrorCounts {
    pub(crate) fn count(&mut self, class: ErrorClass, what: impl FnOnce() -> String) {
        self.total += 1;
        *match class {
            ErrorClass::Refused => &mut self.refused,
            ErrorClass::Reset => &mut self.reset,
            ErrorClass::Timeout => &mut self.timeout,
            ErrorClass::Closed => &mut self.closed,
            ErrorClass::NoPorts => &mut self.no_ports,
            ErrorClass::Local => &mut self.local,
            ErrorClass::Other => &mut self.other,
        } += 1;
        if self.first.is_none() {
            self.first = Some(what());
        }
    }

    pub(crate) fn merge(&mut self, o: &ErrorCounts) {
        self.total += o.total;
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.closed += o.closed;
        self.no_ports += o.no_ports;
        self.local += o.local;
        self.other += o.other;
        if self.first.is_none() {
            self.first.clone_from(&o.first);
        }
    }
}

/// Errors by kind in one interval: the kinds a disturbance shows as (a server going away
/// refuses, a killed one resets, a draining one closes, a stalled one times out), and the rest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorKinds {
    pub refused: u64,
    pub reset: u64,
    pub closed: u64,
    pub timeout: u64,
    /// No ports, local failures, protocol breaches.
    pub other: u64,
}

impl ErrorKinds {
    /// The kinds counted in `now` since `then` (two readings of one worker's counts).
    pub(crate) fn since(now: &ErrorCounts, then: &ErrorKinds, then_total: u64) -> ErrorKinds {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let refused = d(now.refused, then.refused);
        let reset = d(now.reset, then.reset);
        let closed = d(now.closed, then.closed);
        let timeout = d(now.timeout, then.timeout);
        let total = d(now.total, then_total);
        ErrorKinds {
            refused,
            reset,
            closed,
            timeout,
            other: total.saturating_sub(refused + reset + closed + timeout),
        }
    }

    /// The four named kinds as they stand in `e` (`other` is left out: it is derived).
    pub(crate) fn reading(e: &ErrorCounts) -> ErrorKinds {
        ErrorKinds {
            refused: e.refused,
            reset: e.reset,
            closed: e.closed,
            timeout: e.timeout,
            other: 0,
        }
    }

    pub(crate) fn add(&mut self, o: &ErrorKinds) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.closed += o.closed;
        self.timeout += o.timeout;
        self.other += o.other;
    }

    /// `refused 2, reset 1`: the kinds that are not zero.
    pub(crate) fn text(&self) -> String {
        [
            ("refused", self.refused),
            ("reset", self.reset),
            ("closed", self.closed),
            ("timeout", self.timeout),
            ("other", self.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// What one worker measured inside the measurement window (errors and mismatches: always, since
/// a wrong byte during warm-up is just as wrong).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Counts {
    pub msgs: u64,
    pub bytes: u64,
    /// The window's latencies: the sum of the worker's measured intervals.
    #[serde(with = "super::hlog::serde_hist")]
    pub hist: Histogram<u64>,
    pub errors: ErrorCounts,
    pub mismatched_bytes: u64,
    pub mismatch_events: u64,
    pub first_mismatch: Option<String>,
    /// UDP datagrams with no reply within `--timeout`.
    pub losses: u64,
    /// UDP replies that came after their datagram was counted lost.
    pub late: u64,
    /// UDP replies to a datagram that had already been answered.
    pub duplicates: u64,
    /// Connections that completed their handshake (all modes; churn's unit of work).
    pub connects: u64,
    /// hold: connections open when the hold ended, and how many of them answered.
    pub held: u64,
    pub answered: u64,
}

impl Counts {
    pub(crate) fn new() -> Counts {
        Counts {
            msgs: 0,
            bytes: 0,
            // Three significant figures from 1 ns to a minute: ~0.2 MiB, once per worker.
            hist: new_hist(),
            errors: ErrorCounts::default(),
            mismatched_bytes: 0,
            mismatch_events: 0,
            first_mismatch: None,
            losses: 0,
            late: 0,
            duplicates: 0,
            connects: 0,
            held: 0,
            answered: 0,
        }
    }

    /// Records a reply that is wrong as a whole rather than in its bytes (its length, its
    /// header, more bytes than were sent); `what` says so in full.
    pub(crate) fn wrong_reply(&mut self, wrong_bytes: u64, what: impl FnOnce() -> String) {
        self.mismatch_events += 1;
        self.mismatched_bytes += wrong_bytes;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(what());
        }
    }

    /// Records a wrong reply; `what` names the connection or socket.
    pub(crate) fn mismatch(&mut self, m: Mismatch, what: impl FnOnce() -> String) {
        self.mismatch_events += 1;
        self.mismatched_bytes += m.wrong_bytes;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "{}: reply byte {} is {:#04x} {}, expected {:#04x} {} ({} wrong bytes in that read)",
                what(),
                m.offset,
                m.got,
                show(m.got),
                m.expected,
                show(m.expected),
                m.wrong_bytes
            ));
        }
    }

    pub(crate) fn merge(&mut self, o: &Counts) {
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&o.hist);
        self.errors.merge(&o.errors);
        self.mismatched_bytes += o.mismatched_bytes;
        self.mismatch_events += o.mismatch_events;
        if self.first_mismatch.is_none() {
            self.first_mismatch.clone_from(&o.first_mismatch);
        }
        self.losses += o.losses;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.connects += o.connects;
        self.held += o.held;
        self.answered += o.answered;
    }
}

impl Default for Counts {
    fn default() -> Self {
        Counts::new()
    }
}

/// A byte as it would be typed, for messages.
fn show(b: u8) -> String {
    format!("{:?}", b as char)
}

/// What a worker tells the main thread between intervals.
#[derive(Default)]
pub(crate) struct Live {
    /// Set once the worker has stopped opening connections (hold waits for every worker's).
    pub ready: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_once() {
        use io::ErrorKind as K;
        let c = |k: K| ErrorClass::of(&io::Error::from(k));
        assert_eq!(c(K::ConnectionRefused), ErrorClass::Refused);
        assert_eq!(c(K::ConnectionReset), ErrorClass::Reset);
        assert_eq!(c(K::BrokenPipe), ErrorClass::Reset);
        assert_eq!(c(K::TimedOut), ErrorClass::Timeout);
        assert_eq!(c(K::AddrNotAvailable), ErrorClass::NoPorts);
        // Peer and path failures are the peer's; everything else is this side's, never "other".
        assert_eq!(c(K::HostUnreachable), ErrorClass::Reset);
        assert_eq!(c(K::WriteZero), ErrorClass::Closed);
        assert_eq!(c(K::PermissionDenied), ErrorClass::Local);
        let os = |code| ErrorClass::of(&io::Error::from_raw_os_error(code));
        assert_eq!(os(libc::ENOBUFS), ErrorClass::Local);
        assert_eq!(os(libc::EMFILE), ErrorClass::Local);
        assert_eq!(os(libc::ECONNREFUSED), ErrorClass::Refused);
        let mut e = ErrorCounts::default();
        e.count(ErrorClass::Reset, || "first".into());
        e.count(ErrorClass::Refused, || "second".into());
        assert_eq!((e.total, e.reset, e.refused), (2, 1, 1));
        assert_eq!(e.first.as_deref(), Some("first"));
    }
}

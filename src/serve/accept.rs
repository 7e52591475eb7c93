//! The acceptor: the listeners, and when to accept from them.
//!
//! It owns the accept budget per turn, the pause when the process runs out of descriptors (or the
//! kernel out of memory), its back-off and the early resume when a connection closes, and the
//! rate-limited log of refusals at `--max-connections`. Whether there is room for a connection is
//! the caller's to say; what the acceptor decides is only *whether to call accept now*.
//!
//! ```text
//!   Idle ──listener readable──▶ Owed ──accept until WouldBlock──▶ Idle
//!                                │ └─ budget spent ─▶ Owed (next turn)
//!                                └─ EMFILE/ENFILE/ENOBUFS/ENOMEM ─▶ Paused
//!   Paused ──a connection closed, or the back-off ran out──▶ Owed
//! ```
//!
//! An edge-triggered listener does not announce connections that were queued while accepting was
//! paused, so resuming always sets `Owed` by itself.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, trace, warn};

use super::logs::Count;
use super::stats::Stats;
use super::throttle::{Episode, Throttle};
use crate::io_outcome::{is_exhausted, is_would_block, retrying};

/// Connections accepted per listener per turn before the others get theirs (a connect flood must
/// not starve established clients).
const ACCEPT_BUDGET: usize = 256;
/// How long accepting pauses when the process is out of descriptors (or the kernel out of memory)
/// and no connection has closed meanwhile.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Refusals are logged at most this often, with the number since the last line; those that wait
/// are logged when the second is up (or at shutdown), so the lines add up to the counter.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// A listening socket, as the acceptor needs it: real ones are mio listeners; tests script one.
pub(crate) trait Listen {
    type Stream;
    fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)>;
}

impl Listen for mio::net::TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        mio::net::TcpListener::accept(self)
    }
}

pub(crate) struct Acceptor<L: Listen> {
    pub(crate) listeners: Vec<L>,
    /// A listener may have connections waiting.
    owed: bool,
    paused_until: Option<Instant>,
    /// Out of descriptors since the last successful accept (logged once per episode), and the
    /// episodes and time before the current one.
    starved: Episode,
    pauses: u64,
    paused: Duration,
    /// This turn: the listener being drained and how many it has given.
    cursor: usize,
    taken: usize,
    /// Refusals' lines (each says the refusals since the last one and the running total).
    refused_log: Throttle,
    /// The connection limit at the last refusal, for the line that reports it later.
    refused_limit: usize,
}

impl<L: Listen> Acceptor<L> {
    pub(crate) fn new(listeners: Vec<L>) -> Acceptor<L> {
        Acceptor {
            listeners,
            owed: true,
            paused_until: None,
            starved: Episode::default(),
            pauses: 0,
            paused: Duration::ZERO,
            cursor: 0,
            taken: 0,
            refused_log: Throttle::new(1, REFUSAL_LOG_EVERY),
            refused_limit: 0,
        }
    }

    /// A listener reported readiness.
    pub(crate) fn on_ready(&mut self) {
        self.owed = true;
    }

    /// Whether accepting should run this turn.
    pub(crate) fn due(&self) -> bool {
        self.owed && self.paused_until.is_none() && !self.listeners.is_empty()
    }

    /// When the back-off ends, if paused.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    pub(crate) fn on_timer(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
            self.owed = true;
        }
        if let Some(n) = self.refused_log.take_due(now) {
            self.log_refusals(n);
        }
    }

    /// When refusals not yet logged are due for their line, if any wait.
    pub(crate) fn refusals_due(&self) -> Option<Instant> {
        self.refused_log.due()
    }

    /// A connection closed: if accepting paused for want of descriptors, one is free again, so
    /// there is no need to wait out the back-off.
    pub(crate) fn on_close(&mut self) {
        if self.starved.since().is_some() && self.paused_until.is_some() {
            self.paused_until = None;
            self.owed = true;
        }
    }

    /// Starvation episodes so far, and the time they took (the current one up to `now`).
    pub(crate) fn pauses(&self, now: Instant) -> (u64, Duration) {
        let current = self
            .starved
            .since()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        (self.pauses, self.paused + current)
    }

    /// Starts a turn of accepting.
    pub(crate) fn begin_turn(&mut self) {
        self.owed = false;
        self.cursor = 0;
        self.taken = 0;
    }

    /// The next connection of this turn, or `None` when the turn is over: every listener said
    /// `WouldBlock`, a budget ran out (then the acceptor stays owed), or accepting paused.
    pub(crate) fn next(&mut self, now: Instant, open: usize) -> Option<(L::Stream, SocketAddr)> {
        while self.cursor < self.listeners.len() && self.paused_until.is_none() {
            if self.taken == ACCEPT_BUDGET {
                // Budget spent with connections possibly still queued: come back next turn.
                self.owed = true;
                self.cursor += 1;
                self.taken = 0;
                continue;
            }
            match retrying(|| self.listeners[self.cursor].accept()) {
                Ok(accepted) => {
                    trace!("listener {}: accepted {}", self.cursor, accepted.1);
                    self.taken += 1;
                    if let Some(t) = self.starved.end() {
                        self.paused += now.saturating_duration_since(t);
                        info!(
                            "accepting again ({} open)",
                            Count(open as u64, "connection")
                        );
                    }
                    return Some(accepted);
                }
                Err(e) if is_would_block(&e) => {
                    self.cursor += 1;
                    self.taken = 0;
                }
                Err(e) if is_exhausted(&e) => {
                    if self.starved.start(now) {
                        self.pauses += 1;
                        warn!(
                            "accept: {e}; pausing accepts until a connection closes ({} open)",
                            Count(open as u64, "connection")
                        );
                    }
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                }
                // The client gave up between SYN and accept: nothing to serve.
                Err(e) if is_aborted_handshake(&e) => self.taken += 1,
                Err(e) => {
                    warn!("accept: {e}");
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                }
            }
        }
        None
    }

    /// Counts a connection closed at once for want of room, and logs refusals at most once a
    /// second, with their number since the last line.
    pub(crate) fn refuse(
        &mut self,
        peer: SocketAddr,
        limit: usize,
        now: Instant,
        stats: &mut Stats,
    ) {
        stats.refused += 1;
        self.refused_limit = limit;
        trace!("refused {peer}: connection limit");
        if let Some(n) = self.refused_log.event(now) {
            self.log_refusals(n);
        }
    }

    /// One line for the `n` refusals since the last one, with the running total.
    fn log_refusals(&self, n: u64) {
        warn!(
            "connection limit ({}) reached: refused {} ({} since start)",
            self.refused_limit,
            Count(n, "connection"),
            self.refused_log.reported()
        );
    }

    /// Stops accepting for good (shutdown): the listeners are handed back to be closed.
    pub(crate) fn close(&mut self) -> Vec<L> {
        // No refusal can follow: whatever waits for its line gets it now.
        if let Some(n) = self.refused_log.take_rest() {
            self.log_refusals(n);
        }
        self.owed = false;
        self.paused_until = None;
        std::mem::take(&mut self.listeners)
    }
}

/// Accept failures that concern only the one connection that was being accepted.
fn is_aborted_handshake(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// A listener that returns what the test scripted, then `WouldBlock`.
    struct Scripted(RefCell<VecDeque<io::Result<u32>>>);

    impl Scripted {
        fn new(script: impl IntoIterator<Item = io::Result<u32>>) -> Scripted {
            Scripted(RefCell::new(script.into_iter().collect()))
        }
    }

    impl Listen for Scripted {
        type Stream = u32;
        fn accept(&self) -> io::Result<(u32, SocketAddr)> {
            let next = self.0.borrow_mut().pop_front();
            next.unwrap_or_else(|| Err(ErrorKind::WouldBlock.into()))
                .map(|n| (n, SocketAddr::from(([127, 0, 0, 1], 40_000))))
        }
    }

    fn os(code: i32) -> io::Result<u32> {
        Err(io::Error::from_raw_os_error(code))
    }

    fn turn(a: &mut Acceptor<Scripted>, now: Instant) -> Vec<u32> {
        assert!(a.due());
        a.begin_turn();
        std::iter::from_fn(|| a.next(now, 0).map(|(n, _)| n)).collect()
    }

    #[test]
    fn emfile_pauses_until_a_connection_closes_then_resumes_by_itself() {
        let t0 = Instant::now();
        let mut a = Acceptor::new(vec![Scripted::new([Ok(1), os(libc::EMFILE), Ok(2), Ok(3)])]);
        assert_eq!(turn(&mut a, t0), vec![1]);
        assert!(!a.due(), "paused, not spinning on EMFILE");
        assert_eq!(a.paused_until(), Some(t0 + ACCEPT_BACKOFF));
        // A connection closes: a descriptor is free, so accepting resumes at once, without a
        // new readiness event (connections queued meanwhile raised none).
        a.on_close();
        assert!(a.due());
        assert_eq!(turn(&mut a, t0), vec![2, 3]);
        assert!(!a.due(), "drained: wait for the next readiness event");
    }

    #[test]
    fn emfile_with_no_close_resumes_when_the_back_off_ends() {
        let t0 = Instant::now();
        let mut a = Acceptor::new(vec![Scripted::new([os(libc::ENFILE), Ok(7)])]);
        assert_eq!(turn(&mut a, t0), Vec::<u32>::new());
        a.on_timer(t0 + ACCEPT_BACKOFF / 2);
        assert!(!a.due());
        a.on_timer(t0 + ACCEPT_BACKOFF);
        assert_eq!(turn(&mut a, t0 + ACCEPT_BACKOFF), vec![7]);
    }

    #[test]
    fn a_close_outside_an_exhaustion_pause_does_not_cut_another_back_off_short() {
        let t0 = Instant::now();
        let mut a = Acceptor::new(vec![Scripted::new([os(libc::EINVAL)])]);
        turn(&mut a, t0);
        a.on_close();
        assert!(
            !a.due(),
            "an unexplained accept error waits out its back-off"
        );
    }

    #[test]
    fn aborted_handshakes_are_skipped_and_the_budget_moves_on_to_the_next_listener() {
        let t0 = Instant::now();
        let flood: Vec<_> = (0..ACCEPT_BUDGET as u32 + 5).map(Ok).collect();
        let mut a = Acceptor::new(vec![
            Scripted::new(flood),
            Scripted::new([Err(ErrorKind::ConnectionAborted.into()), Ok(9999)]),
        ]);
        let got = turn(&mut a, t0);
        assert_eq!(
            got.len(),
            ACCEPT_BUDGET + 1,
            "the budget, then the other listener"
        );
        assert_eq!(got.last(), Some(&9999));
        assert!(a.due(), "the flooded listener is owed another turn");
        assert_eq!(turn(&mut a, t0).len(), 5);
    }

    #[test]
    fn refusals_are_all_counted_and_logged_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut a = Acceptor::new(Vec::<Scripted>::new());
        let mut stats = Stats::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        for i in 0..3 {
            a.refuse(peer, 1, t0 + Duration::from_millis(i), &mut stats);
        }
        assert_eq!(stats.refused, 3);
        assert_eq!(a.refused_log.reported(), 1, "logged the first");
        assert_eq!(
            a.refused_log.take_rest(),
            Some(2),
            "two wait for the next line"
        );
    }

    #[test]
    fn refusals_waiting_for_their_line_get_it_when_the_second_is_up_or_at_shutdown() {
        let t0 = Instant::now();
        let mut a = Acceptor::new(Vec::<Scripted>::new());
        let mut stats = Stats::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        for i in 0..3 {
            a.refuse(peer, 1, t0 + Duration::from_millis(i), &mut stats);
        }
        assert_eq!(a.refusals_due(), Some(t0 + REFUSAL_LOG_EVERY));
        a.on_timer(t0 + REFUSAL_LOG_EVERY / 2);
        assert_eq!(a.refused_log.reported(), 1, "not before the second is up");
        a.on_timer(t0 + REFUSAL_LOG_EVERY);
        assert_eq!(a.refused_log.reported(), stats.refused, "the lines add up");
        assert_eq!(a.refusals_due(), None);
        // One more, refused within the second of that line: the shutdown logs it.
        a.refuse(peer, 1, t0 + REFUSAL_LOG_EVERY, &mut stats);
        assert_eq!(a.refused_log.reported(), 3);
        a.close();
        assert_eq!(a.refused_log.reported(), stats.refused);
    }
}

//! The server's life: serving, draining, done. Owns the signal source, the shutdown handle's
//! waker and flag, the drain deadline, and the policy that maps a signal to what happens next.
//!
//! ```text
//!   Serving ──stop request──▶ Draining ──every connection quiet──▶ done (exit 0)
//!   (stops accepting at once; closes quiet connections only after QUIET_GRACE)
//!                               │  ├─ drain deadline ─────────────▶ done (exit 0, counted)
//!                               │  └─ second stop request ────────▶ forced (exit 1)
//! ```
//!
//! The policy ([`Policy::on_signal`]) is a pure function of the signal and the state, so a
//! supervisor of several workers applies exactly the same rules as a single server.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use super::systemd::Notifier;
use super::token;

/// How long a drain serves connections before it closes the quiet ones: a client that has just
/// connected (or just sent) may have bytes on the way that the server has not seen yet, and
/// closing its connection as "quiet" would cost it its reply. This matters most in a reload
/// under load, where the old workers accepted connections a moment before they were told to
/// stop.
pub const QUIET_GRACE: Duration = Duration::from_millis(500);

/// Every signal the server handles.
pub const HANDLED_SIGNALS: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Blocks the handled signals in this thread (and the threads and processes it starts): one
/// that arrives now waits, pending, instead of killing the process, until
/// [`unblock_handled_signals`]. The binary blocks them first thing, so that a signal in the first
/// millisecond, before the handlers are in place, is handled like any other.
pub fn block_handled_signals() -> io::Result<()> {
    mask_handled_signals(libc::SIG_BLOCK)
}

/// Unblocks the handled signals: those that arrived while blocked are delivered now (to the
/// handlers, once they are installed; else their default action).
pub fn unblock_handled_signals() -> io::Result<()> {
    mask_handled_signals(libc::SIG_UNBLOCK)
}

/// The handled signals that a process may be handed ignored on purpose: SIGHUP by `nohup`,
/// SIGINT and SIGQUIT by a shell for a background job. The server leaves those ignored (the
/// convention of daemons since `if (signal(SIGINT, SIG_IGN) != SIG_IGN)`), so that a terminal
/// closing or a Ctrl-C at it does not stop a server started that way; SIGTERM and SIGUSR1 are
/// always handled, and SIGUSR2.
const LEFT_IGNORED: [i32; 3] = [SIGHUP, SIGINT, SIGQUIT];

/// The signals among SIGHUP, SIGINT and SIGQUIT that this process inherited ignored, which the
/// server leaves ignored. Meaningful only before the server's handlers are installed (they
/// replace the disposition).
pub fn inherited_ignored_signals() -> Vec<i32> {
    LEFT_IGNORED
        .iter()
        .copied()
        .filter(|&s| is_ignored(s))
        .collect()
}

/// The handled signals to install handlers for: all but those inherited ignored.
pub(crate) fn signals_to_handle() -> Vec<i32> {
    HANDLED_SIGNALS
        .iter()
        .copied()
        .filter(|s| !LEFT_IGNORED.contains(s) || !is_ignored(*s))
        .collect()
}

fn is_ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

fn mask_handled_signals(how: libc::c_int) -> io::Result<()> {
    // SAFETY: a sigset_t filled by sigemptyset/sigaddset, passed to pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        match libc::pthread_sigmask(how, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop accepting, let every connection finish what it owes.
    Drain,
    /// Exit now, whatever is owed.
    Force,
    /// Log the counters and go on.
    Report,
    /// Start the binary on disk and hand everything over to it (SIGUSR2).
    Upgrade,
}

/// The rules that map a signal to an [`Action`].
pub struct Policy;

impl Policy {
    /// SIGUSR1 reports; SIGUSR2 upgrades (nginx's signal for a new binary), and is ignored
    /// while draining. SIGTERM, SIGINT, SIGQUIT and SIGHUP stop: gracefully the first time, at
    /// once the second. (SIGHUP means "reload" where there are workers to reload; for a
    /// single server it keeps its terminal meaning, and closing the terminal must not cost the
    /// clients what they are owed.)
    pub fn on_signal(sig: i32, draining: bool) -> Action {
        match sig {
            SIGUSR1 => Action::Report,
            SIGUSR2 => Action::Upgrade,
            _ if draining => Action::Force,
            _ => Action::Drain,
        }
    }
}

/// A signal's name, for the log.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        _ => "a signal",
    }
}

/// Asks a running reactor, from any thread, to stop gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A failed wake can only mean the reactor is already gone.
        let _ = self.waker.wake();
    }
}

pub(crate) struct Lifecycle {
    signals: Option<Signals>,
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    drain_timeout: Duration,
    drain_deadline: Option<Instant>,
    /// When the drain starts closing quiet connections, until it has.
    quiet_from: Option<Instant>,
    closing_quiet: bool,
    pub(crate) forced: bool,
    pub(crate) drain_timed_out: bool,
    notifier: Notifier,
    next_watchdog: Option<Instant>,
}

impl Lifecycle {
    /// Registers the waker, and the signal handlers when `handle_signals`: from here on a
    /// handled signal is an event in the poll, never the default action (but for one inherited
    /// ignored, which stays ignored: see [`inherited_ignored_signals`]).
    pub(crate) fn new(
        registry: &Registry,
        handle_signals: bool,
        drain_timeout: Duration,
        notifier: Notifier,
    ) -> io::Result<Lifecycle> {
        let signals = if handle_signals {
            let mut s = Signals::new(signals_to_handle())?;
            registry.register(&mut s, token::SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        Ok(Lifecycle {
            signals,
            flag: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Waker::new(registry, token::WAKER)?),
            drain_timeout,
            drain_deadline: None,
            quiet_from: None,
            closing_quiet: false,
            forced: false,
            drain_timed_out: false,
            next_watchdog: notifier.watchdog_interval().map(|_| Instant::now()),
            notifier,
        })
    }

    pub(crate) fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: self.flag.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The signals delivered since the last call.
    pub(crate) fn pending_signals(&mut self) -> Vec<i32> {
        self.signals
            .as_mut()
            .map(|s| s.pending().collect())
            .unwrap_or_default()
    }

    /// Whether the shutdown handle has been used (checked on a waker event).
    pub(crate) fn shutdown_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// The next deadline of the drain: the end of the grace, then the drain timeout.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        self.quiet_from.or(self.drain_deadline)
    }

    /// Whether quiet connections are closed now (the drain's grace is over).
    pub(crate) fn closing_quiet(&self) -> bool {
        self.closing_quiet
    }

    /// True once, when the drain's grace ends: from now on quiet connections are closed.
    pub(crate) fn grace_over(&mut self, now: Instant) -> bool {
        if self.quiet_from.is_some_and(|t| now >= t) {
            self.quiet_from = None;
            self.closing_quiet = true;
            return true;
        }
        false
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// When the watchdog is next due, if the service manager asked for one.
    pub(crate) fn next_watchdog(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Reports to the service manager.
    pub(crate) fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// A successor reports from now on: this process says nothing more (not even STOPPING,
    /// which would tell systemd the service is going away) and pings no watchdog.
    pub(crate) fn hand_notifications_over(&mut self) {
        self.notifier = Notifier::default();
        self.next_watchdog = None;
    }

    /// Pings the watchdog when due: the loop reaching its timers is the proof of life.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        if let (Some(due), Some(every)) = (self.next_watchdog, self.notifier.watchdog_interval())
            && now >= due
        {
            self.notifier.watchdog();
            self.next_watchdog = Some(now + every);
        }
    }

    /// Enters draining; returns false if already draining. The deadline saturates: a drain
    /// timeout too large for the clock means no deadline.
    pub(crate) fn begin_drain(&mut self, now: Instant) -> bool {
        if self.draining() {
            return false;
        }
        self.notifier.stopping();
        self.drain_deadline = Some(
            now.checked_add(self.drain_timeout)
                .unwrap_or(now + crate::units::MAX_DURATION),
        );
        self.quiet_from = Some(now + QUIET_GRACE.min(self.drain_timeout));
        true
    }

    /// Whether the drain deadline has passed (it is noted, so this is true once).
    pub(crate) fn drain_expired(&mut self, now: Instant) -> bool {
        if self.drain_timed_out || self.drain_deadline.is_none_or(|t| now < t) {
            return false;
        }
        self.drain_timed_out = true;
        true
    }

    /// Whether the run is over, given how many connections are still open.
    pub(crate) fn finished(&self, open: usize) -> bool {
        self.forced || self.drain_timed_out || (self.draining() && open == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_signal_drains_second_forces_usr1_only_reports() {
        for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT] {
            assert_eq!(
                Policy::on_signal(sig, false),
                Action::Drain,
                "{}",
                signal_name(sig)
            );
            assert_eq!(
                Policy::on_signal(sig, true),
                Action::Force,
                "{}",
                signal_name(sig)
            );
        }
        assert_eq!(Policy::on_signal(SIGUSR1, false), Action::Report);
        assert_eq!(Policy::on_signal(SIGUSR1, true), Action::Report);
        assert_eq!(Policy::on_signal(SIGUSR2, false), Action::Upgrade);
    }

    #[test]
    fn a_drain_ends_when_quiet_or_at_its_deadline_whichever_is_first() {
        let poll = mio::Poll::new().unwrap();
        let mut life = Lifecycle::new(
            poll.registry(),
            false,
            Duration::from_secs(5),
            Notifier::default(),
        )
        .unwrap();
        let t0 = Instant::now();
        assert!(
            !life.finished(0),
            "serving is not finished, even with nothing open"
        );
        assert!(life.begin_drain(t0));
        assert!(!life.begin_drain(t0), "draining already");
        assert!(!life.closing_quiet(), "not during the grace");
        assert_eq!(life.drain_deadline(), Some(t0 + QUIET_GRACE));
        assert!(!life.grace_over(t0));
        assert!(life.grace_over(t0 + QUIET_GRACE));
        assert!(!life.grace_over(t0 + QUIET_GRACE), "once");
        assert!(life.closing_quiet());
        assert_eq!(life.drain_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(!life.finished(3));
        assert!(life.finished(0));
        assert!(!life.drain_expired(t0 + Duration::from_secs(4)));
        assert!(life.drain_expired(t0 + Duration::from_secs(5)));
        assert!(
            !life.drain_expired(t0 + Duration::from_secs(6)),
            "noted once"
        );
        assert!(life.finished(3));
    }

    #[test]
    fn a_drain_timeout_too_large_for_the_clock_is_no_panic() {
        let poll = mio::Poll::new().unwrap();
        let mut life =
            Lifecycle::new(poll.registry(), false, Duration::MAX, Notifier::default()).unwrap();
        let now = Instant::now();
        assert!(life.begin_drain(now));
        assert!(!life.drain_expired(now + Duration::from_secs(3600)));
    }
}

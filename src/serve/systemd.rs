//! systemd integration: the sockets socket activation passes (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`, as `sd_listen_fds(3)` reads them), and the state the service reports
//! (`READY=1`, `STOPPING=1`, `WATCHDOG=1` through `$NOTIFY_SOCKET`, as `sd_notify(3)` sends it).
//! Both are read with the `sd-notify` crate, a pure-Rust reading of the same contract.
//!
//! Outside systemd nothing here does anything: no socket is passed, and with no `NOTIFY_SOCKET`
//! a notification is a no-op.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use log::{debug, warn};
use sd_notify::NotifyState;

/// The descriptors passed by socket activation, with their names (`FileDescriptorName=`, or
/// `unknown`), or `None` if this process was not socket-activated.
///
/// Call it once, early: it takes ownership of descriptors 3 and up, and unsets the variables so
/// that no child process takes them for its own.
pub fn listen_fds() -> io::Result<Option<Vec<(OwnedFd, String)>>> {
    // SAFETY: called from the binary's main thread before any other thread exists (the only
    // precondition of removing environment variables).
    let fds: Vec<_> = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }?.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        fds.into_iter()
            // SAFETY: LISTEN_PID named this process, so systemd handed these descriptors to
            // it alone, and nothing else in the process has taken them.
            .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
            .collect(),
    ))
}

/// Reports the service's state to systemd, when there is a systemd to report to.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// `$NOTIFY_SOCKET` is set: notifications go somewhere.
    enabled: bool,
    /// How often to ping the watchdog (half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
    /// advises), if the unit asks for one.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().map(|t| (t / 2).max(Duration::from_millis(10))),
        }
    }

    /// The interval at which [`Notifier::watchdog`] must be called, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled)
    }

    /// `READY=1`, with a status line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `MAINPID=` this process, `READY=1`: a successor has taken over from the process systemd
    /// started (which needs `NotifyAccess=all` in the unit, as the successor is not yet the
    /// main process when it says so).
    pub fn took_over(&self, status: &str) {
        self.send(&[
            NotifyState::MainPid(std::process::id()),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]);
    }

    /// `STOPPING=1`: the drain has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }

    /// `WATCHDOG=1`: the loop is alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        match crate::io_outcome::retrying(|| sd_notify::notify(states)) {
            Ok(()) => debug!("sd_notify: {states:?}"),
            // systemd restarted, or the socket is gone: serving clients matters more.
            Err(e) => warn!("sd_notify {states:?}: {e}"),
        }
    }
}

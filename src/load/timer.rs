//! The worker loop's wake-up: a one-shot `timerfd` registered in the worker's poll.
//!
//! `epoll_wait` takes its timeout in whole milliseconds, so a message due in 0.3 ms would be sent
//! up to a millisecond late, and because latency counts from the due time that lateness would be
//! charged to the server (the open loop, `--rate`). A `timerfd` fires with the kernel's
//! high-resolution timers instead, and since it is only armed when the wake-up time changes, the
//! wait itself can go without a timeout, which spares every wait that sleeps a kernel timer of
//! its own.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A one-shot monotonic timer readable through mio.
pub struct Timer {
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl Timer {
    /// Creates the timer and registers it under `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory preconditions; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Timer {
            fd,
            armed_for: None,
        })
    }

    /// Makes the timer fire at `at` (at once if that has passed), unless it already will.
    pub fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed_for == Some(at) {
            return Ok(());
        }
        // A zero it_value would disarm the timer: wait at least a nanosecond.
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the fd is ours and `spec` outlives the call; the old value is not wanted.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.armed_for = Some(at);
        Ok(())
    }

    /// Consumes an expiry after the timer's token was reported readable.
    pub fn clear(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`. EAGAIN (already consumed) is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed_for = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_well_inside_a_millisecond_scale_deadline() {
        let mut poll = mio::Poll::new().unwrap();
        let mut t = Timer::new(poll.registry(), Token(7)).unwrap();
        let mut events = mio::Events::with_capacity(4);
        let now = Instant::now();
        t.arm(now + Duration::from_micros(300), now).unwrap();
        // Generous bound: the point is that it fires at all, before the poll's own timeout.
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7)));
        assert!(now.elapsed() < Duration::from_secs(5));
        t.clear();
    }
}

//! One classification of socket I/O results, used by the server, the clients and the load
//! generator alike, so that "the peer went away" and "something is wrong here" are told apart the
//! same way everywhere (sozu's `SocketResult` is the model).
//!
//! | outcome | what it means | what callers do |
//! |---|---|---|
//! | [`Outcome::Moved`] | bytes moved | go on |
//! | [`Outcome::WouldBlock`] | nothing now | wait for readiness |
//! | [`Outcome::Interrupted`] | a signal arrived | retry at once |
//! | [`Outcome::PeerClosed`] | orderly end (read 0) | finish what is owed |
//! | [`Outcome::PeerReset`] | the peer or the path failed: reset, broken pipe, refused, unreachable, timed out | close; an ordinary event, logged at debug |
//! | [`Outcome::Local`] | this side failed: out of memory or buffers, bad descriptor, anything unexpected | close; logged at warn with the peer, counted apart |
//!
//! Among local failures, [`is_exhausted`] picks out resource exhaustion (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`): nothing is wrong with the call, the process or the kernel is out of
//! descriptors or memory for now, so a caller that would otherwise retry at once (an acceptor)
//! backs off instead.
//!
//! `EINTR` is handled here too, once: every system call that can be interrupted goes through
//! [`retrying`] (retried at once: the signal is the signal pipe's business, not the caller's),
//! and every wait through [`poll`] (an interrupted wait is a wake-up with no events, so the
//! caller's loop recomputes its deadlines).

use std::io::{self, ErrorKind};
use std::time::Duration;

/// Runs one I/O call, retrying it at once while a signal interrupts it (`EINTR`), so no caller
/// spells its own retry loop.
pub fn retrying<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Whether an error is "nothing now": wait for readiness.
pub fn is_would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

/// Whether an error is resource exhaustion: out of descriptors (`EMFILE` for the process,
/// `ENFILE` for the system) or out of kernel memory (`ENOBUFS`, `ENOMEM`). Such errors classify
/// as [`Class::Local`]; this says, in addition, that waiting (for a descriptor to be closed, for
/// memory to be freed) is the remedy.
pub fn is_exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Waits once for events. A wait a signal interrupts returns `Ok` with no events (rather than
/// being retried with a timeout that no longer holds), so the caller's loop goes round,
/// recomputes its deadlines and waits again.
pub fn poll(
    poll: &mut mio::Poll,
    events: &mut mio::Events,
    timeout: Option<Duration>,
) -> io::Result<()> {
    match poll.poll(events, timeout) {
        Err(e) if e.kind() == ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        r => r,
    }
}

/// What one read or write (or send/recv) came to.
#[derive(Debug)]
pub enum Outcome {
    Moved(usize),
    WouldBlock,
    Interrupted,
    PeerClosed,
    PeerReset(io::Error),
    Local(io::Error),
}

impl Outcome {
    /// A read's result: `Ok(0)` is the peer's orderly close (for a non-empty buffer).
    pub fn of_read(r: io::Result<usize>) -> Outcome {
        match r {
            Ok(0) => Outcome::PeerClosed,
            Ok(n) => Outcome::Moved(n),
            Err(e) => Outcome::of_error(e),
        }
    }

    /// A write's result: `Ok(0)` for a non-empty buffer means the socket takes nothing more,
    /// which for a stream is the peer gone.
    pub fn of_write(r: io::Result<usize>) -> Outcome {
        match r {
            Ok(0) => Outcome::PeerClosed,
            Ok(n) => Outcome::Moved(n),
            Err(e) => Outcome::of_error(e),
        }
    }

    /// An error's class.
    pub fn of_error(e: io::Error) -> Outcome {
        match classify(&e) {
            Class::WouldBlock => Outcome::WouldBlock,
            Class::Interrupted => Outcome::Interrupted,
            Class::PeerClosed => Outcome::PeerClosed,
            Class::PeerReset => Outcome::PeerReset(e),
            Class::Local => Outcome::Local(e),
        }
    }
}

/// The class of an error, without taking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    WouldBlock,
    Interrupted,
    PeerClosed,
    PeerReset,
    Local,
}

/// Classifies an I/O error.
pub fn classify(e: &io::Error) -> Class {
    match e.kind() {
        ErrorKind::WouldBlock => Class::WouldBlock,
        ErrorKind::Interrupted => Class::Interrupted,
        ErrorKind::UnexpectedEof | ErrorKind::WriteZero => Class::PeerClosed,
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionRefused
        | ErrorKind::NotConnected
        | ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NetworkDown => Class::PeerReset,
        _ => match e.raw_os_error() {
            // Kinds std does not name on every version: a path or peer failure all the same.
            Some(libc::EHOSTDOWN | libc::EPROTO | libc::ENETRESET) => Class::PeerReset,
            _ => Class::Local,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> Class {
        classify(&io::Error::from_raw_os_error(code))
    }

    #[test]
    fn peer_failures_and_local_failures_are_told_apart() {
        for code in [
            libc::ECONNRESET,
            libc::EPIPE,
            libc::ECONNABORTED,
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::EHOSTDOWN,
        ] {
            assert_eq!(os(code), Class::PeerReset, "errno {code}");
        }
        for code in [
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EBADF,
            libc::EINVAL,
            libc::EFAULT,
        ] {
            assert_eq!(os(code), Class::Local, "errno {code}");
        }
        assert_eq!(os(libc::EAGAIN), Class::WouldBlock);
        assert_eq!(os(libc::EINTR), Class::Interrupted);
    }

    #[test]
    fn resource_exhaustion_is_local_and_told_apart() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = io::Error::from_raw_os_error(code);
            assert!(is_exhausted(&e), "errno {code}");
            assert_eq!(classify(&e), Class::Local, "errno {code}");
        }
        for code in [libc::EBADF, libc::EINVAL, libc::ECONNRESET, libc::EAGAIN] {
            assert!(
                !is_exhausted(&io::Error::from_raw_os_error(code)),
                "errno {code}"
            );
        }
        assert!(!is_exhausted(&io::Error::other("no errno")));
    }

    #[test]
    fn retrying_retries_interrupted_calls_only() {
        let mut calls = 0;
        let r = retrying(|| {
            calls += 1;
            if calls < 3 {
                Err(io::Error::from(ErrorKind::Interrupted))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: io::Result<()> = retrying(|| {
            calls += 1;
            Err(io::Error::from(ErrorKind::WouldBlock))
        });
        assert!(is_would_block(&r.unwrap_err()));
        assert_eq!(calls, 1);
    }

    #[test]
    fn zero_bytes_is_the_peer_closing() {
        assert!(matches!(Outcome::of_read(Ok(0)), Outcome::PeerClosed));
        assert!(matches!(Outcome::of_write(Ok(0)), Outcome::PeerClosed));
        assert!(matches!(Outcome::of_read(Ok(5)), Outcome::Moved(5)));
        assert!(matches!(
            Outcome::of_write(Err(ErrorKind::WriteZero.into())),
            Outcome::PeerClosed
        ));
    }
}

//! The token map: which `mio::Token` names which source, decoded in one place.
//!
//! Fixed sources sit below [`CONN_BASE`]; a connection's token is its slab key plus `CONN_BASE`,
//! so dispatch is a subtraction and a slab lookup.
//!
//! ```text
//!   0                signals   SIGTERM SIGINT SIGHUP SIGQUIT SIGUSR1 SIGUSR2 (signal-hook-mio)
//!   1                waker     ShutdownHandle
//!   2                metrics   the --metrics listener
//!   3                control   the channel to the supervisor (--workers)
//!   4                upgrade   the channel to a successor or predecessor (SIGUSR2)
//!   5 .. 16          (unused)
//!   16 .. 256        listeners, in the order given
//!   256 .. 1024      UDP sockets, in the order given
//!   1024 ..          connections (slab key + 1024)
//!   2^40 ..          metrics scrape connections (their own slab's key + 2^40)
//! ```
//!
//! A token that decodes to nothing the reactor registered (an unused number, a listener index
//! past the last listener) is [`Source::Unknown`]: ignored and counted, never guessed at.

use mio::Token;

pub(crate) const SIGNALS: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
pub(crate) const METRICS: Token = Token(2);
pub(crate) const CONTROL: Token = Token(3);
pub(crate) const UPGRADE: Token = Token(4);
/// Far above any connection key a process could reach (one per descriptor).
const SCRAPE_BASE: usize = 1 << 40;
const LISTENER_BASE: usize = 16;
const UDP_BASE: usize = 256;
const CONN_BASE: usize = 1024;
/// Most listeners one reactor takes.
pub const MAX_LISTENERS: usize = UDP_BASE - LISTENER_BASE;
/// Most UDP sockets one reactor takes.
pub const MAX_UDP_SOCKETS: usize = CONN_BASE - UDP_BASE;

/// What an event's token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Signals,
    Waker,
    /// Listener index, in the order given to the reactor.
    Listener(usize),
    /// UDP socket index, in the order given to the reactor.
    Udp(usize),
    /// Connection slab key.
    Conn(usize),
    /// The metrics listener.
    Metrics,
    /// The channel to the supervisor.
    Control,
    /// The channel to the process taking over from this one, or handing over to it.
    Upgrade,
    /// Metrics scrape connection, by its own slab key.
    Scrape(usize),
    /// Nothing the reactor hands out; the raw token is kept for the log.
    Unknown(usize),
}

impl Source {
    /// Decodes a token, given how many listeners and UDP sockets are registered.
    pub(crate) fn of(token: Token, listeners: usize, udp: usize) -> Source {
        match token.0 {
            0 => Source::Signals,
            1 => Source::Waker,
            2 => Source::Metrics,
            3 => Source::Control,
            4 => Source::Upgrade,
            t if t >= SCRAPE_BASE => Source::Scrape(t - SCRAPE_BASE),
            t if t >= CONN_BASE => Source::Conn(t - CONN_BASE),
            t if (UDP_BASE..UDP_BASE + udp).contains(&t) => Source::Udp(t - UDP_BASE),
            t if (LISTENER_BASE..LISTENER_BASE + listeners).contains(&t) => {
                Source::Listener(t - LISTENER_BASE)
            }
            t => Source::Unknown(t),
        }
    }
}

pub(crate) fn listener(i: usize) -> Token {
    debug_assert!(i < MAX_LISTENERS);
    Token(LISTENER_BASE + i)
}

pub(crate) fn udp(i: usize) -> Token {
    debug_assert!(i < MAX_UDP_SOCKETS);
    Token(UDP_BASE + i)
}

pub(crate) fn conn(key: usize) -> Token {
    debug_assert!(key < SCRAPE_BASE - CONN_BASE);
    Token(CONN_BASE + key)
}

pub(crate) fn scrape(key: usize) -> Token {
    Token(SCRAPE_BASE + key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_handed_out_decodes_to_its_source() {
        let (l, u) = (3, 2);
        assert_eq!(Source::of(SIGNALS, l, u), Source::Signals);
        assert_eq!(Source::of(WAKER, l, u), Source::Waker);
        for i in 0..l {
            assert_eq!(Source::of(listener(i), l, u), Source::Listener(i));
        }
        for i in 0..u {
            assert_eq!(Source::of(udp(i), l, u), Source::Udp(i));
        }
        for key in [0, 1, 77, 1 << 20] {
            assert_eq!(Source::of(conn(key), l, u), Source::Conn(key));
        }
        assert_eq!(Source::of(METRICS, l, u), Source::Metrics);
        assert_eq!(Source::of(CONTROL, l, u), Source::Control);
        assert_eq!(Source::of(UPGRADE, l, u), Source::Upgrade);
        for key in [0, 15] {
            assert_eq!(Source::of(scrape(key), l, u), Source::Scrape(key));
        }
    }

    #[test]
    fn tokens_nobody_was_given_are_unknown_not_a_listener() {
        let (l, u) = (3, 2);
        for t in [
            5,
            15,
            LISTENER_BASE + 3,
            LISTENER_BASE + 239,
            UDP_BASE + 2,
            CONN_BASE - 1,
        ] {
            assert_eq!(Source::of(Token(t), l, u), Source::Unknown(t), "token {t}");
        }
        // Once shutdown has closed the listeners, their tokens are unknown too.
        assert_eq!(
            Source::of(listener(0), 0, 0),
            Source::Unknown(LISTENER_BASE)
        );
    }

    #[test]
    fn the_ranges_do_not_overlap() {
        assert_eq!(LISTENER_BASE + MAX_LISTENERS, UDP_BASE);
        assert_eq!(UDP_BASE + MAX_UDP_SOCKETS, CONN_BASE);
    }
}

//! The supervisor's token map, its own: nothing here is a reactor's token.
//!
//! ```text
//!   0                       signals   SIGTERM SIGINT SIGHUP SIGQUIT SIGUSR1 SIGUSR2 SIGCHLD
//!   2, 2^40 ..              the metrics endpoint's own (its listener, its scrapes)
//!   1024 .. 1024 + 2^30     worker channels: the worker's id + 1024
//! ```
//!
//! The metrics endpoint registers and recognises its tokens itself (it is the reactor's
//! endpoint too), so this map only keeps clear of them.

use mio::Token;

pub(super) const SIGNALS: Token = Token(0);
const CHANNEL_BASE: usize = 1024;
/// Far more workers than a supervisor starts in its life (restarts and reloads included), and
/// far below the metrics endpoint's scrape tokens.
const CHANNELS: usize = 1 << 30;

/// What one of the supervisor's tokens names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Signals,
    /// The channel of the worker with this id.
    Channel(u64),
    /// Anything else: the metrics endpoint's, or nothing.
    Other(Token),
}

pub(super) fn channel(id: u64) -> Token {
    debug_assert!((id as usize) < CHANNELS);
    Token(CHANNEL_BASE + id as usize)
}

pub(super) fn decode(t: Token) -> Event {
    match t.0 {
        0 => Event::Signals,
        n if (CHANNEL_BASE..CHANNEL_BASE + CHANNELS).contains(&n) => {
            Event::Channel((n - CHANNEL_BASE) as u64)
        }
        _ => Event::Other(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_signals_decode_and_nothing_else_is_taken() {
        assert_eq!(decode(SIGNALS), Event::Signals);
        for id in [0, 1, 77, (CHANNELS - 1) as u64] {
            assert_eq!(decode(channel(id)), Event::Channel(id));
        }
        // The metrics endpoint's listener and scrape tokens are not channels.
        for t in [2, 1 << 40, (1 << 40) + 3] {
            assert_eq!(decode(Token(t)), Event::Other(Token(t)));
        }
    }
}

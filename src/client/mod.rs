//! `upecho tcp` and `upecho udp`: the tutorial's clients, interactive at a terminal, `nc`-like in a
//! pipe.
//!
//! This module owns the clients' sessions; the command line (flags, choosing the mode, the
//! `upecho tcp:` error line and exit codes) belongs to the binary. The public surface is small:
//! resolve a [`Target`], then run [`tcp::interactive`], [`tcp::pipe`], [`udp::interactive`] or
//! [`udp::pipe`]; each returns `Ok` or a [`Failure`]. The work is split by concern:
//!
//! - [`tcp`]: the TCP client (an interactive prompt, and a full-duplex pipe mode).
//! - [`udp`]: the UDP client (an interactive prompt, and a windowed pipe mode).
//! - `console`: the interactive prompt both share (terminal rules, keys, history, messages while
//!   the user types).
//! - `target`: the resolved server address and connecting to it.
//! - `udp::matcher`: the pure bookkeeping that tells which request a UDP reply answers.
//! - `display`: how replies and durations are shown to a person.
//!
//! Both clients are interactive when their caller says so (the binary does when stdin is a
//! terminal) and stream stdin otherwise. Replies go to stdout, everything else (errors, timeouts,
//! late replies, loss counts) goes to stderr, so a pipeline sees only replies, even when stdin is
//! the terminal and only stdout is redirected.

use std::path::PathBuf;
use std::time::Duration;

use crate::addr::AddrError;

pub(crate) mod console;
pub(crate) mod display;
pub(crate) mod target;
pub mod tcp;
pub mod udp;

pub use console::history_path;
pub use target::Target;

/// How an interactive session behaves (both clients).
#[derive(Debug, Clone)]
pub struct InteractiveOptions {
    /// How long to wait for each reply before saying so; the session goes on either way.
    pub timeout: Duration,
    /// The history file to read and append to (see [`history_path`]); `None` keeps no history.
    pub history: Option<PathBuf>,
}

/// How a client session ended, when it did not simply succeed.
#[derive(Debug)]
pub enum Failure {
    /// Something went wrong; the message is printed as one line on stderr.
    Error(String),
    /// The session ended unsuccessfully and has already said why (e.g. the UDP loss count).
    Reported,
}

impl From<AddrError> for Failure {
    fn from(e: AddrError) -> Self {
        Failure::Error(e.to_string())
    }
}

impl From<target::ConnectError> for Failure {
    fn from(e: target::ConnectError) -> Self {
        Failure::Error(e.to_string())
    }
}

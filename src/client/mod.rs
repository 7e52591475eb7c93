//! `upecho tcp` and `upecho udp`: the tutorial's clients, interactive at a terminal, `nc`-like in a
//! pipe.
//!
//! Unlike the rest of the library, this module does terminal I/O itself: it reads stdin, writes
//! replies to stdout and messages to stderr, and draws a line-editing prompt. A client *is* that
//! I/O (the prompt redrawn under a late reply, a pipeline that sees only replies), so it is kept
//! here whole rather than cut into events for the binary to print. What the binary keeps is the
//! command line: the flags, choosing the mode (it is interactive when stdin is a terminal), the
//! `upecho tcp:` error line and the exit codes. The surface is small: resolve a [`Target`], then
//! run [`tcp::interactive`], [`tcp::pipe`], [`udp::interactive`] or [`udp::pipe`]; each returns
//! `Ok` or a [`Failure`].
//!
//! - `session`: the interactive session both protocols share (the prompt loop, the reader
//!   thread, the hand-off between them, Ctrl-C, ending the prompt when the server goes away).
//! - `console`: the terminal under it (line editing, history, keys, messages above the prompt).
//! - [`tcp`]: what is TCP's: stream matching (`owed`), writing a line, the full-duplex pipe mode.
//! - [`udp`]: what is UDP's: datagram matching (`matcher`), the datagram limit, the windowed pipe
//!   mode.
//! - `target`: the resolved server address and connecting to it.
//! - `display`: how replies, times and other arrivals are worded for a person.
//!
//! Replies go to stdout, everything else (errors, timeouts, late replies, loss counts) goes to
//! stderr, so a pipeline sees only replies, even when stdin is the terminal and only stdout is
//! redirected.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::{AddrError, reason};

pub(crate) mod console;
pub(crate) mod display;
pub(crate) mod session;
pub(crate) mod target;
pub mod tcp;
pub mod udp;

pub use console::history_path;
pub use target::Target;

/// Identifies a line sent: 1 for the first, then counting up (in UDP pipe mode, the line number).
pub(crate) type Id = u64;

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

impl Failure {
    /// Writing a reply to stdout failed (a closed pipe, a full disk): the session cannot go on.
    pub(crate) fn stdout(e: &io::Error) -> Failure {
        Failure::Error(format!("cannot write to stdout: {}", reason(e)))
    }
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

//! `upecho tcp` and `upecho udp`: the tutorial's clients, interactive at a terminal, `nc`-like in a
//! pipe.
//!
//! This module owns the command-line options and the entry points; the work is split by concern:
//!
//! - [`console`]: the interactive prompt both share (terminal rules, keys, history, messages
//!   while the user types).
//! - [`target`]: parsing `HOST:PORT`, resolving it, connecting, and the one-line error messages.
//! - [`tcp`]: the TCP client (an interactive prompt, and a full-duplex pipe mode).
//! - [`udp`]: the UDP client (an interactive prompt, and a windowed pipe mode).
//! - [`matcher`]: the pure bookkeeping that tells which request a UDP reply answers.
//! - [`display`]: how replies and durations are shown to a person.
//!
//! Both clients choose their mode the same way: if stdin is a terminal they prompt with line
//! editing and history ([`console`]); otherwise stdin is data. Replies go to stdout, everything
//! else (errors, timeouts, late replies, loss counts) goes to stderr, so a pipeline sees only
//! replies, even when stdin is the terminal and only stdout is redirected.
//!
//! Exit codes: 0 on success; 1 when the connection fails, the server goes away, or (UDP pipe mode)
//! any datagram went unanswered; 2 for usage errors (clap's convention).

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

pub mod console;
pub mod display;
pub mod matcher;
pub mod target;
pub mod tcp;
pub mod udp;

/// The address both clients use when none is given: the tutorial's server.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8005";

/// Options of `upecho tcp`.
#[derive(Debug, Args)]
pub struct TcpArgs {
    /// Server address as HOST:PORT; a host name is resolved and every address tried in turn.
    #[arg(default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Seconds to wait for each reply at the prompt before saying so (fractions allowed); the
    /// session goes on, and a reply that comes later is shown as late. Pipe mode waits for the
    /// server as long as it takes, like `nc -N`.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_timeout)]
    pub timeout: Duration,

    #[command(flatten)]
    pub history: HistoryArgs,
}

/// The history option both clients share.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Do not read or write the line history ($XDG_STATE_HOME/upecho/history, or
    /// ~/.local/state/upecho/history).
    #[arg(long)]
    pub no_history: bool,
}

impl HistoryArgs {
    /// The history file to use, if any.
    fn path(&self) -> Option<PathBuf> {
        if self.no_history {
            None
        } else {
            console::history_path()
        }
    }
}

/// Options of `upecho udp`.
#[derive(Debug, Args)]
pub struct UdpArgs {
    /// Server address as HOST:PORT; a host name is resolved and the first usable address taken.
    #[arg(default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Seconds to wait for each reply before counting the datagram as lost (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_timeout)]
    pub timeout: Duration,

    #[command(flatten)]
    pub history: HistoryArgs,
}

/// Parses `--timeout` (both clients): a positive, finite number of seconds. Rejecting it here
/// makes a bad value a usage error (exit 2) rather than a panic in `Duration::from_secs_f64`.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    // Written so that NaN fails too.
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{s:?}: the timeout must be more than 0 seconds"));
    }
    // An hour is far beyond any useful UDP reply wait, and keeps every deadline addition in range.
    if secs > 3600.0 {
        return Err(format!("{s:?}: the timeout must be at most 3600 seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Runs `upecho tcp`.
pub fn run_tcp(args: TcpArgs) -> ExitCode {
    let result = if io::stdin().is_terminal() {
        tcp::interactive(&args.addr, args.timeout, args.history.path())
    } else {
        tcp::pipe(&args.addr)
    };
    finish("tcp", result)
}

/// Runs `upecho udp`.
pub fn run_udp(args: UdpArgs) -> ExitCode {
    let result = if io::stdin().is_terminal() {
        udp::interactive(&args.addr, args.timeout, args.history.path())
    } else {
        udp::pipe(&args.addr, args.timeout)
    };
    finish("udp", result)
}

/// How a client session ended, when it did not simply succeed.
#[derive(Debug)]
pub enum Failure {
    /// Something went wrong; the message is printed as one line on stderr.
    Error(String),
    /// The session ended unsuccessfully and has already said why (e.g. the UDP loss count).
    Reported,
}

impl From<target::TargetError> for Failure {
    fn from(e: target::TargetError) -> Self {
        Failure::Error(e.to_string())
    }
}

fn finish(proto: &str, result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(msg)) => {
            eprintln!("upecho {proto}: {msg}");
            ExitCode::FAILURE
        }
        Err(Failure::Reported) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_accepts_whole_and_fractional_seconds() {
        assert_eq!(parse_timeout("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("3600"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn timeout_rejects_zero_negative_huge_and_junk() {
        for bad in ["0", "-1", "nan", "inf", "1e300", "3601", "", "one"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

//! `upecho tcp` and `upecho udp` on the command line: their options, the choice between the
//! interactive and the pipe mode, the `upecho tcp: ...` error line and the exit codes. The sessions
//! themselves are the library's ([`upecho::client`]).
//!
//! Exit codes: 0 on success; 1 when the name does not resolve, the connection fails, the server
//! goes away, or (UDP pipe mode) any datagram went unanswered; 2 for usage errors (clap's
//! convention), a malformed address among them.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use upecho::addr::{self, DEFAULT_ADDR, HostPort};
use upecho::client::{self, Failure, InteractiveOptions, Target};
use upecho::units;

/// The longest `--timeout`: an hour is far beyond any useful reply wait, and keeps every deadline
/// computed from it in range.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Options of `upecho tcp`.
#[derive(Debug, Args)]
pub(crate) struct TcpArgs {
    /// Server address as HOST:PORT (IPv6 as [::1]:8005); a host name is resolved and every
    /// address tried in turn.
    #[arg(default_value = DEFAULT_ADDR, value_parser = addr::peer_value)]
    addr: HostPort,

    /// How long to wait for each reply at the prompt before saying so: seconds (fractions
    /// allowed) or with a unit (500ms, 2s); more than 0, at most 3600 s. The session goes on, and
    /// a reply that comes later is shown as late. Pipe mode waits for the server as long as it
    /// takes, like `nc -N`.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_timeout)]
    timeout: Duration,

    #[command(flatten)]
    history: HistoryArgs,
}

/// Options of `upecho udp`.
#[derive(Debug, Args)]
pub(crate) struct UdpArgs {
    /// Server address as HOST:PORT (IPv6 as [::1]:8005); a host name is resolved and the first
    /// usable address taken.
    #[arg(default_value = DEFAULT_ADDR, value_parser = addr::peer_value)]
    addr: HostPort,

    /// How long to wait for each reply before counting the datagram as lost: seconds (fractions
    /// allowed) or with a unit (500ms, 2s); more than 0, at most 3600 s.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_timeout)]
    timeout: Duration,

    #[command(flatten)]
    history: HistoryArgs,
}

/// The history option both clients share.
#[derive(Debug, Args)]
struct HistoryArgs {
    /// Do not read or write the line history ($XDG_STATE_HOME/upecho/history, or
    /// ~/.local/state/upecho/history).
    #[arg(long)]
    no_history: bool,
}

impl HistoryArgs {
    /// The history file to use, if any.
    fn path(&self) -> Option<PathBuf> {
        if self.no_history {
            None
        } else {
            client::history_path()
        }
    }
}

/// Parses `--timeout` (both clients): a duration as every subcommand reads one, more than 0 and at
/// most [`MAX_TIMEOUT`]. Refused here, a bad value is a usage error (exit 2).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = units::parse_duration(s)?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(
            "the timeout must be more than 0 and at most 3600 s (e.g. 1, 0.5, 500ms, 2s)"
                .to_string(),
        );
    }
    Ok(d)
}

/// Runs `upecho tcp`: interactive when stdin is a terminal, a pipe otherwise.
pub(crate) fn run_tcp(args: TcpArgs) -> ExitCode {
    let result = Target::resolve(args.addr)
        .map_err(Failure::from)
        .and_then(|target| {
            if io::stdin().is_terminal() {
                let options = InteractiveOptions {
                    timeout: args.timeout,
                    history: args.history.path(),
                };
                client::tcp::interactive(&target, &options)
            } else {
                client::tcp::pipe(&target)
            }
        });
    finish("tcp", result)
}

/// Runs `upecho udp`: interactive when stdin is a terminal, a pipe otherwise.
pub(crate) fn run_udp(args: UdpArgs) -> ExitCode {
    let result = Target::resolve(args.addr)
        .map_err(Failure::from)
        .and_then(|target| {
            if io::stdin().is_terminal() {
                let options = InteractiveOptions {
                    timeout: args.timeout,
                    history: args.history.path(),
                };
                client::udp::interactive(&target, &options)
            } else {
                client::udp::pipe(&target, args.timeout)
            }
        });
    finish("udp", result)
}

/// The exit code, after the one line that says what went wrong (unless already said).
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
    fn timeout_accepts_seconds_fractions_and_units() {
        assert_eq!(parse_timeout("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("3600"), Ok(MAX_TIMEOUT));
        assert_eq!(parse_timeout("1h"), Ok(MAX_TIMEOUT));
    }

    #[test]
    fn timeout_rejects_zero_negative_huge_and_junk_naming_the_bounds() {
        for bad in [
            "0", "0ms", "-1", "nan", "inf", "1e300", "3601", "61m", "", "one",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} was accepted");
        }
        for out_of_bounds in ["0", "3601", "2h", "inf"] {
            let e = parse_timeout(out_of_bounds).unwrap_err();
            assert!(e.contains("more than 0 and at most 3600 s"), "{e}");
        }
    }
}

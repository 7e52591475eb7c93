//! The command line: the clap definitions of every subcommand, logging set-up, exit codes, and
//! the hand-over to the library. Nothing here serves a client; everything here is about talking
//! to the person (or script) that started the process.
//!
//! - `serve`: `upecho serve`'s options, binding, the `listening` lines.
//! - `client`: `upecho tcp` and `upecho udp`: options, resolving the address, exit codes.
//! - `load`: `upecho load`'s options, the address resolved, the report printed; and
//!   `upecho load-merge`'s.
//! - `man`: the man page.

mod client;
mod load;
mod load_compare;
mod load_merge;
mod load_questions;
mod load_values;
mod man;
mod serve;
mod workers;

use std::io;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// Shown under `--help` of the commands that log: how to turn logging up or down.
const LOG_HELP: &str = "\
Logging goes to stderr and is filtered by RUST_LOG: e.g. RUST_LOG=debug for one line per \
connection, RUST_LOG=trace for more, RUST_LOG=warn for quiet. The default is info for serve and \
load, warn for the clients.";

/// upecho: an upper-casing echo server (TCP and UDP), its clients, and a verifying load generator.
#[derive(Debug, Parser)]
#[command(
    name = "upecho",
    version,
    about,
    propagate_version = true,
    after_help = LOG_HELP
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve TCP and UDP: every byte comes back with ASCII letters upper-cased.
    #[command(after_help = LOG_HELP)]
    Serve(serve::ServeArgs),
    /// TCP client: interactive at a terminal, full-duplex like `nc -N` in a pipe.
    Tcp(client::TcpArgs),
    /// UDP client: one datagram per line, replies matched to requests.
    Udp(client::UdpArgs),
    /// Load generator: throughput, latency percentiles, every byte verified.
    #[command(after_help = LOG_HELP)]
    Load(Box<load::LoadArgs>),
    /// Merge the interval logs (--histogram-log) of runs made together, e.g. on several
    /// machines, into one summary.
    LoadMerge(load_merge::MergeArgs),
    /// Compare two runs (--json reports or interval logs) metric by metric, and say whether B
    /// is worse than A beyond noise.
    LoadCompare(load_compare::CompareArgs),
    /// Print a shell completion script, e.g. `upecho completions bash > ~/.local/share/bash-completion/completions/upecho`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `upecho man | man -l -`.
    Man,
}

/// `--transform` / `--expect` on the command line; the library's [`upecho::Transform`] knows
/// nothing of clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransformArg {
    /// ASCII `a`-`z` become `A`-`Z`; every other byte is unchanged (Python's `bytes.upper()`).
    Upper,
    /// Bytes unchanged: a plain RFC 862 echo.
    None,
}

impl From<TransformArg> for upecho::Transform {
    fn from(t: TransformArg) -> Self {
        match t {
            TransformArg::Upper => upecho::Transform::Upper,
            TransformArg::None => upecho::Transform::None,
        }
    }
}

/// Parses the command line and runs the subcommand; returns the process's exit code.
pub fn run() -> ExitCode {
    // `serve` must handle a stop signal from its first moment: block them until its handlers
    // are in place (serve unblocks them then; every other command right after parsing).
    let blocked = upecho::serve::block_handled_signals().is_ok();
    let cli = Cli::parse();
    if blocked && !matches!(cli.command, Command::Serve(_)) {
        let _ = upecho::serve::unblock_handled_signals();
    }
    // Clients keep stderr quiet unless asked; the server and the load generator narrate at info.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Load(_) => "info",
        Command::Tcp(_)
        | Command::Udp(_)
        | Command::LoadMerge(_)
        | Command::LoadCompare(_)
        | Command::Completions { .. }
        | Command::Man => "warn",
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    logger.format_timestamp_millis();
    if let Command::Serve(a) = &cli.command
        && let Some(slot) = a.worker_slot
    {
        // Every line of a worker says which one it is (workers share the supervisor's stderr).
        let tag = match a.worker_generation {
            0 => format!("worker {slot}"),
            g => format!("worker {slot} (generation {g})"),
        };
        logger.format(move |buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "[{} {:<5} {}] {tag}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    logger.init();
    match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Tcp(args) => client::run_tcp(args),
        Command::Udp(args) => client::run_udp(args),
        Command::Load(args) => load::run(*args),
        Command::LoadMerge(args) => load_merge::run_merge(args),
        Command::LoadCompare(args) => load_compare::run(args),
        Command::Completions { shell } => {
            // Generated from the same clap definitions as the parser, so they cannot drift apart.
            clap_complete::generate(shell, &mut Cli::command(), "upecho", &mut io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => man::print_man(),
    }
}

/// Runs `upecho serve` (one process, a supervisor, or one of its workers) and returns the exit
/// code. Here rather than in `serve`, so that `workers` uses `serve` and not the other way too.
fn run_serve(args: serve::ServeArgs) -> ExitCode {
    let run = if args.worker_slot.is_some() {
        workers::worker(args)
    } else if let Some((sockets, metrics)) = upecho::serve::upgrade::inherited_from_env() {
        serve::successor(args, sockets, metrics)
    } else if let Some(n) = args.workers {
        workers::supervise(args, n)
    } else {
        serve::serve(args)
    };
    match run {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upecho: {e}");
            ExitCode::FAILURE
        }
    }
}

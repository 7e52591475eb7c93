//! The `upecho` binary: parses the command line and hands each subcommand to the library.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve TCP and UDP: every byte comes back with ASCII letters upper-cased.
    #[command(after_help = LOG_HELP)]
    Serve(upecho::serve::ServeArgs),
    /// TCP client: interactive at a terminal, full-duplex like `nc -N` in a pipe.
    Tcp(upecho::client::TcpArgs),
    /// UDP client: one datagram per line, replies matched to requests.
    Udp(upecho::client::UdpArgs),
    /// Load generator: throughput, latency percentiles, every byte verified.
    #[command(after_help = LOG_HELP)]
    Load(upecho::load::LoadArgs),
    /// Print a shell completion script, e.g. `upecho completions bash > ~/.local/share/bash-completion/completions/upecho`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `upecho man | man -l -`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Clients keep stderr quiet unless asked; the server and the load generator narrate at info.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Load(_) => "info",
        Command::Tcp(_) | Command::Udp(_) | Command::Completions { .. } | Command::Man => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    match cli.command {
        Command::Serve(args) => upecho::serve::main(args),
        Command::Tcp(args) => upecho::client::run_tcp(args),
        Command::Udp(args) => upecho::client::run_udp(args),
        Command::Load(args) => upecho::load::run(args),
        Command::Completions { shell } => {
            // Generated from the same clap definitions as the parser, so they cannot drift apart.
            clap_complete::generate(shell, &mut Cli::command(), "upecho", &mut io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => print_man(),
    }
}

/// The man page's ENVIRONMENT and FILES sections, in roff.
const MAN_TAIL: &str = r#".SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter for the messages on stderr, as in env_logger: \fBdebug\fR for one line per connection,
\fBtrace\fR for more, \fBwarn\fR for quiet. The default is \fBinfo\fR for serve and load,
\fBwarn\fR for the clients.
.TP
.B XDG_STATE_HOME
Where the interactive clients keep their line history (see FILES).
.SH FILES
.TP
.I $XDG_STATE_HOME/upecho/history
History of the lines typed at the interactive \fBtcp\fR and \fBudp\fR prompts, shared by both;
\fI~/.local/state/upecho/history\fR when XDG_STATE_HOME is not set. Not written with
\fB\-\-no\-history\fR.
"#;

/// One man page for the whole tool, its subcommands included, as `man upecho` readers expect.
fn print_man() -> ExitCode {
    let cmd = Cli::command();
    let mut page = Vec::new();
    let result = render_man(&cmd, &mut page).and_then(|()| {
        let mut out = io::stdout().lock();
        out.write_all(&page).and_then(|()| out.flush())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upecho man: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_man(cmd: &clap::Command, out: &mut Vec<u8>) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // A section per subcommand with its own options: the default page names the subcommands only,
    // which leaves a reader of `man upecho` no way to learn their flags.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("upecho {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let mut part = Vec::new();
        let sub_man = clap_mangen::Man::new(sub.clone().bin_name(name));
        sub_man.render_synopsis_section(&mut part)?;
        sub_man.render_description_section(&mut part)?;
        sub_man.render_options_section(&mut part)?;
        // clap_mangen renders whole sections; inside ours they become subsections.
        for line in String::from_utf8_lossy(&part).lines() {
            match line {
                ".SH SYNOPSIS" | ".SH DESCRIPTION" => writeln!(out, ".PP")?,
                ".SH OPTIONS" => writeln!(out, ".SS Options")?,
                _ => writeln!(out, "{line}")?,
            }
        }
    }
    // Written by hand: clap_mangen would title the after_help text "EXTRA".
    out.write_all(MAN_TAIL.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}

//! The `upecho` binary: parses the command line and hands each subcommand to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// upecho: an upper-casing echo server (TCP and UDP), its clients, and a verifying load generator.
#[derive(Debug, Parser)]
#[command(name = "upecho", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve TCP and UDP: every byte comes back with ASCII letters upper-cased.
    Serve(upecho::serve::ServeArgs),
    /// TCP client: interactive at a terminal, full-duplex like `nc -N` in a pipe.
    Tcp(upecho::client::TcpArgs),
    /// UDP client: one datagram per line, replies matched to requests.
    Udp(upecho::client::UdpArgs),
    /// Load generator: throughput, latency percentiles, every byte verified.
    Load(upecho::load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Clients keep stderr quiet unless asked; the server and the load generator narrate at info.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Load(_) => "info",
        Command::Tcp(_) | Command::Udp(_) => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    match cli.command {
        Command::Serve(args) => upecho::serve::main(args),
        Command::Tcp(args) => upecho::client::run_tcp(args),
        Command::Udp(args) => upecho::client::run_udp(args),
        Command::Load(args) => upecho::load::run(args),
    }
}

//! `upecho tcp` and `upecho udp`: the tutorial's clients, interactive at a terminal, `nc`-like in a pipe.

use std::process::ExitCode;

use clap::Args;

/// Options of `upecho tcp`.
#[derive(Debug, Args)]
pub struct TcpArgs {
    /// Server address (host:port).
    #[arg(default_value = "127.0.0.1:8005")]
    pub addr: String,
}

/// Options of `upecho udp`.
#[derive(Debug, Args)]
pub struct UdpArgs {
    /// Server address (host:port).
    #[arg(default_value = "127.0.0.1:8005")]
    pub addr: String,
}

/// Runs `upecho tcp`.
pub fn run_tcp(args: TcpArgs) -> ExitCode {
    eprintln!("upecho tcp {}: not implemented yet", args.addr);
    ExitCode::FAILURE
}

/// Runs `upecho udp`.
pub fn run_udp(args: UdpArgs) -> ExitCode {
    eprintln!("upecho udp {}: not implemented yet", args.addr);
    ExitCode::FAILURE
}

//! `upecho serve`: the command-line options and the glue from them to the reactor.

use std::process::ExitCode;

use clap::Args;

use crate::Transform;

/// Options of `upecho serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve TCP and UDP on; repeat for several (IPv6 as `[::1]:8005`).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:8005")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Serve TCP only.
    #[arg(long, conflicts_with = "udp_only")]
    pub tcp_only: bool,
    /// Serve UDP only.
    #[arg(long)]
    pub udp_only: bool,
    /// What to do to each byte.
    #[arg(long, value_enum, default_value_t = Transform::Upper)]
    pub transform: Transform,
}

/// Runs `upecho serve` and returns the process exit code.
pub fn main(args: ServeArgs) -> ExitCode {
    eprintln!("upecho serve {:?}: not implemented yet", args.listen);
    ExitCode::FAILURE
}

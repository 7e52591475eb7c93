//! `upecho load`: the verifying load generator.

use std::process::ExitCode;

use clap::Args;

/// Options of `upecho load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Server address (host:port).
    #[arg(default_value = "127.0.0.1:8005")]
    pub addr: String,
}

/// Runs `upecho load`.
pub fn run(args: LoadArgs) -> ExitCode {
    eprintln!("upecho load {}: not implemented yet", args.addr);
    ExitCode::FAILURE
}

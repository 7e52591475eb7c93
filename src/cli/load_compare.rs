//! `upecho load-compare A B`'s command line: two runs read, compared (see
//! [`upecho::load::compare`] for the statistics), the table printed, and an exit code a CI job
//! can act on: 0 when B is not worse than A beyond noise, 1 when it is (as `diff` exits 1 when
//! its files differ), 2 on a usage error or a file that cannot be read as a run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::load::{say, write_stdout};
use super::load_questions::parse_share;

/// Options of `upecho load-compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The baseline run: the JSON report of `upecho load --json`, or its interval log
    /// (`--histogram-log`, .hlog).
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The run compared with it, read the same way.
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Differences smaller than this are noise, however significant (e.g. 5%, 0.05): seconds of
    /// one run are not independent, so tiny differences test "significant" without repeating.
    #[arg(long, default_value = "5%", value_parser = parse_share)]
    pub noise: f64,
    /// Print one JSON object on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Runs `upecho load-compare`.
pub(crate) fn run(args: CompareArgs) -> ExitCode {
    let read = |p: &PathBuf| upecho::load::read_samples(p);
    let (a, b) = match (read(&args.a), read(&args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            say(&format!("upecho load-compare: {e}\n"));
            return ExitCode::from(2);
        }
    };
    let c = upecho::load::compare(
        &args.a.display().to_string(),
        &a,
        &args.b.display().to_string(),
        &b,
        args.noise,
    );
    let text = c.text();
    let written = if args.json {
        say(&text);
        let json = serde_json::to_string(&c).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        write_stdout(&format!("{json}\n"))
    } else {
        write_stdout(&text)
    };
    if let Err(e) = written {
        say(&format!(
            "upecho load-compare: cannot write the result: {e}\n"
        ));
        return ExitCode::from(2);
    }
    if c.worse {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

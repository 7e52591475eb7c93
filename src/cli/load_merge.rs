//! `upecho load-merge`'s command line: the interval logs of runs made together, merged into one
//! summary (the merging itself is [`upecho::load::merge_logs`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::load::{create_hlog, say, write_stdout};

/// Options of `upecho load-merge`.
#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// Interval logs written by `upecho load --histogram-log` (or any HdrHistogram writer),
    /// from runs made at the same time, e.g. on several machines.
    #[arg(required = true, value_name = "FILE.hlog")]
    pub logs: Vec<PathBuf>,
    /// Print one JSON object on stdout (the human summary then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write the merged latency distribution to FILE in HdrHistogram's .hgrm text form.
    #[arg(long, value_name = "FILE")]
    pub histogram: Option<PathBuf>,
    /// Write the merged seconds to FILE as an interval log.
    #[arg(long, value_name = "FILE")]
    pub histogram_log: Option<PathBuf>,
}

/// Runs `upecho load-merge`: exit 0 when every log was read and every run in them passed, 1
/// when a log cannot be read or a run failed, 2 on a usage error.
pub(crate) fn run_merge(args: MergeArgs) -> ExitCode {
    let mut out = match create_hlog(args.histogram_log.as_deref(), "upecho load-merge") {
        Ok(w) => w,
        Err(code) => return code,
    };
    let (report, hist) = match upecho::load::merge_logs(&args.logs, out.as_mut()) {
        Ok(r) => r,
        Err(e) => {
            say(&format!("upecho load-merge: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    let json = serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    if let Some(w) = out
        && let Err(e) = w.finish(&json)
    {
        say(&format!("upecho load-merge: {e}\n"));
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.histogram
        && let Err(e) = std::fs::write(path, upecho::load::hgrm(&hist))
    {
        say(&format!(
            "upecho load-merge: cannot write {}: {e}\n",
            path.display()
        ));
        return ExitCode::FAILURE;
    }
    let written = if args.json {
        say(&report.text());
        write_stdout(&format!("{json}\n"))
    } else {
        write_stdout(&report.text())
    };
    if let Err(e) = written {
        say(&format!(
            "upecho load-merge: cannot write the report: {e}\n"
        ));
        return ExitCode::FAILURE;
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

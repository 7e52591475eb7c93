//! The questions `upecho load` answers beyond "how fast at this setting": `--search` (the highest
//! rate meeting a target), `--fail-if` (thresholds for CI) and `--report` (a page of charts).
//! The search itself is [`upecho::load::search`], the page [`upecho::load::page`]; this file
//! holds their flags, what goes to stdout, and the exit codes.
//!
//! Exit codes of `upecho load` (also in docs/load-questions.md): 0 the run (or search) passed;
//! 1 the run failed (a wrong byte, errors without `--tolerate-errors`, nothing answered) or a
//! file could not be written; 2 a usage error; 3 `--search` found no rate meeting the target;
//! [`THRESHOLD_EXIT`] a `--fail-if` threshold was crossed by a run that otherwise passed;
//! 128 + N when signal N cut the run short.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use upecho::load::{Cond, Crossed, Report, RunOutput, SearchReport, SearchSpec};

/// The exit code of a run that crossed a `--fail-if` threshold (k6's, for the same thing).
pub(crate) const THRESHOLD_EXIT: u8 = 99;
/// The exit code of a search that found no rate meeting its target.
pub(crate) const NO_ANSWER_EXIT: u8 = 3;

/// `--search`, `--fail-if` and `--report`.
#[derive(Debug, Args)]
pub(crate) struct QuestionArgs {
    /// Find the highest open-loop rate meeting a target, e.g. 'p99<2ms' or 'p50<500us and
    /// p99.9<5ms' (p50, p90, p99, p99.9, max, mean; also errors, msgs_per_s, ...): grows the
    /// rate until a step fails, bisects to --precision, confirms over --confirm-time. pingpong
    /// (TCP, UDP) and churn (connections/s).
    #[arg(long, value_name = "TARGET", value_parser = parse_target,
          conflicts_with_all = ["rate", "duration", "warmup"])]
    pub search: Option<Target>,
    /// --search: the first rate tried (messages/s; churn: connections/s).
    #[arg(long, default_value = "1000", value_name = "RATE", value_parser = parse_search_rate,
          requires = "search")]
    pub search_start: f64,
    /// --search: the highest rate tried.
    #[arg(long, default_value = "1e9", value_name = "RATE", value_parser = parse_search_rate,
          requires = "search")]
    pub search_max: f64,
    /// --search: bisect until the highest pass and the lowest failure are this close (e.g. 2%).
    #[arg(long, default_value = "2%", value_parser = parse_precision, requires = "search")]
    pub precision: f64,
    /// --search: how long each step measures at its rate.
    #[arg(long, default_value = "3s", value_parser = parse_step, requires = "search")]
    pub step_time: Duration,
    /// --search: the unmeasured time at each step's rate before it measures.
    #[arg(long, default_value = "1s", value_parser = parse_settle, requires = "search")]
    pub settle: Duration,
    /// --search: how long the found rate is measured again to confirm it.
    #[arg(long, default_value = "10s", value_parser = parse_step, requires = "search")]
    pub confirm_time: Duration,
    /// --search: errors plus UDP losses a step may have, as a share of its messages (e.g.
    /// 0.1%); more fails the step.
    #[arg(long, default_value = "0.1%", value_parser = parse_share, requires = "search")]
    pub error_tolerance: f64,
    /// Fail the run (exit 99) when this holds at its end, e.g. 'p99>5ms', 'errors>0',
    /// 'msgs_per_s<100000'; repeatable, each one checked.
    #[arg(long, value_name = "EXPR", value_parser = parse_threshold)]
    pub fail_if: Vec<Cond>,
    /// Write a self-contained HTML page of the run's charts (and a search's knee) to FILE.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Internal: a step of --search in a child of --processes.
    #[arg(long, hide = true, value_name = "RATE")]
    pub step_rate: Option<f64>,
    #[arg(long, hide = true, value_name = "SECS")]
    pub step_duration: Option<f64>,
    #[arg(long, hide = true, value_name = "SECS")]
    pub step_warmup: Option<f64>,
}

/// A search's target: conditions that must all hold.
#[derive(Debug, Clone)]
pub(crate) struct Target(pub Vec<Cond>);

fn parse_target(s: &str) -> Result<Target, String> {
    upecho::load::parse_all(s).map(Target)
}

fn parse_threshold(s: &str) -> Result<Cond, String> {
    if s.contains(" and ") || s.contains("&&") {
        return Err(format!(
            "`{s}`: one threshold per --fail-if (repeat the flag for more)"
        ));
    }
    s.parse()
}

/// `2%` or `0.02`: a share from 0 to 1.
pub(crate) fn parse_share(s: &str) -> Result<f64, String> {
    let v = match s.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    };
    match v {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a share from 0 to 100% (e.g. 5% or 0.05)"
        )),
    }
}

fn parse_precision(s: &str) -> Result<f64, String> {
    match parse_share(s)? {
        v if (0.001..=0.5).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a precision from 0.1% to 50% (finer would take a step per tenth of a \
             percent, coarser would say little)"
        )),
    }
}

fn parse_search_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v)
            if v.is_finite() && (upecho::load::MIN_RATE..=upecho::load::MAX_RATE).contains(&v) =>
        {
            Ok(v)
        }
        _ => Err(format!(
            "`{s}` is not a rate between {} and {:e} per second",
            upecho::load::MIN_RATE,
            upecho::load::MAX_RATE
        )),
    }
}

fn parse_step(s: &str) -> Result<Duration, String> {
    let d = upecho::units::parse_duration(s)?;
    if (Duration::from_millis(500)..=Duration::from_secs(3600)).contains(&d) {
        Ok(d)
    } else {
        Err(format!("`{s}` is not between 0.5 s and an hour"))
    }
}

fn parse_settle(s: &str) -> Result<Duration, String> {
    let d = upecho::units::parse_duration(s)?;
    if d <= Duration::from_secs(3600) {
        Ok(d)
    } else {
        Err(format!("`{s}` is more than an hour"))
    }
}

impl QuestionArgs {
    /// The search's settings, if `--search` was given.
    pub(crate) fn spec(&self) -> Option<SearchSpec> {
        let targets = self.search.clone()?.0;
        Some(SearchSpec {
            targets,
            start: self.search_start,
            max: self.search_max.max(self.search_start),
            precision: self.precision,
            step: self.step_time,
            settle: self.settle,
            confirm: self.confirm_time,
            error_tolerance: self.error_tolerance,
        })
    }
}

/// The thresholds' line of the text summary (empty without `--fail-if`).
pub(crate) fn thresholds_text(fail_if: &[Cond], crossed: &[Crossed]) -> String {
    if fail_if.is_empty() {
        return String::new();
    }
    if crossed.is_empty() {
        let all: Vec<&str> = fail_if.iter().map(|c| c.text.as_str()).collect();
        return format!("  thresholds  ok (none of {} holds)\n", all.join(", "));
    }
    let what: Vec<String> = crossed
        .iter()
        .map(|c| format!("{} ({})", c.threshold, c.value))
        .collect();
    format!(
        "  thresholds  FAILED (exit {THRESHOLD_EXIT}): {}\n",
        what.join("; ")
    )
}

/// The `--fail-if` part of the JSON: every threshold, its value, and whether it was crossed.
fn thresholds_json(fail_if: &[Cond], crossed: &[Crossed], report: Option<&Report>) -> Value {
    let list: Vec<Value> = fail_if
        .iter()
        .map(|c| {
            json!({
                "threshold": c.text,
                "value": report.map(|r| c.show_value(r)),
                "crossed": crossed.iter().any(|x| x.threshold == c.text),
            })
        })
        .collect();
    Value::Array(list)
}

/// The JSON object printed with `--json`: the run's report, with the thresholds (and for a
/// search, the search, with the confirmation's report as `run`).
pub(crate) fn json_out(
    report: Option<&Report>,
    search: Option<&SearchReport>,
    fail_if: &[Cond],
    crossed: &[Crossed],
) -> String {
    let thresholds = thresholds_json(fail_if, crossed, report);
    let ok = crossed.is_empty();
    let v = match search {
        Some(s) => json!({
            "search": s,
            "run": report,
            "fail_if": thresholds,
            "thresholds_ok": ok,
        }),
        None => {
            let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("fail_if".into(), thresholds);
                m.insert("thresholds_ok".into(), Value::Bool(ok));
            }
            v
        }
    };
    serde_json::to_string(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Writes the `--report` page; says why it could not.
pub(crate) fn write_page(
    path: &std::path::Path,
    out: &RunOutput,
    search: Option<&SearchReport>,
) -> Result<(), String> {
    let page = upecho::load::page(&out.report, &out.hist, search)?;
    std::fs::write(path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One line per finished step, on stderr, while a search goes.
pub(crate) fn step_line(n: usize, s: &upecho::load::Step) -> String {
    let lat = s
        .latency_us
        .map(|l| {
            format!(
                "p50 {}  p99 {}  p99.9 {}",
                upecho::load::show_us(l.p50),
                upecho::load::show_us(l.p99),
                upecho::load::show_us(l.p999)
            )
        })
        .unwrap_or_else(|| "no latency".into());
    let res = if s.pass {
        "pass".to_string()
    } else {
        format!("FAIL: {}", s.why.join("; "))
    };
    format!(
        "[step {n:>2} {:7}] offered {:>10.0}/s achieved {:>10.0}/s  {lat}  errors {}  {res}\n",
        s.kind.name(),
        s.offered,
        s.achieved,
        s.errors + s.losses
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_as_percentages_or_fractions() {
        assert_eq!(parse_share("5%").unwrap(), 0.05);
        assert_eq!(parse_share("0.25").unwrap(), 0.25);
        assert!(parse_share("150%").is_err());
        assert!(parse_precision("0%").is_err());
        assert!(parse_precision("2%").is_ok());
        assert!(
            parse_threshold("p99>5ms and p50>1ms")
                .unwrap_err()
                .contains("one threshold")
        );
    }
}

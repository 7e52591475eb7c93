//! Conditions on a run's figures: `p99<2ms`, `errors>0`, `msgs_per_s<100000`, joined with
//! `and`. `--search` holds each step to its conditions (the target); `--fail-if` fails a run
//! whose figures meet one (a threshold).
//!
//! Latencies take a unit (`ns`, `us`/`µs`, `ms`, `s`): `p99<2` would be a guess. Counts and
//! rates are plain numbers, with an optional `k`, `M` or `G`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::report::Report;

/// A figure of a run a condition can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
    Errors,
    Mismatches,
    Losses,
    MsgsPerS,
    MbPerS,
    ConnectsPerS,
    Messages,
}

/// Every metric with the names it is written as (the first is how it is shown).
const METRICS: &[(Metric, &[&str])] = &[
    (Metric::P50, &["p50"]),
    (Metric::P90, &["p90"]),
    (Metric::P99, &["p99"]),
    (Metric::P999, &["p99.9", "p999"]),
    (Metric::Max, &["max"]),
    (Metric::Mean, &["mean"]),
    (Metric::Errors, &["errors"]),
    (Metric::Mismatches, &["mismatches"]),
    (Metric::Losses, &["losses"]),
    (Metric::MsgsPerS, &["msgs_per_s"]),
    (Metric::MbPerS, &["mb_per_s"]),
    (Metric::ConnectsPerS, &["connects_per_s"]),
    (Metric::Messages, &["messages"]),
];

impl Metric {
    pub fn name(self) -> &'static str {
        METRICS
            .iter()
            .find(|(m, _)| *m == self)
            .map(|(_, n)| n[0])
            .unwrap_or("?")
    }

    /// Whether the metric is a latency (microseconds inside, written with a unit).
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            Metric::P50 | Metric::P90 | Metric::P99 | Metric::P999 | Metric::Max | Metric::Mean
        )
    }

    /// The metric's value in `r` (latencies in microseconds); `None`: no latency was recorded.
    pub fn of(self, r: &Report) -> Option<f64> {
        let l = r.latency_us.as_ref();
        Some(match self {
            Metric::P50 => l?.p50,
            Metric::P90 => l?.p90,
            Metric::P99 => l?.p99,
            Metric::P999 => l?.p999,
            Metric::Max => l?.max,
            Metric::Mean => l?.mean,
            Metric::Errors => r.errors.total as f64,
            Metric::Mismatches => r.mismatches as f64,
            Metric::Losses => r.losses as f64,
            Metric::MsgsPerS => r.msgs_per_s,
            Metric::MbPerS => r.mb_per_s,
            Metric::ConnectsPerS => r.connects_per_s,
            Metric::Messages => r.messages as f64,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Cmp {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Cmp {
    fn symbol(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }

    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

/// One comparison of a metric with a value, as written (`p99<2ms`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cond {
    pub metric: Metric,
    pub cmp: Cmp,
    /// Latencies in microseconds.
    pub value: f64,
    /// As the user wrote it, normalised (`p99<2ms`).
    pub text: String,
}

impl Cond {
    /// Whether the condition is met by `r`; `None` when `r` has no value for it (a latency
    /// condition on a run that recorded none).
    pub fn holds(&self, r: &Report) -> Option<bool> {
        self.metric.of(r).map(|v| self.cmp.holds(v, self.value))
    }

    /// The metric's value in `r`, as it is written in the condition (`2.31ms`, `12`).
    pub fn show_value(&self, r: &Report) -> String {
        match self.metric.of(r) {
            None => "none recorded".into(),
            Some(v) if self.metric.is_latency() => show_us(v),
            Some(v) => show_num(v),
        }
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A microsecond figure with the unit that reads best.
pub fn show_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", trim(us / 1e6))
    } else if us >= 1e3 {
        format!("{}ms", trim(us / 1e3))
    } else {
        format!("{}us", trim(us))
    }
}

fn show_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

impl FromStr for Cond {
    type Err = String;

    fn from_str(s: &str) -> Result<Cond, String> {
        let s = s.trim();
        let at = s
            .find(['<', '>'])
            .ok_or_else(|| format!("`{s}` has no comparison (<, <=, > or >=), e.g. p99<2ms"))?;
        let name = s[..at].trim();
        let rest = &s[at..];
        let (cmp, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Cmp::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Cmp::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Cmp::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Cmp::Gt, v)
        } else {
            unreachable!("found < or > at {at}")
        };
        let value = value.trim();
        let metric = METRICS
            .iter()
            .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            .map(|(m, _)| *m)
            .ok_or_else(|| {
                let all: Vec<&str> = METRICS.iter().map(|(_, n)| n[0]).collect();
                format!(
                    "`{name}` in `{s}` is not a metric (one of {})",
                    all.join(", ")
                )
            })?;
        let v = if metric.is_latency() {
            parse_latency_us(value).map_err(|e| format!("`{s}`: {e}"))?
        } else {
            parse_number(value).map_err(|e| format!("`{s}`: {e}"))?
        };
        let shown = if metric.is_latency() {
            show_us(v)
        } else {
            show_num(v)
        };
        Ok(Cond {
            metric,
            cmp,
            value: v,
            text: format!("{}{}{shown}", metric.name(), cmp.symbol()),
        })
    }
}

/// Conditions joined with `and` (or `&&`), at least one.
pub fn parse_all(s: &str) -> Result<Vec<Cond>, String> {
    let mut parts = vec![String::new()];
    for w in s.replace("&&", " && ").split_whitespace() {
        if w.eq_ignore_ascii_case("and") || w == "&&" {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push_str(w);
        }
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "`{s}` has an empty condition (before or after `and`)"
        ));
    }
    parts.iter().map(|p| p.parse()).collect()
}

/// `2ms`, `500us`, `1.5 s`: a latency in microseconds, positive and finite.
fn parse_latency_us(v: &str) -> Result<f64, String> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = (&v[..split], v[split..].trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{v}` is not a latency such as 2ms, 500us or 1.5s"))?;
    let scale = match unit {
        "ns" => 1e-3,
        "us" | "µs" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "" => return Err(format!("`{v}` needs a unit (ns, us, ms or s), e.g. 2ms")),
        _ => return Err(format!("`{unit}` is not a unit of time (ns, us, ms or s)")),
    };
    let us = n * scale;
    if us.is_finite() && us > 0.0 && us <= 60e6 {
        Ok(us)
    } else {
        Err(format!(
            "`{v}` is not a latency above 0 and at most a minute"
        ))
    }
}

/// `100000`, `100k`, `1.5M`, `0`.
fn parse_number(v: &str) -> Result<f64, String> {
    let (num, scale) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1e3),
        Some('M') => (&v[..v.len() - 1], 1e6),
        Some('G') => (&v[..v.len() - 1], 1e9),
        _ => (v, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n * scale),
        _ => Err(format!(
            "`{v}` is not a number of at least 0 (e.g. 100000 or 100k)"
        )),
    }
}

/// A `--fail-if` condition that a run met (or could not be judged by).
#[derive(Debug, Clone, Serialize)]
pub struct Crossed {
    pub threshold: String,
    /// The run's value of the metric, as the threshold writes it.
    pub value: String,
}

/// The thresholds `fail_if` that `r` crosses: those that hold, and those that cannot be judged
/// (a latency threshold on a run that recorded no latency: not knowing is not passing).
pub fn crossed(fail_if: &[Cond], r: &Report) -> Vec<Crossed> {
    fail_if
        .iter()
        .filter(|c| c.holds(r) != Some(false))
        .map(|c| Crossed {
            threshold: c.text.clone(),
            value: c.show_value(r),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_their_metric_comparison_and_unit() {
        let c: Cond = "p99<2ms".parse().unwrap();
        assert_eq!((c.metric, c.cmp, c.value), (Metric::P99, Cmp::Lt, 2000.0));
        assert_eq!(c.text, "p99<2ms");
        let c: Cond = " p99.9 <= 750us ".parse().unwrap();
        assert_eq!((c.metric, c.cmp, c.value), (Metric::P999, Cmp::Le, 750.0));
        let c: Cond = "msgs_per_s<100k".parse().unwrap();
        assert_eq!((c.metric, c.value), (Metric::MsgsPerS, 100_000.0));
        let c: Cond = "errors>0".parse().unwrap();
        assert_eq!((c.metric, c.cmp, c.value), (Metric::Errors, Cmp::Gt, 0.0));
        let all = parse_all("p50 < 1ms and p99<2ms").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].text, "p50<1ms");
        assert_eq!(all[1].text, "p99<2ms");
        assert_eq!(parse_all("p50<1ms&&errors>0").unwrap().len(), 2);
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        assert!("p99".parse::<Cond>().unwrap_err().contains("no comparison"));
        assert!(
            "p98<2ms"
                .parse::<Cond>()
                .unwrap_err()
                .contains("not a metric")
        );
        assert!(
            "p99<2"
                .parse::<Cond>()
                .unwrap_err()
                .contains("needs a unit")
        );
        assert!(
            "p99<2h"
                .parse::<Cond>()
                .unwrap_err()
                .contains("unit of time")
        );
        assert!("p99<0ms".parse::<Cond>().unwrap_err().contains("above 0"));
        assert!("errors>-1".parse::<Cond>().unwrap_err().contains("number"));
        assert!(parse_all("p99<2ms and").unwrap_err().contains("empty"));
    }

    #[test]
    fn latencies_show_in_the_unit_that_reads_best() {
        assert_eq!(show_us(2000.0), "2ms");
        assert_eq!(show_us(1500.0), "1.5ms");
        assert_eq!(show_us(61.25), "61.25us");
        assert_eq!(show_us(3e6), "3s");
    }
}

//! `upecho load-compare A B`: two runs compared metric by metric, with the noise taken into
//! account.
//!
//! Each run is read as its per-second samples: from `upecho load --json` (the report's
//! `series`) or from an interval log (`--histogram-log`, one histogram per second). Per metric
//! (throughput, p50, p90, p99, p99.9, max) the two medians are shown with their ratio, and the
//! two sets of samples are compared with the Mann-Whitney U test (two-sided, normal
//! approximation with tie correction and continuity correction).
//!
//! Why Mann-Whitney: per-second latency percentiles are skewed and heavy-tailed (one second
//! with a hiccup is ten times the others), so a test on means (Welch's t) is dominated by single
//! seconds; Mann-Whitney only asks whether one run's seconds tend to rank above the other's, makes
//! no assumption about the distribution, and is what benchstat uses for the same question. A
//! bootstrap interval would need many more seconds than a short run has to be stable.
//!
//! A difference counts as "worse beyond noise" only when it is significant after a Bonferroni
//! correction over the metrics compared (α = 0.05 / metrics) *and* larger than the noise floor
//! (`--noise`, default 5%): seconds of one run are not independent (a machine's state drifts), so
//! a test over them finds tiny differences "significant" that another pair of runs would not
//! repeat; the floor is the size of change below which two runs of the same thing are not told
//! apart.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::hlog;

/// The overall significance level, shared out over the metrics compared.
pub const ALPHA: f64 = 0.05;
/// Fewest per-second samples on each side for a test at all.
pub const MIN_SAMPLES: usize = 3;

/// A metric compared, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    MsgsPerS,
    P50,
    P90,
    P99,
    P999,
    Max,
}

const WHICH: [Which; 6] = [
    Which::MsgsPerS,
    Which::P50,
    Which::P90,
    Which::P99,
    Which::P999,
    Which::Max,
];

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::MsgsPerS => "msgs_per_s",
            Which::P50 => "p50_us",
            Which::P90 => "p90_us",
            Which::P99 => "p99_us",
            Which::P999 => "p99.9_us",
            Which::Max => "max_us",
        }
    }

    fn higher_is_better(self) -> bool {
        self == Which::MsgsPerS
    }
}

/// One second of a run, as compared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub msgs_per_s: f64,
    /// Percentiles in microseconds (`None`: no latency that second).
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Sample {
    fn get(&self, w: Which) -> Option<f64> {
        match w {
            Which::MsgsPerS => Some(self.msgs_per_s),
            Which::P50 => self.p50,
            Which::P90 => self.p90,
            Which::P99 => self.p99,
            Which::P999 => self.p999,
            Which::Max => self.max,
        }
    }
}

/// The per-second figures of the report's JSON that a comparison reads.
#[derive(Deserialize)]
struct JsonReport {
    series: Vec<JsonSecond>,
}

#[derive(Deserialize)]
struct JsonSecond {
    secs: f64,
    messages: u64,
    latency_us: Option<JsonSpot>,
}

#[derive(Deserialize)]
struct JsonSpot {
    p50: f64,
    p90: f64,
    p99: f64,
    #[serde(default)]
    p999: Option<f64>,
    max: f64,
}

/// Shortest second a sample is taken from: the window's last interval may be a sliver whose
/// rate means nothing.
const MIN_SECS: f64 = 0.5;

/// Reads a run's seconds from `path`: a `--json` report, or an interval log.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        // A --json report (the last JSON line, should the file hold more than one).
        let line = trimmed
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or(trimmed);
        let r: JsonReport = serde_json::from_str(line).map_err(|e| {
            format!(
                "{}: not a report of `upecho load --json` ({e})",
                path.display()
            )
        })?;
        return Ok(r
            .series
            .iter()
            .filter(|s| s.secs >= MIN_SECS)
            .map(|s| Sample {
                msgs_per_s: s.messages as f64 / s.secs,
                p50: s.latency_us.as_ref().map(|l| l.p50),
                p90: s.latency_us.as_ref().map(|l| l.p90),
                p99: s.latency_us.as_ref().map(|l| l.p99),
                p999: s.latency_us.as_ref().and_then(|l| l.p999),
                max: s.latency_us.as_ref().map(|l| l.max),
            })
            .collect());
    }
    let log = hlog::read(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    // The untagged intervals are the run's whole (tagged ones are its processes' parts).
    let untagged = log.intervals.iter().any(|i| i.tag.is_none());
    let mut out = Vec::new();
    for i in log
        .intervals
        .iter()
        .filter(|i| i.tag.is_none() == untagged && i.length >= MIN_SECS)
    {
        let h = hlog::decode(&i.encoded).map_err(|e| format!("{}: {e}", path.display()))?;
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
        out.push(Sample {
            msgs_per_s: h.len() as f64 / i.length,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
        });
    }
    Ok(out)
}

/// How B stands against A on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Better,
    Worse,
    /// No difference beyond noise (not significant, or below the noise floor).
    Same,
    /// Too few samples on a side to tell.
    Unknown,
}

/// One metric of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct MetricDiff {
    pub metric: &'static str,
    pub higher_is_better: bool,
    /// Medians of the per-second samples, and how many samples.
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub n_a: usize,
    pub n_b: usize,
    /// b / a.
    pub ratio: Option<f64>,
    /// Two-sided Mann-Whitney p-value.
    pub p_value: Option<f64>,
    pub significant: bool,
    pub verdict: Verdict,
}

/// The comparison of two runs.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub method: &'static str,
    /// The significance level each metric is tested at (α / metrics).
    pub alpha_per_metric: f64,
    /// Differences smaller than this share are noise.
    pub noise: f64,
    pub metrics: Vec<MetricDiff>,
    /// Some metric of B is worse beyond noise.
    pub worse: bool,
}

/// Compares runs `a` and `b` (their per-second samples); `noise`: the floor (0.05: 5%).
pub fn compare(a_name: &str, a: &[Sample], b_name: &str, b: &[Sample], noise: f64) -> Comparison {
    let alpha = ALPHA / WHICH.len() as f64;
    let metrics: Vec<MetricDiff> = WHICH
        .iter()
        .map(|&w| {
            let xs: Vec<f64> = a.iter().filter_map(|s| s.get(w)).collect();
            let ys: Vec<f64> = b.iter().filter_map(|s| s.get(w)).collect();
            let (ma, mb) = (median(&xs), median(&ys));
            let ratio = match (ma, mb) {
                (Some(x), Some(y)) if x > 0.0 => Some(y / x),
                _ => None,
            };
            let enough = xs.len() >= MIN_SAMPLES && ys.len() >= MIN_SAMPLES;
            let p = enough.then(|| mann_whitney(&xs, &ys));
            let significant = p.is_some_and(|p| p < alpha);
            let beyond = ratio.is_some_and(|r| (r - 1.0).abs() > noise);
            let verdict = match (enough, ratio) {
                (false, _) | (_, None) => Verdict::Unknown,
                (true, Some(r)) if significant && beyond => {
                    if (r > 1.0) == w.higher_is_better() {
                        Verdict::Better
                    } else {
                        Verdict::Worse
                    }
                }
                _ => Verdict::Same,
            };
            MetricDiff {
                metric: w.name(),
                higher_is_better: w.higher_is_better(),
                a: ma,
                b: mb,
                n_a: xs.len(),
                n_b: ys.len(),
                ratio,
                p_value: p,
                significant,
                verdict,
            }
        })
        .collect();
    let worse = metrics.iter().any(|m| m.verdict == Verdict::Worse);
    Comparison {
        a: a_name.to_string(),
        b: b_name.to_string(),
        method: "Mann-Whitney U over per-second samples (two-sided, normal approximation with \
                 tie and continuity correction), Bonferroni-corrected, with a noise floor",
        alpha_per_metric: alpha,
        noise,
        metrics,
        worse,
    }
}

impl Comparison {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "upecho load-compare: A = {}, B = {}", self.a, self.b);
        let _ = writeln!(
            s,
            "  {:<11} {:>12} {:>12} {:>8} {:>10}  verdict (medians of per-second samples)",
            "metric", "A", "B", "B/A", "p"
        );
        let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or("-".into());
        for m in &self.metrics {
            let verdict = match m.verdict {
                Verdict::Better => "better".to_string(),
                Verdict::Worse => "WORSE".to_string(),
                Verdict::Same if m.significant => {
                    "same (significant, within the noise floor)".into()
                }
                Verdict::Same => "no significant difference".into(),
                Verdict::Unknown => format!(
                    "too few samples ({} and {}, need {MIN_SAMPLES})",
                    m.n_a, m.n_b
                ),
            };
            let _ = writeln!(
                s,
                "  {:<11} {:>12} {:>12} {:>8} {:>10}  {verdict}",
                m.metric,
                f(m.a),
                f(m.b),
                m.ratio.map(|r| format!("{r:.3}")).unwrap_or("-".into()),
                m.p_value.map(|p| format!("{p:.2e}")).unwrap_or("-".into()),
            );
        }
        let _ = writeln!(
            s,
            "  test        {}; α {:.4} per metric, noise floor {}%",
            self.method,
            self.alpha_per_metric,
            self.noise * 100.0
        );
        let _ = writeln!(
            s,
            "  result      {}",
            if self.worse {
                "B is WORSE beyond noise"
            } else {
                "B is not worse beyond noise"
            }
        );
        s
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Two-sided p-value of the Mann-Whitney U test of `xs` against `ys` (normal approximation,
/// ties given their mean rank and corrected for, with continuity correction).
pub fn mann_whitney(xs: &[f64], ys: &[f64]) -> f64 {
    let (n1, n2) = (xs.len() as f64, ys.len() as f64);
    let mut all: Vec<(f64, bool)> = xs
        .iter()
        .map(|&v| (v, true))
        .chain(ys.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let mut rank_x = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1..=j+1 share their mean.
        let r = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_x += r * all[i..=j].iter().filter(|e| e.1).count() as f64;
        i = j + 1;
    }
    let u = rank_x - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let nn = n1 + n2;
    let var = n1 * n2 / 12.0 * ((nn + 1.0) - ties / (nn * (nn - 1.0)));
    if var <= 0.0 {
        // Every value equal: no difference at all.
        return 1.0;
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    (2.0 * normal_upper(z)).min(1.0)
}

/// P(Z > z) for a standard normal Z (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
fn normal_upper(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    0.5 * poly * (-x * x).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mann_whitney_tells_shifted_samples_from_shuffled_ones() {
        let a: Vec<f64> = (0..10).map(|i| 100.0 + i as f64).collect();
        let b: Vec<f64> = (0..10).map(|i| 200.0 + i as f64).collect();
        // Complete separation of 10 and 10: the exact p is 1.1e-5; the approximation is close.
        let p = mann_whitney(&a, &b);
        assert!(p < 1e-3, "{p}");
        let c: Vec<f64> = (0..10).map(|i| 100.5 + i as f64).collect();
        assert!(mann_whitney(&a, &c) > 0.5);
        assert_eq!(mann_whitney(&[1.0; 5], &[1.0; 5]), 1.0);
        assert!((normal_upper(1.959_964) - 0.025).abs() < 1e-6);
    }

    fn samples(p50: f64, rate: f64, n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let j = 1.0 + (i % 3) as f64 * 0.01;
                Sample {
                    msgs_per_s: rate * j,
                    p50: Some(p50 * j),
                    p90: Some(p50 * 1.5 * j),
                    p99: Some(p50 * 2.0 * j),
                    p999: Some(p50 * 3.0 * j),
                    max: Some(p50 * 4.0 * j),
                }
            })
            .collect()
    }

    #[test]
    fn slower_is_worse_and_same_is_same() {
        let a = samples(50.0, 10_000.0, 8);
        let same = compare("a", &a, "b", &samples(50.5, 10_000.0, 8), 0.05);
        assert!(!same.worse, "{}", same.text());
        let slow = compare("a", &a, "b", &samples(100.0, 10_000.0, 8), 0.05);
        assert!(slow.worse, "{}", slow.text());
        assert_eq!(slow.metrics[1].verdict, Verdict::Worse);
        assert_eq!(slow.metrics[0].verdict, Verdict::Same);
        let faster = compare("a", &a, "b", &samples(50.0, 20_000.0, 8), 0.05);
        assert_eq!(faster.metrics[0].verdict, Verdict::Better);
        assert!(!faster.worse);
        let few = compare("a", &a[..2], "b", &a[..2], 0.05);
        assert!(few.metrics.iter().all(|m| m.verdict == Verdict::Unknown));
    }
}

//! `--search`: the highest open-loop rate at which a run still meets its target (`p99<2ms`).
//!
//! Every step is a run of its own at a fixed `--rate`: it settles (the run's warm-up, not
//! counted: connections open, caches and queues reach their steady state), then measures for
//! `step` at that rate. Latency counts from each message's intended send time (see `schedule`),
//! so a server that falls behind shows as latency, not as a generator that quietly slowed down
//! (coordinated omission). A step passes when every target holds, the rate achieved is at least
//! [`MIN_ACHIEVED`] of the rate offered, and errors (and UDP losses) stay within the tolerance.
//!
//! The search grows the rate by [`GROWTH`] from `start` until a step fails (or shrinks it the same
//! way while the start already fails), bisects between the highest pass and the lowest failure
//! until they are within `precision` of each other, then runs the highest pass again for the
//! longer `confirm` window. Should the confirmation fail (the knee was found on a short window,
//! and a longer one sees more of the tail), the rate steps down by the precision and confirms
//! again, a few times at most. The answer is the confirmed rate: the true highest passing rate is
//! within `precision` above it, as far as a step can tell.

use std::time::Duration;

use serde::Serialize;

use super::RunOutput;
use super::config::{LoadConfig, MIN_RATE, Mode};
use super::expr::Cond;
use super::hist::Latency;

/// How much the rate grows from one step to the next until a step fails.
pub const GROWTH: f64 = 2.0;
/// The least share of the offered rate a step must achieve to pass.
pub const MIN_ACHIEVED: f64 = 0.9;
/// Confirmations tried, each a precision lower, before the search gives up.
const CONFIRM_TRIES: usize = 3;
/// Steps in all, at most: a bound whatever the settings (grow from 1/s to 10^9/s is 30).
const MAX_STEPS: usize = 64;
/// Fewest messages a step measures: a p99 of fewer says nothing, so the search does not shrink
/// the rate below this many per step.
pub const MIN_STEP_MESSAGES: f64 = 100.0;
/// Share of one CPU a generator thread may use before its steps are flagged as possibly limited
/// by the generator rather than the server.
const BUSY_SHARE: f64 = 0.85;

/// How a search runs.
#[derive(Debug, Clone, Serialize)]
pub struct SearchSpec {
    /// What every step must meet, all of it.
    pub targets: Vec<Cond>,
    /// The first rate tried, messages/s (churn: connections/s).
    pub start: f64,
    /// The highest rate tried.
    pub max: f64,
    /// Bisect until the highest pass and the lowest failure are this close (0.02: 2%).
    pub precision: f64,
    /// Measured part of each step, and the unmeasured settle before it.
    #[serde(serialize_with = "secs")]
    pub step: Duration,
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
    /// The confirmation's measured window.
    #[serde(serialize_with = "secs")]
    pub confirm: Duration,
    /// Errors plus UDP losses a step may have, as a share of the messages it sent (0: none).
    pub error_tolerance: f64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Which part of the search a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Grow,
    Bisect,
    Confirm,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Grow => "grow",
            StepKind::Bisect => "bisect",
            StepKind::Confirm => "confirm",
        }
    }
}

/// One step of the search: a run at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: StepKind,
    /// The rate offered, and the rate the window achieved (messages/s; churn: connections/s).
    pub offered: f64,
    pub achieved: f64,
    pub window_s: f64,
    pub latency_us: Option<Latency>,
    pub errors: u64,
    pub losses: u64,
    pub mismatches: u64,
    pub pass: bool,
    /// Why it failed, one reason each (empty when it passed).
    pub why: Vec<String>,
    /// The generator's CPU per message, and whether it was near one CPU per thread: then the
    /// step may measure the generator's limit rather than the server's.
    pub client_cpu_us_per_msg: Option<f64>,
    pub generator_busy: bool,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub spec: SearchSpec,
    /// The target as written (`p99<2ms and p50<1ms`).
    pub target: String,
    /// The confirmed highest rate meeting the target; `None`: not even the lowest rate tried
    /// (or the confirmation) met it.
    pub answer: Option<f64>,
    /// The lowest rate that failed, if any did: the answer is below it.
    pub lowest_failure: Option<f64>,
    /// Whether any step that decided the answer had a busy generator (see [`Step`]).
    pub generator_limited: bool,
    /// A signal ended the search early.
    pub interrupted: bool,
    pub steps: Vec<Step>,
}

/// Runs one step: the configuration to run and the kind of step, and what running it produced.
pub type RunStep<'a> = dyn FnMut(&LoadConfig, StepKind) -> RunOutput + 'a;

/// Runs the search over `base` (its rate, duration and warm-up are the search's to set): each
/// step through `run`, each finished step shown to `seen`. Returns the report and the output of
/// the last run (with an answer: its confirmation, whose report, histogram and series are the
/// figures at the answer).
pub fn search(
    base: &LoadConfig,
    spec: &SearchSpec,
    run: &mut RunStep<'_>,
    seen: &mut dyn FnMut(&Step),
) -> (SearchReport, Option<RunOutput>) {
    let mut steps: Vec<Step> = Vec::new();
    let mut interrupted = false;
    let mut take = |kind: StepKind, rate: f64, steps: &mut Vec<Step>| -> (bool, RunOutput) {
        let window = if kind == StepKind::Confirm {
            spec.confirm
        } else {
            spec.step
        };
        let cfg = LoadConfig {
            rate: Some(rate),
            duration: window,
            warmup: spec.settle,
            ..base.clone()
        };
        let out = run(&cfg, kind);
        let step = judge(base, spec, kind, rate, &out);
        seen(&step);
        let pass = step.pass;
        steps.push(step);
        (pass, out)
    };
    // Highest pass and lowest failure so far.
    let mut lo: Option<f64> = None;
    let mut hi: Option<f64> = None;
    let floor = (MIN_STEP_MESSAGES / spec.step.as_secs_f64().max(1e-3)).max(MIN_RATE);
    let mut rate = spec.start.clamp(floor.min(spec.max), spec.max);
    let mut last: Option<RunOutput> = None;
    // Grow (or shrink) until the two sides are known.
    // One step: whether it passed, or `None` when a signal ended it (and so the search).
    let mut step =
        |kind: StepKind, rate: f64, steps: &mut Vec<Step>, last: &mut Option<RunOutput>| {
            let (pass, out) = take(kind, rate, steps);
            let stopped = out.report.interrupted;
            *last = Some(out);
            (!stopped).then_some(pass)
        };
    while steps.len() < MAX_STEPS {
        let Some(pass) = step(StepKind::Grow, rate, &mut steps, &mut last) else {
            interrupted = true;
            break;
        };
        if pass {
            lo = Some(rate);
            if hi.is_some() || rate >= spec.max {
                break;
            }
            rate = (rate * GROWTH).min(spec.max);
        } else {
            hi = Some(rate);
            if lo.is_some() {
                break;
            }
            if rate <= floor {
                break;
            }
            rate = (rate / GROWTH).max(floor);
        }
    }
    // Bisect (geometrically: the precision is relative).
    while !interrupted && steps.len() < MAX_STEPS {
        let (Some(l), Some(h)) = (lo, hi) else { break };
        if h <= l * (1.0 + spec.precision) {
            break;
        }
        let mid = (l * h).sqrt();
        let Some(pass) = step(StepKind::Bisect, mid, &mut steps, &mut last) else {
            interrupted = true;
            break;
        };
        if pass {
            lo = Some(mid);
        } else {
            hi = Some(mid);
        }
    }
    // Confirm in the longer window, stepping down by the precision if it fails.
    let mut answer = None;
    if let Some(mut l) = lo {
        for _ in 0..CONFIRM_TRIES {
            if interrupted || steps.len() >= MAX_STEPS {
                break;
            }
            match step(StepKind::Confirm, l, &mut steps, &mut last) {
                None => {
                    interrupted = true;
                    break;
                }
                Some(true) => {
                    answer = Some(l);
                    break;
                }
                Some(false) => {}
            }
            hi = Some(hi.map_or(l, |h| h.min(l)));
            l /= 1.0 + spec.precision.max(0.01);
            if l < floor {
                break;
            }
        }
    }
    let lowest_failure = hi;
    let deciding =
        |s: &&Step| Some(s.offered) == answer || Some(s.offered) == lowest_failure || !s.pass;
    let generator_limited = steps.iter().filter(deciding).any(|s| s.generator_busy);
    let report = SearchReport {
        spec: spec.clone(),
        target: spec
            .targets
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        answer,
        lowest_failure,
        generator_limited,
        interrupted,
        steps,
    };
    (report, last)
}

/// Whether a step at `offered` passed, and why not.
fn judge(
    base: &LoadConfig,
    spec: &SearchSpec,
    kind: StepKind,
    offered: f64,
    out: &RunOutput,
) -> Step {
    let r = &out.report;
    let achieved = if base.mode == Mode::Churn {
        r.connects_per_s
    } else {
        r.msgs_per_s
    };
    let mut why = Vec::new();
    for c in &spec.targets {
        match c.holds(r) {
            Some(true) => {}
            Some(false) => why.push(format!("{} is {}", c.text, c.show_value(r))),
            None => why.push(format!("{}: no latency recorded", c.text)),
        }
    }
    // Short of the rate by more than the share, and by more than the two messages the edges of
    // a window can cut off.
    let expected = offered * r.window_s;
    let short = expected - achieved * r.window_s;
    if achieved < offered * MIN_ACHIEVED && short > 2.0 {
        why.push(format!(
            "achieved {achieved:.0}/s of {offered:.0}/s offered (below {:.0}%)",
            MIN_ACHIEVED * 100.0
        ));
    }
    let bad = r.errors.total + r.losses;
    let sent = r.messages + bad;
    if bad as f64 > spec.error_tolerance * sent as f64 {
        why.push(format!(
            "{} errors and losses in {sent} messages (tolerance {}%)",
            bad,
            spec.error_tolerance * 100.0
        ));
    }
    if r.mismatches > 0 {
        why.push(format!("{} wrong replies", r.mismatches));
    }
    let threads = (base.threads * base.processes).max(1) as f64;
    let busy = r.window_s > 0.0 && r.client.cpu_s / r.window_s >= BUSY_SHARE * threads;
    Step {
        kind,
        offered,
        achieved,
        window_s: r.window_s,
        latency_us: r.latency_us,
        errors: r.errors.total,
        losses: r.losses,
        mismatches: r.mismatches,
        pass: why.is_empty() && !r.interrupted,
        why,
        client_cpu_us_per_msg: r.client.cpu_us_per_msg,
        generator_busy: busy,
    }
}

impl Step {
    /// One of the step's percentiles (`|l| l.p99`) as written (`1.2ms`), or `-`.
    pub fn shown(&self, f: fn(&Latency) -> f64) -> String {
        self.latency_us
            .as_ref()
            .map(|l| super::expr::show_us(f(l)))
            .unwrap_or("-".into())
    }
}

impl SearchReport {
    /// The knee table and the answer, for a person.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let unit = "/s";
        let _ = writeln!(
            s,
            "upecho load --search '{}': {} steps (settle {} s, step {} s, confirm {} s, precision {}%)",
            self.target,
            self.steps.len(),
            self.spec.settle.as_secs_f64(),
            self.spec.step.as_secs_f64(),
            self.spec.confirm.as_secs_f64(),
            self.spec.precision * 100.0
        );
        let _ = writeln!(
            s,
            "  {:>3} {:7} {:>12} {:>12} {:>10} {:>10} {:>10} {:>7} {:>8}  result",
            "#", "step", "offered", "achieved", "p50", "p99", "p99.9", "errors", "µs/msg"
        );
        for (i, st) in self.steps.iter().enumerate() {
            let lat = |f| st.shown(f);
            let res = if st.pass {
                "pass".to_string()
            } else {
                format!("FAIL: {}", st.why.join("; "))
            };
            let _ = writeln!(
                s,
                "  {:>3} {:7} {:>10.0}{unit} {:>10.0}{unit} {:>10} {:>10} {:>10} {:>7} {:>8}  {res}{}",
                i + 1,
                st.kind.name(),
                st.offered,
                st.achieved,
                lat(|l| l.p50),
                lat(|l| l.p99),
                lat(|l| l.p999),
                st.errors + st.losses,
                st.client_cpu_us_per_msg
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or("-".into()),
                if st.generator_busy {
                    " (generator busy)"
                } else {
                    ""
                }
            );
        }
        match self.answer {
            Some(a) => {
                let above = self
                    .lowest_failure
                    .map(|f| format!(", lowest failing rate {f:.0}{unit}"))
                    .unwrap_or_else(|| " (the highest rate tried)".into());
                let _ = writeln!(
                    s,
                    "  answer      {a:.0}{unit} meets {} (confirmed over {} s){above}",
                    self.target,
                    self.spec.confirm.as_secs_f64()
                );
            }
            None => {
                let _ = writeln!(s, "  answer      no rate tried meets {}", self.target);
            }
        }
        if self.generator_limited {
            let _ = writeln!(
                s,
                "  note        the generator used nearly all of its CPU in a deciding step: the \
                 limit found may be the generator's (add --threads or --processes)"
            );
        }
        if self.interrupted {
            let _ = writeln!(s, "  result      INTERRUPTED");
        }
        s
    }
}

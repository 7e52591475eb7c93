//! What a run shows while it goes, from its merged intervals (see `interval`): the progress
//! line on stderr once a second, the report's `series` (one entry per second of the window),
//! and the interval log (`--histogram-log`).
//!
//! The progress line says what the stage is doing:
//!
//! ```text
//! [   1.0s] warmup     41234 msg/s      2.64 MB/s  p50 23.1 µs  p99 61.2 µs  open     50  errors 0  mismatches 0
//! [   3.0s] run        43012 msg/s      2.75 MB/s  p50 22.8 µs  p99 58.9 µs  open     50  errors 0  mismatches 0
//! [   2.0s] open   established   12000 (+6000/s)  connecting    256  errors 0
//! [   7.0s] hold   established  100000  errors 0
//! [  13.1s] check  answered  100000 of 100000 held  p50 812.0 µs  p99 2890.1 µs  errors 0
//! ```
//!
//! With `--processes` every figure is the sum over the processes (latency: their histograms
//! merged), second by second.

use std::time::{Instant, SystemTime};

use super::config::{LoadConfig, Mode};
use super::hist::Spot;
use super::hlog::HlogWriter;
use super::interval::{Interval, Merged};
use super::report::{Report, Second};
use super::stage::Stage;
use super::{Sink, say};

/// Intervals shorter than this get no progress line of their own.
const MIN_LINE_SECS: f64 = 0.1;

/// The sink of the process the person started: the progress line, the series, the log.
pub(crate) struct Top<'c> {
    cfg: &'c LoadConfig,
    quiet: bool,
    started: Instant,
    series: Vec<Second>,
    hlog: Option<HlogWriter>,
    /// Write each source's own interval (tagged `p0`, `p1`, ...) beside the sum.
    tag_parts: bool,
    errors: u64,
    mismatches: u64,
}

impl<'c> Top<'c> {
    pub(crate) fn new(
        cfg: &'c LoadConfig,
        hlog: Option<HlogWriter>,
        tag_parts: bool,
        started: Instant,
    ) -> Top<'c> {
        Top {
            cfg,
            quiet: cfg.quiet,
            started,
            series: Vec::new(),
            hlog,
            tag_parts,
            errors: 0,
            mismatches: 0,
        }
    }

    pub(crate) fn take_series(&mut self) -> Vec<Second> {
        std::mem::take(&mut self.series)
    }

    /// Ends the log with the report; returns why it could not be written, if it could not.
    pub(crate) fn finish(&mut self, report: &Report) -> Option<String> {
        let w = self.hlog.take()?;
        let json =
            serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        w.finish(&json).err()
    }

    fn line(&mut self, iv: &Interval) {
        self.errors += iv.errors;
        self.mismatches += iv.mismatches;
        // A sliver of an interval (no warm-up, or a stage that ended right after a second) has
        // rates that mean nothing; its counts show on the next line. A check is one event.
        if self.quiet || (iv.secs < MIN_LINE_SECS && iv.stage != Stage::Check) {
            return;
        }
        let line = progress_line(
            self.cfg,
            iv,
            self.started.elapsed().as_secs_f64(),
            self.errors,
            self.mismatches,
        );
        // Progress is a courtesy: a closed stderr only ends it, not the run.
        if !say(&line) {
            self.quiet = true;
        }
    }
}

impl Sink for Top<'_> {
    fn window_opened(&mut self, at: SystemTime) {
        let cfg = self.cfg;
        if let Some(w) = &mut self.hlog {
            let procs = if cfg.processes > 1 {
                format!(
                    "; {} processes, each one's seconds tagged p0..p{}",
                    cfg.processes,
                    cfg.processes - 1
                )
            } else {
                String::new()
            };
            w.begin(
                at,
                &format!(
                    "upecho load {}: {} {} to {}, {} connection(s), {} B, depth {}{procs}\n\
                     values in nanoseconds; intervals start at the start of the measurement window",
                    env!("CARGO_PKG_VERSION"),
                    cfg.mode.name(),
                    match cfg.proto {
                        crate::net::Proto::Tcp => "tcp",
                        crate::net::Proto::Udp => "udp",
                    },
                    cfg.addr,
                    cfg.conns,
                    cfg.size,
                    cfg.depth,
                ),
            );
        }
    }

    fn interval(&mut self, m: Merged) {
        let iv = &m.total;
        self.line(iv);
        if !iv.stage.measured() {
            return;
        }
        self.series
            .push(Second::of(iv, self.cfg.mode == Mode::Hold));
        if let Some(w) = &mut self.hlog {
            let at = |iv: &Interval| {
                (
                    std::time::Duration::from_secs_f64(iv.start.max(0.0)),
                    std::time::Duration::from_secs_f64(iv.secs.max(0.0)),
                )
            };
            if self.tag_parts {
                for (src, part) in &m.parts {
                    let (start, len) = at(part);
                    w.interval(&part.hist, start, len, Some(&format!("p{src}")));
                }
            }
            let (start, len) = at(iv);
            w.interval(&iv.hist, start, len, None);
        }
    }
}

/// `p50 23.1 µs  p99 61.2 µs`, or dashes for an interval with no sample.
fn percentiles(s: Option<Spot>) -> String {
    match s {
        Some(s) => format!("p50 {:.1} µs  p99 {:.1} µs", s.p50, s.p99),
        None => "p50 - µs  p99 - µs".to_string(),
    }
}

/// One progress line for interval `iv`, `at` seconds into the run; `errors` and `mismatches`
/// are the run's so far.
pub(crate) fn progress_line(
    cfg: &LoadConfig,
    iv: &Interval,
    at: f64,
    errors: u64,
    mismatches: u64,
) -> String {
    let per_s = |n: u64| n as f64 / iv.secs.max(1e-3);
    // This second's errors by kind, beside the run's count: a reload or restart of the server
    // shows as the second it disturbed, and how (refused, reset, closed, timed out).
    let errors = if iv.errors > 0 {
        format!("{errors} (+{}: {})", iv.errors, iv.error_kinds.text())
    } else {
        errors.to_string()
    };
    let hold = cfg.mode == Mode::Hold;
    let what = iv.stage.name(hold);
    match (iv.stage, hold) {
        (Stage::Warmup | Stage::Measure, false) => {
            // Connects: churn's unit of work, and in the other modes the reconnects that follow
            // a disturbance.
            let churn = if cfg.mode == Mode::Churn || iv.connects > 0 {
                format!(" {:>8.0} conn/s", per_s(iv.connects))
            } else {
                String::new()
            };
            format!(
                "[{at:6.1}s] {what:6} {:>10.0} msg/s {:>9.2} MB/s{churn}  {}  open {:>6}  errors {errors}  mismatches {mismatches}\n",
                per_s(iv.msgs),
                per_s(iv.bytes) / 1e6,
                percentiles(iv.spot()),
                iv.open,
            )
        }
        (Stage::Warmup, true) => format!(
            "[{at:6.1}s] {what:6} established {:>7} (+{:.0}/s)  connecting {:>6}  errors {errors}\n",
            iv.open,
            per_s(iv.connects),
            iv.connecting,
        ),
        (Stage::Measure, true) => format!(
            "[{at:6.1}s] {what:6} established {:>7}  errors {errors}\n",
            iv.open
        ),
        (Stage::Check | Stage::Drain | Stage::Stop, _) => format!(
            "[{at:6.1}s] {what:6} answered {:>7} of {} held  {}  errors {errors}\n",
            iv.answered,
            iv.held,
            percentiles(iv.spot()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::hist::new_hist;

    fn iv(stage: Stage) -> Interval {
        let mut hist = new_hist();
        for us in 1..=100u64 {
            hist.record(us * 1000).unwrap();
        }
        Interval {
            stage,
            index: 0,
            start: 0.0,
            secs: 0.5,
            msgs: 500,
            bytes: 32_000,
            errors: 0,
            error_kinds: Default::default(),
            mismatches: 0,
            connects: 10,
            held: 40,
            answered: 39,
            open: 40,
            connecting: 3,
            hist,
        }
    }

    #[test]
    fn each_stage_says_what_it_is_doing() {
        let cfg = LoadConfig::default();
        let mut quiet = iv(Stage::Measure);
        quiet.connects = 0;
        let l = progress_line(&cfg, &quiet, 3.0, 1, 2);
        assert!(l.starts_with("[   3.0s] run          1000 msg/s      0.06 MB/s  p50 50.0 µs  p99 99.0 µs  open     40  errors 1  mismatches 2\n"), "{l}");
        // A disturbed second: reconnects, and its errors by kind.
        let mut hit = iv(Stage::Measure);
        hit.errors = 3;
        hit.error_kinds.refused = 2;
        hit.error_kinds.reset = 1;
        let l = progress_line(&cfg, &hit, 3.0, 7, 0);
        assert!(l.contains("       20 conn/s"), "{l}");
        assert!(
            l.contains("errors 7 (+3: refused 2, reset 1)  mismatches 0"),
            "{l}"
        );
        let churn = LoadConfig {
            mode: Mode::Churn,
            ..LoadConfig::default()
        };
        assert!(progress_line(&churn, &iv(Stage::Warmup), 1.0, 0, 0).contains(" 20 conn/s"));
        let hold = LoadConfig {
            mode: Mode::Hold,
            ..LoadConfig::default()
        };
        let l = progress_line(&hold, &iv(Stage::Warmup), 2.0, 0, 0);
        assert!(
            l.contains("open   established      40 (+20/s)  connecting      3"),
            "{l}"
        );
        assert!(!l.contains("msg/s"), "{l}");
        let l = progress_line(&hold, &iv(Stage::Measure), 2.0, 0, 0);
        assert!(l.contains("hold   established      40  errors 0"), "{l}");
        let l = progress_line(&hold, &iv(Stage::Check), 2.0, 0, 0);
        assert!(
            l.contains("check  answered      39 of 40 held  p50 50.0 µs"),
            "{l}"
        );
        let mut empty = iv(Stage::Measure);
        empty.hist.reset();
        assert!(progress_line(&cfg, &empty, 1.0, 0, 0).contains("p50 - µs  p99 - µs"));
    }
}

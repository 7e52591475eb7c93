//! `upecho load-merge`: one summary from the interval logs (`--histogram-log`) of runs made at
//! the same time on several machines (or by several `upecho load`s on one).
//!
//! Latency is merged the only way that is right: every log's histograms are added as
//! histograms, so the merged percentiles are those of all the samples together. Second by
//! second, intervals are lined up by their wall-clock start (each log's BaseTime plus the
//! interval's offset), to the nearest second from the earliest: the machines' clocks need only
//! agree to well within a second, as NTP keeps them. A log's untagged intervals are its whole
//! run; tagged ones (a run's per-process parts) are left out, as HdrHistogram's own log
//! processor does without `-tag`.
//!
//! Counts other than latency (messages, bytes, errors, held, answered, whether each run passed)
//! come from the report `upecho load` writes at the end of its log; a log without one (another
//! tool's, or a run that was killed) adds its latency only, and the summary says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use super::hist::{Latency, Spot, new_hist};
use super::hlog::{self, HlogWriter};

/// One log as the merge saw it.
#[derive(Debug, Serialize)]
pub struct MergedFile {
    pub path: String,
    /// Untagged intervals, and the latency samples in them.
    pub intervals: usize,
    pub samples: u64,
    /// What the run was, from its report (`null` without one).
    pub run: Option<String>,
    /// Whether that run passed (`null` without a report).
    pub ok: Option<bool>,
}

/// One second of the merged runs.
#[derive(Debug, Serialize)]
pub struct MergedSecond {
    /// Seconds from the earliest interval of any log.
    pub t: f64,
    /// How many logs had an interval in this second.
    pub logs: usize,
    pub latency_us: Option<Spot>,
}

/// The merged summary, printed as text or (`--json`) one JSON object.
#[derive(Debug, Serialize)]
pub struct MergeReport {
    pub files: Vec<MergedFile>,
    pub latency_us: Option<Latency>,
    pub series: Vec<MergedSecond>,
    /// Logs that carried upecho's report, and their counts added up.
    pub reports: usize,
    pub messages: u64,
    pub bytes: u64,
    /// The runs' rates added (they ran at the same time).
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub connections: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub held: Option<u64>,
    pub answered: Option<u64>,
    pub ok: bool,
    pub failures: Vec<String>,
}

impl MergeReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let samples: u64 = self.files.iter().map(|f| f.samples).sum();
        let _ = writeln!(
            s,
            "upecho load-merge: {} log(s), {} second(s), {samples} samples",
            self.files.len(),
            self.series.len()
        );
        for f in &self.files {
            let verdict = match f.ok {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "no upecho report: latency only",
            };
            let _ = writeln!(
                s,
                "  {}: {}, {} intervals, {} samples, {verdict}",
                f.path,
                f.run.as_deref().unwrap_or("(not an upecho run)"),
                f.intervals,
                f.samples
            );
        }
        if self.reports > 0 {
            if let (Some(h), Some(a)) = (self.held, self.answered) {
                let _ = writeln!(s, "  held        {h} connections, {a} answered");
            } else {
                let _ = writeln!(
                    s,
                    "  throughput  {:.0} msg/s, {:.2} MB/s ({} messages, {} bytes, {} connections)",
                    self.msgs_per_s, self.mb_per_s, self.messages, self.bytes, self.connections
                );
            }
        }
        match &self.latency_us {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, {} samples)",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
                );
            }
            None => {
                let _ = writeln!(s, "  latency     none recorded");
            }
        }
        if self.reports > 0 {
            let _ = writeln!(
                s,
                "  errors      {} (mismatches {})",
                self.errors, self.mismatches
            );
        }
        if self.ok {
            let _ = writeln!(s, "  result      ok");
        } else {
            let _ = writeln!(s, "  result      FAILED: {}", self.failures.join("; "));
        }
        s
    }
}

/// Reads an accumulator-friendly copy: any log's histogram may be added to it.
fn accumulator() -> Histogram<u64> {
    let mut h = new_hist();
    // Another writer's values may lie beyond this project's one-minute bound.
    h.auto(true);
    h
}

/// A short description of a run from its report.
fn run_of(r: &Value) -> String {
    if r["mode"].is_null() {
        return format!(
            "a merge of {} log(s)",
            r["files"].as_array().map_or(0, Vec::len)
        );
    }
    let procs = r["processes"].as_u64().filter(|&p| p > 1);
    format!(
        "{} {} to {}, {} connection(s){}",
        r["mode"].as_str().unwrap_or("?"),
        r["proto"].as_str().unwrap_or("?"),
        r["addr"].as_str().unwrap_or("?"),
        r["connections"].as_u64().unwrap_or(0),
        procs
            .map(|p| format!(" over {p} processes"))
            .unwrap_or_default()
    )
}

/// Merges the logs at `paths` (see the module doc); with `out`, writes the merged seconds as an
/// interval log too. Returns the summary and the merged histogram, or why a log cannot be read.
pub fn merge_logs(
    paths: &[PathBuf],
    mut out: Option<&mut HlogWriter>,
) -> Result<(MergeReport, Histogram<u64>), String> {
    let mut logs = Vec::with_capacity(paths.len());
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let log = hlog::read(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        logs.push((p.as_path(), log));
    }
    let mut report = MergeReport {
        files: Vec::new(),
        latency_us: None,
        series: Vec::new(),
        reports: 0,
        messages: 0,
        bytes: 0,
        msgs_per_s: 0.0,
        mb_per_s: 0.0,
        connections: 0,
        errors: 0,
        mismatches: 0,
        held: None,
        answered: None,
        ok: true,
        failures: Vec::new(),
    };
    // Second by second, by wall-clock start.
    let earliest = logs
        .iter()
        .flat_map(|(_, l)| l.intervals.iter())
        .filter(|i| i.tag.is_none())
        .map(|i| i.start)
        .fold(f64::INFINITY, f64::min);
    if let Some(w) = out.as_deref_mut()
        && earliest.is_finite()
    {
        w.begin(
            UNIX_EPOCH + Duration::from_secs_f64(earliest.max(0.0)),
            &format!(
                "upecho load-merge of {} log(s): the runs' seconds added up, values as recorded",
                paths.len()
            ),
        );
    }
    let mut buckets: BTreeMap<u64, Vec<(usize, &str, f64)>> = BTreeMap::new();
    for (f, (path, log)) in logs.iter().enumerate() {
        let mine: Vec<_> = log.intervals.iter().filter(|i| i.tag.is_none()).collect();
        for i in &mine {
            let b = (i.start - earliest).round().max(0.0) as u64;
            buckets
                .entry(b)
                .or_default()
                .push((f, i.encoded.as_str(), i.length));
        }
        let file = describe(path, mine.len(), log.report.as_deref(), &mut report);
        report.files.push(file);
    }
    let mut total = accumulator();
    for (b, parts) in buckets {
        let mut sec = accumulator();
        let mut logs_here: Vec<usize> = Vec::new();
        let mut length: f64 = 0.0;
        for (f, enc, len) in parts {
            length = length.max(len);
            let h = hlog::decode(enc).map_err(|e| format!("{}: {e}", paths[f].display()))?;
            sec.add(&h)
                .map_err(|e| format!("{}: cannot add a histogram: {e:?}", paths[f].display()))?;
            report.files[f].samples += h.len();
            if !logs_here.contains(&f) {
                logs_here.push(f);
            }
        }
        let _ = total.add(&sec);
        if let Some(w) = out.as_deref_mut() {
            let len = Duration::from_secs_f64(length.clamp(0.0, 1e9));
            w.interval(&sec, Duration::from_secs(b), len, None);
        }
        report.series.push(MergedSecond {
            t: b as f64,
            logs: logs_here.len(),
            latency_us: Spot::of(&sec),
        });
    }
    report.latency_us = Latency::of(&total);
    if total.is_empty() {
        report.ok = false;
        report.failures.push("no latency sample in any log".into());
    }
    Ok((report, total))
}

/// Describes one log, and adds its report's counts (if it has one) to the merged ones.
fn describe(path: &Path, intervals: usize, json: Option<&str>, m: &mut MergeReport) -> MergedFile {
    let shown = path.display().to_string();
    if intervals == 0 {
        m.ok = false;
        m.failures.push(format!(
            "{shown} has no untagged interval (nothing measured)"
        ));
    }
    // A report is upecho load's (or load-merge's own, for a merge of merges): it says `ok`.
    let report = json
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|r| r["ok"].is_boolean());
    let Some(r) = report else {
        return MergedFile {
            path: shown,
            intervals,
            samples: 0,
            run: None,
            ok: None,
        };
    };
    m.reports += 1;
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    m.messages += u("messages");
    m.bytes += u("bytes");
    m.connections += u("connections");
    m.msgs_per_s += r["msgs_per_s"].as_f64().unwrap_or(0.0);
    m.mb_per_s += r["mb_per_s"].as_f64().unwrap_or(0.0);
    m.errors += r["errors"]["total"]
        .as_u64()
        .or(r["errors"].as_u64())
        .unwrap_or(0);
    m.mismatches += u("mismatches");
    if let Some(h) = r["held"].as_u64() {
        *m.held.get_or_insert(0) += h;
    }
    if let Some(a) = r["answered"].as_u64() {
        *m.answered.get_or_insert(0) += a;
    }
    let ok = r["ok"].as_bool().unwrap_or(false);
    if !ok {
        m.ok = false;
        let why: Vec<String> = r["failures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let why = if r["interrupted"].as_bool() == Some(true) {
            "interrupted".to_string()
        } else {
            why.join("; ")
        };
        m.failures.push(format!("{shown}: {why}"));
    }
    MergedFile {
        path: shown,
        intervals,
        samples: 0,
        run: Some(run_of(&r)),
        ok: Some(ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(path: &Path, t0: u64, secs: &[&[u64]], report: &str) -> Histogram<u64> {
        let mut w = HlogWriter::create(path).unwrap();
        w.begin(UNIX_EPOCH + Duration::from_secs(t0), "test");
        let mut all = new_hist();
        for (k, vals) in secs.iter().enumerate() {
            let mut h = new_hist();
            for &v in *vals {
                h.record(v).unwrap();
            }
            all.add(&h).unwrap();
            w.interval(
                &h,
                Duration::from_secs(k as u64),
                Duration::from_secs(1),
                None,
            );
            // A part, which the merge leaves out.
            w.interval(
                &h,
                Duration::from_secs(k as u64),
                Duration::from_secs(1),
                Some("p0"),
            );
        }
        w.finish(report).unwrap();
        all
    }

    #[test]
    fn logs_merge_as_histograms_second_by_second_by_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.hlog"), dir.path().join("b.hlog"));
        let ra = r#"{"mode":"pingpong","proto":"tcp","addr":"127.0.0.1:1","connections":2,"messages":3,"bytes":192,"msgs_per_s":3.0,"mb_per_s":0.0002,"errors":{"total":0},"mismatches":0,"held":null,"answered":null,"ok":true,"failures":[]}"#;
        let rb = r#"{"mode":"pingpong","proto":"tcp","addr":"127.0.0.1:1","connections":1,"messages":4,"bytes":256,"msgs_per_s":4.0,"mb_per_s":0.0003,"errors":{"total":1},"mismatches":0,"ok":false,"failures":["1 error (reset 1)"]}"#;
        let ha = write_log(&a, 1_000, &[&[1_000, 2_000], &[3_000]], ra);
        // Started a second later: its first second lines up with a's second.
        let hb = write_log(&b, 1_001, &[&[10_000, 20_000, 30_000], &[40_000]], rb);
        let (r, total) = merge_logs(&[a.clone(), b.clone()], None).unwrap();
        let mut want = ha.clone();
        want.add(&hb).unwrap();
        assert_eq!(total, want);
        assert_eq!(r.latency_us.unwrap().count, 7);
        assert_eq!(r.series.len(), 3);
        assert_eq!(r.series[1].logs, 2);
        assert_eq!(r.series[1].latency_us.unwrap().count, 4);
        assert_eq!((r.messages, r.errors, r.reports), (7, 1, 2));
        assert!(!r.ok);
        assert!(
            r.failures[0].contains("1 error (reset 1)"),
            "{:?}",
            r.failures
        );
        let text = r.text();
        assert!(text.contains("2 log(s), 3 second(s), 7 samples"), "{text}");
        assert!(text.contains("result      FAILED"), "{text}");
        // And the merge itself written as a log reads back as the same histogram.
        let c = dir.path().join("c.hlog");
        let mut w = HlogWriter::create(&c).unwrap();
        let (_, again) = merge_logs(&[a, b], Some(&mut w)).unwrap();
        w.finish("{}").unwrap();
        let (r2, t2) = merge_logs(&[c], None).unwrap();
        assert_eq!(t2, again);
        assert_eq!(r2.files[0].ok, None);
    }

    #[test]
    fn a_missing_or_foreign_file_says_which() {
        let e = merge_logs(&[PathBuf::from("/nonexistent/x.hlog")], None).unwrap_err();
        assert!(e.contains("cannot read /nonexistent/x.hlog"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.hlog");
        std::fs::write(&p, "this is not a log\n").unwrap();
        let e = merge_logs(std::slice::from_ref(&p), None).unwrap_err();
        assert!(
            e.contains("junk.hlog") && e.contains("not an interval log"),
            "{e}"
        );
    }
}

//! The final report: the figures a run ends with ([`Report`]), its human summary, its
//! second-by-second `series` and, per process, its parts; how it is built from what was counted,
//! and why a run failed; and the `.hgrm` percentile text.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Window;
use super::config::{LoadConfig, Mode, ProxyVersion};
use super::hist::{Latency, Spot};
use super::interval::Interval;
use super::stats::{Counts, ErrorCounts, ErrorKinds};
use crate::net::Proto;

/// entry for its check, the only one with latency).
#[derive(Debug, Serialize, Clone)]
pub struct Second {
    /// `run`, `hold` or `check`.
    pub phase: &'static str,
    /// Start, in seconds from the start of the window, and length (the last one may be short).
    pub t: f64,
    pub secs: f64,
    pub messages: u64,
    pub bytes: u64,
    /// Errors and wrong replies counted in this second.
    pub errors: u64,
    /// The same errors by kind: which second a server's restart or reload disturbed, and how.
    pub error_kinds: ErrorKinds,
    pub mismatches: u64,
    /// Connections completed in this second.
    pub connects: u64,
    /// Connections open at its end.
    pub open: u64,
    /// check: connections that answered.
    pub answered: u64,
    pub latency_us: Option<Spot>,
}

impl Second {
    /// `hold`: the run is hold's, whose stages read differently.
    pub(crate) fn of(iv: &Interval, hold: bool) -> Second {
        Second {
            phase: iv.stage.name(hold),
            t: iv.start,
            secs: iv.secs,
            messages: iv.msgs,
            bytes: iv.bytes,
            errors: iv.errors,
            error_kinds: iv.error_kinds,
            mismatches: iv.mismatches,
            connects: iv.connects,
            open: iv.open,
            answered: iv.answered,
            latency_us: iv.spot(),
        }
    }
}

/// What one process measured, with `--processes`.
#[derive(Debug, Serialize, Clone)]
pub struct ProcessPart {
    pub index: usize,
    pub pid: u32,
    pub connections: usize,
    pub messages: u64,
    pub bytes: u64,
    pub connects: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub held: Option<u64>,
    pub answered: Option<u64>,
    pub latency_us: Option<Latency>,
    /// CPU time of the process over the window.
    pub cpu_s: Option<f64>,
}

/// CPU time of a process over the window, and per message.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct CpuUse {
    pub cpu_s: f64,
    pub cpu_us_per_msg: Option<f64>,
}

/// The server's side, when `--server-pid` was given.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct ServerUse {
    pub pid: u32,
    /// CPU time over the window; `None` (JSON null) when it could not be sampled at both ends,
    /// e.g. the process ended during the run: unknown, not zero.
    pub cpu_s: Option<f64>,
    pub cpu_us_per_msg: Option<f64>,
    /// RSS at the end of the window (hold: with every connection still open); `None` when the
    /// process could not be read then.
    pub rss_bytes: Option<u64>,
}

/// The final report: printed as text, or as one JSON object with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub proto: &'static str,
    pub addr: String,
    pub connections: usize,
    pub size: usize,
    pub depth: usize,
    /// Worker threads per process.
    pub threads: usize,
    /// Processes the connections were spread over (`--processes`).
    pub processes: usize,
    pub rate: Option<f64>,
    pub expect: &'static str,
    /// The PROXY protocol header each connection began with (`v1`, `v2`), if any.
    pub send_proxy: Option<&'static str>,
    /// Length of the measurement window actually measured, in seconds.
    pub window_s: f64,
    pub messages: u64,
    pub msgs_per_s: f64,
    /// Reply bytes received and verified in the window.
    pub bytes: u64,
    /// Reply bytes per second, in 10^6 bytes.
    pub mb_per_s: f64,
    /// Connections completed per second (churn's figure; all modes count them).
    pub connects: u64,
    pub connects_per_s: f64,
    pub latency_us: Option<Latency>,
    pub errors: ErrorCounts,
    pub mismatches: u64,
    pub mismatched_bytes: u64,
    pub first_mismatch: Option<String>,
    pub losses: u64,
    pub late_replies: u64,
    pub duplicate_replies: u64,
    /// hold: connections open when the hold ended, and how many answered the check (whose round
    /// trips are `latency_us`; hold has no throughput, so `messages` and `bytes` are 0).
    pub held: Option<u64>,
    pub answered: Option<u64>,
    pub client: CpuUse,
    pub server: Option<ServerUse>,
    /// Whether errors, losses and duplicates were only counted (`--tolerate-errors`).
    pub tolerate_errors: bool,
    /// SIGINT or SIGTERM ended the run before its end: the figures cover the window so far.
    pub interrupted: bool,
    /// The number of that signal (2 for SIGINT, 15 for SIGTERM); the binary exits 128 + it.
    pub signal: Option<i32>,
    /// False when the run was interrupted, any byte was wrong, nothing got through, (hold) a
    /// connection was lost or did not answer, or (unless errors are tolerated) any error, loss or
    /// duplicate was counted.
    pub ok: bool,
    /// Why the run failed, one reason each; empty when `ok`.
    pub failures: Vec<String>,
    /// The window second by second (see [`Second`]); merged over every process.
    pub series: Vec<Second>,
    /// With `--processes`: each process's own figures (empty with one process).
    pub per_process: Vec<ProcessPart>,
}

impl Report {
    /// The human summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let procs = if self.processes > 1 {
            format!("{} processes x ", self.processes)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "upecho load: {} {} to {}, {} connection(s), {} B, depth {}, {procs}{} thread(s){}{}, {:.2} s measured",
            self.mode,
            self.proto,
            self.addr,
            self.connections,
            self.size,
            self.depth,
            self.threads,
            self.rate
                .map(|r| format!(", rate {r}/s"))
                .unwrap_or_default(),
            self.send_proxy
                .map(|v| format!(", PROXY {v}"))
                .unwrap_or_default(),
            self.window_s
        );
        if let (Some(h), Some(a)) = (self.held, self.answered) {
            let _ = writeln!(s, "  held        {h} connections, {a} answered");
        } else {
            // hold moves no stream worth a rate: what it measured is the line above.
            let _ = writeln!(
                s,
                "  throughput  {:.0} msg/s, {:.2} MB/s ({} messages, {} bytes)",
                self.msgs_per_s, self.mb_per_s, self.messages, self.bytes
            );
        }
        if self.mode == "churn" {
            let _ = writeln!(
                s,
                "  connections {:.0}/s ({})",
                self.connects_per_s, self.connects
            );
        }
        match &self.latency_us {
            Some(l) => {
                // hold's samples are the round trips of its checks, one per connection answered.
                let what = if self.held.is_some() {
                    "checks"
                } else {
                    "samples"
                };
                let _ = writeln!(
                    s,
                    "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, {} {what})",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
                );
            }
            None => {
                let _ = writeln!(s, "  latency     none recorded");
            }
        }
        let e = &self.errors;
        let _ = writeln!(
            s,
            "  errors      {} (refused {}, reset {}, timeout {}, closed {}, no ports {}, local {}, other {})",
            e.total, e.refused, e.reset, e.timeout, e.closed, e.no_ports, e.local, e.other
        );
        if let Some(f) = &e.first {
            let _ = writeln!(s, "              first: {f}");
        }
        let _ = writeln!(
            s,
            "  mismatches  {} ({} wrong bytes)",
            self.mismatches, self.mismatched_bytes
        );
        if let Some(f) = &self.first_mismatch {
            let _ = writeln!(s, "              first: {f}");
        }
        if self.proto == "udp" {
            let _ = writeln!(
                s,
                "  losses      {} (late replies {}, duplicate replies {})",
                self.losses, self.late_replies, self.duplicate_replies
            );
        }
        if !self.per_process.is_empty() {
            let spread = |f: &dyn Fn(&ProcessPart) -> u64| {
                let v: Vec<u64> = self.per_process.iter().map(f).collect();
                let (lo, hi) = (v.iter().min(), v.iter().max());
                format!("{}..{}", lo.unwrap_or(&0), hi.unwrap_or(&0))
            };
            let what = if self.held.is_some() {
                format!("answered {}", spread(&|p| p.answered.unwrap_or(0)))
            } else {
                format!("messages {}", spread(&|p| p.messages))
            };
            let _ = writeln!(
                s,
                "  processes   {}: connections {}, {what} per process",
                self.per_process.len(),
                spread(&|p| p.connections as u64),
            );
        }
        let per = |v: Option<f64>| v.map(|v| format!("{v:.2} µs/msg")).unwrap_or("-".into());
        let _ = writeln!(
            s,
            "  client cpu  {:.2} s, {}",
            self.client.cpu_s,
            per(self.client.cpu_us_per_msg)
        );
        if let Some(sv) = &self.server {
            let cpu = match sv.cpu_s {
                Some(c) => format!("{c:.2} s, {}", per(sv.cpu_us_per_msg)),
                None => "unavailable".into(),
            };
            let rss = match sv.rss_bytes {
                Some(b) => format!("{} KiB", b / 1024),
                None => "unavailable".into(),
            };
            let why = if sv.cpu_s.is_none() || sv.rss_bytes.is_none() {
                ": the process ended or could not be read during the run"
            } else {
                ""
            };
            let _ = writeln!(s, "  server cpu  {cpu} (pid {}, rss {rss}){why}", sv.pid);
        }
        if self.interrupted {
            let by = match self.signal {
                Some(libc::SIGINT) => "SIGINT".to_string(),
                Some(libc::SIGTERM) => "SIGTERM".to_string(),
                Some(n) => format!("signal {n}"),
                None => "a signal".to_string(),
            };
            let also = if self.failures.is_empty() {
                String::new()
            } else {
                format!("; also {}", self.failures.join("; "))
            };
            let _ = writeln!(
                s,
                "  result      INTERRUPTED by {by} after {:.2} s measured{also}",
                self.window_s
            );
        } else if self.ok {
            let counted = self.errors.total + self.losses + self.duplicate_replies;
            let tolerated = if self.tolerate_errors && counted > 0 {
                " (errors tolerated)"
            } else {
                ""
            };
            let _ = writeln!(s, "  result      ok{tolerated}");
        } else {
            let _ = writeln!(s, "  result      FAILED: {}", self.failures.join("; "));
        }
        s
    }
}

/// The distribution in HdrHistogram's standard percentile text (`.hgrm`), values in
/// milliseconds as wrk2 and HdrHistogram's plotter expect.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1e6; // ns per ms
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / SCALE;
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

/// The report of a run: what `s` counted over the window `w` of the run `cfg` describes.
pub(crate) fn build_report(
    cfg: &LoadConfig,
    s: &Counts,
    w: &Window,
    series: Vec<Second>,
    per_process: Vec<ProcessPart>,
) -> Report {
    let secs = w.secs.max(1e-9);
    let per_msg = |d: Duration| (s.msgs > 0).then(|| d.as_secs_f64() * 1e6 / s.msgs as f64);
    let hold = cfg.mode == Mode::Hold;
    let mismatches = s.mismatch_events;
    let failures = failures(cfg, s);
    Report {
        mode: cfg.mode.name(),
        proto: match cfg.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        },
        addr: cfg.addr.to_string(),
        connections: cfg.conns,
        size: cfg.size,
        depth: cfg.depth,
        threads: cfg.threads,
        processes: cfg.processes,
        rate: cfg.rate,
        expect: cfg.expect.name(),
        send_proxy: cfg.send_proxy.map(ProxyVersion::name),
        window_s: w.secs,
        messages: s.msgs,
        msgs_per_s: s.msgs as f64 / secs,
        bytes: s.bytes,
        mb_per_s: s.bytes as f64 / secs / 1e6,
        connects: s.connects,
        connects_per_s: s.connects as f64 / secs,
        latency_us: Latency::of(&s.hist),
        errors: s.errors.clone(),
        mismatches,
        mismatched_bytes: s.mismatched_bytes,
        first_mismatch: s.first_mismatch.clone(),
        losses: s.losses,
        late_replies: s.late,
        held: hold.then_some(s.held),
        answered: hold.then_some(s.answered),
        client: CpuUse {
            cpu_s: w.client_cpu.as_secs_f64(),
            cpu_us_per_msg: per_msg(w.client_cpu),
        },
        duplicate_replies: s.duplicates,
        tolerate_errors: cfg.tolerate_errors,
        server: cfg.server_pid.map(|pid| ServerUse {
            pid,
            cpu_s: w.server_cpu.map(|d| d.as_secs_f64()),
            cpu_us_per_msg: w.server_cpu.and_then(per_msg),
            rss_bytes: w.server_rss,
        }),
        interrupted: w.signal.is_some(),
        signal: w.signal,
        ok: failures.is_empty() && w.signal.is_none(),
        failures,
        series,
        per_process,
    }
}

/// Why the run failed (empty: it passed). Wrong bytes always fail it; so do, unless
/// `--tolerate-errors`, errors (the generator's own closes are never counted as errors: churn
/// closes a connection only once it is answered, and the end of the run closes only drained
/// ones), UDP losses and duplicate replies. hold has its own rule: every connection held, and
/// every held connection answered.
fn failures(cfg: &LoadConfig, s: &Counts) -> Vec<String> {
    let mut why = Vec::new();
    if s.mismatch_events > 0 {
        // A server that does not read PROXY headers echoes them: the first reply bytes are the
        // header's, and the stream is off by its length from then on.
        let hint = if cfg.send_proxy.is_some() {
            "; with --send-proxy the server must take the header off (upecho serve \
             --proxy-protocol --proxy-from ...)"
        } else {
            ""
        };
        why.push(format!(
            "{} wrong repl{} ({} wrong bytes){hint}",
            s.mismatch_events,
            if s.mismatch_events == 1 { "y" } else { "ies" },
            s.mismatched_bytes
        ));
    }
    if cfg.mode == Mode::Hold {
        if s.held != cfg.conns as u64 {
            why.push(format!(
                "{} of {} connections held to the end",
                s.held, cfg.conns
            ));
        }
        if s.answered != s.held {
            why.push(format!(
                "{} of {} held connections answered",
                s.answered, s.held
            ));
        }
        return why;
    }
    if s.msgs == 0 {
        why.push("no message was answered in the measurement window".into());
    }
    if cfg.tolerate_errors {
        return why;
    }
    let e = &s.errors;
    if e.total > 0 {
        let classes: Vec<String> = [
            ("refused", e.refused),
            ("reset", e.reset),
            ("timeout", e.timeout),
            ("closed by the server", e.closed),
            ("no ports", e.no_ports),
            ("local", e.local),
            ("other", e.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
        why.push(format!(
            "{} error{} ({})",
            e.total,
            if e.total == 1 { "" } else { "s" },
            classes.join(", ")
        ));
    }
    if s.losses > 0 {
        why.push(format!("{} datagrams lost", s.losses));
    }
    if s.duplicates > 0 {
        why.push(format!("{} duplicate replies", s.duplicates));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::hist::{new_hist, record};
    use std::time::Duration;

    #[test]
    fn hgrm_has_the_standard_shape() {
        let mut h = new_hist();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let text = hgrm(&h);
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .contains("Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        let rows = text.lines().skip(2).filter(|l| !l.starts_with('#')).count();
        assert!(rows > 10, "{text}");
        // The last data row reaches percentile 1 with every sample counted.
        let last = text.lines().rfind(|l| !l.starts_with('#')).unwrap();
        let f: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(f[1], "1.000000000000");
        assert_eq!(f[2], "1000");
        assert!((f[0].parse::<f64>().unwrap() - 1.0).abs() < 0.01, "{last}");
        assert!(text.contains("#[Max     ="));
        assert!(text.contains("Total count    =         1000]"));
    }
}

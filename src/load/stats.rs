//! Counting: what each worker measures, how workers publish progress, and the final report.
//!
//! A worker owns its [`Counts`] outright (no sharing on the hot path) and hands them back when it
//! ends; the main thread merges them (with `--processes`, each process's merged counts cross a
//! pipe to the parent, which merges them again). The once-a-second figures (progress line, the
//! report's `series`, the interval log) come from the intervals of `interval`, not from here.
//!
//! Errors are classified from [`crate::io_outcome::classify`], the crate's one classifier, and
//! then split the finer way a load report needs (refused, reset, timed out, out of ports).

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::interval::new_hist;
use super::payload::Mismatch;
use crate::io_outcome::{Class, classify};

/// Longest latency the histogram tells apart (longer ones are recorded as this): one minute.
pub(crate) const HIST_MAX_NS: u64 = 60_000_000_000;

/// Records one latency into `h`.
#[inline]
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    // Clamped before narrowing, so no duration can wrap around to a small one.
    let ns = d.as_nanos().clamp(1, u128::from(HIST_MAX_NS)) as u64;
    h.saturating_record(ns);
}

/// How an error is counted in the report: a small set of classes, decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// The server refused the connection (or, UDP, an ICMP port unreachable came back).
    Refused,
    /// The peer or the path failed: reset, broken pipe, unreachable.
    Reset,
    Timeout,
    /// The server closed (FIN) a connection the generator was still using.
    Closed,
    /// No local port or address left (EADDRNOTAVAIL): spread over more `--source` addresses.
    NoPorts,
    /// This side failed: out of memory, buffers or descriptors, the poll, a thread.
    Local,
    /// The server broke the protocol in a way that ends the connection (unsolicited bytes).
    Other,
}

impl ErrorClass {
    /// Classifies an I/O error from connect, read, write, send or recv: the crate's
    /// [`classify`] says whose failure it was, and only its peer failures are split further.
    pub(crate) fn of(e: &io::Error) -> ErrorClass {
        use io::ErrorKind as K;
        match classify(e) {
            Class::PeerReset => match e.kind() {
                K::ConnectionRefused => ErrorClass::Refused,
                K::TimedOut => ErrorClass::Timeout,
                _ => ErrorClass::Reset,
            },
            Class::PeerClosed => ErrorClass::Closed,
            Class::Local => match e.kind() {
                K::AddrNotAvailable | K::AddrInUse => ErrorClass::NoPorts,
                _ => ErrorClass::Local,
            },
            // Callers retry or wait on these and never count them; were one counted, it would
            // be this side's doing.
            Class::WouldBlock | Class::Interrupted => ErrorClass::Local,
        }
    }
}

/// Error counts by class.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub closed: u64,
    pub no_ports: u64,
    /// This side's own failures (out of buffers or descriptors, the poll), told apart from the
    /// peer's.
    pub local: u64,
    pub other: u64,
    /// The first error seen, as text, so a summary can say what went wrong.
    pub first: Option<String>,
}

impl ErrorCounts {
    pub(crate) fn count(&mut self, class: ErrorClass, what: impl FnOnce() -> String) {
        self.total += 1;
        *match class {
            ErrorClass::Refused => &mut self.refused,
            ErrorClass::Reset => &mut self.reset,
            ErrorClass::Timeout => &mut self.timeout,
            ErrorClass::Closed => &mut self.closed,
            ErrorClass::NoPorts => &mut self.no_ports,
            ErrorClass::Local => &mut self.local,
            ErrorClass::Other => &mut self.other,
        } += 1;
        if self.first.is_none() {
            self.first = Some(what());
        }
    }

    pub(crate) fn merge(&mut self, o: &ErrorCounts) {
        self.total += o.total;
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.closed += o.closed;
        self.no_ports += o.no_ports;
        self.local += o.local;
        self.other += o.other;
        if self.first.is_none() {
            self.first.clone_from(&o.first);
        }
    }
}

/// What one worker measured inside the measurement window (errors and mismatches: always, since
/// a wrong byte during warm-up is just as wrong).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Counts {
    pub msgs: u64,
    pub bytes: u64,
    /// The window's latencies: the sum of the worker's measured intervals.
    #[serde(with = "super::hlog::serde_hist")]
    pub hist: Histogram<u64>,
    pub errors: ErrorCounts,
    pub mismatched_bytes: u64,
    pub mismatch_events: u64,
    pub first_mismatch: Option<String>,
    /// UDP datagrams with no reply within `--timeout`.
    pub losses: u64,
    /// UDP replies that came after their datagram was counted lost.
    pub late: u64,
    /// UDP replies to a datagram that had already been answered.
    pub duplicates: u64,
    /// Connections that completed their handshake (all modes; churn's unit of work).
    pub connects: u64,
    /// hold: connections open when the hold ended, and how many of them answered.
    pub held: u64,
    pub answered: u64,
}

impl Counts {
    pub(crate) fn new() -> Counts {
        Counts {
            msgs: 0,
            bytes: 0,
            // Three significant figures from 1 ns to a minute: ~0.2 MiB, once per worker.
            hist: new_hist(),
            errors: ErrorCounts::default(),
            mismatched_bytes: 0,
            mismatch_events: 0,
            first_mismatch: None,
            losses: 0,
            late: 0,
            duplicates: 0,
            connects: 0,
            held: 0,
            answered: 0,
        }
    }

    /// Records a reply that is wrong as a whole rather than in its bytes (its length, its
    /// header, more bytes than were sent); `what` says so in full.
    pub(crate) fn wrong_reply(&mut self, wrong_bytes: u64, what: impl FnOnce() -> String) {
        self.mismatch_events += 1;
        self.mismatched_bytes += wrong_bytes;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(what());
        }
    }

    /// Records a wrong reply; `what` names the connection or socket.
    pub(crate) fn mismatch(&mut self, m: Mismatch, what: impl FnOnce() -> String) {
        self.mismatch_events += 1;
        self.mismatched_bytes += m.wrong_bytes;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "{}: reply byte {} is {:#04x} {}, expected {:#04x} {} ({} wrong bytes in that read)",
                what(),
                m.offset,
                m.got,
                show(m.got),
                m.expected,
                show(m.expected),
                m.wrong_bytes
            ));
        }
    }

    pub(crate) fn merge(&mut self, o: &Counts) {
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&o.hist);
        self.errors.merge(&o.errors);
        self.mismatched_bytes += o.mismatched_bytes;
        self.mismatch_events += o.mismatch_events;
        if self.first_mismatch.is_none() {
            self.first_mismatch.clone_from(&o.first_mismatch);
        }
        self.losses += o.losses;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.connects += o.connects;
        self.held += o.held;
        self.answered += o.answered;
    }
}

impl Default for Counts {
    fn default() -> Self {
        Counts::new()
    }
}

/// A byte as it would be typed, for messages.
fn show(b: u8) -> String {
    format!("{:?}", b as char)
}

/// What a worker tells the main thread between intervals.
#[derive(Default)]
pub(crate) struct Live {
    /// Set once the worker has stopped opening connections (hold waits for every worker's).
    pub ready: AtomicBool,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// The percentiles of one interval, in microseconds.
#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub struct Spot {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spot {
    pub(crate) fn of(h: &Histogram<u64>) -> Option<Spot> {
        let l = Latency::of(h)?;
        Some(Spot {
            count: l.count,
            p50: l.p50,
            p90: l.p90,
            p99: l.p99,
            max: l.max,
        })
    }
}

/// One second of the window in the report's `series` (hold: each second of the hold, then one
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
    pub(crate) fn of(iv: &super::interval::Interval) -> Second {
        Second {
            phase: iv.phase.name(),
            t: iv.start,
            secs: iv.secs,
            messages: iv.msgs,
            bytes: iv.bytes,
            errors: iv.errors,
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

/// CPU time (user + system) of this whole process so far, all threads.
pub(crate) fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (utime + stime) of another process from `/proc/PID/stat`, if it can be read.
pub(crate) fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat, false).map(ticks_to_duration)
}

/// CPU time of a process and every descendant (a `serve --workers` supervisor and its
/// workers): each one's utime + stime plus cutime + cstime, the time of the children it has
/// already reaped, so a worker that exits or is replaced between two samples neither vanishes
/// from the sum nor is counted twice (but for one reaped in the microseconds between reading
/// its parent and reading it). `None` only if `pid` itself cannot be read.
pub(crate) fn tree_cpu(pid: u32) -> Option<Duration> {
    let mut ticks = 0u64;
    let mut root = true;
    for p in tree(pid) {
        match std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| stat_ticks(&s, true))
        {
            Some(t) => ticks = ticks.saturating_add(t),
            // A descendant gone since the listing: its time is in its parent's cutime now.
            None if !root => {}
            None => return None,
        }
        root = false;
    }
    Some(ticks_to_duration(ticks))
}

/// Resident set size of a process from `/proc/PID/status`, if it can be read.
pub(crate) fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// RSS of a process and every descendant, summed (pages the processes share, such as the
/// binary's text, count once per process, as `ps` shows them). `None` only if `pid` itself
/// cannot be read.
pub(crate) fn tree_rss(pid: u32) -> Option<u64> {
    let mut all = tree(pid).into_iter();
    let mut sum = proc_rss(all.next()?)?;
    for p in all {
        sum = sum.saturating_add(proc_rss(p).unwrap_or(0));
    }
    Some(sum)
}

/// `pid` first, then its descendants, from every thread's `/proc/PID/task/TID/children`;
/// bounded, so that a pid reused mid-walk cannot make it loop.
fn tree(pid: u32) -> Vec<u32> {
    const MAX: usize = 4096;
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < MAX {
        let p = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let Ok(kids) = std::fs::read_to_string(path) else {
                continue;
            };
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok())
            {
                if !out.contains(&k) && out.len() < MAX {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// utime + stime (and with `reaped`, cutime + cstime) in clock ticks from a `/proc/PID/stat` line.
fn stat_ticks(stat: &str, reaped: bool) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i)?.parse::<u64>().ok();
    let own = field(11)?.saturating_add(field(12)?);
    if !reaped {
        return Some(own);
    }
    // cutime and cstime are signed in the kernel's format; never negative in practice.
    let kid = |i: usize| f.get(i)?.parse::<i64>().ok().map(|v| v.max(0) as u64);
    Some(own.saturating_add(kid(13)?).saturating_add(kid(14)?))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    // Split, so that no tick count can overflow the multiplication.
    Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_once() {
        use io::ErrorKind as K;
        let c = |k: K| ErrorClass::of(&io::Error::from(k));
        assert_eq!(c(K::ConnectionRefused), ErrorClass::Refused);
        assert_eq!(c(K::ConnectionReset), ErrorClass::Reset);
        assert_eq!(c(K::BrokenPipe), ErrorClass::Reset);
        assert_eq!(c(K::TimedOut), ErrorClass::Timeout);
        assert_eq!(c(K::AddrNotAvailable), ErrorClass::NoPorts);
        // Peer and path failures are the peer's; everything else is this side's, never "other".
        assert_eq!(c(K::HostUnreachable), ErrorClass::Reset);
        assert_eq!(c(K::WriteZero), ErrorClass::Closed);
        assert_eq!(c(K::PermissionDenied), ErrorClass::Local);
        let os = |code| ErrorClass::of(&io::Error::from_raw_os_error(code));
        assert_eq!(os(libc::ENOBUFS), ErrorClass::Local);
        assert_eq!(os(libc::EMFILE), ErrorClass::Local);
        assert_eq!(os(libc::ECONNREFUSED), ErrorClass::Refused);
        let mut e = ErrorCounts::default();
        e.count(ErrorClass::Reset, || "first".into());
        e.count(ErrorClass::Refused, || "second".into());
        assert_eq!((e.total, e.reset, e.refused), (2, 1, 1));
        assert_eq!(e.first.as_deref(), Some("first"));
    }

    #[test]
    fn hgrm_has_the_standard_shape() {
        let mut s = Counts::new();
        for us in 1..=1000u64 {
            record(&mut s.hist, Duration::from_micros(us));
        }
        let text = hgrm(&s.hist);
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

    #[test]
    fn latency_percentiles_are_in_microseconds() {
        let mut s = Counts::new();
        for us in 1..=100u64 {
            record(&mut s.hist, Duration::from_micros(us));
        }
        let l = Latency::of(&s.hist).unwrap();
        assert!((l.p50 - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert!(Latency::of(&Counts::new().hist).is_none());
    }

    #[test]
    fn own_and_proc_cpu_and_rss_are_readable() {
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(own_cpu() > Duration::ZERO);
        assert!(proc_cpu(std::process::id()).is_some());
        assert!(proc_rss(std::process::id()).unwrap() > 0);
        assert!(proc_cpu(u32::MAX).is_none());
    }

    #[test]
    fn stat_ticks_reads_own_and_reaped_time_past_a_hostile_command_name() {
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime ...
        let line = "42 (a) b (c) R 1 42 42 0 -1 4194304 10 0 0 0 7 3 20 5 20 0 1 0 100 0 0";
        assert_eq!(stat_ticks(line, false), Some(10));
        assert_eq!(stat_ticks(line, true), Some(35));
        assert_eq!(stat_ticks("42 (x) R 1", true), None);
    }

    #[test]
    fn tree_sums_a_process_and_its_descendants() {
        let me = std::process::id();
        // A grandchild too: sh starts sleep and waits for it.
        let mut kid = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let found = loop {
            let t = tree(me);
            if t.len() >= 3 || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let rss_me = proc_rss(me).unwrap();
        let rss_tree = tree_rss(me).unwrap();
        // Only the processes this test started (other tests run beside it), sleep first.
        for p in tree(kid.id()).into_iter().rev() {
            // SAFETY: kill has no memory preconditions; these pids are this test's children.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = kid.wait();
        assert_eq!(found[0], me);
        assert!(found.contains(&kid.id()), "{found:?}");
        assert!(found.len() >= 3, "sh and its sleep: {found:?}");
        assert!(rss_tree > rss_me, "{rss_tree} > {rss_me}");
        assert!(tree_cpu(me).unwrap() >= proc_cpu(me).unwrap());
        assert!(tree_cpu(u32::MAX).is_none() && tree_rss(u32::MAX).is_none());
    }
}

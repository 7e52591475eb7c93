//! `upecho load`: the verifying load generator, as a library.
//!
//! The command line is the binary's (`src/cli/load.rs`): it parses the flags, resolves the
//! address, builds a [`LoadConfig`], checks it, calls [`execute`] and prints the [`Report`]. What
//! this module owns is the run itself:
//!
//! - `config`: [`LoadConfig`] and the rules a runnable one obeys.
//! - `payload`: what is sent, and how every reply byte is checked.
//! - `schedule`: the open-loop (`--rate`) clock and the in-flight latency origins.
//! - `worker`: the one event loop every worker thread runs (poll, phases, deadlines, the
//!   open-loop timer, progress), over a per-protocol `Flow`:
//! - `tcp` / `udp`: the two flows, state machines over the worker's share of the connections.
//! - `stats`: counting, the progress totals, the report, `.hgrm` output.
//!
//! The main thread owns the clock: it starts the workers, lets them warm up, opens the
//! measurement window by switching the shared `Stage`, samples CPU time (its own process and,
//! with `server_pid`, the server's) at both ends of the window, closes it, and merges what the
//! workers counted. Workers read the stage once per loop turn, so the window they count in and the
//! window the CPU time is sampled over line up to within one loop turn. Every worker also has its
//! own hard deadline, so nothing runs on if the main thread's plan goes wrong.
//!
//! A run ends with a drain (hold: with its check): no new messages, and what is still owed
//! must come back within the timeout. So a server that stalled near the end is caught as a
//! timeout like one that stalled earlier, the last replies are verified too, and the
//! generator's own closing of its connections afterwards can never be mistaken for the
//! server's doing. That closing is orderly too (FIN, then read to the server's end of stream;
//! see `worker`), also when Ctrl-C skipped the drain, so the server counts no resets.

mod config;
mod payload;
mod schedule;
mod stats;
mod tcp;
mod timer;
mod udp;
mod worker;

use std::io::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use config::{
    CHECK_INTERVAL, CloseHow, LoadConfig, MAX_CONNS, MAX_DEPTH, MAX_RATE, MAX_RUN_DURATION,
    MAX_TCP_MESSAGE, MAX_THREADS, MIN_RATE, MachineLimits, Mode, UsageError,
};
pub use stats::{CpuUse, ErrorCounts, Latency, Report, ServerUse, hgrm};

use crate::net::Proto;
use payload::Pattern;
use stats::{Counts, ErrorClass, Live, Totals};

/// What the workers are doing, set by the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    /// Connecting and running, not yet counting (hold: opening the connections).
    Warmup = 0,
    /// Counting (hold: holding the connections open).
    Measure = 1,
    /// hold only: one message on every connection, then each worker ends by itself.
    Check = 2,
    /// Every mode but hold: no new messages or connections; each worker ends by itself once
    /// nothing is owed, counting what is still owed after the timeout as timed out (UDP: lost).
    Drain = 3,
    /// Close everything and return.
    Stop = 4,
}

/// State shared by the main thread and the workers.
pub(crate) struct Shared {
    stage: AtomicU8,
    live: Vec<Live>,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> Shared {
        Shared {
            stage: AtomicU8::new(Stage::Warmup as u8),
            live: (0..workers).map(|_| Live::default()).collect(),
        }
    }

    pub(crate) fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Acquire) {
            0 => Stage::Warmup,
            1 => Stage::Measure,
            2 => Stage::Check,
            3 => Stage::Drain,
            _ => Stage::Stop,
        }
    }

    pub(crate) fn set_stage(&self, p: Stage) {
        self.stage.store(p as u8, Ordering::Release);
    }
}

/// What one worker is given.
pub(crate) struct WorkerCtx<'a> {
    pub cfg: &'a LoadConfig,
    pub pattern: &'a Pattern,
    pub shared: &'a Shared,
    pub thread: usize,
    /// Global index of this worker's first connection, and how many it runs.
    pub first_conn: usize,
    pub nconns: usize,
}

impl WorkerCtx<'_> {
    pub(crate) fn live(&self) -> &Live {
        &self.shared.live[self.thread]
    }

    /// The longest a worker may run whatever the main thread does: every phase at its longest
    /// (the hold's check or the drain each take up to the timeout), plus slack.
    pub(crate) fn hard_limit(&self) -> Duration {
        let c = self.cfg;
        c.warmup + c.duration + 2 * c.connect_timeout + 2 * c.timeout + Duration::from_secs(30)
    }
}

/// Writes `text` to stderr, returning whether it could: `eprint!` would panic on a closed
/// stderr, and the progress line is only a courtesy.
fn say(text: &str) -> bool {
    let mut err = io::stderr().lock();
    err.write_all(text.as_bytes())
        .and_then(|()| err.flush())
        .is_ok()
}

/// Runs the load described by `cfg` (as returned by [`LoadConfig::check`]) and returns the
/// report and the merged latency histogram (nanoseconds). Progress lines go to stderr unless
/// `cfg.quiet`. SIGINT or SIGTERM during the run ends it early, with the figures so far, and the
/// report says so ([`Report::interrupted`], [`Report::signal`]); a second one exits the process
/// at once with status 128 + the signal's number, as a shell would.
pub fn execute(cfg: &LoadConfig) -> (Report, hdrhistogram::Histogram<u64>) {
    let pattern = Pattern::new(PATTERN_SEED, cfg.expect);
    let shared = Shared::new(cfg.threads);
    // Which signal ended the run (0: none), and whether one has: the main thread polls the flag.
    let signal = Arc::new(AtomicUsize::new(0));
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut sig_ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The exit on a second signal is registered first, so that the first one finds the flag
        // still false and only sets it.
        let code = 128 + sig;
        sig_ids.extend(
            [
                signal_hook::flag::register_conditional_shutdown(sig, code, interrupted.clone()),
                signal_hook::flag::register_usize(sig, signal.clone(), sig as usize),
                signal_hook::flag::register(sig, interrupted.clone()),
            ]
            .into_iter()
            .filter_map(Result::ok),
        );
    }

    let mut merged = Counts::new();
    let mut window = Window::default();
    thread::scope(|scope| {
        let mut handles = Vec::with_capacity(cfg.threads);
        let mut first = 0;
        for t in 0..cfg.threads {
            let n = cfg.conns_of_thread(t);
            let ctx = WorkerCtx {
                cfg,
                pattern: &pattern,
                shared: &shared,
                thread: t,
                first_conn: first,
                nconns: n,
            };
            first += n;
            let h = thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn_scoped(scope, move || match ctx.cfg.proto {
                    Proto::Tcp => worker::run(&ctx, tcp::TcpFlow::new(&ctx)),
                    Proto::Udp => worker::run(&ctx, udp::UdpFlow::new(&ctx)),
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    merged
                        .errors
                        .count(ErrorClass::Local, || format!("cannot start a thread: {e}"));
                }
            }
        }
        window = drive(cfg, &shared, &interrupted, &handles);
        // Read at the end of the run proper: a signal during the closing below cut nothing short.
        window.signal = match signal.load(Ordering::Relaxed) {
            0 => None,
            sig => Some(sig as i32),
        };
        for h in handles {
            match h.join() {
                Ok(s) => merged.merge(&s),
                Err(_) => merged
                    .errors
                    .count(ErrorClass::Local, || "a worker panicked".into()),
            }
        }
    });
    for id in sig_ids {
        signal_hook::low_level::unregister(id);
    }
    let report = build_report(cfg, &merged, &window);
    (report, merged.hist)
}

/// The pattern seed: fixed, so a mismatch report can be reproduced.
const PATTERN_SEED: u64 = 0x5eed_0fec_40a1;

/// What the main thread sampled at the two ends of the measurement window.
#[derive(Debug, Default)]
struct Window {
    secs: f64,
    client_cpu: Duration,
    server_cpu: Option<Duration>,
    server_rss: Option<u64>,
    /// The signal that cut the run short, if one did.
    signal: Option<i32>,
}

/// The main thread's part: warm-up, window, progress lines, stop.
fn drive(
    cfg: &LoadConfig,
    shared: &Shared,
    interrupted: &AtomicBool,
    handles: &[thread::ScopedJoinHandle<'_, Counts>],
) -> Window {
    let started = Instant::now();
    let mut line = ProgressLine::new(cfg, started);
    let all_done = || handles.iter().all(|h| h.is_finished());
    // Phase 1: warm-up, or for hold, until every worker has opened what it can.
    let warm_end = if cfg.mode == Mode::Hold {
        started + cfg.connect_timeout + Duration::from_secs(5)
    } else {
        started + cfg.warmup
    };
    while Instant::now() < warm_end && !interrupted.load(Ordering::Relaxed) && !all_done() {
        if cfg.mode == Mode::Hold && Totals::sum(&shared.live).ready_workers == cfg.threads as u64 {
            break;
        }
        line.tick(shared, "warmup");
        sleep_until_next(warm_end, &line);
    }
    // A line due right at the end of the warm-up still describes the warm-up.
    line.tick(
        shared,
        if cfg.mode == Mode::Hold {
            "open"
        } else {
            "warmup"
        },
    );
    // Phase 2: the window.
    let t0 = Instant::now();
    let cpu0 = stats::own_cpu();
    let srv0 = cfg.server_pid.and_then(stats::proc_cpu);
    shared.set_stage(Stage::Measure);
    let end = t0 + cfg.duration;
    while Instant::now() < end && !interrupted.load(Ordering::Relaxed) && !all_done() {
        line.tick(
            shared,
            if cfg.mode == Mode::Hold {
                "hold"
            } else {
                "run"
            },
        );
        sleep_until_next(end, &line);
    }
    let t1 = Instant::now();
    let cpu1 = stats::own_cpu();
    let srv1 = cfg.server_pid.and_then(stats::proc_cpu);
    let rss = cfg.server_pid.and_then(stats::proc_rss);
    // Phase 3: hold's check, or the drain; each worker ends itself within --timeout. An
    // interrupted run skips it: whoever pressed Ctrl-C wants the figures now.
    if !interrupted.load(Ordering::Relaxed) {
        shared.set_stage(if cfg.mode == Mode::Hold {
            Stage::Check
        } else {
            Stage::Drain
        });
        let check_end = Instant::now() + cfg.timeout + Duration::from_secs(1);
        while Instant::now() < check_end && !all_done() && !interrupted.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(10));
        }
    }
    shared.set_stage(Stage::Stop);
    Window {
        secs: (t1 - t0).as_secs_f64(),
        client_cpu: cpu1.saturating_sub(cpu0),
        server_cpu: match (srv0, srv1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        server_rss: rss,
        signal: None,
    }
}

/// Sleeps until the next progress line is due or `end`, whichever is first (in short slices, so
/// Ctrl-C and finished workers are noticed promptly).
fn sleep_until_next(end: Instant, line: &ProgressLine) {
    let now = Instant::now();
    let until = end.min(line.next);
    thread::sleep(
        until
            .saturating_duration_since(now)
            .min(Duration::from_millis(50)),
    );
}

/// The once-a-second progress line on stderr.
struct ProgressLine {
    quiet: bool,
    started: Instant,
    next: Instant,
    last: Totals,
    last_at: Instant,
}

impl ProgressLine {
    fn new(cfg: &LoadConfig, started: Instant) -> ProgressLine {
        ProgressLine {
            quiet: cfg.quiet,
            started,
            next: started + Duration::from_secs(1),
            last: Totals::default(),
            last_at: started,
        }
    }

    fn tick(&mut self, shared: &Shared, what: &str) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        // After a stall, one line for the whole gap rather than a burst of catch-up lines.
        while self.next <= now {
            self.next += Duration::from_secs(1);
        }
        let t = Totals::sum(&shared.live);
        let dt = (now - self.last_at).as_secs_f64().max(1e-9);
        if !self.quiet {
            let line = format!(
                "[{:6.1}s] {what:6} {:>10.0} msg/s {:>9.2} MB/s  open {:>6}  errors {}  mismatches {}\n",
                (now - self.started).as_secs_f64(),
                (t.msgs - self.last.msgs) as f64 / dt,
                (t.bytes - self.last.bytes) as f64 / dt / 1e6,
                t.open,
                t.errors,
                t.mismatches
            );
            // Progress is a courtesy: a closed stderr only ends it, not the run.
            if !say(&line) {
                self.quiet = true;
            }
        }
        self.last = t;
        self.last_at = now;
    }
}

fn build_report(cfg: &LoadConfig, s: &Counts, w: &Window) -> Report {
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
        rate: cfg.rate,
        expect: cfg.expect.name(),
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
        why.push(format!(
            "{} wrong repl{} ({} wrong bytes)",
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

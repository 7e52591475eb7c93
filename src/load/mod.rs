//! `upecho load`: the verifying load generator, as a library.
//!
//! The command line is the binary's (`src/cli/load.rs`): it parses the flags, resolves the
//! address, builds a [`LoadConfig`], checks it, calls [`execute`] (or, with `--processes`,
//! [`execute_processes`]) and prints the [`Report`]. What this module owns is the run itself:
//!
//! - `config`: [`LoadConfig`] and the rules a runnable one obeys.
//! - `payload`: what is sent, and how every reply byte is checked.
//! - `proxy`: the PROXY protocol header a connection may begin with (`--send-proxy`).
//! - `schedule`: the open-loop (`--rate`) clock and the in-flight latency origins.
//! - `worker`: the one event loop every worker thread runs (poll, stages, deadlines, the
//!   open-loop timer, its intervals), over a per-protocol `Flow`:
//! - `tcp` / `udp`: the two flows, state machines over the worker's share of the connections
//!   (`tcp::exchange` the messages on an open connection, `tcp::socket` its socket;
//!   `udp::lane` a socket's reply matching).
//! - `stage`: the `Stage` the main thread sets and each interval is recorded in.
//! - `interval`: the run second by second, and the merging of many sources' seconds.
//! - `progress`: what a run shows while it goes: the progress line, the report's `series`, the
//!   interval log.
//! - `procs`: `--processes`: the parent that spreads a run over child processes, and the child.
//! - `hlog` / `merge`: HdrHistogram's interval log, and `upecho load-merge` over such logs.
//! - `hist`: the latency histogram and its percentiles.
//! - `stats`: what a worker counts, and the classes of errors.
//! - `report`: the [`Report`] built from the counts, its text, `.hgrm` output.
//! - `cpu`: CPU time and memory of this process and of the server.
//!
//! The main thread owns the clock: it starts the workers, lets them warm up, opens the
//! measurement window by switching the shared `Stage`, samples CPU time (its own process and,
//! with `server_pid`, the server's) at both ends of the window, closes it, and merges what the
//! workers counted. Workers read the stage once per loop turn, so the window they count in and the
//! window the CPU time is sampled over line up to within one loop turn. Every worker also has its
//! own hard deadline, so nothing runs on if the main thread's plan goes wrong. In a child process
//! of `--processes` the main thread takes the stage changes from the parent instead of its own
//! clock (see `procs`), so every process opens and closes its window together.
//!
//! A run ends with a drain (hold: with its check): no new messages, and what is still owed
//! must come back within the timeout. So a server that stalled near the end is caught as a
//! timeout like one that stalled earlier, the last replies are verified too, and the
//! generator's own closing of its connections afterwards can never be mistaken for the
//! server's doing. That closing is orderly too (FIN, then read to the server's end of stream;
//! see `worker`), also when Ctrl-C skipped the drain, so the server counts no resets.

mod config;
mod cpu;
mod hist;
mod hlog;
mod interval;
mod merge;
mod payload;
mod procs;
mod progress;
mod proxy;
mod report;
mod schedule;
mod stage;
mod stats;
mod tcp;
mod timer;
mod udp;
mod worker;

use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

pub use config::{
    CHECK_INTERVAL, CloseHow, LoadConfig, MAX_CONNS, MAX_DEPTH, MAX_PROCESSES, MAX_RATE,
    MAX_RUN_DURATION, MAX_TCP_MESSAGE, MAX_THREADS, MIN_RATE, MachineLimits, Mode, ProxyVersion,
    UsageError,
};
pub use hist::{Latency, Spot};
pub use hlog::HlogWriter;
pub use merge::{MergeReport, merge_logs};
pub use procs::{execute_child, execute_processes};
pub(crate) use report::build_report;
pub use report::{CpuUse, ProcessPart, Report, Second, ServerUse, hgrm};
pub use stats::ErrorCounts;

use crate::net::Proto;
use interval::{Interval, Merged, Merger};
use payload::Pattern;
use progress::Top;
pub(crate) use stage::Stage;
use stats::{Counts, ErrorClass, Live};

/// What a worker sends the main thread.
pub(crate) enum WorkerMsg {
    /// An interval is over.
    Interval(Interval),
    /// The worker has ended: it sends nothing more.
    End,
}

/// State shared by the main thread and the workers.
pub(crate) struct Shared {
    stage: AtomicU8,
    live: Vec<Live>,
    /// When the run began: the warm-up's seconds count from it.
    pub started: Instant,
    /// When the window opened: its seconds count from it. Set before the stage says so.
    pub window_start: OnceLock<Instant>,
    pub tx: Sender<(usize, WorkerMsg)>,
    rx: Mutex<Option<Receiver<(usize, WorkerMsg)>>>,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> Shared {
        let (tx, rx) = mpsc::channel();
        Shared {
            stage: AtomicU8::new(Stage::Warmup as u8),
            live: (0..workers).map(|_| Live::default()).collect(),
            started: Instant::now(),
            window_start: OnceLock::new(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    pub(crate) fn set_stage(&self, p: Stage) {
        self.stage.store(p as u8, Ordering::Release);
    }

    fn all_ready(&self) -> bool {
        self.live.iter().all(|l| l.ready.load(Ordering::Relaxed))
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

    /// The longest a worker may run whatever the main thread does: every stage at its longest
    /// (the hold's check or the drain each take up to the timeout), plus slack.
    pub(crate) fn hard_limit(&self) -> Duration {
        let c = self.cfg;
        c.warmup + c.duration + 2 * c.connect_timeout + 2 * c.timeout + Duration::from_secs(30)
    }
}

/// Sends [`WorkerMsg::End`] when dropped, so the main thread stops waiting for a worker's
/// intervals however it ended (a panic included).
struct EndGuard<'a>(&'a Shared, usize);

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.tx.send((self.1, WorkerMsg::End));
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

/// What a run produced.
pub struct RunOutput {
    pub report: Report,
    /// The window's latencies (nanoseconds), merged over every worker and process.
    pub hist: hdrhistogram::Histogram<u64>,
    /// Why the interval log could not be written, if one was asked for and it could not.
    pub hlog_error: Option<String>,
}

/// SIGINT and SIGTERM for the length of a run: the first ends the run early (the figures so far
/// are reported); a second one exits the process at once with status 128 + the signal's number,
/// as a shell would.
pub(crate) struct Signals {
    ids: Vec<signal_hook::SigId>,
    signal: Arc<AtomicUsize>,
    interrupted: Arc<AtomicBool>,
}

impl Signals {
    /// `exit_on_second`: a second signal exits at once (for a person at a terminal); a child of
    /// `--processes` always stops in order instead, since whoever stops it (the parent, or the
    /// kernel when the parent dies) may signal more than once, and its connections must still
    /// be closed cleanly.
    pub(crate) fn register(exit_on_second: bool) -> Signals {
        let signal = Arc::new(AtomicUsize::new(0));
        let interrupted = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // The exit on a second signal is registered first, so that the first one finds the
            // flag still false and only sets it.
            let code = 128 + sig;
            if exit_on_second {
                ids.extend(
                    signal_hook::flag::register_conditional_shutdown(
                        sig,
                        code,
                        interrupted.clone(),
                    )
                    .ok(),
                );
            }
            ids.extend(
                [
                    signal_hook::flag::register_usize(sig, signal.clone(), sig as usize),
                    signal_hook::flag::register(sig, interrupted.clone()),
                ]
                .into_iter()
                .filter_map(Result::ok),
            );
        }
        Signals {
            ids,
            signal,
            interrupted,
        }
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// The signal that arrived, if one did.
    pub(crate) fn which(&self) -> Option<i32> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            sig => Some(sig as i32),
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Where the stage changes come from: this process's clock, or the parent of `--processes`.
pub(crate) trait Conductor {
    /// The run must end now (skipping the drain).
    fn interrupted(&self) -> bool;
    /// Whether the warm-up is over; `ready`: every worker has opened what it will (hold).
    fn warmup_over(&self, now: Instant, ready: bool) -> bool;
    /// Whether the window is over; `end` is when it would end by this process's clock.
    fn window_over(&self, now: Instant, end: Instant) -> bool;
}

/// Where the merged intervals of a process go: the person and the files (`progress::Top`), or
/// the parent's pipe (`procs`).
pub(crate) trait Sink {
    /// The window opened, at this wall-clock time.
    fn window_opened(&mut self, _at: SystemTime) {}
    fn interval(&mut self, m: Merged);
}

/// This process's own clock and signals.
struct LocalClock<'a> {
    signals: &'a Signals,
    warm_end: Instant,
    hold: bool,
}

impl Conductor for LocalClock<'_> {
    fn interrupted(&self) -> bool {
        self.signals.interrupted()
    }

    fn warmup_over(&self, now: Instant, ready: bool) -> bool {
        now >= self.warm_end || (self.hold && ready)
    }

    fn window_over(&self, now: Instant, end: Instant) -> bool {
        now >= end
    }
}

/// When the warm-up ends by this process's clock (hold: at the latest; it ends as soon as every
/// connection is open).
pub(crate) fn warm_end(cfg: &LoadConfig, started: Instant) -> Instant {
    if cfg.mode == Mode::Hold {
        started + cfg.connect_timeout + Duration::from_secs(5)
    } else {
        started + cfg.warmup
    }
}

/// Runs the load described by `cfg` (as returned by [`LoadConfig::check`]) in this process and
/// returns the report and the merged latency histogram (nanoseconds). Progress lines go to
/// stderr unless `cfg.quiet`; each second of the window is also written to `hlog`, if given.
/// SIGINT or SIGTERM during the run ends it early, with the figures so far, and the report says
/// so ([`Report::interrupted`], [`Report::signal`]); a second one exits the process at once
/// with status 128 + the signal's number, as a shell would. (`cfg.processes` is not looked at:
/// see [`execute_processes`].)
pub fn execute(cfg: &LoadConfig, hlog: Option<HlogWriter>) -> RunOutput {
    let signals = Signals::register(true);
    let shared = Shared::new(cfg.threads);
    let clock = LocalClock {
        signals: &signals,
        warm_end: warm_end(cfg, shared.started),
        hold: cfg.mode == Mode::Hold,
    };
    let mut top = Top::new(cfg, hlog, false, shared.started);
    let (counts, mut window) = run_local(cfg, &shared, &clock, &mut top);
    window.signal = signals.which();
    drop(signals);
    let report = build_report(cfg, &counts, &window, top.take_series(), Vec::new());
    let hlog_error = top.finish(&report);
    RunOutput {
        report,
        hist: counts.hist,
        hlog_error,
    }
}

/// The run in this process: the workers, the stages as `conductor` says, their intervals merged
/// into `sink`, and what they counted merged.
pub(crate) fn run_local(
    cfg: &LoadConfig,
    shared: &Shared,
    conductor: &dyn Conductor,
    sink: &mut dyn Sink,
) -> (Counts, Window) {
    let pattern = Pattern::new(PATTERN_SEED, cfg.expect);
    let rx = shared
        .rx
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .expect("a Shared runs once");
    let mut merger = Merger::new(cfg.threads, false);
    let mut merged = Counts::new();
    let mut window = Window::default();
    thread::scope(|scope| {
        let mut handles = Vec::with_capacity(cfg.threads);
        let mut first = cfg.first_conn;
        for t in 0..cfg.threads {
            let n = cfg.conns_of_thread(t);
            let ctx = WorkerCtx {
                cfg,
                pattern: &pattern,
                shared,
                thread: t,
                first_conn: first,
                nconns: n,
            };
            first += n;
            let h = thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn_scoped(scope, move || {
                    let _end = EndGuard(ctx.shared, ctx.thread);
                    match ctx.cfg.proto {
                        Proto::Tcp => worker::run(&ctx, tcp::TcpFlow::new(&ctx)),
                        Proto::Udp => worker::run(&ctx, udp::UdpFlow::new(&ctx)),
                    }
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    merger.end(t);
                    merged
                        .errors
                        .count(ErrorClass::Local, || format!("cannot start a thread: {e}"));
                }
            }
        }
        let mut pump = Pump {
            rx: &rx,
            merger: &mut merger,
            sink,
        };
        window = drive(cfg, shared, conductor, &handles, &mut pump);
        for h in handles {
            match h.join() {
                Ok(s) => merged.merge(&s),
                Err(_) => merged
                    .errors
                    .count(ErrorClass::Local, || "a worker panicked".into()),
            }
        }
        // Every worker has ended, so every interval it sent is in the channel.
        pump.drain();
        for m in pump.merger.finish() {
            pump.sink.interval(m);
        }
    });
    (merged, window)
}

/// Moves the workers' intervals from the channel through the merger into the sink.
struct Pump<'a> {
    rx: &'a Receiver<(usize, WorkerMsg)>,
    merger: &'a mut Merger,
    sink: &'a mut dyn Sink,
}

impl Pump<'_> {
    fn take(&mut self, (src, msg): (usize, WorkerMsg)) {
        match msg {
            WorkerMsg::Interval(iv) => self.merger.add(src, iv),
            WorkerMsg::End => self.merger.end(src),
        }
    }

    /// Waits up to `for_at_most` for intervals, and passes on the merged ones that are complete.
    fn run(&mut self, for_at_most: Duration) {
        match self.rx.recv_timeout(for_at_most) {
            Ok(m) => self.take(m),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.take(m);
        }
        for m in self.merger.ready() {
            self.sink.interval(m);
        }
    }
}

/// The pattern seed: fixed, so a mismatch report can be reproduced.
const PATTERN_SEED: u64 = 0x5eed_0fec_40a1;

/// What the main thread sampled at the two ends of the measurement window.
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub secs: f64,
    pub client_cpu: Duration,
    pub server_cpu: Option<Duration>,
    pub server_rss: Option<u64>,
    /// The signal that cut the run short, if one did.
    pub signal: Option<i32>,
}

/// How long the main thread waits for intervals between looks at the clock and the signals.
const SLICE: Duration = Duration::from_millis(50);

/// The main thread's part: warm-up, window, stop, passing on the intervals all along.
fn drive(
    cfg: &LoadConfig,
    shared: &Shared,
    conductor: &dyn Conductor,
    handles: &[thread::ScopedJoinHandle<'_, Counts>],
    pump: &mut Pump<'_>,
) -> Window {
    let all_done = || handles.iter().all(|h| h.is_finished());
    // 1. The warm-up, or for hold, until every worker has opened what it can.
    while !conductor.interrupted() && !all_done() {
        if conductor.warmup_over(Instant::now(), shared.all_ready()) {
            break;
        }
        pump.run(SLICE);
    }
    // 2. The window.
    let t0 = Instant::now();
    let cpu0 = cpu::own_cpu();
    let srv0 = cfg.server_pid.and_then(cpu::tree_cpu);
    let _ = shared.window_start.set(t0);
    pump.sink.window_opened(SystemTime::now());
    shared.set_stage(Stage::Measure);
    let end = t0 + cfg.duration;
    while !conductor.interrupted() && !all_done() && !conductor.window_over(Instant::now(), end) {
        pump.run(end.saturating_duration_since(Instant::now()).min(SLICE));
    }
    let t1 = Instant::now();
    let cpu1 = cpu::own_cpu();
    let srv1 = cfg.server_pid.and_then(cpu::tree_cpu);
    let rss = cfg.server_pid.and_then(cpu::tree_rss);
    // 3. Hold's check, or the drain; each worker ends itself within --timeout. An
    // interrupted run skips it: whoever pressed Ctrl-C wants the figures now.
    if !conductor.interrupted() {
        shared.set_stage(if cfg.mode == Mode::Hold {
            Stage::Check
        } else {
            Stage::Drain
        });
        let check_end = Instant::now() + cfg.timeout + Duration::from_secs(1);
        while Instant::now() < check_end && !all_done() && !conductor.interrupted() {
            pump.run(Duration::from_millis(10));
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

//! `--processes N`: one run spread over N child processes, each with its own open-file limit
//! (20,000 per process here), so that one run can open more connections than one process may;
//! and the child's side of it.
//!
//! The parent re-executes the binary once per share of the connections (the caller says how:
//! the binary passes the same command line and a hidden `--process-index I`). It runs no worker
//! itself; it conducts:
//!
//! ```text
//!   parent                                   child I (own process group, dies with the parent)
//!     spawn ───────────────────────────────▶ warm-up (hold: opens its connections)
//!          ◀──────────────────────────────── "ready" (every connection it will open is open)
//!     warm-up over (hold: all ready) ─ "measure" ─▶ window opens
//!          ◀──────────────────────────────── one interval a second (counts + histogram)
//!     window over ─ "end" (Ctrl-C: "stop") ─▶ drain or check (stop: none), orderly close
//!          ◀──────────────────────────────── its last intervals, then "done" (all its counts)
//! ```
//!
//! Commands go down the child's stdin, one word a line; reports come up its stdout, one JSON
//! object a line, histograms in HdrHistogram's compressed form (see `hlog`). The parent merges
//! the seconds of every child as they come (`interval::Merger`, histograms added as histograms)
//! into one progress line, one series and one interval log, and the children's final counts into
//! one report, which also lists each process's own figures.
//!
//! Children never outlive the parent: each is started with `PR_SET_PDEATHSIG` (SIGTERM, which
//! the child takes as Ctrl-C: it stops and closes its connections in order), and an end of file
//! on its stdin stops it too. They run in their own process group, so a Ctrl-C at the terminal
//! reaches the parent alone, which stops every child once ("stop") and still reports what they
//! measured; a second Ctrl-C exits the parent at once, and the children with it.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::config::{LoadConfig, Mode};
use super::cpu;
use super::hist::Latency;
use super::hlog::HlogWriter;
use super::interval::{Interval, Merged, Merger};
use super::progress::Top;
use super::report::ProcessPart;
use super::stats::{Counts, ErrorClass};
use super::worker::CLOSE_BOUND;
use super::{
    Conductor, RunOutput, SLICE, Shared, Signals, Sink, Window, build_report, run_local, warm_end,
};

/// What a child reports, one JSON object a line.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ChildMsg {
    /// Every connection it will open is open (or failed): hold's warm-up may end.
    Ready,
    Interval(Box<Interval>),
    /// The run is over: everything it counted. Nothing follows.
    Done(Box<Counts>),
}

// ---------------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------------

/// The parent's commands, as the stdin reader has seen them.
#[derive(Default)]
struct Commands {
    measure: AtomicBool,
    end: AtomicBool,
    stop: AtomicBool,
}

/// The child's stdout: the pipe to the parent.
struct Wire {
    broken: AtomicBool,
}

impl Wire {
    fn send(&self, m: &ChildMsg) {
        let Ok(mut line) = serde_json::to_string(m) else {
            return;
        };
        line.push('\n');
        let mut out = io::stdout().lock();
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // The parent is gone: there is nobody left to run for.
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

struct ChildClock<'a> {
    cmds: &'a Commands,
    wire: &'a Wire,
    signals: &'a Signals,
    hold: bool,
    ready_sent: std::cell::Cell<bool>,
}

impl Conductor for ChildClock<'_> {
    fn interrupted(&self) -> bool {
        self.cmds.stop.load(Ordering::Relaxed)
            || self.signals.interrupted()
            || self.wire.broken.load(Ordering::Relaxed)
    }

    fn warmup_over(&self, _now: Instant, ready: bool) -> bool {
        if (ready || !self.hold) && !self.ready_sent.get() {
            self.ready_sent.set(true);
            self.wire.send(&ChildMsg::Ready);
        }
        self.cmds.measure.load(Ordering::Relaxed)
    }

    fn window_over(&self, _now: Instant, _end: Instant) -> bool {
        self.cmds.end.load(Ordering::Relaxed)
    }
}

struct WireSink<'a>(&'a Wire);

impl Sink for WireSink<'_> {
    fn interval(&mut self, m: Merged) {
        self.0.send(&ChildMsg::Interval(Box::new(m.total)));
    }
}

/// Runs `cfg` (one process's share, see [`LoadConfig::share`]) as a child of
/// [`execute_processes`]: stages from stdin, reports to stdout. Returns once it has reported
/// everything; the caller exits (with status 0: how the run went is in the report).
pub fn execute_child(cfg: &LoadConfig) {
    let signals = Signals::register(false);
    let cmds = Arc::new(Commands::default());
    let reader = cmds.clone();
    // Detached: it ends with the process. An end of file (the parent is gone) means stop.
    let _ = thread::Builder::new()
        .name("commands".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "measure" => reader.measure.store(true, Ordering::Relaxed),
                    "end" => reader.end.store(true, Ordering::Relaxed),
                    "stop" => break,
                    _ => {}
                }
            }
            reader.stop.store(true, Ordering::Relaxed);
        });
    let wire = Wire {
        broken: AtomicBool::new(false),
    };
    let clock = ChildClock {
        cmds: &cmds,
        wire: &wire,
        signals: &signals,
        hold: cfg.mode == Mode::Hold,
        ready_sent: std::cell::Cell::new(false),
    };
    let shared = Shared::new(cfg.threads);
    let (counts, _window) = run_local(cfg, &shared, &clock, &mut WireSink(&wire));
    wire.send(&ChildMsg::Done(Box::new(counts)));
}

// ---------------------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------------------

enum Event {
    Msg(ChildMsg),
    /// A line that is not a report (a bug, or something else writing to the child's stdout).
    Garbled(String),
    Eof,
}

struct Kid {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    pid: u32,
    ready: bool,
    done: Option<Box<Counts>>,
    /// Its stdout has ended (it has exited, or is about to).
    eof: bool,
    cpu0: Option<Duration>,
    cpu_s: Option<f64>,
}

impl Kid {
    fn gone(&self) -> bool {
        self.eof || self.child.is_none()
    }

    fn tell(&mut self, what: &str) {
        if let Some(s) = &mut self.stdin {
            // A child that has gone cannot be told; its end of file says so.
            let _ = s.write_all(format!("{what}\n").as_bytes());
            let _ = s.flush();
        }
    }
}

struct Parent<'a, 'c> {
    kids: Vec<Kid>,
    rx: Receiver<(usize, Event)>,
    merger: Merger,
    top: &'a mut Top<'c>,
    errors: Counts,
}

impl Parent<'_, '_> {
    fn take(&mut self, (i, ev): (usize, Event)) {
        let kid = &mut self.kids[i];
        match ev {
            Event::Msg(ChildMsg::Ready) => kid.ready = true,
            Event::Msg(ChildMsg::Interval(iv)) => self.merger.add(i, *iv),
            Event::Msg(ChildMsg::Done(c)) => {
                kid.done = Some(c);
                self.merger.end(i);
            }
            Event::Garbled(line) => self.errors.errors.count(ErrorClass::Local, || {
                format!("process {i}: a report line that cannot be read: {line}")
            }),
            Event::Eof => {
                kid.eof = true;
                self.merger.end(i);
            }
        }
    }

    fn pump(&mut self, for_at_most: Duration) {
        match self.rx.recv_timeout(for_at_most) {
            Ok(e) => self.take(e),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                // Nothing came (or every reader has ended): do not spin.
                if for_at_most > Duration::ZERO && self.kids.iter().all(Kid::gone) {
                    thread::sleep(for_at_most.min(SLICE));
                }
            }
        }
        while let Ok(e) = self.rx.try_recv() {
            self.take(e);
        }
        for m in self.merger.ready() {
            self.top.interval(m);
        }
    }

    fn tell_all(&mut self, what: &str) {
        for k in &mut self.kids {
            k.tell(what);
        }
    }

    fn all_gone(&self) -> bool {
        self.kids.iter().all(Kid::gone)
    }

    fn all_reported(&self) -> bool {
        self.kids.iter().all(|k| k.done.is_some() || k.gone())
    }

    fn cpu(&self) -> Duration {
        self.kids
            .iter()
            .filter_map(|k| cpu::proc_cpu(k.pid))
            .sum::<Duration>()
    }
}

/// Starts child `i` from `cmd` with its pipes, in its own process group, to die with us.
fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls are made (setpgid, prctl,
    // getppid), and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then no signal would ever come.
            if libc::getppid() != parent {
                return Err(io::Error::other("the parent is gone"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Runs `cfg` over `cfg.processes` child processes, each started from `child(i)` (a command
/// that runs [`execute_child`] with `cfg.share(i)`), and returns the merged report, histogram
/// and interval log as [`execute`](super::execute) would for one process. SIGINT or SIGTERM
/// stops every child and reports what they measured, as for one process.
pub fn execute_processes(
    cfg: &LoadConfig,
    hlog: Option<HlogWriter>,
    child: &dyn Fn(usize) -> Command,
) -> RunOutput {
    let signals = Signals::register(true);
    let n = cfg.processes;
    let started = Instant::now();
    let mut top = Top::new(cfg, hlog, true, started);
    let (tx, rx) = mpsc::channel::<(usize, Event)>();
    let mut p = Parent {
        kids: Vec::with_capacity(n),
        rx,
        merger: Merger::new(n, true),
        top: &mut top,
        errors: Counts::new(),
    };
    for i in 0..n {
        match spawn(child(i)) {
            Ok(mut c) => {
                let out = c.stdout.take();
                let tx = tx.clone();
                let reader = thread::Builder::new()
                    .name(format!("process-{i}"))
                    .spawn(move || {
                        if let Some(out) = out {
                            for line in BufReader::new(out).lines() {
                                let Ok(line) = line else { break };
                                let ev = match serde_json::from_str::<ChildMsg>(&line) {
                                    Ok(m) => Event::Msg(m),
                                    Err(_) => Event::Garbled(line.chars().take(200).collect()),
                                };
                                if tx.send((i, ev)).is_err() {
                                    return;
                                }
                            }
                        }
                        let _ = tx.send((i, Event::Eof));
                    });
                if let Err(e) = reader {
                    p.errors.errors.count(ErrorClass::Local, || {
                        format!("process {i}: cannot start its reader thread: {e}")
                    });
                }
                p.kids.push(Kid {
                    pid: c.id(),
                    stdin: c.stdin.take(),
                    child: Some(c),
                    ready: false,
                    done: None,
                    eof: false,
                    cpu0: None,
                    cpu_s: None,
                });
            }
            Err(e) => {
                p.errors.errors.count(ErrorClass::Local, || {
                    format!("cannot start process {i} of {n}: {e}")
                });
                p.merger.end(i);
                p.kids.push(Kid {
                    child: None,
                    stdin: None,
                    pid: 0,
                    ready: false,
                    done: None,
                    eof: true,
                    cpu0: None,
                    cpu_s: None,
                });
            }
        }
    }
    drop(tx);

    // Warm-up: by the clock, or (hold) until every child has opened its connections.
    let hold = cfg.mode == Mode::Hold;
    let warm = warm_end(cfg, started);
    while !signals.interrupted() && !p.all_gone() {
        let ready = p.kids.iter().all(|k| k.ready || k.gone());
        if Instant::now() >= warm || (hold && ready) {
            break;
        }
        p.pump(SLICE);
    }
    // The window: every child opens it on the word.
    let t0 = Instant::now();
    let own0 = cpu::own_cpu();
    for k in &mut p.kids {
        k.cpu0 = cpu::proc_cpu(k.pid);
    }
    let kids0 = p.cpu();
    let srv0 = cfg.server_pid.and_then(cpu::tree_cpu);
    p.top.window_opened(SystemTime::now());
    p.tell_all("measure");
    let end = t0 + cfg.duration;
    while !signals.interrupted() && !p.all_gone() && Instant::now() < end {
        p.pump(end.saturating_duration_since(Instant::now()).min(SLICE));
    }
    let t1 = Instant::now();
    let own1 = cpu::own_cpu();
    let kids1 = p.cpu();
    for k in &mut p.kids {
        k.cpu_s = match (k.cpu0, cpu::proc_cpu(k.pid)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
    }
    let srv1 = cfg.server_pid.and_then(cpu::tree_cpu);
    let rss = cfg.server_pid.and_then(cpu::tree_rss);

    // The end: drain or check (each child bounds its own by --timeout), or, interrupted, none.
    let mut stopped = signals.interrupted();
    p.tell_all(if stopped { "stop" } else { "end" });
    let bound = Instant::now()
        + CLOSE_BOUND
        + Duration::from_secs(5)
        + if stopped { Duration::ZERO } else { cfg.timeout };
    while !p.all_reported() && Instant::now() < bound {
        if !stopped && signals.interrupted() {
            stopped = true;
            p.tell_all("stop");
        }
        p.pump(SLICE);
    }
    // Whoever has not reported by now will not: it is ended (it is our child: by its pid).
    for (i, k) in p.kids.iter_mut().enumerate() {
        if k.done.is_none()
            && let Some(c) = &mut k.child
        {
            let _ = c.kill();
            p.errors.errors.count(ErrorClass::Local, || {
                format!("process {i} (pid {}) ended without its report", k.pid)
            });
        }
        // Its end of file, if it is still running: every child ends once it has reported.
        k.stdin = None;
    }
    reap(&mut p.kids);
    while let Ok(e) = p.rx.try_recv() {
        p.take(e);
    }
    for m in p.merger.finish() {
        p.top.interval(m);
    }

    let Parent {
        kids,
        errors: mut counts,
        ..
    } = p;
    let mut parts = Vec::with_capacity(n);
    for (i, k) in kids.iter().enumerate() {
        let Some(c) = &k.done else { continue };
        counts.merge(c);
        parts.push(ProcessPart {
            index: i,
            pid: k.pid,
            connections: cfg.conns_of_process(i),
            messages: c.msgs,
            bytes: c.bytes,
            connects: c.connects,
            errors: c.errors.total,
            mismatches: c.mismatch_events,
            held: hold.then_some(c.held),
            answered: hold.then_some(c.answered),
            latency_us: Latency::of(&c.hist),
            cpu_s: k.cpu_s,
        });
    }
    let window = Window {
        secs: (t1 - t0).as_secs_f64(),
        client_cpu: own1.saturating_sub(own0) + kids1.saturating_sub(kids0),
        server_cpu: match (srv0, srv1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        server_rss: rss,
        signal: signals.which(),
    };
    drop(signals);
    let report = build_report(cfg, &counts, &window, top.take_series(), parts);
    let hlog_error = top.finish(&report);
    RunOutput {
        report,
        hist: counts.hist,
        hlog_error,
    }
}

/// Waits for every child to exit (they do once they have reported), killing any that has not
/// within a few seconds, so that none is left behind as a zombie or an orphan.
fn reap(kids: &mut [Kid]) {
    let until = Instant::now() + Duration::from_secs(3);
    for k in kids.iter_mut() {
        let Some(c) = &mut k.child else { continue };
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= until => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

//! The one event loop every worker thread runs, whatever the protocol.
//!
//! It owns what TCP and UDP workers have in common: the `mio::Poll` and its wait (a wake-up by a
//! signal is just another turn), following the stage the main thread sets, the worker's own hard
//! deadline, the tick on which timeouts are looked at, the end of the drain and of hold's check,
//! the open-loop schedule (`--rate`), the `timerfd` that wakes the loop when its next turn is due
//! (so that the wait itself sets no timer: see [`run`]), and the worker's intervals (see
//! `interval`): every latency is recorded into the current interval's histogram, and at each
//! whole second (of the run, or of the window) and each change of stage the interval is added
//! into the worker's total and sent to the main thread.
//! What happens on the sockets is a [`Flow`]'s: the per-protocol state machine over the worker's
//! share of the connections (`tcp`, `udp`). A flow is driven only through the calls below, so a
//! unit test can drive one by hand, without the loop.
//!
//! One turn of the loop:
//!
//! ```text
//!   stage / deadline ─▶ stage change? new interval, flow.on_stage ─▶ second over? new interval
//!     ─▶ tick due? flow.on_tick
//!     ─▶ draining or checking: nothing owed, or time up (drain: flow.end_drain) ─▶ return
//!     ─▶ flow.on_turn ─▶ deal due messages (flow.on_due) ─▶ publish ─▶ poll ─▶ flow.on_event
//! ```
//!
//! After the last turn (the drain or check done, or the main thread's `Stop` on Ctrl-C), the
//! flow closes its connections in an orderly way (`flow.begin_close`, then events until
//! `flow.closing()` is false or `CLOSE_BOUND` passes) before it is dropped.

use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Poll, Token};

use super::config::{CHECK_INTERVAL, Mode};
use super::hist::{new_hist, record};
use super::interval::Interval;
use super::schedule::{RateSchedule, lane_share};
use super::stats::{Counts, ErrorClass, ErrorKinds};
use super::timer::Timer;
use super::{Stage, WorkerCtx, WorkerMsg};

/// How often timeouts, stage changes and the progress counters are looked at when idle.
pub(crate) const TICK: Duration = CHECK_INTERVAL;
/// The wake-up timer's token: beyond any connection or socket a flow registers.
const TIMER: Token = Token(usize::MAX);
/// Longest the worker waits, once the run is over, for the server to answer its FINs. A server
/// that got the FIN sends what it still owes and closes at once (on loopback, well under a
/// millisecond), so this is only reached with a stalled server, and it must stay short: after
/// Ctrl-C someone is waiting for the summary.
pub(crate) const CLOSE_BOUND: Duration = Duration::from_secs(1);

/// How close to the end of a stage a second is not cut any more (the rest joins the last one).
const SLIVER: Duration = Duration::from_millis(100);

/// What a readiness event said, apart from mio's type so that tests can make one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or a hang-up) is in.
    pub read_closed: bool,
    pub write_closed: bool,
    pub error: bool,
    /// Urgent data (`EPOLLPRI`).
    pub priority: bool,
}

impl Readiness {
    fn of(ev: &mio::event::Event) -> Readiness {
        Readiness {
            readable: ev.is_readable(),
            writable: ev.is_writable(),
            read_closed: ev.is_read_closed(),
            write_closed: ev.is_write_closed(),
            error: ev.is_error(),
            priority: ev.is_priority(),
        }
    }

    /// Whether there may be something to read: data, an end of stream or an error. The mask an
    /// edge-triggered poller reports is the socket's state when the event was collected, so
    /// without any of these the receive queue was empty then, and whatever arrives later raises
    /// an edge of its own.
    pub(crate) fn may_read(&self) -> bool {
        self.readable || self.read_closed || self.error
    }

    /// Whether a short read still leaves something to read: a FIN already in raises no new
    /// edge, nor does an error, and a read stops short at an urgent mark with data after it.
    /// Otherwise a short read has emptied the receive queue and the `WouldBlock` read that
    /// would confirm it can be skipped.
    pub(crate) fn read_past_short(&self) -> bool {
        self.read_closed || self.error || self.priority
    }
}

/// Everything a worker has besides its sockets; every [`Flow`] call gets it.
pub(crate) struct Env<'a> {
    pub ctx: &'a WorkerCtx<'a>,
    pub poll: Poll,
    pub counts: Counts,
    /// The stage the worker is in (the main thread's, as of this turn).
    pub stage: Stage,
    /// The open-loop clock, when `--rate` was given, and the lanes it deals messages to.
    pub sched: Option<RateSchedule>,
    pub lanes: usize,
    /// All-time counters, of which each interval reports its share.
    pub live_msgs: u64,
    pub live_bytes: u64,
    pub live_connects: u64,
    /// Connections (sockets) open now.
    pub open: u64,
    /// The interval being recorded.
    pub iv: Rec,
}

/// The interval a worker is recording (see `interval`).
pub(crate) struct Rec {
    /// The stage recorded in; `None` while draining or closing: nothing recorded then is
    /// reported.
    stage: Option<Stage>,
    index: u64,
    began: Instant,
    /// What `index` and the interval's start count from: the run's start, or the window's.
    origin: Instant,
    /// The next whole second, when the interval ends by itself (`None`: only with the stage).
    next_cut: Option<Instant>,
    /// When the stage is due to end: no second is cut just before it, so the stage does not end
    /// with a sliver of an interval.
    limit: Option<Instant>,
    /// This interval's latencies: the one place the hot path records into.
    pub hist: Histogram<u64>,
    /// The all-time counters as they were when the interval began.
    base: [u64; 7],
    /// The errors by kind as they were then.
    base_kinds: ErrorKinds,
}

impl<'a> Env<'a> {
    pub(crate) fn new(ctx: &'a WorkerCtx<'a>, poll: Poll) -> Env<'a> {
        let started = ctx.shared.started;
        let now = Instant::now().max(started);
        let mut env = Env {
            ctx,
            poll,
            counts: Counts::new(),
            stage: Stage::Warmup,
            sched: None,
            lanes: 0,
            live_msgs: 0,
            live_bytes: 0,
            live_connects: 0,
            open: 0,
            iv: Rec {
                stage: Some(Stage::Warmup),
                index: 0,
                began: now,
                origin: started,
                next_cut: None,
                limit: None,
                hist: new_hist(),
                base: [0; 7],
                base_kinds: ErrorKinds::default(),
            },
        };
        if ctx.cfg.mode != Mode::Hold {
            env.iv.limit = Some(started + ctx.cfg.warmup);
        }
        env.begin_interval(Some(Stage::Warmup), started, now, true);
        env
    }

    /// Records one latency into the current interval (nothing while draining or closing).
    #[inline]
    pub(crate) fn latency(&mut self, d: Duration) {
        if self.iv.stage.is_some() {
            record(&mut self.iv.hist, d);
        }
    }

    fn bases(&self) -> [u64; 7] {
        let c = &self.counts;
        [
            self.live_msgs,
            self.live_bytes,
            c.errors.total,
            c.mismatch_events,
            self.live_connects,
            c.held,
            c.answered,
        ]
    }

    /// Starts a new interval at `now` in `stage`, counted from `origin`; `cut`: it ends at the
    /// next whole second after `origin` by itself.
    fn begin_interval(&mut self, stage: Option<Stage>, origin: Instant, now: Instant, cut: bool) {
        let index = now.saturating_duration_since(origin).as_secs();
        self.iv.stage = stage;
        self.iv.index = if cut { index } else { 0 };
        self.iv.began = now;
        self.iv.origin = origin;
        let limit = self.iv.limit;
        self.iv.next_cut = cut
            .then(|| origin + Duration::from_secs(index + 1))
            .filter(|&at| limit.is_none_or(|l| at + SLIVER < l));
        self.iv.base = self.bases();
        self.iv.base_kinds = ErrorKinds::reading(&self.counts.errors);
    }

    /// Ends the current interval at `now`: adds it into the total if it is part of the window,
    /// and sends it to the main thread.
    fn ship(&mut self, now: Instant, connecting: u64) {
        let Some(stage) = self.iv.stage else { return };
        let b = self.bases();
        let d = |i: usize| b[i].saturating_sub(self.iv.base[i]);
        let hist = std::mem::replace(&mut self.iv.hist, new_hist());
        if stage.measured() {
            // Same bounds on both sides, so adding cannot fail.
            let _ = self.counts.hist.add(&hist);
        }
        let iv = Interval {
            stage,
            index: self.iv.index,
            start: self
                .iv
                .began
                .saturating_duration_since(self.iv.origin)
                .as_secs_f64(),
            secs: now.saturating_duration_since(self.iv.began).as_secs_f64(),
            msgs: d(0),
            bytes: d(1),
            errors: d(2),
            error_kinds: ErrorKinds::since(
                &self.counts.errors,
                &self.iv.base_kinds,
                self.iv.base[2],
            ),
            mismatches: d(3),
            connects: d(4),
            held: d(5),
            answered: d(6),
            open: self.open,
            connecting,
            hist,
        };
        // The main thread may be gone only if it panicked; nothing then reads the intervals.
        let _ = self
            .ctx
            .shared
            .tx
            .send((self.ctx.thread, WorkerMsg::Interval(Box::new(iv))));
    }

    /// The second is over: the next interval begins.
    fn cut_due(&mut self, now: Instant, connecting: u64) {
        if self.iv.next_cut.is_some_and(|at| now >= at) {
            self.ship(now, connecting);
            let (stage, origin) = (self.iv.stage, self.iv.origin);
            self.begin_interval(stage, origin, now, true);
        }
    }

    /// The stage changed to `stage`: the interval of the old one ends, and one of the new one
    /// begins (the window's first starts with the window, whatever the second).
    fn enter(&mut self, stage: Stage, now: Instant, connecting: u64) {
        self.ship(now, connecting);
        let window = self.ctx.shared.window_start.get().copied().unwrap_or(now);
        match stage {
            Stage::Warmup => {}
            Stage::Measure => {
                self.iv.limit = Some(window + self.ctx.cfg.duration);
                self.begin_interval(Some(Stage::Measure), window, now, true);
            }
            Stage::Check => self.begin_interval(Some(Stage::Check), window, now, false),
            Stage::Drain | Stage::Stop => self.begin_interval(None, window, now, false),
        }
    }

    /// Inside the measurement window: what is answered now is counted.
    pub(crate) fn measuring(&self) -> bool {
        self.stage == Stage::Measure
    }

    /// The run is over: nothing new is sent or connected.
    pub(crate) fn draining(&self) -> bool {
        self.stage == Stage::Drain
    }

    fn publish(&self, ready: bool) {
        self.ctx.live().ready.store(ready, Relaxed);
    }
}

/// A protocol's side of a worker: a state machine over its connections (sockets), driven by the
/// loop in [`run`].
pub(crate) trait Flow {
    /// Opens what must exist before the loop starts and returns the number of open-loop lanes:
    /// message `k` of the schedule goes to lane `k % lanes` (0: nothing to run).
    fn open(&mut self, env: &mut Env, now: Instant) -> usize;
    /// The count of messages of `lane`'s schedule that are due, for the loop to deal into.
    fn due_mut(&mut self, lane: usize) -> &mut u64;
    /// Messages became due on `lane`: issue what its depth allows.
    fn on_due(&mut self, env: &mut Env, lane: usize, now: Instant);
    /// The stage changed (`env.stage` is the new one).
    fn on_stage(&mut self, env: &mut Env, now: Instant);
    /// Once a tick: timeouts and retries.
    fn on_tick(&mut self, env: &mut Env, now: Instant);
    /// Once a turn, before the wait.
    fn on_turn(&mut self, _env: &mut Env, _now: Instant) {}
    /// A readiness event for `token`, as the flow registered it.
    fn on_event(&mut self, env: &mut Env, token: usize, ready: Readiness);
    /// Whether the server still owes anything: the drain and hold's check end when not.
    fn owes(&self) -> bool;
    /// The drain's time is up: what is still owed counts as timed out (lost).
    fn end_drain(&mut self, env: &mut Env, now: Instant);
    /// Whether the flow has stopped opening connections (hold waits for every worker's).
    fn settled(&self) -> bool {
        true
    }
    /// Connections being opened now (for the progress line).
    fn connecting(&self) -> u64 {
        0
    }
    /// When the flow needs the loop awake, besides its events and the tick.
    fn wake_at(&self, _env: &Env, _now: Instant) -> Option<Instant> {
        None
    }
    /// The run is over (or interrupted): begin closing every connection in an orderly way, so
    /// that the server sees a FIN, never a reset. Events keep coming to `on_event` until
    /// `closing` is false or [`CLOSE_BOUND`] has passed; then the flow is dropped.
    fn begin_close(&mut self, _env: &mut Env) {}
    /// Whether a connection is still waiting for the server's end of stream.
    fn closing(&self) -> bool {
        false
    }
}

/// Runs one worker until the main thread says stop (or its own hard deadline passes) and
/// returns what it counted.
pub(crate) fn run<F: Flow>(ctx: &WorkerCtx, mut flow: F) -> Counts {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            let mut counts = Counts::new();
            counts
                .errors
                .count(ErrorClass::of(&e), || format!("epoll: {e}"));
            return counts;
        }
    };
    let mut env = Env::new(ctx, poll);
    let cfg = ctx.cfg;
    let now = Instant::now();
    let lanes = flow.open(&mut env, now);
    env.lanes = lanes;
    env.publish(flow.settled());
    if lanes == 0 {
        return env.counts;
    }
    // This worker's share of the total rate: its lanes' share of all connections.
    env.sched = cfg
        .rate
        .map(|r| RateSchedule::new(now, r * lanes as f64 / cfg.conns as f64));
    // The loop's wake-up: the next tick, second, deadline, the flow's own or (open loop) due
    // message, on a timerfd armed only when that time changes (a few times a second), so that the
    // wait needs no timeout. A timeout would make every wait that sleeps, one per message in
    // ping-pong over one connection, start and cancel a kernel timer, which the server's
    // untimed wait does not. Without the timerfd the wait's timeout does the job, to the
    // millisecond, which the open loop cannot do with.
    let mut timer = match Timer::new(env.poll.registry(), TIMER) {
        Ok(t) => Some(t),
        Err(e) if env.sched.is_some() => {
            env.counts
                .errors
                .count(ErrorClass::Local, || format!("timerfd: {e}"));
            return env.counts;
        }
        Err(_) => None,
    };
    let mut events = Events::with_capacity(1024);
    let hard_end = now + ctx.hard_limit();
    let mut next_tick = now;
    // When the check (hold) or the drain must be over, once it has begun.
    let mut closing_until = None;

    loop {
        let now = Instant::now();
        let stage = ctx.shared.stage();
        if stage == Stage::Stop || now >= hard_end {
            break;
        }
        if stage != env.stage {
            env.stage = stage;
            env.enter(stage, now, flow.connecting());
            flow.on_stage(&mut env, now);
            closing_until = match stage {
                Stage::Check => Some(now + cfg.timeout),
                // One tick more than the timeout: the housekeeping that counts a connection
                // silent for the timeout runs once a tick.
                Stage::Drain => Some(now + cfg.timeout + TICK),
                Stage::Warmup | Stage::Measure | Stage::Stop => None,
            };
        }
        env.cut_due(now, flow.connecting());
        if now >= next_tick {
            flow.on_tick(&mut env, now);
            next_tick = now + TICK;
        }
        if let Some(until) = closing_until {
            if !flow.owes() {
                break;
            }
            if now >= until {
                if stage == Stage::Drain {
                    flow.end_drain(&mut env, now);
                }
                break;
            }
        }
        flow.on_turn(&mut env, now);
        if !env.draining()
            && let Some(due) = env.sched.as_mut().map(|s| s.take_due(now))
        {
            deal(&mut flow, &mut env, due, lanes, now);
        }
        env.publish(flow.settled());

        let mut wake = next_tick;
        // Not while draining: nothing more is issued, so the next due time stays in the past
        // and would wake the loop at once, over and over.
        if let Some(s) = &env.sched
            && !env.draining()
        {
            wake = wake.min(s.peek().1);
        }
        if let Some(at) = closing_until {
            wake = wake.min(at);
        }
        if let Some(at) = flow.wake_at(&env, now) {
            wake = wake.min(at);
        }
        if let Some(at) = env.iv.next_cut {
            wake = wake.min(at);
        }
        let timeout = match &mut timer {
            Some(t) if wake > now => match t.arm(wake, now) {
                Ok(()) => None,
                Err(e) => {
                    env.counts
                        .errors
                        .count(ErrorClass::Local, || format!("timerfd: {e}"));
                    break;
                }
            },
            _ => Some(wake.saturating_duration_since(now)),
        };
        if !wait(&mut env, &mut events, timeout) {
            break;
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = &mut timer {
                    t.clear();
                }
                continue;
            }
            let ready = Readiness::of(ev);
            flow.on_event(&mut env, ev.token().0, ready);
        }
    }
    // The last interval ends with the run proper; the closing that follows measures nothing.
    let end = Instant::now();
    env.enter(Stage::Stop, end, flow.connecting());
    close(&mut flow, &mut env, &mut events);
    env.publish(flow.settled());
    // Dropping the flow closes what is left of its sockets. After `close` that is connections
    // whose server has closed too (nothing unread, so no RST), or, past the bound, ones whose
    // server would not.
    drop(flow);
    env.counts
}

/// The orderly end of every connection: the flow half-closes them all (FIN), then reads each
/// to the server's end of stream, so that nothing is left unread when it is closed: closing a
/// socket with unread data makes the kernel send RST, which the server rightly counts as a
/// reset, and throws away replies the server did send (its bytes out would then exceed what
/// the generator read). Bounded by [`CLOSE_BOUND`], and done on an interrupted run too.
fn close<F: Flow>(flow: &mut F, env: &mut Env, events: &mut Events) {
    flow.begin_close(env);
    let until = Instant::now() + CLOSE_BOUND;
    while flow.closing() {
        let now = Instant::now();
        if now >= until || !wait(env, events, Some(until - now)) {
            return;
        }
        for ev in events.iter() {
            // The open-loop timer has nothing more to say.
            if ev.token() == TIMER {
                continue;
            }
            let ready = Readiness::of(ev);
            flow.on_event(env, ev.token().0, ready);
        }
    }
}

/// Hands the open-loop messages `due` out round-robin over the lanes.
fn deal<F: Flow>(flow: &mut F, env: &mut Env, due: Range<u64>, lanes: usize, now: Instant) {
    let n = lanes as u64;
    if due.end - due.start < n {
        for k in due {
            let lane = (k % n) as usize;
            *flow.due_mut(lane) += 1;
            flow.on_due(env, lane, now);
        }
    } else {
        // At least a message for every lane: set each lane's count at once, so that a generator
        // far behind its schedule spends a turn per lane, not per message.
        for lane in 0..lanes {
            *flow.due_mut(lane) = lane_share(due.end, lane as u64, n);
            flow.on_due(env, lane, now);
        }
    }
}

/// One wait for readiness (`None`: until an event, the wake-up timer's included). A wake-up by a
/// signal is a turn with no events; any other failure is counted and means the worker must stop
/// (`false`).
fn wait(env: &mut Env, events: &mut Events, timeout: Option<Duration>) -> bool {
    match crate::io_outcome::poll(&mut env.poll, events, timeout) {
        Ok(()) => true,
        Err(e) => {
            env.counts
                .errors
                .count(ErrorClass::Local, || format!("epoll_wait: {e}"));
            false
        }
    }
}

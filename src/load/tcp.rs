//! One TCP worker: a mio event loop driving its share of the connections in every TCP mode.
//!
//! Each connection slot goes through the states below; a slot whose connection failed goes back
//! to `Idle` and is reconnected after a short back-off (except in hold, where a lost connection
//! stays lost: the point is to count them).
//!
//! ```text
//!   Idle ──connect()──▶ Connecting ──handshake done──▶ Open ──error / EOF / timeout──▶ Idle
//!                          │                            │ churn: reply received ─────▶ Idle
//!                          └── hold: any failure ──▶ Done ◀── hold: any failure ──────┘
//! ```
//!
//! At the end (`Phase::Drain`) nothing new is issued or connected, connects still in progress
//! are abandoned, and the worker ends once no open connection owes a reply; one that still owes
//! after `--timeout` is counted as timed out, exactly as it would have been during the run.
//!
//! Bytes: a connection's stream is the shared pattern from the connection's own start offset
//! (see `payload`), so "what to send next" is `tx` and "what the next reply byte must be" is
//! `rx`; both are counters, and the only buffers are the shared pattern and one scratch read
//! buffer per worker. Messages are `size`-byte slices of the stream: message `m` is answered
//! when `rx` reaches `(m + 1) * size`.
//!
//! Readiness: sockets are edge-triggered; every read and write runs until `WouldBlock`. While a
//! connection has nothing left to write it is registered for reading only, so the loop does not
//! wake for write space it has no use for; it asks for writability only when a write blocks.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::config::{Close, Mode};
use super::payload::PERIOD;
use super::schedule::{InFlight, RateSchedule, lane_share};
use super::stats::{ErrorClass, Stats};
use super::timer::Timer;
use super::{Ctx, Phase};

/// Largest read: 64 KiB takes a whole loopback segment train in one system call.
const SCRATCH: usize = 64 * 1024;
/// How often timeouts, phase changes and the progress counters are looked at when idle.
const TICK: Duration = super::config::CHECK_INTERVAL;
/// Connection attempts in progress at once per worker: enough to open 15,000 connections in a
/// few seconds without overflowing the server's accept backlog (a dropped SYN costs a second).
const MAX_CONNECTING: usize = 256;
/// The open-loop timer's token: beyond any connection slot.
const TIMER: Token = Token(usize::MAX);
/// Pause before reconnecting a slot whose connection failed, so a refusing server is not
/// hammered in a tight loop.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; waiting in the ready or retry queue.
    Idle,
    /// Non-blocking connect in progress since the given time.
    Connecting,
    /// Connected and exchanging messages.
    Open,
    /// hold only: lost, and not reopened.
    Done,
}

struct Conn {
    /// Index within the worker: the mio token and the open-loop schedule lane.
    slot: usize,
    stream: Option<TcpStream>,
    state: State,
    /// Pattern position of this connection's stream byte 0.
    start: u64,
    /// Stream bytes written, and received (and checked).
    tx: u64,
    rx: u64,
    /// Messages issued (to be written) and answered on the current stream.
    issued: u64,
    done: u64,
    /// Open loop: messages of this slot's schedule that are due, and how many were issued.
    due: u64,
    taken: u64,
    /// Registered for write readiness (only while a write is blocked).
    want_write: bool,
    inflight: InFlight,
    /// When the connect began (churn's latency origin; connect timeout).
    began: Instant,
    /// Last time this connection made progress (timeouts).
    last: Instant,
}

/// The worker's state, apart from the connections (so a connection and the rest can be borrowed
/// at the same time).
struct Env<'a> {
    ctx: &'a Ctx<'a>,
    poll: Poll,
    stats: Stats,
    measuring: bool,
    phase: Phase,
    /// Slots to connect as soon as a connecting place is free, and slots waiting out a back-off.
    ready: VecDeque<usize>,
    retry: VecDeque<(Instant, usize)>,
    connecting: usize,
    open: u64,
    /// All-time counters for the progress line.
    live_msgs: u64,
    live_bytes: u64,
    /// Stream start offsets are handed out from here, one per new connection.
    next_start: u64,
    sched: Option<RateSchedule>,
    /// bulk: bytes a connection may have written but not yet seen answered.
    bulk_window: u64,
}

/// Runs one worker until the main thread says stop (or its own hard deadline passes).
pub fn run(ctx: &Ctx) -> Stats {
    let mut stats = Stats::new();
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            stats
                .errors
                .count(ErrorClass::of(&e), || format!("epoll: {e}"));
            return stats;
        }
    };
    let cfg = ctx.cfg;
    let now = Instant::now();
    let n = ctx.nconns;
    let depth = match cfg.mode {
        Mode::Pingpong => cfg.depth,
        Mode::Bulk => 1,
        Mode::Hold | Mode::Churn => 1,
    };
    let mut conns: Vec<Conn> = (0..n)
        .map(|slot| Conn {
            slot,
            stream: None,
            state: State::Idle,
            start: 0,
            tx: 0,
            rx: 0,
            issued: 0,
            done: 0,
            due: 0,
            taken: 0,
            want_write: false,
            inflight: InFlight::new(depth, now),
            began: now,
            last: now,
        })
        .collect();
    let mut env = Env {
        ctx,
        poll,
        stats,
        measuring: false,
        phase: Phase::Warmup,
        ready: (0..n).collect(),
        retry: VecDeque::new(),
        connecting: 0,
        open: 0,
        live_msgs: 0,
        live_bytes: 0,
        next_start: (ctx.first_conn as u64).wrapping_mul(7_919),
        sched: cfg
            .rate
            .map(|r| RateSchedule::new(now, r * n as f64 / cfg.conns as f64)),
        bulk_window: cfg.depth.max(2) as u64 * cfg.size as u64,
    };
    let mut timer = match env
        .sched
        .is_some()
        .then(|| Timer::new(env.poll.registry(), TIMER))
    {
        Some(Err(e)) => {
            env.stats
                .errors
                .count(ErrorClass::Other, || format!("timerfd: {e}"));
            return env.stats;
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let mut scratch = vec![0u8; SCRATCH].into_boxed_slice();
    let mut events = Events::with_capacity(1024);
    let hard_end = now + ctx.hard_limit();
    let mut next_tick = now;
    let mut check_until = None;
    let mut drain_until = None;

    loop {
        let now = Instant::now();
        let phase = ctx.shared.phase();
        if phase == Phase::Stop || now >= hard_end {
            break;
        }
        if phase != env.phase {
            env.phase = phase;
            env.measuring = phase == Phase::Measure;
            match phase {
                Phase::Check => {
                    env.begin_check(&mut conns, now);
                    check_until = Some(now + cfg.timeout);
                }
                Phase::Drain => {
                    env.begin_drain(&mut conns);
                    // One tick more than --timeout: the housekeeping that counts a connection
                    // silent for --timeout runs once a tick.
                    drain_until = Some(now + cfg.timeout + TICK);
                }
                Phase::Warmup | Phase::Measure | Phase::Stop => {}
            }
        }
        if now >= next_tick {
            env.housekeeping(&mut conns, now);
            next_tick = now + TICK;
        }
        if phase == Phase::Drain {
            if !conns.iter().any(owes) {
                break;
            }
            if drain_until.is_some_and(|t| now >= t) {
                env.end_drain(&mut conns);
                break;
            }
        }
        if cfg.mode == Mode::Hold {
            let settled = env.ready.is_empty() && env.retry.is_empty() && env.connecting == 0;
            ctx.progress()
                .connected
                .store(u64::from(settled), std::sync::atomic::Ordering::Relaxed);
            if phase == Phase::Check
                && (check_until.is_some_and(|t| now >= t) || env.check_finished(&conns))
            {
                break;
            }
        }
        env.start_connects(&mut conns, now);
        env.issue_scheduled(&mut conns, now);
        env.publish();

        let mut wake = next_tick;
        // Not while draining: nothing more is issued, so the next due time stays in the past
        // and would wake the loop at once, over and over.
        if let (Some(s), Some(t)) = (&env.sched, &mut timer)
            && phase != Phase::Drain
            && let Err(e) = t.arm(s.peek().1, now)
        {
            env.stats
                .errors
                .count(ErrorClass::Other, || format!("timerfd: {e}"));
            break;
        }
        if let Some(&(at, _)) = env.retry.front() {
            wake = wake.min(at);
        }
        if let Some(at) = drain_until {
            wake = wake.min(at);
        }
        if !env.ready.is_empty() && env.connecting < MAX_CONNECTING && env.may_connect() {
            wake = now;
        }
        let timeout = wake.saturating_duration_since(now);
        if !super::wait_events(&mut env.poll, &mut events, timeout, &mut env.stats) {
            break;
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = &mut timer {
                    t.clear();
                }
                continue;
            }
            let i = ev.token().0;
            // A token that names no slot would be a spurious event: ignore it.
            let Some(c) = conns.get_mut(i) else { continue };
            env.on_event(c, i, &mut scratch, ev.is_writable() || ev.is_write_closed());
        }
    }
    env.publish();
    // Dropping the streams closes them; the server sees ordinary closes (and after a drain,
    // closes of connections that owe nothing).
    drop(conns);
    env.stats
}

impl Env<'_> {
    fn may_connect(&self) -> bool {
        match self.ctx.cfg.mode {
            // hold opens its connections once, before the hold starts.
            Mode::Hold => self.phase == Phase::Warmup,
            _ => self.phase != Phase::Drain,
        }
    }

    /// The run is over: stop connecting (a connect in progress owes nothing, so it is simply
    /// abandoned); what is already issued is still written and must still be answered.
    fn begin_drain(&mut self, conns: &mut [Conn]) {
        self.ready.clear();
        self.retry.clear();
        for c in conns.iter_mut() {
            if c.state == State::Connecting {
                self.close(c);
            }
        }
    }

    /// The drain's time is up: whatever is still owed counts as timed out.
    fn end_drain(&mut self, conns: &mut [Conn]) {
        for (i, c) in conns.iter_mut().enumerate() {
            if owes(c) {
                let owed = c.tx - c.rx;
                let e =
                    format!("no reply within --timeout at the end of the run ({owed} bytes owed)");
                self.fail(c, i, ErrorClass::Timeout, &e);
            }
        }
    }

    /// Starts connecting slots from the ready queue, and from the retry queue once their
    /// back-off has passed, up to `MAX_CONNECTING` at a time.
    fn start_connects(&mut self, conns: &mut [Conn], now: Instant) {
        while let Some(&(at, i)) = self.retry.front() {
            if at > now {
                break;
            }
            self.retry.pop_front();
            self.ready.push_back(i);
        }
        if !self.may_connect() {
            return;
        }
        while self.connecting < MAX_CONNECTING {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            self.connect(&mut conns[i], i, now);
        }
    }

    fn connect(&mut self, c: &mut Conn, i: usize, now: Instant) {
        let cfg = self.ctx.cfg;
        let source = cfg.source_of(self.ctx.first_conn + i);
        c.began = now;
        c.last = now;
        match open_stream(cfg.addr, source, cfg.mode != Mode::Churn) {
            Ok(mut s) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = self.poll.registry().register(&mut s, Token(i), interest) {
                    self.fail(c, i, ErrorClass::of(&e), &e);
                    return;
                }
                c.stream = Some(s);
                c.state = State::Connecting;
                c.want_write = true;
                self.connecting += 1;
            }
            Err(e) => {
                let class = ErrorClass::of(&e);
                self.fail(c, i, class, &e);
            }
        }
    }

    /// Counts an error on slot `i`, closes its stream and decides what becomes of it.
    fn fail(&mut self, c: &mut Conn, i: usize, class: ErrorClass, e: &dyn std::fmt::Display) {
        let addr = self.ctx.cfg.addr;
        let id = self.ctx.first_conn + i;
        let phase = c.state;
        self.stats.errors.count(class, || {
            format!("connection {id} to {addr} ({phase:?}): {e}")
        });
        self.close(c);
        if self.ctx.cfg.mode == Mode::Hold {
            c.state = State::Done;
        } else {
            self.retry.push_back((Instant::now() + RETRY_BACKOFF, i));
        }
    }

    /// Closes the slot's stream (if any) and resets its counters; the slot ends up `Idle`.
    fn close(&mut self, c: &mut Conn) {
        match c.state {
            State::Connecting => self.connecting -= 1,
            State::Open => self.open -= 1,
            State::Idle | State::Done => {}
        }
        // Dropping closes the descriptor, which also removes it from the epoll set.
        c.stream = None;
        c.state = State::Idle;
        c.tx = 0;
        c.rx = 0;
        c.issued = 0;
        c.done = 0;
        c.want_write = false;
        c.inflight.clear();
    }

    fn on_event(&mut self, c: &mut Conn, i: usize, scratch: &mut [u8], writable: bool) {
        match c.state {
            // A late event for a socket already closed: nothing to do.
            State::Idle | State::Done => {}
            State::Connecting => self.on_connecting(c, i, scratch),
            State::Open => self.service(c, i, scratch, writable),
        }
    }

    /// Reads what has arrived, then writes whatever that (or write space) allows.
    fn service(&mut self, c: &mut Conn, i: usize, scratch: &mut [u8], writable: bool) {
        // Read first: replies free room in the window, which is what we may write into.
        if !self.read(c, i, scratch) {
            return;
        }
        if writable || self.ctx.cfg.mode == Mode::Bulk || c.tx < c.issued * self.ctx.cfg.size as u64
        {
            self.flush(c, i);
        }
    }

    /// A connecting socket became ready: it either connected or failed.
    fn on_connecting(&mut self, c: &mut Conn, i: usize, scratch: &mut [u8]) {
        let Some(s) = &c.stream else { return };
        let result = match s.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match s.peer_addr() {
                Ok(_) => Ok(()),
                // Still in progress: a spurious wake-up.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            self.fail(c, i, ErrorClass::of(&e), &e);
            return;
        }
        self.connecting -= 1;
        self.open += 1;
        c.state = State::Open;
        c.start = self.next_start;
        // Successive connections start far apart in the pattern.
        self.next_start = self.next_start.wrapping_add(104_729) % PERIOD as u64;
        let now = Instant::now();
        c.last = now;
        if self.measuring {
            self.stats.connects += 1;
        }
        match self.ctx.cfg.mode {
            Mode::Pingpong => self.refill(c, now),
            Mode::Bulk | Mode::Hold => {}
            Mode::Churn => {
                // Churn's latency is the whole cycle, from the start of the connect.
                c.inflight.push(c.began);
                c.issued = 1;
            }
        }
        if self.phase == Phase::Check {
            self.issue_check(c, now);
        }
        self.flush(c, i);
        // Data may have arrived with the handshake's wake-up, or the reply to what was just
        // written (a descheduled generator finds it already there): it completes messages, whose
        // successors must be written now, since no event will come for them.
        if c.state == State::Open {
            self.service(c, i, scratch, false);
        }
    }

    /// Issues messages up to the depth: at once in closed loop, when due in open loop.
    fn refill(&mut self, c: &mut Conn, now: Instant) {
        if self.phase == Phase::Drain {
            return;
        }
        let n = self.ctx.nconns as u64;
        while !c.inflight.is_full() {
            let origin = match &self.sched {
                None => now,
                Some(s) if c.taken < c.due => {
                    // Slot j's m-th scheduled message is the worker's message j + m * n.
                    let j = c.slot as u64;
                    let t = s.due_time(j + c.taken * n);
                    c.taken += 1;
                    t
                }
                Some(_) => break,
            };
            if c.inflight.is_empty() {
                c.last = now;
            }
            c.inflight.push(origin);
            c.issued += 1;
        }
    }

    /// Hands out the open-loop messages due by `now`, round-robin over the slots.
    fn issue_scheduled(&mut self, conns: &mut [Conn], now: Instant) {
        if self.phase == Phase::Drain {
            return;
        }
        let Some(due) = self.sched.as_mut().map(|s| s.take_due(now)) else {
            return;
        };
        let n = conns.len() as u64;
        if due.end - due.start < n {
            for k in due {
                let i = (k % n) as usize;
                conns[i].due += 1;
                self.issue_due(&mut conns[i], i, now);
            }
        } else {
            // At least a message for every slot: set each slot's count at once, so that a
            // generator far behind its schedule spends a turn per slot, not per message.
            for (i, c) in conns.iter_mut().enumerate() {
                c.due = lane_share(due.end, i as u64, n);
                self.issue_due(c, i, now);
            }
        }
    }

    fn issue_due(&mut self, c: &mut Conn, i: usize, now: Instant) {
        if c.state == State::Open && !c.inflight.is_full() {
            self.refill(c, now);
            self.flush(c, i);
        }
    }

    /// Writes what has been issued (bulk: as much as the socket takes) until `WouldBlock`.
    fn flush(&mut self, c: &mut Conn, i: usize) {
        let bulk = self.ctx.cfg.mode == Mode::Bulk;
        let goal = if bulk && self.phase == Phase::Drain {
            // Draining: what is written is owed; nothing more is sent.
            c.tx
        } else if bulk {
            // Stream, but never more than the window ahead of the replies: a flooded server
            // receive queue makes the kernel collapse and prune it on the *sender's* CPU, which
            // nearly doubled the generator's cost per byte here without adding throughput.
            c.rx + self.bulk_window
        } else {
            c.issued * self.ctx.cfg.size as u64
        };
        while c.tx < goal {
            let Some(s) = &mut c.stream else { return };
            let want = (goal - c.tx).min(SCRATCH as u64) as usize;
            let win = self.ctx.pattern.send_window(c.start + c.tx, want);
            match s.write(win) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return self.fail(c, i, ErrorClass::Other, &e);
                }
                Ok(n) => c.tx += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !c.want_write {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if let Err(e) = self.poll.registry().reregister(s, Token(i), interest) {
                            return self.fail(c, i, ErrorClass::Other, &e);
                        }
                        c.want_write = true;
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(c, i, ErrorClass::of(&e), &e),
            }
        }
        // Everything written: stop waking up for write space. A churn
        // connection lives for one message: changing its interest would cost more than it saves.
        if c.want_write
            && self.ctx.cfg.mode != Mode::Churn
            && let Some(s) = &mut c.stream
        {
            if let Err(e) = self
                .poll
                .registry()
                .reregister(s, Token(i), Interest::READABLE)
            {
                return self.fail(c, i, ErrorClass::Other, &e);
            }
            c.want_write = false;
        }
    }

    /// Reads until `WouldBlock`, checking every byte and completing messages. Returns whether
    /// the connection is still open.
    fn read(&mut self, c: &mut Conn, i: usize, scratch: &mut [u8]) -> bool {
        let cfg = self.ctx.cfg;
        let size = cfg.size as u64;
        loop {
            let Some(s) = &mut c.stream else { return false };
            match s.read(scratch) {
                Ok(0) => {
                    // The server closed. Fine only for a churn connection already answered
                    // (which we close ourselves first, so in practice never).
                    let owed = c.tx - c.rx;
                    let e = format!("server closed the connection with {owed} bytes unanswered");
                    self.fail(c, i, ErrorClass::Closed, &e);
                    return false;
                }
                Ok(n) => {
                    let got = &scratch[..n];
                    if c.rx + n as u64 > c.tx {
                        // More bytes back than were sent: the stream can no longer be matched.
                        let extra = c.rx + n as u64 - c.tx;
                        let id = self.ctx.first_conn + i;
                        self.stats.wrong_reply(extra, || {
                            format!(
                                "connection {id}: {extra} bytes back more than were sent \
                                 (after stream byte {})",
                                c.tx
                            )
                        });
                        self.fail(c, i, ErrorClass::Other, &"server sent unsolicited bytes");
                        return false;
                    }
                    if let Err(m) = self.ctx.pattern.check(c.start + c.rx, got, c.rx) {
                        let id = self.ctx.first_conn + i;
                        self.stats.mismatch(m, || format!("connection {id}"));
                    }
                    c.rx += n as u64;
                    let now = Instant::now();
                    c.last = now;
                    self.live_bytes += n as u64;
                    if self.measuring {
                        self.stats.bytes += n as u64;
                    }
                    let answered = c.rx / size;
                    let newly = answered - c.done;
                    c.done = answered;
                    self.live_msgs += newly;
                    if cfg.mode == Mode::Bulk {
                        if self.measuring {
                            self.stats.msgs += newly;
                        }
                        continue;
                    }
                    for _ in 0..newly {
                        let origin = c.inflight.pop().unwrap_or(now);
                        if self.measuring {
                            self.stats.msgs += 1;
                            self.stats.latency(now.saturating_duration_since(origin));
                        }
                    }
                    if newly > 0 {
                        match cfg.mode {
                            Mode::Pingpong => self.refill(c, now),
                            Mode::Churn => {
                                // Answered: close and go again. With FIN ours goes first, so
                                // TIME_WAIT stays on our side (Linux reuses it for loopback
                                // connects); with RST there is none.
                                if cfg.close == Close::Rst
                                    && let Some(s) = &c.stream
                                {
                                    let _ =
                                        socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                                }
                                self.close(c);
                                self.ready.push_back(i);
                                return false;
                            }
                            Mode::Hold => {
                                self.stats.answered += newly;
                            }
                            Mode::Bulk => {}
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(c, i, ErrorClass::of(&e), &e);
                    return false;
                }
            }
        }
    }

    /// hold: the hold is over; send one message on every open connection.
    fn begin_check(&mut self, conns: &mut [Conn], now: Instant) {
        for (i, c) in conns.iter_mut().enumerate() {
            if c.state == State::Open {
                self.stats.held += 1;
                self.issue_check(c, now);
                self.flush(c, i);
            }
        }
    }

    fn issue_check(&mut self, c: &mut Conn, now: Instant) {
        if self.ctx.cfg.mode == Mode::Hold && c.issued == 0 {
            c.inflight.push(now);
            c.last = now;
            c.issued = 1;
        }
    }

    fn check_finished(&self, conns: &[Conn]) -> bool {
        conns
            .iter()
            .all(|c| c.state != State::Open || c.done >= c.issued)
    }

    /// Timeouts: a connect that takes too long, or a connection owing replies that has been
    /// silent for `--timeout`.
    fn housekeeping(&mut self, conns: &mut [Conn], now: Instant) {
        let cfg = self.ctx.cfg;
        for (i, c) in conns.iter_mut().enumerate() {
            let late = match c.state {
                State::Connecting => now.duration_since(c.began) > cfg.connect_timeout,
                State::Open => owes(c) && now.duration_since(c.last) > cfg.timeout,
                State::Idle | State::Done => false,
            };
            if late {
                let what = match c.state {
                    State::Connecting => "connect timed out",
                    _ => "no reply within --timeout",
                };
                self.fail(c, i, ErrorClass::Timeout, &what);
            }
        }
    }

    fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let p = self.ctx.progress();
        p.msgs.store(self.live_msgs, Relaxed);
        p.bytes.store(self.live_bytes, Relaxed);
        p.errors.store(self.stats.errors.total, Relaxed);
        p.mismatches.store(self.stats.mismatch_events, Relaxed);
        p.open.store(self.open, Relaxed);
    }
}

/// Whether an open connection still owes replies, or owes writes of issued messages (either
/// way it is waiting on the server).
fn owes(c: &Conn) -> bool {
    c.state == State::Open && (c.rx < c.tx || c.done < c.issued)
}

/// A non-blocking socket connecting to `addr`, bound first to `source` if given.
fn open_stream(addr: SocketAddr, source: Option<IpAddr>, nodelay: bool) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // Ping-pong latency must not wait for Nagle's timer. (Churn sends one message per
    // connection, which Nagle never delays, so it saves the system call.)
    if nodelay {
        sock.set_tcp_nodelay(true)?;
    }
    if let Some(ip) = source {
        if ip.is_ipv4() {
            // Let connect() pick the port for the full 4-tuple, so each source address has the
            // whole ephemeral range per server address instead of sharing it across servers.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `one` for the given length; the fd is ours.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

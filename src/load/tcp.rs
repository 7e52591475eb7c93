//! The TCP flow: the state machine of a worker's share of the connections, in every TCP mode
//! (the event loop around it is `worker`'s).
//!
//! Each connection slot goes through the states below; a slot whose connection failed goes back
//! to `Idle` and is reconnected after a short back-off (except in hold, where a lost connection
//! stays lost: the point is to count them).
//!
//! ```text
//!   Idle ──connect()──▶ Connecting ──handshake done──▶ Open ──error / EOF / timeout──▶ Idle
//!                          │                            │ churn: reply received ─────▶ Idle
//!                          └── hold: any failure ──▶ Done ◀── hold: any failure ──────┘
//!
//!   end of the run (any stage): Open ──shutdown(Write)──▶ Closing ──server's EOF──▶ Idle
//! ```
//!
//! The end is orderly, after a finished run and after Ctrl-C alike: each open connection is
//! half-closed (FIN), then read (and checked) until the server, having sent what it still owed,
//! closes its side; only then is the socket closed, with nothing unread. Closing it with unread
//! bytes instead would make the kernel send RST: the server would count a reset, and the
//! replies it sent would be thrown away unread.
//!
//! At the end (`Stage::Drain`) nothing new is issued or connected, connects still in progress
//! are abandoned, and the worker ends once no open connection owes a reply; one that still owes
//! after the timeout is counted as timed out, exactly as it would have been during the run.
//!
//! Bytes: a connection's stream is the shared pattern from the connection's own start offset
//! (see `payload`), so "what to send next" is `tx` and "what the next reply byte must be" is
//! `rx`; both are counters, and the only buffers are the shared pattern and one scratch read
//! buffer per worker. Messages are `size`-byte slices of the stream: message `m` is answered
//! when `rx` reaches `(m + 1) * size`.
//!
//! Readiness: sockets are edge-triggered. Every write runs until `WouldBlock`; a read runs until
//! `WouldBlock` or a short read, which has emptied the receive queue (what arrives later raises
//! an edge of its own), unless the event said a FIN, an error or urgent data is in (see
//! [`Readiness::read_past_short`]); an event that says nothing is readable is not read at all.
//! While a connection has nothing left to write it is registered for reading only, so the loop
//! does not wake for write space it has no use for; it asks for writability only when a write
//! blocks. A connect is complete when its event says writable with no error or hang-up (the
//! kernel reports nothing else for a socket still in `SYN_SENT`); only other events ask the
//! socket for its error and its peer.
//!
//! Churn with `--close rst` ends each connection with `connect(AF_UNSPEC)`, which resets it
//! exactly as a zero-linger close does (the kernel's close takes that very path) and leaves the
//! socket unconnected, still registered under the slot's token, for the slot's next connect: the
//! server sees the same SYN, message and RST on a new port each time, and the generator saves
//! the `socket`, `epoll_ctl`, `setsockopt(SO_LINGER)` and `close` of every connection, and the
//! kernel's allocation and teardown of the socket, which on loopback are most of a connection's
//! cost apart from the handshake.

mod exchange;
mod socket;

use std::collections::VecDeque;
use std::io::Read;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::config::Mode;
use super::schedule::InFlight;
use super::stats::ErrorClass;
use super::worker::{Env, Flow, Readiness};
use super::{Stage, WorkerCtx};
use crate::io_outcome::Outcome;
use socket::{dissolve, open_stream, redial};

/// Largest read: more than a connection has unanswered in ping-pong or in a bulk stream of
/// 64 KiB messages (bulk keeps at most twice its message size unanswered), so such a read comes
/// back short, and a short read is the last one (see the module doc). With 64 KiB, half of
/// bulk's reads were full and needed a `WouldBlock` read after them.
const SCRATCH: usize = 256 * 1024;
/// Largest write (the pattern gives at most `PERIOD` contiguous bytes anyway).
const WRITE_MAX: usize = 64 * 1024;
/// Connection attempts in progress at once per worker: enough to open 15,000 connections in a
/// few seconds without overflowing the server's accept backlog (a dropped SYN costs a second).
const MAX_CONNECTING: usize = 256;
/// Pause before reconnecting a slot whose connection failed, so a refusing server is not
/// hammered in a tight loop.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// No socket; waiting in the ready or retry queue.
    Idle,
    /// Non-blocking connect in progress since `began`.
    Connecting,
    /// Connected and exchanging messages.
    Open,
    /// hold only: lost, and not reopened.
    Done,
    /// The run is over: FIN sent, reading until the server's end of stream.
    Closing,
}

struct TcpConn {
    /// Index within the worker: the mio token and the open-loop schedule lane.
    slot: usize,
    stream: Option<TcpStream>,
    state: ConnState,
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
    /// Churn with `--close rst`: the last connection's socket, reset and unconnected but still
    /// registered under the slot's token, for the next connect to reuse (see the module doc).
    spare: Option<TcpStream>,
    inflight: InFlight,
    /// When the connect began (connect timeout), and the time churn's latency counts from: the
    /// connect's start, or with `--rate` the connection's due time.
    began: Instant,
    origin: Instant,
    /// In the ready or retry queue.
    queued: bool,
    /// Last time this connection made progress (timeouts).
    last: Instant,
}

/// The slots' queues and the flow's other state, apart from the connections (so a connection
/// and the rest can be borrowed at the same time).
struct Queues {
    /// Slots to connect as soon as a connecting place is free, and slots waiting out a back-off.
    ready: VecDeque<usize>,
    retry: VecDeque<(Instant, usize)>,
    connecting: usize,
    /// Stream start offsets are handed out from here, one per new connection.
    next_start: u64,
    /// bulk: bytes a connection may have written but not yet seen answered.
    bulk_window: u64,
    /// churn with `--rate`: a slot connects only when a connection of the schedule is due.
    paced: bool,
}

/// The TCP side of a worker (see the module doc).
pub(crate) struct TcpFlow {
    conns: Vec<TcpConn>,
    q: Queues,
    /// The one read buffer of the worker.
    scratch: Box<[u8]>,
}

impl TcpFlow {
    pub(crate) fn new(ctx: &WorkerCtx) -> TcpFlow {
        let cfg = ctx.cfg;
        let now = Instant::now();
        let n = ctx.nconns;
        let depth = match cfg.mode {
            Mode::Pingpong => cfg.depth,
            Mode::Bulk | Mode::Hold | Mode::Churn => 1,
        };
        let paced = cfg.mode == Mode::Churn && cfg.rate.is_some();
        let conns = (0..n)
            .map(|slot| TcpConn {
                slot,
                stream: None,
                state: ConnState::Idle,
                start: 0,
                tx: 0,
                rx: 0,
                issued: 0,
                done: 0,
                due: 0,
                taken: 0,
                want_write: false,
                spare: None,
                inflight: InFlight::new(depth, now),
                began: now,
                origin: now,
                queued: !paced,
                last: now,
            })
            .collect();
        TcpFlow {
            conns,
            q: Queues {
                ready: if paced {
                    VecDeque::new()
                } else {
                    (0..n).collect()
                },
                retry: VecDeque::new(),
                connecting: 0,
                next_start: (ctx.first_conn as u64).wrapping_mul(7_919),
                bulk_window: cfg.depth.max(2) as u64 * cfg.size as u64,
                paced,
            },
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
        }
    }
}

impl Flow for TcpFlow {
    fn open(&mut self, _env: &mut Env, _now: Instant) -> usize {
        // Connections are opened from the loop, MAX_CONNECTING at a time (`on_turn`).
        self.conns.len()
    }

    fn due_mut(&mut self, lane: usize) -> &mut u64 {
        &mut self.conns[lane].due
    }

    fn on_due(&mut self, env: &mut Env, lane: usize, now: Instant) {
        let c = &mut self.conns[lane];
        if self.q.paced {
            // Open-loop churn: an idle slot with a connection due connects next turn.
            if c.state == ConnState::Idle && !c.queued && c.taken < c.due {
                c.queued = true;
                self.q.ready.push_back(lane);
            }
            return;
        }
        if c.state == ConnState::Open && !c.inflight.is_full() {
            let mut cx = TcpOps {
                env,
                q: &mut self.q,
            };
            cx.refill(c, now);
            cx.flush(c, lane);
        }
    }

    fn on_stage(&mut self, env: &mut Env, now: Instant) {
        let mut cx = TcpOps {
            env,
            q: &mut self.q,
        };
        match cx.env.stage {
            Stage::Check => cx.begin_check(&mut self.conns, now),
            Stage::Drain => cx.begin_drain(&mut self.conns),
            Stage::Warmup | Stage::Measure | Stage::Stop => {}
        }
    }

    fn on_tick(&mut self, env: &mut Env, now: Instant) {
        TcpOps {
            env,
            q: &mut self.q,
        }
        .housekeeping(&mut self.conns, now);
    }

    fn on_turn(&mut self, env: &mut Env, now: Instant) {
        TcpOps {
            env,
            q: &mut self.q,
        }
        .start_connects(&mut self.conns, now);
    }

    fn on_event(&mut self, env: &mut Env, token: usize, ready: Readiness) {
        // A token that names no slot would be a spurious event: ignore it.
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let mut cx = TcpOps {
            env,
            q: &mut self.q,
        };
        match c.state {
            // A late event for a socket already closed: nothing to do.
            ConnState::Idle | ConnState::Done => {}
            ConnState::Connecting => cx.on_connecting(c, token, &mut self.scratch, ready),
            ConnState::Open => cx.service(c, token, &mut self.scratch, ready),
            ConnState::Closing => cx.read_to_eof(c, token, &mut self.scratch),
        }
    }

    fn owes(&self) -> bool {
        self.conns.iter().any(owes)
    }

    fn end_drain(&mut self, env: &mut Env, _now: Instant) {
        TcpOps {
            env,
            q: &mut self.q,
        }
        .end_drain(&mut self.conns);
    }

    fn settled(&self) -> bool {
        self.q.ready.is_empty() && self.q.retry.is_empty() && self.q.connecting == 0
    }

    fn connecting(&self) -> u64 {
        self.q.connecting as u64
    }

    fn begin_close(&mut self, env: &mut Env) {
        let mut cx = TcpOps {
            env,
            q: &mut self.q,
        };
        cx.q.ready.clear();
        cx.q.retry.clear();
        for (i, c) in self.conns.iter_mut().enumerate() {
            match c.state {
                // A connect in progress owes nothing and is simply abandoned.
                ConnState::Connecting => cx.close(c),
                ConnState::Open => cx.half_close(c, i, &mut self.scratch),
                ConnState::Idle | ConnState::Done | ConnState::Closing => {}
            }
        }
    }

    fn closing(&self) -> bool {
        self.conns.iter().any(|c| c.state == ConnState::Closing)
    }

    fn wake_at(&self, env: &Env, now: Instant) -> Option<Instant> {
        let q = &self.q;
        if !q.ready.is_empty() && q.connecting < MAX_CONNECTING && may_connect(env) {
            return Some(now);
        }
        q.retry.front().map(|&(at, _)| at)
    }
}

/// Whether new connections may be started in the current stage.
fn may_connect(env: &Env) -> bool {
    match env.ctx.cfg.mode {
        // hold opens its connections once, before the hold starts.
        Mode::Hold => env.stage == Stage::Warmup,
        _ => env.stage != Stage::Drain,
    }
}

/// The worker's shared state and the flow's queues, borrowed together for one call.
struct TcpOps<'x, 'a> {
    env: &'x mut Env<'a>,
    q: &'x mut Queues,
}

impl TcpOps<'_, '_> {
    /// The run is over: stop connecting (a connect in progress owes nothing, so it is simply
    /// abandoned); what is already issued is still written and must still be answered.
    fn begin_drain(&mut self, conns: &mut [TcpConn]) {
        self.q.ready.clear();
        self.q.retry.clear();
        for c in conns.iter_mut() {
            if c.state == ConnState::Connecting {
                self.close(c);
            }
        }
    }

    /// The drain's time is up: whatever is still owed counts as timed out.
    fn end_drain(&mut self, conns: &mut [TcpConn]) {
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
    fn start_connects(&mut self, conns: &mut [TcpConn], now: Instant) {
        while let Some(&(at, i)) = self.q.retry.front() {
            if at > now {
                break;
            }
            self.q.retry.pop_front();
            self.q.ready.push_back(i);
        }
        if !may_connect(self.env) {
            return;
        }
        while self.q.connecting < MAX_CONNECTING {
            let Some(i) = self.q.ready.pop_front() else {
                break;
            };
            conns[i].queued = false;
            self.connect(&mut conns[i], i, now);
        }
    }

    fn connect(&mut self, c: &mut TcpConn, i: usize, now: Instant) {
        let cfg = self.env.ctx.cfg;
        let source = cfg.source_of(self.env.ctx.first_conn + i);
        c.began = now;
        c.origin = now;
        c.last = now;
        if self.q.paced
            && let Some(s) = &self.env.sched
        {
            // The connection counts from when it was due, however late it starts (coordinated
            // omission): slot j's m-th connection is the worker's j + m * n.
            let n = self.env.lanes as u64;
            c.origin = s.due_time(c.slot as u64 + c.taken * n);
            c.taken += 1;
        }
        let stream = match c.spare.take() {
            // Bound to the same source (the slot's) and registered already.
            Some(s) => redial(s, cfg.addr),
            None => open_stream(cfg.addr, source, cfg.mode != Mode::Churn).and_then(|mut s| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.env
                    .poll
                    .registry()
                    .register(&mut s, Token(i), interest)?;
                Ok(s)
            }),
        };
        match stream {
            Ok(s) => {
                c.stream = Some(s);
                c.state = ConnState::Connecting;
                c.want_write = true;
                self.q.connecting += 1;
            }
            Err(e) => {
                let class = ErrorClass::of(&e);
                self.fail(c, i, class, &e);
            }
        }
    }

    /// Churn with `--close rst`: resets the answered connection and keeps its socket for the
    /// slot's next connect (see the module doc); the slot ends up `Idle`, as `close` leaves it.
    fn reset_and_keep(&mut self, c: &mut TcpConn) {
        let s = c.stream.take();
        self.close(c);
        if let Some(s) = s {
            match dissolve(&s) {
                Ok(()) => c.spare = Some(s),
                // Then the ordinary way: a zero-linger close resets it too.
                Err(_) => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            }
        }
    }

    /// Counts an error on slot `i`, closes its stream and decides what becomes of it.
    fn fail(&mut self, c: &mut TcpConn, i: usize, class: ErrorClass, e: &dyn std::fmt::Display) {
        let addr = self.env.ctx.cfg.addr;
        let id = self.env.ctx.first_conn + i;
        let phase = c.state;
        self.env.counts.errors.count(class, || {
            format!("connection {id} to {addr} ({phase:?}): {e}")
        });
        self.close(c);
        if self.env.ctx.cfg.mode == Mode::Hold {
            c.state = ConnState::Done;
        } else {
            self.requeue(c, i, Some(Instant::now() + RETRY_BACKOFF));
        }
    }

    /// Queues an idle slot to connect again (after `at`, if given), unless it is paced and has no
    /// connection due: then `on_due` queues it when one is.
    fn requeue(&mut self, c: &mut TcpConn, i: usize, at: Option<Instant>) {
        if self.q.paced && c.taken >= c.due {
            return;
        }
        c.queued = true;
        match at {
            Some(at) => self.q.retry.push_back((at, i)),
            None => self.q.ready.push_back(i),
        }
    }

    /// Closes the slot's stream (if any) and resets its counters; the slot ends up `Idle`.
    fn close(&mut self, c: &mut TcpConn) {
        match c.state {
            ConnState::Connecting => self.q.connecting -= 1,
            ConnState::Open => self.env.open -= 1,
            // Already not counted as open (see `half_close`).
            ConnState::Idle | ConnState::Done | ConnState::Closing => {}
        }
        // Dropping closes the descriptor, which also removes it from the epoll set.
        c.stream = None;
        c.state = ConnState::Idle;
        c.tx = 0;
        c.rx = 0;
        c.issued = 0;
        c.done = 0;
        c.want_write = false;
        c.inflight.clear();
    }

    /// The end of an open connection: send FIN, then read what the server still sends.
    fn half_close(&mut self, c: &mut TcpConn, i: usize, scratch: &mut [u8]) {
        let Some(s) = &c.stream else { return };
        if s.shutdown(std::net::Shutdown::Write).is_err() {
            // Not connected any more (the server reset it just now): nothing left to be polite to.
            self.close(c);
            return;
        }
        self.env.open -= 1;
        c.state = ConnState::Closing;
        // The server's reply (or even its FIN) may already be here, and an edge-triggered socket
        // would not announce it again.
        self.read_to_eof(c, i, scratch);
    }

    /// Closing: reads until `WouldBlock` (wait for the next event) or the server's end of stream
    /// (close). What arrives is still checked, since a wrong byte is wrong at any time, but no
    /// longer counted as throughput: the window is closed.
    fn read_to_eof(&mut self, c: &mut TcpConn, i: usize, scratch: &mut [u8]) {
        loop {
            let Some(s) = &mut c.stream else { return };
            match Outcome::of_read(s.read(scratch)) {
                Outcome::Moved(n) => {
                    let got = &scratch[..n];
                    let id = self.env.ctx.first_conn + i;
                    if c.rx + n as u64 > c.tx {
                        let extra = c.rx + n as u64 - c.tx;
                        self.env.counts.wrong_reply(extra, || {
                            format!(
                                "connection {id}: {extra} bytes back more than were sent                                  (after stream byte {}), after the end of the run",
                                c.tx
                            )
                        });
                        // The stream cannot be matched any more; closing it with bytes unread
                        // resets it, which such a server has earned.
                        self.close(c);
                        return;
                    }
                    if let Err(m) = self.env.ctx.pattern.check(c.start + c.rx, got, c.rx) {
                        self.env.counts.mismatch(m, || format!("connection {id}"));
                    }
                    c.rx += n as u64;
                }
                Outcome::WouldBlock => return,
                Outcome::Interrupted => {}
                Outcome::PeerClosed => {
                    self.close(c);
                    return;
                }
                Outcome::PeerReset(e) | Outcome::Local(e) => {
                    // The server reset a connection it had been asked to close in order.
                    let addr = self.env.ctx.cfg.addr;
                    let id = self.env.ctx.first_conn + i;
                    self.env.counts.errors.count(ErrorClass::of(&e), || {
                        format!("connection {id} to {addr} (Closing): {e}")
                    });
                    self.close(c);
                    return;
                }
            }
        }
    }
}

/// Whether an open connection still owes replies, or owes writes of issued messages (either
/// way it is waiting on the server).
fn owes(c: &TcpConn) -> bool {
    c.state == ConnState::Open && (c.rx < c.tx || c.done < c.issued)
}

#[cfg(test)]
mod tests {
    //! The flow driven by hand, with no socket: connections are put in the state a test needs and
    //! fed reply bytes as a socket would deliver them.

    use super::*;
    use crate::Transform;
    use crate::load::payload::Pattern;
    use crate::load::{LoadConfig, Shared};
    use std::io::{self, Write};

    fn cfg(mode: Mode, depth: usize) -> LoadConfig {
        LoadConfig {
            mode,
            depth,
            conns: 2,
            ..LoadConfig::default()
        }
    }

    /// What the server should send back for stream bytes `from..to` of a connection starting at
    /// pattern position 0.
    fn reply(p: &Pattern, from: u64, to: u64) -> Vec<u8> {
        let mut v = p.send_window(from, (to - from) as usize).to_vec();
        Transform::Upper.apply(&mut v);
        v
    }

    /// Runs `f` on a flow over `cfg`'s two connections, in the measurement window, with
    /// connection 0 open at pattern position 0.
    fn with_flow(cfg: &LoadConfig, f: impl FnOnce(&mut [TcpConn], &mut TcpOps, &Pattern)) {
        let pattern = Pattern::new(1, Transform::Upper);
        let shared = Shared::new(1);
        let ctx = WorkerCtx {
            cfg,
            pattern: &pattern,
            shared: &shared,
            thread: 0,
            first_conn: 0,
            nconns: cfg.conns,
        };
        let mut env = Env::new(&ctx, mio::Poll::new().expect("epoll"));
        env.stage = Stage::Measure;
        env.lanes = cfg.conns;
        env.open = 1;
        let mut flow = TcpFlow::new(&ctx);
        flow.q.ready.clear();
        flow.conns[0].state = ConnState::Open;
        let mut cx = TcpOps {
            env: &mut env,
            q: &mut flow.q,
        };
        f(&mut flow.conns, &mut cx, &pattern);
    }

    /// Waits (bounded) for an event on token 0 that satisfies `want`.
    fn wait_for(poll: &mut mio::Poll, want: impl Fn(&mio::event::Event) -> bool) {
        let mut events = mio::Events::with_capacity(8);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            if events.iter().any(|e| e.token() == Token(0) && want(e)) {
                return;
            }
        }
        panic!("no such event within 10 s");
    }

    #[test]
    fn a_dissolved_socket_resets_its_connection_and_connects_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut poll = mio::Poll::new().expect("epoll");
        let mut s = open_stream(addr, None, false).expect("connect");
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry()
            .register(&mut s, Token(0), interest)
            .expect("register");
        for round in 0..3 {
            // Connected: writable, with no error or hang-up (what `on_connecting` trusts), and
            // never an error left over from the reset before.
            wait_for(&mut poll, |e| e.is_writable());
            let left = s.take_error().expect("SO_ERROR");
            assert!(left.is_none(), "round {round}: {left:?}");
            let (mut peer, _) = listener.accept().expect("accept");
            peer.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"ping").expect("write");
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).expect("read");
            dissolve(&s).expect("dissolve");
            // The server sees a reset, as from a zero-linger close.
            let e = peer
                .read(&mut got)
                .expect_err("a reset, not data or an end");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "round {round}");
            // Still registered: the next connect's completion is reported on the same token.
            s = redial(s, addr).expect("connect again");
        }
    }

    #[test]
    fn pingpong_replies_in_any_chunking_complete_messages_and_issue_the_next() {
        with_flow(&cfg(Mode::Pingpong, 2), |conns, cx, p| {
            let c = &mut conns[0];
            cx.refill(c, Instant::now());
            assert_eq!(c.issued, 2);
            // Written (no socket here: as a flush would have).
            c.tx = 128;
            let r = reply(p, 0, 128);
            assert!(cx.on_bytes(c, 0, &r[..50]));
            assert_eq!((c.done, cx.env.counts.msgs), (0, 0));
            assert!(owes(c));
            assert!(cx.on_bytes(c, 0, &r[50..]));
            assert_eq!((c.done, cx.env.counts.msgs), (2, 2));
            assert_eq!(cx.env.iv.hist.len(), 2);
            assert_eq!(cx.env.counts.bytes, 128);
            // Both answered: two more issued at once (closed loop), still owed.
            assert_eq!(c.issued, 4);
            assert!(owes(c));
            assert_eq!(cx.env.counts.mismatch_events, 0);
        });
    }

    #[test]
    fn a_wrong_byte_is_a_mismatch_that_names_the_connection() {
        with_flow(&cfg(Mode::Pingpong, 1), |conns, cx, p| {
            let c = &mut conns[0];
            cx.refill(c, Instant::now());
            c.tx = 64;
            let mut r = reply(p, 0, 64);
            r[10] ^= 0x20;
            assert!(cx.on_bytes(c, 0, &r));
            assert_eq!(cx.env.counts.mismatch_events, 1);
            let first = cx.env.counts.first_mismatch.clone().unwrap_or_default();
            assert!(first.starts_with("connection 0: reply byte 10"), "{first}");
        });
    }

    #[test]
    fn more_bytes_back_than_were_sent_end_the_connection() {
        with_flow(&cfg(Mode::Pingpong, 1), |conns, cx, p| {
            let c = &mut conns[0];
            cx.refill(c, Instant::now());
            c.tx = 64;
            assert!(!cx.on_bytes(c, 0, &reply(p, 0, 65)));
            assert_eq!(cx.env.counts.mismatch_events, 1);
            assert_eq!(cx.env.counts.errors.other, 1);
            // Closed and waiting out its back-off before it is reconnected.
            assert_eq!(c.state, ConnState::Idle);
            assert_eq!(cx.q.retry.len(), 1);
            assert_eq!(cx.env.open, 0);
        });
    }

    #[test]
    fn churn_closes_an_answered_connection_and_queues_the_slot_again() {
        with_flow(&cfg(Mode::Churn, 1), |conns, cx, p| {
            let c = &mut conns[0];
            c.inflight.push(Instant::now());
            c.issued = 1;
            c.tx = 64;
            assert!(!cx.on_bytes(c, 0, &reply(p, 0, 64)));
            assert_eq!(cx.env.counts.msgs, 1);
            assert_eq!(c.state, ConnState::Idle);
            assert_eq!(cx.q.ready.front(), Some(&0));
            assert_eq!(cx.env.counts.errors.total, 0);
        });
    }

    #[test]
    fn hold_counts_the_check_answer_and_its_latency_but_no_throughput() {
        with_flow(&cfg(Mode::Hold, 1), |conns, cx, p| {
            cx.env.stage = Stage::Check;
            let c = &mut conns[0];
            cx.issue_check(c, Instant::now());
            c.tx = 64;
            assert!(cx.on_bytes(c, 0, &reply(p, 0, 64)));
            assert_eq!(cx.env.counts.answered, 1);
            assert_eq!(cx.env.iv.hist.len(), 1);
            assert_eq!(cx.env.counts.msgs, 0);
            assert!(!owes(c));
        });
    }

    #[test]
    fn silence_past_the_timeouts_and_what_is_owed_at_the_end_count_as_timeouts() {
        with_flow(&cfg(Mode::Pingpong, 1), |conns, cx, _| {
            let later = Instant::now() + Duration::from_secs(60);
            // Connection 1 is stuck connecting; connection 0 owes a reply.
            conns[1].state = ConnState::Connecting;
            cx.q.connecting = 1;
            cx.refill(&mut conns[0], Instant::now());
            conns[0].tx = 64;
            assert!(conns.iter().any(owes));
            cx.end_drain(conns);
            assert_eq!(cx.env.counts.errors.timeout, 1);
            let first = cx.env.counts.errors.first.clone().unwrap_or_default();
            assert!(
                first.contains("at the end of the run (64 bytes owed)"),
                "{first}"
            );
            cx.housekeeping(conns, later);
            assert_eq!(cx.env.counts.errors.timeout, 2);
            assert_eq!(cx.q.connecting, 0);
            assert!(!conns.iter().any(owes));
        });
    }
}

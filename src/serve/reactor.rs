//! The reactor: one thread, one `mio::Poll`, one hand-written loop over already-bound sockets.
//!
//! It owns the poll, the listeners, the UDP endpoints, the connection slab, the run queue, the
//! idle wheel and the counters. It takes sockets that are already bound, so the binary, the tests,
//! a future supervisor of `SO_REUSEPORT` workers, or systemd socket activation can all hand it
//! theirs. Byte handling lives in [`super::conn`] and [`super::udp`]; this module only decides
//! who runs when.
//!
//! One turn of the loop:
//! 1. `poll` (retried on `Interrupted`), with a timeout of zero while work is queued, else the
//!    nearest deadline (idle wheel, accept back-off, stats, drain);
//! 2. dispatch each event: connections and UDP sockets record readiness and run at once,
//!    listeners and signals only set flags;
//! 3. timers: idle connections, end of an accept back-off, the stats line, the drain deadline;
//! 4. accept, if owed and not backing off;
//! 5. one pass over the run queue: each connection that spent its budget gets one more turn.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::conn::{Conn, Ctx, Progress};
use super::stats::Stats;
use super::timer::IdleWheel;
use super::udp::{Batch, UdpEndpoint, UdpPolicy, UdpProgress};
use crate::Transform;

// The token map. Fixed sources sit below `CONN_BASE`; a connection's token is its slab key plus
// `CONN_BASE`, so dispatch is a subtraction and a slab lookup.
//
//   0                SIGNALS   SIGTERM SIGINT SIGHUP SIGQUIT SIGUSR1 (signal-hook-mio)
//   1                WAKER     ShutdownHandle
//   16 .. 16+240     listeners, in the order given
//   256 .. 256+768   UDP sockets, in the order given
//   1024 ..          connections (slab key + 1024)
const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
const LISTENER_BASE: usize = 16;
const UDP_BASE: usize = 256;
const CONN_BASE: usize = 1024;
/// Most listeners (and most UDP sockets) one reactor takes.
pub const MAX_LISTENERS: usize = UDP_BASE - LISTENER_BASE;

/// The reactor-wide read buffer. Chosen by measurement on this machine (64 KiB bulk over one
/// connection, `upecho load --mode bulk`, server on CPU 0): 16 KiB gave 1.73-1.89 GB/s at
/// 26-28 us of server CPU per 64 KiB, against 1.56-1.61 GB/s at 37 us for 8 KiB, 1.34 GB/s at
/// 29 us for 32 KiB and 1.17-1.25 GB/s at 28 us for 64 KiB: smaller writes reach the peer
/// sooner, and the buffer stays in L1 while it is transformed and written back.
pub const READ_CHUNK: usize = 16 * 1024;
/// Bytes one connection may read per turn before the others get theirs.
pub const FAIR_BUDGET: usize = 8 * READ_CHUNK;
/// Connections accepted per turn before the others get theirs (a connect flood must not starve
/// established clients).
const ACCEPT_BUDGET: usize = 256;
/// How long accepting pauses when the process is out of descriptors (or the kernel out of
/// memory) and no connection has closed meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Default ceiling on output owed by all connections together. A reader that does not read costs
/// the server at most `--max-pending` (1 MiB), but 20,000 of them would cost 20 GB; 256 MiB keeps
/// the worst case well inside a small machine, and a server that is merely busy never comes near
/// it (replies usually leave in the turn they are made).
pub const DEFAULT_MAX_PENDING_TOTAL: usize = 256 << 20;
/// Default replies per second per UDP source, sustained (after a burst of ten seconds' worth, see
/// [`super::limit`]). An echo loop between two servers on one machine runs at the speed of the
/// machine (56,000 bounces a second each on a 2-core VM), so it outruns this budget and dies in
/// about two seconds; one ping-pong client socket on loopback does about 20,000 round trips a
/// second with `upecho load`, and the benchmark's 50 sockets about 6,000 each. Only a long run
/// faster than this from one socket is limited, and a benchmark can lift the limit.
pub const DEFAULT_UDP_SOURCE_RATE: u32 = 10_000;

/// How the reactor behaves; every field has a command-line flag in [`super::ServeArgs`].
#[derive(Debug, Clone)]
pub struct Config {
    pub transform: Transform,
    pub max_connections: usize,
    pub max_pending: usize,
    /// Output owed by all connections together before debtors stop being read.
    pub max_pending_total: usize,
    pub idle_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub stats_interval: Option<Duration>,
    /// Refuse to answer UDP from privileged ports and broadcast/multicast/unspecified sources.
    pub udp_guard: bool,
    /// Replies per second one UDP source (address and port) may get; `None` for no limit.
    pub udp_source_rate: Option<u32>,
    /// Handle SIGTERM, SIGINT, SIGHUP and SIGQUIT (graceful stop, then a second one forces) and
    /// SIGUSR1 (log the counters). Off for embedders that use [`ShutdownHandle`] instead.
    pub handle_signals: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transform: Transform::Upper,
            max_connections: 1024,
            max_pending: 1 << 20,
            max_pending_total: DEFAULT_MAX_PENDING_TOTAL,
            idle_timeout: None,
            drain_timeout: Duration::from_secs(5),
            stats_interval: None,
            udp_guard: true,
            udp_source_rate: Some(DEFAULT_UDP_SOURCE_RATE),
            handle_signals: false,
        }
    }
}

/// Asks a running reactor, from any thread, to stop gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A failed wake can only mean the reactor is already gone.
        let _ = self.waker.wake();
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    pub stats: Stats,
    /// A second signal cut the drain short.
    pub forced: bool,
    /// The drain timeout closed connections that still owed output.
    pub drain_timed_out: bool,
}

/// What the idle timeout needs to know of a connection, kept beside the slab (indexed by slab
/// key) and only when a timeout is set, so that without one a connection costs 16 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct IdleMeta {
    /// Tells this connection apart from a later one at the same slab key (idle wheel entries).
    id: u32,
    /// Idle-wheel tick of the last byte moved.
    last_active: u32,
}

/// Why a connection is being closed, for the counters and the log.
enum Close {
    Done,
    Failed(io::Error),
    Idle,
    DrainTimeout,
}

pub struct Server {
    poll: Poll,
    config: Config,
    listeners: Vec<TcpListener>,
    udp: Vec<UdpEndpoint>,
    clients: Slab<Conn<TcpStream>>,
    /// Per slab key, when an idle timeout is set (empty otherwise).
    idle: Vec<IdleMeta>,
    run_queue: VecDeque<usize>,
    /// Output owed by all connections together (the sum of [`Conn::owed`]).
    owed_total: usize,
    /// `owed_total` has reached the ceiling and not yet fallen back below its low-water mark.
    at_ceiling: bool,
    udp_owed: bool,
    udp_policy: UdpPolicy,
    scratch: Box<[u8]>,
    datagrams: Batch,
    wheel: Option<IdleWheel>,
    now_tick: u32,
    expired: Vec<usize>,
    stats: Stats,
    next_id: u32,
    accept_owed: bool,
    accept_paused_until: Option<Instant>,
    /// Out of descriptors since the last successful accept (log once per episode).
    starved: bool,
    refused_logged_at: Option<Instant>,
    refused_since_log: u64,
    next_stats: Option<Instant>,
    signals: Option<Signals>,
    shutdown_flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    drain_deadline: Option<Instant>,
    forced: bool,
    drain_timed_out: bool,
}

impl Server {
    /// Registers the already-bound, non-blocking sockets with a new poll.
    pub fn new(
        config: Config,
        listeners: Vec<TcpListener>,
        udp: Vec<UdpSocket>,
    ) -> io::Result<Server> {
        if listeners.len() > MAX_LISTENERS || udp.len() > CONN_BASE - UDP_BASE {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "too many sockets for one reactor",
            ));
        }
        let poll = Poll::new()?;
        let registry = poll.registry();
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            registry.register(l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        let mut endpoints = Vec::with_capacity(udp.len());
        for (i, mut s) in udp.into_iter().enumerate() {
            registry.register(
                &mut s,
                Token(UDP_BASE + i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            endpoints.push(UdpEndpoint::new(s));
        }
        let signals = if config.handle_signals {
            let mut s = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1])?;
            registry.register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let waker = Arc::new(Waker::new(registry, WAKER)?);
        let now = Instant::now();
        let wheel = config.idle_timeout.map(|t| IdleWheel::new(t, now));
        Ok(Server {
            poll,
            listeners,
            udp: endpoints,
            // The slab's storage is reserved, not touched: pages become resident only as
            // connections arrive, and the slab never moves while growing.
            clients: Slab::with_capacity(config.max_connections.min(1 << 20)),
            idle: Vec::new(),
            run_queue: VecDeque::new(),
            owed_total: 0,
            at_ceiling: false,
            udp_owed: true,
            udp_policy: UdpPolicy::new(config.udp_guard, config.udp_source_rate),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            datagrams: Batch::new(),
            wheel,
            now_tick: 0,
            expired: Vec::new(),
            stats: Stats::default(),
            next_id: 0,
            accept_owed: true,
            accept_paused_until: None,
            starved: false,
            refused_logged_at: None,
            refused_since_log: 0,
            next_stats: config.stats_interval.map(|i| now + i),
            signals,
            shutdown_flag: Arc::new(AtomicBool::new(false)),
            waker,
            drain_deadline: None,
            forced: false,
            drain_timed_out: false,
            config,
        })
    }

    /// A handle that stops this reactor gracefully from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: self.shutdown_flag.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Serves until a shutdown (signal or handle) has drained, or is forced.
    pub fn run(mut self) -> io::Result<Summary> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            if let Some(w) = &self.wheel {
                self.now_tick = w.tick_at(now);
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(now),
                    WAKER => {
                        if self.shutdown_flag.load(Ordering::SeqCst) {
                            self.begin_shutdown(now);
                        }
                    }
                    Token(t) if t >= CONN_BASE => {
                        let key = t - CONN_BASE;
                        // A token with no live connection is a stale event: ignore it.
                        if let Some(c) = self.clients.get_mut(key) {
                            if event.is_priority() {
                                c.on_urgent();
                            }
                            let failed = event.is_error();
                            c.on_ready(
                                event.is_readable() || failed,
                                event.is_writable() || event.is_write_closed() || failed,
                                event.is_read_closed(),
                            );
                            self.drive(key);
                        }
                    }
                    Token(t) if t >= UDP_BASE => {
                        if let Some(ep) = self.udp.get_mut(t - UDP_BASE) {
                            ep.on_ready(event.is_readable(), event.is_writable());
                            self.udp_owed = true;
                        }
                    }
                    Token(_) => self.accept_owed = true,
                }
            }
            self.on_timers(now);
            if self.accept_owed && self.accept_paused_until.is_none() {
                self.accept_all();
            }
            self.run_queued();
            if self.forced
                || self.drain_timed_out
                || (self.drain_deadline.is_some() && self.clients.is_empty())
            {
                break;
            }
        }
        if self.forced {
            warn!("forced exit with {} connection(s) open", self.clients.len());
        }
        Ok(Summary {
            stats: self.stats,
            forced: self.forced,
            drain_timed_out: self.drain_timed_out,
        })
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let ready_now = !self.run_queue.is_empty()
            || self.udp_owed
            || (self.accept_owed && self.accept_paused_until.is_none());
        if ready_now {
            return Some(Duration::ZERO);
        }
        [
            self.wheel.as_ref().and_then(IdleWheel::next_wake),
            self.accept_paused_until,
            self.next_stats,
            self.drain_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    /// One turn for connection `key`, and whatever its progress calls for.
    fn drive(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let mut ctx = Ctx {
            scratch: &mut self.scratch,
            transform: self.config.transform,
            max_pending: self.config.max_pending,
            owed_total: self.owed_total,
            max_pending_total: self.config.max_pending_total,
            budget: FAIR_BUDGET,
            draining: self.drain_deadline.is_some(),
        };
        let (progress, moved) = c.drive(&mut ctx);
        self.owed_total = ctx.owed_total;
        self.stats.bytes_in += moved.read as u64;
        self.stats.bytes_out += moved.written as u64;
        if moved.read + moved.written > 0 {
            if let Some(m) = self.idle.get_mut(key) {
                m.last_active = self.now_tick;
            }
        }
        match progress {
            Progress::Wait => {}
            Progress::Yield => {
                if !c.set_queued(true) {
                    self.run_queue.push_back(key);
                }
            }
            Progress::Done => self.close(key, Close::Done),
            Progress::Failed(e) => self.close(key, Close::Failed(e)),
        }
        self.check_ceiling();
    }

    fn close(&mut self, key: usize, why: Close) {
        let Some(c) = self.clients.try_remove(key) else {
            return;
        };
        self.stats.active -= 1;
        // A reset or a drain timeout can leave output owed: it is no longer anyone's.
        self.owed_total = self.owed_total.saturating_sub(c.owed());
        self.check_ceiling();
        // getpeername costs a syscall per close: only pay it when someone reads the line.
        let peer = log::log_enabled!(log::Level::Debug)
            .then(|| c.socket().peer_addr().ok())
            .flatten();
        match why {
            Close::Done => debug!("conn {key} {peer:?}: closed"),
            Close::Idle => {
                self.stats.idle_closed += 1;
                debug!("conn {key} {peer:?}: idle timeout");
            }
            Close::DrainTimeout => debug!("conn {key} {peer:?}: drain timeout"),
            Close::Failed(e) => {
                self.stats.reset += 1;
                match e.kind() {
                    ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted => {
                        debug!("conn {key} {peer:?}: reset by peer ({e})")
                    }
                    _ => debug!("conn {key} {peer:?}: error: {e}"),
                }
            }
        }
        // Dropping the stream closes the descriptor, which also removes it from the poll.
        drop(c);
        if self.accept_paused_until.is_some() && self.starved {
            // A descriptor is free again: no need to wait out the back-off.
            self.accept_paused_until = None;
            self.accept_owed = true;
        }
    }

    /// Notes the server crossing its pending-output ceiling (counted and logged once per
    /// episode) and falling back below three quarters of it, so a total hovering at the ceiling
    /// does not log at every read.
    fn check_ceiling(&mut self) {
        self.stats.pending_bytes = self.owed_total as u64;
        let max = self.config.max_pending_total;
        if !self.at_ceiling && self.owed_total >= max {
            self.at_ceiling = true;
            self.stats.ceiling_reached += 1;
            warn!(
                "pending output reached the ceiling ({} KiB, --max-pending-total): connections \
                 that owe output are not read until they drain",
                max / 1024
            );
        } else if self.at_ceiling && self.owed_total < max - max / 4 {
            self.at_ceiling = false;
            info!(
                "pending output below the ceiling again ({} KiB owed)",
                self.owed_total / 1024
            );
        }
    }

    fn accept_all(&mut self) {
        self.accept_owed = false;
        for i in 0..self.listeners.len() {
            if self.accept_from(i) {
                // Budget spent with connections possibly still queued: come back next turn.
                self.accept_owed = true;
            }
            if self.accept_paused_until.is_some() {
                return;
            }
        }
    }

    /// Accepts from listener `i` until `WouldBlock`; returns whether the budget ran out first.
    fn accept_from(&mut self, i: usize) -> bool {
        for _ in 0..ACCEPT_BUDGET {
            let (mut stream, peer) = match self.listeners[i].accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    if !self.starved {
                        self.starved = true;
                        warn!(
                            "accept: {e}; pausing accepts until a connection closes \
                             ({} open, limit {})",
                            self.clients.len(),
                            self.config.max_connections
                        );
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return false;
                }
                // The client gave up between SYN and accept: nothing to serve.
                Err(e) if is_aborted_handshake(&e) => continue,
                Err(e) => {
                    warn!("accept: {e}");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return false;
                }
            };
            if self.starved {
                self.starved = false;
                info!("accepting again ({} connections open)", self.clients.len());
            }
            if self.clients.len() >= self.config.max_connections {
                // Closing at once tells the client promptly instead of leaving it in the backlog.
                drop(stream);
                self.on_refused(peer);
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                debug!("set TCP_NODELAY for {peer}: {e}");
            }
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            let token = Token(CONN_BASE + key);
            // PRIORITY: urgent data is ordinary data here (SO_OOBINLINE, inherited from the
            // listener), but its arrival must be seen so the bytes after the mark are read too.
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
            ) {
                warn!("register connection from {peer}: {e}");
                continue;
            }
            entry.insert(Conn::new(stream));
            if let Some(w) = &mut self.wheel {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                if self.idle.len() <= key {
                    self.idle.resize(key + 1, IdleMeta::default());
                }
                self.idle[key] = IdleMeta {
                    id,
                    last_active: self.now_tick,
                };
                w.arm((key as u32, id), w.deadline(self.now_tick));
            }
            self.stats.accepted += 1;
            self.stats.active += 1;
            debug!("conn {key} {peer}: accepted");
        }
        true
    }

    fn on_refused(&mut self, peer: std::net::SocketAddr) {
        self.stats.refused += 1;
        self.refused_since_log += 1;
        trace!("refused {peer}: connection limit");
        let now = Instant::now();
        if self
            .refused_logged_at
            .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            warn!(
                "connection limit ({}) reached: refused {} connection(s)",
                self.config.max_connections, self.refused_since_log
            );
            self.refused_logged_at = Some(now);
            self.refused_since_log = 0;
        }
    }

    /// Gives every connection that spent its budget one more turn, and UDP sockets theirs.
    fn run_queued(&mut self) {
        for _ in 0..self.run_queue.len() {
            let Some(key) = self.run_queue.pop_front() else {
                break;
            };
            if let Some(c) = self.clients.get_mut(key) {
                c.set_queued(false);
                self.drive(key);
            }
        }
        if std::mem::take(&mut self.udp_owed) {
            for ep in &mut self.udp {
                let progress = ep.drive(
                    &mut self.datagrams,
                    self.config.transform,
                    &mut self.udp_policy,
                    &mut self.stats,
                );
                if progress == UdpProgress::Yield {
                    self.udp_owed = true;
                }
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if let Some(w) = &mut self.wheel {
            let (clients, idle, expired) = (&self.clients, &self.idle, &mut self.expired);
            let timeout = w.deadline(0);
            w.expire(self.now_tick, |(key, id), t| {
                let key = key as usize;
                let m = idle
                    .get(key)
                    .filter(|m| m.id == id && clients.contains(key))?;
                let due = m.last_active.saturating_add(timeout);
                if due <= t {
                    expired.push(key);
                    None
                } else {
                    Some(due)
                }
            });
            while let Some(key) = self.expired.pop() {
                self.close(key, Close::Idle);
            }
        }
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept_owed = true;
        }
        if let (Some(t), Some(every)) = (self.next_stats, self.config.stats_interval) {
            if now >= t {
                info!("stats: {}", self.stats);
                self.next_stats = Some(now + every);
            }
        }
        if self.drain_deadline.is_some_and(|t| now >= t) {
            warn!(
                "drain timeout: closing {} connection(s) that still owe output",
                self.clients.len()
            );
            let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.close(key, Close::DrainTimeout);
            }
            self.drain_timed_out = true;
        }
    }

    fn on_signals(&mut self, now: Instant) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for sig in received {
            let name = match sig {
                SIGINT => "SIGINT",
                SIGHUP => "SIGHUP",
                SIGQUIT => "SIGQUIT",
                SIGUSR1 => "SIGUSR1",
                _ => "SIGTERM",
            };
            if sig == SIGUSR1 {
                // An operator's "how are you doing", as memcached's and nginx's are.
                info!("{name}: counters: {}", self.stats);
            } else if self.drain_deadline.is_some() {
                warn!("{name} again: exiting now");
                self.forced = true;
            } else {
                // SIGHUP will reload workers once there are workers; until then, closing the
                // terminal upecho runs in must not cost the clients what they are owed.
                info!("{name}: shutting down");
                self.begin_shutdown(now);
            }
        }
    }

    /// Stops accepting and answering datagrams, and lets every connection finish what it owes.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.drain_deadline.is_some() {
            return;
        }
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for mut ep in self.udp.drain(..) {
            let _ = self.poll.registry().deregister(&mut ep.socket);
        }
        self.accept_owed = false;
        self.drain_deadline = Some(now + self.config.drain_timeout);
        info!(
            "stopped listening; draining {} connection(s) for at most {:?}",
            self.clients.len(),
            self.config.drain_timeout
        );
        // Every connection gets a turn in drain mode: those that owe nothing and have nothing
        // unread finish at once, the others as soon as they have caught up.
        for (key, c) in self.clients.iter_mut() {
            c.on_ready(true, true, false);
            if !c.set_queued(true) {
                self.run_queue.push_back(key);
            }
        }
    }
}

/// Accept failures that mean "no resources right now": back off rather than spin.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accept failures that concern only the one connection that was being accepted.
fn is_aborted_handshake(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

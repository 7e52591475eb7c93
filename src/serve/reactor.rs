//! The reactor: one thread, one `mio::Poll`, one hand-written loop over already-bound sockets.
//!
//! It owns nothing but the poll and the wiring: each responsibility is a part with its own state
//! and deadline, and the loop only decides who runs when.
//!
//! | part | module | owns |
//! |---|---|---|
//! | acceptor | [`super::accept`] | listeners, accept budget, EMFILE pause and back-off, refusals |
//! | connections | [`super::table`] | the slab, the run queue, the read buffer, the pending total |
//! | idle tracker | [`super::timer`] | the idle wheel and each connection's last activity |
//! | UDP side | [`super::udp`] | the UDP endpoints, their batch buffers, the answering policy |
//! | lifecycle | [`super::lifecycle`] | signals, the shutdown handle, the drain and its deadline |
//! | counters | [`super::stats`] | [`Stats`] and the periodic counters line |
//!
//! Tokens are decoded in one place ([`super::token`]). One turn of the loop:
//! 1. `poll` (an interrupted wait is a wake-up with no events), with a timeout of zero while work is queued, else the
//!    nearest deadline of any part;
//! 2. dispatch each event: connections and UDP sockets record readiness (connections run at
//!    once), listeners and signals only set flags;
//! 3. timers: idle connections, end of an accept back-off, the stats line, the drain deadline;
//! 4. accept, if owed and not backing off;
//! 5. one pass over the run queue: each connection that spent its budget gets one more turn,
//!    and the UDP sockets theirs.

use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};

use log::{info, trace, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use super::accept::Acceptor;
use super::config::{Config, Limits};
use super::control::{Adopt, WorkerLink};
use super::handover::{self, Leaving, Moving};
pub use super::lifecycle::ShutdownHandle;
use super::lifecycle::{Action, Lifecycle, Policy, signal_name};
use super::logs::Count;
use super::metrics::{self, MetricsEndpoint, Snapshot};
use super::proxy::HeaderError;
use super::stats::{Stats, StatsLog};
use super::table::{Close, Connections};
use super::timer::{IdleTracker, until_earliest};
use super::token::{self, MAX_LISTENERS, MAX_UDP_SOCKETS, Source};
use super::udp::{UdpEndpoint, UdpPolicy, UdpSide};
use super::upgrade::{Predecessor, Successor, UpgradeCommand};
use crate::{Transform, io_outcome};
use std::path::PathBuf;

mod link;
mod upgrade;
use link::Outgoing;

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    pub stats: Stats,
    /// A second signal cut the drain short.
    pub forced: bool,
    /// The drain timeout closed connections that still owed output.
    pub drain_timed_out: bool,
}

pub struct Server {
    poll: Poll,
    transform: Transform,
    acceptor: Acceptor<TcpListener>,
    conns: Connections,
    idle: Option<IdleTracker>,
    /// `--proxy-timeout`: the deadline for a trusted source's PROXY header.
    header_wait: Option<IdleTracker>,
    udp: UdpSide,
    life: Lifecycle,
    stats: Stats,
    stats_log: StatsLog,
    metrics: Option<MetricsEndpoint>,
    /// The channel to the supervisor, when this reactor is one of `--workers`.
    control: Option<WorkerLink>,
    /// A reload's hand-over under way: this worker's connections on their way to the new
    /// generation.
    outgoing: Option<Outgoing>,
    /// What SIGUSR2 starts (a single server's upgrade).
    upgrade: Option<UpgradeCommand>,
    /// The process started to take over from this one, until this one exits.
    successor: Option<Successor>,
    /// The process this one takes over from, until it has handed everything over.
    predecessor: Option<Predecessor>,
    pid_file: Option<PathBuf>,
    /// A stop signal came: the next one forces the exit.
    stop_signalled: bool,
    /// What the metrics report besides the counters.
    limits: Limits,
    start_time: f64,
    busy_poll: Option<Duration>,
    /// When a poll last returned events (the start of the busy-poll window).
    last_events: Instant,
}

impl Server {
    /// Registers the already-bound, non-blocking sockets with a new poll, and installs the signal
    /// handlers if the config asks for them (from here on a handled signal cannot kill the
    /// process, so announce the sockets only after this).
    pub fn new(
        config: Config,
        listeners: Vec<TcpListener>,
        udp: Vec<UdpSocket>,
    ) -> io::Result<Server> {
        if listeners.len() > MAX_LISTENERS || udp.len() > MAX_UDP_SOCKETS {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "too many sockets for one reactor",
            ));
        }
        let poll = Poll::new()?;
        let registry = poll.registry();
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            registry.register(l, token::listener(i), Interest::READABLE)?;
        }
        let mut endpoints = Vec::with_capacity(udp.len());
        for (i, mut s) in udp.into_iter().enumerate() {
            registry.register(
                &mut s,
                token::udp(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            endpoints.push(UdpEndpoint::new(s));
        }
        let limits = Limits::of(&config);
        let life = Lifecycle::new(
            registry,
            config.handle_signals,
            config.drain_timeout,
            config.notifier,
        )?;
        let now = Instant::now();
        Ok(Server {
            transform: config.transform,
            acceptor: Acceptor::new(listeners),
            conns: Connections::new(
                limits,
                config.transform,
                config.proxy.as_ref().map(|p| p.from.clone()),
            ),
            idle: config.idle_timeout.map(|t| IdleTracker::new(t, now)),
            header_wait: config
                .proxy
                .as_ref()
                .map(|p| IdleTracker::new(p.timeout, now)),
            udp: UdpSide::new(
                endpoints,
                UdpPolicy::new(config.udp_guard, config.udp_source_rate),
            ),
            life,
            stats: Stats::default(),
            stats_log: StatsLog::new(config.stats_interval, now),
            metrics: None,
            control: None,
            outgoing: None,
            upgrade: config.upgrade,
            successor: None,
            predecessor: None,
            pid_file: config.pid_file,
            stop_signalled: false,
            limits,
            start_time: metrics::unix_now(),
            busy_poll: config.busy_poll.filter(|d| !d.is_zero()),
            last_events: now,
            poll,
        })
    }

    /// Serves `GET /metrics` on `listener` too (already bound and listening), from this reactor.
    pub fn with_metrics(mut self, listener: TcpListener) -> io::Result<Server> {
        self.metrics = Some(MetricsEndpoint::new(listener, self.poll.registry())?);
        Ok(self)
    }

    /// Serves as one of a supervisor's workers: connections accepted while full are handed to
    /// a sibling through `link`, the supervisor is told when this worker is full or has room,
    /// and asked-for counters are sent back. Tells the supervisor this worker is ready.
    pub fn with_control(mut self, link: WorkerLink) -> io::Result<Server> {
        self.poll.registry().register(
            &mut SourceFd(&link.raw()),
            token::CONTROL,
            // Writable too: a hand-over's messages can fill the channel.
            Interest::READABLE | Interest::WRITABLE,
        )?;
        link.ready()?;
        self.control = Some(link);
        Ok(self)
    }

    /// A handle that stops this reactor gracefully from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.life.handle()
    }

    /// Serves until a shutdown (signal or handle) has drained, or is forced.
    pub fn run(mut self) -> io::Result<Summary> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = spin(
                self.busy_poll,
                self.last_events,
                now,
                self.poll_timeout(now),
            );
            io_outcome::poll(&mut self.poll, &mut events, timeout)?;
            let now = Instant::now();
            if !events.is_empty() {
                self.last_events = now;
            }
            if let Some(idle) = &mut self.idle {
                idle.tick(now);
            }
            if let Some(w) = &mut self.header_wait {
                w.tick(now);
            }
            for event in events.iter() {
                self.dispatch(event, now);
            }
            self.on_timers(now);
            if self.acceptor.due() {
                self.accept_all(now);
            }
            self.run_queued();
            if let Some(c) = &mut self.control {
                c.on_turn(self.conns.len(), self.life.draining());
            }
            // A hand-over ends when the supervisor says every connection is placed, unless a
            // second signal or the drain deadline cuts it short.
            let moving = self.outgoing.as_ref().is_some_and(|o| !o.done());
            if self.life.finished(self.conns.len())
                && (!moving || self.life.forced || self.life.drain_timed_out)
            {
                break;
            }
        }
        if self.life.forced {
            warn!(
                "forced exit with {} open",
                Count(self.conns.len() as u64, "connection")
            );
        }
        self.fill_own_counters(Instant::now());
        if let Some(c) = &self.control {
            c.final_counters(&self.stats, self.life.forced);
        }
        Ok(Summary {
            stats: self.stats,
            forced: self.life.forced,
            drain_timed_out: self.life.drain_timed_out,
        })
    }

    fn dispatch(&mut self, event: &mio::event::Event, now: Instant) {
        let source = Source::of(
            event.token(),
            self.acceptor.listeners.len(),
            self.udp.endpoints.len(),
        );
        trace!(
            "event {} ({source:?}):{}{}{}{}{}{}",
            event.token().0,
            if event.is_readable() { " readable" } else { "" },
            if event.is_writable() { " writable" } else { "" },
            if event.is_read_closed() {
                " read-closed"
            } else {
                ""
            },
            if event.is_write_closed() {
                " write-closed"
            } else {
                ""
            },
            if event.is_error() { " error" } else { "" },
            if event.is_priority() { " priority" } else { "" },
        );
        match source {
            Source::Signals => self.on_signals(now),
            Source::Waker => {
                if self.life.shutdown_requested() {
                    self.begin_shutdown(now);
                }
            }
            Source::Conn(key) => {
                // A token with no live connection is a stale event: ignore it.
                if self.conns.on_event(key, event) {
                    self.drive(key);
                }
            }
            Source::Udp(i) => self
                .udp
                .on_ready(i, event.is_readable(), event.is_writable()),
            Source::Listener(_) => self.acceptor.on_ready(),
            Source::Control => self.on_control(now),
            Source::Upgrade => self.on_upgrade_channel(now),
            Source::Metrics => {
                let snap = self.snapshot(now);
                if let Some(m) = &mut self.metrics {
                    m.accept(self.poll.registry(), now, Some(&snap));
                }
            }
            Source::Scrape(key) => {
                let snap = self.snapshot(now);
                if let Some(m) = &mut self.metrics {
                    m.drive(key, Some(&snap));
                }
            }
            Source::Unknown(t) => {
                self.stats.unknown_events += 1;
                trace!("event for unknown token {t}: ignored");
            }
        }
    }

    /// The counters as a scrape reports them.
    fn snapshot(&mut self, now: Instant) -> Snapshot {
        self.fill_own_counters(now);
        Snapshot {
            stats: self.stats.clone(),
            limits: self.limits,
            start_time: self.start_time,
        }
    }

    /// The acceptor and the metrics endpoint keep their own accounting; the counters show it.
    fn fill_own_counters(&mut self, now: Instant) {
        let (pauses, paused) = self.acceptor.pauses(now);
        self.stats.accept_pauses = pauses;
        self.stats.accept_paused_ns = u64::try_from(paused.as_nanos()).unwrap_or(u64::MAX);
        if let Some(m) = &self.metrics {
            self.stats.scrapes = m.answered();
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.conns.has_queued() || self.udp.owed() || self.acceptor.due() {
            return Some(Duration::ZERO);
        }
        until_earliest(
            now,
            [
                self.idle.as_ref().and_then(IdleTracker::next_wake),
                self.header_wait.as_ref().and_then(IdleTracker::next_wake),
                self.acceptor.paused_until(),
                self.acceptor.refusals_due(),
                self.stats_log.next(),
                self.life.drain_deadline(),
                self.life.next_watchdog(),
                self.upgrade_deadline(),
                self.metrics
                    .as_ref()
                    .and_then(MetricsEndpoint::next_deadline),
            ],
        )
    }

    /// One turn for connection `key`, and what its progress means for the other parts.
    fn drive(&mut self, key: usize) {
        let turn = self.conns.drive(
            key,
            self.life.closing_quiet(),
            &mut self.stats,
            self.poll.registry(),
        );
        if turn.moved.read + turn.moved.written > 0
            && let Some(idle) = &mut self.idle
        {
            idle.touch(key);
        }
        if turn.closed {
            self.acceptor.on_close();
        }
    }

    fn close(&mut self, key: usize, why: Close) {
        if self.conns.close(key, why, &mut self.stats) {
            self.acceptor.on_close();
        }
    }

    fn accept_all(&mut self, now: Instant) {
        self.acceptor.begin_turn();
        while let Some((stream, peer)) = self.acceptor.next(now, self.conns.len()) {
            if !self.conns.full() {
                self.serve_new(stream, peer, now);
            } else if self
                .control
                .as_ref()
                .is_some_and(|c| c.hand_off(stream.as_fd(), Vec::new()))
            {
                // A sibling with room serves it (ours is closed here; the sibling has its own).
                self.stats.handed_off += 1;
            } else {
                // Closing at once tells the client promptly instead of leaving it in the backlog.
                drop(stream);
                self.acceptor
                    .refuse(peer, self.conns.max(), now, &mut self.stats);
            }
        }
    }

    /// Takes a new connection into the table (there is room).
    fn serve_new(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        let key = match self.conns.insert(stream, peer, self.poll.registry(), now) {
            Ok((key, proxied)) => {
                if proxied && let Some(w) = &mut self.header_wait {
                    w.watch(key);
                }
                key
            }
            Err(e) => {
                warn!("register connection from {peer}: {e}");
                return;
            }
        };
        if let Some(idle) = &mut self.idle {
            idle.watch(key);
        }
        self.stats.accepted += 1;
        self.stats.active += 1;
    }

    /// Gives every connection that spent its budget one more turn, and UDP sockets theirs.
    fn run_queued(&mut self) {
        for _ in 0..self.conns.queued() {
            let Some(key) = self.conns.pop_queued() else {
                break;
            };
            self.drive(key);
        }
        self.udp.run(self.transform, &mut self.stats);
    }

    fn on_timers(&mut self, now: Instant) {
        if let Some(idle) = &mut self.idle {
            let conns = &self.conns;
            for key in idle.expired(|k| conns.contains(k)) {
                self.close(key, Close::Idle);
            }
        }
        if let Some(w) = &mut self.header_wait {
            // Stamped once, at accept, and never touched: the header has a deadline, not an
            // idle clock. A connection past its header is no longer "live" here.
            let conns = &self.conns;
            for key in w.expired(|k| conns.awaiting_header(k)) {
                self.close(key, Close::BadHeader(HeaderError::TimedOut));
            }
        }
        self.acceptor.on_timer(now);
        self.life.on_timer(now);
        self.on_upgrade_timer(now);
        if let Some(m) = &mut self.metrics {
            m.on_timer(now);
        }
        if let Some(rates) = self.stats_log.due(now, &self.stats) {
            info!("stats: {}; {rates}", self.stats);
        }
        if self.life.grace_over(now) {
            self.conns.queue_all_for_drain();
        }
        if self.life.drain_expired(now) {
            warn!(
                "drain timeout: closing {} that still owe output",
                Count(self.conns.len() as u64, "connection")
            );
            for key in self.conns.keys() {
                self.close(key, Close::DrainTimeout);
            }
        }
    }

    fn on_signals(&mut self, now: Instant) {
        for sig in self.life.pending_signals() {
            let name = signal_name(sig);
            // Only a stop signal makes the next one force: a drain begun by a hand-over (an
            // upgrade, a reload) is this process leaving, not the operator asking it to.
            match Policy::on_signal(sig, self.stop_signalled) {
                // An operator's "how are you doing", as memcached's and nginx's are.
                Action::Report => info!("{name}: counters: {}", self.stats),
                Action::Force => {
                    warn!("{name} again: exiting now");
                    self.life.forced = true;
                }
                Action::Drain => {
                    self.stop_signalled = true;
                    if self.life.draining() {
                        info!("{name}: already leaving; exiting once done (again to exit now)");
                    } else {
                        info!("{name}: shutting down");
                    }
                    self.stop_upgrade_for_shutdown();
                    self.begin_shutdown(now);
                }
                Action::Upgrade => self.begin_upgrade(name, now),
            }
        }
    }

    /// Stops accepting and answering datagrams, and lets every connection finish what it owes.
    fn begin_shutdown(&mut self, now: Instant) {
        if !self.life.begin_drain(now) {
            return;
        }
        if let Some(m) = &mut self.metrics {
            m.set_ready(false);
        }
        let registry = self.poll.registry();
        for mut l in self.acceptor.close() {
            let _ = registry.deregister(&mut l);
        }
        for mut ep in self.udp.close() {
            let _ = registry.deregister(&mut ep.socket);
        }
        info!(
            "stopped listening; draining {} for at most {}",
            Count(self.conns.len() as u64, "connection"),
            crate::units::show(self.life.drain_timeout())
        );
    }
}

/// `--busy-poll`: inside the `window` after the last events, a sleep becomes a zero-timeout
/// poll. Timers still fire: every turn runs them, and a zero timeout is never later.
fn spin(
    window: Option<Duration>,
    last_events: Instant,
    now: Instant,
    timeout: Option<Duration>,
) -> Option<Duration> {
    match window {
        Some(w) if now.saturating_duration_since(last_events) < w => Some(Duration::ZERO),
        _ => timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::mpsc;
    use std::thread;

    const WAIT: Duration = Duration::from_secs(20);

    /// Runs a server on loopback port 0 in a thread; returns its address, its handle and the
    /// thread that yields its summary.
    fn spawn(
        config: Config,
    ) -> (
        std::net::SocketAddr,
        ShutdownHandle,
        thread::JoinHandle<Summary>,
    ) {
        let listener =
            crate::net::bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || {
            let server = Server::new(config, vec![listener], vec![]).unwrap();
            tx.send(server.shutdown_handle()).unwrap();
            server.run().unwrap()
        });
        (addr, rx.recv_timeout(WAIT).unwrap(), t)
    }

    #[test]
    fn busy_poll_spins_only_inside_its_window_after_the_last_events() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let sleep = Some(ms(500));
        // Off: the timeout is the parts' own.
        assert_eq!(spin(None, t0, t0, sleep), sleep);
        assert_eq!(spin(None, t0, t0, None), None);
        // Inside the window: a zero timeout, however long the sleep would have been.
        let w = Some(ms(2));
        assert_eq!(spin(w, t0, t0, sleep), Some(Duration::ZERO));
        assert_eq!(spin(w, t0, t0 + ms(1), None), Some(Duration::ZERO));
        // Past it: sleeping again until events come.
        assert_eq!(spin(w, t0, t0 + ms(2), sleep), sleep);
        assert_eq!(spin(w, t0, t0 + ms(3), None), None);
    }

    #[test]
    fn a_busy_polling_server_serves_and_drains_like_a_sleeping_one() {
        let config = Config {
            busy_poll: Some(Duration::from_millis(50)),
            ..Config::default()
        };
        let (addr, handle, server) = spawn(config);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        for i in 0..200u32 {
            let msg = format!("ping {i}");
            c.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0u8; msg.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg.to_uppercase().into_bytes());
        }
        // Past the window the loop sleeps again: a reply still comes when a byte arrives.
        thread::sleep(Duration::from_millis(200));
        c.write_all(b"late").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"LATE");
        handle.shutdown();
        let summary = server.join().unwrap();
        assert_eq!(summary.stats.bytes_out, summary.stats.bytes_in);
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn a_drain_serves_what_is_owed_then_the_run_ends_with_its_counters() {
        let config = Config {
            max_pending: 64 << 20,
            drain_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        let (addr, handle, server) = spawn(config);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        let data = vec![b'q'; 8 << 20];
        c.write_all(&data).unwrap();
        // Let the server take it all in before it is asked to stop.
        thread::sleep(Duration::from_millis(200));
        handle.shutdown();
        thread::sleep(Duration::from_millis(200));
        assert!(!server.is_finished(), "ended while owing output");
        let mut got = vec![0u8; data.len()];
        c.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == b'Q'));
        let summary = server.join().unwrap();
        assert!(!summary.forced && !summary.drain_timed_out);
        assert_eq!(summary.stats.bytes_out, data.len() as u64);
        assert_eq!((summary.stats.accepted, summary.stats.active), (1, 0));
        // The connection was closed by the drain, not left open.
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn a_drain_timeout_closes_what_is_still_owed_and_counts_no_pending_bytes() {
        let config = Config {
            max_pending: 64 << 20,
            drain_timeout: Duration::from_millis(300),
            ..Config::default()
        };
        let (addr, handle, server) = spawn(config);
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&vec![b'q'; 8 << 20]).unwrap();
        thread::sleep(Duration::from_millis(200));
        handle.shutdown();
        let summary = server.join().unwrap();
        assert!(summary.drain_timed_out);
        assert_eq!(
            summary.stats.pending_bytes, 0,
            "what was owed is no one's once closed"
        );
        drop(c);
    }

    #[test]
    fn the_connection_limit_refuses_and_counts_then_frees_the_slot_on_close() {
        let config = Config {
            max_connections: 1,
            ..Config::default()
        };
        let (addr, handle, server) = spawn(config);
        let mut first = TcpStream::connect(addr).unwrap();
        first.set_read_timeout(Some(WAIT)).unwrap();
        first.write_all(b"a").unwrap();
        first.read_exact(&mut [0u8; 1]).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        second.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 1];
        assert!(
            matches!(second.read(&mut buf), Ok(0) | Err(_)),
            "refused at the limit"
        );
        drop(first);
        // The slot is free again: a new client is served (retried while the close lands).
        let deadline = Instant::now() + WAIT;
        loop {
            let mut third = TcpStream::connect(addr).unwrap();
            third
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            if third.write_all(b"b").is_ok() && matches!(third.read(&mut buf), Ok(1)) {
                assert_eq!(&buf, b"B");
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            thread::sleep(Duration::from_millis(50));
        }
        handle.shutdown();
        let s = server.join().unwrap().stats;
        assert!(s.refused >= 1, "the second client was counted as refused");
        assert!(s.accepted >= 2, "the first and the third were served");
    }
}

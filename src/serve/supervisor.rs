//! `upecho serve --workers N`: the supervising parent. It owns the listening sockets, the
//! worker processes, their restarts, the reload, the steering of new connections, the hand-off
//! of connections between workers, and the one metrics endpoint.
//!
//! # Sockets
//!
//! The supervisor binds the sockets, one set per worker *slot* (each address, TCP and UDP, with
//! `SO_REUSEPORT`: slot 0's first, which fixes port 0, then the others on the same ports), and
//! keeps them open for its whole life. A worker inherits its slot's set as descriptors, as under
//! systemd socket activation. So no listening socket is ever closed while the server runs:
//! a worker that dies, and the old workers of a reload, close only their copies, and the
//! connections queued on the socket are accepted by the slot's next worker instead of being
//! reset (closing a reuse-port listener resets what is queued on it unless the per-namespace
//! sysctl `net.ipv4.tcp_migrate_req` is 1, which a server cannot count on).
//!
//! # Life of a worker
//!
//! ```text
//!   spawned ──Ready──▶ serving ──SIGTERM (drain, reload)──▶ draining ──exit──▶ gone
//!      │                  └──dies──▶ gone; its slot restarts after a back-off
//!      └──dies before Ready──▶ first start: the server fails; reload: the reload is abandoned
//! ```
//!
//! A worker is spawned with the handled signals blocked (they wait until its handlers are in
//! place), in its own process group (a Ctrl-C at the terminal reaches the supervisor only, which
//! forwards one SIGTERM), with `PR_SET_PDEATHSIG` = SIGTERM (a supervisor killed outright
//! leaves workers that drain their clients and exit, not orphans that serve for ever).
//!
//! # Capacity
//!
//! New TCP connections are steered (the `steer` module's BPF program) to the slots whose worker is serving and
//! below its limit. A connection that still reaches a full worker (it arrived before the
//! steering changed, or every worker is full) is handed on over the control channel to one with
//! room; only when no worker has room is it refused, by the worker that accepted it.
//!
//! # Reload (SIGHUP)
//!
//! A new generation of workers is started from the binary on disk, on the same sockets; once
//! every one of them is ready, each old worker is sent SIGTERM and drains. A new worker that
//! fails (exits, another control protocol, not ready in time) abandons the reload and the old
//! workers go on.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use super::control::{CONTROL_FD, Channel, PROTOCOL, Received, ToSupervisor, ToWorker};
use super::lifecycle::{HANDLED_SIGNALS, signal_name, signals_to_handle};
use super::logs::Count;
use super::metrics::{self, Extra, MetricsEndpoint, Snapshot};
use super::stats::{Rates, Stats};
use super::steer;
use super::systemd::Notifier;
use super::timer::until_earliest;
use super::token::{self, Source};
use super::{Config, Sockets};

/// Tokens of the supervisor's poll, beside the signals and the metrics endpoint's: each
/// worker's control channel is this plus the worker's id.
const CHANNEL_BASE: usize = 1024;
/// A worker that is not ready this long after it was spawned has failed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Restart back-off: the first restart waits this long, each failure in a row doubles it...
const RESTART_FIRST: Duration = Duration::from_millis(100);
/// ... up to this.
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A worker that served this long before dying starts its slot's back-off again from the first.
const RESTART_FORGIVE: Duration = Duration::from_secs(10);
/// How long the supervisor waits for workers' counters when it asks for them.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Past the workers' own drain timeout, how long the supervisor waits before it kills them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The program a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The binary of the first generation and its restarts: this very binary
    /// (`/proc/self/exe`), even if the file on disk has been replaced since.
    pub first: PathBuf,
    /// The binary of a reload's workers: the file on disk (the upgrade path).
    pub reload: PathBuf,
    /// The arguments of every worker; the supervisor adds `--worker-slot`, `--worker-generation`
    /// and `--worker-sockets`.
    pub args: Vec<OsString>,
}

/// Where each slot's sockets come from.
#[derive(Debug)]
pub enum SlotSockets {
    /// One set per slot, bound with `SO_REUSEPORT`, in slot order (new connections are steered).
    PerSlot(Vec<Sockets>),
    /// One set shared by every worker (sockets passed by systemd): they all accept from the
    /// same sockets, and the hand-off alone keeps a full worker from refusing.
    Shared(Sockets),
}

/// How the supervisor runs.
pub struct SupervisorConfig {
    pub workers: usize,
    pub sockets: SlotSockets,
    pub command: WorkerCommand,
    /// The workers' configuration (the supervisor reads the drain timeout, the stats interval
    /// and the limits it exposes from it).
    pub server: Config,
    /// `--metrics`: the one endpoint for the whole server.
    pub metrics: Option<TcpListener>,
    pub notifier: Notifier,
}

/// How a supervised run ended.
#[derive(Debug)]
pub struct SupervisorSummary {
    /// The counters of every worker that ever ran, added up.
    pub total: Stats,
    /// A second stop signal cut the drain short, or a worker had to be killed.
    pub forced: bool,
    /// A worker of the last set did not end its drain cleanly.
    pub failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Serving,
    Draining,
}

struct Worker {
    slot: u32,
    generation: u32,
    child: Child,
    channel: Option<Channel>,
    state: State,
    spawned: Instant,
    ready_at: Option<Instant>,
    version: String,
    max_connections: u64,
    room: bool,
    steer: bool,
    /// The counters last reported, and the final ones if it sent them.
    last: Stats,
    last_final: Option<(Stats, bool)>,
}

impl Worker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `worker 1 (pid 1234)`, with the generation after a reload.
    fn name(&self) -> String {
        if self.generation == 0 {
            format!("worker {} (pid {})", self.slot, self.pid())
        } else {
            format!(
                "worker {} (pid {}, generation {})",
                self.slot,
                self.pid(),
                self.generation
            )
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The worker serving it (the newest that is ready).
    current: Option<u64>,
    /// Deaths in a row without a long enough life between them.
    failures: u32,
    restart_at: Option<Instant>,
    /// The generation a restart belongs to: the one of the worker that died.
    generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first generation is starting; nothing announced yet.
    Starting,
    Serving,
    Draining {
        deadline: Instant,
    },
}

/// Why the counters were asked for.
#[derive(Debug, Default, Clone, Copy)]
struct Purposes {
    scrape: bool,
    stats_line: bool,
    usr1: bool,
}

struct Round {
    seq: u64,
    waiting: Vec<u64>,
    deadline: Instant,
    purposes: Purposes,
}

struct Reload {
    generation: u32,
    deadline: Instant,
}

pub struct Supervisor {
    poll: Poll,
    signals: Signals,
    config_workers: usize,
    sockets: SlotSockets,
    /// One listener of each address's reuse-port group, to steer through; empty when shared.
    steer_fds: Vec<RawFd>,
    steering: bool,
    steered: Option<Vec<u32>>,
    command: WorkerCommand,
    server: Config,
    workers: HashMap<u64, Worker>,
    slots: Vec<Slot>,
    next_id: u64,
    generation: u32,
    reload: Option<Reload>,
    phase: Phase,
    /// Counters of workers gone, added up; and the last set's per worker, for the exit log.
    retired: Stats,
    retired_count: u64,
    last_set: Vec<(String, Stats)>,
    restarts: u64,
    reloads: u64,
    round: Option<Round>,
    next_seq: u64,
    metrics: Option<MetricsEndpoint>,
    stats_next: Option<Instant>,
    stats_last: (Stats, Instant),
    next_watchdog: Option<Instant>,
    notifier: Notifier,
    start_time: f64,
    forced: bool,
    failed: bool,
}

impl Supervisor {
    /// Installs the signal handlers (so from here on no handled signal can kill the process),
    /// and takes the sockets. No worker runs until [`Supervisor::run`].
    pub fn new(config: SupervisorConfig) -> io::Result<Supervisor> {
        let poll = Poll::new()?;
        // Those inherited ignored stay ignored, here and so in every worker (exec keeps them).
        let mut signals = Signals::new(signals_to_handle().into_iter().chain([SIGCHLD]))?;
        poll.registry()
            .register(&mut signals, token::SIGNALS, Interest::READABLE)?;
        let metrics = match config.metrics {
            Some(l) => Some(MetricsEndpoint::new(l, poll.registry())?.deferred()),
            None => None,
        };
        let steer_fds = match &config.sockets {
            SlotSockets::PerSlot(sets) => sets
                .first()
                .map(|s| s.listeners.iter().map(|l| l.as_raw_fd()).collect())
                .unwrap_or_default(),
            SlotSockets::Shared(_) => Vec::new(),
        };
        let now = Instant::now();
        Ok(Supervisor {
            poll,
            signals,
            config_workers: config.workers,
            steering: !steer_fds.is_empty(),
            steer_fds,
            sockets: config.sockets,
            steered: None,
            command: config.command,
            stats_next: config
                .server
                .stats_interval
                .and_then(|i| now.checked_add(i)),
            server: config.server,
            workers: HashMap::new(),
            slots: (0..config.workers).map(|_| Slot::default()).collect(),
            next_id: 0,
            generation: 0,
            reload: None,
            phase: Phase::Starting,
            retired: Stats::default(),
            retired_count: 0,
            last_set: Vec::new(),
            restarts: 0,
            reloads: 0,
            round: None,
            next_seq: 0,
            metrics,
            stats_last: (Stats::default(), now),
            next_watchdog: config.notifier.watchdog_interval().map(|_| now),
            notifier: config.notifier,
            start_time: metrics::unix_now(),
            forced: false,
            failed: false,
        })
    }

    /// Starts the workers; once every one is ready calls `on_ready` (which announces the
    /// server); supervises until a stop signal has drained every worker.
    pub fn run(
        mut self,
        on_ready: impl FnOnce() -> io::Result<()>,
    ) -> Result<SupervisorSummary, Box<dyn std::error::Error>> {
        let mut on_ready = Some(on_ready);
        for slot in 0..self.config_workers as u32 {
            self.spawn(slot, 0)?;
        }
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = Instant::now();
            for event in events.iter() {
                self.dispatch(event.token(), now)?;
            }
            self.on_timers(now)?;
            if self.phase == Phase::Starting && self.slots.iter().all(|s| s.current.is_some()) {
                self.phase = Phase::Serving;
                info!("{} ready", Count(self.config_workers as u64, "worker"));
                if let Some(f) = on_ready.take() {
                    f()?;
                }
                self.notifier.ready(&format!(
                    "serving with {}",
                    Count(self.config_workers as u64, "worker")
                ));
                self.update_steering();
            }
            if self.metrics.as_ref().is_some_and(MetricsEndpoint::waiting) {
                self.ask_counters(
                    Purposes {
                        scrape: true,
                        ..Purposes::default()
                    },
                    now,
                );
            }
            if matches!(self.phase, Phase::Draining { .. }) && self.workers.is_empty() {
                break;
            }
        }
        self.finish_round();
        for (name, stats) in &self.last_set {
            info!("final counters: {name}: {stats}");
        }
        let earlier = self.retired_count - self.last_set.len() as u64;
        if earlier > 0 {
            info!(
                "({} before them, restarted or reloaded, are in the total)",
                Count(earlier, "worker")
            );
        }
        info!(
            "final counters: total: {}; {} restart(s), {} reload(s)",
            self.retired, self.restarts, self.reloads
        );
        Ok(SupervisorSummary {
            total: self.retired,
            forced: self.forced,
            failed: self.failed,
        })
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let drain = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            _ => None,
        };
        let starting = self
            .workers
            .values()
            .filter(|w| w.state == State::Starting)
            .map(|w| w.spawned + READY_TIMEOUT)
            .min();
        until_earliest(
            now,
            [
                drain,
                starting,
                self.reload.as_ref().map(|r| r.deadline),
                self.round.as_ref().map(|r| r.deadline),
                self.slots.iter().filter_map(|s| s.restart_at).min(),
                self.stats_next,
                self.next_watchdog,
                self.metrics
                    .as_ref()
                    .and_then(MetricsEndpoint::next_deadline),
            ],
        )
    }

    fn dispatch(&mut self, t: Token, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        if t.0 >= CHANNEL_BASE && t.0 < CHANNEL_BASE + (1 << 30) {
            self.on_channel((t.0 - CHANNEL_BASE) as u64, now);
            return Ok(());
        }
        let dummy = Snapshot {
            stats: Stats::default(),
            limits: metrics::Limits::default(),
            start_time: 0.0,
        };
        match Source::of(t, 0, 0) {
            Source::Signals => self.on_signals(now)?,
            Source::Metrics => {
                if let Some(m) = &mut self.metrics {
                    m.accept(self.poll.registry(), now, &dummy);
                }
            }
            Source::Scrape(key) => {
                if let Some(m) = &mut self.metrics {
                    m.drive(key, &dummy);
                }
            }
            other => debug!("supervisor: event for {other:?}: ignored"),
        }
        Ok(())
    }

    /// Starts a worker for `slot` of generation `generation`.
    fn spawn(&mut self, slot: u32, generation: u32) -> io::Result<u64> {
        let (channel, child_end) = Channel::pair()?;
        let sockets: Vec<RawFd> = match &self.sockets {
            SlotSockets::PerSlot(sets) => raw_fds(&sets[slot as usize]),
            SlotSockets::Shared(set) => raw_fds(set),
        };
        let mut fds = vec![child_end.as_raw_fd()];
        fds.extend(&sockets);
        let exe = if generation == 0 {
            &self.command.first
        } else {
            &self.command.reload
        };
        let mut cmd = Command::new(exe);
        cmd.arg0("upecho")
            .args(&self.command.args)
            .arg("--worker-slot")
            .arg(slot.to_string())
            .arg("--worker-generation")
            .arg(generation.to_string())
            .arg("--worker-sockets")
            .arg(sockets.len().to_string())
            // The service manager talks to the supervisor alone.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        let high = fds
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(CONTROL_FD + fds.len() as RawFd)
            + 1;
        let mut moved = vec![0 as RawFd; fds.len()];
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (sigprocmask, prctl, getppid, fcntl, dup2) on memory
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Signals sent before the worker's handlers are in place wait for them.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for sig in HANDLED_SIGNALS {
                    libc::sigaddset(&mut set, sig);
                }
                if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor died before the death signal was armed: do not serve alone.
                if libc::getppid() != parent {
                    return Err(io::Error::other("the supervisor is gone"));
                }
                // Out of the way first, so that moving one into place cannot clobber another.
                for (i, &fd) in fds.iter().enumerate() {
                    let m = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high);
                    if m < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    moved[i] = m;
                }
                for (i, &m) in moved.iter().enumerate() {
                    // dup2 leaves the new descriptor without close-on-exec: it is inherited.
                    if libc::dup2(m, CONTROL_FD + i as RawFd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(child_end);
        let id = self.next_id;
        self.next_id += 1;
        self.poll.registry().register(
            &mut SourceFd(&channel.raw()),
            Token(CHANNEL_BASE + id as usize),
            Interest::READABLE,
        )?;
        let w = Worker {
            slot,
            generation,
            child,
            channel: Some(channel),
            state: State::Starting,
            spawned: Instant::now(),
            ready_at: None,
            version: String::new(),
            max_connections: 0,
            room: false,
            steer: false,
            last: Stats::default(),
            last_final: None,
        };
        info!("{}: started", w.name());
        self.workers.insert(id, w);
        Ok(id)
    }

    fn on_signals(&mut self, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap(now)?,
                SIGHUP => self.begin_reload(now),
                SIGUSR1 => {
                    // Each worker logs its own counters; the supervisor the total.
                    self.signal_all(SIGUSR1);
                    self.ask_counters(
                        Purposes {
                            usr1: true,
                            ..Purposes::default()
                        },
                        now,
                    );
                }
                SIGTERM | SIGINT | SIGQUIT => {
                    let name = signal_name(sig);
                    if matches!(self.phase, Phase::Draining { .. }) {
                        warn!("{name} again: the workers exit now");
                        self.forced = true;
                        self.signal_all(SIGTERM);
                    } else {
                        info!(
                            "{name}: shutting down {}",
                            Count(self.workers.len() as u64, "worker")
                        );
                        self.begin_drain(now);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn signal_all(&self, sig: i32) {
        for w in self.workers.values() {
            signal(w.pid(), sig);
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        self.phase = Phase::Draining {
            deadline: now
                .checked_add(self.server.drain_timeout + DRAIN_GRACE)
                .unwrap_or(now + crate::units::MAX_DURATION),
        };
        self.notifier.stopping();
        self.reload = None;
        for s in &mut self.slots {
            s.restart_at = None;
        }
        for w in self.workers.values_mut() {
            // A previous generation's workers are draining already: a second SIGTERM would
            // make them exit at once, dropping what their connections are still owed.
            if w.state != State::Draining {
                w.state = State::Draining;
                signal(w.pid(), SIGTERM);
            }
        }
    }

    fn begin_reload(&mut self, now: Instant) {
        match self.phase {
            Phase::Serving if self.reload.is_none() => {}
            Phase::Serving => {
                warn!("SIGHUP: a reload is already under way");
                return;
            }
            _ => {
                warn!("SIGHUP: not serving yet, or shutting down: no reload");
                return;
            }
        }
        self.generation += 1;
        let generation = self.generation;
        info!(
            "SIGHUP: reloading: starting generation {generation} from {}",
            self.command.reload.display()
        );
        for slot in 0..self.slots.len() as u32 {
            if let Err(e) = self.spawn(slot, generation) {
                error!("reload abandoned: cannot start a worker: {e}; the running workers go on");
                self.abandon_reload();
                return;
            }
        }
        self.reload = Some(Reload {
            generation,
            deadline: now + READY_TIMEOUT,
        });
    }

    /// Stops the new generation's workers; the old ones go on.
    fn abandon_reload(&mut self) {
        let generation = self.generation;
        self.reload = None;
        for w in self.workers.values_mut() {
            if w.generation == generation && w.state != State::Draining {
                w.state = State::Draining;
                signal(w.pid(), SIGTERM);
            }
        }
    }

    /// Every worker of the reload is ready: each takes its slot, and the one it replaces drains.
    fn complete_reload(&mut self) {
        let Some(r) = self.reload.take() else { return };
        let new: Vec<(u64, u32)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == r.generation && w.state == State::Serving)
            .map(|(&id, w)| (id, w.slot))
            .collect();
        for (id, slot) in new {
            let old = self.slots[slot as usize].current.replace(id);
            self.slots[slot as usize].failures = 0;
            if let Some(old) = old
                && let Some(w) = self.workers.get_mut(&old)
            {
                w.state = State::Draining;
                signal(w.pid(), SIGTERM);
            }
        }
        self.reloads += 1;
        info!(
            "reload complete: generation {} serving; the previous workers drain",
            r.generation
        );
        self.update_steering();
    }

    fn on_channel(&mut self, id: u64, now: Instant) {
        loop {
            let Some(w) = self.workers.get_mut(&id) else {
                return;
            };
            let Some(ch) = &w.channel else { return };
            let got = ch.recv::<ToSupervisor>();
            match got {
                Ok(Received::Message(msg, fd)) => self.on_message(id, msg, fd, now),
                Ok(Received::WouldBlock) => return,
                Ok(Received::Closed) | Err(_) => {
                    // The worker is exiting; SIGCHLD follows. Its channel is done.
                    if let Some(ch) = w.channel.take() {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&ch.raw()));
                    }
                    self.no_longer_waiting(id);
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, id: u64, msg: ToSupervisor, fd: Option<OwnedFd>, now: Instant) {
        match msg {
            ToSupervisor::Ready {
                protocol,
                version,
                max_connections,
            } => self.on_ready(id, protocol, version, max_connections, now),
            ToSupervisor::Capacity { room, steer } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.room = room;
                    w.steer = steer;
                    debug!("{}: room {room}, steered to {steer}", w.name());
                }
                self.update_steering();
            }
            ToSupervisor::Report { seq, stats } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.last = stats;
                }
                if self.round.as_ref().is_some_and(|r| r.seq == seq) {
                    self.no_longer_waiting(id);
                }
            }
            ToSupervisor::Final { stats, forced } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.last = stats.clone();
                    w.last_final = Some((stats, forced));
                }
            }
            ToSupervisor::HandOff { tried } => match fd {
                Some(fd) => self.route(id, fd, tried),
                None => debug!("a hand-off without its connection: ignored"),
            },
        }
    }

    fn on_ready(&mut self, id: u64, protocol: u32, version: String, max: u64, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if protocol != PROTOCOL {
            error!(
                "{}: upecho {version} speaks control protocol {protocol}, this supervisor {PROTOCOL}: stopped",
                w.name()
            );
            w.state = State::Draining;
            signal(w.pid(), SIGTERM);
            if self
                .reload
                .as_ref()
                .is_some_and(|r| r.generation == w.generation)
            {
                error!("reload abandoned; the running workers go on");
                self.abandon_reload();
            }
            return;
        }
        if w.state != State::Starting {
            return;
        }
        w.state = State::Serving;
        w.ready_at = Some(now);
        w.room = true;
        w.steer = true;
        w.max_connections = max;
        info!(
            "{}: ready (upecho {version}, up to {})",
            w.name(),
            Count(max, "connection")
        );
        w.version = version;
        let (slot, generation) = (w.slot as usize, w.generation);
        let reloading = self.reload.as_ref().map(|r| r.generation);
        if reloading == Some(generation) {
            let all = self
                .workers
                .values()
                .filter(|w| w.generation == generation)
                .all(|w| w.state == State::Serving);
            if all {
                self.complete_reload();
            }
        } else if generation == self.generation || self.phase == Phase::Starting {
            // A first start or a restart: the slot is this worker's.
            self.slots[slot].current = Some(id);
            self.update_steering();
        }
    }

    /// A full worker's connection: to a worker with room (not tried yet), or back to the one
    /// that accepted it to be refused.
    fn route(&mut self, from: u64, fd: OwnedFd, tried: Vec<u32>) {
        let n = self.slots.len() as u32;
        let origin_slot = self.workers.get(&from).map_or(0, |w| w.slot);
        let candidate = (1..=n)
            .map(|k| (origin_slot + k) % n)
            .filter(|s| !tried.contains(s))
            .filter_map(|s| self.slots[s as usize].current)
            .find(|id| {
                self.workers
                    .get(id)
                    .is_some_and(|w| w.state == State::Serving && w.room)
            });
        let (to, last) = match candidate {
            Some(to) => (to, false),
            None => (from, true),
        };
        let Some(ch) = self.workers.get(&to).and_then(|w| w.channel.as_ref()) else {
            // Its worker is gone: the client sees the connection close.
            return;
        };
        let mut tried = tried;
        if let Some(w) = self.workers.get(&to)
            && !last
        {
            tried.push(w.slot);
        }
        if let Err(e) = ch.send(&ToWorker::HandOff { tried, last }, Some(fd.as_fd())) {
            debug!("hand-off: {e}");
        }
    }

    /// Attaches the steering program for the slots open now, if that changed.
    fn update_steering(&mut self) {
        if !self.steering || self.phase == Phase::Starting {
            return;
        }
        let open: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.current
                    .and_then(|id| self.workers.get(&id))
                    .is_some_and(|w| w.state == State::Serving && w.steer)
            })
            .map(|(i, _)| i as u32)
            .collect();
        if self.steered.as_ref() == Some(&open) {
            return;
        }
        for &fd in &self.steer_fds {
            if let Err(e) = steer::steer(fd, &open) {
                warn!(
                    "cannot steer connections ({e}): the kernel's hash chooses the worker; \
                     full workers hand connections on"
                );
                self.steering = false;
                return;
            }
        }
        debug!("steering new connections to slots {open:?}");
        self.steered = Some(open);
    }

    fn reap(&mut self, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        let exited: Vec<(u64, ExitStatus)> = self
            .workers
            .iter_mut()
            .filter_map(|(&id, w)| match w.child.try_wait() {
                Ok(Some(status)) => Some((id, status)),
                _ => None,
            })
            .collect();
        for (id, status) in exited {
            // What it sent before it went (its final counters) is still in the channel.
            self.on_channel(id, now);
            self.on_exit(id, status, now)?;
        }
        Ok(())
    }

    fn on_exit(
        &mut self,
        id: u64,
        status: ExitStatus,
        now: Instant,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.no_longer_waiting(id);
        let Some(mut w) = self.workers.remove(&id) else {
            return Ok(());
        };
        if let Some(ch) = w.channel.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&ch.raw()));
        }
        let how = describe(status);
        let name = w.name();
        let mut stats = match &w.last_final {
            Some((s, _)) => s.clone(),
            None => w.last.clone(),
        };
        let lost = if w.last_final.is_none() {
            stats.active
        } else {
            0
        };
        // Whatever was open when it died is closed now.
        stats.active = 0;
        stats.pending_bytes = 0;
        self.retired.add(&stats);
        self.retired_count += 1;
        let slot = w.slot as usize;
        let was_current = self.slots[slot].current == Some(id);
        if was_current {
            self.slots[slot].current = None;
        }
        let drained = w.state == State::Draining;
        if matches!(self.phase, Phase::Draining { .. }) {
            self.last_set.push((name.clone(), stats));
            if status.success() && w.last_final.as_ref().is_some_and(|(_, f)| !f) {
                info!("{name}: drained, {how}");
            } else {
                warn!("{name}: {how} while draining");
                self.failed = true;
            }
            return Ok(());
        }
        if drained {
            info!("{name}: drained, {how}");
            return Ok(());
        }
        let lost_note = if lost > 0 {
            format!(" ({} lost)", Count(lost, "connection"))
        } else {
            String::new()
        };
        if self.phase == Phase::Starting {
            // The server never started: say why and stop the others.
            self.begin_drain(now);
            return Err(format!("{name} {how} before it was ready").into());
        }
        if self
            .reload
            .as_ref()
            .is_some_and(|r| r.generation == w.generation)
        {
            error!("reload abandoned: {name} {how} before it was ready; the running workers go on");
            self.abandon_reload();
            return Ok(());
        }
        let s = &mut self.slots[slot];
        s.generation = w.generation;
        if w.ready_at
            .is_some_and(|t| now.saturating_duration_since(t) >= RESTART_FORGIVE)
        {
            s.failures = 0;
        }
        let delay = RESTART_FIRST
            .saturating_mul(1u32 << s.failures.min(10))
            .min(RESTART_MAX);
        s.failures += 1;
        s.restart_at = Some(now + delay);
        warn!(
            "{name}: {how}{lost_note}; restarting in {}",
            crate::units::show(delay)
        );
        self.update_steering();
        Ok(())
    }

    fn on_timers(&mut self, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(m) = &mut self.metrics {
            m.on_timer(now);
        }
        if let (Some(due), Some(every)) = (self.next_watchdog, self.notifier.watchdog_interval())
            && now >= due
        {
            self.notifier.watchdog();
            self.next_watchdog = Some(now + every);
        }
        if let Phase::Draining { deadline } = self.phase
            && now >= deadline
            && !self.workers.is_empty()
        {
            warn!(
                "{} still running past the drain timeout: killed",
                Count(self.workers.len() as u64, "worker")
            );
            self.forced = true;
            self.signal_all(libc::SIGKILL);
            self.phase = Phase::Draining {
                deadline: now + crate::units::MAX_DURATION,
            };
        }
        let late: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == State::Starting && now >= w.spawned + READY_TIMEOUT)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(w) = self.workers.get_mut(&id) {
                error!(
                    "{}: not ready after {}: stopped",
                    w.name(),
                    crate::units::show(READY_TIMEOUT)
                );
                w.state = State::Draining;
                signal(w.pid(), libc::SIGKILL);
                if self.phase == Phase::Starting {
                    return Err("a worker did not start".into());
                }
            }
        }
        if self.reload.as_ref().is_some_and(|r| now >= r.deadline) {
            error!(
                "reload abandoned: the new workers were not ready in time; the running workers go on"
            );
            self.abandon_reload();
        }
        if self.phase == Phase::Serving {
            let due: Vec<u32> = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.restart_at.is_some_and(|t| now >= t))
                .map(|(i, _)| i as u32)
                .collect();
            for slot in due {
                self.slots[slot as usize].restart_at = None;
                self.restarts += 1;
                let generation = self.slots[slot as usize].generation;
                if let Err(e) = self.spawn(slot, generation) {
                    let s = &mut self.slots[slot as usize];
                    s.failures += 1;
                    s.restart_at = Some(now + RESTART_MAX);
                    error!(
                        "cannot restart worker {slot}: {e}; trying again in {}",
                        crate::units::show(RESTART_MAX)
                    );
                }
            }
        }
        if let Some(due) = self.stats_next
            && now >= due
        {
            self.stats_next = self.server.stats_interval.and_then(|i| now.checked_add(i));
            self.ask_counters(
                Purposes {
                    stats_line: true,
                    ..Purposes::default()
                },
                now,
            );
        }
        if self.round.as_ref().is_some_and(|r| now >= r.deadline) {
            self.finish_round();
        }
        Ok(())
    }

    /// Asks every worker for its counters (joining a request already under way).
    fn ask_counters(&mut self, purposes: Purposes, now: Instant) {
        if let Some(r) = &mut self.round {
            r.purposes.scrape |= purposes.scrape;
            r.purposes.stats_line |= purposes.stats_line;
            r.purposes.usr1 |= purposes.usr1;
            return;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let waiting: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.ready_at.is_some()
                    && w.channel
                        .as_ref()
                        .is_some_and(|c| c.send(&ToWorker::Report { seq }, None).is_ok())
            })
            .map(|(&id, _)| id)
            .collect();
        self.round = Some(Round {
            seq,
            waiting,
            deadline: now + REPORT_TIMEOUT,
            purposes,
        });
        if self.round.as_ref().is_some_and(|r| r.waiting.is_empty()) {
            self.finish_round();
        }
    }

    fn no_longer_waiting(&mut self, id: u64) {
        if let Some(r) = &mut self.round {
            r.waiting.retain(|&w| w != id);
            if r.waiting.is_empty() {
                self.finish_round();
            }
        }
    }

    /// The counters are in (or the time is up): answer what asked for them.
    fn finish_round(&mut self) {
        let Some(r) = self.round.take() else { return };
        let now = Instant::now();
        let mut live: Vec<&Worker> = self
            .workers
            .values()
            .filter(|w| w.ready_at.is_some())
            .collect();
        live.sort_by_key(|w| (w.slot, w.generation));
        let mut total = self.retired.clone();
        for w in &live {
            total.add(&w.last);
        }
        if r.purposes.scrape
            && let Some(m) = &mut self.metrics
        {
            let limits = |w: &Worker| metrics::Limits {
                max_connections: w.max_connections,
                max_pending: self.server.max_pending as u64,
                max_pending_total: self.server.max_pending_total as u64,
                udp_source_rate: self.server.udp_source_rate.map_or(0, u64::from),
            };
            let snaps: Vec<(String, Snapshot)> = live
                .iter()
                .map(|w| {
                    (
                        format!("worker=\"{}\",generation=\"{}\"", w.slot, w.generation),
                        Snapshot {
                            stats: w.last.clone(),
                            limits: limits(w),
                            start_time: self.start_time,
                        },
                    )
                })
                .collect();
            let series: Vec<(String, &Snapshot)> =
                snaps.iter().map(|(l, s)| (l.clone(), s)).collect();
            let serving = live.iter().filter(|w| w.state == State::Serving).count();
            let extra = [
                Extra {
                    name: "upecho_workers",
                    kind: "gauge",
                    help: "Worker processes serving now (--workers).",
                    value: serving as f64,
                },
                Extra {
                    name: "upecho_worker_restarts_total",
                    kind: "counter",
                    help: "Workers restarted after they died.",
                    value: self.restarts as f64,
                },
                Extra {
                    name: "upecho_reloads_total",
                    kind: "counter",
                    help: "Reloads (SIGHUP) completed.",
                    value: self.reloads as f64,
                },
            ];
            let body = metrics::render_labelled(&series, self.start_time, &extra);
            m.answer_waiting(&body);
        }
        if r.purposes.stats_line {
            for w in &live {
                debug!("stats: {}: {}", w.name(), w.last);
            }
            let (before, at) = &self.stats_last;
            let rates = Rates::between(before, &total, now.saturating_duration_since(*at));
            info!(
                "stats: total ({}): {total}; {rates}",
                Count(live.len() as u64, "worker")
            );
            self.stats_last = (total.clone(), now);
        }
        if r.purposes.usr1 {
            info!(
                "SIGUSR1: counters: total ({}): {total}",
                Count(live.len() as u64, "worker")
            );
        }
    }
}

fn raw_fds(s: &Sockets) -> Vec<RawFd> {
    s.listeners
        .iter()
        .map(|l| l.as_raw_fd())
        .chain(s.udp.iter().map(|u| u.as_raw_fd()))
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; it is reaped only by us, so the pid is still
    // its own until then.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// `exited with status 3`, `killed by signal 9 (SIGKILL)`.
pub(crate) fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {sig} ({}{core})", signal_label(sig))
        }
        None => format!("ended ({status})"),
    }
}

fn signal_label(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGUSR2 => "SIGUSR2",
        s => signal_name(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_causes_are_described_as_an_operator_reads_them() {
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "killed by signal 11 (SIGSEGV, core dumped)"
        );
    }
}

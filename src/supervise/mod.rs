//! `upecho serve --workers N`: the supervising parent. It owns the listening sockets, the
//! worker processes, their restarts, the reload, the steering of new connections, the hand-off
//! of connections between workers, and the one metrics endpoint. It runs no reactor: it uses
//! `serve`'s channel ([`crate::serve::control`]), counters and metrics endpoint, and nothing in
//! `serve` knows of it.
//!
//! - `mod.rs`: the loop and the supervisor's phase (starting, serving, draining), signals,
//!   timers, the drain.
//! - `spawn`: a worker's command, inherited descriptors, environment and signal state.
//! - `pool`: the workers, their one state-transition function, slots and restart back-off,
//!   reaping.
//! - `inbox`: what the workers say over their channels.
//! - `reload`: SIGHUP, a new generation; `handover`, moving the old generation's connections
//!   to it.
//! - `route`: the steering of new connections and the routing of handed-off ones; `steer`,
//!   the reuse-port steering program.
//! - `counters`: rounds of counters from the workers, the exposition, the stats line.
//! - `token`: the supervisor's own token map.
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
//!   spawned ──Ready──▶ serving ──SIGTERM (drain), HandOver (reload)──▶ draining ──exit──▶ gone
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
//! New TCP connections are steered to the slots whose worker is serving and below its limit. A
//! connection that still reaches a full worker is handed on over the control channel to one
//! with room; only when no worker has room is it refused, by the worker that accepted it.
//!
//! # Reload (SIGHUP)
//!
//! A new generation of workers is started from the binary on disk, on the same sockets; once
//! every one of them is ready, each old worker moves its connections to them (`handover`) and
//! exits, or drains if the new binary cannot read its hand-over format. A new worker that
//! fails (exits, another control protocol, not ready in time) abandons the reload and the old
//! workers go on. A SIGHUP while the last reload's connections still move waits for them.

/// Every supervisor line keeps the log target it had when the supervisor lived in `serve`:
/// `RUST_LOG=upecho::serve::supervisor=debug` filters and log readers key on it.
const LOG_TARGET: &str = "upecho::serve::supervisor";

// The `log` macros under the supervisor's one target; textually scoped, so every submodule
// below uses them.
macro_rules! debug { ($($t:tt)*) => { log::debug!(target: $crate::supervise::LOG_TARGET, $($t)*) } }
macro_rules! info { ($($t:tt)*) => { log::info!(target: $crate::supervise::LOG_TARGET, $($t)*) } }
macro_rules! warn { ($($t:tt)*) => { log::warn!(target: $crate::supervise::LOG_TARGET, $($t)*) } }
macro_rules! error { ($($t:tt)*) => { log::error!(target: $crate::supervise::LOG_TARGET, $($t)*) } }

mod counters;
mod handover;
mod inbox;
mod pool;
mod reload;
mod route;
mod spawn;
mod steer;
mod token;

use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::io_outcome;
use crate::serve::logs::Count;
use crate::serve::metrics::MetricsEndpoint;
use crate::serve::timer::until_earliest;
use crate::serve::{Config, Notifier, Stats, signal_name, signals_to_handle};
use counters::{Counters, Purposes};
use pool::{Change, Pool};
use reload::Reloads;
use route::Steering;
use spawn::Spawner;
pub use spawn::{SlotSockets, WorkerCommand};
use token::Event;

/// Past the workers' own drain timeout, how long the supervisor waits before it kills them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

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
enum SupervisorPhase {
    /// The first generation is starting; nothing announced yet.
    Starting,
    Serving,
    Draining {
        deadline: Instant,
    },
}

/// The service manager: readiness, stopping, the watchdog.
struct Manager {
    notifier: Notifier,
    next_watchdog: Option<Instant>,
}

/// What the exit code is made of.
#[derive(Default)]
struct Ending {
    forced: bool,
    failed: bool,
}

pub struct Supervisor {
    poll: Poll,
    signals: Signals,
    pool: Pool,
    phase: SupervisorPhase,
    reloads: Reloads,
    counters: Counters,
    metrics: Option<MetricsEndpoint>,
    steering: Steering,
    manager: Manager,
    drain_timeout: Duration,
    ending: Ending,
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
            Some(l) => Some(MetricsEndpoint::new(l, poll.registry())?),
            None => None,
        };
        let now = Instant::now();
        Ok(Supervisor {
            poll,
            signals,
            steering: Steering::new(config.sockets.steer_fds()),
            pool: Pool::new(
                config.workers,
                Spawner {
                    sockets: config.sockets,
                    command: config.command,
                },
            ),
            phase: SupervisorPhase::Starting,
            reloads: Reloads::default(),
            counters: Counters::new(&config.server, now),
            metrics,
            manager: Manager {
                next_watchdog: config.notifier.watchdog_interval().map(|_| now),
                notifier: config.notifier,
            },
            drain_timeout: config.server.drain_timeout,
            ending: Ending::default(),
        })
    }

    /// Starts the workers; once every one is ready calls `on_ready` (which announces the
    /// server); supervises until a stop signal has drained every worker.
    pub fn run(
        mut self,
        on_ready: impl FnOnce() -> io::Result<()>,
    ) -> Result<SupervisorSummary, Box<dyn std::error::Error>> {
        let mut on_ready = Some(on_ready);
        for slot in 0..self.pool.slots.len() as u32 {
            self.pool.spawn(slot, 0, self.poll.registry())?;
        }
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            io_outcome::poll(&mut self.poll, &mut events, timeout)?;
            let now = Instant::now();
            for event in events.iter() {
                self.dispatch(event.token(), now)?;
            }
            self.after_turn(now);
            if self.reloads.deferred && !self.pool.workers.values().any(|w| w.hand.since.is_some())
            {
                self.begin_reload(now, "SIGHUP");
            }
            self.on_timers(now)?;
            if self.phase == SupervisorPhase::Starting
                && self.pool.slots.iter().all(|s| s.current.is_some())
            {
                self.phase = SupervisorPhase::Serving;
                let workers = Count(self.pool.slots.len() as u64, "worker");
                info!("{workers} ready");
                if let Some(f) = on_ready.take() {
                    f()?;
                }
                self.manager
                    .notifier
                    .ready(&format!("serving with {workers}"));
                self.update_steering();
            }
            let ready = self.phase == SupervisorPhase::Serving
                && !self.pool.workers.values().any(|w| w.hand.since.is_some());
            if let Some(m) = &mut self.metrics {
                m.set_ready(ready);
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
            if matches!(self.phase, SupervisorPhase::Draining { .. })
                && self.pool.workers.is_empty()
            {
                break;
            }
        }
        self.finish_round();
        self.counters
            .log_final(self.pool.restarts, self.reloads.completed);
        Ok(SupervisorSummary {
            total: self.counters.retired,
            forced: self.ending.forced,
            failed: self.ending.failed,
        })
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let drain = match self.phase {
            SupervisorPhase::Draining { deadline } => Some(deadline),
            _ => None,
        };
        let [round, stats] = self.counters.next_deadline();
        until_earliest(
            now,
            [
                drain,
                self.pool.ready_deadline(),
                self.reloads.current.as_ref().map(|r| r.deadline),
                round,
                self.pool.restart_deadline(),
                stats,
                self.manager.next_watchdog,
                self.metrics
                    .as_ref()
                    .and_then(MetricsEndpoint::next_deadline),
            ],
        )
    }

    fn dispatch(&mut self, t: mio::Token, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        match token::decode(t) {
            Event::Signals => self.on_signals(now)?,
            Event::Channel(id) => self.on_channel(id, now),
            Event::Other(t) => {
                // The endpoint's own tokens; it answers once the workers' counters are in.
                let handled = self
                    .metrics
                    .as_mut()
                    .is_some_and(|m| m.on_event(self.poll.registry(), t, now, None));
                if !handled {
                    debug!("supervisor: event for token {}: ignored", t.0);
                }
            }
        }
        Ok(())
    }

    fn on_signals(&mut self, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap(now)?,
                // One signal upgrades in either mode: SIGUSR2 is a single server's.
                SIGHUP | SIGUSR2 => self.begin_reload(now, signal_name(sig)),
                SIGUSR1 => {
                    // Each worker logs its own counters; the supervisor the total.
                    self.pool.signal_all(SIGUSR1);
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
                    if matches!(self.phase, SupervisorPhase::Draining { .. }) {
                        warn!("{name} again: the workers exit now");
                        self.ending.forced = true;
                        self.pool.signal_all(SIGTERM);
                    } else {
                        info!(
                            "{name}: shutting down {}",
                            Count(self.pool.workers.len() as u64, "worker")
                        );
                        self.begin_drain(now);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn begin_drain(&mut self, now: Instant) {
        self.phase = SupervisorPhase::Draining {
            deadline: now
                .checked_add(self.drain_timeout + DRAIN_GRACE)
                .unwrap_or(now + crate::units::MAX_DURATION),
        };
        self.manager.notifier.stopping();
        self.reloads.current = None;
        self.reloads.deferred = false;
        for s in &mut self.pool.slots {
            s.restart_at = None;
        }
        for w in self.pool.workers.values_mut() {
            w.change(Change::Drain, now);
        }
    }

    fn on_timers(&mut self, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(m) = &mut self.metrics {
            m.on_timer(now);
        }
        let m = &mut self.manager;
        if let (Some(due), Some(every)) = (m.next_watchdog, m.notifier.watchdog_interval())
            && now >= due
        {
            m.notifier.watchdog();
            m.next_watchdog = Some(now + every);
        }
        if let SupervisorPhase::Draining { deadline } = self.phase
            && now >= deadline
            && !self.pool.workers.is_empty()
        {
            warn!(
                "{} still running past the drain timeout: killed",
                Count(self.pool.workers.len() as u64, "worker")
            );
            self.ending.forced = true;
            self.pool.signal_all(libc::SIGKILL);
            self.phase = SupervisorPhase::Draining {
                deadline: now + crate::units::MAX_DURATION,
            };
        }
        for id in self.pool.late(now) {
            if let Some(w) = self.pool.workers.get_mut(&id) {
                error!(
                    "{}: not ready after {}: stopped",
                    w.name(),
                    crate::units::show(pool::READY_TIMEOUT)
                );
                w.change(Change::Kill, now);
                if self.phase == SupervisorPhase::Starting {
                    return Err("a worker did not start".into());
                }
            }
        }
        if self
            .reloads
            .current
            .as_ref()
            .is_some_and(|r| now >= r.deadline)
        {
            error!(
                "reload abandoned: the new workers were not ready in time; the running workers go on"
            );
            self.abandon_reload();
        }
        if self.phase == SupervisorPhase::Serving {
            self.restart_due(now);
        }
        if self.counters.stats_due(now) {
            self.ask_counters(
                Purposes {
                    stats_line: true,
                    ..Purposes::default()
                },
                now,
            );
        }
        if self.counters.round_late(now) {
            self.finish_round();
        }
        Ok(())
    }
}

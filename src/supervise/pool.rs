//! The workers: each one's state and its one transition function, the slots they serve, the
//! restart back-off of a slot whose worker died, and the reaping of those that exited.
//!
//! ```text
//!   Starting ──Ready──▶ Serving ──Drain (SIGTERM)───────▶ Draining ──exit──▶ removed
//!                          └──────HandOver (a message)──▶ Draining
//!       └───────────────────┴──Kill (SIGKILL)──▶ Draining
//! ```

use std::collections::HashMap;
use std::io;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::spawn::{Spawner, describe, signal};
use super::token;
use super::{Supervisor, SupervisorPhase};
use crate::serve::Stats;
use crate::serve::control::{Channel, ToWorker};
use crate::serve::logs::Count;

/// A worker that is not ready this long after it was spawned has failed.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Restart back-off: the first restart waits this long, each failure in a row doubles it...
const RESTART_FIRST: Duration = Duration::from_millis(100);
/// ... up to this.
pub(super) const RESTART_MAX: Duration = Duration::from_secs(10);
/// Descriptors the channels' queues may hold before the supervisor stops reading the moves of
/// old workers (far under any open-file limit it runs with).
const STALL_FDS: usize = 2048;
/// A worker that served this long before dying starts its slot's back-off again from the first.
const RESTART_FORGIVE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerState {
    Starting,
    Serving,
    Draining,
}

/// What moves a worker from one state to the next.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    /// It said it serves, under this limit.
    Ready { max_connections: u64 },
    /// Drain (SIGTERM), unless it drains already: a second SIGTERM would make it exit at once,
    /// dropping what its connections are still owed.
    Drain,
    /// Stop at once (SIGKILL).
    Kill,
    /// Move every connection to the new generation, then exit (a message, not a signal: a
    /// signal to a worker that drains already forces it out).
    HandOver,
}

/// A worker's part in reloads' hand-overs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HandOverPart {
    /// The hand-over format it reads and writes (0: none).
    pub(super) version: u32,
    /// As a new worker: connections placed on it.
    pub(super) moved_in: u64,
    /// As an old worker: when it was asked to move its connections...
    pub(super) since: Option<Instant>,
    /// ... how many were placed on new workers, and how many came back (no room) to drain.
    pub(super) placed: u64,
    pub(super) kept: u64,
}

/// What a worker last said about its room.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Capacity {
    pub(super) max_connections: u64,
    /// Below its limit: a hand-off may be sent to it.
    pub(super) room: bool,
    /// New connections may be steered to it.
    pub(super) steer: bool,
}

pub(super) struct Worker {
    pub(super) slot: u32,
    pub(super) generation: u32,
    child: Child,
    pub(super) channel: Option<Channel>,
    state: WorkerState,
    pub(super) spawned: Instant,
    pub(super) ready_at: Option<Instant>,
    pub(super) capacity: Capacity,
    /// The counters last reported, and the final ones if it sent them.
    pub(super) last: Stats,
    pub(super) last_final: Option<(Stats, bool)>,
    pub(super) hand: HandOverPart,
}

impl Worker {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn state(&self) -> WorkerState {
        self.state
    }

    /// `worker 1 (pid 1234)`, with the generation after a reload.
    pub(super) fn name(&self) -> String {
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

    /// The one place a worker's state changes; false if `change` does not apply to it now (a
    /// second Ready, a Drain of one draining).
    pub(super) fn change(&mut self, change: Change, now: Instant) -> bool {
        match (self.state, change) {
            (WorkerState::Serving, Change::HandOver) => {
                let Some(ch) = self.channel.as_mut() else {
                    return false;
                };
                if let Err(e) = ch.post(&ToWorker::HandOver, Vec::new()) {
                    debug!("{}: hand-over: {e}", self.name());
                    return false;
                }
                self.state = WorkerState::Draining;
                self.hand.since = Some(now);
            }
            (_, Change::HandOver) => return false,
            (WorkerState::Starting, Change::Ready { max_connections }) => {
                self.state = WorkerState::Serving;
                self.ready_at = Some(now);
                self.capacity = Capacity {
                    max_connections,
                    room: true,
                    steer: true,
                };
            }
            (_, Change::Ready { .. }) | (WorkerState::Draining, Change::Drain) => return false,
            (_, Change::Drain) => {
                self.state = WorkerState::Draining;
                signal(self.pid(), libc::SIGTERM);
            }
            (_, Change::Kill) => {
                self.state = WorkerState::Draining;
                signal(self.pid(), libc::SIGKILL);
            }
        }
        true
    }
}

/// One worker position: slot `i` has its own sockets (or shares the set) and one current worker.
#[derive(Default)]
pub(super) struct WorkerSlot {
    /// The worker serving it (the newest that is ready).
    pub(super) current: Option<u64>,
    /// Deaths in a row without a long enough life between them.
    failures: u32,
    pub(super) restart_at: Option<Instant>,
    /// The generation a restart belongs to: the one of the worker that died.
    pub(super) generation: u32,
}

impl WorkerSlot {
    /// The worker that served it died (`ready_at`: when it became ready): when to restart it.
    fn back_off(&mut self, generation: u32, ready_at: Option<Instant>, now: Instant) -> Duration {
        self.generation = generation;
        if ready_at.is_some_and(|t| now.saturating_duration_since(t) >= RESTART_FORGIVE) {
            self.failures = 0;
        }
        let delay = RESTART_FIRST
            .saturating_mul(1u32 << self.failures.min(10))
            .min(RESTART_MAX);
        self.failures += 1;
        self.restart_at = Some(now + delay);
        delay
    }

    /// A restart that could not even start a process: try again at the longest back-off.
    pub(super) fn retry_later(&mut self, now: Instant) {
        self.failures += 1;
        self.restart_at = Some(now + RESTART_MAX);
    }

    /// A new worker took the slot through a reload: its back-off starts afresh.
    pub(super) fn forgive(&mut self) {
        self.failures = 0;
    }
}

/// Every worker alive, by id, and the slots.
pub(super) struct Pool {
    pub(super) workers: HashMap<u64, Worker>,
    pub(super) slots: Vec<WorkerSlot>,
    next_id: u64,
    pub(super) spawner: Spawner,
    /// Workers restarted after they died.
    pub(super) restarts: u64,
    /// Old workers whose channel is not read for now: the connections they move wait in the
    /// new workers' queues (each holds descriptors here) until those drain.
    pub(super) stalled: Vec<u64>,
}

impl Pool {
    pub(super) fn new(slots: usize, spawner: Spawner) -> Pool {
        Pool {
            workers: HashMap::new(),
            slots: (0..slots).map(|_| WorkerSlot::default()).collect(),
            next_id: 0,
            spawner,
            restarts: 0,
            stalled: Vec::new(),
        }
    }

    /// Starts a worker for `slot` of `generation`, its channel in the poll.
    pub(super) fn spawn(
        &mut self,
        slot: u32,
        generation: u32,
        registry: &Registry,
    ) -> io::Result<u64> {
        let (child, channel) = self.spawner.start(slot, generation)?;
        let id = self.next_id;
        self.next_id += 1;
        let w = Worker {
            slot,
            generation,
            child,
            channel: Some(channel),
            state: WorkerState::Starting,
            spawned: Instant::now(),
            ready_at: None,
            capacity: Capacity::default(),
            last: Stats::default(),
            last_final: None,
            hand: HandOverPart::default(),
        };
        // Registered once it is in the table: a failure leaves it to be reaped like any other.
        let raw = w.channel.as_ref().map(Channel::raw);
        info!("{}: started", w.name());
        self.workers.insert(id, w);
        if let Some(raw) = raw {
            // Writable too: a hand-over's messages can fill the channel, and the edge of room
            // again sends what was queued.
            registry.register(
                &mut SourceFd(&raw),
                token::channel(id),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        Ok(id)
    }

    /// The worker serving `slot`, if any.
    pub(super) fn current(&self, slot: u32) -> Option<(u64, &Worker)> {
        let id = self.slots.get(slot as usize)?.current?;
        Some((id, self.workers.get(&id)?))
    }

    /// Closes `w`'s end of its channel (it is exiting, or gone).
    pub(super) fn close_channel(w: &mut Worker, registry: &Registry) {
        if let Some(ch) = w.channel.take() {
            let _ = registry.deregister(&mut SourceFd(&ch.raw()));
        }
    }

    pub(super) fn signal_all(&self, sig: i32) {
        for w in self.workers.values() {
            signal(w.pid(), sig);
        }
    }

    /// Descriptors held in the channels' queues.
    fn queued_fds(&self) -> usize {
        self.workers
            .values()
            .filter_map(|w| w.channel.as_ref())
            .map(Channel::queued_fds)
            .sum()
    }

    /// Whether old worker `id`'s channel must not be read for now: too many descriptors wait
    /// in the queues already (each is one of this process's open files). It is read again by
    /// [`Pool::take_resumed`].
    pub(super) fn stall(&mut self, id: u64) -> bool {
        if self.queued_fds() < STALL_FDS {
            return false;
        }
        if !self.stalled.contains(&id) {
            self.stalled.push(id);
        }
        true
    }

    /// The stalled workers to read again, once the queues are down to half the mark.
    pub(super) fn take_resumed(&mut self) -> Vec<u64> {
        if self.stalled.is_empty() || self.queued_fds() >= STALL_FDS / 2 {
            return Vec::new();
        }
        std::mem::take(&mut self.stalled)
    }

    /// The earliest moment a starting worker is late.
    pub(super) fn ready_deadline(&self) -> Option<Instant> {
        self.workers
            .values()
            .filter(|w| w.state == WorkerState::Starting)
            .map(|w| w.spawned + READY_TIMEOUT)
            .min()
    }

    pub(super) fn restart_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.restart_at).min()
    }

    /// The slots whose restart is due; their schedule is cleared.
    pub(super) fn take_due_restarts(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.restart_at.is_some_and(|t| now >= t) {
                s.restart_at = None;
                due.push(i as u32);
            }
        }
        due
    }

    /// The workers still starting past their deadline.
    pub(super) fn late(&self, now: Instant) -> Vec<u64> {
        self.workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Starting && now >= w.spawned + READY_TIMEOUT)
            .map(|(&id, _)| id)
            .collect()
    }
}

impl Supervisor {
    /// Reaps every worker that exited.
    pub(super) fn reap(&mut self, now: Instant) -> Result<(), Box<dyn std::error::Error>> {
        let exited: Vec<(u64, ExitStatus)> = self
            .pool
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
        let Some(mut w) = self.pool.workers.remove(&id) else {
            return Ok(());
        };
        Pool::close_channel(&mut w, self.poll.registry());
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
        let slot = w.slot as usize;
        if self.pool.slots[slot].current == Some(id) {
            self.pool.slots[slot].current = None;
        }
        if matches!(self.phase, SupervisorPhase::Draining { .. }) {
            self.counters.retire(stats, Some(name.clone()));
            if status.success() && w.last_final.as_ref().is_some_and(|(_, f)| !f) {
                info!("{name}: drained, {how}");
            } else {
                warn!("{name}: {how} while draining");
                self.ending.failed = true;
            }
            return Ok(());
        }
        self.counters.retire(stats, None);
        if w.state == WorkerState::Draining {
            let clean = status.success() && w.last_final.is_some();
            match w.hand.since {
                // What it had not sent yet is lost, as at any other death; what it sent is
                // placed (it was read off its channel before this).
                Some(_) if !clean => warn!(
                    "{name}: {how} during its hand-over, after {} had moved: the rest are closed",
                    Count(w.hand.placed, "connection")
                ),
                _ if !clean => warn!("{name}: {how} while draining"),
                _ => info!("{name}: drained, {how}"),
            }
            return Ok(());
        }
        let lost_note = if lost > 0 {
            format!(" ({} lost)", Count(lost, "connection"))
        } else {
            String::new()
        };
        if self.phase == SupervisorPhase::Starting {
            // The server never started: say why and stop the others.
            self.begin_drain(now);
            return Err(format!("{name} {how} before it was ready").into());
        }
        if self.reloads.of_generation(w.generation) {
            error!("reload abandoned: {name} {how} before it was ready; the running workers go on");
            self.abandon_reload();
            return Ok(());
        }
        let delay = self.pool.slots[slot].back_off(w.generation, w.ready_at, now);
        warn!(
            "{name}: {how}{lost_note}; restarting in {}",
            crate::units::show(delay)
        );
        self.update_steering();
        Ok(())
    }

    /// Restarts the slots whose back-off is over.
    pub(super) fn restart_due(&mut self, now: Instant) {
        for slot in self.pool.take_due_restarts(now) {
            self.pool.restarts += 1;
            let generation = self.pool.slots[slot as usize].generation;
            if let Err(e) = self.pool.spawn(slot, generation, self.poll.registry()) {
                self.pool.slots[slot as usize].retry_later(now);
                error!(
                    "cannot restart worker {slot}: {e}; trying again in {}",
                    crate::units::show(RESTART_MAX)
                );
            }
        }
    }
}

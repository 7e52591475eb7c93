//! SIGHUP: a new generation of workers from the binary on disk, on the same sockets; once every
//! one of them is ready, each takes its slot and the worker it replaces hands its connections
//! over ([`super::handover`]) or drains. A new worker
//! that fails (exits, speaks another control protocol, is not ready in time) abandons the
//! reload, and the old workers go on.

use std::time::Instant;

use super::pool::{Change, READY_TIMEOUT, WorkerState};
use super::{Supervisor, SupervisorPhase};

/// A reload under way.
pub(super) struct Reload {
    generation: u32,
    pub(super) deadline: Instant,
}

/// The reloads of one supervisor's life.
#[derive(Default)]
pub(super) struct Reloads {
    pub(super) current: Option<Reload>,
    /// The newest generation started.
    pub(super) generation: u32,
    /// Reloads completed.
    pub(super) completed: u64,
    /// Connections the reloads' hand-overs placed on a new worker (the old workers that counted
    /// them out are gone, so this is the figure that lasts).
    pub(super) moved: u64,
    /// A SIGHUP came while the last reload's old workers still moved their connections: the
    /// reload starts once they are gone (a generation asked to hand over while connections
    /// still move in to it would drain those).
    pub(super) deferred: bool,
}

impl Reloads {
    /// Whether the reload under way is the one of `generation`.
    pub(super) fn of_generation(&self, generation: u32) -> bool {
        self.current
            .as_ref()
            .is_some_and(|r| r.generation == generation)
    }
}

impl Supervisor {
    pub(super) fn begin_reload(&mut self, now: Instant, name: &str) {
        let moving = self.pool.workers.values().any(|w| w.hand.since.is_some());
        match self.phase {
            SupervisorPhase::Serving if self.reloads.current.is_none() && moving => {
                if !self.reloads.deferred {
                    info!(
                        "{name}: the last reload's hand-over is under way: reloading once it is done"
                    );
                    self.reloads.deferred = true;
                }
                return;
            }
            SupervisorPhase::Serving if self.reloads.current.is_none() => {}
            SupervisorPhase::Serving => {
                warn!("{name}: a reload is already under way");
                return;
            }
            _ => {
                warn!("{name}: not serving yet, or shutting down: no reload");
                return;
            }
        }
        self.reloads.deferred = false;
        self.reloads.generation += 1;
        let generation = self.reloads.generation;
        info!(
            "{name}: reloading: starting generation {generation} from {}",
            self.pool.spawner.exe(generation).display()
        );
        for slot in 0..self.pool.slots.len() as u32 {
            if let Err(e) = self.pool.spawn(slot, generation, self.poll.registry()) {
                error!("reload abandoned: cannot start a worker: {e}; the running workers go on");
                self.abandon_reload();
                return;
            }
        }
        self.reloads.current = Some(Reload {
            generation,
            deadline: now + READY_TIMEOUT,
        });
    }

    /// Stops the new generation's workers; the old ones go on.
    pub(super) fn abandon_reload(&mut self) {
        let generation = self.reloads.generation;
        self.reloads.current = None;
        let now = Instant::now();
        for w in self.pool.workers.values_mut() {
            if w.generation == generation {
                w.change(Change::Drain, now);
            }
        }
    }

    /// A worker of the reload became ready: if every one is, each takes its slot, and the one
    /// it replaces drains.
    pub(super) fn on_reload_ready(&mut self, generation: u32, now: Instant) {
        let all = self
            .pool
            .workers
            .values()
            .filter(|w| w.generation == generation)
            .all(|w| w.state() == WorkerState::Serving);
        if !all {
            return;
        }
        let Some(r) = self.reloads.current.take() else {
            return;
        };
        let new: Vec<(u64, u32)> = self
            .pool
            .workers
            .iter()
            .filter(|(_, w)| w.generation == r.generation && w.state() == WorkerState::Serving)
            .map(|(&id, w)| (id, w.slot))
            .collect();
        for (id, slot) in new {
            let s = &mut self.pool.slots[slot as usize];
            let old = s.current.replace(id);
            s.forgive();
            if let Some(old) = old {
                self.replace(old, r.generation, now);
            }
        }
        self.reloads.completed += 1;
        info!(
            "reload complete: generation {} serving; the previous workers hand over or drain",
            r.generation
        );
        self.update_steering();
    }
}

//! Where connections go: new ones are steered ([`super::steer`]) to the slots whose worker is
//! serving and below its limit; one that still reaches a full worker (it arrived before the
//! steering changed, or every worker is full) comes back over the channel and is routed to one
//! with room, or back to be refused when none has.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use super::Supervisor;
use super::pool::WorkerState;
use super::steer;
use crate::serve::control::ToWorker;

/// The steering programs of the listeners' reuse-port groups.
pub(super) struct Steering {
    /// One listener of each address's group; empty when the sockets are shared.
    fds: Vec<RawFd>,
    /// False once the kernel refused a program: the hash chooses from then on.
    enabled: bool,
    /// The open slots the programs attached now steer to.
    steered: Option<Vec<u32>>,
}

impl Steering {
    pub(super) fn new(fds: Vec<RawFd>) -> Steering {
        Steering {
            enabled: !fds.is_empty(),
            fds,
            steered: None,
        }
    }

    /// Attaches the program for `open`, if that changed.
    fn steer(&mut self, open: Vec<u32>) {
        if !self.enabled || self.steered.as_ref() == Some(&open) {
            return;
        }
        for &fd in &self.fds {
            if let Err(e) = steer::steer(fd, &open) {
                warn!(
                    "cannot steer connections ({e}): the kernel's hash chooses the worker; \
                     full workers hand connections on"
                );
                self.enabled = false;
                return;
            }
        }
        debug!("steering new connections to slots {open:?}");
        self.steered = Some(open);
    }
}

impl Supervisor {
    /// Steers new connections to the slots open now.
    pub(super) fn update_steering(&mut self) {
        if self.phase == super::SupervisorPhase::Starting {
            return;
        }
        let open: Vec<u32> = (0..self.pool.slots.len() as u32)
            .filter(|&slot| {
                self.pool
                    .current(slot)
                    .is_some_and(|(_, w)| w.state() == WorkerState::Serving && w.capacity.steer)
            })
            .collect();
        self.steering.steer(open);
    }

    /// A full worker's connection: to a worker with room (not tried yet), or back to the one
    /// that accepted it to be refused.
    pub(super) fn route(&mut self, from: u64, fd: OwnedFd, mut tried: Vec<u32>) {
        let n = self.pool.slots.len() as u32;
        let origin_slot = self.pool.workers.get(&from).map_or(0, |w| w.slot);
        let candidate = (1..=n)
            .map(|k| (origin_slot + k) % n)
            .filter(|s| !tried.contains(s))
            .filter_map(|s| self.pool.current(s))
            .find(|(_, w)| w.state() == WorkerState::Serving && w.capacity.room)
            .map(|(id, _)| id);
        let (to, last) = match candidate {
            Some(to) => (to, false),
            None => (from, true),
        };
        let Some(w) = self.pool.workers.get(&to) else {
            // Its worker is gone: the client sees the connection close.
            return;
        };
        let Some(ch) = w.channel.as_ref() else {
            return;
        };
        if !last {
            tried.push(w.slot);
        }
        if let Err(e) = ch.send(&ToWorker::HandOff { tried, last }, Some(fd.as_fd())) {
            debug!("hand-off: {e}");
        }
    }
}

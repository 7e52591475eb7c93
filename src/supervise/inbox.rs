//! What the workers say over their channels: ready (or another protocol), their room, their
//! counters, and connections they could not take.

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::pool::{Change, Pool};
use super::{Supervisor, SupervisorPhase};
use crate::serve::control::{PROTOCOL, Received, ToSupervisor};
use crate::serve::logs::Count;

impl Supervisor {
    /// Sends what waits for worker `id`'s channel, and reads every message waiting on it
    /// (but no more from a worker whose moves the new workers' queues cannot take yet).
    pub(super) fn on_channel(&mut self, id: u64, now: Instant) {
        loop {
            let Some(w) = self.pool.workers.get_mut(&id) else {
                return;
            };
            let Some(ch) = &mut w.channel else { return };
            if let Err(e) = ch.flush() {
                debug!("{}: channel: {e}", w.name());
            }
            let moving = w.hand.since.is_some();
            if moving && self.pool.stall(id) {
                return;
            }
            let Some(ch) = self.pool.workers.get(&id).and_then(|w| w.channel.as_ref()) else {
                return;
            };
            match ch.recv::<ToSupervisor>() {
                Ok(Received::Message(msg, fds)) => self.on_message(id, msg, fds, now),
                Ok(Received::WouldBlock) => return,
                Ok(Received::Closed) | Err(_) => {
                    // The worker is exiting; SIGCHLD follows. Its channel is done.
                    if let Some(w) = self.pool.workers.get_mut(&id) {
                        Pool::close_channel(w, self.poll.registry());
                    }
                    self.no_longer_waiting(id);
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, id: u64, msg: ToSupervisor, fds: Vec<OwnedFd>, now: Instant) {
        match msg {
            ToSupervisor::Ready {
                protocol,
                version,
                max_connections,
                handover,
            } => {
                if let Some(w) = self.pool.workers.get_mut(&id) {
                    w.hand.version = handover;
                }
                self.on_ready(id, protocol, &version, max_connections, now)
            }
            ToSupervisor::Capacity { room, steer } => {
                if let Some(w) = self.pool.workers.get_mut(&id) {
                    w.capacity.room = room;
                    w.capacity.steer = steer;
                    debug!("{}: room {room}, steered to {steer}", w.name());
                }
                self.update_steering();
            }
            ToSupervisor::Report { seq, stats } => {
                if let Some(w) = self.pool.workers.get_mut(&id) {
                    w.last = stats;
                }
                self.on_report(id, seq);
            }
            ToSupervisor::Final { stats, forced } => {
                if let Some(w) = self.pool.workers.get_mut(&id) {
                    w.last = stats.clone();
                    w.last_final = Some((stats, forced));
                }
            }
            ToSupervisor::HandOff { tried } => match fds.into_iter().next() {
                Some(fd) => self.route(id, fd, tried),
                None => debug!("a hand-off without its connection: ignored"),
            },
            ToSupervisor::Move { conn } => self.place(id, conn, fds),
            ToSupervisor::MovedAll { count } => self.on_moved_all(id, count, now),
        }
    }

    fn on_ready(&mut self, id: u64, protocol: u32, version: &str, max: u64, now: Instant) {
        let Some(w) = self.pool.workers.get_mut(&id) else {
            return;
        };
        if protocol != PROTOCOL {
            error!(
                "{}: upecho {version} speaks control protocol {protocol}, this supervisor {PROTOCOL}: stopped",
                w.name()
            );
            w.change(Change::Drain, now);
            if self.reloads.of_generation(w.generation) {
                error!("reload abandoned; the running workers go on");
                self.abandon_reload();
            }
            return;
        }
        if !w.change(
            Change::Ready {
                max_connections: max,
            },
            now,
        ) {
            return;
        }
        info!(
            "{}: ready (upecho {version}, up to {})",
            w.name(),
            Count(max, "connection")
        );
        let (slot, generation) = (w.slot as usize, w.generation);
        if self.reloads.of_generation(generation) {
            self.on_reload_ready(generation, now);
        } else if generation == self.reloads.generation || self.phase == SupervisorPhase::Starting {
            // A first start or a restart: the slot is this worker's.
            self.pool.slots[slot].current = Some(id);
            self.update_steering();
        }
    }
}

//! A reload's hand-over: once the new generation is ready, each old worker is asked to move
//! every connection; each one it moves ([`ToSupervisor::Move`], the socket and a memfd of its
//! owed output) is placed on the new worker with the fewest moved in so far among those that
//! read the old worker's format and have room under `--max-connections`, or sent back to the
//! old worker, which drains it as before. Once the old worker says it moved them all, it is
//! told every one is placed, and it exits as soon as it has none left.
//!
//! The new workers must read the format the old one writes (their `Ready` says which): if they
//! do not, the old workers drain, as a reload did before hand-overs.
//!
//! [`ToSupervisor::Move`]: crate::serve::control::ToSupervisor::Move

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::Supervisor;
use super::pool::{Change, WorkerState};
use crate::serve::control::ToWorker;
use crate::serve::handover::Moving;
use crate::serve::logs::Count;

impl Supervisor {
    /// The reload of `generation` is complete and `old` is the worker one of its workers
    /// replaces: it moves its connections if the new generation reads its format, else drains.
    pub(super) fn replace(&mut self, old: u64, generation: u32, now: Instant) {
        let Some(version) = self.pool.workers.get(&old).map(|w| w.hand.version) else {
            return;
        };
        let readers: Vec<u32> = self
            .pool
            .workers
            .values()
            .filter(|w| w.generation == generation)
            .map(|w| w.hand.version)
            .collect();
        let agree = version != 0 && readers.iter().all(|&v| v == version);
        let Some(w) = self.pool.workers.get_mut(&old) else {
            return;
        };
        if agree && w.change(Change::HandOver, now) {
            debug!(
                "{}: moving its connections to generation {generation}",
                w.name()
            );
            return;
        }
        if !agree {
            warn!(
                "{}: writes hand-over format {version}, generation {generation} reads {:?}: \
                 it drains its connections instead",
                w.name(),
                readers
            );
        }
        w.change(Change::Drain, now);
    }

    /// One moved connection from old worker `from`: onto a new worker, or back to drain.
    pub(super) fn place(&mut self, from: u64, conn: Moving, fds: Vec<OwnedFd>) {
        let Some(origin) = self.pool.workers.get(&from) else {
            return;
        };
        let origin_generation = origin.generation;
        let target = self
            .pool
            .workers
            .iter()
            .filter(|(_, w)| {
                w.generation != origin_generation
                    && w.state() == WorkerState::Serving
                    && w.hand.version == conn.version
                    && w.capacity.room
                    && w.hand.moved_in < w.capacity.max_connections
                    && w.channel.is_some()
            })
            .min_by_key(|(id, w)| (w.hand.moved_in, **id))
            .map(|(&id, _)| id);
        let to = target.unwrap_or(from);
        let Some(w) = self.pool.workers.get_mut(&to) else {
            return;
        };
        let Some(ch) = w.channel.as_mut() else {
            return;
        };
        if let Err(e) = ch.post(&ToWorker::Adopt { conn }, fds) {
            // Its worker is gone: the client sees the connection close.
            debug!("{}: adopt: {e}", w.name());
            return;
        }
        if target.is_some() {
            w.hand.moved_in += 1;
            self.reloads.moved += 1;
        }
        if let Some(o) = self.pool.workers.get_mut(&from) {
            if target.is_some() {
                o.hand.placed += 1;
            } else {
                o.hand.kept += 1;
            }
        }
    }

    /// Old worker `id` moved all its connections: every one has been placed (in order, before
    /// this), so it may go once it has none.
    pub(super) fn on_moved_all(&mut self, id: u64, count: u64, now: Instant) {
        let Some(w) = self.pool.workers.get_mut(&id) else {
            return;
        };
        let took = w.hand.since.map_or(0.0, |t| {
            now.saturating_duration_since(t).as_secs_f64() * 1e3
        });
        let (placed, kept) = (w.hand.placed, w.hand.kept);
        let name = w.name();
        if let Some(ch) = w.channel.as_mut()
            && let Err(e) = ch.post(&ToWorker::HandOverEnd, Vec::new())
        {
            debug!("{name}: hand-over end: {e}");
        }
        let kept_note = if kept > 0 {
            format!("; {} had no room and drain here", Count(kept, "connection"))
        } else {
            String::new()
        };
        info!(
            "{name}: handed over {} of {count} in {took:.0} ms{kept_note}",
            Count(placed, "connection")
        );
    }

    /// Sends what the channels' queues hold, and reads again the old workers that waited for
    /// room in them.
    pub(super) fn after_turn(&mut self, now: Instant) {
        for w in self.pool.workers.values_mut() {
            if let Some(ch) = w.channel.as_mut()
                && ch.queued() > 0
                && let Err(e) = ch.flush()
            {
                debug!("{}: channel: {e}", w.name());
            }
        }
        for id in self.pool.take_resumed() {
            self.on_channel(id, now);
        }
    }
}

//! The reactor's side of running as a supervised worker (`--workers`): what the supervisor says
//! over the control channel, connections handed on by a full sibling (adopted), and the
//! hand-over of a reload, out (every connection with its state, then exit) and in (registered
//! and served as if nothing happened). Kept beside the loop, not in it: a single server runs
//! only the hand-over out, when it upgrades (SIGUSR2), with its successor as the carrier.

// The loop's own vocabulary (its parts, their types, the log macros), as in reactor.rs.
use super::*;
use std::collections::VecDeque;

use crate::serve::control::ToWorker;
use crate::serve::handover::pack;
use crate::serve::upgrade::Successor;

impl Server {
    /// Messages from the supervisor: connections handed over, requests for the counters, or
    /// the end of the channel.
    pub(super) fn on_control(&mut self, now: Instant) {
        let Some(inbox) = self.control.as_mut().map(WorkerLink::read) else {
            return;
        };
        for seq in inbox.reports {
            self.fill_own_counters(now);
            if let Some(c) = &self.control {
                c.report(seq, &self.stats);
            }
        }
        for a in inbox.adopt {
            self.adopt(a, now);
        }
        for (m, fds) in inbox.moved {
            self.take_over(m, fds, now);
        }
        if inbox.hand_over {
            self.begin_hand_over(now);
        }
        if inbox.hand_over_end
            && let Some(o) = &mut self.outgoing
        {
            o.ended = true;
            info!("hand-over done: {} moved", Count(o.sent, "connection"));
        }
        self.pump_outgoing(now);
        if inbox.orphaned {
            warn!("the supervisor is gone: shutting down");
            if let Some(mut o) = self.outgoing.take() {
                for l in o.take_rest() {
                    self.resume(l, now);
                }
            }
            self.begin_shutdown(now);
        }
    }

    /// A reload: stop reading, take every connection out of the table, and send them to the
    /// supervisor for the new generation as fast as the channel takes them. Whatever comes
    /// back (no new worker had room) is drained here, as a drain would.
    pub(super) fn begin_hand_over(&mut self, now: Instant) {
        if self.outgoing.is_some() {
            return;
        }
        self.begin_shutdown(now);
        let mut leaving = Vec::with_capacity(self.conns.len());
        for key in self.conns.keys() {
            let idle_left = self.idle.as_ref().and_then(|i| i.left(key));
            let header_left = if self.conns.awaiting_header(key) {
                self.header_wait.as_ref().and_then(|w| w.left(key))
            } else {
                None
            };
            if let Some((conn, meta)) = self.conns.take(key, self.poll.registry(), &mut self.stats)
            {
                self.acceptor.on_close();
                leaving.push(Leaving {
                    conn,
                    meta,
                    idle_left,
                    header_left,
                });
            }
        }
        let to = match &self.successor {
            Some(s) => format!("pid {}", s.pid()),
            None => "the new generation".into(),
        };
        info!(
            "handing over {} to {to}",
            Count(leaving.len() as u64, "connection")
        );
        self.outgoing = Some(Outgoing::new(leaving));
    }

    /// Sends what the channel takes of a hand-over (to the supervisor, or to a successor);
    /// drains here what could not go.
    pub(super) fn pump_outgoing(&mut self, now: Instant) {
        let Some(o) = &mut self.outgoing else {
            if let Some(link) = &mut self.control {
                link.flush();
            }
            return;
        };
        let carrier: &mut dyn Carrier = match (&mut self.control, &mut self.successor) {
            (Some(link), _) => {
                link.flush();
                link
            }
            (None, Some(s)) => {
                s.flush();
                s
            }
            (None, None) => return,
        };
        let before = o.sent;
        let alive = o.pump(carrier, now);
        self.stats.moved_out += o.sent - before;
        let rest = if alive {
            std::mem::take(&mut o.kept)
        } else {
            let rest = o.take_rest();
            self.outgoing = None;
            rest
        };
        for l in rest {
            self.resume(l, now);
        }
    }

    /// A connection moved from an old worker (or back to this one): served on as it was.
    pub(super) fn take_over(&mut self, m: Moving, fds: Vec<OwnedFd>, now: Instant) {
        match handover::unpack(&m, fds, now) {
            Ok((conn, meta)) => {
                self.stats.moved_in += 1;
                let l = Leaving {
                    conn,
                    meta,
                    idle_left: m.idle_left(),
                    header_left: m.header_left(),
                };
                // One that comes while this worker hands over is one of its own coming back
                // (no new worker had room, or they drain): it drains here. Sent on again, it
                // would come back again, round and round until the drain timeout.
                self.resume(l, now);
            }
            Err(e) => warn!("a moved connection that cannot be taken over ({e}): closed"),
        }
    }

    /// Puts a connection back into the table with its clocks; it gets a turn at once.
    pub(super) fn resume(&mut self, l: Leaving, now: Instant) {
        let key =
            match self
                .conns
                .resume(l.conn, l.meta, self.poll.registry(), &mut self.stats, now)
            {
                Ok(key) => key,
                Err(e) => {
                    warn!("register a moved connection: {e}");
                    return;
                }
            };
        if let Some(idle) = &mut self.idle {
            match l.idle_left {
                Some(left) => idle.watch_for(key, left),
                None => idle.watch(key),
            }
        }
        if self.conns.awaiting_header(key)
            && let Some(w) = &mut self.header_wait
        {
            match l.header_left {
                Some(left) => w.watch_for(key, left),
                None => w.watch(key),
            }
        }
    }

    /// A connection a full sibling accepted: served here if there is room; else handed back
    /// for another, or refused when it was the last worker to try.
    pub(super) fn adopt(&mut self, a: Adopt, now: Instant) {
        let std = std::net::TcpStream::from(a.fd);
        // The client may have gone meanwhile: nothing to serve.
        let Ok(peer) = std.peer_addr() else { return };
        // Non-blocking already: the flag belongs to the socket, set where it was accepted.
        let stream = TcpStream::from_std(std);
        if !self.conns.full() && !self.life.draining() {
            self.serve_new(stream, peer, now);
            return;
        }
        let handed = !a.last
            && self
                .control
                .as_ref()
                .is_some_and(|c| c.hand_off(stream.as_fd(), a.tried));
        if !handed {
            drop(stream);
            self.acceptor
                .refuse(peer, self.conns.max(), now, &mut self.stats);
        }
    }
}

/// Where a hand-over's connections go: the supervisor, for the new generation (a reload), or
/// the successor (a single server's upgrade).
pub(super) trait Carrier {
    /// Messages waiting in the channel's queue.
    fn queued(&self) -> usize;
    /// Sends one connection; false once the other end is gone.
    fn move_conn(&mut self, conn: Moving, fds: Vec<OwnedFd>) -> bool;
    /// Says every connection has gone; false once the other end is gone.
    fn moved_all(&mut self, count: u64) -> bool;
}

impl Carrier for WorkerLink {
    fn queued(&self) -> usize {
        WorkerLink::queued(self)
    }
    fn move_conn(&mut self, conn: Moving, fds: Vec<OwnedFd>) -> bool {
        WorkerLink::move_conn(self, conn, fds)
    }
    fn moved_all(&mut self, count: u64) -> bool {
        WorkerLink::moved_all(self, count)
    }
}

impl Carrier for Successor {
    fn queued(&self) -> usize {
        Successor::queued(self)
    }
    fn move_conn(&mut self, conn: Moving, fds: Vec<OwnedFd>) -> bool {
        self.post(&ToWorker::Adopt { conn }, fds)
    }
    fn moved_all(&mut self, _count: u64) -> bool {
        self.post(&ToWorker::HandOverEnd, Vec::new())
    }
}

/// Messages waiting in the channel's queue past which the next connection waits in the table
/// of leaving ones instead (so descriptors and memfds are made only as fast as they go).
const IN_FLIGHT: usize = 64;

/// An old worker's hand-over under way: the connections still to send, and how far it got.
pub(super) struct Outgoing {
    leaving: VecDeque<Leaving>,
    pub(super) sent: u64,
    /// Failed to pack: drained here instead.
    pub(super) kept: Vec<Leaving>,
    announced: bool,
    /// The supervisor said every one is placed.
    pub(super) ended: bool,
}

impl Outgoing {
    pub(super) fn new(leaving: Vec<Leaving>) -> Outgoing {
        Outgoing {
            leaving: leaving.into(),
            sent: 0,
            kept: Vec::new(),
            announced: false,
            ended: false,
        }
    }

    /// Sends what the channel takes; says `ToSupervisor::MovedAll` after
    /// the last one. False if the supervisor is gone (what is left is the caller's to drain).
    pub(super) fn pump(&mut self, link: &mut dyn Carrier, now: Instant) -> bool {
        while link.queued() < IN_FLIGHT {
            let Some(l) = self.leaving.pop_front() else {
                if !self.announced {
                    self.announced = true;
                    return link.moved_all(self.sent);
                }
                return true;
            };
            match pack(l, now) {
                Ok((m, fds)) => {
                    if !link.move_conn(m, fds) {
                        return false;
                    }
                    self.sent += 1;
                }
                Err((l, e)) => {
                    log::warn!(
                        "hand-over: no memfd for what a connection owes ({e}): it drains here"
                    );
                    self.kept.push(*l);
                }
            }
        }
        true
    }

    /// Everything sent and placed.
    pub(super) fn done(&self) -> bool {
        self.ended && self.leaving.is_empty()
    }

    /// What was not sent yet (the supervisor is gone): drained here.
    pub(super) fn take_rest(&mut self) -> Vec<Leaving> {
        let mut rest: Vec<Leaving> = self.leaving.drain(..).collect();
        rest.append(&mut self.kept);
        rest
    }
}

//! The UDP flow: datagram ping-pong over a worker's share of the sockets (the event loop around
//! it is `worker`'s).
//!
//! Each socket is connected to the server (so the kernel drops anything from elsewhere and
//! `send`/`recv` need no address) and keeps `--depth` datagrams in flight. DepthSlot `i` of a socket
//! carries the sequence numbers `i, i + depth, i + 2 * depth, ...`, so a reply finds its slot by
//! `seq % depth` with no search. A datagram with no reply within `--timeout` is counted lost and
//! its slot moves on to the next sequence number; a reply that arrives after that is "late", not
//! a mismatch, and a second reply to a datagram already answered is a duplicate (each slot
//! remembers which of its last 64 datagrams were lost, to tell the two apart). The body after
//! the 8-byte sequence header is checked byte for byte, in late and duplicate replies too.
//!
//! Replies are received in batches (`recvmmsg`, [`RECV_BATCH`] at a time): a batch that comes
//! back short has emptied the receive queue, and a later datagram raises an edge of its own, so
//! the `WouldBlock` call that would confirm it is skipped; every datagram of a batch counts as
//! received when the batch was.
//!
//! At the end (`Stage::Drain`) nothing more is sent; the worker ends once no datagram is in
//! flight, and one still unanswered after `--timeout` is lost, as during the run.

mod lane;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::WorkerCtx;
use super::config::UDP_HEADER;
use super::payload::{encode_seq, udp_body_pos};
use super::stats::ErrorClass;
use super::worker::{Env, Flow, Readiness};
use crate::io_outcome::Outcome;
use crate::mmsg::Datagrams;
use crate::net::max_datagram;
use lane::{DepthSlotState, Lane, on_datagram};

/// Datagrams received from one socket per wake-up at most.
const RECV_BUDGET: usize = 4096;
/// Datagrams per `recvmmsg`: more than a socket usually has in flight (`--depth`), so a batch
/// nearly always comes back short, which ends the receive (see the module doc).
const RECV_BATCH: usize = 16;

/// The buffers of one `recvmmsg`, each one byte longer than any datagram, so that a truncated
/// one shows (it fills its slot).
type RecvBatch = Datagrams<RECV_BATCH>;

struct Sock {
    sock: UdpSocket,
    lane: Lane,
}

/// The UDP side of a worker (see the module doc).
pub(crate) struct UdpFlow {
    socks: Vec<Sock>,
    /// One datagram being built (sends), and the buffers replies are received into, reused for
    /// every datagram.
    out: Box<[u8]>,
    batch: RecvBatch,
}

impl UdpFlow {
    pub(crate) fn new(ctx: &WorkerCtx) -> UdpFlow {
        let cfg = ctx.cfg;
        UdpFlow {
            socks: Vec::with_capacity(ctx.nconns),
            out: vec![0u8; cfg.size].into_boxed_slice(),
            batch: RecvBatch::connected(max_datagram(&cfg.addr) + 1),
        }
    }
}

impl Flow for UdpFlow {
    fn open(&mut self, env: &mut Env, now: Instant) -> usize {
        let ctx = env.ctx;
        let cfg = ctx.cfg;
        for i in 0..ctx.nconns {
            let id = ctx.first_conn + i;
            match open_socket(cfg.addr, cfg.source_of(id)) {
                Ok(mut sock) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    let index = self.socks.len();
                    let r = env
                        .poll
                        .registry()
                        .register(&mut sock, Token(index), interest);
                    if let Err(e) = r {
                        env.counts
                            .errors
                            .count(ErrorClass::Local, || format!("register: {e}"));
                        continue;
                    }
                    let lane = Lane::new(index, id, cfg.depth, now);
                    self.socks.push(Sock { sock, lane });
                }
                Err(e) => {
                    let addr = cfg.addr;
                    env.counts.errors.count(ErrorClass::of(&e), || {
                        format!("udp socket {id} to {addr}: {e}")
                    });
                }
            }
        }
        env.open = self.socks.len() as u64;
        if cfg.rate.is_none() {
            // Closed loop: every slot is in flight from the start.
            let mut cx = UdpOps {
                env,
                out: &mut self.out,
            };
            for s in self.socks.iter_mut() {
                for d in 0..s.lane.slots.len() {
                    cx.send(s, d, now);
                }
            }
        }
        self.socks.len()
    }

    fn due_mut(&mut self, lane: usize) -> &mut u64 {
        &mut self.socks[lane].lane.due
    }

    fn on_due(&mut self, env: &mut Env, lane: usize, _now: Instant) {
        let mut cx = UdpOps {
            env,
            out: &mut self.out,
        };
        cx.take_due(&mut self.socks[lane]);
    }

    fn on_stage(&mut self, env: &mut Env, _now: Instant) {
        if env.draining() {
            for s in self.socks.iter_mut() {
                for slot in s.lane.slots.iter_mut() {
                    // Never sent, so owed nothing.
                    if slot.state == DepthSlotState::Pending {
                        slot.state = DepthSlotState::Free;
                    }
                }
            }
        }
    }

    fn on_tick(&mut self, env: &mut Env, now: Instant) {
        let mut cx = UdpOps {
            env,
            out: &mut self.out,
        };
        for s in self.socks.iter_mut() {
            cx.expire(s, now);
            // Picks up anything left queued by a receive that ran out of budget.
            cx.receive(s, &mut self.batch);
        }
    }

    fn on_event(&mut self, env: &mut Env, token: usize, ready: Readiness) {
        let Some(s) = self.socks.get_mut(token) else {
            return;
        };
        let mut cx = UdpOps {
            env,
            out: &mut self.out,
        };
        if ready.writable {
            cx.resend_pending(s);
        }
        if ready.readable || ready.error {
            cx.receive(s, &mut self.batch);
        }
    }

    fn owes(&self) -> bool {
        self.socks.iter().any(|s| s.lane.in_flight())
    }

    fn end_drain(&mut self, env: &mut Env, _now: Instant) {
        for s in self.socks.iter_mut() {
            lose_in_flight(env, &mut s.lane);
        }
    }
}

/// The drain's time is up: every datagram still in flight is lost.
fn lose_in_flight(env: &mut Env, lane: &mut Lane) {
    for d in 0..lane.slots.len() {
        if lane.slots[d].state == DepthSlotState::InFlight {
            env.counts.losses += 1;
            lane.advance(d, true);
        }
    }
}

/// The worker's shared state and the flow's send buffer, borrowed together for one call.
struct UdpOps<'x, 'a> {
    env: &'x mut Env<'a>,
    out: &'x mut [u8],
}

impl UdpOps<'_, '_> {
    /// Sends the current datagram of slot `d`, counting from `origin`.
    fn send(&mut self, s: &mut Sock, d: usize, origin: Instant) {
        let size = self.env.ctx.cfg.size;
        let slot = &mut s.lane.slots[d];
        encode_seq(slot.seq, &mut self.out[..UDP_HEADER]);
        let body = self
            .env
            .ctx
            .pattern
            .send_window(udp_body_pos(slot.seq, s.lane.start), size - UDP_HEADER);
        self.out[UDP_HEADER..].copy_from_slice(body);
        slot.origin = origin;
        loop {
            let err = match s.sock.send(self.out) {
                Ok(_) => {
                    slot.state = DepthSlotState::InFlight;
                    slot.sent = Instant::now();
                    return;
                }
                Err(e) => Outcome::of_error(e),
            };
            match err {
                Outcome::Interrupted => {}
                Outcome::WouldBlock => {
                    slot.state = DepthSlotState::Pending;
                    return;
                }
                Outcome::PeerReset(e) | Outcome::Local(e) => {
                    // E.g. ECONNREFUSED from an earlier ICMP port unreachable: count it and try
                    // this slot again on the next tick.
                    slot.state = DepthSlotState::Pending;
                    let addr = self.env.ctx.cfg.addr;
                    self.env
                        .counts
                        .errors
                        .count(ErrorClass::of(&e), || format!("udp send to {addr}: {e}"));
                    return;
                }
                // Not from a send (`Ok(_)` is taken above); were it one, retry on the tick.
                Outcome::Moved(_) | Outcome::PeerClosed => {
                    slot.state = DepthSlotState::Pending;
                    return;
                }
            }
        }
    }

    fn resend_pending(&mut self, s: &mut Sock) {
        for d in 0..s.lane.slots.len() {
            if s.lane.slots[d].state == DepthSlotState::Pending {
                let origin = s.lane.slots[d].origin;
                self.send(s, d, origin);
                if s.lane.slots[d].state == DepthSlotState::Pending {
                    return;
                }
            }
        }
    }

    /// Receives until `WouldBlock` or a short batch, matching and checking each reply.
    fn receive(&mut self, s: &mut Sock, batch: &mut RecvBatch) {
        // Bounded even if a broken server floods us: what is left waits for the next datagram's
        // wake-up or the next tick.
        let mut budget = RECV_BUDGET;
        while budget > 0 {
            // An empty datagram is a datagram: `recv` is not `read`, and 0 is no end.
            let n = match batch.recv(s.sock.as_fd()) {
                Ok(n) => n,
                Err(e) => match Outcome::of_error(e) {
                    Outcome::WouldBlock => return,
                    Outcome::Interrupted => continue,
                    Outcome::PeerReset(e) | Outcome::Local(e) => {
                        // ICMP errors surface here on a connected socket; the datagram itself
                        // is accounted for by its timeout.
                        let addr = self.env.ctx.cfg.addr;
                        self.env
                            .counts
                            .errors
                            .count(ErrorClass::of(&e), || format!("udp recv from {addr}: {e}"));
                        budget -= 1;
                        continue;
                    }
                    Outcome::Moved(_) | Outcome::PeerClosed => {
                        budget -= 1;
                        continue;
                    }
                },
            };
            let now = Instant::now();
            for i in 0..n {
                let dgram = batch.get(i);
                let truncated = dgram.len() == batch.each();
                if let Some(d) = on_datagram(self.env, &mut s.lane, dgram, truncated, now) {
                    self.refill(s, d, now);
                }
            }
            if n < RECV_BATCH {
                return;
            }
            budget = budget.saturating_sub(n);
        }
    }

    /// DepthSlot `d` is free again: send its next datagram (closed loop) or leave it to the schedule.
    fn refill(&mut self, s: &mut Sock, d: usize, now: Instant) {
        if self.env.draining() {
            return;
        }
        if self.env.sched.is_none() {
            self.send(s, d, now);
        } else {
            self.take_due(s);
        }
    }

    /// Open loop: sends this socket's due messages into free slots.
    fn take_due(&mut self, s: &mut Sock) {
        // A copy of the clock (three words), so `send` may borrow `self`.
        let Some(sched) = self.env.sched.clone() else {
            return;
        };
        let n = self.env.lanes as u64;
        while s.lane.taken < s.lane.due {
            let Some(d) = s
                .lane
                .slots
                .iter()
                .position(|x| x.state == DepthSlotState::Free)
            else {
                return;
            };
            let origin = sched.due_time(s.lane.index + s.lane.taken * n);
            s.lane.taken += 1;
            self.send(s, d, origin);
        }
    }

    /// Counts datagrams unanswered for the timeout as lost; retries sends that could not go out.
    fn expire(&mut self, s: &mut Sock, now: Instant) {
        let timeout = self.env.ctx.cfg.timeout;
        for d in 0..s.lane.slots.len() {
            match s.lane.slots[d].state {
                DepthSlotState::InFlight if now.duration_since(s.lane.slots[d].sent) > timeout => {
                    self.env.counts.losses += 1;
                    s.lane.advance(d, true);
                    self.refill(s, d, now);
                }
                DepthSlotState::Pending => {
                    let origin = s.lane.slots[d].origin;
                    self.send(s, d, origin);
                }
                DepthSlotState::InFlight | DepthSlotState::Free => {}
            }
        }
    }
}

/// A non-blocking UDP socket bound to `source` (or any local address) and connected to `addr`.
fn open_socket(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<UdpSocket> {
    let local = match (source, addr) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (None, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::lane::{DepthSlot, Reply, next_seq};
    use super::*;
    use crate::Transform;
    use crate::load::payload::Pattern;
    use crate::load::{LoadConfig, Shared, Stage};
    use crate::net::Proto;

    /// The right reply to datagram `seq` of `lane`, `size` bytes.
    fn reply(p: &Pattern, lane: &Lane, seq: u32, size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        encode_seq(seq, &mut v[..UDP_HEADER]);
        let body = p.send_window(udp_body_pos(seq, lane.start), size - UDP_HEADER);
        v[UDP_HEADER..].copy_from_slice(body);
        Transform::Upper.apply(&mut v);
        v
    }

    /// Runs `f` with an environment in the measurement window and a lane of depth 2 whose two
    /// slots (sequence numbers 0 and 1) are in flight: no socket anywhere.
    fn with_lane(f: impl FnOnce(&mut Env, &mut Lane, &Pattern)) {
        let cfg = LoadConfig {
            proto: Proto::Udp,
            depth: 2,
            ..LoadConfig::default()
        };
        let pattern = Pattern::new(1, Transform::Upper);
        let shared = Shared::new(1);
        let ctx = WorkerCtx {
            cfg: &cfg,
            pattern: &pattern,
            shared: &shared,
            thread: 0,
            first_conn: 0,
            nconns: 1,
        };
        let mut env = Env::new(&ctx, mio::Poll::new().expect("epoll"));
        env.stage = Stage::Measure;
        let now = Instant::now();
        let mut lane = Lane::new(0, 3, 2, now);
        for s in lane.slots.iter_mut() {
            s.state = DepthSlotState::InFlight;
        }
        f(&mut env, &mut lane, &pattern);
    }

    #[test]
    fn an_answer_frees_its_slot_and_a_second_copy_is_a_duplicate() {
        with_lane(|env, lane, p| {
            let r = reply(p, lane, 0, 64);
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), Some(0));
            assert_eq!((env.counts.msgs, env.counts.bytes), (1, 64));
            assert_eq!(lane.slots[0].seq, 2);
            assert_eq!(lane.slots[0].state, DepthSlotState::Free);
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), None);
            assert_eq!(env.counts.duplicates, 1);
            assert_eq!(env.counts.mismatch_events, 0);
        });
    }

    #[test]
    fn a_reply_after_the_drain_gave_up_is_late_and_a_second_one_a_duplicate() {
        with_lane(|env, lane, p| {
            lose_in_flight(env, lane);
            assert_eq!(env.counts.losses, 2);
            assert!(!lane.in_flight());
            let r = reply(p, lane, 1, 64);
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), None);
            assert_eq!(env.counts.late, 1);
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), None);
            assert_eq!(env.counts.duplicates, 1);
            assert_eq!(env.counts.msgs, 0);
        });
    }

    #[test]
    fn wrong_replies_say_what_is_wrong_with_them() {
        with_lane(|env, lane, p| {
            let mut r = reply(p, lane, 1, 64);
            r.pop();
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), Some(1));
            let first = env.counts.first_mismatch.take().unwrap_or_default();
            assert!(
                first.contains("socket 3, datagram 1: reply is 63 bytes, expected 64"),
                "{first}"
            );
            assert_eq!(on_datagram(env, lane, b"abc", false, Instant::now()), None);
            let first = env.counts.first_mismatch.take().unwrap_or_default();
            assert!(
                first.contains("shorter than the 8-byte sequence header"),
                "{first}"
            );
            let mut r = reply(p, lane, 0, 64);
            r[20] ^= 0x01;
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), Some(0));
            let first = env.counts.first_mismatch.take().unwrap_or_default();
            assert!(first.contains("datagram 0: reply byte 20"), "{first}");
            // A number no slot has sent yet.
            let r = reply(p, lane, 7, 64);
            assert_eq!(on_datagram(env, lane, &r, false, Instant::now()), None);
            let first = env.counts.first_mismatch.take().unwrap_or_default();
            assert!(first.contains("never sent"), "{first}");
            assert_eq!(env.counts.mismatch_events, 4);
        });
    }

    #[test]
    fn replies_are_told_apart_as_answer_late_duplicate_or_unsent() {
        let now = Instant::now();
        let depth = 4;
        // DepthSlot 1 after five datagrams (1, 5, 9, 13, 17), of which 9 was lost; 21 is in flight.
        let slot = DepthSlot {
            seq: 21,
            state: DepthSlotState::InFlight,
            origin: now,
            sent: now,
            finished: 5,
            lost: 0b00100,
        };
        assert_eq!(slot.classify(21, depth), Reply::Answer);
        assert_eq!(slot.classify(17, depth), Reply::Duplicate);
        assert_eq!(slot.classify(9, depth), Reply::Late);
        assert_eq!(slot.classify(1, depth), Reply::Duplicate);
        // Before the first, or after the current: never sent.
        assert_eq!(slot.classify(25, depth), Reply::Unsent);
        let free = DepthSlot {
            state: DepthSlotState::Free,
            ..slot
        };
        assert_eq!(free.classify(21, depth), Reply::Unsent);
        let fresh = DepthSlot {
            seq: 1,
            finished: 0,
            lost: 0,
            ..slot
        };
        assert_eq!(fresh.classify(u32::MAX - 2, depth), Reply::Unsent);
    }

    #[test]
    fn sequence_numbers_stay_in_their_slot_across_the_wrap() {
        for depth in [1u32, 3, 4, 7, 65_536] {
            for d in 0..depth.min(5) {
                // The last sequence number of slot d before the wrap.
                let wrap = (1u64 << 32) / u64::from(depth) * u64::from(depth);
                let last = (wrap - u64::from(depth) + u64::from(d)) as u32;
                assert_eq!(last % depth, d);
                assert_eq!(next_seq(last, depth), d, "depth {depth}");
                assert_eq!(next_seq(d, depth), d + depth);
            }
        }
    }
}

//! One UDP worker: datagram ping-pong over its share of the sockets.
//!
//! Each socket is connected to the server (so the kernel drops anything from elsewhere and
//! `send`/`recv` need no address) and keeps `--depth` datagrams in flight. Slot `i` of a socket
//! carries the sequence numbers `i, i + depth, i + 2 * depth, ...`, so a reply finds its slot by
//! `seq % depth` with no search. A datagram with no reply within `--timeout` is counted lost and
//! its slot moves on to the next sequence number; a reply that arrives after that is "late", not
//! a mismatch, and a second reply to a datagram already answered is a duplicate (each slot
//! remembers which of its last 64 datagrams were lost, to tell the two apart). The body after
//! the 8-byte sequence header is checked byte for byte, in late and duplicate replies too.
//!
//! At the end (`Phase::Drain`) nothing more is sent; the worker ends once no datagram is in
//! flight, and one still unanswered after `--timeout` is lost, as during the run.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::config::{MAX_DATAGRAM, UDP_HEADER};
use super::payload::{decode_seq, encode_seq, udp_body_pos};
use super::schedule::{RateSchedule, lane_share};
use super::stats::{ErrorClass, Stats};
use super::timer::Timer;
use super::{Ctx, Phase};

/// How often timeouts, phase changes and the progress counters are looked at when idle.
const TICK: Duration = super::config::CHECK_INTERVAL;
/// Datagrams received from one socket per wake-up at most.
const RECV_BUDGET: usize = 4096;
/// The open-loop timer's token: beyond any socket.
const TIMER: Token = Token(usize::MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Nothing in flight (open loop: waiting for a due message).
    Free,
    /// Should be sent, but the socket's send buffer was full: resent when writable.
    Pending,
    InFlight,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u32,
    state: SlotState,
    /// When this datagram's latency counts from (send time, or open loop: due time).
    origin: Instant,
    sent: Instant,
    /// Datagrams this slot has finished with (answered or lost), and of the last 64 of them
    /// which were lost (bit `g - 1`: `g` datagrams ago).
    finished: u64,
    lost: u64,
}

/// What a reply with a valid sequence header is, for the slot its number names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The answer to the datagram in flight.
    Answer,
    /// To a datagram already counted lost: it came, but too late.
    Late,
    /// To a datagram already answered.
    Duplicate,
    /// To a datagram this slot never sent.
    Unsent,
}

impl Slot {
    fn classify(&self, seq: u32, depth: u32) -> Reply {
        if self.seq == seq {
            return if self.state == SlotState::InFlight {
                Reply::Answer
            } else {
                // The slot's current number is only sent when the slot is in flight.
                Reply::Unsent
            };
        }
        let g = generations_behind(self.seq, seq, depth);
        if g == 0 || g > self.finished {
            Reply::Unsent
        } else if g > 64 {
            // Too old to know whether it was answered: the kinder reading.
            Reply::Late
        } else if self.lost & (1 << (g - 1)) != 0 {
            Reply::Late
        } else {
            Reply::Duplicate
        }
    }
}

struct Sock {
    /// Index within the worker: the mio token and the open-loop schedule lane.
    lane: u64,
    sock: UdpSocket,
    /// Pattern position the bodies of this socket's datagrams are taken from.
    start: u64,
    slots: Box<[Slot]>,
    due: u64,
    taken: u64,
}

struct Env<'a> {
    ctx: &'a Ctx<'a>,
    stats: Stats,
    measuring: bool,
    /// The run is over: nothing more is sent (see `Phase::Drain`).
    draining: bool,
    sched: Option<RateSchedule>,
    live_msgs: u64,
    live_bytes: u64,
    /// Sockets in this worker (open-loop lanes).
    lanes: u64,
    /// One datagram being built (sends) and one being received, reused for every datagram.
    out: Box<[u8]>,
}

/// Runs one UDP worker until the main thread says stop (or its own hard deadline passes).
pub fn run(ctx: &Ctx) -> Stats {
    let cfg = ctx.cfg;
    let mut env = Env {
        ctx,
        stats: Stats::new(),
        measuring: false,
        draining: false,
        sched: None,
        live_msgs: 0,
        live_bytes: 0,
        lanes: 0,
        out: vec![0u8; cfg.size].into_boxed_slice(),
    };
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            env.stats
                .errors
                .count(ErrorClass::of(&e), || format!("epoll: {e}"));
            return env.stats;
        }
    };
    let now = Instant::now();
    let mut socks = Vec::with_capacity(ctx.nconns);
    for i in 0..ctx.nconns {
        let id = ctx.first_conn + i;
        match open_socket(cfg.addr, cfg.source_of(id)) {
            Ok(mut sock) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let lane = socks.len();
                if let Err(e) = poll.registry().register(&mut sock, Token(lane), interest) {
                    env.stats
                        .errors
                        .count(ErrorClass::Other, || format!("register: {e}"));
                    continue;
                }
                let slots = (0..cfg.depth)
                    .map(|d| Slot {
                        seq: d as u32,
                        state: SlotState::Free,
                        origin: now,
                        sent: now,
                        finished: 0,
                        lost: 0,
                    })
                    .collect();
                socks.push(Sock {
                    lane: lane as u64,
                    sock,
                    start: (id as u64).wrapping_mul(7_919),
                    slots,
                    due: 0,
                    taken: 0,
                });
            }
            Err(e) => {
                let addr = cfg.addr;
                env.stats.errors.count(ErrorClass::of(&e), || {
                    format!("udp socket {id} to {addr}: {e}")
                });
            }
        }
    }
    env.progress_open(socks.len());
    env.lanes = socks.len() as u64;
    if socks.is_empty() {
        return env.stats;
    }
    env.sched = cfg
        .rate
        .map(|r| RateSchedule::new(now, r * socks.len() as f64 / cfg.conns as f64));
    if env.sched.is_none() {
        for s in socks.iter_mut() {
            for d in 0..s.slots.len() {
                env.send(s, d, now);
            }
        }
    }
    let mut timer = match env
        .sched
        .is_some()
        .then(|| Timer::new(poll.registry(), TIMER))
    {
        Some(Err(e)) => {
            env.stats
                .errors
                .count(ErrorClass::Other, || format!("timerfd: {e}"));
            return env.stats;
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice();
    let mut events = Events::with_capacity(1024);
    let hard_end = now + ctx.hard_limit();
    let mut next_tick = now;
    let mut drain_until = None;
    loop {
        let now = Instant::now();
        let phase = ctx.shared.phase();
        if phase == Phase::Stop || now >= hard_end {
            break;
        }
        env.measuring = phase == Phase::Measure;
        if phase == Phase::Drain && !env.draining {
            env.draining = true;
            for s in socks.iter_mut() {
                for slot in s.slots.iter_mut() {
                    // Never sent, so owed nothing.
                    if slot.state == SlotState::Pending {
                        slot.state = SlotState::Free;
                    }
                }
            }
            // A tick more than --timeout: expiry is looked at once a tick.
            drain_until = Some(now + cfg.timeout + TICK);
        }
        if now >= next_tick {
            for (i, s) in socks.iter_mut().enumerate() {
                env.expire(s, now);
                // Picks up anything left queued by a receive that ran out of budget.
                env.receive(s, i, &mut buf);
            }
            next_tick = now + TICK;
        }
        if env.draining {
            let in_flight = |s: &Sock| s.slots.iter().any(|x| x.state == SlotState::InFlight);
            if !socks.iter().any(in_flight) {
                break;
            }
            if drain_until.is_some_and(|t| now >= t) {
                for s in socks.iter_mut() {
                    for d in 0..s.slots.len() {
                        if s.slots[d].state == SlotState::InFlight {
                            env.stats.losses += 1;
                            env.next_in_slot(s, d, now, true);
                        }
                    }
                }
                break;
            }
        }
        env.issue_scheduled(&mut socks, now);
        env.publish();
        let mut wake = next_tick;
        if let Some(at) = drain_until {
            wake = wake.min(at);
        }
        // Not while draining: nothing more is issued, so the next due time stays in the past
        // and would wake the loop at once, over and over.
        if let (Some(s), Some(t)) = (&env.sched, &mut timer)
            && !env.draining
            && let Err(e) = t.arm(s.peek().1, now)
        {
            env.stats
                .errors
                .count(ErrorClass::Other, || format!("timerfd: {e}"));
            break;
        }
        let timeout = wake.saturating_duration_since(now);
        if !super::wait_events(&mut poll, &mut events, timeout, &mut env.stats) {
            break;
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = &mut timer {
                    t.clear();
                }
                continue;
            }
            let Some(s) = socks.get_mut(ev.token().0) else {
                continue;
            };
            if ev.is_writable() {
                env.resend_pending(s);
            }
            if ev.is_readable() || ev.is_error() {
                env.receive(s, ev.token().0, &mut buf);
            }
        }
    }
    env.publish();
    env.stats
}

impl Env<'_> {
    /// Sends the current datagram of slot `d`, counting from `origin`.
    fn send(&mut self, s: &mut Sock, d: usize, origin: Instant) {
        let size = self.ctx.cfg.size;
        let slot = &mut s.slots[d];
        encode_seq(slot.seq, &mut self.out[..UDP_HEADER]);
        let body = self
            .ctx
            .pattern
            .send_window(udp_body_pos(slot.seq, s.start), size - UDP_HEADER);
        self.out[UDP_HEADER..].copy_from_slice(body);
        slot.origin = origin;
        loop {
            match s.sock.send(&self.out) {
                Ok(_) => {
                    slot.state = SlotState::InFlight;
                    slot.sent = Instant::now();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.state = SlotState::Pending;
                    return;
                }
                Err(e) => {
                    // E.g. ECONNREFUSED from an earlier ICMP port unreachable: count it and try
                    // this slot again on the next tick.
                    slot.state = SlotState::Pending;
                    let addr = self.ctx.cfg.addr;
                    self.stats
                        .errors
                        .count(ErrorClass::of(&e), || format!("udp send to {addr}: {e}"));
                    return;
                }
            }
        }
    }

    fn resend_pending(&mut self, s: &mut Sock) {
        for d in 0..s.slots.len() {
            if s.slots[d].state == SlotState::Pending {
                let origin = s.slots[d].origin;
                self.send(s, d, origin);
                if s.slots[d].state == SlotState::Pending {
                    return;
                }
            }
        }
    }

    /// Receives until `WouldBlock`, matching and checking each reply.
    fn receive(&mut self, s: &mut Sock, i: usize, buf: &mut [u8]) {
        let size = self.ctx.cfg.size;
        let depth = s.slots.len() as u32;
        // Bounded even if a broken server floods us: what is left waits for the next datagram's
        // wake-up or the next tick.
        for _ in 0..RECV_BUDGET {
            let n = match s.sock.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here on a connected socket; the datagram itself is
                    // accounted for by its timeout.
                    let addr = self.ctx.cfg.addr;
                    self.stats
                        .errors
                        .count(ErrorClass::of(&e), || format!("udp recv from {addr}: {e}"));
                    continue;
                }
            };
            let now = Instant::now();
            let id = self.ctx.first_conn + i;
            let Some(seq) = decode_seq(&buf[..n]) else {
                let head = &buf[..n.min(UDP_HEADER)];
                self.stats.wrong_reply(n.clamp(1, UDP_HEADER) as u64, || {
                    if n < UDP_HEADER {
                        format!(
                            "udp socket {id}: reply is {n} bytes, shorter than the \
                                 {UDP_HEADER}-byte sequence header of every datagram sent"
                        )
                    } else {
                        format!(
                            "udp socket {id}: reply of {n} bytes has no valid sequence \
                                 header (it starts {:?}, expected 8 letters A-P)",
                            String::from_utf8_lossy(head)
                        )
                    }
                });
                continue;
            };
            let d = (seq % depth) as usize;
            let slot = s.slots[d];
            let kind = if u64::from(seq) >= seq_wrap(depth) {
                Reply::Unsent
            } else {
                slot.classify(seq, depth)
            };
            if kind == Reply::Unsent {
                self.stats.wrong_reply(n as u64, || {
                    format!("udp socket {id}: reply to datagram {seq}, which was never sent")
                });
                continue;
            }
            if n != size {
                // The buffer is one byte longer than any datagram, so a full one was truncated.
                let at_least = if n == buf.len() { "at least " } else { "" };
                self.stats.wrong_reply(n.abs_diff(size) as u64, || {
                    format!(
                        "udp socket {id}, datagram {seq}: reply is {at_least}{n} bytes, expected {size}"
                    )
                });
            } else if let Err(m) = self.ctx.pattern.check(
                udp_body_pos(seq, s.start),
                &buf[UDP_HEADER..n],
                UDP_HEADER as u64,
            ) {
                self.stats
                    .mismatch(m, || format!("udp socket {id}, datagram {seq}"));
            }
            match kind {
                Reply::Answer => {}
                Reply::Late => {
                    self.stats.late += 1;
                    // A second late copy is a duplicate.
                    let g = generations_behind(slot.seq, seq, depth);
                    if (1..=64).contains(&g) {
                        s.slots[d].lost &= !(1 << (g - 1));
                    }
                    continue;
                }
                Reply::Duplicate => {
                    self.stats.duplicates += 1;
                    continue;
                }
                // Counted as a mismatch above.
                Reply::Unsent => continue,
            }
            self.live_msgs += 1;
            self.live_bytes += n as u64;
            if self.measuring {
                self.stats.msgs += 1;
                self.stats.bytes += n as u64;
                self.stats
                    .latency(now.saturating_duration_since(slot.origin));
            }
            self.next_in_slot(s, d, now, false);
        }
    }

    /// Moves slot `d` on to its next sequence number and sends it (closed loop) or frees it
    /// for the schedule (open loop).
    fn next_in_slot(&mut self, s: &mut Sock, d: usize, now: Instant, lost: bool) {
        let depth = s.slots.len() as u32;
        let slot = &mut s.slots[d];
        slot.seq = next_seq(slot.seq, depth);
        slot.state = SlotState::Free;
        slot.finished += 1;
        slot.lost = (slot.lost << 1) | u64::from(lost);
        if self.draining {
            return;
        }
        match &self.sched {
            None => self.send(s, d, now),
            Some(_) => self.take_due(s),
        }
    }

    /// Open loop: sends this socket's due messages into free slots.
    fn take_due(&mut self, s: &mut Sock) {
        // A copy of the clock (three words), so `send` may borrow `self`.
        let Some(sched) = self.sched.clone() else {
            return;
        };
        let n = self.lanes;
        let lane = s.lane;
        while s.taken < s.due {
            let Some(d) = s.slots.iter().position(|x| x.state == SlotState::Free) else {
                return;
            };
            let origin = sched.due_time(lane + s.taken * n);
            s.taken += 1;
            self.send(s, d, origin);
        }
    }

    fn issue_scheduled(&mut self, socks: &mut [Sock], now: Instant) {
        if self.draining {
            return;
        }
        let Some(due) = self.sched.as_mut().map(|s| s.take_due(now)) else {
            return;
        };
        let n = socks.len() as u64;
        if due.end - due.start < n {
            for k in due {
                let s = &mut socks[(k % n) as usize];
                s.due += 1;
                self.take_due(s);
            }
        } else {
            // A message or more for every socket: a turn per socket, not per message (see tcp).
            for s in socks.iter_mut() {
                s.due = lane_share(due.end, s.lane, n);
                self.take_due(s);
            }
        }
    }

    /// Counts datagrams unanswered for `--timeout` as lost; retries sends that could not go out.
    fn expire(&mut self, s: &mut Sock, now: Instant) {
        let timeout = self.ctx.cfg.timeout;
        for d in 0..s.slots.len() {
            match s.slots[d].state {
                SlotState::InFlight if now.duration_since(s.slots[d].sent) > timeout => {
                    self.stats.losses += 1;
                    self.next_in_slot(s, d, now, true);
                }
                SlotState::Pending => {
                    let origin = s.slots[d].origin;
                    self.send(s, d, origin);
                }
                _ => {}
            }
        }
    }

    fn progress_open(&self, n: usize) {
        self.ctx
            .progress()
            .open
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let p = self.ctx.progress();
        p.msgs.store(self.live_msgs, Relaxed);
        p.bytes.store(self.live_bytes, Relaxed);
        p.errors.store(self.stats.errors.total, Relaxed);
        p.mismatches.store(self.stats.mismatch_events, Relaxed);
    }
}

/// The sequence number after `seq` in its slot. Sequence numbers wrap at the largest multiple
/// of `depth` that fits in a u32, not at 2^32, so that `seq % depth` keeps naming the same slot
/// across the wrap (a day at full speed on one socket can get there).
fn next_seq(seq: u32, depth: u32) -> u32 {
    ((u64::from(seq) + u64::from(depth.max(1))) % seq_wrap(depth)) as u32
}

/// Where sequence numbers wrap: the largest multiple of `depth` that fits in a u32 (as a u64,
/// since for depth 1 it is 2^32).
fn seq_wrap(depth: u32) -> u64 {
    let depth = u64::from(depth.max(1));
    (1u64 << 32) / depth * depth
}

/// How many datagrams of the same slot ago `seq` was sent, seen from the slot's current `cur`
/// (both name the same slot: they are equal modulo `depth`).
fn generations_behind(cur: u32, seq: u32, depth: u32) -> u64 {
    let wrap = seq_wrap(depth);
    (u64::from(cur) + wrap - u64::from(seq) % wrap) % wrap / u64::from(depth.max(1))
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
    use super::*;

    #[test]
    fn replies_are_told_apart_as_answer_late_duplicate_or_unsent() {
        let now = Instant::now();
        let depth = 4;
        // Slot 1 after five datagrams (1, 5, 9, 13, 17), of which 9 was lost; 21 is in flight.
        let slot = Slot {
            seq: 21,
            state: SlotState::InFlight,
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
        let free = Slot {
            state: SlotState::Free,
            ..slot
        };
        assert_eq!(free.classify(21, depth), Reply::Unsent);
        let fresh = Slot {
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

//! One socket's reply matching, apart from the socket: its `--depth` slots, each with its
//! sequence numbers, and what a received datagram is to them (answer, late, duplicate, wrong).
//! No socket is involved, so tests drive it directly.

use std::time::Instant;

use crate::load::config::UDP_HEADER;
use crate::load::payload::{decode_seq, udp_body_pos};
use crate::load::worker::Env;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DepthSlotState {
    /// Nothing in flight (open loop: waiting for a due message).
    Free,
    /// Should be sent, but the socket's send buffer was full: resent when writable.
    Pending,
    InFlight,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct DepthSlot {
    pub(super) seq: u32,
    pub(super) state: DepthSlotState,
    /// When this datagram's latency counts from (send time, or open loop: due time).
    pub(super) origin: Instant,
    pub(super) sent: Instant,
    /// Datagrams this slot has finished with (answered or lost), and of the last 64 of them
    /// which were lost (bit `g - 1`: `g` datagrams ago).
    pub(super) finished: u64,
    pub(super) lost: u64,
}

/// What a reply with a valid sequence header is, for the slot its number names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// The answer to the datagram in flight.
    Answer,
    /// To a datagram already counted lost: it came, but too late.
    Late,
    /// To a datagram already answered.
    Duplicate,
    /// To a datagram this slot never sent.
    Unsent,
}

impl DepthSlot {
    pub(super) fn classify(&self, seq: u32, depth: u32) -> Reply {
        if self.seq == seq {
            return if self.state == DepthSlotState::InFlight {
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

/// One socket's bookkeeping, apart from the socket: what the reply matching works on.
pub(super) struct Lane {
    /// Index within the worker: the mio token and the open-loop schedule lane.
    pub(super) index: u64,
    /// Global socket number, for messages.
    pub(super) id: usize,
    /// Pattern position the bodies of this socket's datagrams are taken from.
    pub(super) start: u64,
    pub(super) slots: Box<[DepthSlot]>,
    pub(super) due: u64,
    pub(super) taken: u64,
}

impl Lane {
    pub(super) fn new(index: usize, id: usize, depth: usize, now: Instant) -> Lane {
        let slots = (0..depth)
            .map(|d| DepthSlot {
                seq: d as u32,
                state: DepthSlotState::Free,
                origin: now,
                sent: now,
                finished: 0,
                lost: 0,
            })
            .collect();
        Lane {
            index: index as u64,
            id,
            start: (id as u64).wrapping_mul(7_919),
            slots,
            due: 0,
            taken: 0,
        }
    }

    /// Moves slot `d` on to its next sequence number, free; `lost` says how the last one ended.
    pub(super) fn advance(&mut self, d: usize, lost: bool) {
        let depth = self.slots.len() as u32;
        let slot = &mut self.slots[d];
        slot.seq = next_seq(slot.seq, depth);
        slot.state = DepthSlotState::Free;
        slot.finished += 1;
        slot.lost = (slot.lost << 1) | u64::from(lost);
    }

    pub(super) fn in_flight(&self) -> bool {
        self.slots
            .iter()
            .any(|x| x.state == DepthSlotState::InFlight)
    }
}

/// Matches one received datagram to its slot and checks it, counting what it is (answer, late,
/// duplicate, wrong). Returns the slot it answered, which has moved on to its next sequence
/// number and is free. `truncated`: the datagram filled the receive buffer. No socket is
/// involved, so tests drive it directly.
pub(super) fn on_datagram(
    env: &mut Env,
    lane: &mut Lane,
    dgram: &[u8],
    truncated: bool,
    now: Instant,
) -> Option<usize> {
    let size = env.ctx.cfg.size;
    let depth = lane.slots.len() as u32;
    let n = dgram.len();
    let id = lane.id;
    let Some(seq) = decode_seq(dgram) else {
        let head = &dgram[..n.min(UDP_HEADER)];
        env.counts.wrong_reply(n.clamp(1, UDP_HEADER) as u64, || {
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
        return None;
    };
    let d = (seq % depth) as usize;
    let slot = lane.slots[d];
    let kind = if u64::from(seq) >= seq_wrap(depth) {
        Reply::Unsent
    } else {
        slot.classify(seq, depth)
    };
    if kind == Reply::Unsent {
        env.counts.wrong_reply(n as u64, || {
            format!("udp socket {id}: reply to datagram {seq}, which was never sent")
        });
        return None;
    }
    if n != size {
        let at_least = if truncated { "at least " } else { "" };
        env.counts.wrong_reply(n.abs_diff(size) as u64, || {
            format!(
                "udp socket {id}, datagram {seq}: reply is {at_least}{n} bytes, expected {size}"
            )
        });
    } else if let Err(m) = env.ctx.pattern.check(
        udp_body_pos(seq, lane.start),
        &dgram[UDP_HEADER..],
        UDP_HEADER as u64,
    ) {
        env.counts
            .mismatch(m, || format!("udp socket {id}, datagram {seq}"));
    }
    match kind {
        Reply::Answer => {}
        Reply::Late => {
            env.counts.late += 1;
            // A second late copy is a duplicate.
            let g = generations_behind(slot.seq, seq, depth);
            if (1..=64).contains(&g) {
                lane.slots[d].lost &= !(1 << (g - 1));
            }
            return None;
        }
        Reply::Duplicate => {
            env.counts.duplicates += 1;
            return None;
        }
        // Counted as a mismatch above.
        Reply::Unsent => return None,
    }
    env.live_msgs += 1;
    env.live_bytes += n as u64;
    if env.measuring() {
        env.counts.msgs += 1;
        env.counts.bytes += n as u64;
    }
    env.latency(now.saturating_duration_since(slot.origin));
    lane.advance(d, false);
    Some(d)
}

/// The sequence number after `seq` in its slot. Sequence numbers wrap at the largest multiple
/// of `depth` that fits in a u32, not at 2^32, so that `seq % depth` keeps naming the same slot
/// across the wrap (a day at full speed on one socket can get there).
pub(super) fn next_seq(seq: u32, depth: u32) -> u32 {
    ((u64::from(seq) + u64::from(depth.max(1))) % seq_wrap(depth)) as u32
}

/// Where sequence numbers wrap: the largest multiple of `depth` that fits in a u32 (as a u64,
/// since for depth 1 it is 2^32).
pub(super) fn seq_wrap(depth: u32) -> u64 {
    let depth = u64::from(depth.max(1));
    (1u64 << 32) / depth * depth
}

/// How many datagrams of the same slot ago `seq` was sent, seen from the slot's current `cur`
/// (both name the same slot: they are equal modulo `depth`).
pub(super) fn generations_behind(cur: u32, seq: u32, depth: u32) -> u64 {
    let wrap = seq_wrap(depth);
    (u64::from(cur) + wrap - u64::from(seq) % wrap) % wrap / u64::from(depth.max(1))
}

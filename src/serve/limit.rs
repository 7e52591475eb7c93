//! The per-source UDP reply budget: how many replies one source address may get per second.
//!
//! The reflection guard stops the obvious amplifiers (privileged ports, broadcast), but two echo
//! servers on ordinary ports answer each other forever once a single datagram with a spoofed
//! source starts them: each reply is the other's request. The budget ends such a loop.
//!
//! Each source (address and port: every client socket has its own budget, so many clients behind
//! one address are not lumped together) is a GCRA cell (the "virtual scheduling" form of a token
//! bucket): one timestamp, the theoretical time at which its next reply would be on schedule. A
//! reply is allowed while that time is at most [`BURST_SECS`] ahead of now, which is a bucket of
//! `BURST_SECS * rate` tokens refilled at `rate` per second.
//!
//! A rate alone cannot tell a loop from a fast client: on one machine both run at the speed of the
//! machine. What tells them apart is the content: in a loop, what a source sends is what it was
//! last sent (the other server's reply to our reply, and upper-casing an upper-cased datagram
//! changes nothing). Such an *echo of our own reply* costs [`ECHO_COST`] replies, so a loop spends
//! its source's whole burst within about a thousand bounces and ends (both servers are echoes;
//! nothing re-sends the withheld datagram), while a client sending fresh datagrams pays one each
//! and a benchmark from one socket never meets the limit. A client that really does send the same
//! upper-case datagram over and over is held to `rate / ECHO_COST` of them a second.
//!
//! Each cell remembers a fingerprint of the last reply (length and the bytes at both ends: enough
//! to tell datagrams apart that differ anywhere a sequence number or a line would, at a cost that
//! does not grow with the datagram). The table is bounded: at [`MAX_SOURCES`] entries, entries
//! whose budget is full again are swept out; sources that still find no room share one overflow
//! cell, so a flood of spoofed addresses can neither grow the table nor escape the limit.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Most sources tracked one by one (~50 B each with the map's overhead: ~3 MiB at the bound).
pub const MAX_SOURCES: usize = 65_536;
/// How far ahead of schedule a source may run, in seconds' worth of replies: a pasted file or a
/// short benchmark from one socket should not notice the sustained rate.
pub const BURST_SECS: u64 = 10;
/// What an echo of our own last reply to a source costs, in replies (see the module doc).
pub const ECHO_COST: u64 = 100;
const TOLERANCE_NS: u64 = BURST_SECS * 1_000_000_000;
/// Sweeping a full table is O(n): at most ten times a second.
const SWEEP_EVERY_NS: u64 = 100_000_000;

/// One source's budget and what it was last sent.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    /// When (ns on the caller's clock) its next reply is due on schedule.
    due: u64,
    /// [`fingerprint`] of the last reply sent to it (0: none yet).
    last_reply: u64,
}

/// Replies per second per source, as a GCRA table.
pub struct SourceLimiter {
    /// Nanoseconds between replies at the sustained rate.
    interval_ns: u64,
    cells: HashMap<SocketAddr, Cell>,
    /// The shared cell of sources that found the table full.
    overflow: Cell,
    /// When the table was last swept, so a full table of busy sources is not swept per datagram.
    swept_at: u64,
}

impl SourceLimiter {
    /// A limiter allowing `rate` replies per second (at least 1) per source.
    pub fn new(rate: u32) -> SourceLimiter {
        SourceLimiter {
            interval_ns: 1_000_000_000 / u64::from(rate.max(1)),
            cells: HashMap::new(),
            overflow: Cell::default(),
            swept_at: 0,
        }
    }

    /// Whether the datagram `payload` from `src` may be answered at `now_ns` (a monotonic clock
    /// in nanoseconds), given that the reply will be `reply`; charges the source if so. The two
    /// are the same buffer before and after the transform, so the caller passes fingerprints.
    pub fn allow(&mut self, src: SocketAddr, payload_fp: u64, reply_fp: u64, now_ns: u64) -> bool {
        let interval = self.interval_ns;
        if let Some(cell) = self.cells.get_mut(&src) {
            return charge(cell, payload_fp, reply_fp, now_ns, interval);
        }
        if self.cells.len() >= MAX_SOURCES {
            self.sweep(now_ns);
        }
        let cell = if self.cells.len() < MAX_SOURCES {
            self.cells.entry(src).or_default()
        } else {
            &mut self.overflow
        };
        charge(cell, payload_fp, reply_fp, now_ns, interval)
    }

    /// Drops the sources whose budget has refilled completely: forgetting them changes nothing
    /// but the memory of their last reply, and an echo loop never lets its budget refill.
    fn sweep(&mut self, now_ns: u64) {
        if self.swept_at != 0 && now_ns.saturating_sub(self.swept_at) < SWEEP_EVERY_NS {
            return;
        }
        self.swept_at = now_ns.max(1);
        self.cells.retain(|_, c| c.due > now_ns);
    }

    /// Sources tracked one by one right now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.cells.len()
    }
}

/// One GCRA step: allowed while the cell's schedule, after this reply's cost, is within the
/// tolerance of now.
fn charge(cell: &mut Cell, payload_fp: u64, reply_fp: u64, now_ns: u64, interval: u64) -> bool {
    let echo = cell.last_reply != 0 && cell.last_reply == payload_fp;
    let cost = if echo { ECHO_COST } else { 1 }.saturating_mul(interval);
    let on_schedule = cell.due.max(now_ns);
    if (on_schedule - now_ns).saturating_add(cost) > TOLERANCE_NS {
        return false;
    }
    cell.due = on_schedule.saturating_add(cost);
    cell.last_reply = reply_fp;
    true
}

/// A fingerprint of a datagram: its length and up to 32 bytes at each end, mixed. Never 0, so 0
/// can mean "nothing sent yet".
pub fn fingerprint(data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (data.len() as u64).wrapping_mul(K);
    let ends = [
        &data[..data.len().min(32)],
        &data[data.len().saturating_sub(32)..],
    ];
    for part in ends {
        for chunk in part.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(K)
                .rotate_left(29);
        }
    }
    h | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A fresh datagram each time (as a client with sequence numbers sends).
    fn fresh(l: &mut SourceLimiter, src: SocketAddr, n: u64, now: u64) -> bool {
        l.allow(
            src,
            fingerprint(&n.to_le_bytes()),
            fingerprint(&((n + 1) << 32).to_le_bytes()),
            now,
        )
    }

    #[test]
    fn a_source_gets_the_burst_at_once_then_the_sustained_rate() {
        let mut l = SourceLimiter::new(100);
        let t0 = 5 * SEC;
        let burst = (0..10_000)
            .take_while(|&i| fresh(&mut l, addr(4000), i, t0))
            .count();
        assert_eq!(burst, 100 * BURST_SECS as usize);
        // Half a second later, half a second's worth more.
        let more = (0..1000)
            .take_while(|&i| fresh(&mut l, addr(4000), i, t0 + SEC / 2))
            .count();
        assert_eq!(more, 50);
    }

    #[test]
    fn sources_have_budgets_of_their_own() {
        let mut l = SourceLimiter::new(10);
        for i in 0..10 * BURST_SECS {
            assert!(fresh(&mut l, addr(4000), i, SEC));
        }
        assert!(!fresh(&mut l, addr(4000), 99, SEC));
        assert!(
            fresh(&mut l, addr(4001), 0, SEC),
            "another port is another source"
        );
    }

    #[test]
    fn an_echo_loop_between_two_servers_spends_its_burst_and_stops() {
        // One datagram bouncing between two upper-casing echoes, a bounce every 20 us
        // (50,000/s), against the default budget: each server sees its own last reply again.
        let mut a = SourceLimiter::new(100_000);
        let mut b = SourceLimiter::new(100_000);
        let (pa, pb) = (addr(9000), addr(9001));
        let mut datagram = b"spoofed".to_vec();
        let mut t = SEC;
        let mut bounces = 0u64;
        loop {
            let (limiter, from) = if bounces.is_multiple_of(2) {
                (&mut a, pb)
            } else {
                (&mut b, pa)
            };
            let payload_fp = fingerprint(&datagram);
            datagram.make_ascii_uppercase();
            if !limiter.allow(from, payload_fp, fingerprint(&datagram), t) {
                break;
            }
            bounces += 1;
            t += 20_000;
            assert!(bounces < 1_000_000, "the loop never ended");
        }
        // Each side's burst, at ECHO_COST a bounce: 10 s x 100,000/s / 100 = 10,000 each.
        assert!((19_000..=21_000).contains(&bounces), "{bounces} bounces");
    }

    #[test]
    fn the_same_datagram_again_is_an_echo_only_if_it_is_what_was_last_sent() {
        let mut l = SourceLimiter::new(1000);
        let (ping, reply) = (fingerprint(b"ping"), fingerprint(b"PING"));
        // A client pinging "ping" over and over pays one each: it is not our reply.
        for _ in 0..5000 {
            assert!(l.allow(addr(1), ping, reply, SEC));
        }
        // One that sends back what it was sent pays ECHO_COST each.
        let mut l = SourceLimiter::new(1000);
        let echoes = (0..5000)
            .take_while(|_| l.allow(addr(1), reply, reply, SEC))
            .count();
        assert_eq!(echoes as u64, 1 + (1000 * BURST_SECS - 1) / ECHO_COST);
    }

    #[test]
    fn fingerprints_tell_apart_datagrams_that_differ_at_either_end_or_in_length() {
        let base = vec![b'x'; 1000];
        let mut head = base.clone();
        head[3] = b'y';
        let mut tail = base.clone();
        tail[997] = b'y';
        let fps = [
            fingerprint(&base),
            fingerprint(&head),
            fingerprint(&tail),
            fingerprint(&base[..999]),
        ];
        for i in 0..fps.len() {
            for j in i + 1..fps.len() {
                assert_ne!(fps[i], fps[j], "{i} vs {j}");
            }
        }
        assert_ne!(fingerprint(b""), 0);
    }

    #[test]
    fn the_table_is_bounded_and_overflow_sources_share_one_budget() {
        let mut l = SourceLimiter::new(1);
        let t = SEC;
        for i in 0..MAX_SOURCES {
            let a = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000 + (i % 7) as u16));
            assert!(fresh(&mut l, a, 0, t));
        }
        assert_eq!(l.tracked(), MAX_SOURCES);
        // All budgets still partly spent: nothing can be swept, so newcomers share the overflow.
        let newcomer = |p| SocketAddr::from(([192, 0, 2, 1], p));
        for p in 0..BURST_SECS as u16 {
            assert!(fresh(&mut l, newcomer(p), p.into(), t));
        }
        assert!(
            !fresh(&mut l, newcomer(99), 99, t),
            "the overflow budget is shared"
        );
        assert_eq!(l.tracked(), MAX_SOURCES);
        // Once the old budgets have refilled, a sweep makes room again.
        assert!(fresh(
            &mut l,
            newcomer(100),
            100,
            t + (BURST_SECS + 1) * SEC
        ));
        assert!(l.tracked() <= 1);
    }
}

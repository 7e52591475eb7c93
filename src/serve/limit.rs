//! The per-source UDP reply budget: how many replies one source address may get per second.
//!
//! The reflection guard stops the obvious amplifiers (privileged ports, broadcast), but two echo
//! servers on ordinary ports answer each other forever once a single datagram with a spoofed
//! source starts them: each reply is the other's request. A budget per source turns that into a
//! short burst: the loop runs faster than the budget refills, so the budget runs dry, one reply is
//! withheld, and the loop ends (both servers are echoes; nothing re-sends the lost datagram). A
//! loop slower than the budget (two servers far apart, one round trip per bounce) is not ended,
//! but it costs each server at most the budget.
//!
//! Each source (address and port: every client socket has its own budget, so many clients behind
//! one address are not lumped together) is a GCRA cell (the "virtual scheduling" form of a token
//! bucket): one timestamp, the theoretical time at which its next reply would be on schedule. A
//! reply is allowed while that time is at most [`BURST_SECS`] ahead of now, which is a bucket of
//! `BURST_SECS * rate` tokens refilled at `rate` per second, kept in eight bytes.
//!
//! The table is bounded: at [`MAX_SOURCES`] entries, entries whose budget is full again (idle for
//! a second or more) are swept out; sources that still find no room share one overflow budget, so
//! a flood of spoofed addresses can neither grow the table nor escape the limit.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Most sources tracked one by one (~40 B each with the map's overhead: ~2.5 MiB at the bound).
pub const MAX_SOURCES: usize = 65_536;
/// How far ahead of schedule a source may run, in seconds' worth of replies. A ping-pong client
/// on loopback runs at about twice the default rate (`upecho udp` in a pipe, `upecho load` on one
/// socket), and a short benchmark or a pasted file should not notice the limit; an echo loop on
/// loopback runs at five times the default rate and exhausts ten seconds' worth in about two.
pub const BURST_SECS: u64 = 10;
const TOLERANCE_NS: u64 = BURST_SECS * 1_000_000_000;
/// Sweeping a full table is O(n): at most ten times a second.
const SWEEP_EVERY_NS: u64 = 100_000_000;

/// Replies per second per source, as a GCRA table.
pub struct SourceLimiter {
    /// Nanoseconds between replies at the sustained rate.
    interval_ns: u64,
    /// Per source, the time (ns on the caller's clock) its next reply is due on schedule.
    due: HashMap<SocketAddr, u64>,
    /// The shared budget of sources that found the table full.
    overflow_due: u64,
    /// When the table was last swept, so a full table of busy sources is not swept per datagram.
    swept_at: u64,
}

impl SourceLimiter {
    /// A limiter allowing `rate` replies per second (at least 1) per source.
    pub fn new(rate: u32) -> SourceLimiter {
        SourceLimiter {
            interval_ns: 1_000_000_000 / u64::from(rate.max(1)),
            due: HashMap::new(),
            overflow_due: 0,
            swept_at: 0,
        }
    }

    /// Whether `src` may be answered at `now_ns` (a monotonic clock in nanoseconds); charges it
    /// one reply if so.
    pub fn allow(&mut self, src: SocketAddr, now_ns: u64) -> bool {
        let interval = self.interval_ns;
        if let Some(due) = self.due.get_mut(&src) {
            return charge(due, now_ns, interval);
        }
        if self.due.len() >= MAX_SOURCES {
            self.sweep(now_ns);
        }
        if self.due.len() < MAX_SOURCES {
            charge(self.due.entry(src).or_insert(0), now_ns, interval)
        } else {
            charge(&mut self.overflow_due, now_ns, interval)
        }
    }

    /// Drops the sources whose budget has refilled completely (quiet for the burst's length):
    /// forgetting them changes nothing.
    fn sweep(&mut self, now_ns: u64) {
        if self.swept_at != 0 && now_ns.saturating_sub(self.swept_at) < SWEEP_EVERY_NS {
            return;
        }
        self.swept_at = now_ns.max(1);
        self.due.retain(|_, due| *due > now_ns);
    }

    /// Sources tracked one by one right now.
    pub fn tracked(&self) -> usize {
        self.due.len()
    }
}

/// One GCRA step: allowed while the cell's schedule is less than the tolerance ahead of now.
fn charge(due: &mut u64, now_ns: u64, interval: u64) -> bool {
    let on_schedule = (*due).max(now_ns);
    if on_schedule - now_ns > TOLERANCE_NS.saturating_sub(interval) {
        return false;
    }
    *due = on_schedule + interval;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_source_gets_the_burst_at_once_then_the_sustained_rate() {
        let mut l = SourceLimiter::new(100);
        let t0 = 5 * SEC;
        let burst = (0..10_000).take_while(|_| l.allow(addr(4000), t0)).count();
        assert_eq!(burst, 100 * BURST_SECS as usize);
        // Half a second later, half a second's worth more.
        let more = (0..1000)
            .take_while(|_| l.allow(addr(4000), t0 + SEC / 2))
            .count();
        assert_eq!(more, 50);
    }

    #[test]
    fn sources_have_budgets_of_their_own() {
        let mut l = SourceLimiter::new(10);
        for _ in 0..10 * BURST_SECS {
            assert!(l.allow(addr(4000), SEC));
        }
        assert!(!l.allow(addr(4000), SEC));
        assert!(l.allow(addr(4001), SEC), "another port is another source");
    }

    #[test]
    fn a_loop_faster_than_the_rate_runs_dry_and_stops() {
        // Two echo servers bouncing one datagram, a reply every 20 us: 50,000/s against a
        // budget of 10,000/s. The loop must end once the burst is spent: 100,000 / (1 - 1/5).
        let mut l = SourceLimiter::new(10_000);
        let mut t = SEC;
        let mut bounces = 0;
        while l.allow(addr(9000), t) {
            bounces += 1;
            t += 20_000;
            assert!(bounces < 10_000_000, "loop never ended");
        }
        assert!((124_000..=126_000).contains(&bounces), "{bounces} bounces");
    }

    #[test]
    fn the_table_is_bounded_and_overflow_sources_share_one_budget() {
        let mut l = SourceLimiter::new(1);
        let t = SEC;
        for i in 0..MAX_SOURCES {
            let a = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000 + (i % 7) as u16));
            assert!(l.allow(a, t));
        }
        assert_eq!(l.tracked(), MAX_SOURCES);
        // All budgets still partly spent: nothing can be swept, so newcomers share the overflow.
        let newcomer = |p| SocketAddr::from(([192, 0, 2, 1], p));
        for p in 0..BURST_SECS as u16 {
            assert!(l.allow(newcomer(p), t));
        }
        assert!(!l.allow(newcomer(99), t), "the overflow budget is shared");
        assert_eq!(l.tracked(), MAX_SOURCES);
        // Once the old budgets have refilled, a sweep makes room again.
        assert!(l.allow(newcomer(100), t + (BURST_SECS + 1) * SEC));
        assert!(l.tracked() <= 1);
    }
}

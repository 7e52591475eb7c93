//! The idle timeout: the wheel of which connections may have been quiet for too long and when to
//! look ([`IdleWheel`]), and the per-connection activity stamps the reactor keeps beside the slab
//! (`IdleTracker`).
//!
//! Activity costs O(1) and touches only the connection (its `last_active` tick, owned by the
//! reactor); the wheel holds at most one live entry per connection. When an entry's slot comes
//! round the reactor checks the connection: still quiet past its deadline → close it; active since
//! → re-arm at its new deadline. Entries of connections that have closed meanwhile are recognised
//! by their id and skipped, so closing never searches the wheel.
//!
//! Resolution: a tick is 1/32 of the timeout (at least 10 ms), so a connection is closed between
//! `timeout` and `timeout + tick` after its last activity, and the wheel never has more than ~33
//! slots to look through for the next wake-up.

use std::time::{Duration, Instant};

/// A connection as the wheel knows it: slab key and the id that tells a reused key apart.
pub type Entry = (u32, u32);

pub struct IdleWheel {
    start: Instant,
    tick: Duration,
    timeout_ticks: u32,
    slots: Vec<Vec<Entry>>,
    /// The next tick not yet processed.
    cursor: u32,
    entries: usize,
}

impl IdleWheel {
    pub fn new(timeout: Duration, start: Instant) -> IdleWheel {
        let tick = (timeout / 32).max(Duration::from_millis(10));
        let timeout_ticks = u32::try_from(timeout.as_nanos().div_ceil(tick.as_nanos()))
            .unwrap_or(u32::MAX / 2)
            .max(1);
        // One slot more than the longest deadline, so a deadline never shares the slot being
        // processed.
        let slots = (timeout_ticks as usize + 1).min(1 << 20);
        IdleWheel {
            start,
            tick,
            timeout_ticks,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            cursor: 0,
            entries: 0,
        }
    }

    /// The current tick: what the reactor stamps on a connection when it moves bytes.
    pub fn tick_at(&self, now: Instant) -> u32 {
        let ticks = now.saturating_duration_since(self.start).as_nanos() / self.tick.as_nanos();
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// The tick at which a connection last active at `last_active` is due.
    pub fn deadline(&self, last_active: u32) -> u32 {
        last_active.saturating_add(self.timeout_ticks)
    }

    /// Arms `entry` to be checked at tick `due`.
    pub fn arm(&mut self, entry: Entry, due: u32) {
        let n = self.slots.len() as u32;
        // A deadline further out than the wheel reaches is checked early and simply re-armed.
        let due = due.max(self.cursor);
        self.slots[(due % n) as usize].push(entry);
        self.entries += 1;
    }

    /// Takes every entry whose slot is due at tick `now`; `check` returns the tick at which the
    /// connection is next due, or `None` (closed, or expired and closed by `check`).
    pub fn expire(&mut self, now: u32, mut check: impl FnMut(Entry, u32) -> Option<u32>) {
        let n = self.slots.len() as u32;
        while self.cursor <= now && self.entries > 0 {
            let t = self.cursor;
            let mut due = std::mem::take(&mut self.slots[(t % n) as usize]);
            self.entries -= due.len();
            self.cursor += 1;
            for entry in due.drain(..) {
                if let Some(next) = check(entry, t) {
                    self.arm(entry, next);
                }
            }
            // Give the (now empty) allocation back to the slot for reuse.
            let slot = &mut self.slots[(t % n) as usize];
            if slot.is_empty() {
                *slot = due;
            }
        }
        if self.entries == 0 {
            self.cursor = self.cursor.max(now.saturating_add(1));
        }
    }

    /// When the next non-empty slot falls due, if any entry is armed.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.entries == 0 {
            return None;
        }
        let n = self.slots.len() as u32;
        let ahead = (0..n).find(|i| !self.slots[((self.cursor + i) % n) as usize].is_empty())?;
        let tick = self.cursor.saturating_add(ahead);
        Some(self.start + self.tick * tick)
    }
}

/// What the idle timeout knows of a connection, kept beside the slab (indexed by slab key) and
/// only when a timeout is set, so that without one a connection costs 16 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct IdleMeta {
    /// Tells this connection apart from a later one at the same slab key (wheel entries).
    id: u32,
    /// Tick of the last byte moved.
    last_active: u32,
}

/// The idle timeout as the reactor uses it: the wheel, each connection's last activity, and the
/// current tick.
pub(crate) struct IdleTracker {
    wheel: IdleWheel,
    meta: Vec<IdleMeta>,
    now_tick: u32,
    next_id: u32,
}

impl IdleTracker {
    pub(crate) fn new(timeout: Duration, now: Instant) -> IdleTracker {
        IdleTracker {
            wheel: IdleWheel::new(timeout, now),
            meta: Vec::new(),
            now_tick: 0,
            next_id: 0,
        }
    }

    /// Reads the clock once per loop turn; activity in the turn is stamped with this tick.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.now_tick = self.wheel.tick_at(now);
    }

    /// Starts watching a new connection at slab key `key`.
    pub(crate) fn watch(&mut self, key: usize) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        if self.meta.len() <= key {
            self.meta.resize(key + 1, IdleMeta::default());
        }
        self.meta[key] = IdleMeta {
            id,
            last_active: self.now_tick,
        };
        self.wheel
            .arm((key as u32, id), self.wheel.deadline(self.now_tick));
    }

    /// How long connection `key` has left before the timeout (a connection moving out).
    pub(crate) fn left(&self, key: usize) -> Option<Duration> {
        let m = self.meta.get(key)?;
        let due = self.wheel.deadline(m.last_active);
        Some(self.wheel.tick * due.saturating_sub(self.now_tick))
    }

    /// Starts watching connection `key`, moved in with `left` before its timeout: as if it
    /// had been last active that long before the timeout.
    pub(crate) fn watch_for(&mut self, key: usize, left: Duration) {
        let left_ticks = u32::try_from(left.as_nanos() / self.wheel.tick.as_nanos())
            .unwrap_or(u32::MAX)
            .min(self.wheel.timeout_ticks);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        if self.meta.len() <= key {
            self.meta.resize(key + 1, IdleMeta::default());
        }
        let last_active = self
            .now_tick
            .saturating_sub(self.wheel.timeout_ticks - left_ticks);
        self.meta[key] = IdleMeta { id, last_active };
        self.wheel
            .arm((key as u32, id), self.wheel.deadline(last_active));
    }

    /// Connection `key` moved bytes this turn.
    pub(crate) fn touch(&mut self, key: usize) {
        if let Some(m) = self.meta.get_mut(key) {
            m.last_active = self.now_tick;
        }
    }

    /// The keys of connections quiet past the timeout; `live` says whether a key still holds
    /// the connection the wheel entry was made for.
    pub(crate) fn expired(&mut self, live: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut out = Vec::new();
        let meta = &self.meta;
        let timeout = self.wheel.deadline(0);
        self.wheel.expire(self.now_tick, |(key, id), t| {
            let key = key as usize;
            let m = meta.get(key).filter(|m| m.id == id && live(key))?;
            let due = m.last_active.saturating_add(timeout);
            if due <= t {
                out.push(key);
                None
            } else {
                Some(due)
            }
        });
        out
    }

    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.wheel.next_wake()
    }
}

/// The poll timeout for a loop whose timers are `deadlines` (those that are set): until the
/// earliest, or none (wait for an event) when no timer is set.
pub(crate) fn until_earliest(
    now: Instant,
    deadlines: impl IntoIterator<Item = Option<Instant>>,
) -> Option<Duration> {
    deadlines
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_entry_expires_after_timeout_active_one_is_rearmed() {
        let t0 = Instant::now();
        let mut w = IdleWheel::new(Duration::from_secs(32), t0);
        assert_eq!((w.tick, w.timeout_ticks), (Duration::from_secs(1), 32));
        let mut last = [0u32, 0u32];
        w.arm((0, 7), w.deadline(0));
        w.arm((1, 8), w.deadline(0));
        assert_eq!(w.next_wake(), Some(t0 + Duration::from_secs(32)));
        last[1] = 20; // connection 1 moved bytes at tick 20
        let mut closed = vec![];
        let timeout = w.timeout_ticks;
        w.expire(32, |(k, id), t| {
            let due = last[k as usize] + timeout;
            if due <= t {
                closed.push(id);
                None
            } else {
                Some(due)
            }
        });
        assert_eq!(closed, vec![7]);
        assert_eq!(w.next_wake(), Some(t0 + Duration::from_secs(52)));
        w.expire(60, |(_, id), _| {
            closed.push(id);
            None
        });
        assert_eq!(closed, vec![7, 8]);
        assert_eq!(w.next_wake(), None);
    }

    #[test]
    fn tick_is_a_32nd_of_the_timeout_within_bounds() {
        let t0 = Instant::now();
        assert_eq!(
            IdleWheel::new(Duration::from_millis(100), t0).tick,
            Duration::from_millis(10)
        );
        assert_eq!(
            IdleWheel::new(Duration::from_secs(3200), t0).tick,
            Duration::from_secs(100)
        );
        let w = IdleWheel::new(Duration::from_secs(2), t0);
        assert_eq!(w.tick_at(t0 + Duration::from_millis(130)), 2);
    }
}

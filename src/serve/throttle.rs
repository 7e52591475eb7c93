//! How often a kind of log line may be written, shared by every rate-limited line of the server:
//! refusals at `--max-connections`, refused PROXY headers, UDP "not answering" lines (with the
//! per-source memory in `logs`), and the once-per-episode lines (out of descriptors, the
//! pending-output ceiling).
//!
//! A [`Throttle`] lets through at most `lines` lines per window and counts the events it holds
//! back, so that each line can say how many events it stands for and the lines add up to the
//! counter; held events are owed a line when the window ends ([`Throttle::due`]), or at shutdown.
//! An [`Episode`] is a latch: a line when a condition starts, one when it ends, none between.

use std::time::{Duration, Instant};

/// At most `lines` lines per `every`, each reporting the events since the line before.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    lines: u32,
    /// When the current window began (at its first line), and the lines written in it.
    window: Option<Instant>,
    lines_in_window: u32,
    /// Events since the last line, not reported yet.
    held: u64,
    /// Events the lines have reported so far.
    reported: u64,
}

impl Throttle {
    pub(crate) const fn new(lines: u32, every: Duration) -> Throttle {
        Throttle {
            every,
            lines,
            window: None,
            lines_in_window: 0,
            held: 0,
            reported: 0,
        }
    }

    /// Counts one event at `now`; if it gets a line, returns the number of events the line
    /// reports (this one and those held back before it).
    pub(crate) fn event(&mut self, now: Instant) -> Option<u64> {
        self.held += 1;
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= self.every)
        {
            self.window = Some(now);
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= self.lines {
            return None;
        }
        self.lines_in_window += 1;
        Some(self.report())
    }

    /// When the events held back are owed their line (the end of the window), if any are.
    pub(crate) fn due(&self) -> Option<Instant> {
        // The first event always gets a line, so one that waits has a window to wait on.
        let w = self.window.filter(|_| self.held > 0)?;
        Some(w + self.every)
    }

    /// The events held back, if their line is due at `now`; a new window starts with it.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<u64> {
        if self.due().is_none_or(|t| now < t) {
            return None;
        }
        self.window = Some(now);
        self.lines_in_window = 1;
        Some(self.report())
    }

    /// The events held back, whenever their line would be due (no more will follow: shutdown).
    pub(crate) fn take_rest(&mut self) -> Option<u64> {
        (self.held > 0).then(|| self.report())
    }

    /// Events the lines have reported so far (the last line's included).
    pub(crate) fn reported(&self) -> u64 {
        self.reported
    }

    fn report(&mut self) -> u64 {
        let n = std::mem::take(&mut self.held);
        self.reported += n;
        n
    }
}

/// A condition that gets a line when it starts and one when it ends, however often it is seen
/// in between; it remembers when it started.
#[derive(Debug, Default)]
pub(crate) struct Episode {
    since: Option<Instant>,
}

impl Episode {
    /// The condition holds at `now`: true if that is news (log its start).
    pub(crate) fn start(&mut self, now: Instant) -> bool {
        let news = self.since.is_none();
        self.since.get_or_insert(now);
        news
    }

    /// The condition is over: when it started, if it held until now (log its end).
    pub(crate) fn end(&mut self) -> Option<Instant> {
        self.since.take()
    }

    /// When the current episode started, if one is on.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_a_window_and_the_lines_add_up_to_the_events() {
        let t = Instant::now();
        let mut th = Throttle::new(1, SEC);
        assert_eq!(th.event(t), Some(1), "the first event is logged at once");
        assert_eq!(th.event(t + SEC / 4), None);
        assert_eq!(th.event(t + SEC / 2), None);
        assert_eq!(th.due(), Some(t + SEC));
        assert_eq!(th.take_due(t + SEC / 2), None, "not yet");
        assert_eq!(th.take_due(t + SEC), Some(2));
        assert_eq!(th.due(), None);
        // The line just written opened a window: the next event waits for it to end.
        assert_eq!(th.event(t + SEC + SEC / 2), None);
        assert_eq!(th.event(t + 2 * SEC), Some(2));
        assert_eq!(th.event(t + 2 * SEC), None);
        assert_eq!(th.take_rest(), Some(1));
        assert_eq!(th.take_rest(), None);
        assert_eq!(th.reported(), 6, "every event reported exactly once");
    }

    #[test]
    fn several_lines_a_window() {
        let t = Instant::now();
        let mut th = Throttle::new(10, SEC);
        let logged = (0..100).filter(|_| th.event(t).is_some()).count();
        assert_eq!(logged, 10);
        assert_eq!(th.event(t + SEC), Some(91));
    }

    #[test]
    fn an_episode_is_news_once_at_each_end() {
        let t = Instant::now();
        let mut e = Episode::default();
        assert_eq!(e.end(), None, "nothing to end");
        assert!(e.start(t));
        assert!(!e.start(t + SEC), "already on");
        assert_eq!(e.since(), Some(t));
        assert_eq!(e.end(), Some(t));
        assert_eq!(e.end(), None);
    }
}

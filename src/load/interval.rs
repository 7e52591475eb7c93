//! The run second by second: what one worker (or one process) measured in each interval, and
//! how intervals from many sources are merged into one stream, in order.
//!
//! A worker records each latency into the histogram of the interval it is in (the only work on
//! the hot path, as before) and, once the interval is over, adds it into its total and hands it
//! to the main thread: at most once a second, plus once at each change of stage, so the
//! measurement window's first interval starts with the window. Intervals are keyed by
//! ([`Stage`] rank, index): the warm-up's count from the start of the run, the window's from the
//! start of the window.
//!
//! [`Merger`] adds up the intervals of every source (the workers of a process, or the processes
//! of `--processes`) that share a key, and hands an interval on once every source still running
//! has moved past it. Sources report their keys in increasing order, so a source that reported a
//! later key will never add to an earlier one (a worker that saw the window open a moment
//! before another may simply have no interval with the other's last warm-up index).
//!
//! Histograms are merged as histograms (`Histogram::add`), never by averaging percentiles: the
//! window's intervals of a source add up exactly to that source's total, and the merged stream's
//! to the merged total.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::hist::Spot;
use super::stage::Stage;
use super::stats::ErrorKinds;

/// Orders intervals: stage rank, then index within the stage.
pub(crate) type Key = (u8, u64);

/// What one source measured in one interval. Counts are of that interval; `open` and
/// `connecting` are as at its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Interval {
    /// Warmup, Measure or Check.
    pub stage: Stage,
    pub index: u64,
    /// Start, in seconds from the start of the run (warm-up) or of the window (the rest).
    pub start: f64,
    /// Length in seconds.
    pub secs: f64,
    pub msgs: u64,
    pub bytes: u64,
    pub errors: u64,
    /// The same errors by kind.
    #[serde(default)]
    pub error_kinds: ErrorKinds,
    pub mismatches: u64,
    pub connects: u64,
    /// hold: connections held when the check began, and how many answered it.
    pub held: u64,
    pub answered: u64,
    pub open: u64,
    pub connecting: u64,
    #[serde(with = "super::hlog::serde_hist")]
    pub hist: Histogram<u64>,
}

impl Interval {
    pub(crate) fn key(&self) -> Key {
        (self.stage.rank(), self.index)
    }

    /// Adds another source's interval of the same key.
    pub(crate) fn merge(&mut self, o: &Interval) {
        self.start = self.start.min(o.start);
        self.secs = self.secs.max(o.secs);
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.error_kinds.add(&o.error_kinds);
        self.mismatches += o.mismatches;
        self.connects += o.connects;
        self.held += o.held;
        self.answered += o.answered;
        self.open += o.open;
        self.connecting += o.connecting;
        // Same bounds on every side, so adding cannot fail.
        let _ = self.hist.add(&o.hist);
    }

    /// Latency percentiles of this interval, if it has any sample.
    pub(crate) fn spot(&self) -> Option<Spot> {
        Spot::of(&self.hist)
    }
}

/// A merged interval, and (when asked for) the parts it was made of, by source.
pub(crate) struct Merged {
    pub total: Interval,
    pub parts: Vec<(usize, Interval)>,
}

struct Partial {
    total: Interval,
    parts: Vec<(usize, Interval)>,
    /// The sources that reported this key.
    from: Vec<bool>,
}

/// Merges the interval streams of `n` sources into one (see the module doc).
pub(crate) struct Merger {
    latest: Vec<Option<Key>>,
    /// Each source's `open` and `connecting` by key, back to the last key merged: a source
    /// that is busy may report one interval for two seconds (no interval of the second's key),
    /// and its connections are still open then, so the merge counts them as they were last.
    gauges: Vec<BTreeMap<Key, (u64, u64)>>,
    ended: Vec<bool>,
    pending: BTreeMap<Key, Partial>,
    keep_parts: bool,
}

impl Merger {
    /// `keep_parts`: hand on each source's own interval beside the sum (for tagged log lines).
    pub(crate) fn new(sources: usize, keep_parts: bool) -> Merger {
        Merger {
            latest: vec![None; sources],
            gauges: vec![BTreeMap::new(); sources],
            ended: vec![false; sources],
            pending: BTreeMap::new(),
            keep_parts,
        }
    }

    pub(crate) fn add(&mut self, src: usize, iv: Interval) {
        let key = iv.key();
        if let Some(l) = self.latest.get_mut(src) {
            *l = (*l).max(Some(key));
        }
        if let Some(g) = self.gauges.get_mut(src) {
            g.insert(key, (iv.open, iv.connecting));
        }
        let part = self.keep_parts.then(|| (src, iv.clone()));
        let n = self.latest.len();
        let p = match self.pending.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => {
                let p = e.into_mut();
                p.total.merge(&iv);
                p
            }
            std::collections::btree_map::Entry::Vacant(e) => e.insert(Partial {
                total: iv,
                parts: Vec::new(),
                from: vec![false; n],
            }),
        };
        p.parts.extend(part);
        if let Some(f) = p.from.get_mut(src) {
            *f = true;
        }
    }

    /// Source `src` will report nothing more.
    pub(crate) fn end(&mut self, src: usize) {
        if let Some(e) = self.ended.get_mut(src) {
            *e = true;
        }
    }

    fn complete(&self, key: Key) -> bool {
        self.latest
            .iter()
            .zip(&self.ended)
            .all(|(l, &ended)| ended || *l >= Some(key))
    }

    /// The merged intervals that are complete, in order.
    pub(crate) fn ready(&mut self) -> Vec<Merged> {
        let mut out = Vec::new();
        while let Some((&key, _)) = self.pending.first_key_value() {
            if !self.complete(key) {
                break;
            }
            out.extend(self.take(key));
        }
        out
    }

    /// Everything still pending, in order (the run is over).
    pub(crate) fn finish(&mut self) -> Vec<Merged> {
        let keys: Vec<Key> = self.pending.keys().copied().collect();
        keys.into_iter().filter_map(|k| self.take(k)).collect()
    }

    fn take(&mut self, key: Key) -> Option<Merged> {
        let (gauges, ended) = (&mut self.gauges, &self.ended);
        self.pending.remove(&key).map(|mut p| {
            for (src, g) in gauges.iter_mut().enumerate() {
                let last = g.range(..=key).next_back().map(|(&k, &v)| (k, v));
                if let Some((k, (open, connecting))) = last {
                    // A source that has ended has closed its connections.
                    let absent = !p.from.get(src).copied().unwrap_or(true) && !ended[src];
                    if absent {
                        p.total.open += open;
                        p.total.connecting += connecting;
                    }
                    // Only the latest at or before this key can be needed again.
                    *g = g.split_off(&k);
                }
            }
            let mut parts = p.parts;
            parts.sort_by_key(|(src, _)| *src);
            Merged {
                total: p.total,
                parts,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::hist::new_hist;

    fn iv(stage: Stage, index: u64, msgs: u64, lat: &[u64]) -> Interval {
        let mut hist = new_hist();
        for &v in lat {
            hist.record(v).unwrap();
        }
        Interval {
            stage,
            index,
            start: index as f64,
            secs: 1.0,
            msgs,
            bytes: msgs * 64,
            errors: 0,
            error_kinds: ErrorKinds::default(),
            mismatches: 0,
            connects: 0,
            held: 0,
            answered: 0,
            open: 1,
            connecting: 0,
            hist,
        }
    }

    fn keys(ms: &[Merged]) -> Vec<(Stage, u64)> {
        ms.iter().map(|m| (m.total.stage, m.total.index)).collect()
    }

    #[test]
    fn a_source_that_skips_a_second_still_counts_its_open_connections() {
        let mut m = Merger::new(2, false);
        let mut a = iv(Stage::Warmup, 0, 0, &[]);
        a.open = 100;
        let mut b = a.clone();
        b.open = 50;
        m.add(0, a.clone());
        m.add(1, b);
        // Source 1 is busy: its next interval is of second 2; second 1 is source 0's alone.
        let mut a1 = iv(Stage::Warmup, 1, 0, &[]);
        a1.open = 120;
        m.add(0, a1);
        let mut b2 = iv(Stage::Warmup, 2, 0, &[]);
        b2.open = 90;
        m.add(1, b2);
        let opens: Vec<u64> = m.ready().iter().map(|x| x.total.open).collect();
        assert_eq!(
            opens,
            [150, 170],
            "second 1 counts source 1's 50 as last reported"
        );
        m.end(0);
        let rest: Vec<u64> = m.finish().iter().map(|x| x.total.open).collect();
        assert_eq!(rest, [90], "an ended source adds nothing");
    }

    #[test]
    fn an_interval_waits_for_every_running_source() {
        let mut m = Merger::new(2, true);
        m.add(0, iv(Stage::Warmup, 0, 1, &[100]));
        assert!(m.ready().is_empty());
        m.add(1, iv(Stage::Warmup, 0, 2, &[200, 300]));
        let r = m.ready();
        assert_eq!(keys(&r), vec![(Stage::Warmup, 0)]);
        assert_eq!(r[0].total.msgs, 3);
        assert_eq!(r[0].total.open, 2);
        assert_eq!(r[0].total.hist.len(), 3);
        assert_eq!(r[0].parts.len(), 2);
        assert_eq!(r[0].parts[1].1.hist.len(), 2);
        // A source past a key no longer holds it back; an ended one holds nothing back.
        m.add(0, iv(Stage::Warmup, 1, 1, &[]));
        m.add(1, iv(Stage::Measure, 0, 1, &[]));
        assert_eq!(keys(&m.ready()), vec![(Stage::Warmup, 1)]);
        m.end(0);
        assert_eq!(keys(&m.ready()), vec![(Stage::Measure, 0)]);
        m.add(1, iv(Stage::Measure, 1, 1, &[]));
        m.add(1, iv(Stage::Check, 0, 1, &[]));
        m.end(1);
        assert_eq!(
            keys(&m.finish()),
            vec![(Stage::Measure, 1), (Stage::Check, 0)]
        );
    }

    #[test]
    fn a_source_that_never_reported_holds_everything_until_it_ends() {
        let mut m = Merger::new(2, false);
        m.add(0, iv(Stage::Measure, 0, 1, &[]));
        assert!(m.ready().is_empty());
        m.end(1);
        let r = m.ready();
        assert_eq!(keys(&r), vec![(Stage::Measure, 0)]);
        assert!(r[0].parts.is_empty());
    }

    #[test]
    fn merged_histograms_are_the_sum_of_the_parts() {
        let mut m = Merger::new(3, true);
        let mut want = new_hist();
        for src in 0..3 {
            let lat: Vec<u64> = (1..=100).map(|v| v * 1000 * (src + 1)).collect();
            for &v in &lat {
                want.record(v).unwrap();
            }
            m.add(src as usize, iv(Stage::Measure, 0, 100, &lat));
        }
        let r = m.ready();
        assert_eq!(r[0].total.hist, want);
        assert_eq!(r[0].total.msgs, 300);
    }

    #[test]
    fn intervals_cross_the_wire_whole() {
        let a = iv(Stage::Measure, 3, 7, &[5, 50_000]);
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains("\"stage\":\"measure\""), "{text}");
        let b: Interval = serde_json::from_str(&text).unwrap();
        assert_eq!((b.stage, b.index, b.msgs), (Stage::Measure, 3, 7));
        assert_eq!(b.hist, a.hist);
    }
}

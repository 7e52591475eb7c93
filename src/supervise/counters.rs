//! The counters of a supervised server: a round asks every ready worker for its counters over
//! its channel and waits (bounded) for the answers, then serves what asked (a scrape, the
//! periodic stats line, SIGUSR1); the counters of workers gone are kept, added up, so the total
//! never goes back.

use std::time::{Duration, Instant};

use super::Supervisor;
use super::pool::{Worker, WorkerState};
use super::reload::Reloads;
use crate::serve::control::ToWorker;
use crate::serve::logs::Count;
use crate::serve::metrics::{self, Extra, Snapshot};
use crate::serve::{Config, Limits, Rates, Stats};

/// How long the supervisor waits for workers' counters when it asks for them.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the counters were asked for.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Purposes {
    pub(super) scrape: bool,
    pub(super) stats_line: bool,
    pub(super) usr1: bool,
}

impl Purposes {
    fn join(&mut self, other: Purposes) {
        self.scrape |= other.scrape;
        self.stats_line |= other.stats_line;
        self.usr1 |= other.usr1;
    }
}

/// One request for every worker's counters.
struct Round {
    seq: u64,
    waiting: Vec<u64>,
    deadline: Instant,
    purposes: Purposes,
}

pub(super) struct Counters {
    round: Option<Round>,
    next_seq: u64,
    /// Counters of workers gone, added up; and the last set's per worker, for the exit log.
    pub(super) retired: Stats,
    retired_count: u64,
    last_set: Vec<(String, Stats)>,
    /// The periodic stats line: when next, every how long, and the total at the last one.
    stats_next: Option<Instant>,
    stats_interval: Option<Duration>,
    stats_last: (Stats, Instant),
    /// The limits every worker runs under (each worker's own connection limit aside).
    limits: Limits,
    start_time: f64,
}

impl Counters {
    pub(super) fn new(server: &Config, now: Instant) -> Counters {
        Counters {
            round: None,
            next_seq: 0,
            retired: Stats::default(),
            retired_count: 0,
            last_set: Vec::new(),
            stats_next: server.stats_interval.and_then(|i| now.checked_add(i)),
            stats_interval: server.stats_interval,
            stats_last: (Stats::default(), now),
            limits: Limits::of(server),
            start_time: metrics::unix_now(),
        }
    }

    /// A worker is gone: its counters join the total (`name`: it was of the last set).
    pub(super) fn retire(&mut self, stats: Stats, name: Option<String>) {
        self.retired.add(&stats);
        self.retired_count += 1;
        if let Some(name) = name {
            self.last_set.push((name, stats));
        }
    }

    pub(super) fn next_deadline(&self) -> [Option<Instant>; 2] {
        [self.round.as_ref().map(|r| r.deadline), self.stats_next]
    }

    /// Whether the periodic stats line is due (and if so, schedules the next).
    pub(super) fn stats_due(&mut self, now: Instant) -> bool {
        match self.stats_next {
            Some(due) if now >= due => {
                self.stats_next = self.stats_interval.and_then(|i| now.checked_add(i));
                true
            }
            _ => false,
        }
    }

    pub(super) fn round_late(&self, now: Instant) -> bool {
        self.round.as_ref().is_some_and(|r| now >= r.deadline)
    }

    /// The exit log: each of the last set's workers, then the total.
    pub(super) fn log_final(&self, restarts: u64, reloads: u64) {
        for (name, stats) in &self.last_set {
            info!("final counters: {name}: {stats}");
        }
        let earlier = self.retired_count - self.last_set.len() as u64;
        if earlier > 0 {
            info!(
                "({} before them, restarted or reloaded, are in the total)",
                Count(earlier, "worker")
            );
        }
        info!(
            "final counters: total: {}; {restarts} restart(s), {reloads} reload(s)",
            self.retired
        );
    }
}

impl Supervisor {
    /// Asks every worker for its counters (joining a request already under way).
    pub(super) fn ask_counters(&mut self, purposes: Purposes, now: Instant) {
        if let Some(r) = &mut self.counters.round {
            r.purposes.join(purposes);
            return;
        }
        self.counters.next_seq += 1;
        let seq = self.counters.next_seq;
        let waiting: Vec<u64> = self
            .pool
            .workers
            .iter()
            .filter(|(_, w)| {
                w.ready_at.is_some()
                    && w.channel
                        .as_ref()
                        .is_some_and(|c| c.send(&ToWorker::Report { seq }, None).is_ok())
            })
            .map(|(&id, _)| id)
            .collect();
        let empty = waiting.is_empty();
        self.counters.round = Some(Round {
            seq,
            waiting,
            deadline: now + REPORT_TIMEOUT,
            purposes,
        });
        if empty {
            self.finish_round();
        }
    }

    /// Worker `id` answered round `seq`.
    pub(super) fn on_report(&mut self, id: u64, seq: u64) {
        if self.counters.round.as_ref().is_some_and(|r| r.seq == seq) {
            self.no_longer_waiting(id);
        }
    }

    /// Worker `id` answered, or will not.
    pub(super) fn no_longer_waiting(&mut self, id: u64) {
        if let Some(r) = &mut self.counters.round {
            r.waiting.retain(|&w| w != id);
            if r.waiting.is_empty() {
                self.finish_round();
            }
        }
    }

    /// The counters are in (or the time is up): answer what asked for them.
    pub(super) fn finish_round(&mut self) {
        let Some(r) = self.counters.round.take() else {
            return;
        };
        let now = Instant::now();
        let mut live: Vec<&Worker> = self
            .pool
            .workers
            .values()
            .filter(|w| w.ready_at.is_some())
            .collect();
        live.sort_by_key(|w| (w.slot, w.generation));
        let mut total = self.counters.retired.clone();
        for w in &live {
            total.add(&w.last);
        }
        if r.purposes.scrape
            && let Some(m) = &mut self.metrics
        {
            let body = exposition(&live, &self.counters, self.pool.restarts, &self.reloads);
            m.answer_waiting(&body);
        }
        let c = &mut self.counters;
        if r.purposes.stats_line {
            for w in &live {
                debug!("stats: {}: {}", w.name(), w.last);
            }
            let (before, at) = &c.stats_last;
            let rates = Rates::between(before, &total, now.saturating_duration_since(*at));
            info!(
                "stats: total ({}): {total}; {rates}",
                Count(live.len() as u64, "worker")
            );
            c.stats_last = (total.clone(), now);
        }
        if r.purposes.usr1 {
            info!(
                "SIGUSR1: counters: total ({}): {total}",
                Count(live.len() as u64, "worker")
            );
        }
    }
}

/// The one exposition of the whole server: each live worker's series with a `worker` and a
/// `generation` label, and the supervisor's own gauges.
fn exposition(live: &[&Worker], c: &Counters, restarts: u64, reloads: &Reloads) -> String {
    let snaps: Vec<(String, Snapshot)> = live
        .iter()
        .map(|w| {
            (
                format!("worker=\"{}\",generation=\"{}\"", w.slot, w.generation),
                Snapshot {
                    stats: w.last.clone(),
                    limits: Limits {
                        max_connections: w.capacity.max_connections,
                        ..c.limits
                    },
                    start_time: c.start_time,
                },
            )
        })
        .collect();
    let series: Vec<(String, &Snapshot)> = snaps.iter().map(|(l, s)| (l.clone(), s)).collect();
    let serving = live
        .iter()
        .filter(|w| w.state() == WorkerState::Serving)
        .count();
    let extra = [
        Extra {
            name: "upecho_workers",
            kind: "gauge",
            help: "Worker processes serving now (--workers).",
            value: serving as f64,
        },
        Extra {
            name: "upecho_worker_restarts_total",
            kind: "counter",
            help: "Workers restarted after they died.",
            value: restarts as f64,
        },
        Extra {
            name: "upecho_reloads_total",
            kind: "counter",
            help: "Reloads (SIGHUP) completed.",
            value: reloads.completed as f64,
        },
        Extra {
            name: "upecho_reload_moved_connections_total",
            kind: "counter",
            help: "TCP connections reloads moved to a worker of the new generation.",
            value: reloads.moved as f64,
        },
    ];
    metrics::render_labelled(&series, c.start_time, &extra)
}

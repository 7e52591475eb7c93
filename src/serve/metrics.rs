//! `--metrics ADDR`: `GET /metrics` in the Prometheus text exposition format, served by the
//! reactor itself, on its own listener and its own small table of scrape connections (an echo
//! connection stays 16 bytes).
//!
//! A scraper is a client like any other, so it is held to limits that keep a hostile one from
//! hurting the echo clients: at most [`MAX_SCRAPERS`] at once (more are closed at once), a request
//! of at most [`MAX_REQUEST`] bytes (431 past it), [`SCRAPE_TIMEOUT`] from accept to the last
//! byte of the response (then closed), one request per connection (`Connection: close`). The
//! request is parsed with `httparse`. The exposition is written here, from a snapshot of the
//! counters taken at the scrape, in the classic text format: the official `prometheus-client`
//! crate writes OpenMetrics text only (HELP and TYPE on the name without `_total`, an `info`
//! type, `# EOF`), which `promtool check metrics` rejects, and twenty-odd fixed lines need no
//! registry.
//!
//! | request | response |
//! |---|---|
//! | `GET /metrics` (or `HEAD`) | 200, the exposition |
//! | `GET /healthz` | 200 `ok`: the process runs its loop (a liveness probe) |
//! | `GET /readyz` | 200 `ready` while serving; 503 `draining` while it drains or hands its connections over (a readiness probe: take it out of rotation) |
//! | another path | 404 |
//! | another method | 405, `Allow: GET, HEAD` |
//! | not HTTP/1.x | 400 |

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use slab::Slab;

use super::stats::Stats;
use super::token;
use crate::io_outcome::Outcome;

/// Most scrape connections open at once.
pub const MAX_SCRAPERS: usize = 16;
/// Largest request accepted (a scraper's request is a few hundred bytes).
pub const MAX_REQUEST: usize = 8 << 10;
/// From accept to the last byte of the response.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) use super::config::Limits;

/// What a scrape reports: the counters at that moment and what does not change.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) stats: Stats,
    pub(crate) limits: Limits,
    /// Seconds since the epoch at which the process started serving.
    pub(crate) start_time: f64,
}

/// One metric family in the classic text format: `# HELP`, `# TYPE`, one sample.
fn family(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, value: f64) {
    family_of(out, name, kind, help, &[(labels, value)]);
}

/// One metric family with one sample per label set (`labels` with its braces, or empty).
fn family_of(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A metric of the supervisor's own (`--workers`): restarts, reloads, workers running.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extra {
    pub(crate) name: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) help: &'static str,
    pub(crate) value: f64,
}

/// The exposition of `snapshot`, in the Prometheus text format (version 0.0.4), names as the
/// Prometheus naming guide has them: `upecho_` prefix, base units, `_total` on counters.
pub(crate) fn render(snapshot: &Snapshot) -> String {
    render_labelled(&[(String::new(), snapshot)], snapshot.start_time, &[])
}

/// The exposition of several reactors' snapshots, each series once per reactor with its labels
/// (`worker="0",generation="1"`: the whole label set without braces; empty for a single server),
/// then the process's own families and `extra`.
pub(crate) fn render_labelled(
    series: &[(String, &Snapshot)],
    start_time: f64,
    extra: &[Extra],
) -> String {
    let mut out = String::with_capacity(4096 * series.len().max(1));
    let labels: Vec<String> = series
        .iter()
        .map(|(l, _)| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        })
        .collect();
    // Each family once, with a sample per reactor: the order the text format requires.
    let each =
        |out: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&Snapshot) -> f64| {
            let samples: Vec<(&str, f64)> = series
                .iter()
                .zip(&labels)
                .map(|((_, snap), l)| (l.as_str(), f(snap)))
                .collect();
            family_of(out, name, kind, help, &samples);
        };
    type Counter = (&'static str, &'static str, fn(&Stats) -> u64);
    let counters: [Counter; 20] = [
        (
            "upecho_connections_accepted_total",
            "TCP connections accepted and served.",
            |s| s.accepted,
        ),
        (
            "upecho_connections_refused_total",
            "TCP connections closed at once at --max-connections.",
            |s| s.refused,
        ),
        (
            "upecho_connections_handed_off_total",
            "TCP connections accepted at --max-connections and passed to a worker with room.",
            |s| s.handed_off,
        ),
        (
            "upecho_connections_moved_out_total",
            "TCP connections moved to a worker of the new generation by a reload (--workers).",
            |s| s.moved_out,
        ),
        (
            "upecho_connections_moved_in_total",
            "TCP connections moved in by a reload: from the previous generation, or back when the new one had no room (--workers).",
            |s| s.moved_in,
        ),
        (
            "upecho_connections_reset_total",
            "TCP connections the peer ended abnormally (reset, broken pipe, timeout).",
            |s| s.reset,
        ),
        (
            "upecho_connection_errors_total",
            "TCP connections ended by an error on the server's side.",
            |s| s.errors,
        ),
        (
            "upecho_connections_idle_closed_total",
            "TCP connections closed by --idle-timeout.",
            |s| s.idle_closed,
        ),
        (
            "upecho_received_bytes_total",
            "Bytes read from TCP connections.",
            |s| s.bytes_in,
        ),
        (
            "upecho_sent_bytes_total",
            "Bytes written to TCP connections.",
            |s| s.bytes_out,
        ),
        (
            "upecho_udp_received_datagrams_total",
            "UDP datagrams received.",
            |s| s.datagrams_in,
        ),
        (
            "upecho_udp_sent_datagrams_total",
            "UDP replies sent.",
            |s| s.datagrams_out,
        ),
        (
            "upecho_udp_dropped_datagrams_total",
            "UDP replies dropped (reply queue full, or the send failed).",
            |s| s.datagrams_dropped,
        ),
        (
            "upecho_udp_ignored_datagrams_total",
            "UDP datagrams not answered (reflection guard or per-source budget).",
            |s| s.datagrams_ignored,
        ),
        (
            "upecho_pending_ceiling_reached_total",
            "Times pending output reached --max-pending-total.",
            |s| s.ceiling_reached,
        ),
        (
            "upecho_accept_pauses_total",
            "Times accepting paused for want of descriptors or memory (EMFILE and the like).",
            |s| s.accept_pauses,
        ),
        (
            "upecho_unknown_events_total",
            "Poll events for tokens the server did not register (ignored).",
            |s| s.unknown_events,
        ),
        (
            "upecho_proxy_headers_total",
            "PROXY protocol headers read from trusted sources.",
            |s| s.proxy_headers,
        ),
        (
            "upecho_proxy_rejected_total",
            "Connections from trusted sources closed for a missing or bad PROXY header.",
            |s| s.proxy_rejected,
        ),
        (
            "upecho_scrapes_total",
            "Metrics requests answered before this one.",
            |s| s.scrapes,
        ),
    ];
    for (name, help, value) in counters {
        each(&mut out, name, "counter", help, &|snap| {
            value(&snap.stats) as f64
        });
    }
    each(
        &mut out,
        "upecho_accept_paused_seconds_total",
        "counter",
        "Time accepting was paused for want of descriptors or memory.",
        &|snap| snap.stats.accept_paused_ns as f64 / 1e9,
    );
    type Gauge = (&'static str, &'static str, fn(&Snapshot) -> u64);
    let gauges: [Gauge; 6] = [
        (
            "upecho_connections_active",
            "TCP connections open now.",
            |x| x.stats.active,
        ),
        (
            "upecho_pending_bytes",
            "Output owed to clients now, all connections together.",
            |x| x.stats.pending_bytes,
        ),
        ("upecho_max_connections", "--max-connections.", |x| {
            x.limits.max_connections
        }),
        (
            "upecho_max_pending_bytes",
            "--max-pending: output one connection may owe.",
            |x| x.limits.max_pending,
        ),
        (
            "upecho_max_pending_total_bytes",
            "--max-pending-total: output all connections together may owe.",
            |x| x.limits.max_pending_total,
        ),
        (
            "upecho_udp_source_rate",
            "--udp-source-rate: replies per second per UDP source (0: no limit).",
            |x| x.limits.udp_source_rate,
        ),
    ];
    for (name, help, value) in gauges {
        each(&mut out, name, "gauge", help, &|snap| value(snap) as f64);
    }
    family(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        "",
        start_time,
    );
    family(
        &mut out,
        "upecho_build_info",
        "gauge",
        "The running build of upecho (always 1).",
        &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
        1.0,
    );
    for e in extra {
        family(&mut out, e.name, e.kind, e.help, "", e.value);
    }
    out
}

/// Seconds since the Unix epoch now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a request read so far asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Not complete yet.
    Incomplete,
    /// The exposition (`head`: headers only).
    Metrics { head: bool },
    /// Anything else, answered at once with this response.
    Other(Vec<u8>),
}

/// What to answer a request read so far, or `None` while it is incomplete.
#[cfg(test)]
pub(crate) fn respond(request: &[u8], exposition: impl FnOnce() -> String) -> Option<Vec<u8>> {
    match ask(request, true) {
        Asked::Incomplete => None,
        Asked::Metrics { head } => Some(metrics_response(&exposition(), head)),
        Asked::Other(resp) => Some(resp),
    }
}

/// The 200 response carrying `body`.
pub(crate) fn metrics_response(body: &str, head: bool) -> Vec<u8> {
    response(
        "200 OK",
        "text/plain; version=0.0.4; charset=utf-8",
        body,
        "",
        head,
    )
}

/// Parses the request read so far; `ready`: what `/readyz` says.
pub(crate) fn ask(request: &[u8], ready: bool) -> Asked {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, body, extra) = match req.parse(request) {
        Ok(httparse::Status::Partial) if request.len() < MAX_REQUEST => return Asked::Incomplete,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => (
            "431 Request Header Fields Too Large",
            "request too large\n".to_string(),
            "",
        ),
        Err(_) => (
            "400 Bad Request",
            "not an HTTP/1.x request\n".to_string(),
            "",
        ),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or(path);
            match req.method.unwrap_or("") {
                "GET" | "HEAD" if path == "/metrics" => {
                    return Asked::Metrics {
                        head: req.method == Some("HEAD"),
                    };
                }
                "GET" | "HEAD" if path == "/healthz" => ("200 OK", "ok\n".to_string(), ""),
                "GET" | "HEAD" if path == "/readyz" && ready => {
                    ("200 OK", "ready\n".to_string(), "")
                }
                "GET" | "HEAD" if path == "/readyz" => {
                    ("503 Service Unavailable", "draining\n".to_string(), "")
                }
                "GET" | "HEAD" => (
                    "404 Not Found",
                    format!(
                        "no such page: {path}; the metrics are at /metrics, probes at /healthz \
                         and /readyz\n"
                    ),
                    "",
                ),
                _ => (
                    "405 Method Not Allowed",
                    "only GET /metrics is served here\n".to_string(),
                    "Allow: GET, HEAD\r\n",
                ),
            }
        }
    };
    let head = req.method == Some("HEAD");
    Asked::Other(response(
        status,
        "text/plain; charset=utf-8",
        &body,
        extra,
        head,
    ))
}

fn response(status: &str, content_type: &str, body: &str, extra: &str, head: bool) -> Vec<u8> {
    let mut out = String::with_capacity(body.len() + 160);
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    );
    if !head {
        out.push_str(body);
    }
    out.into_bytes()
}

/// One scrape connection: the request read so far, then the response being written.
struct Scrape {
    stream: TcpStream,
    peer: SocketAddr,
    request: Vec<u8>,
    response: Option<(Vec<u8>, usize)>,
    /// A complete `GET /metrics` waiting for its exposition (the counters were not at hand): whether
    /// it was a HEAD.
    waiting: Option<bool>,
    deadline: Instant,
}

/// The metrics listener and its scrape connections.
pub(crate) struct MetricsEndpoint {
    listener: TcpListener,
    scrapes: Slab<Scrape>,
    /// Requests answered so far. Kept here rather than in the reactor's counters, since one
    /// accept turn may answer several scrapes from one snapshot.
    answered: u64,
    /// What `/readyz` says: false once draining or handing over.
    ready: bool,
}

impl MetricsEndpoint {
    pub(crate) fn new(mut listener: TcpListener, registry: &Registry) -> io::Result<Self> {
        registry.register(&mut listener, token::METRICS, Interest::READABLE)?;
        Ok(MetricsEndpoint {
            listener,
            scrapes: Slab::with_capacity(MAX_SCRAPERS),
            answered: 0,
            ready: true,
        })
    }

    /// The listener, for a successor to inherit.
    pub(crate) fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// Stops serving for good (a successor serves the listener now). The listener is
    /// deregistered first: its registration belongs to the open file, which the successor
    /// keeps open, so closing it here alone would leave this poll its events.
    pub(crate) fn close_for_successor(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
    }

    /// Sets what `/readyz` answers from now on.
    pub(crate) fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Handles an event on one of this endpoint's own tokens (its listener's, a scrape's) and
    /// says whether it was one: for a poll that does not decode the reactor's token map (the
    /// supervisor's).
    pub(crate) fn on_event(
        &mut self,
        registry: &Registry,
        t: mio::Token,
        now: Instant,
        snap: Option<&Snapshot>,
    ) -> bool {
        match token::Source::of(t, 0, 0) {
            token::Source::Metrics => self.accept(registry, now, snap),
            token::Source::Scrape(key) => self.drive(key, snap),
            _ => return false,
        }
        true
    }

    /// Whether a request waits for the exposition.
    pub(crate) fn waiting(&self) -> bool {
        self.scrapes.iter().any(|(_, s)| s.waiting.is_some())
    }

    /// Answers every waiting request with `body`.
    pub(crate) fn answer_waiting(&mut self, body: &str) {
        let keys: Vec<usize> = self
            .scrapes
            .iter_mut()
            .filter_map(|(k, s)| {
                let head = s.waiting.take()?;
                s.response = Some((metrics_response(body, head), 0));
                Some(k)
            })
            .collect();
        for key in keys {
            self.answered += 1;
            self.write_out(key);
        }
    }

    /// Writes what `key` has to write (it was just given a response).
    fn write_out(&mut self, key: usize) {
        self.drive(key, None);
    }

    /// Requests answered so far.
    pub(crate) fn answered(&self) -> u64 {
        self.answered
    }

    /// The earliest scrape deadline, for the poll timeout.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.scrapes.iter().map(|(_, s)| s.deadline).min()
    }

    /// Accepts every waiting scraper (the listener is edge-triggered); past [`MAX_SCRAPERS`] a
    /// connection is closed at once. `snap`: as for [`MetricsEndpoint::drive`].
    pub(crate) fn accept(&mut self, registry: &Registry, now: Instant, snap: Option<&Snapshot>) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) => match Outcome::of_error(e) {
                    Outcome::Interrupted => continue,
                    Outcome::WouldBlock => return,
                    // A scraper that gave up, or no descriptor: the next event retries.
                    other => {
                        debug!("metrics accept: {other:?}");
                        return;
                    }
                },
            };
            if self.scrapes.len() >= MAX_SCRAPERS {
                debug!("metrics: refusing {peer}: {MAX_SCRAPERS} scrapes open");
                continue;
            }
            let entry = self.scrapes.vacant_entry();
            let key = entry.key();
            if let Err(e) = registry.register(
                &mut stream,
                token::scrape(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("metrics: register {peer}: {e}");
                continue;
            }
            entry.insert(Scrape {
                stream,
                peer,
                request: Vec::new(),
                response: None,
                waiting: None,
                deadline: now + SCRAPE_TIMEOUT,
            });
            // Registration reports what is already there, but trying costs one read.
            self.drive(key, snap);
        }
    }

    /// Moves scrape `key` along: reads the request, answers it, writes the answer, closes.
    /// `snap`: the counters to answer `GET /metrics` from, or `None` when they are not at hand
    /// (a supervisor asks its workers first): the request then waits for
    /// [`MetricsEndpoint::answer_waiting`].
    pub(crate) fn drive(&mut self, key: usize, snap: Option<&Snapshot>) {
        let Some(s) = self.scrapes.get_mut(key) else {
            return;
        };
        let done = loop {
            if s.waiting.is_some() {
                break false;
            }
            if let Some((out, off)) = &mut s.response {
                match Outcome::of_write(s.stream.write(&out[*off..])) {
                    Outcome::Moved(n) => {
                        *off += n;
                        if *off == out.len() {
                            break true;
                        }
                    }
                    Outcome::Interrupted => {}
                    Outcome::WouldBlock => break false,
                    _ => break true,
                }
                continue;
            }
            let mut buf = [0u8; 1024];
            match Outcome::of_read(s.stream.read(&mut buf)) {
                Outcome::Moved(n) => {
                    s.request.extend_from_slice(&buf[..n]);
                    let resp = match ask(&s.request, self.ready) {
                        Asked::Incomplete => None,
                        Asked::Other(resp) => Some(resp),
                        Asked::Metrics { head } => match snap {
                            None => {
                                s.waiting = Some(head);
                                None
                            }
                            Some(snap) => {
                                let mut snap = snap.clone();
                                snap.stats.scrapes = self.answered;
                                Some(metrics_response(&render(&snap), head))
                            }
                        },
                    };
                    if let Some(resp) = resp {
                        s.response = Some((resp, 0));
                        self.answered += 1;
                    }
                }
                Outcome::Interrupted => {}
                Outcome::WouldBlock => break false,
                // The scraper left before asking.
                _ => break true,
            }
        };
        if done {
            self.close(key);
        }
    }

    /// Closes scrapes past their deadline.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .scrapes
            .iter()
            .filter(|(_, s)| now >= s.deadline)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            if let Some(s) = self.scrapes.get(key) {
                debug!("metrics: {} timed out", s.peer);
            }
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        // Dropping the stream closes it, which also removes it from the poll.
        drop(self.scrapes.try_remove(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            stats: Stats {
                accepted: 7,
                active: 2,
                bytes_in: 100,
                moved_out: 3,
                moved_in: 4,
                ..Stats::default()
            },
            limits: Limits {
                max_connections: 1000,
                max_pending: 1 << 20,
                max_pending_total: 256 << 20,
                udp_source_rate: 100_000,
            },
            start_time: 1_700_000_000.5,
        }
    }

    fn text(resp: &[u8]) -> String {
        String::from_utf8_lossy(resp).into_owned()
    }

    #[test]
    fn get_metrics_is_the_exposition_with_every_counter_and_limit() {
        let resp = text(
            &respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || {
                render(&snapshot())
            })
            .unwrap(),
        );
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("Content-Type: text/plain; version=0.0.4"),
            "{resp}"
        );
        for line in [
            "upecho_connections_accepted_total 7",
            "upecho_connections_active 2",
            "upecho_connections_moved_out_total 3",
            "upecho_connections_moved_in_total 4",
            "# TYPE upecho_connections_moved_in_total counter",
            "upecho_received_bytes_total 100",
            "upecho_max_connections 1000",
            "upecho_max_pending_total_bytes 268435456",
            "# TYPE upecho_connections_active gauge",
            "# TYPE upecho_connections_accepted_total counter",
            "process_start_time_seconds 1700000000.5",
            "upecho_build_info{version=\"",
        ] {
            assert!(resp.contains(line), "missing {line:?} in\n{resp}");
        }
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let len: usize = resp
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
    }

    #[test]
    fn other_paths_methods_and_garbage_get_clear_errors() {
        let r = |req: &[u8]| text(&respond(req, String::new).unwrap());
        assert!(r(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let post = r(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(
            post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
            "{post}"
        );
        assert!(r(b"\x16\x03\x01 hello tls\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = r(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn probes_say_alive_and_ready_or_draining() {
        let get = |path: &str, ready: bool| {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            match ask(req.as_bytes(), ready) {
                Asked::Other(r) => text(&r),
                other => panic!("{other:?}"),
            }
        };
        for ready in [true, false] {
            let h = get("/healthz", ready);
            assert!(
                h.starts_with("HTTP/1.1 200 OK\r\n") && h.ends_with("\r\n\r\nok\n"),
                "{h}"
            );
        }
        let r = get("/readyz", true);
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("ready\n"),
            "{r}"
        );
        let r = get("/readyz", false);
        assert!(
            r.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && r.ends_with("draining\n"),
            "{r}"
        );
        match ask(b"HEAD /readyz HTTP/1.1\r\n\r\n", false) {
            Asked::Other(r) => assert!(text(&r).ends_with("\r\n\r\n"), "no body for HEAD"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_incomplete_request_waits_and_an_oversized_one_is_refused() {
        assert!(respond(b"GET /metrics HTTP/1.1\r\nHost:", String::new).is_none());
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 10, b'a');
        let resp = text(&respond(&big, String::new).unwrap());
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    }
}

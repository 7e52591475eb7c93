//! The connection table: the slab (token = key + offset), the run queue of connections that spent
//! their turn's budget, the reactor-wide read buffer, and the server-wide pending-output total and
//! its ceiling. Each connection's bytes are moved by its own state machine ([`super::conn`]); this
//! module decides which connection runs and keeps the totals.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info, trace, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};
use slab::Slab;

use super::config::Limits;
use super::conn::{Conn, Ctx, Moved, Progress, StreamState};
use super::logs::{CloseLine, ConnLog, ConnMeta, Count, Peer, Reason, Via};
use super::proxy::{HeaderError, TrustedSources};
use super::stats::Stats;
use super::throttle::{Episode, Throttle};
use super::token;
use crate::Transform;
use crate::io_outcome::{Class, classify};

/// The reactor-wide read buffer: the largest single read, and so the largest write of fresh
/// output. On loopback, bulk transfer costs per write more than per byte: each write sends its
/// segments through the stack and wakes the peer (an inter-processor interrupt, dear on a VM).
/// Measured on a 2 vCPU AMD EPYC VM against a minimal C-style epoll server (32 KiB buffer), with
/// `upecho load --mode bulk` and a C client writing 16, 64 and 256 KiB: 16 KiB made twice its
/// writes and cost 1.3-2.0x its server CPU per 64 KiB with every generator; 32 KiB cost
/// 0.86-1.0x at 0.92-1.2x its MB/s (a full read is followed by another until a short one, so
/// upecho makes the same reads and writes with a fraction of its `epoll_wait`s); 64 and 128 KiB
/// cost about as little CPU but hand the replies back in coarser steps, and with the 128 KiB
/// window of `upecho load --mode bulk` gave 0.45-0.8x the MB/s.
pub const READ_CHUNK: usize = 32 * 1024;
/// Bytes one connection may read per turn before the others get theirs: 128 KiB as before (a
/// larger budget bought nothing that held across generators in bulk over one connection).
pub const FAIR_BUDGET: usize = 4 * READ_CHUNK;

/// Why a connection is being closed, for the counters and the log.
pub(crate) enum Close {
    /// The peer half-closed and has been sent everything it was owed.
    PeerClosed,
    /// Draining, and the connection had nothing owed and nothing unread.
    Drained,
    Failed(io::Error),
    Idle,
    DrainTimeout,
    /// A trusted source's connection did not start with a valid PROXY header.
    BadHeader(HeaderError),
}

/// How often at most a refused PROXY header is logged at warn level; the counter has them all.
const BAD_HEADER_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What one turn of a connection came to, for the reactor's other parts.
pub(crate) struct Turn {
    pub(crate) moved: Moved,
    pub(crate) closed: bool,
}

pub(crate) struct Connections {
    slab: Slab<Conn<TcpStream>>,
    run_queue: VecDeque<usize>,
    scratch: Box<[u8]>,
    /// What connections are held to (the per-connection and server-wide pending-output
    /// ceilings, the connection limit), in the units the table counts in.
    max_connections: usize,
    max_pending: usize,
    max_pending_total: usize,
    transform: Transform,
    /// Output owed by all connections together (the sum of [`Conn::owed`]).
    owed_total: usize,
    /// `owed_total` has reached the ceiling and not yet fallen back below its low-water mark.
    at_ceiling: Episode,
    /// Ids, peers, ages and byte counts for the debug log; `None` unless debug logging was on at
    /// start, so that otherwise a connection costs only its 16 bytes in the slab.
    log: Option<ConnLog>,
    /// `--proxy-from`: connections from these must start with a PROXY header.
    trusted: Option<TrustedSources>,
    /// Refused headers' warnings.
    bad_header_log: Throttle,
}

impl Connections {
    pub(crate) fn new(
        limits: Limits,
        transform: Transform,
        trusted: Option<TrustedSources>,
    ) -> Connections {
        // Bounded by the configuration's usize values, so these convert back losslessly.
        let max_connections = usize::try_from(limits.max_connections).unwrap_or(usize::MAX);
        Connections {
            // The slab's storage is reserved, not touched: pages become resident only as
            // connections arrive, and the slab never moves while growing.
            slab: Slab::with_capacity(max_connections.min(1 << 20)),
            run_queue: VecDeque::new(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            max_connections,
            max_pending: usize::try_from(limits.max_pending).unwrap_or(usize::MAX),
            max_pending_total: usize::try_from(limits.max_pending_total).unwrap_or(usize::MAX),
            transform,
            owed_total: 0,
            at_ceiling: Episode::default(),
            // Checked once: the level does not change while serving (env_logger sets it once).
            log: log::log_enabled!(log::Level::Debug)
                .then(|| ConnLog::new(log::log_enabled!(log::Level::Trace))),
            trusted,
            bad_header_log: Throttle::new(1, BAD_HEADER_LOG_EVERY),
        }
    }

    /// Whether connection `key` is still waiting for its PROXY header.
    pub(crate) fn awaiting_header(&self, key: usize) -> bool {
        self.slab
            .get(key)
            .is_some_and(|c| c.state() == StreamState::Header)
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn contains(&self, key: usize) -> bool {
        self.slab.contains(key)
    }

    pub(crate) fn full(&self) -> bool {
        self.slab.len() >= self.max_connections
    }

    pub(crate) fn max(&self) -> usize {
        self.max_connections
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.run_queue.is_empty()
    }

    /// Registers a freshly accepted stream and returns its key, and whether it must start with
    /// a PROXY header (it comes from a `--proxy-from` source).
    pub(crate) fn insert(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        registry: &Registry,
        now: Instant,
    ) -> io::Result<(usize, bool)> {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set TCP_NODELAY for {peer}: {e}");
        }
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        // PRIORITY: urgent data is ordinary data here (SO_OOBINLINE, inherited from the
        // listener), but its arrival must be seen so the bytes after the mark are read too.
        // Readable only: writable events are asked for once a write stops at `WouldBlock`.
        registry.register(
            &mut stream,
            token::conn(key),
            Interest::READABLE | Interest::PRIORITY,
        )?;
        let proxied = self.trusted.as_ref().is_some_and(|t| t.trusts(peer.ip()));
        entry.insert(if proxied {
            Conn::expecting_header(stream)
        } else {
            Conn::new(stream)
        });
        if let Some(log) = &mut self.log {
            let id = log.opened(key, peer, now);
            debug!("conn {id} {peer}: accepted");
        }
        Ok((key, proxied))
    }

    /// Takes connection `key` out of the table to move it to another process (a reload's
    /// hand-over), with what the log knew of it: out of the poll, its share of the owed total
    /// and of `active` given up. Not a close: nothing is counted or logged as closed.
    pub(crate) fn take(
        &mut self,
        key: usize,
        registry: &Registry,
        stats: &mut Stats,
    ) -> Option<(Conn<TcpStream>, Option<ConnMeta>)> {
        let mut c = self.slab.try_remove(key)?;
        // The registration belongs to the open file, which the other process keeps open: it
        // must be removed here, not left to the close of this descriptor.
        let _ = registry.deregister(c.socket_mut());
        stats.active -= 1;
        self.owed_total = self.owed_total.saturating_sub(c.owed());
        self.check_ceiling(stats);
        let meta = self.log.as_mut().and_then(|l| l.closed(key));
        Some((c, meta))
    }

    /// Takes in a connection moved from another process, counts it open and gives it a turn
    /// (what waits in its socket raised its edge in the other process); returns its key.
    pub(crate) fn resume(
        &mut self,
        mut c: Conn<TcpStream>,
        meta: Option<ConnMeta>,
        registry: &Registry,
        stats: &mut Stats,
        now: Instant,
    ) -> io::Result<usize> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        registry.register(
            c.socket_mut(),
            token::conn(key),
            Interest::READABLE | Interest::PRIORITY,
        )?;
        self.owed_total += c.owed();
        c.set_queued(true);
        if let Some(log) = &mut self.log {
            match meta {
                Some(m) => {
                    debug!("conn {} {}{}: taken over", m.id, m.peer, Via(m.via));
                    log.resumed(key, m);
                }
                None => {
                    if let Ok(peer) = c.socket().peer_addr() {
                        let id = log.opened(key, peer, now);
                        debug!("conn {id} {peer}: taken over");
                    }
                }
            }
        }
        entry.insert(c);
        self.run_queue.push_back(key);
        stats.active += 1;
        self.check_ceiling(stats);
        Ok(key)
    }

    /// Records an event's readiness on connection `key`; false if there is no such connection
    /// (a stale event for a closed one).
    pub(crate) fn on_event(&mut self, key: usize, event: &mio::event::Event) -> bool {
        let Some(c) = self.slab.get_mut(key) else {
            return false;
        };
        if event.is_priority() {
            c.on_urgent();
        }
        let failed = event.is_error();
        c.on_ready(
            event.is_readable() || failed,
            event.is_writable() || event.is_write_closed() || failed,
            event.is_read_closed(),
        );
        true
    }

    /// One turn for connection `key`: moves bytes, queues it again if its budget ran out, closes
    /// it if it is done or failed.
    pub(crate) fn drive(
        &mut self,
        key: usize,
        draining: bool,
        stats: &mut Stats,
        registry: &Registry,
    ) -> Turn {
        let Some(c) = self.slab.get_mut(key) else {
            return Turn {
                moved: Moved::default(),
                closed: false,
            };
        };
        let mut ctx = Ctx {
            scratch: &mut self.scratch,
            transform: self.transform,
            max_pending: self.max_pending,
            owed_total: self.owed_total,
            max_pending_total: self.max_pending_total,
            budget: FAIR_BUDGET,
            draining,
            header: None,
        };
        let (progress, moved) = c.drive(&mut ctx);
        self.owed_total = ctx.owed_total;
        if let Some(h) = ctx.header {
            stats.proxy_headers += 1;
            if let Some(log) = &mut self.log {
                match h.addrs {
                    Some((client, _)) => {
                        if let Some(m) = log.proxied(key, client) {
                            debug!(
                                "conn {} {}{}: PROXY v{} header",
                                m.id,
                                m.peer,
                                Via(m.via),
                                h.version
                            );
                        }
                    }
                    None => {
                        if let Some(m) = log.get(key) {
                            debug!(
                                "conn {} {}: PROXY v{} header with no client address (the \
                                 balancer's own connection, e.g. a health check)",
                                m.id, m.peer, h.version
                            );
                        }
                    }
                }
            }
        }
        stats.bytes_in += moved.read as u64;
        stats.bytes_out += moved.written as u64;
        if let Some(log) = &mut self.log {
            log.moved(key, moved);
            if log.trace
                && let Some(m) = log.get(key)
            {
                trace!(
                    "conn {}: read {} B, wrote {} B, owes {} B, {}",
                    m.id,
                    moved.read,
                    moved.written,
                    c.owed(),
                    progress.name()
                );
            }
        }
        // The edge that tells a blocked writer to go on needs writable events; registering
        // for them re-checks readiness, so room that appeared meanwhile is not missed.
        let progress =
            if matches!(progress, Progress::Wait | Progress::Yield) && c.needs_write_events() {
                match registry.reregister(
                    c.socket_mut(),
                    token::conn(key),
                    Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
                ) {
                    Ok(()) => {
                        c.set_write_events();
                        progress
                    }
                    Err(e) => Progress::Failed(e),
                }
            } else {
                progress
            };
        let closed = match progress {
            Progress::Wait => false,
            Progress::Yield => {
                if !c.set_queued(true) {
                    self.run_queue.push_back(key);
                }
                false
            }
            Progress::Done => {
                // Done in `Open` is only ever a drain finding the connection quiet.
                let why = match c.state() {
                    StreamState::ReadClosed => Close::PeerClosed,
                    StreamState::Open | StreamState::Header => Close::Drained,
                };
                self.close(key, why, stats)
            }
            Progress::Failed(e) => self.close(key, Close::Failed(e), stats),
            Progress::Rejected(e) => self.close(key, Close::BadHeader(e), stats),
        };
        self.check_ceiling(stats);
        Turn { moved, closed }
    }

    /// The next connection waiting on the run queue, taken off it.
    pub(crate) fn pop_queued(&mut self) -> Option<usize> {
        let key = self.run_queue.pop_front()?;
        if let Some(c) = self.slab.get_mut(key) {
            c.set_queued(false);
        }
        Some(key)
    }

    /// How many connections are on the run queue now (a pass serves only those).
    pub(crate) fn queued(&self) -> usize {
        self.run_queue.len()
    }

    /// Closes connection `key`; returns whether there was one.
    pub(crate) fn close(&mut self, key: usize, why: Close, stats: &mut Stats) -> bool {
        let Some(c) = self.slab.try_remove(key) else {
            return false;
        };
        stats.active -= 1;
        // A reset or a drain timeout can leave output owed: it is no longer anyone's.
        self.owed_total = self.owed_total.saturating_sub(c.owed());
        self.check_ceiling(stats);
        let reason = match &why {
            Close::PeerClosed => Reason::ByPeer,
            Close::Drained => Reason::Drained,
            Close::Idle => {
                stats.idle_closed += 1;
                Reason::Idle
            }
            Close::DrainTimeout => Reason::DrainTimeout,
            Close::BadHeader(e) => {
                stats.proxy_rejected += 1;
                Reason::BadHeader(e)
            }
            Close::Failed(e) => match classify(e) {
                Class::Local => {
                    stats.errors += 1;
                    Reason::Local(e)
                }
                _ => {
                    stats.reset += 1;
                    Reason::Reset(e)
                }
            },
        };
        let meta = self.log.as_mut().and_then(|l| l.closed(key));
        match (meta, &reason) {
            (Some(meta), Reason::Local(_)) => warn!(
                "{}",
                CloseLine {
                    meta: &meta,
                    reason,
                    now: Instant::now(),
                }
            ),
            (Some(meta), _) => debug!(
                "{}",
                CloseLine {
                    meta: &meta,
                    reason,
                    now: Instant::now(),
                }
            ),
            // Not the peer's doing: an operator should see it, with whom it happened. Without
            // the debug record the peer is asked of the socket (a rare path), which may no
            // longer know it.
            (None, Reason::Local(_)) => warn!(
                "conn {} closed: {reason}",
                Peer(c.socket().peer_addr().ok())
            ),
            (None, _) => {}
        }
        if let Close::BadHeader(e) = &why {
            self.log_bad_header(c.socket().peer_addr().ok(), e);
        }
        // Dropping the stream closes the descriptor, which also removes it from the poll.
        drop(c);
        true
    }

    /// A trusted source that sends no valid PROXY header is misconfigured (a balancer without
    /// `send-proxy`, or something else in a trusted range): worth a warning, but at most one
    /// every [`BAD_HEADER_LOG_EVERY`], as a stream of them must not flood the log.
    fn log_bad_header(&mut self, peer: Option<SocketAddr>, e: &HeaderError) {
        let Some(n) = self.bad_header_log.event(Instant::now()) else {
            return;
        };
        let more = n - 1;
        let since = if more > 0 {
            format!(
                " ({} more since the last such line)",
                Count(more, "connection")
            )
        } else {
            String::new()
        };
        warn!("closed a connection from {}: {e}{since}", Peer(peer));
    }

    /// Every open connection's key (for a drain timeout, which closes them all).
    pub(crate) fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    /// Gives every connection a turn in drain mode: those that owe nothing and have nothing
    /// unread finish at once, the others as soon as they have caught up.
    pub(crate) fn queue_all_for_drain(&mut self) {
        for (key, c) in self.slab.iter_mut() {
            c.on_ready(true, true, false);
            if !c.set_queued(true) {
                self.run_queue.push_back(key);
            }
        }
    }

    /// Notes the server crossing its pending-output ceiling (counted and logged once per
    /// episode) and falling back below three quarters of it, so a total hovering at the ceiling
    /// does not log at every read.
    fn check_ceiling(&mut self, stats: &mut Stats) {
        stats.pending_bytes = self.owed_total as u64;
        let max = self.max_pending_total;
        let on = self.at_ceiling.since().is_some();
        // The clock is read only when an episode starts; this runs at every read.
        if !on && self.owed_total >= max {
            self.at_ceiling.start(Instant::now());
            stats.ceiling_reached += 1;
            warn!(
                "pending output reached the ceiling ({} KiB, --max-pending-total): connections \
                 that owe output are not read until they drain",
                max / 1024
            );
        } else if on && self.owed_total < max - max / 4 {
            self.at_ceiling.end();
            info!(
                "pending output below the ceiling again ({} KiB owed)",
                self.owed_total / 1024
            );
        }
    }
}

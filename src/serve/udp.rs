//! One UDP socket of the server: receive, transform, reply to the source, and a bounded queue for
//! replies the kernel cannot take yet.
//!
//! Datagrams are received and answered in batches of up to [`BATCH`] with `recvmmsg`/`sendmmsg`
//! (one syscall each way per batch instead of per datagram), into reactor-wide buffers
//! ([`Batch`]) large enough that no datagram is ever truncated.
//!
//! UDP may lose datagrams; the server must not grow. When `send_to` would block, replies wait in a
//! queue bounded by count and bytes, in order; past the bound they are dropped and counted. The
//! reflection guard (as inetd's echo service has it) refuses to answer sources that could turn
//! the server into an amplifier or an echo loop: privileged ports (another echo, chargen, DNS...)
//! and broadcast, multicast or unspecified addresses.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Instant;

use log::{debug, info, trace, warn};
use mio::net::UdpSocket;

use super::limit::{SourceLimiter, fingerprint};
use super::logs::{Count, Peer, SourceLog};
use super::stats::Stats;
use crate::Transform;
use crate::io_outcome::{Class, classify, is_would_block, retrying};
use crate::mmsg::Datagrams;

/// Datagrams handled per wake-up before other sources get a turn.
pub const UDP_BUDGET: usize = 64;
/// Largest reply queue, in datagrams and in bytes.
const QUEUE_MAX_DATAGRAMS: usize = 1024;
const QUEUE_MAX_BYTES: usize = 4 << 20;
/// Each receive buffer holds the largest datagram payload there is (IPv6's; jumbograms aside), so
/// nothing is ever truncated.
const MAX_DATAGRAM: usize = crate::net::MAX_DATAGRAM_V6;
/// Datagrams per `recvmmsg`/`sendmmsg`. The buffers are reserved at full size but only the pages
/// datagrams actually land in become resident.
pub const BATCH: usize = 16;

/// Reactor-wide buffers for one batch of datagrams, shared by every UDP endpoint.
pub type Batch = Datagrams<BATCH>;

/// Whether the guard lets the server answer `src`.
pub fn reply_allowed(src: SocketAddr) -> bool {
    if src.port() < 1024 {
        return false;
    }
    match src.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast()),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
            None => !(ip.is_unspecified() || ip.is_multicast()),
        },
    }
}

/// Which sources the server answers: the reflection guard and the per-source reply budget,
/// shared by every UDP endpoint of the reactor (a source's budget is the same whichever socket
/// it writes to).
pub struct UdpPolicy {
    /// Refuse privileged ports and broadcast/multicast/unspecified sources.
    pub guard: bool,
    pub limiter: Option<SourceLimiter>,
    /// The limiter's clock origin.
    epoch: Instant,
    /// Which ignored datagrams get an info line (once per source a minute, a few a second).
    ignored_log: SourceLog,
}

impl UdpPolicy {
    pub fn new(guard: bool, replies_per_source: Option<u32>) -> UdpPolicy {
        UdpPolicy {
            guard,
            limiter: replies_per_source.map(SourceLimiter::new),
            epoch: Instant::now(),
            ignored_log: SourceLog::new(),
        }
    }

    /// Logs, rate-limited, that a datagram from `src` is not answered and why; the clock is
    /// read only on this path, and at most once per batch (`now`).
    fn ignored(&mut self, src: Option<SocketAddr>, why: &str, now: &mut Option<Instant>) {
        trace!("udp: not answering {} ({why})", Peer(src));
        let Some(src) = src else { return };
        let now = *now.get_or_insert_with(Instant::now);
        if self.ignored_log.should_log(src, now) {
            info!("udp: not answering {src}: {why} (logged at most once a minute per source)");
        }
    }

    /// The limiter's clock; not read at all when there is no limiter.
    fn now_ns(&self) -> u64 {
        if self.limiter.is_none() {
            return 0;
        }
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Transforms `buf` (a datagram from `src`) into its reply and says whether to send it;
    /// `now_ns` is read once per batch.
    fn answer(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        transform: Transform,
        now_ns: u64,
    ) -> Result<(), &'static str> {
        if self.guard && !reply_allowed(src) {
            return Err("reflection guard");
        }
        let Some(limiter) = &mut self.limiter else {
            transform.apply(buf);
            return Ok(());
        };
        let payload = fingerprint(buf);
        transform.apply(buf);
        if limiter.allow(src, payload, fingerprint(buf), now_ns) {
            Ok(())
        } else {
            Err("reply budget per source spent")
        }
    }
}

pub struct UdpEndpoint {
    pub socket: UdpSocket,
    queue: VecDeque<(SocketAddr, Box<[u8]>)>,
    queued_bytes: usize,
    readable: bool,
    writable: bool,
}

/// What an endpoint needs after [`UdpEndpoint::drive`].
#[derive(Debug, PartialEq, Eq)]
pub enum UdpProgress {
    Wait,
    /// Budget spent with datagrams possibly waiting: call again without an event.
    Yield,
}

impl UdpEndpoint {
    pub fn new(socket: UdpSocket) -> UdpEndpoint {
        UdpEndpoint {
            socket,
            queue: VecDeque::new(),
            queued_bytes: 0,
            readable: true,
            writable: true,
        }
    }

    pub fn on_ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Flushes queued replies, then answers up to about [`UDP_BUDGET`] datagrams; `index` names
    /// the socket in the trace log.
    pub fn drive(
        &mut self,
        index: usize,
        batch: &mut Batch,
        transform: Transform,
        policy: &mut UdpPolicy,
        stats: &mut Stats,
    ) -> UdpProgress {
        self.flush(stats);
        let mut handled = 0;
        while handled < UDP_BUDGET {
            if !self.readable {
                return UdpProgress::Wait;
            }
            let n = match batch.recv(self.socket.as_fd()) {
                Ok(n) => n,
                Err(e) if is_would_block(&e) => {
                    self.readable = false;
                    return UdpProgress::Wait;
                }
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they concern no one now.
                    match classify(&e) {
                        Class::Local => warn!("udp recv: {e}"),
                        _ => debug!("udp recv: {e}"),
                    }
                    handled += 1;
                    continue;
                }
            };
            // A short batch emptied the receive queue: a later datagram raises a fresh edge.
            if n < BATCH {
                self.readable = false;
            }
            handled += n;
            stats.datagrams_in += n as u64;
            let mut answer = [0usize; BATCH];
            let mut m = 0;
            let now_ns = policy.now_ns();
            let mut now = None;
            for i in 0..n {
                let src = batch.source(i);
                let verdict = match src {
                    Some(src) => policy.answer(src, batch.get_mut(i), transform, now_ns),
                    None => Err("not an IP source"),
                };
                match verdict {
                    Ok(()) => {
                        answer[m] = i;
                        m += 1;
                    }
                    Err(why) => {
                        stats.datagrams_ignored += 1;
                        policy.ignored(src, why, &mut now);
                    }
                }
            }
            trace!(
                "udp {index}: batch of {} in, {m} to answer",
                Count(n as u64, "datagram")
            );
            self.reply(batch, &answer[..m], stats);
        }
        UdpProgress::Yield
    }

    /// Answers the batch slots in `which`, in order: straight to the kernel when nothing is
    /// queued, else (and for whatever the kernel does not take) into the bounded queue.
    fn reply(&mut self, batch: &mut Batch, mut which: &[usize], stats: &mut Stats) {
        while !which.is_empty() && self.queue.is_empty() && self.writable {
            match batch.send(self.socket.as_fd(), which) {
                Ok(k) => {
                    stats.datagrams_out += k as u64;
                    which = &which[k..];
                }
                Err(e) if is_would_block(&e) => self.writable = false,
                Err(e) => {
                    // The first datagram failed alone (sendmmsg reports an error only then).
                    stats.datagrams_dropped += 1;
                    log_send_error(batch.source(which[0]), &e);
                    which = &which[1..];
                }
            }
        }
        for &i in which {
            let Some(dst) = batch.source(i) else { continue };
            let len = batch.get(i).len();
            if self.queue.len() >= QUEUE_MAX_DATAGRAMS || self.queued_bytes + len > QUEUE_MAX_BYTES
            {
                stats.datagrams_dropped += 1;
                continue;
            }
            self.queued_bytes += len;
            self.queue.push_back((dst, batch.get(i).into()));
        }
    }

    fn flush(&mut self, stats: &mut Stats) {
        while self.writable {
            let Some((dst, data)) = self.queue.front() else {
                return;
            };
            // A datagram is sent whole or not at all.
            match retrying(|| self.socket.send_to(data, *dst)) {
                Ok(_) => stats.datagrams_out += 1,
                Err(e) if is_would_block(&e) => {
                    self.writable = false;
                    return;
                }
                Err(e) => {
                    stats.datagrams_dropped += 1;
                    log_send_error(Some(*dst), &e);
                }
            }
            if let Some((_, d)) = self.queue.pop_front() {
                self.queued_bytes -= d.len();
            }
        }
    }
}

/// The reactor's UDP side: every endpoint, the batch buffers they share, and the answering
/// policy.
pub(crate) struct UdpSide {
    pub(crate) endpoints: Vec<UdpEndpoint>,
    /// An endpoint may have datagrams waiting (set by events, and by a budget that ran out).
    owed: bool,
    batch: Batch,
    policy: UdpPolicy,
}

impl UdpSide {
    pub(crate) fn new(endpoints: Vec<UdpEndpoint>, policy: UdpPolicy) -> UdpSide {
        UdpSide {
            endpoints,
            owed: true,
            batch: Batch::with_sources(MAX_DATAGRAM),
            policy,
        }
    }

    pub(crate) fn on_ready(&mut self, i: usize, readable: bool, writable: bool) {
        if let Some(ep) = self.endpoints.get_mut(i) {
            ep.on_ready(readable, writable);
            self.owed = true;
        }
    }

    pub(crate) fn owed(&self) -> bool {
        self.owed
    }

    /// Gives every endpoint its turn, if any is owed one.
    pub(crate) fn run(&mut self, transform: Transform, stats: &mut Stats) {
        if !std::mem::take(&mut self.owed) {
            return;
        }
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            if ep.drive(i, &mut self.batch, transform, &mut self.policy, stats)
                == UdpProgress::Yield
            {
                self.owed = true;
            }
        }
    }

    /// Stops answering for good (shutdown): the sockets are handed back to be closed.
    pub(crate) fn close(&mut self) -> Vec<UdpEndpoint> {
        self.owed = false;
        std::mem::take(&mut self.endpoints)
    }
}

/// A failed reply: the peer's side (unreachable, refused) at debug, ours at warn.
fn log_send_error(dst: Option<SocketAddr>, e: &io::Error) {
    match classify(e) {
        Class::Local => warn!("udp send to {}: {e}", Peer(dst)),
        _ => debug!("udp send to {}: {e}", Peer(dst)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_refuses_privileged_ports_broadcast_multicast_unspecified() {
        let ok = |s: &str| reply_allowed(s.parse().unwrap());
        assert!(ok("127.0.0.1:40000"));
        assert!(ok("[::1]:1024"));
        assert!(!ok("127.0.0.1:7"));
        assert!(!ok("127.0.0.1:1023"));
        assert!(!ok("255.255.255.255:5000"));
        assert!(!ok("224.0.0.1:5000"));
        assert!(!ok("0.0.0.0:5000"));
        assert!(!ok("[ff02::1]:5000"));
        assert!(!ok("[::]:5000"));
        assert!(!ok("[::ffff:255.255.255.255]:5000"));
    }
}

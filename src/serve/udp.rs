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
use std::io::{self, ErrorKind};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use std::time::Instant;

use log::{debug, info, trace, warn};
use mio::net::UdpSocket;

use super::limit::{SourceLimiter, fingerprint};
use super::logs::{Count, Peer, SourceLog};
use super::stats::Stats;
use crate::Transform;
use crate::io_outcome::{Class, classify};

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
pub struct Batch {
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: [libc::socklen_t; BATCH],
    lens: [usize; BATCH],
    srcs: [Option<SocketAddr>; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            bufs: vec![0u8; BATCH * MAX_DATAGRAM].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (empty) value.
            addrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            addr_lens: [0; BATCH],
            lens: [0; BATCH],
            srcs: [None; BATCH],
        }
    }

    fn buf(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + self.lens[i]]
    }

    /// One `recvmmsg`: fills slots `0..n` and returns `n` (at least 1).
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        // SAFETY: zeroed iovec/mmsghdr are valid; every pointer set below points into `self`,
        // which outlives the call, with the lengths of the buffers it points to.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: see above; BATCH headers are initialised.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
            self.srcs[i] = to_socket_addr(&self.addrs[i]);
        }
        Ok(n)
    }

    /// One `sendmmsg` of the slots in `which`, each to its source; returns how many were sent.
    fn send(&mut self, fd: i32, which: &[usize]) -> io::Result<usize> {
        // SAFETY: as in `recv`; only the first `which.len()` headers are passed.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for (j, &i) in which.iter().enumerate() {
            iovs[j] = libc::iovec {
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: self.lens[i],
            };
            let h = &mut hdrs[j].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = self.addr_lens[i];
            h.msg_iov = &raw mut iovs[j];
            h.msg_iovlen = 1;
        }
        // SAFETY: see above.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), which.len() as libc::c_uint, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// The address the kernel wrote into `ss`, if it is IPv4 or IPv6.
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and aligned for.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

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
        let fd = self.socket.as_raw_fd();
        let mut handled = 0;
        while handled < UDP_BUDGET {
            if !self.readable {
                return UdpProgress::Wait;
            }
            let n = match batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return UdpProgress::Wait;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
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
                let verdict = match batch.srcs[i] {
                    Some(src) => policy.answer(src, batch.buf(i), transform, now_ns),
                    None => Err("not an IP source"),
                };
                match verdict {
                    Ok(()) => {
                        answer[m] = i;
                        m += 1;
                    }
                    Err(why) => {
                        stats.datagrams_ignored += 1;
                        policy.ignored(batch.srcs[i], why, &mut now);
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
        let fd = self.socket.as_raw_fd();
        while !which.is_empty() && self.queue.is_empty() && self.writable {
            match batch.send(fd, which) {
                Ok(k) => {
                    stats.datagrams_out += k as u64;
                    which = &which[k..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // The first datagram failed alone (sendmmsg reports an error only then).
                    stats.datagrams_dropped += 1;
                    log_send_error(batch.srcs[which[0]], &e);
                    which = &which[1..];
                }
            }
        }
        for &i in which {
            let Some(dst) = batch.srcs[i] else { continue };
            let len = batch.lens[i];
            if self.queue.len() >= QUEUE_MAX_DATAGRAMS || self.queued_bytes + len > QUEUE_MAX_BYTES
            {
                stats.datagrams_dropped += 1;
                continue;
            }
            self.queued_bytes += len;
            self.queue.push_back((dst, batch.buf(i).into()));
        }
    }

    fn flush(&mut self, stats: &mut Stats) {
        while self.writable {
            let Some((dst, data)) = self.queue.front() else {
                return;
            };
            match send(&self.socket, data, *dst) {
                Ok(()) => stats.datagrams_out += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
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
            batch: Batch::new(),
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

/// `send_to`, retried on `Interrupted`. A datagram is sent whole or not at all.
fn send(socket: &UdpSocket, data: &[u8], dst: SocketAddr) -> io::Result<()> {
    loop {
        match socket.send_to(data, dst) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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

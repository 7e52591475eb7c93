//! One UDP socket of the server: receive, transform, reply to the source, and a bounded queue for
//! replies the kernel cannot take yet.
//!
//! UDP may lose datagrams; the server must not grow. When `send_to` would block, replies wait in a
//! queue bounded by count and bytes, in order; past the bound they are dropped and counted. The
//! reflection guard (as inetd's echo service has it) refuses to answer sources that could turn
//! the server into an amplifier or an echo loop: privileged ports (another echo, chargen, DNS...)
//! and broadcast, multicast or unspecified addresses.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};

use log::debug;
use mio::net::UdpSocket;

use super::stats::Stats;
use crate::Transform;

/// Datagrams handled per wake-up before other sources get a turn.
pub const UDP_BUDGET: usize = 64;
/// Largest reply queue, in datagrams and in bytes.
const QUEUE_MAX_DATAGRAMS: usize = 1024;
const QUEUE_MAX_BYTES: usize = 4 << 20;
/// Largest datagram payload (IPv6 jumbograms aside); the receive buffer is this large so nothing
/// is ever truncated.
pub const MAX_DATAGRAM: usize = 65_535;

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

    /// Flushes queued replies, then answers up to [`UDP_BUDGET`] datagrams.
    pub fn drive(
        &mut self,
        buf: &mut [u8],
        transform: Transform,
        guard: bool,
        stats: &mut Stats,
    ) -> UdpProgress {
        self.flush(stats);
        for _ in 0..UDP_BUDGET {
            if !self.readable {
                return UdpProgress::Wait;
            }
            let (n, src) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return UdpProgress::Wait;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they concern no one now.
                    debug!("udp recv: {e}");
                    continue;
                }
            };
            stats.datagrams_in += 1;
            if guard && !reply_allowed(src) {
                stats.datagrams_ignored += 1;
                debug!("udp: not answering {src} (reflection guard)");
                continue;
            }
            let reply = &mut buf[..n];
            transform.apply(reply);
            self.reply(src, reply, stats);
        }
        UdpProgress::Yield
    }

    fn reply(&mut self, dst: SocketAddr, data: &[u8], stats: &mut Stats) {
        if self.queue.is_empty() && self.writable {
            match send(&self.socket, data, dst) {
                Ok(()) => {
                    stats.datagrams_out += 1;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) => {
                    stats.datagrams_dropped += 1;
                    debug!("udp send to {dst}: {e}");
                    return;
                }
            }
        }
        if self.queue.len() >= QUEUE_MAX_DATAGRAMS
            || self.queued_bytes + data.len() > QUEUE_MAX_BYTES
        {
            stats.datagrams_dropped += 1;
            return;
        }
        self.queued_bytes += data.len();
        self.queue.push_back((dst, data.into()));
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
                    debug!("udp send to {dst}: {e}");
                }
            }
            if let Some((_, d)) = self.queue.pop_front() {
                self.queued_bytes -= d.len();
            }
        }
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

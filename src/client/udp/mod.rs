//! `upecho udp`: the UDP client.
//!
//! Every line is one datagram (an empty line is a valid empty datagram), a line longer than the
//! largest datagram to the server's address family ([`crate::net::max_datagram`]) is reported and
//! not sent, every reply is received into a buffer of that size so it is never truncated, and
//! every reply is matched to the request it answers (`matcher`), so a late or duplicated reply is
//! named as such instead of being shown as the answer to the next line.
//!
//! - **Interactive** ([`interactive`]): the shared session (`client::session`) over a datagram
//!   socket, one request at a time; a reply that does not come within the timeout is reported
//!   ("UDP does not retransmit") and the session goes on. The reader thread takes every reply the
//!   moment it arrives, so a late one is reported at once, with its real round-trip time, even
//!   while the user sits at the prompt.
//! - **Pipe** ([`pipe`]): a sliding window of requests in flight, replies printed in line order.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::UdpSocket;

use super::display::refused;
use super::session::{self, Arrival, End, Ended, Matching, Recv, Sending, Wait};
use super::target::{Target, connect_udp};
use super::{Failure, Id, InteractiveOptions};
use crate::addr::reason;
use crate::io_outcome::{Class, classify, is_would_block, retrying};
use crate::net;

mod matcher;
mod pipe;

use matcher::{Tracker, Verdict};
pub use pipe::pipe;

/// The largest datagram to the server: lines longer than this are not sent, and replies are
/// received into a buffer this large, so none is cut short (the tutorial's `recvfrom(1024)`
/// truncates).
#[derive(Debug, Clone, Copy)]
struct DatagramLimit {
    max: usize,
    /// The family on the wire, which is what sets the limit.
    family: &'static str,
}

impl DatagramLimit {
    fn to(addr: &SocketAddr) -> DatagramLimit {
        let max = net::max_datagram(addr);
        let family = if max == net::MAX_DATAGRAM_V4 {
            "IPv4"
        } else {
            "IPv6"
        };
        DatagramLimit { max, family }
    }

    /// Why a line of `len` bytes is not sent.
    fn too_long(&self, len: usize) -> String {
        format!(
            "{len} bytes is too long for one UDP datagram (at most {} over {})",
            self.max, self.family
        )
    }
}

/// Whether `e` is an ICMP "port unreachable" from the server, reported on the connected socket:
/// among the peer's failures the classifier groups, the one UDP has its own words for (nothing is
/// listening there).
fn is_refusal(e: &io::Error) -> bool {
    classify(e) == Class::PeerReset && e.kind() == io::ErrorKind::ConnectionRefused
}

/// What one receive on the connected socket found, when it did not fail.
enum Incoming {
    Datagram(usize),
    /// Nothing waiting (`WouldBlock`).
    Nothing,
    /// An ICMP "port unreachable" for an earlier datagram: nothing listens at the address.
    Refused,
}

/// One `recv`, shared by the interactive and pipe modes, which differ only in what they do with
/// a refusal. Not `Outcome::of_read`: a UDP socket has no orderly close, and 0 bytes is an empty
/// datagram.
fn recv_datagram(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Incoming> {
    match retrying(|| socket.recv(buf)) {
        Ok(n) => Ok(Incoming::Datagram(n)),
        Err(e) if is_would_block(&e) => Ok(Incoming::Nothing),
        Err(e) if is_refusal(&e) => Ok(Incoming::Refused),
        Err(e) => Err(e),
    }
}

fn recv_error(addr: &str, e: &io::Error) -> Failure {
    Failure::Error(format!("cannot receive from {addr}: {}", reason(e)))
}

/// The interactive session: prompt, send the line as one datagram, wait up to the timeout for its
/// reply, print it with its round-trip time, repeat. Replies that come while the user types are
/// reported as they come, with the time they came.
pub fn interactive(target: &Target, options: &InteractiveOptions) -> Result<(), Failure> {
    let addr = target.to_string();
    let (socket, connected) = connect_udp(target)?;
    let banner = format!(
        "talking UDP to {connected}: one datagram per line; Ctrl-D or Ctrl-C (on an empty line) to quit"
    );
    let sender = UdpSender {
        addr: addr.clone(),
        limit: DatagramLimit::to(&connected),
        socket,
    };
    let tracker = Tracker::new(options.timeout);
    session::interactive(&addr, options, &banner, sender, tracker)
}

/// The datagram matching of `matcher`, as the session's bookkeeping.
impl Matching for Tracker {
    type Socket = UdpSocket;

    fn recv(socket: &mut UdpSocket, buf: &mut [u8]) -> Recv {
        match recv_datagram(socket, buf) {
            Ok(Incoming::Datagram(n)) => Recv::Data(n),
            Ok(Incoming::Nothing) => Recv::Drained,
            Ok(Incoming::Refused) => Recv::Notice(Arrival::Refused),
            Err(e) => Recv::Ended(Ended::Failed(e)),
        }
    }

    fn feed(&mut self, reply: &[u8], now: Instant) -> Vec<Arrival> {
        let reply = reply.to_vec();
        vec![match self.on_reply(&reply, now) {
            Verdict::Answer { id, rtt } => Arrival::Answer { id, reply, rtt },
            Verdict::Late { rtt, request, .. } => Arrival::Late {
                line: request,
                reply,
                rtt,
            },
            Verdict::Duplicate { request, .. } => Arrival::Duplicate {
                line: request,
                reply,
            },
            Verdict::Unexpected => Arrival::Unexpected(reply),
        }]
    }

    fn passed_over(&mut self, arrival: &Arrival, in_flight: Id) {
        if *arrival == Arrival::Refused {
            self.abandon(in_flight);
        }
    }

    fn ended(&self, addr: &str, end: &End, _in_flight: Option<Id>) -> Failure {
        match &end.how {
            Ended::Failed(e) => recv_error(addr, e),
            // A datagram socket has no orderly close; named all the same.
            Ended::Closed => Failure::Error(format!("cannot receive from {addr}: it closed")),
        }
    }
}

/// The main thread's side of the connected socket.
struct UdpSender {
    addr: String,
    limit: DatagramLimit,
    socket: std::net::UdpSocket,
}

impl Sending for UdpSender {
    const NAME: &'static str = "udp";
    const NO_REPLY: &'static str = ": UDP does not retransmit";

    type Book = Tracker;

    fn receiving_half(&self) -> io::Result<UdpSocket> {
        let clone = self.socket.try_clone()?;
        // Both handles share the file's flags: the main thread's sends become non-blocking too,
        // which a UDP send to a connected peer only notices when the send buffer is full.
        clone.set_nonblocking(true)?;
        Ok(UdpSocket::from_std(clone))
    }

    fn recv_buffer(&self) -> usize {
        self.limit.max
    }

    fn send(&mut self, tracker: &mut Tracker, line: &[u8]) -> Result<Option<Id>, Failure> {
        if line.len() > self.limit.max {
            eprintln!("not sent: {}", self.limit.too_long(line.len()));
            return Ok(None);
        }
        let mut refusal_reported = false;
        loop {
            // The clock starts before the send, and the line is known before it can be answered.
            let id = tracker.send(line, Instant::now());
            let e = match retrying(|| self.socket.send(line)) {
                Ok(_) => return Ok(Some(id)),
                Err(e) => e,
            };
            tracker.abandon(id);
            // An ICMP error caused by an earlier datagram is reported by the next call on the
            // socket, which may be this send; the error is consumed with it, so one retry sends
            // the line.
            if is_refusal(&e) && !refusal_reported {
                eprintln!("{}", refused(&self.addr));
                refusal_reported = true;
                continue;
            }
            // Unreachable networks, a full send buffer: this line is lost, the session goes on.
            eprintln!("not sent to {}: {}", self.addr, reason(&e));
            return Ok(None);
        }
    }

    fn deadline(
        &mut self,
        tracker: &mut Tracker,
        id: Id,
        _line: &[u8],
        now: Instant,
    ) -> Result<Wait, Failure> {
        // Replies already received were handled first, so only a truly missing one expires.
        if tracker.expire(now).contains(&id) {
            return Ok(Wait::TimedOut);
        }
        if !tracker.is_waiting(id) {
            // Abandoned: the server refused it, which has been reported.
            return Ok(Wait::Settled);
        }
        Ok(Wait::Until(tracker.next_deadline()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_address_family_s_and_is_named_in_the_message() {
        let v4 = DatagramLimit::to(&"127.0.0.1:9".parse().unwrap());
        let v6 = DatagramLimit::to(&"[::1]:9".parse().unwrap());
        assert_eq!((v4.max, v6.max), (65_507, 65_527));
        assert_eq!(
            v4.too_long(65_508),
            "65508 bytes is too long for one UDP datagram (at most 65507 over IPv4)"
        );
        assert!(v6.too_long(65_528).ends_with("(at most 65527 over IPv6)"));
    }

    #[test]
    fn replies_become_arrivals_and_a_refusal_abandons_the_line_in_flight() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(std::time::Duration::from_secs(1));
        let id = tracker.send(b"hi", t0);
        tracker.passed_over(&Arrival::Refused, id);
        assert!(!tracker.is_waiting(id));
        // Given up on, its reply is late; a second one is a duplicate.
        assert!(matches!(
            Matching::feed(&mut tracker, b"HI", t0)[..],
            [Arrival::Late { .. }]
        ));
        assert_eq!(
            Matching::feed(&mut tracker, b"HI", t0),
            [Arrival::Duplicate {
                line: b"hi".to_vec(),
                reply: b"HI".to_vec()
            }]
        );
        assert_eq!(
            Matching::feed(&mut tracker, b"??", t0),
            [Arrival::Unexpected(b"??".to_vec())]
        );
    }
}

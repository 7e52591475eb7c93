//! The channel between the supervisor and one worker (`--workers`), and the worker's end of it.
//!
//! One `SOCK_SEQPACKET` socket pair per worker: each message is one packet (a small JSON
//! object, so a message is never split or merged and is readable in `strace`), and a packet may
//! carry one descriptor (`SCM_RIGHTS`): a connection being handed to a sibling. The worker's end
//! is descriptor [`CONTROL_FD`] in the worker.
//!
//! ```text
//!   worker → supervisor   Ready, Capacity, Report (counters), Final (counters at exit), HandOff + fd
//!   supervisor → worker   Report?, HandOff + fd (serve it, or refuse it when it is the last try)
//! ```
//!
//! The worker's part ([`WorkerLink`]) is driven by the reactor: it says when the worker is full
//! or has room again, hands on what a full worker accepts, and answers requests for counters.
//! Draining is not a message: the supervisor sends SIGTERM, so a worker drains exactly as a
//! single server does.

use std::io::{self, ErrorKind};

use crate::io_outcome::{is_would_block, retrying};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use log::{debug, warn};
use serde::{Deserialize, Serialize};

use super::stats::Stats;

/// The descriptor a worker finds its end of the channel at; its sockets follow it.
pub const CONTROL_FD: RawFd = 3;
/// Bumped when a message changes meaning: a reload that starts workers from a binary speaking
/// another version is refused, and the old workers go on.
pub const PROTOCOL: u32 = 1;
/// Largest message (a report of counters is a few hundred bytes).
const MAX_MESSAGE: usize = 16 << 10;

/// What a worker tells the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToSupervisor {
    /// Serving: the signal handlers are in place and the sockets are in the poll.
    Ready {
        protocol: u32,
        version: String,
        max_connections: u64,
    },
    /// `room`: below `--max-connections` (a hand-off may be sent here); `steer`: new connections
    /// may be steered here (false from the limit until the low-water mark, so that a worker at
    /// the edge does not flap in and out of the steering program).
    Capacity { room: bool, steer: bool },
    /// The counters, in answer to a request.
    Report { seq: u64, stats: Stats },
    /// The counters at exit.
    Final { stats: Stats, forced: bool },
    /// A connection accepted while full, passed on with the descriptor; `tried` are the slots
    /// that had no room for it.
    HandOff { tried: Vec<u32> },
}

/// What the supervisor tells a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Send a [`ToSupervisor::Report`] with this number.
    Report { seq: u64 },
    /// Serve this connection (the descriptor comes with it); if full, hand it back, unless
    /// `last` (no other worker has room): then refuse it as a single server would.
    HandOff { tried: Vec<u32>, last: bool },
}

/// What one receive gave.
#[derive(Debug)]
pub enum Received<T> {
    Message(T, Option<OwnedFd>),
    WouldBlock,
    /// The other end is gone.
    Closed,
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair (both ends non-blocking and close-on-exec; the spawner moves one into
    /// the worker).
    pub fn pair() -> io::Result<(Channel, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array we pass.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both were just created and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, b))
    }

    /// The worker's end, inherited at `fd`.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends `msg`, with `pass` if given. A full channel is `WouldBlock`: the caller decides.
    pub fn send<T: Serialize>(&self, msg: &T, pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        send_packet(self.raw(), &bytes, pass.map(|f| f.as_raw_fd()))
    }

    /// Receives one message, if one is waiting.
    pub fn recv<T: for<'de> Deserialize<'de>>(&self) -> io::Result<Received<T>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            return match retrying(|| recv_packet(self.raw(), &mut buf)) {
                Ok(None) => Ok(Received::Closed),
                Ok(Some((n, fd))) => match serde_json::from_slice(&buf[..n]) {
                    Ok(msg) => Ok(Received::Message(msg, fd)),
                    Err(e) => {
                        // Not from a binary that speaks this protocol: skip it, keep serving.
                        warn!("control: a message that does not parse ({e}): ignored");
                        continue;
                    }
                },
                Err(e) if is_would_block(&e) => Ok(Received::WouldBlock),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(Received::Closed),
                Err(e) => Err(e),
            };
        }
    }
}

fn send_packet(fd: RawFd, bytes: &[u8], pass: Option<RawFd>) -> io::Result<()> {
    // SAFETY: CMSG_SPACE is a pure computation.
    const SPACE: usize = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call, and
    // the control buffer is aligned (u64) and as long as the header says.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(pass) = pass {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = SPACE as _;
        // SAFETY: the control buffer holds one header with room for one descriptor.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), pass);
        }
    }
    retrying(|| {
        // SAFETY: see above. MSG_NOSIGNAL: a worker gone is an error here, not a SIGPIPE.
        match unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) } {
            n if n >= 0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    })
}

/// One packet into `buf`: its length and the descriptor it carried, or `None` at end of stream.
fn recv_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    // Room for a few descriptors: a peer that sends more than one gets them all closed.
    const SPACE: usize = unsafe { libc::CMSG_SPACE(4 * mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in send_packet; the buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = SPACE as _;
    // SAFETY: see above. MSG_CMSG_CLOEXEC: a descriptor received never leaks into a child.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR/NXTHDR walk what it wrote.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count =
                    ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || fds.len() > 1 {
        debug!("control: a truncated packet or extra descriptors: dropped");
        return Err(io::Error::new(ErrorKind::InvalidData, "malformed packet"));
    }
    Ok(Some((n as usize, fds.pop())))
}

/// A connection the supervisor handed to this worker.
#[derive(Debug)]
pub(crate) struct Adopt {
    pub(crate) fd: OwnedFd,
    pub(crate) tried: Vec<u32>,
    pub(crate) last: bool,
}

/// What the reactor must do about the messages that came in.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) adopt: Vec<Adopt>,
    pub(crate) reports: Vec<u64>,
    /// The supervisor is gone: drain, as a single server does on SIGTERM.
    pub(crate) orphaned: bool,
}

/// The worker's end of the channel, as the reactor uses it.
pub struct WorkerLink {
    channel: Channel,
    slot: u32,
    max: usize,
    /// What the supervisor was last told.
    room: bool,
    steer: bool,
    /// Below this many connections a worker that was full takes steered connections again.
    low_water: usize,
    orphaned: bool,
}

impl WorkerLink {
    /// The link of the worker in `slot`, whose limit is `max_connections`.
    pub fn new(channel: Channel, slot: u32, max_connections: usize) -> WorkerLink {
        WorkerLink {
            channel,
            slot,
            max: max_connections,
            room: true,
            steer: true,
            // 5% under the limit (at least one): a worker at the edge of its limit would
            // otherwise leave and rejoin the steering program with every connection.
            low_water: max_connections.saturating_sub((max_connections / 20).max(1)),
            orphaned: false,
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.channel.raw()
    }

    /// Tells the supervisor this worker is serving.
    pub(crate) fn ready(&self) -> io::Result<()> {
        self.channel.send(
            &ToSupervisor::Ready {
                protocol: PROTOCOL,
                version: env!("CARGO_PKG_VERSION").into(),
                max_connections: self.max as u64,
            },
            None,
        )
    }

    /// Called once per turn with the number of open connections: reports crossings of the
    /// limit and of the low-water mark (a comparison when nothing changed).
    pub(crate) fn on_turn(&mut self, open: usize, draining: bool) {
        let room = open < self.max && !draining;
        let steer = !draining
            && if self.steer {
                open < self.max
            } else {
                open <= self.low_water
            };
        if (room, steer) != (self.room, self.steer) {
            self.room = room;
            self.steer = steer;
            self.send(&ToSupervisor::Capacity { room, steer }, None);
        }
    }

    /// Passes `fd` (a connection this full worker accepted) to the supervisor for a sibling;
    /// false if it cannot (the caller refuses it).
    pub(crate) fn hand_off(&self, fd: BorrowedFd<'_>, mut tried: Vec<u32>) -> bool {
        if self.orphaned {
            return false;
        }
        if !tried.contains(&self.slot) {
            tried.push(self.slot);
        }
        match self
            .channel
            .send(&ToSupervisor::HandOff { tried }, Some(fd))
        {
            Ok(()) => true,
            Err(e) => {
                debug!("control: hand-off: {e}");
                false
            }
        }
    }

    pub(crate) fn report(&self, seq: u64, stats: &Stats) {
        self.send(
            &ToSupervisor::Report {
                seq,
                stats: stats.clone(),
            },
            None,
        );
    }

    pub(crate) fn final_counters(&self, stats: &Stats, forced: bool) {
        self.send(
            &ToSupervisor::Final {
                stats: stats.clone(),
                forced,
            },
            None,
        );
    }

    fn send(&self, msg: &ToSupervisor, fd: Option<BorrowedFd<'_>>) {
        if self.orphaned {
            return;
        }
        // The supervisor reads promptly; a full channel or a gone supervisor costs only this
        // message (a gone supervisor is noticed on the read side).
        if let Err(e) = self.channel.send(msg, fd) {
            debug!("control: send: {e}");
        }
    }

    /// Reads every waiting message.
    pub(crate) fn read(&mut self) -> Inbox {
        let mut inbox = Inbox::default();
        if self.orphaned {
            return inbox;
        }
        loop {
            match self.channel.recv::<ToWorker>() {
                Ok(Received::Message(ToWorker::Report { seq }, _)) => inbox.reports.push(seq),
                Ok(Received::Message(ToWorker::HandOff { tried, last }, Some(fd))) => {
                    inbox.adopt.push(Adopt { fd, tried, last })
                }
                Ok(Received::Message(ToWorker::HandOff { .. }, None)) => {
                    debug!("control: a hand-off without its connection: ignored")
                }
                Ok(Received::WouldBlock) => break,
                Ok(Received::Closed) => {
                    self.orphaned = true;
                    inbox.orphaned = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::InvalidData => {}
                Err(e) => {
                    warn!("control: {e}; treating the supervisor as gone");
                    self.orphaned = true;
                    inbox.orphaned = true;
                    break;
                }
            }
        }
        inbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_the_channel_one_packet_each() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        a.send(&ToWorker::Report { seq: 7 }, None).unwrap();
        a.send(
            &ToWorker::HandOff {
                tried: vec![0, 2],
                last: false,
            },
            Some(l.as_fd()),
        )
        .unwrap();
        match b.recv::<ToWorker>().unwrap() {
            Received::Message(ToWorker::Report { seq: 7 }, None) => {}
            other => panic!("{other:?}"),
        }
        match b.recv::<ToWorker>().unwrap() {
            Received::Message(ToWorker::HandOff { tried, last }, Some(fd)) => {
                assert_eq!((tried, last), (vec![0, 2], false));
                let got = std::net::TcpListener::from(fd);
                assert_eq!(got.local_addr().unwrap(), addr, "the same socket");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            b.recv::<ToWorker>().unwrap(),
            Received::WouldBlock
        ));
        drop(a);
        assert!(matches!(b.recv::<ToWorker>().unwrap(), Received::Closed));
    }

    #[test]
    fn capacity_is_reported_at_the_limit_and_steering_resumes_at_the_low_water_mark() {
        let (sup, w) = Channel::pair().unwrap();
        let mut link = WorkerLink::new(Channel::from_fd(w), 0, 100);
        let got = || match sup.recv::<ToSupervisor>().unwrap() {
            Received::Message(ToSupervisor::Capacity { room, steer }, _) => Some((room, steer)),
            Received::WouldBlock => None,
            other => panic!("{other:?}"),
        };
        link.on_turn(50, false);
        assert_eq!(got(), None, "nothing changed");
        link.on_turn(100, false);
        assert_eq!(got(), Some((false, false)));
        link.on_turn(99, false);
        assert_eq!(
            got(),
            Some((true, false)),
            "room for a hand-off, not steered yet"
        );
        link.on_turn(96, false);
        assert_eq!(got(), None);
        link.on_turn(95, false);
        assert_eq!(got(), Some((true, true)), "the low-water mark");
        link.on_turn(10, true);
        assert_eq!(
            got(),
            Some((false, false)),
            "a draining worker takes nothing"
        );
    }
}

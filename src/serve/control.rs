//! The channel between the supervisor and one worker (`--workers`), and the worker's end of it.
//!
//! One `SOCK_SEQPACKET` socket pair per worker: each message is one packet (a small JSON
//! object, so a message is never split or merged and is readable in `strace`), and a packet may
//! carry one descriptor (`SCM_RIGHTS`): a connection being handed to a sibling. The worker's end
//! is descriptor [`CONTROL_FD`] in the worker.
//!
//! ```text
//!   worker → supervisor   Ready, Capacity, Report (counters), Final (counters at exit), HandOff + fd,
//!                         Move + fds (a reload's hand-over), MovedAll
//!   supervisor → worker   Report?, HandOff + fd (serve it, or refuse it when it is the last try),
//!                         HandOver (move every connection), Adopt + fds, HandOverEnd
//! ```
//!
//! A reload's hand-over moves a whole generation's connections through the supervisor, more
//! than a socket buffer holds: [`Channel::post`] queues what the channel does not take, in
//! order, and [`Channel::flush`] sends it once the channel is writable again.
//!
//! The worker's part ([`WorkerLink`]) is driven by the reactor: it says when the worker is full
//! or has room again, hands on what a full worker accepts, and answers requests for counters.
//! Draining is not a message: the supervisor sends SIGTERM, so a worker drains exactly as a
//! single server does.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};

use crate::io_outcome::{is_would_block, retrying};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use log::{debug, warn};
use serde::{Deserialize, Serialize};

use super::handover::Moving;
use super::stats::Stats;

/// The descriptor a worker finds its end of the channel at; its sockets follow it.
pub const CONTROL_FD: RawFd = 3;
/// Bumped when a message changes meaning: a reload that starts workers from a binary speaking
/// another version is refused, and the old workers go on.
pub const PROTOCOL: u32 = 1;
/// Largest message (a report of counters is a few hundred bytes).
const MAX_MESSAGE: usize = 16 << 10;
/// Most descriptors one message carries (a moving connection's socket and its owed output).
const MAX_FDS: usize = 2;

/// What a worker tells the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToSupervisor {
    /// Serving: the signal handlers are in place and the sockets are in the poll.
    Ready {
        protocol: u32,
        version: String,
        max_connections: u64,
        /// The hand-over format it reads and writes ([`super::handover::VERSION`]); 0 (and
        /// absent, from a binary before hand-overs) for none.
        #[serde(default)]
        handover: u32,
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
    /// One connection of a hand-over, with its socket and, if it owes output, a memfd of it.
    Move { conn: Moving },
    /// Every connection has been sent (`count` of them).
    MovedAll { count: u64 },
}

/// What the supervisor tells a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Send a [`ToSupervisor::Report`] with this number.
    Report { seq: u64 },
    /// Serve this connection (the descriptor comes with it); if full, hand it back, unless
    /// `last` (no other worker has room): then refuse it as a single server would.
    HandOff { tried: Vec<u32>, last: bool },
    /// A reload: stop reading, move every connection (one [`ToSupervisor::Move`] each), then
    /// say [`ToSupervisor::MovedAll`].
    HandOver,
    /// Serve this moved connection as it was (its descriptors come with it); sent back to the
    /// worker that moved it when no new worker had room, which then drains it.
    Adopt { conn: Moving },
    /// Every connection this worker moved has been placed: it may exit once it has none.
    HandOverEnd,
}

/// What one receive gave.
#[derive(Debug)]
pub enum Received<T> {
    Message(T, Vec<OwnedFd>),
    WouldBlock,
    /// The other end is gone.
    Closed,
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    /// Messages [`Channel::post`]ed that the channel did not take yet, in order.
    queue: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
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
        Ok((Channel::from_fd(a), b))
    }

    /// The worker's end, inherited at `fd`.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            queue: VecDeque::new(),
        }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends `msg`, with `pass` if given. A full channel is `WouldBlock`: the caller decides.
    pub fn send<T: Serialize>(&self, msg: &T, pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let pass: Vec<RawFd> = pass.iter().map(|f| f.as_raw_fd()).collect();
        send_packet(self.raw(), &bytes, &pass)
    }

    /// Sends `msg` with `fds`, or queues it (and them) behind what waits if the channel is
    /// full; an error only when the channel failed.
    pub fn post<T: Serialize>(&mut self, msg: &T, fds: Vec<OwnedFd>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        self.queue.push_back((bytes, fds));
        self.flush().map(|_| ())
    }

    /// Sends what [`Channel::post`] queued, as far as the channel takes it; true once nothing
    /// waits.
    pub fn flush(&mut self) -> io::Result<bool> {
        while let Some((bytes, fds)) = self.queue.front() {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match send_packet(self.fd.as_raw_fd(), bytes, &raw) {
                // Sent: the descriptors are the receiver's now (ours close here).
                Ok(()) => drop(self.queue.pop_front()),
                Err(e) if is_would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Descriptors waiting in the queue.
    pub fn queued_fds(&self) -> usize {
        self.queue.iter().map(|(_, f)| f.len()).sum()
    }

    /// Messages waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
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

/// Whether descriptor [`CONTROL_FD`] is a `SOCK_SEQPACKET` socket: what the supervisor passes, and what a
/// stray descriptor of a hand-started process is unlikely to be.
pub fn is_control_channel() -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int into the buffer we pass; a descriptor that is not a
    // socket (or not open) is an error, not undefined behaviour.
    let r = unsafe {
        libc::getsockopt(
            CONTROL_FD,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    };
    r == 0 && ty == libc::SOCK_SEQPACKET
}

fn send_packet(fd: RawFd, bytes: &[u8], pass: &[RawFd]) -> io::Result<()> {
    // SAFETY: CMSG_SPACE is a pure computation.
    const SPACE: usize =
        unsafe { libc::CMSG_SPACE((MAX_FDS * mem::size_of::<RawFd>()) as u32) } as usize;
    if pass.len() > MAX_FDS {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
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
    if !pass.is_empty() {
        let len = std::mem::size_of_val(pass) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(len) } as _;
        // SAFETY: the control buffer holds one header with room for MAX_FDS descriptors.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, &fd) in pass.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd);
            }
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

/// One packet into `buf`: its length and the descriptors it carried, or `None` at end of stream.
fn recv_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
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
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || fds.len() > MAX_FDS {
        debug!("control: a truncated packet or extra descriptors: dropped");
        return Err(io::Error::new(ErrorKind::InvalidData, "malformed packet"));
    }
    Ok(Some((n as usize, fds)))
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
    /// Moved connections to take over, with their descriptors (socket, then owed output).
    pub(crate) moved: Vec<(Moving, Vec<OwnedFd>)>,
    pub(crate) reports: Vec<u64>,
    /// The supervisor asks this worker to move every connection to the new generation.
    pub(crate) hand_over: bool,
    /// Every connection this worker moved is placed.
    pub(crate) hand_over_end: bool,
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
                handover: super::handover::announced_version(),
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

    /// Moves one connection to the supervisor (queued if the channel is full); false if the
    /// supervisor is gone.
    pub(crate) fn move_conn(&mut self, conn: Moving, fds: Vec<OwnedFd>) -> bool {
        !self.orphaned && self.post(&ToSupervisor::Move { conn }, fds)
    }

    /// Says every connection has been moved.
    pub(crate) fn moved_all(&mut self, count: u64) -> bool {
        !self.orphaned && self.post(&ToSupervisor::MovedAll { count }, Vec::new())
    }

    fn post(&mut self, msg: &ToSupervisor, fds: Vec<OwnedFd>) -> bool {
        match self.channel.post(msg, fds) {
            Ok(()) => true,
            Err(e) => {
                warn!("control: {e}; treating the supervisor as gone");
                self.orphaned = true;
                false
            }
        }
    }

    /// Sends what waits in the channel's queue (the channel became writable); false if the
    /// supervisor is gone.
    pub(crate) fn flush(&mut self) -> bool {
        if self.orphaned {
            return false;
        }
        match self.channel.flush() {
            Ok(_) => true,
            Err(e) => {
                warn!("control: {e}; treating the supervisor as gone");
                self.orphaned = true;
                false
            }
        }
    }

    /// Messages waiting for the channel to take them.
    pub(crate) fn queued(&self) -> usize {
        self.channel.queued()
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
                Ok(Received::Message(ToWorker::HandOff { tried, last }, fds)) => {
                    match fds.into_iter().next() {
                        Some(fd) => inbox.adopt.push(Adopt { fd, tried, last }),
                        None => debug!("control: a hand-off without its connection: ignored"),
                    }
                }
                Ok(Received::Message(ToWorker::Adopt { conn }, fds)) => {
                    inbox.moved.push((conn, fds))
                }
                Ok(Received::Message(ToWorker::HandOver, _)) => inbox.hand_over = true,
                Ok(Received::Message(ToWorker::HandOverEnd, _)) => inbox.hand_over_end = true,
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
            Received::Message(ToWorker::Report { seq: 7 }, fds) if fds.is_empty() => {}
            other => panic!("{other:?}"),
        }
        match b.recv::<ToWorker>().unwrap() {
            Received::Message(ToWorker::HandOff { tried, last }, mut fds) => {
                assert_eq!((tried, last), (vec![0, 2], false));
                assert_eq!(fds.len(), 1);
                let got = std::net::TcpListener::from(fds.pop().unwrap());
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

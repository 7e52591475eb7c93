//! `upecho udp` in a pipe: a sliding window. A thread reads stdin lines into a bounded channel;
//! the main thread runs a mio loop that sends while the window has room, receives, expires
//! requests at their deadlines (the poll timeout is the nearest deadline) and prints replies in
//! line order. The window is what keeps a long input from being fired at the server all at once,
//! which would overflow the socket buffers on either side and turn a fast sender into lost
//! datagrams.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::matcher::{Tracker, Verdict};
use super::{DatagramLimit, Incoming, is_refusal, recv_datagram, recv_error};
use crate::addr::reason;
use crate::client::display::{printable, refused, rtt, secs};
use crate::client::session::setup_error;
use crate::client::target::{Target, connect_udp};
use crate::client::{Failure, Id};
use crate::io_outcome::{self, is_would_block, retrying};

/// At most this many lines between the oldest one not yet printed and the newest one sent. A real
/// client bounds its requests in flight; 32 keeps a loopback server busy without letting a burst
/// outrun its socket buffer.
pub(crate) const WINDOW: usize = 32;

/// At most this many payload bytes waiting for replies (a single larger datagram is still sent
/// alone). Linux's default socket receive buffer is about 208 KiB, and each datagram costs more
/// than its payload there, so 64 KiB in flight always fits.
pub(crate) const WINDOW_BYTES: usize = 64 * 1024;

/// The pipe loop's poll: the socket, and the stdin thread's waker.
const SOCKET: Token = Token(0);
const STDIN: Token = Token(1);

/// A connected, non-blocking UDP socket registered with a new poll, and the address it is
/// connected to.
fn open(target: &Target) -> Result<(UdpSocket, Poll, SocketAddr), Failure> {
    let (socket, connected) = connect_udp(target)?;
    socket
        .set_nonblocking(true)
        .map_err(|e| setup_error("socket", &e))?;
    let mut socket = UdpSocket::from_std(socket);
    let poll = Poll::new().map_err(|e| setup_error("poll", &e))?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| setup_error("poll", &e))?;
    Ok((socket, poll, connected))
}

/// What became of one line, while it waits to be printed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LineFate {
    Waiting,
    Answered(Vec<u8>),
    Lost,
}

/// Replies held back until every earlier line has been answered or given up on, so that stdout
/// shows replies in input order whatever order they arrive in.
#[derive(Debug)]
struct InOrder {
    /// The id of `slots[0]`: the oldest line not yet printed.
    front: Id,
    slots: VecDeque<LineFate>,
}

impl InOrder {
    fn new(first: Id) -> InOrder {
        InOrder {
            front: first,
            slots: VecDeque::new(),
        }
    }

    /// Number of lines sent (or skipped) and not yet printed: the sliding window's extent.
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds the next line; ids must come in order.
    fn push(&mut self, id: Id) {
        debug_assert_eq!(id, self.front + self.slots.len() as u64);
        self.slots.push_back(LineFate::Waiting);
    }

    fn set(&mut self, id: Id, slot: LineFate) {
        let Some(i) = id.checked_sub(self.front) else {
            return;
        };
        if let Some(s) = usize::try_from(i).ok().and_then(|i| self.slots.get_mut(i)) {
            *s = slot;
        }
    }

    /// The next line's outcome, once it has one: `Some(Some(reply))` or `Some(None)` if lost.
    fn pop(&mut self) -> Option<Option<Vec<u8>>> {
        match self.slots.front()? {
            LineFate::Waiting => None,
            _ => {
                self.front += 1;
                match self.slots.pop_front()? {
                    LineFate::Answered(r) => Some(Some(r)),
                    _ => Some(None),
                }
            }
        }
    }
}

/// A line taken from the stdin channel, waiting for room in the window.
enum HeldLine {
    Line(Vec<u8>),
    TooLong(usize),
}

/// One unit of stdin, as read by the stdin thread.
enum StdinItem {
    Line(Vec<u8>),
    /// A line longer than any datagram; its length (at least), so the error can say so.
    TooLong(usize),
    End,
    Failed(io::Error),
}

/// Pipe mode: each stdin line is one datagram, each reply one stdout line, in input order. Exits
/// with failure (after saying how many) if any line got no reply within the timeout.
pub fn pipe(target: &Target, timeout: Duration) -> Result<(), Failure> {
    let addr = target.to_string();
    let addr = addr.as_str();
    let (socket, poll, connected) = open(target)?;
    let limit = DatagramLimit::to(&connected);
    let waker = Arc::new(Waker::new(poll.registry(), STDIN).map_err(|e| setup_error("poll", &e))?);
    // A channel as deep as the window: the reader runs a little ahead, and blocks (rather than
    // buffering all of stdin) while the window is full.
    let (tx, rx) = mpsc::sync_channel(WINDOW);
    let thread_waker = Arc::clone(&waker);
    thread::Builder::new()
        .name("stdin-lines".into())
        .spawn(move || read_lines(tx, thread_waker, limit.max))
        .map_err(|e| Failure::Error(format!("cannot start the stdin thread: {e}")))?;
    let mut run = PipeRun {
        addr,
        timeout,
        limit,
        socket,
        poll,
        events: Events::with_capacity(64),
        input: rx,
        input_done: false,
        held: None,
        tracker: Tracker::new(timeout),
        order: InOrder::new(1),
        out: BufWriter::new(io::stdout().lock()),
        buf: vec![0u8; limit.max],
        lines: 0,
        lost: 0,
        first_lost: None,
        _waker: waker,
    };
    run.run()?;
    if run.lost > 0 {
        eprintln!(
            "upecho udp: {} of {} datagrams got no reply within {} (first: line {}); \
             UDP does not retransmit",
            run.lost,
            run.lines,
            secs(timeout),
            run.first_lost.unwrap_or(0)
        );
        return Err(Failure::Reported);
    }
    Ok(())
}

struct PipeRun<'a> {
    addr: &'a str,
    timeout: Duration,
    limit: DatagramLimit,
    socket: UdpSocket,
    poll: Poll,
    events: Events,
    input: Receiver<StdinItem>,
    input_done: bool,
    /// A line taken from the channel but not yet sent (no room in the window, or WouldBlock).
    held: Option<HeldLine>,
    tracker: Tracker,
    order: InOrder,
    out: BufWriter<io::StdoutLock<'static>>,
    buf: Vec<u8>,
    lines: u64,
    lost: u64,
    first_lost: Option<Id>,
    /// Held here too, not only by the stdin thread: dropping the last handle closes its eventfd,
    /// which would discard a wake-up still pending when the thread exits right after its last line.
    _waker: Arc<Waker>,
}

impl PipeRun<'_> {
    fn run(&mut self) -> Result<(), Failure> {
        loop {
            // Replies already received count before deadlines are checked (see `Tracker`).
            self.receive()?;
            for id in self.tracker.expire(Instant::now()) {
                self.lose(id);
            }
            // Printing first frees room in the window for sending.
            self.print_ready()?;
            self.send_while_room()?;
            // Sending may settle lines at once (too long for a datagram: lost on the spot); left
            // unprinted, they would keep the loop waiting for an event that never comes.
            self.print_ready()?;
            if self.input_done && self.held.is_none() && self.order.len() == 0 {
                return self.flush();
            }
            // Output waits in the buffer only until the loop would block.
            self.flush()?;
            let timeout = self
                .tracker
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            io_outcome::poll(&mut self.poll, &mut self.events, timeout)
                .map_err(|e| Failure::Error(format!("poll failed: {e}")))?;
        }
    }

    fn lose(&mut self, id: Id) {
        self.lost += 1;
        self.first_lost.get_or_insert(id);
        self.order.set(id, LineFate::Lost);
    }

    fn flush(&mut self) -> Result<(), Failure> {
        self.out.flush().map_err(|e| Failure::stdout(&e))
    }

    fn print_ready(&mut self) -> Result<(), Failure> {
        while let Some(outcome) = self.order.pop() {
            if let Some(reply) = outcome {
                self.out
                    .write_all(&reply)
                    .and_then(|()| self.out.write_all(b"\n"))
                    .map_err(|e| Failure::stdout(&e))?;
            }
        }
        Ok(())
    }

    /// Whether `next` may go out now without exceeding the window.
    fn room_for(&self, next: &HeldLine) -> bool {
        self.order.len() < WINDOW
            && match next {
                HeldLine::TooLong(_) => true,
                HeldLine::Line(line) => {
                    self.tracker.waiting() == 0
                        || self.tracker.waiting_bytes() + line.len() <= WINDOW_BYTES
                }
            }
    }

    fn send_while_room(&mut self) -> Result<(), Failure> {
        loop {
            if self.held.is_none() && !self.input_done {
                match self.input.try_recv() {
                    Ok(StdinItem::Line(line)) => self.held = Some(HeldLine::Line(line)),
                    Ok(StdinItem::TooLong(len)) => self.held = Some(HeldLine::TooLong(len)),
                    Ok(StdinItem::End) => self.input_done = true,
                    Ok(StdinItem::Failed(e)) => {
                        return Err(Failure::Error(format!("cannot read stdin: {}", reason(&e))));
                    }
                    Err(TryRecvError::Empty) => {}
                    // The reader always ends with `End` or `Failed`; without one it died.
                    Err(TryRecvError::Disconnected) => {
                        return Err(Failure::Error("the stdin thread stopped".into()));
                    }
                }
            }
            let Some(next) = self.held.take() else {
                return Ok(());
            };
            if !self.room_for(&next) {
                self.held = Some(next);
                return Ok(());
            }
            let line = match next {
                HeldLine::TooLong(len) => {
                    let why = self.limit.too_long(len);
                    self.skip_unsendable(&why);
                    continue;
                }
                HeldLine::Line(line) => line,
            };
            match retrying(|| self.socket.send(&line)) {
                Ok(_) => {
                    let id = self.tracker.send(&line, Instant::now());
                    self.order.push(id);
                    self.lines += 1;
                }
                Err(e) if is_would_block(&e) => {
                    // Sent when the socket reports it writable again.
                    self.held = Some(HeldLine::Line(line));
                    return Ok(());
                }
                Err(e) if is_refusal(&e) => return Err(self.refused()),
                // The stdin thread holds back lines over the protocol's limit; should the kernel
                // still refuse one as too long (a smaller limit of its own), that line is lost and
                // the run goes on.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    self.skip_unsendable(&format!("{} bytes: {}", line.len(), reason(&e)));
                }
                Err(e) => {
                    return Err(Failure::Error(format!(
                        "cannot send to {}: {}",
                        self.addr,
                        reason(&e)
                    )));
                }
            }
        }
    }

    /// A line that cannot be one datagram: reported (`why`), counted as lost, never sent.
    fn skip_unsendable(&mut self, why: &str) {
        let id = self.tracker.skip();
        eprintln!("upecho udp: line {id}: {why}; not sent");
        self.order.push(id);
        self.lines += 1;
        self.lose(id);
    }

    /// The server's port is closed: every further datagram would be refused too, so stop here,
    /// after printing the replies that did arrive.
    fn refused(&mut self) -> Failure {
        let _ = self.print_ready();
        let _ = self.flush();
        Failure::Error(format!(
            "{}; stopped after {} line(s)",
            refused(self.addr),
            self.lines
        ))
    }

    fn receive(&mut self) -> Result<(), Failure> {
        loop {
            let n = match recv_datagram(&self.socket, &mut self.buf) {
                Ok(Incoming::Datagram(n)) => n,
                Ok(Incoming::Nothing) => return Ok(()),
                Ok(Incoming::Refused) => return Err(self.refused()),
                Err(e) => return Err(recv_error(self.addr, &e)),
            };
            let reply = &self.buf[..n];
            match self.tracker.on_reply(reply, Instant::now()) {
                Verdict::Answer { id, .. } => {
                    self.order.set(id, LineFate::Answered(reply.to_vec()))
                }
                // Its line was already given up on (and counted); the reply is noted, not printed,
                // so stdout stays in line order.
                Verdict::Late { id, rtt: t, .. } => eprintln!(
                    "upecho udp: late reply to line {id} after {} (over the {} timeout): ignored",
                    rtt(t),
                    secs(self.timeout)
                ),
                Verdict::Duplicate { id, .. } => {
                    eprintln!("upecho udp: duplicate reply to line {id}: ignored");
                }
                Verdict::Unexpected => eprintln!(
                    "upecho udp: unexpected reply, matching no line sent: {}",
                    printable(reply)
                ),
            }
        }
    }
}

/// The stdin thread: reads lines (without their `\n`) and hands them over, waking the poll loop.
/// A line longer than `max_line` (the largest datagram) is skipped to its end rather than held.
fn read_lines(tx: SyncSender<StdinItem>, waker: Arc<Waker>, max_line: usize) {
    let mut stdin = io::stdin().lock();
    loop {
        let item = next_line(&mut stdin, max_line);
        let last = matches!(item, StdinItem::End | StdinItem::Failed(_));
        if tx.send(item).is_err() {
            // The main thread has finished; nothing more is wanted.
            return;
        }
        if let Err(e) = waker.wake() {
            log::warn!("cannot wake the poll loop: {e}");
        }
        if last {
            return;
        }
    }
}

fn next_line(input: &mut impl BufRead, max_line: usize) -> StdinItem {
    let mut line = Vec::new();
    let limit = max_line as u64 + 1;
    match input.by_ref().take(limit).read_until(b'\n', &mut line) {
        Ok(0) => StdinItem::End,
        Ok(_) if line.last() == Some(&b'\n') => {
            line.pop();
            StdinItem::Line(line)
        }
        // The last line of the input may have no newline; it is still a line.
        Ok(_) if line.len() <= max_line => StdinItem::Line(line),
        Ok(_) => match skip_line(input) {
            Ok(rest) => StdinItem::TooLong(line.len() + rest),
            Err(e) => StdinItem::Failed(e),
        },
        Err(e) => StdinItem::Failed(e),
    }
}

/// Consumes input up to and including the next `\n`; returns the bytes skipped before it.
fn skip_line(input: &mut impl BufRead) -> io::Result<usize> {
    let mut skipped = 0;
    loop {
        let (newline, buffered) = retrying(|| {
            input
                .fill_buf()
                .map(|buf| (buf.iter().position(|&b| b == b'\n'), buf.len()))
        })?;
        match newline {
            _ if buffered == 0 => return Ok(skipped),
            Some(i) => {
                input.consume(i + 1);
                return Ok(skipped + i);
            }
            None => {
                input.consume(buffered);
                skipped += buffered;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The limit over IPv4, as for the tutorial's server.
    const MAX_LINE: usize = crate::net::MAX_DATAGRAM_V4;

    fn lines(input: &[u8]) -> Vec<Result<Vec<u8>, usize>> {
        let mut r = io::BufReader::with_capacity(1000, input);
        let mut out = Vec::new();
        loop {
            match next_line(&mut r, MAX_LINE) {
                StdinItem::Line(l) => out.push(Ok(l)),
                StdinItem::TooLong(n) => out.push(Err(n)),
                StdinItem::End => return out,
                StdinItem::Failed(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn lines_split_on_newline_and_keep_empty_ones() {
        assert_eq!(
            lines(b"a\n\nb"),
            vec![Ok(b"a".to_vec()), Ok(vec![]), Ok(b"b".to_vec())]
        );
        assert_eq!(lines(b"a\n"), vec![Ok(b"a".to_vec())]);
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"\r\n"), vec![Ok(b"\r".to_vec())]);
    }

    #[test]
    fn a_line_longer_than_any_datagram_is_skipped_whole() {
        let mut input = vec![b'x'; MAX_LINE + 5000];
        input.extend_from_slice(b"\nnext\n");
        assert_eq!(
            lines(&input),
            vec![Err(MAX_LINE + 5000), Ok(b"next".to_vec())]
        );
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(lines(&exact), vec![Ok(vec![b'y'; MAX_LINE])]);
        // One byte over, with no newline at the end of the input.
        assert_eq!(lines(&vec![b'z'; MAX_LINE + 1]), vec![Err(MAX_LINE + 1)]);
    }

    #[test]
    fn in_order_holds_replies_until_earlier_lines_are_done() {
        let mut o = InOrder::new(1);
        for id in 1..=3 {
            o.push(id);
        }
        o.set(3, LineFate::Answered(b"C".to_vec()));
        assert_eq!(o.pop(), None);
        o.set(1, LineFate::Answered(b"A".to_vec()));
        assert_eq!(o.pop(), Some(Some(b"A".to_vec())));
        assert_eq!(o.pop(), None);
        o.set(2, LineFate::Lost);
        assert_eq!(o.pop(), Some(None));
        assert_eq!(o.pop(), Some(Some(b"C".to_vec())));
        assert_eq!(o.len(), 0);
        // An id already printed is ignored rather than misplaced.
        o.set(1, LineFate::Answered(b"late".to_vec()));
        assert_eq!(o.pop(), None);
    }

    proptest! {
        /// Whatever order lines are resolved in, they come out once each, in line order.
        #[test]
        fn in_order_emits_every_line_once_in_order(
            fates in proptest::collection::vec(any::<bool>(), 0..60),
            seed in any::<u64>(),
        ) {
            let n = fates.len() as u64;
            let mut o = InOrder::new(1);
            let mut ids: Vec<u64> = (1..=n).collect();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..ids.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                ids.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut out = Vec::new();
            for id in 1..=n {
                o.push(id);
            }
            for id in ids {
                let slot = if fates[(id - 1) as usize] {
                    LineFate::Answered(id.to_be_bytes().to_vec())
                } else {
                    LineFate::Lost
                };
                o.set(id, slot);
                while let Some(r) = o.pop() {
                    out.push(r);
                }
            }
            prop_assert_eq!(out.len() as u64, n);
            for (i, r) in out.into_iter().enumerate() {
                let id = i as u64 + 1;
                let want = fates[i].then(|| id.to_be_bytes().to_vec());
                prop_assert_eq!(r, want);
            }
        }
    }
}

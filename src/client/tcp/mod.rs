//! `upecho tcp`: the TCP client.
//!
//! - **Interactive** ([`interactive`]): a prompt ([`Console`]). Each line goes out as its UTF-8
//!   bytes (no newline, as in the tutorial) and exactly as many bytes are read back, because the
//!   server's transform keeps the length: that is what solves the tutorial's "sticky packet"
//!   problem, since a reply can no longer be cut short or glued to the next. A reader thread owns
//!   the receiving side all session long: it stamps every byte with its arrival time and hands it
//!   to the request it answers ([`Owed`]). While a line is in flight the main thread takes those
//!   replies from it; while the user sits at the prompt the reader reports what comes by itself
//!   (a late reply, bytes nobody asked for) and, if the server goes away, ends the prompt at once.
//!   The main thread writes with a small mio loop, so a pasted line larger than the socket
//!   buffers cannot deadlock, and a reply that does not come within `--timeout` is reported while
//!   the session goes on.
//! - **Pipe** ([`pipe`]): like `nc -N`. A thread copies stdin to the socket and half-closes it at
//!   end of input, while the main thread copies the socket to stdout until the server closes. Two
//!   blocking threads rather than one poll loop, because stdin may be a regular file, which epoll
//!   refuses.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::SIGINT;
use signal_hook_mio::v1_0::Signals;

use super::console::{Console, Input, Messenger, PromptWaker};
use super::display::{printable, quoted, rtt, secs};
use super::target::{Target, connect_tcp};
use super::{Failure, InteractiveOptions};
use crate::addr::{DEFAULT_ADDR, reason};
use crate::io_outcome::{self, Class, classify, is_would_block, retrying};

/// Copy buffer for both directions of pipe mode: large enough that a bulk transfer costs few
/// system calls, small enough to pass replies on as soon as they arrive.
const CHUNK: usize = 64 * 1024;

const SOCKET: Token = Token(0);
const SIGNAL: Token = Token(1);
const WAKE: Token = Token(2);

/// A server that closes a connection this soon after it was made, having sent nothing, most
/// likely refused it (a server at `--max-connections` accepts and closes at once). Generous, for
/// a loaded machine; a close after a longer silence is an idle timeout or a crash, not a refusal.
const REFUSAL_WINDOW: Duration = Duration::from_secs(2);

/// How a connection failed, in words that name the server. The classifier tells the peer's doing
/// from ours; among the peer's, a reset is named as such and a broken pipe (the peer closed and
/// then refused what we sent after) as a close, which is what the user saw happen.
fn connection_error(addr: &str, e: &io::Error) -> Failure {
    Failure::Error(match (classify(e), e.kind()) {
        (Class::PeerReset, io::ErrorKind::ConnectionReset) => {
            format!("{addr} reset the connection")
        }
        (Class::PeerReset, io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted)
        | (Class::PeerClosed, _) => format!("{addr} closed the connection"),
        _ => format!("connection to {addr} failed: {}", reason(e)),
    })
}

fn setup_error(what: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::Error(format!("cannot set up the {what}: {e}"))
}

fn stdout_error(e: &io::Error) -> Failure {
    Failure::Error(format!("cannot write to stdout: {}", reason(e)))
}

/// Identifies a line sent in the interactive session: 1 for the first.
pub(crate) type Id = u64;

/// What a run of received bytes completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The whole reply to line `id`, which was still waited for.
    Reply {
        id: Id,
        reply: Vec<u8>,
        rtt: Duration,
    },
    /// The whole reply to a line already given up on (its timeout passed).
    Late {
        line: Vec<u8>,
        reply: Vec<u8>,
        rtt: Duration,
    },
    /// Bytes beyond every reply owed: nobody asked for them.
    Unasked(Vec<u8>),
}

/// A line sent and the reply bytes received for it so far.
#[derive(Debug)]
struct Owing {
    id: Id,
    line: Vec<u8>,
    sent: Instant,
    reply: Vec<u8>,
    timed_out: bool,
}

/// The replies the server owes, in send order. TCP keeps order and the transform keeps length, so
/// the next `line.len()` bytes received are the oldest line's reply, whether or not it timed out:
/// a line given up on is still owed, and its reply, when it comes, is *late* instead of being
/// taken for the next line's. Pure: the caller passes the clock.
#[derive(Debug, Default)]
pub(crate) struct Owed {
    next_id: Id,
    queue: VecDeque<Owing>,
}

impl Owed {
    pub fn new() -> Owed {
        Owed {
            next_id: 1,
            queue: VecDeque::new(),
        }
    }

    /// Records that `line` was (about to be) sent at `now`; returns its id.
    pub fn send(&mut self, line: &[u8], now: Instant) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Owing {
            id,
            line: line.to_vec(),
            sent: now,
            reply: Vec::with_capacity(line.len()),
            timed_out: false,
        });
        id
    }

    /// Hands `bytes`, received at `now`, to the replies they belong to.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Vec<Arrival> {
        let mut done = Vec::new();
        while !bytes.is_empty() {
            let Some(front) = self.queue.front_mut() else {
                done.push(Arrival::Unasked(bytes.to_vec()));
                break;
            };
            let take = (front.line.len() - front.reply.len()).min(bytes.len());
            front.reply.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if front.reply.len() == front.line.len()
                && let Some(o) = self.queue.pop_front()
            {
                let rtt = now.saturating_duration_since(o.sent);
                done.push(if o.timed_out {
                    Arrival::Late {
                        line: o.line,
                        reply: o.reply,
                        rtt,
                    }
                } else {
                    Arrival::Reply {
                        id: o.id,
                        reply: o.reply,
                        rtt,
                    }
                });
            }
        }
        done
    }

    /// Gives up waiting for line `id`: its reply, if it comes, is late.
    pub fn time_out(&mut self, id: Id) {
        if let Some(o) = self.queue.iter_mut().find(|o| o.id == id) {
            o.timed_out = true;
        }
    }

    /// How many of line `id`'s reply bytes have arrived, and how many are owed in all.
    pub fn progress(&self, id: Id) -> Option<(usize, usize)> {
        self.queue
            .iter()
            .find(|o| o.id == id)
            .map(|o| (o.reply.len(), o.line.len()))
    }
}

/// How the connection ended, as the reader thread found it.
#[derive(Debug)]
enum Ended {
    Closed,
    Failed(io::Error),
}

/// What the reader thread hands the main thread, and the state both look at.
#[derive(Debug)]
struct ReaderHandoff {
    /// A line is in flight and the main thread takes the arrivals; otherwise the user is at the
    /// prompt and the reader thread reports them itself.
    busy: bool,
    owed: Owed,
    arrivals: VecDeque<Arrival>,
    /// Set once, by the reader thread, with the time it noticed.
    ended: Option<(Ended, Instant)>,
    received: u64,
    /// Set when the session is dropped, so the reader thread stops.
    quit: bool,
}

/// How one exchange ended, when the session goes on.
#[derive(Debug, PartialEq, Eq)]
enum Exchange {
    Reply(Vec<u8>, Duration),
    TimedOut,
    /// Ctrl-C while waiting.
    Interrupted,
}

/// The interactive session: prompt, send each line, print its reply and round-trip time, repeat.
pub fn interactive(target: &Target, options: &InteractiveOptions) -> Result<(), Failure> {
    let InteractiveOptions { timeout, history } = options.clone();
    let addr = target.to_string();
    let addr = addr.as_str();
    let stream = connect_tcp(target)?;
    // Each line is one small write awaiting its reply: Nagle's algorithm could only delay it.
    let _ = stream.set_nodelay(true);
    let connected_to = stream
        .peer_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    let prompt = if addr == DEFAULT_ADDR {
        "tcp> ".to_string()
    } else {
        format!("tcp {addr}> ")
    };
    // Before the reader thread starts: it may raise SIGINT to wake the prompt, and SIGINT must
    // find a handler then, not its default action.
    let signals = Signals::new([SIGINT]).map_err(|e| setup_error("signal handler", &e))?;
    let mut console = Console::new(prompt, history)?;
    let mut session = Session::new(addr, stream, signals, timeout)?;
    session.start_reader(console.messenger(), Some(console.prompt_waker()))?;

    eprintln!(
        "connected to {connected_to}; type a line, Ctrl-D or Ctrl-C (on an empty line) to quit"
    );
    loop {
        session.at_prompt()?;
        let input = console.read()?;
        session.busy()?;
        let lines = match input {
            Input::Lines(lines) => lines,
            Input::End => return Ok(()),
            // `busy` has reported why, unless the news was already old.
            Input::Woken => continue,
        };
        for line in lines {
            // An empty line sends nothing: there would be nothing to wait for (the tutorial's
            // client hangs here forever).
            if line.is_empty() {
                continue;
            }
            match session.exchange(line.as_bytes())? {
                Exchange::Reply(reply, t) => console.reply(&reply, t)?,
                Exchange::TimedOut => eprintln!(
                    "no reply within {}; still connected, and a reply that comes later is shown as late",
                    secs(timeout)
                ),
                // Ctrl-C while waiting: leave as cleanly as from the prompt.
                Exchange::Interrupted => return Ok(()),
            }
        }
    }
}

/// Words for what arrived unasked-for or too late; the reply to the line in flight is the caller's.
fn describe(addr: &str, a: &Arrival) -> Option<String> {
    match a {
        Arrival::Reply { .. } => None,
        Arrival::Late {
            line,
            reply,
            rtt: t,
        } => Some(format!(
            "late reply to {} after {}: {}",
            quoted(line, 40),
            rtt(*t),
            printable(reply)
        )),
        Arrival::Unasked(bytes) => Some(format!(
            "{addr} sent {} bytes nobody asked for: {}",
            bytes.len(),
            printable(bytes)
        )),
    }
}

/// The interactive client's connection: the main thread's writing half and the state it shares
/// with the reader thread.
struct Session<'a> {
    addr: &'a str,
    timeout: Duration,
    connected: Instant,
    stream: mio::net::TcpStream,
    poll: Poll,
    events: Events,
    signals: Signals,
    shared: Arc<Mutex<ReaderHandoff>>,
    /// Wakes this thread's poll when the reader has news for it.
    waker: Arc<Waker>,
    /// Wakes the reader thread's poll when the session is dropped.
    reader_waker: Option<Arc<Waker>>,
    sent_any: bool,
}

impl<'a> Session<'a> {
    /// Takes over a connected stream; `signals` ends a wait when SIGINT is among them.
    fn new(
        addr: &'a str,
        stream: TcpStream,
        mut signals: Signals,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        stream
            .set_nonblocking(true)
            .map_err(|e| setup_error("socket", &e))?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let poll = Poll::new().map_err(|e| setup_error("poll", &e))?;
        let registry = poll.registry();
        registry
            .register(&mut stream, SOCKET, Interest::WRITABLE)
            .map_err(|e| setup_error("poll", &e))?;
        registry
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(|e| setup_error("poll", &e))?;
        let waker = Arc::new(Waker::new(registry, WAKE).map_err(|e| setup_error("poll", &e))?);
        Ok(Session {
            addr,
            timeout,
            connected: Instant::now(),
            stream,
            poll,
            events: Events::with_capacity(8),
            signals,
            shared: Arc::new(Mutex::new(ReaderHandoff {
                busy: true,
                owed: Owed::new(),
                arrivals: VecDeque::new(),
                ended: None,
                received: 0,
                quit: false,
            })),
            waker,
            reader_waker: None,
            sent_any: false,
        })
    }

    /// Starts the thread that receives everything the server sends. `prompt` is woken when the
    /// server goes away while the user is at the prompt.
    fn start_reader(
        &mut self,
        messenger: Messenger,
        prompt: Option<PromptWaker>,
    ) -> Result<(), Failure> {
        let std_stream = dup(&self.stream).map_err(|e| setup_error("socket", &e))?;
        let mut stream = mio::net::TcpStream::from_std(std_stream);
        let poll = Poll::new().map_err(|e| setup_error("poll", &e))?;
        poll.registry()
            .register(&mut stream, SOCKET, Interest::READABLE)
            .map_err(|e| setup_error("poll", &e))?;
        let reader_waker =
            Arc::new(Waker::new(poll.registry(), WAKE).map_err(|e| setup_error("poll", &e))?);
        let reader = Reader {
            addr: self.addr.to_string(),
            stream,
            poll,
            shared: Arc::clone(&self.shared),
            main: Arc::clone(&self.waker),
            _own_waker: Arc::clone(&reader_waker),
            prompt,
            messenger,
        };
        thread::Builder::new()
            .name("tcp-reader".into())
            .spawn(move || reader.run())
            .map_err(|e| Failure::Error(format!("cannot start the reader thread: {e}")))?;
        self.reader_waker = Some(reader_waker);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, ReaderHandoff> {
        // A thread that panicked while holding the lock left the state as consistent as any
        // other moment: every field is updated in one step.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands arrivals over to the reader thread's reporting while the user types, after
    /// reporting any the main thread has not yet. Fails if the connection is over.
    fn at_prompt(&mut self) -> Result<(), Failure> {
        let mut shared = self.lock();
        for a in shared.arrivals.drain(..) {
            if let Some(msg) = describe(self.addr, &a) {
                eprintln!("{msg}");
            }
        }
        self.check_ended(&shared)?;
        shared.busy = false;
        Ok(())
    }

    /// Takes the arrivals back for the lines about to be sent. Fails if the connection ended
    /// while the user was at the prompt.
    fn busy(&mut self) -> Result<(), Failure> {
        let mut shared = self.lock();
        shared.busy = true;
        self.check_ended(&shared)
    }

    fn check_ended(&self, shared: &ReaderHandoff) -> Result<(), Failure> {
        match &shared.ended {
            None => Ok(()),
            Some((how, at)) => Err(self.ended_error(shared, how, *at, None)),
        }
    }

    /// The one line that says how the connection ended; `line` is the id of the line in flight.
    fn ended_error(
        &self,
        shared: &ReaderHandoff,
        how: &Ended,
        at: Instant,
        line: Option<Id>,
    ) -> Failure {
        let refused =
            shared.received == 0 && at.saturating_duration_since(self.connected) < REFUSAL_WINDOW;
        if refused {
            return Failure::Error(format!(
                "the server at {} closed the connection right after accepting it \
                 (it may be at its connection limit)",
                self.addr
            ));
        }
        match how {
            Ended::Closed => {
                let partial = match line.and_then(|id| shared.owed.progress(id)) {
                    Some((got, want)) if got > 0 => {
                        format!(" after {got} of {want} reply bytes")
                    }
                    _ => String::new(),
                };
                Failure::Error(format!("{} closed the connection{partial}", self.addr))
            }
            Ended::Failed(e) => connection_error(self.addr, e),
        }
    }

    /// Sends `data` and waits for its reply until the timeout, writing while the reader thread
    /// receives. Replies and bytes that arrive for earlier lines or for none are reported on the
    /// way.
    fn exchange(&mut self, data: &[u8]) -> Result<Exchange, Failure> {
        // The clock starts before the first byte is handed to the kernel, and the line is
        // registered before it can be answered.
        let started = Instant::now();
        let id = self.lock().owed.send(data, started);
        self.sent_any = true;
        let deadline = started + self.timeout;
        let mut written = 0;
        loop {
            // The socket is edge-triggered: write until WouldBlock before polling.
            while written < data.len() {
                match retrying(|| self.stream.write(&data[written..])) {
                    Ok(0) => {
                        return Err(Failure::Error(format!("{} stopped taking data", self.addr)));
                    }
                    Ok(n) => written += n,
                    Err(e) if is_would_block(&e) => break,
                    // The reader thread sees the end too, and says it better (how much of the
                    // reply came); give it the moment it needs.
                    Err(e) => return Err(self.write_failed(id, &e)),
                }
            }
            {
                let mut shared = self.lock();
                let mut answer = None;
                while let Some(a) = shared.arrivals.pop_front() {
                    match a {
                        Arrival::Reply {
                            id: got,
                            reply,
                            rtt,
                        } if got == id => {
                            answer = Some(Exchange::Reply(reply, rtt));
                            break;
                        }
                        other => {
                            if let Some(msg) = describe(self.addr, &other) {
                                eprintln!("{msg}");
                            }
                        }
                    }
                }
                if let Some(answer) = answer {
                    return Ok(answer);
                }
                if let Some((how, at)) = &shared.ended {
                    return Err(self.ended_error(&shared, how, *at, Some(id)));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                if written < data.len() {
                    return Err(Failure::Error(format!(
                        "{} took only {written} of {} bytes within {}: it is not reading",
                        self.addr,
                        data.len(),
                        secs(self.timeout)
                    )));
                }
                self.lock().owed.time_out(id);
                return Ok(Exchange::TimedOut);
            }
            io_outcome::poll(&mut self.poll, &mut self.events, Some(deadline - now))
                .map_err(|e| Failure::Error(format!("poll failed: {e}")))?;
            let signalled = self.events.iter().any(|ev| ev.token() == SIGNAL);
            if signalled && self.signals.pending().any(|s| s == SIGINT) {
                eprintln!();
                return Ok(Exchange::Interrupted);
            }
        }
    }

    /// A failed write: the connection is over. The reader thread normally sees it within
    /// moments and knows more (a close versus a reset, the bytes received), so wait briefly.
    fn write_failed(&mut self, id: Id, e: &io::Error) -> Failure {
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            {
                let shared = self.lock();
                if let Some((how, at)) = &shared.ended {
                    return self.ended_error(&shared, how, *at, Some(id));
                }
            }
            let now = Instant::now();
            if now >= until {
                return connection_error(self.addr, e);
            }
            if io_outcome::poll(&mut self.poll, &mut self.events, Some(until - now)).is_err() {
                return connection_error(self.addr, e);
            }
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.lock().quit = true;
        if let Some(w) = &self.reader_waker {
            let _ = w.wake();
        }
    }
}

/// A second handle on the same socket, for the reader thread.
fn dup(stream: &mio::net::TcpStream) -> io::Result<TcpStream> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = stream.as_fd().try_clone_to_owned()?;
    Ok(TcpStream::from(fd))
}

/// The interactive session's receiving side, on a thread of its own.
struct Reader {
    addr: String,
    stream: mio::net::TcpStream,
    poll: Poll,
    shared: Arc<Mutex<ReaderHandoff>>,
    main: Arc<Waker>,
    /// The waker the session uses to say "quit". Held here too: if the session dropped the last
    /// reference, its eventfd would close and leave this thread's poll, and a wake sent just
    /// before would be lost with it (the reader then waited for the socket to end by itself).
    _own_waker: Arc<Waker>,
    prompt: Option<PromptWaker>,
    messenger: Messenger,
}

impl Reader {
    fn run(mut self) {
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0u8; CHUNK];
        loop {
            // Edge-triggered: read until WouldBlock before polling again.
            loop {
                match retrying(|| self.stream.read(&mut buf)) {
                    Ok(0) => return self.end(Ended::Closed),
                    Ok(n) => self.arrived(&buf[..n]),
                    Err(e) if is_would_block(&e) => break,
                    Err(e) if classify(&e) == Class::PeerClosed => {
                        return self.end(Ended::Closed);
                    }
                    Err(e) => return self.end(Ended::Failed(e)),
                }
            }
            if let Err(e) = io_outcome::poll(&mut self.poll, &mut events, None) {
                return self.end(Ended::Failed(e));
            }
            if self.lock().quit {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, ReaderHandoff> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrived(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        let mut shared = self.lock();
        shared.received += bytes.len() as u64;
        let arrivals = shared.owed.feed(bytes, now);
        if arrivals.is_empty() {
            return;
        }
        if shared.busy {
            shared.arrivals.extend(arrivals);
            drop(shared);
            self.wake_main();
        } else {
            drop(shared);
            for a in &arrivals {
                if let Some(msg) = describe(&self.addr, a) {
                    self.messenger.say(msg);
                }
            }
        }
    }

    fn end(self, how: Ended) {
        let at_prompt = {
            let mut shared = self.lock();
            shared.ended = Some((how, Instant::now()));
            !shared.busy && !shared.quit
        };
        self.wake_main();
        if at_prompt
            && let Some(prompt) = &self.prompt
            && !prompt.wake()
        {
            self.messenger
                .say(format!("{} ended the connection; press Enter", self.addr));
        }
    }

    fn wake_main(&self) {
        if let Err(e) = self.main.wake() {
            log::warn!("cannot wake the main thread: {e}");
        }
    }
}

/// Why the stdin-to-socket half of pipe mode stopped early.
enum PumpError {
    Stdin(io::Error),
    Socket(io::Error),
}

/// Pipe mode: stream stdin to the server and the replies to stdout, both at once, until the
/// server closes after our end of input.
pub fn pipe(target: &Target) -> Result<(), Failure> {
    let addr = target.to_string();
    let addr = addr.as_str();
    let mut stream = connect_tcp(target)?;
    // Pipe mode forwards whatever stdin gives as soon as it gives it, like nc; Nagle's algorithm
    // would hold a small last chunk back for a round trip.
    let _ = stream.set_nodelay(true);
    let writer = stream
        .try_clone()
        .map_err(|e| Failure::Error(format!("cannot set up the socket: {}", reason(&e))))?;

    // The pump reports its outcome *before* it shuts the socket down. So when the main thread sees
    // the connection end and finds no outcome yet, the server closed on its own, before the end
    // of our input.
    let (outcome_tx, outcome_rx) = mpsc::channel();
    thread::Builder::new()
        .name("stdin-pump".into())
        .spawn(move || pump(writer, outcome_tx))
        .map_err(|e| Failure::Error(format!("cannot start the stdin thread: {e}")))?;

    let mut received: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    let mut out = io::stdout().lock();
    let end = loop {
        match retrying(|| stream.read(&mut buf)) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                // Flushed chunk by chunk: replies are passed on as they arrive, not at exit.
                out.write_all(&buf[..n])
                    .and_then(|()| out.flush())
                    .map_err(|e| stdout_error(&e))?;
                received += n as u64;
            }
            // A blocking socket: any error ends the copy, and is described below.
            Err(e) => break Err(e),
        }
    };
    match outcome_rx.try_recv() {
        Ok(Ok(sent)) => {
            end.map_err(|e| connection_error(addr, &e))?;
            if received < sent {
                return Err(Failure::Error(format!(
                    "{addr} closed the connection after echoing {received} of {sent} bytes"
                )));
            }
            log::debug!("sent {sent} bytes, received {received}");
            Ok(())
        }
        Ok(Err(PumpError::Stdin(e))) => {
            Err(Failure::Error(format!("cannot read stdin: {}", reason(&e))))
        }
        Ok(Err(PumpError::Socket(e))) => Err(connection_error(addr, &e)),
        Err(_) => match end {
            Ok(()) => Err(Failure::Error(format!(
                "{addr} closed the connection before the end of input \
                 (after {received} reply bytes)"
            ))),
            Err(e) => Err(connection_error(addr, &e)),
        },
    }
}

/// Copies stdin to the socket; at end of input reports the byte count and half-closes, so the
/// server knows to send what it owes and close.
fn pump(mut socket: TcpStream, outcome: mpsc::Sender<Result<u64, PumpError>>) {
    let result = copy_stdin(&mut socket);
    let ok = result.is_ok();
    // The receiver only goes away when the main thread has finished, and then nobody is waiting.
    let _ = outcome.send(result);
    // On success, only the write half closes: replies keep coming until the server closes. On
    // failure, both halves close, which wakes the main thread from its read.
    let how = if ok { Shutdown::Write } else { Shutdown::Both };
    if let Err(e) = socket.shutdown(how) {
        // The connection is already gone; the main thread sees that on its side and reports it.
        log::debug!("shutdown({how:?}): {e}");
    }
}

fn copy_stdin(socket: &mut TcpStream) -> Result<u64, PumpError> {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    loop {
        let n = match retrying(|| stdin.read(&mut buf)) {
            Ok(0) => return Ok(sent),
            Ok(n) => n,
            Err(e) => return Err(PumpError::Stdin(e)),
        };
        socket.write_all(&buf[..n]).map_err(PumpError::Socket)?;
        sent += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A blocking echo server for one connection that upper-cases in small pieces, as slowly as
    /// the kernel lets it: the reply comes back split, not as one read.
    fn echo_server() -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut buf = [0u8; 1000];
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf[..n].make_ascii_uppercase();
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        (addr, handle)
    }

    fn session(addr: &str, timeout: Duration) -> Session<'_> {
        let stream = TcpStream::connect(addr).unwrap();
        // Not SIGINT: the test process keeps its own Ctrl-C.
        let signals = Signals::new([signal_hook::consts::SIGUSR2]).unwrap();
        let mut s = Session::new(addr, stream, signals, timeout).unwrap();
        s.start_reader(Messenger::stderr(), None).unwrap();
        s
    }

    fn reply(e: Exchange) -> Vec<u8> {
        match e {
            Exchange::Reply(r, _) => r,
            other => panic!("no reply: {other:?}"),
        }
    }

    /// A line far larger than the socket buffers on both sides: written and read together, it
    /// cannot deadlock, and exactly its length comes back.
    #[test]
    fn exchange_of_a_huge_line_reads_back_exactly_its_length() {
        let (addr, server) = echo_server();
        let mut s = session(&addr, Duration::from_secs(60));
        let line: Vec<u8> = (0..8_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let got = reply(s.exchange(&line).unwrap());
        assert_eq!(got.len(), line.len());
        assert!(got == line.to_ascii_uppercase());
        // Back to back, replies stay apart: the next one is exactly the next line's.
        assert_eq!(reply(s.exchange(b"next").unwrap()), b"NEXT");
        drop(s);
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_closes_at_once_is_reported_as_maybe_at_its_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || drop(listener.accept().unwrap()));
        let mut s = session(&addr, Duration::from_secs(20));
        server.join().unwrap();
        let Err(Failure::Error(msg)) = s.exchange(b"hello") else {
            panic!("a closed connection was not reported");
        };
        assert!(
            msg.contains("closed the connection right after accepting it"),
            "{msg}"
        );
    }

    #[test]
    fn a_close_after_replies_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 2];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(b"OK").unwrap();
            conn.read_exact(&mut buf).unwrap();
            // Half the reply, then gone.
            conn.write_all(b"A").unwrap();
        });
        let mut s = session(&addr, Duration::from_secs(20));
        assert_eq!(reply(s.exchange(b"ok").unwrap()), b"OK");
        let Err(Failure::Error(msg)) = s.exchange(b"ab") else {
            panic!("a closed connection was not reported");
        };
        server.join().unwrap();
        assert_eq!(
            msg,
            format!("{addr} closed the connection after 1 of 2 reply bytes")
        );
    }

    #[test]
    fn owed_bytes_go_to_the_oldest_line_and_a_timed_out_line_gets_a_late_reply() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut owed = Owed::new();
        let first = owed.send(b"first", t0);
        owed.time_out(first);
        let second = owed.send(b"two", t0 + ms(1000));
        // One segment carrying the end of the late reply and the start of the next.
        assert_eq!(owed.feed(b"FIR", t0 + ms(1500)), []);
        assert_eq!(
            owed.feed(b"STT", t0 + ms(1700)),
            [Arrival::Late {
                line: b"first".to_vec(),
                reply: b"FIRST".to_vec(),
                rtt: ms(1700)
            }]
        );
        assert_eq!(owed.progress(second), Some((1, 3)));
        assert_eq!(
            owed.feed(b"WOextra", t0 + ms(1800)),
            [
                Arrival::Reply {
                    id: second,
                    reply: b"TWO".to_vec(),
                    rtt: ms(800)
                },
                Arrival::Unasked(b"extra".to_vec())
            ]
        );
        assert_eq!(owed.progress(second), None);
    }
}

//! The interactive session both clients run: the prompt loop, the reader thread, and what the two
//! threads share. What differs per protocol comes in through two traits: [`Sending`] (how the main
//! thread sends a line, and until when it waits for the answer) and [`Matching`] (how the reader
//! thread receives, and which line what it received answers). TCP and UDP implement them in
//! [`super::tcp`] and [`super::udp`]; nothing else here knows the protocol.
//!
//! - **The main thread** prompts ([`Console`]), sends each line and waits for its answer until
//!   the timeout on a small mio poll of its own: the protocol's socket (if it waits for it), the
//!   SIGINT pipe (Ctrl-C while waiting ends the session as cleanly as at the prompt), and a waker
//!   the reader thread uses when it has news.
//! - **The reader thread** owns the receiving side all session long: it drains the socket on
//!   every edge, stamps what arrives with its arrival time and lets the protocol's bookkeeping say
//!   what that completes ([`Arrival`]). While a line is in flight the main thread takes the
//!   arrivals; while the user sits at the prompt the reader reports them itself, above the prompt
//!   ([`Messenger`]), so a late reply is shown (and timed) the moment it comes; and when the
//!   session ends it ends the prompt too ([`PromptWaker`]).
//!
//! Both threads share one [`Handoff`] behind a mutex. Every field is updated in one step, so a
//! thread that panicked while holding the lock left it as consistent as any other moment, and the
//! lock is taken back rather than poisoning the session.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::SIGINT;
use signal_hook_mio::v1_0::Signals;

use super::console::{Console, Input, Messenger, PromptWaker};
pub(crate) use super::display::Arrival;
use super::display::{describe, secs};
use super::{Failure, Id, InteractiveOptions};
use crate::addr::DEFAULT_ADDR;
use crate::io_outcome;

/// The tokens of both polls: the protocol's socket, the SIGINT pipe (the main thread's only) and
/// the waker the other thread wakes this one with.
const SOCKET: Token = Token(0);
const SIGNAL: Token = Token(1);
const WAKE: Token = Token(2);

/// How long a broken send waits for the reader thread's account of the end (see
/// [`SendError::Broken`]): it normally sees the same end within moments.
const ACCOUNT_WAIT: Duration = Duration::from_millis(500);

/// A failure to set up part of the session (a socket, a poll, the signal handler).
pub(crate) fn setup_error(what: &str, e: &dyn fmt::Display) -> Failure {
    Failure::Error(format!("cannot set up the {what}: {e}"))
}

/// What one receive on the reader thread's socket came to.
#[derive(Debug)]
pub(crate) enum Recv {
    /// `n` bytes are in the buffer: a piece of the stream, or one whole datagram.
    Data(usize),
    /// Nothing more now (`WouldBlock`): poll again.
    Drained,
    /// News that is not data (UDP's refusal).
    Notice(Arrival),
    /// The session is over.
    Ended(Ended),
}

/// How the receiving side ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The server closed the connection (TCP's orderly end).
    Closed,
    /// Receiving failed.
    Failed(io::Error),
}

/// The end of the session, as the reader thread found it, and when.
#[derive(Debug)]
pub(crate) struct End {
    pub how: Ended,
    pub at: Instant,
}

/// One protocol's bookkeeping of the lines sent, shared by both threads: how the reader thread
/// receives, what that completes, and the words for how the session ended. Pure but for `recv`.
pub(crate) trait Matching: Send + 'static {
    /// The reader thread's handle on the socket.
    type Socket: Source + Send + 'static;

    /// Receives once, without blocking, into `buf`.
    fn recv(socket: &mut Self::Socket, buf: &mut [u8]) -> Recv;

    /// What `data`, received at `now`, completes.
    fn feed(&mut self, data: &[u8], now: Instant) -> Vec<Arrival>;

    /// The main thread took `arrival` while waiting for line `in_flight`, and it is not that
    /// line's answer: what it means for the line (UDP: a refusal means no answer is coming).
    fn passed_over(&mut self, _arrival: &Arrival, _in_flight: Id) {}

    /// The one line that says how the session ended; `in_flight` is the line waited for, if any.
    fn ended(&self, addr: &str, end: &End, in_flight: Option<Id>) -> Failure;
}

/// One protocol's sending side, on the main thread.
pub(crate) trait Sending {
    /// Names the prompt (`tcp> `) and the reader thread.
    const NAME: &'static str;
    /// What follows "no reply within 1 s" when a line is given up on.
    const NO_REPLY: &'static str;

    /// The bookkeeping of the lines sent, which the reader thread shares.
    type Book: Matching;

    /// Registers the main thread's socket with its poll, if sending waits for it.
    fn register(&mut self, _registry: &Registry, _token: Token) -> io::Result<()> {
        Ok(())
    }

    /// A second handle on the socket, for the reader thread.
    fn receiving_half(&self) -> io::Result<<Self::Book as Matching>::Socket>;

    /// The reader thread's buffer: room for any one receive (a datagram is never cut short).
    fn recv_buffer(&self) -> usize;

    /// Starts sending `line`, recording it in `book` first, before its answer can come. The
    /// line's id, or `None` when there is nothing to wait for (and the user has been told why).
    fn send(&mut self, book: &mut Self::Book, line: &[u8]) -> Result<Option<Id>, Failure>;

    /// Sends on as much of the line in flight as the socket takes now (TCP writes a line larger
    /// than the socket buffers while the server reads it).
    fn push(&mut self, _line: &[u8]) -> Result<(), SendError> {
        Ok(())
    }

    /// With every reply received so far handled: whether line `id` is still waited for, and
    /// until when.
    fn deadline(
        &mut self,
        book: &mut Self::Book,
        id: Id,
        line: &[u8],
        now: Instant,
    ) -> Result<Wait, Failure>;
}

/// Whether to go on waiting for the line in flight.
#[derive(Debug)]
pub(crate) enum Wait {
    /// Until then (`None`: until something happens).
    Until(Option<Instant>),
    /// Its timeout passed: it is given up on, and a reply that comes later is late.
    TimedOut,
    /// No reply is coming, and the user has been told why (UDP: the server refused it).
    Settled,
}

/// Why a line could not be sent on.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Said in full.
    Failed(Failure),
    /// The connection broke under the send. The reader thread normally sees the same end within
    /// moments and knows more (a close or a reset, how much of the reply came), so its account is
    /// awaited briefly; this is the line to use if none comes.
    Broken(Failure),
}

/// How one exchange ended, when the session goes on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exchange {
    Reply(Vec<u8>, Duration),
    /// No reply within the timeout (said so); one that comes later is shown as late.
    TimedOut,
    /// No reply is coming: not sent, or refused (said so).
    Unanswered,
    /// Ctrl-C while waiting.
    Interrupted,
}

/// What the reader thread hands the main thread, and the state both look at.
#[derive(Debug)]
struct Handoff<M> {
    /// A line is in flight and the main thread takes the arrivals; otherwise the user is at the
    /// prompt and the reader thread reports them itself.
    busy: bool,
    book: M,
    arrivals: VecDeque<Arrival>,
    /// Set once, by the reader thread.
    ended: Option<End>,
    /// Set when the session is dropped, so the reader thread stops.
    quit: bool,
}

fn lock<M>(shared: &Mutex<Handoff<M>>) -> MutexGuard<'_, Handoff<M>> {
    // See the module docs: a panic elsewhere left nothing half-done.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn ended_error<M: Matching>(
    addr: &str,
    shared: &Handoff<M>,
    in_flight: Option<Id>,
) -> Option<Failure> {
    let end = shared.ended.as_ref()?;
    Some(shared.book.ended(addr, end, in_flight))
}

/// Runs an interactive session to `addr` over `sender`, keeping `book`: the prompt, after
/// `banner` has said what it is connected to.
pub(crate) fn interactive<S: Sending>(
    addr: &str,
    options: &InteractiveOptions,
    banner: &str,
    sender: S,
    book: S::Book,
) -> Result<(), Failure> {
    let prompt = if addr == DEFAULT_ADDR {
        format!("{}> ", S::NAME)
    } else {
        format!("{} {addr}> ", S::NAME)
    };
    // Before the reader thread starts: it may raise SIGINT to wake the prompt, and SIGINT must
    // find a handler then, not its default action.
    let signals = Signals::new([SIGINT]).map_err(|e| setup_error("signal handler", &e))?;
    let mut console = Console::new(prompt, options.history.clone())?;
    let mut session = Session::new(addr, options.timeout, sender, book, signals)?;
    session.start_reader(console.messenger(), Some(console.prompt_waker()))?;
    eprintln!("{banner}");
    session.run(&mut console)
}

/// The main thread's side of the session, and the state it shares with the reader thread.
pub(crate) struct Session<S: Sending> {
    addr: String,
    timeout: Duration,
    sender: S,
    poll: Poll,
    events: Events,
    signals: Signals,
    shared: Arc<Mutex<Handoff<S::Book>>>,
    /// Wakes this thread's poll when the reader thread has news for it.
    waker: Arc<Waker>,
    /// Wakes the reader thread's poll when the session is dropped.
    reader_waker: Option<Arc<Waker>>,
}

impl<S: Sending> Session<S> {
    /// Takes over `sender`; `signals` ends a wait when SIGINT is among them.
    pub(crate) fn new(
        addr: &str,
        timeout: Duration,
        mut sender: S,
        book: S::Book,
        mut signals: Signals,
    ) -> Result<Self, Failure> {
        let poll = Poll::new().map_err(|e| setup_error("poll", &e))?;
        let registry = poll.registry();
        sender
            .register(registry, SOCKET)
            .map_err(|e| setup_error("poll", &e))?;
        registry
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(|e| setup_error("poll", &e))?;
        let waker = Arc::new(Waker::new(registry, WAKE).map_err(|e| setup_error("poll", &e))?);
        Ok(Session {
            addr: addr.to_string(),
            timeout,
            sender,
            poll,
            events: Events::with_capacity(8),
            signals,
            shared: Arc::new(Mutex::new(Handoff {
                busy: true,
                book,
                arrivals: VecDeque::new(),
                ended: None,
                quit: false,
            })),
            waker,
            reader_waker: None,
        })
    }

    /// Starts the thread that receives everything the server sends; `prompt` is woken when the
    /// session ends while the user is at the prompt.
    pub(crate) fn start_reader(
        &mut self,
        messenger: Messenger,
        prompt: Option<PromptWaker>,
    ) -> Result<(), Failure> {
        let mut socket = self
            .sender
            .receiving_half()
            .map_err(|e| setup_error("socket", &e))?;
        let poll = Poll::new().map_err(|e| setup_error("poll", &e))?;
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)
            .map_err(|e| setup_error("poll", &e))?;
        let reader_waker =
            Arc::new(Waker::new(poll.registry(), WAKE).map_err(|e| setup_error("poll", &e))?);
        let reader = Reader {
            addr: self.addr.clone(),
            socket,
            poll,
            buf_len: self.sender.recv_buffer(),
            shared: Arc::clone(&self.shared),
            main: Arc::clone(&self.waker),
            _own_waker: Arc::clone(&reader_waker),
            prompt,
            messenger,
        };
        thread::Builder::new()
            .name(format!("{}-reader", S::NAME))
            .spawn(move || reader.run())
            .map_err(|e| Failure::Error(format!("cannot start the reader thread: {e}")))?;
        self.reader_waker = Some(reader_waker);
        Ok(())
    }

    /// The prompt loop: each line typed (or pasted) is one exchange, until the user or the
    /// server ends the session.
    fn run(&mut self, console: &mut Console) -> Result<(), Failure> {
        loop {
            self.at_prompt()?;
            let input = console.read()?;
            self.busy()?;
            let lines = match input {
                Input::Lines(lines) => lines,
                Input::End => return Ok(()),
                // `busy` has reported why, unless the news was already old.
                Input::Woken => continue,
            };
            for line in lines {
                match self.exchange(line.as_bytes())? {
                    Exchange::Reply(reply, rtt) => console.reply(&reply, rtt)?,
                    Exchange::TimedOut | Exchange::Unanswered => {}
                    // Ctrl-C while waiting: leave as cleanly as from the prompt.
                    Exchange::Interrupted => return Ok(()),
                }
            }
        }
    }

    /// Reports the arrivals the main thread has not yet, then hands reporting over to the
    /// reader thread while the user types. Fails if the session is over.
    fn at_prompt(&mut self) -> Result<(), Failure> {
        let mut shared = lock(&self.shared);
        for a in shared.arrivals.drain(..) {
            eprintln!("{}", describe(&self.addr, &a));
        }
        if let Some(f) = ended_error(&self.addr, &shared, None) {
            return Err(f);
        }
        shared.busy = false;
        Ok(())
    }

    /// Takes the arrivals back for the lines about to be sent. Fails if the session ended while
    /// the user was at the prompt.
    fn busy(&mut self) -> Result<(), Failure> {
        let mut shared = lock(&self.shared);
        shared.busy = true;
        ended_error(&self.addr, &shared, None).map_or(Ok(()), Err)
    }

    /// Sends `line` and waits for its answer until the protocol gives up on it. Whatever else
    /// arrives on the way (replies to earlier lines or to none) is reported.
    pub(crate) fn exchange(&mut self, line: &[u8]) -> Result<Exchange, Failure> {
        let Some(id) = self.sender.send(&mut lock(&self.shared).book, line)? else {
            return Ok(Exchange::Unanswered);
        };
        loop {
            match self.sender.push(line) {
                Ok(()) => {}
                Err(SendError::Failed(f)) => return Err(f),
                Err(SendError::Broken(fallback)) => return Err(self.account_or(id, fallback)),
            }
            let wait = {
                let mut shared = lock(&self.shared);
                while let Some(a) = shared.arrivals.pop_front() {
                    match a {
                        Arrival::Answer {
                            id: got,
                            reply,
                            rtt,
                        } if got == id => return Ok(Exchange::Reply(reply, rtt)),
                        other => {
                            shared.book.passed_over(&other, id);
                            eprintln!("{}", describe(&self.addr, &other));
                        }
                    }
                }
                if let Some(f) = ended_error(&self.addr, &shared, Some(id)) {
                    return Err(f);
                }
                // In the same hold of the lock: a reply the reader thread is about to hand over
                // must not be missed between looking for it and giving up on it.
                self.sender
                    .deadline(&mut shared.book, id, line, Instant::now())?
            };
            let until = match wait {
                Wait::Until(until) => until,
                Wait::TimedOut => {
                    eprintln!("no reply within {}{}", secs(self.timeout), S::NO_REPLY);
                    return Ok(Exchange::TimedOut);
                }
                Wait::Settled => return Ok(Exchange::Unanswered),
            };
            if self.wait(until)? {
                eprintln!();
                return Ok(Exchange::Interrupted);
            }
        }
    }

    /// Waits until `until`, news from the reader thread, the socket, or a signal; returns whether
    /// it was SIGINT.
    fn wait(&mut self, until: Option<Instant>) -> Result<bool, Failure> {
        let timeout = until.map(|t| t.saturating_duration_since(Instant::now()));
        io_outcome::poll(&mut self.poll, &mut self.events, timeout)
            .map_err(|e| Failure::Error(format!("poll failed: {e}")))?;
        let signalled = self.events.iter().any(|ev| ev.token() == SIGNAL);
        Ok(signalled && self.signals.pending().any(|s| s == SIGINT))
    }

    /// The reader thread's account of how the session ended, awaited briefly; `fallback` if none
    /// comes.
    fn account_or(&mut self, in_flight: Id, fallback: Failure) -> Failure {
        let until = Instant::now() + ACCOUNT_WAIT;
        loop {
            if let Some(f) = ended_error(&self.addr, &lock(&self.shared), Some(in_flight)) {
                return f;
            }
            let now = Instant::now();
            if now >= until
                || io_outcome::poll(&mut self.poll, &mut self.events, Some(until - now)).is_err()
            {
                return fallback;
            }
        }
    }
}

impl<S: Sending> Drop for Session<S> {
    fn drop(&mut self) {
        lock(&self.shared).quit = true;
        if let Some(w) = &self.reader_waker {
            let _ = w.wake();
        }
    }
}

/// The session's receiving side, on a thread of its own.
struct Reader<M: Matching> {
    addr: String,
    socket: M::Socket,
    poll: Poll,
    buf_len: usize,
    shared: Arc<Mutex<Handoff<M>>>,
    main: Arc<Waker>,
    /// The waker the session uses to say "quit". Held here too: if the session dropped the last
    /// reference, its eventfd would close and leave this thread's poll, and a wake sent just
    /// before would be lost with it (the reader then waited for the socket to end by itself).
    _own_waker: Arc<Waker>,
    prompt: Option<PromptWaker>,
    messenger: Messenger,
}

impl<M: Matching> Reader<M> {
    fn run(mut self) {
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0u8; self.buf_len];
        loop {
            // Edge-triggered: receive until WouldBlock before polling again.
            loop {
                match M::recv(&mut self.socket, &mut buf) {
                    Recv::Data(n) => {
                        let now = Instant::now();
                        let mut shared = lock(&self.shared);
                        let arrivals = shared.book.feed(&buf[..n], now);
                        self.hand_over(shared, arrivals);
                    }
                    Recv::Notice(a) => self.hand_over(lock(&self.shared), vec![a]),
                    Recv::Drained => break,
                    Recv::Ended(how) => return self.end(how),
                }
            }
            if let Err(e) = io_outcome::poll(&mut self.poll, &mut events, None) {
                return self.end(Ended::Failed(e));
            }
            if lock(&self.shared).quit {
                return;
            }
        }
    }

    /// Queues `arrivals` for the main thread while a line is in flight; reports them above the
    /// prompt otherwise.
    fn hand_over(&self, mut shared: MutexGuard<'_, Handoff<M>>, arrivals: Vec<Arrival>) {
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
                self.messenger.say(describe(&self.addr, a));
            }
        }
    }

    fn end(self, how: Ended) {
        let news = {
            let mut shared = lock(&self.shared);
            shared.ended = Some(End {
                how,
                at: Instant::now(),
            });
            if shared.busy || shared.quit {
                None
            } else {
                ended_error(&self.addr, &shared, None)
            }
        };
        self.wake_main();
        // At the prompt: end it, so the user learns at once. On a terminal rustyline cannot
        // drive, the prompt may not notice; then say why, and the next Enter ends the session.
        if let Some(news) = news
            && let Some(prompt) = &self.prompt
            && !prompt.wake()
        {
            let why = match news {
                Failure::Error(why) => why,
                Failure::Reported => format!("{} ended the session", self.addr),
            };
            self.messenger.say(format!("{why}; press Enter"));
        }
    }

    fn wake_main(&self) {
        if let Err(e) = self.main.wake() {
            log::warn!("cannot wake the main thread: {e}");
        }
    }
}

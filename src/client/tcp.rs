//! `upecho tcp`: the TCP client.
//!
//! - **Interactive** ([`interactive`]): a rustyline prompt. Each line goes out as its UTF-8 bytes
//!   (no newline, as in the tutorial) and exactly as many bytes are read back, because the server's
//!   transform keeps the length: that is what solves the tutorial's "sticky packet" problem, since
//!   a reply can no longer be cut short or glued to the next. Sending and receiving run together in
//!   a small mio loop, so a pasted line larger than the socket buffers cannot deadlock, and Ctrl-C
//!   while waiting ends the session as cleanly as Ctrl-C at the prompt.
//! - **Pipe** ([`pipe`]): like `nc -N`. A thread copies stdin to the socket and half-closes it at
//!   end of input, while the main thread copies the socket to stdout until the server closes. Two
//!   blocking threads rather than one poll loop, because stdin may be a regular file, which epoll
//!   refuses.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use mio::{Events, Interest, Poll, Token};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use signal_hook::consts::SIGINT;
use signal_hook_mio::v1_0::Signals;

use super::display::{printable, rtt};
use super::target::{connect_tcp, reason};
use super::{DEFAULT_ADDR, Failure};

/// Copy buffer for both directions of pipe mode: large enough that a bulk transfer costs few
/// system calls, small enough to pass replies on as soon as they arrive.
const CHUNK: usize = 64 * 1024;

const SOCKET: Token = Token(0);
const SIGNAL: Token = Token(1);

/// How a connection failed, in words that name the server.
fn connection_error(addr: &str, e: &io::Error) -> Failure {
    Failure::Error(match e.kind() {
        io::ErrorKind::ConnectionReset => format!("{addr} reset the connection"),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            format!("{addr} closed the connection")
        }
        _ => format!("connection to {addr} failed: {}", reason(e)),
    })
}

fn setup_error(what: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::Error(format!("cannot set up the {what}: {e}"))
}

fn stdout_error(e: &io::Error) -> Failure {
    Failure::Error(format!("cannot write to stdout: {}", reason(e)))
}

/// The interactive session: prompt, send a line, print its reply and round-trip time, repeat.
pub fn interactive(addr: &str) -> Result<(), Failure> {
    let stream = connect_tcp(addr)?;
    // Each line is one small write awaiting its reply: Nagle's algorithm could only delay it.
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    let signals = Signals::new([SIGINT]).map_err(|e| setup_error("signal handler", &e))?;
    let mut session = Session::new(addr, stream, signals)?;
    let mut editor = DefaultEditor::new().map_err(|e| setup_error("line editor", &e))?;

    eprintln!("connected to {peer}; type a line, Ctrl-D or Ctrl-C to quit");
    let prompt = if addr == DEFAULT_ADDR {
        "tcp> ".to_string()
    } else {
        format!("tcp {addr}> ")
    };
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => return Ok(()),
            Err(e) => return Err(Failure::Error(format!("cannot read the terminal: {e}"))),
        };
        // An empty line sends nothing: there would be nothing to wait for (the tutorial's client
        // hangs here forever).
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        session.check_idle()?;
        let started = Instant::now();
        match session.exchange(line.as_bytes())? {
            Some(reply) => println!("{}  ({})", printable(&reply), rtt(started.elapsed())),
            // Ctrl-C while waiting: leave as cleanly as from the prompt.
            None => return Ok(()),
        }
    }
}

/// The interactive client's connection and the poll that drives it.
struct Session<'a> {
    addr: &'a str,
    stream: mio::net::TcpStream,
    poll: Poll,
    events: Events,
    signals: Signals,
}

impl<'a> Session<'a> {
    /// Takes over a connected stream; `signals` ends a wait when SIGINT is among them.
    fn new(addr: &'a str, stream: TcpStream, mut signals: Signals) -> Result<Self, Failure> {
        stream
            .set_nonblocking(true)
            .map_err(|e| setup_error("socket", &e))?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let poll = Poll::new().map_err(|e| setup_error("poll", &e))?;
        let registry = poll.registry();
        registry
            .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| setup_error("poll", &e))?;
        registry
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(|e| setup_error("poll", &e))?;
        Ok(Session {
            addr,
            stream,
            poll,
            events: Events::with_capacity(8),
            signals,
        })
    }

    /// Reads whatever the server sent while the user was typing. Normally nothing; but a server
    /// that has closed is found here, before a line is sent into the void, and bytes nobody asked
    /// for are reported and dropped, so they cannot shift every later reply.
    fn check_idle(&mut self) -> Result<(), Failure> {
        let mut buf = [0u8; CHUNK];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(Failure::Error(format!(
                        "{} closed the connection",
                        self.addr
                    )));
                }
                Ok(n) => eprintln!(
                    "{} sent {n} bytes nobody asked for: {}",
                    self.addr,
                    printable(&buf[..n])
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(connection_error(self.addr, &e)),
            }
        }
    }

    /// Sends `data` and reads back exactly `data.len()` bytes, writing and reading together.
    /// `Ok(None)` means the user pressed Ctrl-C while waiting.
    fn exchange(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        let mut written = 0;
        let mut reply = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; CHUNK.min(data.len())];
        loop {
            // The socket is edge-triggered: both directions run until WouldBlock before polling.
            while written < data.len() {
                match self.stream.write(&data[written..]) {
                    Ok(0) => {
                        return Err(Failure::Error(format!("{} stopped taking data", self.addr)));
                    }
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(connection_error(self.addr, &e)),
                }
            }
            while reply.len() < data.len() {
                // Never read past this reply: whatever follows is not its answer.
                let want = buf.len().min(data.len() - reply.len());
                match self.stream.read(&mut buf[..want]) {
                    Ok(0) => {
                        let partial = if reply.is_empty() {
                            String::new()
                        } else {
                            format!(" after {} of {} reply bytes", reply.len(), data.len())
                        };
                        return Err(Failure::Error(format!(
                            "{} closed the connection{partial}",
                            self.addr
                        )));
                    }
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(connection_error(self.addr, &e)),
                }
            }
            // The server cannot echo what it has not received, so a full reply means a full send.
            if reply.len() == data.len() {
                return Ok(Some(reply));
            }
            match self.poll.poll(&mut self.events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Error(format!("poll failed: {e}"))),
            }
            let signalled = self.events.iter().any(|ev| ev.token() == SIGNAL);
            if signalled && self.signals.pending().any(|s| s == SIGINT) {
                eprintln!();
                return Ok(None);
            }
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
pub fn pipe(addr: &str) -> Result<(), Failure> {
    let mut stream = connect_tcp(addr)?;
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
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                // Flushed chunk by chunk: replies are passed on as they arrive, not at exit.
                out.write_all(&buf[..n])
                    .and_then(|()| out.flush())
                    .map_err(|e| stdout_error(&e))?;
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(sent),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
    use std::time::Duration;

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

    fn session(addr: &str) -> Session<'_> {
        let stream = TcpStream::connect(addr).unwrap();
        // Not SIGINT: the test process keeps its own Ctrl-C.
        let signals = Signals::new([signal_hook::consts::SIGUSR2]).unwrap();
        Session::new(addr, stream, signals).unwrap()
    }

    /// A line far larger than the socket buffers on both sides: written and read together, it
    /// cannot deadlock, and exactly its length comes back.
    #[test]
    fn exchange_of_a_huge_line_reads_back_exactly_its_length() {
        let (addr, server) = echo_server();
        let mut s = session(&addr);
        let line: Vec<u8> = (0..8_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let reply = s.exchange(&line).unwrap().unwrap();
        assert_eq!(reply.len(), line.len());
        assert!(reply == line.to_ascii_uppercase());
        // Back to back, replies stay apart: the next one is exactly the next line's.
        assert_eq!(s.exchange(b"next").unwrap().unwrap(), b"NEXT");
        s.check_idle().unwrap();
        drop(s);
        server.join().unwrap();
    }

    #[test]
    fn a_closed_connection_is_reported_by_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || drop(listener.accept().unwrap()));
        let mut s = session(&addr);
        server.join().unwrap();
        let Err(Failure::Error(msg)) = s.exchange(b"hello") else {
            panic!("a closed connection was not reported");
        };
        assert_eq!(msg, format!("{addr} closed the connection"));
    }
}

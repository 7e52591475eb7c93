//! `upecho tcp`: the TCP client.
//!
//! - **Interactive** ([`interactive`]): the shared session (`client::session`) over a stream.
//!   Each line goes out as its UTF-8 bytes (no newline, as in the tutorial) and exactly as many
//!   bytes are read back, because the server's transform keeps the length: that is what solves
//!   the tutorial's "sticky packet" problem, since a reply can no longer be cut short or glued to
//!   the next (`owed`). The main thread writes a line with the session's poll, so a pasted line
//!   larger than the socket buffers cannot deadlock against the reader thread.
//! - **Pipe** ([`pipe`]): like `nc -N`, full duplex with a half-close at the end of input.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use super::display::secs;
use super::session::{self, End, Ended, Matching, Recv, SendError, Sending, Wait};
use super::target::{Target, connect_tcp};
use super::{Failure, Id, InteractiveOptions};
use crate::addr::reason;
use crate::io_outcome::{Class, classify, is_would_block, retrying};

mod owed;
mod pipe;

use owed::Owed;
pub use pipe::pipe;

/// Read buffer of the interactive reader thread and of both directions of pipe mode: large
/// enough that a bulk transfer costs few system calls, small enough to pass replies on as soon as
/// they arrive.
const CHUNK: usize = 64 * 1024;

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

/// The interactive session: prompt, send each line, print its reply and round-trip time, repeat.
pub fn interactive(target: &Target, options: &InteractiveOptions) -> Result<(), Failure> {
    let addr = target.to_string();
    let stream = connect_tcp(target)?;
    let opened = Instant::now();
    // Each line is one small write awaiting its reply: Nagle's algorithm could only delay it.
    let _ = stream.set_nodelay(true);
    let connected_to = stream
        .peer_addr()
        .map_or_else(|_| addr.clone(), |a| a.to_string());
    let banner = format!(
        "connected to {connected_to}; type a line, Ctrl-D or Ctrl-C (on an empty line) to quit"
    );
    let sender = TcpSender::new(&addr, stream, options.timeout)?;
    session::interactive(&addr, options, &banner, sender, Owed::new(opened))
}

impl Matching for Owed {
    type Socket = mio::net::TcpStream;

    fn recv(socket: &mut Self::Socket, buf: &mut [u8]) -> Recv {
        match retrying(|| socket.read(buf)) {
            Ok(0) => Recv::Ended(Ended::Closed),
            Ok(n) => Recv::Data(n),
            Err(e) if is_would_block(&e) => Recv::Drained,
            Err(e) if classify(&e) == Class::PeerClosed => Recv::Ended(Ended::Closed),
            Err(e) => Recv::Ended(Ended::Failed(e)),
        }
    }

    fn feed(&mut self, data: &[u8], now: Instant) -> Vec<session::Arrival> {
        Owed::feed(self, data, now)
    }

    fn ended(&self, addr: &str, end: &End, in_flight: Option<Id>) -> Failure {
        let refused = self.received() == 0
            && end.at.saturating_duration_since(self.opened()) < REFUSAL_WINDOW;
        if refused {
            return Failure::Error(format!(
                "the server at {addr} closed the connection right after accepting it \
                 (it may be at its connection limit)"
            ));
        }
        match &end.how {
            Ended::Closed => {
                let partial = match in_flight.and_then(|id| self.progress(id)) {
                    Some((got, want)) if got > 0 => format!(" after {got} of {want} reply bytes"),
                    _ => String::new(),
                };
                Failure::Error(format!("{addr} closed the connection{partial}"))
            }
            Ended::Failed(e) => connection_error(addr, e),
        }
    }
}

/// The main thread's writing half of the connection, and how far the line in flight has got.
struct TcpSender {
    addr: String,
    timeout: Duration,
    stream: mio::net::TcpStream,
    /// Bytes of the line in flight the socket has taken.
    written: usize,
    /// When the line in flight is given up on.
    deadline: Instant,
}

impl TcpSender {
    fn new(addr: &str, stream: TcpStream, timeout: Duration) -> Result<TcpSender, Failure> {
        stream
            .set_nonblocking(true)
            .map_err(|e| session::setup_error("socket", &e))?;
        Ok(TcpSender {
            addr: addr.to_string(),
            timeout,
            stream: mio::net::TcpStream::from_std(stream),
            written: 0,
            deadline: Instant::now(),
        })
    }
}

impl Sending for TcpSender {
    const NAME: &'static str = "tcp";
    const NO_REPLY: &'static str =
        "; still connected, and a reply that comes later is shown as late";

    type Book = Owed;

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.stream, token, Interest::WRITABLE)
    }

    fn receiving_half(&self) -> io::Result<mio::net::TcpStream> {
        // A second descriptor for the same socket: it shares the non-blocking flag.
        let fd: OwnedFd = self.stream.as_fd().try_clone_to_owned()?;
        Ok(mio::net::TcpStream::from_std(TcpStream::from(fd)))
    }

    fn recv_buffer(&self) -> usize {
        CHUNK
    }

    fn send(&mut self, owed: &mut Owed, line: &[u8]) -> Result<Option<Id>, Failure> {
        // An empty line sends nothing: there would be nothing to wait for (the tutorial's client
        // hangs here forever).
        if line.is_empty() {
            return Ok(None);
        }
        // The clock starts before the first byte is handed to the kernel, and the line is
        // registered before it can be answered.
        let started = Instant::now();
        self.written = 0;
        self.deadline = started + self.timeout;
        Ok(Some(owed.send(line, started)))
    }

    fn push(&mut self, line: &[u8]) -> Result<(), SendError> {
        // The socket is edge-triggered: write until WouldBlock before the session polls.
        while self.written < line.len() {
            match retrying(|| self.stream.write(&line[self.written..])) {
                Ok(n) if n > 0 => self.written += n,
                Ok(_) => return Err(self.stopped_taking_data()),
                Err(e) if is_would_block(&e) => break,
                Err(e) if classify(&e) == Class::PeerClosed => {
                    return Err(self.stopped_taking_data());
                }
                Err(e) => return Err(SendError::Broken(connection_error(&self.addr, &e))),
            }
        }
        Ok(())
    }

    fn deadline(
        &mut self,
        owed: &mut Owed,
        id: Id,
        line: &[u8],
        now: Instant,
    ) -> Result<Wait, Failure> {
        if now < self.deadline {
            return Ok(Wait::Until(Some(self.deadline)));
        }
        if self.written < line.len() {
            return Err(Failure::Error(format!(
                "{} took only {} of {} bytes within {}: it is not reading",
                self.addr,
                self.written,
                line.len(),
                secs(self.timeout)
            )));
        }
        owed.time_out(id);
        Ok(Wait::TimedOut)
    }
}

impl TcpSender {
    fn stopped_taking_data(&self) -> SendError {
        SendError::Failed(Failure::Error(format!("{} stopped taking data", self.addr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::console::Messenger;
    use crate::client::session::{Exchange, Session};
    use signal_hook_mio::v1_0::Signals;
    use std::net::TcpListener;
    use std::thread;

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

    fn session(addr: &str, timeout: Duration) -> Session<TcpSender> {
        let stream = TcpStream::connect(addr).unwrap();
        // Not SIGINT: the test process keeps its own Ctrl-C.
        let signals = Signals::new([signal_hook::consts::SIGUSR2]).unwrap();
        let sender = TcpSender::new(addr, stream, timeout).unwrap();
        let mut s =
            Session::new(addr, timeout, sender, Owed::new(Instant::now()), signals).unwrap();
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
    fn an_empty_line_is_not_sent_and_not_waited_for() {
        let (addr, server) = echo_server();
        let mut s = session(&addr, Duration::from_secs(60));
        assert_eq!(s.exchange(b"").unwrap(), Exchange::Unanswered);
        assert_eq!(reply(s.exchange(b"after").unwrap()), b"AFTER");
        drop(s);
        server.join().unwrap();
    }

    #[test]
    fn a_missing_reply_times_out_and_comes_later_as_late() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap();
            // Only once the client has given up on the line.
            go_rx.recv().unwrap();
            conn.write_all(b"SLOW").unwrap();
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(b"NEXT").unwrap();
        });
        // Long enough for the second line's reply on a loaded machine; the first one waits it out.
        let mut s = session(&addr, Duration::from_secs(3));
        assert_eq!(s.exchange(b"slow").unwrap(), Exchange::TimedOut);
        go_tx.send(()).unwrap();
        // The late reply is passed over (and reported); the next line gets its own.
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
}

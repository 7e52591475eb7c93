//! `upecho tcp` in a pipe, like `nc -N`: a thread copies stdin to the socket and half-closes it at
//! the end of input, while the main thread copies the socket to stdout until the server closes.
//! Two blocking threads rather than one poll loop, because stdin may be a regular file, which
//! epoll refuses.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;

use super::{CHUNK, connection_error};
use crate::addr::reason;
use crate::client::Failure;
use crate::client::target::{Target, connect_tcp};
use crate::io_outcome::retrying;

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
                    .map_err(|e| Failure::stdout(&e))?;
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

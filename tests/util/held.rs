//! Held and owed clients for the upgrade tests: idle connections checked by a round trip, and
//! clients owed megabytes of output that they read only after the upgrade, every byte compared.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{ServerProc, WAIT, connect, random_bytes, read_n, roundtrip, upper};

/// Raises the open-file soft limit to the hard one: the tests hold over a thousand sockets.
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Idle connections, each checked with a round trip while the others stay open.
pub fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = connect(addr);
            let msg = format!("held {i}");
            assert_eq!(roundtrip(&mut c, msg.as_bytes()), upper(msg.as_bytes()));
            c
        })
        .collect()
}

/// Every held connection answers a round trip.
pub fn all_answer(held: &mut [TcpStream], what: &str) {
    for (i, c) in held.iter_mut().enumerate() {
        let msg = format!("{what} {i}");
        assert_eq!(
            roundtrip(c, msg.as_bytes()),
            upper(msg.as_bytes()),
            "held connection {i}, {what}"
        );
    }
}

/// A client that is sending `data` (from its own thread, so that what neither the server
/// nor the kernel can hold waits in the writer) and reads nothing yet: the server owes it
/// what it has taken in. Its receive buffer is small, so most of what is owed stays in the
/// server, not in the client's kernel buffer.
pub struct Owed {
    pub stream: TcpStream,
    pub data: Vec<u8>,
    pub writer: thread::JoinHandle<TcpStream>,
}

/// A client connection with a small receive buffer.
pub fn slow_reader(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect_timeout(&addr.into(), WAIT).unwrap();
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT * 3)).unwrap();
    stream
}

pub fn owed(addr: SocketAddr, n: usize, size: usize, seed: u64) -> Vec<Owed> {
    (0..n)
        .map(|i| {
            let stream = slow_reader(addr);
            let data = random_bytes(size, seed + i as u64);
            let mut w = stream.try_clone().unwrap();
            let d = data.clone();
            let writer = thread::spawn(move || {
                w.write_all(&d).unwrap();
                w
            });
            Owed {
                stream,
                data,
                writer,
            }
        })
        .collect()
}

/// Each owed client reads everything it is owed (once, in order), its writer finished.
pub fn collect(clients: Vec<Owed>) -> Vec<TcpStream> {
    clients
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            let got = read_n(&mut o.stream, o.data.len());
            assert!(got == upper(&o.data), "owed client {i}: bytes differ");
            o.writer.join().unwrap();
            o.stream
        })
        .collect()
}

/// Waits (bounded) until `needle` is in the log `n` times.
pub fn logged_times(s: &ServerProc, needle: &str, n: usize) -> bool {
    let deadline = Instant::now() + WAIT * 2;
    while Instant::now() < deadline {
        if s.stderr().matches(needle).count() >= n {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits (bounded) until `needle` is in the log, looking every millisecond: for a test that
/// must act in the short moment after a line (a hand-over that lasts tens of milliseconds).
pub fn logged_now(s: &ServerProc, needle: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if s.stderr().contains(needle) {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Each of `conns` is closed by the server: its next read ends (EOF or a reset) within [`WAIT`]
/// without a byte; `what` names them in the failure.
pub fn all_closed(conns: &mut [TcpStream], what: &str) {
    for (i, c) in conns.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        match c.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what} {i}: not closed by the server: {other:?}"),
        }
    }
}

pub fn total_line(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("final counters: total:"))
        .unwrap_or_else(|| panic!("no total line in\n{log}"))
        .to_string()
}

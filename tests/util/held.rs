//! Held and owed clients for the upgrade tests: idle connections checked by a round trip, and
//! clients owed megabytes of output that they read only after the upgrade, every byte compared;
//! and the binary on disk that an upgrade runs, in a directory of the test's own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{ServerProc, WAIT, bin, connect, random_bytes, read_n, roundtrip, upper};

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
            // A write error is no panic here: a test that kills a worker expects some of these
            // connections to close; [`collect`] compares every byte, which only a writer that
            // finished can have been echoed.
            let writer = thread::spawn(move || {
                let _ = w.write_all(&d);
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

/// Clients that send `size` bytes each and half-close at once, reading nothing yet: the
/// server owes each all of it, then its close.
pub fn half_closed(
    addr: SocketAddr,
    n: usize,
    size: usize,
    seed: u64,
) -> Vec<(TcpStream, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut c = slow_reader(addr);
            let data = random_bytes(size, seed + i as u64);
            // All of it fits in what the server reads (--max-pending) and the kernel buffers.
            c.write_all(&data).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            (c, data)
        })
        .collect()
}

/// Each half-closed client reads all it is owed (once, in order), then the server's close.
pub fn collect_half_closed(clients: &mut [(TcpStream, Vec<u8>)]) {
    for (i, (c, data)) in clients.iter_mut().enumerate() {
        let got = read_n(c, data.len());
        assert!(got == upper(data), "half-closed client {i}: bytes differ");
        assert_eq!(
            std::io::Read::read(c, &mut [0u8; 1]).unwrap(),
            0,
            "half-closed client {i}: the server closes once all is sent"
        );
    }
}

/// What a connection whose worker may have been killed did: answered a round trip correctly, or
/// was closed (EOF or reset) before any byte of an answer. A wrong or partial answer, or none
/// within [`WAIT`], panics.
pub fn answers_or_closed(c: &mut TcpStream, msg: &[u8], what: &str) -> bool {
    // A write to a connection the server closed may fail (reset) or succeed (its FIN came
    // first); either way the read says what happened.
    let _ = c.write_all(msg);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < msg.len() {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{what}: neither answered nor closed: {e}"),
        }
    }
    if got.is_empty() {
        return false;
    }
    assert!(got == upper(msg), "{what}: a wrong answer {got:?}");
    true
}

/// Reads an owed client's output until the server closes it or all has come, and checks that
/// what came is a prefix of what it is owed (no wrong byte, none twice); whether all came.
pub fn owed_prefix(mut o: Owed, what: &str) -> bool {
    let want = upper(&o.data);
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while got < want.len() {
        match o.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(
                    got + n <= want.len() && buf[..n] == want[got..got + n],
                    "{what}: wrong bytes at offset {got}"
                );
                got += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{what}: neither served nor closed after {got} bytes: {e}"),
        }
    }
    // The writer ends either way: done, or failed on the closed connection.
    let _ = o.stream.shutdown(std::net::Shutdown::Both);
    let _ = o.writer.join();
    got == want.len()
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

/// Writes `path` from a child process: a copy of the upecho binary, or `text`. (See
/// [`Exe::copy`] for why not from this process.)
pub fn write_by_child(path: &std::path::Path, text: Option<&str>) {
    let status = match text {
        None => std::process::Command::new("cp")
            .arg(bin())
            .arg(path)
            .status(),
        Some(text) => std::process::Command::new("sh")
            .arg("-c")
            .arg("printf '%s' \"$1\" > \"$2\"")
            .arg("sh")
            .arg(text)
            .arg(path)
            .status(),
    }
    .unwrap();
    assert!(status.success(), "writing {}: {status}", path.display());
}

/// The binary on disk, in a directory of the test's own, that the server's reloads run.
pub struct Exe {
    pub dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl Exe {
    pub fn copy() -> Exe {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upecho");
        // Written by a child process, not by this one: a file this process holds open for
        // writing is inherited by whatever another test thread forks meanwhile, and exec of a
        // file open for writing anywhere fails (ETXTBSY), which made a start fail now and then.
        write_by_child(&path, None);
        Exe { dir, path }
    }

    /// Replaces the binary with a shell script.
    pub fn script(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.dir.path().join("next");
        write_by_child(&tmp, Some(&format!("#!/bin/sh\n{body}\n")));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// `upecho serve --listen 127.0.0.1:0 --workers 2 --drain-timeout 30 EXTRA...` from the copy.
    pub fn start(&self, extra: &[&str]) -> ServerProc {
        let mut args = vec!["--workers", "2"];
        args.extend_from_slice(extra);
        self.start_single(&args)
    }

    /// `upecho serve --listen 127.0.0.1:0 --drain-timeout 30 EXTRA...` from the copy.
    pub fn start_single(&self, extra: &[&str]) -> ServerProc {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "30"];
        args.extend_from_slice(extra);
        ServerProc::start_raw(
            &args,
            // start_raw runs `sh -c 'PREFIX; exec "$0" "$@"'`: the prefix execs the copy.
            Some(&format!("exec {} \"$@\"", self.path.to_str().unwrap())),
        )
    }
}

//! `upecho tcp` and `upecho udp` as a user runs them: the real binary against the real server on
//! loopback (or, where a test needs a misbehaving server, a small scripted one here), in pipe mode
//! through stdin/stdout, and in interactive mode through a pseudo-terminal.
//!
//! Every wait is bounded: a client that hangs is killed and the test fails with its stderr.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rexpect::process::WaitStatus;
use rexpect::reader::Options;
use rexpect::session::{PtySession, spawn_with_options};
use util::{ServerProc, WAIT, bin, random_bytes, upper, wait_until, wait_until_within};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What to give the client on stdin.
enum Stdin {
    /// These bytes, then end of input.
    Bytes(Vec<u8>),
    /// Nothing, and no end of input either, until the client has exited.
    HeldOpen,
}

/// A finished client run.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "the client panicked:\n{}",
            self.stderr
        );
    }
}

/// Kills the child if the test fails before it has been waited for.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Runs `upecho ARGS...` with piped stdio: stdin is fed from a thread while stdout and stderr are
/// drained by others, so the client is never blocked by the test. Fails the test if the client
/// does not exit within `within`.
fn run_client(args: &[&str], stdin: Stdin, within: Duration) -> Run {
    let started = Instant::now();
    let child = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn upecho");
    let mut child = Reaper(child);
    let mut pipe_in = child.0.stdin.take().unwrap();
    let out = collect(child.0.stdout.take().unwrap());
    let err = collect(child.0.stderr.take().unwrap());
    let mut held = None;
    let feeder = match stdin {
        Stdin::Bytes(bytes) => Some(thread::spawn(move || {
            // A client that exits early closes the pipe; that is for the assertions to judge.
            let _ = pipe_in.write_all(&bytes);
        })),
        Stdin::HeldOpen => {
            held = Some(pipe_in);
            None
        }
    };
    let mut status = None;
    let left = (started + within).saturating_duration_since(Instant::now());
    if !wait_until_within(left, || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.0.kill();
        let _ = child.0.wait();
        let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        panic!("upecho {args:?} did not exit within {within:?}; stderr:\n{stderr}");
    }
    let status = status.unwrap();
    let elapsed = started.elapsed();
    drop(held);
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
        elapsed,
    }
}

fn tcp_pipe(server: &ServerProc, input: &[u8]) -> Run {
    let addr = server.tcp().to_string();
    run_client(&["tcp", &addr], Stdin::Bytes(input.to_vec()), WAIT)
}

/// A TCP port on loopback where nothing listens, guaranteed: the socket is bound (so no one else
/// can have the port) but never listens, so connecting is refused.
fn refusing_tcp_port() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

/// A scripted TCP server for one connection, run on a thread.
fn one_shot_tcp(script: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.set_write_timeout(Some(WAIT)).unwrap();
        script(conn);
    });
    (addr, handle)
}

/// A UDP socket the test controls, standing in for a server.
fn fake_udp_server() -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let addr = s.local_addr().unwrap().to_string();
    (s, addr)
}

fn recv_from(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf).expect("the client sent nothing");
    (buf[..n].to_vec(), from)
}

/// A client on a pseudo-terminal, with a state directory of its own (for the history file) that
/// is removed when the test ends: no test reads or writes the real home.
struct Pty {
    session: PtySession,
    state: tempfile::TempDir,
}

impl std::ops::Deref for Pty {
    type Target = PtySession;
    fn deref(&self) -> &PtySession {
        &self.session
    }
}

impl std::ops::DerefMut for Pty {
    fn deref_mut(&mut self) -> &mut PtySession {
        &mut self.session
    }
}

impl Pty {
    fn history_file(&self) -> std::path::PathBuf {
        self.state.path().join("upecho").join("history")
    }
}

/// Starts `upecho ARGS...` on a pseudo-terminal, as a person would at a shell.
fn spawn_pty(args: &[&str]) -> Pty {
    spawn_pty_in(args, tempfile::tempdir().expect("a state directory"), None)
}

/// Like [`spawn_pty`], with a given state directory, and optionally stdout redirected to a file
/// (as in `upecho tcp > FILE`, with stdin and the terminal still the pty).
fn spawn_pty_in(args: &[&str], state: tempfile::TempDir, stdout: Option<&std::path::Path>) -> Pty {
    let mut cmd = match stdout {
        None => {
            let mut c = Command::new(bin());
            c.args(args);
            c
        }
        Some(path) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("out=$1; shift; exec \"$0\" \"$@\" > \"$out\"")
                .arg(bin())
                .arg(path)
                .args(args);
            c
        }
    };
    // rustyline falls back to plain line reading on a "dumb" or unknown terminal; a person's
    // terminal is not that.
    cmd.env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .env("XDG_STATE_HOME", state.path())
        .env("HOME", state.path());
    let wait_ms = WAIT.as_millis() as u64;
    let session = spawn_with_options(
        cmd,
        Options::new()
            .timeout_ms(Some(wait_ms))
            .strip_ansi_escape_codes(true),
    )
    .expect("spawn upecho on a pty");
    Pty { session, state }
}

/// Waits (bounded) for the pty child to exit and returns its exit code.
fn pty_exit_code(p: &mut PtySession) -> i32 {
    let mut code = None;
    assert!(
        wait_until(|| match p.process().status() {
            Some(WaitStatus::Exited(_, c)) => {
                code = Some(c);
                true
            }
            Some(WaitStatus::StillAlive) | None => false,
            Some(other) => panic!("client ended abnormally: {other:?}"),
        }),
        "the client did not exit"
    );
    code.unwrap()
}

/// Expects `needle` in the pty output, failing with what was seen instead.
fn expect(p: &mut PtySession, needle: &str) -> String {
    p.exp_string(needle)
        .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// TCP, pipe mode
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_pipe_prints_the_upper_cased_input() {
    let server = ServerProc::start(&[]);
    let run = tcp_pipe(&server, b"abc");
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, b"ABC");
    assert_eq!(run.stderr, "", "only reply bytes and nothing else");
}

#[test]
fn tcp_pipe_round_trips_lines_of_text_exactly() {
    let server = ServerProc::start(&[]);
    let input = "hello, world\nsecond line\n\nÉté à Paris: ascii only\nno newline at the end";
    let run = tcp_pipe(&server, input.as_bytes());
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, upper(input.as_bytes()));
}

#[test]
fn tcp_pipe_round_trips_5_mb_of_random_binary_data() {
    let server = ServerProc::start(&[]);
    let input = random_bytes(5 * 1024 * 1024, 0x5eed);
    let run = tcp_pipe(&server, &input);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout.len(), input.len());
    assert!(run.stdout == upper(&input), "reply bytes differ");
}

#[test]
fn tcp_pipe_with_plain_echo_returns_the_input_unchanged() {
    let server = ServerProc::start(&["--transform", "none"]);
    let input = random_bytes(300_000, 7);
    let run = tcp_pipe(&server, &input);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout == input);
}

/// 40 MB is far more than every buffer on the way together (two pipes, two sockets' send and
/// receive buffers, the server's pending bytes): a client that wrote all its input before reading
/// would stall with everything full. Streaming both ways at once, it finishes.
#[test]
fn tcp_pipe_streams_input_larger_than_all_buffers_without_deadlock() {
    let server = ServerProc::start(&[]);
    let input = random_bytes(40 << 20, 42);
    let run = tcp_pipe(&server, &input);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout == upper(&input), "reply bytes differ");
}

#[test]
fn tcp_pipe_with_empty_input_exits_0_with_no_output() {
    let server = ServerProc::start(&[]);
    let run = tcp_pipe(&server, b"");
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty());
}

/// The client must half-close at end of input and keep reading: this server answers only after
/// it has seen end of input, and only then closes.
#[test]
fn tcp_pipe_half_closes_at_end_of_input_and_reads_until_the_server_closes() {
    let (addr, server) = one_shot_tcp(|mut conn| {
        let mut all = Vec::new();
        conn.read_to_end(&mut all).unwrap();
        conn.write_all(&upper(&all)).unwrap();
        conn.write_all(b"|after your EOF").unwrap();
    });
    let run = run_client(
        &["tcp", &addr.to_string()],
        Stdin::Bytes(b"half close".to_vec()),
        WAIT,
    );
    server.join().unwrap();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout_str(), "HALF CLOSE|after your EOF");
}

#[test]
fn tcp_pipe_reports_a_server_that_closes_before_the_end_of_input() {
    let (addr, server) = one_shot_tcp(|mut conn| {
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&upper(&buf)).unwrap();
        // Gone, while the client's stdin is still open.
    });
    let started = Instant::now();
    let child = Command::new(bin())
        .args(["tcp", &addr.to_string()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    // Five bytes, and then stdin stays open: the client must notice the close by itself.
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"hello").unwrap();
    let out = collect(child.0.stdout.take().unwrap());
    let err = collect(child.0.stderr.take().unwrap());
    let mut status = None;
    let left = (started + WAIT).saturating_duration_since(Instant::now());
    assert!(
        wait_until_within(left, || {
            status = child.0.try_wait().unwrap();
            status.is_some()
        }),
        "the client did not exit"
    );
    let status = status.unwrap();
    drop(stdin);
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        out.join().unwrap(),
        b"HELLO",
        "replies received before the close are kept"
    );
    assert!(
        stderr.contains("closed the connection before the end of input"),
        "{stderr}"
    );
}

#[test]
fn tcp_pipe_reports_a_reset_in_one_line() {
    let (addr, server) = one_shot_tcp(|mut conn| {
        // Reading first makes sure the client is past connect(): a reset that raced it would be
        // reported as a failed connection instead.
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).unwrap();
        // SO_LINGER with a zero timeout turns close into a reset.
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let run = run_client(
        &["tcp", &addr.to_string()],
        Stdin::Bytes(b"x".to_vec()),
        WAIT,
    );
    server.join().unwrap();
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    run.assert_no_panic();
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("reset the connection"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Errors and exit codes
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_connection_refused_is_one_line_naming_the_address_exit_1() {
    let (_guard, addr) = refusing_tcp_port();
    let run = run_client(&["tcp", &addr.to_string()], Stdin::HeldOpen, WAIT);
    assert_eq!(run.code, Some(1));
    run.assert_no_panic();
    assert_eq!(
        run.stderr,
        format!("upecho tcp: cannot connect to {addr}: Connection refused\n")
    );
    assert!(run.stdout.is_empty());
}

/// A malformed address is caught with the command line, as for `serve` and `load`: clap's usage
/// error, whose one error line names the address, says what is wrong and shows one that works.
#[test]
fn malformed_addresses_are_usage_errors_naming_the_address_with_an_example_exit_2() {
    for proto in ["tcp", "udp"] {
        for (addr, why) in [
            ("127.0.0.1", "expected HOST:PORT"),
            ("127.0.0.1:99999", "port must be a number"),
            ("localhost:0", "port 0"),
            ("::1:8005", "brackets"),
        ] {
            let run = run_client(&[proto, addr], Stdin::HeldOpen, WAIT);
            assert_eq!(run.code, Some(2), "{proto} {addr}: {}", run.stderr);
            run.assert_no_panic();
            assert!(run.stdout.is_empty());
            let errors: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect();
            let [line] = errors[..] else {
                panic!("not one error line: {}", run.stderr);
            };
            assert!(
                line.starts_with(&format!("error: invalid value '{addr}' for '[ADDR]': ")),
                "{line}"
            );
            assert!(line.contains(why), "{line}");
            assert!(line.contains("e.g. 127.0.0.1:8005") || line.contains("e.g. [::1]:8005"));
        }
    }
}

/// glibc rejects a host name that starts with '-' before asking any DNS server, so this fails to
/// resolve without sending anything off the machine.
#[test]
fn an_unresolvable_name_is_one_line_exit_1() {
    for proto in ["tcp", "udp"] {
        let run = run_client(
            &[proto, "--", "-nosuch.invalid:8005"],
            Stdin::HeldOpen,
            WAIT,
        );
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        run.assert_no_panic();
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.starts_with(&format!(
                "upecho {proto}: cannot resolve -nosuch.invalid:8005: "
            )),
            "{}",
            run.stderr
        );
    }
}

/// `upecho tcp localhost:PORT`: the name is resolved and each address tried, so it works whichever
/// of `::1` and `127.0.0.1` comes first.
#[test]
fn a_name_is_resolved_and_connected() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = format!("localhost:{}", server.tcp().port());
    let run = run_client(&["tcp", &addr], Stdin::Bytes(b"by name".to_vec()), WAIT);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, b"BY NAME");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["tcp", "127.0.0.1:1", "extra"][..],
        &["udp", "--timeout", "abc"],
        &["udp", "--timeout", "0"],
        &["udp", "--timeout", "-1"],
        &["tcp", "--no-such-option"],
        &["tcp", "--timeout", "0"],
        &["tcp", "--timeout", "soon"],
        &["completions", "no-such-shell"],
    ] {
        let run = run_client(args, Stdin::HeldOpen, WAIT);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        run.assert_no_panic();
        assert!(run.stderr.contains("error:"), "{}", run.stderr);
    }
}

#[test]
fn a_timeout_out_of_bounds_is_a_usage_error_that_names_the_bounds() {
    for (proto, timeout) in [("tcp", "0"), ("udp", "3601"), ("udp", "2h"), ("tcp", "0ms")] {
        let run = run_client(&[proto, "--timeout", timeout], Stdin::HeldOpen, WAIT);
        assert_eq!(run.code, Some(2), "{proto} {timeout}: {}", run.stderr);
        assert!(
            run.stderr.contains("more than 0 and at most 3600 s"),
            "{}",
            run.stderr
        );
    }
}

/// `--timeout` reads durations as every subcommand does: bare seconds, or with a unit.
#[test]
fn a_timeout_with_a_unit_is_accepted() {
    let (_silent, addr) = fake_udp_server();
    let run = run_client(
        &["udp", &addr, "--timeout", "300ms"],
        Stdin::Bytes(b"anyone?\n".to_vec()),
        WAIT,
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("1 of 1 datagrams got no reply within 0.3 s"),
        "{}",
        run.stderr
    );
    let server = ServerProc::start(&["--tcp-only"]);
    let run = run_client(
        &["tcp", &server.tcp().to_string(), "--timeout", "500ms"],
        Stdin::Bytes(b"units".to_vec()),
        WAIT,
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, b"UNITS");
}

// ---------------------------------------------------------------------------------------------
// UDP, pipe mode
// ---------------------------------------------------------------------------------------------

#[test]
fn udp_pipe_sends_one_datagram_per_line_and_prints_replies_in_order() {
    let server = ServerProc::start(&["--udp-only"]);
    let input = "hello\n\nworld, again\nlast line without newline";
    let run = run_client(
        &["udp", &server.udp().to_string()],
        Stdin::Bytes(input.as_bytes().to_vec()),
        WAIT,
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout_str(),
        "HELLO\n\nWORLD, AGAIN\nLAST LINE WITHOUT NEWLINE\n"
    );
    // The server saw one datagram per line, the empty one included.
    assert_eq!(run.stdout_str().lines().count(), 4);
}

/// Many more lines than the window: the client paces itself, nothing is lost on loopback, and
/// the replies come out in input order.
#[test]
fn udp_pipe_paces_a_long_input_and_loses_nothing() {
    let server = ServerProc::start(&["--udp-only"]);
    let input: String = (0..20_000).map(|i| format!("line {i} of many\n")).collect();
    let run = run_client(
        &["udp", &server.udp().to_string(), "--timeout", "5"],
        Stdin::Bytes(input.clone().into_bytes()),
        WAIT,
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout == upper(input.as_bytes()), "replies differ");
}

#[test]
fn udp_pipe_carries_large_datagrams_whole() {
    let server = ServerProc::start(&["--udp-only"]);
    let big = "x".repeat(60_000);
    let input = format!("{big}\nsmall\n{big}\n");
    let run = run_client(
        &["udp", &server.udp().to_string(), "--timeout", "5"],
        Stdin::Bytes(input.clone().into_bytes()),
        WAIT,
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout == upper(input.as_bytes()), "replies differ");
}

/// 65,520 bytes and 70,000 bytes are both over an IPv4 datagram's 65,507: both are reported and
/// counted, and the lines around them still go through.
#[test]
fn udp_pipe_reports_lines_too_long_for_a_datagram() {
    let server = ServerProc::start(&["--udp-only"]);
    let input = format!("ok\n{}\nfine\n{}\n", "a".repeat(65_520), "b".repeat(70_000));
    let run = run_client(
        &["udp", &server.udp().to_string()],
        Stdin::Bytes(input.into_bytes()),
        WAIT,
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert_eq!(run.stdout_str(), "OK\nFINE\n");
    assert!(
        run.stderr
            .contains("line 2: 65520 bytes is too long for one UDP datagram"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("line 4: 70000 bytes is too long for one UDP datagram"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2 of 4 datagrams"), "{}", run.stderr);
}

/// The limit is the real one for the address family: over IPv4 a line of 65,507 bytes goes out as
/// one datagram and comes back whole, one byte more is reported against 65,507 and never sent.
#[test]
fn udp_pipe_sends_the_largest_ipv4_datagram_and_reports_one_byte_more_against_the_limit() {
    let server = ServerProc::start(&["--udp-only"]);
    let largest = "a".repeat(65_507);
    let input = format!("{largest}\n{}\nend\n", "b".repeat(65_508));
    let run = run_client(
        &["udp", &server.udp().to_string(), "--timeout", "5"],
        Stdin::Bytes(input.into_bytes()),
        WAIT,
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stdout == format!("{}\nEND\n", largest.to_uppercase()).into_bytes(),
        "the largest datagram did not come back whole"
    );
    assert!(
        run.stderr.contains(
            "line 2: 65508 bytes is too long for one UDP datagram (at most 65507 over IPv4); \
             not sent"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("1 of 3 datagrams"), "{}", run.stderr);
}

/// Over IPv6 a datagram may be 20 bytes longer: 65,527 goes out whole, 65,528 does not.
#[test]
fn udp_pipe_over_ipv6_allows_65527_bytes() {
    let fake = UdpSocket::bind("[::1]:0").unwrap();
    fake.set_read_timeout(Some(WAIT)).unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        let (d, from) = recv_from(&fake);
        fake.send_to(&upper(&d), from).unwrap();
        d.len()
    });
    let input = format!("{}\n{}\n", "c".repeat(65_528), "d".repeat(65_527));
    let run = run_client(
        &["udp", &addr, "--timeout", "5"],
        Stdin::Bytes(input.into_bytes()),
        WAIT,
    );
    assert_eq!(server.join().unwrap(), 65_527);
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stdout == [&[b'D'; 65_527][..], b"\n"].concat());
    assert!(
        run.stderr.contains(
            "line 1: 65528 bytes is too long for one UDP datagram (at most 65527 over IPv6)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn udp_pipe_against_a_silent_port_reports_the_loss_and_exits_1() {
    // Bound, so nothing else can answer and no ICMP error comes back; never read.
    let (_silent, addr) = fake_udp_server();
    let run = run_client(
        &["udp", &addr, "--timeout", "0.3"],
        Stdin::Bytes(b"one\ntwo\nthree\n".to_vec()),
        WAIT,
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("3 of 3 datagrams got no reply within 0.3 s"),
        "{}",
        run.stderr
    );
    // All three were in flight together, so it took about one timeout, not three.
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}

#[test]
fn udp_pipe_against_a_closed_port_fails_with_exit_1() {
    // A socket connected elsewhere keeps the port from every other test, yet takes no datagram
    // from the client, so to the client the port is closed and the kernel answers with ICMP.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    closed.connect("127.0.0.1:9").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    let run = run_client(
        &["udp", &addr, "--timeout", "0.5"],
        Stdin::Bytes(b"anyone?\n".to_vec()),
        WAIT,
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    run.assert_no_panic();
    // Normally the kernel's ICMP "port unreachable" says so at once; if it were rate-limited away
    // the datagram would simply time out.
    assert!(
        run.stderr.contains("refused") || run.stderr.contains("no reply"),
        "{}",
        run.stderr
    );
}

#[test]
fn udp_pipe_prints_replies_in_line_order_whatever_order_they_arrive_in() {
    let (fake, addr) = fake_udp_server();
    let server = thread::spawn(move || {
        let mut got = Vec::new();
        let mut from = None;
        for _ in 0..3 {
            let (d, f) = recv_from(&fake);
            got.push(d);
            from = Some(f);
        }
        let from = from.unwrap();
        for d in got.iter().rev() {
            fake.send_to(&upper(d), from).unwrap();
        }
        // A second copy of one reply: the client must not print it as another line.
        fake.send_to(&upper(&got[1]), from).unwrap();
        got
    });
    let run = run_client(
        &["udp", &addr, "--timeout", "5"],
        Stdin::Bytes(b"first\nsecond\nthird\n".to_vec()),
        WAIT,
    );
    let got = server.join().unwrap();
    assert_eq!(got, [&b"first"[..], b"second", b"third"]);
    assert_eq!(run.stdout_str(), "FIRST\nSECOND\nTHIRD\n");
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
}

#[test]
fn udp_pipe_counts_an_unanswered_line_as_lost() {
    let (fake, addr) = fake_udp_server();
    let server = thread::spawn(move || {
        for _ in 0..3 {
            let (d, from) = recv_from(&fake);
            if d != b"drop me" {
                fake.send_to(&upper(&d), from).unwrap();
            }
        }
    });
    let run = run_client(
        &["udp", &addr, "--timeout", "0.5"],
        Stdin::Bytes(b"keep\ndrop me\nkeep too\n".to_vec()),
        WAIT,
    );
    server.join().unwrap();
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert_eq!(run.stdout_str(), "KEEP\nKEEP TOO\n");
    assert!(
        run.stderr
            .contains("1 of 3 datagrams got no reply within 0.5 s (first: line 2)"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Interactive mode, through a pseudo-terminal
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_interactive_shows_each_reply_and_exits_0_on_ctrl_d() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let mut p = spawn_pty(&["tcp", &addr]);
    let prompt = format!("tcp {addr}> ");
    expect(&mut p, &prompt);
    p.send_line("hello, world").unwrap();
    expect(&mut p, "HELLO, WORLD  (");
    expect(&mut p, " ms)");
    expect(&mut p, &prompt);
    // An empty line sends nothing and does not hang: the prompt comes back.
    p.send_line("").unwrap();
    expect(&mut p, &prompt);
    p.send_line("again").unwrap();
    expect(&mut p, "AGAIN  (");
    expect(&mut p, &prompt);
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

/// Lines typed (or pasted) faster than the replies come back are kept, not dropped with the rest
/// of the terminal read that carried the first one, and each gets its own reply.
#[test]
fn tcp_interactive_keeps_lines_typed_ahead() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let mut p = spawn_pty(&["tcp", &addr]);
    expect(&mut p, &format!("tcp {addr}> "));
    p.send("one\ntwo\n\nthree\n").unwrap();
    p.flush().unwrap();
    expect(&mut p, "ONE  (");
    expect(&mut p, "TWO  (");
    expect(&mut p, "THREE  (");
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

#[test]
fn tcp_interactive_exits_0_on_ctrl_c_at_the_prompt() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let mut p = spawn_pty(&["tcp", &addr]);
    expect(&mut p, &format!("tcp {addr}> "));
    p.send_control('c').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

#[test]
fn tcp_interactive_exits_0_on_ctrl_c_while_waiting_for_a_reply() {
    let (got_line, line_seen) = std::sync::mpsc::channel::<()>();
    let (addr, server) = one_shot_tcp(move |mut conn| {
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        got_line.send(()).unwrap();
        // Never answers; returns when the client closes the connection.
        assert_eq!(conn.read(&mut buf).unwrap(), 0);
    });
    let mut p = spawn_pty(&["tcp", &addr.to_string()]);
    expect(&mut p, "> ");
    p.send_line("wait").unwrap();
    // The line has left the client, so the terminal is back in normal mode and Ctrl-C is a signal.
    line_seen
        .recv_timeout(WAIT)
        .expect("the line never arrived");
    p.send_control('c').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
    server.join().unwrap();
}

#[test]
fn tcp_interactive_notices_a_server_that_went_away_while_at_the_prompt_exit_1() {
    let mut server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let mut p = spawn_pty(&["tcp", &addr]);
    let prompt = format!("tcp {addr}> ");
    expect(&mut p, &prompt);
    p.send_line("alive").unwrap();
    expect(&mut p, "ALIVE");
    expect(&mut p, &prompt);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // Nothing typed: the client notices by itself, says so and ends.
    expect(&mut p, &format!("upecho tcp: {addr} closed the connection"));
    assert_eq!(pty_exit_code(&mut p), 1);
}

#[test]
fn tcp_interactive_connection_refused_exit_1() {
    let (_guard, addr) = refusing_tcp_port();
    let mut p = spawn_pty(&["tcp", &addr.to_string()]);
    expect(
        &mut p,
        &format!("cannot connect to {addr}: Connection refused"),
    );
    assert_eq!(pty_exit_code(&mut p), 1);
}

#[test]
fn udp_interactive_shows_each_reply_and_exits_0_on_ctrl_d() {
    let server = ServerProc::start(&["--udp-only"]);
    let addr = server.udp().to_string();
    let mut p = spawn_pty(&["udp", &addr]);
    let prompt = format!("udp {addr}> ");
    expect(&mut p, &prompt);
    p.send_line("hello, udp").unwrap();
    expect(&mut p, "HELLO, UDP  (");
    expect(&mut p, " ms)");
    expect(&mut p, &prompt);
    // An empty line is an empty datagram, and gets an empty reply.
    p.send_line("").unwrap();
    expect(&mut p, "(empty)  (");
    expect(&mut p, &prompt);
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

/// The tutorial's client shows whatever arrives next as the answer to the line just typed. Here a
/// reply that comes after its timeout is named as late, and a duplicated one as a duplicate.
#[test]
fn udp_interactive_reports_timeouts_late_and_duplicate_replies() {
    let (fake, addr) = fake_udp_server();
    let mut p = spawn_pty(&["udp", &addr, "--timeout", "0.3"]);
    let prompt = format!("udp {addr}> ");
    expect(&mut p, &prompt);

    p.send_line("first").unwrap();
    let (d, client) = recv_from(&fake);
    assert_eq!(d, b"first");
    expect(&mut p, "no reply within 0.3 s: UDP does not retransmit");
    expect(&mut p, &prompt);
    // Now the answer to "first" arrives, too late: reported as it comes, before anything more is
    // typed (typed at once, a burst of keys would be drawn first: the terminal's input comes
    // before news).
    fake.send_to(b"FIRST", client).unwrap();
    expect(&mut p, "late reply to \"first\" after ");
    expect(&mut p, &prompt);

    p.send_line("second").unwrap();
    let (d, _) = recv_from(&fake);
    assert_eq!(d, b"second");
    fake.send_to(b"SECOND", client).unwrap();
    fake.send_to(b"SECOND", client).unwrap();
    expect(&mut p, "SECOND  (");

    p.send_line("third").unwrap();
    let (d, _) = recv_from(&fake);
    assert_eq!(d, b"third");
    fake.send_to(b"THIRD", client).unwrap();
    // The copy of "SECOND" is reported as soon as the client sees it: right after the answer, or
    // at the next line; either way before the answer to "third", and never as that answer.
    let between = expect(&mut p, "THIRD  (");
    assert!(
        between.contains("duplicate reply to \"second\": SECOND"),
        "{between:?}"
    );
    expect(&mut p, &prompt);

    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

#[test]
fn udp_interactive_exits_0_on_ctrl_c_while_waiting_for_a_reply() {
    let (fake, addr) = fake_udp_server();
    let mut p = spawn_pty(&["udp", &addr, "--timeout", "60"]);
    expect(&mut p, "> ");
    p.send_line("hello?").unwrap();
    // Received: the client is past its prompt and waiting, so Ctrl-C is a signal now.
    recv_from(&fake);
    p.send_control('c').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

/// `upecho tcp | tee out` at a terminal: the prompt, the editing and the terminal's control codes
/// stay on the terminal; stdout gets the replies, one per line, and nothing else.
#[test]
fn tcp_interactive_with_stdout_redirected_writes_only_replies_to_stdout() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let state = tempfile::tempdir().unwrap();
    let out = state.path().join("out");
    let mut p = spawn_pty_in(&["tcp", &addr], tempfile::tempdir().unwrap(), Some(&out));
    let prompt = format!("tcp {addr}> ");
    expect(&mut p, &prompt);
    p.send_line("hello").unwrap();
    expect(&mut p, &prompt);
    p.send_line("second line").unwrap();
    expect(&mut p, &prompt);
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
    let written = std::fs::read(&out).unwrap();
    assert_eq!(String::from_utf8_lossy(&written), "HELLO\nSECOND LINE\n");
}

#[test]
fn udp_interactive_with_stdout_redirected_writes_only_replies_to_stdout() {
    let server = ServerProc::start(&["--udp-only"]);
    let addr = server.udp().to_string();
    let state = tempfile::tempdir().unwrap();
    let out = state.path().join("out");
    let mut p = spawn_pty_in(&["udp", &addr], tempfile::tempdir().unwrap(), Some(&out));
    let prompt = format!("udp {addr}> ");
    expect(&mut p, &prompt);
    p.send_line("hello").unwrap();
    expect(&mut p, &prompt);
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
    assert_eq!(std::fs::read(&out).unwrap(), b"HELLO\n");
}

/// A server at `--max-connections` accepts and closes at once: the client says so, and why it
/// may be, without waiting for a line to be typed.
#[test]
fn tcp_interactive_explains_a_close_right_after_accepting() {
    let server = ServerProc::start(&["--tcp-only", "--max-connections", "1"]);
    let addr = server.tcp().to_string();
    let mut holder = server.connect();
    // The holder's connection is served, so the server is at its limit from now on.
    assert_eq!(util::roundtrip(&mut holder, b"mine"), b"MINE");
    let mut p = spawn_pty(&["tcp", &addr]);
    expect(
        &mut p,
        "closed the connection right after accepting it (it may be at its connection limit)",
    );
    assert_eq!(pty_exit_code(&mut p), 1);
}

/// The tutorial's client waits forever for a reply that never comes. This one says so after
/// `--timeout` and goes on; the reply, when it does come, is shown as late (not as the answer
/// to the next line), as soon as it comes.
#[test]
fn tcp_interactive_reports_a_missing_reply_after_the_timeout_and_goes_on() {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (addr, server) = one_shot_tcp(move |mut conn| {
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"slow");
        release_rx.recv_timeout(WAIT).unwrap();
        conn.write_all(b"SLOW").unwrap();
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&upper(&buf)).unwrap();
        assert_eq!(conn.read(&mut buf).unwrap(), 0);
    });
    // Long enough for the next line's reply on a loaded machine; the first never comes in time.
    let mut p = spawn_pty(&["tcp", &addr.to_string(), "--timeout", "2"]);
    let prompt = format!("tcp {addr}> ");
    expect(&mut p, &prompt);
    p.send_line("slow").unwrap();
    expect(&mut p, "no reply within 2 s");
    expect(&mut p, &prompt);
    release_tx.send(()).unwrap();
    // Nothing typed: reported at the prompt as it arrives.
    expect(&mut p, "late reply to \"slow\" after ");
    expect(&mut p, "SLOW");
    p.send_line("next").unwrap();
    expect(&mut p, "NEXT  (");
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
    server.join().unwrap();
}

/// Reads the duration out of "... after 0.734 s" or "... after 734.123 ms".
fn reported_duration(text: &str) -> Duration {
    let rest = &text[text.rfind("after ").expect("no duration") + 6..];
    let mut words = rest.split_whitespace();
    let n: f64 = words.next().unwrap().parse().unwrap();
    match words.next().unwrap().trim_end_matches(':') {
        "ms" => Duration::from_secs_f64(n / 1e3),
        "s" => Duration::from_secs_f64(n),
        unit => panic!("unit {unit:?}"),
    }
}

/// A late UDP reply is reported when it arrives, while the user sits at the prompt, with the
/// time it took to arrive: not when the next line is typed, and not with that moment's time.
#[test]
fn udp_interactive_reports_a_late_reply_as_it_arrives_with_its_arrival_time() {
    let (fake, addr) = fake_udp_server();
    let mut p = spawn_pty(&["udp", &addr, "--timeout", "0.3"]);
    let prompt = format!("udp {addr}> ");
    expect(&mut p, &prompt);
    let typed = Instant::now();
    p.send_line("first").unwrap();
    let (d, client) = recv_from(&fake);
    // The client sent the line before this moment, and after `typed`.
    let received = Instant::now();
    assert_eq!(d, b"first");
    expect(&mut p, "no reply within 0.3 s");
    expect(&mut p, &prompt);
    let before_answer = received.elapsed();
    fake.send_to(b"FIRST", client).unwrap();
    let seen = expect(&mut p, ": FIRST");
    let seen_at = typed.elapsed();
    // The clock started before the line was sent and stopped when the reply came: between the
    // two moments the test knows, whatever the scheduling in between.
    let t = reported_duration(&seen);
    assert!(
        t >= before_answer,
        "{t:?} reported, answered after {before_answer:?}: {seen:?}"
    );
    assert!(
        t <= seen_at,
        "{t:?} reported, seen after {seen_at:?}: {seen:?}"
    );
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

/// A bracketed paste of several lines is several messages, each with its own reply.
#[test]
fn tcp_interactive_sends_each_line_of_a_multi_line_paste_as_its_own_message() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let mut p = spawn_pty(&["tcp", &addr]);
    let prompt = format!("tcp {addr}> ");
    expect(&mut p, &prompt);
    p.send("\x1b[200~one\ntwo\r\nthree\x1b[201~").unwrap();
    p.send("\r").unwrap();
    p.flush().unwrap();
    expect(&mut p, "ONE  (");
    expect(&mut p, "TWO  (");
    expect(&mut p, "THREE  (");
    expect(&mut p, &prompt);
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

#[test]
fn udp_interactive_sends_each_line_of_a_multi_line_paste_as_its_own_datagram() {
    let server = ServerProc::start(&["--udp-only"]);
    let addr = server.udp().to_string();
    let mut p = spawn_pty(&["udp", &addr]);
    let prompt = format!("udp {addr}> ");
    expect(&mut p, &prompt);
    p.send("\x1b[200~one\ntwo\x1b[201~\r").unwrap();
    p.flush().unwrap();
    expect(&mut p, "ONE  (");
    expect(&mut p, "TWO  (");
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

/// As in a shell: Ctrl-C abandons a half-typed line and prompts again; on an empty line it ends
/// the session, exit 0.
#[test]
fn ctrl_c_on_a_half_typed_line_clears_it_and_the_session_goes_on() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let mut p = spawn_pty(&["tcp", &addr]);
    let prompt = format!("tcp {addr}> ");
    expect(&mut p, &prompt);
    p.send("half typed").unwrap();
    p.flush().unwrap();
    expect(&mut p, "half typed");
    p.send_control('c').unwrap();
    expect(&mut p, &prompt);
    p.send_line("fresh").unwrap();
    let reply = expect(&mut p, "  (");
    assert!(reply.ends_with("FRESH"), "{reply:?}");
    expect(&mut p, &prompt);
    p.send_control('c').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

/// Lines typed in one session are there (Up arrow) in the next, from the state directory.
#[test]
fn history_is_kept_across_sessions_under_the_state_directory() {
    let server = ServerProc::start(&["--tcp-only"]);
    let addr = server.tcp().to_string();
    let prompt = format!("tcp {addr}> ");
    let mut p = spawn_pty(&["tcp", &addr]);
    expect(&mut p, &prompt);
    p.send_line("remember me").unwrap();
    expect(&mut p, "REMEMBER ME  (");
    expect(&mut p, &prompt);
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
    let history = std::fs::read_to_string(p.history_file()).expect("a history file");
    assert!(history.contains("remember me"), "{history:?}");

    let Pty { session, state } = p;
    drop(session);
    let mut p = spawn_pty_in(&["tcp", &addr], state, None);
    expect(&mut p, &prompt);
    // Up arrow, then Enter: the line from the last session is sent again.
    p.send("\x1b[A").unwrap();
    p.send("\r").unwrap();
    p.flush().unwrap();
    expect(&mut p, "REMEMBER ME  (");
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
}

#[test]
fn no_history_writes_no_history_file() {
    let server = ServerProc::start(&["--udp-only"]);
    let addr = server.udp().to_string();
    let mut p = spawn_pty(&["udp", &addr, "--no-history"]);
    expect(&mut p, "> ");
    p.send_line("forget me").unwrap();
    expect(&mut p, "FORGET ME  (");
    p.send_control('d').unwrap();
    assert_eq!(pty_exit_code(&mut p), 0);
    assert!(!p.history_file().exists());
}

// ---------------------------------------------------------------------------------------------
// Getting it: help, completions, man page
// ---------------------------------------------------------------------------------------------

#[test]
fn help_of_upecho_serve_and_load_mentions_rust_log() {
    for args in [&["--help"][..], &["serve", "--help"], &["load", "--help"]] {
        let run = run_client(args, Stdin::HeldOpen, WAIT);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        assert!(
            run.stdout_str().contains("RUST_LOG"),
            "{args:?}: {}",
            run.stdout_str()
        );
    }
}

#[test]
fn bash_completions_name_every_subcommand() {
    let run = run_client(&["completions", "bash"], Stdin::HeldOpen, WAIT);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let script = run.stdout_str();
    assert!(script.contains("complete "), "not a bash completion script");
    for sub in ["serve", "tcp", "udp", "load", "completions", "man"] {
        assert!(script.contains(sub), "{sub} missing");
    }
    assert!(script.contains("--max-connections") && script.contains("--no-history"));
}

#[test]
fn man_prints_a_roff_page_covering_every_subcommand() {
    let run = run_client(&["man"], Stdin::HeldOpen, WAIT);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let page = run.stdout_str();
    assert!(page.contains(".TH upecho 1"), "no .TH title");
    for section in [
        "UPECHO SERVE",
        "UPECHO TCP",
        "UPECHO UDP",
        "UPECHO LOAD",
        "ENVIRONMENT",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    assert!(page.contains("RUST_LOG") && page.contains("\\-\\-timeout"));
}

//! `upecho serve` over real loopback sockets: every point of the protocol and the command line.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

fn raise_test_fd_limit() {
    upecho::net::raise_nofile_limit().unwrap();
}

/// Reads until EOF (bounded by the socket timeout).
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read_to_end");
    v
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
    }
}

fn udp_client() -> UdpSocket {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    u
}

fn udp_roundtrip(u: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    u.send_to(data, to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = u.recv_from(&mut buf).expect("udp reply");
    assert_eq!(from, to);
    buf.truncate(n);
    buf
}

#[test]
fn listening_lines_name_the_real_bound_addresses() {
    let s = ServerProc::start(&[]);
    let (t, u) = (s.tcp(), s.udp());
    assert_eq!(t.ip().to_string(), "127.0.0.1");
    assert_ne!(t.port(), 0);
    assert_eq!(t, u, "TCP and UDP share the address and port");
}

#[test]
fn tcp_upper_cases_exactly_ascii_letters_and_keeps_every_other_byte() {
    let s = ServerProc::start(&[]);
    let mut c = s.connect();
    let all: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    assert_eq!(roundtrip(&mut c, &all), upper(&all));
    assert_eq!(
        roundtrip(&mut c, "héllo, wörld\n".as_bytes()),
        "HéLLO, WöRLD\n".as_bytes()
    );
}

#[test]
fn many_tiny_writes_come_back_whole_and_in_order() {
    let s = ServerProc::start(&[]);
    let mut c = s.connect();
    c.set_nodelay(true).unwrap();
    let data = random_bytes(20_000, 1);
    for b in &data {
        c.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(read_n(&mut c, data.len()), upper(&data));
}

#[test]
fn twenty_megabytes_full_duplex() {
    let s = ServerProc::start(&[]);
    let c = s.connect();
    let data = random_bytes(20 << 20, 2);
    let expected = upper(&data);
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for chunk in data.chunks(65_536) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = c;
    let got = read_to_end(&mut r);
    writer.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "20 MB echo differs");
}

#[test]
fn half_close_gets_everything_owed_then_eof() {
    let s = ServerProc::start(&[]);
    let mut c = s.connect();
    let data = random_bytes(300_000, 3);
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c), upper(&data));
}

#[test]
fn two_hundred_abrupt_resets_leave_the_server_serving() {
    let s = ServerProc::start(&[]);
    for i in 0..200 {
        let c = s.connect();
        let sock = socket2::SockRef::from(&c);
        // Linger 0: close sends RST instead of FIN, with data possibly in flight both ways.
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        let _ = (&c).write_all(&random_bytes(1000 + i, i as u64));
        drop(c);
    }
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"still here"), b"STILL HERE");
}

#[test]
fn two_thousand_concurrent_clients_are_all_served() {
    raise_test_fd_limit();
    let s = ServerProc::start(&[]);
    let mut conns: Vec<TcpStream> = (0..2000).map(|_| s.connect()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("client {i} says hi\n").as_bytes())
            .unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let want = format!("CLIENT {i} SAYS HI\n");
        assert_eq!(read_n(c, want.len()), want.as_bytes());
    }
}

#[test]
fn slow_reader_is_bounded_and_others_are_still_served() {
    let s = ServerProc::start(&["--max-pending", "262144"]);
    let rss_before = rss_bytes(s.pid());
    let slow = s.connect();
    let data = random_bytes(16 << 20, 4);
    let expected = upper(&data);
    let mut w = slow.try_clone().unwrap();
    // The writer blocks once the server stops reading; it finishes only when we read below.
    let writer = thread::spawn(move || {
        w.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    // Wait until the server has filled everything it will fill: its RSS stops growing.
    let rss_held = steady(|| rss_bytes(s.pid()));
    assert!(
        rss_held < rss_before + (8 << 20),
        "server grew by {} bytes for one slow reader",
        rss_held - rss_before
    );
    let mut other = s.connect();
    assert_eq!(roundtrip(&mut other, b"am i starved?"), b"AM I STARVED?");
    let mut r = slow;
    r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let got = read_to_end(&mut r);
    writer.join().unwrap();
    assert!(
        got == expected,
        "slow reader got {} bytes, differing",
        got.len()
    );
}

#[test]
fn descriptor_exhaustion_pauses_accepting_without_spinning_then_recovers() {
    raise_test_fd_limit();
    // 40 descriptors, but a connection limit far above: the server runs into EMFILE.
    let mut s = ServerProc::start_raw(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tcp-only",
            "--max-connections",
            "1000",
        ],
        Some("ulimit -n 40"),
    );
    let mut first: Vec<TcpStream> = (0..60).map(|_| s.connect()).collect();
    // Those beyond the limit sit in the backlog, connected but unserved.
    for c in first.iter_mut().take(20) {
        assert_eq!(roundtrip(c, b"x"), b"X");
    }
    let cpu_before = cpu_time(s.pid());
    // Time passing is the point: the CPU the server spends over two seconds out of descriptors.
    thread::sleep(Duration::from_secs(2));
    let cpu = cpu_time(s.pid()) - cpu_before;
    assert!(
        cpu < Duration::from_millis(500),
        "server burned {cpu:?} while out of descriptors"
    );
    assert!(s.logged("pausing accepts"), "{}", s.stderr());
    assert_eq!(
        s.stderr().matches("pausing accepts").count(),
        1,
        "once per episode"
    );
    // Free descriptors: the queued clients are served.
    let waiting = first.split_off(40);
    drop(first);
    for mut c in waiting {
        assert_eq!(roundtrip(&mut c, b"late"), b"LATE");
    }
    assert!(s.logged("accepting again"), "{}", s.stderr());
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0));
}

#[test]
fn max_connections_refuses_promptly_and_frees_the_slot_on_close() {
    let s = ServerProc::start(&["--max-connections", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| s.connect()).collect();
    for c in &mut held {
        assert_eq!(roundtrip(c, b"in"), b"IN");
    }
    let mut extra = s.connect();
    let _ = extra.write_all(b"let me in");
    assert!(closed_within(&mut extra, WAIT), "4th connection not closed");
    drop(held.pop());
    // The close is processed asynchronously; retry until the freed slot is taken.
    assert!(
        wait_until(|| {
            let mut c = s.connect();
            let mut b = [0u8; 4];
            let served = c.write_all(b"now?").is_ok() && c.read_exact(&mut b).is_ok();
            if served {
                assert_eq!(&b, b"NOW?");
            }
            served
        }),
        "slot never freed"
    );
    assert!(s.logged("connection limit (3) reached"), "{}", s.stderr());
}

#[test]
fn idle_timeout_closes_quiet_connections_only() {
    let s = ServerProc::start(&["--idle-timeout", "1"]);
    let mut quiet = s.connect();
    let mut busy = s.connect();
    let start = Instant::now();
    // Keep `busy` active for 2.5 s, beyond the timeout.
    while start.elapsed() < Duration::from_millis(2500) {
        assert_eq!(roundtrip(&mut busy, b"ping"), b"PING");
        // Time passing is the point: a message every 200 ms, well inside the 1 s timeout.
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        closed_within(&mut quiet, Duration::from_millis(1)),
        "quiet connection still open"
    );
    assert_eq!(roundtrip(&mut busy, b"alive"), b"ALIVE");
    assert!(
        closed_within(&mut busy, WAIT),
        "busy connection never timed out once quiet"
    );
}

#[test]
fn udp_replies_once_per_datagram_including_empty_and_largest() {
    let s = ServerProc::start(&[]);
    let u = udp_client();
    assert_eq!(udp_roundtrip(&u, s.udp(), b"hello udp"), b"HELLO UDP");
    assert_eq!(udp_roundtrip(&u, s.udp(), b""), b"");
    let big = random_bytes(65_507, 5);
    assert_eq!(udp_roundtrip(&u, s.udp(), &big), upper(&big));
}

#[test]
fn udp_burst_is_answered_in_full() {
    let s = ServerProc::start(&[]);
    let u = udp_client();
    // Room for every reply at once: the burst tests the server, not the client's buffer.
    socket2::SockRef::from(&u)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let n = 200;
    for i in 0..n {
        u.send_to(format!("burst {i:04}").as_bytes(), s.udp())
            .unwrap();
    }
    let mut seen = vec![false; n];
    let mut buf = [0u8; 100];
    for _ in 0..n {
        let (len, _) = u.recv_from(&mut buf).expect("reply to burst");
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        let i: usize = text.strip_prefix("BURST ").unwrap().parse().unwrap();
        assert!(!seen[i], "duplicate reply {i}");
        seen[i] = true;
    }
}

/// Binds a UDP socket on a privileged source port (the tests run as root, as CI does).
fn privileged_udp() -> UdpSocket {
    let u = (600..1024)
        .find_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
        .expect("no privileged port free (tests need root)");
    u.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    u
}

#[test]
fn udp_from_a_privileged_port_is_ignored_unless_allowed() {
    let s = InProcess::start(upecho::serve::Config::default());
    let u = privileged_udp();
    u.send_to(b"reflect me", s.udp).unwrap();
    let mut buf = [0u8; 64];
    let err = u
        .recv_from(&mut buf)
        .expect_err("reply to a privileged port");
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    let stats = s.stop().stats;
    assert_eq!((stats.datagrams_in, stats.datagrams_ignored), (1, 1));

    let open = ServerProc::start(&["--udp-any-source"]);
    u.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(udp_roundtrip(&u, open.udp(), b"ok"), b"OK");
}

#[test]
fn transform_none_is_a_plain_echo() {
    let s = ServerProc::start(&["--transform", "none"]);
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"Mixed Case"), b"Mixed Case");
    let u = udp_client();
    assert_eq!(udp_roundtrip(&u, s.udp(), b"abc"), b"abc");
}

#[test]
fn tcp_only_and_udp_only_bind_one_protocol() {
    let t = ServerProc::start(&["--tcp-only"]);
    assert!(t.udp.is_none());
    let u = ServerProc::start(&["--udp-only"]);
    assert!(u.tcp.is_none());
    assert!(TcpStream::connect(u.udp()).is_err());
}

#[test]
fn ipv6_loopback_works() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let s = ServerProc::start_raw(&["serve", "--listen", "[::1]:0"], None);
    assert!(s.tcp().is_ipv6());
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"v6"), b"V6");
    let u = UdpSocket::bind("[::1]:0").unwrap();
    u.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(udp_roundtrip(&u, s.udp(), b"v6"), b"V6");
}

/// Started under `nohup` or as a shell's background job (SIGHUP, SIGINT, SIGQUIT ignored), the
/// server leaves those ignored, says so, and stops on SIGTERM alone.
#[test]
fn stop_signals_inherited_ignored_stay_ignored_and_sigterm_still_drains() {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug");
    ignore_stop_signals(&mut cmd);
    let mut s = ServerProc::spawn(cmd, true, true);
    assert!(
        s.logged("SIGHUP, SIGINT, SIGQUIT inherited ignored"),
        "{}",
        s.stderr()
    );
    let mut c = s.connect();
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        s.signal(sig);
        assert_eq!(roundtrip(&mut c, b"still"), b"STILL", "after signal {sig}");
    }
    // A signal the server handles, sent after them, shows they were not merely late.
    s.signal(libc::SIGUSR1);
    assert!(s.logged("SIGUSR1: counters"), "{}", s.stderr());
    // Time passing is the point: nothing must happen, so there is no event to wait for; a stop
    // that was acted on would have said so well within this.
    thread::sleep(Duration::from_millis(300));
    assert!(!s.stderr().contains("shutting down"), "{}", s.stderr());
    drop(c);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

#[test]
fn sigterm_and_sigint_exit_zero_with_connections_open() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut s = ServerProc::start(&[]);
        let mut conns: Vec<TcpStream> = (0..5).map(|_| s.connect()).collect();
        for c in &mut conns {
            assert_eq!(roundtrip(c, b"a"), b"A");
        }
        s.signal(sig);
        assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
        for c in &mut conns {
            assert!(closed_within(c, WAIT));
        }
        assert!(s.stderr().contains("final counters"), "{}", s.stderr());
    }
}

#[test]
fn sigterm_lets_a_connection_collect_what_it_is_owed() {
    // A pending cap above the payload: the server takes all 32 MB while the client reads
    // nothing, so at SIGTERM it owes far more than the socket buffers hold.
    let mut s = ServerProc::start(&[
        "--drain-timeout",
        "30",
        "--max-pending",
        "67108864",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut c = s.connect();
    let data = random_bytes(32 << 20, 6);
    c.write_all(&data).unwrap();
    s.signal_once_owed(data.len(), libc::SIGTERM);
    let got = read_n(&mut c, data.len());
    assert!(got == upper(&data));
    assert!(closed_within(&mut c, WAIT), "not closed after catching up");
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut s = ServerProc::start(&["--drain-timeout", "60", "--metrics", "127.0.0.1:0"]);
    let c = s.connect();
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = w.write_all(&random_bytes(8 << 20, 7));
    });
    // The server owes a client that does not read: its drain cannot end by itself.
    s.wait_metric("upecho_pending_bytes", |n| n > 0.0);
    s.signal(libc::SIGTERM);
    assert!(s.logged("stopped listening; draining"), "{}", s.stderr());
    s.signal(libc::SIGINT);
    let code = s.wait_exit(WAIT);
    assert_eq!(code, Some(1), "{}", s.stderr());
    assert!(s.stderr().contains("exiting now"));
    drop(c);
    writer.join().unwrap();
}

#[test]
fn bad_flags_and_malformed_addresses_are_usage_errors() {
    for args in [
        vec!["serve", "--no-such-flag"],
        vec!["serve", "--listen", "127.0.0.1"],
        vec!["serve", "--listen", "localhost:http"],
        vec!["serve", "--listen", "[::1:80"],
        vec!["serve", "--max-connections", "0"],
        vec!["serve", "--idle-timeout", "soon"],
        vec!["serve", "--busy-poll", "2s"],
        vec!["serve", "--tcp-only", "--udp-only"],
        vec!["serve", "--transform", "lower"],
    ] {
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error:") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn listen_takes_host_names_and_one_that_does_not_resolve_is_one_line_and_exit_one() {
    let s = ServerProc::start_raw(&["serve", "--listen", "localhost:0", "--tcp-only"], None);
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"named"), b"NAMED");
    let out = Command::new(bin())
        .args(["serve", "--listen", "no-such-host.invalid:8005"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot resolve no-such-host.invalid:8005"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn address_in_use_is_one_clear_line_and_exit_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("cannot bind tcp {addr}")), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_socket_that_cannot_be_bound_leaves_nothing_announced() {
    // The first address binds fine; the second is taken. Nothing may be announced.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args([
            "serve",
            "--tcp-only",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &addr,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot bind tcp {addr}")), "{err}");
}

/// The log line that closed the connection whose client address is `client`, once logged.
fn close_line(s: &ServerProc, client: SocketAddr) -> String {
    let needle = format!(" {client} closed: ");
    assert!(
        s.logged(&needle),
        "no close line for {client}: {}",
        s.stderr()
    );
    s.stderr()
        .lines()
        .find(|l| l.contains(&needle))
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The id in a `conn ID ADDR ...` line.
fn conn_id(line: &str) -> u64 {
    let at = line.find("conn ").expect("a conn line") + 5;
    line[at..]
        .split(' ')
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no id in {line:?}"))
}

#[test]
fn every_connection_has_its_own_id_and_a_close_line_with_peer_life_bytes_and_reason() {
    let s = ServerProc::start(&["--idle-timeout", "1"]);
    // Three in turn: each reuses slab key 0, and each must still get an id of its own.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut c = s.connect();
        let me = c.local_addr().unwrap();
        assert_eq!(roundtrip(&mut c, b"hello"), b"HELLO");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut c), b"");
        let line = close_line(&s, me);
        assert!(line.contains("closed: closed by peer; lived "), "{line}");
        assert!(line.ends_with("s, 5 bytes in, 5 bytes out"), "{line}");
        ids.push(conn_id(&line));
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids reused: {}", s.stderr());
    // A reset: getpeername fails by the time the server closes it, yet the line names the peer.
    let mut c = s.connect();
    let me = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"x"), b"X");
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let line = close_line(&s, me);
    assert!(line.contains("closed: reset by peer ("), "{line}");
    assert!(line.ends_with("1 byte in, 1 byte out"), "{line}");
    // A quiet one, closed by the idle timeout.
    let quiet = s.connect();
    let line = close_line(&s, quiet.local_addr().unwrap());
    assert!(line.contains("closed: idle timeout; lived "), "{line}");
    assert!(line.ends_with("0 bytes in, 0 bytes out"), "{line}");
    let log = s.stderr();
    assert!(!log.contains("Some(") && !log.contains("None"), "{log}");
}

/// The value of `name=X` in `line`, as a number.
fn field(line: &str, name: &str) -> f64 {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        + name.len()
        + 2;
    line[at..]
        .split([' ', ';'])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {line:?}"))
}

#[test]
fn stats_lines_carry_per_second_rates_beside_the_totals() {
    let s = ServerProc::start(&["--stats-interval", "500ms"]);
    let u = udp_client();
    // Traffic until one line has seen connections, bytes and datagrams in its own interval.
    let mut log = String::new();
    let found = wait_until(|| {
        let mut c = s.connect();
        assert_eq!(roundtrip(&mut c, b"rate"), b"RATE");
        assert_eq!(udp_roundtrip(&u, s.udp(), b"dg"), b"DG");
        log = s.stderr();
        let busy = log.lines().filter(|l| l.contains("stats: ")).find(|l| {
            [
                "accepted/s",
                "bytes_in/s",
                "bytes_out/s",
                "datagrams_in/s",
                "datagrams_out/s",
            ]
            .iter()
            .all(|n| field(l, n) > 0.0)
        });
        if let Some(line) = busy {
            assert!(line.contains(" over 0.5s: "), "{line}");
            assert!(field(line, "accepted") >= 1.0, "totals too: {line}");
        }
        busy.is_some()
    });
    assert!(found, "no stats line with rates: {log}");
}

/// Starts `upecho serve` on loopback port 0 with `RUST_LOG=level`.
fn start_logging(level: &str, args: &[&str]) -> ServerProc {
    let mut full = vec!["serve", "--listen", "127.0.0.1:0"];
    full.extend_from_slice(args);
    ServerProc::start_raw(&full, Some(&format!("RUST_LOG={level}; export RUST_LOG")))
}

#[test]
fn trace_logs_events_accepts_reads_and_writes_and_datagram_batches() {
    let mut s = start_logging("upecho=trace", &[]);
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"trace"), b"TRACE");
    // The first connection may be taken by the start-up accept turn, before any event is
    // polled; by now that turn has drained the queue, so a second one comes by an event.
    let mut c2 = s.connect();
    assert_eq!(roundtrip(&mut c2, b"again"), b"AGAIN");
    let u = udp_client();
    assert_eq!(udp_roundtrip(&u, s.udp(), b"dg"), b"DG");
    for needle in [
        "event 16 (Listener(0)): readable",
        "listener 0: accepted ",
        ": read 5 B, wrote 5 B, owes 0 B, wait",
        "udp 0: batch of 1 datagram in, 1 to answer",
    ] {
        assert!(s.logged(needle), "no {needle:?} in {}", s.stderr());
    }
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0));
}

#[test]
fn at_info_a_connection_logs_nothing() {
    let mut s = start_logging("info", &[]);
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"quiet"), b"QUIET");
    drop(c);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0));
    let log = s.stderr();
    assert!(
        log.contains("final counters") && !log.contains("conn "),
        "{log}"
    );
}

#[test]
fn busy_poll_serves_stops_on_sigterm_and_sleeps_once_traffic_stops() {
    // The longest window allowed: if the spin did not end with the traffic, the idle second
    // below would cost about a second of CPU.
    let mut s = ServerProc::start(&["--busy-poll", "1s"]);
    let mut c = s.connect();
    for i in 0..500u32 {
        let msg = format!("busy {i}");
        assert_eq!(roundtrip(&mut c, msg.as_bytes()), upper(msg.as_bytes()));
    }
    let data = random_bytes(4 << 20, 19);
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || w.write_all(&sent).unwrap());
    assert!(read_n(&mut c, data.len()) == upper(&data));
    writer.join().unwrap();
    // Quiet for the window and then some: spinning stops, and the server sleeps.
    thread::sleep(Duration::from_millis(1500));
    let before = cpu_time(s.pid());
    thread::sleep(Duration::from_secs(3));
    let spent = cpu_time(s.pid()) - before;
    assert!(
        spent < Duration::from_secs(1),
        "idle server spent {spent:?} of CPU in 3 s"
    );
    // SIGTERM in the middle of a spin still drains and exits.
    assert_eq!(roundtrip(&mut c, b"last"), b"LAST");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    assert!(closed_within(&mut c, WAIT));
}

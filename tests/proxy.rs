//! `--proxy-protocol`: the real binary reads PROXY v1 and v2 headers from trusted sources, never
//! echoes them, names the real client in its log, and closes (and counts) a trusted connection
//! that has no valid header, while everyone else is served as before.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::{ServerProc, WAIT, roundtrip, samples, wait_until};

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

/// A v2 PROXY header for a TCP/IPv4 connection, with `extra` bytes of NOOP TLV.
fn v2(src: &str, dst: &str, extra: usize) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src.parse().unwrap(), dst.parse().unwrap())
    else {
        panic!("IPv4 only here");
    };
    let mut body = Vec::new();
    body.extend_from_slice(&s.ip().octets());
    body.extend_from_slice(&d.ip().octets());
    body.extend_from_slice(&s.port().to_be_bytes());
    body.extend_from_slice(&d.port().to_be_bytes());
    if extra > 0 {
        body.push(0x04);
        body.extend_from_slice(&(extra as u16).to_be_bytes());
        body.resize(body.len() + extra, 0);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

fn trusting_loopback(extra: &[&str]) -> ServerProc {
    let mut args = vec![
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    ServerProc::start(&args)
}

/// Waits (bounded) for the server to close `c`; true if it did, with nothing echoed.
fn closed_unanswered(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Ok(n) => panic!("got {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("not closed: {e}"),
    }
}

/// The server's PROXY counters (summed over its workers, if any) once it has closed every
/// connection, so that a close counted wrongly would be in them: (headers read, rejected).
fn settled_proxy_counts(s: &ServerProc) -> (f64, f64) {
    let sum = |body: &str, name: &str| samples(body, name).iter().map(|(_, v)| v).sum::<f64>();
    let mut body = String::new();
    assert!(
        wait_until(|| {
            body = s.scrape();
            sum(&body, "upecho_connections_active") == 0.0
        }),
        "connections still open:\n{body}"
    );
    (
        sum(&body, "upecho_proxy_headers_total"),
        sum(&body, "upecho_proxy_rejected_total"),
    )
}

fn stop(mut s: ServerProc) -> String {
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0));
    s.stderr()
}

#[test]
fn v1_and_v2_headers_are_consumed_and_name_the_real_client() {
    let s = trusting_loopback(&[]);
    let mut a = s.connect();
    a.write_all(&v1("203.0.113.7:40001", "198.51.100.1:8005"))
        .unwrap();
    assert_eq!(roundtrip(&mut a, b"hello v1"), b"HELLO V1");
    let mut b = s.connect();
    // Header and payload in one segment, and a header with TLVs.
    let mut first = v2("192.0.2.99:40002", "198.51.100.1:8005", 40);
    first.extend_from_slice(b"hello v2");
    b.write_all(&first).unwrap();
    assert_eq!(util::read_n(&mut b, 8), b"HELLO V2");
    assert!(
        s.logged("203.0.113.7:40001 via 127.0.0.1:"),
        "{}",
        s.stderr()
    );
    assert!(s.logged(": PROXY v1 header"));
    assert!(s.logged("192.0.2.99:40002 via 127.0.0.1:"));
    drop((a, b));
    // The close line names the client too.
    assert!(s.logged("203.0.113.7:40001 via 127.0.0.1:"));
    assert_eq!(settled_proxy_counts(&s), (2.0, 0.0), "{}", s.stderr());
    stop(s);
}

#[test]
fn a_header_sent_one_byte_at_a_time_is_read_whole() {
    let s = trusting_loopback(&[]);
    let mut c = s.connect();
    c.set_nodelay(true).unwrap();
    for b in v1("[2001:db8::5]:7", "[::1]:8005") {
        c.write_all(&[b]).unwrap();
        // Time passing is the point: each byte its own segment, read by its own event.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(roundtrip(&mut c, b"drip"), b"DRIP");
    assert!(s.logged("[2001:db8::5]:7 via 127.0.0.1:"), "{}", s.stderr());
    stop(s);
}

#[test]
fn a_trusted_connection_without_a_valid_header_is_closed_counted_and_harms_no_one() {
    let s = trusting_loopback(&[]);
    let mut healthy = s.connect();
    healthy
        .write_all(&v1("203.0.113.1:1", "127.0.0.1:2"))
        .unwrap();
    assert_eq!(roundtrip(&mut healthy, b"before"), b"BEFORE");
    // No header at all; a malformed one; one longer than the limit.
    let mut plain = s.connect();
    plain.write_all(b"hello\r\n").unwrap();
    assert!(closed_unanswered(&mut plain));
    let mut bad = s.connect();
    bad.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\nhello")
        .unwrap();
    assert!(closed_unanswered(&mut bad));
    let mut huge = s.connect();
    huge.write_all(&v2("1.2.3.4:1", "5.6.7.8:2", 8000)[..16])
        .unwrap();
    assert!(closed_unanswered(&mut huge));
    // A plain TCP health check (connect, close) is not an error.
    drop(s.connect());
    assert_eq!(roundtrip(&mut healthy, b"after"), b"AFTER");
    assert!(s.logged("no PROXY header from a trusted source"));
    drop(healthy);
    assert_eq!(settled_proxy_counts(&s), (1.0, 3.0), "{}", s.stderr());
    let log = stop(s);
    // Rate-limited: one warning line for the burst, the rest counted.
    let warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("closed a connection from"))
        .count();
    assert_eq!(warns, 1, "{log}");
}

#[test]
fn a_trusted_source_that_sends_no_header_is_closed_at_the_timeout() {
    let s = trusting_loopback(&["--proxy-timeout", "300ms"]);
    let mut silent = s.connect();
    let t0 = Instant::now();
    assert!(closed_unanswered(&mut silent));
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // Past its header, a connection is not on that clock.
    let mut c = s.connect();
    c.write_all(&v1("203.0.113.2:3", "127.0.0.1:4")).unwrap();
    // Time passing is the point: more than twice the header timeout goes by.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(roundtrip(&mut c, b"still here"), b"STILL HERE");
    assert!(s.logged("no whole PROXY header in time"));
    drop(c);
    assert_eq!(settled_proxy_counts(&s).1, 1.0, "{}", s.stderr());
    stop(s);
}

#[test]
fn untrusted_sources_are_plain_clients_whose_header_is_data() {
    // Trusts 127.0.0.2 only; the test connects from 127.0.0.1.
    let s = ServerProc::start(&[
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut c = s.connect();
    let h = v1("203.0.113.7:1", "127.0.0.1:2");
    assert_eq!(roundtrip(&mut c, &h), h.to_ascii_uppercase());
    drop(c);
    assert_eq!(settled_proxy_counts(&s), (0.0, 0.0), "{}", s.stderr());
    stop(s);
}

#[test]
fn proxy_flags_need_each_other_and_a_valid_range() {
    for args in [
        &["--proxy-protocol"][..],
        &["--proxy-from", "127.0.0.1"],
        &["--proxy-protocol", "--proxy-from", "10.0.0.0/40"],
        &[
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.1",
            "--proxy-timeout",
            "1e-9",
        ],
    ] {
        let out = std::process::Command::new(util::bin())
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}

/// `upecho load --send-proxy` against `upecho serve --proxy-protocol`: the project's own tools
/// exercise the whole path, in both versions and in ping-pong and churn.
#[test]
fn upecho_load_sends_headers_the_server_takes() {
    for (version, mode, conns) in [
        ("v1", "pingpong", "3"),
        ("v2", "pingpong", "3"),
        ("v2", "churn", "2"),
    ] {
        let s = trusting_loopback(&[]);
        let out = std::process::Command::new(util::bin())
            .args([
                "load",
                &s.tcp().to_string(),
                "--send-proxy",
                version,
                "--mode",
                mode,
            ])
            .args([
                "-c", conns, "-t", "500ms", "--warmup", "0", "--quiet", "--json",
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{version} {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (headers, rejected) = settled_proxy_counts(&s);
        let accepted = s.metric("upecho_connections_accepted_total");
        // Every connection the load made sent one header, and none was refused.
        assert_eq!(rejected, 0.0, "{version} {mode}");
        assert_eq!(headers, accepted, "{version} {mode}");
        assert!(accepted >= 2.0, "{version} {mode}: {accepted}");
        let log = stop(s);
        assert!(log.contains(&format!(": PROXY {version} header")), "{log}");
    }
}

#[test]
fn upecho_load_with_send_proxy_against_a_server_without_it_fails_and_says_why() {
    let s = ServerProc::start(&[]);
    let out = std::process::Command::new(util::bin())
        .args(["load", &s.tcp().to_string(), "--send-proxy", "v1"])
        .args(["-c", "1", "-t", "300ms", "--warmup", "0", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The summary, and with it the hint, goes to stdout.
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("server must take the header off"),
        "{summary}"
    );
    assert!(summary.contains("--proxy-protocol"), "{summary}");
    stop(s);
}

/// The supervisor's workers read PROXY headers too: they run with the same flags.
#[test]
fn workers_take_proxy_headers_too() {
    let s = trusting_loopback(&["--workers", "2"]);
    for i in 0..6u16 {
        let mut c = s.connect();
        c.write_all(&v1(&format!("203.0.113.50:{}", 1000 + i), "127.0.0.1:2"))
            .unwrap();
        assert_eq!(roundtrip(&mut c, b"via a worker"), b"VIA A WORKER");
    }
    let mut plain = s.connect();
    plain.write_all(b"no header\r\n").unwrap();
    assert!(closed_unanswered(&mut plain));
    assert_eq!(settled_proxy_counts(&s), (6.0, 1.0), "{}", s.stderr());
    let log = stop(s);
    assert!(log.contains("203.0.113.50:1000 via 127.0.0.1:"), "{log}");
}

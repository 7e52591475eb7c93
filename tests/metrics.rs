//! `--metrics ADDR`: the Prometheus endpoint of the real binary, checked by `promtool` where it is
//! installed, and held to its limits against scrapers that misbehave.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::{ServerProc, WAIT, http_request as request, roundtrip, sample, scrape};

/// Starts a server with `--metrics` on a port of its own and returns it with that address.
fn start(extra: &[&str]) -> (ServerProc, SocketAddr) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = ServerProc::start(&args);
    let addr = s.metrics_addr();
    (s, addr)
}

#[test]
fn metrics_count_what_the_server_did() {
    let (s, m) = start(&[]);
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"counted"), b"COUNTED");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(WAIT)).unwrap();
    u.send_to(b"dgram", s.udp()).unwrap();
    let mut buf = [0u8; 8];
    u.recv_from(&mut buf).unwrap();
    let body = scrape(m);
    assert_eq!(
        sample(&body, "upecho_connections_accepted_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(sample(&body, "upecho_connections_active"), Some(1.0));
    assert_eq!(sample(&body, "upecho_received_bytes_total"), Some(7.0));
    assert_eq!(sample(&body, "upecho_sent_bytes_total"), Some(7.0));
    assert_eq!(
        sample(&body, "upecho_udp_received_datagrams_total"),
        Some(1.0)
    );
    assert_eq!(sample(&body, "upecho_udp_sent_datagrams_total"), Some(1.0));
    assert!(sample(&body, "upecho_max_connections").unwrap_or(0.0) >= 1.0);
    assert!(sample(&body, "process_start_time_seconds").unwrap_or(0.0) > 1.6e9);
    // The scrape itself is no echo connection.
    let again = scrape(m);
    assert_eq!(
        sample(&again, "upecho_connections_accepted_total"),
        Some(1.0)
    );
    assert!(
        sample(&again, "upecho_scrapes_total").unwrap_or(0.0) >= 1.0,
        "{again}"
    );
}

#[test]
fn the_exposition_passes_promtool_check_metrics() {
    let (_s, m) = start(&[]);
    let body = scrape(m);
    match util::promtool_check(&body) {
        None => eprintln!(
            "SKIP the_exposition_passes_promtool_check_metrics: promtool not installed (Debian package prometheus)"
        ),
        Some(Ok(says)) => assert!(says.trim().is_empty(), "promtool has remarks: {says}"),
        Some(Err(says)) => panic!("promtool: {says}\n{body}"),
    }
}

#[test]
fn anything_but_get_metrics_gets_a_clear_error() {
    let (_s, m) = start(&[]);
    assert!(request(m, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let post = request(m, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"),
        "{post}"
    );
    assert!(request(m, b"hello\r\n\r\n").starts_with("HTTP/1.1 400"));
}

#[test]
fn hostile_scrapers_are_bounded_and_the_echo_clients_are_still_served() {
    let (s, m) = start(&[]);
    // More silent scrapers than the table holds: the extra ones are closed at once, the others
    // at the scrape timeout; the echo side never notices.
    let silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect_timeout(&m, WAIT).unwrap())
        .collect();
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"still served"), b"STILL SERVED");
    // An oversized request is refused, not buffered.
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.resize(64 << 10, b'a');
    let mut b = TcpStream::connect_timeout(&m, WAIT).unwrap();
    b.set_read_timeout(Some(WAIT)).unwrap();
    let _ = b.write_all(&big);
    let mut resp = Vec::new();
    let _ = b.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 431"),
        "oversized request: {resp}"
    );
    // Every silent scraper is closed within the timeout (5 s) and a real scrape then works.
    let deadline = Instant::now() + WAIT;
    for mut q in silent {
        q.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let mut byte = [0u8; 1];
        match q.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent scraper was left open: {other:?}"),
        }
    }
    assert!(scrape(m).contains("upecho_connections_accepted_total"));
}

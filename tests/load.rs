//! `upecho load` against the real `upecho serve`: every mode briefly with verification on, a
//! deliberately wrong server, the JSON and .hgrm outputs, errors that are counted rather than
//! fatal, and usage errors.
//!
//! Runs are short and small (the suite shares two cores with other test binaries); no assertion
//! depends on how fast anything is, only on what was counted.

mod util;

use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{ServerProc, bin, load_json, wait_until_within};

/// Hard bound on any one `upecho load` run in these tests.
const RUN_BOUND: Duration = util::LOAD_BOUND;

/// Runs `upecho load ARGS...` and returns its output; kills it (by PID) if it overruns.
fn load(args: &[&str]) -> Output {
    util::load_output(util::spawn_load(args))
}

fn assert_clean_success(code: i32, v: &Value, stderr: &str) {
    assert_eq!(code, 0, "report: {v:#}\nstderr:\n{stderr}");
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["mismatches"], 0, "{v:#}");
    assert_eq!(v["errors"]["total"], 0, "{v:#}");
}

#[test]
fn pingpong_pipelined_every_byte_verified() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let (code, v, err) = load_json(&[&addr, "-c", "4", "--depth", "4", "-t", "2", "--warmup", "1"]);
    assert_clean_success(code, &v, &err);
    assert!(v["messages"].as_u64().unwrap() > 0);
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        64 * v["messages"].as_u64().unwrap()
    );
    let lat = &v["latency_us"];
    assert_eq!(lat["count"], v["messages"]);
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
    assert!(lat["p99"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());
}

#[test]
fn bulk_streams_and_checks_both_ways() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let (code, v, err) = load_json(&[
        &addr, "--mode", "bulk", "-c", "2", "-s", "65536", "-t", "2", "--warmup", "1",
    ]);
    assert_clean_success(code, &v, &err);
    // More than the two-message window came back on some connection, so the stream went on
    // after its replies (and all of it was checked).
    assert!(v["bytes"].as_u64().unwrap() > 2 * 2 * 65536, "{v:#}");
}

#[test]
fn churn_opens_a_connection_per_message() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    for close in ["fin", "rst"] {
        let (code, v, err) = load_json(&[
            &addr, "--mode", "churn", "-c", "2", "-t", "2", "--warmup", "1", "--close", close,
        ]);
        assert_clean_success(code, &v, &err);
        let msgs = v["messages"].as_u64().unwrap();
        assert!(msgs > 0);
        // Each message had a connection of its own (a connection may straddle the window's
        // edges, so allow one per slot either way).
        assert!(v["connects"].as_u64().unwrap().abs_diff(msgs) <= 4, "{v:#}");
    }
}

#[test]
fn hold_keeps_every_connection_and_each_answers() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let pid = server.pid().to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "--mode",
        "hold",
        "-c",
        "300",
        "-t",
        "1",
        "--threads",
        "2",
        "--server-pid",
        &pid,
    ]);
    assert_clean_success(code, &v, &err);
    assert_eq!(v["held"], 300, "{v:#}");
    assert_eq!(v["answered"], 300, "{v:#}");
    assert!(v["server"]["rss_bytes"].as_u64().unwrap() > 0, "{v:#}");
}

#[test]
fn udp_pingpong_matches_every_datagram() {
    let server = ServerProc::start(&[]);
    let addr = server.udp().to_string();
    let (code, v, err) = load_json(&[
        &addr, "--proto", "udp", "-c", "4", "--depth", "4", "-s", "200", "-t", "2", "--warmup", "1",
    ]);
    assert_clean_success(code, &v, &err);
    assert!(v["messages"].as_u64().unwrap() > 0);
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        200 * v["messages"].as_u64().unwrap()
    );
}

#[test]
fn open_loop_rate_is_held_to_the_schedule() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let (code, v, err) = load_json(&[
        &addr, "-c", "2", "--rate", "200", "-t", "2", "--warmup", "1",
    ]);
    assert_clean_success(code, &v, &err);
    let msgs = v["messages"].as_u64().unwrap();
    let window = v["window_s"].as_f64().unwrap();
    // Never more than the schedule allows (plus what was due at the window's start).
    assert!(
        msgs > 0 && (msgs as f64) <= 200.0 * (window + 0.5) + 2.0,
        "{v:#}"
    );
    assert_eq!(v["rate"], 200.0);
}

#[test]
fn plain_echo_server_fails_an_upper_expectation() {
    let server = ServerProc::start(&["--transform", "none"]);
    let tcp = server.tcp().to_string();
    let (code, v, _) = load_json(&[&tcp, "-c", "2", "-t", "2", "--warmup", "1"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
    assert!(v["mismatches"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["mismatched_bytes"].as_u64().unwrap() > 0, "{v:#}");
    let first = v["first_mismatch"].as_str().unwrap();
    assert!(first.contains("expected"), "{first}");

    let udp = server.udp().to_string();
    let (code, v, _) = load_json(&[
        &udp, "--proto", "udp", "-c", "2", "-t", "2", "--warmup", "1",
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert!(v["mismatches"].as_u64().unwrap() > 0, "{v:#}");

    // The human summary says so too.
    let out = load(&[&tcp, "-q", "-c", "1", "-t", "2", "--warmup", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mismatches") && text.contains("FAILED"),
        "{text}"
    );

    // And a plain echo is right when plain echo is what was asked for.
    let (code, v, err) = load_json(&[
        &tcp, "--expect", "none", "-c", "2", "-t", "2", "--warmup", "1",
    ]);
    let log = server.stderr();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let err = format!(
        "{err}\nserver log tail (newest first):\n{}",
        tail.join("\n")
    );
    assert_clean_success(code, &v, &err);
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    // A bound socket that never listens: every connection to it is refused, and the port cannot
    // be taken by anything else while the test runs.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap().to_string();
    let (code, v, _) = load_json(&[&addr, "-c", "3", "-t", "2", "--warmup", "1"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["messages"], 0);
    assert!(v["errors"]["refused"].as_u64().unwrap() > 0, "{v:#}");
    assert!(
        v["errors"]["first"].as_str().unwrap().contains(&addr),
        "{v:#}"
    );
}

#[test]
fn histogram_file_is_standard_hgrm() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let dir = std::env::temp_dir().join(format!("upecho-load-hgrm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lat.hgrm");
    let out = load(&[
        &addr,
        "-q",
        "-c",
        "2",
        "-t",
        "0.5",
        "--warmup",
        "0",
        "--histogram",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"),
        "{text}"
    );
    assert!(text.contains("#[Mean    ="), "{text}");
    let last = text.lines().rfind(|l| !l.starts_with('#')).unwrap();
    assert!(
        last.split_whitespace().nth(1) == Some("1.000000000000"),
        "{last}"
    );
}

#[test]
fn source_addresses_are_bound_before_connect() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "6",
        "--source",
        "127.0.0.2-127.0.0.4",
        "-t",
        "0.5",
        "--warmup",
        "0",
    ]);
    assert_clean_success(code, &v, &err);
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["--mode", "sideways"][..],
        &["--proto", "udp", "--mode", "bulk"],
        &["--proto", "udp", "-s", "4"],
        &["-c", "0"],
        &["--source", "127.0.0.9-127.0.0.2"],
        &["--rate", "0"],
        &["-c", "9000000"],
        &["not-an-address"],
    ] {
        let out = load(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = load(&["-c", "9000000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open files"), "{err}");
}

#[test]
fn a_host_name_is_resolved_to_the_address_that_listens() {
    let server = ServerProc::start(&[]);
    let port = server.tcp().port();
    let name = format!("localhost:{port}");
    let (code, v, err) = load_json(&[&name, "-c", "2", "-t", "0.5", "--warmup", "0"]);
    assert_clean_success(code, &v, &err);
    // The report names the address the run went to.
    assert_eq!(v["addr"], format!("127.0.0.1:{port}"), "{v:#}");
}

#[test]
fn durations_and_sizes_take_units() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "1",
        "-t",
        "500ms",
        "--warmup",
        "0s",
        "-s",
        "1KiB",
        "--timeout",
        "2s",
    ]);
    assert_clean_success(code, &v, &err);
    assert_eq!(v["size"], 1024, "{v:#}");
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        1024 * v["messages"].as_u64().unwrap()
    );
    let window = v["window_s"].as_f64().unwrap();
    assert!((0.45..5.0).contains(&window), "{v:#}");
}

#[test]
fn addresses_that_are_malformed_or_do_not_resolve_say_so_in_one_line() {
    // Malformed: a usage error with an example.
    let out = load(&["127.0.0.1", "-t", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("e.g. 127.0.0.1:8005"), "{err}");
    // Well formed but no such host: a failure of the run, in one line.
    let out = load(&["no-such-host.invalid:8005", "-t", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("upecho load: cannot resolve no-such-host.invalid:8005"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Hostile peers, odd signals and absurd values (issue 7).
// ---------------------------------------------------------------------------------------------

mod broken {
    //! Small deliberately broken servers on loopback port 0, each on its own threads, stopped and
    //! joined on drop. Every socket has a short timeout so no thread outlives its test.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    /// How often a broken server's threads look at their stop flag.
    const POLL: Duration = Duration::from_millis(20);

    #[derive(Clone, Copy)]
    pub enum Tcp {
        /// Echoes (upper-cased) the first N bytes of each connection, then reads and discards.
        StallAfter(usize),
        /// Closes its sending side (FIN) as soon as it accepts, then discards what comes in.
        Fin,
        /// Echoes (upper-cased) the first N bytes of each connection with its FIN in the same
        /// segment (corked, then shut down), then discards what comes in.
        EchoThenFin(usize),
        /// Resets (RST) each connection as soon as it accepts it.
        Rst,
    }

    #[derive(Clone, Copy)]
    pub enum Udp {
        /// Answers every datagram twice.
        Twice,
        /// Answers with the datagram upper-cased and `delta` bytes shorter (< 0) or longer.
        Resize(isize),
    }

    pub struct Server {
        pub addr: SocketAddr,
        stop: Arc<AtomicBool>,
        threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    }

    impl Server {
        pub fn tcp(kind: Tcp) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let addr = listener.local_addr().expect("local addr");
            let stop = Arc::new(AtomicBool::new(false));
            let threads = Arc::new(Mutex::new(Vec::new()));
            let (st, th) = (stop.clone(), threads.clone());
            let accept = thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let st = st.clone();
                            match kind {
                                Tcp::Rst => {
                                    let _ =
                                        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                                }
                                _ => th
                                    .lock()
                                    .unwrap()
                                    .push(thread::spawn(move || serve_tcp(s, kind, &st))),
                            }
                        }
                        // The fake server's accept is non-blocking so that it sees its stop
                        // flag: this is its poll interval, not a wait for the test.
                        Err(_) => thread::sleep(POLL),
                    }
                }
            });
            threads.lock().unwrap().push(accept);
            Server {
                addr,
                stop,
                threads,
            }
        }

        pub fn udp(kind: Udp) -> Server {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            sock.set_read_timeout(Some(POLL)).expect("timeout");
            let addr = sock.local_addr().expect("local addr");
            let stop = Arc::new(AtomicBool::new(false));
            let st = stop.clone();
            let t = thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !st.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    buf[..n].make_ascii_uppercase();
                    match kind {
                        Udp::Twice => {
                            let _ = sock.send_to(&buf[..n], from);
                            let _ = sock.send_to(&buf[..n], from);
                        }
                        Udp::Resize(d) => {
                            let len = n.saturating_add_signed(d).min(buf.len());
                            let _ = sock.send_to(&buf[..len], from);
                        }
                    }
                }
            });
            Server {
                addr,
                stop,
                threads: Arc::new(Mutex::new(vec![t])),
            }
        }
    }

    fn serve_tcp(mut s: TcpStream, kind: Tcp, stop: &AtomicBool) {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(POLL));
        let mut echo_left = match kind {
            Tcp::StallAfter(n) => n,
            Tcp::Fin => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                0
            }
            Tcp::Rst => 0,
            Tcp::EchoThenFin(n) => {
                let _ = socket2::SockRef::from(&s).set_tcp_cork(true);
                n
            }
        };
        let mut buf = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let k = n.min(echo_left);
                    echo_left -= k;
                    buf[..k].make_ascii_uppercase();
                    if k > 0 && s.write_all(&buf[..k]).is_err() {
                        return;
                    }
                    // The FIN joins the corked reply: both arrive in one event.
                    if matches!(kind, Tcp::EchoThenFin(_)) && echo_left == 0 && k > 0 {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            // The accept thread may add connection threads until it is joined itself; it stays
            // in the list until then, so popping until the list is empty joins every thread.
            loop {
                let Some(t) = self.threads.lock().unwrap().pop() else {
                    break;
                };
                let _ = t.join();
            }
        }
    }
}

/// The failure reasons of a JSON report, as one string.
fn failures(v: &Value) -> String {
    v["failures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

#[test]
fn load_fails_a_run_whose_server_stops_echoing() {
    let srv = broken::Server::tcp(broken::Tcp::StallAfter(1000));
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "2",
        "-t",
        "2",
        "--warmup",
        "0.5",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(v["errors"]["timeout"].as_u64().unwrap() > 0, "{v:#}");
    assert!(failures(&v).contains("timeout"), "{v:#}");
}

#[test]
fn load_counts_a_stream_stalled_at_the_end_of_the_run_as_a_timeout() {
    // The stall begins at once, but --timeout is longer than the run: only the end-of-run check
    // for replies still owed can see it.
    let srv = broken::Server::tcp(broken::Tcp::StallAfter(1000));
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "2",
        "-t",
        "1",
        "--warmup",
        "0",
        "--timeout",
        "3",
    ]);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert!(v["messages"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["errors"]["timeout"], 2, "{v:#}");
}

#[test]
fn load_fails_a_run_whose_server_closes_connections() {
    let srv = broken::Server::tcp(broken::Tcp::Fin);
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[&addr, "-c", "2", "-t", "1", "--warmup", "0.5"]);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert!(v["errors"]["closed"].as_u64().unwrap() > 0, "{v:#}");
    assert!(failures(&v).contains("closed"), "{v:#}");
}

#[test]
fn a_fin_that_comes_with_the_reply_is_seen_at_once_not_waited_out() {
    // The reply is a short read, after which the generator reads no more unless the event says
    // the FIN is in: here it is, and no new edge would come for it.
    let srv = broken::Server::tcp(broken::Tcp::EchoThenFin(64));
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "1",
        "-t",
        "1",
        "--warmup",
        "0",
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert!(v["errors"]["closed"].as_u64().unwrap() > 1, "{v:#}");
    assert_eq!(v["errors"]["timeout"], 0, "{v:#}");
    assert!(v["messages"].as_u64().unwrap() > 1, "{v:#}");
}

#[test]
fn load_fails_a_run_whose_server_resets_connections() {
    let srv = broken::Server::tcp(broken::Tcp::Rst);
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[&addr, "-c", "2", "-t", "1", "--warmup", "0.5"]);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert!(v["errors"]["reset"].as_u64().unwrap() > 0, "{v:#}");
    assert!(failures(&v).contains("reset"), "{v:#}");
    // The human summary names the reason on its result line.
    let out = load(&[&addr, "-q", "-c", "1", "-t", "1", "--warmup", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let result = text.lines().find(|l| l.contains("result")).unwrap_or("");
    assert!(
        result.contains("FAIL") && result.contains("reset"),
        "{text}"
    );
}

#[test]
fn load_fails_a_run_that_gets_duplicate_udp_replies() {
    let srv = broken::Server::udp(broken::Udp::Twice);
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[
        &addr, "--proto", "udp", "-c", "2", "-t", "1", "--warmup", "0.5",
    ]);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert_eq!(v["mismatches"], 0, "{v:#}");
    assert!(v["duplicate_replies"].as_u64().unwrap() > 0, "{v:#}");
    assert!(failures(&v).contains("duplicate"), "{v:#}");
}

#[test]
fn tolerate_errors_passes_a_run_whose_bytes_were_right() {
    let srv = broken::Server::tcp(broken::Tcp::StallAfter(1000));
    let addr = srv.addr.to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "2",
        "-t",
        "2",
        "--warmup",
        "0.5",
        "--timeout",
        "0.5",
        "--tolerate-errors",
    ]);
    assert_eq!(code, 0, "{v:#}\n{err}");
    assert!(v["errors"]["timeout"].as_u64().unwrap() > 0, "{v:#}");
    let udp = broken::Server::udp(broken::Udp::Twice);
    let addr = udp.addr.to_string();
    let (code, v, err) = load_json(&[
        &addr,
        "--proto",
        "udp",
        "-c",
        "2",
        "-t",
        "1",
        "--warmup",
        "0.5",
        "--tolerate-errors",
    ]);
    assert_eq!(code, 0, "{v:#}\n{err}");
    assert!(v["duplicate_replies"].as_u64().unwrap() > 0, "{v:#}");
    // Tolerating errors does not tolerate wrong bytes.
    let short = broken::Server::udp(broken::Udp::Resize(-1));
    let addr = short.addr.to_string();
    let (code, v, _) = load_json(&[
        &addr,
        "--proto",
        "udp",
        "-c",
        "1",
        "-t",
        "0.5",
        "--warmup",
        "0",
        "--tolerate-errors",
    ]);
    assert_eq!(code, 1, "{v:#}");
}

#[test]
fn udp_replies_of_the_wrong_length_say_so() {
    for (delta, want) in [
        (-1, "reply is 63 bytes, expected 64"),
        (1, "reply is 65 bytes, expected 64"),
    ] {
        let srv = broken::Server::udp(broken::Udp::Resize(delta));
        let addr = srv.addr.to_string();
        let (code, v, err) = load_json(&[
            &addr, "--proto", "udp", "-c", "1", "-t", "0.5", "--warmup", "0",
        ]);
        assert_eq!(code, 1, "{v:#}\n{err}");
        let first = v["first_mismatch"].as_str().unwrap_or("");
        assert!(first.contains(want), "{first}");
    }
}

#[test]
fn absurd_values_are_one_line_usage_errors() {
    for args in [
        &["--rate", "1e-19"][..],
        &["--rate", "1e-300"],
        &["--rate", "1e19"],
        &["-t", "1e19"],
        &["-t", "1e-9"],
        &["--warmup", "1e19"],
        &["--timeout", "1e19"],
        &["--timeout", "1e-9"],
        &["--connect-timeout", "1e19"],
        &["--connect-timeout", "1e-9"],
        &["-c", "1e19"],
        &["-c", "99999999999"],
        &["--depth", "99999999999"],
        &["-s", "99999999999"],
        // Bookkeeping for every message in flight would not fit in memory.
        &[
            "-c", "100", "--depth", "65536", "-t", "0.5", "--warmup", "0",
        ],
    ] {
        let mut full = vec!["127.0.0.1:9"];
        full.extend_from_slice(args);
        let out = load(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with("error: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Where a floor applies, the message says why.
    let out = load(&["127.0.0.1:9", "--timeout", "1e-9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least"), "{err}");
}

#[test]
fn open_loop_far_beyond_the_machine_still_sends_and_stops() {
    // At 1e9 messages/s the schedule is always behind: handing out the backlog must cost per
    // connection, not per message, or the generator sends nothing and overruns its window.
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let t0 = Instant::now();
    let (code, v, err) = load_json(&[
        &addr, "-c", "2", "--rate", "1e9", "-t", "2", "--warmup", "0",
    ]);
    assert_eq!(code, 0, "{v:#}\n{err}");
    assert!(v["messages"].as_u64().unwrap() > 1000, "{v:#}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

/// Spawns `upecho load ARGS...` with stdout and/or stderr connected to a pipe whose reading end
/// is closed at once, and returns its exit code and (when open) its stderr.
fn load_with_closed(stdout: bool, stderr: bool, args: &[&str]) -> (Option<i32>, String) {
    let mut child = util::spawn_load(args);
    if stdout {
        drop(child.stdout.take());
    }
    if stderr {
        drop(child.stderr.take());
    }
    if !wait_until_within(RUN_BOUND, || child.try_wait().expect("try_wait").is_some()) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("upecho load {args:?} ran past {RUN_BOUND:?}");
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_report_that_cannot_be_written_is_an_error_not_a_panic() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    for json in [false, true] {
        let mut args = vec![addr.as_str(), "-q", "-c", "1", "-t", "0.5", "--warmup", "0"];
        if json {
            args.push("--json");
        }
        let (code, err) = load_with_closed(true, false, &args);
        assert_eq!(code, Some(1), "json {json}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("upecho load: cannot write the report: "))
            .unwrap_or_else(|| panic!("json {json}: {err}"));
        assert!(line.contains("pipe"), "{line}");
    }
}

#[test]
fn a_closed_stderr_does_not_stop_the_run() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    // Not quiet: progress lines go to the closed stderr once a second.
    let (code, _) = load_with_closed(false, true, &[&addr, "-c", "1", "-t", "2", "--warmup", "0"]);
    assert_eq!(code, Some(0));
    let (code, _) = load_with_closed(
        false,
        true,
        &[&addr, "--json", "-c", "1", "-t", "1", "--warmup", "0"],
    );
    assert_eq!(code, Some(0));
}

#[test]
fn server_pid_of_no_process_is_a_usage_error() {
    let out = load(&["127.0.0.1:9", "--server-pid", "999999999", "-t", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no process 999999999"), "{err}");
}

#[test]
fn server_figures_are_unavailable_when_the_process_vanishes() {
    use std::io::{BufRead, BufReader};
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    // A stand-in for a server process that exits during the run.
    let mut victim = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = victim.id().to_string();
    let mut child = Command::new(bin())
        .args([
            "load", &addr, "--json", "-c", "1", "-t", "2", "--warmup", "1",
        ])
        .args(["--server-pid", &pid])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn upecho load");
    // The first progress line means the run has begun (and the pid was accepted): end the
    // process then, and reap it so that it is gone, not a zombie.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = rx.recv_timeout(RUN_BOUND).is_ok();
    let _ = victim.kill();
    let _ = victim.wait();
    if !wait_until_within(RUN_BOUND, || child.try_wait().expect("try_wait").is_some()) {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let err = reader.join().unwrap_or_default();
    assert!(started, "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(out.status.code(), Some(0), "{v:#}\n{err}");
    assert_eq!(v["server"]["pid"], pid.parse::<u64>().unwrap(), "{v:#}");
    assert!(v["server"]["cpu_s"].is_null(), "{v:#}");
    assert!(v["server"]["rss_bytes"].is_null(), "{v:#}");
    assert!(err.contains("unavailable"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The load generator's manners (issue 12): clean closes, Ctrl-C, what hold measured.
// ---------------------------------------------------------------------------------------------

/// A running `upecho load`, its stderr read line by line on a thread (so the test can wait for
/// the first progress line), killed by PID on drop if it is still running.
struct LoadProc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl LoadProc {
    fn start(args: &[&str]) -> LoadProc {
        use std::io::{BufRead, BufReader};
        let mut child = util::spawn_load(args);
        let pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        LoadProc {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Waits (bounded) for a stderr line that starts with `prefix`.
    fn wait_line(&self, prefix: &str) -> bool {
        let deadline = Instant::now() + RUN_BOUND;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the exit; returns the exit code, stdout and all of stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        wait_until_within(RUN_BOUND, || {
            self.child.try_wait().expect("try_wait").is_some()
        });
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait");
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.code(), out, err)
    }
}

impl Drop for LoadProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that the in-process server saw no connection reset and sent back every byte it read.
fn assert_server_saw_clean_closes(s: &upecho::serve::Summary, what: &str) {
    assert_eq!(s.stats.reset, 0, "{what}: {:?}", s.stats);
    assert_eq!(s.stats.errors, 0, "{what}: {:?}", s.stats);
    assert_eq!(s.stats.bytes_in, s.stats.bytes_out, "{what}: {:?}", s.stats);
    assert!(s.stats.bytes_in > 0, "{what}: {:?}", s.stats);
}

#[test]
fn a_finished_run_closes_every_connection_cleanly_and_the_server_returns_every_byte() {
    for args in [
        &["-c", "5", "--depth", "4"][..],
        &["--mode", "bulk", "-c", "3", "-s", "64KiB"],
        &["--mode", "churn", "-c", "3", "--close", "fin"],
        &["--mode", "hold", "-c", "20"],
    ] {
        let server = util::InProcess::start(upecho::serve::Config::default());
        let addr = server.tcp.to_string();
        let mut full = vec![addr.as_str(), "-t", "1", "--warmup", "0.3"];
        full.extend_from_slice(args);
        let (code, v, err) = load_json(&full);
        assert_clean_success(code, &v, &err);
        assert_server_saw_clean_closes(&server.stop(), &format!("{args:?}"));
    }
}

#[test]
fn churn_with_close_rst_is_the_one_mode_that_resets_on_purpose() {
    let server = util::InProcess::start(upecho::serve::Config::default());
    let addr = server.tcp.to_string();
    let (code, v, err) = load_json(&[
        &addr, "--mode", "churn", "-c", "2", "--close", "rst", "-t", "1", "--warmup", "0",
    ]);
    assert_clean_success(code, &v, &err);
    let s = server.stop();
    assert!(s.stats.reset > 0, "{:?}", s.stats);
}

#[test]
fn ctrl_c_ends_the_run_interrupted_with_the_summary_exit_130_and_clean_closes() {
    for mode in ["pingpong", "bulk"] {
        let server = util::InProcess::start(upecho::serve::Config::default());
        let addr = server.tcp.to_string();
        let load = LoadProc::start(&[
            &addr, "--mode", mode, "-c", "4", "-s", "4KiB", "-t", "60", "--warmup", "0",
        ]);
        assert!(load.wait_line("["), "no progress line");
        load.signal(libc::SIGINT);
        let (code, out, err) = load.finish();
        assert_eq!(code, Some(130), "{mode}: {out}\n{err}");
        assert!(out.starts_with("upecho load: "), "{mode}: {out}\n{err}");
        assert!(out.contains("  result      INTERRUPTED"), "{mode}: {out}");
        assert!(!out.contains("result      ok"), "{mode}: {out}");
        // Even cut short, every connection was closed with FIN after its last reply was read.
        assert_server_saw_clean_closes(&server.stop(), mode);
    }
}

#[test]
fn sigterm_ends_the_run_interrupted_in_json_with_exit_143() {
    let server = util::InProcess::start(upecho::serve::Config::default());
    let addr = server.tcp.to_string();
    let load = LoadProc::start(&[&addr, "--json", "-c", "2", "-t", "60", "--warmup", "0"]);
    assert!(load.wait_line("["), "no progress line");
    load.signal(libc::SIGTERM);
    let (code, out, err) = load.finish();
    assert_eq!(code, Some(143), "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["interrupted"], true, "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(v["messages"].as_u64().unwrap() > 0, "{v:#}");
    assert!(err.contains("result      INTERRUPTED"), "{err}");
    assert_server_saw_clean_closes(&server.stop(), "sigterm");
}

#[test]
fn hold_reports_connections_held_answered_and_the_latency_of_the_answers() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    // With --json the text summary goes to stderr: one run checks both.
    let (code, v, text) = load_json(&[&addr, "--mode", "hold", "-c", "20", "-t", "1"]);
    assert_clean_success(code, &v, &text);
    assert_eq!(v["held"], 20, "{v:#}");
    assert_eq!(v["answered"], 20, "{v:#}");
    assert_eq!(v["interrupted"], false, "{v:#}");
    let lat = &v["latency_us"];
    assert_eq!(lat["count"], 20, "{v:#}");
    assert!(lat["p50"].as_f64().unwrap() > 0.0, "{v:#}");
    assert!(lat["p50"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());
    assert!(
        text.contains("  held        20 connections, 20 answered"),
        "{text}"
    );
    assert!(text.contains("  latency µs  p50 "), "{text}");
    assert!(text.contains("(mean "), "{text}");
    assert!(!text.contains("throughput"), "{text}");
    assert!(!text.contains("none recorded"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Past one process, second by second, PROXY headers (issues 9, 11, 10).
// ---------------------------------------------------------------------------------------------

/// A scratch directory removed on drop.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// The histograms of an interval log, untagged (the whole run) and by tag (its parts), added
/// up here from the file alone: base64, then HdrHistogram's V2 deserializer.
struct LogSums {
    untagged: hdrhistogram::Histogram<u64>,
    tagged: std::collections::BTreeMap<String, hdrhistogram::Histogram<u64>>,
    untagged_intervals: usize,
}

fn read_hlog(path: &std::path::Path) -> LogSums {
    use base64::Engine as _;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let bytes = std::fs::read(path).expect("read the log");
    let new = || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut sums = LogSums {
        untagged: new(),
        tagged: Default::default(),
        untagged_intervals: 0,
    };
    for e in IntervalLogIterator::new(&bytes) {
        let LogEntry::Interval(i) = e.expect("a valid interval log") else {
            continue;
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(i.encoded_histogram())
            .expect("base64");
        let h: hdrhistogram::Histogram<u64> =
            Deserializer::new().deserialize(&mut &raw[..]).expect("V2");
        match i.tag() {
            None => {
                sums.untagged.add(&h).unwrap();
                sums.untagged_intervals += 1;
            }
            Some(t) => sums
                .tagged
                .entry(t.as_str().to_string())
                .or_insert_with(new)
                .add(&h)
                .unwrap(),
        }
    }
    sums
}

/// Asserts that the report's `latency_us` is exactly that of histogram `h` (the same
/// arithmetic as the generator's, so equal to the last bit).
fn assert_latency_is(lat: &Value, h: &hdrhistogram::Histogram<u64>, what: &str) {
    let us = |ns: u64| ns as f64 / 1000.0;
    assert_eq!(lat["count"].as_u64(), Some(h.len()), "{what}: {lat}");
    assert_eq!(
        lat["p50"].as_f64(),
        Some(us(h.value_at_quantile(0.5))),
        "{what}"
    );
    assert_eq!(
        lat["p99"].as_f64(),
        Some(us(h.value_at_quantile(0.99))),
        "{what}"
    );
    assert_eq!(
        lat["p999"].as_f64(),
        Some(us(h.value_at_quantile(0.999))),
        "{what}"
    );
    assert_eq!(lat["max"].as_f64(), Some(us(h.max())), "{what}");
}

#[test]
fn a_run_over_two_processes_reports_merged_totals_and_the_merge_of_their_histograms() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let dir = scratch();
    let hlog = dir.path().join("run.hlog");
    let hgrm = dir.path().join("run.hgrm");
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "6",
        "--processes",
        "2",
        "--depth",
        "2",
        "-t",
        "1.5",
        "--warmup",
        "0.3",
        "--histogram-log",
        hlog.to_str().unwrap(),
        "--histogram",
        hgrm.to_str().unwrap(),
    ]);
    assert_clean_success(code, &v, &err);
    assert_eq!(v["processes"], 2, "{v:#}");
    assert!(err.contains("2 processes x 1 thread(s)"), "{err}");
    let parts = v["per_process"].as_array().expect("per_process");
    assert_eq!(parts.len(), 2, "{v:#}");
    let sum = |k: &str| parts.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("connections"), 6);
    assert_eq!(sum("messages"), v["messages"].as_u64().unwrap());
    assert_eq!(sum("bytes"), v["bytes"].as_u64().unwrap());
    assert!(
        parts.iter().all(|p| p["messages"].as_u64().unwrap() > 0),
        "{v:#}"
    );
    // Each process's histogram, as its own tagged seconds in the log; their merge is the whole
    // run's seconds, and exactly what the report, the .hgrm and the series say.
    let log = read_hlog(&hlog);
    assert_eq!(log.tagged.len(), 2, "tags: {:?}", log.tagged.keys());
    let mut merged = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for (i, p) in parts.iter().enumerate() {
        let mine = &log.tagged[&format!("p{i}")];
        assert_latency_is(&p["latency_us"], mine, &format!("process {i}"));
        merged.add(mine).unwrap();
    }
    assert_eq!(merged, log.untagged);
    assert_latency_is(&v["latency_us"], &merged, "merged");
    assert_eq!(
        std::fs::read_to_string(&hgrm).unwrap(),
        upecho::load::hgrm(&merged)
    );
    let series = v["series"].as_array().expect("series");
    assert_eq!(series.len(), log.untagged_intervals, "{v:#}");
    assert!((1..=3).contains(&series.len()), "{v:#}");
    let ssum = |f: &dyn Fn(&Value) -> u64| series.iter().map(f).sum::<u64>();
    assert_eq!(
        ssum(&|s| s["messages"].as_u64().unwrap()),
        v["messages"].as_u64().unwrap()
    );
    assert_eq!(
        ssum(&|s| s["latency_us"]["count"].as_u64().unwrap_or(0)),
        merged.len()
    );
    assert!(
        series.iter().all(|s| s["phase"] == "run" && s["open"] == 6),
        "{v:#}"
    );
}

#[test]
fn hold_over_processes_holds_every_connection_and_each_answers() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let load = LoadProc::start(&[
        &addr,
        "--mode",
        "hold",
        "-c",
        "40",
        "--processes",
        "2",
        "-t",
        "1.2",
        "--json",
    ]);
    let (code, out, err) = load.finish();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (v["held"].as_u64(), v["answered"].as_u64()),
        (Some(40), Some(40)),
        "{v:#}"
    );
    assert_eq!(v["latency_us"]["count"], 40, "{v:#}");
    for p in v["per_process"].as_array().unwrap() {
        assert_eq!(
            (p["held"].as_u64(), p["answered"].as_u64()),
            (Some(20), Some(20)),
            "{v:#}"
        );
    }
    let series = v["series"].as_array().unwrap();
    let check = series.last().unwrap();
    assert_eq!(
        (check["phase"].as_str(), check["answered"].as_u64()),
        (Some("check"), Some(40))
    );
    assert!(
        series[..series.len() - 1]
            .iter()
            .all(|s| s["phase"] == "hold" && s["open"] == 40)
    );
    // The hold's progress says what it holds, not a throughput of nothing.
    assert!(
        err.contains(" hold   established      40  errors 0"),
        "{err}"
    );
    assert!(
        err.contains(" check  answered      40 of 40 held  p50 "),
        "{err}"
    );
    assert!(
        !err.lines()
            .any(|l| l.contains(" hold ") && l.contains("msg/s")),
        "{err}"
    );
}

#[test]
fn progress_lines_carry_each_second_s_latency_and_the_json_its_series() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let load = LoadProc::start(&[&addr, "-c", "2", "-t", "2", "--warmup", "0.5", "--json"]);
    let (code, out, err) = load.finish();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let run_lines: Vec<&str> = err.lines().filter(|l| l.contains("] run ")).collect();
    assert!(!run_lines.is_empty(), "{err}");
    for l in &run_lines {
        assert!(
            l.contains(" msg/s ") && l.contains(" p50 ") && l.contains(" µs  p99 "),
            "{l}"
        );
    }
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{v:#}");
    for s in series {
        let l = &s["latency_us"];
        assert!(
            l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap(),
            "{s}"
        );
        assert!(
            l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap(),
            "{s}"
        );
        assert!(s["secs"].as_f64().unwrap() > 0.5, "{s}");
    }
}

/// The children of process `pid`, from /proc (the kernel lists them per thread).
fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return kids;
    };
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            kids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    kids
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: its state in /proc/PID/stat is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// A server in-process and a long run over 2 processes against it, once it is under way; with
/// the children's pids.
fn two_process_run() -> (util::InProcess, LoadProc, Vec<u32>) {
    let server = util::InProcess::start(upecho::serve::Config::default());
    let addr = server.tcp.to_string();
    let load = LoadProc::start(&[
        &addr,
        "-c",
        "4",
        "--processes",
        "2",
        "-t",
        "60",
        "--warmup",
        "0",
    ]);
    assert!(load.wait_line("["), "no progress line");
    let kids = children_of(load.child.id());
    assert_eq!(kids.len(), 2, "children: {kids:?}");
    (server, load, kids)
}

#[test]
fn ctrl_c_to_the_parent_stops_every_process_in_order_and_still_reports() {
    let (server, load, kids) = two_process_run();
    load.signal(libc::SIGINT);
    let (code, out, err) = load.finish();
    assert_eq!(code, Some(130), "{out}\n{err}");
    assert!(out.contains("  result      INTERRUPTED by SIGINT"), "{out}");
    assert!(out.contains("  processes   2: connections 2..2"), "{out}");
    assert!(kids.iter().all(|&k| !alive(k)), "left running: {kids:?}");
    assert_server_saw_clean_closes(&server.stop(), "processes, ctrl-c");
}

#[test]
fn children_die_with_a_parent_that_is_killed() {
    let (server, load, kids) = two_process_run();
    load.signal(libc::SIGKILL);
    wait_until_within(Duration::from_secs(20), || kids.iter().all(|&k| !alive(k)));
    assert!(kids.iter().all(|&k| !alive(k)), "orphans: {kids:?}");
    drop(load);
    // They stopped in order, as after Ctrl-C: the server saw FINs, not resets.
    assert_server_saw_clean_closes(&server.stop(), "processes, parent killed");
}

#[test]
fn processes_are_checked_against_the_limits_of_each_process() {
    let out = load(&[
        "127.0.0.1:9",
        "-c",
        "30000",
        "--source",
        "127.0.0.2-127.0.0.3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--processes 2"), "{err}");
    for bad in ["0", "257", "x"] {
        let out = load(&["127.0.0.1:9", "--processes", bad]);
        assert_eq!(out.status.code(), Some(2), "--processes {bad}");
    }
}

#[test]
fn load_merge_adds_up_logs_of_separate_runs() {
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let dir = scratch();
    let logs: Vec<_> = ["a.hlog", "b.hlog"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let mut messages = 0;
    let mut merged = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for (c, log) in ["1", "3"].iter().zip(&logs) {
        let (code, v, err) = load_json(&[
            &addr,
            "-c",
            c,
            "-t",
            "0.6",
            "--warmup",
            "0",
            "--histogram-log",
            log.to_str().unwrap(),
        ]);
        assert_clean_success(code, &v, &err);
        messages += v["messages"].as_u64().unwrap();
        merged.add(&read_hlog(log).untagged).unwrap();
    }
    let hgrm = dir.path().join("m.hgrm");
    let out = Command::new(bin())
        .arg("load-merge")
        .args(&logs)
        .args(["--json", "--histogram", hgrm.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["messages"].as_u64(), Some(messages), "{v:#}");
    assert_eq!(v["reports"], 2);
    assert_eq!(v["connections"], 4);
    assert_latency_is(&v["latency_us"], &merged, "load-merge");
    assert_eq!(
        std::fs::read_to_string(&hgrm).unwrap(),
        upecho::load::hgrm(&merged)
    );
    assert!(err.contains("upecho load-merge: 2 log(s)"), "{err}");
    assert!(err.contains("  result      ok"), "{err}");
    // A log that is not there is one line and exit 1; no log at all is a usage error.
    let out = Command::new(bin())
        .args(["load-merge", "/nonexistent.hlog"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = Command::new(bin()).arg("load-merge").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_interval_log_is_read_by_hdrhistogram_s_own_log_processor() {
    // HdrHistogram's Java HistogramLogProcessor (Debian: libhdrhistogram-java), when present.
    let jar = "/usr/share/java/hdrhistogram.jar";
    let java = Command::new("java").arg("-version").output();
    if !std::path::Path::new(jar).exists() || java.is_err() {
        eprintln!("skipped: needs java and {jar} (apt-get install libhdrhistogram-java)");
        return;
    }
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let dir = scratch();
    let hlog = dir.path().join("run.hlog");
    let (code, v, err) = load_json(&[
        &addr,
        "-c",
        "4",
        "--processes",
        "2",
        "-t",
        "1.2",
        "--warmup",
        "0",
        "--histogram-log",
        hlog.to_str().unwrap(),
    ]);
    assert_clean_success(code, &v, &err);
    let out = Command::new("java")
        .args(["-cp", jar, "org.HdrHistogram.HistogramLogProcessor", "-i"])
        .arg(&hlog)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its summary line counts exactly the run's samples (its values are in milliseconds).
    let count = v["latency_us"]["count"].as_u64().unwrap();
    assert!(
        text.contains(&format!("Total count    = {count:>12}]")),
        "{count}:\n{text}"
    );
    // And each process's part, by its tag.
    let p0 = v["per_process"][0]["latency_us"]["count"].as_u64().unwrap();
    let out = Command::new("java")
        .args([
            "-cp",
            jar,
            "org.HdrHistogram.HistogramLogProcessor",
            "-tag",
            "p0",
            "-i",
        ])
        .arg(&hlog)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Total count    = {p0:>12}]")),
        "{p0}:\n{text}"
    );
}

/// A raw TCP listener standing in for a server behind a load balancer: every connection must
/// begin with the PROXY header naming its real addresses; after it, bytes are upper-cased back.
struct ProxyListener {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    verdicts: std::sync::Arc<std::sync::Mutex<Vec<Result<(), String>>>>,
    accept: Option<thread::JoinHandle<()>>,
}

/// The header the specification says, written out here by hand (not with the crate the
/// generator uses): v1's text line, or v2's signature, version/command, family, length,
/// addresses and ports.
fn expected_header(v2: bool, src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    use std::net::IpAddr;
    if !v2 {
        let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!(
            "PROXY {fam} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes();
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    let addrs: Vec<u8> = match (src.ip(), dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            h.push(0x11);
            [a.octets(), b.octets()].concat()
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            h.push(0x21);
            [a.octets(), b.octets()].concat()
        }
        _ => unreachable!(),
    };
    h.extend_from_slice(&((addrs.len() + 4) as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

impl ProxyListener {
    fn start(bind: &str, v2: bool) -> ProxyListener {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind(bind).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let verdicts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s2, v2s) = (stop.clone(), verdicts.clone());
        let accept = thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let (mut c, peer) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        // Non-blocking accept, to see the stop flag: a poll interval.
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                let verdicts = v2s.clone();
                thread::spawn(move || {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let want = expected_header(v2, peer, c.local_addr().unwrap());
                    let mut got = vec![0u8; want.len()];
                    let verdict = match c.read_exact(&mut got) {
                        Ok(()) if got == want => Ok(()),
                        Ok(()) => Err(format!("from {peer}: got {got:?}, want {want:?}")),
                        Err(e) => Err(format!("from {peer}: {e}")),
                    };
                    let ok = verdict.is_ok();
                    verdicts.lock().unwrap().push(verdict);
                    if !ok {
                        return;
                    }
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        buf[..n].make_ascii_uppercase();
                        if c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        ProxyListener {
            addr,
            stop,
            verdicts,
            accept: Some(accept),
        }
    }
}

impl Drop for ProxyListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn send_proxy_begins_every_connection_with_the_exact_header_v1_and_v2_ipv4_and_ipv6() {
    for (bind, v2, mode) in [
        ("127.0.0.1:0", false, "pingpong"),
        ("127.0.0.1:0", true, "pingpong"),
        ("[::1]:0", false, "pingpong"),
        ("[::1]:0", true, "churn"),
    ] {
        let what = format!("{bind} v{} {mode}", if v2 { 2 } else { 1 });
        let server = ProxyListener::start(bind, v2);
        let addr = server.addr.to_string();
        let mut args = vec![
            addr.as_str(),
            "--send-proxy",
            if v2 { "v2" } else { "v1" },
            "--mode",
            mode,
            "-c",
            "3",
            "-t",
            "0.4",
            "--warmup",
            "0",
        ];
        if bind.starts_with('1') {
            args.extend(["--source", "127.0.0.2-127.0.0.3"]);
        }
        let (code, v, err) = load_json(&args);
        assert_clean_success(code, &v, &err);
        assert_eq!(v["send_proxy"], if v2 { "v2" } else { "v1" }, "{what}");
        let verdicts = server.verdicts.lock().unwrap().clone();
        let connections = if mode == "churn" {
            assert!(v["connects"].as_u64().unwrap() > 3, "{what}: {v:#}");
            v["connects"].as_u64().unwrap() as usize
        } else {
            3
        };
        // Churn: one header per connection, every one of them.
        assert!(
            verdicts.len() >= connections,
            "{what}: {} headers",
            verdicts.len()
        );
        let bad: Vec<_> = verdicts.iter().filter_map(|v| v.as_ref().err()).collect();
        assert!(bad.is_empty(), "{what}: {bad:?}");
    }
}

#[test]
fn send_proxy_to_a_server_that_echoes_the_header_fails_and_says_why() {
    // upecho serve without --proxy-protocol echoes the header back as data.
    let server = ServerProc::start(&[]);
    let addr = server.tcp().to_string();
    let (code, v, _) = load_json(&[
        &addr,
        "--send-proxy",
        "v1",
        "-c",
        "1",
        "-t",
        "0.3",
        "--warmup",
        "0",
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert!(failures(&v).contains("--proxy-protocol"), "{v:#}");
    let out = load(&["127.0.0.1:9", "--proto", "udp", "--send-proxy", "v2"]);
    assert_eq!(out.status.code(), Some(2));
}

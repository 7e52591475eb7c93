//! Upgrades that close nothing, against the real binary: a reload of `--workers` moves every
//! established connection to the new generation (held ones answer afterwards, every owed byte
//! arrives once and in order, a half-closed one stays half-closed and gets the rest); a new
//! binary that fails to start, or that cannot read the old one's hand-over format, leaves every
//! connection served by the old workers.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use util::held::{
    Exe, all_answer, all_closed, answers_or_closed, collect, collect_half_closed, half_closed,
    hold, logged_now, logged_times, owed, owed_prefix, raise_nofile, slow_reader, total_line,
};
use util::{
    ServerProc, WAIT, bin, connect, counter_in, random_bytes, read_n, roundtrip, sample, samples,
    upper,
};

fn start(extra: &[&str]) -> ServerProc {
    let mut args = vec!["--workers", "2", "--drain-timeout", "30"];
    args.extend_from_slice(extra);
    ServerProc::start(&args)
}

/// Reload `n` of a two-worker server: wait for it to complete and for both old workers to
/// have handed over and gone.
fn reload(s: &ServerProc, n: usize) {
    s.signal(libc::SIGHUP);
    assert!(
        s.logged(&format!("reload complete: generation {n} serving")),
        "{}",
        s.stderr()
    );
    assert!(logged_times(s, ": handed over ", 2 * n), "{}", s.stderr());
    assert!(
        logged_times(s, "drained, exited with status 0", 2 * n),
        "{}",
        s.stderr()
    );
}

/// (a) 1,000 idle held connections and 100 owed 2 MiB each survive three reloads in a row.
#[test]
fn held_and_owed_connections_survive_three_reloads() {
    raise_nofile();
    let mut s = start(&[]);
    let addr = s.tcp();
    let mut held = hold(addr, 1000);
    let owed = owed(addr, 100, 2 << 20, 1);
    // Time for the server to take in what it takes (the rest waits in the writers).
    thread::sleep(Duration::from_millis(500));
    for n in 1..=3 {
        reload(&s, n);
    }
    all_answer(&mut held, "after three reloads");
    let mut owed = collect(owed);
    all_answer(&mut owed, "owed, after");
    drop(held);
    drop(owed);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let log = s.stderr();
    let total = total_line(&log);
    for zero in ["reset", "errors", "idle_closed", "refused"] {
        assert_eq!(counter_in(&total, zero), Some(0), "{zero}: {total}");
    }
    assert_eq!(counter_in(&total, "accepted"), Some(1100), "{total}");
    // Each of the 1,100 moved three times, and taken in as often.
    assert_eq!(counter_in(&total, "moved_out"), Some(3300), "{total}");
    assert_eq!(counter_in(&total, "moved_in"), Some(3300), "{total}");
    assert!(!log.contains("drain timeout"), "{log}");
}

/// (c) A half-closed connection mid-reply stays half-closed and gets the rest: all it is owed,
/// then the server's close.
#[test]
fn a_half_closed_connection_mid_reply_gets_the_rest_then_eof() {
    let mut s = start(&["--max-pending", "64MiB"]);
    let addr = s.tcp();
    // More than the kernel's buffers hold, so the server owes most of it.
    let mut clients = half_closed(addr, 4, 16 << 20, 7);
    // The FINs are read by the old workers before the reload (it is the state that moves).
    thread::sleep(Duration::from_millis(500));
    reload(&s, 1);
    collect_half_closed(&mut clients);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let log = s.stderr();
    let total = total_line(&log);
    assert_eq!(counter_in(&total, "moved_in"), Some(4), "{total}");
    assert_eq!(counter_in(&total, "reset"), Some(0), "{total}");
}

/// (d) A new binary that fails to start leaves every connection served by the old workers.
#[test]
fn a_new_binary_that_fails_leaves_every_connection_with_the_old_workers() {
    raise_nofile();
    let exe = Exe::copy();
    let mut s = exe.start(&[]);
    let addr = s.tcp();
    let mut held = hold(addr, 200);
    let owed = owed(addr, 10, 2 << 20, 3);
    thread::sleep(Duration::from_millis(300));
    exe.script("echo 'not upecho' >&2\nexit 3");
    s.signal(libc::SIGHUP);
    assert!(s.logged("reload abandoned"), "{}", s.stderr());
    all_answer(&mut held, "after a failed reload");
    let owed = collect(owed);
    assert!(!s.stderr().contains(": handed over "), "{}", s.stderr());
    drop((held, owed));
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

/// Version skew: a new binary that cannot read the old workers' hand-over format takes none
/// of their connections; they drain as a reload did before hand-overs (all owed bytes
/// delivered), and the log says why.
#[test]
fn a_new_binary_of_another_hand_over_format_lets_the_old_workers_drain() {
    let exe = Exe::copy();
    let mut s = exe.start(&[]);
    let addr = s.tcp();
    let owed = owed(addr, 6, 2 << 20, 5);
    thread::sleep(Duration::from_millis(300));
    exe.script(&format!(
        "UPECHO_HANDOVER_VERSION=999 exec {} \"$@\"",
        bin()
    ));
    s.signal(libc::SIGHUP);
    assert!(s.logged("reload complete: generation 1"), "{}", s.stderr());
    assert!(
        logged_times(
            &s,
            "writes hand-over format 1, generation 1 reads [999, 999]",
            2
        ),
        "{}",
        s.stderr()
    );
    let _ = collect(owed);
    assert!(
        logged_times(&s, "drained, exited with status 0", 2),
        "{}",
        s.stderr()
    );
    assert!(!s.stderr().contains(": handed over "), "{}", s.stderr());
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"new ones"), b"NEW ONES");
    drop(c);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

/// UDP across reloads: the sockets are the supervisor's and stay open, so every datagram sent
/// while the generations change is answered (each waits for its reply before the next goes).
#[test]
fn no_datagram_is_lost_across_reloads() {
    let mut s = start(&[]);
    let target = s.udp();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let sender = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut answered = 0u32;
        for i in 0..3000u32 {
            let msg = format!("datagram {i}");
            sock.send_to(msg.as_bytes(), target).unwrap();
            let (n, _) = sock.recv_from(&mut buf).expect("a reply within 5 s");
            assert_eq!(&buf[..n], upper(msg.as_bytes()).as_slice(), "reply {i}");
            answered += 1;
            thread::sleep(Duration::from_micros(500));
        }
        answered
    });
    for n in 1..=2 {
        thread::sleep(Duration::from_millis(400));
        reload(&s, n);
    }
    assert_eq!(sender.join().unwrap(), 3000);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

/// The status line `GET path` gets from the metrics endpoint at `addr`.
fn probe(addr: SocketAddr, path: &str) -> String {
    let mut c = connect(addr);
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    resp.lines().next().unwrap_or_default().to_string()
}

/// `/healthz` and `/readyz` on the metrics listener, for the single server and the supervisor:
/// ready while serving, 503 once draining (a client still owed output keeps the drain going).
#[test]
fn probes_say_ready_while_serving_and_503_while_draining() {
    for workers in [None, Some("2")] {
        let mut args = vec![
            "--metrics",
            "127.0.0.1:0",
            "--drain-timeout",
            "30",
            "--max-pending",
            "64MiB",
        ];
        if let Some(n) = workers {
            args.extend(["--workers", n]);
        }
        let mut s = ServerProc::start(&args);
        let m = s.metrics_addr();
        assert_eq!(probe(m, "/healthz"), "HTTP/1.1 200 OK", "{workers:?}");
        assert_eq!(probe(m, "/readyz"), "HTTP/1.1 200 OK", "{workers:?}");
        let mut c = slow_reader(s.tcp());
        let data = random_bytes(16 << 20, 11);
        c.write_all(&data).unwrap();
        s.signal(libc::SIGTERM);
        assert!(s.logged("SIGTERM: shutting down"), "{}", s.stderr());
        let deadline = Instant::now() + WAIT;
        while probe(m, "/readyz") != "HTTP/1.1 503 Service Unavailable" {
            assert!(
                Instant::now() < deadline,
                "{workers:?}: still ready while draining"
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(probe(m, "/healthz"), "HTTP/1.1 200 OK", "{workers:?}");
        assert!(read_n(&mut c, data.len()) == upper(&data));
        drop(c);
        assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    }
}

/// Waits (bounded) until every reload started has completed and each of its old workers is
/// gone.
fn settled(s: &ServerProc) {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let log = s.stderr();
        let started = log.matches("SIGHUP: reloading").count();
        let done = log.matches("reload complete: generation").count();
        let gone = log.matches("drained, exited with status 0").count();
        if started > 0 && done == started && gone == 2 * done {
            return;
        }
        assert!(Instant::now() < deadline, "{log}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sleeps 0 to `max_ms` milliseconds, a different time from run to run (the clock's
/// nanoseconds), so that repeated runs act at different moments of what is under way.
fn jitter(max_ms: u64) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    thread::sleep(Duration::from_millis(u64::from(nanos) % (max_ms + 1)));
}

/// Reloads as fast as signals come (one during another's hand-over is refused or starts the
/// next generation while the last one still moves in): once they settle, every held connection
/// answers and every owed byte arrives.
#[test]
fn reloads_in_quick_succession_lose_nothing() {
    let mut s = start(&[]);
    let addr = s.tcp();
    let mut held = hold(addr, 300);
    let owed = owed(addr, 10, 2 << 20, 13);
    thread::sleep(Duration::from_millis(300));
    for i in 0..12u64 {
        s.signal(libc::SIGHUP);
        thread::sleep(Duration::from_millis(i * 7 % 40));
    }
    settled(&s);
    all_answer(&mut held, "after quick reloads");
    let owed = collect(owed);
    drop((held, owed));
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let total = total_line(&s.stderr());
    for zero in ["reset", "errors", "refused"] {
        assert_eq!(counter_in(&total, zero), Some(0), "{zero}: {total}");
    }
}

/// A SIGTERM while the old workers hand over: the server drains as at any other time (every
/// owed byte delivered, the quiet connections closed) and exits 0, well before the drain
/// timeout. The new workers drain too, so no moved connection has a place there: the old worker
/// drains each one that comes back, instead of sending it round again (which it did, millions of
/// times, until the drain timeout cut it short with exit 1).
#[test]
fn a_sigterm_during_a_hand_over_drains_and_exits() {
    raise_nofile();
    let mut s = start(&[]);
    let addr = s.tcp();
    let mut held = hold(addr, 4000);
    let owed = owed(addr, 20, 2 << 20, 17);
    thread::sleep(Duration::from_millis(500));
    s.signal(libc::SIGHUP);
    assert!(logged_now(&s, "handing over"), "{}", s.stderr());
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    let owed = collect(owed);
    all_closed(&mut held, "held connection");
    drop(owed);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    let log = s.stderr();
    let total = total_line(&log);
    assert_eq!(counter_in(&total, "accepted"), Some(4020), "{total}");
    // Each connection moves out at most once (to a new worker, or out and back).
    let out = counter_in(&total, "moved_out").unwrap_or(u64::MAX);
    assert!(out <= 4020, "{total}");
    assert!(!log.contains("drain timeout"), "{log}");
}

/// The supervisor's `/metrics` after a reload: each new worker's series counts what moved in to
/// it (and none out), the supervisor counts what its reloads moved (the old workers' series,
/// which counted them out, are gone with them), and the exposition passes promtool.
#[test]
fn metrics_count_the_connections_a_reload_moved() {
    raise_nofile();
    let s = start(&["--metrics", "127.0.0.1:0"]);
    let mut held = hold(s.tcp(), 300);
    reload(&s, 1);
    let body = s.scrape();
    let moved_in = samples(&body, "upecho_connections_moved_in_total");
    assert_eq!(moved_in.len(), 2, "{body}");
    assert!(
        moved_in.iter().all(|(n, _)| n.contains("generation=\"1\"")),
        "{body}"
    );
    assert_eq!(
        moved_in.iter().map(|(_, v)| v).sum::<f64>(),
        300.0,
        "{body}"
    );
    let moved_out = samples(&body, "upecho_connections_moved_out_total");
    assert_eq!(moved_out.len(), 2, "{body}");
    assert!(moved_out.iter().all(|(_, v)| *v == 0.0), "{body}");
    assert_eq!(
        sample(&body, "upecho_reload_moved_connections_total"),
        Some(300.0),
        "{body}"
    );
    assert_eq!(sample(&body, "upecho_reloads_total"), Some(1.0), "{body}");
    for family in [
        "upecho_connections_moved_in_total",
        "upecho_connections_moved_out_total",
        "upecho_reload_moved_connections_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} counter\n"))
                && body.contains(&format!("# HELP {family} ")),
            "{family}: {body}"
        );
    }
    match util::promtool_check(&body) {
        None => eprintln!("SKIP promtool check after a reload: promtool not installed"),
        Some(Ok(says)) => assert!(says.trim().is_empty(), "promtool: {says}\n{body}"),
        Some(Err(says)) => panic!("promtool: {says}\n{body}"),
    }
    all_answer(&mut held, "after the reload");
}

/// The pid of the first-generation worker of `slot`, from its `started` line.
fn first_pid(log: &str, slot: u32) -> i32 {
    let head = format!("worker {slot} (pid ");
    log.lines()
        .filter_map(|l| l.split(&head).nth(1))
        .find_map(|rest| rest.strip_suffix("): started"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no start line of worker {slot} in\n{log}"))
}

/// The first-generation worker that accepted the connection from local port `port`, from the
/// debug log's `worker 1: conn 17 127.0.0.1:PORT: accepted`.
fn accepted_by(log: &str, port: u16) -> Option<u32> {
    let tail = format!(" 127.0.0.1:{port}: accepted");
    log.lines()
        .filter(|l| l.ends_with(&tail))
        .find_map(|l| l.split("] worker ").nth(1)?.split(':').next()?.parse().ok())
}

/// A worker SIGKILLed in the middle of its hand-over loses what it had not sent yet, as a
/// worker killed at any other time would, and nothing else: the supervisor goes on, every
/// connection of the other old worker is served on, each of the killed one's either answers
/// (it had moved) or is closed, no client gets a wrong byte or one twice, and the new
/// generation serves. The kill may land before, during or after the moves: what is asserted
/// holds for any of them.
#[test]
fn a_worker_killed_mid_hand_over_loses_only_what_it_had_not_sent() {
    raise_nofile();
    let mut s = start(&["--max-pending", "32MiB"]);
    let addr = s.tcp();
    // More than the kernel's buffers hold, so a kill before its move costs each a part. Half
    // come before the held ones, half after: a worker moves its connections in the order it
    // took them, so a kill finds the first half moved more often than the second.
    let mut owed = owed(addr, 6, 12 << 20, 19);
    let held = hold(addr, 4000);
    owed.extend(util::held::owed(addr, 6, 12 << 20, 29));
    thread::sleep(Duration::from_millis(500));
    let log = s.stderr();
    let victim = first_pid(&log, 0);
    let slot = |c: &TcpStream| {
        let port = c.local_addr().unwrap().port();
        accepted_by(&log, port).unwrap_or_else(|| panic!("who accepted port {port}?"))
    };
    let (mut doomed, mut spared): (Vec<TcpStream>, Vec<TcpStream>) =
        held.into_iter().partition(|c| slot(c) == 0);
    let (owed_doomed, owed_spared): (Vec<_>, Vec<_>) =
        owed.into_iter().partition(|o| slot(&o.stream) == 0);
    assert!(
        !doomed.is_empty() && !spared.is_empty(),
        "both workers hold some"
    );
    s.signal(libc::SIGHUP);
    assert!(logged_now(&s, "worker 0: handing over"), "{}", s.stderr());
    // Runs kill it at different points of its hand-over.
    jitter(40);
    // SAFETY: kill(2) on a worker of our own server.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(
        s.logged(&format!(
            "(pid {victim}): killed by signal 9 (SIGKILL) during its hand-over"
        )),
        "{}",
        s.stderr()
    );
    all_answer(&mut spared, "the other old worker's, after the kill");
    let _ = collect(owed_spared);
    let mut moved = 0;
    for (i, c) in doomed.iter_mut().enumerate() {
        if answers_or_closed(c, format!("doomed {i}").as_bytes(), "killed worker's held") {
            moved += 1;
        }
    }
    let (mut owed_whole, owed_n) = (0, owed_doomed.len());
    for (i, o) in owed_doomed.into_iter().enumerate() {
        if owed_prefix(o, &format!("killed worker's owed {i}")) {
            owed_whole += 1;
        }
    }
    eprintln!(
        "the killed worker's connections: {moved} of {} held answered, {owed_whole} of {owed_n} \
         owed whole",
        doomed.len()
    );
    // The supervisor goes on: the new generation serves, reloads again, and stops cleanly.
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"after the kill"), b"AFTER THE KILL");
    all_answer(&mut spared, "before a second reload");
    s.signal(libc::SIGHUP);
    assert!(s.logged("reload complete: generation 2"), "{}", s.stderr());
    all_answer(&mut spared, "after a second reload");
    assert_eq!(roundtrip(&mut c, b"still"), b"STILL");
    drop((c, spared, doomed));
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

/// A signal at a random moment of a hand-over changes nothing it should not: a SIGHUP reloads
/// once this one is done, a SIGUSR1 logs the counters, and both lose nothing; a SIGTERM drains
/// (every owed byte delivered, the quiet connections closed, exit 0); a second one cuts the
/// drain short (exit 1), each owed client getting a prefix of what it is owed. Two SIGTERMs
/// close together may arrive as one (signals do not queue): then it is a drain.
#[test]
fn signals_at_random_moments_of_a_hand_over() {
    raise_nofile();
    let cases: [&[i32]; 4] = [
        &[libc::SIGHUP],
        &[libc::SIGUSR1],
        &[libc::SIGTERM],
        &[libc::SIGTERM, libc::SIGTERM],
    ];
    for (case, sigs) in cases.into_iter().enumerate() {
        let mut s = start(&["--max-pending", "32MiB"]);
        let addr = s.tcp();
        let mut owed = owed(addr, 3, 8 << 20, 40 + case as u64);
        let mut held = hold(addr, 2000);
        owed.extend(util::held::owed(addr, 3, 8 << 20, 50 + case as u64));
        thread::sleep(Duration::from_millis(300));
        s.signal(libc::SIGHUP);
        assert!(
            logged_now(&s, "reload complete: generation 1"),
            "{}",
            s.stderr()
        );
        jitter(40);
        for &sig in sigs {
            s.signal(sig);
            jitter(10);
        }
        let what = format!("case {sigs:?}");
        match sigs {
            [libc::SIGHUP] | [libc::SIGUSR1] => {
                if sigs == [libc::SIGUSR1] {
                    assert!(s.logged("SIGUSR1: counters: total"), "{}", s.stderr());
                } else {
                    assert!(s.logged("reload complete: generation 2"), "{}", s.stderr());
                }
                settled(&s);
                all_answer(&mut held, &what);
                let owed = collect(owed);
                drop(owed);
                s.signal(libc::SIGTERM);
                assert_eq!(s.wait_exit(WAIT), Some(0), "{what}: {}", s.stderr());
            }
            _ => {
                let whole: Vec<bool> = owed
                    .into_iter()
                    .enumerate()
                    .map(|(i, o)| owed_prefix(o, &format!("{what}: owed {i}")))
                    .collect();
                all_closed(&mut held, &what);
                let code = s.wait_exit(WAIT);
                let forced = s.stderr().contains("SIGTERM again: the workers exit now");
                assert_eq!(code, Some(i32::from(forced)), "{what}: {}", s.stderr());
                if !forced {
                    assert!(
                        whole.iter().all(|&w| w),
                        "{what}: a drain owes all: {whole:?}"
                    );
                }
            }
        }
        let log = s.stderr();
        assert!(!log.contains("drain timeout"), "{what}: {log}");
        assert!(!log.contains("panicked"), "{what}: {log}");
    }
}

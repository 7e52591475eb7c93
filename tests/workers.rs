//! `upecho serve --workers N`: the supervisor and its workers, as the real binary runs them.
//! Replies with two workers, a killed worker restarted while the port keeps answering, the
//! drain of every worker, start and stop at any moment, capacity over workers, a reload under
//! churn, an upgrade that fails, and the one metrics endpoint with a `worker` label.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use util::{
    ServerProc, WAIT, bin, connect, counter_in, cpu_time, load_report, random_bytes, read_n,
    roundtrip, rss_bytes, samples, scrape, spawn_load_json, upper, wait_until,
};

/// Every `worker N (pid P...): ready` line so far: (slot, pid).
fn ready_workers(log: &str) -> Vec<(u32, u32)> {
    log.lines()
        .filter_map(|l| {
            // Whatever module logs it: the line's target is not the point.
            let rest = l.split("] worker ").nth(1)?;
            if !rest.contains("): ready") {
                return None;
            }
            let slot = rest.split(' ').next()?.parse().ok()?;
            let pid = rest.split("(pid ").nth(1)?;
            let pid = pid.split([')', ',']).next()?.parse().ok()?;
            Some((slot, pid))
        })
        .collect()
}

/// The counter `name` in the supervisor's `final counters: worker SLOT ...` line of each worker
/// of the last set, by slot.
fn final_per_worker(log: &str, name: &str) -> Vec<(u32, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("] final counters: worker ").nth(1)?;
            let slot = rest.split(' ').next()?.parse().ok()?;
            Some((slot, counter_in(rest, name)?))
        })
        .collect()
}

/// Each worker's `/metrics` sample `name` now, by its `worker` label (the series of every
/// worker serving, summed where a slot has two generations).
fn per_worker_metric(s: &ServerProc, name: &str) -> Vec<(String, f64)> {
    samples(&s.scrape(), name)
        .into_iter()
        .map(|(series, v)| {
            let slot = series
                .split("worker=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no worker label in {series}"));
            (slot.to_string(), v)
        })
        .collect()
}

fn total_line(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("final counters: total:"))
        .unwrap_or_else(|| panic!("no total line in\n{log}"))
        .to_string()
}

/// Waits (bounded) until `pid` no longer runs (it may be a zombie of a process we do not reap:
/// that counts as gone).
fn gone(pid: u32) -> bool {
    wait_until(
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')),
        },
    )
}

fn start(workers: &str, extra: &[&str]) -> ServerProc {
    let mut args = vec!["--workers", workers];
    args.extend_from_slice(extra);
    let s = ServerProc::start(&args);
    // Logged before the listening lines (the log is read by another thread, so wait for it).
    assert!(
        s.logged(&format!("{workers} workers ready")),
        "{}",
        s.stderr()
    );
    assert_eq!(
        ready_workers(&s.stderr()).len(),
        workers.parse::<usize>().unwrap(),
        "{}",
        s.stderr()
    );
    s
}

#[test]
fn two_workers_answer_tcp_and_udp_and_share_the_connections() {
    let mut s = start("2", &["--metrics", "127.0.0.1:0"]);
    for i in 0..40u64 {
        let mut c = s.connect();
        let data = random_bytes(3000 + i as usize, i);
        assert!(roundtrip(&mut c, &data) == upper(&data), "connection {i}");
    }
    for i in 0..20u64 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(WAIT)).unwrap();
        let data = random_bytes(500, 100 + i);
        u.send_to(&data, s.udp()).unwrap();
        let mut buf = [0u8; 1024];
        let (n, from) = u.recv_from(&mut buf).unwrap();
        assert_eq!(from, s.udp(), "the reply comes from the address asked");
        assert!(buf[..n] == upper(&data)[..], "datagram {i}");
    }
    let sum = |v: &[(String, f64)]| v.iter().map(|(_, n)| n).sum::<f64>();
    let accepted = per_worker_metric(&s, "upecho_connections_accepted_total");
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    // Random steering: each worker gets some of 40 (both missing out is a 1-in-2^39 chance).
    assert!(accepted.iter().all(|&(_, n)| n > 0.0), "{accepted:?}");
    assert_eq!(sum(&accepted), 40.0, "{accepted:?}");
    let datagrams = per_worker_metric(&s, "upecho_udp_received_datagrams_total");
    assert_eq!(sum(&datagrams), 20.0, "{datagrams:?}");
    let refused = per_worker_metric(&s, "upecho_connections_refused_total");
    assert_eq!(sum(&refused), 0.0, "{refused:?}");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    // The supervisor's last words agree, worker by worker and in total.
    let log = s.stderr();
    let mut last: Vec<(String, f64)> = final_per_worker(&log, "accepted")
        .into_iter()
        .map(|(slot, n)| (slot.to_string(), n as f64))
        .collect();
    let mut now = accepted.clone();
    last.sort_by(|a, b| a.0.cmp(&b.0));
    now.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(last, now, "{log}");
    let total = total_line(&log);
    assert_eq!(counter_in(&total, "accepted"), Some(40), "{total}");
    assert_eq!(counter_in(&total, "in"), Some(20), "{total}");
    assert_eq!(counter_in(&total, "refused"), Some(0), "{total}");
}

#[test]
fn a_killed_worker_is_restarted_and_the_port_keeps_answering() {
    let mut s = start("2", &[]);
    let held: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut c = s.connect();
            assert_eq!(roundtrip(&mut c, b"before"), b"BEFORE", "held {i}");
            c
        })
        .collect();
    let (slot, victim) = ready_workers(&s.stderr())[0];
    // SAFETY: kill(2) on a pid the server logged as its worker.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    // At once, while the replacement may not be up: every new client is answered.
    for i in 0..50 {
        let mut c = s.connect();
        assert_eq!(roundtrip(&mut c, b"during"), b"DURING", "new client {i}");
    }
    let died = format!("worker {slot} (pid {victim}): killed by signal 9 (SIGKILL)");
    assert!(s.logged(&died), "{}", s.stderr());
    assert!(s.stderr().contains("restarting in"), "{}", s.stderr());
    // Only the killed worker's connections are lost; the other's are served on.
    let mut survivors = 0;
    for mut c in held {
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 5];
        if c.write_all(b"after").is_ok() && c.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"AFTER");
            survivors += 1;
        }
    }
    assert!(
        (1..20).contains(&survivors),
        "{survivors} of 20 survived: the other worker's, not none and not all"
    );
    // The replacement serves new clients.
    let mut replacement = None;
    assert!(
        wait_until(|| {
            replacement = ready_workers(&s.stderr())
                .iter()
                .find(|&&(sl, pid)| sl == slot && pid != victim)
                .map(|&(_, pid)| pid);
            replacement.is_some()
        }),
        "no replacement: {}",
        s.stderr()
    );
    let replacement = replacement.unwrap();
    for i in 0..40 {
        let mut c = s.connect();
        assert_eq!(roundtrip(&mut c, b"later"), b"LATER", "client {i}");
    }
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let log = s.stderr();
    let line = log
        .lines()
        .find(|l| {
            l.contains(&format!(
                "final counters: worker {slot} (pid {replacement})"
            ))
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert!(counter_in(line, "accepted").unwrap() > 0, "{line}");
}

/// Flags for a server that may owe clients a lot for a long drain, and tells how much it took.
const OWING: &[&str] = &[
    "--drain-timeout",
    "30",
    "--max-pending",
    "64MiB",
    "--metrics",
    "127.0.0.1:0",
];

/// `n` clients that have each sent 2 MiB (of `seed`'s bytes) and not read the reply yet, so the
/// server owes them a lot; and those bytes. Returns once the workers have taken all of it (their
/// `/metrics`: `s` runs with `--metrics`).
fn owed_clients(s: &ServerProc, n: usize, seed: u64) -> (Vec<TcpStream>, Vec<u8>) {
    let data = random_bytes(2 << 20, seed);
    let mut clients: Vec<TcpStream> = (0..n).map(|_| s.connect()).collect();
    for c in &mut clients {
        c.write_all(&data).unwrap();
    }
    let want = (n * data.len()) as f64;
    let received = || -> f64 {
        per_worker_metric(s, "upecho_received_bytes_total")
            .iter()
            .map(|(_, v)| v)
            .sum()
    };
    assert!(wait_until(|| received() >= want), "{}", s.stderr());
    assert_eq!(received(), want, "{}", s.stderr());
    (clients, data)
}

/// Every one of `clients` gets all it is owed, then a clean close once it half-closes.
fn collect_owed(clients: &mut [TcpStream], data: &[u8]) {
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(read_n(c, data.len()) == upper(data), "client {i}");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0, "closed after the drain");
    }
}

#[test]
fn sigterm_drains_every_worker_and_exits_zero() {
    let mut s = start("2", OWING);
    // Clients that are owed a lot when the signal comes, spread over both workers.
    let (mut clients, data) = owed_clients(&s, 8, 5);
    s.signal(libc::SIGTERM);
    collect_owed(&mut clients, &data);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let log = s.stderr();
    assert_eq!(
        log.matches("drained, exited with status 0").count(),
        2,
        "{log}"
    );
    let total = total_line(&log);
    assert_eq!(counter_in(&total, "accepted"), Some(8), "{total}");
    assert_eq!(
        counter_in(&total, "bytes_out"),
        Some(8 * data.len() as u64),
        "{total}"
    );
}

/// Under `nohup` (SIGHUP, and a background job's SIGINT and SIGQUIT, ignored) the supervisor
/// and its workers leave them ignored: no reload, no stop; SIGTERM drains every worker.
#[test]
fn stop_signals_inherited_ignored_stay_ignored_by_supervisor_and_workers() {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .env("RUST_LOG", "debug");
    util::ignore_stop_signals(&mut cmd);
    let mut s = ServerProc::spawn(cmd, true, true);
    assert!(s.logged("2 workers ready"), "{}", s.stderr());
    assert!(s.stderr().contains("inherited ignored"), "{}", s.stderr());
    let workers: Vec<u32> = ready_workers(&s.stderr()).iter().map(|w| w.1).collect();
    assert_eq!(workers.len(), 2, "{}", s.stderr());
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        s.signal(sig);
        // The workers inherited the dispositions: signalled directly, they go on too.
        for &w in &workers {
            // SAFETY: kill(2) on the supervisor's child, which this test started.
            unsafe { libc::kill(w as i32, sig) };
        }
        let mut c = s.connect();
        assert_eq!(roundtrip(&mut c, b"on"), b"ON", "after signal {sig}");
    }
    s.signal(libc::SIGUSR1);
    assert!(s.logged("SIGUSR1: counters: total"), "{}", s.stderr());
    // Time passing is the point: nothing must happen, so no event can be waited for; a stop or
    // reload that was acted on would have said so well within this.
    thread::sleep(Duration::from_millis(300));
    let log = s.stderr();
    assert!(
        !log.contains("reloading") && !log.contains("shutting down"),
        "{log}"
    );
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    for w in workers {
        assert!(gone(w), "worker {w} outlived the supervisor");
    }
}

/// A stop signal while a reload's previous workers are still draining leaves them draining:
/// their clients get every byte they are owed, and the server exits 0.
#[test]
fn a_stop_during_a_reloads_drain_lets_the_old_workers_finish() {
    let mut s = start("2", OWING);
    let (mut clients, data) = owed_clients(&s, 4, 9);
    s.signal(libc::SIGHUP);
    assert!(s.logged("reload complete: generation 1"), "{}", s.stderr());
    // The old workers are draining these clients, which are not reading yet.
    s.signal(libc::SIGTERM);
    assert!(s.logged("SIGTERM: shutting down"), "{}", s.stderr());
    collect_owed(&mut clients, &data);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let log = s.stderr();
    assert!(!log.contains("again"), "{log}");
    assert_eq!(
        log.matches("drained, exited with status 0").count(),
        4,
        "{log}"
    );
}

/// A stop signal at any moment of the start, from the first millisecond: blocked from the
/// start of `main` until the handlers are in place, it is always handled (drain, exit 0);
/// only one that comes before `main` runs at all may kill the process, which has then started
/// nothing. No worker is ever killed by the forwarded signal (it waits, blocked, until the
/// worker's handlers are in place), and none outlives the supervisor. Half the starts are
/// signalled after a delay (0 to 3 ms), half the moment the first worker is started, in the
/// window between the fork and the worker's handlers.
#[test]
fn a_stop_signal_at_any_moment_of_the_start_is_handled() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    for i in 0..24u64 {
        let sig = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT][i as usize % 3];
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The default actions, whatever this test inherited (a background job's SIGINT and
        // SIGQUIT are ignored, and the server would leave them so).
        util::default_signal_actions(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err_pipe = child.stderr.take().unwrap();
        let reader = thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("): started") {
                    let _ = tx.send(());
                }
                all += &line;
                all.push('\n');
            }
            all
        });
        if i % 2 == 0 {
            // Time passing is the point: a signal 0 to 3 ms into the start.
            thread::sleep(Duration::from_micros(i * 125));
        } else {
            rx.recv_timeout(WAIT).expect("a worker started");
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let mut status = None;
        if !wait_until(|| {
            status = child.try_wait().unwrap();
            status.is_some()
        }) {
            // Not left behind: its workers follow it (their parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
            panic!("start {i}: did not exit");
        }
        let status = status.unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let err = reader.join().unwrap();
        match (status.code(), status.signal()) {
            (Some(0), _) => {}
            (None, Some(s)) if s == sig && i % 2 == 0 => {
                assert!(
                    out.is_empty() && err.is_empty(),
                    "start {i}: died late: {err}"
                );
            }
            other => panic!("start {i}: {other:?}\n{err}"),
        }
        assert!(!err.contains("killed by signal"), "start {i}: {err}");
        for pid in err.lines().filter_map(|l| {
            let rest = l.split("] worker ").nth(1)?;
            rest.split("(pid ")
                .nth(1)?
                .split(')')
                .next()?
                .parse::<u32>()
                .ok()
        }) {
            assert!(gone(pid), "start {i}: worker {pid} outlived the supervisor");
        }
    }
}

#[test]
fn a_signal_right_after_the_listening_lines_drains_every_worker() {
    for (i, sig) in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let mut s = ServerProc::start(&["--workers", "2"]);
        s.signal(sig);
        assert_eq!(s.wait_exit(WAIT), Some(0), "start {i}: {}", s.stderr());
        assert!(!s.stderr().contains("killed by signal"), "{}", s.stderr());
        assert!(s.stderr().contains("final counters: total"));
    }
}

/// Connections held, each checked with a round trip while all the others stay open.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = connect(addr);
            let msg = format!("client {i}");
            assert_eq!(
                roundtrip(&mut c, msg.as_bytes()),
                msg.to_uppercase().as_bytes(),
                "client {i} of {n}"
            );
            c
        })
        .collect()
}

#[test]
fn a_connection_is_refused_only_when_every_worker_is_full() {
    let mut s = start(
        "2",
        &["--max-connections", "100", "--metrics", "127.0.0.1:0"],
    );
    // 150 clients over two workers of 100: the kernel's hash alone would put more than 100 on
    // one worker now and then; 200 would nearly always. Every one is served.
    let mut held = hold(s.tcp(), 150);
    held.extend(hold(s.tcp(), 50));
    // Both are full now: the next is refused (closed at once), by one worker, counted.
    let mut extra = s.connect();
    let _ = extra.write_all(b"no room");
    let mut buf = [0u8; 8];
    assert!(
        matches!(extra.read(&mut buf), Ok(0) | Err(_)),
        "the 201st is refused"
    );
    // One leaves, and a new client takes its place (the slot's worker has room again).
    drop(held.pop());
    assert!(
        wait_until(|| {
            let mut c = connect(s.tcp());
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let room = c.write_all(b"room").is_ok() && matches!(c.read(&mut buf[..4]), Ok(4));
            if room {
                assert_eq!(&buf[..4], b"ROOM");
                held.push(c);
            }
            room
        }),
        "room never came back"
    );
    let refused = per_worker_metric(&s, "upecho_connections_refused_total");
    assert!(
        refused.iter().map(|(_, n)| n).sum::<f64>() >= 1.0,
        "{refused:?}"
    );
    let per = per_worker_metric(&s, "upecho_connections_accepted_total");
    assert_eq!(per.len(), 2, "{per:?}");
    assert!(per.iter().all(|&(_, n)| n <= 101.0), "{per:?}");
    drop(held);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

#[test]
fn load_server_pid_of_a_supervisor_counts_its_workers() {
    // The supervisor itself only waits; the CPU and memory are its workers'.
    let s = start("2", &["--tcp-only"]);
    let addr = s.tcp().to_string();
    let pid = s.pid().to_string();
    let (code, v, err) = load_report(spawn_load_json(&[
        &addr,
        "-c",
        "50",
        "-t",
        "2",
        "--warmup",
        "0.5",
        "--server-pid",
        &pid,
    ]));
    assert_eq!(code, 0, "{err}");
    let cpu = v["server"]["cpu_s"].as_f64().expect("server cpu_s");
    let supervisor = cpu_time(s.pid()).as_secs_f64();
    // Some tens of thousands of messages went through the workers in 2 s.
    assert!(v["messages"].as_u64().unwrap() > 1000, "{v}");
    assert!(
        cpu > 0.05 && cpu > 5.0 * supervisor,
        "server cpu {cpu} s over the window, supervisor alone {supervisor} s in all"
    );
    let rss = v["server"]["rss_bytes"].as_u64().expect("server rss");
    assert!(
        rss > rss_bytes(s.pid()) * 2,
        "{rss} B for the supervisor and two workers, {} B the supervisor alone",
        rss_bytes(s.pid())
    );
}

#[test]
fn a_reload_under_churn_refuses_resets_and_drops_nothing() {
    let mut s = start("2", &[]);
    let before = ready_workers(&s.stderr());
    let addr = s.tcp().to_string();
    let load = spawn_load_json(&[
        &addr, "--mode", "churn", "-c", "8", "-t", "5", "--warmup", "0.5",
    ]);
    for n in 1..=2 {
        // Time passing is the point: each reload falls inside the load's 5 s window, one third
        // and two thirds of the way in, while connections come and go.
        thread::sleep(Duration::from_millis(1500));
        s.signal(libc::SIGHUP);
        assert!(
            s.logged(&format!("reload complete: generation {n} serving")),
            "{}",
            s.stderr()
        );
    }
    let (code, v, err) = load_report(load);
    assert_eq!(
        v["errors"]["total"],
        0,
        "{v:#}\n{err}\nserver:\n{}",
        s.stderr()
    );
    assert_eq!(v["mismatches"], 0, "{v:#}");
    assert_eq!(code, 0, "{v:#}");
    assert!(v["connects"].as_u64().unwrap() > 100, "{v:#}");
    let after = ready_workers(&s.stderr());
    assert_eq!(after.len(), 6, "two generations more: {after:?}");
    assert!(before.iter().all(|b| !after[4..].contains(b)));
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    let log = s.stderr();
    assert!(log.contains("; 0 restart(s), 2 reload(s)"), "{log}");
    let total = total_line(&log);
    assert_eq!(counter_in(&total, "reset"), Some(0), "{total}");
    assert_eq!(counter_in(&total, "refused"), Some(0), "{total}");
}

/// The upgrade path: a reload runs the binary on disk. One that does not start is abandoned
/// and the running workers go on; a good one then takes over.
#[test]
fn a_reload_to_a_binary_that_fails_keeps_the_running_workers() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("upecho");
    std::fs::copy(bin(), &exe).unwrap();
    let exe_str = exe.to_str().unwrap().to_string();
    let mut s = ServerProc::start_raw(
        &["serve", "--listen", "127.0.0.1:0", "--workers", "2"],
        // start_raw runs `sh -c 'PREFIX; exec "$0" "$@"'`: the prefix execs the copy instead.
        Some(&format!("exec {exe_str} \"$@\"")),
    );
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'not upecho' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &exe).unwrap();
    s.signal(libc::SIGHUP);
    assert!(s.logged("reload abandoned"), "{}", s.stderr());
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"old ones"), b"OLD ONES");
    // The good binary back in place: the next reload takes over.
    std::fs::copy(bin(), dir.path().join("good")).unwrap();
    std::fs::rename(dir.path().join("good"), &exe).unwrap();
    s.signal(libc::SIGHUP);
    assert!(s.logged("reload complete: generation 2"), "{}", s.stderr());
    assert_eq!(
        roundtrip(&mut c, b"still"),
        b"STILL",
        "held across the reload"
    );
    drop(c);
    let mut c = s.connect();
    assert_eq!(roundtrip(&mut c, b"new ones"), b"NEW ONES");
    drop(c);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

#[test]
fn one_metrics_endpoint_has_a_series_per_worker() {
    let s = start("2", &["--metrics", "127.0.0.1:0"]);
    let m = s.metrics_addr();
    for _ in 0..30 {
        let mut c = s.connect();
        assert_eq!(roundtrip(&mut c, b"m"), b"M");
    }
    let body = scrape(m);
    let accepted = samples(&body, "upecho_connections_accepted_total");
    let names: Vec<&str> = accepted.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "upecho_connections_accepted_total{worker=\"0\",generation=\"0\"}",
            "upecho_connections_accepted_total{worker=\"1\",generation=\"0\"}"
        ],
        "{body}"
    );
    // The scrape asks the workers, so it counts what they have done, not a stale copy.
    assert_eq!(accepted.iter().map(|(_, v)| v).sum::<f64>(), 30.0, "{body}");
    assert_eq!(
        samples(&body, "upecho_workers"),
        [("upecho_workers".into(), 2.0)]
    );
    assert_eq!(samples(&body, "upecho_max_connections").len(), 2, "{body}");
    match util::promtool_check(&body) {
        None => eprintln!("SKIP promtool check of the workers' exposition: promtool not installed"),
        Some(Ok(says)) => assert!(says.trim().is_empty(), "promtool: {says}\n{body}"),
        Some(Err(says)) => panic!("promtool: {says}\n{body}"),
    }
}

#[test]
fn bad_worker_flags_say_so() {
    let out = Command::new(bin())
        .args(["serve", "--workers", "5000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The worker's own flag, by hand: one line, no serving on whatever descriptor 3 is.
    let out = Command::new(bin())
        .args(["serve", "--worker-slot", "0", "--worker-sockets", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --workers N"), "{err}");
}

/// Under socket activation the workers share the sockets systemd passed (here passed by hand,
/// as `sd_listen_fds` reads them): no steering is possible, so this is the hand-off alone at
/// work. Two workers of 5 serve 10 held clients, and the service manager hears from the
/// supervisor only: READY=1 once every worker is ready, STOPPING=1 at the drain.
#[test]
fn workers_share_passed_sockets_and_a_full_one_hands_connections_on() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let (t, u) = (tcp.as_raw_fd(), udp.as_raw_fd());
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be upecho's own pid: the shell's, which exec keeps.
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=2; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(["serve", "--workers", "2", "--max-connections", "5"])
        .args(["--metrics", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("RUST_LOG", "info");
    // SAFETY: dup2 in the child before exec, on descriptors this test owns.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (they may be 3 and 4 already, with close-on-exec).
            let (t2, u2) = (
                libc::fcntl(t, libc::F_DUPFD_CLOEXEC, 100),
                libc::fcntl(u, libc::F_DUPFD_CLOEXEC, 100),
            );
            if t2 < 0 || u2 < 0 || libc::dup2(t2, 3) < 0 || libc::dup2(u2, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut s = ServerProc::spawn(cmd, true, true);
    drop((tcp, udp));
    assert_eq!((s.tcp().port(), s.udp().port()), (port, port));
    let msg = |sock: &UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = msg(&notify);
    assert!(ready.contains("READY=1"), "{ready}");
    let held = hold(s.tcp(), 10);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(WAIT)).unwrap();
    u.send_to(b"shared", s.udp()).unwrap();
    let mut buf = [0u8; 16];
    let n = u.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"SHARED");
    let per = per_worker_metric(&s, "upecho_connections_accepted_total");
    assert_eq!(per.iter().map(|&(_, n)| n).sum::<f64>(), 10.0, "{per:?}");
    assert!(per.iter().all(|&(_, n)| n <= 5.0), "{per:?}");
    let refused = per_worker_metric(&s, "upecho_connections_refused_total");
    assert!(refused.iter().all(|&(_, n)| n == 0.0), "{refused:?}");
    s.signal(libc::SIGTERM);
    let stopping = msg(&notify);
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    drop(held);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    notify
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(notify.recv(&mut buf).is_err(), "nothing from the workers");
}

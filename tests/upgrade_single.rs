//! A single server's upgrade (SIGUSR2), against the real binary: the binary on disk starts
//! with the sockets and takes every established connection over (held ones answer
//! afterwards, every owed byte arrives once and in order, half-closed ones get the rest and
//! then EOF); the old process exits; `--pid-file` names the new one. A new binary that fails
//! leaves everything with the old process; one of another hand-over format gets the sockets
//! while the old process drains; no datagram is lost across upgrades.
//!
//! The old process of each upgrade is the parent of the new one and exits when done, so the
//! new one is an orphan: the test makes itself a child subreaper so that the orphans become
//! its children, to be waited for and, if a test fails, killed by pid.

mod util;

use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use util::held::{
    Exe, all_answer, collect, collect_half_closed, half_closed, hold, logged_times, owed,
    raise_nofile,
};
use util::{ServerProc, WAIT, counter_in, upper, wait_until_within};

/// The processes of one test after the first: successors, children of this test once their
/// parent has exited. Killed (by pid, only while unreaped children of this test) on drop.
struct Successors {
    pid_file: PathBuf,
    _dir: tempfile::TempDir,
    pids: Vec<u32>,
}

impl Successors {
    fn new() -> Successors {
        // SAFETY: prctl with an integer argument.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let dir = tempfile::tempdir().unwrap();
        Successors {
            pid_file: dir.path().join("upecho.pid"),
            _dir: dir,
            pids: Vec::new(),
        }
    }

    fn pid_file(&self) -> &str {
        self.pid_file.to_str().unwrap()
    }

    fn current(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    /// Waits for successor `pid` (a child of this test by now) to exit; its exit code.
    fn wait_exit(&mut self, pid: u32, within: Duration) -> Option<i32> {
        let mut code = None;
        let done = wait_until_within(within, || match reap(pid) {
            Reaped::Exited(c) => {
                code = c;
                true
            }
            Reaped::Running | Reaped::NotOurs => false,
        });
        assert!(done, "pid {pid} did not exit within {within:?}");
        self.pids.retain(|&p| p != pid);
        code
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        // Those named by the pid file, and any other process of this test's server (a
        // successor started by a failed upgrade, orphaned when a test panics): once its parent
        // is gone it is a child of this test (the subreaper), found by its --pid-file argument.
        // Killing one orphans its own successor, found in the next round.
        let mut pids = self.pids.clone();
        for _ in 0..8 {
            pids.extend(own_children_with(self.pid_file()));
            if pids.is_empty() {
                break;
            }
            for pid in pids.drain(..) {
                if let Reaped::Running = reap(pid) {
                    // SAFETY: kill(2) on a child of this test that it has not reaped: its pid
                    // is still its own.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    let mut status = 0;
                    // SAFETY: waitpid on that same child.
                    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
                }
            }
        }
    }
}

/// This test process's children whose command line has `arg` (its servers have their
/// --pid-file's path there).
fn own_children_with(arg: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

enum Reaped {
    Running,
    Exited(Option<i32>),
    /// Not (yet) a child of this test: its parent still runs.
    NotOurs,
}

fn reap(pid: u32) -> Reaped {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on one pid; it writes the status we pass.
    match unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) } {
        0 => Reaped::Running,
        p if p == pid as libc::pid_t => {
            Reaped::Exited(libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)))
        }
        _ => Reaped::NotOurs,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a server this test started (the first, or a successor named by the
    // pid file that has not exited: its parent, or this test as subreaper, has not reaped it).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Upgrade `n` (1-based): SIGUSR2 to the current process, then wait until the new one has
/// taken over (the pid file names it) and the old one has exited with status 0.
fn upgrade(s: &mut ServerProc, procs: &mut Successors, n: usize) {
    let old = procs.current().expect("a pid file");
    signal(old, libc::SIGUSR2);
    assert!(
        logged_times(s, "upgrade complete: took over", n),
        "{}",
        s.stderr()
    );
    let mut new = None;
    assert!(
        wait_until_within(WAIT, || {
            new = procs.current().filter(|&p| p != old);
            new.is_some()
        }),
        "the pid file still names {old}; {}",
        s.stderr()
    );
    procs.pids.extend(new);
    if old == s.child.id() {
        let mut code = None;
        assert!(
            wait_until_within(WAIT, || {
                code = s.child.try_wait().unwrap();
                code.is_some()
            }),
            "{}",
            s.stderr()
        );
        assert_eq!(code.and_then(|c| c.code()), Some(0), "{}", s.stderr());
    } else {
        assert_eq!(procs.wait_exit(old, WAIT), Some(0), "{}", s.stderr());
    }
}

/// Stops the current process with SIGTERM; its exit code.
fn stop(procs: &mut Successors) -> Option<i32> {
    let pid = procs.current().expect("a pid file");
    signal(pid, libc::SIGTERM);
    procs.wait_exit(pid, WAIT)
}

/// Every `final counters` line in the log (one per process).
fn final_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("final counters:"))
        .collect()
}

/// (b) 1,000 idle held connections, 100 owed 2 MiB each and 4 half-closed mid-reply survive
/// three upgrades in a row.
#[test]
fn held_owed_and_half_closed_connections_survive_three_upgrades() {
    raise_nofile();
    let mut procs = Successors::new();
    let mut s = ServerProc::start(&[
        "--pid-file",
        procs.pid_file(),
        "--drain-timeout",
        "30",
        "--max-pending",
        "8MiB",
    ]);
    let addr = s.tcp();
    assert_eq!(procs.current(), Some(s.child.id()));
    let mut held = hold(addr, 1000);
    let owed = owed(addr, 100, 2 << 20, 21);
    let mut halves = half_closed(addr, 4, 4 << 20, 31);
    // Time for the server to take in what it takes (the rest waits in the writers).
    thread::sleep(Duration::from_millis(500));
    for n in 1..=3 {
        upgrade(&mut s, &mut procs, n);
    }
    all_answer(&mut held, "after three upgrades");
    let mut owed = collect(owed);
    all_answer(&mut owed, "owed, after");
    collect_half_closed(&mut halves);
    let mut fresh = util::connect(addr);
    assert_eq!(util::roundtrip(&mut fresh, b"new"), b"NEW");
    drop((held, owed, halves, fresh));
    assert_eq!(stop(&mut procs), Some(0), "{}", s.stderr());
    let log = s.stderr();
    let lines = final_lines(&log);
    assert_eq!(lines.len(), 4, "{log}");
    for l in &lines {
        for zero in ["reset", "errors", "idle_closed", "refused"] {
            assert_eq!(counter_in(l, zero), Some(0), "{zero}: {l}");
        }
    }
    let sum = |name| {
        lines
            .iter()
            .filter_map(|l| counter_in(l, name))
            .sum::<u64>()
    };
    assert_eq!(sum("accepted"), 1105, "{log}");
    assert_eq!(sum("moved_out"), 3 * 1104, "{log}");
    assert_eq!(sum("moved_in"), 3 * 1104, "{log}");
    assert!(!log.contains("drain timeout"), "{log}");
    assert!(
        !procs.pid_file.exists(),
        "the last process removes its pid file"
    );
}

/// (d) A new binary that fails to start leaves every connection, and the pid file, with the
/// old process, which serves on and can still be upgraded later.
#[test]
fn a_new_binary_that_fails_leaves_everything_with_the_old_process() {
    raise_nofile();
    let mut procs = Successors::new();
    let exe = Exe::copy();
    let mut s = exe.start_single(&["--pid-file", procs.pid_file()]);
    let addr = s.tcp();
    let mut held = hold(addr, 200);
    let owed = owed(addr, 10, 2 << 20, 41);
    thread::sleep(Duration::from_millis(300));
    exe.script("echo 'not upecho' >&2\nexit 3");
    s.signal(libc::SIGUSR2);
    assert!(s.logged("upgrade abandoned"), "{}", s.stderr());
    assert!(s.logged("exited with status 3"), "{}", s.stderr());
    all_answer(&mut held, "after a failed upgrade");
    let mut owed = collect(owed);
    all_answer(&mut owed, "owed, after a failed upgrade");
    assert_eq!(procs.current(), Some(s.child.id()));
    // The binary fixed, the next upgrade goes through.
    exe.script(&format!("exec {} \"$@\"", util::bin()));
    upgrade(&mut s, &mut procs, 1);
    all_answer(&mut held, "after the upgrade that worked");
    drop((held, owed));
    assert_eq!(stop(&mut procs), Some(0), "{}", s.stderr());
}

/// Version skew: a new binary that cannot read the old one's hand-over format gets the
/// sockets and serves new connections; the old process drains its own (every owed byte
/// delivered, even when it is sent a stop signal meanwhile), and the log says why.
#[test]
fn a_new_binary_of_another_hand_over_format_gets_the_sockets_and_the_old_drains() {
    raise_nofile();
    let mut procs = Successors::new();
    let exe = Exe::copy();
    let mut s = exe.start_single(&["--pid-file", procs.pid_file()]);
    let addr = s.tcp();
    let owed = owed(addr, 10, 2 << 20, 51);
    thread::sleep(Duration::from_millis(300));
    exe.script(&format!(
        "UPECHO_HANDOVER_VERSION=2 exec {} \"$@\"",
        util::bin()
    ));
    let old = s.child.id();
    s.signal(libc::SIGUSR2);
    assert!(
        s.logged("reads hand-over format 2, this one writes 1"),
        "{}",
        s.stderr()
    );
    // A stop signal to the old process now is its first: it goes on draining (a second
    // would force it).
    s.signal(libc::SIGTERM);
    assert!(s.logged("SIGTERM: already leaving"), "{}", s.stderr());
    let mut owed = collect(owed);
    // The old process drains them: their replies are complete, then they are closed.
    for (i, c) in owed.iter_mut().enumerate() {
        assert_eq!(c.read(&mut [0u8; 1]).unwrap_or(0), 0, "owed {i}: closed");
    }
    let mut code = None;
    assert!(wait_until_within(WAIT, || {
        code = s.child.try_wait().unwrap();
        code.is_some()
    }));
    assert_eq!(code.and_then(|c| c.code()), Some(0), "{}", s.stderr());
    let new = procs.current().unwrap();
    assert_ne!(new, old);
    procs.pids.push(new);
    let mut fresh = util::connect(addr);
    assert_eq!(util::roundtrip(&mut fresh, b"skew"), b"SKEW");
    assert!(!s.stderr().contains("moved_out=1"), "{}", s.stderr());
    drop(fresh);
    assert_eq!(stop(&mut procs), Some(0), "{}", s.stderr());
}

/// UDP across upgrades: the sockets are inherited, so a client sending all along gets an
/// answer to every datagram.
#[test]
fn no_datagram_is_lost_across_upgrades() {
    let mut procs = Successors::new();
    let mut s = ServerProc::start(&["--pid-file", procs.pid_file()]);
    let udp = s.udp();
    let sender = thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answered = 0;
        for i in 0..3000 {
            assert!(Instant::now() < deadline, "too slow");
            let msg = format!("dgram {i}");
            sock.send_to(msg.as_bytes(), udp).unwrap();
            let (n, _) = sock.recv_from(&mut buf).expect("a reply within 5 s");
            assert_eq!(&buf[..n], upper(msg.as_bytes()).as_slice(), "reply {i}");
            answered += 1;
            thread::sleep(Duration::from_micros(500));
        }
        answered
    });
    for n in 1..=2 {
        thread::sleep(Duration::from_millis(400));
        upgrade(&mut s, &mut procs, n);
    }
    assert_eq!(sender.join().unwrap(), 3000);
    assert_eq!(stop(&mut procs), Some(0), "{}", s.stderr());
}

/// Signals in the first moments of an upgrade: a second SIGUSR2 is refused while one is under
/// way, and SIGTERM to the old process while its successor starts stops the upgrade; the old
/// process drains and exits 0, and nothing is left running.
#[test]
fn a_stop_while_the_successor_starts_abandons_the_upgrade() {
    let procs = Successors::new();
    let exe = Exe::copy();
    let mut s = exe.start_single(&["--pid-file", procs.pid_file()]);
    let mut c = util::connect(s.tcp());
    assert_eq!(util::roundtrip(&mut c, b"x"), b"X");
    // A successor that takes its time to start.
    exe.script(&format!("sleep 2; exec {} \"$@\"", util::bin()));
    s.signal(libc::SIGUSR2);
    assert!(
        s.logged("SIGUSR2: upgrading: started pid"),
        "{}",
        s.stderr()
    );
    s.signal(libc::SIGUSR2);
    assert!(
        s.logged("an upgrade is already under way"),
        "{}",
        s.stderr()
    );
    s.signal(libc::SIGTERM);
    assert!(s.logged("upgrade abandoned"), "{}", s.stderr());
    drop(c);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
    assert!(!procs.pid_file.exists());
}

/// One signal upgrades in both modes: under `--workers`, SIGUSR2 to the supervisor reloads
/// (moving every connection, as SIGHUP does), and a worker sent SIGUSR2 itself refuses and
/// names its supervisor.
#[test]
fn sigusr2_reloads_under_workers_and_a_worker_refuses_it() {
    let mut s = ServerProc::start(&["--workers", "2", "--drain-timeout", "30"]);
    let mut held = hold(s.tcp(), 20);
    // The log is read in the background: wait for the line, not just the listening lines.
    assert!(s.logged("worker 0 (pid "), "{}", s.stderr());
    let log = s.stderr();
    let worker: u32 = log
        .lines()
        .find_map(|l| l.split("worker 0 (pid ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no worker pid in\n{log}"));
    // SAFETY: kill(2) on a worker of the supervisor this test started, alive (it serves).
    unsafe { libc::kill(worker as libc::pid_t, libc::SIGUSR2) };
    assert!(
        s.logged("a worker is upgraded by its supervisor"),
        "{}",
        s.stderr()
    );
    s.signal(libc::SIGUSR2);
    assert!(
        s.logged("SIGUSR2: reloading: starting generation 1"),
        "{}",
        s.stderr()
    );
    assert!(
        s.logged("reload complete: generation 1 serving"),
        "{}",
        s.stderr()
    );
    assert!(logged_times(&s, ": handed over ", 2), "{}", s.stderr());
    all_answer(&mut held, "after SIGUSR2");
    drop(held);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr());
}

//! Shared helpers for the integration tests, one of each: start the real `upecho` binary on
//! loopback port 0, read its `listening` lines back, and make sure it is gone when the test ends;
//! wait on a condition instead of sleeping; read its counters from `/metrics` or a load
//! report's JSON instead of grepping logs; run `upecho load` bounded in time.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

pub mod held;

/// Generous bound for anything a test waits on: tests run in parallel on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_upecho")
}

/// A running `upecho serve`, killed on drop.
pub struct ServerProc {
    pub child: Child,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl ServerProc {
    /// Starts `upecho serve --listen 127.0.0.1:0 ARGS...` and waits for its listening lines.
    pub fn start(args: &[&str]) -> ServerProc {
        let mut full = vec!["serve", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        Self::start_raw(&full, None)
    }

    /// Starts the binary with exactly `args` (optionally through `sh -c 'PREFIX; exec ...'`,
    /// e.g. `ulimit -n 64`) and waits until every socket it binds is reported.
    pub fn start_raw(args: &[&str], shell_prefix: Option<&str>) -> ServerProc {
        let mut cmd = match shell_prefix {
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                    .arg(bin())
                    .args(args);
                c
            }
            None => {
                let mut c = Command::new(bin());
                c.args(args);
                c
            }
        };
        cmd.env(
            "RUST_LOG",
            std::env::var("UPECHO_TEST_LOG").unwrap_or_else(|_| "debug".into()),
        );
        default_signal_actions(&mut cmd);
        Self::spawn(
            cmd,
            !args.contains(&"--udp-only"),
            !args.contains(&"--tcp-only"),
        )
    }

    /// Spawns `cmd` (any server that prints `listening tcp|udp ADDR` lines: upecho, or a
    /// benchmark's baseline) and waits until it has reported a TCP and/or a UDP address, as
    /// expected. Shared by the integration tests and `benches/e2e.rs`.
    pub fn spawn(mut cmd: Command, expect_tcp: bool, expect_udp: bool) -> ServerProc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ServerProc {
            child,
            tcp: None,
            udp: None,
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        let deadline = Instant::now() + WAIT;
        while (expect_tcp && server.tcp.is_none()) || (expect_udp && server.udp.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no listening line from upecho; stderr:\n{}",
                    server.stderr()
                )
            });
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                // The first of each: a name with several addresses is served on each.
                (Some("listening"), Some("tcp"), Some(a)) => {
                    server.tcp = server.tcp.or(Some(a.parse().unwrap()))
                }
                (Some("listening"), Some("udp"), Some(a)) => {
                    server.udp = server.udp.or(Some(a.parse().unwrap()))
                }
                _ => panic!("unexpected stdout line from upecho: {line:?}"),
            }
        }
        server
    }

    /// The TCP address, for servers that serve TCP.
    pub fn tcp(&self) -> SocketAddr {
        self.tcp.expect("server has no TCP listener")
    }

    /// The UDP address, for servers that serve UDP.
    pub fn udp(&self) -> SocketAddr {
        self.udp.expect("server has no UDP socket")
    }

    /// Everything the server has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until the server's log contains `needle`; the log is read by another
    /// thread, so a line the server has written may not have arrived yet.
    pub fn logged(&self, needle: &str) -> bool {
        wait_until(|| self.stderr().contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the server to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut status = None;
        if !wait_until_within(within, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        }) {
            panic!(
                "upecho did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
        }
        // The process is gone, so its stderr ends: collect all of it.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status.and_then(|st| st.code())
    }

    /// A TCP client connection with read and write timeouts set.
    pub fn connect(&self) -> TcpStream {
        connect(self.tcp())
    }

    /// The body of one scrape of the server's `--metrics` endpoint.
    pub fn scrape(&self) -> String {
        scrape(self.metrics_addr())
    }

    /// One unlabelled sample of the server's `/metrics` (a counter or gauge), now.
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.scrape();
        sample(&body, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }

    /// Waits (bounded) until the `/metrics` sample `name` satisfies `ok`; returns the last value.
    pub fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = f64::NAN;
        wait_until(|| {
            last = self.metric(name);
            ok(last)
        });
        last
    }

    /// Waits (bounded) until the server has taken `bytes` in all (its `/metrics`), so that it
    /// owes them to a client that has not read them back yet; then sends `sig` and waits until the
    /// server says it is draining, and checks that it still runs.
    pub fn signal_once_owed(&mut self, bytes: usize, sig: i32) {
        let got = self.wait_metric("upecho_received_bytes_total", |n| n >= bytes as f64);
        assert_eq!(got, bytes as f64, "{}", self.stderr());
        self.signal(sig);
        assert!(
            self.logged("stopped listening; draining"),
            "{}",
            self.stderr()
        );
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "signal {sig} ended the server while it owed output: {}",
            self.stderr()
        );
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives `cmd` the default action for every signal the server handles, whatever this test
/// inherited: run as a shell's background job a test has SIGINT and SIGQUIT ignored (under
/// `nohup`, SIGHUP), and the server would leave them ignored.
pub fn default_signal_actions(cmd: &mut Command) {
    signal_actions(
        cmd,
        &[
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
        ],
        libc::SIG_DFL,
    );
}

/// Gives `cmd` SIGHUP, SIGINT and SIGQUIT ignored, as `nohup` and a shell's background job do.
pub fn ignore_stop_signals(cmd: &mut Command) {
    signal_actions(
        cmd,
        &[libc::SIGHUP, libc::SIGINT, libc::SIGQUIT],
        libc::SIG_IGN,
    );
}

fn signal_actions(cmd: &mut Command, sigs: &'static [i32], action: libc::sighandler_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &sig in sigs {
                libc::signal(sig, action);
            }
            Ok(())
        });
    }
}

/// The value of `name=N` in one counters line (`accepted=3 ...`).
pub fn counter_in(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Connects to `addr` with generous read/write timeouts so a broken server fails the test
/// instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads exactly `n` bytes or panics (timeouts come from the socket).
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("read_exact");
    v
}

/// Writes `data`, reads back `data.len()` bytes.
pub fn roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).unwrap();
    read_n(s, data.len())
}

/// Python's `bytes.upper()`.
pub fn upper(data: &[u8]) -> Vec<u8> {
    data.to_ascii_uppercase()
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Polls `value` until it has stopped changing (the same in three reads 100 ms apart), within
/// [`WAIT`]; returns it. What a test waits on instead of a sleep when it needs the server to have
/// done all it will do (filled its buffers, say).
pub fn steady(mut value: impl FnMut() -> u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let (mut last, mut same) = (value(), 0);
    while same < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let v = value();
        same = if v == last { same + 1 } else { 0 };
        last = v;
    }
    last
}

/// Waits until `done` holds, checking every 20 ms, for at most [`WAIT`]; whether it did. What a
/// test does instead of sleeping "long enough" for something to happen.
pub fn wait_until(done: impl FnMut() -> bool) -> bool {
    wait_until_within(WAIT, done)
}

/// [`wait_until`] with its own bound.
pub fn wait_until_within(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now, for a program that must be given a
/// number (a balancer, `systemd-socket-activate`). It is released before that program binds it,
/// so another process may take it in between: callers that can retry do.
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One HTTP request on a fresh connection; the whole response.
pub fn http_request(addr: SocketAddr, raw: &[u8]) -> String {
    let mut c = connect(addr);
    c.write_all(raw).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of one `GET /metrics` at `addr`, which must answer 200.
pub fn scrape(addr: SocketAddr) -> String {
    let resp = http_request(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// The value of the unlabelled sample `name` in an exposition.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every sample of `name` in an exposition, labelled or not: (series, value).
pub fn samples(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// Hard bound on any one `upecho load` run in the tests.
pub const LOAD_BOUND: Duration = Duration::from_secs(90);

/// Starts `upecho load ARGS...` (logging at warn) and returns it running; [`load_output`]
/// collects it.
pub fn spawn_load(args: &[&str]) -> Child {
    Command::new(bin())
        .arg("load")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn upecho load")
}

/// Starts `upecho load --json -q ARGS...` and returns it running, for a test that does something
/// else meanwhile; [`load_report`] collects it.
pub fn spawn_load_json(args: &[&str]) -> Child {
    let mut full = vec!["--json", "-q"];
    full.extend_from_slice(args);
    spawn_load(&full)
}

/// Waits for a `upecho load` (killed, by PID, past [`LOAD_BOUND`]) and returns its output.
pub fn load_output(mut child: Child) -> std::process::Output {
    if !wait_until_within(LOAD_BOUND, || child.try_wait().expect("try_wait").is_some()) {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "upecho load ran past {LOAD_BOUND:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("output")
}

/// Waits for a `upecho load --json` run ([`load_output`]) and returns its exit code, its parsed
/// report and its stderr.
pub fn load_report(child: Child) -> (i32, serde_json::Value, String) {
    let out = load_output(child);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    (out.status.code().expect("exit code"), v, stderr)
}

/// Runs `upecho load --json -q ARGS...` to its end (bounded) and returns its exit code, parsed
/// report and stderr.
pub fn load_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    load_report(spawn_load_json(args))
}

/// A server run in this process on loopback port 0 (TCP and UDP), for tests that check its
/// counters: [`InProcess::stop`] returns the [`upecho::serve::Summary`] itself instead of a log
/// line to grep.
pub struct InProcess {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    handle: upecho::serve::ShutdownHandle,
    thread: thread::JoinHandle<upecho::serve::Summary>,
}

impl InProcess {
    pub fn start(config: upecho::serve::Config) -> InProcess {
        let sockets = upecho::serve::SocketSource::Bind {
            addrs: vec!["127.0.0.1:0".parse().unwrap()],
            protocols: upecho::serve::Protocols {
                tcp: true,
                udp: true,
            },
            options: upecho::net::SocketOptions::default(),
        }
        .open()
        .expect("bind loopback port 0");
        let tcp = sockets.listeners[0].local_addr().unwrap();
        let udp = sockets.udp[0].local_addr().unwrap();
        let server = upecho::serve::Server::new(config, sockets.listeners, sockets.udp)
            .expect("start the reactor");
        let handle = server.shutdown_handle();
        let thread = thread::spawn(move || server.run().expect("reactor failed"));
        InProcess {
            tcp,
            udp,
            handle,
            thread,
        }
    }

    /// Drains, stops, and returns how the run ended.
    pub fn stop(self) -> upecho::serve::Summary {
        self.handle.shutdown();
        self.thread.join().expect("the reactor thread panicked")
    }
}

/// Resident set size of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

impl ServerProc {
    /// The address of the server's `--metrics` endpoint, read from its log.
    pub fn metrics_addr(&self) -> SocketAddr {
        assert!(self.logged("metrics at http://"), "{}", self.stderr());
        self.stderr()
            .lines()
            .find_map(|l| l.split("metrics at http://").nth(1))
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("the metrics address in the log")
    }
}

/// `promtool check metrics` on an exposition: `None` where promtool is not installed (the
/// caller skips, saying so), else what it said, empty when the exposition is clean.
pub fn promtool_check(body: &str) -> Option<Result<String, String>> {
    let have = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !have {
        return None;
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    p.stdin
        .take()
        .expect("promtool's stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = p.wait_with_output().expect("promtool's output");
    let says = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() {
        Ok(says)
    } else {
        Err(says)
    })
}

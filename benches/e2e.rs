//! End-to-end loopback benchmark: `upecho serve` against two baselines, all driven by
//! `upecho load`, in the same run.
//!
//! For each scenario and round, each server in turn (the order rotates from round to round) is
//! started fresh, pinned to CPU 0, and loaded by `upecho load --json --server-pid` pinned to
//! CPU 1. The load generator samples the server's CPU time from `/proc/PID/stat` at both ends of
//! its measurement window, so "server CPU per message" covers exactly the messages it counted.
//!
//! The baselines, both this bench binary re-executed:
//! - `e2e baseline-server ADDR` ([`tokio_baseline`]): the server most Rust users would write;
//! - `e2e epoll-server ADDR` ([`floor`]): a minimal raw-epoll server written the way the fastest
//!   C servers are, the floor.
//!
//! Each row is compared with its best baseline (the lower server CPU per message; hold: RSS per
//! connection). The bench prints one Markdown table and writes it, a chart of every server's CPU
//! per message relative to that best baseline, and a chart of upecho's latency percentiles over
//! the seconds of one run, into `--out` (default `target/e2e`).
//!
//! Bulk is driven three ways, since a bulk figure that holds with one generator may not with
//! another: `upecho load --mode bulk` (at most 128 KiB ahead of the replies), a minimal C client
//! with no window (`bulk_client.c`, built with the system `cc`; scenario `bulkc`) and `socat`
//! fed from `/dev/zero` (`bulks`; skipped with a message where socat is not installed). For the
//! last two the server's CPU is taken over the bytes echoed in the window, per 64 KiB.
//!
//! Usage: `cargo bench --bench e2e -- [--duration S] [--warmup S] [--only a,b] [--rounds N]
//! [--servers upecho,upecho-busy,base,tokio,epoll] [--busy-poll DURATION] [--base PATH]
//! [--hold-conns N] [--latency SCENARIO|none] [--out DIR]`. `upecho-busy` is upecho with
//! `--busy-poll` (default 100us); `base` is another upecho binary (e.g. main's build), for a
//! before/after in one run. Defaults (5 s windows, 1 s warm-up, 3 rounds, upecho, tokio, epoll,
//! 15,000 held connections) take about 16 minutes.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/util/mod.rs"]
mod util;

#[path = "e2e/chart.rs"]
mod chart;
#[path = "e2e/floor.rs"]
mod floor;
#[path = "e2e/tokio_baseline.rs"]
mod tokio_baseline;

struct Opts {
    duration: f64,
    warmup: f64,
    only: Option<Vec<String>>,
    rounds: usize,
    servers: Vec<Server>,
    hold_conns: u32,
    latency: Option<String>,
    out: String,
    /// `--busy-poll`: the window of the `upecho-busy` server.
    busy_poll: String,
    /// `--base`: another upecho binary, run as the `base` server (before/after in one run).
    base: Option<String>,
}

/// What drives a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gen {
    /// `upecho load`, with the scenario's arguments.
    Load,
    /// `benches/e2e/bulk_client.c`: one connection, a thread writing 64 KiB blocks with
    /// blocking writes (no window) and one reading, compiled with the system `cc`.
    CClient,
    /// `socat -b 65536 - TCP:ADDR` fed from `/dev/zero`, its output counted by the bench.
    Socat,
}

/// One load scenario: a name and the `upecho load` arguments that make it.
struct Scenario {
    name: &'static str,
    label: &'static str,
    args: Vec<String>,
    /// Report RSS per connection instead of CPU per message.
    hold: bool,
    driver: Gen,
}

fn scenarios(o: &Opts) -> Vec<Scenario> {
    let s = |name, label, args: &[&str]| Scenario {
        name,
        label,
        args: args.iter().map(|a| a.to_string()).collect(),
        hold: false,
        driver: Gen::Load,
    };
    let bulk = |name, label, driver| Scenario {
        driver,
        ..s(name, label, &["--mode", "bulk", "-c", "1", "-s", "65536"])
    };
    let hold = o.hold_conns.to_string();
    let mut v = vec![
        s("pp1", "64 B ping-pong, 1 conn", &["-c", "1"]),
        s("pp10", "64 B ping-pong, 10 conns", &["-c", "10"]),
        s("pp100", "64 B ping-pong, 100 conns", &["-c", "100"]),
        s("pp1000", "64 B ping-pong, 1000 conns", &["-c", "1000"]),
        s(
            "pipe",
            "64 B pipelined, 50 conns x depth 16",
            &["-c", "50", "--depth", "16"],
        ),
        s(
            "bulk",
            "bulk, 1 conn, per 64 KiB",
            &["--mode", "bulk", "-c", "1", "-s", "65536"],
        ),
        bulk(
            "bulkc",
            "bulk from a C client (no window), per 64 KiB",
            Gen::CClient,
        ),
        bulk(
            "bulks",
            "bulk from socat (no window), per 64 KiB",
            Gen::Socat,
        ),
        s(
            "udp",
            "UDP 64 B, 50 sockets x depth 4",
            &["--proto", "udp", "-c", "50", "--depth", "4"],
        ),
        s(
            "churn",
            "churn, 10 slots, per connection",
            &["--mode", "churn", "-c", "10", "--close", "rst"],
        ),
    ];
    v.push(Scenario {
        name: "hold",
        label: "idle connections held, RSS per connection",
        args: vec!["--mode".into(), "hold".into(), "-c".into(), hold],
        hold: true,
        driver: Gen::Load,
    });
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = || -> SocketAddr {
        args.get(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())
    };
    match args.get(1).map(String::as_str) {
        Some("baseline-server") => return tokio_baseline::serve(listen()),
        Some("epoll-server") => return floor::serve(listen()),
        _ => {}
    }
    let mut o = Opts {
        duration: 5.0,
        warmup: 1.0,
        only: None,
        rounds: 3,
        servers: vec![Server::Upecho, Server::Tokio, Server::Epoll],
        hold_conns: 15_000,
        latency: Some("pp100".into()),
        out: "target/e2e".into(),
        busy_poll: "100us".into(),
        base: None,
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--duration" => o.duration = val().parse().expect("--duration SECS"),
            "--warmup" => o.warmup = val().parse().expect("--warmup SECS"),
            "--only" => o.only = Some(val().split(',').map(String::from).collect()),
            "--rounds" => o.rounds = val().parse::<usize>().expect("--rounds N").max(1),
            "--servers" => {
                o.servers = val()
                    .split(',')
                    .map(|s| {
                        Server::parse(s).expect("--servers upecho,upecho-busy,base,tokio,epoll")
                    })
                    .collect()
            }
            "--hold-conns" => o.hold_conns = val().parse().expect("--hold-conns N"),
            "--latency" => o.latency = Some(val()).filter(|v| v != "none"),
            "--out" => o.out = val(),
            "--busy-poll" => o.busy_poll = val(),
            "--base" => o.base = Some(val()),
            // cargo passes --bench; cargo test --benches would pass nothing useful either.
            _ => {}
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cpus >= 2;
    eprintln!(
        "e2e: {cpus} CPUs; {}; {} s windows after {} s warm-up, {} round(s), servers {}",
        if pin {
            "server on CPU 0, load on CPU 1"
        } else {
            "one CPU: no pinning"
        },
        o.duration,
        o.warmup,
        o.rounds,
        o.servers
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Err(e) = std::fs::create_dir_all(&o.out) {
        eprintln!("e2e: cannot create {}: {e}", o.out);
    }
    let mut rows = Vec::new();
    for sc in scenarios(&o) {
        if o.only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|n| n == sc.name))
        {
            continue;
        }
        let k = o.servers.len();
        // rounds[r][s]: round r's measurement of server s.
        let mut rounds: Vec<Vec<Option<Measured>>> = Vec::new();
        for r in 0..o.rounds {
            let mut got = vec![None; k];
            // Rotated, so no server always runs first (after a cold start) or last.
            for j in 0..k {
                let s = (r + j) % k;
                let which = o.servers[s];
                match measure(&o, &sc, which, pin) {
                    Ok(m) => got[s] = Some(m),
                    Err(e) => eprintln!("e2e: {} against {}: {e}", sc.name, which.name()),
                }
            }
            rounds.push(got);
        }
        rows.push(Row::new(sc, &o.servers, rounds));
    }
    let table = table(&rows, &o);
    println!("{table}");
    write(&format!("{}/table.md", o.out), table.as_bytes());
    chart_ratios(&rows, &o);
    if let Some(name) = o.latency.clone()
        && let Some(sc) = scenarios(&o).into_iter().find(|s| s.name == name)
    {
        latency_over_time(&o, &sc, pin);
    }
}

fn write(path: &str, data: &[u8]) {
    match std::fs::write(path, data) {
        Ok(()) => eprintln!("e2e: wrote {path}"),
        Err(e) => eprintln!("e2e: cannot write {path}: {e}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Upecho,
    /// upecho with `--busy-poll` (the window from the bench's `--busy-poll`).
    UpechoBusy,
    /// The upecho binary named by `--base` (an older build, for before/after in one run).
    Base,
    Tokio,
    Epoll,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Upecho => "upecho",
            Server::UpechoBusy => "upecho --busy-poll",
            Server::Base => "upecho (base build)",
            Server::Tokio => "tokio baseline",
            Server::Epoll => "epoll floor",
        }
    }

    /// A baseline the others are compared with (not a build of upecho).
    fn is_baseline(self) -> bool {
        matches!(self, Server::Tokio | Server::Epoll)
    }

    fn parse(s: &str) -> Option<Server> {
        match s {
            "upecho" => Some(Server::Upecho),
            "upecho-busy" => Some(Server::UpechoBusy),
            "base" => Some(Server::Base),
            "tokio" => Some(Server::Tokio),
            "epoll" => Some(Server::Epoll),
            _ => None,
        }
    }
}

/// What one run of one scenario against one server measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    msgs_per_s: f64,
    mb_per_s: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    server_us_per_msg: Option<f64>,
    client_us_per_msg: Option<f64>,
    server_rss: u64,
    /// hold: RSS added per held connection.
    rss_per_conn: Option<f64>,
    ok: bool,
    errors: u64,
    losses: u64,
}

impl Measured {
    /// The figure a row is compared on: server CPU per message, or hold's RSS per connection.
    fn cost(&self, hold: bool) -> Option<f64> {
        if hold {
            self.rss_per_conn
        } else {
            self.server_us_per_msg
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Each figure's median over the rounds (figure by figure); `ok` only if every run was.
fn median_of(runs: &[Measured]) -> Option<Measured> {
    if runs.is_empty() {
        return None;
    }
    let f = |g: fn(&Measured) -> f64| median(runs.iter().map(g).collect()).unwrap_or(0.0);
    let o = |g: fn(&Measured) -> Option<f64>| median(runs.iter().filter_map(g).collect());
    Some(Measured {
        msgs_per_s: f(|m| m.msgs_per_s),
        mb_per_s: f(|m| m.mb_per_s),
        p50_us: o(|m| m.p50_us),
        p99_us: o(|m| m.p99_us),
        server_us_per_msg: o(|m| m.server_us_per_msg),
        client_us_per_msg: o(|m| m.client_us_per_msg),
        server_rss: f(|m| m.server_rss as f64) as u64,
        rss_per_conn: o(|m| m.rss_per_conn),
        ok: runs.iter().all(|m| m.ok),
        errors: runs.iter().map(|m| m.errors).sum(),
        losses: runs.iter().map(|m| m.losses).sum(),
    })
}

/// One scenario's results: every round, and the per-server medians.
struct Row {
    sc: Scenario,
    servers: Vec<Server>,
    rounds: Vec<Vec<Option<Measured>>>,
    medians: Vec<Option<Measured>>,
}

impl Row {
    fn new(sc: Scenario, servers: &[Server], rounds: Vec<Vec<Option<Measured>>>) -> Row {
        let medians = (0..servers.len())
            .map(|s| median_of(&rounds.iter().filter_map(|r| r[s]).collect::<Vec<_>>()))
            .collect();
        Row {
            sc,
            servers: servers.to_vec(),
            rounds,
            medians,
        }
    }

    fn baselines(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.servers.len()).filter(|&s| self.servers[s].is_baseline())
    }

    /// The baseline with the lowest median cost, and that cost.
    fn best(&self) -> Option<(usize, f64)> {
        self.baselines()
            .filter_map(|s| Some((s, self.medians[s]?.cost(self.sc.hold)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Server `s`'s median cost over the best baseline's.
    fn ratio(&self, s: usize) -> Option<f64> {
        let (_, best) = self.best()?;
        let v = self.medians[s]?.cost(self.sc.hold)?;
        (best > 0.0).then(|| v / best)
    }

    /// Server `s` against the cheapest baseline of the same round, round by round (the spread
    /// of the paired ratios says how much of a difference is noise).
    fn paired(&self, s: usize) -> Vec<f64> {
        let hold = self.sc.hold;
        self.rounds
            .iter()
            .filter_map(|r| {
                let v = r[s]?.cost(hold)?;
                let best = self
                    .baselines()
                    .filter_map(|b| r[b]?.cost(hold))
                    .fold(f64::INFINITY, f64::min);
                (best.is_finite() && best > 0.0).then(|| v / best)
            })
            .collect()
    }

    /// Bulk: server `s`'s median MB/s over the fastest baseline's.
    fn mb_ratio(&self, s: usize) -> Option<f64> {
        let best = self
            .baselines()
            .filter_map(|b| Some(self.medians[b]?.mb_per_s))
            .fold(0.0f64, f64::max);
        let v = self.medians[s]?.mb_per_s;
        (best > 0.0).then(|| v / best)
    }
}

/// A child pinned to one CPU before it starts, so every thread it makes stays there.
fn pinned(mut cmd: Command, cpu: Option<usize>) -> Command {
    if let Some(cpu) = cpu {
        // SAFETY: between fork and exec we only call sched_setaffinity, which is
        // async-signal-safe, on a stack-allocated set.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Starts a server, pinned to CPU 0 if asked, through the integration tests' spawn helper (it
/// reads the `listening` lines back and kills the server by its PID when dropped).
fn start(o: &Opts, which: Server, pin: bool) -> Result<util::ServerProc, String> {
    let mut cmd = match which {
        Server::Upecho | Server::UpechoBusy | Server::Base => {
            let bin = match (which, &o.base) {
                (Server::Base, Some(b)) => b.as_str(),
                (Server::Base, None) => return Err("server `base` needs --base PATH".into()),
                _ => env!("CARGO_BIN_EXE_upecho"),
            };
            let mut c = Command::new(bin);
            c.args(["serve", "--listen", "127.0.0.1:0"]);
            if which == Server::UpechoBusy {
                c.args(["--busy-poll", &o.busy_poll]);
            }
            c
        }
        Server::Tokio | Server::Epoll => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            let sub = if which == Server::Tokio {
                "baseline-server"
            } else {
                "epoll-server"
            };
            c.args([sub, "127.0.0.1:0"]);
            c
        }
    };
    cmd.env("RUST_LOG", "warn");
    Ok(util::ServerProc::spawn(
        pinned(cmd, pin.then_some(0)),
        true,
        true,
    ))
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs `upecho load` with `args` against `addr` (pinned to CPU 1 if asked) and returns its
/// JSON report and its stderr.
fn run_load(
    addr: SocketAddr,
    args: &[String],
    pid: u32,
    duration: f64,
    warmup: f64,
    pin: bool,
) -> Result<(Value, String), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_upecho"));
    cmd.arg("load")
        .arg(addr.to_string())
        .args(args)
        .args(["--json", "-q", "--server-pid", &pid.to_string()])
        .args(["-t", &duration.to_string(), "--warmup", &warmup.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = pinned(cmd, pin.then_some(1))
        .spawn()
        .map_err(|e| format!("cannot start upecho load: {e}"))?;
    // Read both pipes while it runs, so a chatty child can never block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = &mut out_pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = &mut err_pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    // Bounded: the load ends itself; this only guards against a hang.
    let deadline = Instant::now() + Duration::from_secs_f64(warmup + duration + 60.0);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("upecho load overran its bound".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let v: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("load output is not JSON ({e}): {stdout}\n{stderr}"))?;
    Ok((v, stderr))
}

fn measure(o: &Opts, sc: &Scenario, which: Server, pin: bool) -> Result<Measured, String> {
    let server = start(o, which, pin)?;
    let pid = server.pid();
    if sc.driver != Gen::Load {
        return measure_external(o, sc, which, &server, pin);
    }
    let udp = sc.args.iter().any(|a| a == "udp");
    let addr = if udp { server.udp() } else { server.tcp() };
    // Let the server settle before its baseline RSS is taken.
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss(pid);
    let (v, stderr) = run_load(addr, &sc.args, pid, o.duration, o.warmup, pin)?;
    drop(server);
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
    let held = f("/held").unwrap_or(0.0);
    let rss_end = f("/server/rss_bytes").unwrap_or(0.0) as u64;
    let m = Measured {
        msgs_per_s: f("/msgs_per_s").unwrap_or(0.0),
        mb_per_s: f("/mb_per_s").unwrap_or(0.0),
        p50_us: f("/latency_us/p50"),
        p99_us: f("/latency_us/p99"),
        server_us_per_msg: f("/server/cpu_us_per_msg"),
        client_us_per_msg: f("/client/cpu_us_per_msg"),
        server_rss: rss_end,
        rss_per_conn: (sc.hold && held > 0.0)
            .then(|| rss_end.saturating_sub(rss_before) as f64 / held),
        ok: v["ok"] == true,
        errors: v
            .pointer("/errors/total")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        losses: v["losses"].as_u64().unwrap_or(0),
    };
    eprintln!(
        "e2e: {:7} {:15} {:>10.0} msg/s {:>8.1} MB/s  p99 {:>8} µs  server {:>6} µs/msg  load {:>6} µs/msg  rss {} KiB{}{}",
        sc.name,
        which.name(),
        m.msgs_per_s,
        m.mb_per_s,
        opt(m.p99_us, 1),
        opt(m.server_us_per_msg, 2),
        opt(m.client_us_per_msg, 2),
        m.server_rss / 1024,
        m.rss_per_conn
            .map(|r| format!("  {r:.0} B/conn"))
            .unwrap_or_default(),
        if m.ok {
            String::new()
        } else {
            format!(
                "  NOT OK: {}",
                stderr.lines().find(|l| l.contains("first")).unwrap_or("")
            )
        }
    );
    Ok(m)
}

/// Bytes in one bulk "message" of the external generators, as in `upecho load --mode bulk -s 65536`.
const BULK_MSG: f64 = 65536.0;

/// The C client, compiled once per run into `--out` with the system `cc`.
fn c_client(o: &Opts) -> Result<String, String> {
    static BUILT: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e/bulk_client.c");
            let bin = format!("{}/bulk_client", o.out);
            let st = Command::new("cc")
                .args(["-O2", "-pthread", "-o", &bin, src])
                .status()
                .map_err(|e| format!("cannot run cc to build the C client: {e}"))?;
            if !st.success() {
                return Err(format!("cc failed to build {src}"));
            }
            Ok(bin)
        })
        .clone()
}

/// Waits for a generator that ends by itself, killing it (by its own handle) past `bound`.
fn wait_bounded(child: &mut std::process::Child, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the generator overran its bound".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A bulk run driven by a generator other than `upecho load` (the server already started):
/// the server's CPU over the bytes echoed in the window, per 64 KiB.
fn measure_external(
    o: &Opts,
    sc: &Scenario,
    which: Server,
    server: &util::ServerProc,
    pin: bool,
) -> Result<Measured, String> {
    let addr = server.tcp();
    let pid = server.pid();
    let (bytes, secs, server_s, client_s) = match sc.driver {
        Gen::Load => unreachable!("upecho load runs through run_load"),
        Gen::CClient => {
            let mut cmd = Command::new(c_client(o)?);
            cmd.args([
                addr.ip().to_string(),
                addr.port().to_string(),
                "65536".into(),
                o.warmup.to_string(),
                o.duration.to_string(),
                pid.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = pinned(cmd, pin.then_some(1))
                .spawn()
                .map_err(|e| format!("cannot start the C client: {e}"))?;
            wait_bounded(
                &mut child,
                Duration::from_secs_f64(o.warmup + o.duration + 30.0),
            )?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Err(format!(
                    "C client failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let field = |name: &str| -> Result<f64, String> {
                let mut it = line.split_whitespace();
                while let Some(k) = it.next() {
                    if k == name {
                        return it.next().and_then(|v| v.parse().ok()).ok_or(line.clone());
                    }
                }
                Err(format!("C client printed no {name}: {line}"))
            };
            let hz = field("hz")?;
            (
                field("bytes")?,
                field("secs")?,
                field("server_ticks")? / hz,
                field("client_ticks")? / hz,
            )
        }
        Gen::Socat => {
            let zero = std::fs::File::open("/dev/zero").map_err(|e| e.to_string())?;
            let mut cmd = Command::new("socat");
            cmd.args(["-b", "65536", "-", &format!("TCP:{addr}")])
                .stdin(zero)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = pinned(cmd, pin.then_some(1))
                .spawn()
                .map_err(|e| format!("cannot start socat (is it installed?): {e}"))?;
            let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let bad = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut pipe = child.stdout.take().ok_or("socat has no stdout")?;
            let (g, b) = (got.clone(), bad.clone());
            // The counter runs beside the generator on its CPU, not beside the server.
            let counter = std::thread::spawn(move || {
                if pin {
                    // SAFETY: sets this thread's own affinity from a stack-allocated set.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(1, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    }
                }
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    // Zeros in, zeros back: upper-casing leaves them as they are.
                    if buf[..n].iter().any(|&x| x != 0) {
                        b.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    g.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let sample = || {
                (
                    got.load(std::sync::atomic::Ordering::Relaxed),
                    util::cpu_time(pid),
                    util::cpu_time(child.id()),
                    Instant::now(),
                )
            };
            std::thread::sleep(Duration::from_secs_f64(o.warmup));
            let (b0, s0, c0, t0) = sample();
            std::thread::sleep(Duration::from_secs_f64(o.duration));
            let (b1, s1, c1, t1) = sample();
            let alive = child.try_wait().map_err(|e| e.to_string())?.is_none();
            let _ = child.kill();
            let _ = child.wait();
            let _ = counter.join();
            if !alive {
                return Err("socat ended before the window did".into());
            }
            if bad.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("socat got back bytes it did not send".into());
            }
            (
                (b1 - b0) as f64,
                (t1 - t0).as_secs_f64(),
                (s1 - s0).as_secs_f64(),
                (c1 - c0).as_secs_f64(),
            )
        }
    };
    let msgs = bytes / BULK_MSG;
    let per = |cpu: f64| (msgs > 0.0).then(|| cpu * 1e6 / msgs);
    let m = Measured {
        msgs_per_s: msgs / secs,
        mb_per_s: bytes / secs / 1e6,
        p50_us: None,
        p99_us: None,
        server_us_per_msg: per(server_s),
        client_us_per_msg: per(client_s),
        server_rss: rss(pid),
        rss_per_conn: None,
        ok: bytes > 0.0,
        errors: 0,
        losses: 0,
    };
    eprintln!(
        "e2e: {:7} {:15} {:>10.0} msg/s {:>8.1} MB/s  server {:>6} µs/msg  load {:>6} µs/msg",
        sc.name,
        which.name(),
        m.msgs_per_s,
        m.mb_per_s,
        opt(m.server_us_per_msg, 2),
        opt(m.client_us_per_msg, 2),
    );
    Ok(m)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

/// A ratio with enough digits to be read: two, or four when it is far below 1.
fn fmt_ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.4}")
    } else {
        format!("{r:.2}")
    }
}

fn table(rows: &[Row], o: &Opts) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} s windows after {} s warm-up, median of {} rotating round(s) (each figure its own median); \
         server pinned to CPU 0, upecho load to CPU 1; lower is better for CPU and RSS. \
         \"÷ best baseline\" is the server's CPU per message (hold: RSS per connection) over the \
         lower of the baselines' in the same run; for upecho the range of the per-round ratios \
         follows in brackets; for bulk also MB/s over the faster baseline's. \"load ÷ server\" is \
         the load generator's CPU per message over the server's.\n",
        o.duration, o.warmup, o.rounds
    );
    let _ = writeln!(
        t,
        "| scenario | server | msgs/s | MB/s | p50 µs | p99 µs | server CPU µs/msg | load CPU µs/msg | load ÷ server | server RSS | ÷ best baseline |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let sc = &row.sc;
        let best = row.best().map(|(b, _)| b);
        for (s, which) in row.servers.iter().enumerate() {
            let name = if Some(s) == best {
                format!("{} (best baseline)", which.name())
            } else {
                which.name().to_string()
            };
            let Some(m) = row.medians[s] else {
                let _ = writeln!(t, "| {} | {name} | failed | | | | | | | | |", sc.label);
                continue;
            };
            let rss = match m.rss_per_conn {
                Some(per) => format!("{} KiB ({per:.0} B/conn)", m.server_rss / 1024),
                None => format!("{} KiB", m.server_rss / 1024),
            };
            let mut flags = String::new();
            if !m.ok {
                flags.push_str(" (NOT OK)");
            }
            if m.errors > 0 || m.losses > 0 {
                flags.push_str(&format!(" ({} errors, {} lost)", m.errors, m.losses));
            }
            let mut ratio = row.ratio(s).map(fmt_ratio).unwrap_or_else(|| "-".into());
            if !which.is_baseline() {
                let p = row.paired(s);
                if p.len() > 1 {
                    let lo = p.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = p.iter().copied().fold(0.0f64, f64::max);
                    ratio.push_str(&format!(" ({}-{})", fmt_ratio(lo), fmt_ratio(hi)));
                }
                if sc.args.iter().any(|a| a == "bulk")
                    && let Some(r) = row.mb_ratio(s)
                {
                    ratio.push_str(&format!("; MB/s {r:.2}"));
                }
            }
            let load_ratio = match (m.client_us_per_msg, m.server_us_per_msg) {
                (Some(c), Some(s)) if s > 0.0 && !sc.hold => format!("{:.2}", c / s),
                _ => "-".into(),
            };
            let (rate, mb) = if sc.hold {
                ("–".to_string(), "–".to_string())
            } else {
                (format!("{:.0}", m.msgs_per_s), format!("{:.1}", m.mb_per_s))
            };
            let _ = writeln!(
                t,
                "| {}{flags} | {name} | {rate} | {mb} | {} | {} | {} | {} | {load_ratio} | {rss} | {ratio} |",
                sc.label,
                opt(m.p50_us, 0),
                opt(m.p99_us, 0),
                opt(m.server_us_per_msg, 2),
                opt(m.client_us_per_msg, 2),
            );
        }
    }
    t
}

/// The chart of every server's CPU per message over the best baseline's, per scenario (hold,
/// whose figure is memory, is in the table only).
fn chart_ratios(rows: &[Row], o: &Opts) {
    let groups: Vec<chart::Group> = rows
        .iter()
        .filter(|r| !r.sc.hold)
        .map(|r| chart::Group {
            label: r.sc.label.to_string(),
            ratios: (0..r.servers.len()).map(|s| r.ratio(s)).collect(),
        })
        .collect();
    if groups.is_empty() {
        return;
    }
    let names: Vec<&str> = o.servers.iter().map(|s| s.name()).collect();
    let path = format!("{}/chart.svg", o.out);
    let title = format!(
        "Server CPU per message ÷ the best baseline's (median of {} rounds; 2 vCPU, server and load pinned)",
        o.rounds
    );
    match chart::ratios(&path, &title, &names, &groups) {
        Ok(()) => eprintln!("e2e: wrote {path}"),
        Err(e) => eprintln!("e2e: chart: {e}"),
    }
}

/// One second of a run: `(second, p50 µs, p99 µs)`.
type Point = (f64, f64, f64);

/// `(second, p50 µs, p99 µs)` for each second of one `upecho load --json` run, from its
/// `series` (one entry per second of the window: `t` from the window's start, and `latency_us`
/// with that second's own percentiles).
fn series_from_json(v: &Value) -> Option<Vec<Point>> {
    let pts: Vec<Point> = v
        .get("series")?
        .as_array()?
        .iter()
        .filter(|e| e.get("phase").and_then(Value::as_str) == Some("run"))
        .filter_map(|e| {
            let f = |p: &str| e.pointer(p).and_then(Value::as_f64);
            Some((
                f("/t")? + f("/secs")?,
                f("/latency_us/p50")?,
                f("/latency_us/p99")?,
            ))
        })
        .collect();
    (!pts.is_empty()).then_some(pts)
}

/// Draws upecho's latency percentiles over the seconds of one run of `sc`, from the run's own
/// per-second series.
fn latency_over_time(o: &Opts, sc: &Scenario, pin: bool) {
    let run = || -> Result<(Vec<Point>, &'static str), String> {
        let server = start(o, Server::Upecho, pin)?;
        let pid = server.pid();
        let udp = sc.args.iter().any(|a| a == "udp");
        let addr = if udp { server.udp() } else { server.tcp() };
        let secs = (o.duration.ceil() as usize).max(2) * 2;
        let (v, _) = run_load(addr, &sc.args, pid, secs as f64, o.warmup, pin)?;
        let s = series_from_json(&v).ok_or("upecho load --json carried no per-second series")?;
        Ok((s, "each second of one run"))
    };
    let (series, how) = match run() {
        Ok(r) => r,
        Err(e) => return eprintln!("e2e: latency over time: {e}"),
    };
    let path = format!("{}/latency.svg", o.out);
    let title = format!("upecho latency over time: {} ({how})", sc.label);
    match chart::latency(&path, &title, &series) {
        Ok(()) => eprintln!("e2e: wrote {path} ({} points)", series.len()),
        Err(e) => eprintln!("e2e: latency chart: {e}"),
    }
}

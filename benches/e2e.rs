//! End-to-end loopback benchmark: `upecho serve` against a tokio baseline, both driven by
//! `upecho load`, in the same run.
//!
//! For each scenario, each server in turn (upecho, then the baseline, alternating) is started
//! fresh, pinned to CPU 0, and loaded by `upecho load --json --server-pid` pinned to CPU 1. The
//! load generator samples the server's CPU time from `/proc/PID/stat` at both ends of its
//! measurement window, so "server CPU per message" covers exactly the messages it counted. One
//! Markdown table is printed and an SVG chart written.
//!
//! The baseline is the server most Rust users would write: `#[tokio::main]` (multi-thread
//! runtime; pinned to one CPU it runs one worker), a task per connection, a 16 KiB buffer,
//! upper-casing, `write_all` back; UDP is one task doing `recv_from`/`send_to`. It is this same
//! binary re-executed as `e2e baseline-server`, so it needs no separate build step.
//!
//! Usage: `cargo bench --bench e2e -- [--duration S] [--warmup S] [--only a,b] [--rounds N]
//! [--hold-conns N] [--svg FILE]`. Defaults (5 s windows, 1 s warm-up, 15,000 held connections)
//! keep the whole run to about five minutes.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/util/mod.rs"]
mod util;

struct Opts {
    duration: f64,
    warmup: f64,
    only: Option<Vec<String>>,
    rounds: usize,
    hold_conns: u32,
    svg: String,
}

/// One load scenario: a name and the `upecho load` arguments that make it.
struct Scenario {
    name: &'static str,
    label: &'static str,
    args: Vec<String>,
    /// Report RSS per connection instead of CPU per message.
    hold: bool,
}

fn scenarios(o: &Opts) -> Vec<Scenario> {
    let s = |name, label, args: &[&str]| Scenario {
        name,
        label,
        args: args.iter().map(|a| a.to_string()).collect(),
        hold: false,
    };
    let hold = o.hold_conns.to_string();
    let mut v = vec![
        s("pp1", "64 B ping-pong, 1 conn", &["-c", "1"]),
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
    });
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("baseline-server") {
        let listen: SocketAddr = args
            .get(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        baseline::serve(listen);
        return;
    }
    let mut o = Opts {
        duration: 5.0,
        warmup: 1.0,
        only: None,
        rounds: 1,
        hold_conns: 15_000,
        svg: "target/e2e.svg".into(),
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--duration" => o.duration = val().parse().expect("--duration SECS"),
            "--warmup" => o.warmup = val().parse().expect("--warmup SECS"),
            "--only" => o.only = Some(val().split(',').map(String::from).collect()),
            "--rounds" => o.rounds = val().parse().expect("--rounds N"),
            "--hold-conns" => o.hold_conns = val().parse().expect("--hold-conns N"),
            "--svg" => o.svg = val(),
            // cargo passes --bench; cargo test --benches would pass nothing useful either.
            _ => {}
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cpus >= 2;
    eprintln!(
        "e2e: {cpus} CPUs; {}; {} s windows after {} s warm-up, {} round(s)",
        if pin {
            "server on CPU 0, load on CPU 1"
        } else {
            "one CPU: no pinning"
        },
        o.duration,
        o.warmup,
        o.rounds
    );
    let mut rows = Vec::new();
    for sc in scenarios(&o) {
        if o.only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|n| n == sc.name))
        {
            continue;
        }
        let mut pair: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..o.rounds {
            for (k, which) in [Server::Upecho, Server::Baseline].into_iter().enumerate() {
                match measure(&o, &sc, which, pin) {
                    Ok(m) => pair[k].push(m),
                    Err(e) => eprintln!("e2e: {} against {}: {e}", sc.name, which.name()),
                }
            }
        }
        let [u, b] = pair;
        rows.push((sc, median(u), median(b)));
    }
    print_table(&rows, &o);
    if let Err(e) = std::fs::write(&o.svg, chart::svg(&rows)) {
        eprintln!("e2e: cannot write {}: {e}", o.svg);
    } else {
        eprintln!("e2e: chart written to {}", o.svg);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Upecho,
    Baseline,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Upecho => "upecho",
            Server::Baseline => "tokio baseline",
        }
    }
}

/// What one run of one scenario against one server measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    msgs_per_s: f64,
    mb_per_s: f64,
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

fn median(mut v: Vec<Measured>) -> Option<Measured> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
    Some(v[v.len() / 2])
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
fn start(which: Server, pin: bool) -> Result<util::ServerProc, String> {
    let mut cmd = match which {
        Server::Upecho => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_upecho"));
            c.args(["serve", "--listen", "127.0.0.1:0"]);
            c
        }
        Server::Baseline => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.args(["baseline-server", "127.0.0.1:0"]);
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

fn measure(o: &Opts, sc: &Scenario, which: Server, pin: bool) -> Result<Measured, String> {
    let server = start(which, pin)?;
    let pid = server.pid();
    let udp = sc.args.iter().any(|a| a == "udp");
    let addr = if udp { server.udp() } else { server.tcp() };
    // Let the server settle before its baseline RSS is taken.
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss(pid);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_upecho"));
    cmd.arg("load")
        .arg(addr.to_string())
        .args(&sc.args)
        .args(["--json", "-q", "--server-pid", &pid.to_string()])
        .args([
            "-t",
            &o.duration.to_string(),
            "--warmup",
            &o.warmup.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = pinned(cmd, pin.then_some(1))
        .spawn()
        .map_err(|e| format!("cannot start upecho load: {e}"))?;
    // Bounded: the load ends itself; this only guards against a hang.
    let bound = Duration::from_secs_f64(o.warmup + o.duration + 60.0);
    let deadline = Instant::now() + bound;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("upecho load overran its bound".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    let v: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("load output is not JSON ({e}): {stdout}\n{stderr}"))?;
    drop(server);
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
    let held = f("/held").unwrap_or(0.0);
    let rss_end = f("/server/rss_bytes").unwrap_or(0.0) as u64;
    let m = Measured {
        msgs_per_s: f("/msgs_per_s").unwrap_or(0.0),
        mb_per_s: f("/mb_per_s").unwrap_or(0.0),
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
        "e2e: {:7} {:15} {:>10.0} msg/s  p99 {:>8} µs  server {:>6} µs/msg  load {:>6} µs/msg  rss {} KiB{}{}",
        sc.name,
        which.name(),
        m.msgs_per_s,
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

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn print_table(rows: &[(Scenario, Option<Measured>, Option<Measured>)], o: &Opts) {
    println!(
        "\n{} s windows after {} s warm-up; server pinned to CPU 0, upecho load to CPU 1; lower is better for CPU and RSS.\n",
        o.duration, o.warmup
    );
    println!(
        "| scenario | server | msgs/s | MB/s | p99 µs | server CPU µs/msg | load CPU µs/msg | server RSS | upecho/baseline |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (sc, u, b) in rows {
        let ratio = match (u, b) {
            (Some(u), Some(b)) if sc.hold => ratio(u.rss_per_conn, b.rss_per_conn),
            (Some(u), Some(b)) => ratio(u.server_us_per_msg, b.server_us_per_msg),
            _ => "-".into(),
        };
        for (m, name, r) in [(u, "upecho", ratio.as_str()), (b, "tokio baseline", "")] {
            let Some(m) = m else {
                println!("| {} | {name} | failed | | | | | | |", sc.label);
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
            println!(
                "| {}{flags} | {name} | {:.0} | {:.1} | {} | {} | {} | {rss} | {r} |",
                sc.label,
                m.msgs_per_s,
                m.mb_per_s,
                opt(m.p99_us, 0),
                opt(m.server_us_per_msg, 2),
                opt(m.client_us_per_msg, 2),
            );
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 0.1 => format!("{:.4}", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// The chart: per scenario, the server's cost (CPU per message; hold: RSS per connection) of
/// upecho and of the baseline, each bar scaled to the larger of the pair and labelled with its
/// value. Hand-written SVG: a few rectangles and labels need no drawing crate.
mod chart {
    use super::{Measured, Scenario};
    use std::fmt::Write;

    pub fn svg(rows: &[(Scenario, Option<Measured>, Option<Measured>)]) -> String {
        let row_h = 56;
        let w = 760;
        let left = 270;
        let bar_w = (w - left - 110) as f64;
        let h = 60 + row_h * rows.len() + 30;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
        let _ = writeln!(
            s,
            r##"<text x="10" y="22" font-size="15" font-weight="bold">Server CPU time per message (hold: RSS per idle connection), lower is better</text>"##
        );
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="32" width="12" height="12" fill="#2b6cb0"/><text x="{}" y="43">upecho</text><rect x="{}" y="32" width="12" height="12" fill="#c05621"/><text x="{}" y="43">tokio baseline</text>"##,
            left + 16,
            left + 80,
            left + 96
        );
        for (i, (sc, u, b)) in rows.iter().enumerate() {
            let y = 60 + i * row_h;
            let val = |m: &Option<Measured>| {
                m.and_then(|m| {
                    if sc.hold {
                        m.rss_per_conn
                    } else {
                        m.server_us_per_msg
                    }
                })
            };
            let (vu, vb) = (val(u), val(b));
            let max = vu.unwrap_or(0.0).max(vb.unwrap_or(0.0)).max(1e-12);
            let unit = if sc.hold { "B/conn" } else { "µs/msg" };
            let _ = writeln!(
                s,
                r##"<text x="10" y="{}">{}</text>"##,
                y + 26,
                esc(sc.label)
            );
            for (k, (v, color)) in [(vu, "#2b6cb0"), (vb, "#c05621")].into_iter().enumerate() {
                let by = y + 6 + k * 22;
                match v {
                    Some(v) => {
                        let bw = (v / max * bar_w).max(1.0);
                        let _ = writeln!(
                            s,
                            r##"<rect x="{left}" y="{by}" width="{bw:.1}" height="18" fill="{color}"/><text x="{:.1}" y="{}">{} {unit}</text>"##,
                            left as f64 + bw + 6.0,
                            by + 14,
                            if v >= 100.0 || sc.hold {
                                format!("{v:.0}")
                            } else {
                                format!("{v:.2}")
                            }
                        );
                    }
                    None => {
                        let _ =
                            writeln!(s, r##"<text x="{left}" y="{}">no result</text>"##, by + 14);
                    }
                }
            }
        }
        let _ = writeln!(s, "</svg>");
        s
    }

    fn esc(t: &str) -> String {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
}

/// The baseline server, as most Rust users would write it.
mod baseline {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    fn upper(buf: &mut [u8]) {
        buf.make_ascii_uppercase();
    }

    pub fn serve(listen: SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let tcp = TcpListener::bind(listen).await.expect("bind tcp");
            let addr = tcp.local_addr().expect("local addr");
            let udp = UdpSocket::bind(addr).await.expect("bind udp");
            println!("listening tcp {addr}");
            println!("listening udp {addr}");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    upper(&mut buf[..n]);
                    let _ = udp.send_to(&buf[..n], peer).await;
                }
            });
            loop {
                let (mut s, _) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(_) => {
                        // EMFILE and friends: back off rather than spin.
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        upper(&mut buf[..n]);
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

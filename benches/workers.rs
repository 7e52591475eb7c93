//! One process against `--workers N`: server CPU per message and messages/s of the same load,
//! in alternating rounds, so the cost of the supervised-workers design is a measured figure.
//!
//! Each round starts every configuration fresh (the order reverses from round to round), lets
//! `upecho load --server-pid` drive it (that PID is the supervisor, whose figures include its
//! workers'), and also counts the server's context switches from `/proc/PID/status` over the
//! whole run. Nothing is pinned: the load generator shares the cores with the workers, as it
//! would on a real two-core machine, which is why the figure to compare is CPU per message.
//!
//! Usage: `cargo bench --bench workers -- [--rounds N] [--duration S] [--warmup S] [-c CONNS]
//! [--rate MSGS_PER_S] [--configs single,w1,w2] [--out DIR]`; `--rate` makes it an open loop at
//! that rate, so every configuration does the same work, none of them saturated. Defaults (5 rounds of 4 s after 1 s, 1,000
//! connections, single/w1/w2) take about 2 minutes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/util/mod.rs"]
mod util;

struct Opts {
    rounds: usize,
    duration: f64,
    warmup: f64,
    conns: usize,
    rate: Option<f64>,
    configs: Vec<String>,
    out: String,
}

#[derive(Clone, Copy)]
struct Run {
    msgs_per_s: f64,
    server_us: f64,
    load_us: f64,
    switches_per_msg: f64,
}

fn main() {
    let o = opts();
    if let Err(e) = std::fs::create_dir_all(&o.out) {
        eprintln!("workers: cannot create {}: {e}", o.out);
        std::process::exit(1);
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); o.configs.len()];
    for r in 0..o.rounds {
        let mut order: Vec<usize> = (0..o.configs.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            match measure(&o, &o.configs[i]) {
                Ok(m) => {
                    eprintln!(
                        "workers: round {} {:7} {:8.0} msg/s  server {:5.2} µs/msg  load {:5.2} µs/msg  {:.4} switches/msg",
                        r + 1,
                        o.configs[i],
                        m.msgs_per_s,
                        m.server_us,
                        m.load_us,
                        m.switches_per_msg
                    );
                    runs[i].push(m);
                }
                Err(e) => {
                    eprintln!("workers: {}: {e}", o.configs[i]);
                    std::process::exit(1);
                }
            }
        }
    }
    let table = table(&o, &runs);
    print!("{table}");
    let path = format!("{}/table.md", o.out);
    match std::fs::write(&path, table) {
        Ok(()) => eprintln!("workers: wrote {path}"),
        Err(e) => eprintln!("workers: cannot write {path}: {e}"),
    }
}

fn opts() -> Opts {
    let mut o = Opts {
        rounds: 5,
        duration: 4.0,
        warmup: 1.0,
        conns: 1000,
        rate: None,
        configs: vec!["single".into(), "w1".into(), "w2".into()],
        out: "target/workers".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num(&val()).max(1.0) as usize,
            "--duration" => o.duration = num(&val()).clamp(1.0, 600.0),
            "--warmup" => o.warmup = num(&val()).clamp(0.0, 60.0),
            "-c" => o.conns = num(&val()).clamp(1.0, 15000.0) as usize,
            "--rate" => o.rate = Some(num(&val()).clamp(1.0, 1e9)),
            "--configs" => {
                o.configs = val().split(',').map(str::to_string).collect();
                if let Some(bad) = o.configs.iter().find(|c| workers_of(c).is_none()) {
                    usage(&format!("--configs: {bad} is not single or wN"));
                }
            }
            "--out" => o.out = val(),
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

fn num(s: &str) -> f64 {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .unwrap_or_else(|| usage(&format!("{s} is not a number")))
}

fn usage(why: &str) -> ! {
    eprintln!("workers: {why}");
    std::process::exit(2);
}

/// `single` is the plain one-process server (no supervisor); `wN` is `--workers N`.
fn workers_of(config: &str) -> Option<Option<u32>> {
    match config {
        "single" => Some(None),
        w => w
            .strip_prefix('w')?
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some),
    }
}

fn measure(o: &Opts, config: &str) -> Result<Run, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_upecho"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--tcp-only"])
        .env("RUST_LOG", "warn");
    if let Some(Some(n)) = workers_of(config) {
        cmd.args(["--workers", &n.to_string()]);
    }
    let server = util::ServerProc::spawn(cmd, true, false);
    let pid = server.pid();
    // Let every worker settle (the listening lines come once all are ready).
    std::thread::sleep(Duration::from_millis(300));
    let switches0 = switches(pid);
    let started = Instant::now();
    let v = run_load(o, &server.tcp().to_string(), pid)?;
    let elapsed = started.elapsed().as_secs_f64();
    let switches1 = switches(pid);
    drop(server);
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
    let msgs_per_s = f("/msgs_per_s").ok_or("no msgs_per_s")?;
    if v.pointer("/failures")
        .is_some_and(|x| x.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(format!("the load run failed: {v}"));
    }
    Ok(Run {
        msgs_per_s,
        server_us: f("/server/cpu_us_per_msg").ok_or("no server CPU")?,
        load_us: f("/client/cpu_us_per_msg").ok_or("no load CPU")?,
        // Over the whole run (warm-up included), so per message of the same span.
        switches_per_msg: switches1.saturating_sub(switches0) as f64
            / (msgs_per_s * elapsed).max(1.0),
    })
}

fn run_load(o: &Opts, addr: &str, pid: u32) -> Result<Value, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_upecho"))
        .args(["load", addr, "--json", "-q", "-c", &o.conns.to_string()])
        .args([
            "-t",
            &o.duration.to_string(),
            "--warmup",
            &o.warmup.to_string(),
        ])
        .args(["--server-pid", &pid.to_string()])
        .args(
            o.rate
                .map(|r| ["--rate".to_string(), r.to_string()])
                .into_iter()
                .flatten(),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start upecho load: {e}"))?;
    let mut out = String::new();
    if let Some(p) = &mut child.stdout {
        // The load ends itself within --timeout; it closes stdout when it exits.
        let _ = p.read_to_string(&mut out);
    }
    let _ = child.wait();
    serde_json::from_str(out.trim()).map_err(|e| format!("load output is not JSON ({e}): {out}"))
}

/// Voluntary + involuntary context switches of a process and its children, all threads.
fn switches(pid: u32) -> u64 {
    let mut pids = vec![pid];
    if let Ok(kids) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok()),
        );
    }
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn table(o: &Opts, runs: &[Vec<Run>]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "64 B ping-pong x{}{}, {} s windows after {} s warm-up, {} alternating round(s), nothing \
         pinned (the load generator shares the cores); server CPU is the supervisor's and its \
         workers'; medians, with each round's ratio to `{}` run in the same round in brackets.\n",
        o.conns,
        o.rate
            .map(|r| format!(" at {r} msgs/s (open loop)"))
            .unwrap_or_default(),
        o.duration,
        o.warmup,
        o.rounds,
        o.configs[0]
    );
    let _ = writeln!(
        s,
        "| server | msgs/s | server CPU µs/msg | ÷ {} (per round) | load CPU µs/msg | context switches/msg |",
        o.configs[0]
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (i, c) in o.configs.iter().enumerate() {
        let r = &runs[i];
        let ratios: Vec<f64> = r
            .iter()
            .zip(&runs[0])
            .map(|(a, b)| a.server_us / b.server_us)
            .collect();
        let name = match workers_of(c) {
            Some(Some(n)) => format!("`--workers {n}`"),
            _ => "one process".into(),
        };
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.2} | {:.3} ({}) | {:.2} | {:.4} |",
            median(r.iter().map(|m| m.msgs_per_s).collect()),
            median(r.iter().map(|m| m.server_us).collect()),
            median(ratios.clone()),
            ratios
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(r.iter().map(|m| m.load_us).collect()),
            median(r.iter().map(|m| m.switches_per_msg).collect()),
        );
    }
    s
}

//! `upecho load`'s command line: its flags, the address resolved, the exit codes, and the report
//! printed (text, or JSON with `--json`) and the histogram file written.
//!
//! clap checks each option on its own (numbers in range, durations and sizes as
//! [`upecho::units`] reads them, the address as [`upecho::addr`] reads it); what only makes sense
//! together is [`LoadConfig::check`]'s, in the library, so it holds for every caller and is
//! unit-tested there without a command line. The run itself is [`upecho::load::execute`].

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::TransformArg;
use super::load_questions::{
    NO_ANSWER_EXIT, QuestionArgs, THRESHOLD_EXIT, json_out, step_line, thresholds_text, write_page,
};
use super::load_values::{
    Sources, parse_msg_size, parse_rate, parse_timeout, parse_warmup, parse_window,
};
use upecho::addr::{AddrError, DEFAULT_ADDR, HostPort};
use upecho::load::{
    CloseHow, HlogWriter, LoadConfig, MachineLimits, Mode, ProxyVersion, RunOutput, StepKind,
};
use upecho::net::Proto;

/// Longest wait for each address tried when a name resolves to several (see [`resolve`]).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// Each connection keeps `--depth` messages of `-s` bytes in flight; latency per message.
    Pingpong,
    /// Each connection streams continuously and reads back concurrently (MB/s).
    Bulk,
    /// Open `-c` connections, hold them `-t` seconds, then one message on each: how many answer.
    Hold,
    /// Connect, one message, reply, close, again, on `-c` concurrent slots (connections/s).
    Churn,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Pingpong => Mode::Pingpong,
            ModeArg::Bulk => Mode::Bulk,
            ModeArg::Hold => Mode::Hold,
            ModeArg::Churn => Mode::Churn,
        }
    }
}

/// The transport `upecho load` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProtoArg {
    Tcp,
    /// Datagram ping-pong: `-c` sockets with `--depth` datagrams in flight each.
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Proto {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

/// How churn closes each connection once answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CloseArg {
    /// Orderly close (FIN): the usual way, but the load generator keeps every connection in
    /// TIME_WAIT for a minute, which the kernel has to search at every connect.
    Fin,
    /// Abortive close (RST, SO_LINGER 0): no TIME_WAIT anywhere; the server sees a reset.
    Rst,
}

impl From<CloseArg> for CloseHow {
    fn from(c: CloseArg) -> CloseHow {
        match c {
            CloseArg::Fin => CloseHow::Fin,
            CloseArg::Rst => CloseHow::Rst,
        }
    }
}

/// `--send-proxy`: the PROXY protocol header each connection begins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProxyArg {
    /// The text line: PROXY TCP4 src dst sport dport.
    V1,
    /// The binary header (what HAProxy's send-proxy-v2 sends).
    V2,
}

impl From<ProxyArg> for ProxyVersion {
    fn from(p: ProxyArg) -> ProxyVersion {
        match p {
            ProxyArg::V1 => ProxyVersion::V1,
            ProxyArg::V2 => ProxyVersion::V2,
        }
    }
}

/// Options of `upecho load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Server address, HOST:PORT (a name is resolved; IPv6 as [::1]:8005).
    #[arg(default_value = DEFAULT_ADDR, value_parser = upecho::addr::peer_value)]
    pub addr: HostPort,
    /// What each connection does.
    #[arg(long, value_enum, default_value_t = ModeArg::Pingpong)]
    pub mode: ModeArg,
    /// Transport; udp supports pingpong only.
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,
    /// Connections (UDP: sockets); for churn, concurrent connection slots.
    #[arg(short = 'c', long = "connections", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=upecho::load::MAX_CONNS as i64))]
    pub connections: u32,
    /// Message size in bytes, e.g. 64, 1KiB, 64K (bulk: the unit of one write and of
    /// "messages").
    #[arg(short = 's', long = "size", default_value = "64", value_parser = parse_msg_size)]
    pub size: u64,
    /// Messages in flight per connection (pipelining); bulk: messages a connection may be
    /// ahead of its replies (at least 2, so the stream never pauses).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=upecho::load::MAX_DEPTH as i64))]
    pub depth: u32,
    /// How long to measure (hold: to hold the connections open): seconds, or 500ms, 10s, 5m.
    #[arg(short = 't', long = "duration", default_value = "10", value_parser = parse_window)]
    pub duration: Duration,
    /// Load before measuring starts, not counted: seconds, or 500ms, 10s, 5m.
    #[arg(long, default_value = "1", value_parser = parse_warmup)]
    pub warmup: Duration,
    /// Open loop: a fixed total rate in messages/s; latency counts from each message's intended
    /// send time, so a stalled server shows in the percentiles (no coordinated omission).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// The transform every reply must show; any other byte is a mismatch and fails the run.
    #[arg(long, value_enum, default_value_t = TransformArg::Upper)]
    pub expect: TransformArg,
    /// churn: how each connection is closed after its reply.
    #[arg(long, value_enum, default_value_t = CloseArg::Fin)]
    pub close: CloseArg,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.9 (about 28k
    /// connections fit per source address and server address).
    #[arg(long, value_name = "ADDRS")]
    pub source: Option<Sources>,
    /// Independent event loops, each on its own thread with its share of the connections
    /// (per process, with --processes).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=upecho::load::MAX_THREADS as i64))]
    pub threads: u32,
    /// Spread the connections over N processes, each with its own open-file limit (one summary,
    /// latency histograms merged); e.g. -c 100000 --processes 6 --source 127.0.0.2-127.0.0.9.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=upecho::load::MAX_PROCESSES as i64))]
    pub processes: u32,
    /// Begin every TCP connection with a PROXY protocol header (v1 text, v2 binary) naming its
    /// real source and destination, as a load balancer would.
    #[arg(long, value_enum, value_name = "VERSION")]
    pub send_proxy: Option<ProxyArg>,
    /// How long without a reply before a message counts as timed out (UDP: lost).
    #[arg(long, default_value = "2", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// How long a connection attempt may take before it counts as timed out.
    #[arg(long, default_value = "10", value_parser = parse_timeout)]
    pub connect_timeout: Duration,
    /// Count connection errors (refused, reset, closed, timed out), UDP losses and duplicate
    /// replies, but pass the run if every byte was right and messages got through. Without it
    /// any of them fails the run.
    #[arg(long)]
    pub tolerate_errors: bool,
    /// Print one JSON object on stdout (the human summary then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write the latency distribution to FILE in HdrHistogram's .hgrm text form (milliseconds).
    #[arg(long, value_name = "FILE")]
    pub histogram: Option<PathBuf>,
    /// Write one latency histogram per second of the window to FILE in HdrHistogram's interval
    /// log format (.hlog, for HistogramLogProcessor and `upecho load-merge`).
    #[arg(long, value_name = "FILE")]
    pub histogram_log: Option<PathBuf>,
    /// Internal: run as process I of --processes (started by the parent).
    #[arg(long, hide = true, value_name = "I")]
    pub process_index: Option<usize>,
    /// Internal: the address the parent resolved, so every process goes to the same one.
    #[arg(long, hide = true, value_name = "ADDR")]
    pub resolved_addr: Option<SocketAddr>,
    /// Also report this process's CPU time per message and RSS (the server under test), with
    /// its descendants' (a `serve --workers` supervisor and its workers).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// No progress line each second.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub q: QuestionArgs,
}

/// The configuration the arguments describe, towards `addr` (already resolved).
fn config(a: &LoadArgs, addr: SocketAddr) -> LoadConfig {
    LoadConfig {
        addr,
        mode: a.mode.into(),
        proto: a.proto.into(),
        conns: a.connections as usize,
        // In range: parse_msg_size caps it at 64 MiB.
        size: a.size as usize,
        depth: a.depth as usize,
        duration: a.duration,
        warmup: a.warmup,
        rate: a.rate,
        expect: a.expect.into(),
        sources: a.source.clone().map(|s| s.0).unwrap_or_default(),
        close: a.close.into(),
        threads: a.threads as usize,
        processes: a.processes as usize,
        first_conn: 0,
        send_proxy: a.send_proxy.map(Into::into),
        timeout: a.timeout,
        connect_timeout: a.connect_timeout,
        tolerate_errors: a.tolerate_errors,
        server_pid: a.server_pid,
        quiet: a.quiet,
    }
    .with_step(&a.q)
}

/// A step of `--search` in a child of `--processes`: the parent's rate, window and warm-up for
/// it, over what the command line says.
trait WithStep {
    fn with_step(self, q: &QuestionArgs) -> Self;
}

impl WithStep for LoadConfig {
    fn with_step(mut self, q: &QuestionArgs) -> LoadConfig {
        if let Some(r) = q.step_rate {
            self.rate = Some(r);
            // The search judges errors itself, step by step.
            self.tolerate_errors = true;
        }
        if let Some(d) = q.step_duration {
            self.duration = Duration::from_secs_f64(d.clamp(0.1, 86_400.0));
        }
        if let Some(w) = q.step_warmup {
            self.warmup = Duration::from_secs_f64(w.clamp(0.0, 86_400.0));
        }
        self
    }
}

/// The one address the run goes to. A literal address is itself. A name may resolve to several
/// (`localhost`: `::1` and `127.0.0.1`), and all of the run's connections go to one: of those
/// of the `--source` addresses' family, if given, the first that accepts a TCP connection (as
/// `nc` and `upecho tcp` choose), else the first. The probe connection is closed at once. UDP
/// cannot be probed without sending, so it takes the first, as `upecho udp` does.
fn resolve(hp: &HostPort, proto: Proto, sources: &[IpAddr]) -> Result<SocketAddr, AddrError> {
    let mut addrs = hp.resolve()?;
    if let Some(src) = sources.first() {
        let same: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == src.is_ipv4())
            .collect();
        if !same.is_empty() {
            addrs = same;
        }
    }
    let first = match addrs.first() {
        Some(&a) => a,
        None => {
            return Err(AddrError::Unresolvable {
                addr: hp.to_string(),
                source: io::Error::new(io::ErrorKind::NotFound, "the name has no addresses"),
            });
        }
    };
    if addrs.len() == 1 || proto == Proto::Udp {
        return Ok(first);
    }
    let accepting = addrs
        .iter()
        .find(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok());
    Ok(accepting.copied().unwrap_or(first))
}

/// Runs `upecho load`: exit 0 when every byte was right and work got done, 1 when not (or the
/// address does not resolve, or the report cannot be written), 2 on a usage error, 3 when a
/// search found no rate meeting its target, 99 when a `--fail-if` threshold was crossed, 130
/// (143) when SIGINT (SIGTERM) cut the run short (see `load_questions`).
pub(crate) fn run(args: LoadArgs) -> ExitCode {
    let sources = args.source.clone().map(|s| s.0).unwrap_or_default();
    // A name that does not resolve is a failure of the run, not of its usage, as for the
    // clients: the same command may work a minute later.
    let addr = match args.resolved_addr {
        Some(a) => a,
        None => match resolve(&args.addr, args.proto.into(), &sources) {
            Ok(a) => a,
            Err(e) => {
                say(&format!("upecho load: {e}\n"));
                return ExitCode::FAILURE;
            }
        },
    };
    let cfg = match config(&args, addr).check(&MachineLimits::probe()) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    if let Some(i) = args.process_index {
        // A child of --processes: its share, reported to the parent; no output of its own.
        if i >= cfg.processes {
            return usage(&format!(
                "--process-index {i} is not below --processes {}",
                cfg.processes
            ));
        }
        upecho::load::execute_child(&cfg.share(i));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = cfg.check_server_pid() {
        return usage(&e);
    }
    // Created before the run, so that a path that cannot be written fails now, not at the end.
    let hlog = match create_hlog(args.histogram_log.as_deref(), "upecho load") {
        Ok(w) => w,
        Err(code) => return code,
    };
    let spec = args.q.spec();
    if spec.is_some() && !matches!(cfg.mode, Mode::Pingpong | Mode::Churn) {
        return usage(&format!(
            "--search needs --mode pingpong or churn (an open-loop rate), not {}",
            cfg.mode.name()
        ));
    }
    let exe = if cfg.processes > 1 {
        match std::env::current_exe() {
            Ok(p) => Some(p),
            Err(e) => {
                say(&format!(
                    "upecho load: cannot find this program to start its processes: {e}\n"
                ));
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    // The same command line again (it is "load ..."), told which share is whose and where the
    // parent resolved the address to (and, in a search, the step's rate and times).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let one_run = |cfg: &LoadConfig, hlog: Option<HlogWriter>, step: bool| -> RunOutput {
        match &exe {
            Some(exe) => {
                let child = |i: usize| {
                    let mut c = std::process::Command::new(exe);
                    c.args(&argv)
                        .arg("--process-index")
                        .arg(i.to_string())
                        .arg("--resolved-addr")
                        .arg(addr.to_string());
                    if step {
                        c.arg("--step-rate")
                            .arg(cfg.rate.unwrap_or(1.0).to_string())
                            .arg("--step-duration")
                            .arg(cfg.duration.as_secs_f64().to_string())
                            .arg("--step-warmup")
                            .arg(cfg.warmup.as_secs_f64().to_string());
                    }
                    c
                };
                upecho::load::execute_processes(cfg, hlog, &child)
            }
            None => upecho::load::execute(cfg, hlog),
        }
    };
    let (outcome, search) = match &spec {
        None => (Some(one_run(&cfg, hlog, false)), None),
        Some(spec) => {
            // Each step is a run of its own; the search judges errors itself. The interval log
            // is the confirmation's (the last one written).
            let base = LoadConfig {
                quiet: true,
                tolerate_errors: true,
                ..cfg.clone()
            };
            let log_path = hlog.map(|w| w.path().to_path_buf());
            let quiet = args.quiet;
            let mut n = 0;
            let mut step_run = |c: &LoadConfig, kind: StepKind| {
                let log = match (&log_path, kind) {
                    (Some(p), StepKind::Confirm) => HlogWriter::create(p).ok(),
                    _ => None,
                };
                one_run(c, log, true)
            };
            let mut seen = |s: &upecho::load::Step| {
                n += 1;
                if !quiet {
                    say(&step_line(n, s));
                }
            };
            let (found, last) = upecho::load::search(&base, spec, &mut step_run, &mut seen);
            (last, Some(found))
        }
    };
    if let Some(o) = &outcome
        && let Some(e) = &o.hlog_error
    {
        say(&format!("upecho load: {e}\n"));
        return ExitCode::FAILURE;
    }
    if let Some(o) = &outcome
        && let Some(path) = &args.histogram
        && let Err(e) = std::fs::write(path, upecho::load::hgrm(&o.hist))
    {
        say(&format!(
            "upecho load: cannot write {}: {e}\n",
            path.display()
        ));
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.q.report {
        let written = match &outcome {
            Some(o) => write_page(path, o, search.as_ref()),
            None => Err("no run to chart: the search was interrupted before any step".into()),
        };
        if let Err(e) = written {
            say(&format!("upecho load: {e}\n"));
            return ExitCode::FAILURE;
        }
    }
    let report = outcome.as_ref().map(|o| &o.report);
    let fail_if = &args.q.fail_if;
    let crossed = report
        .map(|r| upecho::load::crossed(fail_if, r))
        .unwrap_or_default();
    let mut text = String::new();
    if let Some(s) = &search {
        text.push_str(&s.text());
    }
    if let Some(r) = report {
        if let Some(s) = &search {
            text.push_str(if s.answer.is_some() {
                "the confirmation run:\n"
            } else {
                "the last step's run:\n"
            });
        }
        text.push_str(&r.text());
    }
    text.push_str(&thresholds_text(fail_if, &crossed));
    // The report is the product: if it cannot be written (a closed pipe, a full disk), the
    // run did not deliver, whatever it measured.
    let written = if args.json {
        say(&text);
        write_stdout(&format!(
            "{}\n",
            json_out(report, search.as_ref(), fail_if, &crossed)
        ))
    } else {
        write_stdout(&text)
    };
    if let Err(e) = written {
        say(&format!("upecho load: cannot write the report: {e}\n"));
        return ExitCode::FAILURE;
    }
    let signal = report.and_then(|r| r.signal);
    let wrong_bytes = search
        .as_ref()
        .is_some_and(|s| s.steps.iter().any(|st| st.mismatches > 0));
    match signal {
        // As a shell reports a command killed by the signal, though this one finished in order
        // and printed its summary: scripts can tell an interrupted run from a failed one.
        Some(sig) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        None if wrong_bytes => ExitCode::FAILURE,
        None if search.as_ref().is_some_and(|s| s.interrupted) => ExitCode::from(130),
        None if search.as_ref().is_some_and(|s| s.answer.is_none()) => {
            ExitCode::from(NO_ANSWER_EXIT)
        }
        None if search.is_none() && !report.is_some_and(|r| r.ok) => ExitCode::FAILURE,
        None if !crossed.is_empty() => ExitCode::from(THRESHOLD_EXIT),
        None => ExitCode::SUCCESS,
    }
}

/// A usage error: one line (and the pointer to --help), exit 2.
fn usage(e: &dyn std::fmt::Display) -> ExitCode {
    say(&format!(
        "error: {e}\n\nFor more information, try '--help'.\n"
    ));
    ExitCode::from(2)
}

/// The `--histogram-log` file, created now so that a path that cannot be written fails before
/// any work; on failure the one line is said and the exit code returned.
pub(super) fn create_hlog(
    path: Option<&std::path::Path>,
    who: &str,
) -> Result<Option<HlogWriter>, ExitCode> {
    match path.map(|p| (p, HlogWriter::create(p))) {
        None => Ok(None),
        Some((_, Ok(w))) => Ok(Some(w)),
        Some((p, Err(e))) => {
            say(&format!("{who}: cannot write {}: {e}\n", p.display()));
            Err(ExitCode::FAILURE)
        }
    }
}

/// Writes `text` to stdout and flushes it. Explicit, because `print!` panics on a write error
/// (and Rust ignores SIGPIPE, so a closed pipe is such an error, EPIPE).
pub(super) fn write_stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes `text` to stderr, returning whether it could: `eprint!` would panic on a closed
/// stderr, and there is nowhere left to report that failure.
pub(super) fn say(text: &str) -> bool {
    let mut err = io::stderr().lock();
    err.write_all(text.as_bytes())
        .and_then(|()| err.flush())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use upecho::load::CHECK_INTERVAL;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    const LIM: MachineLimits = MachineLimits {
        nofile: 20_000,
        ports: 28_232,
    };

    fn args(args: &[&str]) -> Result<LoadArgs, String> {
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    /// Parses and checks, towards 127.0.0.1:9 unless a literal address is given.
    fn parse(a: &[&str]) -> Result<LoadConfig, String> {
        let a = args(a)?;
        let addr = a.addr.resolve().map_err(|e| e.to_string())?[0];
        config(&a, addr).check(&LIM).map_err(|e| e.0)
    }

    #[test]
    fn no_options_are_the_library_defaults() {
        assert_eq!(parse(&[]).unwrap(), LoadConfig::default());
    }

    #[test]
    fn source_single_range_and_list() {
        let s: Sources = "127.0.0.2-127.0.0.4,127.0.0.9".parse().unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(s.0, want);
        let s: Sources = "::1".parse().unwrap();
        assert_eq!(s.0, vec!["::1".parse::<IpAddr>().unwrap()]);
        let s: Sources = "fd00::1-fd00::3".parse().unwrap();
        assert_eq!(s.0.len(), 3);
    }

    #[test]
    fn source_range_crosses_octet_boundary() {
        let s: Sources = "10.0.0.255-10.0.1.1".parse().unwrap();
        assert_eq!(s.0.len(), 3);
        assert_eq!(s.0[1], "10.0.1.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn source_rejects_garbage_backwards_mixed_and_huge() {
        for bad in [
            "",
            "127.0.0.300",
            "127.0.0.9-127.0.0.2",
            "127.0.0.1-::1",
            "1.0.0.0-2.0.0.0",
            "127.0.0.1-",
        ] {
            assert!(bad.parse::<Sources>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_are_pingpong_tcp_upper() {
        let c = parse(&["127.0.0.1:9"]).unwrap();
        assert_eq!(c.mode, Mode::Pingpong);
        assert_eq!(c.proto, Proto::Tcp);
        assert_eq!((c.conns, c.size, c.depth, c.threads), (50, 64, 1, 1));
        assert_eq!(c.expect, upecho::Transform::Upper);
    }

    #[test]
    fn incompatible_options_are_usage_errors() {
        assert!(
            parse(&["--proto", "udp", "--mode", "bulk"])
                .unwrap_err()
                .contains("pingpong only")
        );
        assert!(
            parse(&["--proto", "udp", "-s", "4"])
                .unwrap_err()
                .contains("-s between")
        );
        assert!(parse(&["--proto", "udp", "-s", "70000"]).is_err());
        assert!(
            parse(&["--mode", "bulk", "--rate", "10"])
                .unwrap_err()
                .contains("--rate")
        );
        assert!(parse(&["--mode", "churn", "--rate", "10"]).is_ok());
        assert!(
            parse(&["[::1]:9", "--source", "127.0.0.2"])
                .unwrap_err()
                .contains("family")
        );
        assert!(parse(&["-t", "0"]).is_err());
        assert!(parse(&["-c", "0"]).is_err());
        assert!(parse(&["--rate", "-1"]).is_err());
        assert!(parse(&["--warmup", "nan"]).is_err());
        assert!(parse(&["--mode", "sideways"]).is_err());
    }

    #[test]
    fn durations_and_rates_have_floors_that_say_why_and_a_ceiling() {
        for (flag, tiny) in [
            ("-t", "0.01"),
            ("-t", "50ms"),
            ("--timeout", "1e-9"),
            ("--connect-timeout", "0.099"),
        ] {
            let e = parse(&[flag, tiny]).unwrap_err();
            assert!(e.contains("at least 0.1"), "{flag}: {e}");
        }
        let e = parse(&["--rate", "1e-19"]).unwrap_err();
        assert!(e.contains("at least 0.001"), "{e}");
        for (flag, huge) in [
            ("-t", "1e19"),
            ("-t", "2days"),
            ("--warmup", "1e19"),
            ("--timeout", "86400.5"),
            ("--connect-timeout", "inf"),
            ("--rate", "1e19"),
        ] {
            assert!(parse(&[flag, huge]).is_err(), "{flag} {huge}");
        }
        // The floors and ceilings themselves are accepted, and no warm-up is fine.
        let c = parse(&[
            "-t",
            "0.1",
            "--timeout",
            "86400",
            "--warmup",
            "0",
            "--rate",
            "0.001",
        ])
        .unwrap();
        assert_eq!(c.duration, CHECK_INTERVAL);
        assert!(parse(&["--rate", "1e9", "--connect-timeout", "0.1"]).is_ok());
    }

    #[test]
    fn durations_and_sizes_take_units() {
        let c = parse(&[
            "-t",
            "500ms",
            "--warmup",
            "1m",
            "--timeout",
            "1.5",
            "-s",
            "1KiB",
        ])
        .unwrap();
        assert_eq!(c.duration, Duration::from_millis(500));
        assert_eq!(c.warmup, Duration::from_secs(60));
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.size, 1024);
        assert_eq!(parse(&["-s", "64K"]).unwrap().size, 65_536);
        for bad in ["0", "lots", "65MiB", "99999999999"] {
            assert!(parse(&["-s", bad]).is_err(), "-s {bad}");
        }
    }

    #[test]
    fn addresses_are_host_port_with_an_example_when_malformed() {
        let e = args(&["not-an-address"]).unwrap_err();
        assert!(e.contains("expected HOST:PORT, e.g. 127.0.0.1:8005"), "{e}");
        assert!(args(&["localhost:0"]).unwrap_err().contains("port 0"));
        let a = args(&["localhost:8005"]).unwrap();
        assert_eq!(a.addr.host, "localhost");
        let a = args(&["[::1]:9"]).unwrap();
        assert_eq!(
            resolve(&a.addr, Proto::Tcp, &[]).unwrap(),
            "[::1]:9".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn a_name_resolves_to_a_listening_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hp = HostPort::parse(&format!("localhost:{port}")).unwrap();
        let a = resolve(&hp, Proto::Tcp, &[]).unwrap();
        assert_eq!(a, SocketAddr::from(([127, 0, 0, 1], port)));
    }

    #[test]
    fn messages_in_flight_are_bounded() {
        let e = parse(&["-c", "19000", "--depth", "65536"]).unwrap_err();
        assert!(e.contains("in flight") && e.contains("4194304"), "{e}");
        assert!(parse(&["-c", "64", "--depth", "65536"]).is_ok());
    }

    #[test]
    fn connections_split_evenly_over_threads() {
        // Never more threads than connections.
        assert_eq!(parse(&["-c", "2", "--threads", "8"]).unwrap().threads, 2);
    }
}

//! The command line of `upecho load` and its checked form, [`Config`].
//!
//! clap checks each option on its own (ranges, enums, addresses); [`Config::from_args`] checks
//! what only makes sense together (UDP only pings, a size that fits a datagram, enough file
//! descriptors and ephemeral ports for `-c`). Everything here is pure apart from reading the
//! process's file limit and the kernel's port range, so the rules can be unit-tested.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::Transform;

/// Largest UDP payload over IPv4 (65535 - 20 byte IP header - 8 byte UDP header).
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest TCP message: far beyond any useful benchmark, small enough that `depth * size`
/// cannot overflow a u64 stream offset in any run we could make.
pub const MAX_TCP_MESSAGE: usize = 64 << 20;
/// Bytes at the start of each UDP datagram that carry its sequence number (see `payload`).
pub const UDP_HEADER: usize = 8;
/// Descriptors the process needs besides its connections: stdio, one epoll and one timer per
/// thread, the histogram file, the server's /proc files, and some slack.
const FD_RESERVE: u64 = 32;
/// Source addresses a `--source` list may name; far more than 127.0.0.0/8 needs for any `-c`.
const MAX_SOURCES: u128 = 1 << 16;
/// How often a worker looks at its timeouts and the main thread's phase when no event wakes it.
/// It is also the floor of `-t` and the timeouts: finer values could not be honoured.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest any duration option may be: a day.
const MAX_SECS: f64 = 86_400.0;
/// Slowest and fastest `--rate`. Below the floor hardly a message would be sent in the longest
/// run; above the ceiling the schedule is only ever behind.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1e9;
/// Messages in flight over all connections (`-c` x `--depth`) at most: each has its latency
/// origin stored (16 bytes; a UDP slot ~40), allocated up front, so this bounds that to 64 MiB
/// (UDP: 160 MiB) instead of letting an absurd product exhaust memory.
pub const MAX_IN_FLIGHT: u64 = 1 << 22;

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each connection keeps `--depth` messages of `-s` bytes in flight; latency per message.
    Pingpong,
    /// Each connection streams continuously and reads back concurrently (MB/s).
    Bulk,
    /// Open `-c` connections, hold them `-t` seconds, then one message on each: how many answer.
    Hold,
    /// Connect, one message, reply, close, again, on `-c` concurrent slots (connections/s).
    Churn,
}

/// The transport `upecho load` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    /// Datagram ping-pong: `-c` sockets with `--depth` datagrams in flight each.
    Udp,
}

/// How churn closes each connection once answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Close {
    /// Orderly close (FIN): the usual way, but the load generator keeps every connection in
    /// TIME_WAIT for a minute, which the kernel has to search at every connect.
    Fin,
    /// Abortive close (RST, SO_LINGER 0): no TIME_WAIT anywhere; the server sees a reset.
    Rst,
}

/// One or more source addresses to bind before connecting, from `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(pub Vec<IpAddr>);

impl FromStr for Sources {
    type Err = String;

    /// Parses `A`, `A-B` (inclusive) and comma-separated lists of both, IPv4 or IPv6.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (parse_ip(a)?, parse_ip(b)?),
                None => {
                    let a = parse_ip(item)?;
                    (a, a)
                }
            };
            let (lo, hi, v6) = match (lo, hi) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    (u128::from(u32::from(a)), u128::from(u32::from(b)), false)
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), true),
                _ => return Err(format!("range {item:?} mixes IPv4 and IPv6")),
            };
            if lo > hi {
                return Err(format!("range {item:?} runs backwards"));
            }
            if out.len() as u128 + (hi - lo + 1) > MAX_SOURCES {
                return Err(format!("more than {MAX_SOURCES} source addresses"));
            }
            for v in lo..=hi {
                out.push(if v6 {
                    IpAddr::V6(Ipv6Addr::from(v))
                } else {
                    // In range: both ends were IPv4.
                    IpAddr::V4(Ipv4Addr::from(v as u32))
                });
            }
        }
        Ok(Sources(out))
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", s.trim()))
}

/// Options of `upecho load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Server address (ip:port).
    #[arg(default_value = "127.0.0.1:8005")]
    pub addr: SocketAddr,
    /// What each connection does.
    #[arg(long, value_enum, default_value_t = Mode::Pingpong)]
    pub mode: Mode,
    /// Transport; udp supports pingpong only.
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,
    /// Connections (UDP: sockets); for churn, concurrent connection slots.
    #[arg(short = 'c', long = "connections", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub connections: u32,
    /// Message size in bytes (bulk: the unit of one write and of "messages").
    #[arg(short = 's', long = "size", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TCP_MESSAGE as u64))]
    pub size: u64,
    /// Messages in flight per connection (pipelining); bulk: messages a connection may be
    /// ahead of its replies (at least 2, so the stream never pauses).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub depth: u32,
    /// Seconds to measure (hold: seconds to hold the connections open).
    #[arg(short = 't', long = "duration", default_value_t = 10.0, value_parser = parse_window)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0, value_parser = parse_warmup)]
    pub warmup: f64,
    /// Open loop: a fixed total rate in messages/s; latency counts from each message's intended
    /// send time, so a stalled server shows in the percentiles (no coordinated omission).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// The transform every reply must show; any other byte is a mismatch and fails the run.
    #[arg(long, value_enum, default_value_t = Transform::Upper)]
    pub expect: Transform,
    /// churn: how each connection is closed after its reply.
    #[arg(long, value_enum, default_value_t = Close::Fin)]
    pub close: Close,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.9 (about 28k
    /// connections fit per source address and server address).
    #[arg(long, value_name = "ADDRS")]
    pub source: Option<Sources>,
    /// Independent event loops, each on its own thread with its share of the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Seconds without a reply before a message counts as timed out (UDP: lost).
    #[arg(long, default_value_t = 2.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Seconds a connection attempt may take before it counts as timed out.
    #[arg(long, default_value_t = 10.0, value_parser = parse_timeout)]
    pub connect_timeout: f64,
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
    /// Also report this process's CPU time per message and RSS (the server under test).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// No progress line each second.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Seconds between `min` and a day; `why` says what the floor is for.
fn parse_secs(s: &str, min: f64, why: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=MAX_SECS).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between {min} and {MAX_SECS}{why}"
        )),
    }
}

fn parse_warmup(s: &str) -> Result<f64, String> {
    parse_secs(s, 0.0, "")
}

fn parse_window(s: &str) -> Result<f64, String> {
    let floor = CHECK_INTERVAL.as_secs_f64();
    parse_secs(
        s,
        floor,
        &format!(
            " (at least {floor}: idle workers look at the clock every {floor} s, so a shorter \
             window may count nothing)"
        ),
    )
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let floor = CHECK_INTERVAL.as_secs_f64();
    parse_secs(
        s,
        floor,
        &format!(" (at least {floor}: timeouts are checked every {floor} s)"),
    )
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (MIN_RATE..=MAX_RATE).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate between {MIN_RATE} and {MAX_RATE:e} messages/s (at least \
             {MIN_RATE}: a slower rate would hardly send a message in a day)"
        )),
    }
}

/// A combination of options that cannot run; printed as a usage error (exit 2).
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The checked configuration every worker runs from.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub mode: Mode,
    pub udp: bool,
    pub conns: usize,
    pub size: usize,
    pub depth: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub rate: Option<f64>,
    pub expect: Transform,
    pub sources: Vec<IpAddr>,
    pub close: Close,
    pub threads: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub tolerate_errors: bool,
    pub json: bool,
    pub histogram: Option<PathBuf>,
    pub server_pid: Option<u32>,
    pub quiet: bool,
}

/// What the machine allows, passed in so the checks stay testable.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Soft RLIMIT_NOFILE after raising it.
    pub nofile: u64,
    /// Ephemeral ports the kernel hands out per (source, destination) pair.
    pub ports: u64,
}

impl Limits {
    /// Raises the file limit and reads the ephemeral port range.
    pub fn probe() -> Limits {
        let nofile = crate::net::raise_nofile_limit().unwrap_or(1024);
        let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|w| w.parse::<u64>());
                match (it.next(), it.next()) {
                    (Some(Ok(lo)), Some(Ok(hi))) if hi >= lo => Some(hi - lo + 1),
                    _ => None,
                }
            })
            // Linux's default range, 32768-60999.
            .unwrap_or(28_232);
        Limits { nofile, ports }
    }
}

impl Config {
    /// Checks the options against each other and against the machine's limits.
    pub fn from_args(a: LoadArgs, lim: Limits) -> Result<Config, UsageError> {
        let err = |m: String| Err(UsageError(m));
        let udp = a.proto == ProtoArg::Udp;
        let size = a.size as usize;
        if udp && a.mode != Mode::Pingpong {
            return err(format!(
                "--proto udp supports --mode pingpong only, not {}",
                mode_name(a.mode)
            ));
        }
        if udp && !(UDP_HEADER..=MAX_DATAGRAM).contains(&size) {
            return err(format!(
                "--proto udp needs -s between {UDP_HEADER} (the sequence header) and {MAX_DATAGRAM} bytes, got {size}"
            ));
        }
        if a.rate.is_some() && a.mode != Mode::Pingpong {
            return err(format!(
                "--rate applies to --mode pingpong only, not {}",
                mode_name(a.mode)
            ));
        }
        let sources = a.source.map(|s| s.0).unwrap_or_default();
        if let Some(bad) = sources.iter().find(|ip| ip.is_ipv4() != a.addr.is_ipv4()) {
            return err(format!(
                "source {bad} is not of the same IP family as {}",
                a.addr
            ));
        }
        let conns = a.connections as usize;
        let threads = (a.threads as usize).min(conns);
        let need = conns as u64 + FD_RESERVE + 2 * threads as u64;
        if need > lim.nofile {
            return err(format!(
                "-c {conns} needs about {need} open files, but this process may open only {} \
                 (RLIMIT_NOFILE, already raised to its hard limit); lower -c or raise the hard \
                 limit (ulimit -Hn)",
                lim.nofile
            ));
        }
        if !udp {
            let per_source = lim.ports;
            let fit = per_source * sources.len().max(1) as u64;
            if conns as u64 > fit {
                return err(format!(
                    "-c {conns} cannot fit: each source address has {per_source} ephemeral ports \
                     towards {} ({} source address(es) give {fit}); add source addresses, e.g. \
                     --source 127.0.0.2-127.0.0.{}",
                    a.addr,
                    sources.len().max(1),
                    1 + (conns as u64).div_ceil(per_source).min(254)
                ));
            }
        }
        let in_flight = u64::from(a.connections) * u64::from(a.depth);
        if a.mode == Mode::Pingpong && in_flight > MAX_IN_FLIGHT {
            return err(format!(
                "-c {conns} x --depth {} is {in_flight} messages in flight, more than the \
                 {MAX_IN_FLIGHT} the generator keeps latency origins for; lower -c or --depth",
                a.depth
            ));
        }
        Ok(Config {
            addr: a.addr,
            mode: a.mode,
            udp,
            conns,
            size,
            depth: a.depth as usize,
            duration: Duration::from_secs_f64(a.duration),
            warmup: Duration::from_secs_f64(a.warmup),
            rate: a.rate,
            expect: a.expect,
            sources,
            close: a.close,
            threads,
            timeout: Duration::from_secs_f64(a.timeout),
            connect_timeout: Duration::from_secs_f64(a.connect_timeout),
            tolerate_errors: a.tolerate_errors,
            json: a.json,
            histogram: a.histogram,
            server_pid: a.server_pid,
            quiet: a.quiet,
        })
    }

    /// How many connections thread `t` of `self.threads` runs: an even split.
    pub fn conns_of_thread(&self, t: usize) -> usize {
        self.conns / self.threads + usize::from(t < self.conns % self.threads)
    }

    /// The source address of global connection `id`, if `--source` was given.
    pub fn source_of(&self, id: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[id % self.sources.len()])
        }
    }
}

/// The command-line name of a mode.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Pingpong => "pingpong",
        Mode::Bulk => "bulk",
        Mode::Hold => "hold",
        Mode::Churn => "churn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    const LIM: Limits = Limits {
        nofile: 20_000,
        ports: 28_232,
    };

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::from_args(cli.args, LIM).map_err(|e| e.0)
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
        assert!(!c.udp);
        assert_eq!((c.conns, c.size, c.depth, c.threads), (50, 64, 1, 1));
        assert_eq!(c.expect, Transform::Upper);
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
            parse(&["--mode", "churn", "--rate", "10"])
                .unwrap_err()
                .contains("--rate")
        );
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
    fn messages_in_flight_are_bounded() {
        let e = parse(&["-c", "19000", "--depth", "65536"]).unwrap_err();
        assert!(e.contains("in flight") && e.contains("4194304"), "{e}");
        assert!(parse(&["-c", "64", "--depth", "65536"]).is_ok());
        assert!(parse(&["--proto", "udp", "-c", "65", "--depth", "65536"]).is_err());
        // Only ping-pong keeps a latency origin per message of depth.
        assert!(parse(&["--mode", "bulk", "-c", "19000", "--depth", "65536"]).is_ok());
    }

    #[test]
    fn too_many_connections_for_files_or_ports_say_why() {
        let e = parse(&["-c", "19990"]).unwrap_err();
        assert!(e.contains("open files") && e.contains("20000"), "{e}");
        let lim = Limits {
            nofile: 1 << 20,
            ports: 28_232,
        };
        let cli = Cli::try_parse_from(["load", "-c", "30000"]).unwrap();
        let e = Config::from_args(cli.args, lim).unwrap_err().0;
        assert!(e.contains("cannot fit") && e.contains("--source"), "{e}");
        let cli = Cli::try_parse_from(["load", "-c", "30000", "--source", "127.0.0.2-127.0.0.3"])
            .unwrap();
        assert!(Config::from_args(cli.args, lim).is_ok());
    }

    #[test]
    fn connections_split_evenly_over_threads() {
        let c = parse(&["-c", "10", "--threads", "3"]).unwrap();
        let split: Vec<usize> = (0..3).map(|t| c.conns_of_thread(t)).collect();
        assert_eq!(split, vec![4, 3, 3]);
        // Never more threads than connections.
        assert_eq!(parse(&["-c", "2", "--threads", "8"]).unwrap().threads, 2);
    }
}

//! What a load run is asked to do ([`LoadConfig`]) and the rules a runnable one obeys.
//!
//! The library knows no command line: `upecho load`'s flags live in the binary (`src/cli/load.rs`),
//! which parses them, resolves the address and builds a `LoadConfig`. What only makes sense
//! together (UDP only pings, a size that fits a datagram of the address's family, enough file
//! descriptors and ephemeral ports for `-c`, a bounded number of messages in flight) is checked
//! here, by [`LoadConfig::check`], so that every caller gets the same rules and they can be
//! unit-tested without parsing anything. The check is pure: what the machine allows comes in as
//! [`MachineLimits`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::Transform;
use crate::net::{FD_RESERVE, Proto, max_datagram};

/// Largest TCP message: far beyond any useful benchmark, small enough that `depth * size`
/// cannot overflow a u64 stream offset in any run we could make.
pub const MAX_TCP_MESSAGE: usize = 64 << 20;
/// Bytes at the start of each UDP datagram that carry its sequence number (see `payload`).
pub const UDP_HEADER: usize = 8;
/// How often a worker looks at its timeouts and the main thread's stage when no event wakes it.
/// It is also the floor of the window and the timeouts: finer values could not be honoured.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest any duration of a run may be: a day.
pub const MAX_RUN_DURATION: Duration = Duration::from_secs(86_400);
/// Slowest and fastest `rate`. Below the floor hardly a message would be sent in the longest
/// run; above the ceiling the schedule is only ever behind.
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1e9;
/// Messages in flight over all connections (`conns` x `depth`) at most: each has its latency
/// origin stored (16 bytes; a UDP slot ~40), allocated up front, so this bounds that to 64 MiB
/// (UDP: 160 MiB) instead of letting an absurd product exhaust memory.
pub const MAX_IN_FLIGHT: u64 = 1 << 22;
/// Most connections (UDP: sockets) and messages in flight per connection.
pub const MAX_CONNS: usize = 10_000_000;
pub const MAX_DEPTH: usize = 65_536;
/// Most worker threads (per process).
pub const MAX_THREADS: usize = 256;
/// Most processes one run is spread over.
pub const MAX_PROCESSES: usize = 256;

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each connection keeps `depth` messages of `size` bytes in flight; latency per message.
    Pingpong,
    /// Each connection streams continuously and reads back concurrently (MB/s).
    Bulk,
    /// Open the connections, hold them for the window, then one message on each.
    Hold,
    /// Connect, one message, reply, close, again, on `conns` concurrent slots.
    Churn,
}

impl Mode {
    /// The mode's name, as the command line and the report spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pingpong => "pingpong",
            Mode::Bulk => "bulk",
            Mode::Hold => "hold",
            Mode::Churn => "churn",
        }
    }
}

/// How churn closes each connection once answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseHow {
    /// Orderly close (FIN): the generator keeps each connection in TIME_WAIT.
    Fin,
    /// Abortive close (RST, SO_LINGER 0): no TIME_WAIT anywhere; the server sees a reset.
    Rst,
}

/// The PROXY protocol header (HAProxy's specification) each TCP connection begins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The human-readable line, `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    pub fn name(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// A combination of settings that cannot run; the command line prints it as a usage error.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A load run: what to send where, how much, for how long, and what every reply must be.
///
/// Build one (from [`LoadConfig::default`], the command line's defaults), then pass it through
/// [`LoadConfig::check`] before [`execute`](super::execute). The messages of `check` name the
/// command line's flags, since that is where nearly every `LoadConfig` comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// The server, already resolved.
    pub addr: SocketAddr,
    pub mode: Mode,
    pub proto: Proto,
    /// Connections (UDP: sockets; churn: concurrent slots).
    pub conns: usize,
    /// Message size in bytes (bulk: the unit of one write and of "messages").
    pub size: usize,
    /// Messages in flight per connection; bulk: messages ahead of the replies (at least 2 used).
    pub depth: usize,
    /// The measurement window (hold: how long the connections are held).
    pub duration: Duration,
    /// Load before the window that is not counted.
    pub warmup: Duration,
    /// Open loop: messages per second over all connections; `None` is closed loop.
    pub rate: Option<f64>,
    /// The transform every reply must show.
    pub expect: Transform,
    /// Source addresses, dealt round-robin to the connections; empty: the kernel's choice.
    pub sources: Vec<IpAddr>,
    pub close: CloseHow,
    /// Worker threads per process, each an independent event loop with its share of the
    /// process's connections.
    pub threads: usize,
    /// Processes the connections are spread over, each with its own open-file limit (see
    /// [`execute_processes`](super::execute_processes)); [`execute`](super::execute) runs one.
    pub processes: usize,
    /// Global index of this run's first connection: not 0 for one process of several, so that
    /// every connection of the whole run has its own source address and stream.
    pub first_conn: usize,
    /// Begin every TCP connection with a PROXY protocol header naming its real addresses.
    pub send_proxy: Option<ProxyVersion>,
    /// A message (datagram) unanswered this long counts as timed out (lost).
    pub timeout: Duration,
    /// A connect unfinished this long counts as timed out.
    pub connect_timeout: Duration,
    /// Count errors, losses and duplicates without failing a run whose bytes were right.
    pub tolerate_errors: bool,
    /// Sample this process's CPU time and RSS too (the server under test).
    pub server_pid: Option<u32>,
    /// No progress line on stderr each second.
    pub quiet: bool,
}

impl Default for LoadConfig {
    /// The command line's defaults: `upecho load` with no options.
    fn default() -> LoadConfig {
        LoadConfig {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), crate::addr::DEFAULT_PORT),
            mode: Mode::Pingpong,
            proto: Proto::Tcp,
            conns: 50,
            size: 64,
            depth: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: None,
            expect: Transform::Upper,
            sources: Vec::new(),
            close: CloseHow::Fin,
            threads: 1,
            processes: 1,
            first_conn: 0,
            send_proxy: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            tolerate_errors: false,
            server_pid: None,
            quiet: false,
        }
    }
}

/// What the machine allows, passed in so the checks stay pure.
#[derive(Debug, Clone, Copy)]
pub struct MachineLimits {
    /// Soft RLIMIT_NOFILE after raising it.
    pub nofile: u64,
    /// Ephemeral ports the kernel hands out per (source, destination) pair.
    pub ports: u64,
}

impl MachineLimits {
    /// Raises the file limit (to the hard limit) and reads the ephemeral port range.
    pub fn probe() -> MachineLimits {
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
        MachineLimits { nofile, ports }
    }
}

impl LoadConfig {
    /// Checks the settings on their own, against each other and against the machine's limits,
    /// and returns the runnable configuration (never more threads than connections).
    pub fn check(mut self, lim: &MachineLimits) -> Result<LoadConfig, UsageError> {
        let err = |m: String| Err(UsageError(m));
        let udp = self.proto == Proto::Udp;
        let (conns, size, depth) = (self.conns, self.size, self.depth);
        // One at a time first: the command line refuses these already, other callers may not.
        if !(1..=MAX_CONNS).contains(&conns) {
            return err(format!("-c must be between 1 and {MAX_CONNS}, got {conns}"));
        }
        if !(1..=MAX_TCP_MESSAGE).contains(&size) {
            return err(format!(
                "-s must be between 1 and {MAX_TCP_MESSAGE} bytes, got {size}"
            ));
        }
        if !(1..=MAX_DEPTH).contains(&depth) {
            return err(format!(
                "--depth must be between 1 and {MAX_DEPTH}, got {depth}"
            ));
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return err(format!(
                "--threads must be between 1 and {MAX_THREADS}, got {}",
                self.threads
            ));
        }
        if !(1..=MAX_PROCESSES).contains(&self.processes) {
            return err(format!(
                "--processes must be between 1 and {MAX_PROCESSES}, got {}",
                self.processes
            ));
        }
        for (flag, d, floor) in [
            ("-t", self.duration, CHECK_INTERVAL),
            ("--warmup", self.warmup, Duration::ZERO),
            ("--timeout", self.timeout, CHECK_INTERVAL),
            ("--connect-timeout", self.connect_timeout, CHECK_INTERVAL),
        ] {
            if !(floor..=MAX_RUN_DURATION).contains(&d) {
                return err(format!(
                    "{flag} must be between {} and {}, got {}",
                    crate::units::show(floor),
                    crate::units::show(MAX_RUN_DURATION),
                    crate::units::show(d)
                ));
            }
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r))
        {
            return err(format!(
                "--rate must be between {MIN_RATE} and {MAX_RATE:e} messages/s, got {r}"
            ));
        }
        // Then together.
        if udp && self.mode != Mode::Pingpong {
            return err(format!(
                "--proto udp supports --mode pingpong only, not {}",
                self.mode.name()
            ));
        }
        let max_dgram = max_datagram(&self.addr);
        if udp && !(UDP_HEADER..=max_dgram).contains(&size) {
            return err(format!(
                "--proto udp needs -s between {UDP_HEADER} (the sequence header) and {max_dgram} \
                 bytes (the largest datagram to {}), got {size}",
                self.addr
            ));
        }
        if self.rate.is_some() && !matches!(self.mode, Mode::Pingpong | Mode::Churn) {
            return err(format!(
                "--rate applies to --mode pingpong and churn only, not {}",
                self.mode.name()
            ));
        }
        if let Some(bad) = self
            .sources
            .iter()
            .find(|ip| ip.is_ipv4() != self.addr.is_ipv4())
        {
            return err(format!(
                "source {bad} is not of the same IP family as {}",
                self.addr
            ));
        }
        if udp && self.send_proxy.is_some() {
            return err("--send-proxy applies to TCP only (PROXY headers begin streams)".into());
        }
        // Never more processes than connections, nor more threads than a process has.
        let processes = self.processes.min(conns);
        let per_process = conns.div_ceil(processes);
        let threads = self.threads.min(per_process);
        // Besides the connections: one epoll and one timer per thread, and the reserve.
        let need = per_process as u64 + FD_RESERVE + 2 * threads as u64;
        if need > lim.nofile {
            let (what, fix) = if processes > 1 {
                (
                    format!(
                        "-c {conns} over {processes} processes needs about {need} open files per process"
                    ),
                    format!(
                        "raise --processes (each process has its own limit: --processes {} fits)",
                        (conns as u64).div_ceil(
                            lim.nofile
                                .saturating_sub(FD_RESERVE + 2 * threads as u64)
                                .max(1)
                        )
                    ),
                )
            } else {
                (
                    format!("-c {conns} needs about {need} open files"),
                    format!(
                        "lower -c, spread the connections over processes (--processes {}), or \
                         raise the hard limit (ulimit -Hn)",
                        (conns as u64).div_ceil(
                            lim.nofile
                                .saturating_sub(FD_RESERVE + 2 * threads as u64)
                                .max(1)
                        )
                    ),
                )
            };
            return err(format!(
                "{what}, but a process may open only {} (RLIMIT_NOFILE, already raised to its \
                 hard limit); {fix}",
                lim.nofile
            ));
        }
        if !udp {
            let per_source = lim.ports;
            let sources = self.sources.len().max(1) as u64;
            let fit = per_source * sources;
            if conns as u64 > fit {
                return err(format!(
                    "-c {conns} cannot fit: each source address has {per_source} ephemeral ports \
                     towards {} ({sources} source address(es) give {fit}); add source addresses, \
                     e.g. --source 127.0.0.2-127.0.0.{}",
                    self.addr,
                    1 + (conns as u64).div_ceil(per_source).min(254)
                ));
            }
        }
        let in_flight = per_process as u64 * depth as u64;
        if self.mode == Mode::Pingpong && in_flight > MAX_IN_FLIGHT {
            return err(format!(
                "-c {per_process} x --depth {depth} is {in_flight} messages in flight (per \
                 process), more than the {MAX_IN_FLIGHT} the generator keeps latency origins \
                 for; lower -c or --depth, or raise --processes"
            ));
        }
        self.threads = threads;
        self.processes = processes;
        Ok(self)
    }

    /// Checks that `server_pid`, if any, names a process whose CPU time can be read: a pid that
    /// names nothing would only show up as figures of zero at the end. Reads `/proc`.
    pub fn check_server_pid(&self) -> Result<(), UsageError> {
        match self.server_pid {
            Some(pid) if super::cpu::proc_cpu(pid).is_none() => Err(UsageError(format!(
                "--server-pid {pid}: no process {pid} (or /proc/{pid}/stat cannot be read)"
            ))),
            _ => Ok(()),
        }
    }

    /// How many connections process `p` of `self.processes` runs: an even split.
    pub fn conns_of_process(&self, p: usize) -> usize {
        self.conns / self.processes + usize::from(p < self.conns % self.processes)
    }

    /// The configuration process `p` of `self.processes` runs: its share of the connections
    /// (and of the rate), numbered globally, in one process, with no progress line or server
    /// figures of its own (the parent has those).
    pub fn share(&self, p: usize) -> LoadConfig {
        let conns = self.conns_of_process(p);
        let first_conn = self.first_conn + (0..p).map(|q| self.conns_of_process(q)).sum::<usize>();
        LoadConfig {
            conns,
            first_conn,
            processes: 1,
            threads: self.threads.min(conns.max(1)),
            rate: self.rate.map(|r| r * conns as f64 / self.conns as f64),
            server_pid: None,
            quiet: true,
            ..self.clone()
        }
    }

    /// How many connections thread `t` of `self.threads` runs: an even split.
    pub(crate) fn conns_of_thread(&self, t: usize) -> usize {
        self.conns / self.threads + usize::from(t < self.conns % self.threads)
    }

    /// The source address of global connection `id`, if sources were given.
    pub(crate) fn source_of(&self, id: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[id % self.sources.len()])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: MachineLimits = MachineLimits {
        nofile: 20_000,
        ports: 28_232,
    };

    fn check(c: LoadConfig) -> Result<LoadConfig, String> {
        c.check(&LIM).map_err(|e| e.0)
    }

    fn udp() -> LoadConfig {
        LoadConfig {
            proto: Proto::Udp,
            ..LoadConfig::default()
        }
    }

    #[test]
    fn the_defaults_are_runnable() {
        assert_eq!(check(LoadConfig::default()), Ok(LoadConfig::default()));
    }

    #[test]
    fn incompatible_settings_are_usage_errors() {
        let bulk = LoadConfig {
            mode: Mode::Bulk,
            ..udp()
        };
        assert!(check(bulk).unwrap_err().contains("pingpong only"));
        let tiny = LoadConfig { size: 4, ..udp() };
        assert!(check(tiny).unwrap_err().contains("-s between"));
        let bulk_rate = LoadConfig {
            mode: Mode::Bulk,
            rate: Some(10.0),
            ..LoadConfig::default()
        };
        assert!(check(bulk_rate).unwrap_err().contains("--rate"));
        let churn_rate = LoadConfig {
            mode: Mode::Churn,
            rate: Some(10.0),
            ..LoadConfig::default()
        };
        assert!(check(churn_rate).is_ok());
        let mixed = LoadConfig {
            addr: "[::1]:9".parse().unwrap(),
            sources: vec!["127.0.0.2".parse().unwrap()],
            ..LoadConfig::default()
        };
        assert!(check(mixed).unwrap_err().contains("family"));
        for bad in [
            LoadConfig {
                conns: 0,
                ..LoadConfig::default()
            },
            LoadConfig {
                duration: Duration::ZERO,
                ..LoadConfig::default()
            },
            LoadConfig {
                timeout: MAX_RUN_DURATION + Duration::from_millis(500),
                ..LoadConfig::default()
            },
            LoadConfig {
                rate: Some(f64::NAN),
                ..LoadConfig::default()
            },
        ] {
            assert!(check(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_largest_datagram_depends_on_the_address_family() {
        let v4 = LoadConfig {
            size: 65_507,
            ..udp()
        };
        assert!(check(v4.clone()).is_ok());
        assert!(check(LoadConfig { size: 65_508, ..v4 }).is_err());
        let v6 = LoadConfig {
            addr: "[::1]:9".parse().unwrap(),
            size: 65_527,
            ..udp()
        };
        assert!(check(v6.clone()).is_ok());
        let e = check(LoadConfig { size: 65_528, ..v6 }).unwrap_err();
        assert!(e.contains("65527"), "{e}");
    }

    #[test]
    fn messages_in_flight_are_bounded() {
        let deep = |conns, mode, proto| LoadConfig {
            conns,
            depth: 65_536,
            mode,
            proto,
            ..LoadConfig::default()
        };
        let e = check(deep(19_000, Mode::Pingpong, Proto::Tcp)).unwrap_err();
        assert!(e.contains("in flight") && e.contains("4194304"), "{e}");
        assert!(check(deep(64, Mode::Pingpong, Proto::Tcp)).is_ok());
        assert!(check(deep(65, Mode::Pingpong, Proto::Udp)).is_err());
        // Only ping-pong keeps a latency origin per message of depth.
        assert!(check(deep(19_000, Mode::Bulk, Proto::Tcp)).is_ok());
    }

    #[test]
    fn too_many_connections_for_files_or_ports_say_why() {
        let many = |conns| LoadConfig {
            conns,
            ..LoadConfig::default()
        };
        let e = check(many(19_990)).unwrap_err();
        assert!(e.contains("open files") && e.contains("20000"), "{e}");
        let lim = MachineLimits {
            nofile: 1 << 20,
            ports: 28_232,
        };
        let e = many(30_000).check(&lim).unwrap_err().0;
        assert!(e.contains("cannot fit") && e.contains("--source"), "{e}");
        let spread = LoadConfig {
            sources: vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
            ..many(30_000)
        };
        assert!(spread.check(&lim).is_ok());
    }

    #[test]
    fn connections_split_evenly_over_threads() {
        let c = check(LoadConfig {
            conns: 10,
            threads: 3,
            ..LoadConfig::default()
        })
        .unwrap();
        let split: Vec<usize> = (0..3).map(|t| c.conns_of_thread(t)).collect();
        assert_eq!(split, vec![4, 3, 3]);
        // Never more threads than connections.
        let c = LoadConfig {
            conns: 2,
            threads: 8,
            ..LoadConfig::default()
        };
        assert_eq!(check(c).unwrap().threads, 2);
    }
}

//! `upecho serve`: the command line, socket binding, and the hand-over to the [`reactor`].
//!
//! The binary's part is deliberately thin: parse, raise the descriptor limit, bind, print the
//! `listening` lines, run the reactor, report. Everything that serves clients is in the library
//! modules below, which take already-bound sockets.

mod accept;
pub mod conn;
mod conns;
mod lifecycle;
pub mod limit;
pub mod reactor;
pub mod stats;
pub mod timer;
mod token;
pub mod udp;

use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use log::{info, warn};

pub use conns::{FAIR_BUDGET, READ_CHUNK};
pub use lifecycle::{Action, HANDLED_SIGNALS, Policy};
pub use reactor::{Config, Server, ShutdownHandle, Summary};
pub use stats::Stats;
pub use token::{MAX_LISTENERS, MAX_UDP_SOCKETS};

use crate::Transform;
use crate::net::{self, BindError};

/// Descriptors kept back from `--max-connections`' default: stdio, the poll, the signal pipe,
/// listeners, UDP sockets, and the one briefly used to refuse a connection at the limit.
pub const FD_RESERVE: u64 = 32;

/// Options of `upecho serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve TCP and UDP on; repeat for several (IPv6 as `[::1]:8005`). Port 0 picks a
    /// free port (the same one for TCP and UDP); the `listening` lines say which.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:8005")]
    pub listen: Vec<SocketAddr>,
    /// Serve TCP only.
    #[arg(long, conflicts_with = "udp_only")]
    pub tcp_only: bool,
    /// Serve UDP only.
    #[arg(long)]
    pub udp_only: bool,
    /// Most TCP connections served at once; more are accepted and closed at once.
    /// [default: the open-file limit less a small reserve]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Unsent output one connection may hold; above it the server stops reading that connection
    /// until it drains.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending: u64,
    /// Unsent output all connections together may hold; above it, a connection that owes output
    /// is not read until it has drained (its client is slowed down by TCP; nothing is lost).
    #[arg(long, value_name = "BYTES", default_value_t = reactor::DEFAULT_MAX_PENDING_TOTAL as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_total: u64,
    /// Close a connection that has moved no byte for this long (0 = never; at least 0.01 s).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_idle_timeout)]
    pub idle_timeout: Duration,
    /// On SIGTERM, SIGINT, SIGHUP or SIGQUIT, how long connections get to flush what they owe.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub drain_timeout: Duration,
    /// Listen backlog (pending connections the kernel queues).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub backlog: u32,
    /// Log one line of counters this often (0 = never; at least 0.1 s). SIGUSR1 logs one at any
    /// time.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_stats_interval)]
    pub stats_interval: Duration,
    /// What to do to each byte: `upper` (the tutorial's protocol) or `none` (RFC 862 echo).
    #[arg(long, value_enum, default_value_t = Transform::Upper)]
    pub transform: Transform,
    /// Answer UDP from any source, including privileged ports and broadcast/multicast addresses
    /// (by default they are ignored, as inetd's echo does, to prevent reflection and echo loops).
    #[arg(long)]
    pub udp_any_source: bool,
    /// Most UDP replies per second to one source (address and port), sustained, after a burst
    /// of ten seconds' worth; more are ignored and counted. A datagram that is the server's own
    /// last reply to that source coming back (an echo loop with another server, started by one
    /// spoofed datagram) costs 100 replies, so such a loop ends within seconds. 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = reactor::DEFAULT_UDP_SOURCE_RATE)]
    pub udp_source_rate: u32,
}

/// The longest duration any option takes: far beyond any real use, and small enough that a
/// deadline computed from it never overflows the clock. Larger values mean "never" and are taken
/// as this.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a non-negative number of seconds, fractions allowed (`0.5`); values past
/// [`MAX_DURATION`] (`1e19`, `inf`) saturate to it.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_nan() || v < 0.0 {
        return Err(format!("`{s}` is not a non-negative duration"));
    }
    Ok(Duration::try_from_secs_f64(v).map_or(MAX_DURATION, |d| d.min(MAX_DURATION)))
}

/// [`parse_secs`], with 0 meaning "never" and anything else at least `floor`.
fn parse_secs_floor(s: &str, floor: Duration) -> Result<Duration, String> {
    let d = parse_secs(s)?;
    if !d.is_zero() && d < floor {
        return Err(format!(
            "`{s}` is too short: 0 (never) or at least {} s",
            floor.as_secs_f64()
        ));
    }
    Ok(d)
}

/// The idle wheel's resolution: a shorter timeout could not be honoured anyway.
fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    parse_secs_floor(s, Duration::from_millis(10))
}

/// A line of counters more often than ten times a second is a flood of log, not a statistic.
fn parse_stats_interval(s: &str) -> Result<Duration, String> {
    parse_secs_floor(s, Duration::from_millis(100))
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// The bound sockets for one `--listen` address.
struct Bound {
    tcp: Option<mio::net::TcpListener>,
    udp: Option<mio::net::UdpSocket>,
}

/// Binds TCP and/or UDP on `addr`. With port 0 the UDP socket takes the port the kernel gave TCP,
/// so one address serves both; if that port is taken for UDP, another is tried.
fn bind_pair(addr: SocketAddr, tcp: bool, udp: bool, backlog: u32) -> Result<Bound, BindError> {
    if !(tcp && udp) {
        return Ok(Bound {
            tcp: tcp.then(|| net::bind_tcp(addr, backlog)).transpose()?,
            udp: udp.then(|| net::bind_udp(addr)).transpose()?,
        });
    }
    let mut attempts = 0;
    loop {
        let listener = net::bind_tcp(addr, backlog)?;
        let mut udp_addr = addr;
        if addr.port() == 0 {
            let port = listener.local_addr().map_err(|source| BindError {
                proto: net::Proto::Tcp,
                addr,
                step: net::Step::Bind,
                source,
            })?;
            udp_addr.set_port(port.port());
        }
        match net::bind_udp(udp_addr) {
            Ok(socket) => {
                return Ok(Bound {
                    tcp: Some(listener),
                    udp: Some(socket),
                });
            }
            Err(e)
                if addr.port() == 0 && e.source.kind() == ErrorKind::AddrInUse && attempts < 16 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `upecho serve` and returns the process exit code.
pub fn main(args: ServeArgs) -> ExitCode {
    match serve(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upecho: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let nofile = match net::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            warn!("cannot read the open-file limit: {e}; assuming 1024");
            1024
        }
    };
    let max_connections = args
        .max_connections
        .unwrap_or(nofile.saturating_sub(FD_RESERVE).max(1));
    if max_connections + FD_RESERVE > nofile {
        warn!(
            "--max-connections {max_connections} exceeds what the open-file limit ({nofile}) allows; \
             accepts will pause when descriptors run out"
        );
    }
    if args.listen.len() > MAX_LISTENERS {
        return Err(format!("at most {} --listen addresses", MAX_LISTENERS).into());
    }
    let (want_tcp, want_udp) = (!args.udp_only, !args.tcp_only);
    // Bind everything before announcing anything: a failure leaves no half-announced server.
    let mut listeners = Vec::new();
    let mut udp = Vec::new();
    for &addr in &args.listen {
        let bound = bind_pair(addr, want_tcp, want_udp, args.backlog)?;
        listeners.extend(bound.tcp);
        udp.extend(bound.udp);
    }
    let mut lines = String::new();
    for l in &listeners {
        lines += &format!("listening tcp {}\n", l.local_addr()?);
    }
    for s in &udp {
        lines += &format!("listening udp {}\n", s.local_addr()?);
    }
    let config = Config {
        transform: args.transform,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_pending: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
        max_pending_total: usize::try_from(args.max_pending_total).unwrap_or(usize::MAX),
        idle_timeout: nonzero(args.idle_timeout),
        drain_timeout: args.drain_timeout,
        stats_interval: nonzero(args.stats_interval),
        udp_guard: !args.udp_any_source,
        udp_source_rate: (args.udp_source_rate > 0).then_some(args.udp_source_rate),
        handle_signals: true,
    };
    let udp_limit = match config.udp_source_rate {
        Some(n) => format!("{n} UDP replies/s per source"),
        None => "no UDP rate limit".into(),
    };
    info!(
        "upecho {} serving (transform {}, open-file limit {nofile}, up to {max_connections} connections, \
         {} KiB pending per connection, {} KiB in all, {udp_limit})",
        env!("CARGO_PKG_VERSION"),
        config.transform.name(),
        config.max_pending / 1024,
        config.max_pending_total / 1024,
    );
    // The signal handlers are installed here, before anything is announced: whoever reads the
    // `listening` lines may signal at once, and must get a drain, not a death by signal.
    let server = Server::new(config, listeners, udp)?;
    let mut out = io::stdout().lock();
    out.write_all(lines.as_bytes())?;
    out.flush()?;
    drop(out);
    let summary = server.run()?;
    info!("final counters: {}", summary.stats);
    Ok(if summary.forced {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_accept_fractions_and_reject_garbage() {
        assert_eq!(parse_secs("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_secs("0").unwrap(), Duration::ZERO);
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn huge_durations_saturate_and_tiny_intervals_are_refused() {
        assert_eq!(parse_secs("1e19").unwrap(), MAX_DURATION);
        assert_eq!(parse_secs("inf").unwrap(), MAX_DURATION);
        assert!(parse_secs("nan").is_err());
        assert!(parse_stats_interval("1e-9").is_err());
        assert!(parse_stats_interval("0.05").is_err());
        assert_eq!(parse_stats_interval("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_stats_interval("0.1").unwrap(),
            Duration::from_millis(100)
        );
        assert!(parse_idle_timeout("1e-9").is_err());
        assert_eq!(parse_idle_timeout("1e19").unwrap(), MAX_DURATION);
        // The saturated value is a deadline the clock can hold.
        assert!(
            std::time::Instant::now()
                .checked_add(MAX_DURATION)
                .is_some()
        );
    }

    #[test]
    fn port_zero_gives_tcp_and_udp_the_same_port() {
        let b = bind_pair("127.0.0.1:0".parse().unwrap(), true, true, 16).unwrap();
        let t = b.tcp.unwrap().local_addr().unwrap();
        let u = b.udp.unwrap().local_addr().unwrap();
        assert_eq!(t, u);
        assert_ne!(t.port(), 0);
    }
}

//! `upecho serve` on the command line: its options, where its sockets come from, the `listening`
//! lines, the final counters and the exit code. Serving itself is the library's
//! ([`upecho::serve::Server`]).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use log::{info, warn};

use super::TransformArg;
use std::os::fd::{FromRawFd, OwnedFd};
use upecho::addr::{DEFAULT_ADDR, HostPort};
use upecho::net::{self, FD_RESERVE, SocketOptions};
use upecho::serve::control::{CONTROL_FD, Channel, is_control_channel};
use upecho::serve::proxy::{ProxyConfig, TrustedSources};
use upecho::serve::systemd::{self, Notifier};
use upecho::serve::upgrade::{self, UpgradeCommand};
use upecho::serve::{
    Config, DEFAULT_MAX_PENDING_TOTAL, DEFAULT_UDP_SOURCE_RATE, Protocols, Server, SocketSource,
    Summary,
};
use upecho::units::{self, parse_duration, parse_duration_floor, parse_nonzero_size};

/// Options of `upecho serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve TCP and UDP on, as HOST:PORT (a name is resolved, and every address it
    /// has is served); repeat for several (IPv6 as `[::1]:8005`). Port 0 picks a free port (the
    /// same one for TCP and UDP); the `listening` lines say which. Under systemd socket
    /// activation the sockets passed (`LISTEN_FDS`) are served instead.
    /// [default: 127.0.0.1:8005]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<HostPort>,
    /// Serve `GET /metrics` (Prometheus text format) on this address, e.g. 127.0.0.1:9105, from
    /// the same reactor (at most 16 scrapers at once, 8 KiB requests, 5 s each). Port 0 picks one;
    /// the log says which.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<HostPort>,
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
    /// Unsent output one connection may hold (e.g. 1MiB); above it the server stops reading that
    /// connection until it drains.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_nonzero_size)]
    pub max_pending: u64,
    /// Unsent output all connections together may hold; above it, a connection that owes output
    /// is not read until it has drained (its client is slowed down by TCP; nothing is lost).
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_MAX_PENDING_TOTAL as u64, value_parser = parse_nonzero_size)]
    pub max_pending_total: u64,
    /// Close a connection that has moved no byte for this long (e.g. 30s, 5m; 0 = never; at
    /// least 10ms).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_idle_timeout)]
    pub idle_timeout: Duration,
    /// On SIGTERM, SIGINT, SIGHUP or SIGQUIT, how long connections get to flush what they owe.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Listen backlog (pending connections the kernel queues).
    #[arg(long, value_name = "N", default_value_t = SocketOptions::default().backlog)]
    pub backlog: u32,
    /// Bind with SO_REUSEPORT, so that separately started servers share the address (the kernel
    /// spreads connections and datagrams over them).
    #[arg(long)]
    pub reuse_port: bool,
    /// Log one line of counters this often (e.g. 10s; 0 = never; at least 100ms). SIGUSR1 logs
    /// one at any time.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_stats_interval)]
    pub stats_interval: Duration,
    /// What to do to each byte: `upper` (the tutorial's protocol) or `none` (RFC 862 echo).
    #[arg(long, value_enum, default_value_t = TransformArg::Upper)]
    pub transform: TransformArg,
    /// Answer UDP from any source, including privileged ports and broadcast/multicast addresses
    /// (by default they are ignored, as inetd's echo does, to prevent reflection and echo loops).
    #[arg(long)]
    pub udp_any_source: bool,
    /// Most UDP replies per second to one source (address and port), sustained, after a burst
    /// of ten seconds' worth; more are ignored and counted. A datagram that is the server's own
    /// last reply to that source coming back (an echo loop with another server, started by one
    /// spoofed datagram) costs 100 replies, so such a loop ends within seconds. 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_UDP_SOURCE_RATE)]
    pub udp_source_rate: u32,
    /// Read a PROXY protocol header (v1 or v2, told apart by its first bytes) at the start of
    /// every TCP connection from the `--proxy-from` sources, as nginx's `proxy_protocol on` and
    /// HAProxy's `send-proxy`/`send-proxy-v2` send it, and use the client address it names in
    /// the log. The header is never echoed. A trusted source's connection without a valid header
    /// is closed and counted (proxy_rejected); connections from other sources are served as
    /// plain clients (any header they send is data).
    #[arg(long, requires = "proxy_from")]
    pub proxy_protocol: bool,
    /// The balancers trusted to send a PROXY header: a comma-separated list of address ranges,
    /// e.g. 127.0.0.1,10.0.0.0/8,fd00::/8.
    #[arg(long, value_name = "CIDRS", requires = "proxy_protocol")]
    pub proxy_from: Option<TrustedSources>,
    /// How long a trusted source has to send its whole PROXY header, from the connection's
    /// accept (at least 10ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_idle_timeout,
          requires = "proxy_protocol")]
    pub proxy_timeout: Duration,
    /// Before sleeping for events, keep polling without sleeping for up to this long after the
    /// last events (e.g. 50us, 200us; 0 = never, the default; at most 1s). Lowers the latency of
    /// a lightly loaded server by the cost of a wake-up, at the price of a core kept busy while
    /// traffic lasts. See docs/tuning.md.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_busy_poll)]
    pub busy_poll: Duration,
    /// Write this process's pid to PATH once it serves (replaced whole, never half-written),
    /// and remove it at exit if it still names this process. After an upgrade (SIGUSR2) the
    /// new process writes its own; with --workers, the supervisor's.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<std::path::PathBuf>,
    /// Serve with N worker processes (0: one per CPU), each with its own reactor, sockets and
    /// open-file limit, under a supervisor that restarts a worker that dies, reloads on SIGHUP
    /// or SIGUSR2 (new workers from the binary on disk, which take every connection over) and refuses a connection
    /// only when every worker is at --max-connections. Without it: one process, no supervisor.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub workers: Option<u32>,
    /// The supervisor's own: serve as the worker of this slot, on inherited descriptors.
    #[arg(long, hide = true, value_name = "SLOT")]
    pub worker_slot: Option<u32>,
    #[arg(long, hide = true, value_name = "N", default_value_t = 0)]
    pub worker_generation: u32,
    #[arg(long, hide = true, value_name = "N", requires = "worker_slot")]
    pub worker_sockets: Option<usize>,
}

/// The idle wheel's resolution: a shorter timeout could not be honoured anyway.
fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_floor(s, Duration::from_millis(10))
}

/// A line of counters more often than ten times a second is a flood of log, not a statistic.
fn parse_stats_interval(s: &str) -> Result<Duration, String> {
    parse_duration_floor(s, Duration::from_millis(100))
}

/// Spinning for longer than a second after the last event is a core given away, not a poll.
fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(1) {
        return Err(format!(
            "`{s}` is too long: at most 1s (typically 50us-500us; 0 = never)"
        ));
    }
    Ok(d)
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Every address the `--listen` values stand for, names resolved, each once.
fn resolve_all(listen: &[HostPort]) -> Result<Vec<SocketAddr>, upecho::addr::AddrError> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for hp in listen {
        for a in hp.resolve()? {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    Ok(addrs)
}

/// The sockets `--listen` and the protocol flags ask for.
pub(super) fn bind_source(args: &ServeArgs) -> Result<SocketSource, upecho::addr::AddrError> {
    let default = [HostPort::parse(DEFAULT_ADDR).expect("the default address parses")];
    let listen = if args.listen.is_empty() {
        &default[..]
    } else {
        &args.listen
    };
    Ok(SocketSource::Bind {
        addrs: resolve_all(listen)?,
        protocols: Protocols {
            tcp: !args.udp_only,
            udp: !args.tcp_only,
        },
        options: SocketOptions {
            backlog: args.backlog,
            reuse_port: args.reuse_port,
            ..SocketOptions::default()
        },
    })
}

/// Raises the open-file limit; returns it and the connection limit it allows.
pub(super) fn limits(args: &ServeArgs) -> (u64, u64) {
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
    if max_connections.saturating_add(FD_RESERVE) > nofile {
        warn!(
            "--max-connections {max_connections} exceeds what the open-file limit ({nofile}) allows; \
             accepts will pause when descriptors run out"
        );
    }
    (nofile, max_connections)
}

/// The sockets systemd passed, if it did.
pub(super) fn systemd_sockets(args: &ServeArgs) -> io::Result<Option<SocketSource>> {
    let Some(passed) = systemd::listen_fds()? else {
        return Ok(None);
    };
    if !args.listen.is_empty() {
        warn!(
            "--listen ignored: serving the {} socket(s) systemd passed",
            passed.len()
        );
    }
    for (i, (_, name)) in passed.iter().enumerate() {
        info!("socket {i} from systemd (name {name})");
    }
    Ok(Some(SocketSource::Inherited(
        passed.into_iter().map(|(fd, _)| fd).collect(),
    )))
}

/// The reactor's configuration from the flags.
pub(super) fn server_config(args: &ServeArgs, max_connections: u64, notifier: Notifier) -> Config {
    Config {
        transform: args.transform.into(),
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_pending: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
        max_pending_total: usize::try_from(args.max_pending_total).unwrap_or(usize::MAX),
        idle_timeout: nonzero(args.idle_timeout),
        drain_timeout: args.drain_timeout,
        stats_interval: nonzero(args.stats_interval),
        udp_guard: !args.udp_any_source,
        udp_source_rate: (args.udp_source_rate > 0).then_some(args.udp_source_rate),
        handle_signals: true,
        notifier,
        proxy: args.proxy_from.clone().map(|from| ProxyConfig {
            from,
            timeout: args.proxy_timeout,
        }),
        busy_poll: nonzero(args.busy_poll),
        upgrade: None,
        pid_file: args.pid_file.clone(),
    }
}

/// What the start line says about the limits.
pub(super) fn describe_limits(config: &Config, nofile: u64, max_connections: u64) -> String {
    let udp_limit = match config.udp_source_rate {
        Some(n) => format!("{n} UDP replies/s per source"),
        None => "no UDP rate limit".into(),
    };
    let proxy = match &config.proxy {
        Some(p) => format!(
            ", PROXY headers from {} within {}",
            p.from,
            units::show(p.timeout)
        ),
        None => String::new(),
    };
    format!(
        "transform {}, open-file limit {nofile}, up to {max_connections} connection{}, \
         {} KiB pending per connection, {} KiB in all, {udp_limit}, drain {}{proxy}",
        config.transform.name(),
        if max_connections == 1 { "" } else { "s" },
        config.max_pending / 1024,
        config.max_pending_total / 1024,
        units::show(config.drain_timeout),
    )
}

/// Says which stop signals the server leaves ignored because it was started with them ignored
/// (before the handlers replace the dispositions it reads).
pub(super) fn log_ignored_signals() {
    let ignored = upecho::serve::inherited_ignored_signals();
    if !ignored.is_empty() {
        let names: Vec<&str> = ignored
            .iter()
            .map(|&s| upecho::serve::signal_name(s))
            .collect();
        info!(
            "{} inherited ignored (nohup, or a shell's background job): left ignored; SIGTERM stops the server",
            names.join(", ")
        );
    }
}

/// `upecho serve` without `--workers`: one process serves.
pub(super) fn serve(args: ServeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (nofile, max_connections) = limits(&args);
    let source = match systemd_sockets(&args)? {
        Some(passed) => passed,
        None => bind_source(&args)?,
    };
    // Bind everything before announcing anything: a failure leaves no half-announced server.
    let sockets = source.open()?;
    let lines = sockets.listening_lines()?;
    let notifier = Notifier::from_env();
    let mut config = server_config(&args, max_connections, notifier.clone());
    config.upgrade = upgrade_command()?;
    info!(
        "upecho {} serving ({})",
        env!("CARGO_PKG_VERSION"),
        describe_limits(&config, nofile, max_connections)
    );
    log_ignored_signals();
    // The signal handlers are installed here, before anything is announced: whoever reads the
    // `listening` lines may signal at once, and must get a drain, not a death by signal.
    let mut server = Server::new(config, sockets.listeners, sockets.udp)?;
    // Blocked since the start (cli::run): one that came meanwhile is handled now.
    upecho::serve::unblock_handled_signals()?;
    if let Some(hp) = &args.metrics {
        let addr = *hp.resolve()?.first().ok_or("no address for --metrics")?;
        let listener = net::bind_tcp(addr, &SocketOptions::default())?;
        let bound = listener.local_addr()?;
        server = server.with_metrics(listener)?;
        info!("metrics at http://{bound}/metrics");
    }
    let pid_file = PidFile::write(&args)?;
    let mut out = io::stdout().lock();
    out.write_all(lines.as_bytes())?;
    out.flush()?;
    drop(out);
    notifier.ready(&format!(
        "serving {} TCP listener(s) and {} UDP socket(s)",
        lines.matches("listening tcp").count(),
        lines.matches("listening udp").count()
    ));
    let summary = server.run()?;
    drop(pid_file);
    Ok(finish(summary))
}

/// What SIGUSR2 starts: the binary on disk, with this process's arguments.
fn upgrade_command() -> io::Result<Option<UpgradeCommand>> {
    Ok(Some(UpgradeCommand {
        // Read now, while it names the file this process was started from.
        exe: std::env::current_exe()?,
        args: std::env::args_os().skip(1).collect(),
    }))
}

/// A single server's successor (started by SIGUSR2): serves the sockets it inherited and
/// takes the old process's connections over; announces nothing on stdout (the sockets are
/// the ones already announced).
pub(super) fn successor(
    args: ServeArgs,
    sockets: usize,
    metrics: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if !is_control_channel() {
        return Err("started as an upgrade's successor without its channel".into());
    }
    let (nofile, max_connections) = limits(&args);
    // SAFETY: the old process put the channel at CONTROL_FD, the metrics listener after it
    // (if `metrics`), then `sockets` sockets (checked by their type when adopted); nothing in
    // this process has taken them.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let first = CONTROL_FD + 1 + i32::from(metrics);
    let metrics_listener = metrics.then(|| {
        let fd = unsafe { OwnedFd::from_raw_fd(CONTROL_FD + 1) };
        mio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
    });
    let fds = (0..sockets)
        .map(|i| unsafe { OwnedFd::from_raw_fd(first + i as i32) })
        .collect();
    let set = SocketSource::Inherited(fds).open()?;
    let mut config = server_config(&args, max_connections, Notifier::from_env());
    config.upgrade = upgrade_command()?;
    info!(
        "upecho {} taking over ({})",
        env!("CARGO_PKG_VERSION"),
        describe_limits(&config, nofile, max_connections)
    );
    let mut server = Server::new(config, set.listeners, set.udp)?;
    upecho::serve::unblock_handled_signals()?;
    if let Some(l) = metrics_listener {
        server = server.with_metrics(l)?;
    }
    let server = server.with_predecessor(Channel::from_fd(control))?;
    let pid_file = PidFile::removed_at_exit(&args);
    let summary = server.run()?;
    drop(pid_file);
    Ok(finish(summary))
}

/// `--pid-file`: removed when this process ends, if it still names it.
pub(super) struct PidFile(Option<std::path::PathBuf>);

impl PidFile {
    /// Writes this process's pid now.
    pub(super) fn write(args: &ServeArgs) -> io::Result<PidFile> {
        if let Some(path) = &args.pid_file {
            upgrade::write_pid_file(path, std::process::id()).map_err(|e| {
                io::Error::new(e.kind(), format!("--pid-file {}: {e}", path.display()))
            })?;
        }
        Ok(PidFile::removed_at_exit(args))
    }

    /// Written later (a successor writes it once it has taken over).
    pub(super) fn removed_at_exit(args: &ServeArgs) -> PidFile {
        PidFile(args.pid_file.clone())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            upgrade::remove_pid_file(path, std::process::id());
        }
    }
}

/// Logs a finished reactor's final counters; exit 1 when a second signal forced it, else 0.
pub(super) fn finish(summary: Summary) -> ExitCode {
    info!("final counters: {}", summary.stats);
    if summary.forced {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_have_floors_and_zero_means_never() {
        assert!(parse_stats_interval("1e-9").is_err());
        assert!(parse_stats_interval("50ms").is_err());
        assert_eq!(parse_stats_interval("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_stats_interval("100ms").unwrap(),
            Duration::from_millis(100)
        );
        assert!(parse_idle_timeout("1e-9").is_err());
        assert_eq!(parse_idle_timeout("1e19").unwrap(), units::MAX_DURATION);
    }

    #[test]
    fn busy_poll_is_off_by_default_and_at_most_a_second() {
        assert_eq!(parse_busy_poll("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_busy_poll("50us").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_busy_poll("1s").unwrap(), Duration::from_secs(1));
        for bad in ["1.5s", "1e19", "inf", "-1", "soon"] {
            assert!(parse_busy_poll(bad).is_err(), "{bad}");
        }
        assert!(parse_busy_poll("2s").unwrap_err().contains("at most 1s"));
        assert_eq!(nonzero(parse_busy_poll("0").unwrap()), None);
    }

    #[test]
    fn listen_names_resolve_to_every_address_once() {
        let hp = |s: &str| HostPort::parse(s).unwrap();
        let addrs = resolve_all(&[hp("localhost:0"), hp("127.0.0.1:0")]).unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
        assert_eq!(v4, 1, "127.0.0.1 once: {addrs:?}");
    }
}

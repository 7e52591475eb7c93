//! The server's configuration: what a [`Config`] says (every field has a flag of `upecho
//! serve`), its defaults, and the [`Limits`] taken from it once for the parts that enforce and
//! expose them. Kept apart from the reactor so that the parts can read the limits without
//! importing the loop that owns them.

use std::path::PathBuf;
use std::time::Duration;

use super::proxy::ProxyConfig;
use super::systemd::Notifier;
use super::upgrade::UpgradeCommand;
use crate::Transform;

/// Default ceiling on output owed by all connections together. A reader that does not read costs
/// the server at most `--max-pending` (1 MiB), but 20,000 of them would cost 20 GB; 256 MiB keeps
/// the worst case well inside a small machine, and a server that is merely busy never comes near
/// it (replies usually leave in the turn they are made).
pub const DEFAULT_MAX_PENDING_TOTAL: usize = 256 << 20;
/// Default replies per second per UDP source, sustained, after a burst of ten seconds' worth (see
/// `serve/limit.rs`). One ping-pong socket on loopback does about 20,000 round trips a second
/// with `upecho load` on a 2-core VM, so a benchmark from one socket does not meet the limit; an
/// echo loop between two servers pays a hundred times as much per bounce, so it is held to 1,000
/// bounces a second and, at the speed of one machine, ends within ~20,000.
pub const DEFAULT_UDP_SOURCE_RATE: u32 = 100_000;

/// How the reactor behaves; every field has a command-line flag of `upecho serve`
/// (the binary's `ServeArgs`, in `src/cli/serve.rs`).
#[derive(Debug, Clone)]
pub struct Config {
    pub transform: Transform,
    pub max_connections: usize,
    pub max_pending: usize,
    /// Output owed by all connections together before debtors stop being read.
    pub max_pending_total: usize,
    pub idle_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub stats_interval: Option<Duration>,
    /// Refuse to answer UDP from privileged ports and broadcast/multicast/unspecified sources.
    pub udp_guard: bool,
    /// Replies per second one UDP source (address and port) may get; `None` for no limit.
    pub udp_source_rate: Option<u32>,
    /// Handle SIGTERM, SIGINT, SIGHUP and SIGQUIT (graceful stop, then a second one forces) and
    /// SIGUSR1 (log the counters). Off for embedders that use [`ShutdownHandle`](super::ShutdownHandle) instead.
    pub handle_signals: bool,
    /// Where to report READY/STOPPING/WATCHDOG (systemd's `sd_notify`); does nothing by default.
    pub notifier: Notifier,
    /// Read a PROXY protocol header first on connections from these sources.
    pub proxy: Option<ProxyConfig>,
    /// `--busy-poll`: for this long after the last turn that brought events, poll with a zero
    /// timeout instead of sleeping, so the next event is found without a wake-up (CPU for
    /// latency; `None`: always sleep).
    pub busy_poll: Option<Duration>,
    /// What SIGUSR2 starts to take over (the binary on disk and this process's arguments);
    /// `None`: SIGUSR2 is refused with a log line.
    pub upgrade: Option<UpgradeCommand>,
    /// `--pid-file`: rewritten by a successor once it has taken over.
    pub pid_file: Option<PathBuf>,
}

/// The limits a server runs under, taken from its [`Config`] once: the connection table
/// enforces the first three, and the metrics endpoint exposes all four as gauges. Counts as
/// `u64`, the gauges' type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_connections: u64,
    pub(crate) max_pending: u64,
    pub(crate) max_pending_total: u64,
    /// Replies per second to one UDP source; 0: no limit.
    pub(crate) udp_source_rate: u64,
}

impl Limits {
    pub(crate) fn of(config: &Config) -> Limits {
        Limits {
            max_connections: config.max_connections as u64,
            max_pending: config.max_pending as u64,
            max_pending_total: config.max_pending_total as u64,
            udp_source_rate: config.udp_source_rate.map_or(0, u64::from),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transform: Transform::Upper,
            max_connections: 1024,
            max_pending: 1 << 20,
            max_pending_total: DEFAULT_MAX_PENDING_TOTAL,
            idle_timeout: None,
            drain_timeout: Duration::from_secs(5),
            stats_interval: None,
            udp_guard: true,
            udp_source_rate: Some(DEFAULT_UDP_SOURCE_RATE),
            handle_signals: false,
            notifier: Notifier::default(),
            proxy: None,
            busy_poll: None,
            upgrade: None,
            pid_file: None,
        }
    }
}

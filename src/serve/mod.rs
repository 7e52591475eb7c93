//! The server as a library: already-bound sockets in, a [`Summary`] out.
//!
//! - `source`: where sockets come from (bound from addresses, or inherited descriptors).
//! - `reactor`: the single-threaded mio loop and the [`Server`] that wires its parts:
//!   `accept` (the acceptor), `table` (the connection table), `timer` (the idle timeout), `udp`
//!   (the UDP side), `lifecycle` (signals and drain), `stats` (the counters).
//! - `conn`: one TCP connection's buffer state machine, the pure core.
//! - `limit`: the per-source UDP reply budget.
//! - [`proxy`]: the PROXY protocol: trusted sources, and where a header ends.
//! - `metrics`: the `--metrics` endpoint (Prometheus text format).
//! - [`systemd`]: sockets from socket activation, and `sd_notify` state reports.
//! - [`control`]: the channel between a supervisor ([`crate::supervise`], which uses this
//!   module and is not used by it) and each worker, and the worker's end of it.
//! - `logs`: what the log lines need and serving does not (connection ids and close lines, kept
//!   only when debug logging is on; which sources get a "not answering" line); `throttle`, how
//!   often any rate-limited line may be written (refusals, bad headers, once-per-episode lines).
//!
//! The command line (`upecho serve`'s flags, the `listening` lines, exit codes) is the binary's.

mod accept;
// Public only so that benches/conn.rs can drive the state machine; not part of the API.
mod config;
#[doc(hidden)]
pub mod conn;
pub mod control;
pub mod exec;
pub mod handover;
mod lifecycle;
mod limit;
pub(crate) mod logs;
pub(crate) mod metrics;
pub mod proxy;
mod reactor;
mod source;
mod stats;
pub mod systemd;
mod table;
mod throttle;
pub(crate) mod timer;
mod token;
mod udp;
pub mod upgrade;

pub(crate) use config::Limits;
pub use config::{Config, DEFAULT_MAX_PENDING_TOTAL, DEFAULT_UDP_SOURCE_RATE};
pub(crate) use lifecycle::signals_to_handle;
pub use lifecycle::{
    Action, HANDLED_SIGNALS, Policy, block_handled_signals, inherited_ignored_signals, signal_name,
    unblock_handled_signals,
};
pub use reactor::{Server, ShutdownHandle, Summary};
pub use source::{Protocols, SocketSource, Sockets, SourceError};
pub(crate) use stats::Rates;
pub use stats::Stats;
pub use systemd::Notifier;
pub use table::{FAIR_BUDGET, READ_CHUNK};
pub use token::{MAX_LISTENERS, MAX_UDP_SOCKETS};

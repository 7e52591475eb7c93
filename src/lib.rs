//! upecho: the tutorial's upper-casing echo server done properly, as a library first.
//!
//! The `upecho` binary (`src/main.rs`, `src/cli/`) owns the command line: flags, binding,
//! announcing, exit codes, logging set-up. This library owns everything that moves bytes, and
//! promises only what is `pub` here:
//!
//! | item | what it is |
//! |---|---|
//! | [`serve::Server`], [`serve::Config`], [`serve::ShutdownHandle`], [`serve::Summary`], [`serve::Stats`] | the reactor: already-bound sockets in, counters out |
//! | [`serve::SocketSource`], [`serve::Sockets`], [`net::SocketOptions`] | where the reactor's sockets come from: bound here, or inherited descriptors |
//! | [`client`] | the TCP and UDP clients, interactive and in a pipe |
//! | [`load`] | the verifying load generator: a config in, a report and a latency histogram out |
//! | [`addr`], [`units`], [`net`] | the shared vocabulary: `HOST:PORT`, durations and sizes, datagram limits |
//! | [`io_outcome`] | the one classification of socket I/O results |
//! | [`Transform`] | the byte transform every reply obeys |
//!
//! # Layout for a contributor
//!
//! ```text
//! src/main.rs, src/cli/   the command line (binary only)
//! src/serve/
//!   source.rs     sockets from addresses or inherited descriptors; the listening lines' source
//!   reactor.rs    Server: the poll loop, wiring the parts below
//!   token.rs      the token map and its decoding into a Source
//!   accept.rs     the acceptor: listeners, accept budget, EMFILE pause, refusals
//!   conns.rs      the connections: slab, run queue, read buffer, pending-output ceiling
//!   conn.rs       one connection's buffer state machine (pure; property-tested)
//!   timer.rs      the idle timeout (hashed wheel)
//!   udp.rs        the UDP side: batched recvmmsg/sendmmsg, reply queue, answering policy
//!   limit.rs      the per-source UDP reply budget (GCRA, echo-of-reply detection)
//!   lifecycle.rs  signals, shutdown handle, drain, watchdog; the signal policy
//!   systemd.rs    sockets from socket activation; READY/STOPPING/WATCHDOG via sd_notify
//!   stats.rs      the counters and the periodic counters line with rates
//!   logs.rs       connection ids and close lines (debug only), rate-limited "not answering"
//!   supervisor.rs --workers N: binds, starts, restarts, reloads and steers worker processes
//!   control.rs    the channel between the supervisor and a worker (messages, SCM_RIGHTS)
//!   steer.rs      the reuse-port steering program (classic BPF)
//! deploy/         systemd units (socket activation, hardening)
//! src/client/     upecho tcp / upecho udp
//! src/load/       upecho load
//! ```
//!
//! # The token map
//!
//! Which `mio::Token` names which event source (signals, waker, metrics, the supervisor's
//! channel, listeners, UDP sockets, connections, scrapers) is written down once, in the module
//! doc of `src/serve/token.rs`, beside the constants and the decoder it describes (a private
//! module: `cargo doc --document-private-items` renders it). A token that decodes to nothing
//! registered is ignored and counted.
//!
//! # A connection's life
//!
//! Accepted (counted; registered for readable and urgent-data events only, writable ones being
//! added the first time a write blocks; an idle connection is 16 bytes and owns no heap) →
//! `Header`, only for a connection from a `--proxy-from` source under `--proxy-protocol`: it
//! peeks (`MSG_PEEK`) until a whole PROXY header has arrived, consumes exactly that and goes on
//! to `Open`; no header, a malformed, overlong or cut-short one, or none whole within
//! `--proxy-timeout`, closes it unanswered (`proxy_rejected`), and a close before any byte ends
//! it quietly →
//! `Open`: on each readable edge it reads into a reactor-wide buffer, transforms in place and
//! writes straight back; what the socket does not take is owed, and reading stops while a
//! connection owes `--max-pending` (or anything at all, while the server as a whole owes
//! `--max-pending-total`). Reading goes on until `WouldBlock`, the turn's budget (then the run
//! queue) or a *short read*: a read that returned less than the buffer is taken to have emptied
//! the receive queue, and the connection waits for the next edge without the confirming
//! `WouldBlock` read (unless the event said a FIN or urgent data is in). That relies on Linux's
//! edge-triggered epoll, which raises a new edge for data arriving after the read; it is not
//! part of mio's portable contract (read until `WouldBlock`) → the peer's FIN: `ReadClosed`,
//! flush what is owed → closed. A reset or a local error closes it at once; the idle timeout
//! and the drain deadline close it from outside.
//!
//! # Where a change goes
//!
//! - A new flag: its `cli/` module, then the library `Config` field it sets.
//! - A new counter: [`serve::Stats`], where it happens (usually `conns.rs` or `udp.rs`), and
//!   `docs/serving.md` (and the metrics list in `docs/operating.md`).
//! - Byte handling on TCP: `serve/conn.rs`, with a property test beside it.
//! - Who runs when: `serve/reactor.rs`; a new kind of event source also gets a token range in
//!   `serve/token.rs`.
//! - A new socket origin (systemd, a supervisor): a `serve::SocketSource` variant.

pub mod addr;
pub mod client;
pub mod io_outcome;
pub mod load;
pub mod mmsg;
pub mod net;
pub mod serve;
pub mod supervise;
pub mod transform;
pub mod units;

pub use transform::Transform;

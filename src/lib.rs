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
//! | [`client`] | the TCP and UDP clients, interactive and in a pipe (terminal I/O included) |
//! | [`load`] | the verifying load generator: a config in, a report and a latency histogram out |
//! | [`addr`], [`units`], [`net`] | the shared vocabulary: `HOST:PORT`, durations and sizes, datagram limits |
//! | [`io_outcome`] | the one classification of socket I/O results, and the one `EINTR` retry |
//! | [`supervise`] | `--workers N`: the parent that starts, restarts, reloads (handing connections over) and steers worker processes |
//! | [`mmsg`] | batches of datagrams for `recvmmsg`/`sendmmsg` |
//! | [`Transform`] | the byte transform every reply obeys |
//!
//! # Layout for a contributor
//!
//! One line per file; no import runs back up this list's nesting, and there is no circle.
//!
//! ```text
//! src/main.rs            the binary: the command line over the library
//! src/cli/               the command line (binary only): clap definitions, logging, exit codes
//!   mod.rs               subcommands, dispatch (one process, supervisor, worker), logging set-up
//!   serve.rs             serve's flags, sockets, the listening lines
//!   workers.rs           serve --workers: one socket set per worker, the worker's start
//!   client.rs            tcp / udp flags and modes
//!   load.rs              load's flags and exit codes; load_values.rs their values;
//!                        load_questions.rs --search/--fail-if/--report; load_merge.rs;
//!                        load_compare.rs
//!   man.rs               upecho man
//! src/addr.rs            HOST:PORT grammar and resolution, for every subcommand
//! src/units.rs           durations (5, 500ms, 10s) and sizes (64KiB, 1M)
//! src/io_outcome.rs      the one classification of I/O results; retrying (EINTR), poll
//! src/mmsg.rs            batches of datagrams for recvmmsg/sendmmsg (the one unsafe header code)
//! src/net.rs             socket set-up (socket2), SocketOptions, datagram limits, fd reserve
//! src/transform.rs       the byte transform
//! src/serve/             the server: already-bound sockets in, a Summary out
//!   config.rs            Config, its defaults, the Limits taken from it
//!   source.rs            sockets from addresses or inherited descriptors
//!   reactor.rs           Server: the poll loop, wiring the parts below
//!   reactor/link.rs      a supervised worker's side: the supervisor's messages, hand-over out/in
//!   token.rs             the token map (the one copy) and its decoder
//!   accept.rs            listeners, accept budget, EMFILE pause, refusals
//!   table.rs             the connection table: slab, run queue, read buffer, pending total
//!   conn.rs              one connection's buffer state machine (pure; property-tested)
//!   timer.rs             the idle timeout (hashed wheel)
//!   udp.rs               the UDP side: batches, reply queue, answering policy
//!   limit.rs             the per-source UDP reply budget (GCRA, echo-of-reply detection)
//!   lifecycle.rs         signals, shutdown handle, drain, watchdog; the signal policy
//!   stats.rs             the counters and the periodic counters line
//!   logs.rs              connection ids and close lines (debug only), "not answering" sources
//!   throttle.rs          how often a rate-limited log line may be written
//!   proxy.rs             PROXY protocol framing (fields parsed by the ppp crate)
//!   metrics.rs           /metrics, /healthz, /readyz
//!   systemd.rs           socket activation; READY/STOPPING/WATCHDOG
//!   control.rs           the channel between supervisor and worker (messages, SCM_RIGHTS)
//!   handover.rs          a connection moving between processes: versioned state, owed bytes
//! src/supervise/         serve --workers N: the supervising parent (uses serve; serve never uses it)
//!   mod.rs               the loop, the supervisor's phase, signals, timers, the drain
//!   spawn.rs             a worker's command, descriptors, environment, signal mask
//!   pool.rs              the workers, their one state-transition function, back-off, reaping
//!   inbox.rs             what workers say over their channels
//!   reload.rs            SIGHUP: a new generation
//!   handover.rs          placing moved connections on the new generation
//!   route.rs, steer.rs   steering new connections (classic BPF), routing handed-off ones
//!   counters.rs          counter rounds, the exposition, the stats line
//!   token.rs             the supervisor's own token map
//! src/client/            upecho tcp / upecho udp (terminal I/O included)
//!   session.rs           the interactive session both share: prompt loop, reader thread
//!   console.rs           the terminal: line editing, history, keys
//!   display.rs           replies, times and arrivals in words
//!   target.rs            the server address, connecting
//!   tcp/                 TCP: sending, owed.rs (stream matching), pipe.rs (nc -N)
//!   udp/                 UDP: sending, matcher.rs (datagram matching), pipe.rs (windowed)
//! src/load/              upecho load, as a library
//!   mod.rs, config.rs    the run and the rules a runnable one obeys
//!   worker.rs            the event loop every worker thread runs; timer.rs its timerfd
//!   tcp.rs, tcp/         the TCP flow: exchange.rs (messages), socket.rs (connect, PROXY)
//!   udp.rs, udp/lane.rs  the UDP flow and its reply matching
//!   payload.rs           what is sent and how every byte is checked
//!   schedule.rs          when messages are due (open loop, coordinated omission)
//!   stage.rs             warm-up, run, done
//!   stats.rs, hist.rs    what a worker counts; the latency histogram
//!   interval.rs          the run second by second; progress.rs the progress line
//!   report.rs            the final report, text and JSON
//!   cpu.rs               CPU and RSS of this process and of the server
//!   procs.rs             --processes N
//!   hlog.rs, merge.rs    interval logs; load-merge
//!   proxy.rs             the PROXY header a connection sends
//!   expr.rs              --search / --fail-if conditions
//!   search.rs            --search: grow, bisect, confirm
//!   html.rs              --report: the HTML page and its charts (plotters)
//!   compare.rs           load-compare: Mann-Whitney over per-second samples
//! deploy/                systemd units, nginx stream and HAProxy configurations
//! tests/                 integration tests over the real binary (tests/util/mod.rs: the helpers)
//! benches/               criterion micro-benchmarks, end-to-end loopback (with a C bulk client),
//!                        workers against one process
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
//! - A new counter: [`serve::Stats`], where it happens (usually `table.rs` or `udp.rs`), and
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

//! The exchange on an open connection: completing its connect, issuing messages (closed loop
//! at once, open loop when due), writing them, reading and checking the replies, hold's check,
//! and the timeouts.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::{Interest, Token};

use super::socket::send_proxy_header;
use super::{ConnState, TcpConn, TcpOps, WRITE_MAX, owes};
use crate::io_outcome::Outcome;
use crate::load::Stage;
use crate::load::config::{CloseHow, Mode};
use crate::load::payload::PERIOD;
use crate::load::stats::ErrorClass;
use crate::load::worker::Readiness;

impl TcpOps<'_, '_> {
    /// Reads what has arrived, then writes whatever that (or write space) allows.
    pub(super) fn service(
        &mut self,
        c: &mut TcpConn,
        i: usize,
        scratch: &mut [u8],
        ready: Readiness,
    ) {
        // Read first: replies free room in the window, which is what we may write into.
        if ready.may_read() && !self.read(c, i, scratch, ready.read_past_short()) {
            return;
        }
        if ready.writable
            || ready.write_closed
            || self.env.ctx.cfg.mode == Mode::Bulk
            || c.tx < c.issued * self.env.ctx.cfg.size as u64
        {
            self.flush(c, i);
        }
    }

    /// A connecting socket became ready: it either connected or failed.
    pub(super) fn on_connecting(
        &mut self,
        c: &mut TcpConn,
        i: usize,
        scratch: &mut [u8],
        ready: Readiness,
    ) {
        let Some(s) = &c.stream else { return };
        // Writable with no error or hang-up is connected (see the module doc): two system calls
        // fewer per connection. Anything else asks the socket.
        let connected = ready.writable && !ready.error && !ready.write_closed;
        let result = if connected {
            Ok(())
        } else {
            match s.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match s.peer_addr() {
                    Ok(_) => Ok(()),
                    // Still in progress: a spurious wake-up.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Err(e),
                },
            }
        };
        if let Err(e) = result {
            self.fail(c, i, ErrorClass::of(&e), &e);
            return;
        }
        self.q.connecting -= 1;
        self.env.open += 1;
        c.state = ConnState::Open;
        // The header comes before any payload, and before the first message's latency origin.
        if let Some(v) = self.env.ctx.cfg.send_proxy
            && let Some(s) = &mut c.stream
            && let Err(e) = send_proxy_header(s, v)
        {
            let class = match e.kind() {
                io::ErrorKind::Other => ErrorClass::Local,
                _ => ErrorClass::of(&e),
            };
            return self.fail(c, i, class, &format!("PROXY header: {e}"));
        }
        c.start = self.q.next_start;
        // Successive connections start far apart in the pattern.
        self.q.next_start = self.q.next_start.wrapping_add(104_729) % PERIOD as u64;
        let now = Instant::now();
        c.last = now;
        self.env.live_connects += 1;
        if self.env.measuring() {
            self.env.counts.connects += 1;
        }
        match self.env.ctx.cfg.mode {
            Mode::Pingpong => self.refill(c, now),
            Mode::Bulk | Mode::Hold => {}
            Mode::Churn => {
                // Churn's latency is the whole cycle, from the start of the connect (with
                // --rate: from when the connection was due).
                c.inflight.push(c.origin);
                c.issued = 1;
            }
        }
        if self.env.stage == Stage::Check {
            self.issue_check(c, now);
        }
        self.flush(c, i);
        // Data may have arrived with the handshake's wake-up: this event was its edge, so it is
        // read now. (The reply to what was just written raises an edge of its own.)
        if c.state == ConnState::Open && ready.may_read() {
            let ready = Readiness {
                writable: false,
                write_closed: false,
                ..ready
            };
            self.service(c, i, scratch, ready);
        }
    }

    /// Issues messages up to the depth: at once in closed loop, when due in open loop.
    pub(super) fn refill(&mut self, c: &mut TcpConn, now: Instant) {
        if self.env.draining() {
            return;
        }
        let n = self.env.lanes as u64;
        while !c.inflight.is_full() {
            let origin = match &self.env.sched {
                None => now,
                Some(s) if c.taken < c.due => {
                    // Slot j's m-th scheduled message is the worker's message j + m * n.
                    let j = c.slot as u64;
                    let t = s.due_time(j + c.taken * n);
                    c.taken += 1;
                    t
                }
                Some(_) => break,
            };
            if c.inflight.is_empty() {
                c.last = now;
            }
            c.inflight.push(origin);
            c.issued += 1;
        }
    }

    /// Writes what has been issued (bulk: as much as the socket takes) until `WouldBlock`.
    pub(super) fn flush(&mut self, c: &mut TcpConn, i: usize) {
        let bulk = self.env.ctx.cfg.mode == Mode::Bulk;
        let goal = if bulk && self.env.draining() {
            // Draining: what is written is owed; nothing more is sent.
            c.tx
        } else if bulk {
            // Stream, but never more than the window ahead of the replies: a flooded server
            // receive queue makes the kernel collapse and prune it on the *sender's* CPU, which
            // nearly doubled the generator's cost per byte here without adding throughput.
            c.rx + self.q.bulk_window
        } else {
            c.issued * self.env.ctx.cfg.size as u64
        };
        while c.tx < goal {
            let Some(s) = &mut c.stream else { return };
            let want = (goal - c.tx).min(WRITE_MAX as u64) as usize;
            let win = self.env.ctx.pattern.send_window(c.start + c.tx, want);
            match Outcome::of_write(s.write(win)) {
                Outcome::Moved(n) => c.tx += n as u64,
                Outcome::WouldBlock => {
                    if !c.want_write {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if let Err(e) = self.env.poll.registry().reregister(s, Token(i), interest) {
                            return self.fail(c, i, ErrorClass::Local, &e);
                        }
                        c.want_write = true;
                    }
                    return;
                }
                Outcome::Interrupted => {}
                Outcome::PeerClosed => {
                    let e = "the socket takes no more bytes (the server is gone)";
                    return self.fail(c, i, ErrorClass::Closed, &e);
                }
                Outcome::PeerReset(e) | Outcome::Local(e) => {
                    return self.fail(c, i, ErrorClass::of(&e), &e);
                }
            }
        }
        // Everything written: stop waking up for write space. A churn
        // connection lives for one message: changing its interest would cost more than it saves.
        if c.want_write
            && self.env.ctx.cfg.mode != Mode::Churn
            && let Some(s) = &mut c.stream
        {
            let interest = Interest::READABLE;
            if let Err(e) = self.env.poll.registry().reregister(s, Token(i), interest) {
                return self.fail(c, i, ErrorClass::Local, &e);
            }
            c.want_write = false;
        }
    }

    /// Reads until `WouldBlock` (or a short read, unless `past_short`: see the module doc),
    /// checking every byte and completing messages. Returns whether the connection is still open.
    pub(super) fn read(
        &mut self,
        c: &mut TcpConn,
        i: usize,
        scratch: &mut [u8],
        past_short: bool,
    ) -> bool {
        loop {
            let Some(s) = &mut c.stream else { return false };
            match Outcome::of_read(s.read(scratch)) {
                Outcome::Moved(n) => {
                    if !self.on_bytes(c, i, &scratch[..n]) {
                        return false;
                    }
                    if n < scratch.len() && !past_short {
                        return true;
                    }
                }
                Outcome::WouldBlock => return true,
                Outcome::Interrupted => {}
                Outcome::PeerClosed => {
                    // The server closed. Fine only for a churn connection already answered
                    // (which we close ourselves first, so in practice never).
                    let owed = c.tx - c.rx;
                    let e = format!("server closed the connection with {owed} bytes unanswered");
                    self.fail(c, i, ErrorClass::Closed, &e);
                    return false;
                }
                Outcome::PeerReset(e) | Outcome::Local(e) => {
                    self.fail(c, i, ErrorClass::of(&e), &e);
                    return false;
                }
            }
        }
    }

    /// Takes reply bytes `got` just read on slot `i`: checks them, completes the messages they
    /// finish and issues their successors. Returns whether the connection is still open. Touches
    /// no socket but to close it, so tests drive it directly.
    pub(super) fn on_bytes(&mut self, c: &mut TcpConn, i: usize, got: &[u8]) -> bool {
        let cfg = self.env.ctx.cfg;
        let size = cfg.size as u64;
        if c.rx + got.len() as u64 > c.tx {
            // More bytes back than were sent: the stream can no longer be matched.
            let extra = c.rx + got.len() as u64 - c.tx;
            let id = self.env.ctx.first_conn + i;
            self.env.counts.wrong_reply(extra, || {
                format!(
                    "connection {id}: {extra} bytes back more than were sent \
                         (after stream byte {})",
                    c.tx
                )
            });
            self.fail(c, i, ErrorClass::Other, &"server sent unsolicited bytes");
            return false;
        }
        if let Err(m) = self.env.ctx.pattern.check(c.start + c.rx, got, c.rx) {
            let id = self.env.ctx.first_conn + i;
            self.env.counts.mismatch(m, || format!("connection {id}"));
        }
        c.rx += got.len() as u64;
        let now = Instant::now();
        c.last = now;
        self.env.live_bytes += got.len() as u64;
        if self.env.measuring() {
            self.env.counts.bytes += got.len() as u64;
        }
        let answered = c.rx / size;
        let newly = answered - c.done;
        c.done = answered;
        self.env.live_msgs += newly;
        if cfg.mode == Mode::Bulk {
            if self.env.measuring() {
                self.env.counts.msgs += newly;
            }
            return true;
        }
        if self.env.measuring() {
            self.env.counts.msgs += newly;
        }
        // Every latency goes into the current interval: the warm-up's show on the progress line,
        // the window's make the total, and hold's check (after the window) is hold's latency.
        for _ in 0..newly {
            let origin = c.inflight.pop().unwrap_or(now);
            self.env.latency(now.saturating_duration_since(origin));
        }
        if newly > 0 {
            match cfg.mode {
                Mode::Pingpong => self.refill(c, now),
                Mode::Churn => {
                    // Answered: close and go again. With FIN ours goes first, so
                    // TIME_WAIT stays on our side (Linux reuses it for loopback
                    // connects); with RST there is none.
                    if cfg.close == CloseHow::Rst {
                        self.reset_and_keep(c);
                    } else {
                        self.close(c);
                    }
                    self.requeue(c, i, None);
                    return false;
                }
                Mode::Hold => {
                    self.env.counts.answered += newly;
                }
                Mode::Bulk => {}
            }
        }
        true
    }

    /// hold: the hold is over; send one message on every open connection.
    pub(super) fn begin_check(&mut self, conns: &mut [TcpConn], now: Instant) {
        for (i, c) in conns.iter_mut().enumerate() {
            if c.state == ConnState::Open {
                self.env.counts.held += 1;
                self.issue_check(c, now);
                self.flush(c, i);
            }
        }
    }

    pub(super) fn issue_check(&mut self, c: &mut TcpConn, now: Instant) {
        if self.env.ctx.cfg.mode == Mode::Hold && c.issued == 0 {
            c.inflight.push(now);
            c.last = now;
            c.issued = 1;
        }
    }

    /// Timeouts: a connect that takes too long, or a connection owing replies that has been
    /// silent for `--timeout`.
    pub(super) fn housekeeping(&mut self, conns: &mut [TcpConn], now: Instant) {
        let cfg = self.env.ctx.cfg;
        for (i, c) in conns.iter_mut().enumerate() {
            let late = match c.state {
                ConnState::Connecting => now.duration_since(c.began) > cfg.connect_timeout,
                ConnState::Open => owes(c) && now.duration_since(c.last) > cfg.timeout,
                // Closing is bounded by the worker (CLOSE_BOUND), not by --timeout.
                ConnState::Idle | ConnState::Done | ConnState::Closing => false,
            };
            if late {
                let what = match c.state {
                    ConnState::Connecting => "connect timed out",
                    _ => "no reply within --timeout",
                };
                self.fail(c, i, ErrorClass::Timeout, &what);
            }
        }
    }
}

//! The reactor's side of a single server's upgrade (SIGUSR2, see [`crate::serve::upgrade`]):
//! in the old process, starting the successor, waiting for it, handing every connection over
//! (the hand-over of a reload, [`super::link`], with the successor as the carrier) or giving
//! up and serving on; in the new one, taking the connections over and then serving alone.

// The loop's own vocabulary (its parts, their types, the log macros), as in reactor.rs.
use super::*;

use crate::serve::control::{Channel, PROTOCOL, ToWorker};
use crate::serve::handover::announced_version;
use crate::serve::upgrade::{FromSuccessor, Predecessor, Successor, write_pid_file};

impl Server {
    /// Serves as the successor of the process that started this one (its upgrade): tells it
    /// this one is ready, takes the connections it sends, then serves alone.
    pub fn with_predecessor(mut self, channel: Channel) -> io::Result<Server> {
        let p = Predecessor::new(channel, Instant::now());
        self.poll.registry().register(
            &mut SourceFd(&p.raw()),
            token::UPGRADE,
            Interest::READABLE,
        )?;
        p.ready(self.conns.max())?;
        info!("upgrade: taking over from pid {}", p.pid);
        self.predecessor = Some(p);
        Ok(self)
    }

    /// SIGUSR2: start the binary on disk with this server's sockets.
    pub(super) fn begin_upgrade(&mut self, name: &str, now: Instant) {
        let refusal = if self.control.is_some() {
            Some(format!(
                "a worker is upgraded by its supervisor: signal pid {} (SIGHUP or SIGUSR2)",
                std::os::unix::process::parent_id()
            ))
        } else if let Some(p) = &self.predecessor {
            Some(format!(
                "still taking over from pid {}: no upgrade yet",
                p.pid
            ))
        } else if self.successor.is_some() {
            Some("an upgrade is already under way".into())
        } else if self.life.draining() {
            Some("shutting down: no upgrade".into())
        } else if self.upgrade.is_none() {
            Some("this server has no binary to upgrade to (embedded): ignored".into())
        } else {
            None
        };
        if let Some(why) = refusal {
            warn!("{name}: {why}");
            return;
        }
        let Some(command) = &self.upgrade else { return };
        let metrics = self.metrics.as_ref().map(|m| m.listener_fd());
        let fds: Vec<_> = metrics
            .into_iter()
            .chain(self.acceptor.listeners.iter().map(|l| l.as_fd()))
            .chain(self.udp.endpoints.iter().map(|e| e.socket.as_fd()))
            .collect();
        let exe = command.exe.display().to_string();
        let started = Successor::start(command, &fds, metrics.is_some(), now).and_then(|s| {
            // Writable too: the hand-over's messages can fill the channel.
            self.poll.registry().register(
                &mut SourceFd(&s.raw()),
                token::UPGRADE,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match started {
            Ok(s) => {
                info!("{name}: upgrading: started pid {} from {exe}", s.pid());
                self.successor = Some(s);
            }
            Err(e) => warn!("{name}: upgrade: cannot start {exe}: {e}; serving on"),
        }
    }

    /// An event on the upgrade channel, from whichever end this process holds.
    pub(super) fn on_upgrade_channel(&mut self, now: Instant) {
        if self.predecessor.is_some() {
            self.on_predecessor(now);
            return;
        }
        let Some(s) = &mut self.successor else { return };
        let handing_over = s.ready;
        match s.read() {
            FromSuccessor::Nothing => {}
            FromSuccessor::Ready { protocol, handover } if !handing_over => {
                self.successor_ready(protocol, handover, now)
            }
            FromSuccessor::Ready { .. } => {}
            FromSuccessor::Gone if !handing_over => {
                self.abandon_upgrade("ended before it was ready")
            }
            FromSuccessor::Gone => {
                // It closed its end: every connection sent is placed (or it died, taking
                // those it had not read with it). What was not sent yet is drained here.
                let _ = self.poll.registry().deregister(&mut SourceFd(&s.raw()));
                let pid = s.pid();
                self.pump_outgoing(now);
                if let Some(o) = &mut self.outgoing {
                    o.ended = true;
                }
                info!("upgrade: pid {pid} serves alone now: this process exits once done");
            }
        }
        self.pump_outgoing(now);
    }

    /// The successor serves: hand everything over to it, or (another hand-over format) let it
    /// serve new connections while this process drains its own.
    fn successor_ready(&mut self, protocol: u32, handover: u32, now: Instant) {
        let pid = successor_pid(&self.successor);
        if protocol != PROTOCOL {
            self.abandon_upgrade(&format!(
                "speaks control protocol {protocol}, this one {PROTOCOL}"
            ));
            return;
        }
        let took = self
            .successor
            .as_ref()
            .map_or(0, |s| now.saturating_duration_since(s.started).as_millis());
        info!("upgrade: pid {pid} is ready (after {took} ms)");
        // From now on the successor is the service: it reports to systemd and answers scrapes.
        self.life.hand_notifications_over();
        if let Some(m) = self.metrics.take() {
            m.close_for_successor(self.poll.registry());
        }
        let writes = announced_version();
        if handover == writes {
            self.begin_hand_over(now);
            return;
        }
        warn!(
            "upgrade: pid {pid} reads hand-over format {handover}, this one writes {writes}: it \
             serves new connections; this process drains its {}",
            Count(self.conns.len() as u64, "connection")
        );
        self.begin_shutdown(now);
        if let Some(s) = &mut self.successor {
            s.post(&ToWorker::HandOverEnd, Vec::new());
        }
    }

    /// Stops a successor that will not take over; this process serves on.
    fn abandon_upgrade(&mut self, why: &str) {
        let Some(s) = self.successor.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut SourceFd(&s.raw()));
        let pid = s.pid();
        let how = s.abandon();
        warn!("upgrade abandoned: pid {pid} {why} ({how}); serving on");
    }

    /// When the successor must be ready by.
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        self.successor.as_ref().and_then(Successor::deadline)
    }

    /// Gives up on a successor that is not ready in time, or when this process is stopping.
    pub(super) fn on_upgrade_timer(&mut self, now: Instant) {
        if self.upgrade_deadline().is_some_and(|t| now >= t) {
            self.abandon_upgrade(&format!(
                "was not ready within {}",
                crate::units::show(crate::serve::upgrade::READY_TIMEOUT)
            ));
        }
    }

    /// A stop signal while a successor starts: it is stopped, this process drains as asked.
    pub(super) fn stop_upgrade_for_shutdown(&mut self) {
        if self.successor.as_ref().is_some_and(|s| !s.ready) {
            self.abandon_upgrade("was stopped: this process is shutting down");
        }
    }

    /// What the old process sent: connections to serve on, then the end.
    fn on_predecessor(&mut self, now: Instant) {
        let Some(p) = &mut self.predecessor else {
            return;
        };
        let inbox = p.read();
        p.taken += inbox.moved.len() as u64;
        for (m, fds) in inbox.moved {
            self.take_over(m, fds, now);
        }
        if inbox.end || inbox.gone {
            self.detach(inbox.end, now);
        }
    }

    /// Every connection is here (or the old process is gone): serve alone, and say so.
    fn detach(&mut self, complete: bool, now: Instant) {
        let Some(p) = self.predecessor.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut SourceFd(&p.raw()));
        let pid = std::process::id();
        if let Some(path) = &self.pid_file
            && let Err(e) = write_pid_file(path, pid)
        {
            warn!("--pid-file {}: {e}", path.display());
        }
        let ms = now.saturating_duration_since(p.since).as_millis();
        let taken = Count(p.taken, "connection");
        if complete {
            info!(
                "upgrade complete: took over {taken} from pid {} in {ms} ms; serving alone",
                p.pid
            );
        } else {
            warn!(
                "upgrade: pid {} went before it had handed everything over ({taken} taken in \
                 {ms} ms); serving alone",
                p.pid
            );
        }
        self.life
            .notifier()
            .took_over(&format!("serving (upgraded from pid {})", p.pid));
        // Dropping the channel tells the old process it may exit.
        drop(p);
    }
}

fn successor_pid(s: &Option<Successor>) -> u32 {
    s.as_ref().map_or(0, Successor::pid)
}

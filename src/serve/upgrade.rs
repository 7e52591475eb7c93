//! A single server's upgrade (SIGUSR2): the process started to take over, and both ends of
//! the channel between the two.
//!
//! ```text
//!   old (pid P)                                      new (pid Q, the binary on disk)
//!   SIGUSR2 ─▶ start Q: channel at fd 3, then the metrics listener (if any), the listeners
//!              and UDP sockets, all inherited; the handled signals blocked until Q handles them
//!                                  ◀── Ready { protocol, handover }   (Q serves new connections)
//!   stops accepting and reading; for each connection
//!              Adopt { state } + socket + memfd of owed output ──▶   served on as it was
//!              HandOverEnd ──▶                                        --pid-file, MAINPID=Q,
//!                                  ◀── (Q closes its end)             READY=1; serves alone
//!   exits 0
//! ```
//!
//! The messages are the supervisor's ([`super::control`]): the old process plays the
//! supervisor's part for one worker that then goes on alone. The new process is not the old
//! one's worker: it outlives it, keeps the process group (a terminal's Ctrl-C reaches it) and
//! reports to systemd itself. A successor that exits, speaks another control protocol or is
//! not ready within [`READY_TIMEOUT`] is killed and the old process serves on; one that reads
//! another hand-over format gets the sockets, and the old process drains its connections.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::control::{CONTROL_FD, Channel, PROTOCOL, Received, ToSupervisor, ToWorker};
use super::exec::{Parent, inherit_at};
use super::handover::Moving;

/// How long a successor has to say it is ready before the upgrade is abandoned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The successor's environment: how many sockets follow the channel (after the metrics
/// listener, if [`METRICS_ENV`] says there is one).
pub const SOCKETS_ENV: &str = "UPECHO_UPGRADE_SOCKETS";
/// `1`: the descriptor right after the channel is the `--metrics` listener.
pub const METRICS_ENV: &str = "UPECHO_UPGRADE_METRICS";

/// What an upgrade starts: the binary on disk (read at start-up, while the path names the file
/// this process came from) and this process's own arguments.
#[derive(Debug, Clone)]
pub struct UpgradeCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// What the successor heard from the process it takes over from.
#[derive(Debug, Default)]
pub(crate) struct FromPredecessor {
    pub(crate) moved: Vec<(Moving, Vec<OwnedFd>)>,
    /// Every connection has been sent: the successor serves alone.
    pub(crate) end: bool,
    /// The old process is gone (or its channel failed).
    pub(crate) gone: bool,
}

/// What the old process heard from its successor.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromSuccessor {
    Nothing,
    Ready {
        protocol: u32,
        handover: u32,
    },
    /// The successor closed its end: it serves alone (or died).
    Gone,
}

/// The old process's side: the successor it started and the channel to it.
pub(crate) struct Successor {
    child: Child,
    channel: Channel,
    pub(crate) started: Instant,
    /// Said it is ready (and can take connections).
    pub(crate) ready: bool,
    gone: bool,
}

impl Successor {
    /// Starts `command` with the channel and `sockets` (the metrics listener first if
    /// `metrics`) inherited.
    pub(crate) fn start(
        command: &UpgradeCommand,
        sockets: &[BorrowedFd<'_>],
        metrics: bool,
        now: Instant,
    ) -> io::Result<Successor> {
        let (channel, child_end) = Channel::pair()?;
        let mut fds = vec![child_end.as_raw_fd()];
        fds.extend(sockets.iter().map(|s| s.as_raw_fd()));
        let mut cmd = Command::new(&command.exe);
        cmd.arg0("upecho")
            .args(&command.args)
            .env(
                SOCKETS_ENV,
                (sockets.len() - usize::from(metrics)).to_string(),
            )
            .env(METRICS_ENV, if metrics { "1" } else { "0" })
            // The sockets come from this process, not from systemd; the successor pings the
            // watchdog itself once it has taken over (WATCHDOG_PID names this process).
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_PID");
        inherit_at(&mut cmd, CONTROL_FD, fds, Parent::Outlive);
        let child = cmd.spawn()?;
        drop(child_end);
        Ok(Successor {
            child,
            channel,
            started: now,
            ready: false,
            gone: false,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.channel.raw()
    }

    /// When the successor must have said it is ready.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (!self.ready).then(|| self.started + READY_TIMEOUT)
    }

    /// Reads what the successor said.
    pub(crate) fn read(&mut self) -> FromSuccessor {
        if self.gone {
            return FromSuccessor::Gone;
        }
        loop {
            match self.channel.recv::<ToSupervisor>() {
                Ok(Received::Message(
                    ToSupervisor::Ready {
                        protocol, handover, ..
                    },
                    _,
                )) => {
                    self.ready = true;
                    return FromSuccessor::Ready { protocol, handover };
                }
                Ok(Received::Message(other, _)) => debug!("upgrade: {other:?}: ignored"),
                Ok(Received::WouldBlock) => return FromSuccessor::Nothing,
                Ok(Received::Closed) => {
                    self.gone = true;
                    return FromSuccessor::Gone;
                }
                Err(e) => {
                    warn!("upgrade: channel to the successor: {e}");
                    self.gone = true;
                    return FromSuccessor::Gone;
                }
            }
        }
    }

    /// Stops a successor that is not taking over, and says how it ended.
    pub(crate) fn abandon(mut self) -> String {
        // SAFETY: kill(2) on our own child, not reaped yet, so its pid is still its own.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        match self.child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("it exited with status {code}"),
                (None, Some(libc::SIGKILL)) => "it was killed".into(),
                (None, Some(sig)) => format!("it was killed by signal {sig}"),
                (None, None) => format!("it ended ({status})"),
            },
            Err(e) => format!("it could not be waited for ({e})"),
        }
    }

    /// Sends what the channel queued; false once the successor is gone.
    pub(crate) fn flush(&mut self) -> bool {
        if self.gone {
            return false;
        }
        match self.channel.flush() {
            Ok(_) => true,
            Err(e) => {
                debug!("upgrade: channel to the successor: {e}");
                self.gone = true;
                false
            }
        }
    }

    /// Messages the channel has not taken yet.
    pub(crate) fn queued(&self) -> usize {
        self.channel.queued()
    }

    /// Posts `msg`; false once the successor is gone.
    pub(crate) fn post(&mut self, msg: &ToWorker, fds: Vec<OwnedFd>) -> bool {
        if self.gone {
            return false;
        }
        match self.channel.post(msg, fds) {
            Ok(()) => true,
            Err(e) => {
                debug!("upgrade: channel to the successor: {e}");
                self.gone = true;
                false
            }
        }
    }
}

/// The new process's side: the channel to the process it takes over from.
pub(crate) struct Predecessor {
    channel: Channel,
    pub(crate) pid: u32,
    pub(crate) since: Instant,
    pub(crate) taken: u64,
}

impl Predecessor {
    pub(crate) fn new(channel: Channel, now: Instant) -> Predecessor {
        Predecessor {
            channel,
            // The old process started this one: it is the parent, until it exits.
            pid: std::os::unix::process::parent_id(),
            since: now,
            taken: 0,
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.channel.raw()
    }

    /// Tells the old process this one serves, and what it reads.
    pub(crate) fn ready(&self, max_connections: usize) -> io::Result<()> {
        self.channel.send(
            &ToSupervisor::Ready {
                protocol: PROTOCOL,
                version: env!("CARGO_PKG_VERSION").into(),
                max_connections: max_connections as u64,
                handover: super::handover::announced_version(),
            },
            None,
        )
    }

    /// Everything the old process sent since the last call.
    pub(crate) fn read(&mut self) -> FromPredecessor {
        let mut inbox = FromPredecessor::default();
        loop {
            match self.channel.recv::<ToWorker>() {
                Ok(Received::Message(ToWorker::Adopt { conn }, fds)) => {
                    inbox.moved.push((conn, fds))
                }
                Ok(Received::Message(ToWorker::HandOverEnd, _)) => {
                    inbox.end = true;
                    return inbox;
                }
                Ok(Received::Message(other, _)) => debug!("upgrade: {other:?}: ignored"),
                Ok(Received::WouldBlock) => return inbox,
                Ok(Received::Closed) => {
                    inbox.gone = true;
                    return inbox;
                }
                Err(e) => {
                    warn!("upgrade: channel to the old process: {e}");
                    inbox.gone = true;
                    return inbox;
                }
            }
        }
    }
}

/// The sockets a successor inherited, as [`SOCKETS_ENV`] and [`METRICS_ENV`] describe them,
/// read and removed from the environment (so that a process this one starts does not take
/// them for its own), if this process is a successor.
pub fn inherited_from_env() -> Option<(usize, bool)> {
    let sockets = std::env::var(SOCKETS_ENV).ok()?;
    let metrics = std::env::var(METRICS_ENV).is_ok_and(|v| v == "1");
    // SAFETY: called at start-up, before the process has started any thread.
    unsafe {
        std::env::remove_var(SOCKETS_ENV);
        std::env::remove_var(METRICS_ENV);
    }
    Some((sockets.parse().ok()?, metrics))
}

/// `--pid-file`: `pid` written to `path` whole (a temporary file renamed over it), so a reader
/// never sees half a number.
pub fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Removes the pid file if it still names `pid` (a successor's rewrite is left alone).
pub fn remove_pid_file(path: &Path, pid: u32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string());
    if ours && let Err(e) = std::fs::remove_file(path) {
        warn!("remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_is_removed_only_by_the_process_it_names() {
        let dir = std::env::temp_dir().join(format!("upecho-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upecho.pid");
        write_pid_file(&path, 41).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "41\n");
        write_pid_file(&path, 42).unwrap();
        remove_pid_file(&path, 41);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "42\n",
            "not 41's any more"
        );
        remove_pid_file(&path, 42);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

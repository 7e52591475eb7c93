//! Starting one worker process: the program and its arguments, the descriptors it inherits
//! (its end of the channel at [`CONTROL_FD`], its slot's sockets after it), the environment it
//! must not see, the signal state it starts in; and how a worker's end is described.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};

use crate::serve::control::{CONTROL_FD, Channel};
use crate::serve::exec::{Parent, inherit_at};
use crate::serve::{Sockets, signal_name};

/// The program a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The binary of the first generation and its restarts: this very binary
    /// (`/proc/self/exe`), even if the file on disk has been replaced since.
    pub first: PathBuf,
    /// The binary of a reload's workers: the file on disk (the upgrade path).
    pub reload: PathBuf,
    /// The arguments of every worker; the supervisor adds `--worker-slot`, `--worker-generation`
    /// and `--worker-sockets`.
    pub args: Vec<OsString>,
}

/// Where each slot's sockets come from.
#[derive(Debug)]
pub enum SlotSockets {
    /// One set per slot, bound with `SO_REUSEPORT`, in slot order (new connections are steered).
    PerSlot(Vec<Sockets>),
    /// One set shared by every worker (sockets passed by systemd): they all accept from the
    /// same sockets, and the hand-off alone keeps a full worker from refusing.
    Shared(Sockets),
}

impl SlotSockets {
    /// One listener of each address's reuse-port group, to steer through; empty when shared.
    pub(super) fn steer_fds(&self) -> Vec<RawFd> {
        match self {
            SlotSockets::PerSlot(sets) => sets
                .first()
                .map(|s| s.listeners.iter().map(|l| l.as_raw_fd()).collect())
                .unwrap_or_default(),
            SlotSockets::Shared(_) => Vec::new(),
        }
    }

    fn of_slot(&self, slot: u32) -> Vec<RawFd> {
        let set = match self {
            SlotSockets::PerSlot(sets) => &sets[slot as usize],
            SlotSockets::Shared(set) => set,
        };
        set.listeners
            .iter()
            .map(|l| l.as_raw_fd())
            .chain(set.udp.iter().map(|u| u.as_raw_fd()))
            .collect()
    }
}

/// What every worker is started from: the sockets (kept open by the supervisor for its whole
/// life) and the command.
pub(super) struct Spawner {
    pub(super) sockets: SlotSockets,
    pub(super) command: WorkerCommand,
}

impl Spawner {
    /// The binary a worker of `generation` runs.
    pub(super) fn exe(&self, generation: u32) -> &PathBuf {
        if generation == 0 {
            &self.command.first
        } else {
            &self.command.reload
        }
    }

    /// Starts the worker of `slot` in `generation`; returns it and the supervisor's end of
    /// its channel.
    pub(super) fn start(&self, slot: u32, generation: u32) -> io::Result<(Child, Channel)> {
        let (channel, child_end) = Channel::pair()?;
        let sockets = self.sockets.of_slot(slot);
        let mut fds = vec![child_end.as_raw_fd()];
        fds.extend(&sockets);
        let mut cmd = Command::new(self.exe(generation));
        cmd.arg0("upecho")
            .args(&self.command.args)
            .arg("--worker-slot")
            .arg(slot.to_string())
            .arg("--worker-generation")
            .arg(generation.to_string())
            .arg("--worker-sockets")
            .arg(sockets.len().to_string())
            // The service manager talks to the supervisor alone.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .process_group(0);
        inherit_at(&mut cmd, CONTROL_FD, fds, Parent::DieWith);
        let child = cmd.spawn()?;
        drop(child_end);
        Ok((child, channel))
    }
}

pub(super) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; it is reaped only by us, so the pid is still
    // its own until then.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// `exited with status 3`, `killed by signal 9 (SIGKILL)`.
pub(super) fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {sig} ({}{core})", signal_label(sig))
        }
        None => format!("ended ({status})"),
    }
}

fn signal_label(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGUSR2 => "SIGUSR2",
        s => signal_name(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_causes_are_described_as_an_operator_reads_them() {
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "killed by signal 11 (SIGSEGV, core dumped)"
        );
    }
}

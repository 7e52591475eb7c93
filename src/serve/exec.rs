//! Starting another process of this server that inherits descriptors at fixed numbers: a
//! supervisor's worker, or a single server's successor in an upgrade. Both need the same
//! delicate part, done between fork and exec: the handled signals blocked (so one sent before
//! the new process's handlers are in place waits for them instead of killing it), and the
//! descriptors moved into place without one clobbering another.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::lifecycle::HANDLED_SIGNALS;

/// What the child checks or arms before it places its descriptors.
#[derive(Debug, Clone, Copy)]
pub enum Parent {
    /// The child dies with its parent (a worker must never serve alone), and refuses to start
    /// if the parent is already gone.
    DieWith,
    /// The child outlives its parent (a successor takes over from it).
    Outlive,
}

/// Makes `cmd` start with `fds` at `first`, `first + 1`, ... (inherited, all others close on
/// exec as they were opened) and the handled signals blocked.
pub fn inherit_at(cmd: &mut Command, first: RawFd, fds: Vec<RawFd>, parent: Parent) {
    let pid = std::process::id() as libc::pid_t;
    let high = fds
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(first + fds.len() as RawFd)
        + 1;
    let mut moved = vec![0 as RawFd; fds.len()];
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (sigprocmask, prctl, getppid, fcntl, dup2) on memory
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in HANDLED_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Parent::DieWith = parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before the death signal was armed: do not serve alone.
                if libc::getppid() != pid {
                    return Err(io::Error::other("the parent is gone"));
                }
            }
            // Out of the way first, so that moving one into place cannot clobber another.
            for (i, &fd) in fds.iter().enumerate() {
                let m = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high);
                if m < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = m;
            }
            for (i, &m) in moved.iter().enumerate() {
                // dup2 leaves the new descriptor without close-on-exec: it is inherited.
                if libc::dup2(m, first + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

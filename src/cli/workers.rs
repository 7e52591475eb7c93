//! `upecho serve --workers N` on the command line: binding one set of sockets per worker, the
//! supervisor's start line and exit code; and the worker's side, `upecho serve ...
//! --worker-slot N` (hidden: the supervisor starts it), serving the descriptors it inherited.
//! The supervising itself is the library's ([`upecho::supervise`]).

use std::error::Error;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use log::{debug, info};

use super::serve::{
    ServeArgs, bind_source, describe_limits, limits, server_config, systemd_sockets,
};
use upecho::net::{self, SocketOptions};
use upecho::serve::control::{CONTROL_FD, Channel, WorkerLink, is_control_channel};
use upecho::serve::systemd::Notifier;
use upecho::serve::{Server, SocketSource, Sockets, unblock_handled_signals};
use upecho::supervise::{SlotSockets, Supervisor, SupervisorConfig, WorkerCommand};

/// `upecho serve --workers N`: binds, supervises, exits 0 once every worker has drained.
pub(super) fn supervise(args: ServeArgs, n: u32) -> Result<ExitCode, Box<dyn Error>> {
    let workers = match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    let (nofile, max_connections) = limits(&args);
    let (sockets, lines) = match systemd_sockets(&args)? {
        Some(passed) => {
            let set = passed.open()?;
            let lines = set.listening_lines()?;
            (SlotSockets::Shared(set), lines)
        }
        None => {
            let (sets, lines) = bind_slots(&args, workers)?;
            (SlotSockets::PerSlot(sets), lines)
        }
    };
    let metrics = match &args.metrics {
        Some(hp) => {
            let addr = *hp.resolve()?.first().ok_or("no address for --metrics")?;
            let listener = net::bind_tcp(addr, &SocketOptions::default())?;
            info!("metrics at http://{}/metrics", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    let notifier = Notifier::from_env();
    let server = server_config(&args, max_connections, Notifier::default());
    info!(
        "upecho {} serving with {} worker{} ({} each)",
        env!("CARGO_PKG_VERSION"),
        workers,
        if workers == 1 { "" } else { "s" },
        describe_limits(&server, nofile, max_connections)
    );
    let command = WorkerCommand {
        first: PathBuf::from("/proc/self/exe"),
        // Read now, while it names the file this process was started from.
        reload: std::env::current_exe()?,
        args: std::env::args_os().skip(1).collect(),
    };
    super::serve::log_ignored_signals();
    let supervisor = Supervisor::new(SupervisorConfig {
        workers,
        sockets,
        command,
        server,
        metrics,
        notifier,
    })?;
    // The handlers are in: what arrived since the start (blocked in cli::run) is handled now.
    unblock_handled_signals()?;
    let pid_file = super::serve::PidFile::removed_at_exit(&args);
    let pid_path = args.pid_file.clone();
    let summary = supervisor.run(move || {
        if let Some(path) = &pid_path {
            upecho::serve::upgrade::write_pid_file(path, std::process::id())?;
        }
        let mut out = io::stdout().lock();
        out.write_all(lines.as_bytes())?;
        out.flush()
    })?;
    drop(pid_file);
    Ok(if summary.forced || summary.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One set of sockets per worker slot, all with `SO_REUSEPORT`: slot 0's first (port 0 is
/// chosen there), then the others on the very addresses slot 0 got. Returns them and the
/// `listening` lines (slot 0's: every slot has the same addresses).
fn bind_slots(args: &ServeArgs, workers: usize) -> Result<(Vec<Sockets>, String), Box<dyn Error>> {
    let SocketSource::Bind {
        addrs,
        protocols,
        mut options,
    } = bind_source(args)?
    else {
        return Err("no addresses to bind".into());
    };
    options.reuse_port = true;
    let first = SocketSource::Bind {
        addrs,
        protocols,
        options,
    }
    .open()?;
    let lines = first.listening_lines()?;
    // Each address once, as bound: the TCP listener's (the UDP socket of an address has its
    // port), or the UDP socket's when serving UDP only.
    let bound: Vec<_> = if protocols.tcp {
        first
            .listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<_>>()?
    } else {
        first
            .udp
            .iter()
            .map(|u| u.local_addr())
            .collect::<io::Result<_>>()?
    };
    let mut sets = vec![first];
    for _ in 1..workers {
        sets.push(
            SocketSource::Bind {
                addrs: bound.clone(),
                protocols,
                options,
            }
            .open()?,
        );
    }
    Ok((sets, lines))
}

/// `upecho serve ... --worker-slot N`: one worker of a supervisor.
pub(super) fn worker(args: ServeArgs) -> Result<ExitCode, Box<dyn Error>> {
    let slot = args.worker_slot.ok_or("--worker-slot is missing")?;
    let count = args
        .worker_sockets
        .ok_or("--worker-slot is the supervisor's own: use --workers N")?;
    if !is_control_channel() {
        return Err("--worker-slot is the supervisor's own: use --workers N".into());
    }
    // Started as /proc/self/exe, the worker would be `exe` in ps and top.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"upecho".as_ptr()) };
    let (nofile, max_connections) = limits(&args);
    // SAFETY: the supervisor put this worker's end of the control channel at CONTROL_FD and its
    // sockets right after it (checked to be a control channel above; the sockets are checked by
    // their type when adopted), and nothing in this process has taken them.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let fds = (0..count)
        .map(|i| unsafe { OwnedFd::from_raw_fd(CONTROL_FD + 1 + i as i32) })
        .collect();
    let sockets = SocketSource::Inherited(fds).open()?;
    let mut config = server_config(&args, max_connections, Notifier::default());
    // The supervisor's pid is the service's: a worker never writes it.
    config.pid_file = None;
    let max = config.max_connections;
    // The signal handlers are installed here; until now the handled signals were blocked (by
    // the supervisor before exec, and in cli::run), so one sent meanwhile is delivered now.
    let server = Server::new(config, sockets.listeners, sockets.udp)?;
    unblock_handled_signals()?;
    let server = server.with_control(WorkerLink::new(Channel::from_fd(control), slot, max))?;
    debug!("serving (open-file limit {nofile}, up to {max_connections} connections)");
    Ok(super::serve::finish(server.run()?))
}

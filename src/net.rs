//! Socket set-up and process limits shared by every subcommand.
//!
//! Everything that must happen before `bind`/`listen` (address reuse, IPv6-only, backlog, buffer
//! sizes) is done here with socket2, and the result is handed over as a non-blocking mio socket.
//! Errors name the protocol, the address and the step that failed.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Largest UDP payload over IPv4: 65,535 less the 20-byte IP header and the 8-byte UDP header.
pub const MAX_DATAGRAM_V4: usize = 65_507;
/// Largest UDP payload over IPv6 (jumbograms aside): 65,535 less the 8-byte UDP header (the
/// 40-byte IPv6 header is not counted in its payload length).
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// The largest datagram that can be sent to `addr`.
pub fn max_datagram(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => MAX_DATAGRAM_V4,
        SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => MAX_DATAGRAM_V4,
        SocketAddr::V6(_) => MAX_DATAGRAM_V6,
    }
}

/// Descriptors a process keeps back from its connections: stdio, the poll, the signal pipe,
/// listeners and UDP sockets, timers, the files it reads in /proc, and some slack.
pub const FD_RESERVE: u64 = 32;

/// The transport a socket speaks, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// The system call that failed while setting a socket up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Socket,
    SetOption,
    Bind,
    Listen,
}

/// A socket that could not be set up: which protocol, which address, which step, and why.
#[derive(Debug)]
pub struct BindError {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub step: Step,
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.step {
            Step::Socket => "cannot create a socket for",
            Step::SetOption => "cannot set socket options for",
            Step::Bind => "cannot bind",
            Step::Listen => "cannot listen on",
        };
        write!(f, "{what} {} {}: {}", self.proto, self.addr, self.source)
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn new_socket(proto: Proto, addr: SocketAddr) -> Result<Socket, BindError> {
    let fail = |step| {
        move |source| BindError {
            proto,
            addr,
            step,
            source,
        }
    };
    let (ty, p) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(
        Domain::for_address(addr),
        ty.nonblocking().cloexec(),
        Some(p),
    )
    .map_err(fail(Step::Socket))?;
    if addr.is_ipv6() {
        // `[::]:8005` should mean IPv6 only, so that `0.0.0.0:8005` can be listened on beside it.
        socket.set_only_v6(true).map_err(fail(Step::SetOption))?;
    }
    Ok(socket)
}

/// What is set on a socket before it is bound: a parameter, so that workers sharing a port
/// (`reuse_port`) and tests with small backlogs use the same code as the plain server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Listen backlog (pending connections the kernel queues); clamped to what `listen` takes.
    pub backlog: u32,
    /// `SO_REUSEPORT`: several processes bind the same address and the kernel spreads new
    /// connections and datagrams over them.
    pub reuse_port: bool,
    /// Receive buffer asked for UDP sockets (the kernel clamps it to `net.core.rmem_max`).
    pub udp_recv_buffer: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            backlog: 4096,
            reuse_port: false,
            // A burst of datagrams waits in the kernel rather than being dropped.
            udp_recv_buffer: 4 << 20,
        }
    }
}

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` (so a restart does not wait out
/// TIME_WAIT), `SO_OOBINLINE`, and the given options.
pub fn bind_tcp(
    addr: SocketAddr,
    opts: &SocketOptions,
) -> Result<mio::net::TcpListener, BindError> {
    let fail = |step| {
        move |source| BindError {
            proto: Proto::Tcp,
            addr,
            step,
            source,
        }
    };
    let socket = new_socket(Proto::Tcp, addr)?;
    socket
        .set_reuse_address(true)
        .map_err(fail(Step::SetOption))?;
    if opts.reuse_port {
        socket.set_reuse_port(true).map_err(fail(Step::SetOption))?;
    }
    // Urgent data arrives in line, as an ordinary byte of the stream: the contract is that every
    // byte received comes back. Accepted sockets inherit the option.
    socket
        .set_out_of_band_inline(true)
        .map_err(fail(Step::SetOption))?;
    socket.bind(&addr.into()).map_err(fail(Step::Bind))?;
    let backlog = i32::try_from(opts.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(fail(Step::Listen))?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// A non-blocking UDP socket bound to `addr` with the given options.
pub fn bind_udp(addr: SocketAddr, opts: &SocketOptions) -> Result<mio::net::UdpSocket, BindError> {
    let fail = |step| {
        move |source| BindError {
            proto: Proto::Udp,
            addr,
            step,
            source,
        }
    };
    let socket = new_socket(Proto::Udp, addr)?;
    // Best effort: a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(opts.udp_recv_buffer);
    if opts.reuse_port {
        socket.set_reuse_port(true).map_err(fail(Step::SetOption))?;
    }
    socket.bind(&addr.into()).map_err(fail(Step::Bind))?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// Every connection costs a descriptor, so the soft limit (often 1024) would otherwise cap the
/// server far below what the process is allowed.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_names_protocol_address_and_reason() {
        let opts = SocketOptions::default();
        let a = bind_tcp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let addr = a.local_addr().unwrap();
        let e = bind_tcp(addr, &opts).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot bind tcp {addr}: ")),
            "{msg}"
        );
        assert_eq!(e.source.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn reuse_port_lets_two_sockets_share_an_address() {
        let opts = SocketOptions {
            reuse_port: true,
            ..SocketOptions::default()
        };
        let a = bind_tcp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let addr = a.local_addr().unwrap();
        assert!(bind_tcp(addr, &opts).is_ok());
        let u = bind_udp(addr, &opts).unwrap();
        assert!(bind_udp(u.local_addr().unwrap(), &opts).is_ok());
        assert!(
            bind_tcp(addr, &SocketOptions::default()).is_err(),
            "only if both ask"
        );
    }

    #[test]
    fn datagram_limits_depend_on_the_family() {
        assert_eq!(max_datagram(&"127.0.0.1:1".parse().unwrap()), 65_507);
        assert_eq!(max_datagram(&"[::1]:1".parse().unwrap()), 65_527);
        assert_eq!(
            max_datagram(&"[::ffff:127.0.0.1]:1".parse().unwrap()),
            65_507
        );
    }

    #[test]
    fn raise_nofile_limit_reports_a_usable_limit() {
        assert!(raise_nofile_limit().unwrap() >= 3);
    }
}

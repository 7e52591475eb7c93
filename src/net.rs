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

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` (so a restart does not wait out
/// TIME_WAIT), `SO_OOBINLINE`, and the given accept backlog.
pub fn bind_tcp(addr: SocketAddr, backlog: u32) -> Result<mio::net::TcpListener, BindError> {
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
    // Urgent data arrives in line, as an ordinary byte of the stream: the contract is that every
    // byte received comes back. Accepted sockets inherit the option.
    socket
        .set_out_of_band_inline(true)
        .map_err(fail(Step::SetOption))?;
    socket.bind(&addr.into()).map_err(fail(Step::Bind))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(fail(Step::Listen))?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// A non-blocking UDP socket bound to `addr`. The receive buffer is enlarged (as far as the
/// kernel allows) so that a burst of datagrams waits in the kernel rather than being dropped.
pub fn bind_udp(addr: SocketAddr) -> Result<mio::net::UdpSocket, BindError> {
    let socket = new_socket(Proto::Udp, addr)?;
    // Best effort: the kernel clamps it to net.core.rmem_max, and a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into()).map_err(|source| BindError {
        proto: Proto::Udp,
        addr,
        step: Step::Bind,
        source,
    })?;
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
        let a = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let e = bind_tcp(addr, 16).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot bind tcp {addr}: ")),
            "{msg}"
        );
        assert_eq!(e.source.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn raise_nofile_limit_reports_a_usable_limit() {
        assert!(raise_nofile_limit().unwrap() >= 3);
    }
}

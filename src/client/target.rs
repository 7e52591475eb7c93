//! The server a client talks to: the address as the user wrote it, what it resolved to, and
//! connecting to it, with a connect error that names every address tried.
//!
//! Parsing and resolving belong to [`crate::addr`] (one grammar for every subcommand); what this
//! module adds is the client's side of it: trying each resolved address in turn, as `nc` does, and
//! setting up the UDP socket the way the UDP client needs it.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::addr::{AddrError, HostPort, reason};

/// How long one TCP connection attempt may take. Without a bound, a host that silently drops SYNs
/// would keep the client waiting for the kernel's SYN retries (over two minutes on Linux).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer asked of the kernel for the UDP client: room for a full window of large replies
/// (see `udp::pipe::WINDOW_BYTES`) so that none is dropped while the client is busy printing.
const UDP_RECV_BUFFER: usize = 1 << 20;

/// A server address, resolved: what the user wrote (every message names the server that way) and
/// the socket addresses it stands for, in the resolver's order. Resolving is a separate step from
/// parsing because its failure is a run-time failure (exit 1), while a malformed address is a
/// usage error (exit 2, caught by clap before anything runs).
#[derive(Debug, Clone)]
pub struct Target {
    addr: HostPort,
    resolved: Vec<SocketAddr>,
}

impl Target {
    /// Resolves `addr` (a literal IP address without asking the resolver).
    pub fn resolve(addr: HostPort) -> Result<Target, AddrError> {
        let resolved = addr.resolve()?;
        Ok(Target { addr, resolved })
    }

    /// The address as the user wrote it.
    pub fn addr(&self) -> &HostPort {
        &self.addr
    }

    /// What it resolved to; never empty.
    pub fn resolved(&self) -> &[SocketAddr] {
        &self.resolved
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Every resolved address was tried and each one failed.
#[derive(Debug)]
pub(crate) struct ConnectError {
    addr: String,
    attempts: Vec<(SocketAddr, io::Error)>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = &self.addr;
        match self.attempts.as_slice() {
            [] => write!(f, "cannot connect to {addr}: no address to try"),
            // A literal address is its own only attempt: naming it twice says nothing.
            [(a, e)] if a.to_string() == *addr => {
                write!(f, "cannot connect to {addr}: {}", reason(e))
            }
            [(a, e)] => write!(f, "cannot connect to {addr} ({a}): {}", reason(e)),
            many => {
                write!(f, "cannot connect to {addr}: ")?;
                for (i, (a, e)) in many.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{a}: {}", reason(e))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connects to the first of `target`'s addresses that accepts, trying each in the resolver's order
/// (as `nc` does, so `localhost` works whether the server listens on `::1` or `127.0.0.1`).
pub(crate) fn connect_tcp(target: &Target) -> Result<TcpStream, ConnectError> {
    let mut attempts = Vec::new();
    for &a in target.resolved() {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                log::debug!("connected to {a}");
                return Ok(s);
            }
            Err(e) => {
                log::debug!("connect to {a}: {e}");
                attempts.push((a, e));
            }
        }
    }
    Err(ConnectError {
        addr: target.to_string(),
        attempts,
    })
}

/// A UDP socket bound to an ephemeral port and connected to the first usable address of `target`;
/// returns that address too, since the largest datagram depends on its family.
///
/// Connecting a UDP socket sends nothing; it makes the kernel drop datagrams from any other source
/// (so a stray packet is never taken for a reply) and report an ICMP "port unreachable" from the
/// server as `ConnectionRefused` on the next call.
pub(crate) fn connect_udp(target: &Target) -> Result<(UdpSocket, SocketAddr), ConnectError> {
    let mut attempts = Vec::new();
    for &a in target.resolved() {
        match udp_socket_to(a) {
            Ok(s) => return Ok((s, a)),
            Err(e) => {
                log::debug!("udp connect to {a}: {e}");
                attempts.push((a, e));
            }
        }
    }
    Err(ConnectError {
        addr: target.to_string(),
        attempts,
    })
}

fn udp_socket_to(a: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(a),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    // Best effort: the kernel clamps it to net.core.rmem_max, and a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    let any: IpAddr = match a {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    socket.bind(&SocketAddr::new(any, 0).into())?;
    socket.connect(&a.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_target_resolves_to_itself_and_is_named_as_written() {
        let target = Target::resolve(HostPort::parse_peer("[::1]:9").unwrap()).unwrap();
        assert_eq!(
            target.resolved(),
            ["[::1]:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(target.to_string(), "[::1]:9");
    }

    #[test]
    fn connect_error_names_every_attempt() {
        let refused = || io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let one = ConnectError {
            addr: "127.0.0.1:9".into(),
            attempts: vec![("127.0.0.1:9".parse().unwrap(), refused())],
        };
        assert_eq!(
            one.to_string(),
            "cannot connect to 127.0.0.1:9: Connection refused"
        );
        let named = ConnectError {
            addr: "localhost:9".into(),
            attempts: vec![("127.0.0.1:9".parse().unwrap(), refused())],
        };
        assert_eq!(
            named.to_string(),
            "cannot connect to localhost:9 (127.0.0.1:9): Connection refused"
        );
        let two = ConnectError {
            addr: "localhost:9".into(),
            attempts: vec![
                ("[::1]:9".parse().unwrap(), refused()),
                ("127.0.0.1:9".parse().unwrap(), refused()),
            ],
        };
        assert_eq!(
            two.to_string(),
            "cannot connect to localhost:9: [::1]:9: Connection refused; \
             127.0.0.1:9: Connection refused"
        );
    }
}

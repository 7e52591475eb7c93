//! The server a client talks to: parsing `HOST:PORT`, resolving it, connecting, and turning every
//! failure on the way into one line that names the address and the reason.
//!
//! Parsing is done by hand rather than left to `ToSocketAddrs` so that a malformed address is
//! reported as such ("expected HOST:PORT") instead of as a confusing resolver error, and so that a
//! literal IP address never touches the resolver at all.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// How long one TCP connection attempt may take. Without a bound, a host that silently drops SYNs
/// would keep the client waiting for the kernel's SYN retries (over two minutes on Linux).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer asked of the kernel for the UDP client: room for a full window of large replies
/// (see `udp::WINDOW_BYTES`) so that none is dropped while the client is busy printing.
const UDP_RECV_BUFFER: usize = 1 << 20;

/// Why a client could not reach its server.
#[derive(Debug)]
pub enum TargetError {
    /// The address is not of the form `HOST:PORT`.
    BadAddress { addr: String, reason: String },
    /// The host name did not resolve to any address.
    Unresolvable { addr: String, source: io::Error },
    /// Every resolved address was tried and each one failed.
    Connect {
        addr: String,
        attempts: Vec<(SocketAddr, io::Error)>,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::BadAddress { addr, reason } => {
                write!(f, "bad address {addr:?}: {reason}")
            }
            TargetError::Unresolvable { addr, source } => {
                write!(f, "cannot resolve {addr}: {}", reason(source))
            }
            TargetError::Connect { addr, attempts } => match attempts.as_slice() {
                [] => write!(f, "cannot connect to {addr}: no address to try"),
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
            },
        }
    }
}

impl std::error::Error for TargetError {}

/// The text of an I/O error without Rust's " (os error N)" suffix, which means nothing to a user.
pub fn reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// A parsed `HOST:PORT`, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as written, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`.
    pub fn parse(addr: &str) -> Result<Target, TargetError> {
        let bad = |reason: &str| TargetError::BadAddress {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs a closing ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("expected [IPV6]:PORT, e.g. [::1]:8005"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad("the part in brackets is not an IPv6 address"));
            }
            (host, port)
        } else {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT, e.g. 127.0.0.1:8005"))?;
            if host.contains(':') {
                return Err(bad("write an IPv6 address in brackets, e.g. [::1]:8005"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0 cannot be connected to"));
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    /// Every address the target stands for. A literal IP address is used as is, so only names
    /// reach the resolver.
    pub fn resolve(&self, addr: &str) -> Result<Vec<SocketAddr>, TargetError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let unresolvable = |source| TargetError::Unresolvable {
            addr: addr.to_string(),
            source,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(unresolvable)?
            .collect();
        if addrs.is_empty() {
            return Err(unresolvable(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no addresses",
            )));
        }
        Ok(addrs)
    }
}

/// Parses and resolves `addr`.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, TargetError> {
    Target::parse(addr)?.resolve(addr)
}

/// Connects to the first of `addr`'s addresses that accepts, trying each in the resolver's order
/// (as `nc` does, so `localhost` works whether the server listens on `::1` or `127.0.0.1`).
pub fn connect_tcp(addr: &str) -> Result<TcpStream, TargetError> {
    let mut attempts = Vec::new();
    for a in resolve(addr)? {
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
    Err(TargetError::Connect {
        addr: addr.to_string(),
        attempts,
    })
}

/// A UDP socket bound to an ephemeral port and connected to the first usable address of `addr`.
///
/// Connecting a UDP socket sends nothing; it makes the kernel drop datagrams from any other source
/// (so a stray packet is never taken for a reply) and report an ICMP "port unreachable" from the
/// server as `ConnectionRefused` on the next call.
pub fn connect_udp(addr: &str) -> Result<UdpSocket, TargetError> {
    let mut attempts = Vec::new();
    for a in resolve(addr)? {
        match udp_socket_to(a) {
            Ok(s) => return Ok(s),
            Err(e) => {
                log::debug!("udp connect to {a}: {e}");
                attempts.push((a, e));
            }
        }
    }
    Err(TargetError::Connect {
        addr: addr.to_string(),
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

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_ipv4_names_and_bracketed_ipv6() {
        assert_eq!(
            Target::parse("127.0.0.1:8005").unwrap(),
            target("127.0.0.1", 8005)
        );
        assert_eq!(
            Target::parse("localhost:1").unwrap(),
            target("localhost", 1)
        );
        assert_eq!(Target::parse("[::1]:65535").unwrap(), target("::1", 65535));
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason() {
        for (addr, why) in [
            ("127.0.0.1", "expected HOST:PORT"),
            ("", "expected HOST:PORT"),
            (":8005", "host is missing"),
            ("localhost:", "port must be a number"),
            ("localhost:http", "port must be a number"),
            ("localhost:65536", "port must be a number"),
            ("localhost:0", "port 0"),
            ("::1:8005", "IPv6 address in brackets"),
            ("[::1:8005", "closing ']'"),
            ("[::1]8005", "expected [IPV6]:PORT"),
            ("[localhost]:8005", "not an IPv6 address"),
        ] {
            let e = Target::parse(addr).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, TargetError::BadAddress { .. }),
                "{addr:?}: {msg}"
            );
            assert!(msg.contains(why), "{addr:?}: {msg:?} lacks {why:?}");
            assert!(
                msg.contains(&format!("{addr:?}")),
                "{msg:?} names no address"
            );
        }
    }

    #[test]
    fn literal_addresses_resolve_without_the_resolver() {
        assert_eq!(
            resolve("[::1]:9").unwrap(),
            vec!["[::1]:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve("127.0.0.1:9").unwrap(),
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn reason_drops_the_os_error_number() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(reason(&e), "Connection refused");
        let custom = io::Error::other("plain");
        assert_eq!(reason(&custom), "plain");
    }

    #[test]
    fn connect_error_names_every_attempt() {
        let refused = || io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let one = TargetError::Connect {
            addr: "127.0.0.1:9".into(),
            attempts: vec![("127.0.0.1:9".parse().unwrap(), refused())],
        };
        assert_eq!(
            one.to_string(),
            "cannot connect to 127.0.0.1:9: Connection refused"
        );
        let two = TargetError::Connect {
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

//! Where the reactor's sockets come from: bound here from addresses, or inherited as descriptors
//! (from systemd socket activation, or from a supervising parent). Either way the result is the
//! same [`Sockets`], the `listening` lines are printed from what it holds, and the reactor never
//! knows which it was.
//!
//! Binding decides one thing of its own: with port 0, the UDP socket of an address takes the port
//! the kernel gave its TCP listener, so one address serves both protocols (another port is tried
//! if that one is taken for UDP).

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use mio::net::{TcpListener, UdpSocket};
use socket2::{Socket, Type};

use super::token::{MAX_LISTENERS, MAX_UDP_SOCKETS};
use crate::net::{self, BindError, Proto, SocketOptions, Step};

/// Which protocols to serve on each bound address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub tcp: bool,
    pub udp: bool,
}

/// Where the sockets come from.
#[derive(Debug)]
pub enum SocketSource {
    /// Bind each address, for the protocols asked, with these options.
    Bind {
        addrs: Vec<SocketAddr>,
        protocols: Protocols,
        options: SocketOptions,
    },
    /// Use descriptors that are already bound (and, for TCP, listening): each is taken for a
    /// listener or a UDP socket by its type.
    Inherited(Vec<OwnedFd>),
}

/// The sockets a reactor serves.
#[derive(Debug, Default)]
pub struct Sockets {
    pub listeners: Vec<TcpListener>,
    pub udp: Vec<UdpSocket>,
}

/// Why the sockets could not be had.
#[derive(Debug)]
pub enum SourceError {
    Bind(BindError),
    /// An inherited descriptor that is not a listening TCP socket or a UDP socket.
    Inherited {
        index: usize,
        reason: String,
    },
    /// More sockets than one reactor takes.
    TooMany {
        what: &'static str,
        max: usize,
    },
    /// Nothing to serve.
    Empty,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Bind(e) => e.fmt(f),
            SourceError::Inherited { index, reason } => {
                write!(f, "inherited socket {index}: {reason}")
            }
            SourceError::TooMany { what, max } => write!(f, "at most {max} {what}"),
            SourceError::Empty => f.write_str("no socket to serve"),
        }
    }
}

impl std::error::Error for SourceError {}

impl From<BindError> for SourceError {
    fn from(e: BindError) -> Self {
        SourceError::Bind(e)
    }
}

impl SocketSource {
    /// Binds or adopts every socket. Nothing is announced: a failure leaves nothing half done.
    pub fn open(self) -> Result<Sockets, SourceError> {
        let sockets = match self {
            SocketSource::Bind {
                addrs,
                protocols,
                options,
            } => {
                let mut sockets = Sockets::default();
                for addr in addrs {
                    let (tcp, udp) = bind_pair(addr, protocols, &options)?;
                    sockets.listeners.extend(tcp);
                    sockets.udp.extend(udp);
                }
                sockets
            }
            SocketSource::Inherited(fds) => adopt(fds)?,
        };
        if sockets.listeners.len() > MAX_LISTENERS {
            return Err(SourceError::TooMany {
                what: "TCP listeners",
                max: MAX_LISTENERS,
            });
        }
        if sockets.udp.len() > MAX_UDP_SOCKETS {
            return Err(SourceError::TooMany {
                what: "UDP sockets",
                max: MAX_UDP_SOCKETS,
            });
        }
        if sockets.listeners.is_empty() && sockets.udp.is_empty() {
            return Err(SourceError::Empty);
        }
        Ok(sockets)
    }
}

impl Sockets {
    /// The `listening tcp ADDR` / `listening udp ADDR` lines, one per socket, TCP first: what
    /// scripts and tests read to learn the real ports.
    pub fn listening_lines(&self) -> io::Result<String> {
        let mut lines = String::new();
        for l in &self.listeners {
            lines += &format!("listening tcp {}\n", l.local_addr()?);
        }
        for s in &self.udp {
            lines += &format!("listening udp {}\n", s.local_addr()?);
        }
        Ok(lines)
    }
}

/// Binds TCP and/or UDP on `addr` (see the module doc for port 0).
fn bind_pair(
    addr: SocketAddr,
    protocols: Protocols,
    options: &SocketOptions,
) -> Result<(Option<TcpListener>, Option<UdpSocket>), BindError> {
    if !(protocols.tcp && protocols.udp) {
        return Ok((
            protocols
                .tcp
                .then(|| net::bind_tcp(addr, options))
                .transpose()?,
            protocols
                .udp
                .then(|| net::bind_udp(addr, options))
                .transpose()?,
        ));
    }
    let mut attempts = 0;
    loop {
        let listener = net::bind_tcp(addr, options)?;
        let mut udp_addr = addr;
        if addr.port() == 0 {
            let bound = listener.local_addr().map_err(|source| BindError {
                proto: Proto::Tcp,
                addr,
                step: Step::Bind,
                source,
            })?;
            udp_addr.set_port(bound.port());
        }
        match net::bind_udp(udp_addr, options) {
            Ok(socket) => return Ok((Some(listener), Some(socket))),
            Err(e)
                if addr.port() == 0 && e.source.kind() == ErrorKind::AddrInUse && attempts < 16 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Takes inherited descriptors for what they are.
fn adopt(fds: Vec<OwnedFd>) -> Result<Sockets, SourceError> {
    let mut sockets = Sockets::default();
    for (index, fd) in fds.into_iter().enumerate() {
        let bad = |reason: String| SourceError::Inherited { index, reason };
        let socket = Socket::from(fd);
        let ty = socket
            .r#type()
            .map_err(|e| bad(format!("not a socket ({e})")))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| bad(format!("cannot make it non-blocking ({e})")))?;
        if ty == Type::STREAM {
            if !socket.is_listener().unwrap_or(false) {
                return Err(bad("a stream socket that is not listening".into()));
            }
            // See net::bind_tcp: the contract covers urgent data too.
            let _ = socket.set_out_of_band_inline(true);
            sockets
                .listeners
                .push(TcpListener::from_std(std::net::TcpListener::from(socket)));
        } else if ty == Type::DGRAM {
            sockets
                .udp
                .push(UdpSocket::from_std(std::net::UdpSocket::from(socket)));
        } else {
            return Err(bad("neither a TCP listener nor a UDP socket".into()));
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(addrs: &[&str], tcp: bool, udp: bool) -> Result<Sockets, SourceError> {
        SocketSource::Bind {
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            protocols: Protocols { tcp, udp },
            options: SocketOptions::default(),
        }
        .open()
    }

    #[test]
    fn port_zero_gives_tcp_and_udp_the_same_port() {
        let s = bind(&["127.0.0.1:0"], true, true).unwrap();
        let t = s.listeners[0].local_addr().unwrap();
        let u = s.udp[0].local_addr().unwrap();
        assert_eq!(t, u);
        assert_ne!(t.port(), 0);
        let lines = s.listening_lines().unwrap();
        assert_eq!(lines, format!("listening tcp {t}\nlistening udp {u}\n"));
    }

    #[test]
    fn one_protocol_binds_one_socket_per_address() {
        let s = bind(&["127.0.0.1:0", "[::1]:0"], false, true).unwrap();
        assert_eq!((s.listeners.len(), s.udp.len()), (0, 2));
    }

    #[test]
    fn inherited_descriptors_are_taken_for_what_they_are() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (la, ua) = (l.local_addr().unwrap(), u.local_addr().unwrap());
        let s = SocketSource::Inherited(vec![OwnedFd::from(u), OwnedFd::from(l)])
            .open()
            .unwrap();
        assert_eq!(s.listeners[0].local_addr().unwrap(), la);
        assert_eq!(s.udp[0].local_addr().unwrap(), ua);
    }

    #[test]
    fn an_inherited_stream_that_is_not_listening_is_refused_by_index() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = SocketSource::Inherited(vec![OwnedFd::from(u), OwnedFd::from(c)])
            .open()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "inherited socket 1: a stream socket that is not listening"
        );
    }

    #[test]
    fn nothing_to_serve_is_an_error() {
        assert!(matches!(
            SocketSource::Inherited(vec![]).open(),
            Err(SourceError::Empty)
        ));
    }
}

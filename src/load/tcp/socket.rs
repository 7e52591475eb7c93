//! The sockets of the TCP flow: opening one (bound to a source address), the PROXY header it
//! may begin with, and churn's reset-and-reconnect of one socket.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::load::config::ProxyVersion;

/// Writes the PROXY header naming the socket's own addresses, whole: a socket just connected
/// has an empty send buffer far larger than any header, so a short or blocked write means
/// something is wrong and fails the connection rather than keeping a partial header around.
pub(super) fn send_proxy_header(s: &mut TcpStream, v: ProxyVersion) -> io::Result<()> {
    let header = crate::load::proxy::header(v, s.local_addr()?, s.peer_addr()?)?;
    match crate::io_outcome::retrying(|| s.write(&header)) {
        Ok(n) if n == header.len() => Ok(()),
        Ok(n) => Err(io::Error::other(format!(
            "the socket took {n} of its {} bytes",
            header.len()
        ))),
        Err(e) if crate::io_outcome::is_would_block(&e) => Err(io::Error::other(
            "a new connection would not take it at once",
        )),
        Err(e) => Err(e),
    }
}

/// Resets a connected socket and leaves it unconnected, to connect again: `connect` with an
/// `AF_UNSPEC` address (connect(2)), which for TCP is the kernel's `tcp_disconnect`, the path a
/// zero-linger close takes too.
pub(super) fn dissolve(s: &TcpStream) -> io::Result<()> {
    // SAFETY: an all-zero `sockaddr` is a valid one of family AF_UNSPEC (0); connect only reads
    // it, for the given length; the descriptor is ours and open.
    let r = unsafe {
        let unspec: libc::sockaddr = std::mem::zeroed();
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(s),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects a socket [`dissolve`] left unconnected to `addr` again (non-blocking); on failure the
/// socket is dropped, which closes it.
pub(super) fn redial(s: TcpStream, addr: SocketAddr) -> io::Result<TcpStream> {
    match socket2::SockRef::from(&s).connect(&addr.into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

/// A non-blocking socket connecting to `addr`, bound first to `source` if given.
pub(super) fn open_stream(
    addr: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // Ping-pong latency must not wait for Nagle's timer. (Churn sends one message per
    // connection, which Nagle never delays, so it saves the system call.)
    if nodelay {
        sock.set_tcp_nodelay(true)?;
    }
    if let Some(ip) = source {
        if ip.is_ipv4() {
            // Let connect() pick the port for the full 4-tuple, so each source address has the
            // whole ephemeral range per server address instead of sharing it across servers.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `one` for the given length; the fd is ours.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

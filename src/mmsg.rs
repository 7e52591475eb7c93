//! Batches of datagrams for `recvmmsg`/`sendmmsg`, the one place that builds their header
//! arrays, so that the server, the load generator and the bench's floor server move datagrams in
//! batches without writing `unsafe` themselves.
//!
//! [`Datagrams`] owns `N` slots of one size each, their lengths and (optionally) their peers'
//! addresses. The `iovec`/`mmsghdr` arrays that point into them are rebuilt on the stack for
//! every call: a few hundred bytes of stores, no allocation, and nothing self-referential kept
//! in the struct (which therefore stays `Send` and movable). `nix` has the same calls, with
//! reusable `MultiHeaders`, but it would be a new dependency for two calls, its headers keep raw
//! pointers between calls, and its addresses are one more type to convert from
//! (`SockaddrStorage`); what the callers need is this small.
//!
//! Each call is one system call (retried on `EINTR`, see [`crate::io_outcome::retrying`]): one
//! `recvmmsg` per [`Datagrams::recv`], one `sendmmsg` per [`Datagrams::send`].

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::io_outcome::retrying;

/// `N` datagram slots of `each` bytes, filled by [`recv`](Datagrams::recv) and sent from by
/// [`send`](Datagrams::send).
pub struct Datagrams<const N: usize> {
    bufs: Box<[u8]>,
    each: usize,
    lens: [usize; N],
    /// Each slot's peer: the source it was received from, the destination it is sent to. Empty
    /// for a connected socket, which needs no addresses.
    names: Box<[libc::sockaddr_storage]>,
    name_lens: [libc::socklen_t; N],
}

impl<const N: usize> Datagrams<N> {
    /// Slots for a connected socket: no addresses are received or sent. The buffers are reserved
    /// at full size, but only the pages datagrams land in become resident.
    pub fn connected(each: usize) -> Datagrams<N> {
        Datagrams {
            bufs: vec![0u8; N * each].into_boxed_slice(),
            each,
            lens: [0; N],
            names: Box::new([]),
            name_lens: [0; N],
        }
    }

    /// Slots that remember each datagram's source, to send the reply back to it.
    pub fn with_sources(each: usize) -> Datagrams<N> {
        Datagrams {
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (empty) value.
            names: (0..N).map(|_| unsafe { mem::zeroed() }).collect(),
            ..Datagrams::connected(each)
        }
    }

    /// The size of each slot: a datagram this long or longer was truncated to it.
    pub fn each(&self) -> usize {
        self.each
    }

    /// Datagram `i` of the last batch received (as long as its slot, if it was truncated).
    pub fn get(&self, i: usize) -> &[u8] {
        let at = i * self.each;
        &self.bufs[at..at + self.lens[i].min(self.each)]
    }

    /// Datagram `i`, to transform in place into its reply (of the same length).
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let at = i * self.each;
        &mut self.bufs[at..at + self.lens[i].min(self.each)]
    }

    /// Where datagram `i` came from, if the slots keep sources and it was IPv4 or IPv6.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        let name = self.names.get(i).filter(|_| self.name_lens[i] > 0)?;
        to_socket_addr(name)
    }

    /// One `recvmmsg`: fills slots `0..n` and returns `n` (at least 1; an error, `WouldBlock`
    /// included, when nothing has arrived).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        // SAFETY: all-zero iovec/mmsghdr are valid (no buffer, no name, no control data).
        let mut iovs: [libc::iovec; N] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; N] = unsafe { mem::zeroed() };
        let named = !self.names.is_empty();
        for (i, ((iov, h), buf)) in iovs
            .iter_mut()
            .zip(hdrs.iter_mut())
            .zip(self.bufs.chunks_exact_mut(self.each))
            .enumerate()
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            if named {
                h.msg_hdr.msg_name = (&raw mut self.names[i]).cast();
                h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            }
        }
        let n = retrying(|| {
            // SAFETY: N headers are initialised; each points at its own iovec and name, and each
            // iovec at its own slot of `bufs`, with its length; all outlive the call, and nothing
            // else refers to them during it.
            let n = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    N as libc::c_uint,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })?;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.name_lens[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// One `sendmmsg` of the slots in `which` (at most `N`), in that order, each as long as it
    /// was received and, if the slots keep sources, to its source; returns how many the kernel
    /// took (an error only if it took none: the first one failed).
    pub fn send(&mut self, fd: BorrowedFd<'_>, which: &[usize]) -> io::Result<usize> {
        // SAFETY: as in `recv`.
        let mut iovs: [libc::iovec; N] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; N] = unsafe { mem::zeroed() };
        let which = &which[..which.len().min(N)];
        for (j, &i) in which.iter().enumerate() {
            let buf = &mut self.bufs[i * self.each..][..self.lens[i].min(self.each)];
            iovs[j].iov_base = buf.as_mut_ptr().cast();
            iovs[j].iov_len = buf.len();
            let h = &mut hdrs[j].msg_hdr;
            h.msg_iov = &raw mut iovs[j];
            h.msg_iovlen = 1;
            if let Some(name) = self.names.get_mut(i) {
                h.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = self.name_lens[i];
            }
        }
        retrying(|| {
            // SAFETY: the first `which.len()` headers are initialised as in `recv`, pointing
            // into `self`, which outlives the call; the kernel only reads through them.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    which.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }
}

/// The address the kernel wrote into `ss`, if it is IPv4 or IPv6.
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and aligned for.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn pair(addr: &str) -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind(addr).expect("bind");
        let tx = UdpSocket::bind(addr).expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        (rx, tx)
    }

    #[test]
    fn a_connected_batch_returns_what_is_queued_in_order_and_shows_a_datagram_too_long() {
        let (rx, tx) = pair("127.0.0.1:0");
        tx.connect(rx.local_addr().expect("addr")).expect("connect");
        rx.connect(tx.local_addr().expect("addr")).expect("connect");
        let mut batch = Datagrams::<16>::connected(10);
        for d in [&b"one"[..], b"", b"three", b"0123456789abc"] {
            tx.send(d).expect("send");
        }
        // Loopback delivers within the send; all four are queued.
        assert_eq!(batch.recv(rx.as_fd()).expect("recvmmsg"), 4);
        assert_eq!(batch.get(0), b"one");
        assert_eq!(batch.get(1), b"");
        assert_eq!(batch.get(2), b"three");
        assert_eq!(
            batch.get(3),
            b"0123456789",
            "cut to the slot, which it fills"
        );
        assert_eq!(batch.get(3).len(), batch.each());
        assert_eq!(batch.source(0), None, "a connected batch keeps no sources");
        let e = batch.recv(rx.as_fd()).expect_err("nothing left");
        assert!(crate::io_outcome::is_would_block(&e), "{e}");
    }

    #[test]
    fn replies_go_back_to_each_source_in_the_order_asked() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let (server, a) = pair(addr);
            let b = UdpSocket::bind(addr).expect("bind");
            let to = server.local_addr().expect("addr");
            a.send_to(b"from a", to).expect("send");
            b.send_to(b"from b", to).expect("send");
            a.send_to(b"again a", to).expect("send");
            let mut batch = Datagrams::<4>::with_sources(64);
            assert_eq!(batch.recv(server.as_fd()).expect("recvmmsg"), 3);
            assert_eq!(batch.source(0), Some(a.local_addr().expect("addr")));
            assert_eq!(batch.source(1), Some(b.local_addr().expect("addr")));
            batch.get_mut(1).make_ascii_uppercase();
            // Slot 0 is left out: only 2 and 1 are answered, in that order.
            assert_eq!(batch.send(server.as_fd(), &[2, 1]).expect("sendmmsg"), 2);
            let mut buf = [0u8; 64];
            let n = a.recv(&mut buf).expect("recv a");
            assert_eq!(&buf[..n], b"again a");
            let n = b.recv(&mut buf).expect("recv b");
            assert_eq!(&buf[..n], b"FROM B");
            a.set_nonblocking(true).expect("nonblocking");
            assert!(a.recv(&mut buf).is_err(), "slot 0 was not sent");
        }
    }
}

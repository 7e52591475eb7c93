//! The floor baseline: a minimal raw-epoll server written the way the fastest C echo servers are,
//! through `libc` only (no mio, no runtime), so that upecho is compared with what the kernel
//! allows and not only with another abstraction.
//!
//! - One thread, one level-triggered epoll set, `epoll_wait` for up to 1024 events.
//! - TCP: `accept4` (non-blocking, `TCP_NODELAY`) until `EAGAIN`; per readable event one `read`
//!   into the one 32 KiB buffer, upper-case in place, `write` until done. What the socket does not
//!   take is kept in that connection's pending buffer, and the connection is switched to
//!   `EPOLLOUT` (not read) until it has drained: the usual C backpressure. `read` returning 0
//!   closes (everything read has already been written, so the client gets all it is owed).
//! - UDP: per readable event one `recvmmsg` of up to 16 datagrams into 65,536-byte slots (every
//!   datagram comes back whole), upper-case, one `sendmmsg` of the replies.
//! - Per connection: an empty `Vec` (24 bytes) in a table indexed by descriptor.
//!
//! It is this bench binary re-executed as `e2e epoll-server ADDR`, and prints the same
//! `listening` lines as upecho.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{BorrowedFd, IntoRawFd};

use upecho::mmsg::Datagrams;

const BUF: usize = 32 * 1024;
const UDP_BATCH: usize = 16;
const UDP_SLOT: usize = 65536;

fn die(what: &str) -> ! {
    eprintln!("epoll-server: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

pub fn serve(listen: SocketAddr) {
    // SAFETY: plain system calls on descriptors this function owns, with buffers it owns and
    // sizes that match them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        let tcp = TcpListener::bind(listen).unwrap_or_else(|e| {
            eprintln!("epoll-server: bind tcp {listen}: {e}");
            std::process::exit(1)
        });
        let addr = tcp.local_addr().expect("local addr");
        let udp = UdpSocket::bind(addr).unwrap_or_else(|e| {
            eprintln!("epoll-server: bind udp {addr}: {e}");
            std::process::exit(1)
        });
        tcp.set_nonblocking(true).expect("non-blocking");
        udp.set_nonblocking(true).expect("non-blocking");
        // std's listen backlog is 128; the others use 4096 (a churn burst must not be refused).
        let lfd = tcp.into_raw_fd();
        libc::listen(lfd, 4096);
        let ufd = udp.into_raw_fd();
        println!("listening tcp {addr}");
        println!("listening udp {addr}");

        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if ep < 0 {
            die("epoll_create1");
        }
        let ctl = |op: i32, fd: i32, events: u32| {
            let mut ev = libc::epoll_event {
                events,
                u64: fd as u64,
            };
            libc::epoll_ctl(ep, op, fd, &mut ev)
        };
        if ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32) != 0
            || ctl(libc::EPOLL_CTL_ADD, ufd, libc::EPOLLIN as u32) != 0
        {
            die("epoll_ctl");
        }

        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; BUF];
        // Output a connection owes, indexed by descriptor; empty (no heap) while idle.
        let mut pending: Vec<Vec<u8>> = Vec::new();

        let mut dgrams = Datagrams::<UDP_BATCH>::with_sources(UDP_SLOT);
        let every: [usize; UDP_BATCH] = std::array::from_fn(|i| i);
        // The descriptor stays open for the life of the process.
        let udp_fd = BorrowedFd::borrow_raw(ufd);

        let close = |fd: i32, pending: &mut Vec<Vec<u8>>| {
            pending[fd as usize] = Vec::new();
            libc::close(fd);
        };

        loop {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1);
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                die("epoll_wait");
            }
            for ev in &events[..n as usize] {
                let fd = ev.u64 as i32;
                if fd == lfd {
                    for _ in 0..256 {
                        let c = libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        );
                        if c < 0 {
                            break;
                        }
                        let one: libc::c_int = 1;
                        libc::setsockopt(
                            c,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            (&one as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>() as u32,
                        );
                        if pending.len() <= c as usize {
                            pending.resize_with(c as usize + 1, Vec::new);
                        }
                        if ctl(libc::EPOLL_CTL_ADD, c, libc::EPOLLIN as u32) != 0 {
                            libc::close(c);
                        }
                    }
                } else if fd == ufd {
                    let Ok(got) = dgrams.recv(udp_fd) else {
                        continue;
                    };
                    for i in 0..got {
                        dgrams.get_mut(i).make_ascii_uppercase();
                    }
                    let _ = dgrams.send(udp_fd, &every[..got]);
                } else if !pending[fd as usize].is_empty() {
                    // Registered for EPOLLOUT only: owed output goes first.
                    let p = &mut pending[fd as usize];
                    let w = libc::write(fd, p.as_ptr().cast(), p.len());
                    if w < 0 {
                        if *libc::__errno_location() != libc::EAGAIN {
                            close(fd, &mut pending);
                        }
                        continue;
                    }
                    p.drain(..w as usize);
                    if p.is_empty() {
                        *p = Vec::new();
                        ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32);
                    }
                } else {
                    let r = libc::read(fd, buf.as_mut_ptr().cast(), BUF);
                    if r <= 0 {
                        if r == 0 || *libc::__errno_location() != libc::EAGAIN {
                            close(fd, &mut pending);
                        }
                        continue;
                    }
                    let r = r as usize;
                    buf[..r].make_ascii_uppercase();
                    let mut done = 0;
                    while done < r {
                        let w = libc::write(fd, buf.as_ptr().add(done).cast(), r - done);
                        if w < 0 {
                            break;
                        }
                        done += w as usize;
                    }
                    if done < r {
                        if *libc::__errno_location() != libc::EAGAIN {
                            close(fd, &mut pending);
                            continue;
                        }
                        pending[fd as usize].extend_from_slice(&buf[done..r]);
                        ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32);
                    }
                }
            }
        }
    }
}

//! Which worker a new TCP connection goes to (`--workers`): a classic BPF program attached to
//! the reuse-port group of each listening address (`SO_ATTACH_REUSEPORT_CBPF`), so the kernel
//! hands each new connection to a worker that is alive and has room, instead of hashing it
//! blindly onto one that is full or restarting.
//!
//! The program picks uniformly at random among the open slots:
//!
//! ```text
//!   A = random            ld  [SKF_AD_OFF + SKF_AD_RANDOM]
//!   A = A % k             (k open slots)
//!   A == 0 ? return s0 : A == 1 ? return s1 : ... : return s(k-1)
//! ```
//!
//! The value returned is an index into the group's sockets, which are in the order they were
//! bound: the supervisor binds slot 0's listener first, then slot 1's, and never closes one
//! while it runs, so slot `i` is index `i`. With no slot open the program is detached, and the
//! kernel's hash chooses (a full worker then hands the connection on, or refuses it if every
//! worker is full). Attaching needs no privilege; a kernel that refuses it leaves the hash, which
//! still works, only blind to load.

use std::io;
use std::os::fd::RawFd;

// Not in the libc crate for Linux; the generic values (x86, arm, riscv, ...).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_MOD_K: u16 = 0x94;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program that spreads connections at random over `open` (group indices), or `None` for
/// no program at all.
pub(crate) fn program(open: &[u32]) -> Option<Vec<libc::sock_filter>> {
    match open {
        [] => None,
        [only] => Some(vec![insn(BPF_RET_K, 0, 0, *only)]),
        _ => {
            let mut p = vec![
                insn(
                    BPF_LD_W_ABS,
                    0,
                    0,
                    (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
                ),
                insn(BPF_ALU_MOD_K, 0, 0, open.len() as u32),
            ];
            let (last, rest) = open.split_last()?;
            for (i, &slot) in rest.iter().enumerate() {
                // Equal: fall through to the return; else skip it.
                p.push(insn(BPF_JMP_JEQ_K, 0, 1, i as u32));
                p.push(insn(BPF_RET_K, 0, 0, slot));
            }
            p.push(insn(BPF_RET_K, 0, 0, *last));
            Some(p)
        }
    }
}

/// Attaches the program for `open` to the reuse-port group `fd` belongs to (replacing the one
/// before), or detaches it when no slot is open.
pub(crate) fn steer(fd: RawFd, open: &[u32]) -> io::Result<()> {
    let r = match program(open) {
        Some(mut prog) => {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_mut_ptr(),
            };
            // SAFETY: the program outlives the call; the kernel copies it.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_ATTACH_REUSEPORT_CBPF,
                    (&raw const fprog).cast(),
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            }
        }
        None => {
            let zero: libc::c_int = 0;
            // SAFETY: an int option value.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_DETACH_REUSEPORT_BPF,
                    (&raw const zero).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            // Nothing attached: nothing to detach.
            if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            r
        }
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{SocketOptions, bind_tcp};
    use std::collections::HashMap;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_program_returns_only_open_slots() {
        assert!(program(&[]).is_none());
        let one = program(&[3]).unwrap();
        assert_eq!((one.len(), one[0].code, one[0].k), (1, BPF_RET_K, 3));
        let p = program(&[0, 2, 5]).unwrap();
        let rets: Vec<u32> = p
            .iter()
            .filter(|i| i.code == BPF_RET_K)
            .map(|i| i.k)
            .collect();
        assert_eq!(rets, vec![0, 2, 5]);
        assert_eq!(p[1].k, 3, "modulo the number of open slots");
    }

    /// The kernel takes the program and honours it: with slot 1 of three steered out, it gets
    /// nothing; the two others share the connections.
    #[test]
    fn the_kernel_steers_new_connections_to_the_open_slots_only() {
        let opts = SocketOptions {
            reuse_port: true,
            ..SocketOptions::default()
        };
        let first = bind_tcp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let addr = first.local_addr().unwrap();
        let group = [
            first,
            bind_tcp(addr, &opts).unwrap(),
            bind_tcp(addr, &opts).unwrap(),
        ];
        steer(group[0].as_raw_fd(), &[0, 2]).unwrap();
        let clients: Vec<_> = (0..60)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut got = HashMap::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while got.values().sum::<usize>() < clients.len() {
            assert!(std::time::Instant::now() < deadline, "accepted {got:?}");
            for (i, l) in group.iter().enumerate() {
                while l.accept().is_ok() {
                    *got.entry(i).or_insert(0) += 1;
                }
            }
        }
        assert_eq!(got.get(&1), None, "{got:?}");
        assert!(got[&0] > 0 && got[&2] > 0, "{got:?}");
        // Detached: the kernel's hash again, which reaches slot 1 too (60 tries).
        steer(group[0].as_raw_fd(), &[]).unwrap();
        steer(group[0].as_raw_fd(), &[]).unwrap();
    }
}

//! A connection moving from one process to another (a reload's hand-over): the state it
//! carries, versioned, and the bytes it is owed, in a memfd beside the socket.
//!
//! What moves is everything the connection's future depends on: the socket (by `SCM_RIGHTS`;
//! bytes the client sent that no one has read are still in its kernel receive queue, and the
//! new process reads them), the output owed and not yet taken by the kernel (exactly, in
//! order: written to a sealed memfd, so no packet-size limit bites however much is owed), where
//! it is in its life (waiting for a PROXY header, open, or half-closed by the peer, which a
//! later readiness event would not tell again), what the old process still had to do on its
//! own clock (the idle timeout's and the PROXY header's remaining time), and what the log
//! knows of it (its id, its real client from a PROXY header, its age and byte counts). The
//! server never shuts its own side down before it closes, so there is no such state to carry.
//!
//! The format has a version ([`VERSION`]); a worker says at start which one it reads and
//! writes, and the supervisor hands over only between workers that agree, else the old ones
//! drain as before.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use serde::{Deserialize, Serialize};

use super::conn::{Conn, Parts, StreamState};
use super::logs::ConnMeta;

/// The hand-over format this binary writes and reads. Bump it whenever [`Moving`] changes
/// meaning.
pub const VERSION: u32 = 1;

/// For tests of version skew: a worker started with this variable set says it speaks that
/// hand-over version instead (0: none).
pub const VERSION_ENV: &str = "UPECHO_HANDOVER_VERSION";

/// The version this worker announces.
pub fn announced_version() -> u32 {
    std::env::var(VERSION_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(VERSION)
}

/// Where a moving connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnStage {
    /// Waiting for its PROXY header (nothing of it consumed yet).
    Header,
    Open,
    /// The peer half-closed: nothing more to read, the rest of what is owed to send.
    ReadClosed,
}

/// What the log knew of a moving connection (only when debug logging is on where it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub id: u64,
    /// The client: the peer, or the one a PROXY header named.
    pub peer: SocketAddr,
    /// The balancer it came through, when a PROXY header named the client.
    pub via: Option<SocketAddr>,
    pub age_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One connection's state on the wire; its socket, and when `owed > 0` a memfd holding exactly
/// that many bytes, come with it as descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moving {
    /// [`VERSION`] of the binary that wrote it.
    pub version: u32,
    pub stage: ConnStage,
    /// Bytes owed, in the memfd.
    pub owed: u64,
    /// The poller had reported the peer's FIN (a half-closed peer whose FIN was not read yet).
    pub peer_fin: bool,
    /// The peer had sent urgent data (reads stop short at the mark).
    pub urgent: bool,
    /// Time left before the idle timeout closes it, if one runs.
    pub idle_left_ms: Option<u64>,
    /// Time left for its PROXY header, if it still waits for one.
    pub header_left_ms: Option<u64>,
    pub known: Option<Known>,
}

impl Moving {
    pub fn idle_left(&self) -> Option<Duration> {
        self.idle_left_ms.map(Duration::from_millis)
    }

    pub fn header_left(&self) -> Option<Duration> {
        self.header_left_ms.map(Duration::from_millis)
    }
}

/// One connection taken out of the table, waiting to be sent, with its clocks.
pub(crate) struct Leaving {
    pub(crate) conn: Conn<TcpStream>,
    pub(crate) meta: Option<ConnMeta>,
    pub(crate) idle_left: Option<Duration>,
    pub(crate) header_left: Option<Duration>,
}

/// Writes a leaving connection down: its state, and its descriptors (the socket, then a memfd
/// of what it owes if it owes anything). If no memfd can be made, the connection comes back
/// whole, with the error.
pub(crate) fn pack(
    l: Leaving,
    now: Instant,
) -> Result<(Moving, Vec<OwnedFd>), (Box<Leaving>, io::Error)> {
    let memfd = match l.conn.owed_bytes() {
        [] => None,
        bytes => match owed_to_memfd(bytes) {
            Ok(fd) => Some(fd),
            Err(e) => return Err((Box::new(l), e)),
        },
    };
    let Parts {
        sock,
        state,
        owed,
        peer_fin,
        urgent,
    } = l.conn.into_parts();
    let mut fds = vec![OwnedFd::from(std::net::TcpStream::from(sock))];
    fds.extend(memfd);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok((
        Moving {
            version: VERSION,
            stage: match state {
                StreamState::Header => ConnStage::Header,
                StreamState::Open => ConnStage::Open,
                StreamState::ReadClosed => ConnStage::ReadClosed,
            },
            owed: owed.len() as u64,
            peer_fin,
            urgent,
            idle_left_ms: l.idle_left.map(ms),
            header_left_ms: l.header_left.map(ms),
            known: l.meta.map(|m| Known {
                id: m.id,
                peer: m.peer,
                via: m.via,
                age_ms: ms(now.saturating_duration_since(m.since)),
                bytes_in: m.bytes_in,
                bytes_out: m.bytes_out,
            }),
        },
        fds,
    ))
}

/// Rebuilds a moved connection from its state and descriptors.
pub(crate) fn unpack(
    m: &Moving,
    fds: Vec<OwnedFd>,
    now: Instant,
) -> io::Result<(Conn<TcpStream>, Option<ConnMeta>)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if m.version != VERSION {
        return Err(bad(format!(
            "hand-over format {}, this binary reads {VERSION}",
            m.version
        )));
    }
    let mut fds = fds.into_iter();
    let sock = fds.next().ok_or_else(|| bad("no socket".into()))?;
    let owed = match (m.owed, fds.next()) {
        (0, None) => Vec::new(),
        (n, Some(fd)) if n > 0 => owed_from_memfd(fd, n)?,
        _ => return Err(bad("owed output without its memfd, or the reverse".into())),
    };
    let std = std::net::TcpStream::from(sock);
    // The socket was the old process's, non-blocking there: the flag belongs to the open file.
    let sock = TcpStream::from_std(std);
    let conn = Conn::from_parts(Parts {
        sock,
        state: match m.stage {
            ConnStage::Header => StreamState::Header,
            ConnStage::Open => StreamState::Open,
            ConnStage::ReadClosed => StreamState::ReadClosed,
        },
        owed,
        peer_fin: m.peer_fin,
        urgent: m.urgent,
    });
    let meta = m.known.as_ref().map(|k| ConnMeta {
        id: k.id,
        peer: k.peer,
        via: k.via,
        since: now
            .checked_sub(Duration::from_millis(k.age_ms))
            .unwrap_or(now),
        bytes_in: k.bytes_in,
        bytes_out: k.bytes_out,
    });
    Ok((conn, meta))
}

/// A memfd holding `bytes`, sealed against any change, positioned at the start.
pub fn owed_to_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags, and returns a new descriptor.
    let fd = unsafe {
        libc::memfd_create(
            c"upecho-owed".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// The `len` bytes of a memfd received with a moving connection.
pub fn owed_from_memfd(fd: OwnedFd, len: u64) -> io::Result<Vec<u8>> {
    let mut file = File::from(fd);
    let size = file.metadata()?.len();
    if size != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("owed output: {size} bytes in the memfd, {len} announced"),
        ));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut out = Vec::with_capacity(len as usize);
    file.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_bytes_cross_a_memfd_exactly_and_it_is_sealed() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let fd = owed_to_memfd(&data).unwrap();
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_GET_SEALS) };
        assert!(seals & libc::F_SEAL_WRITE != 0);
        let got = owed_from_memfd(fd, data.len() as u64).unwrap();
        assert_eq!(got, data);
        let short = owed_to_memfd(b"abc").unwrap();
        assert!(
            owed_from_memfd(short, 4).is_err(),
            "a length that disagrees"
        );
    }

    #[test]
    fn the_state_reads_back_as_written() {
        let m = Moving {
            version: VERSION,
            stage: ConnStage::ReadClosed,
            owed: 7,
            peer_fin: true,
            urgent: false,
            idle_left_ms: Some(1500),
            header_left_ms: None,
            known: Some(Known {
                id: 42,
                peer: "10.0.0.1:5000".parse().unwrap(),
                via: Some("127.0.0.1:40000".parse().unwrap()),
                age_ms: 9,
                bytes_in: 10,
                bytes_out: 3,
            }),
        };
        let back: Moving = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}

//! The connection state machine per chunk, against an in-memory socket: what one readiness event
//! costs the server apart from the syscalls themselves.

use std::hint::black_box;
use std::io::{self, ErrorKind, Read, Write};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use upecho::Transform;
use upecho::serve::READ_CHUNK;
use upecho::serve::conn::{Conn, Ctx, Peek, Progress};

/// A socket with one chunk waiting to be read per event and unlimited room to write.
struct MemSocket {
    chunk: Vec<u8>,
    unread: bool,
    written: usize,
}

impl Read for MemSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.unread {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.unread = false;
        let n = self.chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        Ok(n)
    }
}

// Never asked: the benchmarked connections expect no PROXY header.
impl Peek for MemSocket {
    fn peek(&self, _: &mut [u8]) -> io::Result<usize> {
        Err(ErrorKind::Unsupported.into())
    }
}

impl Write for MemSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn per_chunk(c: &mut Criterion) {
    let mut group = c.benchmark_group("conn_drive");
    for size in [64usize, 1024, 16 * 1024] {
        let chunk: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let mut conn = Conn::new(MemSocket {
            chunk,
            unread: false,
            written: 0,
        });
        let mut scratch = vec![0u8; READ_CHUNK];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                conn.socket_mut().unread = true;
                conn.on_ready(true, true, false);
                let mut ctx = Ctx {
                    scratch: &mut scratch,
                    transform: Transform::Upper,
                    max_pending: 1 << 20,
                    owed_total: 0,
                    max_pending_total: 256 << 20,
                    budget: 1 << 20,
                    draining: false,
                    header: None,
                };
                let (progress, moved) = conn.drive(&mut ctx);
                assert!(matches!(progress, Progress::Wait) && moved.written == size);
                black_box(moved)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_chunk);
criterion_main!(benches);

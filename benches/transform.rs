//! Micro-benchmarks of the hot path, in bytes per second.
//!
//! - `transform`: `Transform::Upper.apply` over buffers of the sizes the server sees (a 64-byte
//!   message, a 4 KiB read, the reactor's 16 KiB scratch buffer, a 64 KiB bulk read), on
//!   lowercase-heavy input like the load generator's.
//! - The connection state machine per chunk is `benches/conn.rs`, beside this one.
//!
//! Run: `cargo bench --bench transform`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use upecho::Transform;

fn input(n: usize) -> Vec<u8> {
    // Deterministic, lowercase-heavy, every byte value present now and then.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x & 3 != 0 {
                b'a' + (x >> 8) as u8 % 26
            } else {
                (x >> 16) as u8
            }
        })
        .collect()
}

fn transform(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform");
    for size in [64usize, 4096, 16 * 1024, 64 * 1024] {
        let src = input(size);
        let mut buf = src.clone();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("upper", size), &size, |b, _| {
            b.iter(|| {
                // Re-copying keeps the input lowercase-heavy; the copy is part of what a server
                // does anyway (read into a buffer), and at these sizes it is cheap next to the
                // transform only if the transform is slow, which is what this measures.
                buf.copy_from_slice(&src);
                Transform::Upper.apply(black_box(&mut buf));
                black_box(&buf);
            })
        });
        g.bench_with_input(BenchmarkId::new("copy_only", size), &size, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&src);
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, transform);
criterion_main!(benches);

//! What the load generator sends and how every returned byte is checked.
//!
//! Each TCP connection sends an endless stream read from one shared pseudo-random pattern,
//! starting at its own offset. Byte `k` of a stream is therefore `pattern[(start + k) % PERIOD]`,
//! and the reply byte must be the same byte of a second, pre-transformed copy. Neither sending nor
//! checking needs a per-connection buffer or any allocation: both are slices of the two shared
//! buffers (stored twice over, so any window of up to `PERIOD` bytes is contiguous), and a check
//! is one `memcmp` per read. Different connections start at different offsets, so a server that
//! crossed replies between connections is caught as well.
//!
//! UDP datagrams carry an 8-byte sequence number written in the letters `A`-`P`, which neither
//! transform changes, followed by pattern bytes chosen by the sequence number.

use crate::Transform;

/// Pattern length: a prime, so message boundaries of any size drift across it instead of always
/// meeting the same bytes.
pub const PERIOD: usize = 65_521;

/// The shared send pattern and its expected reply.
pub struct Pattern {
    sent: Box<[u8]>,
    expect: Box<[u8]>,
}

/// The first wrong byte of a reply chunk, and how many of the chunk's bytes were wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset in the connection's reply stream (UDP: in the datagram).
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
    pub wrong_bytes: u64,
}

impl Pattern {
    /// A lowercase-heavy pattern (three bytes in four are `a`-`z`, the rest any byte value, so
    /// the "everything else unchanged" rule is exercised too), reproducible from `seed`.
    pub fn new(seed: u64, expect: Transform) -> Pattern {
        let mut x = seed | 1;
        let mut next = move || {
            // xorshift64*: fast, and good enough to make every byte value appear.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut sent = vec![0u8; 2 * PERIOD];
        for b in &mut sent[..PERIOD] {
            let r = next();
            *b = if r & 3 != 0 {
                b'a' + ((r >> 8) % 26) as u8
            } else {
                (r >> 16) as u8
            };
        }
        sent.copy_within(..PERIOD, PERIOD);
        let mut exp = sent.clone();
        expect.apply(&mut exp);
        Pattern {
            sent: sent.into_boxed_slice(),
            expect: exp.into_boxed_slice(),
        }
    }

    /// Up to `max` bytes of the stream starting at stream position `pos` (never more than
    /// `PERIOD`).
    #[inline]
    pub fn send_window(&self, pos: u64, max: usize) -> &[u8] {
        let s = (pos % PERIOD as u64) as usize;
        &self.sent[s..s + max.min(PERIOD)]
    }

    /// Checks `got`, the reply bytes at stream position `pos`, against the expected stream;
    /// `at` is added to the reported offset (a connection's stream start is not part of it).
    #[inline]
    pub fn check(&self, pos: u64, got: &[u8], at: u64) -> Result<(), Mismatch> {
        let mut done = 0;
        while done < got.len() {
            let want = self.expect_window(pos + done as u64, got.len() - done);
            let part = &got[done..done + want.len()];
            if part != want {
                return Err(first_mismatch(want, part, at + done as u64));
            }
            done += want.len();
        }
        Ok(())
    }

    #[inline]
    fn expect_window(&self, pos: u64, max: usize) -> &[u8] {
        let s = (pos % PERIOD as u64) as usize;
        &self.expect[s..s + max.min(PERIOD)]
    }
}

/// Locates the first differing byte (the slow path, taken only when `memcmp` already failed).
fn first_mismatch(want: &[u8], got: &[u8], at: u64) -> Mismatch {
    let mut first = None;
    let mut wrong = 0;
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w != g {
            wrong += 1;
            first.get_or_insert((i, *w, *g));
        }
    }
    let (i, expected, got) = first.unwrap_or((0, 0, 0));
    Mismatch {
        offset: at + i as u64,
        expected,
        got,
        wrong_bytes: wrong,
    }
}

/// Writes `seq` into `out` as eight letters `A`-`P`, one per nibble, most significant first.
#[inline]
pub fn encode_seq(seq: u32, out: &mut [u8]) {
    for (i, b) in out[..8].iter_mut().enumerate() {
        *b = b'A' + ((seq >> (28 - 4 * i)) & 0xf) as u8;
    }
}

/// Reads a sequence number written by [`encode_seq`]; `None` if any byte is not `A`-`P`.
#[inline]
pub fn decode_seq(buf: &[u8]) -> Option<u32> {
    let mut seq = 0u32;
    for &b in buf.get(..8)? {
        let n = b.wrapping_sub(b'A');
        if n > 15 {
            return None;
        }
        seq = (seq << 4) | u32::from(n);
    }
    Some(seq)
}

/// Where the body of datagram `seq` starts in the pattern (varied so consecutive datagrams
/// differ).
#[inline]
pub fn udp_body_pos(seq: u32, socket_start: u64) -> u64 {
    socket_start + u64::from(seq) * 7_919
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pattern_is_lowercase_heavy_and_covers_other_bytes() {
        let p = Pattern::new(7, Transform::Upper);
        let w = p.send_window(0, PERIOD);
        let lower = w.iter().filter(|b| b.is_ascii_lowercase()).count();
        assert!(lower * 10 > PERIOD * 7, "only {lower} lowercase bytes");
        assert!(w.iter().any(|&b| b >= 0x80));
        assert!(w.iter().any(|&b| b.is_ascii_uppercase()));
    }

    #[test]
    fn correct_reply_passes_at_any_position_and_length() {
        let p = Pattern::new(1, Transform::Upper);
        for (pos, len) in [
            (0u64, 1usize),
            (5, 64),
            (PERIOD as u64 - 3, 10),
            (1 << 40, 3 * PERIOD),
        ] {
            let mut sent = Vec::new();
            while sent.len() < len {
                let w = p.send_window(pos + sent.len() as u64, len - sent.len());
                sent.extend_from_slice(w);
            }
            let reply = sent.to_ascii_uppercase();
            assert_eq!(p.check(pos, &reply, 0), Ok(()), "pos {pos} len {len}");
        }
    }

    #[test]
    fn plain_echo_is_caught_when_upper_expected() {
        let p = Pattern::new(1, Transform::Upper);
        let sent = p.send_window(100, 64).to_vec();
        let m = p.check(100, &sent, 1000).unwrap_err();
        let first_lower = sent.iter().position(|b| b.is_ascii_lowercase()).unwrap();
        assert_eq!(m.offset, 1000 + first_lower as u64);
        assert_eq!(m.got, sent[first_lower]);
        assert_eq!(m.expected, sent[first_lower].to_ascii_uppercase());
        assert_eq!(
            m.wrong_bytes,
            sent.iter().filter(|b| b.is_ascii_lowercase()).count() as u64
        );
        // And a plain echo passes when plain echo is expected.
        let q = Pattern::new(1, Transform::None);
        assert_eq!(q.check(100, &sent, 0), Ok(()));
    }

    #[test]
    fn seq_roundtrips_and_survives_both_transforms() {
        for seq in [0, 1, 0xdead_beef, u32::MAX] {
            let mut b = [0u8; 8];
            encode_seq(seq, &mut b);
            let mut up = b;
            Transform::Upper.apply(&mut up);
            assert_eq!(up, b);
            assert_eq!(decode_seq(&b), Some(seq));
        }
        assert_eq!(decode_seq(b"AAAAAAAa"), None);
        assert_eq!(decode_seq(b"AAAA"), None);
    }

    proptest! {
        #[test]
        fn any_single_corruption_is_found(pos in 0u64..1 << 50, len in 1usize..3000,
                                          at in 0usize..3000, flip in 1u8..=255) {
            let at = at % len;
            let p = Pattern::new(3, Transform::Upper);
            let mut reply = Vec::new();
            while reply.len() < len {
                reply.extend_from_slice(p.send_window(pos + reply.len() as u64, len - reply.len()));
            }
            Transform::Upper.apply(&mut reply);
            prop_assert_eq!(p.check(pos, &reply, 0), Ok(()));
            reply[at] ^= flip;
            let m = p.check(pos, &reply, 0).unwrap_err();
            prop_assert_eq!(m.offset, at as u64);
            prop_assert_eq!(m.wrong_bytes, 1);
        }
    }
}

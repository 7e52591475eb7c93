//! The byte transform applied to every echoed byte: the protocol's one piece of "business logic".
//!
//! It knows nothing of sockets, so the reactor, the clients and the load generator's verifier all
//! share exactly the same definition of a correct reply.

/// What the server does to each byte before sending it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transform {
    /// ASCII `a`-`z` become `A`-`Z`; every other byte is unchanged (Python's `bytes.upper()`).
    #[default]
    Upper,
    /// Bytes unchanged: a plain RFC 862 echo.
    None,
}

impl Transform {
    /// Transforms `buf` in place. The length never changes, which the clients rely on to know how
    /// many reply bytes belong to what they sent.
    #[inline]
    pub fn apply(self, buf: &mut [u8]) {
        match self {
            Transform::Upper => upper_in_place(buf),
            Transform::None => {}
        }
    }

    /// The reply byte for one input byte.
    #[inline]
    pub fn byte(self, b: u8) -> u8 {
        match self {
            Transform::Upper => upper(b),
            Transform::None => b,
        }
    }

    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Transform::Upper => "upper",
            Transform::None => "none",
        }
    }
}

/// Upper-cases `buf`, with 32-byte vectors where the CPU has AVX2 (decided once per process and
/// cached by the standard library), else with the baseline SSE2 vectors. Below 256 bytes the
/// out-of-line AVX2 call costs more than it saves (benches/transform.rs: 64 B went from 15 to
/// 11 GiB/s through it, while 4 KiB went from 24 to 38 GiB/s).
#[inline]
fn upper_in_place(buf: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= 256 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { upper_avx2(buf) };
        return;
    }
    upper_loop(buf);
}

/// The branch-free loop LLVM vectorises; compiled twice, once for the baseline target and once
/// with AVX2 enabled.
#[inline(always)]
fn upper_loop(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        *b = upper(*b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn upper_avx2(buf: &mut [u8]) {
    upper_loop(buf);
}

#[inline(always)]
fn upper(b: u8) -> u8 {
    b - (((b.wrapping_sub(b'a') < 26) as u8) << 5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn upper_matches_python_bytes_upper_for_every_byte() {
        for b in 0..=255u8 {
            let want = if b.is_ascii_lowercase() { b - 32 } else { b };
            assert_eq!(Transform::Upper.byte(b), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn none_is_identity() {
        let mut v: Vec<u8> = (0..=255).collect();
        Transform::None.apply(&mut v);
        assert!(v.iter().enumerate().all(|(i, &b)| b as usize == i));
    }

    proptest! {
        /// Every length around the vector widths and the AVX2 threshold, every byte value.
        #[test]
        fn apply_equals_bytewise(mut v in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let want: Vec<u8> = v.iter().map(|&b| b.to_ascii_uppercase()).collect();
            Transform::Upper.apply(&mut v);
            prop_assert_eq!(v, want);
        }
    }
}

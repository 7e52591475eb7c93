//! The PROXY protocol header (`--send-proxy v1|v2`, HAProxy's specification) a TCP connection
//! begins with, as a load balancer in front of the server would send it: the connection's real
//! source and destination (the socket's local and peer addresses), written once, right after the
//! handshake and before any payload, and never counted as payload or in a latency.
//!
//! Built with the `ppp` crate (v1's `Addresses` display, v2's `Builder`) rather than by hand:
//! the server side of the project parses with the same crate, and the tests check the bytes
//! against the specification written out independently.

use std::io;
use std::net::SocketAddr;

use super::config::ProxyVersion;

/// The header for a TCP connection from `src` (this side) to `dst` (the server). Mixed families
/// cannot happen for one socket; `ppp` would say `UNKNOWN` (v1) or `UNSPEC` (v2) for them.
pub(crate) fn header(v: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> io::Result<Vec<u8>> {
    match v {
        ProxyVersion::V1 => Ok(ppp::v1::Addresses::from((src, dst))
            .to_string()
            .into_bytes()),
        ProxyVersion::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_is_the_text_line_of_the_specification() {
        let h = header(
            ProxyVersion::V1,
            sa("127.0.0.2:40000"),
            sa("127.0.0.1:8005"),
        )
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 8005\r\n");
        let h = header(ProxyVersion::V1, sa("[::1]:5"), sa("[fd00::7]:8005")).unwrap();
        assert_eq!(h, b"PROXY TCP6 ::1 fd00::7 5 8005\r\n");
    }

    #[test]
    fn v2_is_the_binary_header_of_the_specification() {
        const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
        let h = header(
            ProxyVersion::V2,
            sa("127.0.0.2:40000"),
            sa("127.0.0.1:8005"),
        )
        .unwrap();
        let mut want = SIG.to_vec();
        // Version 2, PROXY; TCP over IPv4; 12 bytes of addresses.
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 2, 127, 0, 0, 1]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&8005u16.to_be_bytes());
        assert_eq!(h, want);
        let h = header(ProxyVersion::V2, sa("[::1]:5"), sa("[::2]:6")).unwrap();
        assert_eq!(&h[..16], &[SIG, &[0x21, 0x21, 0, 36]].concat()[..]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[16 + 15], 1);
        assert_eq!(h[32 + 15], 2);
        assert_eq!(&h[48..], &[0, 5, 0, 6]);
    }
}

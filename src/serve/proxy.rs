//! The PROXY protocol (HAProxy's, v1 text and v2 binary): which peers are trusted to send a
//! header, and where a header ends in the first bytes of a connection.
//!
//! The framing is done here, the field parsing by the `ppp` crate: a header is handed to `ppp`
//! only once it is whole (v1: up to its CRLF; v2: its 16 fixed bytes and the length they
//! declare), so "not yet" and "never" are told apart by the framing alone and a header that
//! arrives one byte at a time parses the same as one that arrives at once. The connection peeks
//! (`MSG_PEEK`) at what has arrived and consumes exactly the header, so nothing of the payload
//! that follows it is read here and the connection owns no buffer while it waits.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use ppp::{v1, v2};

/// The v2 signature: the 12 bytes that open every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2's fixed part: the signature, version/command, family/protocol and a 16-bit length.
const V2_FIXED: usize = 16;
/// The v1 prefix, space included.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The spec's longest v1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// The longest header accepted. The spec allows v2 headers of 16 + 65535 bytes, but what
/// balancers send is addresses (36 bytes for IPv6) and a few TLVs (an id, an ALPN, a TLS
/// summary: a few hundred bytes); 4 KiB leaves room for those and bounds what a peer can make
/// the server peek at, and read, before the first echoed byte.
pub const MAX_HEADER: usize = 4096;

/// What the first bytes of a connection from a trusted source come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough yet to tell; wait for more.
    Incomplete,
    /// A whole header of `len` bytes; the payload starts after it.
    Header(Header),
    /// Never a valid header, whatever follows.
    Invalid(HeaderError),
}

/// A header that was read, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length on the wire, CRLF or TLVs included.
    pub len: usize,
    pub version: u8,
    /// The client's address and the address it connected to, as the balancer saw them; `None`
    /// for a v1 `UNKNOWN`, a v2 `LOCAL` (the balancer's own health check) or an address family
    /// that is not IP: then the connection is the balancer's own and its socket address stands.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The first bytes are neither a v1 nor a v2 header.
    Missing,
    /// Longer than [`V1_MAX`] (v1) or [`MAX_HEADER`] (v2).
    TooLong(usize),
    /// Framed as a header, but `ppp` found a field it could not read.
    Malformed(String),
    /// The peer closed before the header was whole.
    Truncated,
    /// No whole header within `--proxy-timeout`.
    TimedOut,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Missing => f.write_str("no PROXY header from a trusted source"),
            HeaderError::TooLong(n) => write!(f, "PROXY header too long ({n} bytes or more)"),
            HeaderError::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
            HeaderError::Truncated => f.write_str("connection ended inside its PROXY header"),
            HeaderError::TimedOut => f.write_str("no whole PROXY header in time (--proxy-timeout)"),
        }
    }
}

/// Finds and parses the header at the start of `buf` (what has arrived so far).
pub fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len();
    if n < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf) {
        // Also covers the empty buffer; no prefix of "PROXY " starts with "\r".
        return Parsed::Incomplete;
    }
    if buf.starts_with(V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if n < V1_PREFIX.len() {
        return if V1_PREFIX.starts_with(buf) {
            Parsed::Incomplete
        } else {
            Parsed::Invalid(HeaderError::Missing)
        };
    }
    if !buf.starts_with(V1_PREFIX) {
        return Parsed::Invalid(HeaderError::Missing);
    }
    parse_v1(buf)
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < V2_FIXED {
        return Parsed::Incomplete;
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_HEADER {
        return Parsed::Invalid(HeaderError::TooLong(len));
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    match v2::Header::try_from(&buf[..len]) {
        Ok(h) => {
            let addrs = match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                (_, v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                _ => None,
            };
            Parsed::Header(Header {
                len,
                version: 2,
                addrs,
            })
        }
        Err(e) => Parsed::Invalid(HeaderError::Malformed(e.to_string())),
    }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid(HeaderError::TooLong(V1_MAX))
        } else {
            Parsed::Incomplete
        };
    };
    let len = cr + 2;
    match v1::Header::try_from(&buf[..len]) {
        Ok(h) => {
            let addrs = match h.addresses {
                v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                v1::Addresses::Unknown => None,
            };
            Parsed::Header(Header {
                len,
                version: 1,
                addrs,
            })
        }
        Err(e) => Parsed::Invalid(HeaderError::Malformed(e.to_string())),
    }
}

/// `--proxy-protocol`: who must send a header, and how long they have to send it whole.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub from: TrustedSources,
    /// A connection from a trusted source that has not sent its whole header by then is closed
    /// (counted as rejected): a slot held by a silent "balancer" is a slot no client gets.
    pub timeout: std::time::Duration,
}

/// The default for [`ProxyConfig::timeout`]: a balancer writes the header as it connects, so
/// anything slower than this is not a balancer at work. nginx's own `proxy_protocol_timeout`
/// is 30 s; a tighter default frees slots sooner and is still generous.
pub const DEFAULT_PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sources trusted to send a PROXY header (`--proxy-from`): address ranges in CIDR form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedSources(Vec<IpNet>);

impl TrustedSources {
    pub fn new(nets: Vec<IpNet>) -> TrustedSources {
        TrustedSources(nets)
    }

    /// Whether a connection from `peer` must start with a header. An IPv4 client of a dual-stack
    /// listener arrives as `::ffff:a.b.c.d` and is matched as the IPv4 address it is.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

impl FromStr for TrustedSources {
    type Err = String;

    /// A comma-separated list of `ADDR/PREFIX` or bare addresses (a single host).
    fn from_str(s: &str) -> Result<TrustedSources, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("empty entry in {s:?}"));
            }
            let net = match part.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "{part:?} is not an address range (CIDR, e.g. 10.0.0.0/8 or ::1/128)"
                        ));
                    }
                },
            };
            nets.push(net.trunc());
        }
        Ok(TrustedSources(nets))
    }
}

impl fmt::Display for TrustedSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A v2 header naming `src` and `dst` (one family), with `tlv` bytes of padding TLV.
    pub(crate) fn v2_header(src: SocketAddr, dst: SocketAddr, tlv: usize) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x21); // version 2, PROXY
        let mut body = Vec::new();
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                h.push(0x11); // INET, STREAM
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                h.push(0x21); // INET6, STREAM
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
            }
            _ => panic!("one family"),
        }
        if tlv > 0 {
            // PP2_TYPE_NOOP, whose value is ignored.
            body.push(0x04);
            body.extend_from_slice(&u16::try_from(tlv).unwrap().to_be_bytes());
            body.extend(std::iter::repeat_n(0u8, tlv));
        }
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(&body);
        h
    }

    pub(crate) fn v1_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {fam} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(buf: &[u8]) -> Header {
        match parse(buf) {
            Parsed::Header(h) => h,
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let (s, d) = (addr("203.0.113.7:51234"), addr("127.0.0.1:8005"));
        let mut b = v1_header(s, d);
        let len = b.len();
        b.extend_from_slice(b"payload");
        assert_eq!(
            header(&b),
            Header {
                len,
                version: 1,
                addrs: Some((s, d))
            }
        );
        let (s6, d6) = (addr("[2001:db8::1]:40000"), addr("[::1]:8005"));
        assert_eq!(header(&v1_header(s6, d6)).addrs, Some((s6, d6)));
        let h = header(b"PROXY UNKNOWN\r\nhello");
        assert_eq!((h.len, h.addrs), (15, None));
    }

    #[test]
    fn v2_ipv4_ipv6_tlvs_and_local() {
        let (s, d) = (addr("198.51.100.9:1234"), addr("10.0.0.1:80"));
        let b = v2_header(s, d, 0);
        assert_eq!(
            header(&b),
            Header {
                len: 28,
                version: 2,
                addrs: Some((s, d))
            }
        );
        let (s6, d6) = (addr("[2001:db8::2]:9"), addr("[2001:db8::3]:10"));
        let b = v2_header(s6, d6, 100);
        assert_eq!(header(&b).len, 16 + 36 + 3 + 100);
        assert_eq!(header(&b).addrs, Some((s6, d6)));
        // LOCAL: the balancer's own connection, no addresses to use.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        local.extend_from_slice(b"ping");
        assert_eq!(header(&local).addrs, None);
        assert_eq!(header(&local).len, 16);
    }

    #[test]
    fn anything_else_is_refused_at_once() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"hello",
            b"PROXX ",
            b"\r\n\r\n\0\r\nQUIX\n",
        ] {
            assert_eq!(parse(bad), Parsed::Invalid(HeaderError::Missing), "{bad:?}");
        }
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
            Parsed::Invalid(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"),
            Parsed::Invalid(HeaderError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_headers_are_refused_without_waiting_for_them() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        assert_eq!(parse(&long), Parsed::Invalid(HeaderError::TooLong(V1_MAX)));
        let big = v2_header(addr("1.2.3.4:1"), addr("5.6.7.8:2"), 5000);
        assert!(matches!(
            parse(&big[..16]),
            Parsed::Invalid(HeaderError::TooLong(_))
        ));
        let at_limit = v2_header(
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            MAX_HEADER - 16 - 12 - 3,
        );
        assert_eq!(at_limit.len(), MAX_HEADER);
        assert_eq!(header(&at_limit).len, MAX_HEADER);
    }

    #[test]
    fn trusted_sources_parse_and_match() {
        let t: TrustedSources = "127.0.0.0/8, 10.1.2.3,::1/128,fd00::/8".parse().unwrap();
        assert_eq!(t.to_string(), "127.0.0.0/8,10.1.2.3/32,::1/128,fd00::/8");
        assert!(t.trusts("127.9.9.9".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.5".parse().unwrap()), "v4-mapped");
        assert!(t.trusts("10.1.2.3".parse().unwrap()));
        assert!(!t.trusts("10.1.2.4".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(!t.trusts("2001:db8::1".parse().unwrap()));
        // A host part beyond the prefix is cut off, as routers read it.
        let t: TrustedSources = "192.168.1.77/24".parse().unwrap();
        assert_eq!(t.to_string(), "192.168.1.0/24");
        for bad in ["", "10.0.0.0/33", "10.0.0.0/8,", "example.com", "10.0.0/8"] {
            assert!(bad.parse::<TrustedSources>().is_err(), "{bad:?}");
        }
    }

    fn arb_addrs() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        (any::<bool>(), any::<[[u8; 16]; 2]>(), any::<[u16; 2]>()).prop_map(
            |(v6, [a, b], [p, q])| {
                let ip = |x: [u8; 16]| {
                    if v6 {
                        IpAddr::from(x)
                    } else {
                        IpAddr::from([x[0], x[1], x[2], x[3]])
                    }
                };
                (SocketAddr::new(ip(a), p), SocketAddr::new(ip(b), q))
            },
        )
    }

    proptest! {
        /// Every prefix of a valid header is "not yet", the whole header parses to its addresses
        /// whatever payload follows, and the length is exact.
        #[test]
        fn every_prefix_waits_and_the_whole_parses(
            (src, dst) in arb_addrs(),
            v2 in any::<bool>(),
            tlv in 0usize..300,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let h = if v2 { v2_header(src, dst, tlv) } else { v1_header(src, dst) };
            for cut in 0..h.len() {
                prop_assert_eq!(parse(&h[..cut]), Parsed::Incomplete, "cut at {}", cut);
            }
            let mut b = h.clone();
            b.extend_from_slice(&payload);
            let got = header(&b);
            prop_assert_eq!(got.len, h.len());
            prop_assert_eq!(got.version, if v2 { 2 } else { 1 });
            prop_assert_eq!(got.addrs, Some((src, dst)));
        }

        /// Arbitrary bytes never panic the parser, and whatever it accepts fits the limits and
        /// lies within the input.
        #[test]
        fn arbitrary_bytes_are_handled(
            prefix in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(&V2_SIGNATURE[..])],
            rest in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut b = prefix.to_vec();
            b.extend_from_slice(&rest);
            match parse(&b) {
                Parsed::Header(h) => {
                    prop_assert!(h.len <= b.len() && h.len <= MAX_HEADER);
                }
                Parsed::Incomplete => prop_assert!(b.len() < MAX_HEADER),
                Parsed::Invalid(_) => {}
            }
        }
    }
}

//! The one address grammar of every subcommand: `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`, where
//! a host name is resolved (`localhost:8005` works everywhere) and a literal IP address never
//! touches the resolver.
//!
//! Parsing is done by hand rather than left to `ToSocketAddrs` so that a malformed address is
//! reported as such, with an example ("expected HOST:PORT, e.g. 127.0.0.1:8005"), instead of as a
//! confusing resolver error. Malformed addresses are usage errors (exit 2, through clap); an
//! address that does not resolve is a run-time failure.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// The port the tutorial's server listens on.
pub const DEFAULT_PORT: u16 = 8005;
/// Where the server listens and the clients connect by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8005";

/// A parsed address, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host as written, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

/// Why an address could not be used.
#[derive(Debug)]
pub enum AddrError {
    /// Not of the form `HOST:PORT`.
    Bad { addr: String, reason: String },
    /// The host name did not resolve to any address.
    Unresolvable { addr: String, source: io::Error },
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Bad { addr, reason } => write!(f, "bad address {addr:?}: {reason}"),
            AddrError::Unresolvable { addr, source } => {
                write!(f, "cannot resolve {addr}: {}", reason(source))
            }
        }
    }
}

impl std::error::Error for AddrError {}

/// The text of an I/O error without Rust's " (os error N)" suffix, which means nothing to a user.
pub fn reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

impl HostPort {
    /// Parses `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`; port 0 is allowed (a server binding it
    /// gets a free port).
    pub fn parse(addr: &str) -> Result<HostPort, AddrError> {
        let bad = |reason: &str| AddrError::Bad {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs a closing ']', e.g. [::1]:8005"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("expected [IPV6]:PORT, e.g. [::1]:8005"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad(
                    "the part in brackets is not an IPv6 address (e.g. [::1]:8005)",
                ));
            }
            (host, port)
        } else {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT, e.g. 127.0.0.1:8005"))?;
            if host.contains(':') {
                return Err(bad("write an IPv6 address in brackets, e.g. [::1]:8005"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is missing (e.g. 127.0.0.1:8005)"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number from 0 to 65535 (e.g. 127.0.0.1:8005)"))?;
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// [`HostPort::parse`] for an address to connect to, where port 0 means nothing.
    pub fn parse_peer(addr: &str) -> Result<HostPort, AddrError> {
        let hp = HostPort::parse(addr)?;
        if hp.port == 0 {
            return Err(AddrError::Bad {
                addr: addr.to_string(),
                reason: "port 0 cannot be connected to (e.g. 127.0.0.1:8005)".into(),
            });
        }
        Ok(hp)
    }

    /// Every address this stands for, in the resolver's order. A literal IP address is used as
    /// is, so only names reach the resolver.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, AddrError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let unresolvable = |source| AddrError::Unresolvable {
            addr: self.to_string(),
            source,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(unresolvable)?
            .collect();
        if addrs.is_empty() {
            return Err(unresolvable(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no addresses",
            )));
        }
        Ok(addrs)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    /// For clap: the message without the address, which clap prints itself.
    fn from_str(s: &str) -> Result<HostPort, String> {
        HostPort::parse(s).map_err(|e| match e {
            AddrError::Bad { reason, .. } => reason,
            other => other.to_string(),
        })
    }
}

/// A clap value parser for an address to connect to (port 0 refused).
pub fn peer_value(s: &str) -> Result<HostPort, String> {
    HostPort::parse_peer(s).map_err(|e| match e {
        AddrError::Bad { reason, .. } => reason,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_ipv4_names_and_bracketed_ipv6() {
        assert_eq!(
            HostPort::parse("127.0.0.1:8005").unwrap(),
            hp("127.0.0.1", 8005)
        );
        assert_eq!(HostPort::parse("localhost:1").unwrap(), hp("localhost", 1));
        assert_eq!(HostPort::parse("[::1]:65535").unwrap(), hp("::1", 65535));
        assert_eq!(HostPort::parse("0.0.0.0:0").unwrap(), hp("0.0.0.0", 0));
        assert_eq!(hp("::1", 9).to_string(), "[::1]:9");
        assert_eq!(hp("localhost", 9).to_string(), "localhost:9");
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason_and_an_example() {
        for (addr, why) in [
            ("127.0.0.1", "expected HOST:PORT"),
            ("", "expected HOST:PORT"),
            (":8005", "host is missing"),
            ("localhost:", "port must be a number"),
            ("localhost:http", "port must be a number"),
            ("localhost:65536", "port must be a number"),
            ("::1:8005", "IPv6 address in brackets"),
            ("[::1:8005", "closing ']'"),
            ("[::1]8005", "expected [IPV6]:PORT"),
            ("[localhost]:8005", "not an IPv6 address"),
        ] {
            let e = HostPort::parse(addr).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, AddrError::Bad { .. }), "{addr:?}: {msg}");
            assert!(msg.contains(why), "{addr:?}: {msg:?} lacks {why:?}");
            assert!(
                msg.contains(&format!("{addr:?}")),
                "{msg:?} names no address"
            );
        }
        assert!(
            HostPort::parse_peer("localhost:0")
                .unwrap_err()
                .to_string()
                .contains("port 0")
        );
    }

    #[test]
    fn literal_addresses_resolve_without_the_resolver_and_names_do_resolve() {
        let v6 = HostPort::parse("[::1]:9").unwrap().resolve().unwrap();
        assert_eq!(v6, vec!["[::1]:9".parse::<SocketAddr>().unwrap()]);
        let local = HostPort::parse("localhost:9").unwrap().resolve().unwrap();
        assert!(
            local.iter().all(|a| a.ip().is_loopback() && a.port() == 9),
            "{local:?}"
        );
    }

    #[test]
    fn reason_drops_the_os_error_number() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(reason(&e), "Connection refused");
        assert_eq!(reason(&io::Error::other("plain")), "plain");
    }
}

//! How the clients show replies, times and what else arrived to a person.
//!
//! Reply bytes come from the network, so they are never written to a terminal raw: invalid UTF-8
//! is replaced and control characters are escaped, so a hostile or buggy server cannot move the
//! cursor or change the terminal's state. (Pipe mode writes reply bytes untouched: there they are
//! data, not display.)

use std::fmt::Write as _;
use std::time::Duration;

use super::Id;

/// `bytes` as one line of readable text: lossy UTF-8, control characters escaped (`\n`, `\u{1b}`),
/// and an empty reply shown as `(empty)` so that it is visible at all.
pub fn printable(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(empty)".to_string();
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Like [`printable`], quoted and cut to about `max` characters, for naming a line in a message.
pub fn quoted(bytes: &[u8], max: usize) -> String {
    let text = printable(bytes);
    if bytes.is_empty() {
        return "\"\"".to_string();
    }
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("\"{head}...\"")
    } else {
        format!("\"{head}\"")
    }
}

/// A round-trip time: milliseconds with microsecond resolution below a second, seconds above.
pub fn rtt(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// A configured timeout as the user wrote it: `1 s`, `0.25 s`.
pub fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Words for an arrival that is not the answer the user is waiting for (a reply that is, is shown
/// on its own: [`super::console::Console::reply`]). `addr` names the server.
pub fn describe(addr: &str, a: &Arrival) -> String {
    match a {
        // Only the line in flight can be waiting; kept total for safety.
        Arrival::Answer { reply, rtt: t, .. } => {
            format!("reply after {}: {}", rtt(*t), printable(reply))
        }
        Arrival::Late {
            line,
            reply,
            rtt: t,
        } => format!(
            "late reply to {} after {}: {}",
            quoted(line, 40),
            rtt(*t),
            printable(reply)
        ),
        Arrival::Duplicate { line, reply } => format!(
            "duplicate reply to {}: {}",
            quoted(line, 40),
            printable(reply)
        ),
        Arrival::Unasked(bytes) => format!(
            "{addr} sent {} bytes nobody asked for: {}",
            bytes.len(),
            printable(bytes)
        ),
        Arrival::Unexpected(reply) => format!(
            "unexpected reply, matching no line sent: {}",
            printable(reply)
        ),
        Arrival::Refused => refused(addr),
    }
}

/// An ICMP "port unreachable" from the UDP server at `addr`.
pub fn refused(addr: &str) -> String {
    format!("{addr} refused the datagram (ICMP port unreachable): nothing is listening there")
}

/// What the protocol's bookkeeping made of what arrived. Each protocol produces the kinds it can
/// tell apart; all are shown to the user the same way ([`describe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The whole reply to line `id`, which was still waited for.
    Answer {
        id: Id,
        reply: Vec<u8>,
        rtt: Duration,
    },
    /// The whole reply to a line already given up on (its timeout passed).
    Late {
        line: Vec<u8>,
        reply: Vec<u8>,
        rtt: Duration,
    },
    /// UDP: one more reply to a line already answered.
    Duplicate { line: Vec<u8>, reply: Vec<u8> },
    /// TCP: bytes beyond every reply owed.
    Unasked(Vec<u8>),
    /// UDP: a datagram that matches no line sent.
    Unexpected(Vec<u8>),
    /// UDP: an ICMP "port unreachable" for an earlier datagram; the line in flight, if any, will
    /// not be answered.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn printable_keeps_text_and_escapes_controls() {
        assert_eq!(printable(b"HELLO, WORLD"), "HELLO, WORLD");
        assert_eq!(printable("ÉTÉ".as_bytes()), "ÉTÉ");
        assert_eq!(printable(b"A\x1b[2JB\n"), "A\\u{1b}[2JB\\n");
        assert_eq!(printable(b"\xff"), "\u{fffd}");
        assert_eq!(printable(b""), "(empty)");
    }

    #[test]
    fn quoted_cuts_long_lines() {
        assert_eq!(quoted(b"hello", 10), "\"hello\"");
        assert_eq!(quoted(b"hello world", 5), "\"hello...\"");
        assert_eq!(quoted(b"", 5), "\"\"");
    }

    #[test]
    fn times_read_naturally() {
        assert_eq!(rtt(Duration::from_micros(183)), "0.183 ms");
        assert_eq!(rtt(Duration::from_millis(1532)), "1.532 s");
        assert_eq!(secs(Duration::from_secs(1)), "1 s");
        assert_eq!(secs(Duration::from_millis(250)), "0.25 s");
    }

    #[test]
    fn arrivals_name_the_line_they_answer() {
        let late = Arrival::Late {
            line: b"first".to_vec(),
            reply: b"FIRST".to_vec(),
            rtt: Duration::from_millis(1500),
        };
        assert_eq!(
            describe("h:1", &late),
            "late reply to \"first\" after 1.500 s: FIRST"
        );
        assert_eq!(
            describe("h:1", &Arrival::Unasked(b"\x1b".to_vec())),
            "h:1 sent 1 bytes nobody asked for: \\u{1b}"
        );
        assert!(describe("h:1", &Arrival::Refused).starts_with("h:1 refused the datagram"));
    }

    proptest! {
        #[test]
        fn printable_never_emits_control_characters(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(!printable(&v).chars().any(char::is_control));
        }
    }
}

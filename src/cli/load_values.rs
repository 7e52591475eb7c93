//! The values of `upecho load`'s flags, each checked on its own as clap reads it: source address
//! lists, durations with their floors, rates, message sizes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use upecho::load::{CHECK_INTERVAL, MAX_RATE, MAX_RUN_DURATION, MAX_TCP_MESSAGE, MIN_RATE};
use upecho::units::{parse_duration, parse_size};

/// Source addresses a `--source` list may name; far more than 127.0.0.0/8 needs for any `-c`.
const MAX_SOURCES: u128 = 1 << 16;

/// One or more source addresses to bind before connecting, from `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sources(pub Vec<IpAddr>);

impl FromStr for Sources {
    type Err = String;

    /// Parses `A`, `A-B` (inclusive) and comma-separated lists of both, IPv4 or IPv6.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (parse_ip(a)?, parse_ip(b)?),
                None => {
                    let a = parse_ip(item)?;
                    (a, a)
                }
            };
            let (lo, hi, v6) = match (lo, hi) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    (u128::from(u32::from(a)), u128::from(u32::from(b)), false)
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), true),
                _ => return Err(format!("range {item:?} mixes IPv4 and IPv6")),
            };
            if lo > hi {
                return Err(format!("range {item:?} runs backwards"));
            }
            if out.len() as u128 + (hi - lo + 1) > MAX_SOURCES {
                return Err(format!("more than {MAX_SOURCES} source addresses"));
            }
            for v in lo..=hi {
                out.push(if v6 {
                    IpAddr::V6(Ipv6Addr::from(v))
                } else {
                    // In range: both ends were IPv4.
                    IpAddr::V4(Ipv4Addr::from(v as u32))
                });
            }
        }
        Ok(Sources(out))
    }
}

pub(super) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", s.trim()))
}

/// A duration (as [`upecho::units::parse_duration`] reads it) from `floor` to a day; `why` says
/// what the floor is for. Zero is not "never" here (unlike `parse_duration_floor`): a window or
/// a timeout that never ends would let a stalled server pass.
pub(super) fn parse_bounded(s: &str, floor: Duration, why: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if (floor..=MAX_RUN_DURATION).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "`{s}` is not between {} s and {} s (a day){why}",
            floor.as_secs_f64(),
            MAX_RUN_DURATION.as_secs()
        ))
    }
}

pub(super) fn parse_warmup(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::ZERO, "")
}

pub(super) fn parse_window(s: &str) -> Result<Duration, String> {
    let floor = CHECK_INTERVAL.as_secs_f64();
    parse_bounded(
        s,
        CHECK_INTERVAL,
        &format!(
            " (at least {floor} s: idle workers look at the clock every {floor} s, so a shorter \
             window may count nothing)"
        ),
    )
}

pub(super) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let floor = CHECK_INTERVAL.as_secs_f64();
    parse_bounded(
        s,
        CHECK_INTERVAL,
        &format!(" (at least {floor} s: timeouts are checked every {floor} s)"),
    )
}

pub(super) fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (MIN_RATE..=MAX_RATE).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate between {MIN_RATE} and {MAX_RATE:e} messages/s (at least \
             {MIN_RATE}: a slower rate would hardly send a message in a day)"
        )),
    }
}

/// A message size (as [`upecho::units::parse_size`] reads it), 1 byte to 64 MiB.
pub(super) fn parse_msg_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if (1..=MAX_TCP_MESSAGE as u64).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "`{s}` is not a message size from 1 byte to {MAX_TCP_MESSAGE} (64 MiB)"
        ))
    }
}

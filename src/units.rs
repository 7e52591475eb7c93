//! Durations and sizes as users write them, one grammar for every subcommand.
//!
//! - A duration is a bare number of seconds (`5`, `0.5`, `1e-3`) or what `humantime` reads
//!   (`500ms`, `10s`, `5m`, `1h 30m`). Values past [`MAX_DURATION`] (`1e19`, `inf`, `1000000y`)
//!   saturate to it: that large means "never", and a deadline computed from it must not overflow
//!   the clock. Negative values and NaN are errors.
//! - A size is a number of bytes with an optional unit, read by `parse-size` with binary prefixes
//!   throughout, as nginx and Redis read them: `64KiB`, `64K` and `64KB` are all 65,536 bytes,
//!   `1M` is 1,048,576.
//!
//! Each parser returns a message that names what was wrong and shows a value that works, which
//! clap prints after the flag's name.

use std::time::Duration;

/// The longest duration any option takes: a hundred years, far beyond any real use.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration (see the module doc).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        if v.is_nan() || v < 0.0 {
            return Err(format!(
                "`{s}` is not a duration (e.g. 5, 0.5, 500ms, 10s, 5m)"
            ));
        }
        return Ok(Duration::try_from_secs_f64(v).map_or(MAX_DURATION, |d| d.min(MAX_DURATION)));
    }
    match humantime::parse_duration(t) {
        Ok(d) => Ok(d.min(MAX_DURATION)),
        Err(humantime::DurationError::NumberOverflow) => Ok(MAX_DURATION),
        Err(e) => Err(format!(
            "`{s}` is not a duration ({e}; e.g. 5, 0.5, 500ms, 10s, 5m)"
        )),
    }
}

/// [`parse_duration`], with 0 meaning "never" and anything else at least `floor`.
pub fn parse_duration_floor(s: &str, floor: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.is_zero() && d < floor {
        return Err(format!(
            "`{s}` is too short: 0 (never) or at least {}",
            humantime::format_duration(floor)
        ));
    }
    Ok(d)
}

/// Parses a size in bytes (see the module doc).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("`{s}` is not a size ({e}; e.g. 65536, 64KiB, 1M)"))
}

/// [`parse_size()`], at least 1 byte.
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("`{s}`: the size must be at least 1 byte")),
        n => Ok(n),
    }
}

/// A duration as the logs show it (`5s`, `500ms`, `100years`).
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_bare_seconds_and_units() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn absurd_durations_saturate_or_are_refused() {
        for big in [
            "1e19",
            "inf",
            "1e300",
            "99999999999999999999s",
            "1000000years",
        ] {
            assert_eq!(parse_duration(big).unwrap(), MAX_DURATION, "{big}");
        }
        for bad in ["-1", "nan", "soon", "", "5 parsecs"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("e.g."), "{bad}: {e}");
        }
        assert!(
            std::time::Instant::now()
                .checked_add(MAX_DURATION)
                .is_some()
        );
    }

    #[test]
    fn a_floor_refuses_tiny_values_but_zero_means_never() {
        let floor = Duration::from_millis(100);
        assert!(parse_duration_floor("1e-9", floor).is_err());
        assert!(parse_duration_floor("50ms", floor).is_err());
        assert_eq!(parse_duration_floor("0", floor).unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_floor("100ms", floor).unwrap(), floor);
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536").unwrap(), 65_536);
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("64K").unwrap(), 65_536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert!(parse_size("lots").unwrap_err().contains("e.g."));
        assert!(parse_size("-1").is_err());
        assert!(parse_nonzero_size("0").is_err());
    }
}

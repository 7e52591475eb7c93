//! HdrHistogram's interval log (`.hlog`): one compressed histogram per second of the run, the
//! format HdrHistogram's own `HistogramLogProcessor` reads, written as the run goes and read back
//! by `upecho load-merge`. Also the one text encoding of a histogram (V2 + deflate, base64) that
//! the log and the child processes of `--processes` share.
//!
//! What a log written here looks like (values in nanoseconds, as recorded):
//!
//! ```text
//! #upecho load: pingpong tcp to 127.0.0.1:8005, 50 connection(s), values in nanoseconds
//! #[Histogram log format version 1.3]
//! #[StartTime: 1767225600.000 (seconds since epoch), 2026-01-01T00:00:00Z]
//! #[BaseTime: 1767225600.000 (seconds since epoch), 2026-01-01T00:00:00Z]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=p0,0.000,1.000,812031.000,HISTFAAAAC...   (with --processes: each process's own second)
//! 0.000,1.000,912031.000,HISTFAAAAC...          (the whole run's second: what tools read)
//! ...
//! #upecho-report {"mode":"pingpong",...}         (the run's JSON report, for load-merge)
//! ```
//!
//! Untagged intervals are the whole run; `HistogramLogProcessor` reads only those unless given
//! `-tag p0`, so the same file gives the total and, with `--processes`, each process's part.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};

/// The comment line that carries the run's JSON report.
pub(crate) const REPORT_PREFIX: &str = "#upecho-report ";

/// A histogram as text: V2 with deflate, in base64 (the form the interval log uses).
pub(crate) fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec fails only for a histogram too large for the format's lengths,
    // which these bounded histograms never are.
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`encode`] (and of any interval log's histogram field).
pub(crate) fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram cannot be decoded: {e:?}"))
}

/// `serde(with)` for a histogram field carried as [`encode`]'s text.
pub(crate) mod serde_hist {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(h))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode(&text).map_err(serde::de::Error::custom)
    }
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An interval log being written. Errors are kept, not raised: the run goes on, and the first
/// one is reported when the log is finished.
pub struct HlogWriter {
    path: PathBuf,
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    began: bool,
    error: Option<io::Error>,
}

impl HlogWriter {
    /// Creates (truncates) the file at once, so that a path that cannot be written fails before
    /// the run rather than after it.
    pub fn create(path: &Path) -> io::Result<HlogWriter> {
        Ok(HlogWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(File::create(path)?),
            serializer: V2DeflateSerializer::new(),
            began: false,
            error: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn keep(&mut self, r: io::Result<()>) {
        if let Err(e) = r
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }

    /// Writes the header: `what` as a comment, then the format version, StartTime and BaseTime
    /// (both `start`, the start of the measurement window: interval timestamps count from it) and
    /// the legend, as HdrHistogram's own writer does.
    pub fn begin(&mut self, start: SystemTime, what: &str) {
        if self.began {
            return;
        }
        self.began = true;
        let secs = epoch_secs(start);
        let date = humantime::format_rfc3339_millis(start);
        let r = (|| {
            for line in what.lines() {
                writeln!(self.out, "#{line}")?;
            }
            writeln!(self.out, "#[Histogram log format version 1.3]")?;
            writeln!(
                self.out,
                "#[StartTime: {secs:.3} (seconds since epoch), {date}]"
            )?;
            writeln!(
                self.out,
                "#[BaseTime: {secs:.3} (seconds since epoch), {date}]"
            )?;
            writeln!(
                self.out,
                "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
            )
        })();
        self.keep(r);
    }

    /// One interval: `start` after the BaseTime, `length` long, tagged (a part) or not (the
    /// whole). Flushed at once, so the log is whole up to the last second even if the run is
    /// killed.
    pub(crate) fn interval(
        &mut self,
        h: &Histogram<u64>,
        start: Duration,
        length: Duration,
        tag: Option<&str>,
    ) {
        if self.error.is_some() {
            return;
        }
        let tag = tag.and_then(Tag::new);
        let r = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .and_then(|mut w| {
                w.write_histogram(h, start, length, tag)
                    .map_err(|e| io::Error::other(e.to_string()))
            })
            .and_then(|()| self.out.flush());
        self.keep(r);
    }

    /// Ends the log with the run's report (one line of JSON in a comment) and returns the first
    /// error met while writing it, if any.
    pub fn finish(mut self, report_json: &str) -> Result<(), String> {
        if !self.began {
            self.begin(SystemTime::now(), "upecho load (no interval was measured)");
        }
        let r = writeln!(self.out, "{REPORT_PREFIX}{report_json}").and_then(|()| self.out.flush());
        self.keep(r);
        match self.error {
            None => Ok(()),
            Some(e) => Err(format!("cannot write {}: {e}", self.path.display())),
        }
    }
}

/// One interval read back from a log.
#[derive(Debug)]
pub(crate) struct LoggedInterval {
    pub tag: Option<String>,
    /// Start, in seconds since the Unix epoch when the log has a BaseTime (or absolute
    /// timestamps), else since the log's own start.
    pub start: f64,
    pub length: f64,
    /// The histogram, still encoded: decoded when it is used, so a long log is never all in
    /// memory at once as histograms.
    pub encoded: String,
}

/// What a log holds.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub intervals: Vec<LoggedInterval>,
    /// The `#upecho-report` line's JSON, if the log has one.
    pub report: Option<String>,
}

/// Reads a whole interval log (any writer's: HdrHistogram's Java, C or Rust ones too).
pub(crate) fn read(bytes: &[u8]) -> Result<Log, String> {
    let mut log = Log::default();
    let mut base: Option<f64> = None;
    let mut start_time: Option<f64> = None;
    for entry in IntervalLogIterator::new(bytes) {
        match entry {
            Ok(LogEntry::BaseTime(d)) => base = Some(d.as_secs_f64()),
            Ok(LogEntry::StartTime(d)) => start_time = Some(d.as_secs_f64()),
            Ok(LogEntry::Interval(i)) => {
                let ts = i.start_timestamp().as_secs_f64();
                // HdrHistogram's reader's rule: with a BaseTime, timestamps are offsets from it;
                // with only a StartTime, offsets if they are much smaller than it (more than a
                // year), else absolute.
                let offset = match (base, start_time) {
                    (Some(b), _) => b,
                    (None, Some(s)) if ts < s - 365.0 * 86_400.0 => s,
                    _ => 0.0,
                };
                log.intervals.push(LoggedInterval {
                    tag: i.tag().map(|t| t.as_str().to_string()),
                    start: offset + ts,
                    length: i.duration().as_secs_f64(),
                    encoded: i.encoded_histogram().to_string(),
                });
            }
            Err(e) => return Err(format!("not an interval log: cannot parse it at {e:?}")),
        }
    }
    // The iterator skips comments, so the report line is looked for on its own.
    let text = String::from_utf8_lossy(bytes);
    log.report = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(REPORT_PREFIX))
        .map(str::to_string);
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn a_histogram_survives_its_text_form() {
        let h = hist(&[1, 1_000, 123_456, 59_000_000_000]);
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode("not base64!").is_err());
        assert!(decode("aGVsbG8=").is_err());
    }

    #[test]
    fn a_log_reads_back_with_tags_offsets_and_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.hlog");
        let mut w = HlogWriter::create(&path).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        w.begin(t0, "upecho load: test\nsecond line");
        let (a, b) = (hist(&[10, 20]), hist(&[30]));
        w.interval(&a, Duration::ZERO, Duration::from_secs(1), Some("p0"));
        w.interval(&b, Duration::from_secs(1), Duration::from_millis(500), None);
        w.finish("{\"ok\":true}").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#upecho load: test\n#second line\n#[Histogram log format version 1.3]\n#[StartTime: 1700000000.000 (seconds since epoch), 2023-11-14T22:13:20.000Z]\n"), "{text}");
        assert!(
            text.contains("\n\"StartTimestamp\",\"Interval_Length\""),
            "{text}"
        );
        assert!(text.contains("\nTag=p0,0.000,1.000,20.000,HISTF"), "{text}");
        let log = read(text.as_bytes()).unwrap();
        assert_eq!(log.intervals.len(), 2);
        assert_eq!(log.intervals[0].tag.as_deref(), Some("p0"));
        assert_eq!(decode(&log.intervals[0].encoded).unwrap(), a);
        assert_eq!(log.intervals[1].tag, None);
        assert_eq!(decode(&log.intervals[1].encoded).unwrap(), b);
        assert!((log.intervals[1].start - 1_700_000_001.0).abs() < 1e-6);
        assert!((log.intervals[1].length - 0.5).abs() < 1e-9);
        assert_eq!(log.report.as_deref(), Some("{\"ok\":true}"));
    }

    #[test]
    fn garbage_is_not_a_log() {
        // Histograms are decoded only when used: then a broken one says so.
        let log = read(b"1.0,2.0,3.0,@@@@\n").unwrap();
        assert!(decode(&log.intervals[0].encoded).is_err());
        assert!(read(b"hello\n").is_err());
        // Comments only: an empty log.
        assert!(read(b"#nothing here\n").unwrap().intervals.is_empty());
    }

    #[test]
    fn an_unwritable_path_fails_at_create() {
        assert!(HlogWriter::create(Path::new("/nonexistent-dir/x.hlog")).is_err());
    }
}

//! The JSON log line: one object per event, `timestamp`, `level`, the event's fields (the
//! message as `message`) and `target`, the shape tracing-subscriber's flattened JSON format
//! writes. Written straight into the line buffer with a small escaper and a per-second cached
//! date prefix: tracing-subscriber's JSON formatter goes through serde_json and an io-to-fmt
//! adaptor that re-validates UTF-8 on every fragment, which cost ~7 % of a cached-token request
//! in profiles, for one access line per request at the default level.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as single-line JSON objects (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut w, SystemTime::now())?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_char('"')?;
        let mut v = FieldWriter {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut v);
        v.result?;
        w.write_str(",\"target\":")?;
        write_json_str(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

struct FieldWriter<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.w.write_char(',')?;
        write_json_str(self.w, field.name())?;
        self.w.write_char(':')
    }

    fn put(&mut self, f: impl FnOnce(&mut Self) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = f(self);
        }
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(|s| {
            s.key(field)?;
            write_json_str(s.w, value)
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(|s| {
            s.key(field)?;
            write!(s.w, "{value}")
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(|s| {
            s.key(field)?;
            write!(s.w, "{value}")
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(|s| {
            s.key(field)?;
            s.w.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(|s| {
            s.key(field)?;
            if value.is_finite() {
                write!(s.w, "{value}")
            } else {
                s.w.write_str("null")
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(|s| {
            s.key(field)?;
            s.w.write_char('"')?;
            // Escape while formatting, without an intermediate String.
            write!(Escaper(s.w), "{value:?}")?;
            s.w.write_char('"')
        });
    }
}

/// A `fmt::Write` that JSON-escapes what passes through it.
struct Escaper<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

/// `s` as a JSON string literal.
pub fn write_json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    write_escaped(w, s)?;
    w.write_char('"')
}

/// `s` escaped for inside a JSON string (RFC 8259 section 7): `"`, `\` and control
/// characters; everything else, non-ASCII included, as is.
fn write_escaped(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so these slice bounds are char boundaries.
        w.write_str(&s[start..i])?;
        if esc.is_empty() {
            write!(w, "\\u{b:04x}")?;
        } else {
            w.write_str(esc)?;
        }
        start = i + 1;
    }
    w.write_str(&s[start..])
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-23T18:03:01.123456Z`. The date and time
/// up to the second are formatted once per second per thread.
fn write_timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    thread_local! {
        static PREFIX: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    PREFIX.with(|p| {
        let mut p = p.borrow_mut();
        if p.0 != secs {
            p.1.clear();
            civil(&mut p.1, secs)?;
            p.0 = secs;
        }
        w.write_str(&p.1)
    })?;
    write!(w, ".{:06}Z", d.subsec_micros())
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (proleptic Gregorian; H. Hinnant's days-to-civil).
fn civil(out: &mut String, secs: u64) -> fmt::Result {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(secs: u64, micros: u32) -> String {
        let mut s = String::new();
        write_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
        )
        .expect("fmt");
        s
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(ts(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(
            ts(1_795_392_000 + 65_001, 999_999),
            "2026-11-23T18:03:21.999999Z"
        );
        assert_eq!(ts(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
        assert_eq!(ts(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // the per-second cache is refreshed
        assert_eq!(ts(86_399, 1), "1970-01-01T23:59:59.000001Z");
        assert_eq!(ts(86_400, 1), "1970-01-02T00:00:00.000001Z");
    }

    #[test]
    fn strings_escape_like_serde_json() {
        for s in [
            "plain",
            "quote \" backslash \\ slash /",
            "ctl \n\r\t\u{0}\u{1f}\u{7f}",
            "ünïcødé ✓ 🙂",
            "",
        ] {
            let mut out = String::new();
            write_json_str(&mut out, s).expect("fmt");
            let back: String = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(back, s, "{out}");
        }
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        #[derive(Clone, Default)]
        struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Capture::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLine)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "jwks_sidecar::access",
                s = "a\"b",
                n = 42u64,
                neg = -3i64,
                ok = true,
                x = 1.5f64,
                inf = f64::INFINITY,
                shown = %"disp\nlay",
                dbg = ?Some("x"),
                "request"
            );
            tracing::warn!("second {}", 2);
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
        assert_eq!(v["message"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "jwks_sidecar::access");
        assert_eq!(v["s"], "a\"b");
        assert_eq!(v["n"], 42);
        assert_eq!(v["neg"], -3);
        assert_eq!(v["ok"], true);
        assert_eq!(v["x"], 1.5);
        assert!(v["inf"].is_null());
        assert_eq!(v["shown"], "disp\nlay");
        assert_eq!(v["dbg"], "Some(\"x\")");
        assert!(v["timestamp"].as_str().expect("ts").ends_with('Z'));
        let v: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON");
        assert_eq!(v["message"], "second 2");
        assert_eq!(v["level"], "WARN");
    }
}

//! Terminal printer: one compact line per span, or JSON lines (the
//! waterfall of `--print tree` is in `waterfall/`).
//!
//! Text is for a person tailing the output:
//! `16:07:17.123 python-app[4242] SERVER GET /users/{id} 200 OK 12.3ms trace=<32 hex> span=<16 hex> parent=<16 hex>`
//! JSON is one object per line for tools (`jq`).
//!
//! Span names, service names and error descriptions come from captured
//! traffic and process metadata, so control characters are escaped before
//! they reach a terminal.
use std::{
    fmt,
    io::{self, BufWriter, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{ExportError, SpanSink};
use crate::{
    config::PrintFormat,
    model::{hex, AttrValue, Attribute, FinishedSpan, SpanKind, SpanStatus},
};

/// Longest name/description shown in text mode; the rest is elided.
const MAX_TEXT_FIELD_CHARS: usize = 200;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Attributes whose value is shown as the span's status code in text mode.
const STATUS_CODE_KEYS: [&str; 3] = ["http.response.status_code", "db.response.status_code", "rpc.grpc.status_code"];

pub struct PrintSink {
    format: PrintFormat,
    out: Output,
}

#[derive(Clone)]
enum Output {
    Stdout,
    #[cfg(test)]
    Memory(std::sync::Arc<std::sync::Mutex<Vec<u8>>>),
}

impl Output {
    fn write_batch(&self, format: PrintFormat, batch: &[FinishedSpan]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let stdout = io::stdout();
                write_spans(format, batch, stdout.lock())
            }
            #[cfg(test)]
            Output::Memory(buf) => {
                let mut guard = buf.lock().map_err(|_| io::Error::other("test buffer poisoned"))?;
                write_spans(format, batch, &mut *guard)
            }
        }
    }
}

impl PrintSink {
    pub fn stdout(format: PrintFormat) -> PrintSink {
        PrintSink { format, out: Output::Stdout }
    }

    #[cfg(test)]
    pub(crate) fn memory(format: PrintFormat) -> (PrintSink, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (PrintSink { format, out: Output::Memory(buf.clone()) }, buf)
    }

    /// Prints a batch and hands it back (OTLP may still need it). The batch
    /// is None only if the writer thread died with it.
    ///
    /// Writing happens on a blocking thread: a paused terminal or a full pipe
    /// stalls this sink (and then fills the bounded queue), never a runtime
    /// worker.
    pub async fn print(&self, batch: Vec<FinishedSpan>) -> (Option<Vec<FinishedSpan>>, Result<(), ExportError>) {
        let format = self.format;
        let out = self.out.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = out.write_batch(format, &batch);
            (batch, result)
        })
        .await;
        match joined {
            Ok((batch, result)) => (Some(batch), result.map_err(ExportError::Stdout)),
            Err(e) => (None, Err(ExportError::Task(format!("printing spans: {e}")))),
        }
    }
}

impl SpanSink for PrintSink {
    async fn export(&mut self, batch: Vec<FinishedSpan>) -> Result<(), ExportError> {
        self.print(batch).await.1
    }

    async fn shutdown(&mut self) -> Result<(), ExportError> {
        Ok(())
    }
}

/// Writes spans through one buffer, flushed once at the end of the batch so
/// `tail -f` or a pipe sees each batch promptly and whole lines only.
pub fn write_spans<W: Write>(format: PrintFormat, batch: &[FinishedSpan], out: W) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, out);
    for span in batch {
        match format {
            // Trees are grouped by trace first (`waterfall`); a batch handed
            // here directly prints as lines.
            PrintFormat::Text | PrintFormat::Tree => write_text(&mut w, span)?,
            PrintFormat::Json => write_json(&mut w, span)?,
        }
    }
    w.flush()
}

pub(super) fn kind_str(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    }
}

/// Displays untrusted text on one line: control characters escaped, long
/// values cut.
pub(super) struct Clean<'a>(pub(super) &'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_TEXT_FIELD_CHARS {
                return f.write_str("…");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// 0.42ms, 3.21ms, 12.3ms, 1.234s.
pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// Wall-clock time of day in the local time zone (UTC if it can't be had).
pub(super) fn time_of_day(t: SystemTime) -> (u32, u32, u32, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let millis = since.subsec_millis();
    let secs = since.as_secs();
    let utc = || (((secs / 3600) % 24) as u32, ((secs / 60) % 60) as u32, (secs % 60) as u32, millis);
    let Ok(secs_t) = libc::time_t::try_from(secs) else { return utc() };
    // SAFETY: libc::tm is plain old data for which all-zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the
    // reentrant variant and writes only to `tm`.
    let res = unsafe { libc::localtime_r(&secs_t, &mut tm) };
    if res.is_null() {
        return utc();
    }
    (tm.tm_hour as u32, tm.tm_min as u32, tm.tm_sec as u32, millis)
}

pub(super) fn status_code(span: &FinishedSpan) -> Option<&AttrValue> {
    STATUS_CODE_KEYS.iter().find_map(|key| span.attr(key))
}

pub fn write_text<W: Write>(w: &mut W, span: &FinishedSpan) -> io::Result<()> {
    let (h, m, s, ms) = time_of_day(span.start);
    write!(
        w,
        "{h:02}:{m:02}:{s:02}.{ms:03} {}[{}] {} {}",
        Clean(&span.resource.service_name),
        span.resource.pid,
        kind_str(span.kind),
        Clean(&span.name)
    )?;
    match status_code(span) {
        Some(AttrValue::Int(code)) => write!(w, " {code}")?,
        Some(AttrValue::Str(code)) => write!(w, " {}", Clean(code.as_str()))?,
        Some(AttrValue::Bool(_)) | None => {}
    }
    match &span.status {
        SpanStatus::Unset => write!(w, " OK")?,
        SpanStatus::Error { description } if description.is_empty() => write!(w, " ERROR")?,
        SpanStatus::Error { description } => write!(w, " ERROR \"{}\"", Clean(description))?,
    }
    write!(w, " {} trace={} span={}", format_duration(span.duration()), hex(&span.trace_id), hex(&span.span_id))?;
    if let Some(parent) = &span.parent_span_id {
        write!(w, " parent={}", hex(parent))?;
    }
    writeln!(w)
}

struct JsonAttributes<'a>(&'a [Attribute]);

impl Serialize for JsonAttributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match value {
                AttrValue::Str(s) => map.serialize_entry(key, s.as_str())?,
                AttrValue::Int(i) => map.serialize_entry(key, i)?,
                AttrValue::Bool(b) => map.serialize_entry(key, b)?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct JsonSpan<'a> {
    service: &'a str,
    pid: u32,
    kind: &'static str,
    name: &'a str,
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    start_unix_nano: u64,
    end_unix_nano: u64,
    duration_ms: f64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_message: Option<&'a str>,
    attributes: JsonAttributes<'a>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

pub fn write_json<W: Write>(w: &mut W, span: &FinishedSpan) -> io::Result<()> {
    let (status, status_message) = match &span.status {
        SpanStatus::Unset => ("UNSET", None),
        SpanStatus::Error { description } => ("ERROR", Some(description.as_str())),
    };
    let record = JsonSpan {
        service: &span.resource.service_name,
        pid: span.resource.pid,
        kind: kind_str(span.kind),
        name: &span.name,
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: span.parent_span_id.as_ref().map(|p| hex(p)),
        start_unix_nano: unix_nanos(span.start),
        end_unix_nano: unix_nanos(span.end),
        duration_ms: span.duration().as_secs_f64() * 1000.0,
        status,
        status_message,
        attributes: JsonAttributes(&span.attributes),
    };
    serde_json::to_writer(&mut *w, &record).map_err(io::Error::other)?;
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::span;

    fn text(span: &FinishedSpan) -> String {
        let mut out = Vec::new();
        write_text(&mut out, span).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The line without its local-time prefix (time zone dependent).
    fn after_time(line: &str) -> &str {
        let (time, rest) = line.split_at(12);
        let b = time.as_bytes();
        assert!(b[2] == b':' && b[5] == b':' && b[8] == b'.', "time prefix in {line:?}");
        assert!(time.chars().filter(|c| c.is_ascii_digit()).count() == 9, "{line:?}");
        assert!(time.ends_with(".123"), "millis of the start time: {line:?}");
        rest
    }

    #[test]
    fn text_line_has_service_kind_name_status_duration_ids() {
        let line = text(&span("GET /users/{id}"));
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
        assert_eq!(
            after_time(line.trim_end()),
            " python-app[4242] SERVER GET /users/{id} 200 OK 12.3ms trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7"
        );
    }

    #[test]
    fn text_line_shows_error_parent_and_escapes_control_chars() {
        let mut s = span("SELECT users\n\x1b[31m");
        s.kind = SpanKind::Client;
        s.parent_span_id = Some([1, 2, 3, 4, 5, 6, 7, 8]);
        s.status = SpanStatus::Error { description: "duplicate key".into() };
        s.attributes = vec![("db.response.status_code", AttrValue::Str("23505".into()))];
        s.end = s.start + Duration::from_micros(850);
        let line = text(&s);
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(!line.contains('\x1b'), "{line:?}");
        assert_eq!(
            after_time(line.trim_end()),
            " python-app[4242] CLIENT SELECT users\\n\\u{1b}[31m 23505 ERROR \"duplicate key\" 0.85ms trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=0102030405060708"
        );
    }

    #[test]
    fn long_names_are_cut() {
        let line = text(&span(&"x".repeat(1000)));
        assert!(line.contains(&format!("{}…", "x".repeat(MAX_TEXT_FIELD_CHARS))), "{line}");
        assert!(!line.contains(&"x".repeat(MAX_TEXT_FIELD_CHARS + 1)));
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_micros(420)), "0.42ms");
        assert_eq!(format_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.234s");
    }

    #[test]
    fn json_line_has_all_keys() {
        let mut s = span("GET /users/{id}");
        s.parent_span_id = Some([0xaa; 8]);
        s.attributes.push(("http.request.method", AttrValue::Str("GET".into())));
        s.attributes.push(("error.flag", AttrValue::Bool(false)));
        let mut out = Vec::new();
        write_json(&mut out, &s).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["service"], "python-app");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["kind"], "SERVER");
        assert_eq!(v["name"], "GET /users/{id}");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["parent_span_id"], "aaaaaaaaaaaaaaaa");
        assert_eq!(v["start_unix_nano"].as_u64(), Some(1_700_000_000_123_000_000));
        assert_eq!(v["end_unix_nano"].as_u64(), Some(1_700_000_000_135_345_000));
        assert!((v["duration_ms"].as_f64().unwrap() - 12.345).abs() < 1e-9);
        assert_eq!(v["status"], "UNSET");
        assert!(v.get("status_message").is_none());
        assert_eq!(v["attributes"]["http.response.status_code"], 200);
        assert_eq!(v["attributes"]["http.request.method"], "GET");
        assert_eq!(v["attributes"]["error.flag"], false);

        let mut e = span("x");
        e.status = SpanStatus::Error { description: "boom".into() };
        let mut out = Vec::new();
        write_json(&mut out, &e).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["status"], "ERROR");
        assert_eq!(v["status_message"], "boom");
        assert!(v["parent_span_id"].is_null());
    }

    #[tokio::test]
    async fn sink_prints_a_batch_and_hands_it_back() {
        let (sink, buf) = PrintSink::memory(PrintFormat::Json);
        let (batch, result) = sink.print(vec![span("a"), span("b")]).await;
        result.unwrap();
        assert_eq!(batch.unwrap().len(), 2);
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let names: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }
}

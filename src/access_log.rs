//! The access log: one structured line per request on stdout (Envoy's access
//! log with the `RFCF` response-flags equivalent is the `cache` field).
//!
//! Each worker owns an [`AccessLog`] that appends lines to a private buffer and
//! writes it to stdout in one `write` when it passes 32 KiB or on the worker's
//! periodic flush (every 200 ms) — a hit never waits on the stdout lock. Lines
//! are whole: the buffer is only ever flushed at line boundaries.

use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;
use crate::http1::render::push_u64;
use crate::metrics::CacheResult;

/// Flush threshold for the per-worker buffer.
const FLUSH_AT: usize = 32 * 1024;

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    pub duration: Duration,
    pub cache: CacheResult,
    /// Status of the upstream response used, if one was made for this request.
    pub upstream_status: Option<u16>,
    pub peer: Option<std::net::SocketAddr>,
    pub user_agent: Option<&'a str>,
}

/// A worker's access-log buffer.
pub struct AccessLog {
    enabled: bool,
    format: LogFormat,
    worker: usize,
    buf: RefCell<Vec<u8>>,
}

impl AccessLog {
    pub fn new(enabled: bool, format: LogFormat, worker: usize) -> AccessLog {
        AccessLog {
            enabled,
            format,
            worker,
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT * 2)),
        }
    }

    /// Appends one line; flushes when the buffer is large.
    pub fn log(&self, e: &Entry<'_>) {
        if !self.enabled {
            return;
        }
        let mut buf = self.buf.borrow_mut();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        match self.format {
            LogFormat::Json => write_json(&mut buf, now, self.worker, e),
            LogFormat::Text => write_text(&mut buf, now, e),
        }
        if buf.len() >= FLUSH_AT {
            flush_buf(&mut buf);
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        flush_buf(&mut self.buf.borrow_mut());
    }
}

fn flush_buf(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the server down; the lines are dropped.
    let _ = out.write_all(buf);
    let _ = out.flush();
    buf.clear();
}

fn write_json(buf: &mut Vec<u8>, now: Duration, worker: usize, e: &Entry<'_>) {
    buf.extend_from_slice(b"{\"ts\":\"");
    rfc3339(buf, now);
    buf.extend_from_slice(b"\",\"type\":\"access\",\"worker\":");
    push_u64(buf, worker as u64);
    buf.extend_from_slice(b",\"method\":");
    push_json_str(buf, e.method);
    buf.extend_from_slice(b",\"path\":");
    push_json_str(buf, e.path);
    buf.extend_from_slice(b",\"status\":");
    push_u64(buf, e.status as u64);
    buf.extend_from_slice(b",\"bytes\":");
    push_u64(buf, e.bytes);
    buf.extend_from_slice(b",\"duration_us\":");
    push_u64(buf, e.duration.as_micros() as u64);
    buf.extend_from_slice(b",\"cache\":\"");
    buf.extend_from_slice(e.cache.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"upstream_status\":");
    match e.upstream_status {
        Some(s) => push_u64(buf, s as u64),
        None => buf.extend_from_slice(b"null"),
    }
    if let Some(peer) = e.peer {
        buf.extend_from_slice(b",\"peer\":\"");
        let _ = write!(buf, "{peer}");
        buf.push(b'"');
    }
    if let Some(ua) = e.user_agent {
        buf.extend_from_slice(b",\"user_agent\":");
        push_json_str(buf, ua);
    }
    buf.extend_from_slice(b"}\n");
}

fn write_text(buf: &mut Vec<u8>, now: Duration, e: &Entry<'_>) {
    rfc3339(buf, now);
    let _ = write!(
        buf,
        " {} {} {} {}B {:.3}ms {} upstream={}",
        e.method,
        e.path.escape_debug(),
        e.status,
        e.bytes,
        e.duration.as_secs_f64() * 1e3,
        e.cache.as_str(),
        e.upstream_status.map_or("-".to_string(), |s| s.to_string()),
    );
    buf.push(b'\n');
}

/// A JSON string literal, escaping quotes, backslashes and control characters.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                let _ = write!(buf, "\\u{:04x}", b);
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn rfc3339(buf: &mut Vec<u8>, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        buf,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    );
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            method: "GET",
            path: "/we\"ird\u{1}.tgz",
            status: 200,
            bytes: 1234,
            duration: Duration::from_micros(250),
            cache: CacheResult::Hit,
            upstream_status: None,
            peer: None,
            user_agent: Some("Helm/4.3"),
        }
    }

    #[test]
    fn json_line_is_valid_json() {
        let mut buf = Vec::new();
        write_json(
            &mut buf,
            Duration::from_millis(1_764_072_000_123),
            1,
            &entry(),
        );
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["path"], "/we\"ird\u{1}.tgz");
        assert_eq!(v["cache"], "HIT");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(v["upstream_status"], serde_json::Value::Null);
        assert_eq!(v["ts"], "2025-11-25T12:00:00.123Z");
    }

    #[test]
    fn text_line_is_one_line() {
        let mut buf = Vec::new();
        write_text(&mut buf, Duration::from_secs(0), &entry());
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s.lines().count(), 1);
        assert!(s.starts_with("1970-01-01T00:00:00.000Z GET "), "{s}");
        assert!(s.contains(" HIT upstream=-"), "{s}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}

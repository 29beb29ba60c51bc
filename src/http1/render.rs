//! Response-head rendering for the client-facing side: bytes pushed straight
//! into the caller's buffer, no `format!`, no per-header allocation.
//!
//! # What [`render`] writes, in order
//! `HTTP/1.1 <status> <reason>`, `Date`, `Content-Type`, `Content-Length` (or
//! `Transfer-Encoding: chunked` instead when [`ResponseHead::chunked`]), `ETag`, `Last-Modified`, `Cache-Control`, `Content-Range`, `Accept-Ranges:
//! bytes` (on 2xx, 304 and 416, the statuses where byte ranges are relevant),
//! `Allow`, `X-Cache`, the `extra` pairs in order, `Connection: close` when
//! `!keep_alive`, then the empty line. `None` fields are left out.
//!
//! # Invariants
//! - The output is always a well-formed head: a header whose value contains a
//!   control character (CR, LF, NUL, ... but not HTAB) is dropped, never
//!   written, so a value coming from the origin (ETag, Content-Type) cannot
//!   split the response. An `extra` name that is not a token is dropped too.
//! - A status outside 100..=999 is rendered as 500.
//! - `Date` comes from a per-thread cache refreshed at most once per second
//!   ([`http_date_now`]), so rendering reads the clock but formats no date.
//! - This module knows nothing about HTTP/1.0: a caller that keeps an HTTP/1.0
//!   connection alive adds `("Connection", "keep-alive")` to `extra`, and a
//!   caller never sets `chunked` for an HTTP/1.0 client (it cannot decode it).
//! - A head has at most one framing header: with `chunked`, `content_length`
//!   is ignored. The body's chunks are the caller's ([`chunk_prefix`],
//!   [`LAST_CHUNK`]).

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// The reason phrase for `status` (RFC 9110 names); `"Unknown"` for others.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The fields of a response head. Build with struct-update syntax from
/// [`ResponseHead::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_type: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    pub x_cache: Option<&'a str>,
    pub content_range: Option<&'a str>,
    pub allow: Option<&'a str>,
    /// The body follows as `Transfer-Encoding: chunked` (length unknown; the
    /// client can tell a complete body by its last chunk).
    pub chunked: bool,
    pub keep_alive: bool,
    /// Further headers, written in order after the named ones.
    pub extra: &'a [(&'a str, &'a str)],
}

impl ResponseHead<'_> {
    /// A head with only a status, keep-alive on, every optional field `None`.
    pub fn new(status: u16) -> ResponseHead<'static> {
        ResponseHead {
            status,
            content_length: None,
            content_type: None,
            etag: None,
            last_modified: None,
            cache_control: None,
            x_cache: None,
            content_range: None,
            allow: None,
            chunked: false,
            keep_alive: true,
            extra: &[],
        }
    }
}

/// The end of a chunked body: the zero-size last chunk, no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the line that opens a chunk of `len` bytes (`{hex}\r\n`); the
/// chunk's data and a closing `\r\n` follow. `len` must not be 0 (that is
/// [`LAST_CHUNK`]).
pub fn chunk_prefix(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_LEN: usize = 29;

/// A rendered `Date` value (IMF-fixdate), cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateValue([u8; DATE_LEN]);

impl DateValue {
    const EPOCH: DateValue = DateValue(*b"Thu, 01 Jan 1970 00:00:00 GMT");

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII: written from httpdate's output or the EPOCH constant.
        std::str::from_utf8(&self.0).unwrap_or("Thu, 01 Jan 1970 00:00:00 GMT")
    }

    fn format(now: SystemTime) -> Option<DateValue> {
        let s = httpdate::fmt_http_date(now);
        let bytes: [u8; DATE_LEN] = s.as_bytes().try_into().ok()?;
        Some(DateValue(bytes))
    }
}

thread_local! {
    /// (unix seconds the value was made for, value); `u64::MAX` = never.
    static DATE: Cell<(u64, DateValue)> = const { Cell::new((u64::MAX, DateValue::EPOCH)) };
}

/// The current time as a `Date` value, formatted at most once per second per
/// thread.
pub fn http_date_now() -> DateValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let (cached_secs, cached) = cell.get();
        if cached_secs == secs {
            return cached;
        }
        // A clock before 1970 or past year 9999 keeps the previous value.
        let value = DateValue::format(now).unwrap_or(cached);
        cell.set((secs, value));
        value
    })
}

/// Appends the decimal form of `n` (no allocation, no formatter).
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// True if `v` may be written as a field value (no CTL except HTAB).
fn value_ok(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// True if `n` is a non-empty token (RFC 9110 §5.6.2).
fn token_ok(n: &[u8]) -> bool {
    !n.is_empty()
        && n.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Appends `name: value\r\n` (name is trusted: a literal from this module).
#[inline]
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &str) {
    if !value_ok(value.as_bytes()) {
        return;
    }
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn push_opt(out: &mut Vec<u8>, name: &[u8], value: Option<&str>) {
    if let Some(v) = value {
        push_field(out, name, v);
    }
}

/// Appends the complete response head (through the empty line) to `out`.
pub fn render(head: &ResponseHead<'_>, out: &mut Vec<u8>) {
    let status = if (100..=999).contains(&head.status) {
        head.status
    } else {
        500
    };
    out.reserve(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(http_date_now().as_bytes());
    out.extend_from_slice(b"\r\n");
    push_opt(out, b"Content-Type", head.content_type);
    if head.chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if let Some(n) = head.content_length {
        out.extend_from_slice(b"Content-Length: ");
        push_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    push_opt(out, b"ETag", head.etag);
    push_opt(out, b"Last-Modified", head.last_modified);
    push_opt(out, b"Cache-Control", head.cache_control);
    push_opt(out, b"Content-Range", head.content_range);
    if (200..300).contains(&status) || status == 304 || status == 416 {
        out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
    }
    push_opt(out, b"Allow", head.allow);
    push_opt(out, b"X-Cache", head.x_cache);
    for (name, value) in head.extra {
        if token_ok(name.as_bytes()) {
            push_field(out, name.as_bytes(), value);
        }
    }
    if !head.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete small `text/plain` response: head plus `message` and a
/// newline as the body. A 405 carries `Allow: GET, HEAD`. Returns the body's length
/// (what the access log counts as sent once `out` is).
pub fn simple(status: u16, message: &str, keep_alive: bool, out: &mut Vec<u8>) -> u64 {
    simple_with(status, message, keep_alive, None, &[], out)
}

/// [`simple`] with an `X-Cache` value and `extra` headers (the proxy's answers
/// carry `X-Cache` and `Cache-Status` on every response).
pub fn simple_with(
    status: u16,
    message: &str,
    keep_alive: bool,
    x_cache: Option<&str>,
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> u64 {
    let head = ResponseHead {
        content_length: Some(message.len() as u64 + 1),
        content_type: Some("text/plain; charset=utf-8"),
        allow: (status == 405).then_some("GET, HEAD"),
        x_cache,
        keep_alive,
        extra,
        ..ResponseHead::new(status)
    };
    render(&head, out);
    out.extend_from_slice(message.as_bytes());
    out.push(b'\n');
    message.len() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(head: &ResponseHead<'_>) -> String {
        let mut out = Vec::new();
        render(head, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The head's lines without the Date line, and the Date value.
    fn split(s: &str) -> (Vec<&str>, &str) {
        assert!(s.ends_with("\r\n\r\n"), "no final empty line: {s:?}");
        let lines: Vec<&str> = s[..s.len() - 4].split("\r\n").collect();
        let date = lines
            .iter()
            .find_map(|l| l.strip_prefix("Date: "))
            .expect("Date header");
        let rest = lines
            .into_iter()
            .filter(|l| !l.starts_with("Date: "))
            .collect();
        (rest, date)
    }

    #[test]
    fn full_200_head() {
        let extra = [("Vary", "Accept-Encoding")];
        let head = ResponseHead {
            content_length: Some(123456),
            content_type: Some("application/gzip"),
            etag: Some("\"abc\""),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            cache_control: Some("public, max-age=300"),
            x_cache: Some("HIT"),
            extra: &extra,
            ..ResponseHead::new(200)
        };
        let s = rendered(&head);
        let (lines, date) = split(&s);
        assert_eq!(
            lines,
            [
                "HTTP/1.1 200 OK",
                "Content-Type: application/gzip",
                "Content-Length: 123456",
                "ETag: \"abc\"",
                "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT",
                "Cache-Control: public, max-age=300",
                "Accept-Ranges: bytes",
                "X-Cache: HIT",
                "Vary: Accept-Encoding",
            ]
        );
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn date_is_second_line() {
        let s = rendered(&ResponseHead::new(204));
        assert!(s.starts_with("HTTP/1.1 204 No Content\r\nDate: "), "{s}");
    }

    #[test]
    fn connection_close_only_when_not_keep_alive() {
        let s = rendered(&ResponseHead::new(200));
        assert!(!s.contains("Connection"));
        let s = rendered(&ResponseHead {
            keep_alive: false,
            ..ResponseHead::new(200)
        });
        assert!(s.ends_with("Connection: close\r\n\r\n"), "{s}");
    }

    #[test]
    fn partial_content_head() {
        let s = rendered(&ResponseHead {
            content_length: Some(100),
            content_range: Some("bytes 0-99/1000"),
            ..ResponseHead::new(206)
        });
        let (lines, _) = split(&s);
        assert_eq!(
            lines,
            [
                "HTTP/1.1 206 Partial Content",
                "Content-Length: 100",
                "Content-Range: bytes 0-99/1000",
                "Accept-Ranges: bytes",
            ]
        );
    }

    #[test]
    fn accept_ranges_only_where_ranges_matter() {
        for (status, expected) in [
            (200, true),
            (206, true),
            (304, true),
            (416, true),
            (404, false),
            (405, false),
            (502, false),
        ] {
            let s = rendered(&ResponseHead::new(status));
            assert_eq!(s.contains("Accept-Ranges: bytes\r\n"), expected, "{status}");
        }
    }

    #[test]
    fn zero_and_max_content_length() {
        let s = rendered(&ResponseHead {
            content_length: Some(0),
            ..ResponseHead::new(200)
        });
        assert!(s.contains("\r\nContent-Length: 0\r\n"));
        let s = rendered(&ResponseHead {
            content_length: Some(u64::MAX),
            ..ResponseHead::new(200)
        });
        assert!(s.contains("\r\nContent-Length: 18446744073709551615\r\n"));
    }

    #[test]
    fn chunked_head_has_no_length() {
        let s = rendered(&ResponseHead {
            chunked: true,
            content_length: Some(5),
            ..ResponseHead::new(200)
        });
        assert!(s.contains("\r\nTransfer-Encoding: chunked\r\n"), "{s}");
        assert!(!s.contains("Content-Length"), "{s}");
    }

    #[test]
    fn chunk_prefixes_are_hex() {
        for (len, line) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (32768, "8000\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_prefix(&mut out, len);
            assert_eq!(out, line.as_bytes());
        }
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }

    #[test]
    fn push_u64_matches_display() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            12345,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn values_with_control_chars_are_dropped() {
        let extra = [
            ("X-Ok", "a\tb"),
            ("X-Bad", "a\r\nSet-Cookie: x"),
            ("X-Nul", "a\0"),
            ("Bad Name", "v"),
            ("X-Colon:", "v"),
            ("", "v"),
        ];
        let s = rendered(&ResponseHead {
            etag: Some("\"a\"\r\nX-Injected: 1"),
            content_type: Some("text/plain\n"),
            extra: &extra,
            ..ResponseHead::new(200)
        });
        let (lines, _) = split(&s);
        assert_eq!(
            lines,
            ["HTTP/1.1 200 OK", "Accept-Ranges: bytes", "X-Ok: a\tb"]
        );
    }

    #[test]
    fn invalid_status_renders_as_500() {
        let s = rendered(&ResponseHead::new(42));
        assert!(
            s.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{s}"
        );
        let s = rendered(&ResponseHead::new(1000));
        assert!(s.starts_with("HTTP/1.1 500 "), "{s}");
    }

    #[test]
    fn reasons() {
        assert_eq!(reason(200), "OK");
        assert_eq!(reason(206), "Partial Content");
        assert_eq!(reason(304), "Not Modified");
        assert_eq!(reason(404), "Not Found");
        assert_eq!(reason(405), "Method Not Allowed");
        assert_eq!(reason(414), "URI Too Long");
        assert_eq!(reason(416), "Range Not Satisfiable");
        assert_eq!(reason(431), "Request Header Fields Too Large");
        assert_eq!(reason(502), "Bad Gateway");
        assert_eq!(reason(504), "Gateway Timeout");
        assert_eq!(reason(505), "HTTP Version Not Supported");
        assert_eq!(reason(299), "Unknown");
        let s = rendered(&ResponseHead::new(299));
        assert!(s.starts_with("HTTP/1.1 299 Unknown\r\n"));
    }

    #[test]
    fn simple_response_is_complete() {
        let mut out = Vec::new();
        simple(404, "not found", true, &mut out);
        let s = String::from_utf8(out).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "not found\n");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("\r\nContent-Type: text/plain; charset=utf-8"));
        assert!(head.contains("\r\nContent-Length: 10"));
        assert!(!head.contains("Connection"));
        assert!(!head.contains("Allow"));
    }

    #[test]
    fn simple_405_has_allow_and_close() {
        let mut out = b"previous".to_vec();
        simple(405, "method not allowed", false, &mut out);
        let s = String::from_utf8(out).unwrap();
        let s = s.strip_prefix("previous").expect("appends");
        assert!(s.contains("\r\nAllow: GET, HEAD\r\n"), "{s}");
        assert!(
            s.contains("\r\nConnection: close\r\n\r\nmethod not allowed\n"),
            "{s}"
        );
    }

    #[test]
    fn http_date_now_is_a_valid_current_date() {
        let d = http_date_now();
        let parsed = httpdate::parse_http_date(d.as_str()).unwrap();
        let now = SystemTime::now();
        let age = now.duration_since(parsed).unwrap_or_default();
        // Cached for at most one second; allow generous slack for slow CI.
        assert!(age.as_secs() < 60, "{age:?}");
        assert_ne!(d, DateValue::EPOCH);
        assert_eq!(d.as_bytes().len(), 29);
    }

    #[test]
    fn date_format_matches_httpdate() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(784111777);
        let d = DateValue::format(t).unwrap();
        assert_eq!(d.as_str(), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}

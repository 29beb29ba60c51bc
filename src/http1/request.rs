//! Server-side HTTP/1.1 request-head parser: strict, bounded, no I/O.
//!
//! [`parse_request`] takes the bytes received so far on a connection and
//! returns either a complete [`RequestHead`], [`Parsed::Partial`] (read more and
//! call again with the grown buffer), or a [`RequestError`] whose
//! [`status`](RequestError::status) the server answers before closing.
//!
//! # How it works
//! 1. A single pre-scan over the head finds the request line and the end of the
//!    header block, and enforces every byte-level rule *before* the head is
//!    complete: request-line length (414), header-block bytes and header count
//!    (431, so an endless header from a slowloris client is cut off), bare CR or
//!    LF, NUL and other control characters, non-ASCII in the request line, and
//!    obs-fold (a header line starting with SP/HTAB). The work per call is
//!    bounded by the limits, not by the size of `buf`.
//! 2. As soon as the request line is complete (before the headers arrive) it
//!    is classified by hand: HTTP/0.9 (no version) →
//!    [`RequestError::Http09`]; HTTP/2, HTTP/3 and the h2 preface → 505;
//!    `HTTP/1.2`..`HTTP/1.9` are served as 1.1 (httparse rejects them, so only
//!    on that rare path a scratch copy of the head is rewritten to `HTTP/1.1`);
//!    anything else that is not exactly `HTTP/1.0` / `HTTP/1.1` → 400.
//! 3. `httparse` tokenises the complete head into a stack array of headers.
//! 4. One pass over the headers applies the semantic rules: exactly one `Host`
//!    on HTTP/1.1 (at most one on 1.0), `Content-Length` strict and unique,
//!    `Transfer-Encoding` only as a single `chunked` (and never on HTTP/1.0),
//!    never both framings, `Connection` tokens for keep-alive. `Upgrade` is
//!    ignored: this server never switches protocols.
//!
//! # Invariants
//! - Every error means "answer (if [`RequestError::status`] is `Some`) and close
//!   the connection": the framing of what follows can no longer be trusted.
//! - Line terminators are CRLF only; a bare LF is refused as well (stricter than
//!   RFC 9112 §2.2 allows, deliberately: no request smuggling by line ending).
//! - `head_len` counts every byte of the head, including skipped leading empty
//!   lines and the final CRLFCRLF; the body (if any) starts at `buf[head_len]`.

/// Byte and count limits for one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method SP target SP version, without CRLF) → else 414.
    pub max_request_line: usize,
    /// Largest header block (everything after the request line's CRLF, the
    /// final empty line included) → else 431.
    pub max_header_bytes: usize,
    /// Most header fields → else 431. Values above 100 act as 100 (the size of
    /// the stack array handed to `httparse`).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8192,
            max_header_bytes: 32768,
            max_headers: 100,
        }
    }
}

/// The request method as far as this server cares: it serves GET and HEAD,
/// everything else is answered with 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// How the request body (if any) is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The method as sent, for logs; at most 16 characters.
    pub method_name: String,
    /// Raw request-target (origin-form or absolute-form); ASCII only. Turn it
    /// into a key with [`crate::http1::path::object_key`].
    pub target: String,
    /// 0 or 1 (a higher 1.x minor is reported as 1).
    pub minor_version: u8,
    /// HTTP/1.1: on unless `Connection: close`; HTTP/1.0: only with
    /// `Connection: keep-alive` (and no `close`).
    pub keep_alive: bool,
    pub body: BodyFraming,
    /// All `If-None-Match` fields joined with `, ` (it is a list field).
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`; `None` when sent more than once (invalid → ignored).
    pub if_modified_since: Option<String>,
    /// `Range`; `None` when sent more than once (invalid → ignored).
    pub range: Option<String>,
    /// First `User-Agent`.
    pub user_agent: Option<String>,
    /// `Accept-Encoding` (all fields) accepts gzip: `gzip` / `x-gzip`, or else
    /// `*`, with a non-zero q.
    pub accepts_gzip: bool,
    /// Bytes of `buf` consumed by the head, including leading empty lines and
    /// the final CRLFCRLF.
    pub head_len: usize,
}

/// Result of one parse attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Complete(RequestHead),
    /// The head is not complete yet and no limit is exceeded: read more.
    Partial,
}

/// Why a request head is refused. Every variant ends the connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    #[error("request line too long")]
    UriTooLong,
    #[error("request header fields too large")]
    HeaderFieldsTooLarge,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("HTTP/0.9 request")]
    Http09,
}

impl RequestError {
    /// The status to answer with, or `None` to close without answering
    /// (an HTTP/0.9 client cannot read an HTTP/1.1 status line).
    pub fn status(&self) -> Option<u16> {
        match self {
            RequestError::UriTooLong => Some(414),
            RequestError::HeaderFieldsTooLarge => Some(431),
            RequestError::BadRequest(_) => Some(400),
            RequestError::VersionNotSupported => Some(505),
            RequestError::Http09 => None,
        }
    }
}

/// Size of the stack array of header slots handed to `httparse`.
const HEADER_SLOTS: usize = 100;
/// Empty lines tolerated before the request line (RFC 9112 §2.2 asks for "at
/// least one"; more than a handful is noise or an attack).
const MAX_LEADING_EMPTY_LINES: usize = 8;
/// `method_name` is truncated to this many bytes.
const METHOD_NAME_MAX: usize = 16;

fn bad(reason: &'static str) -> RequestError {
    RequestError::BadRequest(reason)
}

/// Outcome of scanning one line.
enum Line {
    /// A CRLF was found; the line content (without CRLF) has this length.
    Complete(usize),
    /// No CRLF within the window; this many content bytes were seen.
    Partial(usize),
}

/// Scans `buf` for the end of one line, refusing bare CR, bare LF and control
/// characters (HTAB only when `allow_tab`), and bytes >= 0x80 unless
/// `allow_non_ascii`. Looks at no more than `max + 2` bytes: a line whose content
/// exceeds `max` is reported as `Partial(n)` with `n > max` (the caller decides
/// which limit error that is) even when its end lies further on.
fn scan_line(
    buf: &[u8],
    max: usize,
    allow_tab: bool,
    allow_non_ascii: bool,
) -> Result<Line, RequestError> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    let mut i = 0;
    while i < window.len() {
        let b = window[i];
        if (0x20..0x7f).contains(&b) {
            i += 1;
            continue;
        }
        match b {
            b'\r' => {
                return match window.get(i + 1) {
                    Some(b'\n') => Ok(Line::Complete(i)),
                    Some(_) => Err(bad("bare CR")),
                    // The CR is the last byte we may look at: either the
                    // buffer ends here (more is coming) or the content before
                    // it already exceeds `max` (the caller refuses it).
                    None => Ok(Line::Partial(i)),
                };
            }
            b'\n' => return Err(bad("bare LF")),
            b'\t' if allow_tab => {}
            0x80..=0xff if allow_non_ascii => {}
            0x80..=0xff => return Err(bad("non-ASCII byte in request line")),
            0 => return Err(bad("NUL byte in head")),
            _ => return Err(bad("control character in head")),
        }
        i += 1;
    }
    Ok(Line::Partial(window.len()))
}

/// Step 1a: skips leading empty lines and finds the request line, within
/// limits. Returns `(line_start, line_len)`; `Ok(None)` = partial.
fn scan_request_line(buf: &[u8], limits: &Limits) -> Result<Option<(usize, usize)>, RequestError> {
    // Leading empty lines (RFC 9112 §2.2).
    let mut start = 0;
    let mut empties = 0;
    loop {
        match buf.get(start) {
            None => return Ok(None),
            Some(b'\r') => match buf.get(start + 1) {
                None => return Ok(None),
                Some(b'\n') => {
                    start += 2;
                    empties += 1;
                    if empties > MAX_LEADING_EMPTY_LINES {
                        return Err(bad("too many empty lines before the request line"));
                    }
                }
                Some(_) => return Err(bad("bare CR")),
            },
            Some(b'\n') => return Err(bad("bare LF")),
            Some(_) => break,
        }
    }

    // Request line.
    let line_len = match scan_line(&buf[start..], limits.max_request_line, false, false)? {
        Line::Complete(n) if n <= limits.max_request_line => n,
        Line::Complete(_) => return Err(RequestError::UriTooLong),
        Line::Partial(n) if n > limits.max_request_line => return Err(RequestError::UriTooLong),
        Line::Partial(_) => return Ok(None),
    };
    Ok(Some((start, line_len)))
}

/// Step 1b: scans the header block starting at `headers_start` (just after the
/// request line's CRLF), within limits. Returns the total head length (through
/// the final CRLFCRLF); `Ok(None)` = partial.
fn scan_headers(
    buf: &[u8],
    headers_start: usize,
    limits: &Limits,
) -> Result<Option<usize>, RequestError> {
    let mut pos = headers_start;
    let mut count = 0usize;
    loop {
        let used = pos - headers_start;
        let rest = &buf[pos..];
        match rest.first() {
            None => return Ok(None),
            Some(b'\r') => match rest.get(1) {
                None => return Ok(None),
                Some(b'\n') => {
                    if used + 2 > limits.max_header_bytes {
                        return Err(RequestError::HeaderFieldsTooLarge);
                    }
                    return Ok(Some(pos + 2));
                }
                Some(_) => return Err(bad("bare CR")),
            },
            Some(b' ' | b'\t') => return Err(bad("obs-fold or whitespace before a header line")),
            Some(_) => {}
        }
        count += 1;
        if count > limits.max_headers {
            return Err(RequestError::HeaderFieldsTooLarge);
        }
        // Budget for this line's content: what is left of the block, minus this
        // line's CRLF and the final empty line.
        let budget = limits.max_header_bytes.saturating_sub(used + 4);
        match scan_line(rest, budget, true, true)? {
            Line::Complete(n) if n <= budget => pos += n + 2,
            Line::Complete(_) => return Err(RequestError::HeaderFieldsTooLarge),
            Line::Partial(n) if n > budget => return Err(RequestError::HeaderFieldsTooLarge),
            Line::Partial(_) => return Ok(None),
        }
    }
}

/// The HTTP version on the request line.
enum Version {
    /// 1.0 or 1.1, parseable by httparse as is.
    Plain,
    /// `HTTP/1.2`..`HTTP/1.9`: served as 1.1 after a rewrite for httparse.
    HigherMinor,
}

/// Step 2: classifies the request line before httparse sees it.
fn check_request_line(line: &[u8]) -> Result<Version, RequestError> {
    let Some(sp1) = line.iter().position(|&b| b == b' ') else {
        return Err(bad("malformed request line"));
    };
    let rest = &line[sp1 + 1..];
    let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
        // `GET /path` with no version: an HTTP/0.9 simple request.
        if sp1 > 0 && !rest.is_empty() {
            return Err(RequestError::Http09);
        }
        return Err(bad("malformed request line"));
    };
    if sp1 == 0 || sp2 == 0 {
        return Err(bad("malformed request line"));
    }
    let target = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    let version = match version {
        b"HTTP/1.1" => Version::Plain,
        b"HTTP/1.0" => Version::Plain,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => Version::HigherMinor,
        [b'H', b'T', b'T', b'P', b'/', major, tail @ ..]
            if major.is_ascii_digit()
                && *major != b'1'
                && (tail.is_empty() || matches!(tail, [b'.', d] if d.is_ascii_digit())) =>
        {
            return Err(RequestError::VersionNotSupported);
        }
        _ => return Err(bad("malformed HTTP version")),
    };
    if target == b"*" {
        return Err(bad("asterisk-form target"));
    }
    Ok(version)
}

/// Compares ASCII header names case-insensitively.
#[inline]
fn name_is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.as_bytes().eq_ignore_ascii_case(lower.as_bytes())
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A header value for logs only (`User-Agent`): invalid UTF-8 shows as U+FFFD.
fn value_string(v: &[u8]) -> String {
    String::from_utf8_lossy(trim_ows(v)).into_owned()
}

/// A header value the server acts on or sends upstream: ASCII, kept byte for
/// byte (a non-ASCII byte is a 400, never a lossy rewrite).
fn ascii_value(v: &[u8], non_ascii: &'static str) -> Result<String, RequestError> {
    match std::str::from_utf8(trim_ows(v)) {
        Ok(s) if s.is_ascii() => Ok(s.to_owned()),
        _ => Err(bad(non_ascii)),
    }
}

/// Strict `Content-Length`: 1*DIGIT, no sign, no list, no overflow.
fn parse_content_length(v: &[u8]) -> Result<u64, RequestError> {
    let v = trim_ows(v);
    if v.is_empty() {
        return Err(bad("empty Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(bad("malformed Content-Length"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(bad("Content-Length overflow"))?;
    }
    Ok(n)
}

/// Parses the request head at the start of `buf`.
///
/// Call again with the grown buffer after [`Parsed::Partial`]. After
/// `Complete(head)`, the body (per `head.body`) starts at `buf[head.head_len]`.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, RequestError> {
    let Some((line_start, line_len)) = scan_request_line(buf, limits)? else {
        return Ok(Parsed::Partial);
    };
    // Classify the request line as soon as it is complete: an HTTP/0.9 client
    // sends nothing after it, and an h2 client should learn early.
    let version = check_request_line(&buf[line_start..line_start + line_len])?;
    let Some(head_len) = scan_headers(buf, line_start + line_len + 2, limits)? else {
        return Ok(Parsed::Partial);
    };
    match version {
        Version::Plain => finish(&buf[..head_len], limits, head_len),
        Version::HigherMinor => {
            // Rare path: httparse only knows 1.0 and 1.1. The version's last byte
            // is the last byte of the request line.
            let mut scratch = buf[..head_len].to_vec();
            scratch[line_start + line_len - 1] = b'1';
            finish(&scratch, limits, head_len)
        }
    }
}

/// Steps 3 and 4 on a complete, pre-scanned head.
fn finish(head: &[u8], limits: &Limits, head_len: usize) -> Result<Parsed, RequestError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let n_slots = limits.max_headers.min(HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut slots[..n_slots]);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete head")),
        Err(e) => {
            return Err(match e {
                httparse::Error::TooManyHeaders => RequestError::HeaderFieldsTooLarge,
                httparse::Error::HeaderName => bad("invalid header name"),
                httparse::Error::HeaderValue => bad("invalid header value"),
                httparse::Error::Token => bad("invalid method or request target"),
                httparse::Error::Version => bad("malformed HTTP version"),
                httparse::Error::NewLine => bad("invalid line ending"),
                _ => bad("malformed request head"),
            })
        }
    }
    let (Some(method_name), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("incomplete request line"));
    };

    let mut hosts = 0u32;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut if_none_match: Option<String> = None;
    let mut if_modified_since: Option<String> = None;
    let mut ims_count = 0u32;
    let mut range: Option<String> = None;
    let mut range_count = 0u32;
    let mut user_agent: Option<String> = None;
    // q > 0 of `gzip` (or `x-gzip`), and of `*`, where listed.
    let (mut gzip_q, mut star_q): (Option<bool>, Option<bool>) = (None, None);

    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        match name.len() {
            4 if name_is(name, "host") => {
                hosts += 1;
                if hosts > 1 {
                    return Err(bad("more than one Host"));
                }
            }
            5 if name_is(name, "range") => {
                range_count += 1;
                let v = ascii_value(value, "non-ASCII byte in Range")?;
                range = (range_count == 1).then_some(v);
            }
            10 if name_is(name, "connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = trim_ows(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    }
                }
            }
            10 if user_agent.is_none() && name_is(name, "user-agent") => {
                user_agent = Some(value_string(value));
            }
            15 if name_is(name, "accept-encoding") => {
                for element in value.split(|&b| b == b',') {
                    let mut parts = element.split(|&b| b == b';');
                    let coding = trim_ows(parts.next().unwrap_or_default());
                    let nonzero = parts.all(|param| !q_is_zero(trim_ows(param)));
                    if coding.eq_ignore_ascii_case(b"gzip")
                        || coding.eq_ignore_ascii_case(b"x-gzip")
                    {
                        gzip_q = Some(gzip_q.unwrap_or(false) || nonzero);
                    } else if coding == b"*" {
                        star_q = Some(star_q.unwrap_or(false) || nonzero);
                    }
                }
            }
            13 if name_is(name, "if-none-match") => {
                let v = ascii_value(value, "non-ASCII byte in If-None-Match")?;
                match &mut if_none_match {
                    None => if_none_match = Some(v),
                    Some(s) => {
                        s.push_str(", ");
                        s.push_str(&v);
                    }
                }
            }
            14 if name_is(name, "content-length") => {
                if content_length.is_some() {
                    return Err(bad("duplicate Content-Length"));
                }
                content_length = Some(parse_content_length(value)?);
            }
            17 if name_is(name, "transfer-encoding") => {
                if chunked {
                    return Err(bad("more than one Transfer-Encoding"));
                }
                if !trim_ows(value).eq_ignore_ascii_case(b"chunked") {
                    return Err(bad("unsupported Transfer-Encoding"));
                }
                chunked = true;
            }
            17 if name_is(name, "if-modified-since") => {
                ims_count += 1;
                let v = ascii_value(value, "non-ASCII byte in If-Modified-Since")?;
                if_modified_since = (ims_count == 1).then_some(v);
            }
            _ => {}
        }
    }

    if minor == 1 && hosts == 0 {
        return Err(bad("missing Host"));
    }
    if chunked && content_length.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if chunked && minor == 0 {
        // RFC 9112 §6.1: framing of an HTTP/1.0 message with TE is faulty.
        return Err(bad("Transfer-Encoding on HTTP/1.0"));
    }

    let method = match method_name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let body = if chunked {
        BodyFraming::Chunked
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::None
    };
    let keep_alive = if minor == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    // The method is a token (ASCII), so a byte cut is a char boundary.
    let method_name = &method_name[..method_name.len().min(METHOD_NAME_MAX)];

    Ok(Parsed::Complete(RequestHead {
        method,
        method_name: method_name.to_owned(),
        target: target.to_owned(),
        minor_version: minor.min(1),
        keep_alive,
        body,
        if_none_match,
        if_modified_since,
        range,
        user_agent,
        accepts_gzip: gzip_q.or(star_q).unwrap_or(false),
        head_len,
    }))
}

/// Is this `Accept-Encoding` parameter `q=0` (`0`, `0.`, `0.0`, … `0.000`)?
fn q_is_zero(param: &[u8]) -> bool {
    let Some(q) = param
        .strip_prefix(b"q=")
        .or_else(|| param.strip_prefix(b"Q="))
    else {
        return false;
    };
    let q = trim_ows(q);
    match q.split_first() {
        Some((b'0', rest)) => {
            rest.is_empty() || (rest[0] == b'.' && rest[1..].iter().all(|&b| b == b'0'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Parsed, RequestError> {
        parse_request(buf, &Limits::default())
    }

    fn head(buf: &[u8]) -> RequestHead {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("expected complete head, got {other:?}"),
        }
    }

    fn err(buf: &[u8]) -> RequestError {
        match parse(buf) {
            Err(e) => e,
            other => panic!("expected error, got {other:?}"),
        }
    }

    fn status(buf: &[u8]) -> Option<u16> {
        err(buf).status()
    }

    const HELM: &[u8] = b"GET /charts/nginx-1.2.3.tgz HTTP/1.1\r\nHost: charts.example.com\r\nUser-Agent: Helm/4.3\r\nAccept-Encoding: gzip\r\n\r\n";

    #[test]
    fn typical_helm_request() {
        let h = head(HELM);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.method_name, "GET");
        assert_eq!(h.target, "/charts/nginx-1.2.3.tgz");
        assert_eq!(h.minor_version, 1);
        assert!(h.keep_alive);
        assert_eq!(h.body, BodyFraming::None);
        assert_eq!(h.user_agent.as_deref(), Some("Helm/4.3"));
        assert_eq!(h.if_none_match, None);
        assert_eq!(h.if_modified_since, None);
        assert_eq!(h.range, None);
        assert_eq!(h.head_len, HELM.len());
    }

    #[test]
    fn head_len_excludes_body_and_pipelined_bytes() {
        let mut buf = HELM.to_vec();
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        assert_eq!(head(&buf).head_len, HELM.len());
    }

    #[test]
    fn every_prefix_is_partial() {
        for n in 0..HELM.len() {
            assert_eq!(parse(&HELM[..n]), Ok(Parsed::Partial), "prefix {n}");
        }
    }

    #[test]
    fn conditional_and_range_headers_are_captured() {
        let h = head(
            b"HEAD /index.yaml HTTP/1.1\r\nhost: x\r\nIF-NONE-MATCH: \"abc\"\r\nIf-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\nrange: bytes=0-99\r\n\r\n",
        );
        assert_eq!(h.method, Method::Head);
        assert_eq!(h.if_none_match.as_deref(), Some("\"abc\""));
        assert_eq!(
            h.if_modified_since.as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );
        assert_eq!(h.range.as_deref(), Some("bytes=0-99"));
    }

    #[test]
    fn if_none_match_fields_are_joined() {
        let h = head(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nIf-None-Match: W/\"b\"\r\n\r\n",
        );
        assert_eq!(h.if_none_match.as_deref(), Some("\"a\", W/\"b\""));
    }

    #[test]
    fn duplicate_range_or_ims_is_ignored() {
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\nIf-Modified-Since: a\r\nIf-Modified-Since: b\r\n\r\n");
        assert_eq!(h.range, None);
        assert_eq!(h.if_modified_since, None);
    }

    #[test]
    fn accept_encoding_gzip_with_q() {
        let ae = |v: &str| {
            head(format!("GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: {v}\r\n\r\n").as_bytes())
                .accepts_gzip
        };
        assert!(ae("gzip"));
        assert!(ae("br, GZIP;q=0.5"));
        assert!(ae("x-gzip"));
        assert!(ae("*"));
        assert!(!ae("gzip;q=0"));
        assert!(!ae("gzip; q=0.000, br"));
        assert!(!ae("*, gzip;q=0"));
        assert!(!ae("identity"));
        assert!(!ae("br, zstd"));
        assert!(!head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").accepts_gzip);
        let two = head(
            b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: br\r\nAccept-Encoding: gzip\r\n\r\n",
        );
        assert!(two.accepts_gzip);
    }

    #[test]
    fn first_user_agent_wins() {
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n");
        assert_eq!(h.user_agent.as_deref(), Some("a"));
    }

    // --- keep-alive ---

    #[test]
    fn keep_alive_rules() {
        assert!(head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(
            !head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").keep_alive
        );
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: foo,  Keep-Alive \r\n\r\n").keep_alive);
        assert!(
            !head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn http10_without_host_is_fine() {
        let h = head(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.minor_version, 0);
    }

    // --- limits ---

    fn small() -> Limits {
        Limits {
            max_request_line: 32,
            max_header_bytes: 64,
            max_headers: 3,
        }
    }

    fn line_of(len: usize) -> Vec<u8> {
        // "GET /aaaa HTTP/1.1" with the target padded to make the line `len` long.
        let fixed = "GET / HTTP/1.1".len();
        let mut v = b"GET /".to_vec();
        v.extend(std::iter::repeat_n(b'a', len - fixed));
        v.extend_from_slice(b" HTTP/1.1");
        assert_eq!(v.len(), len);
        v
    }

    #[test]
    fn request_line_at_limit_is_accepted() {
        let mut buf = line_of(32);
        buf.extend_from_slice(b"\r\nHost: x\r\n\r\n");
        assert!(matches!(
            parse_request(&buf, &small()),
            Ok(Parsed::Complete(_))
        ));
    }

    #[test]
    fn request_line_over_limit_is_414() {
        let mut buf = line_of(33);
        buf.extend_from_slice(b"\r\nHost: x\r\n\r\n");
        let e = parse_request(&buf, &small()).unwrap_err();
        assert_eq!(e, RequestError::UriTooLong);
        assert_eq!(e.status(), Some(414));
    }

    #[test]
    fn incomplete_request_line_over_limit_is_414() {
        let buf = line_of(33);
        assert_eq!(parse_request(&buf, &small()), Err(RequestError::UriTooLong));
        // Still below the limit: wait for more.
        assert_eq!(parse_request(&buf[..32], &small()), Ok(Parsed::Partial));
        // Endless target without a version.
        let endless = [b"GET /".as_slice(), &[b'a'; 100_000]].concat();
        assert_eq!(parse(&endless), Err(RequestError::UriTooLong));
    }

    #[test]
    fn request_line_with_cr_right_after_limit_is_414() {
        let mut buf = line_of(33);
        buf.push(b'\r');
        assert_eq!(parse_request(&buf, &small()), Err(RequestError::UriTooLong));
        let mut buf = line_of(32);
        buf.push(b'\r');
        assert_eq!(parse_request(&buf, &small()), Ok(Parsed::Partial));
    }

    #[test]
    fn header_block_at_limit_is_accepted() {
        // Block = "Host: " + value + CRLF + CRLF = 64 bytes.
        let value = "v".repeat(64 - 6 - 4);
        let buf = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        assert!(matches!(
            parse_request(buf.as_bytes(), &small()),
            Ok(Parsed::Complete(_))
        ));
    }

    #[test]
    fn header_block_over_limit_is_431() {
        let value = "v".repeat(64 - 6 - 4 + 1);
        let buf = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        let e = parse_request(buf.as_bytes(), &small()).unwrap_err();
        assert_eq!(e, RequestError::HeaderFieldsTooLarge);
        assert_eq!(e.status(), Some(431));
    }

    #[test]
    fn header_block_over_limit_across_lines_is_431() {
        // Three headers, each fine on its own, together over 64 bytes.
        let buf = b"GET / HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxx\r\nA: xxxxxxxxxxxxxxxxxxxx\r\nB: xxxxxxxxxxxxxxx\r\n\r\n";
        assert_eq!(
            parse_request(buf, &small()),
            Err(RequestError::HeaderFieldsTooLarge)
        );
    }

    #[test]
    fn endless_header_is_cut_off_while_incomplete() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
        assert_eq!(parse(&buf), Ok(Parsed::Partial));
        buf.extend(std::iter::repeat_n(b'a', 40_000));
        assert_eq!(parse(&buf), Err(RequestError::HeaderFieldsTooLarge));
    }

    #[test]
    fn endless_stream_of_small_headers_is_cut_off() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..200 {
            buf.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        assert_eq!(parse(&buf), Err(RequestError::HeaderFieldsTooLarge));
    }

    #[test]
    fn too_many_headers_is_431() {
        let ok = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(
            parse_request(ok, &small()),
            Ok(Parsed::Complete(_))
        ));
        let over = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_request(over, &small()),
            Err(RequestError::HeaderFieldsTooLarge)
        );
        // Also while the fourth line is still incomplete.
        let partial = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC";
        assert_eq!(
            parse_request(partial, &small()),
            Err(RequestError::HeaderFieldsTooLarge)
        );
    }

    #[test]
    fn default_limit_allows_100_headers_not_101() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..99 {
            buf.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        let mut ok = buf.clone();
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&ok), Ok(Parsed::Complete(_))));
        buf.extend_from_slice(b"X-last: 1\r\n\r\n");
        assert_eq!(parse(&buf), Err(RequestError::HeaderFieldsTooLarge));
    }

    #[test]
    fn max_headers_above_slots_is_capped() {
        let limits = Limits {
            max_headers: 500,
            ..Limits::default()
        };
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..150 {
            buf.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&buf, &limits),
            Err(RequestError::HeaderFieldsTooLarge)
        );
    }

    // --- body framing ---

    #[test]
    fn content_length_is_parsed() {
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(42));
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(0));
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(u64::MAX));
    }

    #[test]
    fn chunked_is_parsed() {
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
    }

    #[test]
    fn content_length_and_transfer_encoding_is_400_either_order() {
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            Some(400)
        );
    }

    #[test]
    fn duplicate_content_length_is_400_even_if_equal() {
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Some(400)
        );
    }

    #[test]
    fn malformed_content_length_is_400() {
        for v in [
            "+5",
            "-1",
            "",
            "5a",
            "0x10",
            "5, 5",
            "1 2",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(
                err(buf.as_bytes()),
                RequestError::BadRequest(match v {
                    "" => "empty Content-Length",
                    "18446744073709551616" | "99999999999999999999999" => {
                        "Content-Length overflow"
                    }
                    _ => "malformed Content-Length",
                }),
                "value {v:?}"
            );
        }
    }

    #[test]
    fn transfer_encoding_other_than_single_chunked_is_400() {
        for v in [
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "gzip",
            "chunked,",
            "",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n");
            assert_eq!(status(buf.as_bytes()), Some(400), "value {v:?}");
        }
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
    }

    #[test]
    fn transfer_encoding_on_http10_is_400() {
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
    }

    // --- byte-level rules ---

    #[test]
    fn obs_fold_is_400() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
            RequestError::BadRequest("obs-fold or whitespace before a header line")
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n"),
            Some(400)
        );
        // Whitespace before the first header line.
        assert_eq!(status(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n"), Some(400));
        // Even before the head is complete.
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n b"), Some(400));
    }

    #[test]
    fn bare_cr_is_400() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n"),
            RequestError::BadRequest("bare CR")
        );
        assert_eq!(
            err(b"GET /\r HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("bare CR")
        );
        assert_eq!(
            err(b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("bare CR")
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: x\r\n\rX"),
            RequestError::BadRequest("bare CR")
        );
    }

    #[test]
    fn bare_lf_is_400() {
        assert_eq!(
            err(b"GET / HTTP/1.1\nHost: x\n\n"),
            RequestError::BadRequest("bare LF")
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: x\n\r\n"),
            RequestError::BadRequest("bare LF")
        );
        assert_eq!(
            err(b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("bare LF")
        );
    }

    #[test]
    fn nul_and_control_chars_are_400() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: x\0\r\n\r\n"),
            RequestError::BadRequest("NUL byte in head")
        );
        assert_eq!(
            err(b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("NUL byte in head")
        );
        for c in [0x01u8, 0x08, 0x0b, 0x0c, 0x1b, 0x1f, 0x7f] {
            let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a".to_vec();
            buf.push(c);
            buf.extend_from_slice(b"b\r\n\r\n");
            assert_eq!(
                err(&buf),
                RequestError::BadRequest("control character in head"),
                "byte {c:#x}"
            );
            let mut buf = b"GET /a".to_vec();
            buf.push(c);
            buf.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(status(&buf), Some(400), "byte {c:#x} in target");
        }
        // HTAB is fine inside a header value, not in the request line.
        assert!(head(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n").keep_alive);
        assert_eq!(status(b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n"), Some(400));
    }

    #[test]
    fn non_ascii_in_request_line_is_400_but_allowed_in_values() {
        assert_eq!(
            status("GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n".as_bytes()),
            Some(400)
        );
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfe\r\n\r\n");
        assert_eq!(h.user_agent.as_deref(), Some("\u{fffd}\u{fffd}"));
    }

    /// Values the server compares or sends upstream are kept byte for byte,
    /// or refused: never rewritten (a U+FFFD would reach the upstream, and
    /// its signature).
    #[test]
    fn non_ascii_in_conditional_and_range_values_is_400() {
        for name in ["If-None-Match", "If-Modified-Since", "Range"] {
            for value in [&b"\"caf\xc3\xa9\""[..], b"\"\xff\xfe\"", b"\"a\", \"\x80\""] {
                let mut raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: ").into_bytes();
                raw.extend_from_slice(value);
                raw.extend_from_slice(b"\r\n\r\n");
                assert_eq!(
                    err(&raw),
                    RequestError::BadRequest(match name {
                        "Range" => "non-ASCII byte in Range",
                        "If-None-Match" => "non-ASCII byte in If-None-Match",
                        _ => "non-ASCII byte in If-Modified-Since",
                    }),
                    "{name}: {value:?}"
                );
            }
        }
        let h = head(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match:  W/\"a~!\" \r\nIf-None-Match: \"b\"\r\n\r\n",
        );
        assert_eq!(h.if_none_match.as_deref(), Some("W/\"a~!\", \"b\""));
    }

    #[test]
    fn invalid_header_names_are_400() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nX(y): 1\r\n\r\n"),
            Some(400)
        );
    }

    // --- request line ---

    #[test]
    fn asterisk_target_is_400() {
        assert_eq!(
            err(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("asterisk-form target")
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\n\r\n"),
            RequestError::BadRequest("missing Host")
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nUser-Agent: a\r\n\r\n"),
            RequestError::BadRequest("missing Host")
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n"),
            RequestError::BadRequest("more than one Host")
        );
        assert_eq!(
            status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(400)
        );
    }

    #[test]
    fn http09_is_closed_silently() {
        let e = err(b"GET /\r\n");
        assert_eq!(e, RequestError::Http09);
        assert_eq!(e.status(), None);
        assert_eq!(err(b"GET /index.yaml\r\n\r\n"), RequestError::Http09);
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for line in [
            "GET\r\n",
            " GET / HTTP/1.1\r\n",
            "GET  / HTTP/1.1\r\n",
            "GET /  HTTP/1.1\r\n",
            "GET / HTTP/1.1 \r\n",
            "GET / \r\n",
            "GET / HTTP/1\r\n",
            "GET / HTTP/1.\r\n",
            "GET / HTTP/1.10\r\n",
            "GET / HTTPS/1.1\r\n",
            "GET / HTTP/1.a\r\n",
            "G(T / HTTP/1.1\r\n",
        ] {
            let buf = format!("{line}Host: x\r\n\r\n");
            assert_eq!(status(buf.as_bytes()), Some(400), "line {line:?}");
        }
    }

    #[test]
    fn newer_major_versions_are_505() {
        for v in [
            "HTTP/2.0", "HTTP/2", "HTTP/3", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9",
        ] {
            let buf = format!("GET / {v}\r\nHost: x\r\n\r\n");
            let e = err(buf.as_bytes());
            assert_eq!(e, RequestError::VersionNotSupported, "version {v}");
            assert_eq!(e.status(), Some(505));
        }
    }

    #[test]
    fn h2_prior_knowledge_preface_is_505() {
        assert_eq!(
            err(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            RequestError::VersionNotSupported
        );
    }

    #[test]
    fn version_verdicts_do_not_wait_for_the_headers() {
        assert_eq!(
            parse(b"PRI * HTTP/2.0\r\n"),
            Err(RequestError::VersionNotSupported)
        );
        assert_eq!(
            parse(b"GET / HTTP/3\r\nHo"),
            Err(RequestError::VersionNotSupported)
        );
        assert_eq!(
            parse(b"GET / http/1.1\r\n"),
            Err(RequestError::BadRequest("malformed HTTP version"))
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Ok(Parsed::Partial));
    }

    #[test]
    fn higher_minor_versions_are_served_as_11() {
        for d in 2..=9 {
            let buf = format!("GET /x HTTP/1.{d}\r\nHost: x\r\nConnection: close\r\n\r\n");
            let h = head(buf.as_bytes());
            assert_eq!(h.minor_version, 1);
            assert_eq!(h.target, "/x");
            assert!(!h.keep_alive);
            assert_eq!(h.head_len, buf.len());
        }
        // 1.1 rules apply: Host is required.
        assert_eq!(status(b"GET / HTTP/1.5\r\n\r\n"), Some(400));
    }

    #[test]
    fn lowercase_version_is_400() {
        assert_eq!(
            err(b"GET / http/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("malformed HTTP version")
        );
    }

    #[test]
    fn other_methods_are_other() {
        for m in [
            "CONNECT", "POST", "PUT", "DELETE", "OPTIONS", "get", "PURGE",
        ] {
            let buf = format!("{m} /x HTTP/1.1\r\nHost: x\r\n\r\n");
            let h = head(buf.as_bytes());
            assert_eq!(h.method, Method::Other, "{m}");
            assert_eq!(h.method_name, m);
        }
        let h = head(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(h.method, Method::Other);
        assert_eq!(h.target, "example.com:443");
    }

    #[test]
    fn long_method_name_is_truncated() {
        let h = head(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.method, Method::Other);
        assert_eq!(h.method_name, "ABCDEFGHIJKLMNOP");
    }

    #[test]
    fn absolute_form_target_is_kept_raw() {
        let h = head(b"GET http://x/a?b=c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.target, "http://x/a?b=c");
    }

    #[test]
    fn upgrade_is_ignored() {
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n");
        assert_eq!(h.method, Method::Get);
        assert!(h.keep_alive);
        let h = head(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(h.body, BodyFraming::None);
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let buf = [b"\r\n\r\n".as_slice(), HELM].concat();
        let h = head(&buf);
        assert_eq!(h.head_len, buf.len());
        assert_eq!(h.target, "/charts/nginx-1.2.3.tgz");
        assert_eq!(parse(b"\r\n"), Ok(Parsed::Partial));
        assert_eq!(parse(b"\r\n\r"), Ok(Parsed::Partial));
        let many = "\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1);
        assert_eq!(status(many.as_bytes()), Some(400));
    }

    #[test]
    fn header_values_are_trimmed() {
        let h = head(
            b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent:   Helm/4.3  \r\nContent-Length:  7 \r\n\r\n",
        );
        assert_eq!(h.user_agent.as_deref(), Some("Helm/4.3"));
        assert_eq!(h.body, BodyFraming::Length(7));
    }

    /// Deterministic mutation fuzzing: no input may panic, and a complete
    /// head never claims more bytes than the buffer holds.
    #[test]
    fn random_mutations_never_panic() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\r\n :\t\0/%.aZ0,\x7f\x80\xff";
        let limits = Limits {
            max_request_line: 40,
            max_header_bytes: 80,
            max_headers: 4,
        };
        for _ in 0..20_000 {
            let mut buf = HELM.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (buf.len() + 1);
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < buf.len() => buf[at] = byte,
                    1 => buf.insert(at, byte),
                    _ if at < buf.len() => {
                        buf.remove(at);
                    }
                    _ => {}
                }
            }
            for l in [&Limits::default(), &limits] {
                if let Ok(Parsed::Complete(h)) = parse_request(&buf, l) {
                    assert!(h.head_len <= buf.len());
                    assert!(buf[..h.head_len].ends_with(b"\r\n\r\n"));
                }
            }
        }
    }

    #[test]
    fn error_statuses() {
        assert_eq!(RequestError::UriTooLong.status(), Some(414));
        assert_eq!(RequestError::HeaderFieldsTooLarge.status(), Some(431));
        assert_eq!(RequestError::BadRequest("x").status(), Some(400));
        assert_eq!(RequestError::VersionNotSupported.status(), Some(505));
        assert_eq!(RequestError::Http09.status(), None);
    }
}

//! Client-side (upstream) HTTP/1.x response-head parser, strict and bounded.
//!
//! Owns: turning the bytes an origin sends into a [`ResponseHead`] with only the
//! fields chartcache uses, and deciding how the body is framed ([`BodyFraming`]).
//! Does not own: I/O, body decoding (see [`super::chunked`]), status mapping,
//! the meaning of any header beyond framing and validators: a caller that needs
//! another header names it ([`parse_response_keeping`]) and reads it from
//! [`ResponseHead::kept`] itself (an origin reads its vendor headers there).
//!
//! Invariants (each one is a unit test below):
//! - a head larger than [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`]
//!   header lines is an error, whether or not it is complete yet;
//! - bare CR, NUL or other control bytes inside a header value, obs-fold
//!   continuation lines and malformed status lines are errors (httparse rejects
//!   them) — such a response is answered 502, its headers never pass through;
//! - `Content-Length` must be 1+ ASCII digits fitting `u64`; duplicates must agree;
//! - `Content-Length` together with `Transfer-Encoding` is an error (smuggling);
//!   the only transfer coding accepted is a lone `chunked`;
//! - the headers that are kept (`ETag`, `Last-Modified`, `Content-Type`, and
//!   the ones the caller names) must be visible ASCII and unambiguous (differing
//!   duplicates are an error), because they are stored, re-served or logged;
//!   headers nobody asked for are dropped unread;
//! - [`KeptHeaders`] holds at most one value per name the caller asked for, so
//!   it is bounded by that list (and its bytes by [`MAX_HEAD_BYTES`]);
//! - a `100 Continue` interim head is returned as a head with status 100 and
//!   nothing else read from it (the caller skips it and parses the next head);
//!   any other 1xx is [`ResponseError::Informational`] naming its status.

/// Upper bound on the response head (status line + headers + final CRLF).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Upper bound on the number of header lines.
pub const MAX_HEADERS: usize = 100;

/// Why a response head was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} response headers")]
    TooManyHeaders,
    /// Status line or header syntax rejected by httparse (includes CR/LF/NUL in values).
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("differing duplicate Content-Length headers")]
    ConflictingContentLength,
    #[error("both Content-Length and Transfer-Encoding present")]
    LengthWithTransferEncoding,
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    #[error("header {0} is not visible ASCII")]
    BadHeaderValue(&'static str),
    #[error("differing duplicate {0} headers")]
    DuplicateHeader(&'static str),
    /// A 1xx other than `100 Continue` (101 Switching Protocols, 103 Early
    /// Hints, ...): chartcache never asks for one.
    #[error("unexpected informational response {0}")]
    Informational(u16),
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the server closes. The connection cannot be
    /// reused and a short body cannot be detected.
    UntilClose,
}

/// The parts of an upstream response head chartcache uses. Everything else is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// The connection must not be reused (`Connection: close`, or HTTP/1.0
    /// without `keep-alive`).
    pub connection_close: bool,
    /// The other headers the caller asked for ([`parse_response_keeping`]).
    pub kept: KeptHeaders,
}

/// Header values kept by name for the caller, checked like the typed fields:
/// visible ASCII (plus space/tab), trimmed, differing duplicates rejected. At
/// most one entry per requested name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptHeaders {
    /// `(name as the caller spelled it, value)`, in order of first appearance.
    entries: Vec<(&'static str, String)>,
}

impl KeptHeaders {
    /// The value of `name` (ASCII case-insensitive), if the response carried it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Record one occurrence of the requested header `name`.
    fn insert(&mut self, name: &'static str, value: &[u8]) -> Result<(), ResponseError> {
        let value = visible_ascii(name, value)?;
        match self.entries.iter().find(|(n, _)| *n == name) {
            Some((_, prev)) if prev != value => Err(ResponseError::DuplicateHeader(name)),
            Some(_) => Ok(()),
            None => {
                self.entries.push((name, value.to_owned()));
                Ok(())
            }
        }
    }
}

impl ResponseHead {
    /// How the body that follows this head is framed, for a request made with
    /// `head_request` = method HEAD.
    pub fn framing(&self, head_request: bool) -> BodyFraming {
        if head_request || self.status == 204 || self.status == 304 || self.status < 200 {
            BodyFraming::Empty
        } else if self.chunked {
            BodyFraming::Chunked
        } else if let Some(n) = self.content_length {
            BodyFraming::Length(n)
        } else {
            BodyFraming::UntilClose
        }
    }
}

/// Parse a response head from the start of `buf`, keeping no headers beyond
/// the typed fields of [`ResponseHead`].
///
/// `Ok(None)`: incomplete, read more (the caller keeps the bytes). `Ok(Some((head,
/// n)))`: the head is the first `n` bytes; the body starts at `buf[n..]`.
pub fn parse_response(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ResponseError> {
    parse_response_keeping(buf, &[])
}

/// [`parse_response`], also keeping the headers named in `keep` (matched ASCII
/// case-insensitively) in [`ResponseHead::kept`], under the same rules as the
/// typed fields. Names the parser interprets itself (framing, `Connection`,
/// validators, `Content-Type`) are never stored there.
pub fn parse_response_keeping(
    buf: &[u8],
    keep_names: &[&'static str],
) -> Result<Option<(ResponseHead, usize)>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(ResponseError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(e) => return Err(ResponseError::Malformed(httparse_reason(e))),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(ResponseError::HeadTooLarge);
    }
    let status = resp
        .code
        .ok_or(ResponseError::Malformed("no status code"))?;
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed("status code out of range"));
    }
    let version_minor = resp.version.ok_or(ResponseError::Malformed("no version"))?;
    if status == 100 {
        // Interim: its headers mean nothing for the response that follows.
        let head = ResponseHead {
            status,
            version_minor,
            ..ResponseHead::default()
        };
        return Ok(Some((head, head_len)));
    }
    if status < 200 {
        return Err(ResponseError::Informational(status));
    }

    let mut head = ResponseHead {
        status,
        version_minor,
        ..ResponseHead::default()
    };
    let mut transfer_encoding_seen = false;
    let mut te_codings: Vec<String> = Vec::new();
    let mut keep_alive = false;

    for h in resp.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_content_length(trim(part))?;
                match head.content_length {
                    Some(prev) if prev != n => return Err(ResponseError::ConflictingContentLength),
                    _ => head.content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding_seen = true;
            for part in value.split(|&b| b == b',') {
                let part = trim(part);
                if !part.is_empty() {
                    te_codings.push(String::from_utf8_lossy(part).to_ascii_lowercase());
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for part in value.split(|&b| b == b',') {
                let part = trim(part);
                if part.eq_ignore_ascii_case(b"close") {
                    head.connection_close = true;
                } else if part.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("etag") {
            keep(&mut head.etag, "ETag", value)?;
        } else if name.eq_ignore_ascii_case("last-modified") {
            keep(&mut head.last_modified, "Last-Modified", value)?;
        } else if name.eq_ignore_ascii_case("content-type") {
            keep(&mut head.content_type, "Content-Type", value)?;
        } else if let Some(&kept) = keep_names.iter().find(|k| name.eq_ignore_ascii_case(k)) {
            head.kept.insert(kept, value)?;
        }
    }

    if transfer_encoding_seen {
        if head.content_length.is_some() {
            return Err(ResponseError::LengthWithTransferEncoding);
        }
        if te_codings.len() != 1 || te_codings[0] != "chunked" {
            return Err(ResponseError::UnsupportedTransferEncoding);
        }
        head.chunked = true;
    }
    if version_minor == 0 && !keep_alive {
        head.connection_close = true;
    }
    Ok(Some((head, head_len)))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value (control byte, CR or LF)",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_content_length(s: &[u8]) -> Result<u64, ResponseError> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(ResponseError::BadContentLength);
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(ResponseError::BadContentLength)
    })
}

/// The trimmed value of a kept header, if it is visible ASCII (plus space/tab).
fn visible_ascii<'a>(name: &'static str, value: &'a [u8]) -> Result<&'a str, ResponseError> {
    let value = trim(value);
    if !value
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(ResponseError::BadHeaderValue(name));
    }
    // Checked above: ASCII only, so this cannot fail.
    std::str::from_utf8(value).map_err(|_| ResponseError::BadHeaderValue(name))
}

/// Store a typed kept header: visible ASCII (plus space/tab) only; duplicates must agree.
fn keep(slot: &mut Option<String>, name: &'static str, value: &[u8]) -> Result<(), ResponseError> {
    let value = visible_ascii(name, value)?;
    match slot {
        Some(prev) if prev != value => Err(ResponseError::DuplicateHeader(name)),
        Some(_) => Ok(()),
        None => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(raw: &[u8]) -> (ResponseHead, usize) {
        parse_response(raw).unwrap().expect("complete head")
    }

    #[test]
    fn parses_full_head() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Request-Id: ABC123\r\nETag: \"9a0364b9e99bb480dd25e1f0284c8555\"\r\nLast-Modified: Fri, 24 May 2013 00:00:00 GMT\r\nContent-Type: application/gzip\r\nContent-Length: 12\r\nServer: upstream\r\n\r\nhello world!";
        let (head, n) = parse_response_keeping(raw, &["x-request-id"])
            .unwrap()
            .expect("complete head");
        assert_eq!(&raw[n..], b"hello world!");
        assert_eq!(head.status, 200);
        assert_eq!(head.version_minor, 1);
        assert_eq!(
            head.etag.as_deref(),
            Some("\"9a0364b9e99bb480dd25e1f0284c8555\"")
        );
        assert_eq!(
            head.last_modified.as_deref(),
            Some("Fri, 24 May 2013 00:00:00 GMT")
        );
        assert_eq!(head.content_type.as_deref(), Some("application/gzip"));
        assert_eq!(head.content_length, Some(12));
        assert_eq!(head.kept.get("X-Request-ID"), Some("ABC123"));
        assert_eq!(head.kept.len(), 1, "Server was not asked for");
        assert!(parse_ok(raw).0.kept.is_empty(), "nothing kept unless asked");
        assert!(!head.chunked);
        assert!(!head.connection_close);
        assert_eq!(head.framing(false), BodyFraming::Length(12));
        assert_eq!(head.framing(true), BodyFraming::Empty);
    }

    #[test]
    fn partial_head_asks_for_more() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n";
        assert_eq!(parse_response(raw).unwrap(), None);
        assert_eq!(parse_response(b"HTT").unwrap(), None);
        assert_eq!(parse_response(b"").unwrap(), None);
    }

    #[test]
    fn oversized_head_is_rejected_even_when_incomplete() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_response(&raw), Err(ResponseError::HeadTooLarge));
        // Complete but too large.
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_response(&raw), Err(ResponseError::HeadTooLarge));
    }

    #[test]
    fn head_just_under_limit_is_accepted() {
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Big: ".to_vec();
        let fill = MAX_HEAD_BYTES - raw.len() - 4;
        raw.extend(std::iter::repeat_n(b'a', fill));
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw.len(), MAX_HEAD_BYTES);
        assert_eq!(parse_ok(&raw).1, MAX_HEAD_BYTES);
    }

    #[test]
    fn too_many_headers() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_response(&raw), Err(ResponseError::TooManyHeaders));
    }

    #[test]
    fn control_bytes_in_values_are_rejected() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nETag: \"a\rInjected: 1\"\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\nETag: \"a\0b\"\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n"[..],
        ] {
            assert!(
                matches!(parse_response(raw), Err(ResponseError::Malformed(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn obs_fold_is_rejected() {
        let raw = b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\n folded\r\n\r\n";
        assert!(matches!(
            parse_response(raw),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_status_lines() {
        for raw in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            &b"HTTP/2.0 200 OK\r\n\r\n"[..],
            &b"HTTP/1.1 OK\r\n\r\n"[..],
            &b"garbage\r\n\r\n"[..],
        ] {
            assert!(
                matches!(parse_response(raw), Err(ResponseError::Malformed(_))),
                "{raw:?}"
            );
        }
        let (interim, n) = parse_ok(b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert_eq!((interim.status, n), (100, 31));
        for (raw, status) in [
            (
                &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"[..],
                101,
            ),
            (&b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"[..], 103),
        ] {
            assert_eq!(
                parse_response(raw),
                Err(ResponseError::Informational(status))
            );
        }
    }

    #[test]
    fn content_length_rules() {
        let dup_same = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse_ok(dup_same).0.content_length, Some(5));
        let list_same = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n";
        assert_eq!(parse_ok(list_same).0.content_length, Some(5));
        let dup_diff = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(
            parse_response(dup_diff),
            Err(ResponseError::ConflictingContentLength)
        );
        let list_diff = b"HTTP/1.1 200 OK\r\nContent-Length: 5,6\r\n\r\n";
        assert_eq!(
            parse_response(list_diff),
            Err(ResponseError::ConflictingContentLength)
        );
        for bad in ["-1", "+5", "5a", "", "0x10", "99999999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(
                parse_response(raw.as_bytes()),
                Err(ResponseError::BadContentLength),
                "{bad}"
            );
        }
        let max = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", u64::MAX);
        assert_eq!(parse_ok(max.as_bytes()).0.content_length, Some(u64::MAX));
    }

    #[test]
    fn transfer_encoding_rules() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n";
        let head = parse_ok(chunked).0;
        assert!(head.chunked);
        assert_eq!(head.framing(false), BodyFraming::Chunked);
        let cl_te = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response(cl_te),
            Err(ResponseError::LengthWithTransferEncoding)
        );
        let te_cl = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            parse_response(te_cl),
            Err(ResponseError::LengthWithTransferEncoding)
        );
        for te in ["gzip, chunked", "gzip", "chunked, chunked", "identity", ""] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                parse_response(raw.as_bytes()),
                Err(ResponseError::UnsupportedTransferEncoding),
                "{te}"
            );
        }
        let two =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response(two),
            Err(ResponseError::UnsupportedTransferEncoding)
        );
    }

    #[test]
    fn connection_handling() {
        let close =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_ok(close).0.connection_close);
        let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_ok(http10).0.connection_close);
        let http10_ka = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse_ok(http10_ka).0.connection_close);
    }

    #[test]
    fn framing_by_status() {
        let not_modified =
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(parse_ok(not_modified).0.framing(false), BodyFraming::Empty);
        let no_len = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(parse_ok(no_len).0.framing(false), BodyFraming::UntilClose);
    }

    #[test]
    fn kept_header_rules() {
        let dup_etag = b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\nETag: \"b\"\r\n\r\n";
        assert_eq!(
            parse_response(dup_etag),
            Err(ResponseError::DuplicateHeader("ETag"))
        );
        let non_ascii = b"HTTP/1.1 200 OK\r\nContent-Type: text/\xffplain\r\n\r\n";
        assert_eq!(
            parse_response(non_ascii),
            Err(ResponseError::BadHeaderValue("Content-Type"))
        );
        // Non-ASCII in a header we drop is fine.
        let dropped = b"HTTP/1.1 200 OK\r\nX-Other: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_ok(dropped).0.status, 200);
    }

    const KEEP: &[&str] = &["x-hint", "x-id"];

    fn parse_keeping(raw: &[u8]) -> Result<ResponseHead, ResponseError> {
        parse_response_keeping(raw, KEEP).map(|r| r.expect("complete head").0)
    }

    #[test]
    fn named_headers_are_kept_case_insensitively_and_trimmed() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nX-HINT:  a b\t\r\nX-Other: o\r\nx-id: 7\r\nContent-Length: 0\r\n\r\n";
        let head = parse_keeping(raw).unwrap();
        assert_eq!(head.status, 403);
        assert_eq!(head.kept.get("x-hint"), Some("a b"));
        assert_eq!(head.kept.get("X-Id"), Some("7"));
        assert_eq!(head.kept.get("x-other"), None);
        assert_eq!(head.kept.len(), 2);
        // Absent names are simply absent.
        let none = parse_keeping(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(none.kept.is_empty());
        // Names the parser interprets stay in the typed fields.
        let typed = parse_response_keeping(
            b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n",
            &["etag"],
        )
        .unwrap()
        .expect("complete head")
        .0;
        assert_eq!(typed.etag.as_deref(), Some("\"e\""));
        assert!(typed.kept.is_empty());
    }

    #[test]
    fn kept_headers_reject_differing_duplicates_and_non_ascii() {
        let same = b"HTTP/1.1 200 OK\r\nx-id: 7\r\nX-Id: 7 \r\nContent-Length: 0\r\n\r\n";
        let head = parse_keeping(same).unwrap();
        assert_eq!(head.kept.get("x-id"), Some("7"));
        assert_eq!(head.kept.len(), 1, "agreeing duplicates are stored once");
        let cases: [(&[u8], ResponseError); 2] = [
            (
                b"HTTP/1.1 200 OK\r\nx-id: 7\r\nX-Id: 8\r\nContent-Length: 0\r\n\r\n",
                ResponseError::DuplicateHeader("x-id"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX-Hint: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
                ResponseError::BadHeaderValue("x-hint"),
            ),
        ];
        for (raw, want) in cases {
            let got = parse_keeping(raw);
            assert_eq!(got, Err(want), "{}", String::from_utf8_lossy(raw));
        }
        // The same bytes in a header nobody asked for are dropped unread.
        let dropped = b"HTTP/1.1 200 OK\r\nX-Other: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_keeping(dropped).unwrap().kept.is_empty());
    }

    #[test]
    fn kept_headers_stay_bounded_by_the_head_caps() {
        // Repeating a kept header up to the line cap stores one entry.
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for _ in 1..MAX_HEADERS {
            raw.extend_from_slice(b"x-id: 7\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_keeping(&raw).unwrap().kept.len(), 1);
        // One more line is over the cap, kept or not.
        let mut over = raw[..raw.len() - 2].to_vec();
        over.extend_from_slice(b"x-id: 7\r\n\r\n");
        assert_eq!(parse_keeping(&over), Err(ResponseError::TooManyHeaders));
        // A kept header does not lift the byte cap.
        let mut big = b"HTTP/1.1 200 OK\r\nx-hint: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(
            parse_response_keeping(&big, KEEP),
            Err(ResponseError::HeadTooLarge)
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_response_keeping(&big, KEEP),
            Err(ResponseError::HeadTooLarge)
        );
    }
}

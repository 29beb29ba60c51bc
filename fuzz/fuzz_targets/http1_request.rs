//! Fuzz target: the server's HTTP/1.1 request-head parser
//! (`chartcache::http1::request::parse_request`) and, for every target it accepts, the
//! path normalisation (`chartcache::http1::path::object_key`).
//!
//! Asserts the invariants the modules' docs state, not just "no panic":
//! - a complete head ends in CRLFCRLF within the buffer, holds no NUL, no bare CR or
//!   LF, no control byte but HTAB, an ASCII request line within `max_request_line`,
//!   a header block within `max_header_bytes`; its target is printable ASCII without
//!   SP; `method_name` is at most 16 bytes; chunked framing only on HTTP/1.1;
//! - the verdict does not depend on how the bytes arrived: every prefix of a complete
//!   head is `Partial`, bytes after the head change nothing, a prefix of a `Partial`
//!   buffer is `Partial`, and an error stays the same error when more bytes follow;
//! - an accepted key starts with `/`, has no empty, `.` or `..` segment, no `\`, no
//!   control character, is at most `MAX_KEY_LEN` bytes, and percent-encoding it again
//!   gives back the same key.
#![no_main]

use chartcache::http1::path::{object_key, MAX_KEY_LEN};
use chartcache::http1::request::{parse_request, BodyFraming, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches every limit error with short inputs.
const SMALL: Limits = Limits {
    max_request_line: 40,
    max_header_bytes: 80,
    max_headers: 4,
};

fuzz_target!(|buf: &[u8]| {
    for limits in [Limits::default(), SMALL] {
        check(buf, &limits);
    }
});

fn check(buf: &[u8], limits: &Limits) {
    let whole = parse_request(buf, limits);
    match &whole {
        Ok(Parsed::Complete(h)) => {
            assert!(h.head_len <= buf.len());
            let head = &buf[..h.head_len];
            assert!(head.ends_with(b"\r\n\r\n"), "{head:?}");
            check_bytes(head);
            // Leading empty lines, then the request line.
            let mut start = 0;
            while head[start..].starts_with(b"\r\n") {
                start += 2;
            }
            let line_len = find_crlf(&head[start..]).expect("request line ends in CRLF");
            let line = &head[start..start + line_len];
            assert!(line_len <= limits.max_request_line, "{line:?}");
            assert!(line.is_ascii(), "{line:?}");
            let block = h.head_len - (start + line_len + 2);
            assert!(
                block <= limits.max_header_bytes,
                "header block of {block} bytes"
            );
            assert!(!h.target.is_empty());
            assert!(
                h.target.bytes().all(|b| (0x21..0x7f).contains(&b)),
                "target {:?}",
                h.target
            );
            assert!(h.method_name.len() <= 16);
            assert!(h.minor_version <= 1);
            if h.body == BodyFraming::Chunked {
                assert_eq!(h.minor_version, 1);
            }
            for cut in cuts(h.head_len) {
                assert_eq!(
                    parse_request(&buf[..cut], limits),
                    Ok(Parsed::Partial),
                    "prefix of {cut} bytes of a complete head"
                );
            }
            assert_eq!(parse_request(head, limits), whole, "bytes after the head");
            if let Ok(key) = object_key(&h.target) {
                check_key(&h.target, &key);
            }
        }
        Ok(Parsed::Partial) => {
            for cut in cuts(buf.len()) {
                assert_eq!(
                    parse_request(&buf[..cut], limits),
                    Ok(Parsed::Partial),
                    "prefix of {cut} bytes of a partial head"
                );
            }
        }
        Err(e) => {
            let mut longer = buf.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                parse_request(&longer, limits).as_ref(),
                Err(e),
                "an error must not depend on what follows"
            );
        }
    }
}

/// A few prefix lengths shorter than `len` (bounded work per input).
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    [
        len / 3,
        len / 2,
        len.saturating_sub(3),
        len.saturating_sub(2),
        len.saturating_sub(1),
    ]
    .into_iter()
    .filter(move |&c| c < len)
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Byte-level rules over a whole accepted head.
fn check_bytes(head: &[u8]) {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(head.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && head[i - 1] == b'\r', "bare LF at {i}"),
            b'\t' => {}
            0..=0x1f | 0x7f => panic!("control byte {b:#x} at {i}"),
            _ => {}
        }
    }
    // No obs-fold: no header line starts with SP or HTAB.
    for w in head.windows(3) {
        if &w[..2] == b"\r\n" {
            assert!(w[2] != b' ' && w[2] != b'\t', "obs-fold");
        }
    }
}

/// The path module's invariant for an accepted key.
fn check_key(target: &str, key: &str) {
    assert!(key.starts_with('/'), "{target:?} -> {key:?}");
    assert!(key.len() <= MAX_KEY_LEN);
    assert!(
        !key.contains('\\') && !key.contains('%'),
        "{target:?} -> {key:?}"
    );
    assert!(!key.chars().any(char::is_control), "{target:?} -> {key:?}");
    if key != "/" {
        assert!(!key.contains("//"), "{target:?} -> {key:?}");
        for seg in key[1..].split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{target:?} -> {key:?}"
            );
        }
    }
    // Decoded exactly once: encoding the key again gives a target for the same key.
    let again = encode(key);
    assert_eq!(
        object_key(&again).as_deref(),
        Ok(key),
        "{target:?} -> {key:?} -> {again:?}"
    );
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

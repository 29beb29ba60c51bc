//! Conditional requests and byte ranges, evaluated against a stored object's
//! validators and length (RFC 9110 §13 and §14). Pure functions over strings.
//!
//! # Range ([`evaluate_range`])
//! Only a single `bytes=` range is honoured: `a-b`, `a-`, `-n`. Everything
//! else (another unit, several ranges, syntax errors, `b < a`) is ignored —
//! the full representation is served, which RFC 9110 §14.2 permits. A range
//! starting at or past the end, or a zero-length suffix, is unsatisfiable
//! (416). Numbers too large for `u64` saturate (a huge start is unsatisfiable,
//! a huge end is clipped to the last byte).
//!
//! # Not modified ([`not_modified`])
//! `If-None-Match` takes precedence: when present, `If-Modified-Since` is not
//! looked at (§13.1.3). `*` matches any stored object; otherwise the list is
//! compared with the weak comparison (`W/"x"` matches `"x"`, §8.8.3.2). A
//! malformed list matches nothing. `If-Modified-Since` is true only when both
//! dates parse and `Last-Modified` is not later than it. Callers evaluate this
//! only for GET and HEAD and only when they would otherwise answer 200.

use std::time::SystemTime;

/// What to serve for a `Range` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `start..=end_inclusive` (always within the length).
    Partial { start: u64, end_inclusive: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `1*DIGIT`, saturating at `u64::MAX`; `None` if empty or not all digits.
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Evaluates a `Range` header value against a representation of `len` bytes.
pub fn evaluate_range(range: Option<&str>, len: u64) -> RangeOutcome {
    let Some(range) = range else {
        return RangeOutcome::Full;
    };
    let range = range.trim_matches(is_ows);
    let Some(unit) = range.get(..6) else {
        return RangeOutcome::Full;
    };
    if !unit.eq_ignore_ascii_case("bytes=") {
        return RangeOutcome::Full;
    }
    let spec = range[6..].trim_matches(is_ows);
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeOutcome::Full;
    };
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(n) = parse_pos(last) else {
            return RangeOutcome::Full;
        };
        if n == 0 || len == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        return RangeOutcome::Partial {
            start: len - n.min(len),
            end_inclusive: len - 1,
        };
    }
    let Some(start) = parse_pos(first) else {
        return RangeOutcome::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_pos(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeOutcome::Full,
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial {
        start,
        end_inclusive: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

/// The opaque part of a stored entity-tag, for weak comparison: `W/` and the
/// quotes stripped (an unquoted stored value is taken as is).
fn opaque(etag: &str) -> &str {
    let e = etag.trim_matches(is_ows);
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(e)
}

/// Does the `If-None-Match` value match the stored `etag` (weak comparison)?
fn none_match_hits(if_none_match: &str, etag: Option<&str>) -> bool {
    let list = if_none_match.trim_matches(is_ows);
    if list == "*" {
        return true;
    }
    let Some(etag) = etag else {
        return false;
    };
    let want = opaque(etag);
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches(|c| is_ows(c) || c == ',');
        if rest.is_empty() {
            return false;
        }
        rest = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(after_quote) = rest.strip_prefix('"') else {
            return false; // malformed: matches nothing
        };
        let Some(close) = after_quote.find('"') else {
            return false;
        };
        if &after_quote[..close] == want {
            return true;
        }
        rest = after_quote[close + 1..].trim_start_matches(is_ows);
        if !rest.is_empty() && !rest.starts_with(',') {
            return false;
        }
    }
}

fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim_matches(is_ows)).ok()
}

/// True if the request's validators say the client's copy is current (304).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    if let Some(inm) = if_none_match {
        return none_match_hits(inm, etag);
    }
    let (Some(ims), Some(lm)) = (if_modified_since, last_modified) else {
        return false;
    };
    match (parse_date(ims), parse_date(lm)) {
        (Some(ims), Some(lm)) => lm <= ims,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeOutcome::*;

    fn r(range: &str, len: u64) -> RangeOutcome {
        evaluate_range(Some(range), len)
    }

    fn p(start: u64, end_inclusive: u64) -> RangeOutcome {
        Partial {
            start,
            end_inclusive,
        }
    }

    #[test]
    fn no_range_is_full() {
        assert_eq!(evaluate_range(None, 100), Full);
    }

    #[test]
    fn closed_ranges() {
        assert_eq!(r("bytes=0-99", 1000), p(0, 99));
        assert_eq!(r("bytes=10-10", 1000), p(10, 10));
        assert_eq!(r("bytes=0-0", 1), p(0, 0));
        assert_eq!(r("bytes=0-999", 1000), p(0, 999));
        // End past the last byte is clipped.
        assert_eq!(r("bytes=500-5000", 1000), p(500, 999));
        assert_eq!(r("bytes=0-99999999999999999999999", 1000), p(0, 999));
    }

    #[test]
    fn open_ranges() {
        assert_eq!(r("bytes=100-", 1000), p(100, 999));
        assert_eq!(r("bytes=0-", 1000), p(0, 999));
        assert_eq!(r("bytes=999-", 1000), p(999, 999));
    }

    #[test]
    fn suffix_ranges() {
        assert_eq!(r("bytes=-100", 1000), p(900, 999));
        assert_eq!(r("bytes=-1", 1000), p(999, 999));
        assert_eq!(r("bytes=-5000", 1000), p(0, 999));
        assert_eq!(r("bytes=-99999999999999999999999", 1000), p(0, 999));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(r("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(r("bytes=1000-2000", 1000), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-", 1000), Unsatisfiable);
        assert_eq!(r("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn unit_is_case_insensitive_and_ows_trimmed() {
        assert_eq!(r("Bytes=0-1", 10), p(0, 1));
        assert_eq!(r("BYTES=0-1", 10), p(0, 1));
        assert_eq!(r("  bytes= 0-1 ", 10), p(0, 1));
    }

    #[test]
    fn multi_range_is_ignored() {
        assert_eq!(r("bytes=0-1,5-6", 10), Full);
        assert_eq!(r("bytes=0-1, 5-6", 10), Full);
        assert_eq!(r("bytes=0-1,", 10), Full);
        assert_eq!(r("bytes=20-30,40-50", 10), Full);
    }

    #[test]
    fn garbage_is_ignored() {
        for g in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=abc",
            "bytes=1",
            "bytes=5-1",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=0x1-2",
            "bytes=1 -2",
            "bytes=1- 2",
            "bytes=1-2-3",
            "bytes=--1",
            "items=0-1",
            "bytes 0-1",
            "bytes=\u{e9}-1",
        ] {
            assert_eq!(r(g, 10), Full, "{g:?}");
        }
    }

    const ETAG: Option<&str> = Some("\"abc123\"");
    const LM: Option<&str> = Some("Wed, 21 Oct 2015 07:28:00 GMT");

    #[test]
    fn if_none_match_strong_and_weak() {
        assert!(not_modified(Some("\"abc123\""), None, ETAG, LM));
        assert!(not_modified(Some("W/\"abc123\""), None, ETAG, LM));
        assert!(not_modified(
            Some("\"abc123\""),
            None,
            Some("W/\"abc123\""),
            LM
        ));
        assert!(!not_modified(Some("\"abc124\""), None, ETAG, LM));
        assert!(!not_modified(Some("\"ABC123\""), None, ETAG, LM));
        assert!(!not_modified(Some("\"abc123\""), None, None, LM));
    }

    #[test]
    fn if_none_match_lists() {
        assert!(not_modified(Some("\"x\", \"abc123\""), None, ETAG, None));
        assert!(not_modified(
            Some("\"x\",W/\"abc123\",\"y\""),
            None,
            ETAG,
            None
        ));
        assert!(not_modified(
            Some(" , \"x\" ,, \"abc123\" "),
            None,
            ETAG,
            None
        ));
        assert!(!not_modified(Some("\"x\", \"y\""), None, ETAG, None));
        // A comma inside an entity-tag is part of it.
        assert!(not_modified(Some("\"a,b\""), None, Some("\"a,b\""), None));
        assert!(!not_modified(Some("\"a,b\""), None, Some("\"a\""), None));
    }

    #[test]
    fn if_none_match_star() {
        assert!(not_modified(Some("*"), None, ETAG, LM));
        assert!(not_modified(Some(" * "), None, None, None));
    }

    #[test]
    fn malformed_if_none_match_matches_nothing() {
        assert!(!not_modified(Some("abc123"), None, ETAG, None));
        assert!(!not_modified(Some("\"abc123"), None, ETAG, None));
        assert!(!not_modified(
            Some("\"x\" junk, \"abc123\""),
            None,
            ETAG,
            None
        ));
        assert!(!not_modified(Some("*, \"abc123\""), None, ETAG, None));
    }

    #[test]
    fn unquoted_stored_etag_is_compared_by_content() {
        assert!(not_modified(Some("\"abc123\""), None, Some("abc123"), None));
    }

    #[test]
    fn if_modified_since() {
        // Same second: not modified.
        assert!(not_modified(None, LM, ETAG, LM));
        // Later IMS: not modified.
        assert!(not_modified(
            None,
            Some("Thu, 22 Oct 2015 07:28:00 GMT"),
            ETAG,
            LM
        ));
        // Earlier IMS: modified.
        assert!(!not_modified(
            None,
            Some("Tue, 20 Oct 2015 07:28:00 GMT"),
            ETAG,
            LM
        ));
        // Obsolete date formats parse too.
        assert!(not_modified(
            None,
            Some("Wednesday, 21-Oct-15 07:28:00 GMT"),
            ETAG,
            LM
        ));
        assert!(not_modified(
            None,
            Some("Wed Oct 21 07:28:00 2015"),
            ETAG,
            LM
        ));
    }

    #[test]
    fn invalid_or_missing_dates_are_modified() {
        assert!(!not_modified(None, Some("yesterday"), ETAG, LM));
        assert!(!not_modified(None, LM, ETAG, None));
        assert!(!not_modified(None, LM, ETAG, Some("garbage")));
        assert!(!not_modified(None, None, ETAG, LM));
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let later = Some("Thu, 22 Oct 2015 07:28:00 GMT");
        // IMS alone would say 304; a non-matching INM says 200.
        assert!(!not_modified(Some("\"other\""), later, ETAG, LM));
        // IMS alone would say 200; a matching INM says 304.
        let earlier = Some("Tue, 20 Oct 2015 07:28:00 GMT");
        assert!(not_modified(Some("\"abc123\""), earlier, ETAG, LM));
    }
}

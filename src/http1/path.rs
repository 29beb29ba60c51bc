//! Request target → object key (the cache key, and the object's key relative to
//! the repository root), decoded exactly once and validated after decoding.
//!
//! # Rules
//! - Origin-form `/p?q` and absolute-form `http[s]://authority/p?q`; for the
//!   latter only the path is used (an empty path there means `/`, RFC 9110
//!   §4.2.3). The authority is not checked against anything here, but userinfo
//!   (`@`) is refused. Any other form (authority-form, `*`, other schemes) is
//!   refused.
//! - The query (`?...`) is dropped; a fragment (`#`) anywhere is refused.
//! - Percent escapes are decoded once. Refused: malformed escapes, a decoded
//!   `%` (double encoding such as `%252e`), an encoded `/` or `\` (`%2F`,
//!   `%5C`) and a literal `\`, decoded control characters (< 0x20, 0x7f, and the
//!   C1 controls U+0080..=U+009F),
//!   invalid UTF-8 (overlong forms such as `%c0%ae` included).
//! - Never normalised: empty segments (`//`, a trailing `/`) and `.` / `..`
//!   segments (literal or encoded) are refused, not resolved.
//! - The root `/` (also `/?list-type=2`, `http://h`) is a well-formed target
//!   but names no object — upstream it would be the bucket itself (S3
//!   ListObjects) — so it is refused as [`PathError::Root`], answered 404.
//! - The decoded key is at most [`MAX_KEY_LEN`] bytes.
//!
//! # Invariant
//! A key returned here names an object: it starts with `/`, is valid UTF-8
//! without control characters or `\`, and splitting it on `/` yields at
//! least one segment and only non-empty segments other than `.` and `..`
//! (so never the root, never a "directory" ending in `/`, and no query: no S3
//! sub-resource). Two different targets that decode to the same key are the
//! same object, so the cache and the origin always agree on what a key means.

use std::borrow::Cow;

/// Longest accepted key, in bytes after decoding.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a target cannot be turned into a key. Every variant maps to 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("fragment in request target")]
    Fragment,
    #[error("empty path")]
    EmptyPath,
    #[error("request target is neither origin-form nor http(s) absolute-form")]
    NotAbsolutePath,
    #[error("userinfo in absolute-form target")]
    UserInfo,
    #[error("malformed percent escape")]
    BadEscape,
    #[error("decoded '%' (double encoding)")]
    DoubleEncoding,
    #[error("encoded '/'")]
    EncodedSlash,
    #[error("backslash in path")]
    Backslash,
    #[error("control character in path")]
    ControlChar,
    #[error("invalid UTF-8 in path")]
    InvalidUtf8,
    #[error("empty path segment")]
    EmptySegment,
    #[error("dot segment in path")]
    DotSegment,
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("/ is the repository root, not an object")]
    Root,
}

impl PathError {
    /// The status to answer with: 404 for the root (a well-formed request for
    /// something that is not an object), 400 for every malformed target.
    pub fn status(&self) -> u16 {
        match self {
            PathError::Root => 404,
            _ => 400,
        }
    }
}

/// Returns the path part of `target` (query dropped), refusing fragments and
/// anything that is not origin-form or http(s) absolute-form.
fn raw_path(target: &str) -> Result<&str, PathError> {
    if target.contains('#') {
        return Err(PathError::Fragment);
    }
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        let rest = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))
            .ok_or(if target.is_empty() || target.starts_with('?') {
                PathError::EmptyPath
            } else {
                PathError::NotAbsolutePath
            })?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if authority.is_empty() {
            return Err(PathError::NotAbsolutePath);
        }
        if authority.contains('@') {
            return Err(PathError::UserInfo);
        }
        match &rest[authority_end..] {
            // RFC 9110 §4.2.3: an empty path in an http(s) URI is "/".
            "" => "/",
            p if p.starts_with('?') => "/",
            p => p,
        }
    };
    let path = match path_and_query.find('?') {
        Some(q) => &path_and_query[..q],
        None => path_and_query,
    };
    if path.is_empty() {
        return Err(PathError::EmptyPath);
    }
    Ok(path)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &s[prefix.len()..])
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes percent escapes once, refusing what must not appear decoded.
fn decode(path: &str) -> Result<Vec<u8>, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let d = hi << 4 | lo;
            match d {
                b'%' => return Err(PathError::DoubleEncoding),
                b'/' => return Err(PathError::EncodedSlash),
                _ => {}
            }
            out.push(d);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Checks the decoded key's bytes and segments (see the module doc).
fn validate(key: &[u8]) -> Result<(), PathError> {
    if key.len() > MAX_KEY_LEN {
        return Err(PathError::TooLong);
    }
    if key.first() != Some(&b'/') {
        return Err(PathError::NotAbsolutePath);
    }
    for (i, &b) in key.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlChar),
            // C1 controls U+0080..=U+009F, in UTF-8 `C2 80`..=`C2 9F` (any other
            // encoding of them is invalid UTF-8, refused below).
            0xc2 if matches!(key.get(i + 1), Some(0x80..=0x9f)) => {
                return Err(PathError::ControlChar)
            }
            _ => {}
        }
    }
    if key == b"/" {
        return Err(PathError::Root);
    }
    for segment in key[1..].split(|&b| b == b'/') {
        match segment {
            b"" => return Err(PathError::EmptySegment),
            b"." | b".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Turns a raw request target into the object key (starts with `/`).
pub fn object_key(target: &str) -> Result<Cow<'_, str>, PathError> {
    let path = raw_path(target)?;
    if !path.contains('%') {
        // Fast path: nothing to decode; `path` is already UTF-8 (no copy).
        validate(path.as_bytes())?;
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    validate(&decoded)?;
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| PathError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(target: &str) -> String {
        match object_key(target) {
            Ok(k) => k.into_owned(),
            Err(e) => panic!("{target:?} refused: {e}"),
        }
    }

    fn no(target: &str) -> PathError {
        match object_key(target) {
            Ok(k) => panic!("{target:?} accepted as {k:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/index.yaml"), "/index.yaml");
        assert_eq!(ok("/charts/nginx-1.2.3.tgz"), "/charts/nginx-1.2.3.tgz");
        assert_eq!(ok("/a/b/c"), "/a/b/c");
        assert_eq!(ok("/.well-known/x"), "/.well-known/x");
        assert_eq!(ok("/a/...b/..c/c.."), "/a/...b/..c/c..");
    }

    #[test]
    fn query_is_dropped() {
        assert_eq!(ok("/index.yaml?x=1"), "/index.yaml");
        assert_eq!(ok("/a?"), "/a");
        assert_eq!(ok("/a?b/../c"), "/a");
    }

    #[test]
    fn the_root_is_not_an_object() {
        for t in [
            "/",
            "/?list-type=2",
            "/?q=%zz",
            "/?acl",
            "http://h",
            "http://h?x",
        ] {
            assert_eq!(no(t), PathError::Root, "{t}");
            assert_eq!(no(t).status(), 404);
        }
        // An encoded `?` is part of a key, never a query (no sub-resource).
        assert_eq!(ok("/%3Facl"), "/?acl");
    }

    #[test]
    fn absolute_form_uses_only_the_path() {
        assert_eq!(ok("http://charts.example.com/index.yaml"), "/index.yaml");
        assert_eq!(ok("http://charts.example.com:8080/a/b.tgz?x"), "/a/b.tgz");
        assert_eq!(ok("HTTPS://h/a"), "/a");
        assert_eq!(ok("http://[::1]:80/a"), "/a");
    }

    #[test]
    fn other_forms_are_refused() {
        assert_eq!(no("example.com:443"), PathError::NotAbsolutePath);
        assert_eq!(no("*"), PathError::NotAbsolutePath);
        assert_eq!(no("ftp://h/a"), PathError::NotAbsolutePath);
        assert_eq!(no("index.yaml"), PathError::NotAbsolutePath);
        assert_eq!(no("http:///a"), PathError::NotAbsolutePath);
        assert_eq!(no("http://user:pw@h/a"), PathError::UserInfo);
    }

    #[test]
    fn empty_path_is_refused() {
        assert_eq!(no(""), PathError::EmptyPath);
        assert_eq!(no("?a=b"), PathError::EmptyPath);
    }

    #[test]
    fn fragment_is_refused() {
        assert_eq!(no("/a#b"), PathError::Fragment);
        assert_eq!(no("/a?x#b"), PathError::Fragment);
        assert_eq!(no("http://h/a#"), PathError::Fragment);
    }

    #[test]
    fn escapes_are_decoded_once() {
        assert_eq!(ok("/a%20b"), "/a b");
        assert_eq!(ok("/%41%42c"), "/ABc");
        assert_eq!(ok("/caf%C3%A9.tgz"), "/caf\u{e9}.tgz");
        assert_eq!(ok("/a%2Bb"), "/a+b");
        // A decoded key that looks like an escape is not decoded again.
        assert_eq!(ok("/a%3F"), "/a?");
    }

    #[test]
    fn bad_escapes_are_refused() {
        for t in ["/a%", "/a%2", "/a%zz", "/a%2g", "/%%41", "/a%+1"] {
            assert_eq!(no(t), PathError::BadEscape, "{t}");
        }
    }

    #[test]
    fn double_encoding_is_refused() {
        assert_eq!(no("/%252e%252e/x"), PathError::DoubleEncoding);
        assert_eq!(no("/a%25"), PathError::DoubleEncoding);
    }

    #[test]
    fn encoded_slash_and_backslash_are_refused() {
        assert_eq!(no("/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(no("/a%2fb"), PathError::EncodedSlash);
        assert_eq!(no("/a%5Cb"), PathError::Backslash);
        assert_eq!(no("/a%5cb"), PathError::Backslash);
        assert_eq!(no("/a\\b"), PathError::Backslash);
        assert_eq!(no("/..\\x"), PathError::Backslash);
    }

    #[test]
    fn control_chars_are_refused() {
        assert_eq!(no("/a%00b"), PathError::ControlChar);
        assert_eq!(no("/a%0d%0aX: y"), PathError::ControlChar);
        assert_eq!(no("/a%1F"), PathError::ControlChar);
        assert_eq!(no("/a%7f"), PathError::ControlChar);
        assert_eq!(no("/a\tb"), PathError::ControlChar);
        assert_eq!(no("/a\u{7f}"), PathError::ControlChar);
    }

    /// Found by fuzzing (fuzz/ `http1_request`): C1 controls (U+0080..=U+009F) are
    /// control characters too; `%C2%9B` is a terminal's CSI.
    #[test]
    fn c1_control_chars_are_refused() {
        assert_eq!(no("/c/.a./%C2%9A/aA9/a"), PathError::ControlChar);
        assert_eq!(no("/a%c2%80b"), PathError::ControlChar);
        assert_eq!(no("/a%C2%9F"), PathError::ControlChar);
        assert_eq!(no("/a\u{85}b"), PathError::ControlChar);
        // Their neighbours are ordinary characters.
        assert_eq!(ok("/a%C2%A0b"), "/a\u{a0}b");
        assert_eq!(ok("/a%C3%80b"), "/a\u{c0}b");
    }

    #[test]
    fn empty_segments_are_refused() {
        assert_eq!(no("//"), PathError::EmptySegment);
        assert_eq!(no("//a"), PathError::EmptySegment);
        assert_eq!(no("/a//b"), PathError::EmptySegment);
        assert_eq!(no("/a/"), PathError::EmptySegment);
        assert_eq!(no("/charts/"), PathError::EmptySegment);
        assert_eq!(no("http://h//a"), PathError::EmptySegment);
    }

    #[test]
    fn dot_segments_are_refused() {
        for t in [
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a/..",
            "/../etc/passwd",
            "/%2e",
            "/%2e%2e",
            "/%2E%2e/x",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2E",
            "http://h/a/../b",
        ] {
            assert_eq!(no(t), PathError::DotSegment, "{t}");
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(no("/%c0%ae%c0%ae/x"), PathError::InvalidUtf8);
        assert_eq!(no("/%c0%af"), PathError::InvalidUtf8);
        assert_eq!(no("/%ff"), PathError::InvalidUtf8);
        assert_eq!(no("/%C3"), PathError::InvalidUtf8);
        assert_eq!(no("/%ed%a0%80"), PathError::InvalidUtf8); // UTF-16 surrogate
    }

    #[test]
    fn length_limit_applies_after_decoding() {
        let at = format!("/{}", "a".repeat(MAX_KEY_LEN - 1));
        assert_eq!(ok(&at).len(), MAX_KEY_LEN);
        let over = format!("/{}", "a".repeat(MAX_KEY_LEN));
        assert_eq!(no(&over), PathError::TooLong);
        // 3 raw bytes per decoded byte: long raw, short key is fine.
        let encoded = format!("/{}", "%41".repeat(MAX_KEY_LEN - 1));
        assert_eq!(ok(&encoded).len(), MAX_KEY_LEN);
        let encoded_over = format!("/{}", "%41".repeat(MAX_KEY_LEN));
        assert_eq!(no(&encoded_over), PathError::TooLong);
    }

    /// Deterministic random targets: no panic, and every accepted key holds
    /// the module invariant.
    #[test]
    fn random_targets_keep_the_invariant() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "/",
            ".",
            "..",
            "%",
            "%2e",
            "%2E",
            "%2f",
            "%25",
            "%5c",
            "%c0%ae",
            "%00",
            "%41",
            "a",
            "?",
            "#",
            "\\",
            "http://h",
            "%e2%82%ac",
            "\u{e9}",
        ];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut t = String::new();
            for _ in 0..(next() % 8 + 1) {
                t.push_str(pieces[(next() as usize) % pieces.len()]);
            }
            let Ok(key) = object_key(&t) else { continue };
            accepted += 1;
            assert!(key.starts_with('/'), "{t:?} -> {key:?}");
            assert!(key.len() <= MAX_KEY_LEN);
            assert!(
                !key.contains('\\') && !key.chars().any(|c| c.is_control()),
                "{t:?}"
            );
            for seg in key[1..].split('/') {
                assert!(
                    !seg.is_empty() && seg != "." && seg != "..",
                    "{t:?} -> {key:?}"
                );
            }
        }
        assert!(accepted > 50, "only {accepted} accepted");
    }

    #[test]
    fn every_error_but_the_root_is_400() {
        assert_eq!(no("/a/../b").status(), 400);
        assert_eq!(no("/dir/").status(), 400);
        assert_eq!(PathError::TooLong.status(), 400);
        assert_eq!(PathError::Root.status(), 404);
    }

    /// Property tests: no accepted target yields a key that escapes the repository
    /// root, and keys are stable.
    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use std::path::{Component, Path};

        const PIECES: &[&str] = &[
            "/",
            "/",
            "/",
            ".",
            "..",
            "a",
            "b.tgz",
            "%",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%25",
            "%5c",
            "\\",
            "%00",
            "%0a",
            "%41",
            "%3f",
            "%23",
            "%c0%ae",
            "%e2%82%ac",
            "%c2%9b",
            "\u{85}",
            "\u{e9}",
            "?",
            "#",
            "http://h",
            "HTTPS://h:1",
            "@",
            " ",
            "\t",
            "\0",
        ];

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 512,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Percent-encodes everything but unreserved characters and `/`.
        fn encode(key: &str) -> String {
            key.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        }

        fn check(target: &str) -> Result<(), TestCaseError> {
            let Ok(key) = object_key(target) else {
                return Ok(());
            };
            prop_assert!(key.starts_with('/'), "{:?} -> {:?}", target, key);
            prop_assert!(key.len() <= MAX_KEY_LEN);
            prop_assert!(!key.contains('\\') && !key.contains('\0') && !key.contains('%'));
            prop_assert!(
                !key.chars().any(char::is_control),
                "{:?} -> {:?}",
                target,
                key
            );
            if key != "/" {
                prop_assert!(
                    !key.contains("//") && !key.ends_with('/'),
                    "{:?} -> {:?}",
                    target,
                    key
                );
                for seg in key[1..].split('/') {
                    prop_assert!(seg != "." && seg != "..", "{:?} -> {:?}", target, key);
                }
            }
            // Under any prefix, the key resolves below it.
            let under = Path::new("/bucket/prefix").join(&key[1..]);
            prop_assert!(under.starts_with("/bucket/prefix"));
            prop_assert!(
                under
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{:?} -> {:?}",
                target,
                key
            );
            // Stable: the key, encoded again, names the same key; without `?` or `#` (which
            // a target can only carry encoded) the key is its own normal form.
            prop_assert_eq!(
                object_key(&encode(&key)).map(Cow::into_owned),
                Ok(key.to_string())
            );
            if !key.contains(['?', '#']) {
                prop_assert_eq!(object_key(&key).map(Cow::into_owned), Ok(key.to_string()));
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn keys_from_tricky_pieces_stay_under_the_root(
                pieces in proptest::collection::vec(proptest::sample::select(PIECES), 1..12)
            ) {
                check(&pieces.concat())?;
            }

            #[test]
            fn keys_from_any_string_stay_under_the_root(target in any::<String>()) {
                check(&target)?;
                check(&format!("/{target}"))?;
            }

            #[test]
            fn plain_segment_paths_are_accepted_as_is(
                segs in proptest::collection::vec("[a-zA-Z0-9._~-]{1,12}", 1..6)
            ) {
                prop_assume!(segs.iter().all(|s| s != "." && s != ".."));
                let path = format!("/{}", segs.join("/"));
                prop_assert_eq!(object_key(&path).map(Cow::into_owned), Ok(path.clone()));
                check(&path)?;
            }
        }
    }
}

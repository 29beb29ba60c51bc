//! Fuzz target: `index.yaml` handling in `chartcache::helm` — the helm-s3 URL
//! rewriter (`rewrite_s3_urls`), digest extraction (`parse_digests`,
//! `Digests::update_from_index`) and the ETag pair `served_etag` / `upstream_etag`.
//!
//! The index comes from upstream (any bytes); every function must answer, never panic.
//! Asserted as well:
//! - `update_from_index` agrees with `parse_digests` and a failed parse leaves the
//!   table as it was; every key is an absolute object key;
//! - the rewriter only removes bytes (and only when the needle occurs), keeps UTF-8 UTF-8, keeps valid YAML valid YAML, and keeps every digest the
//!   input named (a rewritten index still verifies the charts the original did);
//! - `upstream_etag(served_etag(e, bytes))` gives back upstream's ETag (quoted, `W/`
//!   dropped), and a valid upstream entity-tag yields a valid strong entity-tag.
#![no_main]

use chartcache::helm::{
    parse_digests, rewrite_s3_urls, served_etag, upstream_etag, yaml_parses, Digests,
};
use libfuzzer_sys::fuzz_target;

/// A bucket with a prefix, and a bare bucket (a repository's own base in `HelmRepo::rewrite`).
const FROM: [&str; 2] = ["s3://my-charts/stable/", "s3://my-charts/"];

fuzz_target!(|data: &[u8]| {
    check_digests(data);
    check_rewrite(data);
    check_etags(data);
});

fn check_digests(data: &[u8]) {
    let table = Digests::default();
    assert!(table.update_from_index(b"entries: {a: [{digest: 'sha256:0000000000000000000000000000000000000000000000000000000000000000', urls: [a.tgz]}]}"));
    assert_eq!(table.len(), 1);
    let parsed = parse_digests(data);
    assert_eq!(table.update_from_index(data), parsed.is_some());
    match &parsed {
        Some(map) => {
            assert_eq!(table.len(), map.len());
            for (key, digest) in map {
                assert!(key.starts_with('/') && !key.contains("://"), "{key:?}");
                assert_eq!(table.get(key).as_ref(), Some(digest));
            }
        }
        None => assert_eq!(
            table.get("/a.tgz").map(|d| d[0]),
            Some(0),
            "failed parse kept the table"
        ),
    }
}

fn check_rewrite(data: &[u8]) {
    let yaml_ok = yaml_parses(data);
    let digests = parse_digests(data);
    for from in FROM {
        let Some(out) = rewrite_s3_urls(data, from) else {
            continue;
        };
        assert!(data.windows(from.len()).any(|w| w == from.as_bytes()));
        assert!(out.len() < data.len());
        assert!(is_subsequence(&out, data));
        if std::str::from_utf8(data).is_ok() {
            assert!(std::str::from_utf8(&out).is_ok(), "rewrite broke UTF-8");
        }
        if yaml_ok {
            if !yaml_parses(&out) {
                panic!(
                    "valid YAML rewritten into invalid YAML:\n{}\n---\n{}",
                    String::from_utf8_lossy(data),
                    String::from_utf8_lossy(&out)
                );
            }
        }
        if let Some(before) = &digests {
            let after = parse_digests(&out).expect("rewritten index parses");
            for key in before.keys() {
                assert!(after.contains_key(key), "{key:?} lost its digest");
            }
        }
    }
}

fn check_etags(data: &[u8]) {
    // The first line is the upstream ETag, the whole input the served bytes.
    let first = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(upstream) = std::str::from_utf8(first) else {
        return;
    };
    let _ = upstream_etag(upstream);
    let served = served_etag(Some(upstream), data);
    let inner = upstream.trim_start_matches("W/").trim_matches('"');
    assert_eq!(
        upstream_etag(&served),
        format!("\"{inner}\""),
        "{upstream:?} -> {served:?}"
    );
    assert_eq!(upstream_etag(&served_etag(None, data)), "\"\"");
    if is_entity_tag(upstream) {
        assert!(
            is_entity_tag(&served) && !served.starts_with("W/"),
            "{upstream:?} -> {served:?}"
        );
    }
}

/// RFC 9110 §8.8.3: `[ "W/" ] DQUOTE *etagc DQUOTE`, etagc = %x21 / %x23-7E / obs-text.
fn is_entity_tag(s: &str) -> bool {
    let s = s.strip_prefix("W/").unwrap_or(s).as_bytes();
    s.len() >= 2
        && s[0] == b'"'
        && s[s.len() - 1] == b'"'
        && s[1..s.len() - 1]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
}

fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|c| c == b))
}

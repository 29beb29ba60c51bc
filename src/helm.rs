//! Helm repository specifics: what chartcache knows about `index.yaml`.
//!
//! - **helm-s3 URLs.** helm-s3 writes `s3://bucket/prefix/name-1.2.3.tgz` into
//!   `index.yaml` unless charts were pushed with `--relative`. Plain Helm over
//!   HTTP cannot fetch those, so when the index is filled, URLs that point into
//!   the configured bucket/prefix are rewritten to be relative to the
//!   repository root ([`rewrite_s3_urls`]). The rewritten copy is what gets
//!   stored and served; its ETag is upstream's with a suffix derived from the
//!   served bytes ([`served_etag`]), so the served ETag changes whenever the
//!   served bytes do, and the suffix is stripped again ([`upstream_etag`]) for
//!   the conditional GET that revalidates it.
//! - **Chart digests.** Every chart version in `index.yaml` has a sha256
//!   `digest`. The latest index's digests are kept ([`Digests`], shared
//!   read-mostly by all workers) so a chart fill can be checked against them: a
//!   half-finished upload or a `push --force` race is caught before a node pins
//!   the bad bytes for a day.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;

/// The repository index key.
pub const INDEX_KEY: &str = "/index.yaml";

/// Suffix marker added to upstream ETags of rewritten indexes.
const ETAG_MARK: &str = "-cc";

/// Helm repository state shared by all workers.
pub struct HelmRepo {
    /// `s3://bucket/prefix/` (or `s3://bucket/`) when URL rewriting is on.
    pub rewrite_from: Option<String>,
    pub digests: Digests,
}

impl HelmRepo {
    pub fn new(rewrite_from: Option<String>) -> HelmRepo {
        HelmRepo {
            rewrite_from,
            digests: Digests::default(),
        }
    }

    /// The state for a configured repository: helm-s3 URLs into its own
    /// bucket and prefix are rewritten unless that is turned off.
    pub fn for_repo(repo: &crate::config::RepoConfig) -> HelmRepo {
        HelmRepo::new(
            repo.rewrite_s3_urls
                .then(|| repo.origin.upstream.s3_url_base())
                .flatten(),
        )
    }
}

/// Object key → sha256 digest, from the newest index seen.
#[derive(Default)]
pub struct Digests {
    map: ArcSwap<HashMap<String, [u8; 32]>>,
}

impl Digests {
    pub fn get(&self, key: &str) -> Option<[u8; 32]> {
        self.map.load().get(key).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.map.load().is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Replaces the table with the digests named by `index` (a parse failure
    /// leaves the table as it was and returns false).
    pub fn update_from_index(&self, index: &[u8]) -> bool {
        match parse_digests(index) {
            Some(map) => {
                self.map.store(Arc::new(map));
                true
            }
            None => false,
        }
    }
}

#[derive(Deserialize)]
struct IndexFile {
    #[serde(default)]
    entries: HashMap<String, Vec<ChartVersion>>,
}

#[derive(Deserialize)]
struct ChartVersion {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
}

/// Object key for a chart URL as written in the index: relative URLs resolve
/// against the repository root; absolute ones are not ours to check.
fn key_for_url(url: &str) -> Option<String> {
    if url.contains("://") || url.starts_with('/') || url.is_empty() {
        return None;
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    Some(format!("/{path}"))
}

/// `key → digest` for every chart version with a relative URL and a
/// well-formed sha256 digest. `None` if the document does not parse.
pub fn parse_digests(index: &[u8]) -> Option<HashMap<String, [u8; 32]>> {
    let file: IndexFile = serde_yaml::from_slice(index).ok()?;
    let mut out = HashMap::new();
    for versions in file.entries.values() {
        for v in versions {
            let Some(digest) = v.digest.as_deref().and_then(parse_hex32) else {
                continue;
            };
            for url in &v.urls {
                if let Some(key) = key_for_url(url) {
                    out.insert(key, digest);
                }
            }
        }
    }
    Some(out)
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s).as_bytes();
    if s.len() != 64 {
        return None;
    }
    // Byte-wise: the string may hold multi-byte characters, and `from_str_radix`
    // would take a `+` sign.
    let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Lower-case hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrites `s3://bucket/prefix/X` to `X` where it is a URL naming an object: the
/// needle starts a token (at the start, after whitespace, a quote, `[`, `{` or `,`),
/// `X` starts with a letter or digit, and the scalar is not a mapping key. Anywhere else (inside another word, before a YAML
/// indicator such as `"`, `:` or `-`) removing it could change what the document means
/// or make it invalid, so it is left alone. Returns `None` when nothing was rewritten
/// (serve the bytes as they are).
pub fn rewrite_s3_urls(index: &[u8], from: &str) -> Option<Vec<u8>> {
    let needle = from.as_bytes();
    if needle.is_empty() {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    // `index[..copied]` is already in `out`; the search resumes at `from_pos`.
    let (mut copied, mut from_pos) = (0, 0);
    while let Some(found) = index[from_pos..]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        let at = from_pos + found;
        let end = at + needle.len();
        let starts_token = at == 0
            || matches!(
                index[at - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b'[' | b'{' | b','
            );
        let names_object = index.get(end).is_some_and(u8::is_ascii_alphanumeric)
            && !ends_as_mapping_key(&index[end..]);
        if starts_token && names_object {
            let o = out.get_or_insert_with(|| Vec::with_capacity(index.len()));
            o.extend_from_slice(&index[copied..at]);
            copied = end;
            from_pos = end;
        } else {
            from_pos = at + 1;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&index[copied..]);
    Some(out)
}

/// Is the token going on at the start of `rest` a mapping key (`X: ` or `X": `)? Only
/// the token is looked at (up to whitespace, a quote or a flow indicator), so the
/// rewrite stays linear in the size of the index; a plain key of several words is not
/// recognised, and is rewritten like a value.
fn ends_as_mapping_key(rest: &[u8]) -> bool {
    let key_colon = |i: usize| {
        rest.get(i) == Some(&b':')
            && matches!(rest.get(i + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
    };
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b':' if key_colon(i) => return true,
            b'"' | b'\'' => return key_colon(i + 1),
            b' ' | b'\t' | b'\r' | b'\n' | b',' | b'[' | b']' | b'{' | b'}' => return false,
            _ => {}
        }
    }
    false
}

/// The ETag served for a rewritten index: upstream's plus a checksum of the
/// served bytes, so it changes whenever they do.
pub fn served_etag(upstream: Option<&str>, served: &[u8]) -> String {
    let inner = upstream
        .map(|e| e.trim_start_matches("W/").trim_matches('"'))
        .unwrap_or("");
    format!("\"{inner}{ETAG_MARK}{:08x}\"", crc32fast::hash(served))
}

/// The upstream ETag behind a (possibly) rewritten one, for revalidation.
pub fn upstream_etag(served: &str) -> String {
    let inner = served.trim_matches('"');
    match inner.rfind(ETAG_MARK) {
        Some(at)
            if inner.len() - at == ETAG_MARK.len() + 8
                && inner[at + ETAG_MARK.len()..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit()) =>
        {
            format!("\"{}\"", &inner[..at])
        }
        _ => served.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"apiVersion: v1
entries:
  hello:
  - name: hello
    version: 0.2.0
    digest: 2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc
    urls:
    - s3://my-charts/stable/hello-0.2.0.tgz
  - name: hello
    version: 0.1.0
    digest: 5d05c4e8b99649c66251a5d1c7c8fe421ca617eb184b0c3eb0d43783fbb98150
    urls:
    - hello-0.1.0.tgz
  other:
  - name: other
    version: 1.0.0
    urls:
    - s3://someone-else/x/other-1.0.0.tgz
generated: "2024-01-01T00:00:00Z"
"#;

    #[test]
    fn rewrites_only_urls_into_our_bucket_and_prefix() {
        let out = rewrite_s3_urls(INDEX.as_bytes(), "s3://my-charts/stable/").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("    - hello-0.2.0.tgz\n"));
        assert!(out.contains("s3://someone-else/x/other-1.0.0.tgz"));
        assert!(rewrite_s3_urls(b"urls: [a.tgz]", "s3://my-charts/stable/").is_none());
    }

    /// Found by fuzzing (fuzz/ `helm_index`): removing the needle wherever it occurred
    /// turned valid YAML into invalid YAML (here: a plain scalar into an unterminated
    /// quoted one). Only a URL token naming an object in the bucket is rewritten.
    #[test]
    fn rewrite_keeps_valid_yaml_valid() {
        let yaml = |b: &[u8]| serde_yaml::from_slice::<serde_yaml::Value>(b).is_ok();
        for (index, from) in [
            ("s3://my-charts/\"\u{1f600}5:-|\n\n", "s3://my-charts/"),
            ("--s3://my-charts/stable/-\n", "s3://my-charts/stable/"),
            ("a: s3://my-charts/stable/- b\n", "s3://my-charts/stable/"),
            (
                "[s3://my-charts/stable/, '#s3://my-charts/stable/']\n",
                "s3://my-charts/stable/",
            ),
        ] {
            assert!(yaml(index.as_bytes()), "{index:?}");
            if let Some(out) = rewrite_s3_urls(index.as_bytes(), from) {
                assert!(
                    yaml(&out),
                    "{index:?} -> {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        // Every form helm-s3 and JSON indexes use is still rewritten.
        let index = "urls:\n- s3://b/p/a.tgz\nu: [s3://b/p/b.tgz,s3://b/p/c.tgz]\nv: {\"w\": 's3://b/p/d/e.tgz'}\n";
        let out = rewrite_s3_urls(index.as_bytes(), "s3://b/p/").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "urls:\n- a.tgz\nu: [b.tgz,c.tgz]\nv: {\"w\": 'd/e.tgz'}\n"
        );
    }

    /// Found by fuzzing (fuzz/ `helm_index`): a mapping key that starts like a URL
    /// (`s3://my-charts/entries:`) was renamed, here into the index's own `entries`.
    /// Keys are left alone; values are still rewritten.
    #[test]
    fn rewrite_leaves_mapping_keys_alone() {
        for index in [
            "s3://my-charts/entries:\n  x: [1]\n",
            "a:\n  s3://my-charts/x: 1\n",
            "{\"s3://my-charts/x\": 1}\n",
            "- s3://my-charts/x:\n",
        ] {
            assert_eq!(
                rewrite_s3_urls(index.as_bytes(), "s3://my-charts/"),
                None,
                "{index:?}"
            );
        }
        let index = "- s3://my-charts/a:1.tgz\n- s3://my-charts/b.tgz # note: x\n";
        let out = rewrite_s3_urls(index.as_bytes(), "s3://my-charts/").unwrap();
        assert_eq!(out, b"- a:1.tgz\n- b.tgz # note: x\n");
    }

    #[test]
    fn digests_are_keyed_by_object_key_after_rewrite() {
        let rewritten = rewrite_s3_urls(INDEX.as_bytes(), "s3://my-charts/stable/").unwrap();
        let d = parse_digests(&rewritten).unwrap();
        assert_eq!(
            hex(&d["/hello-0.2.0.tgz"]),
            "2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc"
        );
        assert!(d.contains_key("/hello-0.1.0.tgz"));
        assert_eq!(d.len(), 2, "absolute URLs and missing digests are skipped");
        assert!(parse_digests(b"{not: [yaml").is_none());
    }

    /// Found by fuzzing (fuzz/ `helm_index`): a 64-byte digest with a multi-byte
    /// character was sliced inside the character, a panic on upstream input. A digest
    /// is 64 hex digits: anything else (a sign included) names no digest.
    #[test]
    fn malformed_digests_are_skipped_not_a_panic() {
        let index = |digest: &str| {
            format!("entries:\n  a:\n  - digest: {digest}\n    urls:\n    - a-1.tgz\n")
        };
        for digest in [
            format!("a{}a", "\u{e9}".repeat(31)),
            format!("{}\u{20ac}a", "0".repeat(61)),
            format!("+{}", "f".repeat(63)),
            format!("sha256:{}", "0g".repeat(32)),
        ] {
            let d = parse_digests(index(&digest).as_bytes()).expect("the index parses");
            assert!(d.is_empty(), "{digest:?}");
        }
        let good = "0123456789abcdefABCDEF".repeat(3)[..64].to_string();
        let d = parse_digests(index(&good).as_bytes()).unwrap();
        assert_eq!(hex(&d["/a-1.tgz"]), good.to_ascii_lowercase());
    }

    #[test]
    fn served_etag_round_trips_and_tracks_bytes() {
        let a = served_etag(Some("\"abc123\""), b"one");
        let b = served_etag(Some("\"abc123\""), b"two");
        assert_ne!(a, b);
        assert_eq!(upstream_etag(&a), "\"abc123\"");
        assert_eq!(upstream_etag("\"plain-etag\""), "\"plain-etag\"");
        assert_eq!(
            upstream_etag("\"d41d8cd98f00b204e9800998ecf8427e-12\""),
            "\"d41d8cd98f00b204e9800998ecf8427e-12\""
        );
    }

    #[test]
    fn the_bundled_example_index_parses() {
        let index = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/repo/index.yaml"
        ))
        .unwrap();
        let d = parse_digests(&index).unwrap();
        assert_eq!(d.len(), 4);
    }
}

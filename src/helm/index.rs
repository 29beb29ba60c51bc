//! What chartcache itself needs from an index, extracted from the event stream
//! ([`super::walk`]) without building a document: for every chart version, its
//! digest and the object keys of its relative URLs ([`IndexSummary`]).
//!
//! The extractor follows the path `entries` → chart name → list of versions →
//! each version's `digest` and `urls`; every other subtree is skipped event by
//! event, so memory is the summary itself. A document that is not a mapping at
//! the top is not a Helm index ([`Extractor::finish`] says so); malformed parts
//! inside one (a version that is not a mapping, a URL that is not a string) are
//! skipped like fields chartcache does not use.

use std::borrow::Cow;
use std::collections::HashMap;

use super::walk::{Ev, Sink};

/// Object key → sha256 digest of every chart version with a relative URL and a
/// well-formed sha256 digest; plus counts for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct IndexSummary {
    pub digests: HashMap<String, [u8; 32]>,
    /// Chart names under `entries`.
    pub charts: usize,
    /// Chart versions under `entries`.
    pub versions: usize,
}

/// Where the extractor is in the document.
#[derive(Debug)]
enum Frame {
    /// The top-level mapping; `key` is the pending key (`None` → expecting one).
    Root { key: Option<RootKey> },
    /// `entries`: chart name → versions.
    Entries { want_key: bool },
    /// One chart's list of versions.
    Versions,
    /// One chart version; `key` is the pending key.
    Version { key: Option<VersionKey> },
    /// A version's `urls` list.
    Urls,
    /// A subtree being skipped: open collections inside it.
    Skip(usize),
}

#[derive(Debug, Clone, Copy)]
enum RootKey {
    Entries,
    Other,
}

#[derive(Debug, Clone, Copy)]
enum VersionKey {
    Digest,
    Urls,
    Other,
}

/// The version being read: its digest and URL keys.
#[derive(Default)]
struct Current {
    digest: Option<[u8; 32]>,
    keys: Vec<String>,
}

/// The extracting [`Sink`].
#[derive(Default)]
pub struct Extractor {
    stack: Vec<Frame>,
    /// Did the document start with a mapping?
    is_mapping: Option<bool>,
    current: Current,
    summary: IndexSummary,
}

/// The document is not a Helm index at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a Helm repository index: the document is not a mapping")]
pub struct NotAnIndex;

impl Extractor {
    /// The summary, once the walk is over.
    pub fn finish(self) -> Result<IndexSummary, NotAnIndex> {
        match self.is_mapping {
            Some(true) => Ok(self.summary),
            _ => Err(NotAnIndex),
        }
    }

    fn scalar<'a>(ev: &'a Ev<'_>) -> Option<&'a Cow<'a, str>> {
        match ev {
            Ev::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A node starts where a value (or key) is expected and is not wanted:
    /// skip it whole (a scalar is over at once).
    fn skip_node(&mut self, ev: &Ev<'_>) {
        if matches!(ev, Ev::MapStart | Ev::SeqStart) {
            self.stack.push(Frame::Skip(1));
        }
    }

    fn end_version(&mut self) {
        let c = std::mem::take(&mut self.current);
        self.summary.versions += 1;
        if let Some(d) = c.digest {
            for key in c.keys {
                self.summary.digests.insert(key, d);
            }
        }
    }
}

impl Sink for Extractor {
    fn event(&mut self, ev: &Ev<'_>) -> Result<(), &'static str> {
        if matches!(ev, Ev::TaggedCollection) {
            return Ok(());
        }
        let Some(top) = self.stack.last_mut() else {
            if self.is_mapping.is_none() {
                self.is_mapping = Some(matches!(ev, Ev::MapStart));
                if matches!(ev, Ev::MapStart) {
                    self.stack.push(Frame::Root { key: None });
                } else {
                    self.skip_node(ev);
                }
            }
            return Ok(());
        };
        match top {
            Frame::Skip(depth) => {
                match ev {
                    Ev::MapStart | Ev::SeqStart => *depth += 1,
                    Ev::MapEnd | Ev::SeqEnd => *depth -= 1,
                    _ => {}
                }
                if *depth == 0 {
                    self.stack.pop();
                }
            }
            Frame::Root { key } => match (key.take(), ev) {
                (None, Ev::MapEnd) => {
                    self.stack.pop();
                }
                (None, Ev::Scalar { value, .. }) => {
                    *key = Some(if value == "entries" {
                        RootKey::Entries
                    } else {
                        RootKey::Other
                    });
                }
                (None, _) => {
                    // A complex key: skip it, then its value.
                    *key = Some(RootKey::Other);
                    self.skip_node(ev);
                }
                (Some(RootKey::Entries), Ev::MapStart) => {
                    self.stack.push(Frame::Entries { want_key: true })
                }
                (Some(_), _) => self.skip_node(ev),
            },
            Frame::Entries { want_key } => {
                if *want_key {
                    match ev {
                        Ev::MapEnd => {
                            self.stack.pop();
                        }
                        Ev::Scalar { .. } => {
                            *want_key = false;
                            self.summary.charts += 1;
                        }
                        _ => {
                            *want_key = false;
                            self.skip_node(ev);
                        }
                    }
                } else {
                    *want_key = true;
                    if matches!(ev, Ev::SeqStart) {
                        self.stack.push(Frame::Versions);
                    } else {
                        self.skip_node(ev);
                    }
                }
            }
            Frame::Versions => match ev {
                Ev::SeqEnd => {
                    self.stack.pop();
                }
                Ev::MapStart => self.stack.push(Frame::Version { key: None }),
                _ => self.skip_node(ev),
            },
            Frame::Version { key } => match (key.take(), ev) {
                (None, Ev::MapEnd) => {
                    self.stack.pop();
                    self.end_version();
                }
                (None, Ev::Scalar { value, .. }) => {
                    *key = Some(match value.as_ref() {
                        "digest" => VersionKey::Digest,
                        "urls" => VersionKey::Urls,
                        _ => VersionKey::Other,
                    });
                }
                (None, _) => {
                    *key = Some(VersionKey::Other);
                    self.skip_node(ev);
                }
                (Some(VersionKey::Digest), Ev::Scalar { value, .. }) => {
                    self.current.digest = parse_hex32(value);
                }
                (Some(VersionKey::Urls), Ev::SeqStart) => self.stack.push(Frame::Urls),
                (Some(_), _) => self.skip_node(ev),
            },
            Frame::Urls => match ev {
                Ev::SeqEnd => {
                    self.stack.pop();
                }
                _ => {
                    if let Some(key) = Self::scalar(ev).and_then(|u| key_for_url(u)) {
                        self.current.keys.push(key);
                    }
                    self.skip_node(ev);
                }
            },
        }
        Ok(())
    }
}

/// Object key for a chart URL as written in the index: relative URLs resolve
/// against the repository root; absolute ones are not ours to check.
pub fn key_for_url(url: &str) -> Option<String> {
    if url.contains("://") || url.starts_with('/') || url.is_empty() {
        return None;
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    Some(format!("/{path}"))
}

/// A sha256 digest: 64 hex digits, optionally after `sha256:`.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
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

#[cfg(test)]
mod tests {
    use super::super::walk::walk;
    use super::*;

    fn summarize(yaml: &str) -> Result<IndexSummary, String> {
        let mut x = Extractor::default();
        walk(yaml, &mut [&mut x]).map_err(|e| e.to_string())?;
        x.finish().map_err(|e| e.to_string())
    }

    const D1: &str = "2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc";
    const D2: &str = "5d05c4e8b99649c66251a5d1c7c8fe421ca617eb184b0c3eb0d43783fbb98150";

    #[test]
    fn extracts_digests_by_object_key() {
        let y = format!(
            "apiVersion: v1\nentries:\n  a:\n  - name: a\n    version: 1.0.0\n    digest: {D1}\n    urls:\n    - a-1.0.0.tgz\n    - https://elsewhere/a-1.0.0.tgz\n    - sub/a-1.0.0.tgz?x=1\n  - version: 0.9.0\n    urls: [a-0.9.0.tgz]\n  b:\n  - {{digest: 'sha256:{D2}', urls: [\"b-1.tgz\"], annotations: {{x: [1, {{y: 2}}]}}}}\ngenerated: 2024-01-01T00:00:00Z\n"
        );
        let s = summarize(&y).unwrap();
        assert_eq!((s.charts, s.versions), (2, 3));
        assert_eq!(s.digests.len(), 3);
        assert_eq!(s.digests["/a-1.0.0.tgz"], parse_hex32(D1).unwrap());
        assert_eq!(s.digests["/sub/a-1.0.0.tgz"], parse_hex32(D1).unwrap());
        assert_eq!(s.digests["/b-1.tgz"], parse_hex32(D2).unwrap());
    }

    #[test]
    fn anchors_and_aliases_are_followed() {
        let y = format!("entries:\n  a:\n  - &v {{digest: {D1}, urls: [a-1.tgz]}}\n  b:\n  - *v\n");
        let s = summarize(&y).unwrap();
        assert_eq!(s.versions, 2);
        assert_eq!(s.digests.len(), 1);
    }

    #[test]
    fn odd_shapes_are_skipped_and_non_indexes_refused() {
        for y in [
            "entries: 3\n",
            "entries: {a: 1, b: [1, [2]], c: [x, {urls: 7}]}\n",
            "entries:\n  ? [complex]\n  : [{digest: x}]\n",
            "? {complex: key}\n: 1\nentries: {}\n",
            "{}",
        ] {
            let s = summarize(y).unwrap_or_else(|e| panic!("{y:?}: {e}"));
            assert!(s.digests.is_empty(), "{y:?}");
        }
        for y in ["", "just a string\n", "- a\n- b\n", "~\n"] {
            assert!(summarize(y).is_err(), "{y:?}");
        }
    }

    /// Found by fuzzing (fuzz/ `helm_index`): a 64-byte digest with a multi-byte
    /// character was sliced inside the character, a panic on upstream input. A digest
    /// is 64 hex digits: anything else (a sign included) names no digest.
    #[test]
    fn malformed_digests_are_skipped_not_a_panic() {
        let index = |digest: &str| {
            format!("entries:\n  a:\n  - digest: \"{digest}\"\n    urls:\n    - a-1.tgz\n")
        };
        for digest in [
            format!("a{}a", "\u{e9}".repeat(31)),
            format!("{}\u{20ac}a", "0".repeat(61)),
            format!("+{}", "f".repeat(63)),
            format!("sha256:{}", "0g".repeat(32)),
        ] {
            let d = summarize(&index(&digest)).expect("the index parses");
            assert!(d.digests.is_empty(), "{digest:?}");
        }
        let good = "0123456789abcdefABCDEF".repeat(3)[..64].to_string();
        let d = summarize(&index(&good)).unwrap();
        assert_eq!(d.digests["/a-1.tgz"], parse_hex32(&good).unwrap());
    }

    #[test]
    fn truncated_or_garbled_input_is_a_clean_error() {
        let y = format!("entries:\n  a:\n  - digest: {D1}\n    urls:\n    - a-1.tgz\n");
        // Every prefix either parses or fails cleanly; none panics.
        for cut in 0..y.len() {
            let _ = summarize(&y[..cut]);
        }
        assert!(summarize("entries: [a, {b: c\n").is_err());
        assert!(summarize("entries:\n  a:\n  - digest: \"x\n").is_err());
        assert!(summarize("entries:\n\t- tab indent\n").is_err());
    }
}

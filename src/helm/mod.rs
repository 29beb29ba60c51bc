//! Helm repository specifics: what chartcache knows about `index.yaml`.
//!
//! # Architecture
//! 1. **Off the workers.** A fetched index is handed, whole, to the process's
//!    [`IndexProcessor`] (one dedicated thread, a bounded queue): the owner worker
//!    awaits its answer on a oneshot channel and keeps serving hits meanwhile.
//!    The processor rewrites helm-s3 URLs ([`rewrite`]), parses the result once
//!    ([`walk`]) into everything derived from it — the chart digests ([`index`]) and
//!    the compact JSON form ([`json`]) — and sends it all back
//!    ([`process::ProcessedIndex`]). The previous index keeps being served until the
//!    owner has stored the new one (the cache replaces a record only at commit).
//! 2. **helm-s3 URLs.** `s3://bucket/prefix/X` URLs into the configured bucket and
//!    prefix become `X` ([`rewrite_s3_urls`]); the served ETag then carries a
//!    checksum of the served bytes ([`etag`]).
//! 3. **Chart digests.** The newest index's digests are kept ([`Digests`], shared
//!    read-mostly by all workers) so a chart fill can be checked against them: a
//!    half-finished upload or a `push --force` race is caught before a node pins the
//!    bad bytes for a day.
//! 5. **Per-chart views** ([`view`]): each chart's part of the JSON form, built
//!    with it and stored beside it, with every chart's versions in Helm's order
//!    ([`version`]) for `?versions=N`.
//! 6. **gzip forms** of the YAML, the JSON form and the views, compressed on the
//!    processor once a client has asked for gzip ([`HelmRepo::gzip_wanted`]).
//! 4. **The JSON form.** Helm ≥ 3.13 decodes an index that is JSON with Go's JSON
//!    decoder, 4–5× faster than YAML; [`json`] writes the JSON that decodes to what
//!    Helm reads from the YAML (its YAML 1.1 typing included, [`scalar`]).
//!
//! # The parser, measured
//! The index is parsed with `saphyr-parser` (0.3, maintained, YAML 1.2 conformant
//! event parser; plain scalars borrowed from the input) — no document tree — in
//! place of `serde_yaml` 0.9 (deprecated, unmaintained). On a generated
//! 15,000-version index of 14.1 MB ([`synthetic`], `benches/helm_index.rs`, this
//! machine kind, 2 shared cores, same hour): digests alone **203 ms**, digests and
//! the JSON form in the same pass **245 ms**, the whole pipeline (s3:// rewrite 36 ms,
//! digests, JSON form, per-chart views) **283 ms** — against **272 ms** for
//! `serde_yaml` deserializing the digests alone (and ~380 ms for a `serde_yaml::Value`
//! tree, which a JSON form would need). ~60 % of the pass is saphyr's scanner; a
//! purpose-built scanner for go-yaml's block style could be several times faster,
//! but would need a conformant fallback for every other YAML form — off the worker
//! threads, one conformant parser was the simpler trade. gzip of the JSON form
//! (level 6): 129 ms, after the version is already served.
//! Re-measured with the views' `?versions=N` tables (2026-12-01, same bench, a
//! shared box: unchanged code varied ~20 % between runs): the whole pipeline
//! 294 ms (338 ms for the code before, same hour), of which the views 2 ms; gzip of
//! the YAML 126 ms, of the JSON form 132 ms, of the views (one member each) 59 ms —
//! none of it spent until a client asks for gzip ([`HelmRepo::gzip_wanted`]).

//! # Layout
//! - [`process`]: the processing thread and the pipeline it runs.
//! - [`walk`]: one pass over the first document as events, aliases expanded.
//! - [`index`]: the extractor (digests by object key).
//! - [`json`]: the JSON writer; [`scalar`]: YAML 1.1 typing and Go formatting.
//! - [`view`]: per-chart views (`/-/charts/<name>/index.yaml`, `?versions=N`),
//!   built with the JSON form; [`version`]: Helm's order of chart versions.
//! - [`rewrite`]: helm-s3 URL rewriting; [`etag`]: ETags of every form;
//!   [`form`]: which form a client gets.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub mod etag;
pub mod form;
pub mod index;
pub mod json;
pub mod process;
pub mod rewrite;
pub mod scalar;
#[doc(hidden)]
pub mod synthetic;
pub mod version;
pub mod view;
pub mod walk;

pub use etag::{gzip_etag, json_etag, served_etag, upstream_etag, views_etag};
pub use process::{IndexProcessor, ProcessedIndex};
pub use rewrite::rewrite_s3_urls;

/// The repository index key.
pub const INDEX_KEY: &str = "/index.yaml";

/// The cache keys of the index's JSON form: stored beside the YAML on the index's
/// owner shard; a control character makes them keys no request can name
/// (`http1::path` refuses them), and they start with [`INDEX_KEY`], so a prefix
/// purge of the index removes every form. Two slots, written in turn: a new
/// version's form is stored while the previous one (in the other slot) keeps being
/// served with the previous YAML, until the new YAML is committed. Which slot holds
/// the form of a given YAML version is told by the ETags ([`etag`]).
pub const INDEX_JSON_KEYS: [&str; 2] = ["/index.yaml\u{1}json0", "/index.yaml\u{1}json1"];

/// The cache keys of the gzip-compressed YAML (`[0]`) and JSON (`[1]`) forms, in
/// two slots each like [`INDEX_JSON_KEYS`].
pub const INDEX_GZIP_KEYS: [[&str; 2]; 2] = [
    ["/index.yaml\u{1}yaml.gz0", "/index.yaml\u{1}yaml.gz1"],
    ["/index.yaml\u{1}json.gz0", "/index.yaml\u{1}json.gz1"],
];

/// The cache keys of the index's per-chart views (see [`view`]), in two slots like
/// [`INDEX_JSON_KEYS`].
pub const INDEX_VIEWS_KEYS: [&str; 2] = ["/index.yaml\u{1}views0", "/index.yaml\u{1}views1"];

/// The cache keys of one repository's index and its derived forms: [`INDEX_KEY`] and
/// the `INDEX_*_KEYS` above, each after the repository's key namespace (see
/// `crate::repo`), so two repositories never share an entry.
#[derive(Debug, Clone)]
pub struct IndexKeys {
    /// The namespace every key of the repository starts with.
    pub ns: String,
    pub index: String,
    pub json: [String; 2],
    pub gzip: [[String; 2]; 2],
    pub views: [String; 2],
    pub views_gzip: [String; 2],
}

impl IndexKeys {
    pub fn new(ns: &str) -> IndexKeys {
        let k = |key: &str| format!("{ns}{key}");
        IndexKeys {
            ns: ns.to_owned(),
            index: k(INDEX_KEY),
            json: INDEX_JSON_KEYS.map(k),
            gzip: INDEX_GZIP_KEYS.map(|form| form.map(k)),
            views: INDEX_VIEWS_KEYS.map(k),
            views_gzip: INDEX_VIEWS_GZIP_KEYS.map(k),
        }
    }

    /// The object key (as upstream and the index name it) of a cache key of this
    /// repository.
    pub fn object<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.ns.as_str()).unwrap_or(key)
    }
}

/// The cache keys of the gzip form of the per-chart views record (each view
/// compressed on its own, see [`view::ViewTable::gzip`]), in two slots like
/// [`INDEX_VIEWS_KEYS`] (a views record and its gzip form share a slot).
pub const INDEX_VIEWS_GZIP_KEYS: [&str; 2] =
    ["/index.yaml\u{1}views.gz0", "/index.yaml\u{1}views.gz1"];

/// Which derived forms of one index version were stored by this process, so one
/// found missing later was evicted or purged and is rebuilt (see `cache::fill`);
/// one that could not be stored (too large, no room) is not tried again for that
/// version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredForms {
    /// The served ETag of the YAML they were derived from.
    pub yaml_etag: String,
    /// The slot they are in.
    pub slot: usize,
    pub json: bool,
    pub views: bool,
    /// The gzip forms of the YAML and of the JSON form.
    pub gzip: [bool; 2],
    pub views_gzip: bool,
    /// The gzip forms were built (or tried) for this version.
    pub gzip_tried: bool,
}

/// Helm repository state shared by all workers.
pub struct HelmRepo {
    /// What `s3://` chart URLs become: `s3://bucket/prefix/` of the repository itself
    /// relative, other configured repositories' bases their paths (empty when URL
    /// rewriting is off).
    pub rewrite: rewrite::Rules,
    pub digests: Digests,
    /// Where index work runs (off the worker threads).
    pub processor: IndexProcessor,
    /// The served ETag of the index version the digests (and the stored JSON
    /// form) were derived from in this process; `None` until the first one, which
    /// after a restart is the stored index (see `cache::fill`).
    pub learned: std::sync::Mutex<Option<String>>,
    /// Where each chart's view is in the stored views record (see [`view`]), one
    /// table per slot: a table is set before its YAML is committed, and the other
    /// slot's keeps serving the YAML still stored, so a view request that meets either
    /// version finds its table.
    pub views: [arc_swap::ArcSwapOption<view::ViewTable>; 2],
    /// Counts index versions stored: the slot of derived forms to write next.
    pub slot: std::sync::atomic::AtomicUsize,
    /// The derived forms stored for the learned version (see [`StoredForms`]).
    pub stored: std::sync::Mutex<Option<StoredForms>>,
    /// A client asked for a gzip form of the index or a view: from then on every
    /// version's gzip forms are built (until then, no index version costs any
    /// compression; the first such client gets the identity form and starts it).
    pub gzip_wanted: std::sync::atomic::AtomicBool,
    /// When the derived forms of the learned version may be rebuilt again.
    pub rebuilds: std::sync::Mutex<Rebuilds>,
}

/// How often the derived forms of one index version are rebuilt after one of them
/// was evicted (or purged, or dropped as corrupt): at once the first time, then no
/// sooner than 10 s, 20 s, 40 s, … up to 10 min after the previous rebuild (back to
/// 10 s after a quiet spell as long as the next wait). It also bounds a stored
/// index that fails to process after a restart. A cache
/// too small to keep them would otherwise have every revalidation of the index
/// reprocess it and store tens of MB again, evicting charts to make room. A new
/// index version starts over, and so does a purge in the repository (an operator's
/// purge is answered at once). Meanwhile clients get the YAML (and views answer 503).
#[derive(Debug, Default)]
pub struct Rebuilds {
    etag: Option<String>,
    next: Option<std::time::Instant>,
    wait: std::time::Duration,
}

impl Rebuilds {
    pub const FIRST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

    /// May the forms of version `etag` be rebuilt at `now`? If so, notes it and
    /// returns how long the next rebuild of the same version must wait.
    pub fn allow(&mut self, etag: &str, now: std::time::Instant) -> Option<std::time::Duration> {
        if self.etag.as_deref() != Some(etag) {
            *self = Rebuilds {
                etag: Some(etag.to_string()),
                next: None,
                wait: Self::FIRST_WAIT,
            };
        }
        match self.next {
            Some(next) if now < next => return None,
            // Quiet for as long again as the next wait: back to the first one, so a
            // rebuild now and then (days apart) never meets a long wait.
            Some(next) if now >= next + self.wait => self.wait = Self::FIRST_WAIT,
            _ => {}
        }
        let wait = self.wait;
        self.next = Some(now + wait);
        self.wait = (wait * 2).min(Self::MAX_WAIT);
        Some(wait)
    }
}

impl HelmRepo {
    /// Starts the index processor thread.
    pub fn new(rewrite: rewrite::Rules) -> std::io::Result<HelmRepo> {
        Ok(HelmRepo {
            processor: IndexProcessor::start(rewrite.clone())?,
            rewrite,
            digests: Digests::default(),
            learned: std::sync::Mutex::new(None),
            views: Default::default(),
            slot: std::sync::atomic::AtomicUsize::new(0),
            stored: std::sync::Mutex::new(None),
            gzip_wanted: std::sync::atomic::AtomicBool::new(false),
            rebuilds: Default::default(),
        })
    }

    /// The state for a configured repository: helm-s3 URLs into its own
    /// bucket and prefix are rewritten unless that is turned off, and so are URLs
    /// into the buckets/prefixes of `others` (other repositories served by this
    /// instance) to their paths.
    pub fn for_repo(
        repo: &crate::config::RepoConfig,
        others: &[crate::config::RepoConfig],
    ) -> std::io::Result<HelmRepo> {
        let rules = if repo.rewrite_s3_urls {
            let others = others
                .iter()
                .filter(|o| o.prefix != repo.prefix)
                .filter_map(|o| {
                    let base = o.origin.upstream.s3_url_base()?;
                    Some((base, format!("{}/", o.prefix)))
                })
                .collect();
            rewrite::Rules::new(repo.origin.upstream.s3_url_base(), others)
        } else {
            rewrite::Rules::default()
        };
        HelmRepo::new(rules)
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

    /// Replaces the table; returns the old one (drop it off the worker threads:
    /// freeing a big table takes a while).
    pub fn replace(&self, map: Arc<HashMap<String, [u8; 32]>>) -> Arc<HashMap<String, [u8; 32]>> {
        self.map.swap(map)
    }

    /// Replaces the table with the digests named by `index`, parsed on the calling
    /// thread (a parse failure leaves the table as it was and returns false).
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

/// `key → digest` for every chart version with a relative URL and a well-formed
/// sha256 digest, parsed on the calling thread. `None` if the document is not a
/// Helm index (not UTF-8, not YAML, not a mapping).
pub fn parse_digests(index: &[u8]) -> Option<HashMap<String, [u8; 32]>> {
    let text = std::str::from_utf8(index).ok()?;
    let mut x = index::Extractor::default();
    walk::walk(text, &mut [&mut x]).ok()?;
    x.finish().ok().map(|s| s.digests)
}

/// Does `bytes` parse as YAML (UTF-8, first document)?
pub fn yaml_parses(bytes: &[u8]) -> bool {
    struct Nothing;
    impl walk::Sink for Nothing {
        fn event(&mut self, _: &walk::Ev<'_>) -> Result<(), &'static str> {
            Ok(())
        }
    }
    std::str::from_utf8(bytes).is_ok_and(|t| walk::walk(t, &mut [&mut Nothing]).is_ok())
}

/// Lower-case hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_back_off_per_version_and_start_over_for_a_new_one() {
        use std::time::{Duration, Instant};
        let mut r = Rebuilds::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(
            r.allow("\"v1\"", t0),
            Some(s(10)),
            "the first rebuild: at once"
        );
        assert_eq!(r.allow("\"v1\"", t0 + s(9)), None);
        assert_eq!(r.allow("\"v1\"", t0 + s(10)), Some(s(20)));
        assert_eq!(r.allow("\"v1\"", t0 + s(29)), None);
        assert_eq!(r.allow("\"v1\"", t0 + s(30)), Some(s(40)));
        // Each rebuild as soon as allowed: the wait doubles up to its cap.
        let (mut at, mut wait) = (t0 + s(30), s(40));
        for expected in [80, 160, 320, 600, 600] {
            at += wait;
            wait = r.allow("\"v1\"", at).unwrap();
            assert_eq!(wait, s(expected));
        }
        assert_eq!(wait, Rebuilds::MAX_WAIT);
        assert_eq!(r.allow("\"v1\"", at + wait - s(1)), None);
        // Quiet for as long again as the next wait: from the first wait again.
        let late = at + wait + Rebuilds::MAX_WAIT;
        assert_eq!(r.allow("\"v1\"", late), Some(s(10)), "decayed");
        assert_eq!(r.allow("\"v2\"", late + s(601)), Some(s(10)));
    }

    #[test]
    fn digests_are_keyed_by_object_key_after_rewrite() {
        let index = "entries:\n  hello:\n  - digest: 2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc\n    urls:\n    - s3://my-charts/stable/hello-0.2.0.tgz\n  other:\n  - urls: [s3://someone-else/x/other-1.0.0.tgz]\n";
        let rewritten = rewrite_s3_urls(index.as_bytes(), "s3://my-charts/stable/").unwrap();
        let d = parse_digests(&rewritten).unwrap();
        assert_eq!(
            hex(&d["/hello-0.2.0.tgz"]),
            "2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc"
        );
        assert_eq!(d.len(), 1, "absolute URLs and missing digests are skipped");
        assert!(parse_digests(b"{not: [yaml").is_none());
        assert!(parse_digests(b"\xff\xfe").is_none());
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

    #[test]
    fn a_failed_update_keeps_the_table() {
        let d = Digests::default();
        assert!(d.update_from_index(b"entries: {a: [{digest: 'sha256:0000000000000000000000000000000000000000000000000000000000000000', urls: [a.tgz]}]}"));
        assert!(!d.update_from_index(b"entries: [unterminated"));
        assert_eq!(d.len(), 1);
    }
}

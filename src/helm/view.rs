//! Per-chart views: `GET /-/charts/<name>/index.yaml` answers a repository index
//! holding only chart `<name>`'s entries.
//!
//! Built with the JSON form, once per index version, on the index processor:
//! every chart's view is the JSON form's `apiVersion`, that chart's list of
//! versions and `generated`, copied byte for byte from the JSON form (so a view
//! decodes to exactly the chart's part of the full index). All views are
//! concatenated into one body ([`Views::body`], stored beside the index under
//! one of [`super::INDEX_VIEWS_KEYS`]) and found in it through a table kept in memory
//! ([`ViewTable`], a few dozen bytes per chart). A view is served as a byte range of
//! that stored record, so conditional requests, HEAD and ranges work as for any
//! stored object.
//!
//! `?versions=N` ([`parse_versions`]) serves the newest N versions in Helm's
//! order ([`super::version`]), worked out here once per index version: when the
//! index lists a chart's versions newest first (as `helm repo index` and helm-s3
//! write them) the view itself is in that order, else a copy in that order is
//! appended to the record; [`ChartView::newest`] is then at most two pieces of
//! the record (up to the N-th version's end, then the list's end), sent one after
//! the other. The gzip form of the record compresses each view as its own gzip
//! member, so a view's gzip form is one slice of it too ([`ViewTable::gzip`]);
//! `?versions=N` is served identity-only (its bytes are cut per request).
//!
//! The same bytes answer JSON and YAML clients (JSON is YAML, and the typing was
//! already resolved the way Helm reads the YAML); each form is labelled with its
//! content type and its own ETag. Chart URLs stay as the index has them: relative
//! ones resolve, for Helm, under `/-/charts/<name>/`, which the server maps back to
//! the repository root (one cache entry per chart whichever way it is fetched).

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;

use super::json::{write_json_string, JsonForm};

/// Prefix of view (and view-relative chart) paths.
pub const PREFIX: &str = "/-/charts/";

/// Every chart's view, concatenated, and where each one is.
#[derive(Debug, Clone)]
pub struct Views {
    pub body: Bytes,
    pub table: HashMap<String, ChartView>,
    /// Every view in `table` (its `range`), by start: the pieces the gzip form of
    /// the record compresses one by one ([`ViewTable::gzip`]).
    pub plain: Vec<Range<usize>>,
}

/// Where one chart's view is in the views record, in its two orders.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartView {
    /// The view: the chart's part of the JSON form, its versions in the index's order.
    pub range: Range<usize>,
    /// The same view with its versions newest first as Helm sorts them
    /// ([`super::version`]): `range` itself when the index lists them so already
    /// (as `helm repo index` and helm-s3 write them), else a copy after all views.
    pub sorted: Range<usize>,
    /// Where each version ends in `sorted`, newest first (`ends[k]`: the end of
    /// the (k+1)-th newest; empty when the chart's value is not a list).
    pub ends: Box<[usize]>,
    /// Where the list's closing `]` is in `sorted`.
    pub tail: usize,
}

impl ChartView {
    /// How many versions the chart has.
    pub fn versions(&self) -> usize {
        self.ends.len()
    }

    /// The newest `n` versions' view (`?versions=N`, `n` ≥ 1) as at most two
    /// pieces of the record, to be sent one after the other: everything up to the
    /// end of the n-th newest version, then the list's end and the rest. `n` is
    /// clamped to the chart's count (then it is the whole `sorted` view, one piece).
    pub fn newest(&self, n: usize) -> [Range<usize>; 2] {
        match n.checked_sub(1).and_then(|i| self.ends.get(i)) {
            Some(&end) if n < self.ends.len() => {
                [self.sorted.start..end, self.tail..self.sorted.end]
            }
            _ => [self.sorted.clone(), self.sorted.end..self.sorted.end],
        }
    }
}

/// The table of the stored views of one index version (its served YAML ETag).
#[derive(Debug)]
pub struct ViewTable {
    pub yaml_etag: String,
    /// Which of [`super::INDEX_VIEWS_KEYS`] holds the views (and of
    /// [`super::INDEX_VIEWS_GZIP_KEYS`] their gzip form).
    pub slot: usize,
    pub table: HashMap<String, ChartView>,
    /// Every view's range, by start (see [`Views::plain`]).
    pub plain: Vec<Range<usize>>,
    /// Once the gzip form of the record is stored: each view's gzip member in it,
    /// by the view's start (ascending).
    pub gzip: arc_swap::ArcSwapOption<Vec<(usize, Range<usize>)>>,
}

impl ViewTable {
    /// The table of `views` (stored in `slot`), without the gzip form yet; the
    /// body is given back.
    pub fn new(yaml_etag: String, slot: usize, views: Views) -> (ViewTable, Bytes) {
        let table = ViewTable {
            yaml_etag,
            slot,
            table: views.table,
            plain: views.plain,
            gzip: Default::default(),
        };
        (table, views.body)
    }

    /// Where `view`'s gzip member is in the gzip form of the record, once stored.
    pub fn gzip_of(&self, view: &ChartView) -> Option<Range<usize>> {
        let members = self.gzip.load();
        let members = members.as_ref()?;
        let at = members
            .binary_search_by_key(&view.range.start, |(start, _)| *start)
            .ok()?;
        Some(members[at].1.clone())
    }
}

/// Parses the query of a view request: `versions=N` asks for the newest `N`
/// versions (`Ok(None)`: no `versions`, the whole view). `N` must be a decimal
/// number ≥ 1; larger than the chart's count (however large) means all of them.
/// Other parameters are ignored, as everywhere else.
pub fn parse_versions(query: Option<&str>) -> Result<Option<usize>, &'static str> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("versions="))
    else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad request: versions=N needs a decimal number N >= 1");
    }
    match value.trim_start_matches('0') {
        "" => Err("bad request: versions=0 asks for nothing (N >= 1)"),
        // More digits than usize holds: more versions than any chart has.
        digits => Ok(Some(digits.parse().unwrap_or(usize::MAX))),
    }
}

/// What a path under [`PREFIX`] asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ViewPath<'a> {
    /// `/-/charts/<name>/index.yaml`.
    Index { chart: &'a str },
    /// `/-/charts/<name>/<rest>`: the object `/<rest>` of the repository.
    Object { key: &'a str },
    /// Anything else under the prefix (no chart name, nothing after it).
    Invalid,
}

/// Classifies an object key; `None` when it is not under [`PREFIX`].
pub fn parse_path(key: &str) -> Option<ViewPath<'_>> {
    let rest = key.strip_prefix(PREFIX)?;
    let Some((chart, file)) = rest.split_once('/') else {
        return Some(ViewPath::Invalid);
    };
    if chart.is_empty() || file.is_empty() {
        return Some(ViewPath::Invalid);
    }
    Some(if file == "index.yaml" {
        ViewPath::Index { chart }
    } else {
        // `key` ends with "/<file>": the repository object.
        ViewPath::Object {
            key: &key[key.len() - file.len() - 1..],
        }
    })
}

/// Builds every chart's view from the JSON form.
pub fn build(json: &JsonForm) -> Views {
    let text = &json.text;
    let r = &json.ranges;
    let part = |range: &Range<usize>| &text[range.clone()];
    let fixed = r.api_version.as_ref().map_or(0, |a| a.len())
        + r.generated.as_ref().map_or(0, |g| g.len())
        + 48;
    let total: usize = r
        .charts
        .iter()
        .map(|c| c.name.len() + c.value.len() + fixed)
        .sum();
    let mut body = Vec::with_capacity(total);
    let mut table = HashMap::with_capacity(r.charts.len());
    // Charts whose versions the index does not list newest first, in index order
    // (the record's layout must be the same in every process), and where each
    // name's is (a chart named again replaces it).
    let mut unsorted: Vec<Option<(&super::json::ChartRanges, Vec<usize>)>> = Vec::new();
    let mut unsorted_at: HashMap<&str, usize> = HashMap::new();
    for chart in &r.charts {
        let start = body.len();
        let list_at = write_view_head(&mut body, json, &chart.name);
        body.extend_from_slice(part(&chart.value));
        let list_end = body.len();
        write_view_tail(&mut body, json);
        let range = start..body.len();
        let versions: Vec<Option<&str>> = chart
            .items
            .iter()
            .map(|it| it.version.as_ref().and_then(|v| json_str(part(v))))
            .collect();
        let order = super::version::newest_first(&versions);
        if let Some(i) = unsorted_at.remove(chart.name.as_str()) {
            unsorted[i] = None;
        }
        let view = if order.iter().enumerate().all(|(i, &o)| i == o) {
            // `list_at + (offset in the value)` is where a byte of the value landed.
            let at = |offset: usize| list_at + offset - chart.value.start;
            ChartView {
                sorted: range.clone(),
                ends: chart.items.iter().map(|it| at(it.value.end)).collect(),
                tail: list_end - 1,
                range,
            }
        } else {
            unsorted_at.insert(&chart.name, unsorted.len());
            unsorted.push(Some((chart, order)));
            ChartView {
                sorted: range.clone(),
                ends: Box::default(),
                tail: 0,
                range,
            }
        };
        // A chart named twice: the last one counts, as in Helm.
        table.insert(chart.name.clone(), view);
    }
    for (chart, order) in unsorted.into_iter().flatten() {
        let Some(view) = table.get_mut(&chart.name) else {
            continue;
        };
        let start = body.len();
        write_view_head(&mut body, json, &chart.name);
        body.push(b'[');
        let mut ends = Vec::with_capacity(order.len());
        for (k, &i) in order.iter().enumerate() {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(part(&chart.items[i].value));
            ends.push(body.len());
        }
        let tail = body.len();
        body.push(b']');
        write_view_tail(&mut body, json);
        view.sorted = start..body.len();
        view.ends = ends.into();
        view.tail = tail;
    }
    let mut plain: Vec<Range<usize>> = table.values().map(|v| v.range.clone()).collect();
    plain.sort_unstable_by_key(|r| r.start);
    Views {
        body: Bytes::from(body),
        table,
        plain,
    }
}

/// Writes a view's start, up to where the chart's list goes; returns that offset.
fn write_view_head(body: &mut Vec<u8>, json: &JsonForm, name: &str) -> usize {
    body.push(b'{');
    if let Some(api) = &json.ranges.api_version {
        body.extend_from_slice(b"\"apiVersion\":");
        body.extend_from_slice(&json.text[api.clone()]);
        body.push(b',');
    }
    body.extend_from_slice(b"\"entries\":{");
    write_json_string(body, name);
    body.push(b':');
    body.len()
}

/// Writes a view's end, after the chart's list.
fn write_view_tail(body: &mut Vec<u8>, json: &JsonForm) {
    body.push(b'}');
    if let Some(generated) = &json.ranges.generated {
        body.extend_from_slice(b",\"generated\":");
        body.extend_from_slice(&json.text[generated.clone()]);
    }
    body.push(b'}');
}

/// A JSON string literal's value (`None`: not a string).
fn json_str(literal: &[u8]) -> Option<&str> {
    // The writer escapes only what JSON requires; a version with an escape in it
    // is not one Helm parses anyway.
    let inner = literal.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// The ETag of one chart's view in one form, from the views record's ETag;
/// `newest`: of its newest N versions (`?versions=N`, N already clamped to the
/// chart's count, so every N that gives the same bytes gives the same ETag).
pub fn view_etag(views_etag: &str, chart: &str, json: bool, newest: Option<usize>) -> String {
    let (weak, inner) = match views_etag.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", views_etag),
    };
    let form = if json { "j" } else { "y" };
    let crc = crc32fast::hash(chart.as_bytes());
    let inner = inner.trim_matches('"');
    match newest {
        None => format!("{weak}\"{inner}-{crc:08x}{form}\""),
        Some(n) => format!("{weak}\"{inner}-{crc:08x}n{n}{form}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::super::json::JsonWriter;
    use super::super::walk::walk;
    use super::*;

    #[test]
    fn paths_under_the_prefix() {
        assert_eq!(
            parse_path("/-/charts/app/index.yaml"),
            Some(ViewPath::Index { chart: "app" })
        );
        assert_eq!(
            parse_path("/-/charts/app/app-1.0.0.tgz"),
            Some(ViewPath::Object {
                key: "/app-1.0.0.tgz"
            })
        );
        assert_eq!(
            parse_path("/-/charts/app/sub/app-1.0.0.tgz"),
            Some(ViewPath::Object {
                key: "/sub/app-1.0.0.tgz"
            })
        );
        assert_eq!(parse_path("/-/charts/app"), Some(ViewPath::Invalid));
        assert_eq!(parse_path("/index.yaml"), None);
        assert_eq!(parse_path("/-/other/x"), None);
    }

    #[test]
    fn each_view_is_its_chart_part_of_the_full_index() {
        let y = "apiVersion: v1\nentries:\n  a:\n  - {name: a, version: 1.0.0, urls: [a-1.0.0.tgz]}\n  b:\n  - {name: b, version: 2.0.0}\n  - {name: b, version: 1.0.0}\ngenerated: \"2024-01-01T00:00:00Z\"\n";
        let mut w = JsonWriter::new(y.len());
        walk(y, &mut [&mut w]).unwrap();
        let form = w.finish().unwrap();
        let full: serde_json::Value = serde_json::from_slice(&form.text).unwrap();
        let views = build(&form);
        assert_eq!(views.table.len(), 2);
        for name in ["a", "b"] {
            let v: serde_json::Value =
                serde_json::from_slice(&views.body[views.table[name].range.clone()]).unwrap();
            assert_eq!(v["apiVersion"], full["apiVersion"]);
            assert_eq!(v["generated"], full["generated"]);
            assert_eq!(v["entries"].as_object().unwrap().len(), 1);
            assert_eq!(v["entries"][name], full["entries"][name]);
        }
        let a = view_etag("\"abc-views1\"", "a", true, None);
        assert_ne!(a, view_etag("\"abc-views1\"", "b", true, None));
        assert_ne!(a, view_etag("\"abc-views1\"", "a", false, None));
        assert!(a.starts_with("\"abc-views1-"));
        let n1 = view_etag("\"abc-views1\"", "a", true, Some(1));
        let all = [
            a.clone(),
            n1.clone(),
            view_etag("\"abc-views1\"", "a", true, Some(2)),
            view_etag("\"abc-views1\"", "a", false, Some(1)),
            view_etag("\"abc-views1\"", "a", false, None),
        ];
        for (i, x) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(x), "{x}");
        }
    }

    fn form(y: &str) -> JsonForm {
        let mut w = JsonWriter::new(y.len());
        walk(y, &mut [&mut w]).unwrap();
        w.finish().unwrap()
    }

    /// The newest `n` versions of `chart`, as served: the pieces concatenated.
    fn newest(views: &Views, chart: &str, n: usize) -> serde_json::Value {
        let [a, b] = views.table[chart].newest(n);
        let mut bytes = views.body[a].to_vec();
        bytes.extend_from_slice(&views.body[b]);
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    fn versions_of(doc: &serde_json::Value, chart: &str) -> Vec<String> {
        doc["entries"][chart]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    #[test]
    fn the_newest_versions_are_pieces_of_the_record() {
        let y = "apiVersion: v1\nentries:\n  sorted:\n  - {version: 2.0.0, x: [1]}\n  - {version: 1.10.0}\n  - {version: 1.9.0}\n  mixed:\n  - {version: 1.9.0}\n  - {version: bad}\n  - {version: 1.10.0}\n  - {version: 2.0.0-rc.1}\n  - {version: v2}\n  empty: []\n  odd: {version: 1.0.0}\ngenerated: \"2024\"\n";
        let f = form(y);
        let views = build(&f);
        let full: serde_json::Value = serde_json::from_slice(&f.text).unwrap();
        // Already newest first: no copy, the view itself.
        let s = &views.table["sorted"];
        assert_eq!((s.sorted.clone(), s.versions()), (s.range.clone(), 3));
        for n in 1..=5 {
            let doc = newest(&views, "sorted", n);
            assert_eq!(doc["apiVersion"], "v1");
            assert_eq!(doc["generated"], "2024");
            assert_eq!(doc["entries"].as_object().unwrap().len(), 1);
            let want = &full["entries"]["sorted"].as_array().unwrap()[..n.min(3)];
            assert_eq!(doc["entries"]["sorted"].as_array().unwrap(), want, "{n}");
        }
        assert_eq!(s.newest(3)[1].len(), 0, "all versions: one piece");
        // Not in Helm's order: a sorted copy after all views; the view keeps the
        // index's order.
        let m = &views.table["mixed"];
        assert!(m.sorted.start >= views.table.values().map(|v| v.range.end).max().unwrap());
        let plain: serde_json::Value =
            serde_json::from_slice(&views.body[m.range.clone()]).unwrap();
        assert_eq!(plain["entries"]["mixed"], full["entries"]["mixed"]);
        assert_eq!(versions_of(&newest(&views, "mixed", 1), "mixed"), ["v2"]);
        assert_eq!(
            versions_of(&newest(&views, "mixed", 4), "mixed"),
            ["v2", "2.0.0-rc.1", "1.10.0", "1.9.0"]
        );
        assert_eq!(
            versions_of(&newest(&views, "mixed", usize::MAX), "mixed"),
            ["v2", "2.0.0-rc.1", "1.10.0", "1.9.0", "bad"]
        );
        // No versions, or not a list: the whole view for any N.
        for chart in ["empty", "odd"] {
            let plain: serde_json::Value =
                serde_json::from_slice(&views.body[views.table[chart].range.clone()]).unwrap();
            assert_eq!(newest(&views, chart, 1), plain, "{chart}");
        }
    }

    #[test]
    fn versions_query() {
        assert_eq!(parse_versions(None), Ok(None));
        assert_eq!(parse_versions(Some("a=1")), Ok(None));
        assert_eq!(parse_versions(Some("versions=3")), Ok(Some(3)));
        assert_eq!(parse_versions(Some("x=1&versions=007")), Ok(Some(7)));
        assert_eq!(
            parse_versions(Some("versions=123456789012345678901234567890")),
            Ok(Some(usize::MAX))
        );
        for bad in [
            "versions=0",
            "versions=000",
            "versions=",
            "versions=-1",
            "versions=1.5",
            "versions=two",
            "versions=+3",
        ] {
            assert!(parse_versions(Some(bad)).is_err(), "{bad}");
        }
    }
}

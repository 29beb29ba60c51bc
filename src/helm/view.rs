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
    pub table: HashMap<String, Range<usize>>,
}

/// The table of the stored views of one index version (its served YAML ETag).
#[derive(Debug)]
pub struct ViewTable {
    pub yaml_etag: String,
    /// Which of [`super::INDEX_VIEWS_KEYS`] holds the views.
    pub slot: usize,
    pub table: HashMap<String, Range<usize>>,
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
        .map(|(n, v)| n.len() + v.len() + fixed)
        .sum();
    let mut body = Vec::with_capacity(total);
    let mut table = HashMap::with_capacity(r.charts.len());
    for (name, versions) in &r.charts {
        let start = body.len();
        body.push(b'{');
        if let Some(api) = &r.api_version {
            body.extend_from_slice(b"\"apiVersion\":");
            body.extend_from_slice(part(api));
            body.push(b',');
        }
        body.extend_from_slice(b"\"entries\":{");
        write_json_string(&mut body, name);
        body.push(b':');
        body.extend_from_slice(part(versions));
        body.push(b'}');
        if let Some(generated) = &r.generated {
            body.extend_from_slice(b",\"generated\":");
            body.extend_from_slice(part(generated));
        }
        body.push(b'}');
        // A chart named twice: the last one counts, as in Helm.
        table.insert(name.clone(), start..body.len());
    }
    Views {
        body: Bytes::from(body),
        table,
    }
}

/// The ETag of one chart's view in one form, from the views record's ETag.
pub fn view_etag(views_etag: &str, chart: &str, json: bool) -> String {
    let (weak, inner) = match views_etag.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", views_etag),
    };
    let form = if json { "j" } else { "y" };
    format!(
        "{weak}\"{}-{:08x}{form}\"",
        inner.trim_matches('"'),
        crc32fast::hash(chart.as_bytes())
    )
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
                serde_json::from_slice(&views.body[views.table[name].clone()]).unwrap();
            assert_eq!(v["apiVersion"], full["apiVersion"]);
            assert_eq!(v["generated"], full["generated"]);
            assert_eq!(v["entries"].as_object().unwrap().len(), 1);
            assert_eq!(v["entries"][name], full["entries"][name]);
        }
        let a = view_etag("\"abc-views1\"", "a", true);
        assert_ne!(a, view_etag("\"abc-views1\"", "b", true));
        assert_ne!(a, view_etag("\"abc-views1\"", "a", false));
        assert!(a.starts_with("\"abc-views1-"));
    }
}

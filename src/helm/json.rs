//! The compact JSON form of an index, written from the event stream
//! ([`super::walk`]) in the same pass as the extraction — no document tree.
//!
//! Helm ≥ 3.13 reads an index that is valid JSON with Go's JSON decoder, and
//! anything else with sigs.k8s.io/yaml; the JSON written here must decode to
//! exactly what the YAML decodes to. So it reproduces sigs.k8s.io/yaml's
//! YAML → JSON conversion ([`super::scalar`] types plain scalars like go-yaml v2,
//! YAML 1.1), including its one typed step: where Helm's struct field is a string,
//! a plain scalar typed as a number or boolean becomes the string Go's `strconv`
//! makes of it (`version: 1.10` is the string `"1.1"` for Helm, and so here).
//! [`Target`] is the part of Helm's `repo.IndexFile` that decides it, including
//! sigs.k8s.io/yaml's handling of the embedded `*chart.Metadata` (it looks up
//! promoted fields on the embedded struct, so they are *not* coerced: an unquoted
//! `version: 1.10` fails in Helm in both forms alike).
//!
//! Whatever cannot be written faithfully stops the JSON form (the YAML is then
//! served to every client): a tag other than `!!str`, a `<<` merge key, a
//! complex or null mapping key, NaN or infinities (not JSON), a document that is
//! not a mapping. Aliases arrive expanded, as go-yaml expands them.

use std::ops::Range;

use super::scalar::{as_go_string, go_key, resolve, Resolved};
use super::walk::{Ev, ScalarTag, Sink};

/// What Helm decodes a value into (as far as string coercion goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// No coercion (interface{}, bool, time, unknown fields, …).
    Any,
    Str,
    /// `repo.IndexFile`.
    Index,
    /// `repo.ChartVersion`.
    ChartVersion,
    /// `chart.Metadata`.
    Metadata,
    Maintainer,
    Dependency,
    SeqOf(Elem),
    MapOf(Elem),
}

/// Element targets of lists and maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Any,
    Str,
    ChartVersion,
    Maintainer,
    Dependency,
    /// `map[string]ChartVersions`: each value a list of versions.
    Versions,
}

impl Elem {
    fn target(self) -> Target {
        match self {
            Elem::Any => Target::Any,
            Elem::Str => Target::Str,
            Elem::ChartVersion => Target::ChartVersion,
            Elem::Maintainer => Target::Maintainer,
            Elem::Dependency => Target::Dependency,
            Elem::Versions => Target::SeqOf(Elem::ChartVersion),
        }
    }
}

/// `chart.Metadata`'s fields (JSON names).
const METADATA_FIELDS: &[(&str, Target)] = &[
    ("name", Target::Str),
    ("home", Target::Str),
    ("sources", Target::SeqOf(Elem::Str)),
    ("version", Target::Str),
    ("description", Target::Str),
    ("keywords", Target::SeqOf(Elem::Str)),
    ("maintainers", Target::SeqOf(Elem::Maintainer)),
    ("icon", Target::Str),
    ("apiVersion", Target::Str),
    ("condition", Target::Str),
    ("tags", Target::Str),
    ("appVersion", Target::Str),
    ("deprecated", Target::Any),
    ("annotations", Target::MapOf(Elem::Str)),
    ("kubeVersion", Target::Str),
    ("dependencies", Target::SeqOf(Elem::Dependency)),
    ("type", Target::Str),
];

/// `repo.ChartVersion`'s own fields; the rest are `Metadata`'s, promoted.
const CHART_VERSION_FIELDS: &[(&str, Target)] = &[
    ("urls", Target::SeqOf(Elem::Str)),
    ("created", Target::Any),
    ("removed", Target::Any),
    ("digest", Target::Str),
    ("checksum", Target::Str),
    ("engine", Target::Str),
    ("tillerVersion", Target::Str),
    ("url", Target::Str),
];

const INDEX_FIELDS: &[(&str, Target)] = &[
    ("serverInfo", Target::MapOf(Elem::Any)),
    ("apiVersion", Target::Str),
    ("generated", Target::Any),
    ("entries", Target::MapOf(Elem::Versions)),
    ("publicKeys", Target::SeqOf(Elem::Str)),
    ("annotations", Target::MapOf(Elem::Str)),
];

const MAINTAINER_FIELDS: &[(&str, Target)] = &[
    ("name", Target::Str),
    ("email", Target::Str),
    ("url", Target::Str),
];

const DEPENDENCY_FIELDS: &[(&str, Target)] = &[
    ("name", Target::Str),
    ("version", Target::Str),
    ("repository", Target::Str),
    ("condition", Target::Str),
    ("tags", Target::SeqOf(Elem::Str)),
    ("enabled", Target::Any),
    ("import-values", Target::SeqOf(Elem::Any)),
    ("alias", Target::Str),
];

/// Go's JSON field lookup: exact name first, else ASCII case-insensitive.
fn field(fields: &[(&str, Target)], key: &str) -> Option<Target> {
    fields
        .iter()
        .find(|(n, _)| *n == key)
        .or_else(|| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)))
        .map(|(_, t)| *t)
}

impl Target {
    /// The target of the value under `key` when this target receives a mapping.
    fn value_of(self, key: &str) -> Target {
        match self {
            Target::Index => field(INDEX_FIELDS, key).unwrap_or(Target::Any),
            Target::ChartVersion => field(CHART_VERSION_FIELDS, key).unwrap_or_else(|| {
                // sigs.k8s.io/yaml passes the embedded struct itself as the target
                // of a promoted field (it takes `Field(index[0])`).
                if field(METADATA_FIELDS, key).is_some() {
                    Target::Metadata
                } else {
                    Target::Any
                }
            }),
            Target::Metadata => field(METADATA_FIELDS, key).unwrap_or(Target::Any),
            Target::Maintainer => field(MAINTAINER_FIELDS, key).unwrap_or(Target::Any),
            Target::Dependency => field(DEPENDENCY_FIELDS, key).unwrap_or(Target::Any),
            Target::MapOf(e) => e.target(),
            Target::Any | Target::Str | Target::SeqOf(_) => Target::Any,
        }
    }

    /// The target of each item when this target receives a sequence.
    fn item(self) -> Target {
        match self {
            Target::SeqOf(e) => e.target(),
            _ => Target::Any,
        }
    }
}

/// Why there is no JSON form.
pub type Unsupported = &'static str;

#[derive(Debug)]
enum Frame {
    Map {
        target: Target,
        /// Expecting a key (else the value of `value_target`).
        want_key: bool,
        value_target: Target,
        first: bool,
    },
    Seq {
        item: Target,
        first: bool,
    },
}

/// Where the parts a per-chart view needs were written in the JSON text.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ranges {
    /// The root's `apiVersion` value.
    pub api_version: Option<Range<usize>>,
    /// The root's `generated` value.
    pub generated: Option<Range<usize>>,
    /// Each chart under `entries`, in the order written.
    pub charts: Vec<ChartRanges>,
}

/// Where one chart under `entries` was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartRanges {
    pub name: String,
    /// Its value (the list of versions).
    pub value: Range<usize>,
    /// Each item of that list (empty when the value is not a list).
    pub items: Vec<ItemRanges>,
}

/// Where one version of a chart was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRanges {
    /// The item, without the separating commas.
    pub value: Range<usize>,
    /// Its `version` field's value (the last key Go's JSON decoder matches to it,
    /// ASCII case-insensitively), if it has one.
    pub version: Option<Range<usize>>,
}

/// The JSON form and its [`Ranges`].
#[derive(Debug)]
pub struct JsonForm {
    pub text: Vec<u8>,
    pub ranges: Ranges,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootField {
    ApiVersion,
    Generated,
    Entries,
    Other,
}

/// The JSON-writing [`Sink`].
pub struct JsonWriter {
    ranges: Ranges,
    /// The root field whose value is being written, and where it starts.
    root_value: Option<(RootField, usize)>,
    /// The chart under `entries` whose value is being written, and where it starts.
    chart_value: Option<(String, usize)>,
    /// Stack depth of the `entries` mapping while it is open.
    entries_depth: Option<usize>,
    /// The items of the chart being written (see [`ItemRanges`]), where the
    /// current one starts, and where its `version` value starts and was written.
    items: Vec<ItemRanges>,
    item_start: Option<usize>,
    version_start: Option<usize>,
    item_version: Option<Range<usize>>,
    out: Vec<u8>,
    /// Why the JSON form was given up (the walk goes on for the other sinks).
    failed: Option<Unsupported>,
    stack: Vec<Frame>,
    done: bool,
    /// A scratch buffer for number formatting.
    num: String,
}

impl JsonWriter {
    /// A writer expecting a document of about `size_hint` bytes of YAML.
    pub fn new(size_hint: usize) -> JsonWriter {
        JsonWriter {
            out: Vec::with_capacity(size_hint),
            ranges: Ranges::default(),
            root_value: None,
            chart_value: None,
            entries_depth: None,
            items: Vec::new(),
            item_start: None,
            version_start: None,
            item_version: None,
            failed: None,
            stack: Vec::new(),
            done: false,
            num: String::new(),
        }
    }

    /// The JSON text, once the walk is over.
    pub fn finish(self) -> Result<JsonForm, Unsupported> {
        if let Some(why) = self.failed {
            Err(why)
        } else if self.done {
            Ok(JsonForm {
                text: self.out,
                ranges: self.ranges,
            })
        } else {
            Err("the document is not a complete mapping")
        }
    }

    /// Writes the separator before a value or key, and says which target it has
    /// (`None` when a key is expected).
    fn position(&mut self) -> Result<Option<Target>, Unsupported> {
        match self.stack.last_mut() {
            None => {
                if self.done {
                    return Err("content after the document");
                }
                Ok(Some(Target::Index))
            }
            Some(Frame::Seq { item, first }) => {
                if !*first {
                    self.out.push(b',');
                }
                *first = false;
                let item = *item;
                if self.in_chart_list() {
                    self.item_start = Some(self.out.len());
                    self.item_version = None;
                }
                Ok(Some(item))
            }
            Some(Frame::Map {
                want_key: true,
                first,
                ..
            }) => {
                if !*first {
                    self.out.push(b',');
                }
                *first = false;
                Ok(None)
            }
            Some(Frame::Map {
                want_key,
                value_target,
                ..
            }) => {
                *want_key = true;
                Ok(Some(*value_target))
            }
        }
    }

    fn string(&mut self, s: &str) {
        write_json_string(&mut self.out, s);
    }

    fn scalar_value(
        &mut self,
        value: &str,
        plain: bool,
        target: Target,
    ) -> Result<(), Unsupported> {
        if !plain {
            self.string(value);
            return Ok(());
        }
        let r = resolve(value);
        if target == Target::Str {
            if let Some(s) = as_go_string(r) {
                self.string(&s);
                return Ok(());
            }
        }
        match r {
            Resolved::Null => self.out.extend_from_slice(b"null"),
            Resolved::Bool(true) => self.out.extend_from_slice(b"true"),
            Resolved::Bool(false) => self.out.extend_from_slice(b"false"),
            Resolved::Int(i) => {
                use std::fmt::Write;
                self.num.clear();
                let _ = write!(self.num, "{i}");
                self.out.extend_from_slice(self.num.as_bytes());
            }
            Resolved::Uint(u) => {
                use std::fmt::Write;
                self.num.clear();
                let _ = write!(self.num, "{u}");
                self.out.extend_from_slice(self.num.as_bytes());
            }
            Resolved::Float(f) if !f.is_finite() => return Err("NaN or infinity (not JSON)"),
            Resolved::Float(f) => {
                use std::fmt::Write;
                self.num.clear();
                // Shortest round-trip form; JSON number syntax (`1e21`, `0.5`, `-0.0`).
                let _ = write!(self.num, "{f:?}");
                self.out.extend_from_slice(self.num.as_bytes());
            }
            Resolved::Str => self.string(value),
        }
        Ok(())
    }
}

impl Sink for JsonWriter {
    /// Never stops the walk: a document without a JSON form still has digests.
    fn event(&mut self, ev: &Ev<'_>) -> Result<(), Unsupported> {
        if self.failed.is_none() {
            if let Err(why) = self.write(ev) {
                self.failed = Some(why);
                self.out = Vec::new();
                self.stack = Vec::new();
            }
        }
        Ok(())
    }
}

impl JsonWriter {
    /// Is the innermost open collection a chart's list of versions (an item of it
    /// is next)?
    fn in_chart_list(&self) -> bool {
        self.stack.len() == 3
            && self.entries_depth == Some(2)
            && self.chart_value.is_some()
            && matches!(self.stack.last(), Some(Frame::Seq { .. }))
    }

    /// Is the innermost open collection a mapping item of a chart's list?
    fn in_chart_item(&self) -> bool {
        self.stack.len() == 4
            && self.entries_depth == Some(2)
            && self.chart_value.is_some()
            && matches!(self.stack.get(2), Some(Frame::Seq { .. }))
    }

    /// A value ended at the current depth: note it if a view needs it.
    fn value_done(&mut self) {
        let depth = self.stack.len();
        let end = self.out.len();
        if depth == 1 {
            match self.root_value.take() {
                Some((RootField::ApiVersion, start)) => self.ranges.api_version = Some(start..end),
                Some((RootField::Generated, start)) => self.ranges.generated = Some(start..end),
                _ => {}
            }
        } else if self.entries_depth == Some(depth) {
            if let Some((name, start)) = self.chart_value.take() {
                self.ranges.charts.push(ChartRanges {
                    name,
                    value: start..end,
                    items: std::mem::take(&mut self.items),
                });
            }
        } else if self.in_chart_list() {
            if let Some(start) = self.item_start.take() {
                self.items.push(ItemRanges {
                    value: start..end,
                    version: self.item_version.take(),
                });
            }
        } else if self.in_chart_item() {
            if let Some(start) = self.version_start.take() {
                self.item_version = Some(start..end);
            }
        }
    }

    /// A key was written: note where its value starts if a view needs it.
    fn key_done(&mut self, key: &str) {
        let depth = self.stack.len();
        let start = self.out.len();
        if self.in_chart_item() && key.eq_ignore_ascii_case("version") {
            self.version_start = Some(start);
        }
        if depth == 1 {
            let field = match key {
                "apiVersion" => RootField::ApiVersion,
                "generated" => RootField::Generated,
                "entries" => RootField::Entries,
                _ => RootField::Other,
            };
            self.root_value = Some((field, start));
        } else if self.entries_depth == Some(depth) {
            self.chart_value = Some((key.to_string(), start));
        }
    }

    fn close(&mut self, byte: u8) {
        if self.entries_depth == Some(self.stack.len()) {
            self.entries_depth = None;
        }
        self.stack.pop();
        self.out.push(byte);
        self.done = self.stack.is_empty();
        self.value_done();
    }

    fn write(&mut self, ev: &Ev<'_>) -> Result<(), Unsupported> {
        match ev {
            Ev::TaggedCollection => Err("a tagged collection"),
            Ev::MapEnd => {
                self.close(b'}');
                Ok(())
            }
            Ev::SeqEnd => {
                self.close(b']');
                Ok(())
            }
            Ev::MapStart => {
                let target = self.position()?.ok_or("a complex mapping key")?;
                if self.stack.len() == 1 && matches!(self.root_value, Some((RootField::Entries, _)))
                {
                    self.entries_depth = Some(2);
                }
                self.out.push(b'{');
                self.stack.push(Frame::Map {
                    target,
                    want_key: true,
                    value_target: Target::Any,
                    first: true,
                });
                Ok(())
            }
            Ev::SeqStart => {
                let target = self.position()?.ok_or("a complex mapping key")?;
                if self.stack.is_empty() {
                    return Err("the document is a list");
                }
                self.out.push(b'[');
                self.stack.push(Frame::Seq {
                    item: target.item(),
                    first: true,
                });
                Ok(())
            }
            Ev::Scalar { value, plain, tag } => {
                if *tag == ScalarTag::Other {
                    return Err("a tagged scalar");
                }
                let plain = *plain && *tag == ScalarTag::None;
                match self.position()? {
                    None => {
                        if plain && value == "<<" {
                            return Err("a merge key (<<)");
                        }
                        let key = go_key(value, plain).ok_or("a null mapping key")?;
                        self.string(&key);
                        self.out.push(b':');
                        if let Some(Frame::Map {
                            target,
                            value_target,
                            want_key,
                            ..
                        }) = self.stack.last_mut()
                        {
                            *value_target = target.value_of(&key);
                            *want_key = false;
                        }
                        self.key_done(&key);
                        Ok(())
                    }
                    Some(_) if self.stack.is_empty() => Err("the document is a scalar"),
                    Some(target) => {
                        self.scalar_value(value, plain, target)?;
                        self.value_done();
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::walk::walk;
    use super::*;

    fn json(yaml: &str) -> Result<String, String> {
        let mut w = JsonWriter::new(yaml.len());
        walk(yaml, &mut [&mut w]).map_err(|e| e.to_string())?;
        w.finish()
            .map(|v| String::from_utf8(v.text).unwrap())
            .map_err(str::to_string)
    }

    #[test]
    fn typing_follows_helm() {
        let y = r#"apiVersion: v1
entries:
  a:
  - name: a
    version: 1.10
    appVersion: "1.10"
    digest: 0123
    urls: [010, a.tgz]
    deprecated: yes
    created: 2024-01-02T03:04:05Z
    annotations: {1.10: 1.10, b: no}
    maintainers: [{name: 12, email: on}]
    dependencies: [{name: x, version: 2.0, enabled: off, import-values: [1, yes]}]
    extra: [1.5, ~, y, 0x10]
annotations: {n: 3}
serverInfo: {contextPath: 1}
generated: 2024-01-01
"#;
        let got = json(y).unwrap();
        let want = concat!(
            r#"{"apiVersion":"v1","entries":{"a":[{"name":"a","version":1.1,"appVersion":"1.10","#,
            r#""digest":"83","urls":["8","a.tgz"],"deprecated":true,"created":"2024-01-02T03:04:05Z","#,
            r#""annotations":{"1.1":1.1,"b":false},"maintainers":[{"name":12,"email":true}],"#,
            r#""dependencies":[{"name":"x","version":2.0,"enabled":false,"import-values":[1,true]}],"#,
            r#""extra":[1.5,null,true,16]}]},"annotations":{"false":"3"},"serverInfo":{"contextPath":1},"#,
            r#""generated":"2024-01-01"}"#
        );
        assert_eq!(got, want);
        // (`n:` as a key is go-yaml v2's boolean false: Helm reads the key "false".)
        serde_json::from_str::<serde_json::Value>(&got).expect("valid JSON");
    }

    #[test]
    fn strings_of_every_style_are_kept_exactly() {
        let y = "entries: {}\nd: |\n  line \"one\"\n  line\\two\n\ne: >-\n  folded\n  text\nf: 'it''s'\ng: \"tab\\tctl\\x01\"\nh: plain\n  continued\ni: !!str 1.10\n";
        let v: serde_json::Value = serde_json::from_str(&json(y).unwrap()).unwrap();
        assert_eq!(v["d"], "line \"one\"\nline\\two\n");
        assert_eq!(v["e"], "folded text");
        assert_eq!(v["f"], "it's");
        assert_eq!(v["g"], "tab\tctl\u{1}");
        assert_eq!(v["h"], "plain continued");
        assert_eq!(v["i"], "1.10");
    }

    #[test]
    fn what_cannot_be_written_faithfully_stops_the_json_form() {
        for y in [
            "a: !custom x\n",
            "a: !!binary aGk=\n",
            "base: &b {x: 1}\nc:\n  <<: *b\n",
            "? [1]\n: x\n",
            "~: x\n",
            "a: .nan\n",
            "a: -.inf\n",
            "- a\n",
            "just text\n",
            "a: !!set {x: ~}\n",
        ] {
            assert!(json(y).is_err(), "{y:?}");
        }
        assert_eq!(json("a: &x [1]\nb: *x\n").unwrap(), r#"{"a":[1],"b":[1]}"#);
        assert_eq!(json("{}").unwrap(), "{}");
    }

    #[test]
    fn ranges_locate_what_a_chart_view_needs() {
        let y = "apiVersion: v1\nentries:\n  a: [{version: 1}]\n  b:\n  - {version: 2, x: {z: [1]}}\n  c: ~\nother: {apiVersion: no}\ngenerated: \"2024\"\n";
        let mut w = JsonWriter::new(y.len());
        walk(y, &mut [&mut w]).unwrap();
        let f = w.finish().unwrap();
        let t = |r: &Range<usize>| std::str::from_utf8(&f.text[r.clone()]).unwrap().to_string();
        assert_eq!(t(f.ranges.api_version.as_ref().unwrap()), "\"v1\"");
        assert_eq!(t(f.ranges.generated.as_ref().unwrap()), "\"2024\"");
        let charts: Vec<(String, String)> = f
            .ranges
            .charts
            .iter()
            .map(|c| (c.name.clone(), t(&c.value)))
            .collect();
        assert_eq!(
            charts,
            [
                ("a".to_string(), "[{\"version\":1}]".to_string()),
                ("b".into(), "[{\"version\":2,\"x\":{\"z\":[1]}}]".into()),
                ("c".into(), "null".into()),
            ]
        );
        let items = |i: usize| -> Vec<(String, Option<String>)> {
            f.ranges.charts[i]
                .items
                .iter()
                .map(|it| (t(&it.value), it.version.as_ref().map(t)))
                .collect()
        };
        assert_eq!(items(0), [("{\"version\":1}".into(), Some("1".into()))]);
        assert_eq!(
            items(1),
            [("{\"version\":2,\"x\":{\"z\":[1]}}".into(), Some("2".into()))]
        );
        assert!(items(2).is_empty());
    }

    #[test]
    fn items_and_their_versions_are_located() {
        let y = "entries:
  a:
  - {version: 1.0.0, Version: '2.0.0'}
  - [x]
  - {name: a, nested: {version: 9}}
  - 'v3'
  b: {version: 1}
";
        let mut w = JsonWriter::new(y.len());
        walk(y, &mut [&mut w]).unwrap();
        let f = w.finish().unwrap();
        let t = |r: &Range<usize>| std::str::from_utf8(&f.text[r.clone()]).unwrap().to_string();
        let a = &f.ranges.charts[0];
        let got: Vec<(String, Option<String>)> = a
            .items
            .iter()
            .map(|it| (t(&it.value), it.version.as_ref().map(t)))
            .collect();
        assert_eq!(
            got,
            [
                (
                    r#"{"version":"1.0.0","Version":"2.0.0"}"#.into(),
                    Some(r#""2.0.0""#.into())
                ),
                (r#"["x"]"#.into(), None),
                (r#"{"name":"a","nested":{"version":9}}"#.into(), None),
                (r#""v3""#.into(), None),
            ]
        );
        // A chart whose value is not a list has no items.
        assert!(f.ranges.charts[1].items.is_empty());
    }
}

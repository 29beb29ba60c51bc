//! One pass over the first YAML document of an index, as a stream of simplified
//! events ([`Ev`]) handed to [`Sink`]s — the index extractor and the JSON writer
//! share one parse.
//!
//! The events come from `saphyr-parser` (a maintained, YAML 1.2 conformant
//! event parser that borrows plain scalars from the input, no document tree).
//! This file adds what the sinks should not each redo:
//! - **Aliases are expanded.** The events of every anchored node are recorded
//!   (anchors are rare in indexes, so this costs nothing on real ones) and replayed
//!   where an alias names it, so a sink sees the document as a tree. The expansion
//!   is bounded in events ([`MAX_EXPANSION`]) and in bytes: what anchors record
//!   (every open recording keeps its own copy) plus what aliases replay may not
//!   exceed the document's own size plus [`EXTRA_BYTES`], so the derived forms stay
//!   within about twice the index whatever its anchors do. An alias bomb (many
//!   aliases of one big scalar, deeply nested anchors) is an error, not an
//!   out-of-memory.
//! - **Only the first document counts**, as in Helm (its YAML decoder reads the
//!   first document and ignores the rest).
//! - Nesting is bounded ([`MAX_DEPTH`]); a parse error is a [`WalkError`] with
//!   its position, never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

/// Deepest nesting of collections accepted (a Helm index needs 6).
pub const MAX_DEPTH: usize = 256;
/// Events produced by expanding aliases, at most this many plus 4× the events
/// of the document itself.
pub const MAX_EXPANSION: usize = 1 << 20;
/// Bytes that anchors and aliases may add (recorded copies and replayed events),
/// beyond the document's own length.
pub const EXTRA_BYTES: usize = 1 << 20;
/// What one event costs against that budget besides its text.
const EVENT_COST: usize = 16;

/// Why a document could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("YAML syntax error: {0}")]
    Syntax(#[from] ScanError),
    #[error("aliases expand to more than {0} events (alias bomb?)")]
    Expansion(usize),
    #[error("anchors and aliases copy more than {0} bytes (alias bomb?)")]
    ExpansionBytes(usize),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("alias to an undefined anchor")]
    UnknownAnchor,
    /// A sink stopped the walk (its reason is its own).
    #[error("stopped: {0}")]
    Stopped(&'static str),
}

/// A scalar's tag, as far as the sinks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarTag {
    /// No tag: plain scalars are typed by their text.
    None,
    /// `!!str`: a string whatever it looks like.
    Str,
    /// Any other tag.
    Other,
}

/// A simplified event (aliases already expanded).
#[derive(Debug, Clone, PartialEq)]
pub enum Ev<'a> {
    MapStart,
    MapEnd,
    SeqStart,
    SeqEnd,
    Scalar {
        value: Cow<'a, str>,
        /// Unquoted (its type depends on its text); quoted and block scalars are strings.
        plain: bool,
        tag: ScalarTag,
    },
    /// A collection with a tag other than the standard ones (sinks decide).
    TaggedCollection,
}

/// Receives the events of one document, in order.
pub trait Sink {
    /// `Err` stops the walk (the reason ends up in [`WalkError::Stopped`]).
    fn event(&mut self, ev: &Ev<'_>) -> Result<(), &'static str>;
}

type Owned = Ev<'static>;

/// An event's cost against the expansion byte budget.
fn weight(ev: &Ev<'_>) -> usize {
    match ev {
        Ev::Scalar { value, .. } => value.len() + EVENT_COST,
        _ => EVENT_COST,
    }
}

fn owned(ev: &Ev<'_>) -> Owned {
    match ev {
        Ev::Scalar { value, plain, tag } => Ev::Scalar {
            value: Cow::Owned(value.to_string()),
            plain: *plain,
            tag: *tag,
        },
        Ev::MapStart => Ev::MapStart,
        Ev::MapEnd => Ev::MapEnd,
        Ev::SeqStart => Ev::SeqStart,
        Ev::SeqEnd => Ev::SeqEnd,
        Ev::TaggedCollection => Ev::TaggedCollection,
    }
}

/// An anchored node being recorded.
struct Recording {
    anchor: usize,
    /// Open collections inside the node (0 once it is complete).
    depth: usize,
    events: Vec<Owned>,
}

struct Walker<'s, 'k> {
    sinks: &'s mut [&'k mut dyn Sink],
    recordings: Vec<Recording>,
    anchors: HashMap<usize, Rc<[Owned]>>,
    depth: usize,
    expanded: usize,
    parsed: usize,
    /// Bytes recorded for anchors and replayed for aliases so far.
    spent: usize,
    /// What `spent` may reach (the document's length plus [`EXTRA_BYTES`]).
    budget: usize,
}

impl Walker<'_, '_> {
    /// Hands one event to every sink and every recording; `anchor` (non-zero)
    /// starts recording the node this event opens.
    fn emit(&mut self, ev: &Ev<'_>, anchor: usize) -> Result<(), WalkError> {
        let opens = matches!(ev, Ev::MapStart | Ev::SeqStart);
        let closes = matches!(ev, Ev::MapEnd | Ev::SeqEnd);
        if opens {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(WalkError::TooDeep);
            }
        } else if closes {
            self.depth = self.depth.saturating_sub(1);
        }
        for sink in self.sinks.iter_mut() {
            sink.event(ev).map_err(WalkError::Stopped)?;
        }
        if anchor != 0 {
            self.recordings.push(Recording {
                anchor,
                depth: 0,
                events: Vec::new(),
            });
        }
        if !self.recordings.is_empty() {
            self.spend(weight(ev) * self.recordings.len())?;
        }
        let mut i = 0;
        while i < self.recordings.len() {
            let r = &mut self.recordings[i];
            r.events.push(owned(ev));
            if opens {
                r.depth += 1;
            } else if closes {
                r.depth -= 1;
            }
            if r.depth == 0 {
                // Complete: recordings complete innermost first, so this is the last.
                let r = self.recordings.remove(i);
                self.anchors.insert(r.anchor, r.events.into());
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Charges `bytes` of alias work against the budget.
    fn spend(&mut self, bytes: usize) -> Result<(), WalkError> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > self.budget {
            return Err(WalkError::ExpansionBytes(self.budget));
        }
        Ok(())
    }

    fn alias(&mut self, anchor: usize) -> Result<(), WalkError> {
        let events = self
            .anchors
            .get(&anchor)
            .cloned()
            .ok_or(WalkError::UnknownAnchor)?;
        self.expanded += events.len();
        let limit = MAX_EXPANSION + 4 * self.parsed;
        if self.expanded > limit {
            return Err(WalkError::Expansion(limit));
        }
        self.spend(events.iter().map(weight).sum())?;
        for ev in events.iter() {
            self.emit(ev, 0)?;
        }
        Ok(())
    }
}

fn scalar_tag(tag: Option<&saphyr_parser::Tag>) -> ScalarTag {
    match tag {
        None => ScalarTag::None,
        Some(t) if t.is_yaml_core_schema() && t.suffix == "str" => ScalarTag::Str,
        Some(_) => ScalarTag::Other,
    }
}

/// A collection tag chartcache can ignore: none, or the standard one for its kind.
fn plain_collection(tag: Option<&saphyr_parser::Tag>, kind: &str) -> bool {
    tag.is_none_or(|t| t.is_yaml_core_schema() && t.suffix == kind)
}

/// Walks the first document of `yaml`, feeding every sink. An empty stream is a
/// document holding one null scalar.
pub fn walk(yaml: &str, sinks: &mut [&mut dyn Sink]) -> Result<(), WalkError> {
    let mut w = Walker {
        sinks,
        recordings: Vec::new(),
        anchors: HashMap::new(),
        depth: 0,
        expanded: 0,
        parsed: 0,
        spent: 0,
        budget: yaml.len().saturating_add(EXTRA_BYTES),
    };
    let mut parser = Parser::new_from_str(yaml);
    let mut in_document = false;
    let mut seen_node = false;
    while let Some(next) = parser.next_event() {
        let (event, _span) = next?;
        w.parsed += 1;
        match event {
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart(_) => in_document = true,
            Event::DocumentEnd | Event::StreamEnd => break,
            Event::Alias(anchor) => {
                seen_node = true;
                w.alias(anchor)?
            }
            Event::Scalar(value, style, anchor, tag) => {
                seen_node = true;
                let ev = Ev::Scalar {
                    plain: style == ScalarStyle::Plain,
                    tag: scalar_tag(tag.as_deref()),
                    value,
                };
                w.emit(&ev, anchor)?;
            }
            Event::SequenceStart(anchor, tag) => {
                seen_node = true;
                if !plain_collection(tag.as_deref(), "seq") {
                    w.emit(&Ev::TaggedCollection, 0)?;
                }
                w.emit(&Ev::SeqStart, anchor)?;
            }
            Event::SequenceEnd => w.emit(&Ev::SeqEnd, 0)?,
            Event::MappingStart(anchor, tag) => {
                seen_node = true;
                if !plain_collection(tag.as_deref(), "map") {
                    w.emit(&Ev::TaggedCollection, 0)?;
                }
                w.emit(&Ev::MapStart, anchor)?;
            }
            Event::MappingEnd => w.emit(&Ev::MapEnd, 0)?,
        }
    }
    if !in_document || !seen_node {
        let null = Ev::Scalar {
            value: Cow::Borrowed(""),
            plain: true,
            tag: ScalarTag::None,
        };
        w.emit(&null, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<Owned>);
    impl Sink for Collect {
        fn event(&mut self, ev: &Ev<'_>) -> Result<(), &'static str> {
            self.0.push(owned(ev));
            Ok(())
        }
    }

    fn events(yaml: &str) -> Result<Vec<Owned>, WalkError> {
        let mut c = Collect::default();
        walk(yaml, &mut [&mut c])?;
        Ok(c.0)
    }

    fn s(v: &str) -> Owned {
        Ev::Scalar {
            value: Cow::Owned(v.into()),
            plain: true,
            tag: ScalarTag::None,
        }
    }

    #[test]
    fn aliases_replay_the_anchored_node() {
        let evs = events("a: &x [1, {b: 2}]\nc: *x\nd: &y 3\ne: *y\n").unwrap();
        let node = [
            Ev::SeqStart,
            s("1"),
            Ev::MapStart,
            s("b"),
            s("2"),
            Ev::MapEnd,
            Ev::SeqEnd,
        ];
        let mut want = vec![Ev::MapStart, s("a")];
        want.extend(node.iter().cloned());
        want.push(s("c"));
        want.extend(node.iter().cloned());
        want.extend([s("d"), s("3"), s("e"), s("3"), Ev::MapEnd]);
        assert_eq!(evs, want);
    }

    #[test]
    fn only_the_first_document_counts() {
        assert_eq!(events("a\n---\nb\n").unwrap(), vec![s("a")]);
        assert_eq!(events("").unwrap(), vec![s("")]);
        assert_eq!(events("# only a comment\n").unwrap(), vec![s("")]);
    }

    #[test]
    fn an_alias_bomb_is_an_error() {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            y.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(matches!(
            events(&y),
            Err(WalkError::Expansion(_) | WalkError::ExpansionBytes(_))
        ));
    }

    #[test]
    fn many_aliases_of_a_big_scalar_are_an_error_not_a_copy_each() {
        // 300 copies of 200 KB would be 60 MB of events from a 200 KB document.
        let mut y = format!(
            "d: &d {}
l:
",
            "x".repeat(200_000)
        );
        for _ in 0..300 {
            y.push_str("- *d\n");
        }
        assert!(matches!(events(&y), Err(WalkError::ExpansionBytes(_))));
        // A few aliases of it are fine: the budget is the document's size again.
        let y = format!("d: &d {}\nl: [*d, *d]\n", "x".repeat(200_000));
        assert_eq!(events(&y).unwrap().len(), 9);
    }

    #[test]
    fn nested_anchors_do_not_copy_their_content_once_per_level() {
        let mut y = String::new();
        for i in 0..64 {
            y.push_str(&format!("&a{i} ["));
        }
        y.push_str(&"x".repeat(100_000));
        y.push_str(&"]".repeat(64));
        assert!(matches!(events(&y), Err(WalkError::ExpansionBytes(_))));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for y in [
            "{not: [yaml",
            "a: *nope\n",
            "a: b: c\n",
            "- a\nb: c\n",
            "\"unterminated\n",
            &"[".repeat(10_000),
        ] {
            assert!(events(y).is_err(), "{y:?}");
        }
    }
}

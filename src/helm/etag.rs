//! The ETags of the served index forms.
//!
//! - The YAML form: upstream's ETag when the bytes are served as they are; when
//!   they were rewritten, upstream's plus a checksum of the served bytes
//!   ([`served_etag`]), so the served ETag changes whenever the served bytes do.
//!   The suffix is stripped again ([`upstream_etag`]) for the conditional GET that
//!   revalidates it.
//! - The JSON form: the YAML form's ETag plus a marker naming the JSON form and
//!   the converter's version ([`json_etag`]): distinct from the YAML one, strong
//!   when it is, and a function of the YAML bytes, so the stored JSON form is
//!   known to belong to the stored YAML by its ETag alone.

/// Suffix marker added to upstream ETags of rewritten indexes.
const ETAG_MARK: &str = "-cc";

/// Suffix of the JSON form's ETag; the number changes whenever the JSON written
/// for the same YAML could change (a converter fix), so no client keeps an old one.
const JSON_MARK: &str = "-json1";
/// Suffix of the views record's ETag (versioned like [`JSON_MARK`]).
const VIEWS_MARK: &str = "-views2";
/// Suffix of a gzip-compressed form's ETag (after its form's own).
const GZIP_MARK: &str = "-gz";

/// The ETag served for a rewritten index: upstream's plus a checksum of the
/// served bytes, so it changes whenever they do.
pub fn served_etag(upstream: Option<&str>, served: &[u8]) -> String {
    served_etag_crc(upstream, crc32fast::hash(served))
}

/// [`served_etag`] with the served bytes' CRC-32 already computed (by the index
/// processor, off the worker).
pub fn served_etag_crc(upstream: Option<&str>, crc: u32) -> String {
    let inner = upstream
        .map(|e| e.trim_start_matches("W/").trim_matches('"'))
        .unwrap_or("");
    format!("\"{inner}{ETAG_MARK}{crc:08x}\"")
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

/// The ETag of the JSON form of the YAML index whose (served) ETag is `yaml`.
pub fn json_etag(yaml: &str) -> String {
    derived_etag(yaml, JSON_MARK)
}

/// The ETag of the per-chart views record of the YAML index whose (served) ETag is
/// `yaml` (each view's own ETag derives from it: [`super::view::view_etag`]).
pub fn views_etag(yaml: &str) -> String {
    derived_etag(yaml, VIEWS_MARK)
}

/// The ETag of the gzip-compressed form of a form whose ETag is `form`.
pub fn gzip_etag(form: &str) -> String {
    derived_etag(form, GZIP_MARK)
}

fn derived_etag(yaml: &str, mark: &str) -> String {
    let (weak, inner) = match yaml.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", yaml),
    };
    format!("{weak}\"{}{mark}\"", inner.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_json_form_has_its_own_etag() {
        assert_eq!(json_etag("\"abc-cc0000abcd\""), "\"abc-cc0000abcd-json1\"");
        assert_eq!(json_etag("W/\"abc\""), "W/\"abc-json1\"");
        // Revalidation always uses the YAML form's ETag, never this one.
        assert_ne!(json_etag("\"abc\""), "\"abc\"");
        assert_eq!(gzip_etag(&json_etag("\"abc\"")), "\"abc-json1-gz\"");
    }
}

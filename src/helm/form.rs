//! Which form of the index a client gets: YAML, or the compact JSON form.
//!
//! Helm ≥ 3.13 (and Helm 4) check whether an index is valid JSON and then decode
//! it with Go's JSON decoder — 4–5× faster than its YAML path on a big index.
//! Helm says who it is in `User-Agent: Helm/<version>`; everything else (older
//! Helm, curl, other tools) gets the YAML, which every client reads. With
//! [`IndexFormat::Auto`] the answer depends on `User-Agent`, so index responses
//! carry `Vary: User-Agent` ([`vary`]), and on `Accept-Encoding` (a client that
//! accepts gzip gets the full index's gzip form, once it is stored).

use crate::config::IndexFormat;

/// Does this client get the JSON form (where the index has one)?
pub fn wants_json(format: IndexFormat, user_agent: Option<&str>) -> bool {
    match format {
        IndexFormat::Yaml => false,
        IndexFormat::Json => true,
        IndexFormat::Auto => user_agent.is_some_and(decodes_json_natively),
    }
}

/// The `Vary` header value of index responses under `format` (the gzip form is
/// chosen by `Accept-Encoding`).
pub fn vary(format: IndexFormat) -> &'static str {
    match format {
        IndexFormat::Auto => "User-Agent, Accept-Encoding",
        IndexFormat::Yaml | IndexFormat::Json => "Accept-Encoding",
    }
}

/// `Helm/3.13…` and later, `Helm/4…`, with or without a `v` before the version.
fn decodes_json_natively(ua: &str) -> bool {
    let Some(version) = ua.strip_prefix("Helm/") else {
        return false;
    };
    let version = version.strip_prefix('v').unwrap_or(version);
    let mut parts = version.split(['.', ' ', '-', '+']);
    let number = |p: Option<&str>| p.and_then(|s| s.parse::<u64>().ok());
    match (number(parts.next()), number(parts.next())) {
        (Some(major), _) if major >= 4 => true,
        (Some(3), Some(minor)) => minor >= 13,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_3_13_and_later_get_json_by_default() {
        for (ua, json) in [
            ("Helm/4.3", true),
            ("Helm/4.0.0", true),
            ("Helm/3.13.0", true),
            ("Helm/v3.14.2", true),
            ("Helm/3.20.1+g1234", true),
            ("Helm/3.12.3", false),
            ("Helm/3", false),
            ("Helm/2.17.0", false),
            ("Helm/", false),
            ("helm/4.0.0", false),
            ("curl/8.5.0", false),
            ("Mozilla/5.0 Helm/4.0", false),
        ] {
            assert_eq!(wants_json(IndexFormat::Auto, Some(ua)), json, "{ua}");
        }
        assert!(!wants_json(IndexFormat::Auto, None));
        assert!(wants_json(IndexFormat::Json, Some("curl/8")));
        assert!(!wants_json(IndexFormat::Yaml, Some("Helm/4.3")));
        assert_eq!(vary(IndexFormat::Auto), "User-Agent, Accept-Encoding");
        assert_eq!(vary(IndexFormat::Yaml), "Accept-Encoding");
    }
}

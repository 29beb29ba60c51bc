//! The `Cache-Status` response field (RFC 9211): chartcache's own entry, and
//! what chartcache reads from an upstream chartcache's (a fleet tier).
//!
//! Owns: rendering chartcache's entry ([`Entry::render`]) and reading the last
//! entry of an upstream's field ([`Upstream::parse`]). Does not own which entry a
//! response gets (the handler decides from its cache result) nor the `Age` field.
//!
//! # What chartcache says (entry name `chartcache`)
//! | `X-Cache` | entry |
//! |---|---|
//! | `HIT` | `hit; ttl=N` (N: seconds of freshness left; a remembered 404: `hit; detail=not-found`) |
//! | `MISS` | `fwd=miss; fwd-status=S` plus `stored` when it was stored (`fwd=stale` when a stored copy was replaced) |
//! | `REVALIDATED` | `fwd=stale; fwd-status=304; stored; ttl=N` |
//! | `STALE` | `fwd=stale[; fwd-status=S]; ttl=-N; detail=stale` (an upstream failed, or an upstream tier served stale) |
//! | `BYPASS` | `fwd=bypass[; fwd-status=S]` |
//! | error after upstream failed | `fwd=miss[; fwd-status=S]; detail=retried` (this instance already applied its retry policy) |
//! | local answer (400, 404 outside a repository, 405) | `detail=local` |
//!
//! # What chartcache reads from an upstream
//! Only the **last** entry (RFC 9211: caches append, so the last one is the
//! next hop's own), and in it only `detail`: `stale` (it served a stale copy:
//! the staleness travels, the copy is not treated as revalidated) and
//! `retried` (its error answer comes after its own retries: not retried
//! again here, so retries never multiply across tiers).
//!
//! Invariants: the rendered value is visible ASCII (it is a header value);
//! parsing never fails — anything unreadable means "nothing said".

use std::fmt::Write as _;

/// The entry name chartcache uses (RFC 9211 §2: an identifier for the cache).
pub const NAME: &str = "chartcache";
/// `detail` of a stale answer.
pub const DETAIL_STALE: &str = "stale";
/// `detail` of an error answer given after this instance's retries.
pub const DETAIL_RETRIED: &str = "retried";
/// `detail` of an answer given without looking at the cache or upstream.
pub const DETAIL_LOCAL: &str = "local";

/// Why the request went forward (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// No stored copy.
    Miss,
    /// A stored copy existed but was not fresh (revalidation, or stale-if-error).
    Stale,
    /// The rule says never cache.
    Bypass,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Miss => "miss",
            Fwd::Stale => "stale",
            Fwd::Bypass => "bypass",
        }
    }
}

/// chartcache's entry for one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Served from the cache without going forward.
    pub hit: bool,
    pub fwd: Option<Fwd>,
    /// The next hop's status, when it answered.
    pub fwd_status: Option<u16>,
    /// Remaining freshness in seconds (negative: stale).
    pub ttl: Option<i64>,
    /// The response was stored.
    pub stored: bool,
    /// A token (see the `DETAIL_*` constants).
    pub detail: Option<&'a str>,
}

impl Entry<'_> {
    /// Appends the field value (`chartcache; …`) to `out`.
    pub fn render(&self, out: &mut String) {
        out.push_str(NAME);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd.as_str());
        }
        if let Some(s) = self.fwd_status {
            let _ = write!(out, "; fwd-status={s}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if let Some(d) = self.detail {
            out.push_str("; detail=");
            out.push_str(d);
        }
    }
}

/// The whole field value of a local answer (`chartcache; detail=local`).
pub fn local_value() -> String {
    let mut s = String::with_capacity(32);
    Entry {
        detail: Some(DETAIL_LOCAL),
        ..Entry::default()
    }
    .render(&mut s);
    s
}

/// What an upstream's `Cache-Status` says that chartcache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upstream {
    /// The next hop served a stale copy.
    pub stale: bool,
    /// The next hop's error answer comes after its own retries.
    pub retried: bool,
}

impl Upstream {
    /// Reads the last entry of a `Cache-Status` value (the next hop's own).
    pub fn parse(value: &str) -> Upstream {
        let Some(last) = split_outside_quotes(value, ',').last() else {
            return Upstream::default();
        };
        let mut out = Upstream::default();
        for param in split_outside_quotes(last, ';').skip(1) {
            let Some((name, v)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("detail") {
                let v = v.trim().trim_matches('"');
                out.stale |= v.eq_ignore_ascii_case(DETAIL_STALE);
                out.retried |= v.eq_ignore_ascii_case(DETAIL_RETRIED);
            }
        }
        out
    }
}

/// `s` split at `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(e: Entry<'_>) -> String {
        let mut s = String::new();
        e.render(&mut s);
        s
    }

    #[test]
    fn renders_the_rfc_forms() {
        let hit = Entry {
            hit: true,
            ttl: Some(42),
            ..Entry::default()
        };
        assert_eq!(rendered(hit), "chartcache; hit; ttl=42");
        let miss = Entry {
            fwd: Some(Fwd::Miss),
            fwd_status: Some(200),
            stored: true,
            ..Entry::default()
        };
        assert_eq!(
            rendered(miss),
            "chartcache; fwd=miss; fwd-status=200; stored"
        );
        let revalidated = Entry {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(304),
            ttl: Some(0),
            stored: true,
            ..Entry::default()
        };
        assert_eq!(
            rendered(revalidated),
            "chartcache; fwd=stale; fwd-status=304; ttl=0; stored"
        );
        let stale = Entry {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(503),
            ttl: Some(-7),
            detail: Some(DETAIL_STALE),
            ..Entry::default()
        };
        assert_eq!(
            rendered(stale),
            "chartcache; fwd=stale; fwd-status=503; ttl=-7; detail=stale"
        );
        let local = Entry {
            detail: Some(DETAIL_LOCAL),
            ..Entry::default()
        };
        assert_eq!(rendered(local), "chartcache; detail=local");
    }

    #[test]
    fn reads_only_the_last_entry() {
        let v = "chartcache; fwd=stale; detail=stale, chartcache; fwd=stale; fwd-status=304";
        assert_eq!(Upstream::parse(v), Upstream::default());
        let v = "Other; hit, chartcache; fwd=stale; fwd-status=503; ttl=-3; detail=stale";
        assert!(Upstream::parse(v).stale);
        let v = "chartcache; fwd=miss; fwd-status=503; detail=\"retried\"";
        let u = Upstream::parse(v);
        assert!(u.retried && !u.stale);
        // A quoted comma does not start an entry.
        let v = "chartcache; detail=\"a, b\"; fwd=miss";
        assert_eq!(Upstream::parse(v), Upstream::default());
        for junk in ["", ",", ";;;", "detail=stale", "x; detail", "\""] {
            assert_eq!(Upstream::parse(junk), Upstream::default(), "{junk:?}");
        }
    }
}

//! Chart versions ordered as Helm orders them: the newest first by SemVer, as
//! `repo.IndexFile.SortEntries` does (`sort.Reverse` of `ChartVersions.Less`,
//! which compares with Masterminds/semver v3's `NewVersion` and `LessThan`).
//!
//! Written here rather than taken from the `semver` crate, because Helm's parser
//! is looser and its order different, and the point is to agree with Helm:
//! - `NewVersion` coerces: an optional `v`, minor and patch optional (`1.2` is
//!   `1.2.0`), leading zeros allowed in them; numbers must fit `u64`; the
//!   pre-release and build parts must be dot-separated non-empty `[0-9A-Za-z-]`
//!   identifiers, a numeric pre-release identifier without a leading zero.
//!   The `semver` crate refuses all of the coerced forms.
//! - Build metadata is ignored when comparing (the `semver` crate orders by it).
//! - Pre-release identifiers: numbers (those that fit `u64`) by value and below
//!   any alphanumeric one, alphanumeric ones byte-wise, a shorter list first when
//!   it is a prefix of the other.
//! - A version Helm cannot parse (or one that is not a string) sorts after every
//!   parsable one. Go's sort is not stable, so Helm leaves the order of equal
//!   versions (and of unparsable ones) unspecified; here it is the index's order.

use std::cmp::Ordering;

/// A parsed version (build metadata dropped: it never decides the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    pre: &'a str,
}

/// Parses `v` as Masterminds/semver v3's `NewVersion` does; `None` where it fails.
pub fn parse(v: &str) -> Option<Version<'_>> {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let (rest, build) = match rest.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (rest, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let mut numbers = core.split('.');
    let mut number = |required: bool| -> Option<u64> {
        match numbers.next() {
            None if !required => Some(0),
            None => None,
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok(),
            Some(_) => None,
        }
    };
    let (major, minor, patch) = (number(true)?, number(false)?, number(false)?);
    if numbers.next().is_some() {
        return None;
    }
    let identifiers_ok = |s: &str, numeric_rule: bool| {
        s.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !(numeric_rule
                    && id.len() > 1
                    && id.starts_with('0')
                    && id.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    if pre.is_some_and(|p| !identifiers_ok(p, true))
        || build.is_some_and(|b| !identifiers_ok(b, false))
    {
        return None;
    }
    Some(Version {
        major,
        minor,
        patch,
        pre: pre.unwrap_or(""),
    })
}

impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => compare_pre(self.pre, other.pre),
            })
    }
}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        let ord = match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => x.cmp(y),
            },
        };
        return ord;
    }
}

/// The order Helm sorts versions in, newest first: indexes into `versions`
/// (`None`: no version string). Stable: equal versions, and versions Helm cannot
/// parse (after all others), keep their order.
pub fn newest_first(versions: &[Option<&str>]) -> Vec<usize> {
    let parsed: Vec<Option<Version<'_>>> = versions.iter().map(|v| v.and_then(parse)).collect();
    let mut order: Vec<usize> = (0..versions.len()).collect();
    order.sort_by(|&a, &b| match (&parsed[a], &parsed[b]) {
        (Some(x), Some(y)) => y.cmp(x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_helm_parses() {
        for (v, want) in [
            ("1.2.3", Some((1, 2, 3, ""))),
            ("v1.2.3", Some((1, 2, 3, ""))),
            ("1.2", Some((1, 2, 0, ""))),
            ("1", Some((1, 0, 0, ""))),
            ("01.002.3", Some((1, 2, 3, ""))),
            ("1.2.3-rc.1+build.5", Some((1, 2, 3, "rc.1"))),
            ("1.2-beta", Some((1, 2, 0, "beta"))),
            ("1.2.3-x-y.z--", Some((1, 2, 3, "x-y.z--"))),
            ("1.2.3+meta-data", Some((1, 2, 3, ""))),
        ] {
            let got = parse(v).map(|p| (p.major, p.minor, p.patch, p.pre));
            assert_eq!(got, want, "{v}");
        }
        for v in [
            "",
            "v",
            "V1.2.3",
            "1.2.3.4",
            "1..2",
            "1.2.3-",
            "1.2.3-rc..1",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3+a_b",
            "a.b.c",
            "1.2.3 ",
            "-1.2.3",
            "99999999999999999999.0.0",
        ] {
            assert!(parse(v).is_none(), "{v}");
        }
    }

    #[test]
    fn orders_as_semver_with_helms_details() {
        let v = [
            Some("1.0.0-alpha"),
            Some("1.0.0"),
            Some("not-a-version"),
            Some("1.0.0-alpha.1"),
            Some("v2"),
            Some("1.0.0-beta.11"),
            None,
            Some("1.0.0-beta.2"),
            Some("1.0.0+b2"),
            Some("1.0.0-rc.1"),
            Some("1.10.0"),
            Some("1.9.0"),
            Some("1.0.0-alpha.beta"),
        ];
        let order: Vec<Option<&str>> = newest_first(&v).into_iter().map(|i| v[i]).collect();
        assert_eq!(
            order,
            [
                Some("v2"),
                Some("1.10.0"),
                Some("1.9.0"),
                Some("1.0.0"),
                Some("1.0.0+b2"), // equal to 1.0.0: the index's order
                Some("1.0.0-rc.1"),
                Some("1.0.0-beta.11"),
                Some("1.0.0-beta.2"),
                Some("1.0.0-alpha.beta"),
                Some("1.0.0-alpha.1"),
                Some("1.0.0-alpha"),
                Some("not-a-version"),
                None,
            ]
        );
    }
}

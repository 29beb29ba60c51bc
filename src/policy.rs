//! Route policy: ordered rules that decide, per object key, whether a response
//! is cached (with a TTL), revalidated with upstream on every request, or
//! bypassed entirely — plus response header overrides.
//!
//! The first matching rule wins; a key no rule matches is cached for 24 h (the
//! same as the default catch-all). Regexes match the **whole** path, as Envoy's
//! `safe_regex` route match does.

use std::time::Duration;

use regex::Regex;

/// How a path is matched.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

impl Matcher {
    /// Builds a whole-path regex matcher.
    pub fn regex(pattern: &str) -> Result<Matcher, regex::Error> {
        Ok(Matcher::Regex(Regex::new(&format!("^(?:{pattern})$"))?))
    }

    pub fn matches(&self, key: &str) -> bool {
        match self {
            Matcher::Exact(e) => key == e,
            Matcher::Prefix(p) => key.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(key),
        }
    }
}

/// What to do with a matched request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve from cache while younger than `ttl`; fill on miss.
    Cache { ttl: Duration },
    /// Keep a copy, but confirm it with upstream (conditional GET) unless it is
    /// younger than `fresh_for`. A republished object shows on the next request.
    Revalidate { fresh_for: Duration },
    /// Never cache: every request goes upstream.
    Bypass,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: Matcher,
    pub action: Action,
    /// Set on every response of this rule, replacing upstream's value.
    pub headers: Vec<(String, String)>,
}

/// The ordered rule list.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    fallback: Rule,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Policy {
        Policy {
            rules,
            fallback: Rule {
                matcher: Matcher::Prefix("/".into()),
                action: Action::Cache { ttl: DAY },
                headers: Vec::new(),
            },
        }
    }

    /// The seed Envoy configuration: `/index.yaml` never served stale, `.*-dev-.*`
    /// never cached, everything else cached with `Cache-Control: max-age=86400`.
    pub fn envoy_default() -> Policy {
        Policy::new(vec![
            Rule {
                matcher: Matcher::Exact("/index.yaml".into()),
                action: Action::Revalidate {
                    fresh_for: Duration::ZERO,
                },
                headers: Vec::new(),
            },
            Rule {
                matcher: Matcher::regex(".*-dev-.*").expect("static regex"),
                action: Action::Bypass,
                headers: Vec::new(),
            },
            Rule {
                matcher: Matcher::Prefix("/".into()),
                action: Action::Cache { ttl: DAY },
                headers: vec![("Cache-Control".into(), "max-age=86400".into())],
            },
        ])
    }

    /// The first rule matching `key`.
    pub fn decide(&self, key: &str) -> &Rule {
        self.rules
            .iter()
            .find(|r| r.matcher.matches(key))
            .unwrap_or(&self.fallback)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_regex_is_whole_path() {
        let p = Policy::envoy_default();
        assert!(matches!(
            p.decide("/index.yaml").action,
            Action::Revalidate { .. }
        ));
        // Not the exact path: falls to the catch-all.
        assert!(matches!(
            p.decide("/index.yaml.bak").action,
            Action::Cache { .. }
        ));
        assert_eq!(p.decide("/foo-1.0.0-dev-7.tgz").action, Action::Bypass);
        assert_eq!(p.decide("/team-dev-tools/x.tgz").action, Action::Bypass);
        assert!(matches!(p.decide("/foo-1.0.0.tgz").action, Action::Cache { ttl } if ttl == DAY));
        assert_eq!(p.decide("/foo-1.0.0.tgz").headers[0].1, "max-age=86400");
        // "dev" without both dashes is not a dev build.
        assert!(matches!(
            p.decide("/devtools-1.0.tgz").action,
            Action::Cache { .. }
        ));
    }

    #[test]
    fn anchoring_applies_to_user_regexes() {
        let m = Matcher::regex("/charts/.*").unwrap();
        assert!(m.matches("/charts/a.tgz"));
        assert!(!m.matches("/x/charts/a.tgz"));
    }

    #[test]
    fn empty_policy_caches_for_a_day() {
        let p = Policy::new(vec![]);
        assert!(matches!(p.decide("/any").action, Action::Cache { ttl } if ttl == DAY));
    }
}

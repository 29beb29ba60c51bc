//! The Grafana dashboard and the Prometheus alert rules of the Helm chart
//! (`deploy/helm/chartcache/files/chartcache-dashboard.json`,
//! `deploy/helm/chartcache/templates/prometheusrule.yaml`) against a running chartcache: every
//! metric they name is in its `/metrics` after a few requests, and every `cache` / `outcome`
//! label value they select on is one chartcache emits. A renamed metric or label value breaks
//! this test instead of silently emptying a panel or disarming an alert.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use chartcache::metrics::{CacheResult, UPSTREAM_OUTCOMES};
use common::proxy::Proxy;

const DASHBOARD: &str = "deploy/helm/chartcache/files/chartcache-dashboard.json";
const RULES: &str = "deploy/helm/chartcache/templates/prometheusrule.yaml";

fn read(rel: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The PromQL expressions of the dashboard's panels and template variables.
fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

/// The `expr:` blocks of the rules template (Go template text around PromQL; the metric names
/// and label matchers are literal).
fn rule_exprs() -> Vec<String> {
    let text = read(RULES);
    let mut exprs = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some((at, expr)) = current.as_mut() {
            if indent > *at || line.trim().is_empty() {
                expr.push_str(line.trim());
                expr.push('\n');
                continue;
            }
            exprs.push(std::mem::take(expr));
            current = None;
        }
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            current = Some((
                indent,
                format!("{}\n", rest.trim().trim_start_matches("|-")),
            ));
        }
    }
    if let Some((_, expr)) = current {
        exprs.push(expr);
    }
    exprs
}

fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bchartcache_[a-z0-9_]+").unwrap();
    exprs
        .iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_string()))
        .collect()
}

/// `(label, value)` of every `cache` / `outcome` matcher (`=`, `!=`, `=~` alternatives).
fn label_values(exprs: &[String]) -> BTreeSet<(String, String)> {
    let re = regex::Regex::new(r#"\b(cache|outcome)\s*(=~|!=|=)\s*"([^"]*)""#).unwrap();
    exprs
        .iter()
        .flat_map(|e| {
            re.captures_iter(e)
                .flat_map(|c| {
                    let label = c[1].to_string();
                    c[3].split('|')
                        .map(|v| (label.clone(), v.to_string()))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The sample names of a Prometheus text exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_rules_template_yields_the_alert_expressions() {
    // The parser above finds every alert's expression (so the next tests see them all).
    let alerts = read(RULES).matches("- alert:").count();
    let exprs = rule_exprs();
    assert_eq!(exprs.len(), alerts, "{exprs:#?}");
    assert!(alerts >= 6);
    assert!(exprs
        .iter()
        .all(|e| e.contains("chartcache_") || e.contains("up{")));
}

#[test]
fn every_metric_in_the_dashboard_and_the_rules_is_exposed() {
    let dashboard = metric_names(&dashboard_exprs());
    let rules = metric_names(&rule_exprs());
    assert!(dashboard.len() >= 15, "dashboard names only {dashboard:?}");
    assert!(rules.len() >= 4, "rules name only {rules:?}");

    let p = Proxy::examples();
    assert_eq!(p.get("/index.yaml").status, 200);
    assert_eq!(p.get("/hello-0.2.0.tgz").x_cache(), "MISS");
    assert_eq!(p.get("/hello-0.2.0.tgz").x_cache(), "HIT");
    assert_eq!(p.get("/no-such-chart-1.0.0.tgz").status, 404);
    let metrics = p.metrics();
    let have = exposed(&metrics);

    let missing: Vec<String> = dashboard
        .iter()
        .map(|m| (m, DASHBOARD))
        .chain(rules.iter().map(|m| (m, RULES)))
        .filter(|(m, _)| !have.contains(*m))
        .map(|(m, file)| format!("{m} (in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "named but not in /metrics: {missing:#?}\n/metrics has: {have:#?}"
    );
}

#[test]
fn every_label_value_selected_on_is_one_chartcache_emits() {
    let cache: BTreeSet<String> = CacheResult::ALL
        .iter()
        .map(|r| r.as_str().to_ascii_lowercase())
        .collect();
    let outcome: BTreeSet<String> = UPSTREAM_OUTCOMES.iter().map(|s| s.to_string()).collect();
    let mut exprs = dashboard_exprs();
    exprs.extend(rule_exprs());
    let used = label_values(&exprs);
    assert!(used.len() >= 5, "{used:?}");
    for (label, value) in &used {
        let known = match label.as_str() {
            "cache" => &cache,
            _ => &outcome,
        };
        assert!(
            known.contains(value),
            "{label}=\"{value}\" is selected on, but chartcache's {label} values are {known:?}"
        );
    }
}

//! The Grafana dashboard and the Prometheus alert rules of the Helm chart
//! (`deploy/helm/chartcache/files/chartcache-dashboard.json`, and
//! `deploy/helm/chartcache/templates/prometheusrule.yaml` as rendered into
//! `deploy/chartcache-alerts.yaml`) against running chartcaches: every
//! metric they name is in the `/metrics` of one of them after a few requests (one
//! serving files, one serving S3 with expiring credentials, which the credential
//! expiry gauge needs), and every `cache` / `outcome`
//! label value they select on is one chartcache emits. A renamed metric or label value breaks
//! this test instead of silently emptying a panel or disarming an alert; and every expression
//! parses as PromQL.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chartcache::metrics::{CacheResult, UPSTREAM_OUTCOMES};
use chartcache::origin::credentials::CredentialsCell;
use common::proxy::{examples_repo, test_cli, Proxy, AK, SK};

const DASHBOARD: &str = "deploy/helm/chartcache/files/chartcache-dashboard.json";
const RULES: &str = "deploy/chartcache-alerts.yaml";
const RULES_TEMPLATE: &str = "deploy/helm/chartcache/templates/prometheusrule.yaml";

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

/// The alert expressions of the rules as Prometheus loads them: `deploy/chartcache-alerts.yaml`
/// is the chart's PrometheusRule rendered by Helm (tests/deploy_chart.rs keeps it current).
fn rule_exprs() -> Vec<String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(RULES)).unwrap();
    docs[0]["groups"]
        .as_vec()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_vec().into_iter().flatten())
        .map(|r| {
            r["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{RULES}: a rule without expr: {r:?}"))
                .to_string()
        })
        .collect()
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
fn the_rule_file_has_every_alert_of_the_template() {
    let alerts = read(RULES_TEMPLATE).matches("- alert:").count();
    let exprs = rule_exprs();
    assert_eq!(exprs.len(), alerts, "{exprs:#?}");
    assert!(alerts >= 6);
}

/// An expression with Grafana's variables replaced by values of their kind, so that it is
/// plain PromQL.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$s3_get_price_per_1000", "0.0004")
        .replace("$job", ".*")
        .replace("$namespace", ".*")
        .replace("$pod", ".*")
}

#[test]
fn every_expression_is_valid_promql() {
    // promql-parser is Prometheus's grammar (GreptimeTeam's port); a syntax error in a rule
    // would otherwise surface only when Prometheus loads it, in a panel only as "no data".
    let mut bad = Vec::new();
    for (file, exprs) in [(DASHBOARD, dashboard_exprs()), (RULES, rule_exprs())] {
        for expr in exprs {
            let plain = without_grafana_variables(&expr);
            if plain.contains('$') && !plain.contains("$labels") {
                bad.push(format!("{file}: unknown variable in {expr}"));
                continue;
            }
            // Dashboard variable queries are Grafana's label_values(), not PromQL.
            if plain.starts_with("label_values(") {
                continue;
            }
            if let Err(e) = promql_parser::parser::parse(&plain) {
                bad.push(format!("{file}: {e}: {expr}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
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
    let mut have = exposed(&p.metrics());
    have.extend(exposed(&s3_instance_metrics()));

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

/// `/metrics` of a chartcache serving S3 (s3s-fs) with credentials that expire in an hour,
/// after a miss and a hit: what only an S3 repository exposes (credential expiry and refresh
/// failures).
fn s3_instance_metrics() -> String {
    let s3 = common::spawn_s3(AK, SK);
    for name in ["index.yaml", "hello-0.2.0.tgz"] {
        let bytes = std::fs::read(examples_repo().join(name)).unwrap();
        s3.put_object("charts", name, &bytes);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    let cfg = chartcache::config::load(cli).unwrap();
    let expiry = SystemTime::now() + Duration::from_secs(3600);
    let creds = Some(Arc::new(CredentialsCell::new(
        aws_credential_types::Credentials::new(AK, SK, None, Some(expiry), "chartcache-tests"),
    )));
    let server = chartcache::runtime::start(cfg, creds).unwrap();
    let get = |path: &str| common::proxy::get(server.addr, path, &[]);
    assert_eq!(get("/hello-0.2.0.tgz").x_cache(), "MISS");
    assert_eq!(get("/hello-0.2.0.tgz").x_cache(), "HIT");
    let metrics = common::proxy::get(server.admin_addr, "/metrics", &[]).text();
    server.shutdown();
    let expires_in: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("chartcache_credentials_expiry_seconds{repo=\"/\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no credential expiry gauge: {metrics}"));
    assert!(
        (3000.0..=3600.0).contains(&expires_in),
        "expires in {expires_in}"
    );
    metrics
}

#[test]
fn static_keys_and_other_upstreams_have_no_expiry_gauge() {
    let p = Proxy::examples();
    let metrics = p.metrics();
    assert!(
        !metrics.contains("chartcache_credentials_"),
        "a file:// repository has no credentials: {metrics}"
    );
    let s3 = common::spawn_s3(AK, SK);
    s3.create_bucket("charts");
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    // Proxy::start_in signs with static keys (no expiry).
    let p = Proxy::start_in(cli, Some(tmp));
    let metrics = p.metrics();
    assert!(
        !metrics.contains("chartcache_credentials_expiry_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chartcache_credentials_refresh_failures_total{repo=\"/\"} 0"),
        "{metrics}"
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

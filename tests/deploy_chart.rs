//! The Helm chart `deploy/helm/chartcache`, rendered by the real Helm library and every object
//! validated against the Kubernetes schemas: `deploy/helm/check_chart.py` drives helm-sdkpy
//! (`helm lint`, and `helm install` with `HELM_DRIVER=memory` against a stand-in API server that
//! records what Helm creates) and kubernetes-validate (strict schemas of Kubernetes 1.33; the
//! ServiceMonitor and PrometheusRule against prometheus-operator's vendored CRD schemas).
//!
//! What is checked here, on those objects: the default install (node-local DaemonSet, epoll,
//! secure defaults), the tier + monitoring + NetworkPolicy + io_uring install, several
//! repositories through the tier, values that `values.schema.json` (or a template) must refuse,
//! that every rendered chartcache TOML loads with `chartcache::config::from_toml`, and that the
//! generated files (`deploy/chartcache.yaml`, the README's values table, the seccomp profile)
//! are what the chart and its inputs give today.
//!
//! Its own harness (`harness = false`, [`common::harness`]): without helm-sdkpy or
//! kubernetes-validate the tests are reported *ignored* with the reason on stderr (`SKIPPED`),
//! and under `CI` they fail, because `.ci/run` installs both. The interpreter is
//! `$CHARTCACHE_HELM_PYTHON` (default `python3`).

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use libtest_mimic::Failed;
use serde_json::{json, Value};

/// `check_chart.py`'s exit status for "a tool is missing".
const EXIT_MISSING: i32 = 3;
/// The admin token the pods get from a Secret; here a placeholder (its value is irrelevant,
/// its presence is what a non-loopback admin listener needs).
const TOKEN_PLACEHOLDER: &str = "placeholder-from-secret";
/// Where the node-local pods find the tier for release `chartcache` in namespace `chartcache`.
const TIER_URL: &str = "http://chartcache-tier.chartcache.svc.cluster.local:8080";

fn main() {
    common::harness::run_needing(
        "the Helm library and Kubernetes schemas (helm-sdkpy, kubernetes-validate)",
        tools_missing,
        vec![
            ("chart_lints_clean", chart_lints_clean),
            (
                "default_install_is_a_secure_node_local_daemonset_on_epoll",
                default_install,
            ),
            (
                "tier_monitoring_network_policy_and_io_uring_install",
                tier_and_monitoring_install,
            ),
            (
                "repositories_reach_the_tier_under_their_prefixes",
                repos_through_the_tier,
            ),
            ("wrong_values_are_refused_at_install", wrong_values_refused),
            (
                "an_upgrade_keeps_the_generated_admin_token",
                upgrade_keeps_token,
            ),
            (
                "kubectl_manifest_and_alert_file_are_the_charts_current_rendering",
                static_manifest_current,
            ),
            ("readme_lists_every_value", readme_current),
            (
                "seccomp_profile_is_the_runtime_default_plus_io_uring",
                seccomp_profile_current,
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Driving check_chart.py.
// ---------------------------------------------------------------------------------------------

fn python() -> OsString {
    std::env::var_os("CHARTCACHE_HELM_PYTHON").unwrap_or_else(|| "python3".into())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/check_chart.py")
}

/// Runs `check_chart.py ARGS`: (exit code, its JSON document, stderr).
fn check_chart(args: &[&str]) -> Result<(i32, Value, String), Failed> {
    let py = python();
    let out = Command::new(&py)
        .arg(script())
        .args(args)
        .env("HELM_DRIVER", "memory")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.to_string_lossy()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    if code == EXIT_MISSING {
        return Err(format!("a tool is missing: {stderr}").into());
    }
    let doc: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "check_chart.py {args:?} printed no JSON ({e}); exit {code}\n--- stdout\n{}\n--- stderr\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((code, doc, stderr))
}

/// Why the chart checks cannot run here, or `None`.
fn tools_missing() -> Option<String> {
    let py = python();
    match Command::new(&py)
        .arg(script())
        .arg("probe")
        .env("HELM_DRIVER", "memory")
        .output()
    {
        Err(e) => Some(format!(
            "cannot run {}: {e}; set CHARTCACHE_HELM_PYTHON",
            py.to_string_lossy()
        )),
        Ok(out) if out.status.code() == Some(EXIT_MISSING) => Some(format!(
            "{}; run `bash .ci/install-helm.sh && bash .ci/install-chart-tools.sh`, or set \
             CHARTCACHE_HELM_PYTHON to a python that has them",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The objects Helm creates when installing the chart with `values` (release and namespace
/// `chartcache`), each valid against its schema.
fn render(values: Value) -> Result<Vec<Value>, Failed> {
    let (code, doc, stderr) = check_chart(&["render", &values.to_string()])?;
    if code != 0 {
        return Err(format!(
            "the chart does not install with {values}: {}\n{stderr}",
            serde_json::to_string_pretty(&json!({
                "error": doc["error"],
                "problems": doc["problems"],
            }))
            .unwrap_or_default()
        )
        .into());
    }
    assert_eq!(
        doc["problems"],
        json!([]),
        "objects invalid against their schemas"
    );
    Ok(doc["objects"].as_array().cloned().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Looking into the objects.
// ---------------------------------------------------------------------------------------------

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or("?"), name(o)))
        .collect()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("?")
}

fn find<'a>(objects: &'a [Value], kind: &str, object: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && name(o) == object)
        .unwrap_or_else(|| panic!("no {kind}/{object} among {:?}", kinds(objects)))
}

fn chartcache_container(workload: &Value) -> &Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "chartcache"))
        .unwrap_or_else(|| panic!("{} has no chartcache container", name(workload)))
}

fn init_container<'a>(workload: &'a Value, init: &str) -> Option<&'a Value> {
    workload["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == init))
}

/// The TOML in a ConfigMap, and the chartcache config it loads into (with the admin token the
/// pods get from the Secret).
fn config_of(objects: &[Value], configmap: &str) -> (toml::Table, chartcache::config::Config) {
    let text = find(objects, "ConfigMap", configmap)["data"]["chartcache.toml"]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {configmap} has no chartcache.toml"))
        .to_string();
    let table: toml::Table = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("ConfigMap {configmap}: not TOML: {e}\n{text}"));
    let mut with_token = table.clone();
    with_token.insert(
        "admin_token".into(),
        toml::Value::String(TOKEN_PLACEHOLDER.into()),
    );
    let cfg = chartcache::config::from_toml(&toml::to_string(&with_token).unwrap_or_default())
        .unwrap_or_else(|e| panic!("ConfigMap {configmap}: chartcache refuses it: {e}\n{text}"));
    (table, cfg)
}

/// The secure defaults every chartcache pod of the chart has.
fn assert_secure_pod(workload: &Value, seccomp: &Value) {
    let what = format!("{} {}", workload["kind"], name(workload));
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{what}");
    assert_eq!(pod["securityContext"]["seccompProfile"], *seccomp, "{what}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    let c = chartcache_container(workload);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert!(
        sc["capabilities"]["add"].is_null(),
        "{what}: adds capabilities"
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "{what}: no {kind}.{res}"
            );
        }
    }
    // Probes on the admin port, which is never published on the node.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{what}: {probe}");
    }
    let admin = c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "admin"))
        .unwrap_or_else(|| panic!("{what}: no admin port"));
    assert!(
        admin["hostPort"].is_null(),
        "{what}: admin published on the node"
    );
    // The admin token comes from a Secret.
    let token = c["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "CHARTCACHE_ADMIN_TOKEN"))
        .unwrap_or_else(|| panic!("{what}: no CHARTCACHE_ADMIN_TOKEN"));
    assert!(
        token["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{what}"
    );
    assert_eq!(
        c["args"],
        json!(["--config=/etc/chartcache/chartcache.toml"]),
        "{what}"
    );
}

fn port_of(c: &Value, port: &str) -> u64 {
    c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == port))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {port}"))
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

fn chart_lints_clean() -> Result<(), Failed> {
    let (code, doc, stderr) = check_chart(&["lint"])?;
    assert_eq!(
        code, 0,
        "helm lint reports warnings or errors: {}\n{stderr}",
        doc["bad"]
    );
    assert_eq!(doc["result"]["TotalChartsLinted"], 1);
    Ok(())
}

fn default_install() -> Result<(), Failed> {
    let objects = render(json!({}))?;
    assert_eq!(
        kinds(&objects),
        [
            "ConfigMap/chartcache",
            "DaemonSet/chartcache",
            "Secret/chartcache-admin",
            "Service/chartcache",
            "ServiceAccount/chartcache",
        ]
        .map(String::from)
        .into(),
        "a default install is the node-local DaemonSet and what it needs, nothing more"
    );
    let ds = find(&objects, "DaemonSet", "chartcache");
    assert_secure_pod(ds, &json!({"type": "RuntimeDefault"}));
    let spec = &ds["spec"];
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
    let c = chartcache_container(ds);
    let http = c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "http"))
        .unwrap_or_else(|| panic!("no http port"));
    assert_eq!(http["hostPort"], 8080);
    // The cache is on the node, mounted where the config says.
    let volumes = spec["template"]["spec"]["volumes"].as_array().unwrap();
    let cache = volumes.iter().find(|v| v["name"] == "cache").unwrap();
    assert_eq!(cache["hostPath"]["path"], "/var/cache/chartcache");
    let (_, cfg) = config_of(&objects, "chartcache");
    assert_eq!(cfg.driver, chartcache::config::Driver::Epoll);
    assert_eq!(cfg.cache.dir, PathBuf::from("/var/cache/chartcache"));
    assert_eq!(cfg.cache.size, 2 << 30);
    assert_eq!(u64::from(cfg.server.listen.port()), port_of(c, "http"));
    assert_eq!(u64::from(cfg.admin.listen.port()), port_of(c, "admin"));
    assert!(
        !cfg.admin.listen.ip().is_loopback(),
        "the kubelet probes it"
    );
    // The generated Secret holds the token the pods read.
    let secret = find(&objects, "Secret", "chartcache-admin");
    assert!(secret["data"]["token"]
        .as_str()
        .is_some_and(|t| t.len() >= 32));
    // The node-local Service only ever reaches the pod on the client's node.
    let svc = find(&objects, "Service", "chartcache");
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local");
    assert!(init_container(ds, "seccomp-profile").is_none());
    Ok(())
}

fn tier_and_monitoring_install() -> Result<(), Failed> {
    let objects = render(json!({
        "upstream": "s3://my-charts/stable",
        "region": "eu-west-1",
        "tier": {"enabled": true, "autoscaling": {"enabled": true}},
        "metrics": {"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}},
        "grafana": {"dashboard": {"enabled": true}},
        "networkPolicy": {
            "enabled": true,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}],
        },
        "ioUring": {"enabled": true},
        "serviceAccount": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/chartcache"}},
    }))?;
    let have = kinds(&objects);
    for want in [
        "DaemonSet/chartcache",
        "Deployment/chartcache-tier",
        "Service/chartcache-tier",
        "PodDisruptionBudget/chartcache-tier",
        "HorizontalPodAutoscaler/chartcache-tier",
        "ConfigMap/chartcache-tier",
        "ServiceMonitor/chartcache",
        "Service/chartcache-metrics",
        "PrometheusRule/chartcache",
        "ConfigMap/chartcache-dashboard",
        "ConfigMap/chartcache-seccomp",
        "NetworkPolicy/chartcache",
        "NetworkPolicy/chartcache-tier",
    ] {
        assert!(have.contains(want), "{want} missing: {have:?}");
    }
    // The node-local pods' upstream is the tier; the tier's is S3.
    let (node, node_cfg) = config_of(&objects, "chartcache");
    assert_eq!(node["upstream"].as_str(), Some(TIER_URL));
    assert!(
        node.get("region").is_none(),
        "the tier holds the S3 settings"
    );
    assert_eq!(node_cfg.driver, chartcache::config::Driver::Auto);
    let (tier, tier_cfg) = config_of(&objects, "chartcache-tier");
    assert_eq!(tier["upstream"].as_str(), Some("s3://my-charts/stable"));
    assert_eq!(tier["region"].as_str(), Some("eu-west-1"));
    assert!(matches!(
        tier_cfg.repo.origin.upstream,
        chartcache::origin::Upstream::S3 { .. }
    ));
    // TIER_URL is the tier Service's name and port.
    let svc = find(&objects, "Service", "chartcache-tier");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/component"],
        "tier"
    );
    // Both workloads: secure, under the io_uring Localhost profile that their init container
    // writes where the kubelet reads it.
    let profile =
        json!({"type": "Localhost", "localhostProfile": "profiles/chartcache-iouring.json"});
    let seccomp_file = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/helm/chartcache/files/seccomp-iouring.json"),
    )?;
    assert_eq!(
        find(&objects, "ConfigMap", "chartcache-seccomp")["data"]["chartcache-iouring.json"]
            .as_str()
            .map(str::trim_end),
        Some(seccomp_file.trim_end())
    );
    for workload in [
        find(&objects, "DaemonSet", "chartcache"),
        find(&objects, "Deployment", "chartcache-tier"),
    ] {
        assert_secure_pod(workload, &profile);
        let init = init_container(workload, "seccomp-profile")
            .unwrap_or_else(|| panic!("{}: no seccomp-profile init container", name(workload)));
        assert_eq!(
            init["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert!(init["securityContext"]["capabilities"]["add"].is_null());
        let script = init["command"].to_string();
        assert!(
            script.contains("/host-seccomp/chartcache-iouring.json"),
            "{script}"
        );
        let volumes = workload["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let host = volumes
            .iter()
            .find(|v| v["name"] == "host-seccomp")
            .unwrap();
        assert_eq!(
            host["hostPath"]["path"], "/var/lib/kubelet/seccomp/profiles",
            "Localhost profiles are relative to <kubelet root>/seccomp"
        );
    }
    // PDB and HPA act on the tier.
    let tier_selector =
        &find(&objects, "Deployment", "chartcache-tier")["spec"]["selector"]["matchLabels"];
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "chartcache-tier")["spec"]["selector"]["matchLabels"],
        *tier_selector
    );
    assert_eq!(
        find(&objects, "HorizontalPodAutoscaler", "chartcache-tier")["spec"]["scaleTargetRef"]
            ["name"],
        "chartcache-tier"
    );
    // The ServiceMonitor selects the metrics Service, whose port is the admin port.
    let sm = find(&objects, "ServiceMonitor", "chartcache");
    let metrics_svc = find(&objects, "Service", "chartcache-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(metrics_svc["metadata"]["labels"][k], *v, "label {k}");
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(metrics_svc["spec"]["ports"][0]["port"], 8081);
    // The alerts the issue asks for.
    let rule = find(&objects, "PrometheusRule", "chartcache");
    let alerts: BTreeSet<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in [
        "ChartcacheDown",
        "ChartcacheUpstreamErrors",
        "ChartcacheUpstreamFailing",
        "ChartcacheServingStale",
        "ChartcacheDiskFull",
        "ChartcacheHitRatioCollapse",
    ] {
        assert!(alerts.contains(want), "{want} missing: {alerts:?}");
    }
    // The dashboard ConfigMap carries the sidecar's label and the dashboard file.
    let dash = find(&objects, "ConfigMap", "chartcache-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let json_text = dash["data"]["chartcache.json"].as_str().unwrap_or("");
    let parsed: Value = serde_json::from_str(json_text)?;
    assert_eq!(parsed["uid"], "chartcache");
    // NetworkPolicy: the admin port only from the monitoring namespace; http from everyone.
    let np = find(&objects, "NetworkPolicy", "chartcache");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    let admin_rule = ingress
        .iter()
        .find(|r| r["ports"][0]["port"] == "admin")
        .unwrap();
    assert_eq!(
        admin_rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let http_rule = ingress
        .iter()
        .find(|r| r["ports"][0]["port"] == "http")
        .unwrap();
    assert!(http_rule["from"].is_null());
    Ok(())
}

fn repos_through_the_tier() -> Result<(), Failed> {
    let values = json!({
        "repos": [
            {"prefix": "/stable", "upstream": "s3://charts-a/stable", "region": "eu-west-1"},
            {"prefix": "/mirror", "upstream": "https://charts.example.org/x",
             "verifyDigests": false,
             "rules": [{"match": {"exact": "/index.yaml"}, "action": "revalidate",
                        "freshFor": "5s"}]},
        ],
        "rules": [{"match": {"prefix": "/"}, "action": "cache", "ttl": "1d",
                   "headers": {"Cache-Control": "max-age=86400"}}],
        "config": {"maxStale": "3d", "workers": 2},
        "tier": {"enabled": true},
    });
    let objects = render(values)?;
    let table = |cm: &str| -> toml::Table {
        let text = find(&objects, "ConfigMap", cm)["data"]["chartcache.toml"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        toml::from_str(&text).unwrap_or_else(|e| panic!("{cm}: not TOML: {e}\n{text}"))
    };
    let node = table("chartcache");
    let tier = table("chartcache-tier");
    let repos = |t: &toml::Table| -> Vec<(String, String)> {
        t["repos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["prefix"].as_str().unwrap_or_default().to_string(),
                    r["upstream"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        repos(&tier),
        [
            ("/stable", "s3://charts-a/stable"),
            ("/mirror", "https://charts.example.org/x")
        ]
        .map(|(p, u)| (p.to_string(), u.to_string()))
    );
    assert_eq!(
        repos(&node),
        [
            ("/stable", format!("{TIER_URL}/stable")),
            ("/mirror", format!("{TIER_URL}/mirror"))
        ]
        .map(|(p, u)| (p.to_string(), u))
    );
    // Per-repository settings: S3 ones stay with the tier, the rest go to both.
    assert_eq!(tier["repos"][0]["region"].as_str(), Some("eu-west-1"));
    assert!(node["repos"][0].get("region").is_none());
    for t in [&node, &tier] {
        assert_eq!(t["repos"][1]["verify_digests"].as_bool(), Some(false));
        assert_eq!(t["repos"][1]["rules"][0]["fresh_for"].as_str(), Some("5s"));
        assert_eq!(t["rules"][0]["ttl"].as_str(), Some("1d"));
        assert_eq!(
            t["rules"][0]["headers"]["Cache-Control"].as_str(),
            Some("max-age=86400")
        );
        assert_eq!(t["max_stale"].as_str(), Some("3d"));
        assert_eq!(t["workers"].as_integer(), Some(2));
    }
    // chartcache itself loads them once it serves several repositories (issue 13: `--repo`,
    // `[[repos]]`); a binary without that would refuse the `repos` key.
    if chartcache_serves_several_repositories() {
        config_of(&objects, "chartcache");
        config_of(&objects, "chartcache-tier");
    } else {
        eprintln!(
            "note: this chartcache has no [[repos]] yet (issue 13); the [[repos]] configs were \
             checked as TOML only"
        );
    }
    Ok(())
}

/// Whether this build's `--help` lists `--repo` (several repositories, issue 13).
fn chartcache_serves_several_repositories() -> bool {
    Command::new(env!("CARGO_BIN_EXE_chartcache"))
        .arg("--help")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--repo "))
}

fn wrong_values_refused() -> Result<(), Failed> {
    let cases = [
        (json!({"cache": {"size": "lots"}}), "size"),
        (json!({"upstream": "ftp://charts.example.org"}), "upstream"),
        (json!({"config": {"maxStal": "1d"}}), "maxStal"),
        (
            json!({"config": {"upstreamTimeout": "10"}}),
            "upstreamTimeout",
        ),
        (json!({"config": {"workers": 0}}), "workers"),
        (
            json!({"repos": [{"prefix": "stable", "upstream": "s3://charts-a"}]}),
            "prefix",
        ),
        (json!({"repos": [{"prefix": "/stable"}]}), "upstream"),
        (
            json!({"upstream": "s3://charts-a", "repos": [{"prefix": "/b", "upstream": "s3://charts-b"}]}),
            "upstream and repos: give one",
        ),
        (
            json!({"rules": [{"match": {"exact": "/index.yaml"}, "action": "cach"}]}),
            "action",
        ),
        (
            json!({"podSecurityContext": {"runAsNonRoot": false, "runAsUser": 0, "runAsGroup": 0}}),
            "runAsNonRoot",
        ),
        (
            json!({"extraEnv": [{"name": "CHARTCACHE_ADMIN_TOKEN", "value": "in-plain-sight"}]}),
            "extraEnv",
        ),
        (
            json!({"tier": {"enabled": true, "cacheSize": "8 gigs"}}),
            "cacheSize",
        ),
        (
            json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": "150%"}}}),
            "maxUnavailable",
        ),
        (json!({"hostPort": {"port": 70000}}), "port"),
    ];
    let mut accepted = Vec::new();
    for (values, field) in &cases {
        let (code, doc, stderr) = check_chart(&["reject", &values.to_string()])?;
        match code {
            0 => {
                let error = doc["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains(field),
                    "{values}: refused, but the error does not name {field:?}: {error}"
                );
            }
            _ => accepted.push(format!("{values} ({stderr})")),
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    Ok(())
}

fn upgrade_keeps_token() -> Result<(), Failed> {
    // The stand-in API server keeps what the install created, so the upgrade's `lookup` finds
    // the Secret: a new random token on every upgrade would break every purge script.
    let (code, doc, stderr) = check_chart(&["upgrade", "{}"])?;
    assert_eq!(
        code, 0,
        "install + upgrade failed: {}\n{stderr}",
        doc["error"]
    );
    let token = |phase: &str| -> String {
        doc[phase]
            .as_array()
            .and_then(|objects| objects.iter().find(|o| o["kind"] == "Secret"))
            .and_then(|secret| secret["data"]["token"].as_str())
            .unwrap_or_else(|| panic!("no admin Secret in the {phase}: {doc}"))
            .to_string()
    };
    let installed = token("install");
    assert!(installed.len() >= 32);
    assert_eq!(
        token("upgrade"),
        installed,
        "the upgrade generated a new token"
    );
    assert_eq!(
        doc["patched"],
        json!([]),
        "an upgrade with the same values changed objects"
    );
    Ok(())
}

fn static_manifest_current() -> Result<(), Failed> {
    let (code, doc, _) = check_chart(&["static"])?;
    assert_eq!(
        code, 0,
        "{} not the chart's current rendering: run `python3 deploy/helm/check_chart.py static --write`",
        doc["stale"]
    );
    Ok(())
}

fn readme_current() -> Result<(), Failed> {
    let (code, doc, stderr) = check_chart(&["readme"])?;
    assert_eq!(
        code, 0,
        "deploy/helm/chartcache/README.md's values table is out of date ({doc}): run \
         `python3 deploy/helm/check_chart.py readme --write`\n{stderr}"
    );
    assert!(doc["rows"].as_u64().is_some_and(|n| n > 50), "{doc}");
    Ok(())
}

fn seccomp_profile_current() -> Result<(), Failed> {
    let (code, doc, _) = check_chart(&["seccomp"])?;
    assert_eq!(
        code, 0,
        "{} is not moby's default + io_uring: run `python3 deploy/helm/check_chart.py seccomp --write`",
        doc["path"]
    );
    // And what it allows: the io_uring calls in exactly one rule, nothing that the runtime
    // default grants only with a capability.
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/helm/chartcache/files/seccomp-iouring.json"),
    )?)?;
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let rules = profile["syscalls"].as_array().unwrap();
    let io_uring: Vec<&Value> = rules
        .iter()
        .filter(|r| r["names"].to_string().contains("io_uring"))
        .collect();
    assert_eq!(io_uring.len(), 1, "{io_uring:?}");
    assert_eq!(
        io_uring[0]["names"],
        json!(["io_uring_setup", "io_uring_enter", "io_uring_register"])
    );
    assert_eq!(io_uring[0]["action"], "SCMP_ACT_ALLOW");
    let allowed: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r["args"].is_null())
        .flat_map(|r| r["names"].as_array().unwrap().iter())
        .filter_map(Value::as_str)
        .collect();
    for privileged in [
        "mount",
        "umount2",
        "bpf",
        "init_module",
        "reboot",
        "unshare",
    ] {
        assert!(!allowed.contains(privileged), "{privileged} is allowed");
    }
    for needed in ["epoll_wait", "read", "sendfile", "mmap"] {
        assert!(allowed.contains(needed), "{needed} is not allowed");
    }
    for rule in rules {
        assert!(
            rule.get("includes").is_none() && rule.get("excludes").is_none(),
            "a Localhost profile is read as plain OCI seccomp: no includes/excludes ({rule})"
        );
    }
    Ok(())
}

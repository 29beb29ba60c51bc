//! The deployment artefacts, checked against the real binary and against each other:
//! `deploy/chartcache.yaml` (the Helm chart rendered for `kubectl apply`; every YAML document
//! parsed; tests/deploy_chart.rs checks it is the chart's current rendering), its ConfigMap TOML,
//! `deploy/envoy-equivalent.toml`, `Dockerfile` (+ `.dockerignore`) and `deploy/README.md`.
//!
//! Invariants checked (each failure message says which file to fix and how):
//! - every `--flag` and `CHARTCACHE_*` variable in the manifest (and the Dockerfile) is one
//!   the binary's `--help` lists;
//! - the manifest's effective configuration (ConfigMap TOML < env < args, the binary's own
//!   precedence) loads with `chartcache::config::from_toml`, and the binary accepts the exact
//!   args with `--check-config`;
//! - container ports, probes, Prometheus annotation, Service and hostPath mount agree with the
//!   listen / admin / cache_dir that configuration resolves to;
//! - the image, uid/gid, exposed ports and cache volume agree between manifest and Dockerfile,
//!   and the Dockerfile builds the README's binary (`--release --locked --bin chartcache`).
//!
//! No network, no docker: only files in the checkout and `chartcache --help / --check-config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

/// The value the tests use where the manifest reads `CHARTCACHE_ADMIN_TOKEN` (or any other
/// setting) from a Secret: the Secret is created by the operator, not shipped in the file, so
/// a placeholder stands in for it. Its presence is what validation needs (a non-loopback admin
/// listener requires a token); its value is irrelevant.
const SECRET_PLACEHOLDER: &str = "placeholder-from-secret";

const MANIFEST: &str = "deploy/chartcache.yaml";
const ENVOY_TOML: &str = "deploy/envoy-equivalent.toml";

// ---------------------------------------------------------------------------------------------
// Helpers: files, the binary, YAML navigation.
// ---------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The real binary, with any `CHARTCACHE_*` variable of the test environment removed so only
/// what the test passes counts.
fn chartcache() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chartcache"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CHARTCACHE_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(root());
    cmd
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What `chartcache --help` says the binary accepts.
struct Help {
    /// Long flag name (without `--`) → whether it takes a value.
    flags: BTreeMap<String, bool>,
    /// Every `[env: NAME]` shown.
    env: BTreeSet<String>,
}

fn help() -> Help {
    let out = chartcache().arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "chartcache --help failed: {}",
        show(&out)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut env = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        // Option lines look like `--cache-dir <DIR>` or `-h, --help`.
        let opt = t.strip_prefix("--").or_else(|| {
            t.strip_prefix('-')
                .and_then(|r| r.split_once(", --"))
                .map(|(_, long)| long)
        });
        if let Some(rest) = opt {
            if line.starts_with("  ") && !line.starts_with("          ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.insert(name, rest.contains('<'));
            }
        }
        let mut s = t;
        while let Some(i) = s.find("[env: ") {
            s = &s[i + 6..];
            let name: String = s
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            env.insert(name);
        }
    }
    assert!(
        flags.contains_key("listen") && flags.contains_key("check-config"),
        "could not parse flags out of `chartcache --help` (got {flags:?}); update help() in \
         tests/deploy.rs to the new help layout"
    );
    assert!(
        env.contains("CHARTCACHE_LISTEN"),
        "could not parse [env: ...] out of `chartcache --help`; update help() in tests/deploy.rs"
    );
    Help { flags, env }
}

fn docs() -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(MANIFEST))
        .unwrap_or_else(|e| panic!("{MANIFEST} is not valid YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn s(y: &Yaml) -> Option<&str> {
    y.as_str()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// The one document of `kind` (optionally with `name`).
fn one<'a>(docs: &'a [Yaml], kind: &str, name: Option<&str>) -> &'a Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|d| s(&d["kind"]) == Some(kind))
        .filter(|d| name.is_none() || s(&d["metadata"]["name"]) == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{MANIFEST} must contain exactly one {kind}{} (found {})",
        name.map(|n| format!(" named {n:?}")).unwrap_or_default(),
        found.len()
    );
    found[0]
}

fn pod_spec(docs: &[Yaml]) -> &Yaml {
    let ds = one(docs, "DaemonSet", None);
    assert_eq!(
        s(&ds["apiVersion"]),
        Some("apps/v1"),
        "{MANIFEST}: the DaemonSet must be apiVersion apps/v1"
    );
    let spec = &ds["spec"]["template"]["spec"];
    assert!(
        spec.is_hash(),
        "{MANIFEST}: the DaemonSet has no spec.template.spec"
    );
    spec
}

fn container(docs: &[Yaml]) -> &Yaml {
    let cs = list(&pod_spec(docs)["containers"]);
    cs.iter()
        .find(|c| s(&c["name"]) == Some("chartcache"))
        .unwrap_or_else(|| panic!("{MANIFEST}: the DaemonSet needs a container named chartcache"))
}

/// `(flag, value)` pairs of the container's args, accepting `--flag=value` and
/// `--flag value`; whether a flag takes a value comes from the binary's help.
fn args(c: &Yaml, help: &Help) -> Vec<(String, Option<String>)> {
    if !c["command"].is_badvalue() {
        let cmd: Vec<&str> = list(&c["command"]).iter().filter_map(s).collect();
        assert_eq!(
            cmd,
            ["/usr/local/bin/chartcache"],
            "{MANIFEST}: the chartcache container's `command` must be the Dockerfile's \
             ENTRYPOINT (or be removed so the ENTRYPOINT runs)"
        );
    }
    let raw: Vec<String> = list(&c["args"])
        .iter()
        .map(|a| match a {
            Yaml::String(v) => v.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("{MANIFEST}: container arg {other:?} is not a string"),
        })
        .collect();
    let mut out = Vec::new();
    let mut it = raw.into_iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--") else {
            panic!(
                "{MANIFEST}: container arg {a:?} is not a --flag; chartcache takes no positional \
                 arguments"
            );
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        let takes_value = *help.flags.get(&name).unwrap_or_else(|| {
            panic!(
                "{MANIFEST}: container arg --{name} is not a flag `chartcache --help` lists; \
                 rename it to one of {:?} or remove it",
                help.flags.keys().collect::<Vec<_>>()
            )
        });
        let value = match (takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => Some(
                it.next()
                    .unwrap_or_else(|| panic!("{MANIFEST}: container arg --{name} needs a value")),
            ),
            (false, None) => None,
            (false, Some(v)) => {
                panic!("{MANIFEST}: --{name} takes no value, but the manifest passes {v:?}")
            }
        };
        out.push((name, value));
    }
    out
}

fn arg<'a>(args: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    args.iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The container's `CHARTCACHE_*` variables with their value, a Secret standing in as
/// [`SECRET_PLACEHOLDER`], a ConfigMap key resolved from the manifest.
fn env(c: &Yaml, docs: &[Yaml]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in list(&c["env"]) {
        let name = s(&e["name"])
            .unwrap_or_else(|| panic!("{MANIFEST}: an env entry has no name: {e:?}"))
            .to_string();
        let value = if let Some(v) = s(&e["value"]) {
            v.to_string()
        } else if let Some(k) = e["value"].as_i64() {
            k.to_string()
        } else if e["valueFrom"]["secretKeyRef"].is_hash() {
            let r = &e["valueFrom"]["secretKeyRef"];
            assert!(
                s(&r["name"]).is_some() && s(&r["key"]).is_some(),
                "{MANIFEST}: env {name} secretKeyRef needs both name and key"
            );
            SECRET_PLACEHOLDER.to_string()
        } else if e["valueFrom"]["configMapKeyRef"].is_hash() {
            let r = &e["valueFrom"]["configMapKeyRef"];
            let cm = one(docs, "ConfigMap", s(&r["name"]));
            let key = s(&r["key"]).unwrap_or_default();
            s(&cm["data"][key])
                .unwrap_or_else(|| {
                    panic!("{MANIFEST}: env {name} refers to a ConfigMap key that does not exist")
                })
                .to_string()
        } else {
            // Downward API and the like: not a chartcache setting we can resolve.
            continue;
        };
        out.push((name, value));
    }
    out
}

/// Port number of a container port given as a number or a port name.
fn port_of(c: &Yaml, port: &Yaml) -> Option<i64> {
    if let Some(p) = port.as_i64() {
        return Some(p);
    }
    let name = s(port)?;
    list(&c["ports"])
        .iter()
        .find(|p| s(&p["name"]) == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
}

fn volume_mount_of<'a>(c: &'a Yaml, volume: &str) -> Option<&'a str> {
    list(&c["volumeMounts"])
        .iter()
        .find(|m| s(&m["name"]) == Some(volume))
        .and_then(|m| s(&m["mountPath"]))
}

// ---------------------------------------------------------------------------------------------
// The manifest's effective configuration.
// ---------------------------------------------------------------------------------------------

/// TOML value for a setting given as text (flag or env): the integer keys stay integers.
fn toml_value(key: &str, raw: &str) -> toml::Value {
    match key {
        "workers" | "max_connections" => toml::Value::Integer(
            raw.parse()
                .unwrap_or_else(|_| panic!("{MANIFEST}: {key} = {raw:?} is not a number")),
        ),
        _ => toml::Value::String(raw.to_string()),
    }
}

/// What the pod runs with: the ConfigMap file named by `--config`, then `CHARTCACHE_*` env,
/// then flags on top (the binary's precedence: flag > env > file), as one TOML table.
struct Effective {
    /// The chartcache TOML text in the ConfigMap, as shipped.
    configmap_toml: String,
    /// The merged settings.
    table: toml::Table,
    /// The container's parsed args.
    args: Vec<(String, Option<String>)>,
    /// The container's resolved `CHARTCACHE_*` env.
    env: Vec<(String, String)>,
}

fn effective(docs: &[Yaml], help: &Help) -> Effective {
    let c = container(docs);
    let args = args(c, help);
    let env = env(c, docs);

    let config_path = arg(&args, "config")
        .map(str::to_string)
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "CHARTCACHE_CONFIG")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| {
            panic!("{MANIFEST}: the chartcache container passes no --config; the ConfigMap's rules would be ignored")
        });
    let config_path = Path::new(&config_path);
    let (dir, file) = (
        config_path.parent().unwrap().to_str().unwrap(),
        config_path.file_name().unwrap().to_str().unwrap(),
    );
    // --config DIR/FILE must be a key of a ConfigMap mounted at DIR.
    let mount = list(&c["volumeMounts"])
        .iter()
        .find(|m| s(&m["mountPath"]).map(|p| p.trim_end_matches('/')) == Some(dir))
        .unwrap_or_else(|| {
            panic!("{MANIFEST}: --config {config_path:?} but no volumeMount has mountPath {dir}")
        });
    let vol_name = s(&mount["name"]).unwrap();
    let vol = list(&pod_spec(docs)["volumes"])
        .iter()
        .find(|v| s(&v["name"]) == Some(vol_name))
        .unwrap_or_else(|| panic!("{MANIFEST}: volumeMount {vol_name} has no volume"));
    let cm_name = s(&vol["configMap"]["name"]).unwrap_or_else(|| {
        panic!("{MANIFEST}: volume {vol_name} (holding --config) is not a configMap volume")
    });
    let cm = one(docs, "ConfigMap", Some(cm_name));
    assert_eq!(
        s(&cm["metadata"]["namespace"]),
        s(&one(docs, "DaemonSet", None)["metadata"]["namespace"]),
        "{MANIFEST}: ConfigMap {cm_name} must be in the DaemonSet's namespace"
    );
    let configmap_toml = s(&cm["data"][file])
        .unwrap_or_else(|| {
            panic!(
                "{MANIFEST}: --config {config_path:?} but ConfigMap {cm_name} has no key {file:?}"
            )
        })
        .to_string();

    let mut table: toml::Table = toml::from_str(&configmap_toml).unwrap_or_else(|e| {
        panic!("{MANIFEST}: ConfigMap {cm_name} key {file} is not valid TOML: {e}")
    });
    for (name, value) in &env {
        let Some(key) = name.strip_prefix("CHARTCACHE_") else {
            continue;
        };
        assert!(
            help.env.contains(name),
            "{MANIFEST}: env {name} is not a variable `chartcache --help` lists; the binary \
             would ignore it"
        );
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "config" => {}
            "no_access_log" => {
                table.insert("access_log".into(), toml::Value::Boolean(false));
            }
            _ => {
                table.insert(key.clone(), toml_value(&key, value));
            }
        }
    }
    for (name, value) in &args {
        let key = name.replace('-', "_");
        match (key.as_str(), value) {
            ("config", _) => {}
            ("check_config", _) => {
                panic!("{MANIFEST}: --check-config makes the pod exit at once; remove it")
            }
            ("no_access_log", _) => {
                table.insert("access_log".into(), toml::Value::Boolean(false));
            }
            (_, Some(v)) => {
                table.insert(key.clone(), toml_value(&key, v));
            }
            (_, None) => panic!("{MANIFEST}: unexpected value-less flag --{name}"),
        }
    }
    Effective {
        configmap_toml,
        table,
        args,
        env,
    }
}

fn load(text: &str, what: &str) -> chartcache::config::Config {
    chartcache::config::from_toml(text)
        .unwrap_or_else(|e| panic!("{what} is not a valid chartcache config: {e}\n{text}"))
}

fn effective_config(docs: &[Yaml], help: &Help) -> (Effective, chartcache::config::Config) {
    let eff = effective(docs, help);
    let text = toml::to_string(&eff.table).unwrap();
    let cfg = load(
        &text,
        &format!("{MANIFEST}: the ConfigMap TOML merged with the container's env and args"),
    );
    (eff, cfg)
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile.
// ---------------------------------------------------------------------------------------------

/// One Dockerfile instruction, continuation lines joined, comments dropped.
#[derive(Debug)]
struct Instr {
    op: String,
    rest: String,
}

/// The Dockerfile's stages, each a list of instructions starting with its FROM.
fn dockerfile_stages() -> Vec<Vec<Instr>> {
    let text = read("Dockerfile");
    let mut instrs = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        instrs.push(Instr {
            op: op.to_ascii_uppercase(),
            rest: rest.trim().to_string(),
        });
        cur.clear();
    }
    let mut stages: Vec<Vec<Instr>> = Vec::new();
    for i in instrs {
        if i.op == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(st) = stages.last_mut() {
            st.push(i);
        }
    }
    assert!(!stages.is_empty(), "Dockerfile has no FROM");
    stages
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// `["a", "b"]` or `a b` → words.
fn exec_form(s: &str) -> Vec<String> {
    let t = s.trim();
    if t.starts_with('[') {
        t.trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|w| w.trim().trim_matches('"').to_string())
            .filter(|w| !w.is_empty())
            .collect()
    } else {
        words(t).into_iter().map(str::to_string).collect()
    }
}

fn final_stage_ops<'a>(stages: &'a [Vec<Instr>], op: &str) -> Vec<&'a Instr> {
    stages
        .last()
        .unwrap()
        .iter()
        .filter(|i| i.op == op)
        .collect()
}

/// `USER uid[:gid]` of the final stage, as numbers.
fn dockerfile_user() -> (i64, Option<i64>) {
    let stages = dockerfile_stages();
    let users = final_stage_ops(&stages, "USER");
    let user = users
        .last()
        .unwrap_or_else(|| panic!("Dockerfile: the final stage needs a USER (non-root uid)"));
    let (u, g) = match user.rest.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.rest.as_str(), None),
    };
    let uid = u.parse::<i64>().unwrap_or_else(|_| {
        panic!(
            "Dockerfile: USER {} must be numeric; with a user name, Kubernetes' runAsNonRoot \
             cannot verify the image is non-root",
            user.rest
        )
    });
    (
        uid,
        g.map(|g| g.parse().expect("Dockerfile: USER gid must be numeric")),
    )
}

// ---------------------------------------------------------------------------------------------
// Tests: the manifest against the binary.
// ---------------------------------------------------------------------------------------------

#[test]
fn every_yaml_document_parses_and_has_a_kind() {
    let docs = docs();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| s(&d["kind"])).collect();
    assert_eq!(
        kinds.len(),
        docs.len(),
        "{MANIFEST}: every document needs a kind"
    );
    for kind in ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"] {
        assert!(
            kinds.contains(&kind),
            "{MANIFEST}: missing the {kind} (has {kinds:?})"
        );
    }
    let ns = s(&one(&docs, "Namespace", None)["metadata"]["name"]).unwrap();
    for d in &docs {
        if s(&d["kind"]) != Some("Namespace") {
            assert_eq!(
                s(&d["metadata"]["namespace"]),
                Some(ns),
                "{MANIFEST}: {} {:?} must be in namespace {ns}",
                s(&d["kind"]).unwrap(),
                s(&d["metadata"]["name"])
            );
        }
    }
}

#[test]
fn manifest_flags_and_env_are_ones_the_binary_accepts() {
    let help = help();
    let docs = docs();
    let c = container(&docs);
    let args = args(c, &help); // panics on any flag --help does not list
    assert!(
        !args.is_empty(),
        "{MANIFEST}: expected args on the container"
    );
    for e in list(&c["env"]) {
        let name = s(&e["name"]).unwrap();
        if name.starts_with("CHARTCACHE_") {
            assert!(
                help.env.contains(name),
                "{MANIFEST}: env {name} is not a variable `chartcache --help` lists; use one of \
                 {:?}",
                help.env
            );
        }
    }
    // The admin token must come from a Secret, never be written in the manifest.
    let token = list(&c["env"])
        .iter()
        .find(|e| s(&e["name"]) == Some("CHARTCACHE_ADMIN_TOKEN"));
    assert!(
        arg(&args, "admin-token").is_none(),
        "{MANIFEST}: do not pass --admin-token in args (visible in `kubectl describe`); use \
         CHARTCACHE_ADMIN_TOKEN from a Secret"
    );
    if let Some(t) = token {
        assert!(
            t["valueFrom"]["secretKeyRef"].is_hash(),
            "{MANIFEST}: CHARTCACHE_ADMIN_TOKEN must come from a secretKeyRef, not a literal value"
        );
    }
}

#[test]
fn manifest_effective_config_is_valid() {
    let help = help();
    let docs = docs();
    let (eff, cfg) = effective_config(&docs, &help);
    assert!(
        matches!(
            cfg.repo.origin.upstream,
            chartcache::origin::Upstream::S3 { .. }
        ),
        "{MANIFEST}: the DaemonSet should serve an s3:// upstream (set --upstream s3://BUCKET/PREFIX)"
    );
    // The ConfigMap carries the route rules; they should be the documented defaults (the
    // seed Envoy routes), so `kubectl edit` of the ConfigMap is the one place to change them.
    assert_eq!(
        format!("{:?}", cfg.repo.policy),
        format!("{:?}", chartcache::policy::Policy::envoy_default()),
        "{MANIFEST}: the ConfigMap's [[rules]] differ from the documented default routes; update \
         the ConfigMap (or the docs if the defaults changed)"
    );
    // The ConfigMap alone (with the admin token the Secret gives through the env) is a valid
    // file too: it parses with deny_unknown_fields.
    let mut alone: toml::Table = toml::from_str(&eff.configmap_toml).unwrap();
    alone
        .entry("cache_dir")
        .or_insert_with(|| toml::Value::String(cfg.cache.dir.display().to_string()));
    if eff.env.iter().any(|(k, _)| k == "CHARTCACHE_ADMIN_TOKEN") {
        alone.insert(
            "admin_token".into(),
            toml::Value::String(SECRET_PLACEHOLDER.into()),
        );
    }
    load(
        &toml::to_string(&alone).unwrap(),
        &format!("{MANIFEST}: the ConfigMap's chartcache.toml on its own"),
    );
}

#[test]
fn binary_accepts_the_manifest_args_with_check_config() {
    let help = help();
    let docs = docs();
    let eff = effective(&docs, &help);
    let dir = tempfile::tempdir().unwrap();
    let cfg_file = dir.path().join("chartcache.toml");
    std::fs::write(&cfg_file, &eff.configmap_toml).unwrap();

    let mut cmd = chartcache();
    cmd.current_dir(dir.path());
    for (name, value) in &eff.args {
        match (name.as_str(), value) {
            // The ConfigMap is mounted in the pod; here it is a temporary copy.
            ("config", _) => cmd.arg(format!("--config={}", cfg_file.display())),
            (_, Some(v)) => cmd.arg(format!("--{name}={v}")),
            (_, None) => cmd.arg(format!("--{name}")),
        };
    }
    for (name, value) in &eff.env {
        if name.starts_with("CHARTCACHE_") && name != "CHARTCACHE_CONFIG" {
            cmd.env(name, value);
        }
    }
    let out = cmd.arg("--check-config").output().unwrap();
    assert!(
        out.status.success(),
        "{MANIFEST}: `chartcache <the DaemonSet's args> --check-config` (env from the manifest, \
         Secret values as placeholders) must exit 0: {}",
        show(&out)
    );
}

#[test]
fn ports_probes_and_service_match_listen_and_admin() {
    let help = help();
    let docs = docs();
    let (_, cfg) = effective_config(&docs, &help);
    let c = container(&docs);
    let listen = i64::from(cfg.server.listen.port());
    let admin = i64::from(cfg.admin.listen.port());

    let ports: Vec<(Option<&str>, i64)> = list(&c["ports"])
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_i64().unwrap()))
        .collect();
    for (what, port) in [("listen", listen), ("admin", admin)] {
        assert!(
            ports.iter().any(|(_, p)| *p == port),
            "{MANIFEST}: the config's {what} port {port} is not among the container ports \
             {ports:?}; add it (or fix --{what})"
        );
    }
    assert!(
        ports.iter().all(|(_, p)| *p == listen || *p == admin),
        "{MANIFEST}: container ports {ports:?} include a port chartcache does not listen on \
         (listen {listen}, admin {admin})"
    );
    for p in list(&c["ports"]) {
        if p["containerPort"].as_i64() == Some(admin) {
            assert!(
                p["hostPort"].is_badvalue(),
                "{MANIFEST}: do not publish the admin port {admin} as a hostPort (purge and \
                 metrics would be reachable on every node address)"
            );
        }
    }
    // The admin listener must be reachable by the kubelet (not loopback) and then, by the
    // binary's rule, token-protected.
    assert!(
        !cfg.admin.listen.ip().is_loopback(),
        "{MANIFEST}: admin listens on {}, which the kubelet's probes cannot reach; use \
         --admin=0.0.0.0:{admin}",
        cfg.admin.listen
    );
    assert!(
        cfg.admin.token.is_some(),
        "{MANIFEST}: admin is not loopback, so set CHARTCACHE_ADMIN_TOKEN from a Secret"
    );

    for (probe, path, required) in [
        ("readinessProbe", "/readyz", true),
        ("livenessProbe", "/healthz", true),
        ("startupProbe", "/healthz", false),
    ] {
        let p = &c[probe];
        if p.is_badvalue() && !required {
            continue;
        }
        let get = &p["httpGet"];
        assert!(
            get.is_hash(),
            "{MANIFEST}: {probe} must be an httpGet probe"
        );
        assert_eq!(
            s(&get["path"]),
            Some(path),
            "{MANIFEST}: {probe} must GET {path}"
        );
        assert_eq!(
            port_of(c, &get["port"]),
            Some(admin),
            "{MANIFEST}: {probe} must probe the admin port {admin} (by number or the port's \
             name), got {:?}",
            get["port"]
        );
        assert!(
            s(&get["scheme"]).is_none_or(|sc| sc == "HTTP"),
            "{MANIFEST}: {probe}: the admin listener speaks plain HTTP"
        );
    }

    // Prometheus scrape annotation points at the admin port.
    let ann = &one(&docs, "DaemonSet", None)["spec"]["template"]["metadata"]["annotations"];
    if let Some(port) = s(&ann["prometheus.io/port"]) {
        assert_eq!(
            port.parse::<i64>().ok(),
            Some(admin),
            "{MANIFEST}: prometheus.io/port must be the admin port {admin}"
        );
        assert_eq!(
            s(&ann["prometheus.io/path"]),
            Some("/metrics"),
            "{MANIFEST}: prometheus.io/path must be /metrics"
        );
    }

    // The optional Service targets the listen port.
    for svc in docs.iter().filter(|d| s(&d["kind"]) == Some("Service")) {
        for p in list(&svc["spec"]["ports"]) {
            assert_eq!(
                port_of(c, &p["targetPort"]),
                Some(listen),
                "{MANIFEST}: Service port {:?} must target the listen port {listen}",
                p["name"]
            );
        }
        let sel = svc["spec"]["selector"].as_hash().unwrap();
        let labels = &one(&docs, "DaemonSet", None)["spec"]["template"]["metadata"]["labels"];
        for (k, v) in sel {
            assert_eq!(
                &labels[k.as_str().unwrap()],
                v,
                "{MANIFEST}: the Service selector {k:?} does not match the pod labels"
            );
        }
    }
}

#[test]
fn hostpath_volume_is_mounted_at_the_cache_dir() {
    let help = help();
    let docs = docs();
    let (_, cfg) = effective_config(&docs, &help);
    let c = container(&docs);
    let volumes = list(&pod_spec(&docs)["volumes"]);
    let host: Vec<&Yaml> = volumes.iter().filter(|v| v["hostPath"].is_hash()).collect();
    assert_eq!(
        host.len(),
        1,
        "{MANIFEST}: expected one hostPath volume (the node-local cache)"
    );
    let name = s(&host[0]["name"]).unwrap();
    let mount = volume_mount_of(c, name).unwrap_or_else(|| {
        panic!("{MANIFEST}: the hostPath volume {name} is not mounted in the chartcache container")
    });
    assert_eq!(
        Path::new(mount),
        cfg.cache.dir.as_path(),
        "{MANIFEST}: the hostPath volume is mounted at {mount} but the cache dir is {}; make \
         --cache-dir and the volumeMount agree",
        cfg.cache.dir.display()
    );
    // Every init container touching the cache mounts it at the same place and, if it chowns,
    // chowns exactly that path.
    for ic in list(&pod_spec(&docs)["initContainers"]) {
        if let Some(m) = volume_mount_of(ic, name) {
            assert_eq!(
                m, mount,
                "{MANIFEST}: init container {:?} mounts the cache at {m}, not {mount}",
                ic["name"]
            );
            let cmd: Vec<&str> = list(&ic["command"]).iter().filter_map(s).collect();
            if cmd.first().is_some_and(|c| c.ends_with("chown")) {
                assert_eq!(
                    cmd.last().copied(),
                    Some(mount),
                    "{MANIFEST}: init container {:?} must chown the cache mount {mount}",
                    ic["name"]
                );
            }
        }
    }
    // readOnlyRootFilesystem: the cache must be a volume, not the image's filesystem.
    if c["securityContext"]["readOnlyRootFilesystem"].as_bool() == Some(true) {
        let mounted: Vec<&str> = list(&c["volumeMounts"])
            .iter()
            .filter_map(|m| s(&m["mountPath"]))
            .collect();
        assert!(
            mounted.iter().any(|m| cfg.cache.dir.starts_with(m)),
            "{MANIFEST}: readOnlyRootFilesystem is set but the cache dir {} is on no volume",
            cfg.cache.dir.display()
        );
    }
}

#[test]
fn service_account_has_irsa_annotation() {
    let docs = docs();
    let spec = pod_spec(&docs);
    let sa_name = s(&spec["serviceAccountName"]).unwrap_or_else(|| {
        panic!(
            "{MANIFEST}: the DaemonSet pod needs serviceAccountName (IRSA is per ServiceAccount)"
        )
    });
    let sa = one(&docs, "ServiceAccount", Some(sa_name));
    let arn = s(&sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]).unwrap_or_else(|| {
        panic!("{MANIFEST}: ServiceAccount {sa_name} needs the eks.amazonaws.com/role-arn annotation (IRSA)")
    });
    let re = regex::Regex::new(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$").unwrap();
    assert!(
        re.is_match(arn),
        "{MANIFEST}: eks.amazonaws.com/role-arn {arn:?} is not an IAM role ARN \
         (arn:aws:iam::ACCOUNT:role/NAME)"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: the manifest against the Dockerfile and the docs.
// ---------------------------------------------------------------------------------------------

#[test]
fn image_is_the_documented_build_of_this_version() {
    let docs = docs();
    let spec = pod_spec(&docs);
    let image = s(&container(&docs)["image"])
        .unwrap_or_else(|| panic!("{MANIFEST}: the chartcache container has no image"));
    let (repo, tag) = image
        .rsplit_once(':')
        .filter(|(r, _)| !r.ends_with('/') && !image.contains('@'))
        .unwrap_or_else(|| {
            panic!("{MANIFEST}: image {image:?} needs an explicit tag (not :latest by default)")
        });
    assert_eq!(
        repo.rsplit('/').next(),
        Some("chartcache"),
        "{MANIFEST}: image {image:?} should be named chartcache (the Dockerfile's image)"
    );
    let cargo: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let version = cargo["package"]["version"].as_str().unwrap();
    assert_eq!(
        tag, version,
        "{MANIFEST}: image tag {tag:?} should be the crate version {version} (bump both together)"
    );
    // deploy/README.md builds and pushes exactly this image.
    let readme = read("deploy/README.md");
    let built: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("docker build -t "))
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    assert!(
        built.contains(&image),
        "deploy/README.md: the quick start should `docker build -t {image} .` (it builds \
         {built:?}); keep it and {MANIFEST} in step"
    );
    assert!(
        readme.contains(&format!("docker push {image}")),
        "deploy/README.md: the quick start should `docker push {image}`"
    );
    // Init containers reuse the same image (it has /bin/chown; no second pull).
    for ic in list(&spec["initContainers"]) {
        assert_eq!(
            s(&ic["image"]),
            Some(image),
            "{MANIFEST}: init container {:?} should use the same image as chartcache",
            ic["name"]
        );
    }
}

#[test]
fn security_context_matches_the_dockerfile_user() {
    let docs = docs();
    let (uid, gid) = dockerfile_user();
    assert_ne!(uid, 0, "Dockerfile: USER must not be root");
    let pod = &pod_spec(&docs)["securityContext"];
    let c = &container(&docs)["securityContext"];
    let field = |f: &str| {
        if c[f].is_badvalue() {
            &pod[f]
        } else {
            &c[f]
        }
    };
    assert_eq!(
        field("runAsNonRoot").as_bool(),
        Some(true),
        "{MANIFEST}: set securityContext.runAsNonRoot: true"
    );
    assert_eq!(
        field("runAsUser").as_i64(),
        Some(uid),
        "{MANIFEST}: runAsUser must be the Dockerfile's USER uid {uid} (the hostPath cache is \
         owned by it)"
    );
    if let Some(gid) = gid {
        if let Some(g) = field("runAsGroup").as_i64() {
            assert_eq!(
                g, gid,
                "{MANIFEST}: runAsGroup must be the Dockerfile's USER gid {gid}"
            );
        }
        for ic in list(&pod_spec(&docs)["initContainers"]) {
            let cmd: Vec<&str> = list(&ic["command"]).iter().filter_map(s).collect();
            if cmd.first().is_some_and(|c| c.ends_with("chown")) {
                assert_eq!(
                    cmd.get(1).copied(),
                    Some(format!("{uid}:{gid}").as_str()),
                    "{MANIFEST}: init container {:?} must chown to {uid}:{gid} (the Dockerfile's USER)",
                    ic["name"]
                );
            }
        }
    }
    assert_eq!(
        c["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{MANIFEST}: set allowPrivilegeEscalation: false on the chartcache container"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: the TOML configs.
// ---------------------------------------------------------------------------------------------

#[test]
fn envoy_equivalent_toml_is_valid() {
    let text = read(ENVOY_TOML);
    let cfg = load(&text, ENVOY_TOML);
    assert!(
        matches!(
            cfg.repo.origin.upstream,
            chartcache::origin::Upstream::S3 { .. }
        ),
        "{ENVOY_TOML}: the Envoy config it replaces signs for S3; upstream should be s3://"
    );
    assert_eq!(
        (cfg.server.listen.port(), cfg.admin.listen.port()),
        (8080, 8081),
        "{ENVOY_TOML}: the seed Envoy config listens on 8080 with admin on 8081"
    );
    assert_eq!(
        cfg.cache.size,
        2 << 30,
        "{ENVOY_TOML}: the seed Envoy cache is 2GiB"
    );
    assert_eq!(
        format!("{:?}", cfg.repo.policy),
        format!("{:?}", chartcache::policy::Policy::envoy_default()),
        "{ENVOY_TOML}: its [[rules]] differ from the documented default (seed Envoy) routes"
    );
    // The README's example is "the full file": it must describe the same config.
    let readme = read("README.md");
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README.md has a ```toml block");
    let readme_cfg = load(block, "README.md's ```toml example");
    assert_eq!(
        format!("{readme_cfg:?}"),
        format!("{cfg:?}"),
        "README.md's ```toml example and {ENVOY_TOML} describe different configs; keep them in step"
    );
}

#[test]
fn envoy_equivalent_toml_passes_check_config() {
    let out = chartcache()
        .args(["--check-config", "--config", ENVOY_TOML])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`chartcache --check-config --config {ENVOY_TOML}` must exit 0 (no AWS credentials are \
         needed to check): {}",
        show(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("# configuration OK"),
        "--check-config should print `# configuration OK`: {stdout}"
    );
}

#[test]
fn envoy_equivalent_toml_with_a_public_admin_needs_a_token() {
    // The DaemonSet binds admin to 0.0.0.0:8081 with CHARTCACHE_ADMIN_TOKEN from a Secret.
    // The same settings in the file: without a token it must be refused (so the rule the
    // manifest relies on holds), and with one — appended here the way the Secret supplies it
    // in the pod — accepted.
    let text = read(ENVOY_TOML).replace("admin = \"127.0.0.1:8081\"", "admin = \"0.0.0.0:8081\"");
    assert!(
        text.contains("admin = \"0.0.0.0:8081\""),
        "{ENVOY_TOML}: expected `admin = \"127.0.0.1:8081\"` (update this test if it moved)"
    );
    let err = chartcache::config::from_toml(&text)
        .expect_err("a non-loopback admin without a token must be refused")
        .to_string();
    assert!(
        err.contains("admin") && err.contains("token"),
        "the refusal should name admin and the token: {err}"
    );
    // `admin_token` must be a top-level key (before any [[rules]] table): put it next to admin.
    let with_token = text.replacen(
        "admin = \"0.0.0.0:8081\"",
        &format!("admin = \"0.0.0.0:8081\"\nadmin_token = \"{SECRET_PLACEHOLDER}\""),
        1,
    );
    load(
        &with_token,
        &format!("{ENVOY_TOML} with admin 0.0.0.0 + token"),
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: the Dockerfile.
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_the_readme_binary() {
    // README: `cargo run --release` runs the default binary, which must be `chartcache`.
    let cargo: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    assert_eq!(
        cargo["package"]["default-run"].as_str(),
        Some("chartcache"),
        "Cargo.toml: default-run must be chartcache (README's `cargo run --release`)"
    );
    let bins = cargo["bin"].as_array().unwrap();
    assert!(
        bins.iter().any(|b| b["name"].as_str() == Some("chartcache")
            && b["path"].as_str() == Some("src/main.rs")),
        "Cargo.toml: expected [[bin]] chartcache at src/main.rs"
    );

    let stages = dockerfile_stages();
    assert!(
        stages.len() >= 2,
        "Dockerfile: expected a build stage and a runtime stage"
    );
    let builds: Vec<&Instr> = stages
        .iter()
        .flatten()
        .filter(|i| i.op == "RUN" && i.rest.contains("cargo build"))
        .collect();
    assert_eq!(
        builds.len(),
        1,
        "Dockerfile: expected exactly one RUN with `cargo build`"
    );
    let build = &builds[0].rest;
    let w = words(build);
    for flag in ["--release", "--locked"] {
        assert!(
            w.contains(&flag),
            "Dockerfile: `cargo build` must use {flag} (README's release binary, Cargo.lock's \
             versions): {build}"
        );
    }
    assert!(
        w.windows(2).any(|p| p == ["--bin", "chartcache"]) || w.contains(&"--bin=chartcache"),
        "Dockerfile: `cargo build` must build `--bin chartcache`: {build}"
    );
    for flag in [
        "--features",
        "--no-default-features",
        "--all-features",
        "--profile",
    ] {
        assert!(
            !w.iter().any(|x| x.starts_with(flag)),
            "Dockerfile: `cargo build` uses {flag}, so the image's binary differs from the \
             README's `cargo run --release`: {build}"
        );
    }
    assert!(
        build.contains("target/release/chartcache"),
        "Dockerfile: the build RUN should take the binary from target/release/chartcache: {build}"
    );

    // The runtime stage copies that binary from the builder and runs it.
    let entry = final_stage_ops(&stages, "ENTRYPOINT");
    let entry = exec_form(&entry.last().expect("Dockerfile: no ENTRYPOINT").rest);
    let bin = entry.first().cloned().unwrap_or_default();
    let copied = final_stage_ops(&stages, "COPY").into_iter().any(|c| {
        let w = words(&c.rest);
        w.iter().any(|x| x.starts_with("--from="))
            && w.last() == Some(&bin.as_str())
            && w.iter()
                .filter(|x| !x.starts_with("--"))
                .any(|src| build.contains(src))
    });
    assert!(
        copied,
        "Dockerfile: ENTRYPOINT {bin:?} must be the binary COPY --from the build stage \
         (the one `cargo build` produced)"
    );
}

#[test]
fn dockerfile_ships_examples_user_ports_and_volume_the_manifest_expects() {
    let help = help();
    let docs = docs();
    let (_, cfg) = effective_config(&docs, &help);
    let stages = dockerfile_stages();

    // examples/repo, where the binary looks for it when no --upstream is given.
    let example = final_stage_ops(&stages, "COPY")
        .into_iter()
        .map(|c| words(&c.rest))
        .find(|w| w.iter().any(|x| x.trim_end_matches('/') == "examples/repo"))
        .unwrap_or_else(|| panic!("Dockerfile: the runtime stage must COPY examples/repo"));
    let dest = example.last().unwrap().trim_end_matches('/');
    assert!(
        read("src/config.rs").contains(&format!("\"{dest}\"")),
        "Dockerfile: examples/repo is copied to {dest}, which is not a path the binary looks for \
         (EXAMPLE_REPOS in src/config.rs)"
    );

    // USER = the manifest's runAsUser.
    let (uid, _) = dockerfile_user();
    let pod = &pod_spec(&docs)["securityContext"];
    assert_eq!(
        container(&docs)["securityContext"]["runAsUser"]
            .as_i64()
            .or(pod["runAsUser"].as_i64()),
        Some(uid),
        "Dockerfile USER uid {uid} differs from {MANIFEST}'s runAsUser"
    );

    // EXPOSE the listen and admin ports.
    let exposed: Vec<String> = final_stage_ops(&stages, "EXPOSE")
        .into_iter()
        .flat_map(|e| {
            words(&e.rest)
                .into_iter()
                .map(|p| p.trim_end_matches("/tcp").to_string())
        })
        .collect();
    for port in [cfg.server.listen.port(), cfg.admin.listen.port()] {
        assert!(
            exposed.contains(&port.to_string()),
            "Dockerfile: EXPOSE {port} (a port {MANIFEST} uses); it exposes {exposed:?}"
        );
    }
    let defaults = load(
        "upstream = \"file:///tmp\"\ncache_dir = \"/tmp\"",
        "defaults",
    );
    for port in [defaults.server.listen.port(), defaults.admin.listen.port()] {
        assert!(
            exposed.contains(&port.to_string()),
            "Dockerfile: EXPOSE the binary's default port {port}; it exposes {exposed:?}"
        );
    }

    // VOLUME = the cache dir the manifest mounts, created owned by the USER.
    let cache = cfg.cache.dir.display().to_string();
    let volumes: Vec<String> = final_stage_ops(&stages, "VOLUME")
        .into_iter()
        .flat_map(|v| exec_form(&v.rest))
        .collect();
    assert!(
        volumes.contains(&cache),
        "Dockerfile: declare VOLUME {cache} (the cache dir {MANIFEST} mounts); it has {volumes:?}"
    );
    assert!(
        final_stage_ops(&stages, "RUN")
            .iter()
            .any(|r| r.rest.contains(&cache) && r.rest.contains(&uid.to_string())),
        "Dockerfile: create {cache} owned by uid {uid} in the runtime stage, so a named volume \
         mounted there is writable"
    );

    // Any CHARTCACHE_* the image sets is a real variable.
    for e in final_stage_ops(&stages, "ENV") {
        for w in words(&e.rest) {
            let name = w.split('=').next().unwrap();
            if name.starts_with("CHARTCACHE_") {
                assert!(
                    help.env.contains(name),
                    "Dockerfile: ENV {name} is not a variable `chartcache --help` lists"
                );
            }
        }
    }
}

#[test]
fn dockerignore_keeps_the_build_inputs() {
    let Ok(text) = std::fs::read_to_string(root().join(".dockerignore")) else {
        return;
    };
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "examples",
        "benches",
        "loadtest",
        "tests",
    ] {
        assert!(
            !patterns
                .iter()
                .any(|p| p.trim_matches('/') == needed || *p == format!("{needed}/**")),
            ".dockerignore excludes {needed}, which `cargo build --locked` (every declared \
             target) or `COPY examples/repo` needs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Helm chart's values cover every setting.
// ---------------------------------------------------------------------------------------------

/// Every setting `chartcache --help` lists is a value of the Helm chart: a key of `config:`
/// in `deploy/helm/chartcache/values.yaml` (camelCase of the TOML key) or one the chart sets
/// from its own values. A new setting without a chart value fails here.
#[test]
fn every_setting_is_a_value_of_the_helm_chart() {
    const VALUES: &str = "deploy/helm/chartcache/values.yaml";
    // Set by the chart from its own values (ports, cache, ioUring, upstream/repos, admin.*),
    // or not settings at all.
    const CHART_SET: [&str; 13] = [
        "listen",
        "admin",
        "admin_token",
        "cache_dir",
        "cache_size",
        "driver",
        "upstream",
        "s3_endpoint",
        "region",
        "repo",
        "config",
        "check_config",
        "help",
    ];
    let values = &YamlLoader::load_from_str(&read(VALUES)).unwrap()[0];
    let config: BTreeSet<String> = values["config"]
        .as_hash()
        .unwrap_or_else(|| panic!("{VALUES}: no config map"))
        .keys()
        .filter_map(|k| k.as_str())
        .map(|k| {
            k.chars().fold(String::new(), |mut s, c| {
                if c.is_ascii_uppercase() {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
                s
            })
        })
        .collect();
    let help = help();
    let mut missing = Vec::new();
    for flag in help.flags.keys() {
        let key = flag.replace('-', "_");
        // `--no-x` is `x = false` in the file.
        let key = key.strip_prefix("no_").map_or(key.clone(), str::to_string);
        if key == "version" || CHART_SET.contains(&key.as_str()) || config.contains(&key) {
            continue;
        }
        missing.push(format!("--{flag} (config.{key} in camelCase)"));
    }
    assert!(
        missing.is_empty(),
        "{VALUES}: settings without a chart value: {missing:?}; add them under `config:` (and \
         to values.schema.json)"
    );
}

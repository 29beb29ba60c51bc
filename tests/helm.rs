//! A real Helm v4 client (helm-sdkpy, installed by `.ci/install-helm.sh`)
//! against chartcache in front of a SigV4-verifying S3 holding the example
//! repo: `helm repo add`, `helm repo update`, and a chart download — through the
//! index's JSON form (what Helm 4 gets by default) and its YAML form.
//!
//! Its own harness (`harness = false`, [`common::harness`]) so that a test
//! that cannot run is never counted as passed: `tests/helm/helm_check.py
//! --probe` asks once whether the client is usable; if not, the tests are
//! reported *ignored* (cargo's summary says `5 ignored`; the reason goes to
//! stderr) — except under `CI`, where they fail, because `.ci/run` installs
//! the client. The interpreter is `$CHARTCACHE_HELM_PYTHON` (default
//! `python3`), the one `.ci/install-helm.sh` installs into (its `$PYTHON`).

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use common::proxy::{examples_repo, test_cli, Proxy, AK, SK};
use common::spawn_s3;
use libtest_mimic::Failed;

/// `helm_check.py`'s exit status for "the Helm client is not available".
const EXIT_NOT_INSTALLED: i32 = 3;

pub fn main() {
    common::harness::run_needing(
        "the Helm client (helm-sdkpy)",
        helm_client_missing,
        vec![
            // Helm 4 sends `User-Agent: Helm/4.x`, so by default it reads the
            // index's JSON form.
            ("helm_repo_add_update_and_pull_through_chartcache", || {
                helm_through_chartcache(false, None)
            }),
            // The same with the form fixed, so the client is seen to read each.
            ("helm_reads_the_json_index_form", || {
                helm_through_chartcache(true, Some("json"))
            }),
            ("helm_reads_the_yaml_index_form", || {
                helm_through_chartcache(true, Some("yaml"))
            }),
            // A repository published by helm-s3 without `--relative`: its index
            // names charts by `s3://` URLs, which plain Helm over HTTP cannot
            // fetch unless chartcache rewrites them.
            ("helm_works_with_a_helm_s3_index_of_s3_urls", || {
                helm_through_chartcache(true, None)
            }),
            // `helm repo add one http://HOST/-/charts/hello`: a repository of one chart.
            ("helm_through_a_chart_view", helm_through_a_chart_view),
            // Two S3 buckets and a plain HTTP upstream behind one instance (issue 13).
            (
                "helm_adds_and_pulls_from_each_of_several_repositories",
                helm_through_several_repositories,
            ),
            // `helm repo add one "http://HOST/-/charts/hello?versions=2"`: Helm keeps
            // the query when it fetches the index, so it sees the newest two only.
            (
                "helm_through_the_newest_versions_of_a_chart",
                helm_through_the_newest_versions_of_a_chart,
            ),
        ],
    );
}

fn python() -> OsString {
    std::env::var_os("CHARTCACHE_HELM_PYTHON").unwrap_or_else(|| "python3".into())
}

fn helm_check_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/helm/helm_check.py")
}

/// Why the Helm client cannot be used here, or `None` when it can (or when
/// the probe fails some other way: then the tests run and say what broke).
fn helm_client_missing() -> Option<String> {
    let py = python();
    match Command::new(&py)
        .arg(helm_check_script())
        .arg("--probe")
        .output()
    {
        Err(e) => Some(format!(
            "cannot run {}: {e}; set CHARTCACHE_HELM_PYTHON",
            py.to_string_lossy()
        )),
        Ok(out) if out.status.code() == Some(EXIT_NOT_INSTALLED) => Some(format!(
            "{} ({}); run `bash .ci/install-helm.sh`, or set CHARTCACHE_HELM_PYTHON to a \
             python that has helm-sdkpy",
            String::from_utf8_lossy(&out.stderr).trim(),
            py.to_string_lossy()
        )),
        Ok(_) => None,
    }
}

/// The real Helm client adds the repository at `url` and pulls `hello` 0.2.0 from it.
fn helm_pulls_hello_0_2_0(url: &str) -> Result<(), Failed> {
    let py = python();
    let out = Command::new(&py)
        .arg(helm_check_script())
        .args([url, "hello", "0.2.0", "--timeout", "120"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.to_string_lossy()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(EXIT_NOT_INSTALLED) {
        return Err(format!("the Helm client is not available: {}", stderr.trim()).into());
    }
    assert!(out.status.success(), "helm failed: {stdout}\n{stderr}");
    assert!(stdout.contains("\"version\": \"0.2.0\""), "{stdout}");
    Ok(())
}

fn helm_through_chartcache(s3_urls: bool, index_format: Option<&str>) -> Result<(), Failed> {
    let s3 = spawn_s3(AK, SK);
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut bytes = std::fs::read(&path).unwrap();
        if s3_urls && name == "index.yaml" {
            let text = String::from_utf8(bytes).unwrap();
            let rewritten = text.replace("    - hello-", "    - s3://helm-charts/stable/hello-");
            assert_ne!(rewritten, text);
            bytes = rewritten.into_bytes();
        }
        s3.put_object("helm-charts", &format!("stable/{name}"), &bytes);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://helm-charts/stable", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.repo.index_format = index_format.map(str::to_string);
    let p = Proxy::start_in(cli, Some(tmp));
    // The form this client is served.
    let served = p.get_with("/index.yaml", &[("User-Agent", "Helm/4.3")]);
    let want = if index_format == Some("yaml") {
        "text/yaml"
    } else {
        "application/json"
    };
    assert_eq!(served.header("content-type"), Some(want));
    helm_pulls_hello_0_2_0(&format!("http://{}", p.addr))?;
    // Helm fetched the index and the chart through chartcache, signed.
    assert!(s3.get_count("/helm-charts/stable/index.yaml") >= 1);
    assert_eq!(s3.get_count("/helm-charts/stable/hello-0.2.0.tgz"), 1);
    Ok(())
}

fn helm_through_a_chart_view() -> Result<(), Failed> {
    let s3 = spawn_s3(AK, SK);
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        s3.put_object("helm-charts", &name, &std::fs::read(&path).unwrap());
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://helm-charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    let p = Proxy::start_in(cli, Some(tmp));
    helm_pulls_hello_0_2_0(&format!("http://{}/-/charts/hello", p.addr))?;
    // The chart Helm fetched under the view is the repository's object.
    assert_eq!(p.get("/hello-0.2.0.tgz").x_cache(), "HIT");
    assert_eq!(s3.get_count("/helm-charts/hello-0.2.0.tgz"), 1);
    Ok(())
}

/// `/stable` (bucket `charts-a`, prefix `stable`, helm-s3 `s3://` URLs), `/team-b`
/// (bucket `charts-b`) and `/mirror` (a plain HTTP upstream: another chartcache
/// serving the example repository from disk), one instance: Helm adds each and
/// pulls `hello` from each, every chart from its own upstream.
fn helm_through_several_repositories() -> Result<(), Failed> {
    let s3 = spawn_s3(AK, SK);
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&path).unwrap();
        s3.put_object("charts-b", &name, &bytes);
        let bytes = if name == "index.yaml" {
            String::from_utf8(bytes)
                .unwrap()
                .replace("    - hello-", "    - s3://charts-a/stable/hello-")
                .into_bytes()
        } else {
            bytes
        };
        s3.put_object("charts-a", &format!("stable/{name}"), &bytes);
    }
    let mirror = Proxy::examples();
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("unused", &tmp.path().join("cache"));
    cli.repo.upstream = None;
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.repos.repo = Some(vec![format!(
        "/stable=s3://charts-a/stable /team-b=s3://charts-b /mirror=http://{}",
        mirror.addr
    )]);
    let p = Proxy::start_in(cli, Some(tmp));
    for prefix in ["/stable", "/team-b", "/mirror"] {
        helm_pulls_hello_0_2_0(&format!("http://{}{prefix}", p.addr))?;
    }
    assert_eq!(s3.get_count("/charts-a/stable/hello-0.2.0.tgz"), 1);
    assert_eq!(s3.get_count("/charts-b/hello-0.2.0.tgz"), 1);
    assert!(s3.get_count("/charts-a/stable/index.yaml") >= 1);
    assert!(s3.get_count("/charts-b/index.yaml") >= 1);
    // The mirror's chart came through the plain HTTP upstream.
    assert_eq!(mirror.get("/hello-0.2.0.tgz").x_cache(), "HIT");
    assert_eq!(p.get("/mirror/hello-0.2.0.tgz").x_cache(), "HIT");
    Ok(())
}

fn helm_through_the_newest_versions_of_a_chart() -> Result<(), Failed> {
    let s3 = spawn_s3(AK, SK);
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        s3.put_object("helm-charts", &name, &std::fs::read(&path).unwrap());
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://helm-charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    let p = Proxy::start_in(cli, Some(tmp));
    // hello's newest two: 0.3.0-dev-1 (a pre-release, which `helm show` skips)
    // and 0.2.0.
    helm_pulls_hello_0_2_0(&format!("http://{}/-/charts/hello?versions=2", p.addr))?;
    assert_eq!(p.get("/hello-0.2.0.tgz").x_cache(), "HIT");
    // The newest one only is the pre-release: Helm finds no stable version, so the
    // query reached chartcache with the index request.
    let py = python();
    let out = Command::new(&py)
        .arg(helm_check_script())
        .args([
            &format!("http://{}/-/charts/hello?versions=1", p.addr),
            "hello",
            "0.2.0",
            "--timeout",
            "120",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.to_string_lossy()))?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

//! A real Helm v4 client (helm-sdkpy, installed by `.ci/install-helm.sh`)
//! against chartcache in front of a SigV4-verifying S3 holding the example
//! repo: `helm repo add`, `helm repo update`, and a chart download.

mod common;

use std::process::Command;

use common::proxy::{examples_repo, test_cli, Proxy, AK, SK};
use common::spawn_s3;

#[test]
fn helm_repo_add_update_and_pull_through_chartcache() {
    helm_through_chartcache(false);
}

/// A repository published by helm-s3 without `--relative`: its index names
/// charts by `s3://` URLs, which plain Helm over HTTP cannot fetch unless
/// chartcache rewrites them.
#[test]
fn helm_works_with_a_helm_s3_index_of_s3_urls() {
    helm_through_chartcache(true);
}

fn helm_through_chartcache(s3_urls: bool) {
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
    let p = Proxy::start_in(cli, Some(tmp));
    let url = format!("http://{}", p.addr);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/helm_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([url.as_str(), "hello", "0.2.0", "--timeout", "120"])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm-sdkpy must be installed in CI (.ci/install-helm.sh): {stderr}"
        );
        eprintln!("SKIPPED: helm-sdkpy is not installed; run `bash .ci/install-helm.sh`");
        return;
    }
    assert!(out.status.success(), "helm failed: {stdout}\n{stderr}");
    assert!(stdout.contains("\"version\": \"0.2.0\""), "{stdout}");
    // Helm fetched the index and the chart through chartcache, signed.
    assert!(s3.get_count("/helm-charts/stable/index.yaml") >= 1);
    assert_eq!(s3.get_count("/helm-charts/stable/hello-0.2.0.tgz"), 1);
}

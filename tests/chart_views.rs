//! Per-chart views: `/-/charts/<name>/index.yaml` is a repository index of chart
//! `<name>` only, derived from the cached full index (no extra upstream request),
//! as fresh as it, in the client's form (JSON for Helm ≥ 3.13) with its own ETags;
//! chart URLs under `/-/charts/<name>/` are the repository's objects (one cache
//! entry, one upstream GET, whichever way a chart is fetched); views survive a
//! restart.

mod common;

use common::proxy::{test_cli, Proxy, AK, SK};
use common::spawn_s3;

const HELM: (&str, &str) = ("User-Agent", "Helm/4.3");
const CURL: (&str, &str) = ("User-Agent", "curl/8.5.0");

fn index(app_versions: &[&str]) -> String {
    let mut y = String::from("apiVersion: v1\nentries:\n  app:\n");
    for v in app_versions {
        y.push_str(&format!(
            "  - name: app\n    version: {v}\n    urls:\n    - s3://charts/stable/app-{v}.tgz\n"
        ));
    }
    y.push_str("  other:\n  - name: other\n    version: 2.0.0\n    urls: [other-2.0.0.tgz]\n");
    y.push_str("generated: \"2024-01-01T00:00:00Z\"\n");
    y
}

fn proxy_in(s3: &common::S3Server, dir: &std::path::Path) -> Proxy {
    let mut cli = test_cli("s3://charts/stable", &dir.join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    Proxy::start_in(cli, None)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON")
}

#[test]
fn a_view_is_its_chart_part_of_the_index_in_the_clients_form() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index(&["1.0.0", "1.1.0"]).as_bytes(),
    );
    s3.put_object("charts", "stable/app-1.1.0.tgz", b"app chart 1.1.0");
    let tmp = tempfile::tempdir().unwrap();
    let p = proxy_in(&s3, tmp.path());

    let full = json(&p.get_with("/index.yaml", &[HELM]).body);
    let v = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(v.status, 200);
    assert_eq!(v.header("content-type"), Some("application/json"));
    assert_eq!(v.header("vary"), Some("User-Agent, Accept-Encoding"));
    let doc = json(&v.body);
    assert_eq!(doc["apiVersion"], "v1");
    assert_eq!(doc["generated"], full["generated"]);
    assert_eq!(doc["entries"].as_object().unwrap().len(), 1);
    assert_eq!(doc["entries"]["app"], full["entries"]["app"]);
    assert_eq!(
        doc["entries"]["app"][1]["urls"][0], "app-1.1.0.tgz",
        "rewritten"
    );
    let json_etag = v.header("etag").unwrap().to_string();

    // A YAML client: the same document, labelled YAML, with its own ETag.
    let y = p.get_with("/-/charts/app/index.yaml", &[CURL]);
    assert_eq!(y.header("content-type"), Some("text/yaml"));
    assert_eq!(json(&y.body), doc);
    let yaml_etag = y.header("etag").unwrap().to_string();
    assert_ne!(yaml_etag, json_etag);
    assert!(!["/index.yaml", "/-/charts/other/index.yaml"]
        .iter()
        .any(|path| { p.get_with(path, &[HELM]).header("etag") == Some(json_etag.as_str()) }));

    // 304 per form, HEAD, Range.
    let r = p.get_with(
        "/-/charts/app/index.yaml",
        &[HELM, ("If-None-Match", &json_etag)],
    );
    assert_eq!(r.status, 304);
    let r = p.get_with(
        "/-/charts/app/index.yaml",
        &[CURL, ("If-None-Match", &json_etag)],
    );
    assert_eq!(r.status, 200);
    let head = common::proxy::request(p.addr, "HEAD", "/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(
        head.header("content-length"),
        Some(v.body.len().to_string().as_str())
    );
    let part = p.get_with("/-/charts/app/index.yaml", &[HELM, ("Range", "bytes=1-5")]);
    assert_eq!((part.status, &part.body[..]), (206, &v.body[1..6]));

    // Absent charts and malformed view paths.
    assert_eq!(p.get("/-/charts/nope/index.yaml").status, 404);
    assert_eq!(p.get("/-/charts/app").status, 404);

    // Every view request revalidated the full index; nothing else went upstream.
    let index_gets = s3.get_count("/charts/stable/index.yaml");
    assert_eq!(s3.total_requests(), index_gets);

    // A chart through the view's URL and through the root: one entry, one GET.
    let c = p.get("/-/charts/app/app-1.1.0.tgz");
    assert_eq!((c.status, c.x_cache()), (200, "MISS"));
    assert_eq!(c.body, b"app chart 1.1.0");
    assert_eq!(p.get("/app-1.1.0.tgz").x_cache(), "HIT");
    assert_eq!(p.get("/-/charts/other/app-1.1.0.tgz").x_cache(), "HIT");
    assert_eq!(s3.get_count("/charts/stable/app-1.1.0.tgz"), 1);

    // A republish shows in the view at once.
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index(&["1.0.0", "1.1.0", "1.2.0"]).as_bytes(),
    );
    let v2 = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(v2.x_cache(), "MISS");
    assert_eq!(
        json(&v2.body)["entries"]["app"].as_array().unwrap().len(),
        3
    );
    assert_ne!(v2.header("etag"), Some(json_etag.as_str()));
}

#[test]
fn views_survive_a_restart() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index(&["1.0.0"]).as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let before = {
        let p = proxy_in(&s3, tmp.path());
        assert_eq!(p.get("/index.yaml").x_cache(), "MISS");
        p.get_with("/-/charts/app/index.yaml", &[HELM])
    };
    assert_eq!(before.status, 200);
    // Same cache directory: the index is revalidated (304) and its views are
    // learned from the stored copy before the first answer.
    let p = proxy_in(&s3, tmp.path());
    let after = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!((after.status, after.x_cache()), (200, "REVALIDATED"));
    assert_eq!(after.body, before.body);
    assert_eq!(after.header("etag"), before.header("etag"));
    assert_eq!(p.get("/-/charts/other/index.yaml").status, 200);
}

/// With the index routed around the cache (`bypass`), there is no stored index to
/// cut views from: a view is a clear 404, never the whole upstream index.
#[test]
fn no_views_when_the_index_route_bypasses_the_cache() {
    let s3 = spawn_s3(AK, SK);
    s3.create_bucket("charts");
    s3.put_object("charts", "stable/index.yaml", index(&["1.0.0"]).as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nmatch = { exact = \"/index.yaml\" }\naction = \"bypass\"\n",
    )
    .unwrap();
    let mut cli = test_cli("s3://charts/stable", &dir.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.config = Some(rules);
    let p = Proxy::start_in(cli, None);
    assert_eq!(p.get("/index.yaml").x_cache(), "BYPASS");
    let view = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(view.status, 404, "{}", view.text());
    assert!(view.text().contains("chart views need /index.yaml cached"));
}

/// `?versions=N`: the newest N versions by SemVer as Helm orders them (whatever
/// the index's order), in the client's form, with an ETag per N and form; 304,
/// HEAD and ranges over the served bytes; N beyond the count is all of them
/// (same bytes, same ETag); a bad N is a 400 that says why.
#[test]
fn the_newest_versions_of_a_chart() {
    let s3 = spawn_s3(AK, SK);
    // Oldest first, and a version that sorts between the others.
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index(&["1.0.0", "1.10.0", "1.2.0", "2.0.0-rc.1", "1.9.0"]).as_bytes(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = proxy_in(&s3, tmp.path());
    let versions = |doc: &serde_json::Value| -> Vec<String> {
        doc["entries"]["app"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_str().unwrap().to_string())
            .collect()
    };
    let full = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(
        versions(&json(&full.body)),
        ["1.0.0", "1.10.0", "1.2.0", "2.0.0-rc.1", "1.9.0"],
        "the plain view keeps the index's order"
    );
    let mut etags = vec![full.header("etag").unwrap().to_string()];
    for (n, want) in [
        (1, &["2.0.0-rc.1"][..]),
        (2, &["2.0.0-rc.1", "1.10.0"][..]),
        (4, &["2.0.0-rc.1", "1.10.0", "1.9.0", "1.2.0"][..]),
    ] {
        let path = format!("/-/charts/app/index.yaml?versions={n}");
        let r = p.get_with(&path, &[HELM]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let doc = json(&r.body);
        assert_eq!(versions(&doc), want, "versions={n}");
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["generated"], "2024-01-01T00:00:00Z");
        assert_eq!(doc["entries"].as_object().unwrap().len(), 1);
        let etag = r.header("etag").unwrap().to_string();
        assert!(etag.starts_with('"'), "strong: {etag}");
        let y = p.get_with(&path, &[CURL]);
        assert_eq!(y.header("content-type"), Some("text/yaml"));
        assert_eq!(y.body, r.body, "same bytes, labelled YAML");
        let yaml_etag = y.header("etag").unwrap().to_string();
        // 304 for its own ETag only.
        let c = p.get_with(&path, &[HELM, ("If-None-Match", &etag)]);
        assert_eq!(c.status, 304);
        let c = p.get_with(&path, &[CURL, ("If-None-Match", &etag)]);
        assert_eq!(c.status, 200);
        // HEAD: the length of the GET.
        let head = common::proxy::request(p.addr, "HEAD", &path, &[HELM]);
        assert_eq!(
            head.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert!(head.body.is_empty());
        // Every range, including ones across the two stored pieces.
        let len = r.body.len();
        for (a, b) in [
            (0, len - 1),
            (1, 5),
            (len - 40, len - 1),
            (len / 2, len - 3),
        ] {
            let range = format!("bytes={a}-{b}");
            let part = p.get_with(&path, &[HELM, ("Range", &range)]);
            assert_eq!(part.status, 206, "{range}");
            assert_eq!(part.body, &r.body[a..=b], "{range}");
        }
        etags.push(etag);
        etags.push(yaml_etag);
    }
    let all = p.get_with("/-/charts/app/index.yaml?versions=5", &[HELM]);
    assert_eq!(
        versions(&json(&all.body)),
        ["2.0.0-rc.1", "1.10.0", "1.9.0", "1.2.0", "1.0.0"]
    );
    for huge in ["6", "1000", "99999999999999999999999999"] {
        let r = p.get_with(
            &format!("/-/charts/app/index.yaml?versions={huge}"),
            &[HELM],
        );
        assert_eq!(r.body, all.body, "{huge}");
        assert_eq!(r.header("etag"), all.header("etag"), "{huge}");
    }
    etags.push(all.header("etag").unwrap().to_string());
    for (i, e) in etags.iter().enumerate() {
        assert!(!etags[i + 1..].contains(e), "ETag {e} used twice");
    }
    for bad in ["0", "", "-1", "two", "1.5"] {
        let r = p.get_with(&format!("/-/charts/app/index.yaml?versions={bad}"), &[HELM]);
        assert_eq!(r.status, 400, "versions={bad}");
        assert!(r.text().contains("versions="), "{}", r.text());
    }
    assert_eq!(p.get("/-/charts/nope/index.yaml?versions=1").status, 404);
    // Sorted already (the other chart): the view's own bytes.
    let other = p.get_with("/-/charts/other/index.yaml?versions=1", &[HELM]);
    assert_eq!(
        json(&other.body),
        json(&p.get_with("/-/charts/other/index.yaml", &[HELM]).body)
    );
}

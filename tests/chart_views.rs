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
    let mut cli = test_cli("s3://charts/stable", &dir.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    common::proxy::config_file(
        &mut cli,
        dir.path(),
        "[[rules]]\nmatch = { exact = \"/index.yaml\" }\naction = \"bypass\"\n",
    );
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

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
        .expect("a gzip body");
    out
}

/// A client that accepts gzip gets a view's gzip form once the views' gzip form
/// is stored (the identity form until then), with its own ETag per form, 304s and
/// ranges of the compressed bytes; `?versions=N` is served identity-only.
#[test]
fn gzip_views_for_clients_that_ask() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index(&["1.0.0", "1.1.0"]).as_bytes(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = proxy_in(&s3, tmp.path());
    const GZ: (&str, &str) = ("Accept-Encoding", "gzip");
    let plain = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    let plain_yaml = p.get_with("/-/charts/app/index.yaml", &[CURL]);
    let mut gz = p.get_with("/-/charts/app/index.yaml", &[HELM, GZ]);
    for _ in 0..1000 {
        if gz.header("content-encoding").is_some() {
            break;
        }
        assert_eq!(gz.body, plain.body, "the identity form meanwhile");
        std::thread::sleep(std::time::Duration::from_millis(10));
        gz = p.get_with("/-/charts/app/index.yaml", &[HELM, GZ]);
    }
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("content-type"), Some("application/json"));
    assert_eq!(gz.header("vary"), Some("User-Agent, Accept-Encoding"));
    assert_eq!(
        gz.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );
    assert_eq!(gunzip(&gz.body), plain.body);
    let ygz = p.get_with("/-/charts/app/index.yaml", &[CURL, GZ]);
    assert_eq!(ygz.header("content-type"), Some("text/yaml"));
    assert_eq!(ygz.body, gz.body);
    let other = p.get_with("/-/charts/other/index.yaml", &[HELM, GZ]);
    assert_eq!(other.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gunzip(&other.body),
        p.get_with("/-/charts/other/index.yaml", &[HELM]).body
    );
    let etags = [
        plain.header("etag").unwrap(),
        plain_yaml.header("etag").unwrap(),
        gz.header("etag").unwrap(),
        ygz.header("etag").unwrap(),
        other.header("etag").unwrap(),
    ];
    for (i, e) in etags.iter().enumerate() {
        assert!(!etags[i + 1..].contains(e), "ETag {e} used twice");
        assert!(e.starts_with('"'), "strong: {e}");
    }
    let gz_etag = etags[2];
    let r = p.get_with(
        "/-/charts/app/index.yaml",
        &[HELM, GZ, ("If-None-Match", gz_etag)],
    );
    assert_eq!(
        (r.status, r.header("content-encoding")),
        (304, Some("gzip"))
    );
    let r = p.get_with(
        "/-/charts/app/index.yaml",
        &[HELM, ("If-None-Match", gz_etag)],
    );
    assert_eq!((r.status, r.body.clone()), (200, plain.body.clone()));
    let r = p.get_with(
        "/-/charts/app/index.yaml",
        &[HELM, GZ, ("Range", "bytes=0-1")],
    );
    assert_eq!((r.status, &r.body[..]), (206, &[0x1f, 0x8b][..]));
    let head = common::proxy::request(p.addr, "HEAD", "/-/charts/app/index.yaml", &[HELM, GZ]);
    assert_eq!(
        head.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );
    // The newest N: identity only.
    let n = p.get_with("/-/charts/app/index.yaml?versions=1", &[HELM, GZ]);
    assert_eq!((n.status, n.header("content-encoding")), (200, None));
    assert_eq!(json(&n.body)["entries"]["app"][0]["version"], "1.1.0");
}

/// A Helm GET that waits for its answer as long as a debug build on a busy
/// machine needs to process a big index (requests during a republish wait for it).
fn slow_get(addr: std::net::SocketAddr, path: &str) -> common::proxy::Response {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Helm/4.3\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    common::proxy::parse_response(&raw, false).expect("a response")
}

/// While a big index is republished, view requests on every worker are answered
/// with a whole view of the old or the new version — never a 503 or a mixed body.
/// (Requests are sent while the index processor is busy with the new version: the
/// window in which the forms of two versions are stored side by side.)
#[test]
fn views_during_a_republish_are_the_old_or_the_new_version() {
    let s3 = spawn_s3(AK, SK);
    let old = chartcache::helm::synthetic::index(12_000, "s3://charts/stable/");
    // The new version: one more version of chart0000, newest first.
    let new = old.replacen(
        "  chart0000:\n",
        "  chart0000:\n  - name: chart0000\n    version: 9.9.9\n    urls: [chart0000-9.9.9.tgz]\n",
        1,
    );
    s3.put_object("charts", "stable/index.yaml", old.as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts/stable", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.runtime.workers = Some(2);
    cli.cache.cache_size = Some("512MiB".into());
    let p = Proxy::start_in(cli, None);
    let path = "/-/charts/chart0000/index.yaml";
    let newest = "/-/charts/chart0000/index.yaml?versions=2";
    let before = (slow_get(p.addr, path), slow_get(p.addr, newest));
    assert_eq!((before.0.status, before.1.status), (200, 200));
    s3.put_object("charts", "stable/index.yaml", new.as_bytes());

    let processing = |p: &Proxy| p.metric("chartcache_index_processing");
    let addr = p.addr;
    let index = std::thread::spawn(move || slow_get(addr, "/index.yaml"));
    // Wait until the new version is being processed, then ask from several clients
    // (connections land on both workers) until it is stored.
    let mut waited = 0;
    while processing(&p) == 0 && !index.is_finished() && waited < 30_000 {
        std::thread::sleep(std::time::Duration::from_millis(1));
        waited += 1;
    }
    let sent_while_processing = std::sync::atomic::AtomicUsize::new(0);
    let answers = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (answers, sent, index) = (&answers, &sent_while_processing, &index);
            let p = &p;
            scope.spawn(move || {
                let mut rounds = 0;
                while !index.is_finished() || rounds < 2 {
                    rounds += 1;
                    let which = if (t + rounds) % 2 == 0 { path } else { newest };
                    if processing(p) == 1 {
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let r = slow_get(p.addr, which);
                    answers.lock().unwrap().push((which, r));
                }
            });
        }
    });
    let r = index.join().unwrap();
    assert_eq!(r.status, 200);
    let after = (slow_get(p.addr, path), slow_get(p.addr, newest));
    assert_ne!(after.0.body, before.0.body, "the new version is served");
    assert_eq!(
        json(&after.1.body)["entries"]["chart0000"][0]["version"],
        "9.9.9"
    );
    let answers = answers.into_inner().unwrap();
    for (which, r) in &answers {
        assert_eq!(r.status, 200, "{which}: {}", r.text());
        let (old, new) = if *which == path {
            (&before.0, &after.0)
        } else {
            (&before.1, &after.1)
        };
        let same =
            |a: &common::proxy::Response| a.body == r.body && a.header("etag") == r.header("etag");
        assert!(same(old) || same(new), "{which}: neither version's view");
    }
    assert!(
        sent_while_processing.into_inner() >= 1,
        "no view request was sent while the new version was processed"
    );
}

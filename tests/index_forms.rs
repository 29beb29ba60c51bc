//! The index in its two forms, and index work off the workers:
//! - a Helm ≥ 3.13 / Helm 4 `User-Agent` gets the compact JSON form, anyone else
//!   the YAML; each form with its own strong ETag, `Vary: User-Agent`, 304s,
//!   HEAD, Range and the `s3://` rewrite; both decode to the same document as Helm
//!   reads it (YAML 1.1 typing, anchors, block strings, fields Helm ignores);
//! - `index_format = yaml` turns the JSON form off;
//! - while a big (~20 MB) index is processed, a cache hit on the same (only)
//!   worker is answered;
//! - derived forms purged, corrupt after a restart, or evicted are rebuilt from the
//!   stored index — evicted again and again, with a backoff.

mod common;

use common::proxy::{test_cli, Proxy, AK, SK};
use common::spawn_s3;
use serde_json::json;

const HELM: (&str, &str) = ("User-Agent", "Helm/4.3");
const CURL: (&str, &str) = ("User-Agent", "curl/8.5.0");
const DIGEST: &str = "2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc";

fn index() -> String {
    format!(
        r#"apiVersion: v1
entries:
  app:
  - name: app
    version: 1.10.0
    appVersion: 1.10
    description: |
      Line one
      line two
    digest: {DIGEST}
    created: 2024-01-01T00:00:00Z
    annotations:
      category: Database
      verified: "yes"
      legacy: yes
    keywords: [db, on]
    maintainers: &team
    - name: Ann
      email: ann@example.com
    urls:
    - s3://charts/stable/app-1.10.0.tgz
  - name: app
    version: 1.9.0
    maintainers: *team
    urls: [s3://charts/stable/app-1.9.0.tgz]
    x-custom: {{num: 010, f: 1e3, s: '010', list: [~, true]}}
generated: "2024-01-01T00:00:00Z"
"#
    )
}

/// The document Helm decodes from `index()` (after the rewrite), written out by
/// hand: go-yaml v2 typing (`1.10` a float, `yes`/`on` true, `010` octal), and no
/// string coercion for fields promoted from the embedded chart metadata.
fn as_helm_reads_it() -> serde_json::Value {
    let team = json!([{"name": "Ann", "email": "ann@example.com"}]);
    json!({
        "apiVersion": "v1",
        "entries": {"app": [
            {
                "name": "app", "version": "1.10.0", "appVersion": 1.1,
                "description": "Line one\nline two\n", "digest": DIGEST,
                "created": "2024-01-01T00:00:00Z",
                "annotations": {"category": "Database", "verified": "yes", "legacy": true},
                "keywords": ["db", true], "maintainers": team,
                "urls": ["app-1.10.0.tgz"]
            },
            {
                "name": "app", "version": "1.9.0", "maintainers": team,
                "urls": ["app-1.9.0.tgz"],
                "x-custom": {"num": 8, "f": 1000.0, "s": "010", "list": [null, true]}
            }
        ]},
        "generated": "2024-01-01T00:00:00Z"
    })
}

fn proxy(s3: &common::S3Server, format: Option<&str>, workers: usize, size: &str) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts/stable", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.repo.index_format = format.map(str::to_string);
    cli.runtime.workers = Some(workers);
    cli.cache.cache_size = Some(size.into());
    Proxy::start_in(cli, Some(tmp))
}

#[test]
fn helm_gets_json_others_yaml_each_with_its_etag_vary_and_304() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    let p = proxy(&s3, None, 2, "64MiB");

    let yaml = p.get_with("/index.yaml", &[CURL]);
    assert_eq!(yaml.status, 200);
    assert_eq!(yaml.header("content-type"), Some("text/yaml"));
    assert_eq!(yaml.header("vary"), Some("User-Agent, Accept-Encoding"));
    let yaml_text = yaml.text();
    assert!(yaml_text.contains("    - app-1.10.0.tgz\n") && !yaml_text.contains("s3://"));
    let yaml_etag = yaml.header("etag").unwrap().to_string();

    let js = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(js.status, 200);
    assert_eq!(js.x_cache(), "REVALIDATED");
    assert_eq!(js.header("content-type"), Some("application/json"));
    assert_eq!(js.header("vary"), Some("User-Agent, Accept-Encoding"));
    assert_eq!(
        js.header("content-length"),
        Some(js.body.len().to_string().as_str())
    );
    let json_etag = js.header("etag").unwrap().to_string();
    assert!(
        json_etag.starts_with('"') && json_etag != yaml_etag,
        "{json_etag}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&js.body).expect("the JSON form is JSON");
    assert_eq!(doc, as_helm_reads_it());
    assert!(
        !js.text().contains("\": ") && !js.text().contains('\n'),
        "compact: {}",
        js.text()
    );

    // Helm 3.12 and clients without a User-Agent read YAML.
    let old = p.get_with("/index.yaml", &[("User-Agent", "Helm/3.12.3")]);
    assert_eq!(old.body, yaml.body);
    assert_eq!(p.get("/index.yaml").body, yaml.body);

    // 304 per form: each form's ETag revalidates that form only.
    let r = p.get_with("/index.yaml", &[HELM, ("If-None-Match", &json_etag)]);
    assert_eq!(
        (r.status, r.header("etag")),
        (304, Some(json_etag.as_str()))
    );
    assert_eq!(r.header("vary"), Some("User-Agent, Accept-Encoding"));
    let r = p.get_with("/index.yaml", &[HELM, ("If-None-Match", &yaml_etag)]);
    assert_eq!((r.status, r.body.clone()), (200, js.body.clone()));
    let r = p.get_with("/index.yaml", &[CURL, ("If-None-Match", &yaml_etag)]);
    assert_eq!(
        (r.status, r.header("etag")),
        (304, Some(yaml_etag.as_str()))
    );
    let r = p.get_with("/index.yaml", &[CURL, ("If-None-Match", &json_etag)]);
    assert_eq!((r.status, r.body.clone()), (200, yaml.body.clone()));

    // HEAD and Range answer for the JSON form's own bytes.
    let head = common::proxy::request(p.addr, "HEAD", "/index.yaml", &[HELM]);
    assert_eq!(
        head.header("content-length"),
        Some(js.body.len().to_string().as_str())
    );
    let part = p.get_with("/index.yaml", &[HELM, ("Range", "bytes=0-9")]);
    assert_eq!((part.status, &part.body[..]), (206, &js.body[..10]));

    // Republished: both forms change, at once.
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index()
            .replace("version: 1.9.0", "version: 1.9.1")
            .as_bytes(),
    );
    let js2 = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(js2.x_cache(), "MISS");
    assert_ne!(js2.header("etag"), Some(json_etag.as_str()));
    let doc2: serde_json::Value = serde_json::from_slice(&js2.body).unwrap();
    assert_eq!(doc2["entries"]["app"][1]["version"], "1.9.1");
    let yaml2 = p.get_with("/index.yaml", &[CURL]);
    assert!(yaml2.text().contains("version: 1.9.1"));
    assert_ne!(yaml2.header("etag"), Some(yaml_etag.as_str()));
}

#[test]
fn index_format_yaml_serves_yaml_to_helm_too() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    let p = proxy(&s3, Some("yaml"), 2, "64MiB");
    let r = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(r.header("content-type"), Some("text/yaml"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(r.text().starts_with("apiVersion: v1\n"));
}

/// A GET that waits for its answer as long as a debug build needs to process a
/// 20 MB index (the common client gives up after 10 s of silence).
fn slow_get(addr: std::net::SocketAddr, path: &str, ua: (&str, &str)) -> common::proxy::Response {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{}: {}\r\nConnection: close\r\n\r\n",
        ua.0, ua.1
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    common::proxy::parse_response(&raw, false).expect("a response")
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
        .expect("a gzip body");
    out
}

#[test]
fn gzip_forms_for_clients_that_ask_with_their_own_etags() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    let p = proxy(&s3, None, 2, "64MiB");
    let yaml = p.get_with("/index.yaml", &[CURL]);
    let js = p.get_with("/index.yaml", &[HELM]);
    const GZ: (&str, &str) = ("Accept-Encoding", "gzip");
    // The gzip forms are stored right after the index: wait until they are.
    let mut gz = p.get_with("/index.yaml", &[CURL, GZ]);
    for _ in 0..500 {
        if gz.header("content-encoding").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        gz = p.get_with("/index.yaml", &[CURL, GZ]);
    }
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("content-type"), Some("text/yaml"));
    assert_eq!(gz.header("vary"), Some("User-Agent, Accept-Encoding"));
    assert_eq!(
        gz.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );
    assert_eq!(gunzip(&gz.body), yaml.body);
    let gz_etag = gz.header("etag").unwrap().to_string();
    assert_ne!(Some(gz_etag.as_str()), yaml.header("etag"));

    let jgz = p.get_with("/index.yaml", &[HELM, GZ]);
    assert_eq!(jgz.header("content-encoding"), Some("gzip"));
    assert_eq!(jgz.header("content-type"), Some("application/json"));
    assert_eq!(gunzip(&jgz.body), js.body);
    let jgz_etag = jgz.header("etag").unwrap().to_string();
    assert!(![
        yaml.header("etag"),
        js.header("etag"),
        Some(gz_etag.as_str())
    ]
    .contains(&Some(jgz_etag.as_str())));

    // 304 and Range per encoding; q=0 and other codings get the identity form.
    let r = p.get_with("/index.yaml", &[CURL, GZ, ("If-None-Match", &gz_etag)]);
    assert_eq!(
        (r.status, r.header("content-encoding")),
        (304, Some("gzip"))
    );
    let r = p.get_with("/index.yaml", &[CURL, ("If-None-Match", &gz_etag)]);
    assert_eq!((r.status, r.body.clone()), (200, yaml.body.clone()));
    let r = p.get_with("/index.yaml", &[CURL, GZ, ("Range", "bytes=0-1")]);
    assert_eq!((r.status, &r.body[..]), (206, &[0x1f, 0x8b][..]));
    for ae in ["gzip;q=0", "br", "identity"] {
        let r = p.get_with("/index.yaml", &[CURL, ("Accept-Encoding", ae)]);
        assert_eq!(r.header("content-encoding"), None, "{ae}");
        assert_eq!(r.body, yaml.body, "{ae}");
    }
}

/// A value of `chartcache_index_processing` in a metrics scrape.
fn processing(p: &Proxy) -> u64 {
    p.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("chartcache_index_processing "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge is exported")
}

#[test]
fn a_hit_is_answered_while_a_big_index_is_processed() {
    let s3 = spawn_s3(AK, SK);
    let big = chartcache::helm::synthetic::index(21_000, "s3://charts/stable/");
    assert!(big.len() > 19 << 20, "{} bytes", big.len());
    s3.put_object("charts", "stable/index.yaml", big.as_bytes());
    s3.put_object("charts", "stable/small-1.0.0.tgz", b"a small chart");
    // One worker: the hit and the index fill share it.
    let p = proxy(&s3, None, 1, "512MiB");
    assert_eq!(p.get("/small-1.0.0.tgz").x_cache(), "MISS");
    assert_eq!(p.get("/small-1.0.0.tgz").x_cache(), "HIT");

    let addr = p.addr;
    let index = std::thread::spawn(move || slow_get(addr, "/index.yaml", HELM));
    // Hits sent and answered while the gauge said the index was being processed
    // (read before sending and after the answer). With index work on the worker
    // itself, no hit could be answered inside that window.
    let mut answered_meanwhile = 0;
    let mut polls = 0;
    while !index.is_finished() && polls < 20_000 {
        polls += 1;
        if processing(&p) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        }
        let hit = p.get("/small-1.0.0.tgz");
        assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));
        assert_eq!(hit.body, b"a small chart");
        if processing(&p) == 1 {
            answered_meanwhile += 1;
        }
    }
    let r = index.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["entries"].as_object().unwrap().len(), 21_000 / 50);
    assert_eq!(
        doc["entries"]["chart0000"][0]["urls"][0],
        "chart0000-0.4.9.tgz"
    );
    assert!(
        answered_meanwhile >= 1,
        "no hit was answered while the index was processed"
    );
    assert!(p
        .metrics()
        .contains("chartcache_index_versions_processed_total 1"));
}

/// Purges every cache key starting with `prefix` through the admin endpoint
/// (derived forms' keys have a control character: percent-encoded); returns how
/// many records went.
fn purge_prefix(p: &Proxy, prefix: &str) -> u64 {
    let encoded: String = prefix
        .bytes()
        .map(|b| match b {
            b'/' | b'.' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let r = common::proxy::request(p.admin, "DELETE", &format!("/cache?prefix={encoded}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["purged"].as_u64().unwrap()
}

/// GETs `path` with `headers` until its answer carries `Content-Encoding: gzip`
/// (the gzip forms are stored after the answer that stored the index), checking
/// every answer on the way with `check`; the gzip answer.
fn until_gzip(
    p: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
    check: impl Fn(&common::proxy::Response),
) -> common::proxy::Response {
    for _ in 0..1000 {
        let r = p.get_with(path, headers);
        assert_eq!(r.status, 200, "{}", r.text());
        check(&r);
        if r.header("content-encoding").is_some() {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{path}: no gzip form within 10 s");
}

/// A derived form purged (or evicted) while its index version is current is
/// rebuilt from the stored index: the JSON form and the views before the next
/// answer, the gzip forms right after it; no answer meanwhile is wrong.
#[test]
fn purged_derived_forms_are_rebuilt() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    let p = proxy(&s3, None, 2, "64MiB");
    const GZ: (&str, &str) = ("Accept-Encoding", "gzip");
    let yaml = p.get_with("/index.yaml", &[CURL]);
    let js = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(js.header("content-type"), Some("application/json"));
    let view = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(view.status, 200);
    // Every answer is one of the forms, whole and labelled as what it is.
    let is_yaml_form = |r: &common::proxy::Response| match r.header("content-encoding") {
        None => assert_eq!(r.body, yaml.body),
        Some(_) => assert_eq!(gunzip(&r.body), yaml.body),
    };
    let is_json_form = |r: &common::proxy::Response| match r.header("content-encoding") {
        None => assert_eq!(r.body, js.body),
        Some(_) => assert_eq!(gunzip(&r.body), js.body),
    };
    let is_view = |r: &common::proxy::Response| match r.header("content-encoding") {
        None => assert_eq!(r.body, view.body),
        Some(_) => assert_eq!(gunzip(&r.body), view.body),
    };
    let ygz = until_gzip(&p, "/index.yaml", &[CURL, GZ], is_yaml_form);
    let jgz = until_gzip(&p, "/index.yaml", &[HELM, GZ], is_json_form);
    let vgz = until_gzip(&p, "/-/charts/app/index.yaml", &[HELM, GZ], is_view);

    // The JSON forms: rebuilt before the next answer.
    assert_eq!(
        purge_prefix(&p, "/index.yaml\u{1}json"),
        2,
        "json + json.gz"
    );
    let r = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        (r.body.clone(), r.header("etag")),
        (js.body.clone(), js.header("etag"))
    );
    let r = until_gzip(&p, "/index.yaml", &[HELM, GZ], is_json_form);
    assert_eq!(r.header("etag"), jgz.header("etag"));

    // The YAML's gzip form: the identity form until it is back.
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}yaml.gz"), 1);
    let r = until_gzip(&p, "/index.yaml", &[CURL, GZ], is_yaml_form);
    assert_eq!(r.header("etag"), ygz.header("etag"));
    assert_eq!(r.body, ygz.body);

    // The views and their gzip form.
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}views"), 2);
    let r = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.body.clone(), r.header("etag")),
        (view.body.clone(), view.header("etag"))
    );
    let r = until_gzip(&p, "/-/charts/app/index.yaml", &[HELM, GZ], is_view);
    assert_eq!(
        (r.body.clone(), r.header("etag")),
        (vgz.body.clone(), vgz.header("etag"))
    );
    // One upstream version all along: rebuilt from the stored copy.
    assert_eq!(p.metric("chartcache_index_versions_processed_total"), 4);
}

/// A proxy on `s3://charts/stable` with its cache under `dir` (kept across starts)
/// and `workers` workers.
fn restartable(s3: &common::S3Server, dir: &std::path::Path, workers: usize) -> Proxy {
    let mut cli = test_cli("s3://charts/stable", &dir.join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.runtime.workers = Some(workers);
    Proxy::start_in(cli, None)
}

/// After a restart the forms of the stored index are found in their slot, and the
/// next version's forms go to the other one: the served version's forms are never
/// overwritten while its YAML is still the one served.
#[test]
fn after_a_restart_new_forms_go_to_the_other_slot() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let start = || restartable(&s3, tmp.path(), 2);
    let first = {
        let p = start();
        p.get_with("/index.yaml", &[HELM])
    };
    assert_eq!(first.header("content-type"), Some("application/json"));
    let p = start();
    let again = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(
        (again.x_cache(), again.body.clone()),
        ("REVALIDATED", first.body.clone())
    );
    assert_eq!(again.header("etag"), first.header("etag"));
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index()
            .replace("version: 1.9.0", "version: 1.9.1")
            .as_bytes(),
    );
    let next = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(next.x_cache(), "MISS");
    assert_ne!(next.header("etag"), first.header("etag"));
    let view = p.get_with("/-/charts/app/index.yaml", &[HELM]);
    assert_eq!(view.status, 200);
    assert!(view.text().contains("1.9.1"));
    // Both versions' JSON forms and views are stored: one in each slot (had the
    // new version's gone to the slot of the old one, it would have replaced it).
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}json0"), 1);
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}json1"), 1);
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}views0"), 1);
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}views1"), 1);
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// After a restart the stored derived forms are verified with the stored index
/// on the index processor before the first answer: a corrupt one is dropped and
/// stored again from the index, so the first answer is already the right form.
#[test]
fn a_corrupt_derived_form_found_after_a_restart_is_replaced() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let start = || restartable(&s3, tmp.path(), 1);
    let js = {
        let p = start();
        p.get_with("/index.yaml", &[HELM])
    };
    assert_eq!(js.header("content-type"), Some("application/json"));
    // Flip one byte in the middle of the stored JSON form.
    let mut files = Vec::new();
    files_under(&tmp.path().join("cache"), &mut files);
    let mut flipped = 0;
    for f in files {
        let mut bytes = std::fs::read(&f).unwrap();
        let found = bytes.windows(js.body.len()).position(|w| w == js.body);
        if let Some(at) = found {
            bytes[at + js.body.len() / 2] ^= 0x01;
            std::fs::write(&f, &bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "the JSON form is stored once");
    let p = start();
    let r = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(r.x_cache(), "REVALIDATED");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        (r.body.clone(), r.header("etag")),
        (js.body.clone(), js.header("etag"))
    );
}

/// The gzip forms cost nothing until a client asks for one: an index version
/// served only to clients that do not accept gzip is never compressed. The first
/// client that asks gets the identity form and starts the compression; from then
/// on every version is compressed once, right after it is stored.
#[test]
fn gzip_forms_are_built_once_a_client_asks() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    // One worker: the fill runs on the worker that answers, and the gauge is up
    // (compression included) before the answer leaves.
    let p = proxy(&s3, None, 1, "64MiB");
    let settled = |p: &Proxy| {
        assert_eq!(p.metric_until("chartcache_index_processing", |v| v == 0), 0);
    };
    let yaml = p.get_with("/index.yaml", &[CURL]);
    let js = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(p.get_with("/-/charts/app/index.yaml", &[HELM]).status, 200);
    settled(&p);
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}yaml.gz"), 0, "not built");
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}json.gz"), 0, "not built");
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}views.gz"), 0, "not built");
    const GZ: (&str, &str) = ("Accept-Encoding", "gzip");
    // The first that asks starts it (and gets the identity form unless the
    // compression was done before its answer left).
    let first = p.get_with("/index.yaml", &[CURL, GZ]);
    match first.header("content-encoding") {
        None => assert_eq!(first.body, yaml.body),
        Some(_) => assert_eq!(gunzip(&first.body), yaml.body),
    }
    let gz = until_gzip(&p, "/index.yaml", &[CURL, GZ], |_| ());
    assert_eq!(gunzip(&gz.body), yaml.body);
    let jgz = until_gzip(&p, "/index.yaml", &[HELM, GZ], |_| ());
    assert_eq!(gunzip(&jgz.body), js.body);
    // The next version: compressed right after it is stored, without being asked.
    s3.put_object(
        "charts",
        "stable/index.yaml",
        index()
            .replace("version: 1.9.0", "version: 1.9.1")
            .as_bytes(),
    );
    assert_eq!(p.get_with("/index.yaml", &[CURL]).x_cache(), "MISS");
    settled(&p);
    // Both versions' forms, one in each slot.
    assert_eq!(purge_prefix(&p, "/index.yaml\u{1}yaml.gz"), 2);
}

/// A cache too small to keep the derived forms does not rebuild them on every
/// revalidation (`helm::Rebuilds`). They are evicted while the YAML stays when the
/// YAML is served fresh (`fresh_for`) and so looked up without a revalidation; the
/// next revalidation finds them gone. Evicted once, they are rebuilt at once; evicted
/// again, the next rebuild waits 10 s, and meanwhile Helm gets the YAML (whole, with
/// its own ETag) and the views answer 503; after the wait they are back.
#[test]
fn evicted_derived_forms_are_rebuilt_with_a_backoff() {
    const PROCESSED: &str = "chartcache_index_versions_processed_total";
    // Long enough for a pass on a busy CI box, short enough that the second eviction
    // is seen within the 10 s wait after the first rebuild.
    const FRESH: std::time::Duration = std::time::Duration::from_secs(6);
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "stable/index.yaml", index().as_bytes());
    // 20 charts of 1 MB: one pass is ~2.4 laps of an 8 MiB cache, so a form looked
    // up once since it was written (kept by the second chance for one lap) goes too.
    let charts: Vec<String> = (0..20).map(|i| format!("/filler-{i}.tgz")).collect();
    for (i, c) in charts.iter().enumerate() {
        let body: Vec<u8> = (0..1_000_000u32).map(|b| (b ^ i as u32) as u8).collect();
        s3.put_object("charts", &format!("stable{c}"), &body);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts/stable", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.runtime.workers = Some(1);
    cli.cache.cache_size = Some("8MiB".into());
    common::proxy::config_file(
        &mut cli,
        tmp.path(),
        "[[rules]]\nmatch = { exact = \"/index.yaml\" }\naction = \"revalidate\"\nfresh_for = \"6s\"\n",
    );
    let p = Proxy::start_in(cli, Some(tmp));

    let js = p.get_with("/index.yaml", &[HELM]);
    assert_eq!(js.header("content-type"), Some("application/json"));
    let yaml = p.get_with("/index.yaml", &[CURL]);
    assert_eq!(yaml.x_cache(), "HIT", "fresh: no revalidation");
    assert_eq!(p.get_with("/-/charts/app/index.yaml", &[HELM]).status, 200);
    assert_eq!(p.metric(PROCESSED), 1);
    // One pass over the charts with the fresh YAML looked up in between (so it is
    // kept), then a revalidation once it is no longer fresh.
    let lap_then_revalidate = |p: &Proxy| -> common::proxy::Response {
        let started = std::time::Instant::now();
        for c in &charts {
            assert_eq!(p.get(c).status, 200, "{c}");
            let r = p.get_with("/index.yaml", &[CURL]);
            assert_eq!((r.status, &r.body), (200, &yaml.body));
        }
        assert!(
            started.elapsed() < FRESH,
            "the pass outlasted fresh_for: {:?}",
            started.elapsed()
        );
        std::thread::sleep(
            FRESH.saturating_sub(started.elapsed()) + std::time::Duration::from_millis(300),
        );
        let r = p.get_with("/index.yaml", &[HELM]);
        assert_eq!((r.status, r.x_cache()), (200, "REVALIDATED"));
        r
    };
    let r = lap_then_revalidate(&p);
    // The first rebuild happened just before this answer.
    let rebuilt_at = std::time::Instant::now();
    assert!(
        p.metric("chartcache_cache_evictions_total") > 0,
        "the cache went round"
    );
    // Rebuilt at once, before that answer.
    assert_eq!(p.metric(PROCESSED), 2, "rebuilt once");
    assert_eq!(
        (r.body.clone(), r.header("etag")),
        (js.body.clone(), js.header("etag"))
    );

    // Evicted again within 10 s: not rebuilt; Helm gets the YAML meanwhile.
    let r = lap_then_revalidate(&p);
    let since = rebuilt_at.elapsed();
    assert!(
        since < std::time::Duration::from_secs(9),
        "too slow to see the wait: {since:?}"
    );
    assert_ne!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        (r.body.clone(), r.header("etag")),
        (yaml.body.clone(), yaml.header("etag"))
    );
    assert_eq!(p.get_with("/-/charts/app/index.yaml", &[HELM]).status, 503);
    assert_eq!(p.metric(PROCESSED), 2, "no rebuild inside the wait");

    // After the wait, the next revalidation rebuilds them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = p.get_with("/index.yaml", &[HELM]);
        if r.header("content-type") == Some("application/json") {
            assert_eq!(
                (r.body.clone(), r.header("etag")),
                (js.body.clone(), js.header("etag"))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rebuild after the wait"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(rebuilt_at.elapsed() >= std::time::Duration::from_millis(9500));
    assert_eq!(p.metric(PROCESSED), 3);
    assert_eq!(p.get_with("/-/charts/app/index.yaml", &[HELM]).status, 200);
}

//! helm-s3 compatibility: `s3://` chart URLs in index.yaml are rewritten to
//! repository-relative ones (and the served ETag follows the served bytes);
//! charts whose bytes do not match the index digest are served once as
//! BYPASS and never cached.

mod common;

use common::proxy::{test_cli, Proxy, AK, SK};
use common::spawn_s3;
use sha2::{Digest, Sha256};

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn index_for(url: &str, digest: &str) -> String {
    format!(
        "apiVersion: v1\nentries:\n  app:\n  - name: app\n    version: 1.0.0\n    digest: {digest}\n    urls:\n    - {url}\ngenerated: \"2024-01-01T00:00:00Z\"\n"
    )
}

fn proxy(s3: &common::S3Server, upstream: &str, rewrite: bool) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(upstream, &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.repo.no_rewrite_s3_urls = !rewrite;
    Proxy::start_in(cli, Some(tmp))
}

#[test]
fn s3_urls_are_rewritten_relative_and_fetchable() {
    let s3 = spawn_s3(AK, SK);
    let chart = b"pretend this is a chart tarball".to_vec();
    let digest = hex(&Sha256::digest(&chart));
    let index = index_for("s3://charts/stable/app-1.0.0.tgz", &digest);
    s3.put_object("charts", "stable/index.yaml", index.as_bytes());
    s3.put_object("charts", "stable/app-1.0.0.tgz", &chart);
    let p = proxy(&s3, "s3://charts/stable", true);

    let r = p.get("/index.yaml");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("    - app-1.0.0.tgz\n"), "{text}");
    assert!(!text.contains("s3://"), "{text}");
    let served_etag = r.header("etag").unwrap().to_string();
    // Revalidation still works with the served ETag (upstream gets its own).
    let r2 = p.get("/index.yaml");
    assert_eq!(r2.x_cache(), "REVALIDATED");
    assert_eq!(r2.header("etag"), Some(served_etag.as_str()));
    assert_eq!(
        p.get_with("/index.yaml", &[("If-None-Match", &served_etag)])
            .status,
        304
    );
    // The chart behind the rewritten URL.
    let c = p.get("/app-1.0.0.tgz");
    assert_eq!(c.status, 200);
    assert_eq!(c.body, chart);
    assert_eq!(c.x_cache(), "MISS", "digest matched: cached");
    assert_eq!(p.get("/app-1.0.0.tgz").x_cache(), "HIT");

    // Republished with different bytes: a different served ETag.
    let index2 = index_for("s3://charts/stable/app-1.0.0.tgz", &digest).replace(
        "1.0.0\n    digest",
        "1.0.0\n    description: new\n    digest",
    );
    s3.put_object("charts", "stable/index.yaml", index2.as_bytes());
    let r3 = p.get("/index.yaml");
    assert_eq!(r3.x_cache(), "MISS");
    assert_ne!(r3.header("etag"), Some(served_etag.as_str()));
}

#[test]
fn rewriting_can_be_turned_off() {
    let s3 = spawn_s3(AK, SK);
    let index = index_for("s3://charts/app-1.0.0.tgz", &"0".repeat(64));
    s3.put_object("charts", "index.yaml", index.as_bytes());
    let p = proxy(&s3, "s3://charts", false);
    assert_eq!(p.get("/index.yaml").text(), index);
}

#[test]
fn chart_not_matching_the_index_digest_is_served_once_and_not_cached() {
    let s3 = spawn_s3(AK, SK);
    let good = b"the chart that was indexed".to_vec();
    let bad = b"a half-finished upload!!!".to_vec();
    let index = index_for("app-1.0.0.tgz", &hex(&Sha256::digest(&good)));
    s3.put_object("charts", "index.yaml", index.as_bytes());
    s3.put_object("charts", "app-1.0.0.tgz", &bad);
    let p = proxy(&s3, "s3://charts", true);
    assert_eq!(p.get("/index.yaml").status, 200);
    for _ in 0..2 {
        let r = p.get("/app-1.0.0.tgz");
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "BYPASS");
        assert_eq!(r.body, bad);
    }
    assert_eq!(s3.get_count("/charts/app-1.0.0.tgz"), 2, "never cached");
    assert!(p
        .metrics()
        .contains("chartcache_chart_digest_mismatches_total 2"));
    // The upload finishes: now it matches, and is cached.
    s3.put_object("charts", "app-1.0.0.tgz", &good);
    let r = p.get("/app-1.0.0.tgz");
    assert_eq!((r.x_cache(), r.body.clone()), ("MISS", good.clone()));
    assert_eq!(p.get("/app-1.0.0.tgz").x_cache(), "HIT");
}

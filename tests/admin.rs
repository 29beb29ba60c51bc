//! The admin listener: health, readiness, metrics, and purge (the yank runbook).

mod common;

use common::proxy::{request, test_cli, Proxy};

#[test]
fn health_ready_and_metrics() {
    let p = Proxy::examples();
    let h = request(p.admin, "GET", "/healthz", &[]);
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    assert_eq!(request(p.admin, "GET", "/readyz", &[]).status, 200);
    p.get("/hello-0.1.0.tgz");
    p.get("/hello-0.1.0.tgz");
    let m = request(p.admin, "GET", "/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    assert!(
        text.contains("chartcache_requests_total{cache=\"miss\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chartcache_requests_total{cache=\"hit\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chartcache_upstream_latency_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("# EOF"), "{text}");
    assert_eq!(request(p.admin, "GET", "/nope", &[]).status, 404);
}

#[test]
fn purge_one_object_and_a_prefix() {
    let p = Proxy::examples();
    assert_eq!(p.get("/hello-0.1.0.tgz").x_cache(), "MISS");
    assert_eq!(p.get("/hello-0.1.0.tgz").x_cache(), "HIT");
    let r = request(p.admin, "DELETE", "/cache/hello-0.1.0.tgz", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(p.admin, "DELETE", "/cache/hello-0.1.0.tgz", &[]);
    assert_eq!(r.status, 404, "already gone");
    assert_eq!(
        p.get("/hello-0.1.0.tgz").x_cache(),
        "MISS",
        "refetched after purge"
    );

    p.get("/hello-0.2.0.tgz");
    p.get("/podinfo-lite-1.0.0.tgz");
    let r = request(p.admin, "DELETE", "/cache?prefix=/hello-", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "{\"purged\":2}");
    assert_eq!(p.get("/hello-0.2.0.tgz").x_cache(), "MISS");
    assert_eq!(p.get("/podinfo-lite-1.0.0.tgz").x_cache(), "HIT");
}

#[test]
fn purge_requires_the_token_when_one_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(
        &format!("file://{}", common::proxy::examples_repo().display()),
        &tmp.path().join("cache"),
    );
    cli.admin.admin_token = Some("s3cret-token".into());
    let p = Proxy::start(cli);
    p.get("/hello-0.1.0.tgz");
    assert_eq!(
        request(p.admin, "DELETE", "/cache/hello-0.1.0.tgz", &[]).status,
        401
    );
    assert_eq!(
        request(
            p.admin,
            "DELETE",
            "/cache/hello-0.1.0.tgz",
            &[("Authorization", "Bearer wrong")]
        )
        .status,
        401
    );
    assert_eq!(
        request(
            p.admin,
            "DELETE",
            "/cache/hello-0.1.0.tgz",
            &[("Authorization", "Bearer s3cret-token")]
        )
        .status,
        200
    );
    // Probes stay open.
    assert_eq!(request(p.admin, "GET", "/healthz", &[]).status, 200);
}

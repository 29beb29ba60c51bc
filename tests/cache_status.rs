//! What every response says about how it was served: `X-Cache`, `Cache-Status`
//! (RFC 9211) and `Age` (RFC 9111 §5.1), on cached answers and on every local
//! one (400, 404 outside a repository, 405, a malformed request, 502).

mod common;

use common::proxy::{get, raw_exchange, request, test_cli, Proxy, Response};
use common::refused_endpoint;

fn cs(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

#[test]
fn cached_answers_say_how_they_were_served() {
    let p = Proxy::examples();
    // MISS, stored.
    let r = p.get("/hello-0.1.0.tgz");
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    assert_eq!(cs(&r), "chartcache; fwd=miss; fwd-status=200; stored");
    assert_eq!(r.header("age"), Some("0"));
    // HIT: ttl is the rule's freshness left (a day for charts).
    let r = p.get("/hello-0.1.0.tgz");
    assert_eq!((r.status, r.x_cache()), (200, "HIT"));
    let ttl: u64 = cs(&r)
        .strip_prefix("chartcache; hit; ttl=")
        .unwrap_or_else(|| panic!("{}", cs(&r)))
        .parse()
        .unwrap();
    assert!((86_398..=86_400).contains(&ttl), "{ttl}");
    let age: u64 = r.header("age").expect("Age on a hit").parse().unwrap();
    assert!(age <= 2);
    // A 304 from the cache carries Age too.
    let etag = r.header("etag").unwrap().to_owned();
    let r = p.get_with("/hello-0.1.0.tgz", &[("If-None-Match", &etag)]);
    assert_eq!((r.status, r.x_cache()), (304, "HIT"));
    assert!(r.header("age").is_some());
    assert!(cs(&r).starts_with("chartcache; hit; ttl="));

    // The index is revalidated on every request.
    let r = p.get("/index.yaml");
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    let r = p.get("/index.yaml");
    assert_eq!((r.status, r.x_cache()), (200, "REVALIDATED"));
    assert_eq!(
        cs(&r),
        "chartcache; fwd=stale; fwd-status=304; ttl=0; stored"
    );
    assert!(r.header("age").is_some());

    // BYPASS: no Age (nothing stored).
    let r = p.get("/hello-0.3.0-dev-1.tgz");
    assert_eq!((r.status, r.x_cache()), (200, "BYPASS"));
    assert_eq!(cs(&r), "chartcache; fwd=bypass; fwd-status=200");
    assert_eq!(r.header("age"), None);
}

#[test]
fn local_answers_carry_x_cache_and_cache_status() {
    let p = Proxy::examples();
    let local = |r: &Response, status: u16| {
        assert_eq!(r.status, status);
        assert_eq!(r.x_cache(), "NONE", "{status}");
        assert_eq!(cs(r), "chartcache; detail=local", "{status}");
        assert_eq!(r.header("age"), None);
    };
    local(&request(p.addr, "DELETE", "/hello-0.1.0.tgz", &[]), 405);
    local(&p.get("/"), 404);
    local(&p.get("/a/../b.tgz"), 400);
    // Rejected before it is a request (no Host, HTTP/1.1): answered by the
    // connection, still with the headers.
    let raw = raw_exchange(p.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("\r\nX-Cache: NONE\r\n"), "{text}");
    assert!(
        text.contains("\r\nCache-Status: chartcache; detail=local\r\n"),
        "{text}"
    );
}

#[test]
fn an_upstream_failure_says_it_was_retried() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(test_cli(&refused_endpoint(), &dir.path().join("c")));
    let r = get(p.addr, "/x-1.0.0.tgz", &[]);
    assert_eq!((r.status, r.x_cache()), (502, "MISS"));
    assert_eq!(cs(&r), "chartcache; fwd=miss; detail=retried");
}

/// A proxy whose upstream is the scripted HTTP server at `endpoint`.
fn behind(endpoint: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(test_cli(endpoint, &dir.path().join("c")));
    (dir, p)
}

#[test]
fn an_upstream_caches_age_and_staleness_are_honoured() {
    // An upstream cache stored this 100 s ago and serves it stale.
    let upstream = common::spawn_raw_http(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"s\"\r\nAge: 100\r\nCache-Status: chartcache; fwd=stale; ttl=-40; detail=stale\r\n\r\nhello".to_vec()]);
    let (_dir, p) = behind(&upstream.endpoint);
    let r = p.get("/a-1.0.0.tgz");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(r.x_cache(), "STALE", "staleness travels");
    assert!(cs(&r).contains("detail=stale"), "{}", cs(&r));
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!(
        (100..=102).contains(&age),
        "the upstream's Age counts: {age}"
    );
    // Stored with that age: a hit now has a day less those 100 s left.
    let r = p.get("/a-1.0.0.tgz");
    assert_eq!(r.x_cache(), "HIT");
    let ttl: u64 = cs(&r)
        .strip_prefix("chartcache; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((86_298..=86_300).contains(&ttl), "{ttl}");
}

#[test]
fn an_upstream_that_already_retried_is_not_retried() {
    let answer = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nCache-Status: chartcache; fwd=miss; detail=retried\r\n\r\n";
    let upstream = common::spawn_raw_http(vec![answer.to_vec()]);
    let (_dir, p) = behind(&upstream.endpoint);
    let r = p.get("/b-1.0.0.tgz");
    assert_eq!((r.status, r.x_cache()), (502, "MISS"));
    assert_eq!(upstream.requests().len(), 1, "asked once, not retried");

    // The same 502 without the mark is retried (2 retries by default).
    let plain = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
    let upstream = common::spawn_raw_http(vec![plain.to_vec()]);
    let (_dir, p) = behind(&upstream.endpoint);
    let r = p.get("/b-1.0.0.tgz");
    assert_eq!(r.status, 502);
    assert_eq!(
        upstream.requests().len(),
        3,
        "first attempt and two retries"
    );
}

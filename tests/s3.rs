//! chartcache in front of a real, SigV4-verifying S3 (s3s-fs in process):
//! signed fetches, prefixes, one upstream GET per storm, error mapping,
//! truncated upstream bodies never cached, stale-if-error.

mod common;

use std::sync::{Arc, Barrier};

use common::proxy::{get, test_cli, Proxy, AK, SK};
use common::{spawn_raw_http, spawn_s3};

const BUCKET: &str = "charts";

fn chart_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn s3_proxy(s3: &common::S3Server, upstream: &str) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(upstream, &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    Proxy::start_in(cli, Some(tmp))
}

#[test]
fn signed_fetches_through_a_prefix() {
    let s3 = spawn_s3(AK, SK);
    let body = chart_bytes(1, 300_000);
    s3.put_object(BUCKET, "stable/app-1.0.0.tgz", &body);
    s3.put_object(
        BUCKET,
        "stable/index.yaml",
        b"apiVersion: v1\nentries: {}\n",
    );
    s3.put_object(BUCKET, "other/secret.tgz", b"not yours");
    let p = s3_proxy(&s3, "s3://charts/stable");

    let r = p.get("/app-1.0.0.tgz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, body);
    let r = p.get("/app-1.0.0.tgz");
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.body, body);
    assert_eq!(s3.get_count("/charts/stable/app-1.0.0.tgz"), 1);

    let r = p.get("/index.yaml");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"apiVersion: v1\nentries: {}\n");

    // Nothing outside the prefix can be named.
    assert_eq!(p.get("/../other/secret.tgz").status, 400);
    assert_eq!(p.get("/%2e%2e/other/secret.tgz").status, 400);
    assert_eq!(p.get("/missing-1.0.0.tgz").status, 404);
}

#[test]
fn wrong_secret_is_a_502_not_a_pass_through() {
    let s3 = spawn_s3(AK, "a-different-secret-key-entirely");
    s3.put_object(BUCKET, "app-1.0.0.tgz", b"bytes");
    let p = s3_proxy(&s3, "s3://charts");
    let r = p.get("/app-1.0.0.tgz");
    assert_eq!(r.status, 502);
    assert!(
        !r.text().contains("SignatureDoesNotMatch</Code>"),
        "S3's XML is not passed through"
    );
    let m = p.metrics();
    assert!(
        m.contains("chartcache_upstream_requests_total{outcome=\"other\"} 1"),
        "{m}"
    );
}

#[test]
fn a_storm_of_cold_requests_costs_one_upstream_get() {
    let s3 = spawn_s3(AK, SK);
    let body = chart_bytes(7, 2_000_000);
    s3.put_object(BUCKET, "big-2.0.0.tgz", &body);
    let p = s3_proxy(&s3, "s3://charts");
    let clients = 200;
    let barrier = Arc::new(Barrier::new(clients));
    let addr = p.addr;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                get(addr, "/big-2.0.0.tgz", &[])
            })
        })
        .collect();
    let mut hits = 0;
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), body.len());
        assert!(r.body == body, "every client gets the exact bytes");
        if r.x_cache() == "HIT" {
            hits += 1;
        }
    }
    assert_eq!(
        s3.get_count("/charts/big-2.0.0.tgz"),
        1,
        "one upstream GET for {clients} clients ({hits} were hits)"
    );
    let m = p.metrics();
    assert!(
        m.contains("chartcache_upstream_requests_total{outcome=\"200\"} 1"),
        "{m}"
    );
}

#[test]
fn truncated_upstream_body_is_never_cached_or_served_as_complete() {
    // Upstream promises 1000 bytes, sends 400, and closes — twice; then a
    // complete answer.
    let mut short = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"t\"\r\n\r\n".to_vec();
    short.extend(std::iter::repeat_n(b'x', 400));
    let mut full = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"t\"\r\n\r\n".to_vec();
    full.extend(std::iter::repeat_n(b'y', 1000));
    let upstream = spawn_raw_http(vec![short.clone(), short, full]);
    let tmp = tempfile::tempdir().unwrap();
    let p = Proxy::start_in(
        test_cli(
            &format!("{}/repo", upstream.endpoint),
            &tmp.path().join("cache"),
        ),
        Some(tmp),
    );
    for _ in 0..2 {
        let r = p.get("/t-1.0.0.tgz");
        // Either the head went out and the body is short (the client sees a
        // broken response), or the failure was known first (502).
        assert!(
            (r.status == 200 && r.body.len() < 1000) || r.status == 502,
            "status {} with {} bytes",
            r.status,
            r.body.len()
        );
    }
    let r = p.get("/t-1.0.0.tgz");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.x_cache(),
        "MISS",
        "the truncated fills must not have been cached"
    );
    assert_eq!(r.body, vec![b'y'; 1000]);
    assert_eq!(p.get("/t-1.0.0.tgz").x_cache(), "HIT");
    assert_eq!(upstream.requests().len(), 3);
}

#[test]
fn outage_serves_stale_copies_and_fails_fast_for_uncached() {
    let mut s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"apiVersion: v1\n");
    s3.put_object(BUCKET, "app-1.0.0.tgz", b"chart bytes");
    let p = s3_proxy(&s3, "s3://charts");
    assert_eq!(p.get("/index.yaml").status, 200);
    assert_eq!(p.get("/app-1.0.0.tgz").status, 200);
    s3.stop();
    let started = std::time::Instant::now();
    let r = p.get("/index.yaml");
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.body, b"apiVersion: v1\n");
    // Still fresh: served as a plain hit.
    assert_eq!(p.get("/app-1.0.0.tgz").x_cache(), "HIT");
    let r = p.get("/never-cached-1.0.0.tgz");
    assert!(r.status == 502 || r.status == 504, "{}", r.status);
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

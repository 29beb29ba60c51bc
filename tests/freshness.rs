//! Freshness and resilience against the SigV4-verifying S3: index.yaml
//! revalidation (one shared conditional GET), republish visibility, negative
//! caching of 404s, and a cache directory that vanishes at runtime.

mod common;

use std::sync::{Arc, Barrier};

use common::proxy::{test_cli, Proxy, AK, SK};
use common::spawn_s3;

const BUCKET: &str = "charts";

fn s3_proxy(s3: &common::S3Server) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    Proxy::start_in(cli, Some(tmp))
}

#[test]
fn republished_index_is_visible_on_the_next_request() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"apiVersion: v1\nentries: {a: []}\n");
    let p = s3_proxy(&s3);
    let a = p.get("/index.yaml");
    assert_eq!(a.body, b"apiVersion: v1\nentries: {a: []}\n");
    let b = p.get("/index.yaml");
    assert_eq!(b.x_cache(), "REVALIDATED");
    assert_eq!(b.body, a.body);
    // `helm s3 reindex` / a yank rewrites the index.
    s3.put_object(BUCKET, "index.yaml", b"apiVersion: v1\nentries: {b: []}\n");
    let c = p.get("/index.yaml");
    assert_eq!(c.x_cache(), "MISS");
    assert_eq!(c.body, b"apiVersion: v1\nentries: {b: []}\n");
    assert_ne!(c.header("etag"), a.header("etag"), "new bytes, new ETag");
    // Every one of those requests asked upstream.
    assert_eq!(s3.get_count("/charts/index.yaml"), 3);
}

/// An upstream that serves `index.yaml` with an ETag and answers conditional
/// requests with a 304 after `delay` — long enough that every concurrent
/// client request arrives while the revalidation is in flight.
fn slow_revalidating_upstream(
    body: Vec<u8>,
    delay: std::time::Duration,
) -> (
    String,
    Arc<std::sync::atomic::AtomicU64>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let plain = Arc::new(AtomicU64::new(0));
    let conditional = Arc::new(AtomicU64::new(0));
    let (p2, c2) = (plain.clone(), conditional.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let (body, p2, c2) = (body.clone(), p2.clone(), c2.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.contains("if-none-match: \"v1\"") {
                    c2.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    let _ = s.write_all(
                        b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                    );
                } else {
                    p2.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(
                        format!("HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes(),
                    );
                    let _ = s.write_all(&body);
                }
            });
        }
    });
    (url, plain, conditional)
}

#[test]
fn concurrent_index_requests_share_one_conditional_get() {
    use std::sync::atomic::Ordering;
    let index = b"apiVersion: v1\nentries: {}\n".repeat(2000);
    let (url, plain, conditional) =
        slow_revalidating_upstream(index.clone(), std::time::Duration::from_millis(1500));
    let tmp = tempfile::tempdir().unwrap();
    let p = Proxy::start_in(test_cli(&url, &tmp.path().join("cache")), Some(tmp));
    assert_eq!(p.get("/index.yaml").status, 200);
    assert_eq!(plain.load(Ordering::SeqCst), 1);
    let n = 100;
    // Connect everyone first, then send all requests at once.
    let barrier = Arc::new(Barrier::new(n));
    let addr = p.addr;
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                    .unwrap();
                b.wait();
                s.write_all(b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).unwrap();
                common::proxy::parse_response(&out, false).unwrap()
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "REVALIDATED");
        assert!(r.body == index);
    }
    assert_eq!(
        conditional.load(Ordering::SeqCst),
        1,
        "one conditional GET for {n} requests"
    );
    assert_eq!(plain.load(Ordering::SeqCst), 1, "no unconditional refetch");
}

#[test]
fn client_if_none_match_on_the_index_gets_304_when_current() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"apiVersion: v1\n");
    let p = s3_proxy(&s3);
    let a = p.get("/index.yaml");
    let etag = a.header("etag").unwrap().to_string();
    let r = p.get_with("/index.yaml", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
}

#[test]
fn upstream_404s_are_remembered_briefly() {
    let s3 = spawn_s3(AK, SK);
    s3.create_bucket(BUCKET);
    let p = s3_proxy(&s3);
    for _ in 0..5 {
        assert_eq!(p.get("/ghost-1.0.0.tgz").status, 404);
    }
    assert_eq!(
        s3.get_count("/charts/ghost-1.0.0.tgz"),
        1,
        "404 cached for a few seconds"
    );
    // Never for the index.
    for _ in 0..3 {
        assert_eq!(p.get("/index.yaml").status, 404);
    }
    assert_eq!(s3.get_count("/charts/index.yaml"), 3);
    // Publishing + purge makes it visible at once.
    s3.put_object(BUCKET, "ghost-1.0.0.tgz", b"boo");
    let r = common::proxy::request(p.admin, "DELETE", "/cache/ghost-1.0.0.tgz", &[]);
    assert_eq!(r.status, 404, "it was not cached as an object");
    assert_eq!(p.get("/ghost-1.0.0.tgz").status, 200);
}

#[test]
fn a_deleted_cache_dir_does_not_crash_the_server() {
    let s3 = spawn_s3(AK, SK);
    for i in 0..5 {
        s3.put_object(BUCKET, &format!("c-{i}.tgz"), &vec![i as u8; 50_000]);
    }
    let p = s3_proxy(&s3);
    assert_eq!(p.get("/c-0.tgz").status, 200);
    std::fs::remove_dir_all(&p.cache_dir).unwrap();
    // Cached objects keep being served from the still-mapped segments, new
    // ones pass through or land in the open segment; nothing crashes.
    let r = p.get("/c-0.tgz");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, vec![0u8; 50_000]);
    for i in 1..5 {
        let r = p.get(&format!("/c-{i}.tgz"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, vec![i as u8; 50_000]);
    }
    assert_eq!(
        common::proxy::request(p.admin, "GET", "/healthz", &[]).status,
        200
    );
}

#[test]
fn disk_use_stays_under_the_cache_size() {
    let s3 = spawn_s3(AK, SK);
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.cache.cache_size = Some("8MiB".into());
    let limit = 8u64 << 20;
    let p = Proxy::start_in(cli, Some(tmp));
    for i in 0..60 {
        s3.put_object(
            BUCKET,
            &format!("e-{i}.tgz"),
            &vec![(i % 251) as u8; 400_000],
        );
    }
    for i in 0..60 {
        let r = p.get(&format!("/e-{i}.tgz"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 400_000);
    }
    let used = du(&p.cache_dir);
    assert!(
        used <= limit + (64 << 10),
        "{used} bytes on disk for a {limit} byte cache"
    );
    // Recent objects are still cached.
    assert_eq!(p.get("/e-59.tgz").x_cache(), "HIT");
}

fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            du(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[test]
fn yank_runbook_purge_then_404() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "app-1.2.3.tgz", b"a version about to be yanked");
    let p = s3_proxy(&s3);
    assert_eq!(p.get("/app-1.2.3.tgz").x_cache(), "MISS");
    assert_eq!(p.get("/app-1.2.3.tgz").x_cache(), "HIT");
    // `helm s3 delete` removes the object; the cached copy would live a day.
    std::fs::remove_file(s3.root.join(BUCKET).join("app-1.2.3.tgz")).unwrap();
    assert_eq!(
        p.get("/app-1.2.3.tgz").status,
        200,
        "still cached before the purge"
    );
    let r = common::proxy::request(p.admin, "DELETE", "/cache/app-1.2.3.tgz", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(p.get("/app-1.2.3.tgz").status, 404);
}

#[test]
fn a_retried_upstream_fetch_fills_once() {
    let mut ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"r\"\r\n\r\n".to_vec();
    ok.extend_from_slice(b"hello");
    let upstream = common::spawn_raw_http(vec![
        b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ok,
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let p = Proxy::start_in(
        test_cli(&upstream.endpoint, &tmp.path().join("cache")),
        Some(tmp),
    );
    let r = p.get("/r-1.0.0.tgz");
    assert_eq!(
        (r.status, r.x_cache(), r.body.as_slice()),
        (200, "MISS", &b"hello"[..])
    );
    assert_eq!(p.get("/r-1.0.0.tgz").x_cache(), "HIT");
    assert_eq!(upstream.requests().len(), 2, "one retry inside one fill");
    let m = p.metrics();
    assert!(
        m.contains("chartcache_upstream_requests_total{outcome=\"200\"} 1"),
        "{m}"
    );
}

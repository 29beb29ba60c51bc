//! Serving the bundled example repo through a file:// origin: the route
//! policy, cache results, HEAD, 404, header overrides, Range and conditional
//! requests answered from the cache.

mod common;

use common::proxy::{get, request, Proxy};

fn file(name: &str) -> Vec<u8> {
    std::fs::read(common::proxy::examples_repo().join(name)).unwrap()
}

/// Cargo.toml builds the server test files twice, `NAME` and `NAME_epoll`: this
/// proves which driver each build's servers run on.
#[test]
fn runs_on_the_driver_its_test_binary_names() {
    use chartcache::config::Driver;
    let p = Proxy::examples();
    let driver = p.server.as_ref().unwrap().driver;
    match common::proxy::test_driver() {
        Some(named) => assert_eq!(driver.name(), named),
        // The default, auto: io_uring where this kernel and its seccomp filter allow it.
        None => assert_eq!(driver, chartcache::driver::choose(Driver::Auto).driver),
    }
    assert_eq!(p.get("/hello-0.2.0.tgz").status, 200);
}

/// Every integration test file has its epoll twin (`tests/epoll/NAME.rs`, built as
/// `NAME_epoll`) except those that run no chartcache code on a monoio runtime.
#[test]
fn every_test_file_runs_on_both_drivers() {
    const DRIVER_FREE: [&str; 5] = [
        "credentials",         // the AWS credential chain, no runtime
        "credentials_missing", // likewise
        "credentials_profile", // likewise
        "deploy",              // --help, the Dockerfile and manifests
        "deploy_chart",        // the Helm chart, rendered
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".rs").map(String::from)
            })
            .collect();
        v.sort();
        v
    };
    // Sorted already (names); filtering keeps the order.
    let expected: Vec<String> = names("tests")
        .into_iter()
        .filter(|n| !DRIVER_FREE.contains(&n.as_str()))
        .collect();
    assert_eq!(names("tests/epoll"), expected, "tests/epoll/ twins");
    for n in &expected {
        let target = format!("name = \"{n}_epoll\"\npath = \"tests/epoll/{n}.rs\"");
        assert!(
            cargo.contains(&target),
            "Cargo.toml has no [[test]] {n}_epoll"
        );
    }
}

#[test]
fn chart_is_filled_once_then_hit_by_every_worker() {
    let p = Proxy::examples();
    let first = p.get("/hello-0.2.0.tgz");
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.body, file("hello-0.2.0.tgz"));
    assert_eq!(first.header("content-type"), Some("application/gzip"));
    assert_eq!(first.header("cache-control"), Some("max-age=86400"));
    assert!(first.header("etag").is_some());
    assert!(first.header("last-modified").is_some());
    // Many fresh connections spread over both workers by SO_REUSEPORT.
    for _ in 0..20 {
        let r = p.get("/hello-0.2.0.tgz");
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "HIT");
        assert_eq!(r.body, first.body);
        assert_eq!(r.header("etag"), first.header("etag"));
    }
    let m = p.metrics();
    assert!(
        m.contains("chartcache_requests_total{cache=\"hit\",status=\"200\"} 20"),
        "{m}"
    );
}

#[test]
fn index_is_revalidated_every_time() {
    let p = Proxy::examples();
    let a = p.get("/index.yaml");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, file("index.yaml"));
    assert_eq!(a.header("content-type"), Some("text/yaml"));
    // Not max-age=86400: the index rule sets no Cache-Control override.
    assert_eq!(a.header("cache-control"), None);
    let b = p.get("/index.yaml");
    assert_eq!(b.status, 200);
    assert_eq!(b.body, a.body);
    assert!(
        b.x_cache() == "REVALIDATED" || b.x_cache() == "MISS",
        "index must be confirmed with upstream, got {}",
        b.x_cache()
    );
}

#[test]
fn dev_builds_bypass_the_cache() {
    let p = Proxy::examples();
    for _ in 0..2 {
        let r = p.get("/hello-0.3.0-dev-1.tgz");
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "BYPASS");
        assert_eq!(r.body, file("hello-0.3.0-dev-1.tgz"));
    }
}

#[test]
fn head_gets_headers_without_body() {
    let p = Proxy::examples();
    let len = file("podinfo-lite-1.0.0.tgz").len().to_string();
    for expect in ["MISS", "HIT"] {
        let r = request(p.addr, "HEAD", "/podinfo-lite-1.0.0.tgz", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), expect);
        assert_eq!(r.header("content-length"), Some(len.as_str()));
        assert!(r.body.is_empty());
    }
}

#[test]
fn missing_object_is_404_and_not_cached() {
    let p = Proxy::examples();
    // Asked upstream once; then the 404 is remembered (`--negative-ttl`), never
    // stored as an object: a hit of the negative cache.
    let r = p.get("/nope-1.0.0.tgz");
    assert_eq!((r.status, r.x_cache()), (404, "MISS"));
    assert_eq!(
        r.header("cache-status"),
        Some("chartcache; fwd=miss; fwd-status=404")
    );
    let r = p.get("/nope-1.0.0.tgz");
    assert_eq!((r.status, r.x_cache()), (404, "HIT"));
    assert_eq!(r.header("cache-status"), Some("chartcache; hit"));
    assert_eq!(r.header("age"), None, "no stored copy, no Age");
}

#[test]
fn range_and_conditional_requests_are_answered_from_cache() {
    let p = Proxy::examples();
    let body = file("hello-0.1.0.tgz");
    let first = p.get("/hello-0.1.0.tgz");
    let etag = first.header("etag").unwrap().to_string();

    let r = p.get_with("/hello-0.1.0.tgz", &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &body[10..20]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 10-19/{}", body.len())
    );
    assert_eq!(r.x_cache(), "HIT");

    let r = p.get_with("/hello-0.1.0.tgz", &[("Range", "bytes=-5")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &body[body.len() - 5..]);

    let r = p.get_with(
        "/hello-0.1.0.tgz",
        &[("Range", &format!("bytes={}-", body.len() + 10))],
    );
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes */{}", body.len())
    );

    let r = p.get_with("/hello-0.1.0.tgz", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    let lm = first.header("last-modified").unwrap().to_string();
    let r = p.get_with("/hello-0.1.0.tgz", &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);

    let r = p.get_with(
        "/hello-0.1.0.tgz",
        &[("If-None-Match", "\"something-else\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
}

#[test]
fn keep_alive_connection_serves_many_requests_in_order() {
    use std::io::{Read, Write};
    let p = Proxy::examples();
    let mut s = std::net::TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // Three pipelined requests in one write; the last closes.
    let req = "GET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\n\r\n\
               GET /nope.tgz HTTP/1.1\r\nHost: x\r\n\r\n\
               GET /hello-0.2.0.tgz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let (a, n1) = common::proxy::parse_response_at(&raw, false).unwrap();
    let (b, n2) = common::proxy::parse_response_at(&raw[n1..], false).unwrap();
    let (c, _) = common::proxy::parse_response_at(&raw[n1 + n2..], false).unwrap();
    assert_eq!((a.status, b.status, c.status), (200, 404, 200));
    assert_eq!(a.body, file("hello-0.1.0.tgz"));
    assert_eq!(c.body, file("hello-0.2.0.tgz"));
}

#[test]
fn other_methods_get_405_with_allow() {
    let p = Proxy::examples();
    for m in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = request(p.addr, m, "/index.yaml", &[("Content-Length", "0")]);
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    // Still serving.
    assert_eq!(get(p.addr, "/index.yaml", &[]).status, 200);
}

#[test]
fn query_string_is_dropped_from_the_key() {
    let p = Proxy::examples();
    let a = p.get("/hello-0.2.0.tgz?x=1");
    assert_eq!(a.status, 200);
    let b = p.get("/hello-0.2.0.tgz?y=2");
    assert_eq!(b.x_cache(), "HIT");
}

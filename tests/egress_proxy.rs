//! Upstream connections through an egress proxy (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `NO_PROXY`), with the real binary against a SigV4-checking S3 (s3s-fs) and
//! the forward proxy of `common::egress`. The TLS upstream through a `CONNECT`
//! tunnel is in `tests/origin_tls.rs` (it needs the test CA).

mod common;

use common::egress::spawn_egress_proxy;
use common::proxy::{get, run_binary, s3_args, strs, Binary, AK, S3_ENV, SK};
use common::spawn_s3;

const CHART: &[u8] = b"a chart through the proxy";

fn s3_with_chart() -> common::S3Server {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "demo-1.0.0.tgz", CHART);
    s3
}

fn start(s3: &common::S3Server, cache: &std::path::Path, envs: &[(&str, &str)]) -> Binary {
    let mut all = S3_ENV.to_vec();
    all.extend_from_slice(envs);
    Binary::start(
        &strs(&s3_args(
            s3,
            cache,
            &["--cache-size", "64MiB", "--workers", "1", "--no-access-log"],
        )),
        &all,
    )
}

#[test]
fn plain_http_upstream_goes_through_http_proxy_in_absolute_form_with_credentials() {
    let s3 = s3_with_chart();
    let proxy = spawn_egress_proxy(Some("Basic dXNlcjpwYXNz"));
    let url = format!("http://user:pass@{}", proxy.addr);
    let tmp = tempfile::tempdir().unwrap();
    let bin = start(&s3, tmp.path(), &[("HTTP_PROXY", &url)]);

    let r = get(bin.addr, "/demo-1.0.0.tgz", &[]);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, CHART);
    let seen = proxy.seen();
    let target = format!("GET http://{}/charts/demo-1.0.0.tgz HTTP/1.1", s3.addr);
    assert!(
        seen.iter()
            .any(|s| s.line == target && s.authorization.as_deref() == Some("Basic dXNlcjpwYXNz")),
        "{seen:?}"
    );
    // SigV4 still verified by S3 behind the proxy: exactly one GET reached it.
    assert_eq!(s3.get_count("/charts/demo-1.0.0.tgz"), 1);
    // A hit does not go upstream again.
    let before = proxy.seen().len();
    assert_eq!(get(bin.addr, "/demo-1.0.0.tgz", &[]).x_cache(), "HIT");
    assert_eq!(proxy.seen().len(), before);
}

#[test]
fn no_proxy_sends_the_upstream_direct_and_loopback_is_not_an_implicit_exception() {
    let s3 = s3_with_chart();
    let proxy = spawn_egress_proxy(None);
    let tmp = tempfile::tempdir().unwrap();
    let bin = start(
        &s3,
        tmp.path(),
        &[
            ("HTTP_PROXY", &proxy.url),
            ("NO_PROXY", "example.org, 127.0.0.0/8"),
        ],
    );
    assert_eq!(get(bin.addr, "/demo-1.0.0.tgz", &[]).body, CHART);
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    drop(bin);

    // Without NO_PROXY, 127.0.0.1 goes through the proxy like any host.
    let tmp = tempfile::tempdir().unwrap();
    let bin = start(&s3, tmp.path(), &[("http_proxy", &proxy.url)]);
    assert_eq!(get(bin.addr, "/demo-1.0.0.tgz", &[]).body, CHART);
    assert_eq!(proxy.seen().len(), 1, "{:?}", proxy.seen());
}

#[test]
fn a_proxy_that_refuses_is_a_502_and_nothing_reaches_s3() {
    let s3 = s3_with_chart();
    let proxy = spawn_egress_proxy(Some("Basic c2VjcmV0"));
    let tmp = tempfile::tempdir().unwrap();
    let bin = start(&s3, tmp.path(), &[("HTTP_PROXY", &proxy.url)]);
    let r = get(bin.addr, "/demo-1.0.0.tgz", &[]);
    assert_eq!(r.status, 502);
    assert!(!proxy.seen().is_empty());
    assert_eq!(s3.total_requests(), 0);
}

#[test]
fn an_unsupported_proxy_scheme_is_a_startup_error_that_names_it_without_credentials() {
    let s3 = s3_with_chart();
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run_binary(
        &strs(&s3_args(&s3, tmp.path(), &[])),
        &[
            S3_ENV[0],
            S3_ENV[1],
            ("HTTP_PROXY", "socks5://u:hunter2@127.0.0.1:1080"),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("not supported") && out.contains("socks5://127.0.0.1:1080"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

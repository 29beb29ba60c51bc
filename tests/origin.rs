//! Origins against real servers: s3s-fs (real SigV4 verification), scripted raw
//! HTTP servers for faults, and a temp directory for the file origin. (TLS, which
//! needs the openssl CLI for its test PKI: `tests/origin_tls.rs`.)

mod common;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use chartcache::origin::credentials::CredentialsCell;
use chartcache::origin::file::FileOrigin;
use chartcache::origin::https::HttpsOrigin;
use chartcache::origin::s3::S3Origin;
use chartcache::origin::{
    self, Error, Method, Origin, OriginConfig, OriginRequest, TlsRoots, Upstream,
};
use common::{read_all, refused_endpoint, run, spawn_raw_http, spawn_s3, spawn_silent_http};

const AK: &str = "AKIAIOSFODNN7EXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const BUCKET: &str = "charts";

fn s3_config(endpoint: &str, prefix: &str) -> OriginConfig {
    OriginConfig {
        upstream: Upstream::S3 {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
        },
        s3_endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        dns_refresh: Duration::from_secs(60),
        tls_roots: TlsRoots::Webpki,
        max_idle_connections: 4,
        retries: 2,
        retry_deadline: Duration::from_secs(8),
        max_upstream_concurrency: 64,
    }
}

fn http_config(endpoint: &str, request_timeout: Duration) -> OriginConfig {
    let url = url::Url::parse(endpoint).unwrap();
    OriginConfig {
        upstream: Upstream::Https {
            tls: false,
            host: url.host_str().unwrap().to_owned(),
            port: url.port().unwrap(),
            base_path: String::new(),
        },
        s3_endpoint: None,
        region: "us-east-1".into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout,
        dns_refresh: Duration::from_secs(60),
        tls_roots: TlsRoots::Webpki,
        max_idle_connections: 4,
        // The fault tests below observe single attempts; retries are tested
        // separately (see `retrying_config`).
        retries: 0,
        retry_deadline: Duration::from_secs(8),
        max_upstream_concurrency: 64,
    }
}

fn creds(ak: &str, sk: &str) -> Arc<CredentialsCell> {
    Arc::new(CredentialsCell::new(Credentials::new(
        ak, sk, None, None, "test",
    )))
}

/// Deterministic, non-repeating-looking content of `len` bytes.
fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------- S3 (s3s-fs)

#[test]
fn s3_signed_get_returns_exact_bytes() {
    let s3 = spawn_s3(AK, SK);
    let data = content(300 * 1024);
    s3.put_object(BUCKET, "index.yaml", &data);
    let o = origin::build(&s3_config(&s3.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut resp = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        assert_eq!(resp.meta.status, 200);
        assert_eq!(resp.meta.content_length, Some(data.len() as u64));
        assert!(resp.meta.etag.is_some());
        assert!(resp.meta.last_modified.is_some());
        let body = read_all(resp.body.as_mut()).await.unwrap();
        assert_eq!(body, data);
    });
    assert_eq!(s3.get_count("/charts/index.yaml"), 1);
    assert_eq!(s3.total_requests(), 1);
}

#[test]
fn s3_get_on_legacy_driver() {
    // runtime.rs falls back to the epoll driver where io_uring is blocked.
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", &content(100_000));
    let o = origin::build(&s3_config(&s3.endpoint, ""), Some(creds(AK, SK))).unwrap();
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), content(100_000));
    });
}

#[test]
fn s3_endpoint_by_hostname_is_resolved() {
    // `localhost` goes through the off-thread resolver (and may list ::1 first,
    // where nothing listens: the next address is tried).
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"via dns");
    let endpoint = format!("http://localhost:{}", s3.addr.port());
    let o = origin::build(&s3_config(&endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        for _ in 0..2 {
            let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
            assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"via dns");
        }
    });
    assert_eq!(s3.get_count("/charts/index.yaml"), 2);
}

#[test]
fn s3_conditional_get_with_etag_is_304() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"apiVersion: v1\n");
    let o = origin::build(&s3_config(&s3.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut first = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        read_all(first.body.as_mut()).await.unwrap();
        let etag = first.meta.etag.clone().unwrap();

        let mut req = OriginRequest::get("/index.yaml");
        req.if_none_match = Some(etag.clone());
        let mut resp = o.fetch(req).await.unwrap();
        assert_eq!(resp.meta.status, 304);
        assert_eq!(resp.meta.etag.as_deref(), Some(etag.as_str()));
        assert!(read_all(resp.body.as_mut()).await.unwrap().is_empty());

        // A different ETag gets the full object again.
        let mut req = OriginRequest::get("/index.yaml");
        req.if_none_match = Some("\"0000\"".into());
        let mut resp = o.fetch(req).await.unwrap();
        assert_eq!(resp.meta.status, 200);
        assert_eq!(
            read_all(resp.body.as_mut()).await.unwrap(),
            b"apiVersion: v1\n"
        );
    });
    assert_eq!(s3.get_count("/charts/index.yaml"), 3);
}

#[test]
fn s3_wrong_secret_is_signature_does_not_match() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"x");
    let o = origin::build(
        &s3_config(&s3.endpoint, ""),
        Some(creds(AK, "not-the-secret")),
    )
    .unwrap();
    run(async move {
        let err = o
            .fetch(OriginRequest::get("/index.yaml"))
            .await
            .unwrap_err();
        match err {
            Error::Status { status, code } => {
                assert_eq!(status, 403);
                assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"));
            }
            other => panic!("expected 403, got {other:?}"),
        }
        assert_eq!(err_status(&o, "/index.yaml").await, 502);
    });
}

async fn err_status(o: &Rc<dyn Origin>, key: &str) -> u16 {
    o.fetch(OriginRequest::get(key))
        .await
        .unwrap_err()
        .client_status()
}

#[test]
fn s3_missing_key_is_404() {
    let s3 = spawn_s3(AK, SK);
    s3.create_bucket(BUCKET);
    let o = origin::build(&s3_config(&s3.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut resp = o
            .fetch(OriginRequest::get("/nope-1.0.0.tgz"))
            .await
            .unwrap();
        assert_eq!(resp.meta.status, 404);
        assert!(read_all(resp.body.as_mut()).await.unwrap().is_empty());
    });
}

#[test]
fn s3_prefix_and_key_encoding() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "stable/v1/index.yaml", b"prefixed");
    s3.put_object(BUCKET, "stable/v1/my chart+1.0.0.tgz", b"encoded");
    s3.put_object(BUCKET, "index.yaml", b"root");
    let o = origin::build(&s3_config(&s3.endpoint, "stable/v1"), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"prefixed");
        // Space and '+' are percent-encoded, signed as sent, decoded by S3.
        let mut r = o
            .fetch(OriginRequest::get("/my chart+1.0.0.tgz"))
            .await
            .unwrap();
        assert_eq!(r.meta.status, 200);
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"encoded");
    });
    assert_eq!(s3.get_count("/charts/stable/v1/index.yaml"), 1);
    assert_eq!(s3.get_count("/charts/stable/v1/my%20chart%2B1.0.0.tgz"), 1);
    assert_eq!(s3.get_count("/charts/index.yaml"), 0);
}

#[test]
fn s3_head_has_length_and_no_body() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "a.tgz", &content(1234));
    let o = origin::build(&s3_config(&s3.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut req = OriginRequest::get("/a.tgz");
        req.method = Method::Head;
        let mut r = o.fetch(req).await.unwrap();
        assert_eq!(r.meta.status, 200);
        assert_eq!(r.meta.content_length, Some(1234));
        assert!(read_all(r.body.as_mut()).await.unwrap().is_empty());
    });
    assert_eq!(s3.count("HEAD", "/charts/a.tgz"), 1);
}

#[test]
fn s3_keep_alive_reuses_one_connection() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", &content(70_000));
    let cfg = s3_config(&s3.endpoint, "");
    let o = S3Origin::new(&cfg, BUCKET, "", creds(AK, SK)).unwrap();
    run(async {
        for _ in 0..3 {
            let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
            assert_eq!(read_all(r.body.as_mut()).await.unwrap().len(), 70_000);
        }
        // A 404 (error document drained) also keeps the connection.
        let r = o.fetch(OriginRequest::get("/missing")).await.unwrap();
        assert_eq!(r.meta.status, 404);
    });
    let stats = o.client().stats();
    assert_eq!(stats.connects, 1, "{stats:?}");
    assert_eq!(stats.reuses, 3, "{stats:?}");
    assert_eq!(s3.connection_count(), 1);
    assert_eq!(s3.get_count("/charts/index.yaml"), 3);
}

#[test]
fn s3_body_dropped_early_does_not_return_connection() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "big.tgz", &content(512 * 1024));
    let cfg = s3_config(&s3.endpoint, "");
    let o = S3Origin::new(&cfg, BUCKET, "", creds(AK, SK)).unwrap();
    run(async {
        let mut r = o.fetch(OriginRequest::get("/big.tgz")).await.unwrap();
        let first = r.body.next_chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(r);
        assert_eq!(o.client().idle_connections(), 0);
        let mut r = o.fetch(OriginRequest::get("/big.tgz")).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap().len(), 512 * 1024);
        assert_eq!(o.client().idle_connections(), 1);
    });
    assert_eq!(o.client().stats().connects, 2);
}

#[test]
fn s3_outage_is_connect_error() {
    let mut s3 = spawn_s3(AK, SK);
    s3.put_object(BUCKET, "index.yaml", b"x");
    let cfg = s3_config(&s3.endpoint, "");
    let o = S3Origin::new(&cfg, BUCKET, "", creds(AK, SK)).unwrap();
    run(async {
        let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        read_all(r.body.as_mut()).await.unwrap();
    });
    assert_eq!(o.client().idle_connections(), 1);
    s3.stop();
    run(async {
        // The pooled connection is dead: seen closed before reuse, or retried
        // once on a fresh one; either way the fresh one is refused.
        let err = o
            .fetch(OriginRequest::get("/index.yaml"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
        assert_eq!(err.client_status(), 502);
    });
    let stats = o.client().stats();
    assert_eq!(stats.stale_retries + stats.idle_closed, 1, "{stats:?}");
}

#[test]
fn s3_build_without_credentials_is_a_clear_error() {
    let cfg = s3_config("http://127.0.0.1:9", "");
    let err = origin::build(&cfg, None).err().unwrap();
    assert!(matches!(err, Error::Credentials(_)));
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[test]
fn s3_empty_credentials_cell_is_credentials_error() {
    let s3 = spawn_s3(AK, SK);
    let o = origin::build(
        &s3_config(&s3.endpoint, ""),
        Some(Arc::new(CredentialsCell::empty())),
    )
    .unwrap();
    run(async move {
        let err = o.fetch(OriginRequest::get("/x")).await.unwrap_err();
        assert!(matches!(err, Error::Credentials(_)), "{err:?}");
    });
    assert_eq!(s3.total_requests(), 0);
}

// ------------------------------------------------- only chartcache's headers go up

fn header_names(head: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(head);
    let mut names: Vec<String> = text
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
        .collect();
    names.sort();
    names
}

#[test]
fn s3_request_carries_only_signed_headers() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"e\"\r\n\r\nok".to_vec(),
    ]);
    let o = origin::build(&s3_config(&raw.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut req = OriginRequest::get("/index.yaml");
        req.if_none_match = Some("\"abc\"".into());
        let mut r = o.fetch(req).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"ok");
    });
    let reqs = raw.requests();
    assert_eq!(reqs.len(), 1);
    let text = String::from_utf8_lossy(&reqs[0]).to_string();
    assert!(
        text.starts_with("GET /charts/index.yaml HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\r\nhost: {}\r\n", raw.addr)),
        "{text}"
    );
    assert!(
        text.contains("SignedHeaders=host;if-none-match;x-amz-content-sha256;x-amz-date,"),
        "{text}"
    );
    assert_eq!(
        header_names(&reqs[0]),
        [
            "authorization",
            "host",
            "if-none-match",
            "user-agent",
            "x-amz-content-sha256",
            "x-amz-date"
        ]
    );
}

// ---------------------------------------------------------- faults (raw server)

fn http_origin(endpoint: &str) -> Rc<dyn Origin> {
    origin::build(&http_config(endpoint, Duration::from_secs(5)), None).unwrap()
}

#[test]
fn truncated_content_length_body_is_truncated_error() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this".to_vec(),
    ]);
    let o = http_origin(&raw.endpoint);
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/a.tgz")).await.unwrap();
        assert_eq!(r.meta.content_length, Some(100));
        let err = read_all(r.body.as_mut()).await.unwrap_err();
        assert!(matches!(err, Error::Truncated { received: 9 }), "{err:?}");
    });
}

#[test]
fn truncated_chunked_body_is_truncated_error() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwor".to_vec(),
    ]);
    let o = http_origin(&raw.endpoint);
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/a.tgz")).await.unwrap();
        assert_eq!(r.meta.content_length, None);
        let err = read_all(r.body.as_mut()).await.unwrap_err();
        assert!(matches!(err, Error::Truncated { received: 8 }), "{err:?}");
    });
}

#[test]
fn chunked_body_is_decoded() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"c\"\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n".to_vec(),
    ]);
    let o = http_origin(&raw.endpoint);
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/a")).await.unwrap();
        assert_eq!(r.meta.etag.as_deref(), Some("\"c\""));
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"hello world");
    });
}

#[test]
fn injected_or_oversized_headers_are_protocol_errors() {
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 40 * 1024));
    big.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let cases = [
        b"HTTP/1.1 200 OK\r\nETag: \"a\rX-Injected: 1\"\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\0\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc".to_vec(),
        b"HTTP/1.1 200 OK\r\n\r\nclose-delimited".to_vec(),
        big,
    ];
    for case in cases {
        let raw = spawn_raw_http(vec![case.clone()]);
        let o = http_origin(&raw.endpoint);
        run(async move {
            let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
            assert!(
                matches!(err, Error::Protocol(_)),
                "{err:?} for {:?}",
                String::from_utf8_lossy(&case[..case.len().min(80)])
            );
            assert_eq!(err.client_status(), 502);
        });
    }
}

#[test]
fn http_origin_status_mapping() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec(),
        b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n".to_vec(),
    ]);
    let o = http_origin(&raw.endpoint);
    run(async move {
        let r = o.fetch(OriginRequest::get("/a")).await.unwrap();
        assert_eq!(r.meta.status, 404);
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Status {
                    status: 503,
                    code: None
                }
            ),
            "{err:?}"
        );
        let mut req = OriginRequest::get("/a");
        req.if_none_match = Some("\"e\"".into());
        let r = o.fetch(req).await.unwrap();
        assert_eq!(r.meta.status, 304);
    });
    let reqs = raw.requests();
    assert_eq!(
        header_names(&reqs[2]),
        ["host", "if-none-match", "user-agent"]
    );
}

#[test]
fn s3_error_code_from_xml_body() {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
    let reply = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
        xml.len()
    );
    let raw = spawn_raw_http(vec![reply.into_bytes()]);
    let o = origin::build(&s3_config(&raw.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(
            matches!(&err, Error::Status { status: 403, code: Some(c) } if c == "AccessDenied"),
            "{err:?}"
        );
    });
}

#[test]
fn s3_error_code_from_header_without_body() {
    // S3 answers HEAD (and some GETs) with the code only in `x-amz-error-code`.
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 403 Forbidden\r\nx-amz-error-code: AccessDenied\r\nx-amz-bucket-region: eu-west-1\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ]);
    let o = origin::build(&s3_config(&raw.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(
            matches!(&err, Error::Status { status: 403, code: Some(c) } if c == "AccessDenied"),
            "{err:?}"
        );
        assert_eq!(err.client_status(), 502);
    });
}

#[test]
fn http_origin_reads_no_s3_error_code() {
    let xml = "<Error><Code>AccessDenied</Code></Error>";
    let reply = format!(
        "HTTP/1.1 403 Forbidden\r\nx-amz-error-code: AccessDenied\r\nContent-Length: {}\r\n\r\n{xml}",
        xml.len()
    );
    let raw = spawn_raw_http(vec![reply.into_bytes()]);
    let o = http_origin(&raw.endpoint);
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Status {
                    status: 403,
                    code: None
                }
            ),
            "{err:?}"
        );
    });
}

#[test]
fn bad_amz_headers_are_protocol_errors_on_both_http_origins() {
    let cases = [
        &b"HTTP/1.1 200 OK\r\nx-amz-request-id: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n"[..],
        &b"HTTP/1.1 403 Forbidden\r\nx-amz-error-code: AccessDenied\r\nx-amz-error-code: SlowDown\r\nContent-Length: 0\r\n\r\n"[..],
        &b"HTTP/1.1 301 Moved\r\nx-amz-bucket-region: eu-west-1\r\nx-amz-bucket-region: us-east-1\r\nContent-Length: 0\r\n\r\n"[..],
    ];
    for case in cases {
        for s3 in [true, false] {
            let raw = spawn_raw_http(vec![case.to_vec()]);
            let o = if s3 {
                origin::build(&s3_config(&raw.endpoint, ""), Some(creds(AK, SK))).unwrap()
            } else {
                http_origin(&raw.endpoint)
            };
            run(async move {
                let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
                assert!(
                    matches!(err, Error::Protocol(_)),
                    "{err:?} (s3: {s3}) for {:?}",
                    String::from_utf8_lossy(case)
                );
                assert_eq!(err.client_status(), 502);
            });
        }
    }
}

#[test]
fn stale_pooled_connection_is_retried_once() {
    // The server closes after each response although it did not say so: the
    // pooled connection is dead when reused.
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond".to_vec(),
    ]);
    let cfg = http_config(&raw.endpoint, Duration::from_secs(5));
    let o = HttpsOrigin::new(&cfg).unwrap();
    run(async {
        let mut r = o.fetch(OriginRequest::get("/a")).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"first");
        assert_eq!(o.client().idle_connections(), 1);
        let mut r = o.fetch(OriginRequest::get("/a")).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"second");
    });
    // The close is usually seen before reuse (no request is sent on it);
    // if it arrives later, the stale connection is retried once.
    let stats = o.client().stats();
    assert_eq!(stats.connects, 2, "{stats:?}");
    assert_eq!(stats.reuses, stats.stale_retries, "{stats:?}");
    assert_eq!(stats.stale_retries + stats.idle_closed, 1, "{stats:?}");
}

#[test]
fn connection_refused_is_connect_error() {
    let o = http_origin(&refused_endpoint());
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    });
}

#[test]
fn silent_server_is_timeout() {
    let raw = spawn_silent_http();
    let o = origin::build(
        &http_config(&raw.endpoint, Duration::from_millis(300)),
        None,
    )
    .unwrap();
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert_eq!(err.client_status(), 504);
    });
    assert_eq!(raw.requests().len(), 1);
}

#[test]
fn stalled_body_is_timeout() {
    // Head and part of the body, then silence with the connection held open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        // Hold the connection open until the client gives up.
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.read(&mut buf);
    });
    let o = origin::build(
        &http_config(&format!("http://{addr}"), Duration::from_millis(300)),
        None,
    )
    .unwrap();
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/a")).await.unwrap();
        assert_eq!(&r.body.next_chunk().await.unwrap().unwrap()[..], b"abc");
        let err = r.body.next_chunk().await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
    });
    server.join().unwrap();
}

// ------------------------------------------------------------------ file origin

#[test]
fn file_origin_serves_files_with_validators() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(150 * 1024);
    std::fs::write(dir.path().join("nginx-1.2.3.tgz"), &data).unwrap();
    std::fs::write(dir.path().join("index.yaml"), b"apiVersion: v1\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let cfg = OriginConfig {
        upstream: Upstream::File {
            dir: dir.path().to_path_buf(),
        },
        ..http_config("http://127.0.0.1:1", Duration::from_secs(1))
    };
    let o = origin::build(&cfg, None).unwrap();
    run(async move {
        let mut r = o
            .fetch(OriginRequest::get("/nginx-1.2.3.tgz"))
            .await
            .unwrap();
        assert_eq!(r.meta.status, 200);
        assert_eq!(r.meta.content_type.as_deref(), Some("application/gzip"));
        assert_eq!(r.meta.content_length, Some(data.len() as u64));
        let etag = r.meta.etag.clone().unwrap();
        assert!(
            etag.starts_with('"') && etag.ends_with(&format!("-{:x}\"", data.len())),
            "{etag}"
        );
        let last_modified = r.meta.last_modified.clone().unwrap();
        assert!(httpdate::parse_http_date(&last_modified).is_ok());
        // 150 KiB comes in 64 KiB pieces.
        let mut chunks = 0;
        let mut body = Vec::new();
        while let Some(c) = r.body.next_chunk().await.unwrap() {
            assert!(c.len() <= 64 * 1024);
            chunks += 1;
            body.extend_from_slice(&c);
        }
        assert_eq!(body, data);
        assert_eq!(chunks, 3);

        let mut req = OriginRequest::get("/nginx-1.2.3.tgz");
        req.if_none_match = Some(etag.clone());
        assert_eq!(o.fetch(req).await.unwrap().meta.status, 304);

        let mut req = OriginRequest::get("/nginx-1.2.3.tgz");
        req.if_modified_since = Some(last_modified);
        assert_eq!(o.fetch(req).await.unwrap().meta.status, 304);

        let mut req = OriginRequest::get("/nginx-1.2.3.tgz");
        req.if_modified_since = Some("Thu, 01 Jan 1970 00:00:00 GMT".into());
        assert_eq!(o.fetch(req).await.unwrap().meta.status, 200);

        let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        assert_eq!(r.meta.content_type.as_deref(), Some("text/yaml"));
        assert_eq!(
            read_all(r.body.as_mut()).await.unwrap(),
            b"apiVersion: v1\n"
        );

        let mut req = OriginRequest::get("/index.yaml");
        req.method = Method::Head;
        let mut r = o.fetch(req).await.unwrap();
        assert_eq!(r.meta.content_length, Some(15));
        assert!(read_all(r.body.as_mut()).await.unwrap().is_empty());

        for missing in [
            "/nope.tgz",
            "/sub",
            "/sub/x",
            "/../etc/passwd",
            "/index.yaml/x",
        ] {
            let r = o.fetch(OriginRequest::get(missing)).await.unwrap();
            assert_eq!(r.meta.status, 404, "{missing}");
        }
    });
}

#[test]
fn file_origin_etag_changes_when_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.yaml");
    std::fs::write(&path, b"v1").unwrap();
    let o = FileOrigin::new(dir.path());
    run(async {
        let a = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        std::fs::write(&path, b"v2-longer").unwrap();
        let b = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        assert_ne!(a.meta.etag, b.meta.etag);
    });
}

#[test]
fn file_origin_shrinking_file_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tgz");
    std::fs::write(&path, content(200 * 1024)).unwrap();
    let o = FileOrigin::new(dir.path());
    run(async {
        let mut r = o.fetch(OriginRequest::get("/big.tgz")).await.unwrap();
        assert!(r.body.next_chunk().await.unwrap().is_some());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let err = read_all(r.body.as_mut()).await.unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    });
}

// ------------------------------------------------- retries, deadline (Retrying)

/// `http_config` with the given retry budget and deadline.
fn retrying_config(endpoint: &str, retries: u32, deadline: Duration) -> OriginConfig {
    OriginConfig {
        retries,
        retry_deadline: deadline,
        ..http_config(endpoint, Duration::from_secs(5))
    }
}

fn retrying_origin(endpoint: &str) -> Rc<dyn Origin> {
    origin::build(&retrying_config(endpoint, 2, Duration::from_secs(8)), None).unwrap()
}

const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

#[test]
fn retry_503_then_200_succeeds() {
    let raw = spawn_raw_http(vec![
        UNAVAILABLE.to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(),
    ]);
    let o = retrying_origin(&raw.endpoint);
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/index.yaml")).await.unwrap();
        assert_eq!(r.meta.status, 200);
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"hello");
    });
    let reqs = raw.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.starts_with(b"GET /index.yaml ")));
}

#[test]
fn retry_503_forever_gives_up_after_three_attempts() {
    let raw = spawn_raw_http(vec![UNAVAILABLE.to_vec()]);
    let o = retrying_origin(&raw.endpoint);
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(matches!(err, Error::Status { status: 503, .. }), "{err:?}");
        assert_eq!(err.client_status(), 502);
    });
    assert_eq!(raw.requests().len(), 3);
}

#[test]
fn s3_slow_down_is_retried() {
    let xml =
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let slow = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
    let raw = spawn_raw_http(vec![
        slow.into_bytes(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"e\"\r\nConnection: close\r\n\r\nok"
            .to_vec(),
    ]);
    let o = origin::build(&s3_config(&raw.endpoint, ""), Some(creds(AK, SK))).unwrap();
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/a.tgz")).await.unwrap();
        assert_eq!(read_all(r.body.as_mut()).await.unwrap(), b"ok");
    });
    let reqs = raw.requests();
    assert_eq!(reqs.len(), 2);
    // Each attempt is signed afresh.
    assert!(reqs
        .iter()
        .all(|r| String::from_utf8_lossy(r).contains("authorization: AWS4-HMAC-SHA256")));
}

#[test]
fn not_found_and_forbidden_are_not_retried() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    ]);
    let o = retrying_origin(&raw.endpoint);
    run(async move {
        let r = o.fetch(OriginRequest::get("/missing")).await.unwrap();
        assert_eq!(r.meta.status, 404);
        let err = o.fetch(OriginRequest::get("/secret")).await.unwrap_err();
        assert!(matches!(err, Error::Status { status: 403, .. }), "{err:?}");
    });
    assert_eq!(raw.requests().len(), 2);
}

#[test]
fn truncated_body_is_not_retried() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole".to_vec(),
    ]);
    let o = retrying_origin(&raw.endpoint);
    run(async move {
        let mut r = o.fetch(OriginRequest::get("/a.tgz")).await.unwrap();
        let err = read_all(r.body.as_mut()).await.unwrap_err();
        assert!(matches!(err, Error::Truncated { received: 9 }), "{err:?}");
    });
    assert_eq!(raw.requests().len(), 1);
}

#[test]
fn connection_refused_is_retried_then_connect_error() {
    let endpoint = refused_endpoint();
    let cfg = retrying_config(&endpoint, 2, Duration::from_secs(8));
    let retrying = Rc::new(origin::retry::Retrying::new(
        origin::build_unwrapped(&cfg, None).unwrap(),
        origin::retry::RetryPolicy::from_config(&cfg),
    ));
    let o = retrying.clone();
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    });
    let stats = retrying.stats();
    assert_eq!((stats.attempts, stats.retries, stats.exhausted), (3, 2, 1));
    assert_eq!(retrying.in_flight(), 0);
}

#[test]
fn deadline_bounds_total_time() {
    // 300 ms per attempt and a budget of 20 retries would take over 6 s; the
    // 800 ms deadline stops it long before.
    let raw = spawn_silent_http();
    let cfg = OriginConfig {
        request_timeout: Duration::from_millis(300),
        ..retrying_config(&raw.endpoint, 20, Duration::from_millis(800))
    };
    let retrying = Rc::new(origin::retry::Retrying::new(
        origin::build_unwrapped(&cfg, None).unwrap(),
        origin::retry::RetryPolicy::from_config(&cfg),
    ));
    let o = retrying.clone();
    let started = std::time::Instant::now();
    run(async move {
        let err = o.fetch(OriginRequest::get("/a")).await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert_eq!(err.client_status(), 504);
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stats = retrying.stats();
    assert!(stats.attempts >= 2, "{stats:?}");
    assert!(stats.attempts < 21, "{stats:?}");
    assert_eq!(stats.exhausted, 1);
}

#[test]
fn concurrency_cap_holds_slots_until_bodies_end() {
    let raw = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(),
    ]);
    let cfg = OriginConfig {
        max_upstream_concurrency: 1,
        ..retrying_config(&raw.endpoint, 2, Duration::from_millis(300))
    };
    let o = origin::build(&cfg, None).unwrap();
    run(async move {
        let mut first = o.fetch(OriginRequest::get("/a")).await.unwrap();
        // The only slot is held by `first`'s unread body: the next fetch waits
        // out its deadline without reaching the upstream.
        let err = o.fetch(OriginRequest::get("/b")).await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert_eq!(read_all(first.body.as_mut()).await.unwrap(), b"hello");
        let mut second = o.fetch(OriginRequest::get("/c")).await.unwrap();
        assert_eq!(read_all(second.body.as_mut()).await.unwrap(), b"hello");
    });
    let reqs = raw.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].starts_with(b"GET /c "));
}

#[test]
fn zero_concurrency_is_a_config_error() {
    let cfg = OriginConfig {
        max_upstream_concurrency: 0,
        ..http_config("http://127.0.0.1:1", Duration::from_secs(1))
    };
    assert!(matches!(origin::build(&cfg, None), Err(Error::Config(_))));
}

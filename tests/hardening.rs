//! Malformed and hostile input: every case gets its 4xx (or a silent close),
//! the connection is closed, nothing after it is answered, and the server
//! keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::proxy::{parse_response_at, raw_exchange, Proxy};

/// Sends `raw`, expects exactly one response with `status` and then EOF.
fn expect_status_and_close(p: &Proxy, raw: &[u8], status: u16) {
    let out = raw_exchange(p.addr, raw);
    let (resp, used) = parse_response_at(&out, false)
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw)));
    assert_eq!(
        resp.status,
        status,
        "for {:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        used,
        out.len(),
        "nothing may follow the error response for {:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(resp.header("connection"), Some("close"));
}

#[test]
fn malformed_requests_get_4xx_and_close() {
    let p = Proxy::examples();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let many_headers = format!(
        "GET /index.yaml HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_header = format!(
        "GET /index.yaml HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (long_target.into_bytes(), 414),
        (many_headers.into_bytes(), 431),
        (huge_header.into_bytes(), 431),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nX-CR: a\rb\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n".to_vec(), 400),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505),
        (b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /%252e%252e/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /a%2fb.tgz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /a%5cb.tgz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /a\\b.tgz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET //index.yaml HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /./index.yaml HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /%c0%ae%c0%ae/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /a%00.tgz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /index.yaml#frag HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
    ];
    for (raw, status) in cases {
        expect_status_and_close(&p, &raw, status);
    }
    // The server is unharmed.
    assert_eq!(p.get("/index.yaml").status, 200);
}

#[test]
fn http09_is_closed_silently() {
    let p = Proxy::examples();
    let out = raw_exchange(p.addr, b"GET /index.yaml\r\n");
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
}

#[test]
fn higher_http1_minor_is_served_as_1_1_and_absolute_form_uses_path_only() {
    let p = Proxy::examples();
    let out = raw_exchange(
        p.addr,
        b"GET /index.yaml HTTP/1.7\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(parse_response_at(&out, false).unwrap().0.status, 200);
    let out = raw_exchange(
        p.addr,
        b"GET http://evil.example/hello-0.1.0.tgz?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let r = parse_response_at(&out, false).unwrap().0;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        std::fs::read(common::proxy::examples_repo().join("hello-0.1.0.tgz")).unwrap()
    );
}

#[test]
fn upgrade_never_switches_protocols() {
    let p = Proxy::examples();
    let out = raw_exchange(
        p.addr,
        b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(parse_response_at(&out, false).unwrap().0.status, 200);
    let out = raw_exchange(
        p.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    let r = parse_response_at(&out, false).unwrap().0;
    assert!(r.status == 405 || r.status == 400, "{}", r.status);
}

/// A GET body smuggling a second request must be drained, not parsed.
#[test]
fn request_body_on_get_is_drained_not_parsed_as_a_request() {
    let p = Proxy::examples();
    let smuggled = "GET /hello-0.3.0-dev-1.tgz HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "GET /index.yaml HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}GET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        smuggled.len()
    );
    let out = raw_exchange(p.addr, req.as_bytes());
    let (a, n) = parse_response_at(&out, false).unwrap();
    let (b, m) = parse_response_at(&out[n..], false).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/yaml"));
    assert_eq!(b.status, 200);
    assert_eq!(b.header("content-type"), Some("application/gzip"));
    assert_ne!(
        b.x_cache(),
        "BYPASS",
        "the smuggled dev request must not have been answered"
    );
    assert_eq!(n + m, out.len(), "exactly two responses");

    // Chunked body: answered, then closed (nothing after it is parsed).
    let req = "GET /index.yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = raw_exchange(p.addr, req.as_bytes());
    let (a, n) = parse_response_at(&out, false).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(n, out.len(), "connection closed after the chunked request");
}

#[test]
fn half_open_connections_do_not_delay_other_clients() {
    let p = Proxy::examples();
    // 300 connections that send half a request head and stall.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"GET /index.yaml HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        stalled.push(s);
    }
    // Everyone else is still served promptly (bounded, not a timing threshold:
    // a hang would hit the 10 s read timeout in the client).
    for _ in 0..20 {
        assert_eq!(p.get("/hello-0.1.0.tgz").status, 200);
    }
    drop(stalled);
}

#[test]
fn slow_header_is_cut_off_by_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = common::proxy::test_cli(
        &format!("file://{}", common::proxy::examples_repo().display()),
        &tmp.path().join("cache"),
    );
    cli.server.header_timeout = Some("500ms".into());
    let p = Proxy::start(cli);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /index.yaml HTTP/1.1\r\n").unwrap();
    // Trickle a byte every 100 ms: the deadline is absolute, not per read.
    // Stop writing as soon as the answer arrives (writing to a closed socket
    // would reset it and could discard the answer).
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for _ in 0..50 {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(_) => {
                if s.write_all(b"X").is_err() {
                    break;
                }
            }
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = parse_response_at(&out, false).expect("a 408 before close");
    assert_eq!(r.0.status, 408);
}

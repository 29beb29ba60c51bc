//! The `sendfile(2)` hit path (`--sendfile-threshold 0`: every stored body),
//! under both drivers: exact bytes for 200 and 206, keep-alive after a
//! sendfile response, and a body far larger than the socket buffers read by a
//! slow client, so the server's sends are partial and hit `EAGAIN`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::proxy::{examples_repo, parse_response_at, test_cli, Proxy, Response};

/// Larger than the kernel's largest send buffer here (`tcp_wmem` max 4 MiB)
/// plus the client's small receive buffer, so the server cannot queue it all.
const BIG: usize = 8 << 20;

fn proxy(upstream: &Path, driver: Option<&str>, threshold: &str) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(
        &format!("file://{}", upstream.display()),
        &tmp.path().join("cache"),
    );
    cli.cache.cache_size = Some("256MiB".into());
    cli.server.sendfile_threshold = Some(threshold.into());
    // `None`: this build's driver, as `test_cli` set it.
    if let Some(driver) = driver {
        cli.runtime.driver = Some(driver.to_string());
    }
    Proxy::start_in(cli, Some(tmp))
}

/// A keep-alive client connection with a small receive buffer.
fn connect(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(32 << 10).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends one keep-alive GET and reads exactly one response. A `slow` reader
/// waits before reading and then reads in small pieces with pauses.
fn exchange(s: &mut TcpStream, path: &str, range: Option<&str>, slow: bool) -> Response {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(r) = range {
        req.push_str(&format!("Range: {r}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if slow {
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; if slow { 16 << 10 } else { 256 << 10 }];
    let mut reads = 0u32;
    loop {
        if let Some((resp, used)) = parse_response_at(&raw, false) {
            let want = resp
                .header("content-length")
                .map(|v| v.parse::<usize>().unwrap());
            if want == Some(resp.body.len()) {
                assert_eq!(used, raw.len(), "bytes after the response");
                return resp;
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "server closed mid-response after {} bytes",
            raw.len()
        );
        raw.extend_from_slice(&chunk[..n]);
        reads += 1;
        if slow && reads % 16 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn examples_exact(driver: Option<&str>) {
    let repo = examples_repo();
    let p = proxy(&repo, driver, "0");
    for name in [
        "index.yaml",
        "hello-0.1.0.tgz",
        "hello-0.2.0.tgz",
        "podinfo-lite-1.0.0.tgz",
    ] {
        let want = std::fs::read(repo.join(name)).unwrap();
        let path = format!("/{name}");
        let first = p.get(&path);
        assert_eq!(first.status, 200, "{name}");
        assert_eq!(first.body, want, "{name} (fill)");

        let mut s = connect(p.addr);
        let full = exchange(&mut s, &path, None, false);
        assert_eq!(full.status, 200, "{name}");
        assert_ne!(full.x_cache(), "MISS", "{name}: stored copy expected");
        assert_eq!(full.body, want, "{name} (stored, sendfile)");
        // Keep-alive after a sendfile response: ranges on the same connection.
        let mid = exchange(&mut s, &path, Some("bytes=10-99"), false);
        assert_eq!(mid.status, 206, "{name}");
        assert_eq!(mid.body, &want[10..100], "{name}");
        assert_eq!(
            mid.header("content-range"),
            Some(format!("bytes 10-99/{}", want.len()).as_str())
        );
        let tail = exchange(&mut s, &path, Some("bytes=-50"), false);
        assert_eq!(tail.status, 206, "{name}");
        assert_eq!(tail.body, &want[want.len() - 50..], "{name}");
        let again = exchange(&mut s, &path, None, false);
        assert_eq!(again.body, want, "{name} (third request, same connection)");
    }
}

#[test]
fn examples_exact_with_sendfile_default_driver() {
    examples_exact(None);
}

#[test]
fn examples_exact_with_sendfile_epoll() {
    examples_exact(Some("epoll"));
}

fn big_object_slow_reader(driver: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    // Not compressible, not periodic at any small stride.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let want: Vec<u8> = (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.path().join("big-1.0.0.tgz"), &want).unwrap();
    let p = proxy(dir.path(), driver, "0");
    assert_eq!(p.get("/big-1.0.0.tgz").body.len(), BIG, "fill");

    let mut s = connect(p.addr);
    let full = exchange(&mut s, "/big-1.0.0.tgz", None, true);
    assert_eq!(full.status, 200);
    assert_eq!(full.x_cache(), "HIT");
    assert!(full.body == want, "200 body differs");
    let (a, b) = (1_000_003usize, 6_500_000usize);
    let part = exchange(
        &mut s,
        "/big-1.0.0.tgz",
        Some(&format!("bytes={a}-{b}")),
        true,
    );
    assert_eq!(part.status, 206);
    assert!(part.body == want[a..=b], "206 body differs");
    // The connection is still usable, and the socket is back in the mode the
    // driver expects (a small response through io_uring / epoll as usual).
    let small = exchange(&mut s, "/big-1.0.0.tgz", Some("bytes=0-9"), false);
    assert_eq!(small.body, &want[..10]);
}

#[test]
fn big_object_slow_reader_default_driver() {
    big_object_slow_reader(None);
}

#[test]
fn big_object_slow_reader_epoll() {
    big_object_slow_reader(Some("epoll"));
}

#[test]
fn threshold_splits_paths_and_both_are_exact() {
    // 200 bytes: whole example charts (~500 B) go by sendfile, 90-byte ranges by writev.
    let repo = examples_repo();
    let p = proxy(&repo, None, "200");
    let want = std::fs::read(repo.join("hello-0.2.0.tgz")).unwrap();
    assert!(want.len() > 200);
    assert_eq!(p.get("/hello-0.2.0.tgz").body, want);
    let mut s = connect(p.addr);
    for _ in 0..3 {
        assert_eq!(exchange(&mut s, "/hello-0.2.0.tgz", None, false).body, want);
        let r = exchange(&mut s, "/hello-0.2.0.tgz", Some("bytes=10-99"), false);
        assert_eq!(r.body, &want[10..100]);
    }
}

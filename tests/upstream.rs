//! chartcache in front of upstreams that answer oddly or with hostile intent:
//! a late surplus response on a pooled connection, statuses a plain GET never
//! gets (206, 1xx, 3xx, an unconditional 304), chunked bodies relayed through
//! a bypass (complete, cut short, to HTTP/1.0), and requests that would leave
//! the bucket's object space (the root, "directories", sub-resources) against
//! a real s3s-fs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::proxy::{test_cli, Proxy, Response, AK, SK};
use common::{spawn_raw_http, spawn_s3};

fn proxy(upstream: &str, workers: usize) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(upstream, &tmp.path().join("cache"));
    cli.runtime.workers = Some(workers);
    Proxy::start_in(cli, Some(tmp))
}

/// Sends `request` on a fresh connection and reads until the server closes;
/// `false` if it did not close within 10 s.
fn exchange_until_close(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return (out, false),
        }
    }
}

fn head_and_body(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        raw[end..].to_vec(),
    )
}

// ------------------------------------------- item 4: exact framing before reuse

/// A keep-alive upstream, one thread per connection, answering every request
/// with `body of PATH` (and an ETag). After its first answer to [`TRIGGER`], it
/// waits for `go`, writes `surplus` on that same connection (a response nobody
/// asked for) and reports on `written`.
struct SurplusUpstream {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const TRIGGER: &str = "/a-1.0.0.tgz";

impl Drop for SurplusUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(path: &str) -> Vec<u8> {
    let body = format!("body of {path}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"e\"\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn spawn_surplus_upstream(
    surplus: Vec<u8>,
) -> (SurplusUpstream, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (written_tx, written_rx) = mpsc::channel::<()>();
    let go = Arc::new(Mutex::new(Some((go_rx, written_tx))));
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (requests, stop) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => return,
                };
                let (requests, go, surplus) = (requests.clone(), go.clone(), surplus.clone());
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            match s.read(&mut byte) {
                                Ok(1) => head.push(byte[0]),
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                _ => return,
                            }
                        }
                        let line = String::from_utf8_lossy(&head).into_owned();
                        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                        requests.lock().unwrap().push(path.clone());
                        if s.write_all(&answer(&path)).is_err() {
                            return;
                        }
                        if path.ends_with(TRIGGER) {
                            let Some((go_rx, written_tx)) = go.lock().unwrap().take() else {
                                continue;
                            };
                            if go_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                                return;
                            }
                            let _ = s.write_all(&surplus);
                            let _ = written_tx.send(());
                        }
                    }
                });
            }
        })
    };
    (
        SurplusUpstream {
            endpoint: format!("http://{addr}"),
            requests,
            stop,
            thread: Some(thread),
        },
        go_tx,
        written_rx,
    )
}

#[test]
fn a_late_surplus_response_is_never_the_answer_to_the_next_request() {
    let poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nETag: \"p\"\r\n\r\npoison".to_vec();
    let (upstream, go, written) = spawn_surplus_upstream(poison);
    // One worker: both keys are filled on it, through its one pool.
    let p = proxy(&upstream.endpoint, 1);

    let r = p.get(TRIGGER);
    assert_eq!((r.status, r.text()), (200, format!("body of {TRIGGER}")));
    // The first exchange is over; now upstream sends a response nobody asked for.
    go.send(()).unwrap();
    written.recv_timeout(Duration::from_secs(10)).unwrap();

    let r = p.get("/b-1.0.0.tgz");
    assert_eq!(
        (r.status, r.x_cache(), r.text()),
        (200, "MISS", "body of /b-1.0.0.tgz".to_owned())
    );
    let r = p.get("/b-1.0.0.tgz");
    assert_eq!(
        (r.status, r.x_cache(), r.text()),
        (200, "HIT", "body of /b-1.0.0.tgz".to_owned()),
        "the poisoned answer was cached"
    );
    assert_eq!(
        upstream.requests.lock().unwrap().as_slice(),
        [TRIGGER, "/b-1.0.0.tgz"]
    );
    // Counted (published by the worker's housekeeping, every 200 ms).
    let counted = "chartcache_upstream_unsolicited_data_total 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.metrics().contains(counted) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = p.metrics();
    assert!(m.contains(counted), "{m}");
}

#[test]
fn the_client_closes_a_pooled_connection_that_received_bytes_while_idle() {
    use chartcache::origin::client::{Endpoint, HttpClient};
    use chartcache::origin::Method;

    let poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nETag: \"p\"\r\n\r\npoison".to_vec();
    let (upstream, go, written) = spawn_surplus_upstream(poison);
    let endpoint = Endpoint::parse(&upstream.endpoint).unwrap();
    let client = HttpClient::new(endpoint, common::test_client_settings()).unwrap();
    common::run(async {
        let mut r = client.send(Method::Get, TRIGGER, &[]).await.unwrap();
        let body = common::read_all(&mut r.body).await.unwrap();
        assert_eq!(body, format!("body of {TRIGGER}").as_bytes());
        assert_eq!(client.idle_connections(), 1);
        go.send(()).unwrap();
        written.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut r = client.send(Method::Get, "/b", &[]).await.unwrap();
        assert_eq!(common::read_all(&mut r.body).await.unwrap(), b"body of /b");
    });
    let stats = client.stats();
    assert_eq!(
        (stats.connects, stats.reuses, stats.unsolicited),
        (2, 0, 1),
        "{stats:?}"
    );
}

#[test]
fn a_body_after_a_head_response_never_answers_the_next_request() {
    use chartcache::origin::client::{Endpoint, HttpClient};
    use chartcache::origin::Method;

    // This upstream answers HEAD like GET: the body that follows the head
    // belongs to no request.
    let (upstream, go, written) = spawn_surplus_upstream(Vec::new());
    let client = HttpClient::new(
        Endpoint::parse(&upstream.endpoint).unwrap(),
        common::test_client_settings(),
    )
    .unwrap();
    common::run(async {
        let mut r = client.send(Method::Head, TRIGGER, &[]).await.unwrap();
        assert_eq!(r.head.status, 200);
        assert!(common::read_all(&mut r.body).await.unwrap().is_empty());
        go.send(()).unwrap();
        written.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut r = client.send(Method::Get, "/b", &[]).await.unwrap();
        assert_eq!(common::read_all(&mut r.body).await.unwrap(), b"body of /b");
    });
    let stats = client.stats();
    assert_eq!((stats.reuses, stats.unsolicited), (0, 1), "{stats:?}");
}

// ----------------------------------- item 6: statuses a plain GET never gets

/// GETs `path` twice through a proxy whose upstream always answers `reply`;
/// returns both responses and the number of upstream requests.
fn twice(reply: &[u8], path: &str) -> (Response, Response, usize) {
    let upstream = spawn_raw_http(vec![reply.to_vec()]);
    let p = proxy(&upstream.endpoint, 2);
    let first = p.get(path);
    let second = p.get(path);
    (first, second, upstream.requests().len())
}

#[test]
fn unexpected_upstream_statuses_are_502_on_fill_and_bypass() {
    let cases: [&[u8]; 8] = [
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4/10\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\nhello",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\nhello",
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
    ];
    for reply in cases {
        let what = String::from_utf8_lossy(&reply[..reply.len().min(30)]).into_owned();
        for path in ["/u-1.0.0.tgz", "/u-1.0.0-dev-1.tgz"] {
            let (first, second, upstream_requests) = twice(reply, path);
            for r in [&first, &second] {
                assert_eq!(r.status, 502, "{what} on {path}: {}", r.text());
                assert!(r.header("content-range").is_none(), "{what} on {path}");
                assert!(r.text().contains("upstream"), "{what}: {}", r.text());
            }
            // Never cached, never retried: each request asked upstream once.
            assert_eq!(upstream_requests, 2, "{what} on {path}");
        }
    }
}

#[test]
fn a_100_continue_before_the_answer_is_skipped() {
    let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"c\"\r\n\r\nhello";
    for path in ["/c-1.0.0.tgz", "/c-1.0.0-dev-1.tgz"] {
        let (first, second, _) = twice(reply, path);
        for r in [&first, &second] {
            assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{path}");
        }
    }
}

// ------------------------------------------- item 7: pass-through framing

const DEV: &str = "/app-1.0.0-dev-3.tgz";

#[test]
fn a_cut_chunked_body_is_relayed_without_its_last_chunk_and_the_connection_closes() {
    let upstream = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"d\"\r\n\r\n5\r\nhello\r\n6\r\n wor".to_vec(),
    ]);
    let p = proxy(&upstream.endpoint, 2);
    // A keep-alive request: only the framing can tell the client the body was cut.
    let request = format!("GET {DEV} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (raw, closed) = exchange_until_close(p.addr, request.as_bytes());
    let (head, body) = head_and_body(&raw);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert!(closed, "the connection stayed open after a cut body");
    assert!(
        body.starts_with(b"5\r\nhello\r\n"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "a cut body ended with the last chunk: {:?}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn a_complete_chunked_body_is_relayed_chunked_to_http11_and_close_delimited_to_http10() {
    let upstream = spawn_raw_http(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"d\"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
    ]);
    let p = proxy(&upstream.endpoint, 2);

    let request = format!("GET {DEV} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (raw, closed) = exchange_until_close(p.addr, request.as_bytes());
    assert!(closed);
    let (head, body) = head_and_body(&raw);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{head}"
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );

    // Keep-alive after a complete chunked body: a second request on the
    // same connection is answered.
    let two = format!(
        "GET {DEV} HTTP/1.1\r\nHost: x\r\n\r\nGET {DEV} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let (raw, closed) = exchange_until_close(p.addr, two.as_bytes());
    assert!(closed);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    // The last chunk (after the previous chunk's CRLF; a head can end in "…0\r\n\r\n" too).
    assert_eq!(text.matches("\r\n0\r\n\r\n").count(), 2, "{text}");

    let request = format!("GET {DEV} HTTP/1.0\r\n\r\n");
    let (raw, closed) = exchange_until_close(p.addr, request.as_bytes());
    assert!(closed, "HTTP/1.0 without a length must be close-delimited");
    let (head, body) = head_and_body(&raw);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert!(!lower.contains("content-length"), "{head}");
    assert_eq!(body, b"hello world");
}

// ------------------------------------------ item 5: only object keys go up

#[test]
fn the_bucket_root_and_directories_never_reach_s3() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("charts", "index.yaml", b"apiVersion: v1\nentries: {}\n");
    s3.put_object("charts", "dir/app-1.0.0.tgz", b"chart");
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://charts", &tmp.path().join("cache"));
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    let p = Proxy::start_in(cli, Some(tmp));

    for (target, status) in [
        ("/", 404),
        ("/?list-type=2", 404),
        ("/?list-type=2&prefix=dir/&delimiter=/", 404),
        ("/?acl", 404),
        ("/?versions", 404),
        ("http://charts.example/?list-type=2", 404),
        ("/dir/", 400),
        ("/dir//", 400),
        ("/dir/?list-type=2", 400),
    ] {
        for _ in 0..2 {
            let r = p.get(target);
            assert_eq!(r.status, status, "{target}: {}", r.text());
            assert!(!r.text().contains("ListBucketResult"), "{target}");
        }
    }
    let r = common::proxy::request(p.addr, "HEAD", "/", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(s3.total_requests(), 0, "a listing was requested upstream");
    let m = p.metrics();
    assert!(m.contains("chartcache_cache_objects 0"), "{m}");

    // Objects are still objects.
    assert_eq!(p.get("/dir/app-1.0.0.tgz").body, b"chart");
}

#[test]
fn an_s3_answer_that_is_not_an_object_is_502_and_never_cached() {
    let listing = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>charts</Name><Contents><Key>secret.tgz</Key></Contents></ListBucketResult>";
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{listing}",
        listing.len()
    );
    let upstream = spawn_raw_http(vec![reply.into_bytes()]);
    for path in ["/index.yaml", "/x-1.0.0.tgz", "/x-1.0.0-dev-1.tgz"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cli = test_cli("s3://charts", &tmp.path().join("cache"));
        cli.repo.s3_endpoint = Some(upstream.endpoint.clone());
        let p = Proxy::start_in(cli, Some(tmp));
        let before = upstream.requests().len();
        for _ in 0..2 {
            let r = p.get(path);
            assert_eq!(r.status, 502, "{path}: {}", r.text());
            assert!(!r.text().contains("ListBucketResult"), "{path}");
        }
        assert_eq!(upstream.requests().len() - before, 2, "{path} was cached");
        let m = p.metrics();
        assert!(m.contains("chartcache_cache_objects 0"), "{m}");
    }
}

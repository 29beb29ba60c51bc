//! Clients and limits: one instance per port, clients that stop reading,
//! slow admin clients, unread request bodies, header bytes passed upstream,
//! and the open-file limit. Every test holds the real server to a client's
//! view: what it receives, what the metrics and the log say.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{examples_repo, get, parse_response_at, request, test_cli, Binary, Proxy};

/// A repository in a temp dir: the bundled examples plus `extra` files.
fn repo_with(extra: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, repo.join(path.file_name().unwrap())).unwrap();
    }
    for (name, bytes) in extra {
        std::fs::write(repo.join(name), bytes).unwrap();
    }
    tmp
}

fn file_upstream(tmp: &Path) -> String {
    format!("file://{}", tmp.join("repo").display())
}

/// 16 MiB: more than loopback's socket buffers hold for a client that does
/// not read.
fn big_body() -> Vec<u8> {
    (0..16u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// A connection whose receive buffer is tiny, so a client that stops reading
/// stalls the server at once.
fn slow_reader(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until a whole response head arrived; returns its status.
fn read_status(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("a response head");
        assert!(n > 0, "closed before a response head");
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The value of an unlabelled metric (0 when absent).
fn metric(admin: SocketAddr, name: &str) -> u64 {
    let text = request(admin, "GET", "/metrics", &[]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded, 20 s) until `metric` satisfies `done`; returns its value.
fn wait_for_metric(admin: SocketAddr, name: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(admin, name);
        if done(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// One listener, one instance.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_instance_on_a_served_port_fails_at_start() {
    let first = Proxy::examples();
    // Another upstream and cache dir, on the first one's port.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("repo")).unwrap();
    let mut cli = test_cli(&file_upstream(empty.path()), &empty.path().join("cache"));
    cli.server.listen = Some(first.addr.to_string());
    let cfg = chartcache::config::load(cli).unwrap();
    match chartcache::runtime::start(cfg, None) {
        Ok(second) => {
            second.shutdown();
            panic!(
                "a second server joined {} and split its clients",
                first.addr
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("already listens there"), "{msg}");
            assert!(msg.contains("--listen"), "{msg}");
        }
    }
    // Every answer still comes from the first (the second would say 404).
    for _ in 0..16 {
        assert_eq!(first.get("/index.yaml").status, 200);
    }
}

#[test]
fn the_binary_refuses_a_port_another_instance_serves() {
    let repo = examples_repo();
    let upstream = format!("file://{}", repo.display());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |dir: &Path, listen: &str| -> Vec<String> {
        [
            "--upstream",
            &upstream,
            "--listen",
            listen,
            "--admin",
            "127.0.0.1:0",
            "--cache-dir",
            dir.to_str().unwrap(),
            "--cache-size",
            "16MiB",
            "--workers",
            "2",
            "--no-access-log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let first_args = args(a.path(), "127.0.0.1:0");
    let first = Binary::start(
        &first_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    let second_args = args(b.path(), &first.addr.to_string());
    let (code, out) = common::proxy::run_binary(
        &second_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already listens there"), "{out}");
    assert_eq!(get(first.addr, "/index.yaml", &[]).status, 200);
    first.terminate();
}

// ---------------------------------------------------------------------------------------------
// Clients that stop reading.
// ---------------------------------------------------------------------------------------------

/// Readers of a bypassed 16 MiB object that stop reading hold their upstream
/// slots; cold misses and index revalidation still get theirs.
#[test]
fn stalled_pass_through_readers_leave_room_for_cold_misses() {
    let tmp = repo_with(&[("big-dev-1.0.0.tgz", big_body())]);
    let mut cli = test_cli(&file_upstream(tmp.path()), &tmp.path().join("cache"));
    cli.runtime.workers = Some(1);
    cli.repo.max_upstream_concurrency = Some(4);
    cli.repo.retry_deadline = Some("2s".into());
    let p = Proxy::start(cli);

    // More stalled readers than there are slots.
    let mut stalled: Vec<TcpStream> = (0..6).map(|_| slow_reader(p.addr)).collect();
    for s in &mut stalled {
        s.write_all(b"GET /big-dev-1.0.0.tgz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    // Each gets its head: 200 (streaming, stuck) or 504 (no pass-through slot).
    let statuses: Vec<u16> = stalled.iter_mut().map(read_status).collect();
    let streaming = statuses.iter().filter(|&&s| s == 200).count();
    assert!(streaming >= 1, "{statuses:?}");

    let miss = p.get("/hello-0.1.0.tgz");
    assert_eq!(
        (miss.status, miss.x_cache()),
        (200, "MISS"),
        "a cold miss behind {streaming} stalled pass-through readers ({statuses:?})"
    );
    let index = p.get("/index.yaml");
    assert_eq!(index.status, 200, "index behind stalled readers");
    assert_eq!(
        streaming, 2,
        "pass-through holds half of 4 slots: {statuses:?}"
    );
}

/// A client that stops reading is cut after `send_timeout`, on the
/// pass-through path and on the cached (sendfile) path, and counted.
#[test]
fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    let body = big_body();
    let tmp = repo_with(&[
        ("big-dev-1.0.0.tgz", body.clone()),
        ("big-1.0.0.tgz", body.clone()),
    ]);
    let mut cli = test_cli(&file_upstream(tmp.path()), &tmp.path().join("cache"));
    cli.cache.cache_size = Some("512MiB".into());
    cli.server.send_timeout = Some("1s".into());
    let p = Proxy::start(cli);
    // Cache the chart first (a reader that reads).
    let warm = p.get("/big-1.0.0.tgz");
    assert_eq!((warm.status, warm.body.len()), (200, body.len()));
    assert_eq!(p.get("/big-1.0.0.tgz").x_cache(), "HIT");

    for (n, path) in ["/big-dev-1.0.0.tgz", "/big-1.0.0.tgz"].iter().enumerate() {
        let mut s = slow_reader(p.addr);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_status(&mut s), 200, "{path}");
        // Stop reading until the server gave up on this client.
        let want = n as u64 + 1;
        let cut = wait_for_metric(p.admin, "chartcache_client_send_timeouts_total", |v| {
            v >= want
        });
        assert_eq!(cut, want, "{path}: the stalled client was not cut");
        let mut rest = Vec::new();
        let res = s.read_to_end(&mut rest);
        assert!(
            res.is_err() || rest.len() < body.len(),
            "{path}: the whole body arrived after all"
        );
    }
    assert_eq!(
        wait_for_metric(p.admin, "chartcache_connections_open", |v| v == 0),
        0,
        "cut connections are closed"
    );
    // Others are served as before.
    assert_eq!(p.get("/big-1.0.0.tgz").body.len(), body.len());
}

// ---------------------------------------------------------------------------------------------
// The admin port under slowloris.
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_probes_are_answered_while_slow_clients_hold_every_slot() {
    let p = Proxy::examples();
    // 40 connections that sent one byte of a request and then trickle.
    let slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(p.admin).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    for _ in 0..3 {
        let h = request(p.admin, "GET", "/healthz", &[]);
        assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    }
    assert_eq!(request(p.admin, "GET", "/readyz", &[]).status, 200);
    drop(slow);
}

/// The admin head deadline is absolute: a client that keeps trickling bytes
/// is answered 408 and closed, however steadily it sends.
#[test]
fn admin_head_deadline_is_absolute() {
    let p = Proxy::examples();
    let mut s = TcpStream::connect(p.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let started = Instant::now();
        let _ = writer.write_all(b"GET /healthz HTTP/1.1\r\nX-Pad: ");
        while started.elapsed() < Duration::from_secs(20) {
            if writer.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let (resp, _) = parse_response_at(&out, false)
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&out)));
    assert_eq!(resp.status, 408);
    let _ = s.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Lingering close.
// ---------------------------------------------------------------------------------------------

/// The server ends the connection while the client is still sending a body
/// it will not read; the client still gets the whole response and a clean
/// end of stream, not ECONNRESET.
#[test]
fn an_unread_request_body_does_not_reset_the_response() {
    let p = Proxy::examples();
    let chart = std::fs::read(examples_repo().join("hello-0.1.0.tgz")).unwrap();
    let body = vec![b'x'; 4 << 20];
    let cases: [(&str, u16); 3] = [
        // Served, then closed: too large to drain.
        ("GET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n", 200),
        // Chunked: never drained.
        ("GET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 200),
        // A refused head, with the bytes after it.
        ("GET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    ];
    for (head, status) in cases {
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = head.as_bytes().to_vec();
        req.extend_from_slice(&body);
        s.write_all(&req)
            .unwrap_or_else(|e| panic!("sending the body ({head:?}): {e}"));
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("reading the response ({head:?}): {e}"));
        let (resp, used) = parse_response_at(&out, false).expect("a response");
        assert_eq!(resp.status, status, "{head:?}");
        assert_eq!(used, out.len(), "one response, then the end");
        if status == 200 {
            assert!(resp.body == chart, "{head:?}: body differs");
        }
    }
    assert_eq!(p.get("/index.yaml").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Header bytes that reach the upstream.
// ---------------------------------------------------------------------------------------------

/// ASCII validators reach the upstream byte for byte; a value with non-ASCII
/// bytes is refused with 400 and never sent (never rewritten to U+FFFD).
#[test]
fn non_ascii_validators_are_refused_not_rewritten() {
    let upstream = common::spawn_raw_http(vec![
        b"HTTP/1.1 304 Not Modified\r\nETag: \"a~!\"\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let p = Proxy::start(test_cli(&upstream.endpoint, &tmp.path().join("cache")));
    let send = |value: &[u8]| -> u16 {
        let mut raw =
            b"GET /x-dev-1.tgz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nIf-None-Match: "
                .to_vec();
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n\r\n");
        let out = common::proxy::raw_exchange(p.addr, &raw);
        parse_response_at(&out, false).expect("a response").0.status
    };
    assert_eq!(send(b"\"a~!\""), 304);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let head = String::from_utf8(seen[0].clone())
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("if-none-match: \"a~!\"\r\n"), "{head}");

    for value in [&b"\"caf\xc3\xa9\""[..], b"\"\xff\"", b"\"a\", W/\"\x80\""] {
        assert_eq!(send(value), 400, "{value:?}");
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "nothing else reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// The open-file limit.
// ---------------------------------------------------------------------------------------------

/// Under a low open-file limit the binary caps client connections below it,
/// answers the ones over the cap with 503 (counted, logged once), and a cold
/// miss on an accepted connection still finds descriptors for the upstream
/// file and the cache.
#[test]
fn a_low_open_file_limit_keeps_room_for_a_cold_miss() {
    // This process opens a few hundred sockets too.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(4096).max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let tmp = tempfile::tempdir().unwrap();
    let upstream = format!("file://{}", examples_repo().display());
    let cache = tmp.path().join("cache");
    let bin = Binary::start_with_nofile(
        &[
            "--upstream",
            &upstream,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--cache-size",
            "16MiB",
            "--workers",
            "1",
            "--max-upstream-concurrency",
            "4",
            "--no-access-log",
        ],
        &[],
        Some((128, 256)),
    );
    let total = 300usize;
    let mut conns: Vec<TcpStream> = (0..total)
        .map(|_| TcpStream::connect(bin.addr).unwrap())
        .collect();
    for c in &conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    // The last one is over the cap: told so unasked (and by then every one
    // before it was accepted).
    let last = conns.last_mut().unwrap();
    let mut out = Vec::new();
    let _ = last.read_to_end(&mut out);
    let (resp, _) = parse_response_at(&out, false).unwrap_or_else(|| {
        panic!(
            "no answer over the cap: {:?}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(resp.status, 503);
    assert_eq!(resp.x_cache(), "NONE");
    assert_eq!(
        resp.header("cache-status"),
        Some("chartcache; detail=local")
    );

    // A cold miss on an accepted connection.
    let first = &mut conns[0];
    first
        .write_all(b"GET /hello-0.1.0.tgz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    first.read_to_end(&mut out).unwrap();
    let (resp, _) = parse_response_at(&out, false).expect("a response");
    assert_eq!((resp.status, resp.x_cache()), (200, "MISS"));

    // The figures, in the startup line.
    assert_eq!(
        bin.startup["fd_limit"], 256,
        "soft limit raised to the hard one"
    );
    let max = bin.startup["max_connections"].as_u64().unwrap();
    assert!((1..200).contains(&max), "max_connections {max}");
    let rejected = metric(bin.admin, "chartcache_connections_rejected_total");
    assert!(
        rejected >= (total as u64).saturating_sub(max),
        "{rejected} rejected, max {max}"
    );
    drop(conns);
    let lines = bin.log.lock().unwrap().clone();
    let limit_lines = lines
        .iter()
        .filter(|l| l.contains("client connection limit reached"))
        .count();
    assert_eq!(
        limit_lines, 1,
        "logged once, not per connection: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("accept failed")),
        "the reserve keeps accept() clear of EMFILE: {lines:#?}"
    );
    bin.terminate();
}

//! Objects larger than a segment (issue 11, item 9): up to `--max-object-size`
//! they are kept (in a segment of their own); above it they are still fetched
//! once for every client asking while the fetch runs, and streamed to all of
//! them from a spool, just not kept. Bodies of unknown length (chunked) larger
//! than what is buffered in memory (8 MiB) are handled the same way.
//!
//! The upstream here sends the first half of a body, then holds the rest until
//! the test has seen all 50 clients join the fill (the coalesced-waiters
//! metric), so "50 clients → 1 GET" does not depend on timing.
//!
//! Sizes: a 96 MiB cache over 2 workers is 48 MiB per shard, so segments are
//! 6 MiB and the largest kept object 12 MiB (a quarter of the shard).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{test_cli, Proxy};

const MIB: usize = 1 << 20;
const CLIENTS: usize = 50;

struct Object {
    body: Vec<u8>,
    chunked: bool,
}

/// An upstream that counts GETs per path and holds each body's second half
/// until `release`.
struct GatedUpstream {
    url: String,
    gets: Arc<Mutex<HashMap<String, u64>>>,
    release: Arc<AtomicBool>,
}

impl GatedUpstream {
    fn gets(&self, path: &str) -> u64 {
        self.gets.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn spawn_gated(objects: HashMap<&'static str, Object>) -> GatedUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let objects = Arc::new(objects);
    let gets = Arc::new(Mutex::new(HashMap::new()));
    let release = Arc::new(AtomicBool::new(false));
    let (g, r) = (gets.clone(), release.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (objects, gets, release) = (objects.clone(), g.clone(), r.clone());
            std::thread::spawn(move || serve(stream, &objects, &gets, &release));
        }
    });
    GatedUpstream { url, gets, release }
}

fn serve(
    mut s: TcpStream,
    objects: &HashMap<&'static str, Object>,
    gets: &Mutex<HashMap<String, u64>>,
    release: &AtomicBool,
) {
    let Some(path) = common::read_request_target(&mut s, Duration::from_secs(30)) else {
        return;
    };
    *gets.lock().unwrap().entry(path.clone()).or_default() += 1;
    let Some(obj) = objects.get(path.as_str()) else {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let framing = if obj.chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", obj.body.len())
    };
    let h = format!(
        "HTTP/1.1 200 OK\r\n{framing}\r\nContent-Type: application/gzip\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(h.as_bytes()).is_err() {
        return;
    }
    let (first, rest) = obj.body.split_at(obj.body.len() / 2);
    let send = |s: &mut TcpStream, part: &[u8]| -> std::io::Result<()> {
        for piece in part.chunks(256 * 1024) {
            if obj.chunked {
                s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                s.write_all(piece)?;
                s.write_all(b"\r\n")?;
            } else {
                s.write_all(piece)?;
            }
        }
        Ok(())
    };
    if send(&mut s, first).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if send(&mut s, rest).is_err() {
        return;
    }
    if obj.chunked {
        let _ = s.write_all(b"0\r\n\r\n");
    }
}

fn object_bytes(seed: u64, len: usize) -> Vec<u8> {
    common::object_bytes(seed, len)
}

/// chartcache (96 MiB cache, 2 workers: 6 MiB segments, 12 MiB largest kept
/// object) in front of `upstream`, with room for 50 slow clients.
fn proxy(upstream: &str) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(upstream, &tmp.path().join("cache"));
    cli.cache.cache_size = Some("96MiB".into());
    cli.repo.upstream_timeout = Some("20s".into());
    cli.repo.retry_deadline = Some("30s".into());
    Proxy::start_in(cli, Some(tmp))
}

/// 50 concurrent clients of `path`: once all have joined the fill, the
/// upstream sends the rest; every client gets the whole body.
fn storm(p: &Proxy, up: &GatedUpstream, path: &'static str, body: &Arc<Vec<u8>>) {
    up.release.store(false, Ordering::SeqCst);
    let waiters_before = p.metric("chartcache_coalesced_waiters_total");
    let addr = p.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| std::thread::spawn(move || common::proxy::get(addr, path, &[])))
        .collect();
    let joined = p.metric_until("chartcache_coalesced_waiters_total", |v| {
        v >= waiters_before + CLIENTS as u64 - 1
    });
    assert_eq!(
        joined - waiters_before,
        CLIENTS as u64 - 1,
        "{path}: every client but the leader joined the one fill"
    );
    up.release.store(true, Ordering::SeqCst);
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.body.len(), body.len(), "{path}: a complete body");
        assert!(r.body == **body, "{path}: the right bytes");
    }
    assert_eq!(
        up.gets(path),
        1,
        "{path}: {CLIENTS} clients, one upstream GET"
    );
}

#[test]
fn large_objects_are_kept_up_to_max_object_size_and_coalesced_above_it() {
    let cases: [(&'static str, usize, bool, bool); 4] = [
        // path, size, chunked, kept
        ("/big-1.0.0.tgz", 9 * MIB, false, true),
        ("/huge-1.0.0.tgz", 14 * MIB, false, false),
        ("/chunked-1.0.0.tgz", 10 * MIB, true, true),
        ("/chunked-huge-1.0.0.tgz", 13 * MIB, true, false),
    ];
    let objects = cases
        .iter()
        .enumerate()
        .map(|(i, &(path, len, chunked, _))| {
            let body = object_bytes(i as u64, len);
            (path, Object { body, chunked })
        })
        .collect::<HashMap<_, _>>();
    let bodies: HashMap<&str, Arc<Vec<u8>>> = objects
        .iter()
        .map(|(&k, o)| (k, Arc::new(o.body.clone())))
        .collect();
    let up = spawn_gated(objects);
    let p = proxy(&up.url);
    let mut not_kept = 0;
    for (path, _, _, kept) in cases {
        let body = &bodies[path];
        storm(&p, &up, path, body);
        up.release.store(true, Ordering::SeqCst);
        let again = p.get(path);
        assert_eq!(again.status, 200);
        assert!(again.body == **body, "{path}: the right bytes again");
        if kept {
            assert_eq!(again.x_cache(), "HIT", "{path}: kept");
            assert_eq!(up.gets(path), 1, "{path}: served from the cache");
        } else {
            not_kept += 1;
            assert_eq!(again.x_cache(), "MISS", "{path}: not kept");
            assert_eq!(up.gets(path), 2, "{path}: fetched again, not kept");
        }
    }
    assert_eq!(
        p.metric_until("chartcache_cache_spooled_total", |v| v >= 2 * not_kept),
        2 * not_kept,
        "each fetch of an object above max-object-size went through a spool"
    );
    // Spools go with their last reader; the cache stays within its budget.
    assert_eq!(
        p.metric_until("chartcache_cache_spool_bytes", |v| v == 0),
        0
    );
    assert!(p.metric("chartcache_cache_bytes") <= 96 * MIB as u64);
}

/// Chunked chart bodies are checked against the index digest like sized ones:
/// a mismatch is served once (`BYPASS`) and never kept, also when the body was
/// spooled; a match is kept.
#[test]
fn chunked_charts_are_digest_checked_in_memory_and_spooled() {
    let sha = |b: &[u8]| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let good = object_bytes(20, 9 * MIB); // spooled (over 8 MiB), then kept
    let small_bad = object_bytes(21, 20_000);
    let big_bad = object_bytes(22, 9 * MIB);
    let entry = |name: &str, digest: &str| {
        format!("  {name}:\n  - name: {name}\n    version: 1.0.0\n    digest: {digest}\n    urls:\n    - {name}-1.0.0.tgz\n")
    };
    let index = format!(
        "apiVersion: v1\nentries:\n{}{}{}",
        entry("good", &sha(&good)),
        entry("smallbad", &sha(b"other bytes")),
        entry("bigbad", &sha(b"other bytes")),
    );
    let objects = HashMap::from([
        (
            "/index.yaml",
            Object {
                body: index.into_bytes(),
                chunked: false,
            },
        ),
        (
            "/good-1.0.0.tgz",
            Object {
                body: good.clone(),
                chunked: true,
            },
        ),
        (
            "/smallbad-1.0.0.tgz",
            Object {
                body: small_bad.clone(),
                chunked: true,
            },
        ),
        (
            "/bigbad-1.0.0.tgz",
            Object {
                body: big_bad.clone(),
                chunked: true,
            },
        ),
    ]);
    let up = spawn_gated(objects);
    up.release.store(true, Ordering::SeqCst);
    let p = proxy(&up.url);
    assert_eq!(p.get("/index.yaml").status, 200);
    for (path, body) in [
        ("/smallbad-1.0.0.tgz", &small_bad),
        ("/bigbad-1.0.0.tgz", &big_bad),
    ] {
        for round in 1..=2 {
            let r = p.get(path);
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.x_cache(), "BYPASS", "{path}: served once, unverified");
            assert!(r.body == *body, "{path}: the bytes upstream sent");
            assert_eq!(up.gets(path), round, "{path}: never kept");
        }
    }
    assert_eq!(p.metric("chartcache_chart_digest_mismatches_total"), 4);
    assert_eq!(p.get("/good-1.0.0.tgz").x_cache(), "MISS");
    let hit = p.get("/good-1.0.0.tgz");
    assert_eq!(hit.x_cache(), "HIT", "a verified chunked body is kept");
    assert!(hit.body == good);
    assert_eq!(up.gets("/good-1.0.0.tgz"), 1);
}

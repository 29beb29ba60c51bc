//! Hostile disks under a running server: segment files truncated by someone else
//! (records never served yet, and records already verified and served), and the
//! disk space evicted segments hold. The server runs in this process, so a
//! SIGBUS from a read past a shrunk file would kill the test binary.
//! (A full device is tests/disk_full.rs: it needs a tmpfs mount.)

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::proxy::{parse_response, raw_exchange, test_cli, Proxy, Response};

struct Obj {
    path: String,
    body: Vec<u8>,
}

/// A file:// upstream with `n` charts; small ones go out by `writev` from the
/// mapping, large ones (≥ 16 KiB) by `sendfile`.
fn upstream(n: u64, size: impl Fn(u64) -> usize) -> (tempfile::TempDir, Vec<Obj>) {
    let dir = tempfile::tempdir().unwrap();
    let objs: Vec<Obj> = (0..n)
        .map(|i| Obj {
            path: format!("/chart-{i}.tgz"),
            body: common::object_bytes(i, size(i)),
        })
        .collect();
    for o in &objs {
        std::fs::write(dir.path().join(&o.path[1..]), &o.body).unwrap();
    }
    (dir, objs)
}

fn cli(up: &Path, cache: &Path) -> chartcache::config::Cli {
    test_cli(&format!("file://{}", up.display()), cache)
}

/// One GET; `None` when the connection closed before a whole response came.
fn try_get(p: &Proxy, path: &str) -> Option<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(p.addr, req.as_bytes());
    let r = parse_response(&raw, false)?;
    let want: usize = r.header("content-length")?.parse().ok()?;
    (r.body.len() == want).then_some(r)
}

fn get_ok(p: &Proxy, o: &Obj) -> Response {
    let r = try_get(p, &o.path).unwrap_or_else(|| panic!("{}: broken response", o.path));
    assert_eq!(r.status, 200, "{}", o.path);
    assert!(r.body == o.body, "{}: wrong bytes", o.path);
    r
}

/// Where each object's body starts in the segment files (found by content).
fn locate(cache: &Path, objs: &[Obj]) -> Vec<(PathBuf, u64)> {
    let mut segs = Vec::new();
    for shard in std::fs::read_dir(cache).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "seg") {
                let bytes = std::fs::read(&f).unwrap();
                let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                segs.push((f, bytes[..used].to_vec()));
            }
        }
    }
    objs.iter()
        .map(|o| {
            let needle = &o.body[..32];
            segs.iter()
                .find_map(|(f, bytes)| {
                    bytes
                        .windows(32)
                        .position(|w| w == needle)
                        .map(|at| (f.clone(), at as u64))
                })
                .unwrap_or_else(|| panic!("{} not in any segment", o.path))
        })
        .collect()
}

/// Cuts every segment holding objects at the body of its middle small object
/// (by offset; small bodies, sent with writev from the mapping, do not start on
/// a page boundary, so the rest of the page the file now ends in reads as
/// zeros through the mapping, with no fault): that one and the later ones are
/// gone. Returns which objects are, and how many files were cut.
fn truncate_segments(cache: &Path, objs: &[Obj]) -> (Vec<bool>, u64) {
    let at = locate(cache, objs);
    let files: HashSet<PathBuf> = at.iter().map(|(f, _)| f.clone()).collect();
    let mut cut = vec![false; objs.len()];
    let n = files.len() as u64;
    for f in files {
        let in_file = |small: bool| {
            let mut offsets: Vec<u64> = at
                .iter()
                .zip(objs)
                .filter(|((g, _), o)| *g == f && (!small || o.body.len() < 16 * 1024))
                .map(|((_, off), _)| *off)
                .collect();
            offsets.sort_unstable();
            offsets
        };
        let offsets = match in_file(true) {
            small if !small.is_empty() => small,
            _ => in_file(false),
        };
        let len = offsets[offsets.len() / 2];
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_len(len).unwrap();
        for (i, (g, o)) in at.iter().enumerate() {
            cut[i] |= *g == f && *o >= len;
        }
    }
    (cut, n)
}

fn size(i: u64) -> usize {
    if i % 2 == 0 {
        3000 + i as usize * 17
    } else {
        40_000 + i as usize * 101
    }
}

/// Records filled by this process are verified at commit and sent without
/// another look: the send itself finds the cut (EFAULT / sendfile EOF). The
/// client of that send sees its connection closed, once per segment; every
/// record past the cut is dropped then, so they all come back MISS with the
/// right bytes, and the records before the cut stay HITs.
#[test]
fn truncated_segment_under_verified_records_is_dropped_once_and_refetched() {
    truncated_under_verified_records(None);
}

/// The same with the epoll driver: `writev` as a plain syscall.
#[test]
fn truncated_segment_under_verified_records_epoll() {
    truncated_under_verified_records(Some("epoll"));
}

fn truncated_under_verified_records(driver: Option<&str>) {
    let (up, objs) = upstream(24, size);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut c = cli(up.path(), &cache);
    // `None`: this build's driver, as `test_cli` set it.
    if let Some(driver) = driver {
        c.runtime.driver = Some(driver.to_string());
    }
    let p = Proxy::start(c);
    for o in &objs {
        assert_eq!(get_ok(&p, o).x_cache(), "MISS");
    }
    for o in &objs {
        assert_eq!(get_ok(&p, o).x_cache(), "HIT");
    }
    let (cut, files) = truncate_segments(&cache, &objs);
    let records = cut.iter().filter(|&&c| c).count();
    assert!(records > 0 && cut.iter().any(|&c| !c));

    let mut broken = 0;
    for (o, &gone) in objs.iter().zip(&cut) {
        let r = match try_get(&p, &o.path) {
            Some(r) => r,
            None => {
                assert!(gone, "{}: intact record not served", o.path);
                broken += 1;
                get_ok(&p, o)
            }
        };
        assert!(r.body == o.body, "{}: wrong bytes", o.path);
        let want = if gone { "MISS" } else { "HIT" };
        assert_eq!(r.x_cache(), want, "{}", o.path);
    }
    // At most one broken response per truncated segment file.
    assert!(broken as u64 <= files, "{broken} broken responses");
    // Everything is cached again (the refetched ones in a new segment).
    for o in &objs {
        assert_eq!(get_ok(&p, o).x_cache(), "HIT", "{}", o.path);
    }
    let n = p.metric_until("chartcache_cache_truncated_segments_total", |v| v >= files);
    assert_eq!(n, files, "truncated segments counted once each");
    let dropped = p.metric_until("chartcache_cache_truncated_records_dropped_total", |v| {
        v >= records as u64
    });
    assert_eq!(dropped, records as u64);
    eprintln!(
        "truncated (verified, driver {driver:?}): {records} of {} records cut in {files} segments, {broken} broken responses, all refetched, the rest HITs",
        objs.len()
    );
}

/// After a restart nothing is verified yet: the first request of each record
/// reads it back (`pread`), finds the cut and refetches — no broken response at
/// all, and the records before the cut are HITs.
#[test]
fn truncated_segment_under_unverified_records_refetches_without_a_broken_response() {
    let (up, objs) = upstream(24, size);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut p = Proxy::start(cli(up.path(), &cache));
    for o in &objs {
        assert_eq!(get_ok(&p, o).x_cache(), "MISS");
    }
    p.stop();
    drop(p);
    let p = Proxy::start(cli(up.path(), &cache));
    // The server has mapped its segments; now someone cuts them.
    let (cut, files) = truncate_segments(&cache, &objs);
    for (o, &gone) in objs.iter().zip(&cut) {
        let r = get_ok(&p, o);
        let want = if gone { "MISS" } else { "HIT" };
        assert_eq!(r.x_cache(), want, "{}", o.path);
    }
    for o in &objs {
        assert_eq!(get_ok(&p, o).x_cache(), "HIT", "{}", o.path);
    }
    let n = p.metric_until("chartcache_cache_truncated_segments_total", |v| v >= files);
    assert_eq!(n, files);
    eprintln!(
        "truncated (unverified): {} of {} records cut, 0 broken responses, all refetched",
        cut.iter().filter(|&&c| c).count(),
        objs.len()
    );
}

/// Bytes the cache takes on disk: its files, and files it still holds open
/// after unlinking them (read from /proc/self/fd: the server runs in this
/// process), each counted once, by allocated blocks.
fn disk_use(cache: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut count = |m: std::fs::Metadata| {
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
    };
    for shard in std::fs::read_dir(cache).unwrap() {
        let shard = shard.unwrap().path();
        if shard.is_dir() {
            for f in std::fs::read_dir(&shard).unwrap() {
                if let Ok(m) = f.unwrap().metadata() {
                    count(m);
                }
            }
        }
    }
    for fd in std::fs::read_dir("/proc/self/fd").unwrap() {
        let fd = fd.unwrap().path();
        let Ok(target) = std::fs::read_link(&fd) else {
            continue;
        };
        if target.starts_with(cache) {
            if let Ok(m) = std::fs::metadata(&fd) {
                count(m);
            }
        }
    }
    total
}

/// A 16 MiB cache (2 workers: 8 MiB shards of 1 MiB segments, ~3 charts each)
/// filled ~2.6 times over: evicted segments give their blocks back at once, so
/// the cache never takes more than its size plus one segment per worker. (Left
/// to the last reference to close them, unlinked segments piled up to 35 MiB.)
#[test]
fn evicted_segments_give_their_space_back() {
    const MIB: u64 = 1 << 20;
    let (up, objs) = upstream(130, |i| 330_000 + (i as usize % 7) * 1000);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut c = cli(up.path(), &cache);
    c.cache.cache_size = Some("16MiB".into());
    let p = Proxy::start(c);
    let bound = 16 * MIB + 2 * MIB;
    let mut max = 0;
    for (i, o) in objs.iter().enumerate() {
        get_ok(&p, o);
        if i % 5 == 0 {
            // Hot: looked up again, kept by the second chance.
            assert_eq!(get_ok(&p, &objs[0]).status, 200);
        }
        if i % 10 == 9 {
            let used = disk_use(&cache);
            max = max.max(used);
            assert!(
                used <= bound,
                "after {} objects the cache takes {used} bytes (bound {bound})",
                i + 1
            );
        }
    }
    let evictions = p.metric_until("chartcache_cache_evictions_total", |v| v > 0);
    assert!(evictions > 0, "the cache went round");
    eprintln!(
        "space: at most {:.1} MiB on disk for a 16 MiB cache (bound {} MiB), {} objects evicted",
        max as f64 / MIB as f64,
        bound / MIB,
        evictions
    );
}

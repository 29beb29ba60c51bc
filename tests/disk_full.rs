//! A really full cache device: the cache directory on a small tmpfs, filled up
//! by someone else. Everything cached keeps being served, nothing is evicted
//! for it, new objects pass through uncached, `/readyz` stays 200 and says so,
//! the metrics show it, and once space comes back new objects are cached
//! again.
//!
//! Its own harness (`harness = false`, [`common::harness`]): mounting a tmpfs
//! needs root (CI runs as root). Without it the test is reported ignored, never
//! passed; under `CI` it runs and fails.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proxy::{get, test_cli, Proxy, Response};
use libtest_mimic::Failed;

pub fn main() {
    common::harness::run_needing(
        "a tmpfs mount",
        || {
            let probe = match tempfile::tempdir() {
                Ok(t) => t,
                Err(e) => return Some(format!("no temp dir: {e}")),
            };
            let mounted = Tmpfs::mount(&probe.path().join("probe"), 1 << 20);
            mounted.err()
        },
        vec![(
            "disk_full_keeps_serving_and_passes_new_objects_through",
            disk_full,
        )],
    )
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: u64) -> Result<Tmpfs, String> {
        // SAFETY: plain syscall, no memory passed.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (mounting a tmpfs needs CAP_SYS_ADMIN)".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let target = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let opts = CString::new(format!("size={size},mode=0700")).map_err(|e| e.to_string())?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn check(r: &Response, want: &[u8], what: &str) -> Result<(), Failed> {
    if r.status != 200 || r.body != want {
        return Err(format!("{what}: status {}, {} bytes", r.status, r.body.len()).into());
    }
    Ok(())
}

/// Polls `f` (every 50 ms, at most 10 s) until it holds.
fn until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn disk_full() -> Result<(), Failed> {
    const MIB: usize = 1 << 20;
    let tmp = tempfile::tempdir()?;
    let mnt = tmp.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, 24 << 20)?;
    let up = tmp.path().join("upstream");
    std::fs::create_dir(&up)?;
    // 10 charts cached before the disk fills, 10 asked for after.
    let old: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                format!("/old-{i}.tgz"),
                common::object_bytes(i, 200_000 + i as usize),
            )
        })
        .collect();
    let new: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                format!("/new-{i}.tgz"),
                common::object_bytes(100 + i, 3 * MIB / 2 + i as usize),
            )
        })
        .collect();
    for (path, b) in old.iter().chain(&new) {
        std::fs::write(up.join(&path[1..]), b)?;
    }
    // 64 MiB over 2 workers: 4 MiB segments, far more than the 24 MiB device holds.
    let mut cli = test_cli(&format!("file://{}", up.display()), &mnt.join("cache"));
    cli.cache.cache_size = Some("64MiB".into());
    let p = Proxy::start(cli);
    for (path, b) in &old {
        let r = p.get(path);
        check(&r, b, path)?;
        if r.x_cache() != "MISS" {
            return Err(format!("{path}: {} before the disk filled", r.x_cache()).into());
        }
    }

    // Someone else fills the device.
    let filler_path = mnt.join("filler");
    let mut filler = std::fs::File::create(&filler_path)?;
    let chunk = vec![0x5au8; MIB];
    let mut filled = 0;
    loop {
        match filler.write(&chunk) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    drop(filler);

    // New charts: each is served (what fits in space the cache already holds is
    // cached, the rest passes through), twice.
    for _ in 0..2 {
        for (path, b) in &new {
            check(&p.get(path), b, path)?;
        }
    }
    let mut served = 0;
    for (path, b) in &old {
        let r = p.get(path);
        check(&r, b, path)?;
        if r.x_cache() != "HIT" {
            return Err(format!("{path}: {} while the disk is full", r.x_cache()).into());
        }
        served += 1;
    }
    if !until(|| p.metric("chartcache_cache_disk_full") >= 1) {
        return Err("chartcache_cache_disk_full never went up".into());
    }
    let evicted = p.metric("chartcache_cache_evictions_total");
    if evicted != 0 {
        return Err(format!("{evicted} objects evicted for a full disk").into());
    }
    if p.metric("chartcache_cache_no_space_errors_total") == 0 {
        return Err("no ENOSPC counted".into());
    }
    let ready = get(p.admin, "/readyz", &[]);
    let text = ready.text();
    if ready.status != 200 || !text.contains("degraded") || !text.contains("full") {
        return Err(format!("/readyz while the disk is full: {} {text}", ready.status).into());
    }
    let uncached = new
        .iter()
        .filter(|(path, _)| p.get(path).x_cache() != "HIT")
        .count();
    eprintln!(
        "disk full ({} MiB filled by someone else): {served} of {} objects still served, {evicted} evicted, {uncached} of {} new ones passed through",
        filled / MIB,
        old.len(),
        new.len()
    );
    if uncached == 0 {
        return Err("every new object was cached on a full disk?".into());
    }

    // Space comes back: within the retry interval, new objects are cached again.
    std::fs::remove_file(&filler_path)?;
    let (path, b) = new
        .iter()
        .find(|(path, _)| p.get(path).x_cache() != "HIT")
        .ok_or("nothing left uncached")?;
    let cached = until(|| {
        let r = p.get(path);
        r.status == 200 && r.body == *b && r.x_cache() == "HIT"
    });
    if !cached {
        return Err(format!("{path} not cached after the space came back").into());
    }
    if !until(|| p.metric("chartcache_cache_disk_full") == 0) {
        return Err("chartcache_cache_disk_full stayed up".into());
    }
    let ready = get(p.admin, "/readyz", &[]).text();
    if ready != "ready\n" {
        return Err(format!("/readyz after the space came back: {ready}").into());
    }
    for (path, b) in &old {
        check(&p.get(path), b, path)?;
    }
    Ok(())
}

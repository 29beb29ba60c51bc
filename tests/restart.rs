//! The real binary, restarted: a clean restart and a `kill -9` keep the cache
//! warm and correct; flipped bits in any cache file are never served; startup
//! errors name their fix.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::proxy::{get, run_binary, s3_args, strs, Binary, AK, S3_ENV, SK};
use common::spawn_s3;

const BUCKET: &str = "charts";

fn body_for(i: usize) -> Vec<u8> {
    let len = 1_000 + (i * 7_919) % 150_000;
    (0..len).map(|j| ((i * 131 + j * 17) % 251) as u8).collect()
}

fn start(s3: &common::S3Server, cache_dir: &Path) -> Binary {
    Binary::start(
        &strs(&s3_args(
            s3,
            cache_dir,
            &[
                "--cache-size",
                "256MiB",
                "--workers",
                "2",
                "--no-access-log",
            ],
        )),
        &S3_ENV,
    )
}

/// An S3 server holding `c-0.tgz` .. `c-{n-1}.tgz` (`body_for`), and the binary
/// started against it on a fresh cache directory.
fn charts_served(n: usize) -> (common::S3Server, tempfile::TempDir, Binary) {
    let s3 = spawn_s3(AK, SK);
    for i in 0..n {
        s3.put_object(BUCKET, &format!("c-{i}.tgz"), &body_for(i));
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = start(&s3, tmp.path());
    (s3, tmp, bin)
}

fn total_gets(s3: &common::S3Server, n: usize) -> u64 {
    (0..n)
        .map(|i| s3.get_count(&format!("/charts/c-{i}.tgz")))
        .sum()
}

#[test]
fn clean_restart_keeps_every_object() {
    let n = 40;
    let (s3, tmp, bin) = charts_served(n);
    for i in 0..n {
        let r = get(bin.addr, &format!("/c-{i}.tgz"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body_for(i));
    }
    assert_eq!(total_gets(&s3, n), n as u64);
    let status = bin.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    let bin = start(&s3, tmp.path());
    for i in 0..n {
        let r = get(bin.addr, &format!("/c-{i}.tgz"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "HIT", "object {i} after restart");
        assert_eq!(r.body, body_for(i));
    }
    assert_eq!(
        total_gets(&s3, n),
        n as u64,
        "no upstream request after restart"
    );
}

#[test]
fn kill_9_during_fills_then_restart_answers_correctly() {
    let n = 120;
    let (s3, tmp, bin) = charts_served(n);
    let addr = bin.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::SeqCst) && i < n {
                    // Errors are expected once the process is killed.
                    let _ = std::panic::catch_unwind(|| get(addr, &format!("/c-{i}.tgz"), &[]));
                    i += 4;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(150));
    bin.kill9();
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        let _ = l.join();
    }

    let bin = start(&s3, tmp.path());
    for i in 0..n {
        let r = get(bin.addr, &format!("/c-{i}.tgz"), &[]);
        assert_eq!(r.status, 200, "object {i}");
        assert!(
            r.body == body_for(i),
            "object {i}: wrong bytes after kill -9 ({})",
            r.x_cache()
        );
    }
}

/// xorshift, so the flips are reproducible.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn cache_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            cache_files(&p, out);
        } else if !p.ends_with("LOCK") && !p.ends_with("LAYOUT") {
            out.push(p);
        }
    }
}

#[test]
fn flipped_bits_in_any_cache_file_are_never_served() {
    let n = 30;
    let (s3, tmp, bin) = charts_served(n);
    for i in 0..n {
        assert_eq!(get(bin.addr, &format!("/c-{i}.tgz"), &[]).status, 200);
    }
    assert!(bin.terminate().success());

    for round in 0..3u64 {
        // Flip bits in the written part of every cache file.
        let mut files = Vec::new();
        cache_files(tmp.path(), &mut files);
        assert!(!files.is_empty());
        let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (round + 1);
        for f in &files {
            let mut bytes = std::fs::read(f).unwrap();
            let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            if used == 0 {
                continue;
            }
            for _ in 0..40 {
                let at = (rng(&mut seed) as usize) % used;
                bytes[at] ^= 1 << (rng(&mut seed) % 8);
            }
            std::fs::write(f, &bytes).unwrap();
        }
        let bin = start(&s3, tmp.path());
        for i in 0..n {
            let r = get(bin.addr, &format!("/c-{i}.tgz"), &[]);
            assert_eq!(r.status, 200, "round {round} object {i}");
            assert!(
                r.body == body_for(i),
                "round {round} object {i}: corrupt bytes served ({})",
                r.x_cache()
            );
        }
        assert!(bin.terminate().success());
    }
}

#[test]
fn second_process_on_the_same_cache_dir_is_refused() {
    let s3 = spawn_s3(AK, SK);
    let tmp = tempfile::tempdir().unwrap();
    let _first = start(&s3, tmp.path());
    let (code, out) = run_binary(&strs(&s3_args(&s3, tmp.path(), &[])), &S3_ENV);
    assert_ne!(code, 0);
    assert!(
        out.contains("in use by another chartcache process"),
        "{out}"
    );
}

#[test]
fn startup_errors_name_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();

    // No credentials for an S3 upstream.
    let (code, out) = run_binary(
        &[
            "--upstream",
            "s3://charts",
            "--cache-dir",
            dir,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(out.contains("AWS_ACCESS_KEY_ID"), "{out}");

    // Invalid config: every field named.
    let (code, out) = run_binary(
        &[
            "--listen",
            "nowhere",
            "--cache-size",
            "lots",
            "--upstream",
            "gopher://x",
        ],
        &[],
    );
    assert_eq!(code, 2);
    for needle in ["listen:", "cache_size:", "upstream:"] {
        assert!(out.contains(needle), "{needle} in {out}");
    }

    // A cache dir that cannot be created (a path under a regular file).
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("cache");
    let (code, out) = run_binary(
        &[
            "--upstream",
            &format!("file://{}", common::proxy::examples_repo().display()),
            "--cache-dir",
            bad.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(out.contains("--cache-dir"), "{out}");

    // Unknown TOML key.
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "upstream = \"s3://charts\"\ncache_sise = \"1GiB\"\n").unwrap();
    let (code, out) = run_binary(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(out.contains("cache_sise"), "{out}");
}

#[test]
fn help_explains_the_flags() {
    let (code, out) = run_binary(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--upstream",
        "--s3-endpoint",
        "--cache-dir",
        "--cache-size",
        "--workers",
        "CHARTCACHE_UPSTREAM",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help");
    }
}

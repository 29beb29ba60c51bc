//! The big-repository scripts of `loadtest/` (`gen_bigrepo.py`, `republish.py`), run for real
//! with `python3`: the generator is deterministic per seed, its digests match its archives and
//! its YAML and JSON forms agree (its own `--check`), every path of the load set it names is a
//! file the load generator can fetch (served by `chartcache-loadtest floor`), and a republish
//! changes the index's bytes but not its entries.
//!
//! Needs `python3` (stdlib only; PyYAML makes `--check` stricter when present).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn loadtest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p =
            std::env::temp_dir().join(format!("cc-bigrepo-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child on drop (a failed assertion must not leave a server running).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `python3 loadtest/SCRIPT ARGS…` and returns its stdout; panics with its output on failure.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(loadtest_dir().join(script))
        .args(args)
        .output()
        .expect("running python3 (is it installed?)");
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn generate(dir: &Path, seed: &str, tgz: &str) -> PathBuf {
    let charts = dir.join("s3/charts");
    python(
        "gen_bigrepo.py",
        &[
            charts.to_str().expect("utf-8 path"),
            "--versions",
            "400",
            "--charts",
            "12",
            "--load-charts",
            "60",
            "--tgz",
            tgz,
            "--json-dir",
            "json",
            "--seed",
            seed,
            "--check",
        ],
    );
    charts
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn generator_is_deterministic_and_consistent() {
    let (a, b, c) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
    let ia = generate(&a.0, "7", "all").join("index.yaml");
    let ib = generate(&b.0, "7", "load").join("index.yaml");
    let ic = generate(&c.0, "8", "load").join("index.yaml");
    let text = read(&ia);
    assert_eq!(
        text,
        read(&ib),
        "same seed, different index (or --tgz changed it)"
    );
    assert_ne!(text, read(&ic), "another seed gave the same index");
    let text = String::from_utf8(text).expect("utf-8 index");
    let urls = text.lines().filter(|l| l.ends_with(".tgz")).count();
    let digests = text
        .lines()
        .filter(|l| l.starts_with("    digest: "))
        .count();
    assert_eq!(
        (urls, digests),
        (400, 400),
        "one URL and one digest per version"
    );
    assert!(text.starts_with("apiVersion: v1\nentries:\n"));
    assert!(text
        .trim_end()
        .rsplit('\n')
        .next()
        .is_some_and(|l| l.starts_with("generated: ")));
    let paths = std::fs::read_to_string(a.0.join("s3/load-paths.txt")).expect("load-paths.txt");
    assert_eq!(paths.lines().count(), 60);
    for p in paths.lines() {
        let name = p.strip_prefix('/').expect("paths start with /");
        assert!(
            text.contains(&format!("    - {name}\n")),
            "{name} is not in the index"
        );
    }
}

#[test]
fn load_set_is_served_and_fetched() {
    let dir = TempDir::new("floor");
    let charts = generate(&dir.0, "3", "load");
    let bin = env!("CARGO_BIN_EXE_chartcache-loadtest");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let floor = KillOnDrop(
        Command::new(bin)
            .args([
                "floor",
                "--workers",
                "1",
                "--listen",
                &addr.to_string(),
                "--root",
            ])
            .arg(&charts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the floor"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the floor did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(bin)
        .args([
            "--url",
            &format!("http://{addr}"),
            "--warm-only",
            "--paths-file",
        ])
        .arg(dir.0.join("s3/load-paths.txt"))
        .output()
        .expect("running the load generator");
    assert!(
        out.status.success(),
        "warm pass over the load set failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("warm pass: 60 ok, 0 errors"));
    drop(floor);
}

#[test]
fn republish_changes_bytes_not_entries() {
    let dir = TempDir::new("republish");
    let index = generate(&dir.0, "5", "load").join("index.yaml");
    let before = String::from_utf8(read(&index)).expect("utf-8 index");
    let log = dir.0.join("publish.log");
    python(
        "republish.py",
        &[
            index.to_str().expect("utf-8 path"),
            "--every",
            "0.1",
            "--for",
            "0.45",
            "--log",
            log.to_str().expect("utf-8 path"),
        ],
    );
    let after = String::from_utf8(read(&index)).expect("utf-8 index");
    let publishes = std::fs::read_to_string(&log)
        .expect("publish log")
        .lines()
        .count();
    assert!(
        (2..=5).contains(&publishes),
        "{publishes} publishes in 0.45 s at 0.1 s"
    );
    assert_ne!(
        before, after,
        "a republish must change the bytes (the ETag)"
    );
    let body = |t: &str| t[..t.rfind("\ngenerated:").expect("generated line")].to_string();
    assert_eq!(body(&before), body(&after), "entries changed");
    assert!(after.ends_with("Z\"\n"));
    // No temp file left in the S3 root.
    let leftovers: Vec<_> = std::fs::read_dir(dir.0.join("s3"))
        .expect("listing the S3 root")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".republish"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // The new ETag recorded where s3s-fs's PutObject keeps it (bucket "charts", key
    // "index.yaml", unpadded URL-safe base64), so it does not hash the file per GET.
    let info = dir
        .0
        .join("s3/.bucket-Y2hhcnRz.object-aW5kZXgueWFtbA.internal.json");
    let info = String::from_utf8(read(&info)).expect("utf-8 info");
    let md5 = std::process::Command::new("md5sum")
        .arg(&index)
        .output()
        .expect("md5sum");
    let md5 = String::from_utf8_lossy(&md5.stdout)[..32].to_string();
    assert_eq!(info, format!("{{\"e_tag\": \"{md5}\"}}"));
}

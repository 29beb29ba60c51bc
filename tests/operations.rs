//! Operator frictions (issue 14 §5), each through the real binary or a real server:
//! configuration errors all at once with suggestions, `--check-config` printing the
//! effective configuration as TOML and creating nothing, boolean environment
//! variables, durations that need a unit, a regular file as `--cache-dir`; the access
//! log counting the body bytes of small error responses (and none for HEAD); the
//! client request-duration histogram; live-object bytes reported apart from disk bytes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::proxy::{examples_repo, parse_response_at, Proxy};

/// The binary with no `CHARTCACHE_*` variable of the test environment, run in `cwd`.
fn chartcache(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chartcache"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CHARTCACHE_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn examples_upstream() -> String {
    format!("file://{}", examples_repo().display())
}

/// `--check-config` with `args` in a fresh directory: (its output, the directory).
fn check(args: &[&str], env: &[(&str, &str)]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chartcache(dir.path());
    cmd.arg("--check-config")
        .args(args)
        .envs(env.iter().copied());
    (cmd.output().unwrap(), dir)
}

#[test]
fn check_config_prints_toml_that_loads_back_and_creates_nothing() {
    let upstream = examples_upstream();
    let (out, dir) = check(
        &["--upstream", &upstream, "--cache-dir", "cache/here"],
        &[("CHARTCACHE_ADMIN_TOKEN", "s3cret-token-value")],
    );
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(stdout.starts_with("# configuration OK\n"), "{stdout}");
    assert!(!stdout.contains("s3cret-token-value"), "{stdout}");
    assert!(
        stdout.contains("# admin_token: set (not shown)"),
        "{stdout}"
    );
    let table: toml::Table = toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(table["cache_dir"].as_str(), Some("cache/here"), "{stdout}");
    assert_eq!(table["upstream_timeout"].as_str(), Some("10s"), "{stdout}");
    assert_eq!(table["access_log"].as_bool(), Some(true), "{stdout}");
    assert!(
        !dir.path().join("cache").exists(),
        "--check-config must not create the cache directory"
    );
    // Saved and used as --config, it describes the same configuration.
    let saved = dir.path().join("effective.toml");
    std::fs::write(&saved, &stdout).unwrap();
    let again = chartcache(dir.path())
        .arg("--check-config")
        .arg("--config")
        .arg(&saved)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", show(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).replace("not set", "set (not shown)"),
        stdout
    );
}

#[test]
fn the_bundled_example_caches_inside_the_checkout() {
    // No upstream: the bundled examples/repo, found from the checkout.
    let out = chartcache(Path::new(env!("CARGO_MANIFEST_DIR")))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let table: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(
        table["cache_dir"].as_str(),
        Some(".chartcache"),
        "{}",
        show(&out)
    );
}

#[test]
fn boolean_environment_variables_take_the_usual_spellings() {
    let upstream = examples_upstream();
    for (value, access_log) in [
        ("1", false),
        ("true", false),
        ("yes", false),
        ("on", false),
        ("0", true),
        ("false", true),
        ("no", true),
        ("off", true),
    ] {
        let (out, _dir) = check(
            &["--upstream", &upstream],
            &[("CHARTCACHE_NO_ACCESS_LOG", value)],
        );
        assert!(
            out.status.success(),
            "CHARTCACHE_NO_ACCESS_LOG={value}: {}",
            show(&out)
        );
        let table: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(
            table["access_log"].as_bool(),
            Some(access_log),
            "CHARTCACHE_NO_ACCESS_LOG={value}"
        );
    }
    let (out, _dir) = check(
        &["--upstream", &upstream],
        &[("CHARTCACHE_NO_VERIFY_DIGESTS", "1")],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verify_digests = false"),
        "{}",
        show(&out)
    );
    // Anything else is refused, not read as true.
    let (out, _dir) = check(
        &["--upstream", &upstream],
        &[("CHARTCACHE_NO_ACCESS_LOG", "maybe")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn a_duration_without_a_unit_is_refused_naming_the_units() {
    let upstream = examples_upstream();
    let (out, _dir) = check(&["--upstream", &upstream, "--upstream-timeout", "10"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream_timeout")
            && err.contains("no unit")
            && err.contains("ms, s, m, h, d"),
        "{err}"
    );
}

#[test]
fn a_regular_file_as_cache_dir_is_a_clear_error() {
    let upstream = examples_upstream();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.img");
    std::fs::write(&file, b"not a directory").unwrap();
    let file = file.display().to_string();
    for args in [
        vec![
            "--check-config",
            "--upstream",
            &upstream,
            "--cache-dir",
            &file,
        ],
        // Serving, too: refused before anything starts.
        vec![
            "--upstream",
            &upstream,
            "--cache-dir",
            &file,
            "--listen",
            "127.0.0.1:0",
        ],
    ] {
        let out = chartcache(dir.path()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cache_dir: {file} exists and is not a directory")),
            "{err}"
        );
    }
}

#[test]
fn a_bad_file_reports_every_problem_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "upstream = \"{}\"\nupstream_timout = \"10s\"\nlog_format = \"jsn\"\n\
             [[rules]]\nmatch = {{ prefix = \"/\" }}\naction = \"cach\"\nttll = \"1h\"\n",
            examples_upstream()
        ),
    )
    .unwrap();
    let out = chartcache(dir.path())
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "unknown key `upstream_timout` (did you mean `upstream_timeout`?)",
        "unknown key `rules[0].ttll` (did you mean `ttl`?)",
        "log_format: \"jsn\" is not one of json, text (did you mean json?)",
        "rules[0]: action \"cach\" is not one of cache, revalidate, bypass (did you mean cache?)",
    ] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
    assert_eq!(err.matches("chartcache:").count(), 1, "one report: {err}");
}

/// The binary serving the bundled examples with its access log (stdout) captured.
struct Served {
    child: std::process::Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_with_access_log() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut child = chartcache(dir.path())
        .args(["--upstream", &examples_upstream()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(["--cache-size", "8MiB", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (started_tx, started) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("chartcache listening") {
                let _ = started_tx.send(line);
            }
        }
    });
    let line = started
        .recv_timeout(Duration::from_secs(20))
        .expect("chartcache reports listening");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = v["listen"].as_str().unwrap().parse().unwrap();
    Served {
        child,
        addr,
        lines,
        _dir: dir,
    }
}

impl Served {
    /// The next access-log line for `path` (bounded: 10 s; the log is flushed often).
    fn log_for(&self, method: &str, path: &str) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no access-log line for {method} {path}"));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["path"] == path && v["method"] == method {
                return v;
            }
        }
    }
}

#[test]
fn the_access_log_counts_the_body_bytes_of_error_responses() {
    let s = serve_with_access_log();
    // GET and HEAD of a missing object, then a bad method, on one keep-alive
    // connection: a stray body after the HEAD would break the next response.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let host = s.addr;
    write!(
        c,
        "GET /missing.tgz HTTP/1.1\r\nHost: {host}\r\n\r\n\
         HEAD /missing.tgz HTTP/1.1\r\nHost: {host}\r\n\r\n\
         DELETE /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let (get, n) = parse_response_at(&raw, false).expect("GET response");
    let (head, m) = parse_response_at(&raw[n..], true).expect("HEAD response");
    let (delete, _) = parse_response_at(&raw[n + m..], false).expect("DELETE response");
    assert_eq!((get.status, head.status, delete.status), (404, 404, 405));
    assert!(!get.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "HEAD says what GET would get"
    );
    assert_eq!(
        s.log_for("GET", "/missing.tgz")["bytes"],
        get.body.len() as u64
    );
    assert_eq!(s.log_for("HEAD", "/missing.tgz")["bytes"], 0);
    assert_eq!(s.log_for("DELETE", "/x")["bytes"], delete.body.len() as u64);
}

#[test]
fn request_durations_and_object_bytes_are_reported() {
    let p = Proxy::examples();
    let index = p.get("/index.yaml");
    assert_eq!(index.status, 200);
    assert_eq!(p.get("/index.yaml").status, 200);
    assert_eq!(p.get("/nope.tgz").status, 404);
    let metrics = p.metrics();
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let mut total = 0.0;
    for cache in ["miss", "revalidated", "hit"] {
        let Some(count) = value(&format!(
            "chartcache_request_duration_seconds_count{{cache=\"{cache}\"}}"
        )) else {
            continue;
        };
        let inf = value(&format!(
            "chartcache_request_duration_seconds_bucket{{le=\"+Inf\",cache=\"{cache}\"}}"
        ));
        assert_eq!(
            inf,
            Some(count),
            "+Inf equals _count for {cache}:\n{metrics}"
        );
        total += count;
    }
    assert!(total >= 3.0, "three requests timed:\n{metrics}");

    // One object of known size cached: its bytes, not the preallocated segments.
    let chart = std::fs::read_dir(examples_repo())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "tgz"))
        .expect("a chart in examples/repo");
    let name = chart.file_name().to_string_lossy().into_owned();
    let size = chart.metadata().unwrap().len();
    assert_eq!(p.get(&format!("/{name}")).status, 200);
    let object_bytes = p.metric_until("chartcache_cache_object_bytes", |v| v >= size);
    assert!(
        object_bytes >= size,
        "object bytes {object_bytes} < chart {size}"
    );
    let disk = p.metric("chartcache_cache_bytes");
    assert!(
        disk > object_bytes,
        "disk bytes {disk} count preallocated segments, more than objects {object_bytes}"
    );
}

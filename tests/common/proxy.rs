//! chartcache under test: in-process servers on port 0, the real binary (for
//! restarts and `kill -9`), and a tiny blocking HTTP client that can also
//! send deliberately malformed bytes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chartcache::config::{self, Cli};
use chartcache::origin::credentials::CredentialsCell;
use chartcache::runtime::{self, Server};

pub const AK: &str = "AKIDCHARTCACHETEST";
pub const SK: &str = "chartcache/test/secret/key/0123456789";

/// The bundled example repository.
pub fn examples_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo")
}

/// The io driver every server in this test binary runs on: `epoll` when the
/// binary's name ends in `_epoll` (Cargo.toml builds each server test file twice,
/// `NAME` and `NAME_epoll`, so the whole integration suite runs on both drivers),
/// else `None` (the default, `auto`: io_uring, or epoll where it is blocked). A test
/// that names a driver itself keeps it.
pub fn test_driver() -> Option<&'static str> {
    env!("CARGO_CRATE_NAME")
        .ends_with("_epoll")
        .then_some("epoll")
}

/// Writes `toml` as the configuration file `chartcache.toml` in `dir` (flags and
/// `[[rules]]`, as an operator's file) and points `cli` at it.
pub fn config_file(cli: &mut Cli, dir: &Path, toml: &str) {
    let path = dir.join("chartcache.toml");
    std::fs::write(&path, toml).unwrap();
    cli.config = Some(path);
}

/// A CLI for tests: loopback, port 0, quiet, 2 workers, on [`test_driver`].
pub fn test_cli(upstream: &str, cache_dir: &Path) -> Cli {
    let mut cli = Cli::default();
    cli.runtime.driver = test_driver().map(String::from);
    cli.repo.upstream = Some(upstream.to_string());
    cli.server.listen = Some("127.0.0.1:0".into());
    cli.admin.admin = Some("127.0.0.1:0".into());
    cli.cache.cache_dir = Some(cache_dir.to_path_buf());
    cli.cache.cache_size = Some("64MiB".into());
    cli.runtime.workers = Some(2);
    cli.log.no_access_log = true;
    cli.repo.upstream_timeout = Some("3s".into());
    cli.repo.connect_timeout = Some("1s".into());
    cli
}

/// An in-process chartcache with its own temp cache dir.
pub struct Proxy {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub cache_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Proxy {
    /// Serves `upstream` (with test credentials when it is s3://).
    pub fn start(cli: Cli) -> Proxy {
        Self::start_in(cli, None)
    }

    pub fn start_in(mut cli: Cli, tmp: Option<tempfile::TempDir>) -> Proxy {
        let tmp = match (tmp, &cli.cache.cache_dir) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => None,
            (None, None) => Some(tempfile::tempdir().unwrap()),
        };
        if cli.cache.cache_dir.is_none() {
            cli.cache.cache_dir = Some(tmp.as_ref().unwrap().path().join("cache"));
        }
        let cache_dir = cli.cache.cache_dir.clone().unwrap();
        let cfg = config::load(cli).expect("valid test config");
        let creds = Some(Arc::new(CredentialsCell::new(
            aws_credential_types::Credentials::new(AK, SK, None, None, "chartcache-tests"),
        )));
        let server = runtime::start(cfg, creds).expect("server starts");
        Proxy {
            addr: server.addr,
            admin: server.admin_addr,
            server: Some(server),
            cache_dir,
            _tmp: tmp,
        }
    }

    /// Serves the bundled examples over a file:// origin.
    pub fn examples() -> Proxy {
        let tmp = tempfile::tempdir().unwrap();
        let cli = test_cli(
            &format!("file://{}", examples_repo().display()),
            &tmp.path().join("cache"),
        );
        Proxy::start_in(cli, Some(tmp))
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path, &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.addr, path, headers)
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics", &[]).text()
    }

    /// The value of an unlabelled metric (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Polls an unlabelled metric (every 50 ms, at most 10 s: the workers publish store
    /// counters every 200 ms) until `ok` holds; returns the last value.
    pub fn metric_until(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let v = self.metric(name);
            if ok(v) || std::time::Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One GET on a fresh connection (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers)
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let raw = raw_exchange(addr, req.as_bytes());
    parse_response(&raw, method == "HEAD")
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&raw)))
}

/// Sends bytes, reads until the server closes (bounded: 10 s).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Parses one response (head + Content-Length body) from the front of `raw`.
pub fn parse_response(raw: &[u8], head_only: bool) -> Option<Response> {
    parse_response_at(raw, head_only).map(|(r, _)| r)
}

/// Like [`parse_response`] but also returns the bytes consumed.
pub fn parse_response_at(raw: &[u8], head_only: bool) -> Option<(Response, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body_len = if head_only || status == 304 {
        0
    } else {
        len.unwrap_or(raw.len() - end)
    };
    if raw.len() < end + body_len {
        return Some((
            Response {
                status,
                headers,
                body: raw[end..].to_vec(),
            },
            raw.len(),
        ));
    }
    Some((
        Response {
            status,
            headers,
            body: raw[end..end + body_len].to_vec(),
        },
        end + body_len,
    ))
}

/// The real binary, started with `args`, its address read from its startup log.
/// Egress proxy variables the test's own environment may carry: removed from
/// a started binary's environment unless the test passes them (an upstream on
/// 127.0.0.1 would otherwise go through the runner's proxy).
pub const EGRESS_PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Arguments that serve `upstream` on 127.0.0.1 port 0 (the admin listener too) with
/// the cache in `cache_dir`, then `extra`.
pub fn serve_args(upstream: &str, cache_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--upstream",
        upstream,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--cache-dir",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(cache_dir.to_str().unwrap().to_owned());
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// [`serve_args`] for bucket `charts` of the test S3 server (path-style, its endpoint).
pub fn s3_args(s3: &super::S3Server, cache_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = serve_args("s3://charts", cache_dir, &["--s3-endpoint", &s3.endpoint]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The test S3 server's key pair, as the environment a started binary signs with.
pub const S3_ENV: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", AK), ("AWS_SECRET_ACCESS_KEY", SK)];

/// `args` as the `&[&str]` [`Binary::start`] and [`run_binary`] take.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The startup line ("chartcache listening"), parsed.
    pub startup: serde_json::Value,
    /// Every stderr line after it, as it arrives.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Binary {
        Self::start_with_nofile(args, envs, None)
    }

    /// [`Binary::start`] with `RLIMIT_NOFILE` set to `(soft, hard)` in the child.
    pub fn start_with_nofile(
        args: &[&str],
        envs: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
    ) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chartcache"));
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit runs, which is
            // async-signal-safe and touches no memory but its argument.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(driver) = test_driver() {
            // Before the test's own environment, which may name another driver.
            cmd.env("CHARTCACHE_DRIVER", driver);
        }
        cmd.args(args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in EGRESS_PROXY_VARS {
            cmd.env_remove(var);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn chartcache");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sent {
                    lines.lock().unwrap().push(line);
                } else if line.contains("chartcache listening") {
                    let _ = tx.send(Ok(line));
                    sent = true;
                } else if line.contains("\"level\":\"ERROR\"") || line.starts_with("chartcache:") {
                    let _ = tx.send(Err(line));
                    sent = true;
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let _ = child.kill();
                panic!("chartcache failed to start: {e}");
            }
            Err(_) => {
                let _ = child.kill();
                panic!("chartcache did not report listening");
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        let addr = v["listen"].as_str().unwrap().parse().unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        let named = args.iter().any(|a| a.starts_with("--driver"))
            || envs.iter().any(|(k, _)| *k == "CHARTCACHE_DRIVER");
        if let (Some(driver), false) = (test_driver(), named) {
            assert_eq!(v["driver"].as_str(), Some(driver), "{line}");
        }
        Binary {
            child,
            addr,
            admin,
            startup: v,
            log,
        }
    }

    /// SIGTERM and wait (bounded).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("chartcache did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Runs the binary to completion (for startup-error tests), bounded.
pub fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chartcache"));
    cmd.args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent/chartcache-test")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/chartcache-test",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in EGRESS_PROXY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(30));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

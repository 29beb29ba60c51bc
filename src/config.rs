//! Configuration: command-line flags, `CHARTCACHE_*` environment variables and a
//! TOML file, merged in that order of precedence (flag > env > file > default),
//! then validated into one [`Config`].
//!
//! Validation reports *every* problem at once, each naming the field and the fix,
//! so an operator fixes a bad DaemonSet in one round trip. Nothing here touches
//! the network; the cache directory is checked by the cache layer at open.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default `--sendfile-threshold`: the body size from which the cache page-aligns record
/// bodies (`cache::format::ALIGN_BODIES_FROM`); `sendfile(2)` of page-aligned data measured
/// ~25 % less server CPU per response than writev from the mmap (README, Performance).
pub const DEFAULT_SENDFILE_THRESHOLD: u64 = crate::cache::format::ALIGN_BODIES_FROM;

use clap::Parser;
use serde::Deserialize;

use crate::http1::request::Limits;
use crate::origin::{OriginConfig, TlsRoots, Upstream};
use crate::policy::{Action, Matcher, Policy, Rule};

/// Configuration errors: each string names the field and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Where the bundled example repository lives, in the order tried when no
/// `--upstream` is given.
const EXAMPLE_REPOS: &[&str] = &["examples/repo", "/usr/share/chartcache/examples/repo"];

/// Command-line flags. Every flag can also be set by the environment variable
/// shown in `--help` and by the same key (with `_` instead of `-`) in the TOML
/// file given by `--config`.
#[derive(Debug, Default, Parser)]
#[command(
    name = "chartcache",
    version,
    about = "Caching proxy that serves a Helm chart repository from a private S3 bucket.",
    long_about = "chartcache serves a Helm chart repository from a private S3 bucket (or an \
HTTPS server, or a local directory), signing every upstream request with AWS SigV4 and \
keeping charts in an on-disk cache that survives restarts.\n\n\
With no arguments it serves the bundled examples/repo on 0.0.0.0:8080, no AWS needed:\n  \
chartcache\n  helm repo add demo http://127.0.0.1:8080\n\n\
Serve a private bucket (credentials from the standard AWS chain):\n  \
chartcache --upstream s3://my-charts/stable --region eu-west-1\n\n\
Precedence: flag > CHARTCACHE_* environment variable > --config TOML file > default.",
    after_help = "Route rules (which paths are cached, revalidated or bypassed) are set in the \
TOML file; the defaults are: /index.yaml revalidated on every request, paths matching \
.*-dev-.* bypassed, everything else cached for 24h with Cache-Control: max-age=86400."
)]
pub struct Cli {
    /// TOML configuration file (same keys as the flags, plus [[rules]]).
    #[arg(long, env = "CHARTCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the proxy listens on [default: 0.0.0.0:8080].
    #[arg(long, env = "CHARTCACHE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Admin listener for /healthz, /readyz, /metrics and purge [default: 127.0.0.1:8081].
    #[arg(long, env = "CHARTCACHE_ADMIN", value_name = "ADDR")]
    pub admin: Option<String>,

    /// Bearer token required by purge requests (required when --admin is not loopback).
    #[arg(
        long,
        env = "CHARTCACHE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Where objects come from: s3://BUCKET[/PREFIX], https://HOST[/PATH], http://HOST[/PATH]
    /// or file:///DIR [default: the bundled examples/repo].
    #[arg(long, env = "CHARTCACHE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// S3-compatible endpoint (MinIO, Ceph, LocalStack...), e.g. http://127.0.0.1:9000.
    /// Uses path-style addressing. Default: AWS, virtual-hosted style.
    #[arg(long, env = "CHARTCACHE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// AWS region of the bucket [default: $AWS_REGION, $AWS_DEFAULT_REGION, or us-east-1].
    #[arg(long, env = "CHARTCACHE_REGION", value_name = "REGION")]
    pub region: Option<String>,

    /// Cache directory [default: /var/cache/chartcache if writable, else ./.chartcache].
    #[arg(long, env = "CHARTCACHE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Maximum cache size on disk, e.g. 2GiB, 512MiB [default: 2GiB].
    #[arg(long, env = "CHARTCACHE_CACHE_SIZE", value_name = "SIZE")]
    pub cache_size: Option<String>,

    /// Worker threads, one per core, each owning one cache shard [default: number of cores].
    #[arg(long, env = "CHARTCACHE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// I/O driver: auto (io_uring, falling back to epoll), io_uring, or epoll [default: auto].
    #[arg(long, env = "CHARTCACHE_DRIVER", value_name = "DRIVER")]
    pub driver: Option<String>,

    /// Log format for diagnostics and the access log: json or text [default: json].
    #[arg(long, env = "CHARTCACHE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Disable the per-request access log on stdout.
    #[arg(long, env = "CHARTCACHE_NO_ACCESS_LOG")]
    pub no_access_log: bool,

    /// Time allowed to receive a request head [default: 10s].
    #[arg(long, env = "CHARTCACHE_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,

    /// Idle keep-alive timeout [default: 60s].
    #[arg(long, env = "CHARTCACHE_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// How old a cached copy may be and still be served as STALE while upstream fails [default: 7d].
    #[arg(long, env = "CHARTCACHE_MAX_STALE", value_name = "DURATION")]
    pub max_stale: Option<String>,

    /// How long an upstream 404 is remembered (0 disables; never for revalidated paths) [default: 5s].
    #[arg(long, env = "CHARTCACHE_NEGATIVE_TTL", value_name = "DURATION")]
    pub negative_ttl: Option<String>,

    /// Maximum client connections per worker [default: 10000].
    #[arg(long, env = "CHARTCACHE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Upstream connect timeout [default: 5s].
    #[arg(long, env = "CHARTCACHE_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Upstream response deadline (head, and each body read) [default: 10s].
    #[arg(long, env = "CHARTCACHE_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,

    /// Retries of a failed upstream GET (connect errors, timeouts, 5xx, SlowDown) [default: 2].
    #[arg(long, env = "CHARTCACHE_RETRIES", value_name = "N")]
    pub retries: Option<u32>,

    /// Total time one upstream fetch may take, retries and backoff included [default: 8s].
    #[arg(long, env = "CHARTCACHE_RETRY_DEADLINE", value_name = "DURATION")]
    pub retry_deadline: Option<String>,

    /// Concurrent upstream requests per worker [default: 64].
    #[arg(long, env = "CHARTCACHE_MAX_UPSTREAM_CONCURRENCY", value_name = "N")]
    pub max_upstream_concurrency: Option<usize>,

    /// TLS trust roots for https upstreams: webpki (bundled) or native (system store) [default: webpki].
    #[arg(long, env = "CHARTCACHE_TLS_ROOTS", value_name = "ROOTS")]
    pub tls_roots: Option<String>,

    /// Serve index.yaml as upstream wrote it: do not rewrite helm-s3's
    /// s3://BUCKET/PREFIX/ chart URLs to repository-relative ones.
    #[arg(long, env = "CHARTCACHE_NO_REWRITE_S3_URLS")]
    pub no_rewrite_s3_urls: bool,

    /// Do not check chart bytes against the sha256 digests in index.yaml.
    #[arg(long, env = "CHARTCACHE_NO_VERIFY_DIGESTS")]
    pub no_verify_digests: bool,
    /// Cached bodies of at least SIZE go out with sendfile(2), smaller ones with one writev
    /// from the cache's mmap: a size like 256KiB, 0 (always) or off (never) [default: 16KiB,
    /// where the cache starts page-aligning bodies]. off suits clients on the same cores
    /// that read in small pieces (README, Performance).
    #[arg(long, env = "CHARTCACHE_SENDFILE_THRESHOLD", value_name = "SIZE")]
    pub sendfile_threshold: Option<String>,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file. Same keys as the flags (with `_`), plus `[[rules]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin: Option<String>,
    admin_token: Option<String>,
    upstream: Option<String>,
    s3_endpoint: Option<String>,
    region: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    workers: Option<usize>,
    driver: Option<String>,
    log_format: Option<String>,
    access_log: Option<bool>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    negative_ttl: Option<String>,
    max_stale: Option<String>,
    connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    tls_roots: Option<String>,
    retries: Option<u32>,
    retry_deadline: Option<String>,
    max_upstream_concurrency: Option<usize>,
    rewrite_s3_urls: Option<bool>,
    verify_digests: Option<bool>,
    sendfile_threshold: Option<String>,
    rules: Option<Vec<RuleConfig>>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// `cache`, `revalidate` or `bypass`.
    pub action: String,
    /// Freshness for `cache` (default 24h).
    pub ttl: Option<String>,
    /// For `revalidate`: serve without asking upstream for this long (default 0).
    pub fresh_for: Option<String>,
    /// Response headers set on every response of this rule (overwriting upstream's).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `match = { exact = "/index.yaml" }`, `{ prefix = "/" }` or `{ regex = ".*-dev-.*" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// Which io driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel (and seccomp) allow it, else epoll.
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Client-side server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub limits: Limits,
    /// Stored bodies of at least this many bytes are sent with `sendfile(2)`,
    /// smaller ones with writev from the mmap; `None`: never.
    pub sendfile_threshold: Option<u64>,
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Total bytes on disk, split evenly across shards.
    pub size: u64,
    /// How long an upstream 404 is remembered.
    pub negative_ttl: Duration,
    /// How old a stored copy may be and still be served (`STALE`) while
    /// upstream fails.
    pub max_stale: Duration,
}

/// Admin listener settings.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

/// Never prints the token (`--check-config` output may end up in logs).
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub origin: OriginConfig,
    pub cache: CacheConfig,
    pub policy: Policy,
    pub workers: usize,
    pub driver: Driver,
    pub log_format: LogFormat,
    pub access_log: bool,
    /// Rewrite helm-s3 `s3://` chart URLs in index.yaml to relative ones.
    pub rewrite_s3_urls: bool,
    /// Check filled charts against the index's sha256 digests.
    pub verify_digests: bool,
}

impl Config {
    /// Parses flags and environment from the process, then loads and merges the file.
    pub fn from_args() -> Result<(Config, bool), Error> {
        let cli = Cli::parse();
        let check = cli.check_config;
        Ok((load(cli)?, check))
    }
}

/// Merges `cli` (flags + env, already resolved by clap) over the TOML file it
/// names, applies defaults and validates.
pub fn load(cli: Cli) -> Result<Config, Error> {
    let file = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            toml::from_str::<FileConfig>(&text).map_err(|e| Error::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?
        }
        None => FileConfig::default(),
    };
    build(cli, file)
}

/// Parses a TOML document on its own (used by tests and `--check-config`).
pub fn from_toml(text: &str) -> Result<Config, Error> {
    let file = toml::from_str::<FileConfig>(text).map_err(|e| Error::Parse {
        path: PathBuf::from("<inline>"),
        message: e.to_string(),
    })?;
    build(Cli::default(), file)
}

fn build(cli: Cli, file: FileConfig) -> Result<Config, Error> {
    let mut errs = Vec::new();

    let listen = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:8080".into());
    let listen = parse_addr("listen", &listen, &mut errs);
    let admin = cli
        .admin
        .or(file.admin)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let admin = parse_addr("admin", &admin, &mut errs);
    let admin_token = cli
        .admin_token
        .or(file.admin_token)
        .filter(|t| !t.is_empty());
    if let (Some(a), None) = (admin, &admin_token) {
        if !a.ip().is_loopback() {
            errs.push(format!(
                "admin: {a} is not a loopback address, so purge needs a token: set --admin-token \
                 (or CHARTCACHE_ADMIN_TOKEN), or bind the admin listener to 127.0.0.1"
            ));
        }
    }

    let upstream_raw = cli.upstream.or(file.upstream);
    let upstream = match upstream_raw {
        Some(u) => parse_upstream(&u).map_err(|e| errs.push(e)).ok(),
        None => match EXAMPLE_REPOS.iter().map(Path::new).find(|p| p.is_dir()) {
            Some(dir) => Some(Upstream::File {
                dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            }),
            None => {
                errs.push(
                    "upstream: not set, and the bundled examples/repo was not found in the \
                     current directory: pass --upstream s3://BUCKET[/PREFIX] (or \
                     CHARTCACHE_UPSTREAM), or run from the chartcache source checkout"
                        .into(),
                );
                None
            }
        },
    };

    let s3_endpoint = cli.s3_endpoint.or(file.s3_endpoint);
    if let Some(ep) = &s3_endpoint {
        if let Err(e) = url::Url::parse(ep)
            .map_err(|e| e.to_string())
            .and_then(|u| match u.scheme() {
                "http" | "https" if u.host_str().is_some() => Ok(()),
                _ => Err("must be http://HOST[:PORT] or https://HOST[:PORT]".into()),
            })
        {
            errs.push(format!(
                "s3_endpoint: {ep:?} is not a valid URL ({e}), e.g. http://127.0.0.1:9000"
            ));
        }
        if !matches!(upstream, Some(Upstream::S3 { .. }) | None) {
            errs.push("s3_endpoint: only applies to an s3:// upstream; remove it or use --upstream s3://BUCKET".into());
        }
    }
    let region = cli
        .region
        .or(file.region)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into());
    if !region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push(format!(
            "region: {region:?} is not an AWS region name such as eu-west-1"
        ));
    }

    let cache_dir = cli
        .cache_dir
        .or(file.cache_dir)
        .unwrap_or_else(default_cache_dir);
    let cache_size = cli
        .cache_size
        .or(file.cache_size)
        .unwrap_or_else(|| "2GiB".into());
    let cache_size = match parse_size(&cache_size) {
        Ok(s) if s >= 4 << 20 => Some(s),
        Ok(_) => {
            errs.push(format!(
                "cache_size: {cache_size} is too small; use at least 4MiB"
            ));
            None
        }
        Err(e) => {
            errs.push(format!("cache_size: {e}"));
            None
        }
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cli.workers.or(file.workers).unwrap_or(cores);
    if workers == 0 || workers > 256 {
        errs.push(format!(
            "workers: {workers} is out of range; use 1..=256 (default: one per core, {cores} here)"
        ));
    }

    let driver = match cli.driver.or(file.driver).as_deref() {
        None | Some("auto") => Driver::Auto,
        Some("io_uring") | Some("iouring") | Some("uring") => Driver::IoUring,
        Some("epoll") | Some("legacy") => Driver::Epoll,
        Some(other) => {
            errs.push(format!(
                "driver: {other:?} is not one of auto, io_uring, epoll"
            ));
            Driver::Auto
        }
    };
    let log_format = match cli.log_format.or(file.log_format).as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            errs.push(format!("log_format: {other:?} is not one of json, text"));
            LogFormat::Json
        }
    };
    let access_log = !cli.no_access_log && file.access_log.unwrap_or(true);
    let rewrite_s3_urls = !cli.no_rewrite_s3_urls && file.rewrite_s3_urls.unwrap_or(true);
    let verify_digests = !cli.no_verify_digests && file.verify_digests.unwrap_or(true);

    let mut dur = |field: &str, v: Option<String>, default: Duration| -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(&s) {
                Ok(d) => d,
                Err(e) => {
                    errs.push(format!("{field}: {e}"));
                    default
                }
            },
        }
    };
    let header_timeout = dur(
        "header_timeout",
        cli.header_timeout.or(file.header_timeout),
        Duration::from_secs(10),
    );
    let idle_timeout = dur(
        "idle_timeout",
        cli.idle_timeout.or(file.idle_timeout),
        Duration::from_secs(60),
    );
    let connect_timeout = dur(
        "connect_timeout",
        cli.connect_timeout.or(file.connect_timeout),
        Duration::from_secs(5),
    );
    let upstream_timeout = dur(
        "upstream_timeout",
        cli.upstream_timeout.or(file.upstream_timeout),
        Duration::from_secs(10),
    );
    let negative_ttl = dur(
        "negative_ttl",
        cli.negative_ttl.or(file.negative_ttl),
        Duration::from_secs(5),
    );
    let max_stale = dur(
        "max_stale",
        cli.max_stale.or(file.max_stale),
        Duration::from_secs(7 * 86_400),
    );
    let retry_deadline = dur(
        "retry_deadline",
        cli.retry_deadline.or(file.retry_deadline),
        crate::origin::retry::DEFAULT_DEADLINE,
    );
    let max_connections = cli
        .max_connections
        .or(file.max_connections)
        .unwrap_or(10_000);
    let max_upstream_concurrency = cli
        .max_upstream_concurrency
        .or(file.max_upstream_concurrency)
        .unwrap_or(crate::origin::retry::DEFAULT_MAX_CONCURRENCY);
    if max_upstream_concurrency == 0 {
        errs.push("max_upstream_concurrency: must be at least 1".into());
    }
    if max_connections == 0 {
        errs.push("max_connections: must be at least 1".into());
    }
    let tls_roots = match cli.tls_roots.or(file.tls_roots).as_deref() {
        None | Some("webpki") => TlsRoots::Webpki,
        Some("native") => TlsRoots::Native,
        Some(other) => {
            errs.push(format!("tls_roots: {other:?} is not one of webpki, native"));
            TlsRoots::Webpki
        }
    };

    let sendfile_threshold = match cli
        .sendfile_threshold
        .or(file.sendfile_threshold)
        .as_deref()
        .map(str::trim)
    {
        None => Some(DEFAULT_SENDFILE_THRESHOLD),
        Some(off) if off.eq_ignore_ascii_case("off") => None,
        Some(size) => match parse_size(size) {
            Ok(n) => Some(n),
            Err(e) => {
                errs.push(format!(
                    "sendfile_threshold: {e}; or off (never) or 0 (always)"
                ));
                None
            }
        },
    };

    let policy = match file.rules {
        None => Policy::envoy_default(),
        Some(rules) => {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                match parse_rule(r) {
                    Ok(rule) => out.push(rule),
                    Err(e) => errs.push(format!("rules[{i}]: {e}")),
                }
            }
            Policy::new(out)
        }
    };

    if !errs.is_empty() {
        return Err(Error::Invalid(errs));
    }
    // Every `None` above pushed an error, so these are all present here.
    let (Some(listen), Some(admin), Some(upstream), Some(size)) =
        (listen, admin, upstream, cache_size)
    else {
        return Err(Error::Invalid(vec![
            "internal: missing field after validation".into(),
        ]));
    };
    Ok(Config {
        server: ServerConfig {
            listen,
            header_timeout,
            idle_timeout,
            max_connections,
            limits: Limits::default(),
            sendfile_threshold,
        },
        admin: AdminConfig {
            listen: admin,
            token: admin_token,
        },
        origin: OriginConfig {
            upstream,
            s3_endpoint,
            region,
            connect_timeout,
            request_timeout: upstream_timeout,
            dns_refresh: Duration::from_secs(30),
            tls_roots,
            max_idle_connections: 32,
            retries: cli
                .retries
                .or(file.retries)
                .unwrap_or(crate::origin::retry::DEFAULT_RETRIES),
            retry_deadline,
            max_upstream_concurrency,
        },
        cache: CacheConfig {
            dir: cache_dir,
            size,
            negative_ttl,
            max_stale,
        },
        policy,
        workers,
        driver,
        log_format,
        access_log,
        rewrite_s3_urls,
        verify_digests,
    })
}

fn default_cache_dir() -> PathBuf {
    let system = Path::new("/var/cache/chartcache");
    let writable = |p: &Path| std::fs::create_dir_all(p).is_ok() && tempfile_probe(p);
    if writable(system) {
        system.to_path_buf()
    } else {
        PathBuf::from(".chartcache")
    }
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(".write-probe");
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn parse_addr(field: &str, s: &str, errs: &mut Vec<String>) -> Option<SocketAddr> {
    match s.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => Some(a),
        None => {
            errs.push(format!(
                "{field}: {s:?} is not an address; use HOST:PORT such as 0.0.0.0:8080"
            ));
            None
        }
    }
}

/// Parses `s3://BUCKET[/PREFIX]`, `https://HOST[:PORT][/PATH]`, `http://...`, `file:///DIR`.
pub fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let bad = |why: &str| {
        format!(
            "upstream: {s:?} {why}; use s3://BUCKET[/PREFIX], https://HOST[/PATH] or file:///DIR"
        )
    };
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(bad(
                "has an invalid bucket name (3-63 chars: a-z, 0-9, '-', '.')",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(bad("has '.' or '..' in its prefix"));
        }
        return Ok(Upstream::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        });
    }
    if let Some(path) = s.strip_prefix("file://") {
        let dir = PathBuf::from(path);
        if path.is_empty() {
            return Err(bad("names no directory"));
        }
        if !dir.is_dir() {
            return Err(format!(
                "upstream: directory {} does not exist or is not a directory",
                dir.display()
            ));
        }
        return Ok(Upstream::File {
            dir: dir.canonicalize().unwrap_or(dir),
        });
    }
    if s.starts_with("https://") || s.starts_with("http://") {
        let u = url::Url::parse(s).map_err(|e| bad(&format!("is not a valid URL ({e})")))?;
        let host = u.host_str().ok_or_else(|| bad("has no host"))?.to_string();
        if u.query().is_some() || u.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        let tls = u.scheme() == "https";
        let port = u
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        return Ok(Upstream::Https {
            tls,
            host,
            port,
            base_path: u.path().trim_end_matches('/').to_string(),
        });
    }
    Err(bad("has an unknown scheme"))
}

fn parse_rule(r: &RuleConfig) -> Result<Rule, String> {
    let m = &r.matcher;
    let matcher = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Matcher::Exact(e.clone()),
        (None, Some(p), None) => Matcher::Prefix(p.clone()),
        (None, None, Some(re)) => {
            Matcher::regex(re).map_err(|e| format!("match.regex {re:?} is invalid: {e}"))?
        }
        _ => return Err("match needs exactly one of exact, prefix, regex".into()),
    };
    let ttl = r.ttl.as_deref().map(parse_duration).transpose()?;
    let fresh_for = r.fresh_for.as_deref().map(parse_duration).transpose()?;
    let action = match r.action.as_str() {
        "cache" => Action::Cache {
            ttl: ttl.unwrap_or(Duration::from_secs(86_400)),
        },
        "revalidate" => Action::Revalidate {
            fresh_for: fresh_for.unwrap_or(Duration::ZERO),
        },
        "bypass" => Action::Bypass,
        other => {
            return Err(format!(
                "action {other:?} is not one of cache, revalidate, bypass"
            ))
        }
    };
    if ttl.is_some() && !matches!(action, Action::Cache { .. }) {
        return Err("ttl only applies to action = \"cache\"".into());
    }
    if fresh_for.is_some() && !matches!(action, Action::Revalidate { .. }) {
        return Err("fresh_for only applies to action = \"revalidate\"".into());
    }
    let mut headers = Vec::new();
    for (k, v) in &r.headers {
        let name_ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        let value_ok = v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !name_ok || !value_ok {
            return Err(format!("header {k:?} has an invalid name or value"));
        }
        headers.push((k.clone(), v.clone()));
    }
    Ok(Rule {
        matcher,
        action,
        headers,
    })
}

/// `2GiB`, `512MiB`, `100MB`, `1048576` → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write it like 2GiB, 512MiB or 1000000"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// `500ms`, `10s`, `5m`, `1h`, `7d`, `86400s` → Duration. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write it like 500ms, 10s, 5m, 1h or 7d"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?}; use ms, s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Cli {
        Cli {
            upstream: Some("s3://my-charts/stable".into()),
            ..Cli::default()
        }
    }

    #[test]
    fn defaults_match_the_envoy_setup() {
        let c = build(cli(), FileConfig::default()).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.cache.size, 2 << 30);
        assert_eq!(
            c.origin.upstream,
            Upstream::S3 {
                bucket: "my-charts".into(),
                prefix: "stable".into()
            }
        );
        assert!(matches!(
            c.policy.decide("/index.yaml").action,
            Action::Revalidate { .. }
        ));
        assert!(matches!(
            c.policy.decide("/a-1.0.0-dev-3.tgz").action,
            Action::Bypass
        ));
        assert!(matches!(
            c.policy.decide("/a-1.0.0.tgz").action,
            Action::Cache { .. }
        ));
    }

    #[test]
    fn flags_win_over_file() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ncache_size = \"1GiB\"").unwrap();
        let mut c = cli();
        c.listen = Some("127.0.0.1:9100".into());
        let cfg = build(c, file).unwrap();
        assert_eq!(cfg.server.listen.port(), 9100);
        assert_eq!(cfg.cache.size, 1 << 30);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let c = Cli {
            listen: Some("nope".into()),
            upstream: Some("ftp://x".into()),
            cache_size: Some("2 parsecs".into()),
            workers: Some(0),
            ..Cli::default()
        };
        let Err(Error::Invalid(errs)) = build(c, FileConfig::default()) else {
            panic!("expected invalid")
        };
        let all = errs.join("\n");
        for field in ["listen:", "upstream:", "cache_size:", "workers:"] {
            assert!(all.contains(field), "{field} missing in {all}");
        }
    }

    #[test]
    fn unknown_toml_keys_are_refused() {
        assert!(matches!(
            from_toml("lisen = \"x\""),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn rules_parse_from_toml() {
        let cfg = from_toml(
            r#"
upstream = "s3://bucket-a"
[[rules]]
match = { exact = "/index.yaml" }
action = "revalidate"
fresh_for = "5s"
[[rules]]
match = { regex = ".*-dev-.*" }
action = "bypass"
[[rules]]
match = { prefix = "/" }
action = "cache"
ttl = "1h"
headers = { "Cache-Control" = "max-age=3600" }
"#,
        )
        .unwrap();
        let r = cfg.policy.decide("/x-1.0.tgz");
        assert!(matches!(r.action, Action::Cache { ttl } if ttl == Duration::from_secs(3600)));
        assert_eq!(
            r.headers,
            vec![("Cache-Control".to_string(), "max-age=3600".to_string())]
        );
        assert!(matches!(
            cfg.policy.decide("/index.yaml").action,
            Action::Revalidate { fresh_for } if fresh_for == Duration::from_secs(5)
        ));
    }

    #[test]
    fn bad_rule_is_named() {
        let Err(Error::Invalid(errs)) = from_toml(
            "upstream = \"s3://bucket-a\"\n[[rules]]\nmatch = { regex = \"(\" }\naction = \"cache\"",
        ) else {
            panic!()
        };
        assert!(errs[0].starts_with("rules[0]: match.regex"), "{errs:?}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12 furlongs").is_err());
        assert_eq!(
            parse_duration("86400s").unwrap(),
            Duration::from_secs(86400)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(
            parse_upstream("https://charts.example.com:8443/repo/").unwrap(),
            Upstream::Https {
                tls: true,
                host: "charts.example.com".into(),
                port: 8443,
                base_path: "/repo".into()
            }
        );
        assert!(parse_upstream("s3://UPPER").is_err());
        assert!(parse_upstream("s3://bucket/../x").is_err());
        assert!(parse_upstream("file:///definitely/not/here").is_err());
    }

    #[test]
    fn debug_output_redacts_the_admin_token() {
        let mut c = cli();
        c.admin_token = Some("s3cret-value".into());
        let cfg = build(c, FileConfig::default()).unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn sendfile_threshold_forms() {
        let with = |v: &str| {
            let mut c = cli();
            c.sendfile_threshold = Some(v.into());
            build(c, FileConfig::default())
        };
        let default = build(cli(), FileConfig::default()).unwrap();
        assert_eq!(default.server.sendfile_threshold, Some(16 * 1024));
        assert_eq!(with("off").unwrap().server.sendfile_threshold, None);
        assert_eq!(with("0").unwrap().server.sendfile_threshold, Some(0));
        assert_eq!(
            with("256KiB").unwrap().server.sendfile_threshold,
            Some(256 << 10)
        );
        let Err(Error::Invalid(errs)) = with("sometimes") else {
            panic!("expected invalid")
        };
        assert!(errs[0].starts_with("sendfile_threshold:"), "{errs:?}");
        let file: FileConfig = toml::from_str("sendfile_threshold = \"1MiB\"").unwrap();
        let cfg = build(cli(), file).unwrap();
        assert_eq!(cfg.server.sendfile_threshold, Some(1 << 20));
    }

    #[test]
    fn non_loopback_admin_needs_token() {
        let mut c = cli();
        c.admin = Some("0.0.0.0:8081".into());
        assert!(build(c, FileConfig::default()).is_err());
        let mut c = cli();
        c.admin = Some("0.0.0.0:8081".into());
        c.admin_token = Some("s3cret".into());
        assert!(build(c, FileConfig::default()).is_ok());
    }
}

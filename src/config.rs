//! Configuration: command-line flags, `CHARTCACHE_*` environment variables and a
//! TOML file, layered in that order of precedence (flag > env > file > default),
//! then validated into one [`Config`].
//!
//! Owns the settings, their layering and their validation, and the effective
//! configuration as TOML ([`Config::to_toml`], what `--check-config` prints); not what
//! the settings do (that is each consumer's business). Nothing here touches the network
//! or creates anything (`--check-config` leaves no trace): the cache directory is only
//! looked at (a regular file there is refused), and created by the cache layer at open.
//!
//! # Layout
//! 1. **Sections** ([`ServerArgs`], [`AdminArgs`], [`RuntimeArgs`], [`LogArgs`],
//!    [`CacheArgs`], [`RepoArgs`]): each setting is declared once, in its section,
//!    by the `section!` macro — its doc comment is the `--help` text, `#[arg]`
//!    gives the flag and its `CHARTCACHE_*` variable, the field name is the TOML
//!    key, and `= default` is the built-in value. Every field is an `Option` (or a
//!    `--no-*` switch) so one layer can be told apart from the next.
//! 2. **Layers**: [`Cli`] flattens the sections into the flags (clap reads the
//!    environment for each flag); the file holds the same sections' keys side by side at
//!    its top level. `or` merges two layers field by field and `or_defaults`
//!    fills what none set, so layering is written once, not per field. A file key
//!    that no section (or `[[rules]]` / `[[repos]]` table) knows is refused, every one
//!    named with the nearest known key, in the same report as every other problem.
//!    A `--no-x` switch sits beside its file spelling `x = false` as two fields.
//! 3. **Validation**: one `validate` per section turns its raw strings into typed
//!    values (through one parser per kind: [`parse_size`], [`parse_duration`],
//!    [`parse_upstream`], addresses, choices) and returns *every* problem, each
//!    `field: what is wrong and the fix` (a mistyped choice gets "did you mean"), so an
//!    operator fixes a bad DaemonSet in one round trip. A duration needs its unit;
//!    `--no-*` switches read 1/0/true/false/yes/no/on/off from the environment.
//!
//! [`RepoArgs`] holds everything that belongs to one served repository (upstream,
//! S3 endpoint and region, origin timeouts and retries, route rules, index
//! rewriting, digest checks) and validates into one [`RepoConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;
use serde::Deserialize;

use crate::http1::request::Limits;
use crate::origin::retry::{DEFAULT_DEADLINE, DEFAULT_MAX_CONCURRENCY, DEFAULT_RETRIES};
use crate::origin::{OriginConfig, TlsRoots, Upstream};
use crate::policy::{Action, Matcher, Policy, Rule};

/// Default `--sendfile-threshold`: the body size from which the cache page-aligns record
/// bodies (`cache::format::ALIGN_BODIES_FROM`); `sendfile(2)` of page-aligned data measured
/// ~25 % less server CPU per response than writev from the mmap (README, Performance).
/// Client connections per worker unless configured (or lowered by the open-file limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_SENDFILE_THRESHOLD: u64 = crate::cache::format::ALIGN_BODIES_FROM;

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

/// `cache_size` when serving the bundled example and none is configured: its five
/// objects need kilobytes, and segments are preallocated (one per worker, 1/8 of the
/// worker's share), so the demo takes a few MiB on disk instead of the default's 128 MiB.
const DEMO_CACHE_SIZE: &str = "64MiB";

/// Where the bundled example repository lives, in the order tried when no
/// `--upstream` is given.
const EXAMPLE_REPOS: &[&str] = &["examples/repo", "/usr/share/chartcache/examples/repo"];

// ---------------------------------------------------------------------------------------------
// Layering, written once.
// ---------------------------------------------------------------------------------------------

/// One layer of settings over a lower one: the higher layer's value wins where it has one.
trait Layer {
    fn or(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn or(self, lower: Self) -> Self {
        Option::or(self, lower)
    }
}

/// A `--no-*` switch: set by any layer that sets it.
impl Layer for bool {
    fn or(self, lower: Self) -> Self {
        self || lower
    }
}

/// A section: a layer that knows its defaults.
trait Section: Layer {
    /// Fills what no layer set with the built-in default (evaluated only then).
    fn or_defaults(self) -> Self;
}

/// flag > env (clap has already put both into `cli`) > file > default.
fn layered<S: Section>(cli: S, file: S) -> S {
    cli.or(file).or_defaults()
}

/// Declares one section: the struct (clap flags + serde keys from the same fields),
/// `Layer::or` field by field, and `Section::or_defaults` from each field's `= default`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident: $ty:ty $(= $default:expr)?,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Layer for $name {
            fn or(self, lower: Self) -> Self {
                Self { $( $field: Layer::or(self.$field, lower.$field), )* }
            }
        }

        impl Section for $name {
            fn or_defaults(self) -> Self {
                Self { $( $field: self.$field $(.or_else(|| $default))?, )* }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The sections: every setting, once.
// ---------------------------------------------------------------------------------------------

section! {
    /// The client-facing listener.
    pub struct ServerArgs {
        /// Address the proxy listens on [default: 0.0.0.0:8080].
        #[arg(long, env = "CHARTCACHE_LISTEN", value_name = "ADDR")]
        listen: Option<String> = Some("0.0.0.0:8080".into()),

        /// Time allowed to receive a request head [default: 10s].
        #[arg(long, env = "CHARTCACHE_HEADER_TIMEOUT", value_name = "DURATION")]
        header_timeout: Option<String> = Some("10s".into()),

        /// Idle keep-alive timeout [default: 60s].
        #[arg(long, env = "CHARTCACHE_IDLE_TIMEOUT", value_name = "DURATION")]
        idle_timeout: Option<String> = Some("60s".into()),

        /// Time a response may go without progress because the client stopped reading before
        /// the connection is cut [default: 30s].
        #[arg(long, env = "CHARTCACHE_SEND_TIMEOUT", value_name = "DURATION")]
        send_timeout: Option<String> = Some("30s".into()),

        /// Maximum client connections per worker, lowered at start to what the open-file limit
        /// allows after a reserve for upstream connections and cache files (with a warning
        /// when set here) [default: 10000, or what the open-file limit allows].
        #[arg(long, env = "CHARTCACHE_MAX_CONNECTIONS", value_name = "N")]
        max_connections: Option<usize>,

        /// Cached bodies of at least SIZE go out with sendfile(2), smaller ones with one writev
        /// from the cache's mmap: a size like 256KiB, 0 (always) or off (never) [default: 16KiB,
        /// where the cache starts page-aligning bodies]. off suits clients on the same cores
        /// that read in small pieces (README, Performance).
        #[arg(long, env = "CHARTCACHE_SENDFILE_THRESHOLD", value_name = "SIZE")]
        sendfile_threshold: Option<String> = Some(DEFAULT_SENDFILE_THRESHOLD.to_string()),
    }
}

section! {
    /// The admin listener.
    pub struct AdminArgs {
        /// Admin listener for /healthz, /readyz, /metrics and purge [default: 127.0.0.1:8081].
        #[arg(long, env = "CHARTCACHE_ADMIN", value_name = "ADDR")]
        admin: Option<String> = Some("127.0.0.1:8081".into()),

        /// Bearer token required by purge requests (required when --admin is not loopback).
        #[arg(
            long,
            env = "CHARTCACHE_ADMIN_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        admin_token: Option<String>,

        /// Price of 1,000 S3 GET requests in USD, for the estimated cost saved on /metrics and
        /// the status page [default: 0.0004, AWS S3 Standard].
        #[arg(long, env = "CHARTCACHE_S3_GET_PRICE", value_name = "USD")]
        s3_get_price: Option<f64> = Some(crate::metrics::DEFAULT_GET_PRICE_PER_1000),
    }
}

section! {
    /// Threads and the io driver.
    pub struct RuntimeArgs {
        /// Worker threads, one per core, each owning one cache shard [default: number of cores].
        #[arg(long, env = "CHARTCACHE_WORKERS", value_name = "N")]
        workers: Option<usize> = Some(cores()),

        /// I/O driver: auto (io_uring, falling back to epoll), io_uring, or epoll [default: auto].
        #[arg(long, env = "CHARTCACHE_DRIVER", value_name = "DRIVER")]
        driver: Option<String> = Some("auto".into()),
    }
}

section! {
    /// Diagnostics and the access log.
    pub struct LogArgs {
        /// Log format for diagnostics and the access log: json or text [default: json].
        #[arg(long, env = "CHARTCACHE_LOG_FORMAT", value_name = "FORMAT")]
        log_format: Option<String> = Some("json".into()),

        /// Disable the per-request access log on stdout.
        #[arg(long, env = "CHARTCACHE_NO_ACCESS_LOG", value_parser = BoolishValueParser::new())]
        #[serde(skip)]
        no_access_log: bool,
        /// The file's spelling of `--no-access-log`: `access_log = false`.
        #[arg(skip)]
        access_log: Option<bool> = Some(true),
    }
}

section! {
    /// The on-disk cache.
    pub struct CacheArgs {
        /// Cache directory, created if missing [default: ./.chartcache when serving the bundled
        /// example (no upstream configured); else /var/cache/chartcache if it can be written
        /// or created, else ./.chartcache].
        #[arg(long, env = "CHARTCACHE_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,

        /// Maximum cache size on disk, e.g. 2GiB, 512MiB [default: 2GiB; 64MiB when serving the
        /// bundled example].
        #[arg(long, env = "CHARTCACHE_CACHE_SIZE", value_name = "SIZE")]
        cache_size: Option<String> = Some("2GiB".into()),

        /// Largest object kept in the cache, e.g. 256MiB; larger ones are still fetched once for all
        /// clients asking at the same time, just not kept [default: a quarter of cache-size / workers].
        #[arg(long, env = "CHARTCACHE_MAX_OBJECT_SIZE", value_name = "SIZE")]
        max_object_size: Option<String>,

        /// How old a cached copy may be and still be served as STALE while upstream fails [default: 7d].
        #[arg(long, env = "CHARTCACHE_MAX_STALE", value_name = "DURATION")]
        max_stale: Option<String> = Some("7d".into()),

        /// How long an upstream 404 is remembered (0 disables; never for revalidated paths) [default: 5s].
        #[arg(long, env = "CHARTCACHE_NEGATIVE_TTL", value_name = "DURATION")]
        negative_ttl: Option<String> = Some("5s".into()),
    }
}

section! {
    /// One served repository: where its objects come from, how they are fetched, which
    /// paths are cached, and what is done to its index. Today there is one, served at `/`.
    pub struct RepoArgs {
        /// Where objects come from: s3://BUCKET[/PREFIX], https://HOST[/PATH], http://HOST[/PATH]
        /// or file:///DIR [default: the bundled examples/repo].
        #[arg(long, env = "CHARTCACHE_UPSTREAM", value_name = "URL")]
        upstream: Option<String> = bundled_examples(),

        /// S3-compatible endpoint (MinIO, Ceph, LocalStack...), e.g. http://127.0.0.1:9000.
        /// Uses path-style addressing. Default: AWS, virtual-hosted style.
        #[arg(long, env = "CHARTCACHE_S3_ENDPOINT", value_name = "URL")]
        s3_endpoint: Option<String>,

        /// AWS region of the bucket [default: $AWS_REGION, $AWS_DEFAULT_REGION, or us-east-1].
        #[arg(long, env = "CHARTCACHE_REGION", value_name = "REGION")]
        region: Option<String> = Some(aws_env_region()),

        /// AWS shared-config profile whose credentials sign s3:// requests [default: the
        /// standard chain, which reads $AWS_PROFILE].
        #[arg(long, env = "CHARTCACHE_PROFILE", value_name = "PROFILE")]
        profile: Option<String>,

        /// Upstream connect timeout [default: 5s].
        #[arg(long, env = "CHARTCACHE_CONNECT_TIMEOUT", value_name = "DURATION")]
        connect_timeout: Option<String> = Some("5s".into()),

        /// Upstream response deadline (head, and each body read) [default: 10s].
        #[arg(long, env = "CHARTCACHE_UPSTREAM_TIMEOUT", value_name = "DURATION")]
        upstream_timeout: Option<String> = Some("10s".into()),

        /// Retries of a failed upstream GET (connect errors, timeouts, 5xx, SlowDown) [default: 2].
        #[arg(long, env = "CHARTCACHE_RETRIES", value_name = "N")]
        retries: Option<u32> = Some(DEFAULT_RETRIES),

        /// Total time one upstream fetch may take, retries and backoff included [default: 8s].
        #[arg(long, env = "CHARTCACHE_RETRY_DEADLINE", value_name = "DURATION")]
        retry_deadline: Option<String> = Some(format!("{}ms", DEFAULT_DEADLINE.as_millis())),

        /// Concurrent upstream requests per worker; pass-through (bypassed paths, objects the cache
        /// cannot store) may hold at most half, so cache fills keep the rest [default: 64].
        #[arg(long, env = "CHARTCACHE_MAX_UPSTREAM_CONCURRENCY", value_name = "N")]
        max_upstream_concurrency: Option<usize> = Some(DEFAULT_MAX_CONCURRENCY),

        /// TLS trust roots for https upstreams: webpki (bundled) or native (system store) [default: webpki].
        #[arg(long, env = "CHARTCACHE_TLS_ROOTS", value_name = "ROOTS")]
        tls_roots: Option<String> = Some("webpki".into()),

        /// Serve index.yaml as upstream wrote it: do not rewrite helm-s3's
        /// s3://BUCKET/PREFIX/ chart URLs to repository-relative ones.
        #[arg(long, env = "CHARTCACHE_NO_REWRITE_S3_URLS", value_parser = BoolishValueParser::new())]
        #[serde(skip)]
        no_rewrite_s3_urls: bool,
        /// The file's spelling of `--no-rewrite-s3-urls`: `rewrite_s3_urls = false`.
        #[arg(skip)]
        rewrite_s3_urls: Option<bool> = Some(true),

        /// Do not check chart bytes against the sha256 digests in index.yaml.
        #[arg(long, env = "CHARTCACHE_NO_VERIFY_DIGESTS", value_parser = BoolishValueParser::new())]
        #[serde(skip)]
        no_verify_digests: bool,
        /// The file's spelling of `--no-verify-digests`: `verify_digests = false`.
        #[arg(skip)]
        verify_digests: Option<bool> = Some(true),

        /// How /index.yaml is served: auto (compact JSON to Helm >= 3.13 and Helm 4, which
        /// decode it natively and much faster; YAML to every other client, with
        /// Vary: User-Agent), yaml (always YAML) or json (always JSON where the index has a
        /// JSON form) [default: auto].
        #[arg(long, env = "CHARTCACHE_INDEX_FORMAT", value_name = "FORMAT")]
        index_format: Option<String> = Some("auto".into()),

        /// Route rules, file only (`[[rules]]`); none: [`Policy::envoy_default`].
        #[arg(skip)]
        rules: Option<Vec<RuleConfig>>,
    }
}

section! {
    /// Several repositories in one instance, each under its own path prefix.
    pub struct ReposArgs {
        /// A repository served under PREFIX from UPSTREAM, e.g. --repo /stable=s3://charts-a/stable
        /// --repo /mirror=https://charts.example.org/ (repeatable; the environment variable
        /// takes the items separated by commas or whitespace). Every other upstream setting
        /// is the global one; [[repos]] in the TOML file can set some per repository.
        /// Without it: one repository at / from --upstream.
        #[arg(long = "repo", env = "CHARTCACHE_REPOS", value_name = "PREFIX=UPSTREAM")]
        #[serde(skip)]
        repo: Option<Vec<String>>,
        /// The file's form of `--repo`: `[[repos]]` tables.
        #[arg(skip)]
        repos: Option<Vec<RepoTable>>,
    }
}

/// One `[[repos]]` table: a prefix, an upstream, and what may differ from the global
/// settings (each key defaults to the global key of the same name). Unknown keys are
/// refused by [`parse_file`], all at once (not by serde, which stops at the first).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RepoTable {
    pub prefix: String,
    pub upstream: String,
    pub s3_endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub index_format: Option<String>,
    pub verify_digests: Option<bool>,
    pub rewrite_s3_urls: Option<bool>,
    pub rules: Option<Vec<RuleConfig>>,
}

/// Command-line flags. Every flag can also be set by the environment variable
/// shown in `--help` and by the same key (with `_` instead of `-`) in the TOML
/// file given by `--config`.
#[derive(Debug, Default, Parser)]
#[command(
    name = "chartcache",
    version,
    about = "Caching proxy that serves Helm chart repositories from private S3 buckets.",
    long_about = "chartcache serves Helm chart repositories from private S3 buckets (or \
HTTPS servers, or local directories), each under its own path, signing every upstream \
request with AWS SigV4 and keeping charts in one on-disk cache that survives restarts.\n\n\
Serve several repositories (credentials from the standard AWS chain):\n  \
chartcache --repo /stable=s3://charts-a/stable --repo /team-b=s3://charts-b \\\n    \
--repo /mirror=https://charts.example.org/ --region eu-west-1\n  \
helm repo add stable http://HOST:8080/stable\n\n\
Or one repository at / (the single-upstream form):\n  \
chartcache --upstream s3://my-charts/stable --region eu-west-1\n  \
helm repo add stable http://HOST:8080\n\n\
With no arguments it serves the bundled examples/repo at / on 0.0.0.0:8080, no AWS needed:\n  \
chartcache\n  helm repo add demo http://127.0.0.1:8080\n\n\
Precedence: flag > CHARTCACHE_* environment variable > --config TOML file > default.",
    after_help = "Route rules (which paths are cached, revalidated or bypassed) are set in the \
TOML file; the defaults are: /index.yaml revalidated on every request, paths matching \
.*-dev-.* bypassed, everything else cached for 24h with Cache-Control: max-age=86400. \
Per-repository S3 endpoint, region, credentials profile, rules and index format: \
[[repos]] tables in the TOML file (see examples/repos.toml)."
)]
pub struct Cli {
    /// TOML configuration file (same keys as the flags, plus [[rules]] and [[repos]]).
    #[arg(long, env = "CHARTCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub repos: ReposArgs,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file: the same sections as [`Cli`], their keys side by side at the top
/// level (`listen`, `upstream`, `access_log`, `[[rules]]`…). Each section is read from
/// the whole document on its own (so toml's errors keep pointing at the bad line,
/// which `#[serde(flatten)]` would lose); the keys none of them knows are refused
/// by [`parse_file`] (serde's `deny_unknown_fields` cannot see across sections).
#[derive(Debug, Default)]
struct FileConfig {
    /// Every key no section (or table) knows, `where: unknown key … (did you mean …?)`;
    /// reported by [`build`] together with every other problem.
    unknown: Vec<String>,
    server: ServerArgs,
    admin: AdminArgs,
    repos: ReposArgs,
    repo: RepoArgs,
    cache: CacheArgs,
    runtime: RuntimeArgs,
    log: LogArgs,
}

/// Every TOML key some section accepts.
fn known_keys() -> Vec<&'static str> {
    [
        keys_of::<ServerArgs>(),
        keys_of::<AdminArgs>(),
        keys_of::<ReposArgs>(),
        keys_of::<RepoArgs>(),
        keys_of::<CacheArgs>(),
        keys_of::<RuntimeArgs>(),
        keys_of::<LogArgs>(),
    ]
    .concat()
}

/// One `[[rules]]` entry (unknown keys refused by [`parse_file`]).
#[derive(Debug, Clone, Deserialize)]
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

/// `match = { exact = "/index.yaml" }`, `{ prefix = "/" }` or `{ regex = ".*-dev-.*" }`
/// (unknown keys refused by [`parse_file`]).
#[derive(Debug, Clone, Deserialize)]
pub struct MatchConfig {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------------------------

/// Which io driver the workers use (defined beside the probe that resolves `auto`).
pub use crate::driver::Driver;

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
    /// A response that makes no progress for this long (the client stopped
    /// reading) ends its connection.
    pub send_timeout: Duration,
    /// Per worker; `runtime::start` lowers it to what `RLIMIT_NOFILE` allows.
    pub max_connections: usize,
    /// `max_connections` was configured (flag, env or file), not the default.
    pub max_connections_set: bool,
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
    /// Largest body kept (`None`: a quarter of each shard; see `cache::store`).
    pub max_object_size: Option<u64>,
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
    /// USD per 1,000 S3 GETs (the estimated cost saved).
    pub s3_get_price: f64,
}

/// Never prints the token (`--check-config` output may end up in logs).
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("s3_get_price", &self.s3_get_price)
            .finish()
    }
}

/// Which form of the index clients get (see `helm::form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexFormat {
    /// JSON to clients known to decode it natively (Helm >= 3.13), YAML to the rest.
    Auto,
    Yaml,
    Json,
}

/// One served repository.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// The path prefix it is served under, normalised: `""` for `/`, else `/a[/b…]`
    /// without a trailing slash. Prefixes of one configuration never overlap.
    pub prefix: String,
    /// AWS shared-config profile for an s3:// upstream's credentials (`None`: the
    /// standard chain).
    pub profile: Option<String>,
    pub origin: OriginConfig,
    pub policy: Policy,
    /// Rewrite helm-s3 `s3://` chart URLs in index.yaml to relative ones.
    pub rewrite_s3_urls: bool,
    /// Check filled charts against the index's sha256 digests.
    pub verify_digests: bool,
    pub index_format: IndexFormat,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    /// Every served repository, in configuration order (at least one).
    pub repos: Vec<RepoConfig>,
    /// The first of [`Config::repos`]: the only one in the single-repository form
    /// (`--upstream`, served at `/`).
    pub repo: RepoConfig,
    pub cache: CacheConfig,
    pub workers: usize,
    pub driver: Driver,
    pub log_format: LogFormat,
    pub access_log: bool,
}

impl Config {
    /// Parses flags and environment from the process, then loads and merges the file.
    pub fn from_args() -> Result<(Config, bool), Error> {
        let cli = Cli::parse();
        let check = cli.check_config;
        Ok((load(cli)?, check))
    }
}

// ---------------------------------------------------------------------------------------------
// The effective configuration as a TOML file (`--check-config`).
// ---------------------------------------------------------------------------------------------

impl Config {
    /// The effective configuration as a TOML file of the same keys `--config` reads
    /// (defaults filled in, every layer merged): loading it gives this configuration
    /// again. The admin token is never printed: a comment says whether one is set.
    pub fn to_toml(&self) -> String {
        use toml::{Table, Value};
        fn s(v: impl ToString) -> Value {
            Value::String(v.to_string())
        }
        let mut t = Table::new();
        let sv = &self.server;
        t.insert("listen".into(), s(sv.listen));
        t.insert("header_timeout".into(), s(show_duration(sv.header_timeout)));
        t.insert("idle_timeout".into(), s(show_duration(sv.idle_timeout)));
        t.insert("send_timeout".into(), s(show_duration(sv.send_timeout)));
        // Unset, the limit is the default lowered to what the open-file limit allows at
        // start (not known here): printed only when configured.
        if sv.max_connections_set {
            t.insert(
                "max_connections".into(),
                Value::Integer(i64::try_from(sv.max_connections).unwrap_or(i64::MAX)),
            );
        }
        t.insert(
            "sendfile_threshold".into(),
            s(sv.sendfile_threshold.map_or("off".into(), show_size)),
        );
        t.insert("admin".into(), s(self.admin.listen));
        t.insert(
            "workers".into(),
            Value::Integer(i64::try_from(self.workers).unwrap_or(i64::MAX)),
        );
        t.insert("driver".into(), s(self.driver.name()));
        t.insert(
            "log_format".into(),
            s(match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }),
        );
        t.insert("access_log".into(), Value::Boolean(self.access_log));
        let c = &self.cache;
        t.insert("cache_dir".into(), s(c.dir.display()));
        t.insert("cache_size".into(), s(show_size(c.size)));
        if let Some(max) = c.max_object_size {
            t.insert("max_object_size".into(), s(show_size(max)));
        }
        t.insert("max_stale".into(), s(show_duration(c.max_stale)));
        t.insert("negative_ttl".into(), s(show_duration(c.negative_ttl)));
        // The origin settings every repository shares (only [[repos]] keys differ).
        let o = &self.repo.origin;
        t.insert(
            "connect_timeout".into(),
            s(show_duration(o.connect_timeout)),
        );
        t.insert(
            "upstream_timeout".into(),
            s(show_duration(o.request_timeout)),
        );
        t.insert("retries".into(), Value::Integer(i64::from(o.retries)));
        t.insert("retry_deadline".into(), s(show_duration(o.retry_deadline)));
        t.insert(
            "max_upstream_concurrency".into(),
            Value::Integer(i64::try_from(o.max_upstream_concurrency).unwrap_or(i64::MAX)),
        );
        t.insert(
            "tls_roots".into(),
            s(match o.tls_roots {
                TlsRoots::Webpki => "webpki",
                TlsRoots::Native => "native",
            }),
        );
        let repo_keys = |r: &RepoConfig, t: &mut Table| {
            t.insert("upstream".into(), s(&r.origin.upstream));
            if let Some(ep) = &r.origin.s3_endpoint {
                t.insert("s3_endpoint".into(), s(ep));
            }
            t.insert("region".into(), s(&r.origin.region));
            if let Some(profile) = &r.profile {
                t.insert("profile".into(), s(profile));
            }
            t.insert(
                "index_format".into(),
                s(match r.index_format {
                    IndexFormat::Auto => "auto",
                    IndexFormat::Yaml => "yaml",
                    IndexFormat::Json => "json",
                }),
            );
            t.insert("verify_digests".into(), Value::Boolean(r.verify_digests));
            t.insert("rewrite_s3_urls".into(), Value::Boolean(r.rewrite_s3_urls));
            t.insert(
                "rules".into(),
                Value::Array(r.policy.rules().iter().map(rule_table).collect()),
            );
        };
        match self.repos.as_slice() {
            [one] if one.prefix.is_empty() => repo_keys(one, &mut t),
            repos => {
                let tables = repos.iter().map(|r| {
                    let mut table = Table::new();
                    table.insert("prefix".into(), s(shown_prefix(&r.prefix)));
                    repo_keys(r, &mut table);
                    Value::Table(table)
                });
                t.insert("repos".into(), Value::Array(tables.collect()));
            }
        }
        let token = match self.admin.token {
            Some(_) => "# admin_token: set (not shown)",
            None => "# admin_token: not set",
        };
        // A table of plain values always serialises.
        let body = toml::to_string(&t).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        format!("{token}\n{body}")
    }
}

/// One rule as its `[[rules]]` table.
fn rule_table(rule: &Rule) -> toml::Value {
    use toml::{Table, Value};
    let mut m = Table::new();
    let (kind, pattern) = match &rule.matcher {
        Matcher::Exact(e) => ("exact", e.clone()),
        Matcher::Prefix(p) => ("prefix", p.clone()),
        Matcher::Regex(r) => {
            let src = r.as_str();
            let inner = src
                .strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(src);
            ("regex", inner.to_string())
        }
    };
    m.insert(kind.into(), Value::String(pattern));
    let mut t = Table::new();
    t.insert("match".into(), Value::Table(m));
    match rule.action {
        Action::Cache { ttl } => {
            t.insert("action".into(), Value::String("cache".into()));
            t.insert("ttl".into(), Value::String(show_duration(ttl)));
        }
        Action::Revalidate { fresh_for } => {
            t.insert("action".into(), Value::String("revalidate".into()));
            t.insert("fresh_for".into(), Value::String(show_duration(fresh_for)));
        }
        Action::Bypass => {
            t.insert("action".into(), Value::String("bypass".into()));
        }
    }
    if !rule.headers.is_empty() {
        let headers = rule
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        t.insert("headers".into(), Value::Table(headers));
    }
    Value::Table(t)
}

/// A duration as [`parse_duration`] reads it back: the largest unit that divides it.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// A size as [`parse_size`] reads it back: the largest binary unit that divides it.
fn show_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
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
            parse_file(&text).map_err(|message| Error::Parse {
                path: path.clone(),
                message,
            })?
        }
        None => FileConfig::default(),
    };
    build(cli, file)
}

/// Parses a TOML document on its own (used by tests and `--check-config`).
pub fn from_toml(text: &str) -> Result<Config, Error> {
    let file = parse_file(text).map_err(|message| Error::Parse {
        path: PathBuf::from("<inline>"),
        message,
    })?;
    build(Cli::default(), file)
}

/// The TOML file's sections. A syntax or type error ends parsing (with toml's line and
/// column); every key that no section or table knows is collected in
/// [`FileConfig::unknown`], each with the nearest known key, and reported by [`build`]
/// beside every validation problem, so one run names them all.
fn parse_file(text: &str) -> Result<FileConfig, String> {
    fn section<S: serde::de::DeserializeOwned>(text: &str) -> Result<S, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
    fn sections(text: &str) -> Result<FileConfig, String> {
        Ok(FileConfig {
            unknown: Vec::new(),
            server: section(text)?,
            admin: section(text)?,
            repos: section(text)?,
            repo: section(text)?,
            cache: section(text)?,
            runtime: section(text)?,
            log: section(text)?,
        })
    }
    let top: toml::Table = section(text)?;
    let unknown = unknown_keys(&top);
    match sections(text) {
        Ok(file) => Ok(FileConfig { unknown, ..file }),
        // A type error stops here; the unknown keys go in the same message.
        Err(e) if unknown.is_empty() => Err(e),
        Err(e) => Err(format!("{}\n{e}", unknown.join("\n"))),
    }
}

/// Every key of the document that nothing reads: top-level keys against every
/// section's, `[[rules]]` (and their `match`) and `[[repos]]` (and their rules)
/// against their own, each named by its place (`rules[0].ttll`) with a suggestion.
fn unknown_keys(top: &toml::Table) -> Vec<String> {
    fn check(table: &toml::Table, place: &str, known: &[&str], out: &mut Vec<String>) {
        for key in table.keys().filter(|k| !known.contains(&k.as_str())) {
            let at = format!("{place}{key}");
            out.push(match closest(key, known) {
                Some(near) => format!("unknown key `{at}` (did you mean `{near}`?)"),
                None => format!(
                    "unknown key `{at}`; the keys here are: {}",
                    known.join(", ")
                ),
            });
        }
    }
    fn rules(value: Option<&toml::Value>, place: &str, out: &mut Vec<String>) {
        let Some(toml::Value::Array(rules)) = value else {
            return;
        };
        for (i, rule) in rules.iter().enumerate() {
            if let toml::Value::Table(rule) = rule {
                let place = format!("{place}rules[{i}].");
                check(rule, &place, keys_of::<RuleConfig>(), out);
                if let Some(toml::Value::Table(m)) = rule.get("match") {
                    check(m, &format!("{place}match."), keys_of::<MatchConfig>(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    check(top, "", &known_keys(), &mut out);
    rules(top.get("rules"), "", &mut out);
    if let Some(toml::Value::Array(repos)) = top.get("repos") {
        for (i, repo) in repos.iter().enumerate() {
            if let toml::Value::Table(repo) = repo {
                let place = format!("repos[{i}].");
                check(repo, &place, keys_of::<RepoTable>(), &mut out);
                rules(repo.get("rules"), &place, &mut out);
            }
        }
    }
    out
}

/// `"{value}" is not one of a, b, c`, with the nearest choice when it looks like a typo.
fn not_one_of(value: &str, choices: &[&str]) -> String {
    let list = choices.join(", ");
    match closest(value, choices) {
        Some(near) => format!("{value:?} is not one of {list} (did you mean {near}?)"),
        None => format!("{value:?} is not one of {list}"),
    }
}

fn build(cli: Cli, file: FileConfig) -> Result<Config, Error> {
    let mut problems = file.unknown;
    // Serving the bundled example: no upstream and no repositories configured anywhere.
    let demo = cli.repo.upstream.is_none()
        && file.repo.upstream.is_none()
        && cli
            .repos
            .repo
            .as_ref()
            .is_none_or(|items| items.iter().all(|i| i.trim().is_empty()))
        && file.repos.repos.is_none();
    let server = ok(layered(cli.server, file.server).validate(), &mut problems);
    let admin = ok(layered(cli.admin, file.admin).validate(), &mut problems);
    // The global upstream was given (not the built-in bundled examples).
    let upstream_given = cli.repo.upstream.is_some() || file.repo.upstream.is_some();
    let global = layered(cli.repo, file.repo);
    let repos = ok(
        layered(cli.repos, file.repos).validate(global, upstream_given),
        &mut problems,
    );
    let mut cache = cli.cache.or(file.cache);
    if demo && cache.cache_size.is_none() {
        cache.cache_size = Some(DEMO_CACHE_SIZE.into());
    }
    let cache = ok(
        cache.or_defaults().validate(|| default_cache_dir(demo)),
        &mut problems,
    );
    let runtime = ok(layered(cli.runtime, file.runtime).validate(), &mut problems);
    let log = ok(layered(cli.log, file.log).validate(), &mut problems);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let (
        Some(server),
        Some(admin),
        Some(repos),
        Some(cache),
        Some((workers, driver)),
        Some((log_format, access_log)),
    ) = (server, admin, repos, cache, runtime, log)
    else {
        return Err(Error::Invalid(problems));
    };
    let Some(repo) = repos.first().cloned() else {
        return Err(Error::Invalid(vec!["repos: none configured".into()]));
    };
    Ok(Config {
        server,
        admin,
        repos,
        repo,
        cache,
        workers,
        driver,
        log_format,
        access_log,
    })
}

/// A setting turned off by its `--no-x` flag or by `x = false` in the file; on
/// otherwise (`x` carries its `= Some(true)` default after layering).
fn switch(no: bool, yes: Option<bool>) -> bool {
    !no && yes != Some(false)
}

/// A section's value, or its problems added to `all`.
fn ok<T>(section: Result<T, Vec<String>>, all: &mut Vec<String>) -> Option<T> {
    section.map_err(|mut p| all.append(&mut p)).ok()
}

// ---------------------------------------------------------------------------------------------
// Validation, one function per section.
// ---------------------------------------------------------------------------------------------

/// The problems found in one section, each `field: what is wrong and the fix`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    /// `value` through `parse`; a failure is recorded as `field: why`.
    fn parse<V, T>(
        &mut self,
        field: &str,
        value: Option<V>,
        parse: impl FnOnce(V) -> Result<T, String>,
    ) -> Option<T> {
        let Some(value) = value else {
            self.push(format!("{field}: not set"));
            return None;
        };
        parse(value)
            .map_err(|e| self.push(format!("{field}: {e}")))
            .ok()
    }

    /// A count that must be at least 1.
    fn at_least_one(&mut self, field: &str, value: Option<usize>) -> Option<usize> {
        self.parse(field, value, |n| match n {
            0 => Err("must be at least 1".into()),
            n => Ok(n),
        })
    }

    /// Every problem, or the section `build` makes of the values (each `Some` when
    /// nothing was recorded).
    fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Vec<String>> {
        if !self.0.is_empty() {
            return Err(self.0);
        }
        build().ok_or_else(|| vec!["internal: a setting is missing after validation".into()])
    }
}

impl ServerArgs {
    fn validate(self) -> Result<ServerConfig, Vec<String>> {
        let mut p = Problems::default();
        let listen = p.parse("listen", self.listen, |s| parse_addr(&s));
        let header_timeout = p.parse("header_timeout", self.header_timeout, |s| {
            parse_duration(&s)
        });
        let idle_timeout = p.parse("idle_timeout", self.idle_timeout, |s| parse_duration(&s));
        let send_timeout = p.parse(
            "send_timeout",
            self.send_timeout,
            |s| match parse_duration(&s)? {
                d if d.is_zero() => Err(format!("{s} would cut every response; use e.g. 30s")),
                d => Ok(d),
            },
        );
        let max_connections_set = self.max_connections.is_some();
        let max_connections = p.at_least_one(
            "max_connections",
            self.max_connections.or(Some(DEFAULT_MAX_CONNECTIONS)),
        );
        let sendfile_threshold =
            p.parse("sendfile_threshold", self.sendfile_threshold, |s| {
                match s.trim() {
                    off if off.eq_ignore_ascii_case("off") => Ok(None),
                    size => parse_size(size)
                        .map(Some)
                        .map_err(|e| format!("{e}; or off (never) or 0 (always)")),
                }
            });
        p.finish(|| {
            Some(ServerConfig {
                listen: listen?,
                header_timeout: header_timeout?,
                idle_timeout: idle_timeout?,
                send_timeout: send_timeout?,
                max_connections: max_connections?,
                max_connections_set,
                limits: Limits::default(),
                sendfile_threshold: sendfile_threshold?,
            })
        })
    }
}

impl AdminArgs {
    fn validate(self) -> Result<AdminConfig, Vec<String>> {
        let mut p = Problems::default();
        let listen = p.parse("admin", self.admin, |s| parse_addr(&s));
        let token = self.admin_token.filter(|t| !t.is_empty());
        if let (Some(a), None) = (listen, &token) {
            if !a.ip().is_loopback() {
                p.push(format!(
                    "admin: {a} is not a loopback address, so purge needs a token: set \
                     --admin-token (or CHARTCACHE_ADMIN_TOKEN), or bind the admin listener to \
                     127.0.0.1"
                ));
            }
        }
        let s3_get_price = p.parse("s3_get_price", self.s3_get_price, |v| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!(
                    "{v} is not a price: use USD per 1,000 GETs, e.g. 0.0004"
                ))
            }
        });
        p.finish(|| {
            Some(AdminConfig {
                listen: listen?,
                token,
                s3_get_price: s3_get_price?,
            })
        })
    }
}

impl RuntimeArgs {
    /// The number of workers and the driver.
    fn validate(self) -> Result<(usize, Driver), Vec<String>> {
        let mut p = Problems::default();
        let workers = p.parse("workers", self.workers, |n| match n {
            1..=256 => Ok(n),
            _ => Err(format!(
                "{n} is out of range; use 1..=256 (default: one per core, {} here)",
                cores()
            )),
        });
        let driver = p.parse("driver", self.driver, |s| match s.as_str() {
            "auto" => Ok(Driver::Auto),
            "io_uring" | "iouring" | "uring" => Ok(Driver::IoUring),
            "epoll" | "legacy" => Ok(Driver::Epoll),
            other => Err(not_one_of(other, &["auto", "io_uring", "epoll"])),
        });
        p.finish(|| Some((workers?, driver?)))
    }
}

impl LogArgs {
    /// The log format and whether the access log is on.
    fn validate(self) -> Result<(LogFormat, bool), Vec<String>> {
        let mut p = Problems::default();
        let format = p.parse("log_format", self.log_format, |s| match s.as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(not_one_of(other, &["json", "text"])),
        });
        let access_log = switch(self.no_access_log, self.access_log);
        p.finish(|| Some((format?, access_log)))
    }
}

impl CacheArgs {
    /// `default_dir`: the directory when none is configured (decided by [`build`], which
    /// knows whether the bundled example is served).
    fn validate(self, default_dir: impl FnOnce() -> PathBuf) -> Result<CacheConfig, Vec<String>> {
        let mut p = Problems::default();
        let dir = p.parse(
            "cache_dir",
            Some(self.cache_dir.unwrap_or_else(default_dir)),
            |dir| match std::fs::metadata(&dir) {
                Ok(m) if !m.is_dir() => Err(format!(
                    "{} exists and is not a directory; give a directory (it is created if \
                     missing)",
                    dir.display()
                )),
                _ => Ok(dir),
            },
        );
        let size = p.parse("cache_size", self.cache_size, |s| match parse_size(&s)? {
            n if n >= 4 << 20 => Ok(n),
            _ => Err(format!("{s} is too small; use at least 4MiB")),
        });
        let max_object_size = match self.max_object_size {
            None => Some(None),
            Some(s) => p
                .parse("max_object_size", Some(s), |s| match parse_size(&s)? {
                    n if n >= 1 << 20 => Ok(n),
                    _ => Err(format!("{s} is too small; use at least 1MiB")),
                })
                .map(Some),
        };
        let negative_ttl = p.parse("negative_ttl", self.negative_ttl, |s| parse_duration(&s));
        let max_stale = p.parse("max_stale", self.max_stale, |s| parse_duration(&s));
        p.finish(|| {
            Some(CacheConfig {
                dir: dir?,
                size: size?,
                max_object_size: max_object_size?,
                negative_ttl: negative_ttl?,
                max_stale: max_stale?,
            })
        })
    }
}

impl ReposArgs {
    /// Every repository: the `--repo` items (or `[[repos]]` tables) over the global
    /// settings `global`, or the one repository at `/` that `global` describes.
    /// `upstream_given`: the global upstream was set explicitly, which is refused
    /// beside repositories (which one would `/` be?); the built-in default upstream
    /// simply yields to them.
    fn validate(
        self,
        global: RepoArgs,
        upstream_given: bool,
    ) -> Result<Vec<RepoConfig>, Vec<String>> {
        // An empty CHARTCACHE_REPOS (a template that rendered none) is not given.
        let items = self
            .repo
            .filter(|items| items.iter().any(|i| !i.trim().is_empty()));
        let tables = match (items, self.repos) {
            (Some(items), _) => {
                let mut tables = Vec::new();
                let mut bad = Vec::new();
                for item in items
                    .iter()
                    .flat_map(|i| i.split(|c: char| c == ',' || c.is_whitespace()))
                    .filter(|i| !i.is_empty())
                {
                    match item.split_once('=') {
                        Some((prefix, upstream)) if !upstream.is_empty() => {
                            tables.push(RepoTable {
                                prefix: prefix.into(),
                                upstream: upstream.into(),
                                ..RepoTable::default()
                            })
                        }
                        _ => bad.push(format!(
                            "repo: {item:?} is not PREFIX=UPSTREAM, e.g. /stable=s3://my-charts/stable"
                        )),
                    }
                }
                if !bad.is_empty() {
                    return Err(bad);
                }
                tables
            }
            (None, Some(tables)) => tables,
            (None, None) => {
                return global
                    .or_defaults()
                    .validate(String::new(), None)
                    .map(|r| vec![r]);
            }
        };
        let mut p = Problems::default();
        if tables.is_empty() {
            p.push("repos: empty; give at least one PREFIX=UPSTREAM, or leave it out and use --upstream".into());
        }
        if upstream_given {
            p.push(
                "upstream and repo: both given; with --repo / CHARTCACHE_REPOS / [[repos]] every \
                 repository names its own upstream (serve the old one at / with --repo /=URL), \
                 so remove --upstream / CHARTCACHE_UPSTREAM / upstream"
                    .into(),
            );
        }
        let mut out: Vec<RepoConfig> = Vec::new();
        for (i, t) in tables.into_iter().enumerate() {
            let field = |f: &str| format!("repos[{i}] ({}).{f}", t.prefix);
            let prefix = match normalise_prefix(&t.prefix) {
                Ok(prefix) => prefix,
                Err(e) => {
                    p.push(format!("{}: {e}", field("prefix")));
                    continue;
                }
            };
            for other in &out {
                if prefixes_overlap(&other.prefix, &prefix) {
                    p.push(format!(
                        "repos: prefixes {} and {} overlap (one contains the other); give each \
                         repository its own path, e.g. /stable and /incubator",
                        shown_prefix(&other.prefix),
                        shown_prefix(&prefix)
                    ));
                }
            }
            let mut args = global.clone();
            args.upstream = Some(t.upstream.clone());
            // A global S3 endpoint is the default of the s3:// repositories only.
            let inherited = args.s3_endpoint.filter(|_| t.upstream.starts_with("s3://"));
            args.s3_endpoint = t.s3_endpoint.or(inherited);
            args.region = t.region.or(args.region);
            args.profile = t.profile.or(args.profile);
            args.index_format = t.index_format.or(args.index_format);
            if let Some(v) = t.verify_digests {
                args.verify_digests = Some(v);
                args.no_verify_digests = false;
            }
            if let Some(v) = t.rewrite_s3_urls {
                args.rewrite_s3_urls = Some(v);
                args.no_rewrite_s3_urls = false;
            }
            args.rules = t.rules.or(args.rules);
            match args.or_defaults().validate(prefix, Some(&field(""))) {
                Ok(repo) => out.push(repo),
                Err(problems) => {
                    for problem in problems {
                        p.push(problem);
                    }
                }
            }
        }
        p.finish(|| Some(out))
    }
}

/// `/stable/`, `stable`, `/` → `/stable`, `/stable`, `""`: a leading slash, no trailing
/// one; segments of letters, digits, `.`, `_`, `~`, `-` (not `.`, `..` or `-`, which
/// names the per-chart views).
pub fn normalise_prefix(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for seg in trimmed.split('/') {
        let chars_ok = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
        if !chars_ok || matches!(seg, "." | ".." | "-") {
            return Err(format!(
                "{raw:?} is not a path prefix: use segments of letters, digits, '.', '_', '~', \
                 '-' such as /stable or /team-b/charts"
            ));
        }
    }
    Ok(format!("/{trimmed}"))
}

/// Does one prefix contain the other (`/a` and `/a/b`, `/` and anything)?
fn prefixes_overlap(a: &str, b: &str) -> bool {
    let within = |outer: &str, inner: &str| {
        outer.is_empty()
            || inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// A normalised prefix as an operator writes it (`""` is `/`).
pub fn shown_prefix(prefix: &str) -> &str {
    if prefix.is_empty() {
        "/"
    } else {
        prefix
    }
}

impl RepoArgs {
    /// One repository served under `prefix`; `field` names it in problems (`None`: the
    /// global settings, named by their own keys).
    fn validate(self, prefix: String, field: Option<&str>) -> Result<RepoConfig, Vec<String>> {
        let mut p = Problems::default();
        let upstream = match self.upstream {
            Some(u) => parse_upstream(&u).map_err(|e| p.push(e)).ok(),
            None => {
                p.push(
                    "upstream: not set, and the bundled examples/repo was not found in the \
                     current directory: pass --upstream s3://BUCKET[/PREFIX] (or \
                     CHARTCACHE_UPSTREAM), or run from the chartcache source checkout"
                        .into(),
                );
                None
            }
        };
        if let Some(ep) = &self.s3_endpoint {
            if let Err(e) = url::Url::parse(ep)
                .map_err(|e| e.to_string())
                .and_then(|u| match u.scheme() {
                    "http" | "https" if u.host_str().is_some() => Ok(()),
                    _ => Err("must be http://HOST[:PORT] or https://HOST[:PORT]".into()),
                })
            {
                p.push(format!(
                    "s3_endpoint: {ep:?} is not a valid URL ({e}), e.g. http://127.0.0.1:9000"
                ));
            }
            if !matches!(upstream, Some(Upstream::S3 { .. }) | None) {
                p.push(
                    "s3_endpoint: only applies to an s3:// upstream; remove it or use \
                     --upstream s3://BUCKET"
                        .into(),
                );
            }
        }
        let region = p.parse("region", self.region, |r| {
            if r.is_empty() {
                Ok("us-east-1".to_string())
            } else if r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                Ok(r)
            } else {
                Err(format!("{r:?} is not an AWS region name such as eu-west-1"))
            }
        });
        let connect_timeout = p.parse("connect_timeout", self.connect_timeout, |s| {
            parse_duration(&s)
        });
        let request_timeout = p.parse("upstream_timeout", self.upstream_timeout, |s| {
            parse_duration(&s)
        });
        let retries = p.parse("retries", self.retries, Ok);
        let retry_deadline = p.parse("retry_deadline", self.retry_deadline, |s| {
            parse_duration(&s)
        });
        let max_upstream_concurrency =
            p.at_least_one("max_upstream_concurrency", self.max_upstream_concurrency);
        let tls_roots = p.parse("tls_roots", self.tls_roots, |s| match s.as_str() {
            "webpki" => Ok(TlsRoots::Webpki),
            "native" => Ok(TlsRoots::Native),
            other => Err(not_one_of(other, &["webpki", "native"])),
        });
        let policy = match self.rules {
            None => Policy::envoy_default(),
            Some(rules) => {
                let mut out = Vec::new();
                for (i, r) in rules.iter().enumerate() {
                    match parse_rule(r) {
                        Ok(rule) => out.push(rule),
                        Err(e) => p.push(format!("rules[{i}]: {e}")),
                    }
                }
                Policy::new(out)
            }
        };
        let rewrite_s3_urls = switch(self.no_rewrite_s3_urls, self.rewrite_s3_urls);
        let verify_digests = switch(self.no_verify_digests, self.verify_digests);
        let index_format = p.parse("index_format", self.index_format, |s| match s.as_str() {
            "auto" => Ok(IndexFormat::Auto),
            "yaml" => Ok(IndexFormat::Yaml),
            "json" => Ok(IndexFormat::Json),
            other => Err(not_one_of(other, &["auto", "yaml", "json"])),
        });
        let profile = self.profile.filter(|s| !s.is_empty());
        if let Some(field) = field {
            p.0 = std::mem::take(&mut p.0)
                .into_iter()
                .map(|problem| format!("{field}{problem}"))
                .collect();
        }
        p.finish(|| {
            Some(RepoConfig {
                prefix,
                profile,
                origin: OriginConfig {
                    upstream: upstream?,
                    s3_endpoint: self.s3_endpoint,
                    region: region?,
                    connect_timeout: connect_timeout?,
                    request_timeout: request_timeout?,
                    dns_refresh: Duration::from_secs(30),
                    tls_roots: tls_roots?,
                    max_idle_connections: 32,
                    retries: retries?,
                    retry_deadline: retry_deadline?,
                    max_upstream_concurrency: max_upstream_concurrency?,
                },
                policy,
                rewrite_s3_urls,
                verify_digests,
                index_format: index_format?,
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults that are not constants, and the parsers.
// ---------------------------------------------------------------------------------------------

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `$AWS_REGION`, else `$AWS_DEFAULT_REGION`, else empty (which validation reads as us-east-1).
fn aws_env_region() -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_default()
}

/// `file://` + the first of [`EXAMPLE_REPOS`] that exists.
fn bundled_examples() -> Option<String> {
    let dir = EXAMPLE_REPOS.iter().map(Path::new).find(|p| p.is_dir())?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    Some(format!("file://{}", dir.display()))
}

/// The cache directory when none is configured. Decides without creating anything
/// (`--check-config` must leave no trace; the cache layer creates the directory at open):
/// - the bundled example (`demo`) run from a writable directory (a checkout):
///   `./.chartcache`, so a first try stays there (gitignored) even when run as root;
/// - else `/var/cache/chartcache` when it is a writable directory, or could be created
///   in a writable `/var/cache` (the container image: its working directory is
///   read-only, `/var/cache/chartcache` its volume);
/// - else `./.chartcache`.
fn default_cache_dir(demo: bool) -> PathBuf {
    let local = PathBuf::from(".chartcache");
    if demo && writable(Path::new(".")) {
        return local;
    }
    let system = Path::new("/var/cache/chartcache");
    let usable = if system.exists() {
        system.is_dir() && writable(system)
    } else {
        system.parent().is_some_and(|p| p.is_dir() && writable(p))
    };
    if usable {
        system.to_path_buf()
    } else {
        local
    }
}

/// May this process create files in `dir` (`access(2)` with `W_OK | X_OK`)?
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; access(2)
    // only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `HOST:PORT` → the first address it resolves to.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{s:?} is not an address; use HOST:PORT such as 0.0.0.0:8080"))
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
                "action {}",
                not_one_of(other, &["cache", "revalidate", "bypass"])
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

/// `500ms`, `10s`, `5m`, `1h`, `7d`, `86400s` → Duration. A number needs its unit
/// (`--upstream-timeout 10` could mean seconds or milliseconds), except `0`.
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
        "" if n == 0.0 => 0.0,
        "" => {
            return Err(format!(
                "{s:?} has no unit; write it with one of ms, s, m, h, d (e.g. {s}s)"
            ))
        }
        "ms" => n / 1000.0,
        "s" => n,
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

/// The TOML keys `T` accepts, as its derived `Deserialize` names them to
/// `deserialize_struct` (`#[serde(skip)]` fields are not among them). A section must
/// therefore not use `#[serde(flatten)]`, which would hide its keys from this probe
/// (`every_unknown_key_is_named_with_a_suggestion` would fail).
fn keys_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("only the field names were wanted"))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut keys));
    keys
}

/// The known key nearest to `key` (by edit distance), if it is a plausible typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short ASCII-ish strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli() -> Cli {
        let mut c = Cli::default();
        c.repo.upstream = Some("s3://my-charts/stable".into());
        c
    }

    fn file(text: &str) -> FileConfig {
        parse_file(text).unwrap()
    }

    #[test]
    fn defaults_match_the_envoy_setup() {
        let c = build(cli(), FileConfig::default()).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.cache.size, 2 << 30);
        assert_eq!(
            c.repo.origin.upstream,
            Upstream::S3 {
                bucket: "my-charts".into(),
                prefix: "stable".into()
            }
        );
        assert!(matches!(
            c.repo.policy.decide("/index.yaml").action,
            Action::Revalidate { .. }
        ));
        assert!(matches!(
            c.repo.policy.decide("/a-1.0.0-dev-3.tgz").action,
            Action::Bypass
        ));
        assert!(matches!(
            c.repo.policy.decide("/a-1.0.0.tgz").action,
            Action::Cache { .. }
        ));
    }

    #[test]
    fn defaults_of_every_section() {
        let c = build(cli(), FileConfig::default()).unwrap();
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.send_timeout, Duration::from_secs(30));
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.admin.token, None);
        assert_eq!(c.cache.max_stale, Duration::from_secs(7 * 86_400));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
        assert_eq!(c.workers, cores());
        assert_eq!(c.driver, Driver::Auto);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.access_log);
        let o = &c.repo.origin;
        assert_eq!(o.s3_endpoint, None);
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        assert_eq!(o.request_timeout, Duration::from_secs(10));
        assert_eq!(o.retries, DEFAULT_RETRIES);
        assert_eq!(o.retry_deadline, DEFAULT_DEADLINE);
        assert_eq!(o.max_upstream_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(o.tls_roots, TlsRoots::Webpki);
        assert!(c.repo.rewrite_s3_urls && c.repo.verify_digests);
    }

    #[test]
    fn flags_win_over_file() {
        let mut c = cli();
        c.server.listen = Some("127.0.0.1:9100".into());
        let cfg = build(
            c,
            file("listen = \"127.0.0.1:9000\"\ncache_size = \"1GiB\""),
        )
        .unwrap();
        assert_eq!(cfg.server.listen.port(), 9100);
        assert_eq!(cfg.cache.size, 1 << 30);
    }

    /// flag > env > file > default, for a sample of settings from every section, through
    /// the real clap parser (the only test here that touches the environment). A layer
    /// is shown to win when the result equals the file alone saying that layer's value.
    #[test]
    fn layering_is_flag_env_file_default_in_every_section() {
        let load = |args: &[&str], env: Option<(&str, &str)>, toml: &str| {
            if let Some((k, v)) = env {
                std::env::set_var(k, v);
            }
            let base = ["chartcache", "--upstream", "s3://bucket-a"];
            let cli = Cli::try_parse_from(base.iter().chain(args));
            if let Some((k, _)) = env {
                std::env::remove_var(k);
            }
            format!("{:?}", build(cli.unwrap(), file(toml)).unwrap())
        };
        let default = load(&[], None, "");
        // (TOML key, [file, env, flag] values); the flag is --key-with-dashes and the
        // variable CHARTCACHE_KEY (README's table is checked against both below).
        let cases = [
            ("listen", ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
            ("idle_timeout", ["1s", "2s", "3s"]),
            ("sendfile_threshold", ["2MiB", "off", "1MiB"]),
            ("admin", ["127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"]),
            ("cache_size", ["8MiB", "16MiB", "32MiB"]),
            ("negative_ttl", ["1s", "2s", "3s"]),
            ("workers", ["7", "8", "9"]),
            ("driver", ["io_uring", "epoll", "auto"]),
            ("log_format", ["text", "json", "text"]),
            ("upstream_timeout", ["1s", "2s", "3s"]),
            ("retries", ["3", "4", "5"]),
            ("region", ["xx-test-1", "xx-test-2", "xx-test-3"]),
            ("index_format", ["yaml", "json", "yaml"]),
        ];
        for (key, [in_file, in_env, in_flag]) in cases {
            let env = &format!("CHARTCACHE_{}", key.to_uppercase());
            let toml = |v: &str| format!("{key} = {}", toml_value(v));
            let flag = format!("--{}", key.replace('_', "-"));
            let file_alone = load(&[], None, &toml(in_file));
            assert_ne!(file_alone, default, "{key}: the file is not read");
            let env_over_file = load(&[], Some((env, in_env)), &toml(in_file));
            assert_eq!(env_over_file, load(&[], None, &toml(in_env)), "{key}: env");
            let flag_over_env = load(&[&flag, in_flag], Some((env, in_env)), &toml(in_file));
            assert_eq!(
                flag_over_env,
                load(&[], None, &toml(in_flag)),
                "{key}: flag"
            );
        }

        // The switches: `--no-x` / CHARTCACHE_NO_X=true beat the file's `x = true`.
        for key in ["access_log", "rewrite_s3_urls", "verify_digests"] {
            let env = &format!("CHARTCACHE_NO_{}", key.to_uppercase());
            let off = load(&[], None, &format!("{key} = false"));
            let on = format!("{key} = true");
            assert_ne!(off, default, "{key}: the file is not read");
            assert_eq!(load(&[], None, &on), default, "{key}: on by default");
            assert_eq!(load(&[], Some((env, "true")), &on), off, "{key}: env");
            let flag = format!("--no-{}", key.replace('_', "-"));
            assert_eq!(load(&[&flag], None, &on), off, "{key}: flag");
        }
    }

    /// A value as TOML: numbers bare, everything else quoted.
    fn toml_value(v: &str) -> String {
        if v.bytes().all(|b| b.is_ascii_digit()) {
            v.to_string()
        } else {
            format!("{v:?}")
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut c = Cli::default();
        c.server.listen = Some("nope".into());
        c.repo.upstream = Some("ftp://x".into());
        c.cache.cache_size = Some("2 parsecs".into());
        c.runtime.workers = Some(0);
        let Err(Error::Invalid(errs)) = build(c, FileConfig::default()) else {
            panic!("expected invalid")
        };
        let all = errs.join("\n");
        for field in ["listen:", "upstream:", "cache_size:", "workers:"] {
            assert!(all.contains(field), "{field} missing in {all}");
        }
    }

    /// The fields each of `problems` names, in order.
    fn fields(problems: Vec<String>) -> Vec<String> {
        problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn each_section_reports_all_its_problems() {
        let server = ServerArgs {
            listen: Some("nope".into()),
            header_timeout: Some("soon".into()),
            idle_timeout: Some("later".into()),
            send_timeout: Some("0s".into()),
            max_connections: Some(0),
            sendfile_threshold: Some("sometimes".into()),
        };
        assert_eq!(
            fields(server.or_defaults().validate().unwrap_err()),
            [
                "listen",
                "header_timeout",
                "idle_timeout",
                "send_timeout",
                "max_connections",
                "sendfile_threshold"
            ]
        );

        let admin = AdminArgs {
            admin: Some("0.0.0.0:8081".into()),
            admin_token: Some(String::new()),
            s3_get_price: Some(-1.0),
        };
        assert_eq!(
            fields(admin.or_defaults().validate().unwrap_err()),
            ["admin", "s3_get_price"]
        );

        let runtime = RuntimeArgs {
            workers: Some(0),
            driver: Some("kqueue".into()),
        };
        assert_eq!(
            fields(runtime.or_defaults().validate().unwrap_err()),
            ["workers", "driver"]
        );

        let log = LogArgs {
            log_format: Some("xml".into()),
            ..LogArgs::default()
        };
        assert_eq!(
            fields(log.or_defaults().validate().unwrap_err()),
            ["log_format"]
        );

        let cache = CacheArgs {
            cache_dir: Some(PathBuf::from("/nonexistent/is/fine/here")),
            cache_size: Some("1MiB".into()),
            max_object_size: Some("1KiB".into()),
            max_stale: Some("forever".into()),
            negative_ttl: Some("-1s".into()),
        };
        assert_eq!(
            fields(
                cache
                    .or_defaults()
                    .validate(|| PathBuf::from(".chartcache"))
                    .unwrap_err()
            ),
            ["cache_size", "max_object_size", "negative_ttl", "max_stale"]
        );

        let RepoArgs { .. } = RepoArgs::default();
        let mut repo = file(
            "upstream = \"https://charts.example.com\"\n\
             s3_endpoint = \"nope\"\n\
             region = \"EU West\"\n\
             connect_timeout = \"x\"\n\
             upstream_timeout = \"y\"\n\
             retry_deadline = \"z\"\n\
             max_upstream_concurrency = 0\n\
             tls_roots = \"os\"\n\
             [[rules]]\n\
             match = { prefix = \"/\" }\n\
             action = \"keep\"\n",
        )
        .repo;
        repo.retries = Some(1);
        assert_eq!(
            fields(
                repo.or_defaults()
                    .validate(String::new(), None)
                    .unwrap_err()
            ),
            [
                "s3_endpoint",
                "s3_endpoint",
                "region",
                "connect_timeout",
                "upstream_timeout",
                "retry_deadline",
                "max_upstream_concurrency",
                "tls_roots",
                "rules[0]"
            ]
        );
    }

    #[test]
    fn unknown_toml_keys_are_refused() {
        assert!(matches!(from_toml("lisen = \"x\""), Err(Error::Invalid(_))));
    }

    fn invalid(text: &str) -> String {
        match from_toml(text) {
            Err(Error::Invalid(problems)) => problems.join("\n"),
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_unknown_key_is_named_with_a_suggestion() {
        let message = invalid(
            "lisen = \"x\"\ncache_sise = \"1GiB\"\nno_access_log = true\nzzzzzz = 1\nworkers = 2",
        );
        for want in [
            "unknown key `lisen` (did you mean `listen`?)",
            "unknown key `cache_sise` (did you mean `cache_size`?)",
            // The flag's name is not a key: the file says `access_log = false`.
            "unknown key `no_access_log` (did you mean `access_log`?)",
            "unknown key `zzzzzz`; the keys here are: listen,",
        ] {
            assert!(message.contains(want), "{want:?} not in {message}");
        }
        assert!(!message.contains("`workers` ("), "{message}");
    }

    /// The issue's file: a typo in a top-level key, in a rule's key, in a `match` key, in
    /// a `[[repos]]` key, and in a value, all named in one run with their fixes.
    #[test]
    fn every_problem_of_a_file_is_reported_at_once() {
        let message = invalid(
            r#"
upstream_timout = "10s"
workers = 0
[[rules]]
match = { prefx = "/" }
action = "cach"
ttll = "1h"
"#,
        );
        for want in [
            "unknown key `upstream_timout` (did you mean `upstream_timeout`?)",
            "unknown key `rules[0].ttll` (did you mean `ttl`?)",
            "unknown key `rules[0].match.prefx` (did you mean `prefix`?)",
            "workers: 0 is out of range",
        ] {
            assert!(message.contains(want), "{want:?} not in\n{message}");
        }
        // The rule's bad action is reported beside them once its match is fixed.
        let message = invalid(
            "upstream_timout = \"10s\"\n[[rules]]\nmatch = { prefix = \"/\" }\naction = \"cach\"",
        );
        for want in [
            "unknown key `upstream_timout` (did you mean `upstream_timeout`?)",
            "rules[0]: action \"cach\" is not one of cache, revalidate, bypass (did you mean cache?)",
        ] {
            assert!(message.contains(want), "{want:?} not in\n{message}");
        }
        let message = invalid(
            "[[repos]]\nprefix = \"/a\"\nupstream = \"s3://bucket-a\"\nregoin = \"eu-west-1\"\n\
             [[repos.rules]]\nmatch = { exact = \"/index.yaml\" }\naction = \"revalidate\"\nfresh = \"1s\"",
        );
        for want in [
            "unknown key `repos[0].regoin` (did you mean `region`?)",
            "unknown key `repos[0].rules[0].fresh`",
        ] {
            assert!(message.contains(want), "{want:?} not in\n{message}");
        }
        assert!(
            invalid("driver = \"epol\"").contains("(did you mean epoll?)"),
            "choices suggest the nearest"
        );
    }

    #[test]
    fn file_values_of_the_wrong_type_are_refused() {
        let Err(Error::Parse { message, .. }) = from_toml("workers = \"two\"") else {
            panic!("expected a parse error")
        };
        assert!(message.contains("invalid type"), "{message}");
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
        let r = cfg.repo.policy.decide("/x-1.0.tgz");
        assert!(matches!(r.action, Action::Cache { ttl } if ttl == Duration::from_secs(3600)));
        assert_eq!(
            r.headers,
            vec![("Cache-Control".to_string(), "max-age=3600".to_string())]
        );
        assert!(matches!(
            cfg.repo.policy.decide("/index.yaml").action,
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
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        let bare = parse_duration("10").unwrap_err();
        assert!(
            bare.contains("no unit") && bare.contains("ms, s, m, h, d"),
            "{bare}"
        );
        for d in ["500ms", "10s", "90s", "5m", "1h", "7d", "0s", "1500ms"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(
                parse_duration(&show_duration(parsed)).unwrap(),
                parsed,
                "{d}"
            );
        }
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
        assert_eq!(show_size(2 << 30), "2GiB");
        assert_eq!(show_size(1000), "1000");
    }

    #[test]
    fn a_file_as_cache_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file_path = dir.path().join("not-a-dir");
        std::fs::write(&file_path, b"x").unwrap();
        let mut c = cli();
        c.cache.cache_dir = Some(file_path.clone());
        let Err(Error::Invalid(problems)) = build(c, FileConfig::default()) else {
            panic!("a regular file as cache_dir must be refused")
        };
        assert!(
            problems[0].starts_with("cache_dir: ")
                && problems[0].contains("is not a directory")
                && problems[0].contains(&file_path.display().to_string()),
            "{problems:?}"
        );
        // A directory that does not exist yet is fine (the cache creates it).
        let mut c = cli();
        c.cache.cache_dir = Some(dir.path().join("later"));
        build(c, FileConfig::default()).unwrap();
        assert!(
            !dir.path().join("later").exists(),
            "validation creates nothing"
        );
    }

    #[test]
    fn the_bundled_example_caches_in_the_checkout() {
        assert_eq!(default_cache_dir(true), PathBuf::from(".chartcache"));
        // Serving the bundled example (no upstream anywhere): a small cache by default.
        let demo = build(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(demo.cache.size, 64 << 20);
        assert_eq!(demo.cache.dir, PathBuf::from(".chartcache"));
        let mut c = Cli::default();
        c.cache.cache_size = Some("1GiB".into());
        assert_eq!(build(c, FileConfig::default()).unwrap().cache.size, 1 << 30);
        assert_eq!(
            build(cli(), FileConfig::default()).unwrap().cache.size,
            2 << 30
        );
        // With an upstream it is /var/cache/chartcache or ./.chartcache, never created here.
        let existed = Path::new("/var/cache/chartcache").exists();
        let dir = default_cache_dir(false);
        assert!(
            dir == Path::new("/var/cache/chartcache") || dir == Path::new(".chartcache"),
            "{dir:?}"
        );
        assert_eq!(Path::new("/var/cache/chartcache").exists(), existed);
        assert_eq!(
            cli().cache.cache_dir,
            None,
            "the default is decided by build"
        );
    }

    /// `--check-config`'s TOML loads back into the same configuration, for the one-
    /// repository form with rules and for [[repos]]; the token is never printed.
    #[test]
    fn effective_toml_loads_back_to_the_same_config() {
        let envoy = include_str!("../deploy/envoy-equivalent.toml");
        let repos = include_str!("../examples/repos.toml");
        for (name, text) in [("envoy", envoy), ("repos", repos)] {
            let mut c = Cli::default();
            c.admin.admin_token = Some("s3cret-value".into());
            c.server.header_timeout = Some("1500ms".into());
            c.cache.max_object_size = Some("64MiB".into());
            let cfg = build(c, file(text)).unwrap();
            let shown = cfg.to_toml();
            assert!(!shown.contains("s3cret-value"), "{shown}");
            assert!(shown.contains("# admin_token: set (not shown)"), "{shown}");
            let again = from_toml(&shown).unwrap_or_else(|e| panic!("{name}: {e}\n{shown}"));
            let mut expected = format!("{cfg:?}");
            // The token is the one thing not carried.
            expected = expected.replace("token: Some(\"<redacted>\")", "token: None");
            assert_eq!(format!("{again:?}"), expected, "{name}:\n{shown}");
            assert_eq!(again.to_toml().replace("not set", "set (not shown)"), shown);
        }
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
        c.admin.admin_token = Some("s3cret-value".into());
        let cfg = build(c, FileConfig::default()).unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn sendfile_threshold_forms() {
        let with = |v: &str| {
            let mut c = cli();
            c.server.sendfile_threshold = Some(v.into());
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
        let cfg = build(cli(), file("sendfile_threshold = \"1MiB\"")).unwrap();
        assert_eq!(cfg.server.sendfile_threshold, Some(1 << 20));
    }

    #[test]
    fn non_loopback_admin_needs_token() {
        let mut c = cli();
        c.admin.admin = Some("0.0.0.0:8081".into());
        assert!(build(c, FileConfig::default()).is_err());
        let mut c = cli();
        c.admin.admin = Some("0.0.0.0:8081".into());
        c.admin.admin_token = Some("s3cret".into());
        assert!(build(c, FileConfig::default()).is_ok());
    }

    #[test]
    fn repos_from_toml_take_the_global_values_as_defaults() {
        let text = r#"
            s3_endpoint = "http://127.0.0.1:9000"
            region = "eu-west-1"
            verify_digests = false

            [[rules]]
            match = { prefix = "/" }
            action = "bypass"

            [[repos]]
            prefix = "stable/"
            upstream = "s3://charts-a/stable"

            [[repos]]
            prefix = "/team-b"
            upstream = "s3://charts-b"
            region = "us-west-2"
            profile = "team-b"
            verify_digests = true
            rewrite_s3_urls = false
            index_format = "yaml"
            [[repos.rules]]
            match = { regex = ".*-dev-.*" }
            action = "bypass"

            [[repos]]
            prefix = "/mirror"
            upstream = "https://charts.example.org/"
        "#;
        let cfg = build(Cli::default(), file(text)).unwrap();
        let [a, b, m] = &cfg.repos[..] else {
            panic!("three repositories: {:?}", cfg.repos)
        };
        assert_eq!(
            (a.prefix.as_str(), b.prefix.as_str()),
            ("/stable", "/team-b")
        );
        assert_eq!(a.origin.region, "eu-west-1");
        assert_eq!(
            a.origin.s3_endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert!(!a.verify_digests && a.rewrite_s3_urls && a.profile.is_none());
        assert_eq!(a.policy.rules().len(), 1, "the global rules");
        assert_eq!(b.origin.region, "us-west-2");
        assert_eq!(b.profile.as_deref(), Some("team-b"));
        assert!(b.verify_digests && !b.rewrite_s3_urls);
        assert_eq!(b.index_format, IndexFormat::Yaml);
        assert!(matches!(b.policy.rules()[0].action, Action::Bypass));
        // The global S3 endpoint is no problem for a repository that is not S3.
        assert!(m.origin.s3_endpoint.is_none());
        assert_eq!(cfg.repo.prefix, "/stable", "repo: the first repository");
    }

    #[test]
    fn the_example_repos_file_is_valid() {
        let text = include_str!("../examples/repos.toml");
        let cfg = build(Cli::default(), file(text)).unwrap();
        let prefixes: Vec<&str> = cfg.repos.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["/stable", "/team-b", "/mirror"]);
        assert_eq!(cfg.repos[1].profile.as_deref(), Some("team-b"));
        assert_eq!(cfg.repos[2].policy.rules().len(), 2);
        assert_eq!(
            format!("{:?}", cfg.repos[0].policy),
            format!("{:?}", Policy::envoy_default())
        );
    }

    #[test]
    fn repos_from_flags_and_environment_items() {
        let mut c = Cli::default();
        c.repos.repo = Some(vec![
            "/a=s3://charts-a,/b=s3://charts-b".into(),
            " /c=https://h.example/\n/d=s3://charts-d ".into(),
        ]);
        let cfg = build(c, FileConfig::default()).unwrap();
        let prefixes: Vec<&str> = cfg.repos.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["/a", "/b", "/c", "/d"]);
        // An empty variable is no repository list.
        let mut c = Cli::default();
        c.repos.repo = Some(vec![" ".into()]);
        c.repo.upstream = Some("s3://charts-a".into());
        assert_eq!(build(c, FileConfig::default()).unwrap().repos[0].prefix, "");
        // Flags replace the file's [[repos]].
        let mut c = Cli::default();
        c.repos.repo = Some(vec!["/x=s3://charts-x".into()]);
        let f = file("[[repos]]\nprefix = \"/y\"\nupstream = \"s3://charts-y\"\n");
        assert_eq!(build(c, f).unwrap().repos[0].prefix, "/x");
    }

    #[test]
    fn bad_repos_are_named() {
        let problems = |items: &[&str]| {
            let mut c = Cli::default();
            c.repos.repo = Some(items.iter().map(|s| s.to_string()).collect());
            match build(c, FileConfig::default()) {
                Err(Error::Invalid(p)) => p.join("\n"),
                other => panic!("expected problems, got {other:?}"),
            }
        };
        assert!(problems(&["/a"]).contains("\"/a\" is not PREFIX=UPSTREAM"));
        assert!(problems(&["/a/../b=s3://charts-a"]).contains("repos[0] (/a/../b).prefix"));
        assert!(problems(&["/-=s3://charts-a"]).contains("is not a path prefix"));
        assert!(problems(&["/a=ftp://x"]).contains("repos[0] (/a).upstream"));
        let p = problems(&["/a=s3://charts-a", "/b=s3://charts-b", "/a=s3://charts-c"]);
        assert!(p.contains("prefixes /a and /a overlap"), "{p}");
        let unknown =
            invalid("[[repos]]\nprefix = \"/a\"\nupstream = \"s3://charts-a\"\nbucket = \"x\"\n");
        assert!(
            unknown.contains("unknown key `repos[0].bucket`; the keys here are: prefix, upstream,"),
            "{unknown}"
        );
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalise_prefix("/").unwrap(), "");
        assert_eq!(normalise_prefix("").unwrap(), "");
        assert_eq!(normalise_prefix("stable/").unwrap(), "/stable");
        assert_eq!(
            normalise_prefix("/team-b/charts").unwrap(),
            "/team-b/charts"
        );
        assert!(normalise_prefix("/a//b").is_err());
        assert!(normalise_prefix("/a b").is_err());
        assert!(prefixes_overlap("", "/a"));
        assert!(prefixes_overlap("/a", "/a/b"));
        assert!(!prefixes_overlap("/a", "/ab"));
    }

    /// README's configuration table lists exactly the flags, their variables and the
    /// TOML keys that exist.
    #[test]
    fn readme_table_matches_the_settings() {
        let readme = include_str!("../README.md");
        let mut rows = std::collections::BTreeMap::new();
        for line in readme.lines().filter(|l| l.starts_with("| `--")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let flag = cells[0].trim_start_matches("| `--");
            let flag = flag[..flag.find([' ', '`']).unwrap_or(flag.len())].to_string();
            let env = cells[1].trim_matches('`').to_string();
            let key = cells[2].trim_matches('`');
            let key = key.split(' ').next().unwrap_or_default().to_string();
            rows.insert(flag, (env, key));
        }
        let keys = known_keys();
        let mut seen = Vec::new();
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "check-config" {
                continue;
            }
            let Some((env, key)) = rows.get(long) else {
                panic!("--{long} is missing from README's configuration table")
            };
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "--{long}"
            );
            assert!(key == "—" || keys.contains(&key.as_str()), "{key}");
            seen.push(long.to_string());
        }
        for flag in rows.keys() {
            assert!(
                seen.contains(flag),
                "README lists --{flag}, which does not exist"
            );
        }
    }
}

//! Metrics: names as constants, per-worker counters summed at scrape.
//!
//! Each worker owns one [`WorkerMetrics`] (plain relaxed atomics on its own
//! cache lines, so the hot path never contends); the admin thread reads all of
//! them and renders Prometheus text through `prometheus-client`'s encoder.
//!
//! Cost and health (issue 14 §4): per repository, upstream requests by kind
//! ([`UpstreamKind`]: GET, conditional GET, HEAD, by outcome), client requests
//! answered from the cache without an upstream request of their own (`HIT`s), and
//! the S3 GET cost those saved at the configured price per 1,000 GETs
//! ([`Metrics::with_get_price`]); `chartcache_build_info` and
//! `chartcache_driver_info` ([`crate::driver::current`]). Requests that joined
//! another client's fetch (coalesced) are not counted as saved: the estimate is
//! a lower bound. Credential expiry and refresh failures are rendered by the
//! admin listener, which holds the credentials ([`Metrics::render_with`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub const REQUESTS: &str = "chartcache_requests";
pub const RESPONSE_BYTES: &str = "chartcache_response_bytes";
pub const UPSTREAM_REQUESTS: &str = "chartcache_upstream_requests";
pub const UPSTREAM_ERRORS: &str = "chartcache_upstream_errors";
pub const UPSTREAM_LATENCY: &str = "chartcache_upstream_latency_seconds";
pub const UPSTREAM_UNSOLICITED: &str = "chartcache_upstream_unsolicited_data";
pub const COALESCED_WAITERS: &str = "chartcache_coalesced_waiters";
pub const CORRUPT_DROPPED: &str = "chartcache_cache_corrupt_records_dropped";
pub const FILLS_ABORTED: &str = "chartcache_cache_fills_aborted";
pub const FILL_SKIPPED: &str = "chartcache_cache_fill_skipped";
/// Disk space the cache holds: segment files at their full preallocated size (see
/// [`CACHE_OBJECT_BYTES`] for what the cached objects weigh).
pub const CACHE_BYTES: &str = "chartcache_cache_bytes";
pub const CACHE_OBJECT_BYTES: &str = "chartcache_cache_object_bytes";
pub const REQUEST_DURATION: &str = "chartcache_request_duration_seconds";
pub const CACHE_OBJECTS: &str = "chartcache_cache_objects";
pub const CACHE_EVICTIONS: &str = "chartcache_cache_evictions";
pub const CONNECTIONS_OPEN: &str = "chartcache_connections_open";
pub const CONNECTIONS_REJECTED: &str = "chartcache_connections_rejected";
pub const BAD_REQUESTS: &str = "chartcache_bad_requests";
pub const DIGEST_MISMATCH: &str = "chartcache_chart_digest_mismatches";
pub const ACCESS_LOG_DROPPED: &str = "chartcache_access_log_dropped_lines";
pub const CACHE_TRUNCATED_SEGMENTS: &str = "chartcache_cache_truncated_segments";
pub const CACHE_TRUNCATED_DROPPED: &str = "chartcache_cache_truncated_records_dropped";
pub const CACHE_NO_SPACE_ERRORS: &str = "chartcache_cache_no_space_errors";
pub const CACHE_DISK_FULL: &str = "chartcache_cache_disk_full";
pub const CACHE_SPOOLED: &str = "chartcache_cache_spooled";
pub const CACHE_SPOOL_BYTES: &str = "chartcache_cache_spool_bytes";
pub const SEND_TIMEOUTS: &str = "chartcache_client_send_timeouts";
pub const ACCEPT_ERRORS: &str = "chartcache_accept_errors";
pub const INDEX_PROCESSED: &str = "chartcache_index_versions_processed";
pub const INDEX_PROCESSING: &str = "chartcache_index_processing";
// Per repository (label `repo`, one value per configured prefix: bounded).
pub const REPO_REQUESTS: &str = "chartcache_repo_requests";
pub const REPO_RESPONSE_BYTES: &str = "chartcache_repo_response_bytes";
pub const REPO_UPSTREAM_REQUESTS: &str = "chartcache_repo_upstream_requests";
pub const REPO_UPSTREAM_ERRORS: &str = "chartcache_repo_upstream_errors";
pub const REPO_UPSTREAM_BYTES: &str = "chartcache_repo_upstream_bytes";
pub const REPO_UPSTREAM_BY_KIND: &str = "chartcache_repo_upstream_requests_by_kind";
pub const REPO_WITHOUT_UPSTREAM: &str = "chartcache_repo_requests_without_upstream";
pub const REPO_COST_SAVED: &str = "chartcache_repo_estimated_cost_saved_dollars";
pub const BUILD_INFO: &str = "chartcache_build_info";
pub const DRIVER_INFO: &str = "chartcache_driver_info";
pub const CREDENTIALS_EXPIRY: &str = "chartcache_credentials_expiry_seconds";
pub const CREDENTIALS_REFRESH_FAILURES: &str = "chartcache_credentials_refresh_failures";

/// AWS S3 Standard's price of 1,000 GET requests in USD (us-east-1), the default
/// of `--s3-get-price`.
pub const DEFAULT_GET_PRICE_PER_1000: f64 = 0.0004;

/// What kind of upstream request a repository sent (label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// A plain GET.
    Get,
    /// A GET with `If-None-Match` / `If-Modified-Since` (a revalidation): its
    /// outcome says whether it cost a body (200) or not (304).
    ConditionalGet,
    Head,
}

impl UpstreamKind {
    pub const ALL: [UpstreamKind; 3] = [
        UpstreamKind::Get,
        UpstreamKind::ConditionalGet,
        UpstreamKind::Head,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Get => "get",
            UpstreamKind::ConditionalGet => "conditional_get",
            UpstreamKind::Head => "head",
        }
    }
}

/// How a response was produced (the `X-Cache` value, and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Bypass,
    Revalidated,
    Stale,
    /// Not a cache decision (bad request, 405, admin...).
    None,
}

impl CacheResult {
    pub const ALL: [CacheResult; 6] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Bypass,
        CacheResult::Revalidated,
        CacheResult::Stale,
        CacheResult::None,
    ];

    /// The `X-Cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Bypass => "BYPASS",
            CacheResult::Revalidated => "REVALIDATED",
            CacheResult::Stale => "STALE",
            CacheResult::None => "NONE",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Statuses with their own label; everything else is counted as `other`.
const STATUSES: [u16; 15] = [
    200, 206, 304, 400, 403, 404, 405, 414, 416, 431, 500, 502, 503, 504, 505,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// The `status` label of a slot: the status, or `other`.
fn status_label(slot: usize) -> String {
    STATUSES
        .get(slot)
        .map_or("other".to_string(), |s| s.to_string())
}

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

/// Upstream outcomes counted in [`UPSTREAM_REQUESTS`].
pub const UPSTREAM_OUTCOMES: [&str; 5] = ["200", "304", "404", "other", "error"];

/// Histogram bucket bounds for upstream latency, in seconds.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram bucket bounds for client request duration, in seconds: hits take tens of
/// microseconds, misses an upstream round trip, large bodies to slow clients seconds.
pub const REQUEST_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// [`REQUEST_BUCKETS`] and `+Inf`.
const REQUEST_SLOTS: usize = REQUEST_BUCKETS.len() + 1;

/// One request-duration histogram's per-worker state: counts per bucket (not
/// cumulative: the encoder sums them; the last one is `+Inf`), the sum in
/// microseconds, and the count.
#[derive(Debug, Default)]
struct RequestHistogram {
    buckets: [AtomicU64; REQUEST_SLOTS],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl RequestHistogram {
    /// Counts `d` in the first bucket whose bound is at least it (past the last, `+Inf`).
    fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = REQUEST_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(REQUEST_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// One repository's counters on one worker (written only by that worker).
#[derive(Debug, Default)]
pub struct RepoCounters {
    requests: [[AtomicU64; STATUS_SLOTS]; 6],
    pub response_bytes: AtomicU64,
    upstream: [AtomicU64; 5],
    pub upstream_errors: AtomicU64,
    /// Body bytes received from upstream.
    pub upstream_bytes: AtomicU64,
    /// Unix seconds of the last upstream answer (any HTTP status) and of the last
    /// transport failure or 5xx, for `/readyz`.
    pub last_answer: AtomicU64,
    pub last_failure: AtomicU64,
    /// Upstream exchanges by [`UpstreamKind`] and outcome ([`UPSTREAM_OUTCOMES`]).
    by_kind: [[AtomicU64; 5]; 3],
}

impl RepoCounters {
    /// Records one upstream exchange of this repository (`None`: a transport error).
    pub fn upstream(&self, status: Option<u16>) {
        self.upstream[upstream_slot(status)].fetch_add(1, Relaxed);
        let now = crate::cache::format::unix_now();
        match status {
            None => {
                self.upstream_errors.fetch_add(1, Relaxed);
                self.last_failure.store(now, Relaxed);
            }
            Some(s) if s >= 500 => {
                self.last_failure.store(now, Relaxed);
            }
            Some(_) => self.last_answer.store(now, Relaxed),
        }
    }

    /// [`Self::upstream`], also counted by the request's kind.
    pub fn upstream_kind(&self, kind: UpstreamKind, status: Option<u16>) {
        self.by_kind[kind as usize][upstream_slot(status)].fetch_add(1, Relaxed);
        self.upstream(status);
    }

    pub fn requests_for(&self, result: CacheResult, status: u16) -> u64 {
        self.requests[result.index()][status_slot(status)].load(Relaxed)
    }

    /// Client requests with cache result `result` (any status).
    pub fn requests_with(&self, result: CacheResult) -> u64 {
        self.requests[result.index()]
            .iter()
            .map(|a| a.load(Relaxed))
            .sum()
    }

    /// Client requests answered from the cache with no upstream request (`HIT`s):
    /// derived at scrape from the request counters, so the hit path pays nothing more.
    pub fn without_upstream(&self) -> u64 {
        self.requests_with(CacheResult::Hit)
    }

    /// Upstream exchanges of every outcome.
    pub fn upstream_all(&self) -> u64 {
        self.upstream.iter().map(|a| a.load(Relaxed)).sum()
    }

    /// Upstream exchanges of `kind` with outcome `outcome` (an index into
    /// [`UPSTREAM_OUTCOMES`]).
    pub fn upstream_by_kind(&self, kind: UpstreamKind, outcome: usize) -> u64 {
        self.by_kind[kind as usize]
            .get(outcome)
            .map_or(0, |a| a.load(Relaxed))
    }
}

fn upstream_slot(status: Option<u16>) -> usize {
    match status {
        Some(200) => 0,
        Some(304) => 1,
        Some(404) => 2,
        Some(_) => 3,
        None => 4,
    }
}

/// One worker's counters. Written only by that worker.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Per configured repository, in configuration order.
    pub repos: Box<[RepoCounters]>,
    requests: [[AtomicU64; STATUS_SLOTS]; 6],
    pub response_bytes: AtomicU64,
    upstream: [AtomicU64; 5],
    pub upstream_errors: AtomicU64,
    /// Published by the worker's housekeeping from its origin's client stats.
    pub upstream_unsolicited: AtomicU64,
    /// Per bucket (not cumulative: the encoder sums them), the last one `+Inf`.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
    /// Client request duration per cache result ([`CacheResult::index`]).
    request_duration: [RequestHistogram; 6],
    pub coalesced_waiters: AtomicU64,
    pub corrupt_dropped: AtomicU64,
    pub fills_aborted: AtomicU64,
    pub fill_skipped: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub bad_requests: AtomicU64,
    pub digest_mismatch: AtomicU64,
    pub access_log_dropped: AtomicU64,
    pub send_timeouts: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Index versions the index processor answered for this (owner) worker.
    pub index_processed: AtomicU64,
    /// Index bodies handed to the index processor and not answered yet.
    pub index_processing: AtomicU64,
    /// Gauges published by the shard owner.
    pub cache_bytes: AtomicU64,
    /// Body bytes of the objects in the shard's index.
    pub cache_object_bytes: AtomicU64,
    pub cache_objects: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub cache_truncated_segments: AtomicU64,
    pub cache_truncated_dropped: AtomicU64,
    pub cache_no_space_errors: AtomicU64,
    /// 1 while the worker's shard refuses new objects because the device is full.
    pub cache_disk_full: AtomicU64,
    pub cache_spooled: AtomicU64,
    pub cache_spool_bytes: AtomicU64,
}

impl WorkerMetrics {
    #[inline]
    pub fn request(&self, result: CacheResult, status: u16, bytes: u64) {
        self.requests[result.index()][status_slot(status)].fetch_add(1, Relaxed);
        self.response_bytes.fetch_add(bytes, Relaxed);
    }

    /// One client request's duration (head parsed to response sent), by cache result.
    #[inline]
    pub fn request_duration(&self, result: CacheResult, d: std::time::Duration) {
        self.request_duration[result.index()].observe(d);
    }

    /// [`Self::request`], also counted for repository `repo` (`None`: the path named
    /// no configured repository).
    #[inline]
    pub fn request_in(&self, repo: Option<usize>, result: CacheResult, status: u16, bytes: u64) {
        self.request(result, status, bytes);
        if let Some(r) = repo.and_then(|i| self.repos.get(i)) {
            r.requests[result.index()][status_slot(status)].fetch_add(1, Relaxed);
            r.response_bytes.fetch_add(bytes, Relaxed);
        }
    }

    /// Records one upstream exchange: `status` is `None` for a transport error.
    pub fn upstream(&self, status: Option<u16>, latency: std::time::Duration) {
        self.upstream[upstream_slot(status)].fetch_add(1, Relaxed);
        if status.is_none() {
            self.upstream_errors.fetch_add(1, Relaxed);
        }
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    pub fn requests_for(&self, result: CacheResult, status: u16) -> u64 {
        self.requests[result.index()][status_slot(status)].load(Relaxed)
    }
}

/// At most one log line per interval for a condition that may recur many
/// times a second (a full descriptor table, a connection limit): the first
/// occurrence is logged, later ones within `every` are only counted, and the
/// next line says how many were held back. Shared by threads; meant for rare
/// paths (a mutex).
pub struct LogEvery {
    every: std::time::Duration,
    /// When the last line was allowed, and the occurrences held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogEvery {
    pub const fn new(every: std::time::Duration) -> LogEvery {
        LogEvery {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held_back)` when a line may be logged now (`held_back`: the
    /// occurrences not logged since the last line); `None`: stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

/// A metric name, its help text, and where each worker keeps its value.
type Described = (&'static str, &'static str, fn(&WorkerMetrics) -> &AtomicU64);

/// [`Described`] for a per-repository counter.
type RepoDescribed = (&'static str, &'static str, fn(&RepoCounters) -> &AtomicU64);

/// All workers' metrics; what the admin endpoint renders.
#[derive(Debug, Clone)]
pub struct Metrics {
    workers: Arc<Vec<Arc<WorkerMetrics>>>,
    /// The `repo` label of each configured repository (its prefix, `/` for the root).
    repos: Arc<Vec<String>>,
    /// USD per 1,000 upstream GETs, for the estimated cost saved.
    get_price_per_1000: f64,
}

impl Metrics {
    /// One repository, at `/`.
    pub fn new(workers: usize) -> Metrics {
        Metrics::with_repos(workers, vec!["/".into()])
    }

    /// Counters for `workers` workers serving the repositories named `repos`.
    pub fn with_repos(workers: usize, repos: Vec<String>) -> Metrics {
        let worker = || WorkerMetrics {
            repos: repos.iter().map(|_| RepoCounters::default()).collect(),
            ..WorkerMetrics::default()
        };
        Metrics {
            workers: Arc::new((0..workers).map(|_| Arc::new(worker())).collect()),
            repos: Arc::new(repos),
            get_price_per_1000: DEFAULT_GET_PRICE_PER_1000,
        }
    }

    /// The price of 1,000 upstream GETs (USD) the estimated cost saved uses.
    pub fn with_get_price(mut self, per_1000: f64) -> Metrics {
        self.get_price_per_1000 = per_1000;
        self
    }

    /// USD per 1,000 upstream GETs.
    pub fn get_price_per_1000(&self) -> f64 {
        self.get_price_per_1000
    }

    /// Estimated USD saved by repository `repo`: its requests answered without an
    /// upstream request, at the GET price.
    pub fn repo_cost_saved(&self, repo: usize) -> f64 {
        self.repo_sum(repo, |c| c.without_upstream()) as f64 * self.get_price_per_1000 / 1000.0
    }

    /// The `repo` labels, in configuration order.
    pub fn repo_names(&self) -> &[String] {
        &self.repos
    }

    /// `f` of repository `repo`'s counters, summed over the workers.
    pub fn repo_sum(&self, repo: usize, f: impl Fn(&RepoCounters) -> u64) -> u64 {
        self.workers
            .iter()
            .filter_map(|w| w.repos.get(repo))
            .map(f)
            .sum()
    }

    /// `f` of repository `repo`'s counters, the largest over the workers.
    pub fn repo_max(&self, repo: usize, f: impl Fn(&RepoCounters) -> u64) -> u64 {
        self.workers
            .iter()
            .filter_map(|w| w.repos.get(repo))
            .map(f)
            .max()
            .unwrap_or(0)
    }

    pub fn worker(&self, i: usize) -> Arc<WorkerMetrics> {
        self.workers[i].clone()
    }

    /// `f` of every worker's counters, summed.
    pub fn total(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.sum(f)
    }

    fn sum(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    /// Total upstream requests (all outcomes), e.g. for tests and the load test.
    pub fn upstream_total(&self) -> u64 {
        self.sum(|w| w.upstream.iter().map(|a| a.load(Relaxed)).sum())
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.render_with(None)
    }

    /// [`Self::render`] with the families of `extra` too (what the admin listener
    /// holds: credentials).
    pub fn render_with(&self, extra: Option<Box<dyn Collector>>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        if let Some(extra) = extra {
            registry.register_collector(extra);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = enc.encode_descriptor(
                REQUESTS,
                "Client requests by cache result and status",
                None,
                MetricType::Counter,
            )?;
            for result in CacheResult::ALL {
                for slot in 0..STATUS_SLOTS {
                    let v = self.sum(|w| w.requests[result.index()][slot].load(Relaxed));
                    if v == 0 {
                        continue;
                    }
                    let labels = vec![
                        ("cache", result.as_str().to_ascii_lowercase()),
                        ("status", status_label(slot)),
                    ];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                UPSTREAM_REQUESTS,
                "Upstream requests by outcome (status, or error for transport failures)",
                None,
                MetricType::Counter,
            )?;
            for (i, outcome) in UPSTREAM_OUTCOMES.iter().enumerate() {
                let v = self.sum(|w| w.upstream[i].load(Relaxed));
                m.encode_family(&vec![("outcome", *outcome)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        {
            let m = enc.encode_descriptor(
                UPSTREAM_LATENCY,
                "Time from sending an upstream request to its response head (or its failure)",
                None,
                MetricType::Histogram,
            )?;
            // Per-bucket counts: the encoder makes them cumulative.
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .chain([f64::INFINITY].iter())
                .enumerate()
                .map(|(i, b)| (*b, self.sum(|w| w.latency_buckets[i].load(Relaxed))))
                .collect();
            let count = self.sum(|w| w.latency_count.load(Relaxed));
            let sum = self.sum(|w| w.latency_sum_micros.load(Relaxed)) as f64 / 1e6;
            let mut m = m;
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        {
            let mut m = enc.encode_descriptor(
                REQUEST_DURATION,
                "Client request duration, from the parsed request head to the last response byte handed to the kernel, by cache result",
                None,
                MetricType::Histogram,
            )?;
            for result in CacheResult::ALL {
                let i = result.index();
                let count = self.sum(|w| w.request_duration[i].count.load(Relaxed));
                if count == 0 {
                    continue;
                }
                // Per-bucket counts: the encoder makes them cumulative.
                let buckets: Vec<(f64, u64)> = REQUEST_BUCKETS
                    .iter()
                    .chain([f64::INFINITY].iter())
                    .enumerate()
                    .map(|(b_i, b)| {
                        let v = self.sum(|w| w.request_duration[i].buckets[b_i].load(Relaxed));
                        (*b, v)
                    })
                    .collect();
                let sum = self.sum(|w| w.request_duration[i].sum_micros.load(Relaxed)) as f64 / 1e6;
                let labels = vec![("cache", result.as_str().to_ascii_lowercase())];
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        let counters: [Described; 19] = [
            (
                INDEX_PROCESSED,
                "index.yaml versions processed off the workers (URLs rewritten, digests and the JSON form derived)",
                |w| &w.index_processed,
            ),
            (
                UPSTREAM_UNSOLICITED,
                "Upstream connections closed because upstream sent bytes outside a response (beyond a body's framing, or on an idle keep-alive connection)",
                |w| &w.upstream_unsolicited,
            ),
            (
                ACCESS_LOG_DROPPED,
                "Access-log lines dropped because stdout could not keep up",
                |w| &w.access_log_dropped,
            ),
            (
                DIGEST_MISMATCH,
                "Chart fills whose bytes did not match the index digest (served uncached)",
                |w| &w.digest_mismatch,
            ),
            (RESPONSE_BYTES, "Response body bytes sent to clients", |w| {
                &w.response_bytes
            }),
            (
                UPSTREAM_ERRORS,
                "Upstream requests that failed without an HTTP status (connect, timeout, i/o, protocol, credentials, signing)",
                |w| &w.upstream_errors,
            ),
            (
                COALESCED_WAITERS,
                "Requests that joined another request's upstream fetch",
                |w| &w.coalesced_waiters,
            ),
            (
                CORRUPT_DROPPED,
                "Cached records that failed verification when read for a request, dropped and refetched",
                |w| &w.corrupt_dropped,
            ),
            (
                FILLS_ABORTED,
                "Cache fills of a known length abandoned (upstream body short or failed, or commit failed)",
                |w| &w.fills_aborted,
            ),
            (
                FILL_SKIPPED,
                "Cacheable responses of a known length the store refused (larger than a segment, no space, key or meta too long)",
                |w| &w.fill_skipped,
            ),
            (
                CACHE_EVICTIONS,
                "Cached objects dropped by eviction (hot objects copied forward are not counted)",
                |w| &w.cache_evictions,
            ),
            (
                CONNECTIONS_REJECTED,
                "Client connections answered 503 and closed at accept because the worker was at its connection limit",
                |w| &w.connections_rejected,
            ),
            (
                SEND_TIMEOUTS,
                "Client connections cut because a response made no progress for send_timeout (the client stopped reading)",
                |w| &w.send_timeouts,
            ),
            (
                ACCEPT_ERRORS,
                "Failed accepts of client connections (EMFILE and the like), each followed by a short back-off",
                |w| &w.accept_errors,
            ),
            (
                BAD_REQUESTS,
                "Malformed client requests (head or path), answered with 400/414/431/505 (HTTP/0.9: nothing) and closed",
                |w| &w.bad_requests,
            ),
            (
                CACHE_TRUNCATED_SEGMENTS,
                "Cache segment files found shorter than written (truncated by another process or a failing disk); their records past the cut were dropped",
                |w| &w.cache_truncated_segments,
            ),
            (
                CACHE_TRUNCATED_DROPPED,
                "Cached records dropped (and refetched on demand) because their segment file was truncated",
                |w| &w.cache_truncated_dropped,
            ),
            (
                CACHE_NO_SPACE_ERRORS,
                "ENOSPC/EDQUOT errors creating or writing cache segments (admission pauses, nothing is evicted for it)",
                |w| &w.cache_no_space_errors,
            ),
            (
                CACHE_SPOOLED,
                "Objects larger than max-object-size fetched once for their concurrent clients through a spool file and not kept",
                |w| &w.cache_spooled,
            ),
        ];
        for (name, help, get) in counters {
            let v = self.sum(|w| get(w).load(Relaxed));
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let gauges: [Described; 7] = [
            (
                INDEX_PROCESSING,
                "index.yaml versions being processed, or their gzip forms built, on the index thread right now (hits keep being served meanwhile)",
                |w| &w.index_processing,
            ),
            (
                CACHE_BYTES,
                "Bytes on disk the cache holds: segment files at their full preallocated size (so a few small objects already hold one segment per worker), checkpoints, evicted segments still being sent; what the cached objects weigh is chartcache_cache_object_bytes",
                |w| &w.cache_bytes,
            ),
            (
                CACHE_OBJECT_BYTES,
                "Body bytes of the objects in the cache (live objects, without record headers or free segment space)",
                |w| &w.cache_object_bytes,
            ),
            (
                CACHE_DISK_FULL,
                "Cache shards not admitting new objects because the cache device is full (they serve what is cached, pass the rest through)",
                |w| &w.cache_disk_full,
            ),
            (
                CACHE_SPOOL_BYTES,
                "Bytes of spool files (objects too large to keep, being sent to their clients) on the cache device, beside the cache",
                |w| &w.cache_spool_bytes,
            ),
            (CACHE_OBJECTS, "Objects in the cache index", |w| {
                &w.cache_objects
            }),
            (CONNECTIONS_OPEN, "Open client connections", |w| {
                &w.connections_open
            }),
        ];
        for (name, help, get) in gauges {
            let v = self.sum(|w| get(w).load(Relaxed)) as i64;
            enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&v)?;
        }
        encode_info(&mut enc)?;
        self.encode_repos(&mut enc)
    }
}

/// The labels of `chartcache_build_info`.
pub fn build_labels() -> Vec<(&'static str, String)> {
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
        ),
        ("target_arch", std::env::consts::ARCH.to_string()),
    ]
}

/// `chartcache_build_info` and, once the driver is chosen, `chartcache_driver_info`.
fn encode_info(enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(
        BUILD_INFO,
        "Always 1; the labels say which build runs",
        None,
        MetricType::Gauge,
    )?
    .encode_family(&build_labels())?
    .encode_gauge(&1i64)?;
    if let Some(choice) = crate::driver::current() {
        let labels = vec![
            ("driver", choice.driver.name().to_string()),
            ("reason", choice.fallback.clone().unwrap_or_default()),
        ];
        enc.encode_descriptor(
            DRIVER_INFO,
            "Always 1; driver is the I/O driver the workers run (io_uring or epoll), reason why auto fell back to epoll (empty: no fallback)",
            None,
            MetricType::Gauge,
        )?
        .encode_family(&labels)?
        .encode_gauge(&1i64)?;
    }
    Ok(())
}

impl Metrics {
    /// The per-repository families (label `repo`, then the family's own labels).
    fn encode_repos(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = enc.encode_descriptor(
                REPO_REQUESTS,
                "Client requests per repository by cache result (hit, miss, revalidated, stale, bypass) and status",
                None,
                MetricType::Counter,
            )?;
            for (r, name) in self.repos.iter().enumerate() {
                for result in CacheResult::ALL {
                    for slot in 0..STATUS_SLOTS {
                        let v =
                            self.repo_sum(r, |c| c.requests[result.index()][slot].load(Relaxed));
                        if v == 0 {
                            continue;
                        }
                        let labels = vec![
                            ("repo", name.clone()),
                            ("cache", result.as_str().to_ascii_lowercase()),
                            ("status", status_label(slot)),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                    }
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                REPO_UPSTREAM_REQUESTS,
                "Upstream requests per repository by outcome (status, or error for transport failures)",
                None,
                MetricType::Counter,
            )?;
            for (r, name) in self.repos.iter().enumerate() {
                for (i, outcome) in UPSTREAM_OUTCOMES.iter().enumerate() {
                    let v = self.repo_sum(r, |c| c.upstream[i].load(Relaxed));
                    m.encode_family(&vec![("repo", name.as_str()), ("outcome", *outcome)])?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                REPO_UPSTREAM_BY_KIND,
                "Upstream requests per repository by kind (get, conditional_get: a revalidation, whose outcome 304 cost no body; head) and outcome",
                None,
                MetricType::Counter,
            )?;
            for (r, name) in self.repos.iter().enumerate() {
                for kind in UpstreamKind::ALL {
                    for (i, outcome) in UPSTREAM_OUTCOMES.iter().enumerate() {
                        let v = self.repo_sum(r, |c| c.upstream_by_kind(kind, i));
                        let labels = vec![
                            ("repo", name.as_str()),
                            ("kind", kind.as_str()),
                            ("outcome", *outcome),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                    }
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                REPO_COST_SAVED,
                "Estimated S3 request cost saved per repository, in USD: requests answered without an upstream request times the configured price per 1,000 GETs (--s3-get-price); coalesced requests are not counted, so it is a lower bound",
                None,
                MetricType::Counter,
            )?;
            for r in 0..self.repos.len() {
                let v = self.repo_cost_saved(r);
                m.encode_family(&vec![("repo", self.repos[r].as_str())])?
                    .encode_counter::<NoLabelSet, _, f64>(&v, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                REPO_WITHOUT_UPSTREAM,
                "Client requests per repository answered from the cache without an upstream request (HIT)",
                None,
                MetricType::Counter,
            )?;
            for (r, name) in self.repos.iter().enumerate() {
                let v = self.repo_sum(r, |c| c.without_upstream());
                m.encode_family(&vec![("repo", name.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        let counters: [RepoDescribed; 3] = [
            (
                REPO_RESPONSE_BYTES,
                "Response body bytes sent to clients per repository",
                |c| &c.response_bytes,
            ),
            (
                REPO_UPSTREAM_ERRORS,
                "Upstream requests per repository that failed without an HTTP status",
                |c| &c.upstream_errors,
            ),
            (
                REPO_UPSTREAM_BYTES,
                "Body bytes received from upstream per repository",
                |c| &c.upstream_bytes,
            ),
        ];
        for (family, help, get) in counters {
            let mut m = enc.encode_descriptor(family, help, None, MetricType::Counter)?;
            for (r, name) in self.repos.iter().enumerate() {
                let v = self.repo_sum(r, |c| get(c).load(Relaxed));
                m.encode_family(&vec![("repo", name.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_across_workers() {
        let m = Metrics::new(2);
        m.worker(0).request(CacheResult::Hit, 200, 10);
        m.worker(1).request(CacheResult::Hit, 200, 5);
        m.worker(1).request(CacheResult::Miss, 404, 0);
        m.worker(0)
            .upstream(Some(200), std::time::Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("chartcache_requests_total{cache=\"hit\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("chartcache_requests_total{cache=\"miss\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chartcache_response_bytes_total 15"),
            "{text}"
        );
        assert!(
            text.contains("chartcache_upstream_requests_total{outcome=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chartcache_upstream_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert_eq!(m.upstream_total(), 1);
    }

    #[test]
    fn the_latency_histogram_is_cumulative_and_ends_in_inf_equal_to_count() {
        let m = Metrics::new(2);
        let ms = std::time::Duration::from_millis;
        for (w, d) in [
            (0, ms(3)),
            (0, ms(30)),
            (1, ms(30)),
            (1, ms(700)),
            (0, ms(60_000)),
        ] {
            m.worker(w).upstream(Some(200), d);
        }
        let text = m.render();
        let bucket = |le: &str| -> u64 {
            let line = format!("chartcache_upstream_latency_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&line)?.parse().ok())
                .unwrap_or_else(|| panic!("no bucket {le}: {text}"))
        };
        assert_eq!(bucket("0.005"), 1);
        assert_eq!(bucket("0.025"), 1);
        assert_eq!(bucket("0.05"), 3);
        assert_eq!(bucket("1.0"), 4);
        assert_eq!(bucket("10.0"), 4);
        assert_eq!(bucket("+Inf"), 5);
        assert!(
            text.contains("chartcache_upstream_latency_seconds_count 5"),
            "{text}"
        );
    }

    #[test]
    fn the_request_duration_histogram_is_cumulative_per_cache_result() {
        let m = Metrics::new(2);
        let us = std::time::Duration::from_micros;
        for (w, result, d) in [
            (0, CacheResult::Hit, us(50)),
            (1, CacheResult::Hit, us(50)),
            (0, CacheResult::Hit, us(800)),
            (1, CacheResult::Miss, us(20_000)),
            (0, CacheResult::Miss, us(60_000_000)),
        ] {
            m.worker(w).request_duration(result, d);
        }
        let text = m.render();
        let bucket = |cache: &str, le: &str| -> u64 {
            let line = format!(
                "chartcache_request_duration_seconds_bucket{{le=\"{le}\",cache=\"{cache}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&line)?.parse().ok())
                .unwrap_or_else(|| panic!("no bucket {cache} {le}: {text}"))
        };
        assert_eq!(bucket("hit", "0.0001"), 2);
        assert_eq!(bucket("hit", "0.0005"), 2);
        assert_eq!(bucket("hit", "0.001"), 3);
        assert_eq!(bucket("hit", "+Inf"), 3);
        assert_eq!(bucket("miss", "0.01"), 0);
        assert_eq!(bucket("miss", "0.025"), 1);
        assert_eq!(bucket("miss", "30.0"), 1);
        assert_eq!(bucket("miss", "+Inf"), 2);
        for (cache, count) in [("hit", 3), ("miss", 2)] {
            let line =
                format!("chartcache_request_duration_seconds_count{{cache=\"{cache}\"}} {count}");
            assert!(text.contains(&line), "{line} not in {text}");
        }
        // Results never seen have no series.
        assert!(!text.contains("cache=\"stale\""), "{text}");
        // Each series' buckets never decrease.
        for cache in ["hit", "miss"] {
            let mut last = 0;
            for le in REQUEST_BUCKETS.iter().map(|b| format!("{b:?}")) {
                let v = bucket(cache, &le);
                assert!(v >= last, "{cache} le={le}: {v} < {last}");
                last = v;
            }
        }
    }

    #[test]
    fn per_repository_kinds_requests_without_upstream_and_cost_saved() {
        let m = Metrics::with_repos(2, vec!["/a".into(), "/b".into()]).with_get_price(0.5);
        let (w0, w1) = (m.worker(0), m.worker(1));
        for _ in 0..3 {
            w0.request_in(Some(0), CacheResult::Hit, 200, 1);
        }
        w1.request_in(Some(0), CacheResult::Hit, 304, 0);
        w1.request_in(Some(0), CacheResult::Miss, 200, 1);
        w1.request_in(Some(1), CacheResult::Revalidated, 200, 1);
        w0.repos[0].upstream_kind(UpstreamKind::Get, Some(200));
        w1.repos[0].upstream_kind(UpstreamKind::ConditionalGet, Some(304));
        w1.repos[0].upstream_kind(UpstreamKind::ConditionalGet, Some(200));
        w0.repos[1].upstream_kind(UpstreamKind::Head, None);
        let text = m.render();
        for line in [
            "chartcache_repo_requests_without_upstream_total{repo=\"/a\"} 4",
            "chartcache_repo_requests_without_upstream_total{repo=\"/b\"} 0",
            "chartcache_repo_upstream_requests_by_kind_total{repo=\"/a\",kind=\"get\",outcome=\"200\"} 1",
            "chartcache_repo_upstream_requests_by_kind_total{repo=\"/a\",kind=\"conditional_get\",outcome=\"304\"} 1",
            "chartcache_repo_upstream_requests_by_kind_total{repo=\"/a\",kind=\"conditional_get\",outcome=\"200\"} 1",
            "chartcache_repo_upstream_requests_by_kind_total{repo=\"/b\",kind=\"head\",outcome=\"error\"} 1",
            "chartcache_repo_upstream_requests_total{repo=\"/a\",outcome=\"304\"} 1",
            "chartcache_repo_upstream_errors_total{repo=\"/b\"} 1",
            // 4 requests at $0.5 per 1,000.
            "chartcache_repo_estimated_cost_saved_dollars_total{repo=\"/a\"} 0.002",
            "chartcache_repo_estimated_cost_saved_dollars_total{repo=\"/b\"} 0.0",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        assert!((m.repo_cost_saved(0) - 0.002).abs() < 1e-12);
        let build = format!(
            "chartcache_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        assert_eq!(
            Metrics::new(1).get_price_per_1000(),
            DEFAULT_GET_PRICE_PER_1000
        );
    }

    #[test]
    fn log_every_allows_one_line_per_interval_and_counts_the_rest() {
        let limit = LogEvery::new(std::time::Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        let zero = LogEvery::new(std::time::Duration::ZERO);
        assert_eq!(zero.allow(), Some(0));
        assert_eq!(zero.allow(), Some(0));
    }
}

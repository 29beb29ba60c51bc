//! Origins: where objects come from on a miss.
//!
//! One small trait, [`Origin`], with one implementation per upstream kind:
//! - [`s3`]: private S3 bucket, every request signed with SigV4 ([`sigv4`]).
//! - [`https`]: a plain HTTP(S) server (e.g. a regional chartcache for tiering).
//! - [`file`](mod@file): a local directory (the bundled `examples/` repo, no AWS needed).
//!
//! The two HTTP origins share [`client`] (connections, pool, TLS, DNS, head
//! parsing) and [`response`] (status → [`OriginResponse`] / [`Error`]), and
//! those two know nothing of S3: what S3 says beyond HTTP (`x-amz-*` headers,
//! XML error codes) is read in [`s3`] (the HTTP(S) origin borrows its hints,
//! since that upstream may be S3 too); signing is [`sigv4`]; egress proxies
//! (`HTTPS_PROXY`, `NO_PROXY`, ...) are [`proxy`].
//!
//! [`build`] wraps each in [`retry::Retrying`] (bounded retries with backoff, a
//! total deadline, a per-worker cap on concurrent upstream requests, of which
//! pass-through may hold at most half: [`Purpose`]).
//! Credentials for S3 come from [`credentials`] (`start_chain`: the AWS default
//! chain, refreshed on a side thread).
//!
//! An origin instance is built **per worker** ([`build`]): it owns that worker's
//! keep-alive connection pool and is never shared across threads. Futures are
//! `!Send` (monoio), hence [`LocalBoxFuture`].
//!
//! Keys passed in are already validated (see `http1::path`): they start with `/`,
//! name an object (never the root `/`, never a "directory" ending in `/`),
//! contain no `.`/`..` segments and no query. The HTTP origins check the
//! object part again before sending anything ([`require_object_key`]), so a
//! signed request never leaves the configured object space (with
//! `s3://bucket` and no prefix, the root would be S3 ListObjects). The origin
//! prepends its configured prefix; nothing client-supplied other than the key
//! and the conditional headers in [`OriginRequest`] ever reaches the upstream.

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod file;
pub mod https;
pub mod proxy;
pub mod response;
pub mod retry;
pub mod s3;
pub mod sigv4;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

pub use error::Error;

/// A boxed, thread-local future (monoio tasks are `!Send`).
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// HTTP method sent upstream. Only safe, idempotent methods exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// What the proxy asks an origin for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRequest {
    /// Validated object key relative to the repository root, starting with `/`
    /// (e.g. `/index.yaml`, `/mychart-1.2.3.tgz`).
    pub key: String,
    pub method: Method,
    /// Sent as `If-None-Match` (revalidation with a stored ETag).
    pub if_none_match: Option<String>,
    /// Sent as `If-Modified-Since`.
    pub if_modified_since: Option<String>,
    /// Which of the worker's upstream slots it draws on ([`retry`]); never sent.
    pub purpose: Purpose,
}

impl OriginRequest {
    /// A GET for a cache fill.
    pub fn get(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            method: Method::Get,
            if_none_match: None,
            if_modified_since: None,
            purpose: Purpose::Fill,
        }
    }
}

/// What an upstream request is for, which decides the concurrency slots it
/// may take ([`retry`]): a pass-through response holds its slot for as long as
/// its one client takes to read it, so pass-through gets a capped share and
/// can never take the slots cache fills and index revalidation need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    /// A cache fill or revalidation (one per object across all workers; its
    /// body is written to the cache at upstream's pace).
    #[default]
    Fill,
    /// Streamed to one client as it reads (bypassed paths, objects the cache
    /// cannot store).
    PassThrough,
}

/// The response headers chartcache cares about. Everything else upstream sends is
/// dropped (never passed through).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    /// 200, 304 (to a conditional request) or 404 (other statuses are [`Error`]s).
    pub status: u16,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_type: Option<String>,
    /// Body length when upstream declared one (`Content-Length`); `None` for
    /// chunked bodies.
    pub content_length: Option<u64>,
    /// Upstream's `Age` (seconds): an upstream cache (a fleet tier) stored the
    /// object that long ago, so freshness here counts from then (RFC 9111 §4.2.3).
    pub age: Option<u64>,
    /// An upstream chartcache served a stale copy (its `Cache-Status` says
    /// `detail=stale`): the staleness travels, see [`crate::http1::cache_status`].
    pub upstream_stale: bool,
}

/// A response from an origin: head plus a streaming body.
pub struct OriginResponse {
    pub meta: ResponseMeta,
    pub body: Box<dyn BodyStream>,
}

impl std::fmt::Debug for OriginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginResponse")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// A streaming response body. Yields chunks in order; `Ok(None)` means the body
/// ended **complete** (the declared length, or the chunked terminator, was
/// reached). A body that ends early yields `Err(Error::Truncated)`, never `Ok(None)`.
pub trait BodyStream {
    fn next_chunk(&mut self) -> LocalBoxFuture<'_, Result<Option<Bytes>, Error>>;
}

/// An upstream that can serve objects by key.
pub trait Origin {
    /// Fetch one object. Non-success statuses other than 304 and 404 are mapped
    /// to [`Error`] by the implementation (with the S3 error code when there is one).
    fn fetch(&self, req: OriginRequest) -> LocalBoxFuture<'_, Result<OriginResponse, Error>>;

    /// Short human description for logs, e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// This worker's upstream connection counters, for origins that keep
    /// connections (`None` for the others).
    fn connection_stats(&self) -> Option<client::ClientStats> {
        None
    }
}

/// The last line of defence of the HTTP origins: `key` must name one object —
/// `/` followed by non-empty segments — never the root (S3 ListObjects with
/// an empty prefix), a "directory" ending in `/`, or an empty segment.
/// [`Error::NotAnObjectKey`] otherwise, before anything is sent.
pub fn require_object_key(key: &str) -> Result<(), Error> {
    match key.strip_prefix('/') {
        Some(rest) if !rest.is_empty() && !rest.split('/').any(str::is_empty) => Ok(()),
        _ => Err(Error::NotAnObjectKey(key.to_owned())),
    }
}

/// An empty body (HEAD, 304, 404).
pub struct EmptyBody;

impl BodyStream for EmptyBody {
    fn next_chunk(&mut self) -> LocalBoxFuture<'_, Result<Option<Bytes>, Error>> {
        Box::pin(async { Ok(None) })
    }
}

/// Which upstream, parsed from `--upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `s3://BUCKET[/PREFIX]`. `prefix` has no leading or trailing `/` (may be empty).
    S3 { bucket: String, prefix: String },
    /// `https://HOST[:PORT][/PATH]` (or `http://`). `base_path` has no trailing `/`.
    Https {
        tls: bool,
        host: String,
        port: u16,
        base_path: String,
    },
    /// `file:///DIR`.
    File { dir: std::path::PathBuf },
}

impl Upstream {
    /// The `s3://BUCKET/PREFIX/` (or `s3://BUCKET/`) that helm-s3 writes in
    /// front of chart names in an index published to this upstream.
    pub fn s3_url_base(&self) -> Option<String> {
        match self {
            Upstream::S3 { bucket, prefix } if prefix.is_empty() => Some(format!("s3://{bucket}/")),
            Upstream::S3 { bucket, prefix } => Some(format!("s3://{bucket}/{prefix}/")),
            _ => None,
        }
    }
}

/// As written in `--upstream` (for logs).
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Upstream::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Upstream::Https {
                tls,
                host,
                port,
                base_path,
            } => write!(
                f,
                "{}://{host}:{port}{base_path}",
                if *tls { "https" } else { "http" }
            ),
            Upstream::File { dir } => write!(f, "file://{}", dir.display()),
        }
    }
}

/// Trust roots for TLS upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsRoots {
    #[default]
    Webpki,
    Native,
}

/// Everything an origin needs; built by `config` from flags/env/TOML.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    pub upstream: Upstream,
    /// `--s3-endpoint`, e.g. `http://127.0.0.1:9000`: S3-compatible server,
    /// path-style addressing. `None` → AWS, virtual-hosted style.
    pub s3_endpoint: Option<String>,
    pub region: String,
    pub connect_timeout: std::time::Duration,
    /// Deadline for the response head (and for each body read).
    pub request_timeout: std::time::Duration,
    /// How often resolved upstream addresses are refreshed.
    pub dns_refresh: std::time::Duration,
    pub tls_roots: TlsRoots,
    /// Max idle keep-alive connections kept per worker.
    pub max_idle_connections: usize,
    /// Retries after a failed first attempt (connect failures, timeouts, 5xx,
    /// 429/`SlowDown`; never once a body streams). 0 disables retrying.
    /// Default [`retry::DEFAULT_RETRIES`].
    pub retries: u32,
    /// Total budget for one upstream fetch until its response head: waiting
    /// for a slot, every attempt and backoff. Default [`retry::DEFAULT_DEADLINE`].
    pub retry_deadline: std::time::Duration,
    /// Max upstream requests in flight per worker (≥ 1); a response holds its
    /// slot until its body ends; pass-through may hold at most
    /// [`retry::passthrough_share`] of them. Default [`retry::DEFAULT_MAX_CONCURRENCY`].
    pub max_upstream_concurrency: usize,
}

/// Build this worker's origin from the configuration. Called once per worker
/// thread (the result owns that worker's connection pool and its concurrency
/// slots). Every origin is wrapped in [`retry::Retrying`] with the policy from
/// `cfg`. The S3 upstream needs `creds`; the others ignore them.
pub fn build(
    cfg: &OriginConfig,
    creds: Option<Arc<credentials::CredentialsCell>>,
) -> Result<Rc<dyn Origin>, Error> {
    if cfg.max_upstream_concurrency == 0 {
        return Err(Error::Config(
            "max_upstream_concurrency must be at least 1".into(),
        ));
    }
    let inner = build_unwrapped(cfg, creds)?;
    Ok(Rc::new(retry::Retrying::new(
        inner,
        retry::RetryPolicy::from_config(cfg),
    )))
}

/// [`build`] without the retry/concurrency wrapper.
pub fn build_unwrapped(
    cfg: &OriginConfig,
    creds: Option<Arc<credentials::CredentialsCell>>,
) -> Result<Rc<dyn Origin>, Error> {
    match &cfg.upstream {
        Upstream::S3 { bucket, prefix } => {
            let creds = creds.ok_or_else(|| {
                Error::Credentials(
                    "the s3:// upstream signs every request: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)"
                        .into(),
                )
            })?;
            Ok(Rc::new(s3::S3Origin::new(cfg, bucket, prefix, creds)?))
        }
        Upstream::Https { .. } => Ok(Rc::new(https::HttpsOrigin::new(cfg)?)),
        Upstream::File { dir } => Ok(Rc::new(file::FileOrigin::new(dir.clone()))),
    }
}

/// An [`OriginConfig`] for unit tests: `upstream`, region `us-east-1`, no
/// `--s3-endpoint`, 1 s timeouts and the default retry policy.
#[cfg(test)]
pub(crate) fn test_config(upstream: Upstream) -> OriginConfig {
    use std::time::Duration;
    OriginConfig {
        upstream,
        s3_endpoint: None,
        region: "us-east-1".into(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        dns_refresh: Duration::from_secs(60),
        tls_roots: TlsRoots::Webpki,
        max_idle_connections: 2,
        retries: retry::DEFAULT_RETRIES,
        retry_deadline: retry::DEFAULT_DEADLINE,
        max_upstream_concurrency: retry::DEFAULT_MAX_CONCURRENCY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_show_as_configured_and_know_their_helm_s3_base() {
        let s3 = |prefix: &str| Upstream::S3 {
            bucket: "charts".into(),
            prefix: prefix.into(),
        };
        assert_eq!(s3("").to_string(), "s3://charts");
        assert_eq!(s3("stable").to_string(), "s3://charts/stable");
        assert_eq!(s3("").s3_url_base().as_deref(), Some("s3://charts/"));
        assert_eq!(s3("a/b").s3_url_base().as_deref(), Some("s3://charts/a/b/"));
        let https = Upstream::Https {
            tls: true,
            host: "charts.example.org".into(),
            port: 443,
            base_path: "/mirror".into(),
        };
        assert_eq!(https.to_string(), "https://charts.example.org:443/mirror");
        assert_eq!(https.s3_url_base(), None);
        let file = Upstream::File {
            dir: "/srv/repo".into(),
        };
        assert_eq!(file.to_string(), "file:///srv/repo");
    }

    #[test]
    fn only_object_keys_go_upstream() {
        for key in ["/index.yaml", "/a/b-1.0.tgz", "/a?b"] {
            assert!(require_object_key(key).is_ok(), "{key}");
        }
        for key in ["/", "", "/dir/", "//", "/a//b", "index.yaml"] {
            let err = require_object_key(key).unwrap_err();
            assert!(matches!(err, Error::NotAnObjectKey(_)), "{key}: {err:?}");
            assert_eq!(err.client_status(), 404);
        }
    }
}

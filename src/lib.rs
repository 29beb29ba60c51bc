//! chartcache: a thread-per-core caching proxy that serves a Helm chart
//! repository from a private S3 bucket.
//!
//! # Layout
//! - [`config`]: flags / `CHARTCACHE_*` env / TOML → validated [`config::Config`].
//! - [`runtime`]: one monoio runtime per core, io_uring with epoll fallback,
//!   `SO_REUSEPORT` listeners, shutdown fan-out.
//! - [`server`]: per-connection keep-alive loop and the request handler
//!   (policy → cache → origin).
//! - [`http1`]: strict, bounded HTTP/1.1 codec on `httparse` (no I/O).
//! - [`policy`]: ordered route rules → cache / revalidate / bypass + header overrides.
//! - [`origin`]: the `Origin` trait and its S3 (SigV4), HTTPS and file implementations.
//! - [`cache`]: sharded mmap-backed append log, CRC-checked index, miss coalescing.
//! - [`helm`]: index.yaml specifics: helm-s3 URL rewriting, chart digests.
//! - [`metrics`]: metric names and per-worker counters, summed at scrape.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, purge.
//! - [`access_log`]: one structured line per request on stdout.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod config;
pub mod helm;
pub mod http1;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod runtime;
pub mod server;

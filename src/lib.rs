//! chartcache: a thread-per-core caching proxy that serves a Helm chart
//! repository from a private S3 bucket.
//!
//! # Layout
//! The request path, top down (each layer only calls the ones below it):
//! - [`runtime`]: one monoio runtime per core (io_uring, epoll fallback),
//!   `SO_REUSEPORT` listeners; starts and wires everything, fans out shutdown.
//! - [`server`]: a connection's keep-alive loop and one request's
//!   [`Exchange`](server::handler): admission → policy → cache → response.
//! - [`policy`]: ordered route rules → cache / revalidate / bypass + header overrides.
//! - [`cache`]: the facade [`cache::Cache`] (`get_or_fill`, `purge`) over sharded
//!   mmap-backed append logs with CRC-checked indexes; coalesces misses into one
//!   fill on the key's owner worker.
//! - [`origin`]: the `Origin` trait and its S3 (SigV4), HTTPS and file upstreams,
//!   with retries and a per-worker concurrency cap.
//!
//! Beside it:
//! - [`config`]: flags / `CHARTCACHE_*` env / TOML → validated [`config::Config`].
//! - [`driver`]: which I/O driver the workers run (io_uring or epoll) and why.
//! - [`repo`]: the served repositories: path prefix → repository, each one's
//!   cache-key namespace tied to its upstream identity, per-repository counters.
//! - [`http1`]: strict, bounded HTTP/1.1 codec on `httparse` (no I/O).
//! - [`helm`]: index.yaml specifics, processed off the workers on one thread:
//!   helm-s3 URL rewriting, chart digests, the JSON form, per-chart views (and
//!   their newest versions in Helm's order), gzip.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, purge (plain threads).
//! - [`status`]: the admin listener's HTML status page (`GET /`).
//! - [`metrics`]: metric names and per-worker counters, summed at scrape.
//! - [`access_log`]: one structured line per request on stdout.
//! - [`sched`]: cooperative yields on the workers, low priority for helper threads.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod config;
pub mod driver;
pub mod helm;
pub mod http1;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod repo;
pub mod runtime;
pub mod sched;
pub mod server;
pub mod status;

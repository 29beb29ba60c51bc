//! The cache engine: one shard per worker, each an mmap-backed append log with a
//! CRC-checked index.
//!
//! - [`format`]: the on-disk record and checkpoint formats (byte tables in its doc).
//! - [`segment`]: preallocated segment files, `pwrite` appends, read-only mmaps.
//! - [`index`]: key → record location, shared read-only with other workers.
//! - [`checkpoint`]: two alternating mmap-backed index checkpoints with per-entry CRCs.
//! - [`recover`]: startup: newest valid checkpoint + log replay, torn-tail truncation.
//! - [`evict`]: log-structured FIFO with second chance.
//! - [`store`]: [`store::ShardStore`], the owner's handle (write) and
//!   [`store::ShardReader`], everyone's handle (lookup).
//! - [`coalesce`]: cross-worker miss coalescing: one upstream GET per object.
//! - [`shard`]: which worker owns which key; opening and locking the cache dir.
//! - [`fill`]: the owner-side filler: upstream response → committed record.
//! - [`negative`]: short-lived memory of upstream 404s.

pub mod checkpoint;
pub mod coalesce;
pub mod evict;
pub mod fill;
pub mod format;
pub mod index;
pub mod negative;
pub mod recover;
pub mod segment;
pub mod shard;
pub mod store;

//! The cache: one shard per worker, each an mmap-backed append log with a
//! CRC-checked index, behind one facade, [`Cache`].
//!
//! # Architecture
//! 1. Callers (the request handler, the admin listener) speak only to
//!    [`Cache`]: [`Cache::get_or_fill`] answers a request for a key with a
//!    fresh verified copy, a remembered 404, or a [`FillWait`] on the key's one
//!    fill in flight (which yields the fill's [`Answer`], then the body's
//!    progress); [`Cache::purge`] removes a key or a prefix. Lookup,
//!    verification, joining or starting a fill, the hand-off to the owner
//!    shard, the negative cache and the wait deadline are its business, not
//!    theirs. The runtime only hands each worker its shard
//!    ([`Cache::owner`]) and asks the owner for stats and checkpoints.
//! 2. A fill runs on the key's owner worker ([`owner::ShardOwner`], the only
//!    writer of its shard), which streams the upstream body into its segment
//!    ([`fill::Filler`]) and publishes progress to every waiter on every
//!    worker.
//! 3. Hits are read by any worker straight from the segment mmaps (or files,
//!    for `sendfile`) through the shard's lock-free index, under a
//!    [`SegmentPin`] that keeps an evicted segment's bytes until the send is done.
//!    A record that fails verification or whose send fails because its segment
//!    file shrank is dropped and refetched ([`Cache::body_send_failed`]).
//! 4. A full cache device pauses admission (new objects pass through uncached,
//!    everything cached is served; [`Cache::disk_full_shards`]).
//!
//! # Layout (bottom up: no module imports one that imports it back)
//! - [`error`]: the storage layer's error type.
//! - [`format`](mod@format): the on-disk record and checkpoint formats (byte tables in its
//!   doc) and [`ObjectMeta`], the metadata stored beside each body.
//! - [`segment`]: preallocated segment files, `pwrite` appends, `pread` reads,
//!   read-only mmaps for the kernel, pins, hole punching of evicted segments.
//! - [`index`]: key → record location, shared read-only with other workers.
//! - [`checkpoint`]: two alternating index checkpoint files with per-entry CRCs.
//! - [`recover`]: startup: newest valid checkpoint + log replay, torn-tail truncation.
//! - [`store`]: [`store::ShardStore`], the owner's handle (write) and
//!   [`store::ShardReader`], everyone's handle (lookup).
//! - [`evict`]: log-structured FIFO with second chance (part of the store).
//! - [`negative`]: short-lived memory of upstream 404s.
//! - [`coalesce`]: cross-worker miss coalescing: one upstream GET per object;
//!   the waiter's side ([`FillWait`]).
//! - [`shard`]: which worker owns which key; opening and locking the cache dir.
//! - [`fill`]: the owner-side filler: upstream response → committed record.
//! - [`owner`]: the owner worker's side of a shard: its job loop.
//! - this file: the facade.

pub mod checkpoint;
mod coalesce;
pub mod error;
mod evict;
mod fill;
pub mod format;
pub mod index;
mod negative;
mod owner;
pub mod recover;
pub mod segment;
mod shard;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use coalesce::{Answer, BodyView, FillError, FillWait};
pub use format::{unix_now, ObjectMeta};
pub use owner::{FillContext, RepoFill, ShardOwner, ShardParts};
pub use shard::{DirLock, Error as OpenError};
pub use store::{Hit, Segment, SegmentPin, StoreStats};

use coalesce::{FillState, InflightTable, Join};
use negative::NegativeCache;
use shard::{owner_of, ShardJob};
use store::ShardReader;

use crate::config::CacheConfig;
use crate::metrics::WorkerMetrics;
use crate::origin::OriginConfig;

/// How long a request waits for news from a fill before it counts as an
/// upstream failure (504, and stale-if-error applies). One value for the
/// response head and for each body step. The owner gives up by itself and
/// says so: on the head within the retry deadline (every attempt and the slot
/// wait count against it), on each body read within the request timeout. The
/// waiter's patience outlasts both, and never falls below connect + request
/// timeout (what the head wait was before the retry layer existed); one
/// second more lets the owner's own answer arrive first. A waiter's own
/// timeout therefore fires only when the owner itself is stuck.
pub fn fill_patience(origin: &OriginConfig) -> Duration {
    origin
        .retry_deadline
        .max(origin.connect_timeout + origin.request_timeout)
        + Duration::from_secs(1)
}

/// How a request wants a key served.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// A stored copy younger than this is served without asking upstream.
    pub fresh_for: Duration,
    /// An upstream 404 may be remembered and answered from memory (never for
    /// revalidated paths: a republish must show at once).
    pub remember_not_found: bool,
}

/// What [`Cache::get_or_fill`] found.
pub enum Lookup {
    /// A fresh, verified stored copy.
    Fresh(Hit),
    /// Upstream answered 404 for this key moments ago.
    NotFound,
    /// No fresh copy: this request waits on the key's fill (its own or a
    /// concurrent request's, on any worker).
    Filling(FillWait),
}

/// A purge's target.
#[derive(Debug, Clone, Copy)]
pub enum PurgeTarget<'a> {
    /// One object key.
    Key(&'a str),
    /// Every key starting with this.
    Prefix(&'a str),
}

/// Why a purge did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("shutting down")]
    ShuttingDown,
    #[error("cache shard {shard} did not answer the purge within {timeout:?}")]
    NoAnswer { shard: usize, timeout: Duration },
}

/// The cache facade, shared by every worker (see the module doc).
pub struct Cache {
    readers: Vec<Arc<ShardReader>>,
    senders: Vec<mpsc::UnboundedSender<ShardJob>>,
    inflight: Arc<InflightTable>,
    negative: Arc<NegativeCache>,
    patience: Duration,
}

/// Locks and opens the cache directory: the shared facade, one
/// [`ShardParts`] per worker (shard `i` for worker `i`), and the directory
/// lock to hold while serving.
pub fn open(
    cfg: &CacheConfig,
    shards: usize,
    patience: Duration,
) -> Result<(Arc<Cache>, Vec<ShardParts>, DirLock), shard::Error> {
    let (stores, lock) = shard::open_stores(&cfg.dir, cfg.size, cfg.max_object_size, shards)?;
    let mut readers = Vec::with_capacity(stores.len());
    let mut senders = Vec::with_capacity(stores.len());
    let mut parts = Vec::with_capacity(stores.len());
    for store in stores {
        let (tx, jobs) = mpsc::unbounded_channel();
        readers.push(store.reader());
        senders.push(tx);
        parts.push(ShardParts { store, jobs });
    }
    let cache = Arc::new(Cache {
        readers,
        senders,
        inflight: Arc::default(),
        negative: Arc::new(NegativeCache::new(cfg.negative_ttl)),
        patience,
    });
    Ok((cache, parts, lock))
}

/// Drops from every shard, before the workers own them, the entries whose key
/// `keep` refuses (see [`store::ShardStore::remove_unless`]); returns how many.
pub fn drop_unkept(
    parts: &mut [ShardParts],
    keep: impl Fn(&str) -> bool,
    group: impl Fn(&str) -> &str,
) -> usize {
    parts
        .iter_mut()
        .map(|p| p.store.remove_unless(&keep, &group))
        .sum()
}

impl Cache {
    /// Takes ownership of a shard on the calling worker thread.
    pub fn owner(&self, parts: ShardParts, fill: FillContext) -> std::rc::Rc<ShardOwner> {
        ShardOwner::new(parts, self.inflight.clone(), self.negative.clone(), fill)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.readers.len()
    }

    fn reader_for(&self, key: &str) -> &ShardReader {
        &self.readers[owner_of(key, self.readers.len())]
    }

    /// Serves `key` from the cache or joins its fill.
    ///
    /// A stored copy that fails verification is dropped (counted, logged by
    /// the store) and refetched. Without a fresh copy the request joins the
    /// key's fill in flight, or starts one on the owner shard — conditional
    /// on the stored copy's ETag, so upstream can answer 304.
    pub fn get_or_fill(&self, key: &str, want: Want, metrics: &WorkerMetrics) -> Lookup {
        let reader = self.reader_for(key);
        let existing = reader.lookup(key).filter(|hit| {
            let ok = hit.verify();
            if !ok {
                if hit.segment.check_size().is_some() {
                    // The file shrank: this and every other record past the cut go.
                    reader.drop_truncated(&hit.segment);
                } else {
                    reader.drop_corrupt(key, hit);
                    metrics
                        .corrupt_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            ok
        });
        let existing = match existing {
            Some(hit)
                if format::unix_now()
                    < hit.meta.stored_at.saturating_add(want.fresh_for.as_secs()) =>
            {
                return Lookup::Fresh(hit)
            }
            other => other,
        };
        if existing.is_none() && want.remember_not_found && self.negative.contains(key) {
            return Lookup::NotFound;
        }
        // A rewritten index carries a served ETag; upstream knows its own.
        let etag = existing
            .as_ref()
            .and_then(|h| h.meta.etag.as_deref())
            .map(crate::helm::upstream_etag);
        let inflight = match self.inflight.join(key) {
            Join::Leader(f) => {
                let job = ShardJob::Fill {
                    inflight: f.clone(),
                    etag,
                    remember_not_found: want.remember_not_found,
                };
                if self.senders[owner_of(key, self.senders.len())]
                    .send(job)
                    .is_err()
                {
                    f.publish(FillState::Failed {
                        error: FillError {
                            status: 503,
                            message: "shutting down".into(),
                            upstream_status: None,
                        },
                    });
                    self.inflight.finish(&f);
                }
                f
            }
            Join::Follower(f) => {
                metrics
                    .coalesced_waiters
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                f
            }
        };
        Lookup::Filling(FillWait::new(&inflight, existing, self.patience))
    }

    /// The stored record of `key`, not verified: for checking it off the workers
    /// ([`Hit::verify`] caches a success in the index entry every worker shares).
    pub fn lookup_unverified(&self, key: &str) -> Option<Hit> {
        self.reader_for(key).lookup(key)
    }

    /// A record stored beside `owner_key` on that key's owner shard (a form derived
    /// from it, such as the index's JSON form, whose key no request can name) whose
    /// ETag is `etag`: verified, or `None` (a corrupt one is dropped). The ETag is
    /// checked first, so a stale form is never read through to verify it.
    pub fn lookup_beside(&self, owner_key: &str, key: &str, etag: &str) -> Option<Hit> {
        let reader = self.reader_for(owner_key);
        let hit = reader
            .lookup(key)
            .filter(|h| h.meta.etag.as_deref() == Some(etag))?;
        if hit.verify() {
            return Some(hit);
        }
        if hit.segment.check_size().is_some() {
            reader.drop_truncated(&hit.segment);
        } else {
            reader.drop_corrupt(key, &hit);
        }
        None
    }

    /// The stored metadata of `key` (ETag, when stored), unverified and without
    /// marking it used: what the admin status page shows of a repository's index.
    pub fn stored_meta(&self, key: &str) -> Option<Arc<ObjectMeta>> {
        self.reader_for(key).peek_meta(key)
    }

    /// Sending a stored body of `key` from `segment` failed with `error` (the caller
    /// closes the connection: part of the response may be out). When the error came
    /// from the file — it shrank under us (`EFAULT` from the mapping, end of file for
    /// `sendfile`), or it cannot be read (`EIO`) — the affected records are dropped, so
    /// this happens once and the next request refetches: every record past the cut
    /// when the segment file shrank, else this key's record. A client going away
    /// changes nothing.
    pub fn body_send_failed(&self, key: &str, segment: &Segment, error: &std::io::Error) {
        let reader = self.reader_for(key);
        if segment.check_size().is_some() {
            reader.drop_truncated(segment);
            return;
        }
        let from_file = matches!(error.raw_os_error(), Some(libc::EFAULT | libc::EIO))
            || error.kind() == std::io::ErrorKind::UnexpectedEof;
        if from_file {
            reader.drop_unreadable(key, segment);
        }
    }

    /// How many shards refuse new objects because the cache device is full (see
    /// [`store`], Disk full).
    pub fn disk_full_shards(&self) -> usize {
        self.readers.iter().filter(|r| r.stats().disk_full).count()
    }

    /// Removes a key or every key under a prefix, on their owner shards, and
    /// forgets remembered 404s there. Blocks (up to `timeout` per shard) for
    /// the owners' answers: call it from a plain thread, never a worker.
    /// Returns how many objects were removed.
    pub fn purge(&self, target: PurgeTarget<'_>, timeout: Duration) -> Result<usize, PurgeError> {
        let (key, prefix, shards) = match target {
            PurgeTarget::Key(key) => (key, false, vec![owner_of(key, self.senders.len())]),
            PurgeTarget::Prefix(prefix) => (prefix, true, (0..self.senders.len()).collect()),
        };
        self.negative.remove(key, prefix);
        let mut asked = Vec::with_capacity(shards.len());
        for shard in shards {
            let (reply, answer) = std::sync::mpsc::channel();
            let job = ShardJob::Purge {
                key: key.to_owned(),
                prefix,
                reply,
            };
            match self.senders[shard].send(job) {
                Ok(()) => asked.push((shard, answer)),
                // A key's only owner is gone; a prefix purge skips a gone
                // owner as before.
                Err(_) if !prefix => return Err(PurgeError::ShuttingDown),
                Err(_) => {}
            }
        }
        let mut removed = 0;
        for (shard, answer) in asked {
            removed += answer
                .recv_timeout(timeout)
                .map_err(|_| PurgeError::NoAnswer { shard, timeout })?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::testutil;

    fn origin(connect: u64, request: u64, deadline: u64) -> OriginConfig {
        let mut o = crate::origin::test_config(crate::origin::Upstream::S3 {
            bucket: "bucket-a".into(),
            prefix: String::new(),
        });
        o.connect_timeout = Duration::from_secs(connect);
        o.request_timeout = Duration::from_secs(request);
        o.retry_deadline = Duration::from_secs(deadline);
        o
    }

    #[test]
    fn fill_patience_covers_the_slowest_way_the_owner_can_give_up() {
        // Defaults: 5 s connect + 10 s request outlast the 8 s retry deadline.
        assert_eq!(fill_patience(&origin(5, 10, 8)), Duration::from_secs(16));
        // A longer retry deadline is waited for too.
        assert_eq!(fill_patience(&origin(5, 10, 30)), Duration::from_secs(31));
    }

    fn cache_in(dir: &std::path::Path, shards: usize) -> (Arc<Cache>, Vec<ShardParts>, DirLock) {
        let cfg = CacheConfig {
            dir: dir.to_path_buf(),
            size: 8 << 20,
            max_object_size: None,
            negative_ttl: Duration::from_secs(5),
            max_stale: Duration::from_secs(60),
        };
        open(&cfg, shards, Duration::from_secs(1)).expect("cache opens")
    }

    #[test]
    fn purge_names_the_shard_that_did_not_answer() {
        let dir = tempfile::tempdir().unwrap();
        // The owners exist (their channels are open) but never run.
        let (cache, _parts, _lock) = cache_in(dir.path(), 2);
        let key = "/a-1.0.0.tgz";
        let owner = owner_of(key, 2);
        let t = Duration::from_millis(20);
        match cache.purge(PurgeTarget::Key(key), t) {
            Err(PurgeError::NoAnswer { shard, .. }) => assert_eq!(shard, owner),
            other => panic!("expected NoAnswer, got {other:?}"),
        }
        assert!(matches!(
            cache.purge(PurgeTarget::Prefix("/"), t),
            Err(PurgeError::NoAnswer { shard: 0, .. })
        ));
    }

    #[test]
    fn purge_after_the_owners_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, parts, _lock) = cache_in(dir.path(), 2);
        drop(parts);
        let t = Duration::from_millis(20);
        assert!(matches!(
            cache.purge(PurgeTarget::Key("/a-1.0.0.tgz"), t),
            Err(PurgeError::ShuttingDown)
        ));
        // A prefix purge skips owners that are gone: nothing was removed.
        assert_eq!(cache.purge(PurgeTarget::Prefix("/"), t).unwrap(), 0);
    }

    #[test]
    fn a_miss_starts_one_fill_on_the_owner_and_the_next_request_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, mut parts, _lock) = cache_in(dir.path(), 2);
        let metrics = crate::metrics::Metrics::new(1).worker(0);
        let key = "/a-1.0.0.tgz";
        let want = Want {
            fresh_for: Duration::from_secs(60),
            remember_not_found: true,
        };
        assert!(matches!(
            cache.get_or_fill(key, want, &metrics),
            Lookup::Filling(_)
        ));
        assert!(matches!(
            cache.get_or_fill(key, want, &metrics),
            Lookup::Filling(_)
        ));
        assert_eq!(
            metrics
                .coalesced_waiters
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let owner = &mut parts[owner_of(key, 2)];
        let Ok(ShardJob::Fill {
            inflight,
            etag,
            remember_not_found,
        }) = owner.jobs.try_recv()
        else {
            panic!("the owner was sent the fill")
        };
        assert_eq!(
            (inflight.key.as_str(), etag, remember_not_found),
            (key, None, true)
        );
        assert!(owner.jobs.try_recv().is_err(), "one fill for both requests");
        // Everything a repository serves is stored by the owner: a fresh copy is a hit.
        testutil::put(&mut owner.store, key, b"chart bytes", "\"e1\"");
        let stored_now = Want {
            fresh_for: Duration::from_secs(100 * 365 * 86_400),
            ..want
        };
        let Lookup::Fresh(hit) = cache.get_or_fill(key, stored_now, &metrics) else {
            panic!("a fresh stored copy is served")
        };
        assert_eq!(hit.body(), b"chart bytes");
        // The owner finishes that fill; a copy older than fresh_for is then
        // revalidated with its ETag.
        inflight.publish(FillState::Passthrough);
        cache.inflight.finish(&inflight);
        let Lookup::Filling(_) = cache.get_or_fill(key, want, &metrics) else {
            panic!("a stale copy is revalidated")
        };
        let Ok(ShardJob::Fill { etag, .. }) = owner.jobs.try_recv() else {
            panic!("revalidation goes to the owner")
        };
        assert_eq!(etag.as_deref(), Some("\"e1\""));
    }

    #[test]
    fn remembered_404s_only_for_requests_that_may_use_them() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _parts, _lock) = cache_in(dir.path(), 1);
        let metrics = crate::metrics::Metrics::new(1).worker(0);
        cache.negative.insert("/gone.tgz");
        let want = |remember_not_found| Want {
            fresh_for: Duration::ZERO,
            remember_not_found,
        };
        assert!(matches!(
            cache.get_or_fill("/gone.tgz", want(true), &metrics),
            Lookup::NotFound
        ));
        assert!(matches!(
            cache.get_or_fill("/gone.tgz", want(false), &metrics),
            Lookup::Filling(_)
        ));
    }

    #[test]
    fn a_fill_without_an_owner_answers_503() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, parts, _lock) = cache_in(dir.path(), 1);
        drop(parts);
        let metrics = crate::metrics::Metrics::new(1).worker(0);
        let want = Want {
            fresh_for: Duration::ZERO,
            remember_not_found: true,
        };
        let Lookup::Filling(mut wait) = cache.get_or_fill("/x.tgz", want, &metrics) else {
            panic!("a miss waits on a fill")
        };
        let answer = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(wait.answer());
        let Answer::Failed(error) = answer else {
            panic!("no owner, no fill")
        };
        assert_eq!(error.status, 503);
    }
}

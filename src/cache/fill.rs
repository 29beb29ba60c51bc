//! The [`Filler`]: runs on a shard's owner worker (started by
//! [`super::owner`]) and turns one upstream response into one committed cache
//! record, publishing progress to every waiter (see
//! [`coalesce`](super::coalesce)).
//!
//! Behind another cache (a chartcache tier): a record's `stored_at` is moved back by
//! upstream's `Age`, so freshness counts from the tier's stored time; an answer the
//! tier served stale (`Cache-Status: …; detail=stale`) marks the fill
//! ([`Inflight::mark_upstream_stale`]: its waiters answer `STALE`), and a 304 from it
//! does not refresh the stored copy.
//!
//! Only complete bodies are committed: the body must end exactly at the
//! declared `Content-Length`, otherwise the record is aborted (never indexed)
//! and waiters that were streaming it see `Failed` and close their
//! connections.
//!
//! The repository index is the exception to streaming: it is buffered whole
//! (bounded), handed to the index processor thread ([`crate::helm::process`]) —
//! nothing is parsed, rewritten or converted on this worker — and its two forms
//! (YAML, and the JSON form and per-chart views under [`helm::INDEX_JSON_KEYS`] /
//! [`helm::INDEX_VIEWS_KEYS`] on this same shard) are appended in bounded runs with
//! a yield after each, derived forms first, then published.
//! Until then the stored index keeps being served. The gzip forms (of the YAML,
//! the JSON form and the views) follow once a client has asked for gzip
//! (`HelmRepo::gzip_wanted`), compressed on the processor.
//!
//! Derived forms are looked after on every index revalidation (a 304, see
//! `learn_stored_index`): after a restart they are learned from the stored index
//! and the stored forms are verified on the processor (never a full CRC of a big
//! record on this worker); one stored by this process for the current version
//! and gone since (evicted, purged, corrupt) is rebuilt from the stored index
//! ([`helm::StoredForms`]) — again for the same version only after a growing wait
//! ([`helm::Rebuilds`]: a cache too small for the forms must not reprocess the index
//! on every revalidation).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::coalesce::{BodyView, FillError, FillGuard, FillState, Inflight, InflightTable};
use super::error::Error;
use super::format::{unix_now, ObjectMeta};
use super::negative::NegativeCache;
use super::store::{GrowingSpool, Hit, Segment, ShardStore};
use crate::helm::process::{self, Input};
use crate::helm::{self, HelmRepo, IndexKeys, ProcessedIndex};
use crate::metrics::WorkerMetrics;
use crate::origin::{self, Origin, OriginRequest};

/// Body bytes go to the segment in writes of this size (the body's end
/// excepted). Large writes give the page cache large folios, which makes every
/// later `sendfile` of the record cheaper (fewer folios to look up and pin);
/// waiters on a streaming fill see progress one run at a time.
const WRITE_RUN: usize = 256 * 1024;

/// While bytes arrive, waiters hear from the fill at least this often (a
/// partial write run is flushed, or a heartbeat sent), so a slow but healthy
/// upstream never exhausts their patience (which is always longer than a
/// second: see `super::fill_patience`).
const NEWS_EVERY: Duration = Duration::from_millis(500);

/// Bodies without a declared length are buffered in memory up to this size; larger
/// ones go to a spool (see `store`, Large objects).
const MAX_UNSIZED_BODY: usize = 8 << 20;
/// The largest `index.yaml` chartcache rewrites and stores.
const MAX_INDEX: usize = 64 << 20;
/// An index (and its JSON form) goes to the segment in writes of this size, with
/// a yield after each (and is read from upstream with a yield per this many bytes):
/// one run is ~0.1 ms of `pwrite` + CRC, so the worker's hits wait at most that
/// between runs (bigrepo.sh, 49 MB index, refresh: 256 KiB runs had hits' p99.9 at
/// 5.0 / 14.8 ms in two rounds, 1 MiB runs 5.9 / 22 ms).
const INDEX_WRITE_RUN: usize = 256 << 10;
/// The index processor's answer is awaited this long at most (it needs well under
/// a second for a 64 MiB index; longer means it is stuck).
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// A shard owner's filling context.
pub struct Filler<'a> {
    pub origin: &'a dyn Origin,
    pub store: &'a RefCell<ShardStore>,
    /// The fills in flight (this fill leaves it when done).
    pub inflight: &'a InflightTable,
    /// Where upstream 404s are remembered.
    pub negative: &'a NegativeCache,
    pub metrics: &'a WorkerMetrics,
    /// index.yaml rewriting and chart digests.
    pub helm: &'a HelmRepo,
    /// The repository's cache keys: `inflight.key` starts with its namespace.
    pub keys: &'a IndexKeys,
    /// Check chart bodies against the index's sha256 digests.
    pub verify_digests: bool,
}

impl Filler<'_> {
    /// A fill whose key no configured repository owns (cannot come from a request):
    /// answered 404 at once, nothing fetched.
    pub fn refuse(table: &InflightTable, inflight: Arc<Inflight>) {
        let _guard = FillGuard {
            table,
            inflight: inflight.clone(),
        };
        inflight.publish(FillState::Failed {
            error: FillError {
                status: 404,
                message: "not found: no configured repository".into(),
                upstream_status: None,
            },
        });
    }
}

impl Filler<'_> {
    /// Fetches `inflight.key` (conditionally when `etag` is set) and stores
    /// it; an upstream 404 is remembered when `remember_not_found` is set.
    pub async fn fill(
        &self,
        inflight: Arc<Inflight>,
        etag: Option<String>,
        remember_not_found: bool,
    ) {
        let guard = FillGuard {
            table: self.inflight,
            inflight: inflight.clone(),
        };
        let key = inflight.key.clone();
        let mut req = OriginRequest::get(self.keys.object(&key));
        req.if_none_match = etag;
        let started = Instant::now();
        let resp = self.origin.fetch(req).await;
        let resp = match resp {
            Ok(r) => {
                self.metrics
                    .upstream(Some(r.meta.status), started.elapsed());
                r
            }
            Err(e) => {
                self.metrics
                    .upstream(e.upstream_status(), started.elapsed());
                tracing::warn!(key = %key, error = %e, "upstream fetch failed");
                inflight.publish(FillState::Failed {
                    error: FillError::from(&e),
                });
                return;
            }
        };
        let meta = resp.meta;
        let mut body = resp.body;
        // An upstream cache (a fleet tier) stored its copy `age` seconds ago:
        // freshness here counts from then (no double TTL across tiers).
        let stored_at = unix_now().saturating_sub(meta.age.unwrap_or(0));
        if meta.upstream_stale {
            inflight.mark_upstream_stale();
        }
        match meta.status {
            304 => {
                // A tier that served its copy stale confirmed nothing: the stored
                // copy is served (as STALE) without being refreshed.
                let refreshed =
                    meta.upstream_stale || self.store.borrow_mut().refresh(&key, stored_at);
                let hit = refreshed
                    .then(|| self.store.borrow().reader().lookup(&key))
                    .flatten();
                match hit {
                    Some(hit) if key == self.keys.index => {
                        // After a restart (or once a derived form was evicted): learn
                        // from the stored index (digests, views) and store the missing
                        // forms before answering, then the gzip forms.
                        let gzip = match self.learn_stored_index(&inflight, hit.clone()).await {
                            Some(learned) => Some(learned),
                            None => self.gzip_wanted_now(&hit),
                        };
                        inflight.publish(FillState::NotModified(hit));
                        if let Some((forms, mut stored)) = gzip {
                            self.store_gzip(forms, &mut stored).await;
                            self.note_stored(stored);
                        }
                    }
                    Some(hit) => inflight.publish(FillState::NotModified(hit)),
                    // The stored copy vanished (evicted, purged) meanwhile.
                    None => inflight.publish(FillState::Passthrough),
                }
            }
            200 => {
                let object = ObjectMeta {
                    status: 200,
                    etag: meta.etag.clone(),
                    last_modified: meta.last_modified.clone(),
                    content_type: meta.content_type.clone(),
                    stored_at,
                };
                if key == self.keys.index {
                    return self
                        .fill_index(&inflight, &key, object, meta.content_length, body.as_mut())
                        .await;
                }
                match meta.content_length {
                    Some(len) => {
                        self.fill_sized(&inflight, &key, object, len, body.as_mut())
                            .await
                    }
                    None => {
                        self.fill_unsized(&inflight, &key, object, body.as_mut())
                            .await
                    }
                }
            }
            _ => {
                // 404 and friends: answered, never stored (the S3 error body
                // was already discarded by the origin).
                if meta.status == 404 && remember_not_found {
                    self.negative.insert(&key);
                }
                inflight.publish(FillState::Response {
                    meta,
                    body: Bytes::new(),
                });
            }
        }
        drop(guard);
    }

    async fn fill_sized(
        &self,
        inflight: &Inflight,
        key: &str,
        object: ObjectMeta,
        len: u64,
        body: &mut dyn origin::BodyStream,
    ) {
        let begun = {
            let mut store = self.store.borrow_mut();
            match store.begin(key, &object, len) {
                // Larger than the cache keeps: still shared with the waiters, from a spool.
                Err(Error::TooLarge(_)) => store.begin_spool(key, &object, len).inspect(|_| {
                    store.note_spooled();
                    tracing::debug!(key, len, "larger than max-object-size: spooled, not kept");
                }),
                other => other,
            }
        };
        let mut rec = match begun {
            Ok(rec) => rec,
            Err(e) => {
                self.metrics
                    .fill_skipped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if matches!(e, Error::NoSpace) {
                    // The store says so once per interval, not once per object.
                    tracing::debug!(key, error = %e, "not caching: passing through");
                } else {
                    tracing::warn!(key, error = %e, "not caching: passing through");
                }
                inflight.publish(FillState::Passthrough);
                return;
            }
        };
        let view = BodyView {
            segment: rec.segment.clone(),
            pin: rec.pin.clone(),
            body_offset: rec.body_offset,
            body_len: len,
            meta: Arc::new(object),
        };
        // With a digest to check, waiters get the body only once it is
        // verified (they could not be told "don't trust this" afterwards).
        let expected = self.expected_digest(key);
        let mut hasher = expected.map(|_| Sha256::new());
        if expected.is_none() {
            inflight.publish(FillState::Streaming {
                view: view.clone(),
                written: 0,
            });
        }
        let mut written = 0u64;
        let mut run: Vec<u8> = Vec::with_capacity(WRITE_RUN.min(len as usize));
        let mut last_news = Instant::now();
        let failure = loop {
            match body.next_chunk().await {
                Ok(Some(chunk)) => {
                    if written + chunk.len() as u64 > len {
                        break Some(format!("upstream sent more than its Content-Length {len}"));
                    }
                    written += chunk.len() as u64;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                    run.extend_from_slice(&chunk);
                    let news_due = last_news.elapsed() >= NEWS_EVERY;
                    if run.len() < WRITE_RUN && written < len && !news_due {
                        continue;
                    }
                    last_news = Instant::now();
                    if let Err(e) = self.store.borrow_mut().append(&mut rec, &run) {
                        break Some(format!("cache write failed: {e}"));
                    }
                    run.clear();
                    if hasher.is_none() {
                        inflight.progress(rec.written());
                    } else {
                        // Nothing is readable before the digest is checked;
                        // the waiters only need to know bytes are arriving.
                        inflight.heartbeat();
                    }
                    // An always-ready body (a local file, a fast peer) must not hold
                    // the worker for the whole object.
                    crate::sched::yield_now().await;
                }
                Ok(None) if written == len => break None,
                Ok(None) => break Some(format!("upstream body ended at {written} of {len} bytes")),
                Err(e) => break Some(e.to_string()),
            }
        };
        if let (None, Some(expected), Some(h)) = (&failure, expected, hasher) {
            if !self.digest_matches(key, &expected, h) {
                self.store.borrow_mut().abort(rec);
                inflight.publish(FillState::Unverified { view });
                return;
            }
        }
        let failure = match failure {
            None => match self.store.borrow_mut().commit(rec) {
                Ok(()) => None,
                Err(e) => Some(format!("commit failed: {e}")),
            },
            Some(f) => {
                self.store.borrow_mut().abort(rec);
                Some(f)
            }
        };
        match failure {
            None => inflight.publish(FillState::Done { view }),
            Some(message) => {
                self.metrics
                    .fills_aborted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(key, %message, "fill aborted; nothing cached");
                inflight.publish(FillState::Failed {
                    error: FillError {
                        status: 502,
                        message,
                        upstream_status: Some(200),
                    },
                });
            }
        }
    }

    /// A body without `Content-Length`: buffered in memory up to [`MAX_UNSIZED_BODY`],
    /// beyond that written to a growing spool (see `store`, Large objects); once whole,
    /// it is checked against the index digest, then stored, or (too large to keep, or
    /// no room) served to the waiters from the spool. Waiters hear heartbeats
    /// meanwhile: the length is only known at the end.
    async fn fill_unsized(
        &self,
        inflight: &Inflight,
        key: &str,
        object: ObjectMeta,
        body: &mut dyn origin::BodyStream,
    ) {
        let mut buf = BytesMut::new();
        let mut spool: Option<GrowingSpool> = None;
        let mut hasher = self.expected_digest(key).map(|d| (d, Sha256::new()));
        let mut pace = Pacer::new(WRITE_RUN);
        let not_shared = |e: Error| {
            self.metrics
                .fill_skipped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(key, error = %e, "body of unknown length not shared: passing through");
            inflight.publish(FillState::Passthrough);
        };
        loop {
            match body.next_chunk().await {
                Ok(Some(chunk)) => {
                    if let Some((_, h)) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                    let spooled = match spool.as_mut() {
                        Some(sp) => self.store.borrow().spool_append(sp, &chunk),
                        None if buf.len() + chunk.len() > MAX_UNSIZED_BODY => {
                            buf.extend_from_slice(&chunk);
                            let begun = self.store.borrow().begin_growing_spool(&buf);
                            begun.map(|sp| {
                                spool = Some(sp);
                                buf = BytesMut::new();
                            })
                        }
                        None => {
                            buf.extend_from_slice(&chunk);
                            Ok(())
                        }
                    };
                    if let Err(e) = spooled {
                        return not_shared(e);
                    }
                    pace.read(chunk.len(), inflight).await;
                }
                Ok(None) => break,
                Err(e) => {
                    return inflight.publish(FillState::Failed {
                        error: FillError::from(&e),
                    })
                }
            }
        }
        let digest_ok = match hasher {
            Some((expected, h)) => self.digest_matches(key, &expected, h),
            None => true,
        };
        let spool = match spool {
            None if digest_ok => {
                let body = buf.freeze();
                return match self.store_in_runs(key, &object, &body).await {
                    Ok(view) => inflight.publish(FillState::Done { view }),
                    Err(_) => inflight.publish(from_memory(object, body)),
                };
            }
            // Served once, never stored: it needs a segment to be served from.
            None => self.store.borrow().begin_growing_spool(&buf),
            Some(spool) => Ok(spool),
        };
        let finished = spool.and_then(|sp| {
            let len = sp.len();
            self.store.borrow().finish_spool(sp).map(|seg| (seg, len))
        });
        let (segment, len) = match finished {
            Ok(done) => done,
            Err(e) => return not_shared(e),
        };
        let Some(pin) = segment.pin() else {
            return not_shared(Error::Evicted); // never: spools are not condemned
        };
        let meta = Arc::new(object);
        let spooled = |segment, pin, meta| BodyView {
            segment,
            pin,
            body_offset: 0,
            body_len: len,
            meta,
        };
        if !digest_ok {
            let view = spooled(segment, pin, meta);
            return inflight.publish(FillState::Unverified { view });
        }
        let kept = if len <= self.store.borrow().max_object() {
            match self.keep_spooled(inflight, key, &meta, &segment, len).await {
                Ok(view) => Some(view),
                Err(e) => {
                    tracing::warn!(key, error = %e, "not caching a spooled body: served once");
                    None
                }
            }
        } else {
            None
        };
        let view = kept.unwrap_or_else(|| {
            self.store.borrow().note_spooled();
            spooled(segment, pin, meta)
        });
        inflight.publish(FillState::Done { view });
    }

    /// The index digest a chart body must match (when digests are checked).
    fn expected_digest(&self, key: &str) -> Option<[u8; 32]> {
        self.verify_digests
            .then(|| self.helm.digests.get(self.keys.object(key)))
            .flatten()
    }

    /// Does the body hashed by `h` match `expected`? A mismatch is counted and logged.
    fn digest_matches(&self, key: &str, expected: &[u8; 32], h: Sha256) -> bool {
        let actual: [u8; 32] = h.finalize().into();
        if actual == *expected {
            return true;
        }
        self.metrics
            .digest_mismatch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            key,
            expected = %helm::hex(expected),
            actual = %helm::hex(&actual),
            "chart bytes do not match the index digest: served once uncached"
        );
        false
    }

    /// Copies a whole spooled body into a cache record (in runs, letting the worker's
    /// other tasks run between them) and commits it.
    async fn keep_spooled(
        &self,
        inflight: &Inflight,
        key: &str,
        meta: &Arc<ObjectMeta>,
        spool: &Segment,
        len: u64,
    ) -> Result<BodyView, Error> {
        let mut rec = self.store.borrow_mut().begin(key, meta, len)?;
        let mut run = vec![0u8; WRITE_RUN * 4];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(run.len() as u64) as usize;
            let copied = spool
                .read_at(at, &mut run[..n])
                .and_then(|()| self.store.borrow_mut().append(&mut rec, &run[..n]));
            if let Err(e) = copied {
                self.store.borrow_mut().abort(rec);
                return Err(e);
            }
            at += n as u64;
            inflight.heartbeat();
            crate::sched::yield_now().await;
        }
        let view = BodyView {
            segment: rec.segment.clone(),
            pin: rec.pin.clone(),
            body_offset: rec.body_offset,
            body_len: len,
            meta: Arc::clone(meta),
        };
        self.store.borrow_mut().commit(rec)?;
        Ok(view)
    }

    /// The repository index: buffered whole, then handed to the index processor
    /// (off this worker: URLs rewritten, digests and the JSON form derived), then
    /// both forms stored in bounded runs. The stored index keeps being served until
    /// the new one is committed.
    async fn fill_index(
        &self,
        inflight: &Inflight,
        key: &str,
        mut object: ObjectMeta,
        declared_len: Option<u64>,
        body: &mut dyn origin::BodyStream,
    ) {
        let Some(raw) = read_index(inflight, body, declared_len).await else {
            return;
        };
        let job = process::Job {
            rewrite: true,
            json: true,
        };
        let mut p = match self
            .process_index(Some(inflight), Input::Bytes(raw), job)
            .await
        {
            Ok(p) => p,
            Err(message) => {
                tracing::warn!(key, %message, "index not processed: the stored copy stays");
                inflight.publish(FillState::Failed {
                    error: FillError {
                        status: 503,
                        message: message.to_string(),
                        upstream_status: None,
                    },
                });
                return;
            }
        };
        if p.rewritten {
            object.etag = Some(helm::etag::served_etag_crc(
                object.etag.as_deref(),
                p.yaml_crc,
            ));
        }
        *self.helm.learned.lock().unwrap_or_else(|e| e.into_inner()) = object.etag.clone();
        self.apply_digests(key, &mut p);
        // The derived forms first, in the slot the current ones are not in: a request
        // that finds the new YAML finds them too, and until then the current ones
        // keep being served with the current YAML.
        // The slot the served YAML's forms are not in (after a restart the counter
        // knows nothing: ask the store), else the counter's turn.
        let served = self.store.borrow().reader().lookup(key);
        let live = served.and_then(|h| h.meta.etag.clone()).and_then(|e| {
            self.stored_slot(&self.keys.views, &helm::views_etag(&e))
                .or_else(|| self.stored_slot(&self.keys.json, &helm::json_etag(&e)))
        });
        let turn = self
            .helm
            .slot
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1)
            % 2;
        let slot = live.map_or(turn, |s| 1 - s);
        let yaml = std::mem::take(&mut p.yaml);
        let json = p.json.as_ref().ok().cloned();
        let views = p.views.take();
        // Freeing tens of MB is not this worker's job either.
        self.helm.processor.dispose(p);
        let Some(etag) = object.etag.clone() else {
            self.helm.views[slot].store(None);
            return match self.store_in_runs(key, &object, &yaml).await {
                Ok(view) => {
                    inflight.publish(FillState::Done { view });
                    self.helm.processor.dispose((yaml, json, views));
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "index not stored: served from memory");
                    inflight.publish(from_memory(object, yaml));
                }
            };
        };
        let mut stored = helm::StoredForms {
            yaml_etag: etag,
            slot,
            ..Default::default()
        };
        let views = self
            .store_derived(json.as_ref(), views, &object, &mut stored, [true, true])
            .await;
        // Before the YAML: a view request that meets the new YAML finds its table.
        self.helm.views[slot].store(views.as_ref().map(|v| v.table.clone()));
        match self.store_in_runs(key, &object, &yaml).await {
            Ok(view) => {
                inflight.publish(FillState::Done { view });
                // Then the gzip forms, once a client wants them (clients that ask
                // get the identity form meanwhile).
                stored.gzip_tried = self.gzip_wanted();
                self.note_stored(stored.clone());
                if stored.gzip_tried {
                    let forms = GzipForms {
                        object,
                        yaml: Some(Input::Bytes(yaml)),
                        json: json.filter(|_| stored.json).map(Input::Bytes),
                        views: views.map(|v| (v.table, Input::Bytes(v.body))),
                        views_stored: None,
                    };
                    self.store_gzip(forms, &mut stored).await;
                    self.note_stored(stored);
                } else {
                    // The last references to tens of MB: unmapping them held this
                    // worker ~20 ms at 49 MB (the processor frees them instead).
                    self.helm
                        .processor
                        .dispose((yaml, json, views.map(|v| v.body)));
                }
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "index not stored: served from memory");
                inflight.publish(from_memory(object, yaml));
            }
        }
    }

    /// Has a client asked for a gzip form (see `HelmRepo::gzip_wanted`)?
    fn gzip_wanted(&self) -> bool {
        self.helm
            .gzip_wanted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The gzip forms of the stored index version `hit`, if a client wants them
    /// and they were not built (or tried) yet for it: read from the stored
    /// records and compressed on the index processor (see [`Self::store_gzip`]).
    fn gzip_wanted_now(&self, hit: &Hit) -> Option<(GzipForms, helm::StoredForms)> {
        if !self.gzip_wanted() {
            return None;
        }
        let mut stored = self
            .helm
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|s| hit.meta.etag.as_ref() == Some(&s.yaml_etag) && !s.gzip_tried)?;
        stored.gzip_tried = true;
        self.note_stored(stored.clone());
        let found = self.find_forms(&stored.yaml_etag);
        let load = |hit: Hit| {
            Input::Load(Box::new(move || {
                hit.verify()
                    .then(|| hit.read_body().ok().map(Bytes::from))
                    .flatten()
            }))
        };
        let table = self.helm.views[stored.slot]
            .load_full()
            .filter(|t| t.yaml_etag == stored.yaml_etag);
        let views = table.zip(found.views.filter(|(s, _)| *s == stored.slot));
        let forms = GzipForms {
            object: (*hit.meta).clone(),
            yaml: (!stored.gzip[0]).then(|| load(hit.clone())),
            json: found.json.filter(|_| !stored.gzip[1]).map(|(_, h)| load(h)),
            views: views.map(|(t, (_, h))| (t, load(h))),
            views_stored: found.views_gzip,
        };
        Some((forms, stored))
    }

    /// Records which derived forms of the learned version are stored.
    fn note_stored(&self, stored: helm::StoredForms) {
        *self.helm.stored.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored);
    }

    /// Was a derived form of the learned index version `yaml_etag` stored by this
    /// process and is gone now (evicted, purged, dropped as corrupt)?
    fn derived_form_gone(&self, yaml_etag: &str) -> bool {
        let Some(s) = self
            .helm
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|s| s.yaml_etag == yaml_etag)
        else {
            return false;
        };
        let json_etag = helm::json_etag(yaml_etag);
        let views_etag = helm::views_etag(yaml_etag);
        let gone = |expected: bool, keys: &[String; 2], etag: &str| {
            expected && self.stored_slot(keys, etag).is_none()
        };
        gone(s.json, &self.keys.json, &json_etag)
            || gone(s.views, &self.keys.views, &views_etag)
            || gone(s.gzip[0], &self.keys.gzip[0], &helm::gzip_etag(yaml_etag))
            || gone(s.gzip[1], &self.keys.gzip[1], &helm::gzip_etag(&json_etag))
            || gone(
                s.views_gzip,
                &self.keys.views_gzip,
                &helm::gzip_etag(&views_etag),
            )
    }

    /// After a 304 for the index — the first after a restart, or once a derived
    /// form stored for it was evicted since — learn its digests and its views'
    /// table, and store its JSON form and views if missing, from the stored copy,
    /// read and parsed on the index processor. The derived forms found stored are
    /// verified there too (a full CRC of up to twice the index is not a worker's
    /// job; their first request then finds them verified). Applied only if nothing
    /// newer was learned meanwhile. Returns the gzip forms to build once the 304 is
    /// answered.
    async fn learn_stored_index(
        &self,
        inflight: &Inflight,
        hit: Hit,
    ) -> Option<(GzipForms, helm::StoredForms)> {
        let etag = hit.meta.etag.clone();
        let learned = self
            .helm
            .learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Learned already: again only if a derived form was evicted since.
        let relearn = learned.is_some() && learned == etag;
        if relearn && !etag.as_deref().is_some_and(|e| self.derived_form_gone(e)) {
            return None;
        }
        // Not over and over (helm::Rebuilds): neither a rebuild whose forms the cache
        // cannot keep, nor a stored index that fails to process after a restart.
        let next = self
            .helm
            .rebuilds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(etag.as_deref().unwrap_or_default(), Instant::now())?;
        if relearn {
            tracing::warn!(
                next_rebuild_in = ?next,
                "a derived form of the index (JSON, views or gzip) is gone from the cache: rebuilt from the stored index; if this repeats, the cache is too small for this index (raise cache_size)"
            );
            self.helm
                .learned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        let found = etag
            .as_deref()
            .map(|e| self.find_forms(e))
            .unwrap_or_default();
        let verify = found.hits();
        let object = (*hit.meta).clone();
        let load = Input::Load(Box::new(move || {
            for form in &verify {
                form.verify();
            }
            hit.read_body().ok().map(Bytes::from)
        }));
        // The JSON form is always derived: the views' table lives in memory only.
        let job = process::Job {
            rewrite: false,
            json: true,
        };
        let mut p = match self.process_index(Some(inflight), load, job).await {
            Ok(p) => p,
            Err(message) => {
                tracing::warn!(%message, "stored index not processed: chart digests not checked");
                return None;
            }
        };
        // Still the stored index, and nothing newer learned while it was processed?
        let current = self.store.borrow().reader().lookup(&self.keys.index);
        if current.is_none_or(|h| h.meta.etag != etag) {
            return None;
        }
        {
            let mut learned = self.helm.learned.lock().unwrap_or_else(|e| e.into_inner());
            if learned.is_some() {
                return None;
            }
            learned.clone_from(&etag);
        }
        self.apply_digests(&self.keys.index, &mut p);
        let etag = etag?;
        // Forms that failed verification on the processor are dropped (and stored
        // again below).
        let found = self.drop_unverified(found);
        // Missing forms go where this version's are (else slot 0: what a fresh
        // process writes first is slot 1).
        let slot = found.slot().unwrap_or(0);
        let mut stored = helm::StoredForms {
            yaml_etag: etag,
            slot,
            json: found.json.is_some(),
            views: found.views.is_some(),
            gzip: [found.gzip[0].is_some(), found.gzip[1].is_some()],
            views_gzip: false,
            gzip_tried: self.gzip_wanted(),
        };
        let yaml = std::mem::take(&mut p.yaml);
        let json = p.json.as_ref().ok().cloned();
        let views = p.views.take();
        self.helm.processor.dispose(p);
        let store = [found.json.is_none(), found.views.is_none()];
        let views = self
            .store_derived(json.as_ref(), views, &object, &mut stored, store)
            .await;
        self.helm.views[slot].store(views.as_ref().map(|v| v.table.clone()));
        self.note_stored(stored.clone());
        if !stored.gzip_tried {
            return Some((GzipForms::default(), stored));
        }
        let forms = GzipForms {
            object,
            yaml: (!stored.gzip[0]).then_some(Input::Bytes(yaml)),
            json: json
                .filter(|_| stored.json && !stored.gzip[1])
                .map(Input::Bytes),
            views: views.map(|v| (v.table, Input::Bytes(v.body))),
            views_stored: found.views_gzip,
        };
        Some((forms, stored))
    }

    /// This index version's derived forms stored now (by their ETags), in either slot.
    fn find_forms(&self, yaml_etag: &str) -> FoundForms {
        let store = self.store.borrow();
        let reader = store.reader();
        let find = |keys: &[String; 2], etag: &str| {
            keys.iter().enumerate().find_map(|(slot, key)| {
                reader
                    .lookup(key)
                    .filter(|h| h.meta.etag.as_deref() == Some(etag))
                    .map(|h| (slot, h))
            })
        };
        let json_etag = helm::json_etag(yaml_etag);
        let views_etag = helm::views_etag(yaml_etag);
        FoundForms {
            json: find(&self.keys.json, &json_etag),
            views: find(&self.keys.views, &views_etag),
            gzip: [
                find(&self.keys.gzip[0], &helm::gzip_etag(yaml_etag)),
                find(&self.keys.gzip[1], &helm::gzip_etag(&json_etag)),
            ],
            views_gzip: find(&self.keys.views_gzip, &helm::gzip_etag(&views_etag)),
        }
    }

    /// `found` without the forms whose verification failed (dropped from the store).
    fn drop_unverified(&self, mut found: FoundForms) -> FoundForms {
        let reader = self.store.borrow().reader();
        let keep = |form: &mut Option<(usize, Hit)>| {
            if let Some((_, hit)) = form.take_if(|(_, h)| !h.is_verified()) {
                if hit.segment.check_size().is_some() {
                    reader.drop_truncated(&hit.segment);
                } else {
                    reader.drop_corrupt(hit.key(), &hit);
                }
            }
        };
        keep(&mut found.json);
        keep(&mut found.views);
        let [a, b] = &mut found.gzip;
        keep(a);
        keep(b);
        keep(&mut found.views_gzip);
        found
    }

    /// Hands `input` to the index processor and waits for its answer, telling
    /// `inflight`'s waiters the fill is alive meanwhile. Bounded by
    /// [`PROCESS_DEADLINE`].
    async fn process_index(
        &self,
        inflight: Option<&Inflight>,
        input: Input,
        job: process::Job,
    ) -> Result<ProcessedIndex, String> {
        let mut answer = self
            .helm
            .processor
            .submit(input, job)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let _processing = Gauge::up(&self.metrics.index_processing);
        loop {
            match monoio::time::timeout(NEWS_EVERY, &mut answer).await {
                Ok(Ok(p)) => {
                    self.metrics
                        .index_processed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(took = ?p.took, waited = ?started.elapsed(), bytes = p.yaml.len(), "index processed");
                    return Ok(p);
                }
                Ok(Err(_)) => return Err("the index processor gave no answer".into()),
                Err(_) if started.elapsed() >= PROCESS_DEADLINE => {
                    return Err(format!(
                        "index processing took longer than {PROCESS_DEADLINE:?}"
                    ))
                }
                Err(_) => {
                    if let Some(i) = inflight {
                        i.heartbeat();
                    }
                }
            }
        }
    }

    /// Installs the digests of a processed index (the old table is freed on the
    /// processor thread).
    fn apply_digests(&self, key: &str, p: &mut ProcessedIndex) {
        match &mut p.summary {
            Ok(summary) => {
                let digests = std::mem::take(&mut summary.digests);
                let count = digests.len();
                let old = self.helm.digests.replace(Arc::new(digests));
                self.helm.processor.dispose(old);
                tracing::info!(
                    key,
                    charts = summary.charts,
                    versions = summary.versions,
                    digests = count,
                    took = ?p.took,
                    json = p.json.is_ok(),
                    "index processed"
                );
            }
            Err(e) => tracing::warn!(
                key,
                error = %e,
                "index.yaml is not a Helm index: chart digests not checked"
            ),
        }
        if let Err(Some(why)) = &p.json {
            tracing::info!(
                key,
                reason = why,
                "no JSON form for this index: YAML served to every client"
            );
        }
    }

    /// Which of `keys` (beside the index) holds a record with this ETag.
    fn stored_slot(&self, keys: &[String; 2], etag: &str) -> Option<usize> {
        let store = self.store.borrow();
        let reader = store.reader();
        keys.iter().position(|key| {
            reader
                .lookup(key)
                .is_some_and(|h| h.meta.etag.as_deref() == Some(etag))
        })
    }

    /// Stores the forms derived from one index version in `stored.slot` (those
    /// asked for, `[json, views]`, and present): the JSON form under
    /// [`helm::INDEX_JSON_KEYS`], the per-chart views under
    /// [`helm::INDEX_VIEWS_KEYS`] — on this shard, the index's owner — and notes in
    /// `stored` what was stored. Returns the views' table (moved, not copied), to
    /// publish before the YAML it belongs to is, and the views for their gzip form;
    /// `None` when there are no views stored.
    async fn store_derived(
        &self,
        json_form: Option<&Bytes>,
        views: Option<helm::view::Views>,
        yaml: &ObjectMeta,
        stored: &mut helm::StoredForms,
        [json, store_views]: [bool; 2],
    ) -> Option<StoredViews> {
        let slot = stored.slot;
        let meta = |etag: String| ObjectMeta {
            status: 200,
            etag: Some(etag),
            last_modified: yaml.last_modified.clone(),
            content_type: Some("application/json".into()),
            stored_at: yaml.stored_at,
        };
        if let (true, Some(body)) = (json, json_form) {
            let m = meta(helm::json_etag(&stored.yaml_etag));
            match self.store_in_runs(&self.keys.json[slot], &m, body).await {
                Ok(_) => stored.json = true,
                Err(e) => {
                    tracing::warn!(error = %e, "JSON form of the index not stored: YAML served to every client")
                }
            }
        }
        let (table, body) = helm::view::ViewTable::new(stored.yaml_etag.clone(), slot, views?);
        if store_views {
            let m = meta(helm::views_etag(&stored.yaml_etag));
            match self.store_in_runs(&self.keys.views[slot], &m, &body).await {
                Ok(_) => stored.views = true,
                Err(e) => {
                    tracing::warn!(error = %e, "per-chart views not stored: answered 503");
                    return None;
                }
            }
        }
        Some(StoredViews {
            table: Arc::new(table),
            body,
        })
    }

    /// Compresses the index's forms in `forms` on the index processor, and stores
    /// them in `stored.slot` of [`helm::INDEX_GZIP_KEYS`] and
    /// [`helm::INDEX_VIEWS_GZIP_KEYS`]; the views' gzip members are published on
    /// their table once stored (or found stored already, the same bytes: gzip is
    /// deterministic). Notes in `stored` what was stored.
    async fn store_gzip(&self, forms: GzipForms, stored: &mut helm::StoredForms) {
        let GzipForms {
            object,
            yaml,
            json,
            views,
            views_stored,
        } = forms;
        let slot = stored.slot;
        let yaml_etag = stored.yaml_etag.clone();
        // (which form, its key, its ETag, its content type), in job order.
        let mut targets = Vec::new();
        let mut jobs = Vec::new();
        if let Some(yaml) = yaml {
            targets.push((0, helm::gzip_etag(&yaml_etag), object.content_type.clone()));
            jobs.push(process::CompressJob {
                body: yaml,
                pieces: None,
            });
        }
        if let Some(json) = json {
            let etag = helm::gzip_etag(&helm::json_etag(&yaml_etag));
            targets.push((1, etag, Some("application/json".into())));
            jobs.push(process::CompressJob {
                body: json,
                pieces: None,
            });
        }
        let mut table = None;
        if let Some((t, body)) = views.filter(|_| stored.views) {
            let etag = helm::gzip_etag(&helm::views_etag(&yaml_etag));
            targets.push((2, etag, Some("application/json".into())));
            jobs.push(process::CompressJob {
                body,
                pieces: Some(t.plain.clone()),
            });
            table = Some(t);
        }
        if jobs.is_empty() {
            return;
        }
        // The gauge covers compressing and storing too: index work off the workers.
        let _processing = Gauge::up(&self.metrics.index_processing);
        let answer = match self.helm.processor.submit_compress(jobs) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "index not compressed: served uncompressed");
                return;
            }
        };
        let compressed = match monoio::time::timeout(PROCESS_DEADLINE, answer).await {
            Ok(Ok(c)) => c,
            _ => {
                tracing::warn!("index compression gave no answer: served uncompressed");
                return;
            }
        };
        for ((form, etag, content_type), done) in targets.into_iter().zip(compressed) {
            let Some((gz, members)) = done else {
                tracing::warn!(form, "stored index form not readable: not compressed");
                continue;
            };
            let meta = ObjectMeta {
                status: 200,
                etag: Some(etag),
                last_modified: object.last_modified.clone(),
                content_type,
                stored_at: object.stored_at,
            };
            let key = match form {
                0 | 1 => &self.keys.gzip[form][slot],
                _ => &self.keys.views_gzip[slot],
            };
            // The views' gzip form stored already (after a restart): the same bytes.
            let present = form == 2
                && views_stored
                    .as_ref()
                    .is_some_and(|(s, h)| *s == slot && h.body_len == gz.len());
            if !present {
                if let Err(e) = self.store_in_runs(key, &meta, &gz).await {
                    tracing::warn!(key, error = %e, "compressed index form not stored");
                    continue;
                }
            }
            match (form, &table) {
                (0 | 1, _) => stored.gzip[form] = true,
                (_, Some(t)) => {
                    stored.views_gzip = true;
                    let by_start = t.plain.iter().map(|r| r.start).zip(members).collect();
                    t.gzip.store(Some(Arc::new(by_start)));
                }
                _ => {}
            }
        }
    }

    /// Stores a body that is in memory as one record, appended in runs of
    /// [`INDEX_WRITE_RUN`] with a yield after each, so writing a 50 MB index never
    /// holds this worker for longer than one run.
    async fn store_in_runs(
        &self,
        key: &str,
        object: &ObjectMeta,
        body: &Bytes,
    ) -> Result<BodyView, Error> {
        let mut rec = self
            .store
            .borrow_mut()
            .begin(key, object, body.len() as u64)?;
        for run in body.chunks(INDEX_WRITE_RUN) {
            let appended = self.store.borrow_mut().append(&mut rec, run);
            if let Err(e) = appended {
                self.store.borrow_mut().abort(rec);
                return Err(e);
            }
            crate::sched::yield_now().await;
        }
        let view = BodyView {
            segment: rec.segment.clone(),
            pin: rec.pin.clone(),
            body_offset: rec.body_offset,
            body_len: body.len() as u64,
            meta: Arc::new(object.clone()),
        };
        self.store.borrow_mut().commit(rec)?;
        Ok(view)
    }
}

/// The stored per-chart views of one index version: their table (published) and
/// what their gzip form is made from.
struct StoredViews {
    table: Arc<helm::view::ViewTable>,
    body: Bytes,
}

/// What [`Filler::store_gzip`] compresses: the YAML, the JSON form, the views
/// with their table (each `None`: not this time), in memory or read by the index
/// processor from the store.
#[derive(Default)]
struct GzipForms {
    /// The YAML's metadata.
    object: ObjectMeta,
    yaml: Option<Input>,
    json: Option<Input>,
    views: Option<(Arc<helm::view::ViewTable>, Input)>,
    /// The views' gzip form found stored (its slot and record).
    views_stored: Option<(usize, Hit)>,
}

/// An index version's derived forms found in the store: each its slot and record.
#[derive(Default)]
struct FoundForms {
    json: Option<(usize, Hit)>,
    views: Option<(usize, Hit)>,
    gzip: [Option<(usize, Hit)>; 2],
    views_gzip: Option<(usize, Hit)>,
}

impl FoundForms {
    /// Every record found (to verify).
    fn hits(&self) -> Vec<Hit> {
        let [a, b] = &self.gzip;
        [&self.json, &self.views, a, b, &self.views_gzip]
            .into_iter()
            .flatten()
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// The slot this version's forms are in (the views' first: their table says it).
    fn slot(&self) -> Option<usize> {
        let [a, b] = &self.gzip;
        [&self.views, &self.json, a, b, &self.views_gzip]
            .into_iter()
            .flatten()
            .map(|(s, _)| *s)
            .next()
    }
}

/// A whole 200 body that could not be stored, answered from memory.
fn from_memory(object: ObjectMeta, body: Bytes) -> FillState {
    let meta = origin::ResponseMeta {
        status: 200,
        etag: object.etag,
        last_modified: object.last_modified,
        content_type: object.content_type,
        content_length: Some(body.len() as u64),
        ..Default::default()
    };
    FillState::Response { meta, body }
}

/// Paces a body read on the worker: yields every `every` bytes (a body that is always
/// ready — a local file, a fast peer — would otherwise be read whole without letting the
/// worker serve anyone) and tells the fill's waiters that bytes are arriving at least every
/// [`NEWS_EVERY`].
struct Pacer {
    every: usize,
    since_yield: usize,
    last_news: Instant,
}

impl Pacer {
    fn new(every: usize) -> Pacer {
        Pacer {
            every,
            since_yield: 0,
            last_news: Instant::now(),
        }
    }

    /// `n` more bytes were read.
    async fn read(&mut self, n: usize, inflight: &Inflight) {
        self.since_yield += n;
        if self.since_yield >= self.every {
            self.since_yield = 0;
            crate::sched::yield_now().await;
        }
        if self.last_news.elapsed() >= NEWS_EVERY {
            self.last_news = Instant::now();
            inflight.heartbeat();
        }
    }
}

/// Reads a whole index body into memory (up to [`MAX_INDEX`], sized once from the
/// declared length). On overflow or error it publishes the outcome
/// (`Passthrough` / `Failed`) and returns `None`.
async fn read_index(
    inflight: &Inflight,
    body: &mut dyn origin::BodyStream,
    declared_len: Option<u64>,
) -> Option<Bytes> {
    if declared_len.is_some_and(|l| l > MAX_INDEX as u64) {
        inflight.publish(FillState::Passthrough);
        return None;
    }
    let mut buf = BytesMut::with_capacity(declared_len.unwrap_or(0) as usize);
    let mut pace = Pacer::new(INDEX_WRITE_RUN);
    loop {
        match body.next_chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_INDEX {
                    inflight.publish(FillState::Passthrough);
                    return None;
                }
                buf.extend_from_slice(&chunk);
                pace.read(chunk.len(), inflight).await;
            }
            Ok(None) => return Some(buf.freeze()),
            Err(e) => {
                inflight.publish(FillState::Failed {
                    error: FillError::from(&e),
                });
                return None;
            }
        }
    }
}

/// A gauge held up while this value lives.
struct Gauge<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Gauge<'a> {
    fn up(g: &'a std::sync::atomic::AtomicU64) -> Gauge<'a> {
        g.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

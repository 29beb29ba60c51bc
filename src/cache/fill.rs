//! The [`Filler`]: runs on a shard's owner worker (started by
//! [`super::owner`]) and turns one upstream response into one committed cache
//! record, publishing progress to every waiter (see
//! [`coalesce`](super::coalesce)).
//!
//! Only complete bodies are committed: the body must end exactly at the
//! declared `Content-Length`, otherwise the record is aborted (never indexed)
//! and waiters that were streaming it see `Failed` and close their
//! connections.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::coalesce::{BodyView, FillError, FillGuard, FillState, Inflight, InflightTable};
use super::error::Error;
use super::format::{unix_now, ObjectMeta};
use super::negative::NegativeCache;
use super::store::{GrowingSpool, Segment, ShardStore};
use crate::helm::{self, HelmRepo};
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
    /// Check chart bodies against the index's sha256 digests.
    pub verify_digests: bool,
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
        let mut req = OriginRequest::get(key.clone());
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
        match meta.status {
            304 => {
                let refreshed = self.store.borrow_mut().refresh(&key, unix_now());
                let hit = refreshed
                    .then(|| self.store.borrow().reader().lookup(&key))
                    .flatten();
                match hit {
                    Some(hit) => {
                        if key == helm::INDEX_KEY && self.helm.digests.is_empty() && hit.verify() {
                            // After a restart: learn the digests from the stored index.
                            if let Ok(index) = hit.read_body() {
                                self.helm.digests.update_from_index(&index);
                            }
                        }
                        inflight.publish(FillState::NotModified(hit));
                    }
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
                    stored_at: unix_now(),
                };
                if key == helm::INDEX_KEY {
                    return self
                        .fill_index(&inflight, &key, object, body.as_mut())
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
        let mut last_news = Instant::now();
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
                    if last_news.elapsed() >= NEWS_EVERY {
                        last_news = Instant::now();
                        inflight.heartbeat();
                    }
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
            None if digest_ok => return self.store_buffered(inflight, key, object, buf.freeze()),
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
            .then(|| self.helm.digests.get(key))
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
            yield_now().await;
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

    /// The repository index: buffered whole, helm-s3 URLs rewritten, stored,
    /// and its digests learned.
    async fn fill_index(
        &self,
        inflight: &Inflight,
        key: &str,
        mut object: ObjectMeta,
        body: &mut dyn origin::BodyStream,
    ) {
        let Some(mut served) = read_capped(inflight, body, MAX_INDEX).await else {
            return;
        };
        if let Some(from) = &self.helm.rewrite_from {
            if let Some(rewritten) = helm::rewrite_s3_urls(&served, from) {
                object.etag = Some(helm::served_etag(object.etag.as_deref(), &rewritten));
                served = Bytes::from(rewritten);
            }
        }
        if !self.helm.digests.update_from_index(&served) {
            tracing::warn!(
                key,
                "index.yaml does not parse as a Helm index: chart digests not checked"
            );
        }
        self.store_buffered(inflight, key, object, served);
    }

    /// Stores a body that is wholly in memory, then publishes it (`Done`, or
    /// an in-memory `Response` when it cannot be stored).
    fn store_buffered(&self, inflight: &Inflight, key: &str, object: ObjectMeta, body: Bytes) {
        let stored = {
            let mut store = self.store.borrow_mut();
            store
                .begin(key, &object, body.len() as u64)
                .and_then(|mut rec| {
                    store.append(&mut rec, &body)?;
                    Ok(rec)
                })
                .map(|rec| {
                    let view = BodyView {
                        segment: rec.segment.clone(),
                        pin: rec.pin.clone(),
                        body_offset: rec.body_offset,
                        body_len: body.len() as u64,
                        meta: Arc::new(object.clone()),
                    };
                    (rec, view)
                })
        };
        let committed = match stored {
            Ok((rec, view)) => self.store.borrow_mut().commit(rec).ok().map(|()| view),
            Err(_) => None,
        };
        match committed {
            Some(view) => inflight.publish(FillState::Done { view }),
            None => {
                let meta = origin::ResponseMeta {
                    status: 200,
                    etag: object.etag,
                    last_modified: object.last_modified,
                    content_type: object.content_type,
                    content_length: Some(body.len() as u64),
                };
                inflight.publish(FillState::Response { meta, body });
            }
        }
    }
}

/// Lets the worker's other tasks run once (monoio has no `yield_now`).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Reads a whole body into memory, up to `cap` bytes. On overflow or error
/// it publishes the outcome (`Passthrough` / `Failed`) and returns `None`.
async fn read_capped(
    inflight: &Inflight,
    body: &mut dyn origin::BodyStream,
    cap: usize,
) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    let mut last_news = Instant::now();
    loop {
        match body.next_chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    inflight.publish(FillState::Passthrough);
                    return None;
                }
                buf.extend_from_slice(&chunk);
                if last_news.elapsed() >= NEWS_EVERY {
                    last_news = Instant::now();
                    inflight.heartbeat();
                }
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

//! Miss coalescing across all workers: N concurrent requests for one object,
//! on any worker, share one upstream GET.
//!
//! The first request to miss a key creates an [`Inflight`] in the process-wide
//! [`InflightTable`] (a mutex touched only on misses, never on hits) and sends a
//! fill job to the key's owner worker. Everyone else who misses the same key
//! while it is in flight subscribes to the same `Inflight`. The owner publishes
//! progress through a `tokio::sync::watch` channel (runtime-agnostic, wakes
//! tasks on other monoio workers): first the response head, then how many body
//! bytes have been appended to its segment. Waiters stream those bytes straight
//! from the segment's read-only mmap, so a body is never buffered per waiter; the
//! published [`BodyView`] pins the segment, so its bytes stay until the last waiter
//! is done, even if the segment is evicted meanwhile.
//!
//! Invariants:
//! - `Done` is published only after the record was committed (whole body, exact
//!   length). A fill that fails mid-body publishes `Failed` after `Streaming`,
//!   and waiters that were streaming it must close their connection (never a
//!   silently short 200).
//! - A request joins only a fill that has not reached its final state; a
//!   finished fill still in the table is replaced by a new one. So a request
//!   that starts after another one's response (a 304 from a revalidation, say)
//!   never reuses that older answer — a republished `index.yaml` shows on the
//!   very next request. The index entry is inserted before `Done` is
//!   published, so nothing falls between the fill and the entry.
//!
//! The waiter's side is [`FillWait`]: the fill's [`Answer`], then the body's
//! progress. Every wait is bounded by one patience (see
//! [`super::fill_patience`]); silence for that long is a 504 `Failed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::format::{unix_now, ObjectMeta};
use super::segment::{Segment, SegmentPin};
use super::store::Hit;
use crate::origin::{self, ResponseMeta};

/// Where a body in flight (or just committed) lives.
#[derive(Clone)]
pub struct BodyView {
    pub segment: Arc<Segment>,
    /// Keeps the body's bytes for as long as anyone may still send them (the fill's
    /// state, and every waiter's copy), even if the segment is evicted meanwhile.
    pub pin: SegmentPin,
    pub body_offset: usize,
    pub body_len: u64,
    pub meta: Arc<ObjectMeta>,
}

/// Why a fill failed, as seen by waiters.
#[derive(Debug, Clone)]
pub struct FillError {
    /// Status to answer with if nothing was sent yet (502 or 504).
    pub status: u16,
    pub message: String,
    /// True if upstream answered (a status), false for transport errors. Used
    /// by stale-if-error: both kinds allow serving a stale copy.
    pub upstream_status: Option<u16>,
}

impl From<&origin::Error> for FillError {
    fn from(e: &origin::Error) -> FillError {
        FillError {
            status: e.client_status(),
            message: e.to_string(),
            upstream_status: e.upstream_status(),
        }
    }
}

/// What waiters see.
#[derive(Clone)]
pub enum FillState {
    /// Waiting for upstream's response head.
    Pending,
    /// The body is being appended: `written` bytes are readable.
    Streaming { view: BodyView, written: u64 },
    /// Committed: the whole body is readable and indexed.
    Done { view: BodyView },
    /// Upstream confirmed the stored copy (304); it was refreshed in place
    /// and is this hit.
    NotModified(Hit),
    /// A small, uncached answer (404, or a body that was buffered in memory
    /// because it could not be stored).
    Response { meta: ResponseMeta, body: Bytes },
    /// The response could not be shared (too large for a segment, disk full):
    /// each waiter must fetch for itself.
    Passthrough,
    /// The whole body arrived but does not match the chart digest in the
    /// index: serve it once (as `BYPASS`), never store it.
    Unverified { view: BodyView },
    /// Upstream failed (before the head, or mid-body after `Streaming`).
    Failed { error: FillError },
}

impl FillState {
    pub fn is_final(&self) -> bool {
        !matches!(self, FillState::Pending | FillState::Streaming { .. })
    }
}

/// One fill in flight.
pub struct Inflight {
    pub key: String,
    tx: watch::Sender<FillState>,
    /// Upstream (a chartcache tier) answered with a copy it served stale; set
    /// before the answer is published ([`FillWait::upstream_stale`]).
    upstream_stale: AtomicBool,
}

impl Inflight {
    /// Upstream's answer is a copy it served stale: waiters label it `STALE`.
    pub fn mark_upstream_stale(&self) {
        self.upstream_stale.store(true, Ordering::Release);
    }

    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.tx.subscribe()
    }

    /// Publishes a new state (wakes every waiter, on every worker).
    pub fn publish(&self, state: FillState) {
        self.tx.send_replace(state);
    }

    /// Advances `written` of a streaming fill.
    pub fn progress(&self, written: u64) {
        self.tx.send_modify(|s| {
            if let FillState::Streaming { written: w, .. } = s {
                *w = written;
            }
        });
    }

    /// Tells every waiter the fill is alive without changing its state (bytes
    /// are arriving but none are readable yet: a digest still to check, an
    /// index still buffering, a write run not yet full), so their patience
    /// restarts.
    pub fn heartbeat(&self) {
        self.tx.send_modify(|_| {});
    }

    pub fn current(&self) -> FillState {
        self.tx.borrow().clone()
    }
}

/// Joining a fill: the leader must get it started; followers just wait.
pub enum Join {
    Leader(Arc<Inflight>),
    Follower(Arc<Inflight>),
}

/// Process-wide table of fills in flight.
#[derive(Default)]
pub struct InflightTable {
    map: Mutex<HashMap<String, Arc<Inflight>>>,
}

impl InflightTable {
    /// Joins the fill for `key`, creating it if there is none.
    pub fn join(&self, key: &str) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(key) {
            // A fill that already reached its final state is not joined: its
            // answer (say, a 304) may predate what this request must see.
            if !f.tx.borrow().is_final() {
                return Join::Follower(f.clone());
            }
        }
        let (tx, _rx) = watch::channel(FillState::Pending);
        let f = Arc::new(Inflight {
            upstream_stale: AtomicBool::new(false),
            key: key.to_string(),
            tx,
        });
        map.insert(key.to_string(), f.clone());
        Join::Leader(f)
    }

    /// Removes `f` from the table (only if it is still the registered fill).
    pub fn finish(&self, f: &Arc<Inflight>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&f.key).is_some_and(|g| Arc::ptr_eq(g, f)) {
            map.remove(&f.key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finishes a fill when dropped without an explicit final state (the owner
/// task panicked or the worker shut down), so no waiter hangs.
pub struct FillGuard<'a> {
    pub table: &'a InflightTable,
    pub inflight: Arc<Inflight>,
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        if !self.inflight.current().is_final() {
            self.inflight.publish(FillState::Failed {
                error: FillError {
                    status: 502,
                    message: "fill abandoned".into(),
                    upstream_status: None,
                },
            });
        }
        self.table.finish(&self.inflight);
    }
}

/// What a fill answered one waiting request (see [`FillWait::answer`]).
pub enum Answer {
    /// The body streams (or was committed): serve it from this view as it
    /// becomes readable.
    Body(BodyView),
    /// Upstream confirmed the stored copy (304); serve this refreshed hit.
    Revalidated(Hit),
    /// A small, uncached answer held in memory (404, or an unstorable body).
    Response { meta: ResponseMeta, body: Bytes },
    /// A complete body that failed its digest check: serve it once, uncached.
    Unverified(BodyView),
    /// The answer could not be shared: fetch for yourself.
    Passthrough,
    /// Upstream failed before any body byte was published (a silent fill
    /// counts: 504).
    Failed(FillError),
}

/// One request's wait on a fill: the waiter side of coalescing.
///
/// Every wait is bounded by the same `patience` (see [`super::fill_patience`]):
/// no news from the owner for that long is an upstream failure (504).
pub struct FillWait {
    rx: watch::Receiver<FillState>,
    inflight: Arc<Inflight>,
    /// The stored copy the fill revalidates or replaces (stale-if-error).
    existing: Option<Hit>,
    patience: Duration,
}

impl FillWait {
    pub(super) fn new(inflight: &Arc<Inflight>, existing: Option<Hit>, patience: Duration) -> Self {
        FillWait {
            rx: inflight.subscribe(),
            inflight: inflight.clone(),
            existing,
            patience,
        }
    }

    /// Upstream (a chartcache tier) answered with a copy it served stale (read
    /// after [`Self::answer`]): the answer is `STALE`, never fresh or revalidated.
    pub fn upstream_stale(&self) -> bool {
        self.inflight.upstream_stale.load(Ordering::Acquire)
    }

    /// The fill revalidates or replaces a stored copy (it was conditional).
    pub fn had_copy(&self) -> bool {
        self.existing.is_some()
    }

    /// Waits for the fill's answer. No news within the patience is a 504
    /// `Failed`, to which stale-if-error applies.
    pub async fn answer(&mut self) -> Answer {
        loop {
            let current = self.rx.borrow_and_update().clone();
            match current {
                FillState::Pending => {}
                FillState::Streaming { view, .. } | FillState::Done { view } => {
                    return Answer::Body(view)
                }
                FillState::NotModified(hit) => return Answer::Revalidated(hit),
                FillState::Response { meta, body } => return Answer::Response { meta, body },
                FillState::Unverified { view } => return Answer::Unverified(view),
                FillState::Passthrough => return Answer::Passthrough,
                FillState::Failed { error } => return Answer::Failed(error),
            }
            if !self.changed().await {
                return Answer::Failed(FillError {
                    status: 504,
                    message: "timed out waiting for upstream".into(),
                    upstream_status: None,
                });
            }
        }
    }

    /// How many bytes of a `body_len`-byte streaming body may be sent now.
    /// The last byte is held back until the record is committed, so a client
    /// that saw its response complete and asks again finds the entry (a HIT),
    /// never a fill that is still finishing. `None`: the fill failed mid-body
    /// or was abandoned — the client must see a broken response.
    pub fn readable(&mut self, body_len: u64) -> Option<u64> {
        match &*self.rx.borrow_and_update() {
            FillState::Streaming { written, .. } => {
                Some((*written).min(body_len.saturating_sub(1)))
            }
            FillState::Done { .. } => Some(body_len),
            _ => None,
        }
    }

    /// Waits for the fill's next news. False when none came within the
    /// patience (or the owner is gone).
    pub async fn changed(&mut self) -> bool {
        matches!(
            monoio::time::timeout(self.patience, self.rx.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Waits until the fill reached its final state (or stalls), so the
    /// client's next request finds the committed entry.
    pub async fn settled(&mut self) {
        while !self.rx.borrow_and_update().is_final() {
            if !self.changed().await {
                return;
            }
        }
    }

    /// The stored copy that may be served as `STALE` after `error`: only for
    /// server-side failures (5xx or no answer), and only up to `max_stale` old.
    pub fn stale_copy(&self, error: &FillError, max_stale: Duration) -> Option<&Hit> {
        let server_side = error.upstream_status.is_none_or(|s| s >= 500);
        self.existing.as_ref().filter(|hit| {
            server_side && unix_now().saturating_sub(hit.meta.stored_at) <= max_stale.as_secs()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::testutil;

    /// A committed record to answer a revalidation with.
    fn stored_hit() -> (tempfile::TempDir, Hit) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = testutil::open(dir.path(), 1 << 20);
        testutil::put(&mut store, "/index.yaml", b"entries: {}\n", "\"e1\"");
        let hit = store.reader().lookup("/index.yaml").unwrap();
        (dir, hit)
    }

    #[test]
    fn first_joiner_leads_and_the_rest_follow_until_finished() {
        let t = InflightTable::default();
        let Join::Leader(a) = t.join("/x.tgz") else {
            panic!("first must lead")
        };
        let Join::Follower(b) = t.join("/x.tgz") else {
            panic!("second must follow")
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert!(matches!(t.join("/y.tgz"), Join::Leader(_)));
        t.finish(&a);
        assert!(matches!(t.join("/x.tgz"), Join::Leader(_)));
    }

    #[test]
    fn a_finished_fill_is_never_joined() {
        let t = InflightTable::default();
        let Join::Leader(a) = t.join("/index.yaml") else {
            panic!()
        };
        let (_dir, hit) = stored_hit();
        a.publish(FillState::NotModified(hit));
        // Still in the table (the owner has not removed it yet), but final.
        let Join::Leader(b) = t.join("/index.yaml") else {
            panic!("a late request must start its own fill")
        };
        assert!(!Arc::ptr_eq(&a, &b));
        t.finish(&a); // the old owner's cleanup must not remove the new fill
        assert!(matches!(t.join("/index.yaml"), Join::Follower(_)));
    }

    #[test]
    fn dropped_guard_fails_waiters() {
        let t = InflightTable::default();
        let Join::Leader(a) = t.join("/k") else {
            panic!()
        };
        let rx = a.subscribe();
        drop(FillGuard {
            table: &t,
            inflight: a.clone(),
        });
        assert!(matches!(&*rx.borrow(), FillState::Failed { .. }));
        assert!(t.is_empty());
    }

    #[test]
    fn waiters_on_other_threads_see_progress() {
        let t = Arc::new(InflightTable::default());
        let Join::Leader(a) = t.join("/k") else {
            panic!()
        };
        let mut rx = a.subscribe();
        let h = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move {
                loop {
                    if rx.borrow_and_update().is_final() {
                        return true;
                    }
                    if rx.changed().await.is_err() {
                        return false;
                    }
                }
            })
        });
        let (_dir, hit) = stored_hit();
        a.publish(FillState::NotModified(hit));
        assert!(h.join().unwrap());
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn view_of(hit: &Hit) -> BodyView {
        BodyView {
            segment: hit.segment.clone(),
            pin: hit.segment.pin().unwrap(),
            body_offset: hit.body_offset,
            body_len: hit.body_len as u64,
            meta: hit.meta.clone(),
        }
    }

    #[test]
    fn no_news_within_the_patience_is_a_504_failure() {
        let t = InflightTable::default();
        let Join::Leader(f) = t.join("/slow.tgz") else {
            panic!()
        };
        let mut wait = FillWait::new(&f, None, Duration::from_millis(30));
        let Answer::Failed(error) = block_on(wait.answer()) else {
            panic!("a silent fill must fail the wait")
        };
        assert_eq!((error.status, error.upstream_status), (504, None));
    }

    #[test]
    fn answer_skips_pending_and_returns_the_first_news() {
        let t = InflightTable::default();
        let Join::Leader(f) = t.join("/k") else {
            panic!()
        };
        let mut wait = FillWait::new(&f, None, Duration::from_secs(5));
        let publisher = f.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            publisher.publish(FillState::Passthrough);
        });
        assert!(matches!(block_on(wait.answer()), Answer::Passthrough));
        h.join().unwrap();
    }

    #[test]
    fn a_streaming_body_holds_back_its_last_byte_until_committed() {
        let (_dir, hit) = stored_hit();
        let len = hit.body_len as u64;
        let t = InflightTable::default();
        let Join::Leader(f) = t.join("/index.yaml") else {
            panic!()
        };
        let mut wait = FillWait::new(&f, None, Duration::from_secs(5));
        assert_eq!(wait.readable(len), None, "nothing to send while pending");
        f.publish(FillState::Streaming {
            view: view_of(&hit),
            written: 3,
        });
        assert_eq!(wait.readable(len), Some(3));
        f.progress(len);
        assert_eq!(wait.readable(len), Some(len - 1));
        f.publish(FillState::Done {
            view: view_of(&hit),
        });
        assert_eq!(wait.readable(len), Some(len));
        f.publish(FillState::Failed {
            error: FillError {
                status: 502,
                message: "reset".into(),
                upstream_status: Some(200),
            },
        });
        assert_eq!(wait.readable(len), None, "a failed body is never completed");
    }

    #[test]
    fn stale_copies_only_for_server_side_failures_within_max_stale() {
        let (_dir, hit) = stored_hit();
        let t = InflightTable::default();
        let Join::Leader(f) = t.join("/index.yaml") else {
            panic!()
        };
        let wait = FillWait::new(&f, Some(hit), Duration::from_secs(5));
        let err = |upstream_status| FillError {
            status: 502,
            message: String::new(),
            upstream_status,
        };
        let forever = Duration::from_secs(100 * 365 * 86_400);
        assert!(wait.stale_copy(&err(None), forever).is_some(), "no answer");
        assert!(wait.stale_copy(&err(Some(503)), forever).is_some(), "5xx");
        assert!(
            wait.stale_copy(&err(Some(404)), forever).is_none(),
            "4xx is an answer"
        );
        // The fixture was stored in 2025: too old for a one-day allowance.
        let day = Duration::from_secs(86_400);
        assert!(wait.stale_copy(&err(None), day).is_none());
        let none = FillWait::new(&f, None, Duration::from_secs(5));
        assert!(none.stale_copy(&err(None), forever).is_none());
    }

    #[test]
    fn heartbeats_keep_a_waiter_waiting_past_its_patience() {
        let t = InflightTable::default();
        let Join::Leader(f) = t.join("/slow.tgz") else {
            panic!()
        };
        let patience = Duration::from_millis(100);
        let mut wait = FillWait::new(&f, None, patience);
        let owner = f.clone();
        let h = std::thread::spawn(move || {
            // Alive for 5 patiences, saying so every fifth of one.
            for _ in 0..25 {
                std::thread::sleep(patience / 5);
                owner.heartbeat();
            }
            owner.publish(FillState::Passthrough);
        });
        assert!(matches!(block_on(wait.answer()), Answer::Passthrough));
        h.join().unwrap();
    }
}

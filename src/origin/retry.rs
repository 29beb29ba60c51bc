//! Upstream robustness: bounded retries with backoff, a total deadline, and a
//! per-worker cap on concurrent upstream requests.
//!
//! Owns: [`Retrying`] (an [`Origin`] wrapping another), [`RetryPolicy`], the
//! retry classification ([`is_retryable`]), the backoff ([`backoff`]) and a
//! small single-threaded async semaphore ([`Slots`]).
//! Does not own: connection-level recovery (a stale pooled keep-alive
//! connection is retried once inside [`super::client`], below this layer and
//! not counted here), status mapping ([`super::response`] and the origins).
//!
//! # Architecture
//! 1. A fetch first takes a slot from the worker's [`Slots`] (at most
//!    `max_concurrency` upstream requests in flight per worker). A
//!    [`Purpose::PassThrough`] fetch first takes one of its own lane's slots
//!    ([`passthrough_share`]: half, at least 1): its slot is held while one
//!    client reads at its own pace, so stalled readers can hold at most that
//!    share and cache fills and index revalidation always find the rest.
//!    Waiting for a slot counts against the deadline.
//! 2. It then calls the inner origin. Every attempt is bounded by the total
//!    deadline as well as by the client's own request timeout.
//! 3. A retryable failure (see [`is_retryable`]) is retried after a fully
//!    jittered exponential backoff, at most `retries` times, and never when
//!    the backoff would end past the deadline: no attempt starts after it.
//! 4. The slot travels with the response body and is released when the body
//!    ends, fails or is dropped.
//!
//! Invariants:
//! - only failures **before a response head** are retried: [`Origin::fetch`]
//!   returns once the head is in, so body errors (`Truncated`, a stalled body)
//!   reach the caller untouched and are never retried here;
//! - only GET and HEAD exist ([`Method`]), both idempotent, so a retry can
//!   never repeat a side effect;
//! - everything is per worker (`Rc`, `Cell`): nothing here is shared across
//!   threads.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use monoio::time::Instant;

use super::{
    BodyStream, Error, LocalBoxFuture, Method, Origin, OriginConfig, OriginRequest, OriginResponse,
    Purpose,
};

/// Default number of retries after the first attempt (3 attempts in all).
pub const DEFAULT_RETRIES: u32 = 2;
/// Default total time budget for one fetch (slot wait, attempts and backoffs).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(8);
/// Default cap on concurrent upstream requests per worker.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// Of `max_concurrency` slots, how many pass-through fetches may hold: half,
/// at least 1 (with a single slot both kinds share it).
pub fn passthrough_share(max_concurrency: usize) -> usize {
    (max_concurrency / 2).max(1)
}

/// First backoff ceiling; doubles per retry.
pub const BASE_BACKOFF: Duration = Duration::from_millis(50);
/// Largest backoff ceiling.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How [`Retrying`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub retries: u32,
    /// Total budget for one fetch, from the call until the response head.
    pub deadline: Duration,
    /// Backoff ceiling for the first retry (doubles per retry, full jitter).
    pub base_backoff: Duration,
    /// Upper bound of the backoff ceiling.
    pub max_backoff: Duration,
    /// Upstream requests in flight per worker (at least 1).
    pub max_concurrency: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: DEFAULT_RETRIES,
            deadline: DEFAULT_DEADLINE,
            base_backoff: BASE_BACKOFF,
            max_backoff: MAX_BACKOFF,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }
}

impl RetryPolicy {
    /// The policy an [`OriginConfig`] asks for (backoff constants are fixed).
    pub fn from_config(cfg: &OriginConfig) -> Self {
        Self {
            retries: cfg.retries,
            deadline: cfg.retry_deadline,
            max_concurrency: cfg.max_upstream_concurrency,
            ..Self::default()
        }
    }
}

/// Whether a failed fetch may be retried: connection failures, timeouts,
/// connection resets before a response, 5xx (except 501), 429 and S3
/// `SlowDown`. Never 4xx answers, protocol violations, credential or signing
/// problems (retrying cannot fix those), nor an error answer of an upstream
/// chartcache that already retried ([`super::response::UPSTREAM_RETRIED`]: at
/// most one tier retries).
pub fn is_retryable(err: &Error) -> bool {
    match err {
        Error::Connect(_) | Error::Timeout => true,
        Error::Status { code, .. }
            if code.as_deref() == Some(super::response::UPSTREAM_RETRIED) =>
        {
            false
        }
        Error::Status { status, code } => {
            code.as_deref() == Some("SlowDown")
                || *status == 429
                || ((500..=599).contains(status) && *status != 501)
        }
        Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
        ),
        Error::Truncated { .. }
        | Error::UnexpectedStatus(_)
        | Error::NotAnObjectKey(_)
        | Error::Protocol(_)
        | Error::Credentials(_)
        | Error::Signing(_)
        | Error::Config(_) => false,
    }
}

/// Full-jitter backoff before retry number `retry` (0 for the first retry):
/// uniform in `[0, min(max, base · 2^retry)]`, drawn from `random`.
pub fn backoff(policy: &RetryPolicy, retry: u32, random: u64) -> Duration {
    let ceiling = policy
        .base_backoff
        .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .min(policy.max_backoff);
    let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(random % nanos.saturating_add(1))
}

/// A random `u64` (std's per-process random SipHash keys; no extra crate).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

/// Counters for tests and metrics (per worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Attempts sent to the inner origin.
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Fetches that failed with a retryable error after the last allowed
    /// attempt or at the deadline.
    pub exhausted: u64,
    /// Fetches that had to wait for a concurrency slot.
    pub slot_waits: u64,
    /// Fetches that hit the deadline while waiting for a slot.
    pub slot_timeouts: u64,
}

/// An origin with retries, a deadline and a concurrency cap (see the module doc).
pub struct Retrying {
    inner: Rc<dyn Origin>,
    policy: RetryPolicy,
    /// Every upstream request in flight.
    slots: Slots,
    /// The pass-through lane: taken before `slots` by pass-through fetches.
    passthrough: Slots,
    stats: Cell<RetryStats>,
    /// `inner.describe()`, computed once (used in warnings).
    description: String,
}

impl Retrying {
    /// Wrap `inner`. A `max_concurrency` of 0 is treated as 1.
    pub fn new(inner: Rc<dyn Origin>, policy: RetryPolicy) -> Self {
        let description = inner.describe();
        Self {
            slots: Slots::new(policy.max_concurrency),
            passthrough: Slots::new(passthrough_share(policy.max_concurrency)),
            inner,
            policy,
            stats: Cell::new(RetryStats::default()),
            description,
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn stats(&self) -> RetryStats {
        self.stats.get()
    }

    /// Upstream requests currently holding a slot.
    pub fn in_flight(&self) -> usize {
        self.slots.in_use()
    }

    fn bump(&self, f: impl FnOnce(&mut RetryStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// A slot of `slots` before `deadline`, or [`Error::Timeout`].
    async fn slot(
        &self,
        slots: &Slots,
        req: &OriginRequest,
        deadline: Instant,
    ) -> Result<SlotPermit, Error> {
        if let Some(p) = slots.try_acquire() {
            return Ok(p);
        }
        self.bump(|s| s.slot_waits += 1);
        match monoio::time::timeout_at(deadline, slots.acquire()).await {
            Ok(p) => Ok(p),
            Err(_) => {
                self.bump(|s| s.slot_timeouts += 1);
                // Many requests time out together when slots are short: one
                // line per interval, the rest counted.
                static SLOT_TIMEOUTS: crate::metrics::LogEvery =
                    crate::metrics::LogEvery::new(Duration::from_secs(10));
                if let Some(held_back) = SLOT_TIMEOUTS.allow() {
                    tracing::warn!(
                        origin = %self.description,
                        key = %req.key,
                        purpose = ?req.purpose,
                        max_concurrency = slots.capacity(),
                        more_since_last_line = held_back,
                        "no upstream slot free before the deadline"
                    );
                }
                Err(Error::Timeout)
            }
        }
    }

    async fn fetch_inner(&self, req: OriginRequest) -> Result<OriginResponse, Error> {
        let deadline = Instant::now() + self.policy.deadline;
        let lane = match req.purpose {
            Purpose::PassThrough => Some(self.slot(&self.passthrough, &req, deadline).await?),
            Purpose::Fill => None,
        };
        let permit = Permit {
            _slot: self.slot(&self.slots, &req, deadline).await?,
            _lane: lane,
        };
        let mut retry = 0u32;
        loop {
            self.bump(|s| s.attempts += 1);
            let result =
                match monoio::time::timeout_at(deadline, self.inner.fetch(req.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout),
                };
            let err = match result {
                Ok(resp) => return Ok(attach_permit(resp, req.method, permit)),
                Err(e) => e,
            };
            if !is_retryable(&err) {
                return Err(err);
            }
            if retry >= self.policy.retries {
                self.bump(|s| s.exhausted += 1);
                if self.policy.retries > 0 {
                    tracing::warn!(origin = %self.description, key = %req.key,
                        attempts = retry + 1, error = %err, "upstream still failing; giving up");
                }
                return Err(err);
            }
            let delay = backoff(&self.policy, retry, random_u64());
            if Instant::now() + delay >= deadline {
                self.bump(|s| s.exhausted += 1);
                tracing::warn!(origin = %self.description, key = %req.key,
                    attempts = retry + 1, error = %err, "upstream retry deadline reached; giving up");
                return Err(err);
            }
            tracing::warn!(origin = %self.description, key = %req.key, attempt = retry + 1,
                error = %err, backoff_ms = delay.as_millis() as u64, "upstream failed; retrying");
            monoio::time::sleep(delay).await;
            retry += 1;
            self.bump(|s| s.retries += 1);
        }
    }
}

impl Origin for Retrying {
    fn fetch(&self, req: OriginRequest) -> LocalBoxFuture<'_, Result<OriginResponse, Error>> {
        Box::pin(self.fetch_inner(req))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn connection_stats(&self) -> Option<super::client::ClientStats> {
        self.inner.connection_stats()
    }
}

/// The slots one fetch holds: one of all, and for pass-through one of its lane.
struct Permit {
    _slot: SlotPermit,
    _lane: Option<SlotPermit>,
}

/// Keep the slot until the body is done; responses without a body free it now.
fn attach_permit(resp: OriginResponse, method: Method, permit: Permit) -> OriginResponse {
    let bodyless = method == Method::Head
        || matches!(resp.meta.status, 304 | 404)
        || resp.meta.content_length == Some(0);
    if bodyless {
        return resp;
    }
    OriginResponse {
        meta: resp.meta,
        body: Box::new(SlotBody {
            inner: resp.body,
            permit: Some(permit),
        }),
    }
}

/// A body holding a concurrency slot until it ends, fails or is dropped.
struct SlotBody {
    inner: Box<dyn BodyStream>,
    permit: Option<Permit>,
}

impl BodyStream for SlotBody {
    fn next_chunk(&mut self) -> LocalBoxFuture<'_, Result<Option<Bytes>, Error>> {
        Box::pin(async move {
            let r = self.inner.next_chunk().await;
            if !matches!(r, Ok(Some(_))) {
                self.permit = None;
            }
            r
        })
    }
}

/// A single-threaded, FIFO-fair counting semaphore (one per worker).
#[derive(Clone)]
pub struct Slots {
    inner: Rc<SlotsInner>,
}

struct SlotsInner {
    capacity: usize,
    available: Cell<usize>,
    /// Waiters in arrival order; a released slot is handed to the front one.
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
}

struct Waiter {
    granted: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Slots {
    /// `capacity` slots (0 is treated as 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Rc::new(SlotsInner {
                capacity,
                available: Cell::new(capacity),
                waiters: RefCell::new(VecDeque::new()),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Slots currently held (or granted and about to be taken).
    pub fn in_use(&self) -> usize {
        self.inner.capacity - self.inner.available.get()
    }

    /// Tasks waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.borrow().len()
    }

    /// Take a slot now if one is free and nobody is queued ahead.
    pub fn try_acquire(&self) -> Option<SlotPermit> {
        let free = self.inner.available.get();
        if free > 0 && self.inner.waiters.borrow().is_empty() {
            self.inner.available.set(free - 1);
            Some(SlotPermit {
                slots: self.clone(),
            })
        } else {
            None
        }
    }

    /// Wait for a slot (FIFO). Dropping the future gives up its place.
    pub fn acquire(&self) -> Acquire {
        Acquire {
            slots: self.clone(),
            waiter: None,
        }
    }

    /// Hand a slot to the first waiter, or return it to the pool.
    fn release(&self) {
        let next = self.inner.waiters.borrow_mut().pop_front();
        match next {
            Some(w) => {
                // The slot passes directly: `available` is not incremented.
                w.granted.set(true);
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
            None => self.inner.available.set(self.inner.available.get() + 1),
        }
    }
}

/// A held slot; dropping it releases the slot.
pub struct SlotPermit {
    slots: Slots,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

/// Future returned by [`Slots::acquire`].
pub struct Acquire {
    slots: Slots,
    /// Our place in the queue once we had to wait.
    waiter: Option<Rc<Waiter>>,
}

impl Future for Acquire {
    type Output = SlotPermit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SlotPermit> {
        let this = self.get_mut();
        match &this.waiter {
            None => {
                if let Some(p) = this.slots.try_acquire() {
                    return Poll::Ready(p);
                }
                let w = Rc::new(Waiter {
                    granted: Cell::new(false),
                    waker: Cell::new(Some(cx.waker().clone())),
                });
                this.slots.inner.waiters.borrow_mut().push_back(w.clone());
                this.waiter = Some(w);
                Poll::Pending
            }
            Some(w) if w.granted.get() => {
                this.waiter = None;
                Poll::Ready(SlotPermit {
                    slots: this.slots.clone(),
                })
            }
            Some(w) => {
                w.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            if w.granted.get() {
                // Granted but never taken (e.g. timed out at the same moment):
                // pass the slot on.
                self.slots.release();
            } else {
                self.slots
                    .inner
                    .waiters
                    .borrow_mut()
                    .retain(|x| !Rc::ptr_eq(x, &w));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{EmptyBody, ResponseMeta};

    fn run<F: Future<Output = ()>>(f: F) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(f);
    }

    #[test]
    fn classification() {
        let status = |status, code: Option<&str>| Error::Status {
            status,
            code: code.map(str::to_owned),
        };
        assert!(is_retryable(&Error::Connect("refused".into())));
        assert!(is_retryable(&Error::Timeout));
        assert!(is_retryable(&status(503, None)));
        assert!(is_retryable(&status(500, Some("InternalError"))));
        assert!(is_retryable(&status(429, None)));
        assert!(is_retryable(&status(400, Some("SlowDown"))));
        assert!(is_retryable(&Error::Io(
            std::io::ErrorKind::ConnectionReset.into()
        )));
        assert!(!is_retryable(&status(501, None)));
        // A tier that already retried says so: not retried again here.
        let retried = Some(crate::origin::response::UPSTREAM_RETRIED);
        assert!(!is_retryable(&status(502, retried)));
        assert!(!is_retryable(&status(504, retried)));
        assert!(!is_retryable(&status(403, Some("AccessDenied"))));
        assert!(!is_retryable(&status(404, None)));
        assert!(!is_retryable(&Error::Truncated { received: 3 }));
        assert!(!is_retryable(&Error::Protocol("x".into())));
        assert!(!is_retryable(&Error::Credentials("x".into())));
        assert!(!is_retryable(&Error::Io(
            std::io::ErrorKind::PermissionDenied.into()
        )));
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_capped_ceiling() {
        let p = RetryPolicy::default();
        // A draw equal to the ceiling hits it exactly; zero gives zero.
        assert_eq!(backoff(&p, 0, 0), Duration::ZERO);
        for (retry, want_ms) in [(0, 50), (1, 100), (2, 200), (4, 800), (5, 1000), (40, 1000)] {
            let max = Duration::from_millis(want_ms);
            let nanos = max.as_nanos() as u64;
            assert_eq!(backoff(&p, retry, nanos), max, "retry {retry}");
            assert_eq!(backoff(&p, retry, nanos + 1), Duration::ZERO);
            assert!(backoff(&p, retry, u64::MAX) <= max);
        }
        // Random draws stay in range and are not all equal.
        let draws: Vec<_> = (0..32).map(|_| backoff(&p, 3, random_u64())).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(draws.iter().any(|d| *d != draws[0]));
    }

    #[test]
    fn slots_are_fifo_and_cancel_safe() {
        run(async {
            let slots = Slots::new(1);
            let first = slots.try_acquire().unwrap();
            assert!(slots.try_acquire().is_none());
            assert_eq!(slots.in_use(), 1);

            // A waiter that gives up leaves the queue.
            let gave_up = monoio::time::timeout(Duration::from_millis(10), slots.acquire()).await;
            assert!(gave_up.is_err());
            assert_eq!(slots.waiting(), 0);

            // Two queued waiters are served in order.
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..2 {
                let (slots, order) = (slots.clone(), order.clone());
                tasks.push(monoio::spawn(async move {
                    let p = slots.acquire().await;
                    order.borrow_mut().push(i);
                    monoio::time::sleep(Duration::from_millis(1)).await;
                    drop(p);
                }));
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(slots.waiting(), 2);
            assert!(order.borrow().is_empty());
            drop(first);
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), [0, 1]);
            assert_eq!(slots.in_use(), 0);
            assert_eq!(slots.waiting(), 0);
        });
    }

    #[test]
    fn granted_but_dropped_waiter_passes_the_slot_on() {
        run(async {
            let slots = Slots::new(1);
            let held = slots.try_acquire().unwrap();
            let mut a = Box::pin(slots.acquire());
            // Register `a` in the queue.
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(a.as_mut().poll(&mut cx).is_pending());
            drop(held); // grants `a`
            assert_eq!(slots.waiting(), 0);
            assert_eq!(slots.in_use(), 1);
            drop(a); // never taken: the slot returns
            assert_eq!(slots.in_use(), 0);
            assert!(slots.try_acquire().is_some());
        });
    }

    /// An origin answering from a script of results, counting calls.
    struct Scripted {
        script: RefCell<VecDeque<Result<u16, Error>>>,
        calls: Cell<u32>,
    }

    impl Origin for Scripted {
        fn fetch(&self, _req: OriginRequest) -> LocalBoxFuture<'_, Result<OriginResponse, Error>> {
            self.calls.set(self.calls.get() + 1);
            let next = self
                .script
                .borrow_mut()
                .pop_front()
                .unwrap_or(Err(Error::Timeout));
            Box::pin(async move {
                next.map(|status| OriginResponse {
                    meta: ResponseMeta {
                        status,
                        content_length: Some(1),
                        ..ResponseMeta::default()
                    },
                    body: Box::new(EmptyBody),
                })
            })
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn scripted(script: Vec<Result<u16, Error>>) -> Rc<Scripted> {
        Rc::new(Scripted {
            script: RefCell::new(script.into()),
            calls: Cell::new(0),
        })
    }

    fn fast_policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn retries_then_succeeds_and_holds_the_slot_for_the_body() {
        run(async {
            let inner = scripted(vec![
                Err(Error::Status {
                    status: 503,
                    code: Some("SlowDown".into()),
                }),
                Err(Error::Connect("refused".into())),
                Ok(200),
            ]);
            let r = Retrying::new(inner.clone(), fast_policy(2));
            let mut resp = r.fetch(OriginRequest::get("/a")).await.unwrap();
            assert_eq!(resp.meta.status, 200);
            assert_eq!(inner.calls.get(), 3);
            assert_eq!(r.in_flight(), 1, "the body holds the slot");
            assert!(resp.body.next_chunk().await.unwrap().is_none());
            assert_eq!(r.in_flight(), 0, "released at the end of the body");
            let s = r.stats();
            assert_eq!((s.attempts, s.retries, s.exhausted), (3, 2, 0));
        });
    }

    #[test]
    fn gives_up_after_the_retry_budget_and_not_on_fatal_errors() {
        run(async {
            let inner = scripted((0..5).map(|_| Err(Error::Timeout)).collect());
            let r = Retrying::new(inner.clone(), fast_policy(2));
            let err = r.fetch(OriginRequest::get("/a")).await.unwrap_err();
            assert!(matches!(err, Error::Timeout));
            assert_eq!(inner.calls.get(), 3);
            assert_eq!(r.stats().exhausted, 1);
            assert_eq!(r.in_flight(), 0);

            let inner = scripted(vec![Err(Error::Status {
                status: 403,
                code: None,
            })]);
            let r = Retrying::new(inner.clone(), fast_policy(2));
            assert!(r.fetch(OriginRequest::get("/a")).await.is_err());
            assert_eq!(inner.calls.get(), 1);

            let inner = scripted(vec![Err(Error::Timeout), Ok(200)]);
            let r = Retrying::new(inner.clone(), fast_policy(0));
            assert!(r.fetch(OriginRequest::get("/a")).await.is_err());
            assert_eq!(inner.calls.get(), 1);
        });
    }

    #[test]
    fn bodyless_responses_free_the_slot_immediately() {
        run(async {
            let inner = scripted(vec![Ok(404), Ok(304)]);
            let r = Retrying::new(inner, fast_policy(0));
            let a = r.fetch(OriginRequest::get("/a")).await.unwrap();
            let b = r.fetch(OriginRequest::get("/a")).await.unwrap();
            assert_eq!((a.meta.status, b.meta.status), (404, 304));
            assert_eq!(r.in_flight(), 0);
        });
    }

    #[test]
    fn waiting_for_a_slot_counts_against_the_deadline() {
        run(async {
            let inner = scripted(vec![Ok(200), Ok(200)]);
            let policy = RetryPolicy {
                deadline: Duration::from_millis(50),
                max_concurrency: 1,
                ..fast_policy(0)
            };
            let r = Retrying::new(inner.clone(), policy);
            let held = r.fetch(OriginRequest::get("/a")).await.unwrap();
            let err = r.fetch(OriginRequest::get("/b")).await.unwrap_err();
            assert!(matches!(err, Error::Timeout), "{err:?}");
            assert_eq!(inner.calls.get(), 1);
            assert_eq!(r.stats().slot_timeouts, 1);
            drop(held);
            assert!(r.fetch(OriginRequest::get("/c")).await.is_ok());
        });
    }

    /// Pass-through responses held by clients that stopped reading take at
    /// most their share; fills still get slots and pass-through waits.
    #[test]
    fn pass_through_cannot_take_the_slots_fills_need() {
        run(async {
            assert_eq!(
                (1..=5).map(passthrough_share).collect::<Vec<_>>(),
                [1, 1, 1, 2, 2]
            );
            let inner = scripted((0..8).map(|_| Ok(200)).collect());
            let policy = RetryPolicy {
                deadline: Duration::from_millis(50),
                max_concurrency: 4,
                ..fast_policy(0)
            };
            let r = Retrying::new(inner.clone(), policy);
            let pass = |key: &str| OriginRequest {
                purpose: Purpose::PassThrough,
                ..OriginRequest::get(key)
            };
            let held = [
                r.fetch(pass("/big")).await.unwrap(),
                r.fetch(pass("/big")).await.unwrap(),
            ];
            let err = r.fetch(pass("/big")).await.unwrap_err();
            assert!(matches!(err, Error::Timeout), "{err:?}");
            let fills = [
                r.fetch(OriginRequest::get("/a")).await.unwrap(),
                r.fetch(OriginRequest::get("/b")).await.unwrap(),
            ];
            assert_eq!(r.in_flight(), 4);
            drop(fills);
            drop(held);
            assert_eq!(r.in_flight(), 0);
            assert!(r.fetch(pass("/big")).await.is_ok());
        });
    }
}

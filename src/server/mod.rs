//! The client-facing side: connections and requests.
//!
//! - [`conn`]: one connection's keep-alive loop (read, parse, drain request
//!   bodies, dispatch, timeouts, pipelined requests answered in order, a
//!   lingering close when the client may still be sending).
//! - [`handler`]: one request: policy → cache → origin → response.
//! - [`send`]: response bytes on the wire; cached bodies straight from mmap;
//!   every send bounded by `send_timeout` without progress.
//!
//! A [`Worker`] is everything one worker thread's tasks share. It lives in an
//! `Rc` on that thread; only the [`Cache`] facade and the metrics cross threads.

pub mod conn;
pub mod handler;
pub mod send;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::cache::{Cache, ShardOwner};
use crate::config::Config;
use crate::metrics::WorkerMetrics;
use crate::origin::Origin;

/// One worker thread's shared context.
pub struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    /// This worker's upstream of each repository (its own connection pools), for
    /// pass-through; indexed like [`Worker::repos`].
    pub origins: Vec<Rc<dyn Origin>>,
    /// The cache, shared by every worker.
    pub cache: Arc<Cache>,
    /// This worker's own shard (only it writes there).
    pub owner: Rc<ShardOwner>,
    pub metrics: Arc<WorkerMetrics>,
    /// The served repositories (routing, keys, index knowledge).
    pub repos: Arc<crate::repo::Repos>,
    pub access_log: AccessLog,
    /// Set when shutdown began: finish the current response, then close.
    pub draining: Cell<bool>,
    /// Open client connections on this worker.
    pub connections: Cell<usize>,
    /// Fired when shutdown begins (the accept loop watches the process-wide
    /// signal and fires this): thread-local, so the read path never touches a
    /// lock or an atomic shared with other workers.
    pub stop: LocalSignal,
    /// How client sockets are made non-blocking for `sendfile` (set by the
    /// driver the worker runs on).
    pub socket_mode: send::SocketMode,
}

/// A one-shot, thread-local signal: `fire()` once, `fired().await` anywhere
/// on the same thread. Registration is a slab insert, without atomics.
#[derive(Default)]
pub struct LocalSignal {
    fired: Cell<bool>,
    waiters: RefCell<slab::Slab<std::task::Waker>>,
}

impl LocalSignal {
    pub fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters.into_iter().map(|(_, w)| w) {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once [`fire`](Self::fire) was called.
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            slot: None,
        }
    }
}

/// The future of [`LocalSignal::fired`].
pub struct Fired<'a> {
    signal: &'a LocalSignal,
    slot: Option<usize>,
}

impl std::future::Future for Fired<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.signal.fired.get() {
            return std::task::Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.slot {
            Some(i) if waiters.contains(i) => waiters[i] = cx.waker().clone(),
            _ => {
                let i = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.slot = Some(i);
            }
        }
        std::task::Poll::Pending
    }
}

impl Drop for Fired<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut waiters = self.signal.waiters.borrow_mut();
            if waiters.contains(i) {
                waiters.remove(i);
            }
        }
    }
}

impl Worker {
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }
}

/// A shared handle to a worker (tasks on one thread hold clones).
pub type WorkerRef = Rc<Worker>;

//! The client-facing side: connections and requests.
//!
//! - [`conn`]: one connection's keep-alive loop (read, parse, drain request
//!   bodies, dispatch, timeouts, pipelined requests answered in order).
//! - [`handler`]: one request: policy → cache → origin → response.
//! - [`send`]: response bytes on the wire; cached bodies straight from mmap.
//!
//! A [`Worker`] is everything one worker thread's tasks share. It lives in an
//! `Rc` on that thread; only [`Shards`] and the metrics cross threads.

pub mod conn;
pub mod handler;
pub mod send;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::cache::shard::Shards;
use crate::cache::store::ShardStore;
use crate::config::Config;
use crate::metrics::WorkerMetrics;
use crate::origin::Origin;

/// One worker thread's shared context.
pub struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub origin: Rc<dyn Origin>,
    pub shards: Arc<Shards>,
    /// index.yaml rewriting and chart digests (shared by all workers).
    pub helm: Arc<crate::helm::HelmRepo>,
    /// This worker's own shard (only it writes there).
    pub store: RefCell<ShardStore>,
    pub metrics: Arc<WorkerMetrics>,
    pub access_log: AccessLog,
    /// Set when shutdown began: finish the current response, then close.
    pub draining: Cell<bool>,
    /// Open client connections on this worker.
    pub connections: Cell<usize>,
    /// Wakes idle connections and the accept loop at shutdown.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }
}

/// A shared handle to a worker (tasks on one thread hold clones).
pub type WorkerRef = Rc<Worker>;

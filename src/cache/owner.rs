//! The owner side of a shard: the one worker that writes it.
//!
//! A [`ShardOwner`] lives on its worker thread (in an `Rc`, never shared) and
//! holds the shard's [`ShardStore`] and that worker's upstream handle. Its job
//! loop ([`ShardOwner::spawn`]) runs the [`ShardJob`]s the facade
//! ([`super::Cache`]) sends it: each fill becomes a task running a
//! [`Filler`]; purges are answered in place. The worker's housekeeping asks it
//! for stats and checkpoints, and to recheck a full device.
//!
//! Does not own: deciding what to fill or purge (the facade), the wire (the
//! server).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::coalesce::InflightTable;
use super::error::Error;
use super::fill::Filler;
use super::negative::NegativeCache;
use super::shard::ShardJob;
use super::store::{ShardStore, StoreStats};
use crate::helm::{HelmRepo, IndexKeys};
use crate::metrics::WorkerMetrics;
use crate::origin::Origin;

/// One shard as handed to the worker that will own it (from
/// [`super::open`]): its store and the receiving end of its job channel.
pub struct ShardParts {
    pub(super) store: ShardStore,
    pub(super) jobs: mpsc::UnboundedReceiver<ShardJob>,
}

/// What a fill needs besides the store: the owner worker's counters, and per
/// repository its upstream and index knowledge.
pub struct FillContext {
    pub metrics: Arc<WorkerMetrics>,
    /// Every repository, in configuration order; a fill's key names its own by the
    /// namespace it starts with.
    pub repos: Vec<RepoFill>,
}

/// One repository as its fills on one owner worker see it.
pub struct RepoFill {
    /// Its cache keys (the namespace every key of it starts with, the index's and
    /// its derived forms').
    pub keys: IndexKeys,
    /// The owner worker's upstream for it (its own connection pool).
    pub origin: Rc<dyn Origin>,
    /// index.yaml rewriting and chart digests.
    pub helm: Arc<HelmRepo>,
    /// Check chart bodies against the index's sha256 digests.
    pub verify_digests: bool,
}

/// The owner of one shard (see the module doc).
pub struct ShardOwner {
    store: RefCell<ShardStore>,
    jobs: RefCell<Option<mpsc::UnboundedReceiver<ShardJob>>>,
    inflight: Arc<InflightTable>,
    negative: Arc<NegativeCache>,
    fill: FillContext,
    /// A checkpoint is between its begin and its finish (see [`ShardOwner::checkpoint`]).
    checkpointing: std::cell::Cell<bool>,
}

/// Clears the flag when dropped (also when the future holding it is).
struct ClearOnDrop<'a>(&'a std::cell::Cell<bool>);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl ShardOwner {
    pub(super) fn new(
        parts: ShardParts,
        inflight: Arc<InflightTable>,
        negative: Arc<NegativeCache>,
        fill: FillContext,
    ) -> Rc<ShardOwner> {
        Rc::new(ShardOwner {
            store: RefCell::new(parts.store),
            jobs: RefCell::new(Some(parts.jobs)),
            inflight,
            negative,
            fill,
            checkpointing: Default::default(),
        })
    }

    /// Starts the job loop on the current (owner) worker. Once; later calls
    /// do nothing.
    pub fn spawn(self: &Rc<Self>) {
        let Some(jobs) = self.jobs.borrow_mut().take() else {
            return;
        };
        monoio::spawn(self.clone().job_loop(jobs));
    }

    async fn job_loop(self: Rc<Self>, mut jobs: mpsc::UnboundedReceiver<ShardJob>) {
        while let Some(job) = jobs.recv().await {
            match job {
                ShardJob::Fill {
                    inflight,
                    etag,
                    remember_not_found,
                } => {
                    let owner = self.clone();
                    monoio::spawn(async move {
                        match owner.filler(&inflight.key) {
                            Some(filler) => filler.fill(inflight, etag, remember_not_found).await,
                            None => Filler::refuse(&owner.inflight, inflight),
                        }
                    });
                }
                ShardJob::Purge { key, prefix, reply } => {
                    let mut store = self.store.borrow_mut();
                    let n = if prefix {
                        store.remove_prefix(&key)
                    } else {
                        usize::from(store.remove(&key))
                    };
                    let _ = reply.send(n);
                }
            }
        }
    }

    /// The filler for `key`'s repository (`None`: no configured repository owns it).
    fn filler(&self, key: &str) -> Option<Filler<'_>> {
        let repo = self
            .fill
            .repos
            .iter()
            .find(|r| key.starts_with(r.keys.ns.as_str()))?;
        Some(Filler {
            origin: &*repo.origin,
            store: &self.store,
            inflight: &self.inflight,
            negative: &self.negative,
            metrics: &self.fill.metrics,
            helm: &repo.helm,
            keys: &repo.keys,
            verify_digests: repo.verify_digests,
        })
    }

    /// Periodic chores of the store: resume admission paused by a full device once
    /// it has room again (see [`ShardStore::recheck_space`]).
    pub fn recheck_space(&self) {
        self.store.borrow_mut().recheck_space();
    }

    /// The shard's counters.
    pub fn stats(&self) -> StoreStats {
        self.store.borrow().stats()
    }

    /// Persists the shard's index (see [`ShardStore::checkpoint`]) without blocking the
    /// worker on the disk: the fdatasync of the segments written since the last one (on
    /// a busy shard, tens of MiB: a disk's worth of time) runs on a short-lived thread
    /// while the worker goes on serving. One at a time: a call while another is in
    /// flight waits for it, then writes its own.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        while self.checkpointing.get() {
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.checkpointing.set(true);
        let _done = ClearOnDrop(&self.checkpointing);
        let pending = self.store.borrow_mut().begin_checkpoint();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("chartcache-sync".into())
            .spawn(move || {
                crate::sched::background_priority();
                let synced = pending.sync();
                let _ = tx.send((pending, synced));
            });
        let (pending, synced) = match spawned {
            Ok(_) => rx
                .await
                .map_err(|_| Error::Io(std::io::Error::other("the checkpoint sync thread died")))?,
            // No thread to be had: sync here rather than not at all.
            Err(_) => return self.store.borrow_mut().checkpoint(),
        };
        synced?;
        self.store.borrow_mut().finish_checkpoint(pending)
    }
}

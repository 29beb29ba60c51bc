//! One shard's storage engine: [`ShardStore`] (the owner's handle: writes, removes,
//! checkpoints, eviction) and [`ShardReader`] (everyone's handle: lock-free lookups).
//!
//! Synchronous std code: `pwrite` into preallocated segments, `pread` to read back,
//! read-only mmaps for the kernel's sends, no network I/O. Exactly one thread owns a
//! `ShardStore`; any thread may hold the `Arc<ShardReader>`.
//!
//! # Write protocol
//! 1. [`ShardStore::begin`] reserves `header + key + meta + body_len` in the active
//!    segment (rotating, and evicting to stay within capacity, when it does not fit) and
//!    writes a *dead* header (covering the whole reservation) + key + meta in one
//!    `pwrite`. A crash or an abort from here on leaves a record replay steps over.
//! 2. [`ShardStore::append`] `pwrite`s body bytes in order (on the file before it
//!    returns, so other threads can send the prefix from the segment), computing the
//!    body CRC as it goes.
//! 3. [`ShardStore::commit`] checks the length, overwrites the header with the live one
//!    (both CRCs, a fresh sequence number), then inserts the index entry, already
//!    verified. [`ShardStore::abort`] just forgets the reservation.
//!
//! A pending record pins its segment ([`PendingRecord::pin`]): a segment evicted while a
//! fill was pending still takes the writes and keeps its bytes for the fill's waiters;
//! its commit succeeds but indexes nothing, and its space is freed when the last pin
//! goes (see [`super::segment`]).
//!
//! # Capacity
//! `bytes_on_disk` = live segment files (full preallocated size) + both checkpoint
//! copies + evicted segments whose space is not given back yet (pinned by a fill or a
//! send in flight). A new segment is only created when live segments and checkpoints
//! stay within `capacity` with it, and all of it within `capacity` plus that one new
//! segment, after evicting the oldest segments (see [`super::evict`]); evicted
//! segments give their blocks back at once unless pinned. So the shard's real disk use
//! stays within `capacity` + one segment, the segment being created or reclaimed
//! (more only while more than one evicted segment is still being sent to slow clients;
//! the next rotation evicts live data to make up for them). Capacity must allow at
//! least one segment.
//!
//! # Disk full
//! ENOSPC / EDQUOT creating (or writing) a segment, or writing a checkpoint, pauses
//! admission: nothing is evicted for it, everything indexed keeps being served,
//! records that still fit in the active segment's preallocated space are still
//! written, and new objects that need a new segment are refused ([`Error::NoSpace`]:
//! the filler passes them through uncached) without touching the disk until
//! [`NO_SPACE_RETRY`] has passed and the next one tries again, or the device shows
//! room for a segment ([`ShardStore::recheck_space`], periodic). Logged once per
//! [`NO_SPACE_LOG_EVERY`], counted ([`StoreStats::no_space_errors`]) and shown while
//! it lasts ([`StoreStats::disk_full`]).
//!
//! # Large objects
//! A record larger than a segment gets a segment of its own, sized to it: the active
//! segment is sealed (its unused tail stays until it is evicted, so segment ids keep
//! the write order replay relies on) and the oldest segments are evicted until the new
//! one fits the budget, as for any rotation. That is allowed up to `max_object` body
//! bytes ([`default_max_object`]: a quarter of the shard; at most half). A larger body
//! is not kept but is still shared by every client that asked for it while it was
//! fetched: [`ShardStore::begin_spool`] gives the fill a preallocated spool file of its
//! own (see [`super::segment`], Spools), and a body of unknown length that outgrows
//! memory is written to a [`GrowingSpool`], then kept (copied into a record) if it is
//! within `max_object`, else served from the spool. A spool is only created where the
//! device has room for it on top of everything the cache may still grow into (its
//! unused capacity plus one segment), so spools never push the cache into ENOSPC;
//! otherwise the fill is passed through (each client fetches for itself). Spools are
//! counted ([`StoreStats::spooled`]) and their bytes gauged while they exist.
//!
//! # A segment file that shrank
//! When a read or a send finds a segment's file shorter than written (truncated by
//! another process or a failing disk; see [`super::segment`]), every entry of that
//! segment past its intact length is dropped ([`ShardReader::drop_truncated`], any
//! thread; logged and counted once per segment) and those objects are refetched; the
//! segment takes no more writes (its writes fail, and the owner leaves it as the
//! active segment).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::{self, CheckpointState};
use super::error::Error;
use super::format::{
    self, CheckpointEntry, CheckpointHeader, ObjectMeta, RecordHeader, RecordKind, HEADER_LEN,
};
use super::index::{Entry, Index, Location};
use super::recover::{self, RecoveryReport};
use super::segment::{SegmentId, MIN_SEGMENT_SIZE};

pub use super::segment::{Segment, SegmentPin};

/// After ENOSPC / EDQUOT, new segments are not tried again before this.
pub const NO_SPACE_RETRY: Duration = Duration::from_secs(1);
/// A full disk is logged at most this often (per shard).
pub const NO_SPACE_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This shard's own directory (created if missing).
    pub dir: PathBuf,
    pub shard: u32,
    /// Max bytes on disk for this shard (segments + checkpoints).
    pub capacity: u64,
    /// The largest body kept ([`default_max_object`] when `None`); larger ones are only
    /// spooled for the waiters of their fill (see the module doc, Large objects).
    pub max_object: Option<u64>,
}

/// Counters of one shard (any thread may read them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Segment files (preallocated size) + checkpoint copies.
    pub bytes_on_disk: u64,
    /// Entries in the index.
    pub objects: u64,
    /// Body bytes of the entries in the index (what the cached objects weigh, as opposed
    /// to `bytes_on_disk`, which counts segments at their preallocated size).
    pub object_bytes: u64,
    /// Objects dropped by eviction (not counting those given a second chance).
    pub evictions: u64,
    /// Entries dropped because they failed verification.
    pub corrupt_dropped: u64,
    /// Live segment files.
    pub segments: u64,
    /// Segments evicted whole.
    pub segments_evicted: u64,
    /// Hot objects copied forward at eviction (second chance).
    pub reinserted: u64,
    /// Segment files found shorter than written (truncated by someone else).
    pub truncated_segments: u64,
    /// Entries dropped because their segment file was truncated under them.
    pub truncated_dropped: u64,
    /// ENOSPC / EDQUOT errors creating or writing segments.
    pub no_space_errors: u64,
    /// Admission is paused because the device is full (see the module doc).
    pub disk_full: bool,
    /// Fills shared through a spool, not kept (see the module doc, Large objects).
    pub spooled: u64,
    /// Bytes of spool files in use now.
    pub spool_bytes: u64,
}

/// A lookup result: where the body lives. Cheap to clone.
#[derive(Clone)]
pub struct Hit {
    pub segment: Arc<Segment>,
    pub body_offset: usize,
    pub body_len: usize,
    pub meta: Arc<ObjectMeta>,
    entry: Arc<Entry>,
}

impl std::fmt::Debug for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hit")
            .field("segment", &self.segment.id())
            .field("body_offset", &self.body_offset)
            .field("body_len", &self.body_len)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Hit {
    /// A copy of the body, read with `pread` under a pin (the index digests of a
    /// stored `index.yaml`). Not verified: call [`Hit::verify`] first.
    pub fn read_body(&self) -> Result<Vec<u8>, Error> {
        let _pin = self.segment.pin().ok_or(Error::Evicted)?;
        let mut body = vec![0u8; self.body_len];
        self.segment.read_at(self.body_offset as u64, &mut body)?;
        Ok(body)
    }
    /// The body bytes (tests).
    #[cfg(test)]
    pub fn body(&self) -> Vec<u8> {
        self.read_body().expect("body readable")
    }
    /// Full integrity check (header CRC, key, body CRC) unless this record was
    /// already verified in this process. False → the caller must not serve it
    /// (and should call [`ShardReader::drop_corrupt`], or
    /// [`ShardReader::drop_truncated`] when the segment shrank).
    pub fn verify(&self) -> bool {
        self.entry.verify()
    }
    /// Was this record verified in this process ([`Hit::verify`] on any thread)?
    pub fn is_verified(&self) -> bool {
        self.entry.verified.load(Ordering::Acquire)
    }
    /// The key this hit is for.
    pub fn key(&self) -> &str {
        &self.entry.key
    }
}

#[derive(Default)]
struct Counters {
    bytes_on_disk: AtomicU64,
    segments: AtomicU64,
    evictions: AtomicU64,
    corrupt_dropped: AtomicU64,
    segments_evicted: AtomicU64,
    reinserted: AtomicU64,
    truncated_segments: AtomicU64,
    truncated_dropped: AtomicU64,
    no_space_errors: AtomicU64,
    disk_full: AtomicBool,
    spooled: AtomicU64,
    /// Shared with every spool segment, which gives its bytes back when dropped.
    spool_bytes: Arc<AtomicU64>,
}

/// Everyone's handle: lookups without locks. `Send + Sync`, shared as `Arc`.
pub struct ShardReader {
    pub(super) index: Index,
    counters: Counters,
}

impl ShardReader {
    /// The entry for `key` (not verified: call [`Hit::verify`] before serving).
    pub fn lookup(&self, key: &str) -> Option<Hit> {
        let entry = self.index.get(key)?;
        if !entry.hit.load(Ordering::Relaxed) {
            entry.hit.store(true, Ordering::Relaxed);
        }
        Some(Hit {
            segment: Arc::clone(&entry.segment),
            // In bounds of the mapping (checked when the entry was built), so these
            // fit usize.
            body_offset: entry.body_offset() as usize,
            body_len: entry.body_len as usize,
            meta: Arc::clone(&entry.meta),
            entry,
        })
    }

    /// The metadata of `key`'s entry, not marking it used (for the status page).
    pub fn peek_meta(&self, key: &str) -> Option<Arc<ObjectMeta>> {
        self.index.get(key).map(|e| Arc::clone(&e.meta))
    }

    /// Remove `key`'s entry if it is still the record `hit` points at (after a failed
    /// [`Hit::verify`]). Any thread. True if removed.
    pub fn drop_corrupt(&self, key: &str, hit: &Hit) -> bool {
        if &*hit.entry.key != key || !self.index.remove_if_same(&hit.entry) {
            return false;
        }
        self.counters
            .corrupt_dropped
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key, segment = %hit.segment.id(), "corrupt cache record dropped");
        true
    }

    /// `segment`'s file was found shorter than written: drop every entry of it that
    /// reaches past its intact length (any thread; the next requests refetch them).
    /// Logged and counted once per segment; returns how many entries were dropped now.
    pub fn drop_truncated(&self, segment: &Segment) -> usize {
        let Some(intact) = segment.intact_len() else {
            return 0;
        };
        let gone: Vec<Arc<Entry>> = self
            .index
            .entries_in(segment.id())
            .into_iter()
            .filter(|e| e.offset.saturating_add(e.record_len()) > intact)
            .collect();
        let dropped = gone.iter().filter(|e| self.index.remove_if_same(e)).count();
        self.counters
            .truncated_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        if segment.first_shrink_report() {
            self.counters
                .truncated_segments
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                segment = %segment.path().display(),
                size = segment.len(),
                intact,
                dropped,
                "cache segment file was truncated by someone else: records past its end dropped (refetched on demand)"
            );
        }
        dropped
    }

    /// A body of `key` in `segment` could not be read for a send (I/O error, not a
    /// truncation): drop that entry so the next request refetches. True if removed.
    pub fn drop_unreadable(&self, key: &str, segment: &Segment) -> bool {
        if !self.index.remove_in_segment(key, segment.id()) {
            return false;
        }
        self.count_corrupt(1);
        tracing::warn!(key, segment = %segment.id(), "unreadable cache record dropped");
        true
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            bytes_on_disk: c.bytes_on_disk.load(Ordering::Relaxed),
            objects: self.index.len() as u64,
            object_bytes: self.index.body_bytes(),
            evictions: c.evictions.load(Ordering::Relaxed),
            corrupt_dropped: c.corrupt_dropped.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            segments_evicted: c.segments_evicted.load(Ordering::Relaxed),
            reinserted: c.reinserted.load(Ordering::Relaxed),
            truncated_segments: c.truncated_segments.load(Ordering::Relaxed),
            truncated_dropped: c.truncated_dropped.load(Ordering::Relaxed),
            no_space_errors: c.no_space_errors.load(Ordering::Relaxed),
            disk_full: c.disk_full.load(Ordering::Relaxed),
            spooled: c.spooled.load(Ordering::Relaxed),
            spool_bytes: c.spool_bytes.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_evicted(&self, n: u64) {
        self.counters.evictions.fetch_add(n, Ordering::Relaxed);
    }
    pub(super) fn count_corrupt(&self, n: u64) {
        self.counters
            .corrupt_dropped
            .fetch_add(n, Ordering::Relaxed);
    }
    pub(super) fn count_segment_evicted(&self) {
        self.counters
            .segments_evicted
            .fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn count_reinserted(&self) {
        self.counters.reinserted.fetch_add(1, Ordering::Relaxed);
    }
}

/// A fill in progress. Must end in [`ShardStore::commit`] or [`ShardStore::abort`].
pub struct PendingRecord {
    pub segment: Arc<Segment>,
    /// Keeps the segment's bytes while the fill runs (and for its waiters: clone it).
    pub pin: SegmentPin,
    /// Where the body starts in `segment`.
    pub body_offset: usize,
    /// Declared body length.
    pub body_len: u64,
    record_offset: u64,
    written: u64,
    crc: crc32fast::Hasher,
    key: Arc<str>,
    meta: Arc<ObjectMeta>,
    meta_bytes: Vec<u8>,
    /// Written to a spool: shared with the fill's waiters, never indexed.
    spooled: bool,
}

/// A checkpoint between [`ShardStore::begin_checkpoint`] and
/// [`ShardStore::finish_checkpoint`]: `Send`, so its [`sync`](Self::sync) can run off the
/// owner's thread.
pub struct PendingCheckpoint {
    /// Written since the last checkpoint: to be fdatasync'ed before it is written.
    segments: Vec<Arc<Segment>>,
    header: CheckpointHeader,
    count: u64,
    buf: Vec<u8>,
}

impl PendingCheckpoint {
    /// fdatasync the segments the checkpoint relies on (the slow part).
    pub fn sync(&self) -> Result<(), Error> {
        self.segments.iter().try_for_each(|s| s.sync())
    }
}

/// A body of unknown length on its way to a spool (see the module doc, Large objects):
/// written as it arrives, the device checked for room before every [`SPOOL_STEP`].
pub struct GrowingSpool {
    file: std::fs::File,
    len: u64,
    /// Bytes the last room check covered.
    room_for: u64,
}

impl GrowingSpool {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A growing spool's room is checked this many bytes ahead.
pub const SPOOL_STEP: u64 = 8 << 20;

impl PendingRecord {
    /// Body bytes appended so far (readable at `body_offset..body_offset + written`).
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// The segment being appended to.
pub(super) struct Active {
    pub(super) seg: Arc<Segment>,
    /// Next free byte.
    pub(super) pos: u64,
}

/// The owner's handle of one shard.
pub struct ShardStore {
    pub(super) dir: PathBuf,
    pub(super) shard: u32,
    pub(super) capacity: u64,
    pub(super) segment_size: u64,
    /// The largest body kept (see the module doc, Large objects).
    max_object: u64,
    /// All live segments (the active one included), oldest first.
    pub(super) segments: BTreeMap<SegmentId, Arc<Segment>>,
    pub(super) segment_bytes: u64,
    pub(super) active: Option<Active>,
    pub(super) next_segment_id: u64,
    pub(super) next_seq: u64,
    /// Reservations not yet committed/aborted: (segment, record offset).
    pub(super) pending: BTreeSet<(SegmentId, u64)>,
    /// Segments written since the last checkpoint (fdatasync'ed before it).
    pub(super) dirty: BTreeSet<SegmentId>,
    pub(super) ckpt: CheckpointState,
    pub(super) reader: Arc<ShardReader>,
    /// Evicted (condemned) segments whose blocks are not given back yet: pinned by a
    /// fill or a send in flight. Pruned as they are reclaimed.
    pub(super) held: Vec<Arc<Segment>>,
    /// Set while admission is paused by a full device.
    disk_full: Option<DiskFull>,
    /// When a full device was last logged.
    no_space_logged: Option<Instant>,
    report: RecoveryReport,
}

/// A paused admission (see the module doc, Disk full).
#[derive(Debug, Clone, Copy)]
struct DiskFull {
    /// No new segment is tried before this.
    retry_at: Instant,
}

/// Default segment size for a capacity: clamp(capacity/8, 1 MiB, 64 MiB), never more
/// than the capacity, a multiple of 4 KiB.
pub fn default_segment_size(capacity: u64) -> u64 {
    (capacity / 8).clamp(1 << 20, 64 << 20).min(capacity) & !4095
}

/// Default largest kept body for a shard's capacity: a quarter of it, so one object never
/// evicts more than a quarter of the shard.
pub fn default_max_object(capacity: u64) -> u64 {
    capacity / 4
}

/// The largest `max_object` a capacity allows: half of it (a larger object would evict
/// most of the shard each time it is stored).
pub fn max_object_limit(capacity: u64) -> u64 {
    capacity / 2
}

impl ShardStore {
    /// Open (or create) the shard in `cfg.dir` and recover its index.
    pub fn open(cfg: StoreConfig) -> Result<ShardStore, Error> {
        let size = default_segment_size(cfg.capacity);
        Self::open_with_segment_size(cfg, size)
    }

    /// [`ShardStore::open`] with an explicit segment size (tests, benches, tuning).
    pub fn open_with_segment_size(
        cfg: StoreConfig,
        segment_size: u64,
    ) -> Result<ShardStore, Error> {
        let segment_size = segment_size & !4095;
        if segment_size < MIN_SEGMENT_SIZE || segment_size > cfg.capacity {
            return Err(Error::InvalidConfig(format!(
                "shard {}: capacity {} must hold at least one segment of {} bytes (min {})",
                cfg.shard,
                cfg.capacity,
                segment_size.max(MIN_SEGMENT_SIZE),
                MIN_SEGMENT_SIZE
            )));
        }
        let max_object = cfg
            .max_object
            .unwrap_or_else(|| default_max_object(cfg.capacity));
        if max_object > max_object_limit(cfg.capacity) {
            return Err(Error::InvalidConfig(format!(
                "shard {}: max-object-size {} is more than half of this worker's cache share \
                 ({} = cache-size / workers): lower --max-object-size to at most {} or raise \
                 --cache-size",
                cfg.shard,
                max_object,
                cfg.capacity,
                max_object_limit(cfg.capacity)
            )));
        }
        let dir = cfg.dir;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io_at(&dir, "create cache dir", e))?;
        let probe = dir.join(".write-probe");
        std::fs::write(&probe, b"")
            .map_err(|e| Error::io_at(&dir, "cache dir not writable:", e))?;
        let _ = std::fs::remove_file(&probe);

        let reader = Arc::new(ShardReader {
            index: Index::default(),
            counters: Counters::default(),
        });
        let rec = recover::recover(&dir, &reader.index)?;
        let segment_bytes = rec.segments.values().map(|s| s.len()).sum();
        let mut store = ShardStore {
            dir,
            shard: cfg.shard,
            capacity: cfg.capacity,
            segment_size,
            max_object,
            segments: rec.segments,
            segment_bytes,
            active: rec.active.map(|(seg, pos)| Active { seg, pos }),
            next_segment_id: rec.next_segment_id,
            next_seq: rec.next_seq,
            pending: BTreeSet::new(),
            dirty: BTreeSet::new(),
            ckpt: rec.ckpt,
            reader,
            held: Vec::new(),
            disk_full: None,
            no_space_logged: None,
            report: rec.report,
        };
        store.shrink_to_capacity()?;
        store.publish_sizes();
        tracing::info!(
            shard = store.shard,
            objects = store.reader.index.len(),
            segments = store.segments.len(),
            checkpoint_seq = store.report.checkpoint_seq,
            checkpoint_entries = store.report.checkpoint_entries,
            checkpoint_skipped = store.report.checkpoint_skipped,
            replayed_records = store.report.replayed_records,
            damaged_segments = store.report.damaged_segments,
            removed_files = store.report.removed_files,
            "cache shard opened"
        );
        Ok(store)
    }

    /// The shared lookup handle.
    pub fn reader(&self) -> Arc<ShardReader> {
        Arc::clone(&self.reader)
    }

    pub fn stats(&self) -> StoreStats {
        self.reader.stats()
    }

    /// What `open` found (checkpoint used, records replayed, damage).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The largest body kept.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Live segments, checkpoints, and evicted segments not given back yet.
    pub(super) fn bytes_on_disk(&self) -> u64 {
        self.live_bytes() + self.held_bytes()
    }

    /// Live segments and checkpoints.
    pub(super) fn live_bytes(&self) -> u64 {
        self.segment_bytes + self.ckpt.bytes_on_disk()
    }

    /// Evicted segments whose blocks are still allocated (pinned by readers).
    pub(super) fn held_bytes(&self) -> u64 {
        self.held
            .iter()
            .filter(|s| !s.is_reclaimed())
            .map(|s| s.len())
            .sum()
    }

    pub(super) fn publish_sizes(&mut self) {
        self.held.retain(|s| !s.is_reclaimed());
        let c = &self.reader.counters;
        c.bytes_on_disk
            .store(self.bytes_on_disk(), Ordering::Relaxed);
        c.segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
    }

    /// Start a fill of `body_len` bytes for `key`.
    pub fn begin(
        &mut self,
        key: &str,
        meta: &ObjectMeta,
        body_len: u64,
    ) -> Result<PendingRecord, Error> {
        let key_len = u16::try_from(key.len()).map_err(|_| Error::FieldTooLong("key"))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + key.len() + format::meta_len(meta));
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.extend_from_slice(key.as_bytes());
        format::encode_meta(meta, &mut buf).map_err(|_| Error::FieldTooLong("meta"))?;
        // Pad the meta so a large body starts on a page boundary (cheaper sendfile):
        // for the active segment's position if the record fits there, else for the
        // start of the next segment (`reserve` rotates).
        let meta_len = buf.len() - HEADER_LEN - key.len();
        let pad_at = |at: u64| format::body_padding(at, buf.len(), body_len, meta_len);
        let expected_at = match &self.active {
            Some(a)
                if (a.pos + (buf.len() + pad_at(a.pos)) as u64).saturating_add(body_len)
                    <= a.seg.len() =>
            {
                a.pos
            }
            _ => 0,
        };
        let mut pad = pad_at(expected_at);
        let unpadded = (buf.len() as u64).saturating_add(body_len);
        if unpadded <= self.segment_size && unpadded + pad as u64 > self.segment_size {
            pad = 0; // fits a regular segment only unpadded
        }
        buf.resize(buf.len() + pad, 0);
        let meta_bytes = buf[HEADER_LEN + key.len()..].to_vec();
        let head = RecordHeader {
            kind: RecordKind::Object,
            key_len,
            meta_len: meta_bytes.len() as u16,
            body_crc: 0,
            body_len,
            seq: 0,
        };
        let total = head.record_len();
        if total > self.segment_size && body_len > self.max_object {
            return Err(Error::TooLarge(body_len));
        }
        let (seg, offset) = self.reserve(total)?;
        buf[..HEADER_LEN].copy_from_slice(&dead_header(total));
        if let Err(e) = self.noted(seg.write_at(offset, &buf)) {
            // The reservation may now hold a zero or partial header that replay cannot
            // step over: seal the segment so nothing is written after it.
            if self.active.as_ref().is_some_and(|a| a.seg.id() == seg.id()) {
                self.active = None;
            }
            return Err(e);
        }
        let Some(pin) = seg.pin() else {
            // Never: the active segment is not condemned (evicting it clears `active`).
            return Err(Error::Evicted);
        };
        self.pending.insert((seg.id(), offset));
        self.dirty.insert(seg.id());
        Ok(PendingRecord {
            body_offset: (offset + head.body_offset()) as usize,
            segment: seg,
            pin,
            body_len,
            record_offset: offset,
            written: 0,
            crc: crc32fast::Hasher::new(),
            key: Arc::from(key),
            meta: Arc::new(meta.clone()),
            meta_bytes,
            spooled: false,
        })
    }

    /// Does the device have room for `bytes` of spool on top of what the cache may still
    /// grow into (its unused capacity plus one segment)?
    fn spool_room(&self, bytes: u64) -> bool {
        let promised = self
            .capacity
            .saturating_sub(self.bytes_on_disk())
            .saturating_add(self.segment_size);
        super::segment::free_space(&self.dir)
            .is_some_and(|free| free >= bytes.saturating_add(promised))
    }

    /// Start a fill of `body_len` bytes that is shared with its waiters but not kept: like
    /// [`Self::begin`], into a preallocated spool of its own (see the module doc, Large
    /// objects). [`Self::commit`] checks its length and indexes nothing.
    pub fn begin_spool(
        &mut self,
        key: &str,
        meta: &ObjectMeta,
        body_len: u64,
    ) -> Result<PendingRecord, Error> {
        let size = body_len.max(MIN_SEGMENT_SIZE);
        if !self.spool_room(size) {
            return Err(Error::NoRoomToSpool(body_len));
        }
        let file = super::segment::spool_file(&self.dir)?;
        Segment::preallocate_spool(&file, &self.dir, size)?;
        let seg = self.map_spool(file)?;
        let pin = seg.pin().ok_or(Error::Evicted)?; // never: spools are not condemned
        Ok(PendingRecord {
            segment: seg,
            pin,
            body_offset: 0,
            body_len,
            record_offset: 0,
            written: 0,
            crc: crc32fast::Hasher::new(),
            key: Arc::from(key),
            meta: Arc::new(meta.clone()),
            meta_bytes: Vec::new(),
            spooled: true,
        })
    }

    fn map_spool(&self, file: std::fs::File) -> Result<Arc<Segment>, Error> {
        let gauge = Arc::clone(&self.reader.counters.spool_bytes);
        Segment::from_spool(file, &self.dir, gauge).map(Arc::new)
    }

    /// Counts a fill whose body was shared through a spool and not kept.
    pub fn note_spooled(&self) {
        self.reader.counters.spooled.fetch_add(1, Ordering::Relaxed);
    }

    /// Start a spool for a body of unknown length, holding `first` (see the module doc,
    /// Large objects).
    pub fn begin_growing_spool(&self, first: &[u8]) -> Result<GrowingSpool, Error> {
        if !self.spool_room(SPOOL_STEP) {
            return Err(Error::NoRoomToSpool(SPOOL_STEP));
        }
        let mut spool = GrowingSpool {
            file: super::segment::spool_file(&self.dir)?,
            len: 0,
            room_for: SPOOL_STEP,
        };
        self.spool_append(&mut spool, first)?;
        Ok(spool)
    }

    /// Append to a growing spool, checking the device's room every [`SPOOL_STEP`].
    pub fn spool_append(&self, spool: &mut GrowingSpool, data: &[u8]) -> Result<(), Error> {
        let end = spool.len + data.len() as u64;
        if end > spool.room_for {
            let step = SPOOL_STEP.max(data.len() as u64);
            if !self.spool_room(step) {
                return Err(Error::NoRoomToSpool(end));
            }
            spool.room_for = end + step;
        }
        spool
            .file
            .write_all_at(data, spool.len)
            .map_err(|e| Error::space_or_io(&self.dir, "write spool file in", e))?;
        spool.len = end;
        Ok(())
    }

    /// A complete growing spool, mapped: a segment holding the body at offset 0 (padded
    /// with zeros to the smallest segment size).
    pub fn finish_spool(&self, spool: GrowingSpool) -> Result<Arc<Segment>, Error> {
        if spool.len < MIN_SEGMENT_SIZE {
            spool
                .file
                .set_len(MIN_SEGMENT_SIZE)
                .map_err(|e| Error::io_at(&self.dir, "extend spool file in", e))?;
        }
        self.map_spool(spool.file)
    }

    /// Append body bytes (written to the file before this returns).
    pub fn append(&mut self, rec: &mut PendingRecord, data: &[u8]) -> Result<(), Error> {
        let written = rec.written + data.len() as u64;
        if written > rec.body_len {
            return Err(Error::LengthMismatch {
                declared: rec.body_len,
                written,
            });
        }
        self.noted(
            rec.segment
                .write_at(rec.body_offset as u64 + rec.written, data),
        )?;
        rec.crc.update(data);
        rec.written = written;
        Ok(())
    }

    /// Seal the record and index it (replacing any older entry for the key).
    pub fn commit(&mut self, rec: PendingRecord) -> Result<(), Error> {
        if rec.spooled {
            return match rec.written == rec.body_len {
                true => Ok(()),
                false => Err(Error::LengthMismatch {
                    declared: rec.body_len,
                    written: rec.written,
                }),
            };
        }
        let seg_id = rec.segment.id();
        self.pending.remove(&(seg_id, rec.record_offset));
        if rec.written != rec.body_len {
            // The dead header written at `begin` stays: replay steps over it.
            return Err(Error::LengthMismatch {
                declared: rec.body_len,
                written: rec.written,
            });
        }
        if !self.segments.contains_key(&seg_id) {
            tracing::debug!(key = &*rec.key, "segment evicted during fill; not indexed");
            return Ok(());
        }
        let seq = self.take_seq();
        let loc = Location {
            offset: rec.record_offset,
            record_meta_len: rec.meta_bytes.len() as u16,
            body_len: rec.body_len,
            body_crc: rec.crc.clone().finalize(),
            seq,
        };
        let header = live_header(&rec.key, &rec.meta_bytes, &loc);
        self.noted(rec.segment.write_at(rec.record_offset, &header))?;
        match Entry::new(rec.key, rec.segment, loc, rec.meta, true) {
            Some(e) => {
                self.reader.index.insert(Arc::new(e));
            }
            None => debug_assert!(false, "reserved record outside its segment"),
        }
        Ok(())
    }

    /// Give up a fill: the space stays dead and is never indexed (a spool is freed when
    /// its last holder lets go).
    pub fn abort(&mut self, rec: PendingRecord) {
        self.pending.remove(&(rec.segment.id(), rec.record_offset));
    }

    /// Remove `key` (logged as a tombstone so it stays removed after a crash).
    pub fn remove(&mut self, key: &str) -> bool {
        if self.reader.index.remove(key).is_none() {
            return false;
        }
        self.log_tombstone(RecordKind::Tombstone, key);
        true
    }

    /// Remove every key starting with `prefix`; returns how many.
    pub fn remove_prefix(&mut self, prefix: &str) -> usize {
        let n = self
            .reader
            .index
            .remove_where(|e| e.key.starts_with(prefix));
        if n > 0 {
            self.log_tombstone(RecordKind::TombstonePrefix, prefix);
        }
        n
    }

    /// Remove every entry whose key `keep` refuses (at start, before serving: entries
    /// no configured repository owns), each `group` of them with one prefix
    /// tombstone (a key that is its own group: its own tombstone); returns how many.
    pub fn remove_unless(
        &mut self,
        keep: impl Fn(&str) -> bool,
        group: impl Fn(&str) -> &str,
    ) -> usize {
        let groups: std::collections::BTreeSet<String> = self
            .reader
            .index
            .entries()
            .iter()
            .filter(|e| !keep(&e.key))
            .map(|e| group(&e.key).to_owned())
            .collect();
        let mut removed = 0;
        for g in groups {
            removed += if self.reader.index.get(&g).is_some() {
                usize::from(self.remove(&g))
            } else {
                self.remove_prefix(&g)
            };
        }
        removed
    }

    /// Update an entry's freshness (after a 304) without rewriting its body. Persisted by
    /// the next checkpoint (and by a second-chance copy). False if `key` is absent.
    pub fn refresh(&mut self, key: &str, stored_at: u64) -> bool {
        let Some(old) = self.reader.index.get(key) else {
            return false;
        };
        let mut meta = (*old.meta).clone();
        meta.stored_at = stored_at;
        let Some(new) = Entry::new(
            Arc::clone(&old.key),
            Arc::clone(&old.segment),
            old.location(),
            Arc::new(meta),
            old.verified.load(Ordering::Acquire),
        ) else {
            return false;
        };
        new.hit
            .store(old.hit.load(Ordering::Relaxed), Ordering::Relaxed);
        self.reader.index.replace_if_same(&old, Arc::new(new))
    }

    /// Persist the index: fdatasync segments written since the last checkpoint, then write
    /// the older checkpoint copy (fsync). [`Self::begin_checkpoint`],
    /// [`PendingCheckpoint::sync`] and [`Self::finish_checkpoint`] in one go.
    pub fn checkpoint(&mut self) -> Result<(), Error> {
        let pending = self.begin_checkpoint();
        pending.sync()?;
        self.finish_checkpoint(pending)
    }

    /// The first step of a checkpoint: what it will say (the index and the log position
    /// as of now) and the segments written since the last one, which must reach the disk
    /// ([`PendingCheckpoint::sync`], which may run on another thread: it is the slow
    /// part) before [`Self::finish_checkpoint`] writes it. Records written meanwhile are
    /// after its log position, so replay finds them.
    pub fn begin_checkpoint(&mut self) -> PendingCheckpoint {
        let segments = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|id| self.segments.get(&id).cloned())
            .collect();
        let (log_segment, log_offset) = match (self.pending.first(), &self.active) {
            (Some(&(id, off)), _) => (id, off),
            (None, Some(a)) => (a.seg.id(), a.pos),
            (None, None) => (SegmentId(self.next_segment_id), 0),
        };
        let salt = self.ckpt.last_seq + 1;
        let entries = self.reader.index.entries();
        let mut buf = Vec::with_capacity(entries.len() * 160);
        let mut meta = Vec::new();
        let mut count = 0u64;
        for e in &entries {
            meta.clear();
            if format::encode_meta(&e.meta, &mut meta).is_err() {
                continue;
            }
            let ce = CheckpointEntry {
                segment: e.segment_id().0,
                offset: e.offset,
                body_len: e.body_len,
                seq: e.seq,
                body_crc: e.body_crc,
                record_meta_len: e.record_meta_len,
                key: e.key.as_bytes(),
                meta: &meta,
            };
            if ce.encode(salt, &mut buf).is_ok() {
                count += 1;
            }
        }
        let header = CheckpointHeader {
            log_segment: log_segment.0,
            log_offset,
            next_seq: self.next_seq,
            next_segment_id: self.next_segment_id,
            ..CheckpointHeader::default()
        };
        PendingCheckpoint {
            segments,
            header,
            count,
            buf,
        }
    }

    /// Writes a checkpoint whose segments were synced. Only one checkpoint may be
    /// between begin and finish at a time (its copy and salt were chosen at begin).
    pub fn finish_checkpoint(&mut self, pending: PendingCheckpoint) -> Result<(), Error> {
        let PendingCheckpoint {
            header, count, buf, ..
        } = pending;
        let written = checkpoint::write(&self.dir, &mut self.ckpt, header, count, &buf);
        self.noted(written)?;
        self.shrink_to_capacity()?;
        self.publish_sizes();
        Ok(())
    }

    pub(super) fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Reserve `total` bytes; rotates to a new segment when the active one is full
    /// (not while admission is paused by a full device: see the module doc).
    pub(super) fn reserve(&mut self, total: u64) -> Result<(Arc<Segment>, u64), Error> {
        if let Some(r) = self.try_reserve(total) {
            return Ok(r);
        }
        if self.disk_full.is_some_and(|d| Instant::now() < d.retry_at) {
            return Err(Error::NoSpace);
        }
        let rotated = self.rotate(total);
        self.noted(rotated)?;
        self.resume();
        self.try_reserve(total).ok_or(Error::TooLarge(total))
    }

    /// While admission is paused by a full device: once the retry interval has passed
    /// and the device shows room for a segment again, resume (the next new object
    /// creates it; if that still fails, admission pauses again). Called periodically.
    pub fn recheck_space(&mut self) {
        let Some(d) = self.disk_full else {
            return;
        };
        if Instant::now() >= d.retry_at
            && super::segment::free_space(&self.dir).is_some_and(|free| free >= self.segment_size)
        {
            self.resume();
        }
    }

    fn resume(&mut self) {
        if self.disk_full.take().is_some() {
            self.reader
                .counters
                .disk_full
                .store(false, Ordering::Relaxed);
            tracing::info!(
                shard = self.shard,
                "cache device has space again: caching new objects"
            );
        }
    }

    pub(super) fn try_reserve(&mut self, total: u64) -> Option<(Arc<Segment>, u64)> {
        let a = self.active.as_mut()?;
        if a.seg.intact_len().is_some() {
            // Truncated under us: sealed, never written again.
            self.active = None;
            return None;
        }
        let end = a.pos.checked_add(total)?;
        if end > a.seg.len() {
            return None;
        }
        let off = a.pos;
        a.pos = end;
        Some((Arc::clone(&a.seg), off))
    }

    /// Passes `r` through, pausing admission when it is ENOSPC / EDQUOT (see the module
    /// doc): counted each time, logged once per [`NO_SPACE_LOG_EVERY`].
    pub(super) fn noted<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::NoSpace) = &r {
            let now = Instant::now();
            self.disk_full = Some(DiskFull {
                retry_at: now + NO_SPACE_RETRY,
            });
            let c = &self.reader.counters;
            c.no_space_errors.fetch_add(1, Ordering::Relaxed);
            c.disk_full.store(true, Ordering::Relaxed);
            if self
                .no_space_logged
                .is_none_or(|t| now.duration_since(t) >= NO_SPACE_LOG_EVERY)
            {
                self.no_space_logged = Some(now);
                tracing::warn!(
                    shard = self.shard,
                    dir = %self.dir.display(),
                    objects = self.reader.index.len(),
                    "cache device full (ENOSPC/EDQUOT): serving what is cached, passing new objects through uncached, retrying every {NO_SPACE_RETRY:?}; nothing is evicted for it"
                );
            }
        }
        r
    }

    /// Write a tombstone record (best effort: the in-memory removal already happened).
    fn log_tombstone(&mut self, kind: RecordKind, key: &str) {
        let Ok(key_len) = u16::try_from(key.len()) else {
            return;
        };
        let seq = self.take_seq();
        let h = RecordHeader {
            kind,
            key_len,
            meta_len: 0,
            body_crc: 0,
            body_len: 0,
            seq,
        };
        let mut buf = h.encode(key.as_bytes(), &[]).to_vec();
        buf.extend_from_slice(key.as_bytes());
        let r = self.reserve(buf.len() as u64).and_then(|(seg, off)| {
            self.dirty.insert(seg.id());
            seg.write_at(off, &buf)
        });
        if let Err(e) = self.noted(r) {
            tracing::warn!(key, error = %e, "cache tombstone not logged; removal may not survive a crash");
        }
    }
}

/// A dead header covering `total` bytes (CRC over the header only).
pub(super) fn dead_header(total: u64) -> [u8; HEADER_LEN] {
    RecordHeader {
        kind: RecordKind::Dead,
        key_len: 0,
        meta_len: 0,
        body_crc: 0,
        body_len: total - HEADER_LEN as u64,
        seq: 0,
    }
    .encode(&[], &[])
}

/// The live header of an object record.
pub(super) fn live_header(key: &str, meta_bytes: &[u8], loc: &Location) -> [u8; HEADER_LEN] {
    RecordHeader {
        kind: RecordKind::Object,
        key_len: key.len() as u16,
        meta_len: loc.record_meta_len,
        body_crc: loc.body_crc,
        body_len: loc.body_len,
        seq: loc.seq,
    }
    .encode(key.as_bytes(), meta_bytes)
}

/// Helpers shared by the cache unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use std::path::Path;

    pub const SEG: u64 = 64 * 1024;

    pub fn open(dir: &Path, capacity: u64) -> ShardStore {
        let cfg = StoreConfig {
            dir: dir.to_path_buf(),
            shard: 0,
            capacity,
            max_object: None,
        };
        ShardStore::open_with_segment_size(cfg, SEG).unwrap()
    }

    pub fn meta(etag: &str) -> ObjectMeta {
        ObjectMeta {
            status: 200,
            etag: Some(etag.to_owned()),
            last_modified: Some("Tue, 01 Jul 2025 10:00:00 GMT".into()),
            content_type: Some("application/gzip".into()),
            stored_at: 1_750_000_000,
        }
    }

    /// Deterministic body bytes for object `i`.
    pub fn body(i: u64, len: usize) -> Vec<u8> {
        let mut r = Rng(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        (0..len).map(|_| r.next() as u8).collect()
    }

    /// Write and commit one object, appending in a few chunks.
    pub fn put(store: &mut ShardStore, key: &str, body: &[u8], etag: &str) {
        let mut rec = store.begin(key, &meta(etag), body.len() as u64).unwrap();
        for chunk in body.chunks(1000) {
            store.append(&mut rec, chunk).unwrap();
        }
        store.commit(rec).unwrap();
    }

    /// Lookup + verify + body bytes.
    pub fn get(reader: &ShardReader, key: &str) -> Option<Vec<u8>> {
        let hit = reader.lookup(key)?;
        assert!(hit.verify(), "{key} does not verify");
        Some(hit.body().to_vec())
    }

    /// xorshift64*: seeded, reproducible.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<ShardReader>();
        send_sync::<Hit>();
        send_sync::<Segment>();
        send::<ShardStore>();
        send::<PendingRecord>();
    }

    #[test]
    fn write_commit_lookup_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let reader = s.reader();
        assert!(reader.lookup("/a.tgz").is_none());
        let b = body(1, 5000);
        let mut rec = s.begin("/a.tgz", &meta("\"e1\""), 5000).unwrap();
        s.append(&mut rec, &b[..3000]).unwrap();
        // The appended prefix is readable through the segment before commit.
        let seg = Arc::clone(&rec.segment);
        let mut prefix = vec![0u8; 3000];
        seg.read_at(rec.body_offset as u64, &mut prefix).unwrap();
        assert_eq!(prefix, &b[..3000]);
        assert_eq!(rec.written(), 3000);
        assert!(reader.lookup("/a.tgz").is_none(), "indexed before commit");
        s.append(&mut rec, &b[3000..]).unwrap();
        s.commit(rec).unwrap();
        let hit = reader.lookup("/a.tgz").unwrap();
        assert!(hit.verify());
        assert_eq!(hit.body(), &b[..]);
        assert_eq!(*hit.meta, meta("\"e1\""));
        assert_eq!(hit.key(), "/a.tgz");
        // A second write replaces the first.
        put(&mut s, "/a.tgz", b"v2", "\"e2\"");
        assert_eq!(get(&reader, "/a.tgz").unwrap(), b"v2");
        assert_eq!(s.stats().objects, 1);
    }

    #[test]
    fn large_bodies_start_page_aligned_and_survive_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let sizes = [100u64, 20_000, 5, 40_001, 16_384, 16_383, 33_000, 25_000];
        for (i, &n) in sizes.iter().enumerate() {
            let b = body(i as u64, n as usize);
            let key = format!("/c{i}.tgz");
            let mut rec = s.begin(&key, &meta("\"e\""), n).unwrap();
            let aligned = rec.body_offset as u64 % format::BODY_ALIGN == 0;
            assert!(
                aligned || n < format::ALIGN_BODIES_FROM,
                "{key}: {n} bytes at {}",
                rec.body_offset
            );
            s.append(&mut rec, &b).unwrap();
            s.commit(rec).unwrap();
        }
        let check = |s: &ShardStore| {
            let r = s.reader();
            for (i, &n) in sizes.iter().enumerate() {
                let hit = r.lookup(&format!("/c{i}.tgz")).unwrap();
                assert!(hit.verify());
                assert_eq!(hit.body(), &body(i as u64, n as usize)[..]);
                assert_eq!(*hit.meta, meta("\"e\""));
                if n >= format::ALIGN_BODIES_FROM {
                    assert_eq!(hit.body_offset as u64 % format::BODY_ALIGN, 0);
                }
            }
        };
        check(&s);
        // From the checkpoint, and from a full replay of the log without one.
        s.checkpoint().unwrap();
        drop(s);
        let s = open(dir.path(), 1 << 20);
        check(&s);
        drop(s);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let p = f.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("index")
            {
                std::fs::remove_file(p).unwrap();
            }
        }
        let s = open(dir.path(), 1 << 20);
        check(&s);
    }

    #[test]
    fn short_or_long_body_is_length_mismatch_and_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let mut rec = s.begin("/short", &meta("x"), 100).unwrap();
        s.append(&mut rec, &[1; 99]).unwrap();
        assert!(matches!(
            s.commit(rec),
            Err(Error::LengthMismatch {
                declared: 100,
                written: 99
            })
        ));
        assert!(s.reader().lookup("/short").is_none());
        let mut rec = s.begin("/long", &meta("x"), 10).unwrap();
        assert!(matches!(
            s.append(&mut rec, &[1; 11]),
            Err(Error::LengthMismatch {
                declared: 10,
                written: 11
            })
        ));
        s.abort(rec);
        assert!(s.reader().lookup("/long").is_none());
        drop(s);
        let s = open(dir.path(), 1 << 20);
        assert_eq!(s.stats().objects, 0);
    }

    #[test]
    fn too_large_and_too_long_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        // Above max-object-size (a quarter of the shard).
        assert!(matches!(
            s.begin("/big", &meta("x"), (1 << 18) + 1),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            s.begin("/huge", &meta("x"), u64::MAX),
            Err(Error::TooLarge(_))
        ));
        let long = "k".repeat(70_000);
        assert!(matches!(
            s.begin(&long, &meta("x"), 1),
            Err(Error::FieldTooLong("key"))
        ));
        // The largest object that fits a regular segment works.
        let m = meta("x");
        let max = SEG - (HEADER_LEN + 4 + format::meta_len(&m)) as u64;
        put(&mut s, "/max", &body(3, max as usize), "x");
        assert_eq!(get(&s.reader(), "/max").unwrap().len() as u64, max);
    }

    #[test]
    fn open_creates_dir_and_names_unusable_path() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/shard-0");
        let s = open(&nested, 1 << 20);
        assert!(nested.is_dir());
        drop(s);
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let cfg = StoreConfig {
            dir: file.join("shard"),
            shard: 0,
            capacity: 1 << 20,
            max_object: None,
        };
        let err = ShardStore::open(cfg).err().unwrap();
        assert!(matches!(err, Error::Io(_)));
        assert!(err.to_string().contains("plain-file"), "{err}");
        let cfg = StoreConfig {
            dir: dir.path().join("tiny"),
            shard: 0,
            capacity: 1000,
            max_object: None,
        };
        assert!(matches!(
            ShardStore::open(cfg),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn reader_on_other_thread_sees_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 4 << 20);
        let reader = s.reader();
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let t = std::thread::spawn(move || {
            let mut seen = 0;
            while let Ok(i) = rx.recv() {
                let got = get(&reader, &format!("/k/{i}")).expect("committed entry visible");
                assert_eq!(got, body(i, 700 + i as usize));
                seen += 1;
            }
            seen
        });
        for i in 0..200u64 {
            put(&mut s, &format!("/k/{i}"), &body(i, 700 + i as usize), "e");
            tx.send(i).unwrap();
        }
        drop(tx);
        assert_eq!(t.join().unwrap(), 200);
    }

    #[test]
    fn entry_pointing_at_another_keys_record_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        put(&mut s, "/a", b"aaaa", "ea");
        put(&mut s, "/b", b"bbbb", "eb");
        let r = s.reader();
        let a = r.index.get("/a").unwrap();
        // Same record geometry, but claims to be "/b": key check must reject it.
        let forged = Entry::new(
            "/b".into(),
            Arc::clone(&a.segment),
            a.location(),
            Arc::clone(&a.meta),
            false,
        )
        .unwrap();
        r.index.insert(Arc::new(forged));
        let hit = r.lookup("/b").unwrap();
        assert!(!hit.verify());
        assert!(r.drop_corrupt("/b", &hit));
        assert!(r.lookup("/b").is_none());
        assert_eq!(r.stats().corrupt_dropped, 1);
        assert!(
            !r.drop_corrupt("/b", &hit),
            "only drops the same record once"
        );
    }

    #[test]
    fn truncated_segment_drops_records_past_the_cut_and_takes_no_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let r = s.reader();
        for i in 0..8u64 {
            put(&mut s, &format!("/k/{i}"), &body(i, 3000), "e");
        }
        let cut_at = r.index.get("/k/4").unwrap().body_offset();
        let seg = Arc::clone(&r.index.get("/k/0").unwrap().segment);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(seg.path())
            .unwrap();
        f.set_len(cut_at).unwrap();
        // Verified records are not read again; an unverified one is, with pread.
        let hit = r.lookup("/k/6").unwrap();
        hit.entry.verified.store(false, Ordering::Relaxed);
        assert!(!hit.verify(), "a record past the cut never verifies");
        assert_eq!(hit.segment.check_size(), Some(cut_at));
        assert_eq!(r.drop_truncated(&hit.segment), 4);
        assert_eq!(r.drop_truncated(&hit.segment), 0, "once");
        for i in 0..8u64 {
            let got = get(&r, &format!("/k/{i}"));
            assert_eq!(got.is_some(), i < 4, "{i}");
        }
        let st = s.stats();
        assert_eq!((st.truncated_segments, st.truncated_dropped), (1, 4));
        // The next write goes to a new segment; the shrunk file is not extended.
        put(&mut s, "/k/4", &body(4, 3000), "e");
        assert_ne!(r.index.get("/k/4").unwrap().segment.id(), seg.id());
        assert_eq!(f.metadata().unwrap().len(), cut_at);
        assert_eq!(get(&r, "/k/4").unwrap(), body(4, 3000));
    }

    #[test]
    fn remove_prefix_refresh_and_their_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for i in 0..10 {
            put(&mut s, &format!("/charts/a-{i}.tgz"), &body(i, 100), "e");
        }
        put(&mut s, "/index.yaml", b"index", "e");
        assert!(s.refresh("/index.yaml", 1_800_000_000));
        assert!(!s.refresh("/nope", 1));
        s.checkpoint().unwrap();
        assert!(s.remove("/charts/a-0.tgz"));
        assert!(!s.remove("/charts/a-0.tgz"));
        assert_eq!(s.remove_prefix("/charts/a-1"), 1);
        assert_eq!(s.remove_prefix("/charts/"), 8);
        put(&mut s, "/charts/a-5.tgz", b"new", "e2");
        // Crash (no checkpoint): tombstones in the log keep the removals.
        drop(s);
        let s = open(dir.path(), 1 << 20);
        let r = s.reader();
        for i in 0..10 {
            let got = get(&r, &format!("/charts/a-{i}.tgz"));
            assert_eq!(
                got.as_deref(),
                if i == 5 { Some(&b"new"[..]) } else { None },
                "{i}"
            );
        }
        let hit = r.lookup("/index.yaml").unwrap();
        assert_eq!(hit.meta.stored_at, 1_800_000_000);
        assert!(hit.verify());
        assert_eq!(s.stats().objects, 2);
    }

    /// Writes `body` as a record for `key` (begin → append → commit).
    fn store_whole(s: &mut ShardStore, key: &str, body: &[u8]) -> Result<(), Error> {
        let mut rec = s.begin(key, &meta("\"big\""), body.len() as u64)?;
        s.append(&mut rec, body)?;
        s.commit(rec)
    }

    #[test]
    fn an_object_larger_than_a_segment_gets_its_own_and_survives_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 1 << 20; // segments of 64 KiB; max object 256 KiB
        let mut s = open(dir.path(), cap);
        assert_eq!(s.max_object(), cap / 4);
        put(&mut s, "/small-before", &body(1, 1000), "\"a\"");
        let big = body(7, 200_000);
        store_whole(&mut s, "/big.tgz", &big).unwrap();
        // Written after it: a later segment (ids keep the write order).
        put(&mut s, "/small-after", &body(2, 1000), "\"b\"");
        let check = |s: &ShardStore| {
            let r = s.reader();
            let hit = r.lookup("/big.tgz").expect("kept");
            assert!(hit.verify());
            assert_eq!(hit.body(), big);
            assert!(hit.segment.len() >= 200_000 && hit.segment.len() < 200_000 + 2 * 4096);
            assert_eq!(get(&r, "/small-before").unwrap(), body(1, 1000));
            assert_eq!(get(&r, "/small-after").unwrap(), body(2, 1000));
        };
        check(&s);
        // Replayed from the log, then from a checkpoint.
        drop(s);
        let mut s = open(dir.path(), cap);
        check(&s);
        s.checkpoint().unwrap();
        drop(s);
        let mut s = open(dir.path(), cap);
        check(&s);
        // Churn: the large one is evicted in its turn and the budget holds throughout.
        for i in 0..200u64 {
            put(&mut s, &format!("/churn-{i}"), &body(i, 30_000), "\"c\"");
            assert!(
                s.bytes_on_disk() <= cap + SEG,
                "{} on disk",
                s.bytes_on_disk()
            );
        }
        assert!(s.reader().lookup("/big.tgz").is_none());
    }

    #[test]
    fn above_max_object_a_fill_is_spooled_never_indexed_and_its_space_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 1 << 20;
        let mut s = open(dir.path(), cap);
        let big = body(9, 300_000); // > 256 KiB
        assert!(matches!(
            s.begin("/huge.tgz", &meta("\"h\""), big.len() as u64),
            Err(Error::TooLarge(_))
        ));
        let mut rec = s
            .begin_spool("/huge.tgz", &meta("\"h\""), big.len() as u64)
            .unwrap();
        assert_eq!(s.stats().spool_bytes, 300_000);
        s.append(&mut rec, &big[..1000]).unwrap();
        s.append(&mut rec, &big[1000..]).unwrap();
        let segment = rec.segment.clone();
        s.commit(rec).unwrap();
        let mut back = vec![0u8; big.len()];
        segment.read_at(0, &mut back).unwrap();
        assert_eq!(back, big);
        assert!(s.reader().lookup("/huge.tgz").is_none());
        // No file in the shard directory, and the bytes go with the last holder.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("spool")), "{names:?}");
        drop(segment);
        assert_eq!(s.stats().spool_bytes, 0);
        // A short spooled body does not commit.
        let mut rec = s.begin_spool("/huge.tgz", &meta("\"h\""), 300_000).unwrap();
        s.append(&mut rec, &big[..10]).unwrap();
        assert!(matches!(s.commit(rec), Err(Error::LengthMismatch { .. })));
    }

    #[test]
    fn a_growing_spool_holds_a_body_of_unknown_length() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let b = body(3, 100_000);
        let mut spool = s.begin_growing_spool(&b[..10]).unwrap();
        s.spool_append(&mut spool, &b[10..]).unwrap();
        assert_eq!(spool.len(), 100_000);
        let seg = s.finish_spool(spool).unwrap();
        let mut back = vec![0u8; b.len()];
        seg.read_at(0, &mut back).unwrap();
        assert_eq!(back, b);
        assert_eq!(s.stats().spool_bytes, seg.len());
        // A tiny one is padded up to a mappable size.
        let spool = s.begin_growing_spool(b"tiny").unwrap();
        assert_eq!(s.finish_spool(spool).unwrap().len(), MIN_SEGMENT_SIZE);
    }

    #[test]
    fn a_spool_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1 << 20));
        let left = dir
            .path()
            .join(format!("{}1-2", super::super::segment::SPOOL_PREFIX));
        std::fs::write(&left, b"x").unwrap();
        drop(open(dir.path(), 1 << 20));
        assert!(!left.exists());
    }

    #[test]
    fn max_object_above_half_the_shard_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            dir: dir.path().to_path_buf(),
            shard: 0,
            capacity: 8 << 20,
            max_object: Some(5 << 20),
        };
        let err = ShardStore::open(cfg).err().unwrap().to_string();
        assert!(err.contains("--max-object-size"), "{err}");
        assert!(err.contains("4194304"), "{err}");
    }

    #[test]
    fn a_checkpoint_in_two_steps_keeps_what_was_written_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        put(&mut s, "/before", &body(1, 5000), "\"a\"");
        let pending = s.begin_checkpoint();
        // Written while the segments sync (on another thread, in the owner).
        put(&mut s, "/between", &body(2, 5000), "\"b\"");
        assert!(s.remove("/before"));
        std::thread::scope(|t| t.spawn(|| pending.sync()).join().unwrap()).unwrap();
        s.finish_checkpoint(pending).unwrap();
        drop(s);
        let s = open(dir.path(), 1 << 20);
        let r = s.reader();
        assert!(
            get(&r, "/before").is_none(),
            "the removal after begin is replayed"
        );
        assert_eq!(get(&r, "/between").unwrap(), body(2, 5000));
        let report = s.recovery_report();
        assert!(
            report.checkpoint_seq.is_some() && report.checkpoint_entries == 1,
            "{report:?}"
        );
    }
}

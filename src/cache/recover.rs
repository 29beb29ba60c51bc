//! Startup recovery: newest valid checkpoint, then log replay from its position.
//!
//! 1. Map every `*.seg` file (unmappable leftovers of a crash during creation are
//!    removed).
//! 2. Load the newest valid checkpoint copy; its entries (those whose CRC passes, whose
//!    segment still exists and whose record lies inside it) go into the index,
//!    *unverified*. No copy valid → start from the beginning of the oldest segment
//!    (a full rebuild).
//! 3. Replay forward from the checkpoint's log position through every later segment,
//!    reading headers + key + meta only (never bodies: the body CRC is checked at first
//!    serve). Objects are inserted unless the index holds a newer sequence number (or
//!    that very record, whose meta may have been refreshed); tombstones remove older
//!    entries; dead records (aborted or unfinished fills) are stepped over. A segment's
//!    replay stops at the first all-zero header (end of log) or at the first record that
//!    does not check (torn or damaged); later records of that segment are lost.
//! 4. The newest segment is the tail: its write position is where replay stopped. The
//!    rest of it is zeroed (hole punched), so bytes of the previous run can never be
//!    read as records, and index entries pointing past it are dropped.
//!
//! Sequence numbers and segment ids continue after the largest seen anywhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::checkpoint::{self, CheckpointState};
use super::format::{self, FormatError, RecordKind, HEADER_LEN};
use super::index::{Entry, Index, Location};
use super::segment::{self, Segment, SegmentId};
use super::store::Error;

/// What recovery found (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Sequence of the checkpoint used (None: rebuilt by scanning the log).
    pub checkpoint_seq: Option<u64>,
    /// Entries loaded from the checkpoint.
    pub checkpoint_entries: usize,
    /// Checkpoint entries skipped (CRC failed, segment gone, out of bounds).
    pub checkpoint_skipped: usize,
    /// Records read during replay (objects, tombstones, dead).
    pub replayed_records: usize,
    /// Segments whose replay stopped at a damaged record.
    pub damaged_segments: usize,
    /// Segment files that could not be opened/mapped and were removed.
    pub removed_files: usize,
}

/// Everything `ShardStore::open` needs.
pub(super) struct Recovered {
    pub segments: BTreeMap<SegmentId, Arc<Segment>>,
    /// The tail segment and its write position, if it can take more records.
    pub active: Option<(Arc<Segment>, u64)>,
    pub next_seq: u64,
    pub next_segment_id: u64,
    pub ckpt: CheckpointState,
    pub report: RecoveryReport,
}

pub(super) fn recover(dir: &Path, index: &Index) -> Result<Recovered, Error> {
    let mut report = RecoveryReport::default();
    let mut segments = BTreeMap::new();
    let mut next_segment_id = 1u64;
    for (id, path) in segment::list(dir)? {
        next_segment_id = next_segment_id.max(id.0.saturating_add(1));
        match Segment::open(&path, id) {
            Ok(s) => {
                segments.insert(id, Arc::new(s));
            }
            Err(e) => {
                tracing::warn!(error = %e, "unusable cache segment removed");
                let _ = std::fs::remove_file(&path);
                report.removed_files += 1;
            }
        }
    }

    let (snap, ckpt) = checkpoint::load(dir)?;
    let mut next_seq = 1u64;
    let mut from = (SegmentId(0), 0u64);
    if let Some(snap) = &snap {
        let h = snap.header;
        report.checkpoint_seq = Some(h.ckpt_seq);
        next_seq = next_seq.max(h.next_seq);
        next_segment_id = next_segment_id.max(h.next_segment_id);
        from = (SegmentId(h.log_segment), h.log_offset);
        let (entries, skipped) = snap.entries();
        report.checkpoint_skipped = skipped;
        for ce in entries {
            match entry_from_checkpoint(&segments, &ce) {
                Some(e) => {
                    next_seq = next_seq.max(e.seq.saturating_add(1));
                    index.insert_if_newer(Arc::new(e));
                    report.checkpoint_entries += 1;
                }
                None => report.checkpoint_skipped += 1,
            }
        }
    }

    let tail_id = segments.last_key_value().map(|(id, _)| *id);
    let mut active = None;
    for (id, seg) in segments.range(from.0..) {
        let start = if *id == from.0 { from.1 } else { 0 };
        let end = replay_segment(seg, start, index, &mut next_seq, &mut report);
        if Some(*id) == tail_id {
            active = Some((Arc::clone(seg), end));
        }
    }
    if let Some((seg, end)) = active.take() {
        // Entries can only point past the stop if the log was damaged there.
        let gone = index.remove_where(|e| e.segment_id() == seg.id() && e.offset >= end);
        report.checkpoint_skipped += gone;
        match seg.zero_tail(end) {
            Ok(()) if end + HEADER_LEN as u64 <= seg.len() => active = Some((seg, end)),
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "cache tail not reusable; starting a new segment"),
        }
    }
    Ok(Recovered {
        segments,
        active,
        next_seq,
        next_segment_id,
        ckpt,
        report,
    })
}

fn entry_from_checkpoint(
    segments: &BTreeMap<SegmentId, Arc<Segment>>,
    ce: &format::CheckpointEntry<'_>,
) -> Option<Entry> {
    let seg = segments.get(&SegmentId(ce.segment))?;
    let key = std::str::from_utf8(ce.key).ok()?;
    let meta = format::decode_meta(ce.meta).ok()?;
    let loc = Location {
        offset: ce.offset,
        record_meta_len: ce.record_meta_len,
        body_len: ce.body_len,
        body_crc: ce.body_crc,
        seq: ce.seq,
    };
    Entry::new(Arc::from(key), Arc::clone(seg), loc, Arc::new(meta), false)
}

/// Replay one segment from `start`; returns where it stopped.
fn replay_segment(
    seg: &Arc<Segment>,
    start: u64,
    index: &Index,
    next_seq: &mut u64,
    report: &mut RecoveryReport,
) -> u64 {
    let bytes = seg.as_slice();
    let mut pos = start;
    loop {
        if pos + HEADER_LEN as u64 > seg.len() {
            return pos.min(seg.len());
        }
        let v = match format::read_record(bytes, pos) {
            Ok(v) => v,
            Err(FormatError::Empty) => return pos,
            Err(e) => {
                tracing::warn!(segment = %seg.id(), offset = pos, error = %e,
                    "cache log damaged; rest of segment ignored");
                report.damaged_segments += 1;
                return pos;
            }
        };
        report.replayed_records += 1;
        let h = v.header;
        if h.kind != RecordKind::Dead {
            *next_seq = (*next_seq).max(h.seq.saturating_add(1));
        }
        match (h.kind, std::str::from_utf8(v.key)) {
            (RecordKind::Object, Ok(key)) => {
                if let Ok(meta) = format::decode_meta(v.meta) {
                    let loc = Location {
                        offset: pos,
                        record_meta_len: h.meta_len,
                        body_len: h.body_len,
                        body_crc: h.body_crc,
                        seq: h.seq,
                    };
                    if let Some(e) =
                        Entry::new(Arc::from(key), Arc::clone(seg), loc, Arc::new(meta), false)
                    {
                        index.insert_if_newer(Arc::new(e));
                    }
                }
            }
            (RecordKind::Tombstone, Ok(key)) => {
                index.remove_older(key, h.seq);
            }
            (RecordKind::TombstonePrefix, Ok(prefix)) => {
                index.remove_where(|e| e.seq < h.seq && e.key.starts_with(prefix));
            }
            _ => {}
        }
        // `read_record` checked the record lies inside the segment.
        pos += h.record_len();
    }
}

//! Startup recovery: newest valid checkpoint, then log replay from its position.
//!
//! 1. Map every `*.seg` file (unmappable leftovers of a crash during creation are
//!    removed).
//! 2. Load the newest valid checkpoint copy; its entries (those whose CRC passes, whose
//!    segment still exists and whose record lies inside it) go into the index,
//!    *unverified*. No copy valid → start from the beginning of the oldest segment
//!    (a full rebuild).
//! 3. Replay forward from the checkpoint's log position through every later segment,
//!    reading headers + key + meta only, with `pread` (never bodies: the body CRC is
//!    checked at first serve; never through the mapping, see [`super::segment`]). Objects are inserted unless the index holds a newer sequence number (or
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
use super::error::Error;
use super::format::{self, FormatError, RecordKind, HEADER_LEN};
use super::index::{read_head, Entry, Index, Location, ReadError};
use super::segment::{self, Segment, SegmentId};

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
    let mut km = Vec::new();
    let mut pos = start;
    loop {
        if pos + HEADER_LEN as u64 > seg.len() {
            return pos.min(seg.len());
        }
        let h = match read_head(seg, pos, &mut km) {
            Ok(h) => h,
            Err(ReadError::Format(FormatError::Empty)) => return pos,
            Err(e) => {
                let error = match e {
                    ReadError::Format(f) => f.to_string(),
                    ReadError::Io(io) => io.to_string(),
                };
                tracing::warn!(segment = %seg.id(), offset = pos, error = %error,
                    "cache log damaged; rest of segment ignored");
                report.damaged_segments += 1;
                return pos;
            }
        };
        let (key, meta) = km.split_at(usize::from(h.key_len));
        report.replayed_records += 1;
        if h.kind != RecordKind::Dead {
            *next_seq = (*next_seq).max(h.seq.saturating_add(1));
        }
        match (h.kind, std::str::from_utf8(key)) {
            (RecordKind::Object, Ok(key)) => {
                if let Ok(meta) = format::decode_meta(meta) {
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
        // `read_head` checked the record lies inside the segment.
        pos += h.record_len();
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::testutil::*;
    use super::super::store::ShardStore;
    use std::collections::HashMap;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;

    const CAP: u64 = 4 << 20;

    fn seg_path(s: &ShardStore, key: &str) -> (std::path::PathBuf, u64, u64, u64) {
        let e = s.reader().index.get(key).unwrap();
        (
            e.segment.path().to_path_buf(),
            e.offset,
            e.body_offset(),
            e.body_len,
        )
    }

    fn patch(path: &std::path::Path, at: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn aborted_and_unfinished_fills_do_not_hide_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        put(&mut s, "/a", &body(1, 3000), "a");
        let mut b = s.begin("/b", &meta("b"), 5000).unwrap();
        s.append(&mut b, &body(2, 2500)).unwrap();
        s.abort(b);
        let mut d = s.begin("/d", &meta("d"), 5000).unwrap();
        s.append(&mut d, &body(4, 100)).unwrap();
        put(&mut s, "/c", &body(3, 3000), "c");
        drop(d); // crash mid-fill: never committed nor aborted
        drop(s);
        let mut s = open(dir.path(), CAP);
        assert_eq!(s.recovery_report().checkpoint_seq, None);
        assert_eq!(s.recovery_report().damaged_segments, 0);
        let r = s.reader();
        assert_eq!(get(&r, "/a").unwrap(), body(1, 3000));
        assert_eq!(get(&r, "/c").unwrap(), body(3, 3000));
        assert!(r.lookup("/b").is_none() && r.lookup("/d").is_none());
        put(&mut s, "/e", b"eee", "e");
        drop(s);
        let s = open(dir.path(), CAP);
        assert_eq!(s.stats().objects, 3);
        assert_eq!(get(&s.reader(), "/e").unwrap(), b"eee");
    }

    #[test]
    fn clean_checkpoint_reopen_needs_no_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        for i in 0..50 {
            put(&mut s, &format!("/k{i}"), &body(i, 1000 + i as usize), "e");
        }
        s.checkpoint().unwrap();
        drop(s);
        let s = open(dir.path(), CAP);
        let rep = s.recovery_report().clone();
        assert_eq!(
            (
                rep.checkpoint_seq,
                rep.checkpoint_entries,
                rep.replayed_records
            ),
            (Some(1), 50, 0)
        );
        let r = s.reader();
        for i in 0..50 {
            let e = r.index.get(&format!("/k{i}")).unwrap();
            assert!(
                !e.verified.load(Ordering::Relaxed),
                "recovered entries start unverified"
            );
            assert_eq!(
                get(&r, &format!("/k{i}")).unwrap(),
                body(i, 1000 + i as usize)
            );
            assert!(e.verified.load(Ordering::Relaxed));
        }
    }

    #[test]
    fn no_checkpoint_or_both_damaged_rebuilds_by_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        for i in 0..40 {
            put(&mut s, &format!("/k{i}"), &body(i, 2000), "e");
            if i == 20 || i == 30 {
                s.checkpoint().unwrap();
            }
        }
        drop(s);
        for copy in 0..2 {
            let p = dir.path().join(format!("index.{copy}"));
            patch(&p, 17, &[0xff]);
        }
        let s = open(dir.path(), CAP);
        let rep = s.recovery_report();
        assert_eq!((rep.checkpoint_seq, rep.replayed_records), (None, 40));
        for i in 0..40 {
            assert_eq!(get(&s.reader(), &format!("/k{i}")).unwrap(), body(i, 2000));
        }
        drop(s);
        std::fs::remove_file(dir.path().join("index.0")).unwrap();
        std::fs::remove_file(dir.path().join("index.1")).unwrap();
        let s = open(dir.path(), CAP);
        assert_eq!(s.recovery_report().checkpoint_seq, None);
        assert_eq!(s.stats().objects, 40);
    }

    #[test]
    fn fill_spanning_a_checkpoint_and_later_writes_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        let mut x = s.begin("/x", &meta("x"), 4000).unwrap();
        put(&mut s, "/y", &body(2, 4000), "y");
        s.checkpoint().unwrap();
        s.append(&mut x, &body(1, 4000)).unwrap();
        s.commit(x).unwrap();
        put(&mut s, "/z", &body(3, 4000), "z");
        assert!(s.remove("/y"));
        drop(s);
        let s = open(dir.path(), CAP);
        assert_eq!(s.recovery_report().checkpoint_seq, Some(1));
        let r = s.reader();
        assert_eq!(get(&r, "/x").unwrap(), body(1, 4000));
        assert_eq!(get(&r, "/z").unwrap(), body(3, 4000));
        assert!(r.lookup("/y").is_none());
    }

    #[test]
    fn torn_tail_is_dropped_and_appends_continue() {
        // (zeroed header, zeroed body half, truncated file)
        for mode in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let mut s = open(dir.path(), CAP);
            put(&mut s, "/a", &body(1, 3000), "a");
            put(&mut s, "/b", &body(2, 3000), "b");
            put(&mut s, "/c", &body(3, 3000), "c");
            let (path, off, body_off, len) = seg_path(&s, "/c");
            drop(s);
            match mode {
                0 => patch(&path, off, &vec![0; (body_off - off + len / 2) as usize]),
                1 => patch(&path, body_off + len / 2, &vec![0; (len / 2) as usize]),
                _ => std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(body_off + len / 2)
                    .unwrap(),
            }
            let mut s = open(dir.path(), CAP);
            let r = s.reader();
            assert_eq!(get(&r, "/a").unwrap(), body(1, 3000), "mode {mode}");
            assert_eq!(get(&r, "/b").unwrap(), body(2, 3000), "mode {mode}");
            match r.lookup("/c") {
                None => assert_ne!(mode, 1),
                // Header intact, body torn: found, but never served.
                Some(hit) => {
                    assert_eq!(mode, 1);
                    assert!(!hit.verify());
                    assert!(r.drop_corrupt("/c", &hit));
                }
            }
            put(&mut s, "/d", &body(4, 3000), "d");
            drop(s);
            let s = open(dir.path(), CAP);
            let r = s.reader();
            assert_eq!(get(&r, "/d").unwrap(), body(4, 3000), "mode {mode}");
            assert_eq!(get(&r, "/a").unwrap(), body(1, 3000), "mode {mode}");
            assert_eq!(s.recovery_report().damaged_segments, 0, "mode {mode}");
        }
    }

    #[test]
    fn open_reads_no_bodies_for_10k_objects() {
        for with_checkpoint in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = open(dir.path(), 16 << 20);
            let mut spots = Vec::new();
            for i in 0..10_000u64 {
                let key = format!("/charts/c-{i}.tgz");
                put(&mut s, &key, &body(i, 200), "e");
                let (p, _, body_off, _) = seg_path(&s, &key);
                spots.push((p, body_off + 100));
            }
            if with_checkpoint {
                s.checkpoint().unwrap();
            }
            drop(s);
            for (p, at) in &spots {
                patch(p, *at, &[0x5a ^ 0xff]);
            }
            let s = open(dir.path(), 16 << 20);
            assert_eq!(s.stats().objects, 10_000);
            let r = s.reader();
            for i in (0..10_000u64).step_by(97) {
                let hit = r.lookup(&format!("/charts/c-{i}.tgz")).unwrap();
                // Unless the byte happened to already be 0xa5, the body no longer checks.
                assert_eq!(hit.verify(), body(i, 200)[100] == 0xa5, "{i}");
            }
        }
    }

    /// Flip random bits anywhere in any file; a lookup must miss, fail verify, or return
    /// exactly the bytes that were written under that key with that ETag.
    #[test]
    fn random_bit_flips_never_yield_wrong_bytes_that_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut versions: HashMap<(String, String), Vec<u8>> = HashMap::new();
        let mut s = open(dir.path(), 1 << 20);
        let mut rng = Rng(7);
        let mut keys = Vec::new();
        for i in 0..60u64 {
            let key = format!("/k/{}", rng.below(40));
            let etag = format!("\"{i}\"");
            let b = body(i, 200 + rng.below(6000) as usize);
            put(&mut s, &key, &b, &etag);
            versions.insert((key.clone(), etag), b);
            keys.push(key);
            if i % 7 == 3 {
                let _ = s.reader().lookup(&keys[(i / 2) as usize]);
            }
            if i == 25 || i == 45 {
                s.checkpoint().unwrap();
            }
            if i == 50 {
                s.remove(&keys[3]);
                s.remove_prefix("/k/1");
            }
        }
        drop(s);
        let mut pristine = Vec::new();
        for ent in std::fs::read_dir(dir.path()).unwrap() {
            let p = ent.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |x| x + 1);
            pristine.push((p, bytes, used));
        }
        let (mut served, mut rejected) = (0, 0);
        for trial in 0..150u64 {
            let mut rng = Rng(trial * 7919 + 1);
            for (p, bytes, _) in &pristine {
                std::fs::write(p, bytes).unwrap();
            }
            for _ in 0..1 + rng.below(8) {
                let (p, bytes, used) = &pristine[rng.below(pristine.len() as u64) as usize];
                let at = rng.below(*used as u64);
                let mut b = [bytes[at as usize]];
                b[0] ^= 1 << rng.below(8);
                patch(p, at, &b);
            }
            let s = open(dir.path(), 1 << 20);
            let r = s.reader();
            for key in &keys {
                let Some(hit) = r.lookup(key) else { continue };
                if hit.verify() {
                    let etag = hit.meta.etag.clone().unwrap_or_default();
                    let want = versions.get(&(key.clone(), etag.clone()));
                    assert_eq!(
                        Some(&hit.body()[..]),
                        want.map(|v| &v[..]),
                        "trial {trial} key {key} etag {etag}"
                    );
                    served += 1;
                } else {
                    rejected += 1;
                    assert!(r.drop_corrupt(key, &hit));
                    assert!(r.lookup(key).is_none());
                }
            }
        }
        // The trials exercised both outcomes.
        assert!(
            served > 1000 && rejected > 10,
            "served {served} rejected {rejected}"
        );
    }
}

//! Eviction: a log-structured FIFO over whole segments, with a second chance.
//!
//! When a new segment is needed and it would not fit the budget (see
//! [`super::store`], Capacity: live segments + checkpoints + the new one within
//! `capacity`, and evicted segments still pinned by readers within one segment more),
//! the oldest segment is evicted whole: its file is unlinked and its index entries are
//! dropped — except entries that were looked up since written (`hit` flag): those are
//! copied, read back with `pread` and their body CRC re-checked, to the head of the new
//! segment, with their current meta and original sequence number, if they fit without
//! crowding out the record that triggered the rotation. Their `hit` flag starts clear
//! again, so an object must be hit once per lap to stay.
//!
//! Once no index entry points into an evicted segment any more (after the copies), it
//! is condemned ([`Segment::condemn`]): its blocks are freed at once, or when the last
//! send or fill still reading it lets go of its pin; until then it counts as held
//! space. Only as many segments are evicted as the budget needs: a full device
//! (ENOSPC creating the new segment) evicts nothing more, it pauses admission (see
//! [`super::store`], Disk full).
//!
//! Invariants: only the owner (`ShardStore`) runs this; an entry is only replaced or
//! removed if the index still holds that very entry.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::Error;
use super::format::HEADER_LEN;
use super::index::{crc_of, Entry, Location};
use super::segment::{Segment, SegmentId};
use super::store::{dead_header, live_header, Active, ShardStore};

impl ShardStore {
    /// Make room within the budget, open a new active segment and copy rescued hot
    /// entries into it, leaving at least `reserve_for` bytes free. The new segment has the
    /// regular size, or is made for `reserve_for` when that is larger (a large object's
    /// own segment: store, Large objects). On an error (a full device, say) the active
    /// segment, if any, stays.
    pub(super) fn rotate(&mut self, reserve_for: u64) -> Result<(), Error> {
        self.held.retain(|s| !s.is_reclaimed());
        let size = self.segment_size.max(reserve_for.next_multiple_of(4096));
        let mut rescued = Vec::new();
        let mut evicted = Vec::new();
        while self.needs_room(size) {
            match self.evict_oldest(Some(&mut rescued)) {
                Some(seg) => evicted.push(seg),
                None => break,
            }
        }
        let created = if self.needs_room(size) {
            // Nothing left to evict, and evicted segments still being read hold the space.
            Err(Error::SpaceHeld)
        } else {
            let id = SegmentId(self.next_segment_id);
            self.next_segment_id += 1;
            Segment::create(&self.dir, id, size).map(Arc::new)
        };
        let seg = match created {
            Ok(seg) => seg,
            Err(e) => {
                // Not one more segment is evicted for a full device (store: Disk full).
                self.drop_rescued(rescued);
                self.condemn(evicted);
                self.publish_sizes();
                return Err(e);
            }
        };
        self.segment_bytes += seg.len();
        self.segments.insert(seg.id(), Arc::clone(&seg));
        self.active = Some(Active { seg, pos: 0 });
        self.reinsert(rescued, reserve_for);
        self.condemn(evicted);
        self.publish_sizes();
        Ok(())
    }

    /// Would a new segment of `size` bytes break the budget (see the module doc)?
    fn needs_room(&self, size: u64) -> bool {
        let live = self.live_bytes();
        live + size > self.capacity || live + self.held_bytes() > self.capacity
    }

    /// Evict the oldest segment (unlinked, not yet condemned: see [`Self::condemn`]).
    /// Hot entries go to `rescue` (if given) and stay indexed until reinserted or
    /// dropped; the rest are removed now. `None` if none is left.
    pub(super) fn evict_oldest(
        &mut self,
        rescue: Option<&mut Vec<Arc<Entry>>>,
    ) -> Option<Arc<Segment>> {
        let (id, seg) = self.segments.pop_first()?;
        if let Err(e) = seg.unlink() {
            tracing::warn!(error = %e, "evicted cache segment not removed");
        }
        self.segment_bytes -= seg.len();
        self.pending.retain(|(s, _)| *s != id);
        self.dirty.remove(&id);
        if self.active.as_ref().is_some_and(|a| a.seg.id() == id) {
            self.active = None;
        }
        let index = &self.reader.index;
        let mut dropped = 0u64;
        let mut rescue = rescue;
        for e in index.entries_in(id) {
            match rescue.as_deref_mut() {
                Some(r) if e.hit.load(Ordering::Relaxed) => r.push(e),
                _ => dropped += u64::from(index.remove_if_same(&e)),
            }
        }
        self.reader.count_evicted(dropped);
        self.reader.count_segment_evicted();
        tracing::debug!(segment = %id, dropped, "cache segment evicted");
        Some(seg)
    }

    /// Condemn evicted segments that no index entry points into any more: their blocks
    /// are freed now, or (held) when the last pin on them goes.
    fn condemn(&mut self, evicted: Vec<Arc<Segment>>) {
        for seg in evicted {
            seg.condemn();
            if !seg.is_reclaimed() {
                self.held.push(seg);
            }
        }
    }

    fn drop_rescued(&self, rescued: Vec<Arc<Entry>>) {
        let n = rescued
            .iter()
            .filter(|e| self.reader.index.remove_if_same(e))
            .count();
        self.reader.count_evicted(n as u64);
    }

    /// Copy rescued entries into the active segment (oldest first) while they fit.
    fn reinsert(&mut self, mut rescued: Vec<Arc<Entry>>, reserve_for: u64) {
        rescued.sort_by_key(|e| (e.segment_id(), e.offset));
        let mut meta = Vec::new();
        for e in rescued {
            meta.clear();
            if super::format::encode_meta(&e.meta, &mut meta).is_err() {
                self.drop_rescued(vec![e]);
                continue;
            }
            // Copied records keep large bodies page-aligned too (format.rs: padding).
            if let Some(a) = &self.active {
                let before_body = HEADER_LEN + e.key.len() + meta.len();
                let pad = super::format::body_padding(a.pos, before_body, e.body_len, meta.len());
                meta.resize(meta.len() + pad, 0);
            }
            let total = (HEADER_LEN + e.key.len() + meta.len()) as u64 + e.body_len;
            let fits = self.active.as_ref().is_some_and(|a| {
                a.pos
                    .checked_add(total)
                    .and_then(|x| x.checked_add(reserve_for))
                    .is_some_and(|end| end <= a.seg.len())
            });
            if !fits {
                self.drop_rescued(vec![e]);
                continue;
            }
            let Some((seg, off)) = self.try_reserve(total) else {
                self.drop_rescued(vec![e]);
                continue;
            };
            let loc = Location {
                offset: off,
                record_meta_len: meta.len() as u16,
                body_len: e.body_len,
                body_crc: e.body_crc,
                seq: e.seq,
            };
            let mut head = live_header(&e.key, &meta, &loc).to_vec();
            head.extend_from_slice(e.key.as_bytes());
            head.extend_from_slice(&meta);
            // Body first, read back with `pread` and its CRC re-checked on the way;
            // header last: a crash in between leaves a zero header.
            let body_at = off + head.len() as u64;
            let copied = crc_of(&e.segment, e.body_offset(), e.body_len, |at, chunk| {
                seg.write_at(body_at + at, chunk)
            });
            let outcome = match copied {
                Ok(crc) if crc == e.body_crc => seg.write_at(off, &head).map(|()| true),
                Ok(_) => Ok(false),
                Err(err) => Err(err),
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => {
                    self.kill_reservation(&seg, off, total);
                    if self.reader.index.remove_if_same(&e) {
                        self.reader.count_corrupt(1);
                    }
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "second-chance copy failed");
                    self.kill_reservation(&seg, off, total);
                    self.drop_rescued(vec![e]);
                    continue;
                }
            }
            self.dirty.insert(seg.id());
            let new = Entry::new(Arc::clone(&e.key), seg, loc, Arc::clone(&e.meta), true);
            if new.is_some_and(|n| self.reader.index.replace_if_same(&e, Arc::new(n))) {
                self.reader.count_reinserted();
            }
        }
    }

    /// A reservation that will not hold a record gets a dead header, so replay steps
    /// over it; if even that fails, the segment is sealed (replay stops at a zero
    /// header, so nothing may follow it).
    fn kill_reservation(&mut self, seg: &Segment, off: u64, total: u64) {
        self.dirty.insert(seg.id());
        if seg.write_at(off, &dead_header(total)).is_err()
            && self.active.as_ref().is_some_and(|a| a.seg.id() == seg.id())
        {
            self.active = None;
        }
    }

    /// Evict oldest segments (no second chance) while over capacity, keeping the active
    /// segment (used after open and after a checkpoint grew).
    pub(super) fn shrink_to_capacity(&mut self) -> Result<(), Error> {
        self.held.retain(|s| !s.is_reclaimed());
        while self.bytes_on_disk() > self.capacity {
            let oldest_is_active = match (self.segments.first_key_value(), &self.active) {
                (Some((id, _)), Some(a)) => *id == a.seg.id(),
                (None, _) => true,
                _ => false,
            };
            if oldest_is_active {
                break;
            }
            match self.evict_oldest(None) {
                Some(seg) => self.condemn(vec![seg]),
                None => break,
            }
        }
        self.publish_sizes();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::testutil::*;

    const CAP: u64 = 640 * 1024; // ten 64 KiB segments, checkpoints included

    #[test]
    fn stays_within_capacity_and_second_chance_keeps_hot_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        let r = s.reader();
        put(&mut s, "/hot", &body(999, 5000), "hot");
        let mut written = 0u64;
        let mut i = 0u64;
        while written < 3 * CAP {
            let len = 1000 + (i % 7) as usize * 700;
            put(&mut s, &format!("/cold/{i}"), &body(i, len), "c");
            written += len as u64;
            i += 1;
            if i % 10 == 0 {
                assert_eq!(get(&r, "/hot").unwrap(), body(999, 5000));
            }
            if i % 50 == 0 {
                s.checkpoint().unwrap();
            }
            let st = s.stats();
            assert!(st.bytes_on_disk <= CAP, "{st:?}");
        }
        let st = s.stats();
        assert!(
            st.segments_evicted >= 10 && st.evictions > 100 && st.reinserted >= 2,
            "{st:?}"
        );
        assert!(r.lookup("/cold/0").is_none(), "oldest cold object evicted");
        assert_eq!(
            get(&r, &format!("/cold/{}", i - 1)).unwrap().len(),
            1000 + ((i - 1) % 7) as usize * 700
        );
        // The on-disk size matches what stats say.
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, st.bytes_on_disk);
        // Restart: still within capacity, hot key still there (moved copies replay).
        drop(s);
        let s = open(dir.path(), CAP);
        assert!(s.stats().bytes_on_disk <= CAP);
        assert_eq!(get(&s.reader(), "/hot").unwrap(), body(999, 5000));
    }

    #[test]
    fn cold_key_is_evicted_and_only_a_pinned_reader_keeps_its_bytes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        let r = s.reader();
        put(&mut s, "/old", &body(1, 4000), "o");
        put(&mut s, "/cold", &body(2, 4000), "c");
        let hit = r.lookup("/old").unwrap();
        assert!(hit.verify());
        let cold = r.lookup("/cold").unwrap();
        // A send of "/old" in flight pins its segment.
        let pin = hit.segment.pin().unwrap();
        let fd = std::fs::File::open(hit.segment.path()).unwrap();
        let path = hit.segment.path().to_path_buf();
        // Looked up once → one second chance; then it must go on the next lap.
        for i in 0..400u64 {
            put(&mut s, &format!("/f/{i}"), &body(i, 4000), "f");
        }
        assert!(r.lookup("/old").is_none());
        assert!(!path.exists(), "evicted segment file unlinked");
        assert!(s.stats().reinserted >= 1);
        // Pinned: the bytes stay (and count as held space) until the send is done.
        let mut got = vec![0u8; 4000];
        hit.segment
            .read_at(hit.body_offset as u64, &mut got)
            .unwrap();
        assert_eq!(got, body(1, 4000));
        assert!(fd.metadata().unwrap().blocks() * 512 >= SEG);
        assert!(
            hit.segment.pin().is_none(),
            "no new reader of an evicted segment"
        );
        assert!(s.stats().bytes_on_disk <= CAP + SEG, "{:?}", s.stats());
        drop(pin);
        // The last pin gave the blocks back at once, with readers' Arcs still around.
        assert!(
            fd.metadata().unwrap().blocks() * 512 < SEG,
            "{} bytes still allocated",
            fd.metadata().unwrap().blocks() * 512
        );
        put(&mut s, "/g", &body(7, 4000), "g");
        s.checkpoint().unwrap();
        assert!(s.stats().bytes_on_disk <= CAP, "{:?}", s.stats());
        // A stale, unpinned hit never yields the zeros as a body.
        assert!(!cold.verify() || cold.read_body().is_err());
    }

    #[test]
    fn capacity_shrink_on_reopen_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), CAP);
        for i in 0..100u64 {
            put(&mut s, &format!("/k/{i}"), &body(i, 4000), "k");
        }
        drop(s);
        let s = open(dir.path(), CAP / 2);
        let st = s.stats();
        assert!(st.bytes_on_disk <= CAP / 2, "{st:?}");
        assert!(s.reader().lookup("/k/0").is_none());
        assert_eq!(get(&s.reader(), "/k/99").unwrap(), body(99, 4000));
    }
}

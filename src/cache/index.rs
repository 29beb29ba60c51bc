//! The in-memory index: key → [`Entry`] (record location, lengths, CRC, meta), in a
//! lock-free `papaya::HashMap` so other workers look up without any mutex.
//!
//! Invariants:
//! - Only the shard owner inserts/replaces; any thread may remove an entry that failed
//!   verification, and only if the map still holds that very entry (`Arc::ptr_eq`).
//! - Entries are immutable except their two flags (`verified`, `hit`); a refresh or a
//!   move installs a new `Arc<Entry>`.
//! - An entry always describes a record that lies inside its segment's mapping
//!   ([`Entry::new`] refuses anything else), so reading a body never goes out of bounds.
//! - The map is keyed by the FULL key; hash collisions only cost a comparison. Each
//!   record also stores its key, and [`Entry::verify`] compares it.
//! - Records are read back with `pread` ([`read_head`], [`Entry::verify`]), never
//!   through the segment mapping (see [`super::segment`]: a shrunk file must not SIGBUS).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use super::error::Error;
use super::format::ObjectMeta;
use super::format::{self, FormatError, RecordHeader, RecordKind, HEADER_LEN};
use super::segment::{Segment, SegmentId};

/// Bodies are read back (to check their CRC, or to copy them) this much at a time.
pub const READ_CHUNK: usize = 256 * 1024;

/// Why a record could not be read back.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are there but do not form a valid record.
    Format(FormatError),
    /// The bytes could not be read (the file shrank, or an I/O error).
    Io(Error),
}

/// Reads the header, key and meta of the record at `offset` with `pread`, checks that
/// every length lies inside the segment and verifies the header CRC. `buf` receives
/// key ‖ meta (split at `header.key_len`). The body is not read.
pub fn read_head(seg: &Segment, offset: u64, buf: &mut Vec<u8>) -> Result<RecordHeader, ReadError> {
    let room = seg
        .len()
        .checked_sub(offset)
        .filter(|&r| r >= HEADER_LEN as u64)
        .ok_or(ReadError::Format(FormatError::Truncated))?;
    let mut head = [0u8; HEADER_LEN];
    seg.read_at(offset, &mut head).map_err(ReadError::Io)?;
    let (h, stored) = RecordHeader::decode(&head).map_err(ReadError::Format)?;
    if h.record_len() > room {
        return Err(ReadError::Format(FormatError::Truncated));
    }
    let key_len = usize::from(h.key_len);
    buf.clear();
    buf.resize(key_len + usize::from(h.meta_len), 0);
    seg.read_at(offset + HEADER_LEN as u64, buf)
        .map_err(ReadError::Io)?;
    let (key, meta) = buf.split_at(key_len);
    if format::header_crc(&head[..36], key, meta) != stored {
        return Err(ReadError::Format(FormatError::ChecksumMismatch));
    }
    Ok(h)
}

/// CRC-32 of `len` bytes of `seg` from `offset`, read with `pread` in chunks; each chunk
/// is also handed to `each` (at its offset from `offset`).
pub fn crc_of(
    seg: &Segment,
    offset: u64,
    len: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<u32, Error> {
    let mut buf = vec![0u8; (len as usize).min(READ_CHUNK)];
    let mut crc = crc32fast::Hasher::new();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        seg.read_at(offset + done, &mut buf[..n])?;
        crc.update(&buf[..n]);
        each(done, &buf[..n])?;
        done += n as u64;
    }
    Ok(crc.finalize())
}

/// Where and what a committed record is.
#[derive(Debug)]
pub struct Entry {
    pub key: Arc<str>,
    pub segment: Arc<Segment>,
    /// Record start in the segment.
    pub offset: u64,
    /// Meta length of the record as written (locates the body).
    pub record_meta_len: u16,
    pub body_len: u64,
    pub body_crc: u32,
    /// Commit order; newer wins during replay.
    pub seq: u64,
    /// Current meta (may be newer than the record's after a refresh).
    pub meta: Arc<ObjectMeta>,
    /// Whole record checked (header CRC, key, body CRC) in this process.
    pub verified: AtomicBool,
    /// Looked up since written (second chance at eviction).
    pub hit: AtomicBool,
}

/// Facts needed to build an [`Entry`].
#[derive(Debug, Clone)]
pub struct Location {
    pub offset: u64,
    pub record_meta_len: u16,
    pub body_len: u64,
    pub body_crc: u32,
    pub seq: u64,
}

impl Entry {
    /// Build an entry; `None` if the described record does not lie inside the segment.
    pub fn new(
        key: Arc<str>,
        segment: Arc<Segment>,
        loc: Location,
        meta: Arc<ObjectMeta>,
        verified: bool,
    ) -> Option<Entry> {
        let key_len = u16::try_from(key.len()).ok()?;
        let header = format::RecordHeader {
            kind: RecordKind::Object,
            key_len,
            meta_len: loc.record_meta_len,
            body_crc: loc.body_crc,
            body_len: loc.body_len,
            seq: loc.seq,
        };
        let end = loc.offset.checked_add(header.record_len())?;
        if end > segment.len() || header.body_len > usize::MAX as u64 {
            return None;
        }
        Some(Entry {
            key,
            segment,
            offset: loc.offset,
            record_meta_len: loc.record_meta_len,
            body_len: loc.body_len,
            body_crc: loc.body_crc,
            seq: loc.seq,
            meta,
            verified: AtomicBool::new(verified),
            hit: AtomicBool::new(false),
        })
    }

    pub fn segment_id(&self) -> SegmentId {
        self.segment.id()
    }

    /// Offset of the body in the segment (in bounds: checked by [`Entry::new`]).
    pub fn body_offset(&self) -> u64 {
        self.offset + (HEADER_LEN + self.key.len() + usize::from(self.record_meta_len)) as u64
    }

    /// Total record length.
    pub fn record_len(&self) -> u64 {
        self.body_offset() - self.offset + self.body_len
    }

    pub fn location(&self) -> Location {
        Location {
            offset: self.offset,
            record_meta_len: self.record_meta_len,
            body_len: self.body_len,
            body_crc: self.body_crc,
            seq: self.seq,
        }
    }

    /// Full check unless already done: header CRC, kind, stored key == this key,
    /// lengths, body CRC == the index's CRC, all read with `pread`. Caches a success.
    /// A failure may mean the segment shrank: see [`Segment::intact_len`].
    pub fn verify(&self) -> bool {
        if self.verified.load(Ordering::Acquire) {
            return true;
        }
        let ok = self.check().unwrap_or(false);
        if ok {
            self.verified.store(true, Ordering::Release);
        }
        ok
    }

    fn check(&self) -> Result<bool, ReadError> {
        let mut km = Vec::new();
        let h = read_head(&self.segment, self.offset, &mut km)?;
        let same = h.kind == RecordKind::Object
            && &km[..usize::from(h.key_len)] == self.key.as_bytes()
            && h.meta_len == self.record_meta_len
            && h.body_len == self.body_len
            && h.body_crc == self.body_crc;
        if !same {
            return Ok(false);
        }
        let crc = crc_of(&self.segment, self.body_offset(), self.body_len, |_, _| {
            Ok(())
        })
        .map_err(ReadError::Io)?;
        Ok(crc == self.body_crc)
    }

    /// Same record (same place in the same segment)?
    pub fn same_record(&self, other: &Entry) -> bool {
        self.segment.id() == other.segment.id() && self.offset == other.offset
    }
}

/// Default hasher for keys.
pub type DefaultHasher = foldhash::fast::RandomState;

/// key → entry, shared lock-free.
pub struct Index<S = DefaultHasher> {
    map: papaya::HashMap<Arc<str>, Arc<Entry>, S>,
    /// Sum of the indexed entries' `body_len`, kept by every mutation below (for the
    /// live-object-bytes metric). Signed: a remove on another thread may be counted
    /// before the insert it undoes; [`Index::body_bytes`] reads it clamped.
    body_bytes: AtomicI64,
}

impl Default for Index<DefaultHasher> {
    fn default() -> Self {
        Index::with_hasher(DefaultHasher::default())
    }
}

impl<S: BuildHasher> Index<S> {
    pub fn with_hasher(hasher: S) -> Self {
        Index {
            map: papaya::HashMap::builder()
                .hasher(hasher)
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            body_bytes: AtomicI64::new(0),
        }
    }

    /// Body bytes of the indexed objects (what clients would get, not the disk space).
    pub fn body_bytes(&self) -> u64 {
        u64::try_from(self.body_bytes.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Counts `added` in and `removed` out of [`Index::body_bytes`].
    fn account(&self, added: Option<&Entry>, removed: Option<&Entry>) {
        let len =
            |e: Option<&Entry>| e.map_or(0, |e| i64::try_from(e.body_len).unwrap_or(i64::MAX));
        let delta = len(added) - len(removed);
        if delta != 0 {
            self.body_bytes.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.map.pin().get(key).cloned()
    }

    /// Insert or replace (owner only). Returns the replaced entry.
    pub fn insert(&self, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        let old = self
            .map
            .pin()
            .insert(Arc::clone(&entry.key), Arc::clone(&entry))
            .cloned();
        self.account(Some(&entry), old.as_deref());
        old
    }

    /// Replay rule: insert unless the present entry is newer (or is this very record,
    /// which keeps the present — possibly refreshed — meta).
    pub fn insert_if_newer(&self, entry: Arc<Entry>) -> bool {
        let guard = self.map.guard();
        let r = self.map.compute(
            Arc::clone(&entry.key),
            |cur| match cur {
                Some((_, old)) if old.seq > entry.seq || old.same_record(&entry) => {
                    papaya::Operation::Abort(())
                }
                _ => papaya::Operation::Insert(Arc::clone(&entry)),
            },
            &guard,
        );
        self.account_compute(&r);
        !matches!(r, papaya::Compute::Aborted(()))
    }

    /// Accounts one `compute` that inserted or replaced.
    fn account_compute<T>(&self, r: &papaya::Compute<'_, Arc<str>, Arc<Entry>, T>) {
        match r {
            papaya::Compute::Inserted(_, new) => self.account(Some(new), None),
            papaya::Compute::Updated { old, new } => self.account(Some(new.1), Some(old.1)),
            papaya::Compute::Removed(_, old) => self.account(None, Some(old)),
            papaya::Compute::Aborted(_) => {}
        }
    }

    /// Replace `old` with `new` only if `old` is still the entry for its key.
    pub fn replace_if_same(&self, old: &Arc<Entry>, new: Arc<Entry>) -> bool {
        let guard = self.map.guard();
        let r = self.map.compute(
            Arc::clone(&old.key),
            |cur| match cur {
                Some((_, e)) if Arc::ptr_eq(e, old) => papaya::Operation::Insert(Arc::clone(&new)),
                _ => papaya::Operation::Abort(()),
            },
            &guard,
        );
        self.account_compute(&r);
        !matches!(r, papaya::Compute::Aborted(()))
    }

    /// Remove `entry` only if it is still the entry for its key (any thread).
    pub fn remove_if_same(&self, entry: &Arc<Entry>) -> bool {
        self.remove_matching(&entry.key, |e| Arc::ptr_eq(e, entry))
    }

    pub fn remove(&self, key: &str) -> Option<Arc<Entry>> {
        let old = self.map.pin().remove(key).cloned();
        self.account(None, old.as_deref());
        old
    }

    /// Remove `key` if its entry is older than `seq` (tombstone replay).
    pub fn remove_older(&self, key: &str, seq: u64) -> bool {
        self.remove_matching(key, |e| e.seq < seq)
    }

    /// Remove `key` if its entry lives in segment `id` (any thread).
    pub fn remove_in_segment(&self, key: &str, id: SegmentId) -> bool {
        self.remove_matching(key, |e| e.segment_id() == id)
    }

    /// Remove `key` if `pred` holds for its entry; whether it was removed.
    fn remove_matching(&self, key: &str, mut pred: impl FnMut(&Arc<Entry>) -> bool) -> bool {
        match self.map.pin().remove_if(key, |_, e| pred(e)) {
            Ok(Some((_, old))) => {
                self.account(None, Some(old));
                true
            }
            _ => false,
        }
    }

    /// Remove every entry matching `pred`; returns how many.
    pub fn remove_where(&self, mut pred: impl FnMut(&Entry) -> bool) -> usize {
        let victims: Vec<Arc<Entry>> = self
            .map
            .pin()
            .values()
            .filter(|e| pred(e))
            .cloned()
            .collect();
        victims.iter().filter(|e| self.remove_if_same(e)).count()
    }

    /// A snapshot of all entries (order unspecified).
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.map.pin().values().cloned().collect()
    }

    /// Entries whose record lives in segment `id`.
    pub fn entries_in(&self, id: SegmentId) -> Vec<Arc<Entry>> {
        self.map
            .pin()
            .values()
            .filter(|e| e.segment_id() == id)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key hashes to the same value: all keys share one probe sequence. (papaya
    /// bounds probe length by 5·log2(capacity), so a handful of full collisions is the
    /// most a table can hold; real keys use a randomly seeded hasher.)
    #[derive(Clone, Default)]
    struct SameBucket;
    struct ConstHasher;
    impl std::hash::Hasher for ConstHasher {
        fn finish(&self) -> u64 {
            42
        }
        fn write(&mut self, _: &[u8]) {}
    }
    impl BuildHasher for SameBucket {
        type Hasher = ConstHasher;
        fn build_hasher(&self) -> ConstHasher {
            ConstHasher
        }
    }

    fn seg(dir: &std::path::Path) -> Arc<Segment> {
        Arc::new(Segment::create(dir, SegmentId(1), 65536).unwrap())
    }

    fn entry(seg: &Arc<Segment>, key: &str, offset: u64, seq: u64) -> Arc<Entry> {
        let loc = Location {
            offset,
            record_meta_len: 22,
            body_len: 10,
            body_crc: 0,
            seq,
        };
        Arc::new(Entry::new(key.into(), seg.clone(), loc, Arc::default(), false).unwrap())
    }

    #[test]
    fn same_bucket_keys_never_confused() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(dir.path());
        let idx = Index::with_hasher(SameBucket);
        for i in 0..16u64 {
            idx.insert(entry(&s, &format!("/k/{i}"), i * 100, i));
        }
        for i in 0..16u64 {
            let e = idx.get(&format!("/k/{i}")).unwrap();
            assert_eq!(&*e.key, format!("/k/{i}"));
            assert_eq!(e.offset, i * 100);
        }
        assert!(idx.get("/k/16").is_none());
        assert!(idx.remove("/k/3").is_some());
        assert!(idx.get("/k/3").is_none());
        assert_eq!(idx.get("/k/4").unwrap().offset, 400);
        assert!(idx.get("/k/").is_none());
    }

    /// `body_bytes` follows every way in and out of the map (each test entry has 10).
    #[test]
    fn body_bytes_follow_every_mutation() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(dir.path());
        let idx = Index::default();
        idx.insert(entry(&s, "/a", 0, 1));
        idx.insert(entry(&s, "/a", 100, 2)); // replaced: still one object
        assert_eq!(idx.body_bytes(), 10);
        assert!(idx.insert_if_newer(entry(&s, "/b", 200, 3)));
        assert!(!idx.insert_if_newer(entry(&s, "/b", 300, 1)));
        assert!(idx.insert_if_newer(entry(&s, "/c", 400, 4)));
        assert_eq!(idx.body_bytes(), 30);
        let c = idx.get("/c").unwrap();
        assert!(idx.replace_if_same(&c, entry(&s, "/c", 500, 5)));
        assert_eq!(idx.body_bytes(), 30);
        assert!(idx.remove_older("/b", 9));
        assert!(idx.remove_in_segment("/c", SegmentId(1)));
        assert_eq!(idx.body_bytes(), 10);
        assert!(idx.remove("/a").is_some());
        assert!(idx.remove("/a").is_none());
        assert_eq!(idx.body_bytes(), 0);
        for i in 0..4 {
            idx.insert(entry(&s, &format!("/k/{i}"), i * 100, i));
        }
        assert_eq!(idx.remove_where(|e| e.offset < 200), 2);
        assert_eq!(idx.body_bytes(), 20);
    }

    #[test]
    fn entry_bounds_and_replay_rules() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(dir.path());
        let loc = |offset, body_len| Location {
            offset,
            record_meta_len: 22,
            body_len,
            body_crc: 0,
            seq: 1,
        };
        assert!(Entry::new("k".into(), s.clone(), loc(0, 65536), Arc::default(), false).is_none());
        assert!(Entry::new(
            "k".into(),
            s.clone(),
            loc(u64::MAX - 5, 1),
            Arc::default(),
            false
        )
        .is_none());
        assert!(Entry::new(
            "k".into(),
            s.clone(),
            loc(0, u64::MAX),
            Arc::default(),
            false
        )
        .is_none());
        let idx = Index::default();
        let newer = entry(&s, "k", 1000, 5);
        assert!(idx.insert_if_newer(newer.clone()));
        assert!(!idx.insert_if_newer(entry(&s, "k", 0, 4)));
        assert!(idx.insert_if_newer(entry(&s, "k", 2000, 5)));
        assert!(!idx.remove_if_same(&newer));
        assert!(!idx.remove_older("k", 5));
        assert!(idx.remove_older("k", 6));
        assert!(idx.is_empty());
    }

    #[test]
    fn unwritten_record_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(dir.path());
        let e = entry(&s, "k", 0, 1);
        assert!(!e.verify());
        assert!(!e.verified.load(Ordering::Relaxed));
    }
}

//! STUB — the public API the rest of chartcache uses. To be implemented.

use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cache i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("object of {0} bytes does not fit in a segment")]
    TooLarge(u64),
    #[error("no space left on the cache device")]
    NoSpace,
    #[error("record length mismatch: declared {declared}, written {written}")]
    LengthMismatch { declared: u64, written: u64 },
}

/// What is stored next to a body and served with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    pub status: u16,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_type: Option<String>,
    /// Unix seconds when the record was written (or last revalidated).
    pub stored_at: u64,
    /// Freshness lifetime in seconds.
    pub ttl_secs: u32,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This shard's own directory (created if missing).
    pub dir: PathBuf,
    pub shard: u32,
    /// Max bytes on disk for this shard (segments + checkpoints).
    pub capacity: u64,
}

/// One segment file, mapped read-only. Kept alive by `Arc` while anyone reads it.
pub struct Segment {
    _private: (),
}

impl Segment {
    /// The whole mapping (segment size bytes).
    pub fn as_slice(&self) -> &[u8] {
        todo!()
    }
}

/// A lookup result: where the body lives. Cheap to clone.
#[derive(Clone)]
pub struct Hit {
    pub segment: Arc<Segment>,
    pub body_offset: usize,
    pub body_len: usize,
    pub meta: Arc<ObjectMeta>,
}

impl Hit {
    pub fn body(&self) -> &[u8] {
        &self.segment.as_slice()[self.body_offset..self.body_offset + self.body_len]
    }
    /// Full integrity check (header CRC, key, body CRC) unless this record was
    /// already verified in this process. False → the caller must not serve it.
    pub fn verify(&self) -> bool {
        todo!()
    }
}

pub struct ShardStore {
    _private: (),
}

pub struct ShardReader {
    _private: (),
}

pub struct PendingRecord {
    pub segment: Arc<Segment>,
    pub body_offset: usize,
    pub body_len: u64,
}

impl ShardStore {
    pub fn open(_cfg: StoreConfig) -> Result<ShardStore, Error> {
        todo!()
    }
    pub fn reader(&self) -> Arc<ShardReader> {
        todo!()
    }
    pub fn begin(
        &mut self,
        _key: &str,
        _meta: &ObjectMeta,
        _body_len: u64,
    ) -> Result<PendingRecord, Error> {
        todo!()
    }
    pub fn append(&mut self, _rec: &mut PendingRecord, _data: &[u8]) -> Result<(), Error> {
        todo!()
    }
    pub fn commit(&mut self, _rec: PendingRecord) -> Result<(), Error> {
        todo!()
    }
    pub fn abort(&mut self, _rec: PendingRecord) {
        todo!()
    }
    pub fn remove(&mut self, _key: &str) -> bool {
        todo!()
    }
    pub fn checkpoint(&mut self) -> Result<(), Error> {
        todo!()
    }
}

impl ShardReader {
    pub fn lookup(&self, _key: &str) -> Option<Hit> {
        todo!()
    }
}
impl ShardStore {
    pub fn refresh(&mut self, _key: &str, _stored_at: u64, _ttl: u32) -> bool {
        todo!()
    }
}
impl ShardReader {
    pub fn drop_corrupt(&self, _key: &str, _hit: &Hit) -> bool {
        todo!()
    }
}
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub bytes_on_disk: u64,
    pub objects: u64,
    pub evictions: u64,
    pub corrupt_dropped: u64,
    pub segments: u64,
}
impl ShardStore {
    pub fn remove_prefix(&mut self, _p: &str) -> usize {
        todo!()
    }
    pub fn stats(&self) -> StoreStats {
        todo!()
    }
}

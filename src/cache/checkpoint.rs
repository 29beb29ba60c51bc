//! Index checkpoints: two copies, `index.0` and `index.1`, in the shard directory.
//!
//! Invariants:
//! - A new checkpoint is always written over the OLDER (or invalid) copy, in one
//!   `pwrite` + `set_len` + `fdatasync`; a crash while writing leaves the other copy
//!   intact, so at least one valid copy survives (once one was ever written).
//! - A copy is valid when its header CRC checks and its entry frames add up exactly to
//!   the declared count and size. Entries inside a valid copy whose own CRC fails are
//!   skipped (their objects become misses). Entry CRCs are salted with the checkpoint
//!   sequence, so stale frames of the previous generation in the same file never pass.
//! - The header's log position says up to where the log is covered: recovery replays
//!   from there (see [`super::recover`]).
//!
//! Plain files (not mmap) are used: a checkpoint is read once at startup and written
//! in one go.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::Error;
use super::format::{self, CheckpointEntry, CheckpointHeader};

/// File name of copy `i` (0 or 1).
pub fn file_name(copy: usize) -> &'static str {
    if copy == 0 {
        "index.0"
    } else {
        "index.1"
    }
}

pub fn path(dir: &Path, copy: usize) -> PathBuf {
    dir.join(file_name(copy))
}

/// Which copy to write next and how big the copies are on disk.
#[derive(Debug, Clone, Default)]
pub struct CheckpointState {
    /// Sequence of the newest valid checkpoint (0: none).
    pub last_seq: u64,
    /// Copy to overwrite next (the older or invalid one).
    pub next_copy: usize,
    /// Bytes on disk of each copy.
    pub sizes: [u64; 2],
}

impl CheckpointState {
    pub fn bytes_on_disk(&self) -> u64 {
        self.sizes[0] + self.sizes[1]
    }
}

/// A valid checkpoint copy, read into memory.
pub struct Snapshot {
    pub header: CheckpointHeader,
    pub copy: usize,
    buf: Vec<u8>,
}

impl Snapshot {
    /// Validate `buf` as a checkpoint copy.
    fn parse(buf: Vec<u8>, copy: usize) -> Result<Snapshot, format::FormatError> {
        let header = CheckpointHeader::decode(&buf)?;
        let body = &buf[CheckpointHeader::serialized_len()..];
        if body.len() as u64 != header.entries_len {
            return Err(format::FormatError::Truncated);
        }
        let (mut pos, mut count) = (0usize, 0u64);
        while pos < body.len() {
            let (_, n) = format::decode_checkpoint_entry(&body[pos..], header.ckpt_seq)?;
            pos += n;
            count += 1;
        }
        if count != header.entry_count {
            return Err(format::FormatError::Malformed("entry count"));
        }
        Ok(Snapshot { header, copy, buf })
    }

    /// The entries that pass their CRC, and how many were skipped.
    pub fn entries(&self) -> (Vec<CheckpointEntry<'_>>, usize) {
        let body = &self.buf[CheckpointHeader::serialized_len()..];
        let mut out = Vec::with_capacity(self.header.entry_count as usize);
        let (mut pos, mut skipped) = (0usize, 0usize);
        // Framing was validated in `parse`.
        while let Ok((e, n)) = format::decode_checkpoint_entry(&body[pos..], self.header.ckpt_seq) {
            match e {
                Some(e) => out.push(e),
                None => skipped += 1,
            }
            pos += n;
            if pos >= body.len() {
                break;
            }
        }
        (out, skipped)
    }
}

/// Read both copies; return the newest valid one and the write state.
pub fn load(dir: &Path) -> Result<(Option<Snapshot>, CheckpointState), Error> {
    let mut state = CheckpointState::default();
    let mut valid: [Option<Snapshot>; 2] = [None, None];
    for (copy, slot) in valid.iter_mut().enumerate() {
        let p = path(dir, copy);
        let buf = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_at(&p, "read checkpoint", e)),
        };
        state.sizes[copy] = buf.len() as u64;
        match Snapshot::parse(buf, copy) {
            Ok(s) => *slot = Some(s),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "invalid cache checkpoint ignored")
            }
        }
    }
    let [a, b] = valid;
    let newest = match (a, b) {
        (Some(a), Some(b)) => Some(if b.header.ckpt_seq > a.header.ckpt_seq {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    };
    match &newest {
        Some(s) => {
            state.last_seq = s.header.ckpt_seq;
            state.next_copy = 1 - s.copy;
        }
        None => state.next_copy = 0,
    }
    Ok((newest, state))
}

/// Write a checkpoint (header fields except `ckpt_seq`/lengths are the caller's) with
/// pre-encoded `entries` (encoded with `state.last_seq + 1` as salt) over the older copy.
pub fn write(
    dir: &Path,
    state: &mut CheckpointState,
    mut header: CheckpointHeader,
    entry_count: u64,
    entries: &[u8],
) -> Result<(), Error> {
    header.ckpt_seq = state.last_seq + 1;
    header.entry_count = entry_count;
    header.entries_len = entries.len() as u64;
    let copy = state.next_copy;
    let p = path(dir, copy);
    let existed = p.exists();
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| Error::io_at(&p, "open checkpoint", e))?;
    let mut buf = Vec::with_capacity(CheckpointHeader::serialized_len() + entries.len());
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(entries);
    let no_space = |e: std::io::Error, what| Error::space_or_io(&p, what, e);
    file.write_all_at(&buf, 0)
        .map_err(|e| no_space(e, "write checkpoint"))?;
    file.set_len(buf.len() as u64)
        .map_err(|e| Error::io_at(&p, "truncate checkpoint", e))?;
    file.sync_data()
        .map_err(|e| no_space(e, "fsync checkpoint"))?;
    if !existed {
        // Make the new directory entry durable too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    state.sizes[copy] = buf.len() as u64;
    state.last_seq = header.ckpt_seq;
    state.next_copy = 1 - copy;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(salt: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let key = format!("k{i}");
            CheckpointEntry {
                segment: 1,
                offset: i * 100,
                body_len: 1,
                seq: i,
                body_crc: 0,
                record_meta_len: 22,
                key: key.as_bytes(),
                meta: b"",
            }
            .encode(salt, &mut out)
            .unwrap();
        }
        out
    }

    #[test]
    fn alternates_copies_and_survives_damage_to_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (none, mut st) = load(dir.path()).unwrap();
        assert!(none.is_none());
        let h = CheckpointHeader::default();
        write(dir.path(), &mut st, h, 3, &entries(1, 3)).unwrap();
        write(dir.path(), &mut st, h, 5, &entries(2, 5)).unwrap();
        let (s, st2) = load(dir.path()).unwrap();
        let s = s.unwrap();
        assert_eq!((s.header.ckpt_seq, s.copy, st2.next_copy), (2, 1, 0));
        assert_eq!(s.entries(), (s.entries().0, 0));
        assert_eq!(s.entries().0.len(), 5);
        // Damage the newest copy's header: the older copy is used.
        let p = path(dir.path(), 1);
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let (s, st3) = load(dir.path()).unwrap();
        let s = s.unwrap();
        assert_eq!((s.header.ckpt_seq, s.entries().0.len()), (1, 3));
        assert_eq!(st3.next_copy, 1);
    }

    #[test]
    fn entry_crc_failure_skips_entry_but_truncation_invalidates_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut st) = load(dir.path()).unwrap();
        write(
            dir.path(),
            &mut st,
            CheckpointHeader::default(),
            4,
            &entries(1, 4),
        )
        .unwrap();
        let p = path(dir.path(), 0);
        let good = std::fs::read(&p).unwrap();
        let mut b = good.clone();
        b[CheckpointHeader::serialized_len() + 20] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let (s, _) = load(dir.path()).unwrap();
        let s = s.unwrap();
        let (ents, skipped) = s.entries();
        assert_eq!((ents.len(), skipped), (3, 1));
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(load(dir.path()).unwrap().0.is_none());
    }
}

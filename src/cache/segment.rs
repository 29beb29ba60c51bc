//! Segment files: preallocated, append-only, written with `pwrite`, read through a
//! read-only shared mmap.
//!
//! Invariants:
//! - A segment file is named by its [`SegmentId`] (`{id:016x}.seg`); ids grow
//!   monotonically and are never reused in a shard directory.
//! - The file is preallocated (`fallocate`) to its full size before it is mapped, and is
//!   never truncated or rewritten in place while mapped. Eviction *unlinks* the file:
//!   anyone still holding an `Arc<Segment>` keeps reading the old bytes.
//! - Bytes are only changed with `pwrite` (never through a writable map: ENOSPC there
//!   would be SIGBUS). Each region is written once, before it is published in the index
//!   (the one exception is the torn tail at startup, zeroed before anything is served).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{is_no_space, Error};

/// A segment's id (monotonic per shard directory, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl SegmentId {
    /// The file name of this segment.
    pub fn file_name(self) -> String {
        format!("{self}.seg")
    }

    /// Parse a segment file name.
    pub fn from_file_name(name: &str) -> Option<SegmentId> {
        let hex = name.strip_suffix(".seg")?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(SegmentId)
    }
}

/// Smallest segment we create.
pub const MIN_SEGMENT_SIZE: u64 = 4096;

/// One segment file, mapped read-only. Kept alive by `Arc` while anyone reads it.
pub struct Segment {
    id: SegmentId,
    file: File,
    map: Mmap,
    path: PathBuf,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("len", &self.map.len())
            .finish()
    }
}

impl Segment {
    /// Create `dir/{id}.seg`, preallocate `size` bytes and map it.
    pub fn create(dir: &Path, id: SegmentId, size: u64) -> Result<Segment, Error> {
        let path = dir.join(id.file_name());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io_at(&path, "create segment", e))?;
        if let Err(e) = preallocate(&file, 0, size) {
            let _ = std::fs::remove_file(&path);
            return Err(if is_no_space(&e) {
                Error::NoSpace
            } else {
                Error::io_at(&path, "preallocate segment", e)
            });
        }
        Self::map(id, file, path)
    }

    /// Open an existing segment file (its current length is its size).
    pub fn open(path: &Path, id: SegmentId) -> Result<Segment, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io_at(path, "open segment", e))?;
        Self::map(id, file, path.to_path_buf())
    }

    fn map(id: SegmentId, file: File, path: PathBuf) -> Result<Segment, Error> {
        let len = file
            .metadata()
            .map_err(|e| Error::io_at(&path, "stat segment", e))?
            .len();
        if len < MIN_SEGMENT_SIZE || usize::try_from(len).is_err() {
            return Err(Error::io_at(
                &path,
                "map segment",
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad size {len}")),
            ));
        }
        // SAFETY: the mapping is read-only and shared. This process never truncates a
        // segment file (it only pwrites inside its preallocated size, and unlinks it on
        // eviction, which keeps the inode and mapping alive). Bytes may change under the
        // map only in regions not yet published to readers (or, for the lead's fill
        // waiters, beyond the prefix they have been told is written).
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io_at(&path, "mmap segment", e))?;
        Ok(Segment {
            id,
            file,
            map,
            path,
        })
    }

    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// Size of the segment (bytes mapped).
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment file's descriptor (read-only use: `sendfile(2)` of stored bodies).
    /// Valid for as long as this `Segment` lives, even after [`Segment::unlink`].
    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The whole mapping (segment size bytes).
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// `pwrite` all of `data` at `offset`; must lie inside the segment.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.len()) {
            return Err(Error::io_at(
                &self.path,
                "write segment",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "write past segment end"),
            ));
        }
        self.file.write_all_at(data, offset).map_err(|e| {
            if is_no_space(&e) {
                Error::NoSpace
            } else {
                Error::io_at(&self.path, "write segment", e)
            }
        })
    }

    /// Flush written data to the device.
    pub fn sync(&self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| Error::io_at(&self.path, "fsync segment", e))
    }

    /// Zero `[from, len)` (used once at startup on the recovered tail so stale bytes of
    /// a previous run can never be mistaken for records). Punches a hole and
    /// preallocates again; falls back to writing zeros.
    pub fn zero_tail(&self, from: u64) -> Result<(), Error> {
        let len = self.len();
        if from >= len {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let (off, n) = (from as libc::off_t, (len - from) as libc::off_t);
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let punched = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        } == 0;
        if punched {
            // Re-reserve the blocks so later pwrites cannot hit ENOSPC halfway.
            return match preallocate(&self.file, from, len - from) {
                Ok(()) => Ok(()),
                Err(e) if is_no_space(&e) => Err(Error::NoSpace),
                Err(e) => Err(Error::io_at(&self.path, "preallocate segment", e)),
            };
        }
        let zeros = vec![0u8; 1 << 20];
        let mut pos = from;
        while pos < len {
            let n = (len - pos).min(zeros.len() as u64) as usize;
            self.write_at(pos, &zeros[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Unlink the file; the mapping stays valid for holders of this `Arc`.
    pub fn unlink(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io_at(&self.path, "remove segment", e)),
        }
    }
}

/// `fallocate(mode 0)`; on filesystems without it, extend with `set_len` (sparse).
fn preallocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        let want = offset + len;
        if file.metadata()?.len() < want {
            file.set_len(want)?;
        }
        return Ok(());
    }
    Err(e)
}

/// All segment files in `dir`, sorted by id. Zero-length / unmappable leftovers of a
/// crash during creation are removed.
pub fn list(dir: &Path) -> Result<Vec<(SegmentId, PathBuf)>, Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io_at(dir, "read cache dir", e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io_at(dir, "read cache dir", e))?;
        let name = ent.file_name();
        let Some(id) = name.to_str().and_then(SegmentId::from_file_name) else {
            continue;
        };
        out.push((id, ent.path()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_read_and_unlink_keeps_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segment::create(dir.path(), SegmentId(1), 8192).unwrap();
        assert_eq!(s.len(), 8192);
        assert!(s.as_slice().iter().all(|&b| b == 0));
        s.write_at(100, b"abc").unwrap();
        assert_eq!(&s.as_slice()[100..103], b"abc");
        assert!(s.write_at(8190, b"abc").is_err());
        assert!(s.write_at(u64::MAX, b"a").is_err());
        s.unlink().unwrap();
        assert!(!dir.path().join(SegmentId(1).file_name()).exists());
        assert_eq!(&s.as_slice()[100..103], b"abc");
        // Create-new never reuses an existing file.
        let _s2 = Segment::create(dir.path(), SegmentId(2), 8192).unwrap();
        assert!(Segment::create(dir.path(), SegmentId(2), 8192).is_err());
    }

    #[test]
    fn zero_tail_clears_stale_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segment::create(dir.path(), SegmentId(3), 16384).unwrap();
        s.write_at(0, &[7u8; 16384]).unwrap();
        s.zero_tail(5000).unwrap();
        assert!(s.as_slice()[..5000].iter().all(|&b| b == 7));
        assert!(s.as_slice()[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn names_roundtrip() {
        let id = SegmentId(0xabc);
        assert_eq!(SegmentId::from_file_name(&id.file_name()), Some(id));
        assert_eq!(SegmentId::from_file_name("index.0"), None);
        assert_eq!(SegmentId::from_file_name("zz.seg"), None);
    }
}

//! The storage layer's error type, at the bottom of `cache/`: every storage module
//! (format users, segments, index, checkpoints, recovery, the store) returns it, and
//! it imports none of them.

use std::path::{Path, PathBuf};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O failed; errors made by [`Error::io_at`] name the file (an
    /// [`AtPath`] inside, which keeps the original error).
    #[error("cache i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Larger than the largest kept object (or than a segment, for what must fit one).
    #[error("object of {0} bytes is larger than the cache keeps")]
    TooLarge(u64),
    /// A spool of this many bytes would take device space the cache may still grow
    /// into (see [`super::store`], Large objects).
    #[error("no room on the cache device to spool {0} bytes beside the cache")]
    NoRoomToSpool(u64),
    /// ENOSPC / EDQUOT creating or writing a segment (admission pauses, see
    /// [`super::store`]).
    #[error("no space left on the cache device")]
    NoSpace,
    /// The segment file is shorter than what was written to it: another process, an
    /// operator or a failing disk truncated it (see [`super::segment`]).
    #[error("cache segment {} shrank under the cache (truncated by someone else?)", .0.display())]
    Truncated(PathBuf),
    /// Evicted segments still being sent to clients hold the space a new segment needs.
    #[error("evicted cache segments still being read hold the space for a new one")]
    SpaceHeld,
    /// The record's segment was evicted before its bytes could be pinned.
    #[error("cache record evicted meanwhile")]
    Evicted,
    #[error("record length mismatch: declared {declared}, written {written}")]
    LengthMismatch { declared: u64, written: u64 },
    /// Key or meta longer than the record format allows (64 KiB each).
    #[error("{0} too long for a cache record")]
    FieldTooLong(&'static str),
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("magic mismatch")]
    MagicMismatch,
}

/// What was being done to which file when an I/O error happened. Its text
/// already ends in the original error's, so that error is kept (`error`) but
/// not reported again as a source.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {error}", path.display())]
pub struct AtPath {
    pub what: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl Error {
    /// Attaches the file and what was being done to an I/O error, so an
    /// operator can act on it; the error kind and the source are kept.
    pub fn io_at(path: &Path, what: &'static str, source: std::io::Error) -> Error {
        Error::Io(std::io::Error::new(
            source.kind(),
            AtPath {
                what,
                path: path.to_path_buf(),
                error: source,
            },
        ))
    }

    /// [`Error::NoSpace`] for ENOSPC / EDQUOT (admission pauses on it: see
    /// [`super::store`]), else [`Error::io_at`].
    pub fn space_or_io(path: &Path, what: &'static str, source: std::io::Error) -> Error {
        if is_no_space(&source) {
            Error::NoSpace
        } else {
            Error::io_at(path, what, source)
        }
    }
}

/// ENOSPC or EDQUOT: the device (or the user's quota) is full.
pub(super) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_at_names_the_file_and_keeps_the_source() {
        let e = Error::io_at(
            Path::new("/var/cache/x.seg"),
            "open segment",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("cache i/o: open segment /var/cache/x.seg: "),
            "{shown}"
        );
        let Error::Io(io) = &e else {
            panic!("an i/o error: {e:?}")
        };
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        let at = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<AtPath>())
            .expect("the file is attached");
        assert_eq!(at.error.raw_os_error(), Some(libc::EACCES));
        // Said once: the text is not repeated by a source below it.
        assert!(std::error::Error::source(io).is_none());
    }
}

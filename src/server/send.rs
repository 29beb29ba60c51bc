//! What goes on the wire for a response, without copying bodies.
//!
//! A cached body is sent straight from its segment's read-only mmap: the
//! response head and the body slice go to the kernel together in one io_uring
//! `writev` ([`send_head_and_body`]), as measured best on this machine kind
//! (`shared/PERFORMANCE.md`). [`MmapSlice`] keeps the segment alive (an `Arc`)
//! for as long as the kernel may read it, even if the segment is evicted
//! meanwhile (evicted segments are unlinked, never rewritten in place).

use std::sync::Arc;

use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::cache::store::Segment;

/// A byte range of a segment mapping, owned for the duration of a write.
pub struct MmapSlice {
    segment: Arc<Segment>,
    start: usize,
    len: usize,
}

impl MmapSlice {
    /// `start..start+len` of the segment, clamped to the mapping.
    pub fn new(segment: Arc<Segment>, start: usize, len: usize) -> MmapSlice {
        let total = segment.as_slice().len();
        let start = start.min(total);
        let len = len.min(total - start);
        MmapSlice {
            segment,
            start,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: the pointer is into a read-only memory mapping owned by `segment`,
// which this value keeps alive; the mapping never moves or shrinks while
// mapped, and `start + len` was clamped to its length in `new`.
unsafe impl IoBuf for MmapSlice {
    fn read_ptr(&self) -> *const u8 {
        self.segment.as_slice()[self.start..].as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// Head + body as one vectored write. The iovec array is boxed so its address
/// is stable however the value is moved while the kernel owns it.
struct HeadAndBody {
    head: Vec<u8>,
    body: MmapSlice,
    iov: Box<[libc::iovec; 2]>,
}

impl HeadAndBody {
    fn new(head: Vec<u8>, body: MmapSlice) -> HeadAndBody {
        let iov = Box::new([
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: body.read_ptr() as *mut libc::c_void,
                iov_len: body.len,
            },
        ]);
        HeadAndBody { head, body, iov }
    }
}

// SAFETY: both iovecs point into buffers owned by this value (the head Vec,
// whose heap allocation does not move when the Vec is moved, and the mmap kept
// alive by `body`); the array itself is boxed so its address is stable.
unsafe impl IoVecBuf for HeadAndBody {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2
    }
}

/// Writes all of `buf`.
pub async fn send_all<T: IoBuf>(stream: &mut TcpStream, buf: T) -> std::io::Result<()> {
    let (res, _) = stream.write_all(buf).await;
    res.map(|_| ())
}

/// Writes `head` then `body` (one `writev`, then plain writes for any rest).
/// Returns the head buffer for reuse.
pub async fn send_head_and_body(
    stream: &mut TcpStream,
    head: Vec<u8>,
    body: MmapSlice,
) -> (std::io::Result<()>, Vec<u8>) {
    let head_len = head.len();
    let total = head_len + body.len;
    let (res, buf) = stream.writev(HeadAndBody::new(head, body)).await;
    let HeadAndBody { head, body, .. } = buf;
    let n = match res {
        Ok(n) => n,
        Err(e) => return (Err(e), head),
    };
    if n >= total {
        return (Ok(()), head);
    }
    // Partial write (a full socket buffer): finish the head, then the body.
    let mut head = head;
    if n < head_len {
        let rest = head.split_off(n);
        let (res, _) = stream.write_all(rest).await;
        if let Err(e) = res {
            return (Err(e), head);
        }
    }
    let body_done = n.saturating_sub(head_len);
    let rest = MmapSlice::new(body.segment, body.start + body_done, body.len - body_done);
    let (res, _) = stream.write_all(rest).await;
    (res.map(|_| ()), head)
}

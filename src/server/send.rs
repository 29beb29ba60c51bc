//! What goes on the wire for a response, without copying bodies.
//!
//! A cached body goes out one of two ways, chosen per response by
//! `server.sendfile_threshold` (default 16 KiB):
//!
//! - [`send_head_and_file`] (bodies ≥ the threshold): the head with one `send`
//!   (`MSG_MORE`), then `sendfile(2)` from the segment file — the kernel never
//!   copies the body, it hands page-cache pages to the socket. The cache starts
//!   such bodies on a 4 KiB boundary of the segment (`cache::format`: padding),
//!   which is what makes this path cheap.
//! - [`send_head_and_body`] (smaller bodies, or `--sendfile-threshold off`):
//!   head and body slice in one io_uring `writev` from the segment's read-only
//!   mmap. [`MmapSlice`] holds a `SegmentPin` (and so the mapping) for as long
//!   as the kernel may read it, so an evicted segment's blocks are not freed
//!   (hole-punched) under the send (`cache::segment`). The `sendfile` path's
//!   caller holds a pin across the call in the same way.
//!
//! A segment file that another process truncated must not kill the process:
//! only the kernel reads the mapping here, and it reports a page past the
//! file's end as `EFAULT` (no `SIGBUS`); `sendfile(2)` past the end returns 0,
//! which is reported as `UnexpectedEof`. Both are errors like any other (the
//! caller closes the connection and tells the cache, which drops what is gone).
//!
//! Invariants of the sendfile path:
//! - `sendfile(2)` is only ever called on a **non-blocking** socket, so a slow
//!   client can never block the worker thread. How a socket gets there is the
//!   worker's [`SocketMode`]: under epoll monoio made it non-blocking; under
//!   io_uring on Linux ≥ 5.19 it is set `O_NONBLOCK` once when accepted (io_uring
//!   ops on such a socket still wait for readiness: they are retried by poll);
//!   only on older kernels, where io_uring ops on an `O_NONBLOCK` socket may
//!   complete with `EAGAIN` instead of waiting, is `O_NONBLOCK` set around each
//!   call and restored afterwards (also when the future is dropped). The
//!   per-response toggle cost three `fcntl`s, ~3 % of the server CPU per hit.
//! - `EAGAIN` waits with `TcpStream::writable(false)` (an io_uring poll, or the
//!   epoll readiness re-checked with `poll(0)` so a stale readiness bit cannot
//!   spin); `EINTR` retries; short sends continue at the next offset; any other
//!   error is returned and the caller closes the connection.
//!
//! Every send is bounded by the worker's `server.send_timeout`, counted from
//! the last progress (a write that moved bytes, the socket turning writable):
//! a client that stops reading gets [`stalled`] (`TimedOut`) and the caller
//! closes the connection with [`abort`] (RST, so the kernel frees its send
//! queue at once instead of probing a zero window).
//! - `sendfile(2)` has no `MSG_NOSIGNAL`: a peer reset raises `SIGPIPE`, which
//!   the Rust runtime ignores in every Rust `main` (so `EPIPE` is returned).
//!
//! # Measured (why the default is 16 KiB)
//! 2-core AMD EPYC VM, kernel 6.18, loopback; 200 charts of 1.8–400 KB (mean
//! 105 KB), all hits; `chartcache-loadtest` 64 connections on the same cores;
//! medians of 5–7 alternating 2 s rounds, server CPU per response:
//!
//! | path | µs/req |
//! |---|---|
//! | io_uring writev from the mmap | 30–34 |
//! | sendfile, bodies off page boundaries (before padding) | 31–37 |
//! | sendfile, bodies page-aligned (epoll / io_uring) | 22.9 / 23.9 |
//! | nginx static (sendfile, files) / bare copy responder | 25–26 / 28–31 |
//!
//! The same bytes at a page-aligned file offset cost `sendfile` about a third
//! less than one byte off (a bare sendfile responder: 17.7 vs 26.3 µs). On
//! loopback a client that reads page-cache-backed data pays more per response
//! than for copied data, how much depending on its read size: with 8 KiB reads
//! (wrk) the copy path serves more, from 16 KiB up sendfile does (README,
//! Performance); on a real NIC sendfile also spares the copy to the device. An earlier measurement (unaligned bodies, commit f560483) had
//! writev ahead at every size, which is why the old default was `off`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use crate::cache::store::{Segment, SegmentPin};

/// A byte range of a segment mapping, owned (and its bytes pinned) for the
/// duration of a write: monoio keeps the buffer until the kernel completes
/// the op, even when the future is dropped, so the pin outlives every read.
pub struct MmapSlice {
    pin: SegmentPin,
    start: usize,
    len: usize,
}

impl MmapSlice {
    /// `start..start+len` of the pinned segment, clamped to the mapping.
    pub fn new(pin: SegmentPin, start: usize, len: usize) -> MmapSlice {
        let total = pin.segment().len() as usize;
        let start = start.min(total);
        let len = len.min(total - start);
        MmapSlice { pin, start, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: the pointer is into a read-only memory mapping owned by the pinned
// segment, which this value keeps alive (and its bytes unpunched); the mapping never moves while mapped, and
// `start + len` was clamped to its length in `new`. Only the kernel reads
// through it (a file that shrank under the mapping is EFAULT there, not SIGBUS).
unsafe impl IoBuf for MmapSlice {
    fn read_ptr(&self) -> *const u8 {
        // `start <= len` of the mapping (clamped in `new`): in bounds or one past.
        self.pin.segment().map_ptr().wrapping_add(self.start)
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

/// The error of a send that made no progress for the send timeout.
pub fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client stopped reading: no progress within send_timeout",
    )
}

/// Makes the coming close of `stream` an abort (`SO_LINGER` 0: RST, the send
/// queue dropped), for a client that stopped reading.
pub fn abort(stream: &TcpStream) {
    // SAFETY: the stream is open for this borrow; the borrowed descriptor
    // does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

/// Writes all of `buf`, each write bounded by `timeout` (without progress for
/// that long: [`stalled`]). Returns `buf` unless a timed-out write kept it.
async fn write_all_within<T: IoBuf>(
    stream: &mut TcpStream,
    buf: T,
    timeout: Duration,
) -> (io::Result<()>, Option<T>) {
    let len = buf.bytes_init();
    let mut buf = buf;
    let mut done = 0;
    while done < len {
        let write = stream.write(buf.slice(done..));
        let Ok((res, slice)) = monoio::time::timeout(timeout, write).await else {
            return (Err(stalled()), None);
        };
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), Some(buf)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), Some(buf)),
        }
    }
    (Ok(()), Some(buf))
}

/// Writes all of `buf`; a write without progress for `timeout` is [`stalled`].
pub async fn send_all<T: IoBuf>(
    stream: &mut TcpStream,
    buf: T,
    timeout: Duration,
) -> std::io::Result<()> {
    write_all_within(stream, buf, timeout).await.0
}

/// [`send_all`] for a reusable buffer: hands it back (empty after a timeout).
pub async fn send_vec(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
) -> (io::Result<()>, Vec<u8>) {
    let (res, buf) = write_all_within(stream, buf, timeout).await;
    (res, buf.unwrap_or_default())
}

/// Writes `head` then `body` (one `writev`, then plain writes for any rest),
/// each write bounded by `timeout`. Returns the head buffer for reuse.
pub async fn send_head_and_body(
    stream: &mut TcpStream,
    head: Vec<u8>,
    body: MmapSlice,
    timeout: Duration,
) -> (std::io::Result<()>, Vec<u8>) {
    let head_len = head.len();
    let total = head_len + body.len;
    let writev = stream.writev(HeadAndBody::new(head, body));
    let Ok((res, buf)) = monoio::time::timeout(timeout, writev).await else {
        return (Err(stalled()), Vec::new());
    };
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
        if let Err(e) = send_all(stream, rest, timeout).await {
            return (Err(e), head);
        }
    }
    let body_done = n.saturating_sub(head_len);
    let rest = MmapSlice::new(body.pin, body.start + body_done, body.len - body_done);
    (send_all(stream, rest, timeout).await, head)
}

/// How a worker's client sockets become non-blocking for `sendfile(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketMode {
    /// The epoll driver: monoio already made every socket non-blocking.
    Epoll,
    /// io_uring on Linux ≥ 5.19 (the ring accepted `COOP_TASKRUN`): a socket
    /// is set `O_NONBLOCK` once, when accepted. io_uring read/write/recv/send
    /// ops on it still wait for readiness (since Linux 5.12 they are retried
    /// through poll instead of failing with `EAGAIN`; tested below).
    UringNonBlocking,
    /// io_uring on an older kernel: sockets stay blocking for io_uring ops and
    /// get `O_NONBLOCK` only around each `sendfile` call.
    UringToggle,
}

impl SocketMode {
    /// Prepares a freshly accepted client socket for this mode.
    pub fn on_accept(self, stream: &TcpStream) -> io::Result<()> {
        if self != SocketMode::UringNonBlocking {
            return Ok(());
        }
        let on: libc::c_int = 1;
        // SAFETY: FIONBIO reads one c_int from the pointer, which outlives the
        // call; the descriptor is open for this borrow.
        if unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONBIO, &on) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Largest count passed to one `sendfile(2)` call. A client that keeps up (loopback, a
/// fast LAN) never makes `sendfile` wait, so one call would hold the worker for the whole
/// body (a 44 MB index); between calls of this size the worker lets its other tasks run.
const MAX_SENDFILE: usize = 1 << 20;

/// Sets `O_NONBLOCK` on a socket and puts the old flags back when dropped.
struct NonBlocking {
    fd: RawFd,
    /// The flags to restore, when this guard changed them.
    restore: Option<libc::c_int>,
}

impl NonBlocking {
    fn set(fd: RawFd) -> io::Result<NonBlocking> {
        // SAFETY: plain syscall on a descriptor the caller keeps open; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK != 0 {
            return Ok(NonBlocking { fd, restore: None });
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking {
            fd,
            restore: Some(flags),
        })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if let Some(flags) = self.restore {
            // SAFETY: plain syscall; the socket outlives this guard (the guard
            // lives inside a future that borrows the stream).
            unsafe { libc::fcntl(self.fd, libc::F_SETFL, flags) };
        }
    }
}

/// Runs a non-blocking socket syscall until it makes progress: retries on
/// `EINTR`, waits for writability on `EAGAIN` (at most `timeout`, else
/// [`stalled`]). `op` returns the syscall's result.
async fn until_progress(
    stream: &TcpStream,
    timeout: Duration,
    mut op: impl FnMut() -> libc::ssize_t,
) -> io::Result<usize> {
    loop {
        let n = op();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => monoio::time::timeout(timeout, stream.writable(false))
                .await
                .map_err(|_| stalled())??,
            _ => return Err(e),
        }
    }
}

/// Writes `head`, then `len` bytes of the pinned segment's file from `offset`
/// with `sendfile(2)`: the body never enters user space. Returns the head
/// buffer for reuse. On error the connection must be closed (part of the
/// response may have been sent). Waiting for the client is bounded by
/// `timeout` per step.
pub async fn send_head_and_file(
    stream: &mut TcpStream,
    mode: SocketMode,
    head: Vec<u8>,
    pin: SegmentPin,
    offset: u64,
    len: usize,
    timeout: Duration,
) -> (io::Result<()>, Vec<u8>) {
    let res = head_and_file(stream, mode, &head, pin.segment(), offset, len, timeout).await;
    (res, head)
}

async fn head_and_file(
    stream: &TcpStream,
    mode: SocketMode,
    head: &[u8],
    segment: &Segment,
    offset: u64,
    len: usize,
    timeout: Duration,
) -> io::Result<()> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > segment.len())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "sendfile range outside the segment",
        ));
    }
    let sock = stream.as_raw_fd();
    let file = segment.as_raw_fd();
    let _nonblocking = match mode {
        SocketMode::UringToggle => Some(NonBlocking::set(sock)?),
        SocketMode::Epoll | SocketMode::UringNonBlocking => None,
    };

    // The head: MSG_MORE lets the kernel put it in the same segment as the
    // first body bytes (the socket has TCP_NODELAY). Not with an empty body:
    // nothing would follow to push it out.
    let more = if len > 0 { libc::MSG_MORE } else { 0 };
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | more;
    let mut sent = 0;
    while sent < head.len() {
        let rest = &head[sent..];
        let n = until_progress(stream, timeout, || {
            // SAFETY: `rest` is a live borrowed slice; the kernel reads at most
            // `rest.len()` bytes from it during the call and keeps no pointer.
            unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), flags) }
        })
        .await?;
        sent += n;
    }

    let mut sent = 0usize;
    while sent < len {
        let want = (len - sent).min(MAX_SENDFILE);
        let at = libc::off_t::try_from(offset + sent as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let n = until_progress(stream, timeout, || {
            let mut off = at;
            // SAFETY: both descriptors are open for the whole call (the stream
            // is borrowed, the segment's file is held by `segment`); `off` is a
            // local the kernel writes the new offset to and does not keep.
            unsafe { libc::sendfile(sock, file, &mut off, want) }
        })
        .await?;
        if n == 0 {
            // End of file inside the segment: someone truncated it under us.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment file ended before the body (truncated?)",
            ));
        }
        sent += n;
        if sent < len {
            crate::sched::yield_now().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

    use super::*;
    use crate::cache::segment::SegmentId;
    use std::sync::Arc;

    fn nonblocking(fd: RawFd) -> bool {
        // SAFETY: plain syscall on an open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(flags >= 0);
        flags & libc::O_NONBLOCK != 0
    }

    /// A send timeout no test here reaches.
    /// A plain io_uring runtime with timers, for the tests that need that driver.
    fn uring_rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    const T: Duration = Duration::from_secs(30);

    /// A segment holding a 1 MiB pseudo-random body at `OFFSET`.
    const OFFSET: u64 = 4096 + 7;
    const BODY: usize = 1 << 20;

    fn segment(dir: &std::path::Path) -> (Arc<Segment>, Vec<u8>) {
        let seg = Segment::create(dir, SegmentId(1), 4 << 20).unwrap();
        let body: Vec<u8> = (0..BODY as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        seg.write_at(OFFSET, &body).unwrap();
        (Arc::new(seg), body)
    }

    /// A connection from a client thread running `client` on its end; returns
    /// the server end and the thread.
    async fn accept_with<T: Send + 'static>(
        client: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
    ) -> (TcpStream, std::thread::JoinHandle<T>) {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread =
            std::thread::spawn(move || client(std::net::TcpStream::connect(addr).unwrap()));
        let (stream, _) = listener.accept().await.unwrap();
        (stream, thread)
    }

    /// Serves one `send_head_and_file` to a client that waits before reading,
    /// with tiny socket buffers so sends are partial and hit EAGAIN. Returns the
    /// bytes received and whether the server socket was non-blocking
    /// before and after the call.
    async fn serve_once(
        seg: Arc<Segment>,
        mode: SocketMode,
        start: u64,
        len: usize,
    ) -> (Vec<u8>, bool, bool) {
        let (mut stream, reader) = accept_with(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut out = Vec::new();
            c.read_to_end(&mut out).unwrap();
            out
        })
        .await;
        mode.on_accept(&stream).unwrap();
        small_send_buffer(&stream);
        let before = nonblocking(stream.as_raw_fd());
        let head = b"HEAD\r\n".to_vec();
        let (res, head) =
            send_head_and_file(&mut stream, mode, head, seg.pin().unwrap(), start, len, T).await;
        res.unwrap();
        assert_eq!(head, b"HEAD\r\n", "head buffer handed back");
        let after = nonblocking(stream.as_raw_fd());
        // Under io_uring a dropped stream is closed by a queued op, which would
        // wait behind the blocking join below: end the response explicitly.
        stream.shutdown().await.unwrap();
        drop(stream);
        (reader.join().unwrap(), before, after)
    }

    /// A 4 KiB send buffer (the kernel doubles it): sends of a large body are
    /// partial and hit EAGAIN whenever the client is not reading.
    fn small_send_buffer(stream: &TcpStream) {
        // SAFETY: the stream is open for this borrow's lifetime.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        socket2::SockRef::from(&fd)
            .set_send_buffer_size(4096)
            .unwrap();
    }

    fn check(out: &[u8], body: &[u8]) {
        assert_eq!(&out[..6], b"HEAD\r\n");
        assert!(out[6..] == *body, "body differs ({} bytes)", out.len() - 6);
    }

    #[test]
    fn sendfile_under_io_uring_restores_blocking_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, body) = segment(dir.path());
        let mut rt = uring_rt();
        let toggle = SocketMode::UringToggle;
        let (out, before, after) = rt.block_on(serve_once(seg.clone(), toggle, OFFSET, BODY));
        assert!(!before, "io_uring accepts blocking sockets");
        assert!(!after, "O_NONBLOCK must be cleared again for io_uring ops");
        check(&out, &body);
        // A sub-range, and an empty body (head only).
        let (out, _, _) = rt.block_on(serve_once(seg.clone(), toggle, OFFSET + 1000, 5000));
        check(&out, &body[1000..6000]);
        let (out, _, _) = rt.block_on(serve_once(seg, toggle, OFFSET, 0));
        assert_eq!(out, b"HEAD\r\n");
    }

    /// The workers' own ring: on this kernel the socket is made non-blocking
    /// once and stays so; partial sends still deliver every byte.
    #[test]
    fn sendfile_on_the_workers_ring() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, body) = segment(dir.path());
        let (mut rt, mode) = crate::runtime::uring_runtime().unwrap();
        let (out, before, after) = rt.block_on(serve_once(seg.clone(), mode, OFFSET, BODY));
        check(&out, &body);
        let expect = mode == SocketMode::UringNonBlocking;
        assert_eq!((before, after), (expect, expect), "{mode:?}");
        let (out, _, _) = rt.block_on(serve_once(seg, mode, OFFSET + 1000, 5000));
        check(&out, &body[1000..6000]);
    }

    /// What [`SocketMode::UringNonBlocking`] relies on: on the workers' ring,
    /// io_uring reads, writes and writevs on an `O_NONBLOCK` socket wait for
    /// the peer instead of failing with `EAGAIN`.
    #[test]
    fn io_uring_ops_wait_on_nonblocking_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, body) = segment(dir.path());
        let (mut rt, mode) = crate::runtime::uring_runtime().unwrap();
        if mode != SocketMode::UringNonBlocking {
            eprintln!("kernel without COOP_TASKRUN: sockets stay blocking, nothing to check");
            return;
        }
        rt.block_on(async move {
            let (mut stream, client) = accept_with(|mut c| {
                // Nothing to read for 150 ms, then a few bytes; then read late.
                std::thread::sleep(Duration::from_millis(150));
                std::io::Write::write_all(&mut c, b"ping").unwrap();
                std::thread::sleep(Duration::from_millis(150));
                let mut out = Vec::new();
                c.read_to_end(&mut out).unwrap();
                out
            })
            .await;
            mode.on_accept(&stream).unwrap();
            assert!(nonblocking(stream.as_raw_fd()));
            small_send_buffer(&stream);
            let (res, buf) = stream.read(Vec::with_capacity(16)).await;
            assert_eq!(res.unwrap(), 4, "the read waited for the bytes");
            assert_eq!(buf, b"ping");
            let (res, _) = stream.write_all(vec![7u8; 1 << 20]).await;
            assert_eq!(res.unwrap(), 1 << 20);
            let slice = MmapSlice::new(seg.pin().unwrap(), OFFSET as usize, BODY);
            let head = b"HEAD\r\n".to_vec();
            let (res, head) = send_head_and_body(&mut stream, head, slice, T).await;
            res.unwrap();
            assert_eq!(head, b"HEAD\r\n");
            stream.shutdown().await.unwrap();
            drop(stream);
            let out = client.join().unwrap();
            assert_eq!(out.len(), (1 << 20) + 6 + BODY);
            assert!(out[..1 << 20].iter().all(|&b| b == 7));
            check(&out[1 << 20..], &body);
        });
    }

    #[test]
    fn sendfile_under_epoll_keeps_nonblocking_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, body) = segment(dir.path());
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (out, before, after) = rt.block_on(serve_once(seg, SocketMode::Epoll, OFFSET, BODY));
        assert!(before && after, "epoll sockets stay non-blocking");
        check(&out, &body);
    }

    #[test]
    fn range_outside_the_segment_is_an_error_before_any_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = segment(dir.path());
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut stream, client) = accept_with(|mut c| {
                let mut out = Vec::new();
                let _ = c.read_to_end(&mut out);
                out
            })
            .await;
            let len = seg.len();
            let mode = SocketMode::Epoll;
            let pin = seg.pin().unwrap();
            let (res, _) =
                send_head_and_file(&mut stream, mode, b"X".to_vec(), pin, len - 10, 11, T).await;
            assert_eq!(res.unwrap_err().kind(), io::ErrorKind::InvalidInput);
            stream.shutdown().await.unwrap();
            drop(stream);
            assert!(client.join().unwrap().is_empty());
        });
    }

    /// A client that never reads: every send path gives up with `TimedOut`
    /// once nothing moves for the timeout, on both drivers.
    #[test]
    fn sends_to_a_client_that_stopped_reading_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = segment(dir.path());
        let short = Duration::from_millis(200);
        let stuck = |mode: SocketMode, seg: Arc<Segment>| async move {
            let mut kinds = Vec::new();
            for path in 0..3 {
                let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
                let (mut stream, client) = accept_with(move |c| {
                    let _ = stop_rx.recv_timeout(Duration::from_secs(10));
                    drop(c);
                })
                .await;
                mode.on_accept(&stream).unwrap();
                small_send_buffer(&stream);
                let head = b"H".to_vec();
                let res = match path {
                    0 => send_all(&mut stream, vec![1u8; 8 << 20], short).await,
                    1 => {
                        let body = MmapSlice::new(seg.pin().unwrap(), OFFSET as usize, BODY);
                        send_head_and_body(&mut stream, head, body, short).await.0
                    }
                    _ => {
                        let pin = seg.pin().unwrap();
                        send_head_and_file(&mut stream, mode, head, pin, OFFSET, BODY, short)
                            .await
                            .0
                    }
                };
                kinds.push(res.unwrap_err().kind());
                abort(&stream);
                stop_tx.send(()).unwrap();
                drop(stream);
                client.join().unwrap();
            }
            kinds
        };
        let (mut rt, mode) = crate::runtime::uring_runtime().unwrap();
        let kinds = rt.block_on(stuck(mode, seg.clone()));
        assert_eq!(kinds, [io::ErrorKind::TimedOut; 3], "{mode:?}");
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let kinds = rt.block_on(stuck(SocketMode::Epoll, seg));
        assert_eq!(kinds, [io::ErrorKind::TimedOut; 3], "epoll");
    }

    #[test]
    fn dropping_the_send_restores_blocking_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = segment(dir.path());
        let mut rt = uring_rt();
        rt.block_on(async move {
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            // A client that never reads until told to stop.
            let (mut stream, client) = accept_with(move |c| {
                let _ = stop_rx.recv_timeout(Duration::from_secs(10));
                drop(c);
            })
            .await;
            small_send_buffer(&stream);
            let mode = SocketMode::UringToggle;
            let pin = seg.pin().unwrap();
            let send = send_head_and_file(&mut stream, mode, b"H".to_vec(), pin, OFFSET, BODY, T);
            let timed_out = monoio::time::timeout(Duration::from_millis(200), send).await;
            assert!(timed_out.is_err(), "a non-reading client cannot take 1 MiB");
            assert!(!nonblocking(stream.as_raw_fd()), "guard restored the flags");
            stop_tx.send(()).unwrap();
            drop(stream);
            client.join().unwrap();
        });
    }

    /// Evicted mid-send: the pin the send holds keeps the bytes (no hole is
    /// punched) until the kernel is done; then the blocks are given back. Both
    /// paths, each under io_uring.
    #[test]
    fn an_evicted_segment_keeps_its_bytes_until_a_slow_send_is_done() {
        for sendfile in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (seg, body) = segment(dir.path());
            let mut rt = uring_rt();
            let out = rt.block_on(async {
                let (go, wait) = std::sync::mpsc::channel::<()>();
                let (mut stream, client) = accept_with(move |mut c| {
                    let _ = wait.recv_timeout(Duration::from_secs(10));
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut out = Vec::new();
                    c.read_to_end(&mut out).unwrap();
                    out
                })
                .await;
                small_send_buffer(&stream);
                let mode = SocketMode::UringToggle;
                let pin = seg.pin().unwrap();
                let head = b"HEAD\r\n".to_vec();
                let res = {
                    let mut send: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> =
                        if sendfile {
                            Box::pin(send_head_and_file(
                                &mut stream,
                                mode,
                                head,
                                pin,
                                OFFSET,
                                BODY,
                                T,
                            ))
                        } else {
                            let slice = MmapSlice::new(pin, OFFSET as usize, BODY);
                            Box::pin(send_head_and_body(&mut stream, head, slice, T))
                        };
                    let pending = monoio::time::timeout(Duration::from_millis(100), send.as_mut());
                    assert!(pending.await.is_err(), "the client is not reading yet");
                    seg.unlink().unwrap();
                    seg.condemn();
                    assert!(!seg.is_reclaimed(), "punched under a send in flight");
                    go.send(()).unwrap();
                    send.await.0
                };
                res.unwrap();
                assert!(seg.is_reclaimed(), "the send's pin was the last");
                stream.shutdown().await.unwrap();
                drop(stream);
                client.join().unwrap()
            });
            check(&out, &body);
        }
    }
}

//! One client connection's keep-alive loop.
//!
//! Reads into one buffer, parses request heads with the strict codec, and
//! answers pipelined requests strictly in order (one at a time). Invariants:
//! - A request body (GETs may carry one) is drained **before** the next
//!   request in the buffer is parsed; a chunked or large body closes the
//!   connection after the response instead. Answering without draining is how
//!   request smuggling poisons caches.
//! - A malformed head gets its 4xx and the connection is closed.
//! - The header deadline is absolute from the first byte of a request (a
//!   slowloris trickling bytes is cut at `header_timeout`); an idle
//!   keep-alive connection is closed after `idle_timeout`, or at shutdown.
//! - **Lingering close**: when the server ends a connection while the client
//!   may still be sending (a body too large to drain, a chunked body, a
//!   rejected head, pipelined requests after the last answered one), it sends
//!   FIN after the response and reads and discards what still arrives — at
//!   most [`LINGER_BYTES`] for at most [`LINGER_TIME`] — before closing.
//!   Closing a socket with unread bytes makes the kernel send RST, which
//!   discards the response still in flight and makes the client see
//!   `ECONNRESET` instead of the answer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::access_log::Entry;
use crate::http1::cache_status;
use crate::http1::render::simple_with;
use crate::http1::request::{parse_request, BodyFraming, Parsed};
use crate::metrics::CacheResult;
use crate::server::handler::{handle, Conn};
use crate::server::send::send_all;
use crate::server::WorkerRef;

/// Request bodies up to this size are read and discarded; larger ones close
/// the connection after the response.
const MAX_DRAIN: u64 = 64 * 1024;
/// Most bytes read and discarded in a lingering close.
pub const LINGER_BYTES: u64 = 16 << 20;
/// Longest a lingering close waits for the client to stop sending.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Nothing the client sent is left unread (or the peer is gone): close.
    Close,
    /// The client may still be sending: FIN after the response, then discard
    /// what arrives before closing ([`linger`]).
    Linger,
}

/// One client connection counted against `server.max_connections` (and in
/// `chartcache_connections_open`) from the moment it is accepted until it ends,
/// however it ends. Counted by the accept loop, not by the connection's task when
/// it first runs: under epoll an accept finds a waiting connection without
/// yielding, so a burst was accepted whole before any task ran, past the cap.
pub struct Slot(WorkerRef);

impl Slot {
    pub fn take(w: &WorkerRef) -> Slot {
        w.connections.set(w.connections.get() + 1);
        w.metrics.connections_open.fetch_add(1, Relaxed);
        Slot(w.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Serves one accepted connection until it closes; `slot` is its place under the
/// connection cap, given back when this ends.
pub async fn serve(w: WorkerRef, stream: TcpStream, peer: SocketAddr, slot: Slot) {
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    if let Err(e) = w.socket_mode.on_accept(&stream) {
        tracing::warn!(worker = w.id, error = %e, "cannot make a client socket non-blocking; closing it");
        return;
    }
    let mut conn = Conn {
        stream,
        peer: Some(peer),
        head_buf: Vec::with_capacity(512),
        key_buf: String::new(),
        status_buf: String::with_capacity(96),
        broken: false,
    };
    if serve_requests(&w, &mut conn).await == End::Linger && !conn.broken {
        linger(&w, &mut conn).await;
    }
}

async fn serve_requests(w: &WorkerRef, conn: &mut Conn) -> End {
    let limits = &w.cfg.server.limits;
    let max_buf = limits.max_request_line + limits.max_header_bytes + 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut head_started: Option<Instant> = None;
    loop {
        if !buf.is_empty() {
            match parse_request(&buf, limits) {
                Ok(Parsed::Complete(head)) => {
                    buf.drain(..head.head_len);
                    head_started = None;
                    let mut keep = true;
                    match head.body {
                        BodyFraming::None => {}
                        BodyFraming::Length(n) if n <= MAX_DRAIN => {
                            let deadline = Instant::now() + w.cfg.server.header_timeout;
                            match drain(conn, buf, n, deadline).await {
                                Some(rest) => buf = rest,
                                None => return End::Close,
                            }
                        }
                        BodyFraming::Length(_) | BodyFraming::Chunked => keep = false,
                    }
                    let mut head = head;
                    head.keep_alive &= keep;
                    if !handle(w, conn, &head).await || !keep || w.is_draining() {
                        // An unread body, or requests pipelined after this one.
                        return if keep && buf.is_empty() {
                            End::Close
                        } else {
                            End::Linger
                        };
                    }
                    if !buf.is_empty() {
                        head_started = Some(Instant::now());
                    }
                    continue;
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    w.metrics.bad_requests.fetch_add(1, Relaxed);
                    if let Some(status) = e.status() {
                        reject(w, conn, status, &e.to_string()).await;
                    }
                    return End::Linger;
                }
            }
            if buf.len() >= max_buf {
                reject(w, conn, 431, "request head too large").await;
                return End::Linger;
            }
        }

        // Need more bytes: wait with the right deadline.
        let idle = buf.is_empty();
        let remaining = if idle {
            w.cfg.server.idle_timeout
        } else {
            let started = *head_started.get_or_insert_with(Instant::now);
            w.cfg
                .server
                .header_timeout
                .saturating_sub(started.elapsed())
        };
        if remaining.is_zero() {
            reject(w, conn, 408, "request head not received in time").await;
            return End::Close;
        }
        if idle && w.is_draining() {
            return End::Close;
        }
        let len = buf.len();
        buf.reserve(4096);
        let read = conn.stream.read(buf.slice_mut(len..));
        // At shutdown, a connection waiting for (the rest of) a request head
        // has nothing in flight: close it rather than hold shutdown up.
        let outcome = monoio::select! {
            r = monoio::time::timeout(remaining, read) => Some(r),
            _ = w.stop.fired() => None,
        };
        match outcome {
            None => return End::Close, // shutdown while waiting for a request
            Some(Err(_elapsed)) => {
                if !idle {
                    reject(w, conn, 408, "request head not received in time").await;
                }
                return End::Close;
            }
            Some(Ok((Ok(0), _))) | Some(Ok((Err(_), _))) => return End::Close,
            Some(Ok((Ok(_), slice))) => {
                buf = slice.into_inner();
                if idle {
                    head_started = Some(Instant::now());
                }
            }
        }
    }
}

/// Discards `n` body bytes (first from `buf`, then from the socket). Returns
/// the leftover bytes (the next pipelined request), or `None` on
/// error/timeout (close).
async fn drain(conn: &mut Conn, mut buf: Vec<u8>, n: u64, deadline: Instant) -> Option<Vec<u8>> {
    let take = (n as usize).min(buf.len());
    buf.drain(..take);
    let mut left = n - take as u64;
    while left > 0 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining == Duration::ZERO {
            return None;
        }
        buf.clear();
        buf.reserve(16 * 1024);
        let cap = buf.capacity();
        let read = conn.stream.read(buf.slice_mut(0..cap));
        match monoio::time::timeout(remaining, read).await {
            Ok((Ok(got), slice)) if got > 0 => {
                buf = slice.into_inner();
                let take = (left as usize).min(buf.len());
                buf.drain(..take);
                left -= take as u64;
            }
            _ => return None,
        }
    }
    Some(buf)
}

/// The lingering close (module doc): FIN, then read and discard until the
/// client closes or stops sending, [`LINGER_BYTES`] were discarded,
/// [`LINGER_TIME`] passed, or shutdown began.
async fn linger(w: &WorkerRef, conn: &mut Conn) {
    use monoio::io::AsyncWriteRent;
    if conn.stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    while discarded < LINGER_BYTES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        buf.clear();
        let read = conn.stream.read(buf);
        let outcome = monoio::select! {
            r = monoio::time::timeout(remaining, read) => r.ok(),
            _ = w.stop.fired() => None,
        };
        match outcome {
            Some((Ok(n), b)) if n > 0 => {
                discarded += n as u64;
                buf = b;
            }
            _ => return,
        }
    }
}

/// Answers a malformed or timed-out request and logs it; the caller closes.
async fn reject(w: &WorkerRef, conn: &mut Conn, status: u16, why: &str) {
    let mut out = Vec::with_capacity(256);
    let local = cache_status::local_value();
    let extra = [("Cache-Status", local.as_str())];
    let x_cache = Some(CacheResult::None.as_str());
    let body = simple_with(status, why, false, x_cache, &extra, &mut out);
    let sent = send_all(&mut conn.stream, out, w.cfg.server.send_timeout).await;
    let bytes = if sent.is_ok() { body } else { 0 };
    w.metrics.request(CacheResult::None, status, bytes);
    w.access_log.log(&Entry {
        repo: None,
        method: "-",
        path: "-",
        status,
        bytes,
        duration: Duration::ZERO,
        cache: CacheResult::None,
        upstream_status: None,
        peer: conn.peer,
        user_agent: None,
    });
}

//! The load-generating side: one monoio runtime per thread, many keep-alive HTTP/1.1
//! connections per runtime, closed-loop or open-loop (constant arrival rate).
//!
//! Owns: the per-connection request loop, response-head parsing and body draining, and the
//! per-thread counters and latency histograms.
//!
//! Invariants:
//! - No allocation per request: request heads are `&'static [u8]` rendered at plan time, each
//!   connection reuses one read buffer, headers parse into a stack array, histograms are
//!   preallocated. Allocation happens only on errors (a sample message, a fresh buffer after
//!   a timeout) and on reconnects.
//! - Only responses whose *completion* falls inside the measurement window
//!   `[window_start, end)` are counted; warm-up traffic is sent but not recorded.
//! - Open loop: latency is measured from the request's *scheduled* send time, not the moment it
//!   was actually written, so a stalled server is charged for the requests it held back
//!   (coordinated omission). `service` histograms the time from the actual send. The 1 ms timer
//!   wheel is aimed one tick early, so a send may leave up to 1 ms before its slot; such a
//!   request is measured from its actual send (latency counts from `min(scheduled, sent)`).
//! - Bodies are read fully, framed by `Content-Length`; chunked responses are counted as
//!   protocol errors and the connection is dropped (there is no framing to recover from).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::workload::{Chooser, Plan};

/// Default read buffer per connection (`--read-buffer`). Large enough that a 400 KB chart
/// arrives in a few reads; the warm pass always uses it.
pub const READ_BUF: usize = 256 * 1024;
/// Smallest `--read-buffer` (a response head must fit in one read).
pub const MIN_READ_BUF: usize = 4 * 1024;
/// Largest latency the histograms hold (values above are clamped to it).
pub const MAX_LATENCY_NS: u64 = 100_000_000_000;
/// Pause before reconnecting after a failed connect (closed loop), so a dead server does not
/// turn the client into a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Resolution of monoio's timer wheel; open-loop sleeps end up to one tick after the deadline.
const TIMER_TICK: Duration = Duration::from_millis(1);
/// Error messages kept per thread, for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant figures: fixed bounds, cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap_or_else(|_| unreachable!())
}

/// Why a response did not count as a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head larger than the read buffer")]
    HeadTooLarge,
    #[error("chunked transfer-encoding is not supported")]
    Chunked,
    #[error("response without Content-Length")]
    NoLength,
    #[error("conflicting Content-Length headers")]
    ConflictingLength,
    #[error("bytes after the response body")]
    TrailingBytes,
    #[error("connection closed mid-response")]
    Eof,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub content_length: u64,
    /// `Connection: close` was sent.
    pub close: bool,
}

/// Parses a response head from the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProtocolError::Malformed("too many headers"))
        }
        Err(_) => return Err(ProtocolError::Malformed("unparsable")),
    };
    let status = resp.code.ok_or(ProtocolError::Malformed("no status"))?;
    let mut content_length: Option<u64> = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(ProtocolError::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|c| c != v) {
                return Err(ProtocolError::ConflictingLength);
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ProtocolError::Chunked);
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    let content_length = match content_length {
        Some(n) => n,
        // No body by definition.
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Err(ProtocolError::NoLength),
    };
    Ok(Some(Head {
        status,
        len,
        content_length,
        close,
    }))
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    pub protocol: u64,
    /// Complete responses with a status other than 200/304.
    pub status: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.timeout + self.protocol + self.status
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.io += o.io;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
        self.status += o.status;
    }
}

/// What one thread measured.
pub struct ThreadStats {
    /// Successful responses: from scheduled send (open loop) or send (closed loop) to the
    /// last body byte, in ns.
    pub latency: Histogram<u64>,
    /// Successful responses: from the actual send to the last body byte, in ns.
    pub service: Histogram<u64>,
    pub ok: u64,
    /// Bytes read off the sockets (heads + bodies) for counted responses.
    pub bytes: u64,
    pub errors: ErrorCounts,
    /// Count per status code (index = code; codes ≥ 600 land in 599).
    pub statuses: Box<[u64; 600]>,
    /// Open loop: sends that were scheduled inside the window but never made.
    pub missed: u64,
    pub error_samples: Vec<String>,
}

impl ThreadStats {
    pub fn new() -> Self {
        Self {
            latency: new_histogram(),
            service: new_histogram(),
            ok: 0,
            bytes: 0,
            errors: ErrorCounts::default(),
            statuses: Box::new([0; 600]),
            missed: 0,
            error_samples: Vec::new(),
        }
    }

    /// Folds another thread's stats into this one.
    pub fn merge(&mut self, o: &ThreadStats) {
        // Same bounds on both sides: addition cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.service.add(&o.service);
        self.ok += o.ok;
        self.bytes += o.bytes;
        self.errors.add(&o.errors);
        for (a, b) in self.statuses.iter_mut().zip(o.statuses.iter()) {
            *a += b;
        }
        self.missed += o.missed;
        for s in &o.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES * 4 {
                self.error_samples.push(s.clone());
            }
        }
    }

    fn sample(&mut self, msg: impl FnOnce() -> String) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(msg());
        }
    }
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Timing of a run, shared by all threads.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When sending starts.
    pub start: Instant,
    /// Start of the measurement window (after warm-up).
    pub window_start: Instant,
    /// End of the window; no request is sent after it.
    pub end: Instant,
    /// Open loop: total requests per second over all connections. `None` = closed loop.
    pub rate: Option<f64>,
    /// Per-request timeout (send to last byte).
    pub timeout: Duration,
    /// Most bytes one socket read may return (the client's read buffer).
    pub read_buffer: usize,
}

/// Everything one load thread needs.
pub struct ThreadSpec {
    pub plan: Arc<Plan>,
    pub addr: SocketAddr,
    pub schedule: Schedule,
    /// Global indexes of this thread's connections, out of `total_connections`.
    pub connections: std::ops::Range<usize>,
    pub total_connections: usize,
    pub thread_index: usize,
    pub threads: usize,
    pub seed: u64,
}

struct Shared {
    plan: Arc<Plan>,
    chooser: RefCell<Chooser>,
    stats: RefCell<ThreadStats>,
    addr: SocketAddr,
    schedule: Schedule,
    total_connections: usize,
}

/// Runs this thread's connections to completion on the current monoio runtime.
pub async fn run_thread(spec: ThreadSpec) -> ThreadStats {
    let shared = Rc::new(Shared {
        chooser: RefCell::new(Chooser::new(
            &spec.plan,
            spec.seed,
            spec.thread_index,
            spec.threads,
        )),
        plan: spec.plan,
        stats: RefCell::new(ThreadStats::new()),
        addr: spec.addr,
        schedule: spec.schedule,
        total_connections: spec.total_connections,
    });
    let handles: Vec<_> = spec
        .connections
        .map(|g| monoio::spawn(connection(shared.clone(), g)))
        .collect();
    for h in handles {
        h.await;
    }
    match Rc::try_unwrap(shared) {
        Ok(s) => s.stats.into_inner(),
        // All tasks finished, so no other reference is left; keep a copy-free fallback.
        Err(s) => std::mem::take(&mut *s.stats.borrow_mut()),
    }
}

fn to_monoio(t: Instant) -> monoio::time::Instant {
    monoio::time::Instant::from_std(t)
}

/// One keep-alive connection's request loop.
async fn connection(sh: Rc<Shared>, global_index: usize) {
    let sched = sh.schedule;
    let interval = sched
        .rate
        .map(|r| Duration::from_secs_f64(sh.total_connections as f64 / r));
    // Stagger connections evenly over one interval.
    let mut next_send = match sched.rate {
        Some(r) => sched.start + Duration::from_secs_f64(global_index as f64 / r),
        None => sched.start,
    };
    if next_send > Instant::now() {
        monoio::time::sleep_until(to_monoio(next_send)).await;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(sched.read_buffer);
    let mut stream: Option<TcpStream> = None;
    loop {
        let now = Instant::now();
        if now >= sched.end {
            if let Some(iv) = interval {
                count_missed(&sh, next_send, iv);
            }
            return;
        }
        let scheduled = match interval {
            Some(iv) => {
                if next_send >= sched.end {
                    return;
                }
                // The timer rounds deadlines up to the next 1 ms tick: aim one tick early so
                // the send is not systematically late (an early send is measured from when it
                // actually went out: latency counts from `min(scheduled, sent)`).
                if next_send > now + TIMER_TICK {
                    monoio::time::sleep_until(to_monoio(next_send - TIMER_TICK)).await;
                }
                let s = next_send;
                next_send += iv;
                s
            }
            None => now,
        };
        if stream.is_none() {
            match connect(sh.addr, sched.timeout).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    record_error(&sh, |c| c.connect += 1, || e);
                    if interval.is_none() {
                        monoio::time::sleep(RECONNECT_PAUSE).await;
                    }
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let request = sh.chooser.borrow_mut().next_request(&sh.plan);
        let sent = Instant::now();
        let result = monoio::time::timeout(sched.timeout, exchange(s, request, buf)).await;
        let done = Instant::now();
        let (outcome, returned) = match result {
            Ok((outcome, b)) => (outcome, b),
            Err(_) => {
                // The read op owns the old buffer until it is cancelled; start a new one.
                stream = None;
                record_error(&sh, |c| c.timeout += 1, || "request timed out".into());
                buf = Vec::with_capacity(sched.read_buffer);
                continue;
            }
        };
        buf = returned;
        let in_window = done >= sched.window_start && done < sched.end;
        match outcome {
            Ok(resp) => {
                if resp.head.close {
                    stream = None;
                }
                if !in_window {
                    continue;
                }
                let mut st = sh.stats.borrow_mut();
                st.statuses[usize::from(resp.head.status).min(599)] += 1;
                if resp.head.status == 200 || resp.head.status == 304 {
                    st.ok += 1;
                    st.bytes += resp.bytes;
                    st.latency.saturating_record(nanos(
                        done.saturating_duration_since(scheduled.min(sent)),
                    ));
                    st.service
                        .saturating_record(nanos(done.saturating_duration_since(sent)));
                } else {
                    st.errors.status += 1;
                    let status = resp.head.status;
                    st.sample(|| format!("status {status}"));
                }
            }
            Err(e) => {
                stream = None;
                match e {
                    ExchangeError::Io(err) => {
                        record_error(&sh, |c| c.io += 1, || format!("io: {err}"))
                    }
                    ExchangeError::Protocol(p) => {
                        record_error(&sh, |c| c.protocol += 1, || p.to_string())
                    }
                }
            }
        }
    }
}

/// Opens a connection with `TCP_NODELAY`, or says why not.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

fn count_missed(sh: &Shared, next_send: Instant, interval: Duration) {
    let sched = sh.schedule;
    let from = next_send.max(sched.window_start);
    if from < sched.end && !interval.is_zero() {
        let missed = (sched.end - from).as_secs_f64() / interval.as_secs_f64();
        sh.stats.borrow_mut().missed += missed.ceil() as u64;
    }
}

/// Counts an error if it happened after warm-up (a run that only fails must not look clean,
/// but warm-up noise is not the measurement).
fn record_error(sh: &Shared, bump: impl FnOnce(&mut ErrorCounts), msg: impl FnOnce() -> String) {
    if Instant::now() < sh.schedule.window_start {
        return;
    }
    let mut st = sh.stats.borrow_mut();
    bump(&mut st.errors);
    st.sample(msg);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[derive(Debug)]
enum ExchangeError {
    Io(std::io::Error),
    Protocol(ProtocolError),
}

struct Exchanged {
    head: Head,
    bytes: u64,
}

/// Sends one request and reads its whole response, reusing `buf`.
async fn exchange(
    s: &mut TcpStream,
    request: &'static [u8],
    mut buf: Vec<u8>,
) -> (Result<Exchanged, ExchangeError>, Vec<u8>) {
    let (r, _) = s.write_all(request).await;
    if let Err(e) = r {
        return (Err(ExchangeError::Io(e)), buf);
    }
    buf.clear();
    let mut bytes = 0u64;
    let head = loop {
        if buf.len() == buf.capacity() {
            return (
                Err(ExchangeError::Protocol(ProtocolError::HeadTooLarge)),
                buf,
            );
        }
        let (r, b) = s.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return (Err(ExchangeError::Protocol(ProtocolError::Eof)), buf),
            Ok(n) => bytes += n as u64,
            Err(e) => return (Err(ExchangeError::Io(e)), buf),
        }
        match parse_head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => continue,
            Err(e) => return (Err(ExchangeError::Protocol(e)), buf),
        }
    };
    let have = (buf.len() - head.len) as u64;
    if have > head.content_length {
        // No pipelining, so nothing may follow the body.
        return (
            Err(ExchangeError::Protocol(ProtocolError::TrailingBytes)),
            buf,
        );
    }
    let mut remaining = head.content_length - have;
    while remaining > 0 {
        buf.clear();
        let (r, b) = s.read(buf).await;
        buf = b;
        match r {
            Ok(0) => return (Err(ExchangeError::Protocol(ProtocolError::Eof)), buf),
            Ok(n) if n as u64 > remaining => {
                return (
                    Err(ExchangeError::Protocol(ProtocolError::TrailingBytes)),
                    buf,
                )
            }
            Ok(n) => {
                remaining -= n as u64;
                bytes += n as u64;
            }
            Err(e) => return (Err(ExchangeError::Io(e)), buf),
        }
    }
    (Ok(Exchanged { head, bytes }), buf)
}

/// Requests every distinct path of the plan once, over `concurrency` connections, and
/// returns `(successes, error messages)`. Used to fill caches before measuring.
pub async fn warm_pass(
    plan: Arc<Plan>,
    addr: SocketAddr,
    concurrency: usize,
    timeout: Duration,
) -> (u64, Vec<String>) {
    let requests: Rc<Vec<&'static [u8]>> = Rc::new(plan.all_requests().collect());
    let next = Rc::new(std::cell::Cell::new(0usize));
    let handles: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (requests, next) = (requests.clone(), next.clone());
            monoio::spawn(async move {
                let mut ok = 0u64;
                let mut errors = Vec::new();
                let mut buf = Vec::with_capacity(READ_BUF);
                let mut stream: Option<TcpStream> = None;
                loop {
                    let i = next.get();
                    let Some(&req) = requests.get(i) else { break };
                    next.set(i + 1);
                    let what = || {
                        String::from_utf8_lossy(req.split(|&b| b == b'\r').next().unwrap_or(req))
                            .into_owned()
                    };
                    if stream.is_none() {
                        match connect(addr, timeout).await {
                            Ok(s) => stream = Some(s),
                            Err(e) => {
                                errors.push(format!("{}: {e}", what()));
                                continue;
                            }
                        }
                    }
                    let Some(s) = stream.as_mut() else { continue };
                    match monoio::time::timeout(timeout, exchange(s, req, buf)).await {
                        Ok((Ok(resp), b)) => {
                            buf = b;
                            if resp.head.close {
                                stream = None;
                            }
                            if resp.head.status == 200 || resp.head.status == 304 {
                                ok += 1;
                            } else {
                                errors.push(format!("{}: status {}", what(), resp.head.status));
                            }
                        }
                        Ok((Err(e), b)) => {
                            buf = b;
                            stream = None;
                            errors.push(format!("{}: {e:?}", what()));
                        }
                        Err(_) => {
                            buf = Vec::with_capacity(READ_BUF);
                            stream = None;
                            errors.push(format!("{}: timed out", what()));
                        }
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let mut ok = 0;
    let mut errors = Vec::new();
    for h in handles {
        let (o, e) = h.await;
        ok += o;
        errors.extend(e);
    }
    (ok, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                len: 39,
                content_length: 12,
                close: false
            }
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let h = parse_head(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.content_length, h.close), (304, 0, true));
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close, "HTTP/1.0 without keep-alive closes");
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ProtocolError::Chunked)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(ProtocolError::NoLength)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ProtocolError::ConflictingLength)
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn stats_merge() {
        let mut a = ThreadStats::new();
        let mut b = ThreadStats::new();
        a.latency.record(1_000).unwrap();
        b.latency.record(3_000).unwrap();
        b.ok = 2;
        b.errors.timeout = 1;
        b.statuses[200] = 2;
        a.merge(&b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.ok, 2);
        assert_eq!(a.errors.total(), 1);
        assert_eq!(a.statuses[200], 2);
    }

    /// A tiny keep-alive server: answers every request with `body`, then a 404, then closes.
    fn serve(body: &'static [u8], responses: usize) -> SocketAddr {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let mut pending = Vec::new();
            let mut served = 0;
            while served < responses {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    served += 1;
                    let resp = if served == responses {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    } else {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        r.extend_from_slice(body);
                        r
                    };
                    if s.write_all(&resp).is_err() {
                        return;
                    }
                }
            }
        });
        addr
    }

    /// One connection on one thread, requesting `path` from `addr` until `end` after now
    /// (`rate`: open loop), on an epoll runtime.
    fn run_one_path(
        addr: SocketAddr,
        path: &str,
        end: Duration,
        rate: Option<f64>,
        read_buffer: usize,
    ) -> ThreadStats {
        let target = crate::workload::Target::parse(&format!("http://{addr}")).unwrap();
        let plan = crate::workload::Plan::build(crate::workload::PlanSpec {
            target: &target,
            mix: None,
            charts: None,
            paths: vec![path.into()],
            zipf: None,
            seed: 1,
            headers: &[],
        })
        .unwrap();
        let now = Instant::now();
        let spec = ThreadSpec {
            plan: Arc::new(plan),
            addr,
            schedule: Schedule {
                start: now,
                window_start: now,
                end: now + end,
                rate,
                timeout: Duration::from_secs(5),
                read_buffer,
            },
            connections: 0..1,
            total_connections: 1,
            thread_index: 0,
            threads: 1,
            seed: 1,
        };
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(run_thread(spec))
    }

    #[test]
    fn closed_loop_against_a_local_server() {
        // The default read size, and the smallest (many reads per body).
        for read_buffer in [READ_BUF, MIN_READ_BUF] {
            let body: &'static [u8] = Box::leak(vec![7u8; 300_000].into_boxed_slice());
            let addr = serve(body, 5);
            // The server stops after 5 responses; later connects fail fast.
            let st = run_one_path(addr, "a.tgz", Duration::from_millis(300), None, read_buffer);
            assert_eq!(st.ok, 4, "read buffer {read_buffer}");
            assert_eq!(st.statuses[200], 4);
            assert_eq!(st.statuses[404], 1);
            assert_eq!(st.errors.status, 1);
            assert!(st.errors.connect >= 1, "server gone: reconnects fail");
            assert!(st.bytes >= 4 * 300_000);
            assert_eq!(st.latency.len(), 4);
        }
    }

    #[test]
    fn open_loop_never_exceeds_its_schedule() {
        let body: &'static [u8] = b"ok";
        let addr = serve(body, 10_000);
        // One send every 10 ms: at most 20 in the 200 ms window.
        let st = run_one_path(addr, "a", Duration::from_millis(200), Some(100.0), READ_BUF);
        assert_eq!(st.errors.total(), 0, "{:?}", st.error_samples);
        assert!(
            st.ok >= 1 && st.ok + st.missed <= 21,
            "ok {} missed {}",
            st.ok,
            st.missed
        );
        // Latency from the schedule is never below the service time.
        assert!(st.latency.max() >= st.service.max());
    }
}

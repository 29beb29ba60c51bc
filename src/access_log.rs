//! The access log: one structured line per request on stdout (Envoy's access
//! log with the `RFCF` response-flags equivalent is the `cache` field).
//!
//! Each worker owns an [`AccessLog`] that appends lines to a private buffer.
//! When the buffer passes 32 KiB, or on the worker's periodic flush (every
//! 200 ms), the whole buffer is handed to the [`Writer`] thread, which owns
//! stdout — a worker never makes the `write` itself, so a slow or stalled
//! stdout (a full container log pipe) never stalls serving. Invariants:
//! - Lines are whole: a buffer is only ever handed over at line boundaries,
//!   and the writer writes each buffer with one `write_all`.
//! - The hand-over queue is bounded ([`QUEUE_BUFFERS`] buffers, ~4 MiB): when
//!   stdout cannot keep up, whole buffers are dropped and their lines counted
//!   in `chartcache_access_log_dropped_lines_total`, rather than growing
//!   memory or blocking a worker.
//! - [`Writer::finish`] (at shutdown, after the workers' last flush) writes
//!   everything still queued before it returns.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;
use crate::http1::render::push_u64;
use crate::metrics::{CacheResult, WorkerMetrics};

/// Flush threshold for the per-worker buffer.
const FLUSH_AT: usize = 32 * 1024;
/// Buffers that may wait for the writer thread before new ones are dropped.
pub const QUEUE_BUFFERS: usize = 128;

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The repository the path named (its prefix, `/` for the root); `None`: none.
    pub repo: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    pub duration: Duration,
    pub cache: CacheResult,
    /// Status of the upstream response used, if one was made for this request.
    pub upstream_status: Option<u16>,
    pub peer: Option<std::net::SocketAddr>,
    pub user_agent: Option<&'a str>,
}

enum Msg {
    Lines(Vec<u8>),
    Close,
}

/// The thread that owns the log output (stdout in the server).
pub struct Writer {
    tx: SyncSender<Msg>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread over `out`.
    pub fn start(out: impl Write + Send + 'static) -> std::io::Result<Writer> {
        let (tx, rx) = sync_channel(QUEUE_BUFFERS);
        let handle = std::thread::Builder::new()
            .name("chartcache-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(Writer {
            tx,
            handle: Some(handle),
        })
    }

    /// A handle for one worker's [`AccessLog`].
    pub fn sink(&self) -> Sink {
        Sink {
            tx: self.tx.clone(),
        }
    }

    /// Writes everything queued so far, then stops the thread.
    pub fn finish(mut self) {
        let _ = self.tx.send(Msg::Close);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn write_loop(rx: Receiver<Msg>, mut out: impl Write) {
    while let Ok(Msg::Lines(buf)) = rx.recv() {
        // A closed stdout must not take the server down; the lines are dropped.
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

/// A worker's way to the [`Writer`].
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Msg>,
}

/// A worker's access-log buffer.
pub struct AccessLog {
    format: LogFormat,
    worker: usize,
    sink: Option<Sink>,
    metrics: Arc<WorkerMetrics>,
    buf: RefCell<Vec<u8>>,
    /// Lines in `buf` (what is counted as dropped if it cannot be handed over).
    lines: Cell<u64>,
    /// The second `buf`'s timestamp prefix was rendered for, and that prefix.
    clock: RefCell<(u64, Vec<u8>)>,
}

impl AccessLog {
    /// `sink: None` disables the log (`--no-access-log`).
    pub fn new(
        sink: Option<Sink>,
        format: LogFormat,
        worker: usize,
        metrics: Arc<WorkerMetrics>,
    ) -> AccessLog {
        AccessLog {
            format,
            worker,
            buf: RefCell::new(if sink.is_some() {
                Vec::with_capacity(FLUSH_AT * 2)
            } else {
                Vec::new()
            }),
            sink,
            metrics,
            lines: Cell::new(0),
            clock: RefCell::new((u64::MAX, Vec::new())),
        }
    }

    /// Appends one line; hands the buffer over when it is large.
    pub fn log(&self, e: &Entry<'_>) {
        if self.sink.is_none() {
            return;
        }
        let mut buf = self.buf.borrow_mut();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut clock = self.clock.borrow_mut();
        match self.format {
            LogFormat::Json => write_json(&mut buf, &mut clock, now, self.worker, e),
            LogFormat::Text => write_text(&mut buf, &mut clock, now, e),
        }
        self.lines.set(self.lines.get() + 1);
        if buf.len() >= FLUSH_AT {
            self.hand_over(&mut buf);
        }
    }

    /// Hands whatever is buffered to the writer thread.
    pub fn flush(&self) {
        self.hand_over(&mut self.buf.borrow_mut());
    }

    fn hand_over(&self, buf: &mut Vec<u8>) {
        let Some(sink) = &self.sink else { return };
        if buf.is_empty() {
            return;
        }
        let full = std::mem::replace(buf, Vec::with_capacity(FLUSH_AT * 2));
        let lines = self.lines.replace(0);
        match sink.tx.try_send(Msg::Lines(full)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Lines(mut full)))
            | Err(TrySendError::Disconnected(Msg::Lines(mut full))) => {
                self.metrics.access_log_dropped.fetch_add(lines, Relaxed);
                full.clear();
                *buf = full;
            }
            Err(_) => {}
        }
    }
}

fn write_json(
    buf: &mut Vec<u8>,
    clock: &mut (u64, Vec<u8>),
    now: Duration,
    worker: usize,
    e: &Entry<'_>,
) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, clock, now);
    buf.extend_from_slice(b"\",\"type\":\"access\",\"worker\":");
    push_u64(buf, worker as u64);
    buf.extend_from_slice(b",\"method\":");
    push_json_str(buf, e.method);
    buf.extend_from_slice(b",\"path\":");
    push_json_str(buf, e.path);
    if let Some(repo) = e.repo {
        buf.extend_from_slice(b",\"repo\":");
        push_json_str(buf, repo);
    }
    buf.extend_from_slice(b",\"status\":");
    push_u64(buf, e.status as u64);
    buf.extend_from_slice(b",\"bytes\":");
    push_u64(buf, e.bytes);
    buf.extend_from_slice(b",\"duration_us\":");
    push_u64(buf, e.duration.as_micros() as u64);
    buf.extend_from_slice(b",\"cache\":\"");
    buf.extend_from_slice(e.cache.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"upstream_status\":");
    match e.upstream_status {
        Some(s) => push_u64(buf, s as u64),
        None => buf.extend_from_slice(b"null"),
    }
    if let Some(peer) = e.peer {
        buf.extend_from_slice(b",\"peer\":\"");
        push_peer(buf, peer);
        buf.push(b'"');
    }
    if let Some(ua) = e.user_agent {
        buf.extend_from_slice(b",\"user_agent\":");
        push_json_str(buf, ua);
    }
    buf.extend_from_slice(b"}\n");
}

fn write_text(buf: &mut Vec<u8>, clock: &mut (u64, Vec<u8>), now: Duration, e: &Entry<'_>) {
    timestamp(buf, clock, now);
    let _ = write!(
        buf,
        " {} {} {} {}B {:.3}ms {} upstream={} repo={}",
        e.method,
        e.path.escape_debug(),
        e.status,
        e.bytes,
        e.duration.as_secs_f64() * 1e3,
        e.cache.as_str(),
        e.upstream_status.map_or("-".to_string(), |s| s.to_string()),
        e.repo.unwrap_or("-").escape_debug(),
    );
    buf.push(b'\n');
}

/// A JSON string literal, escaping quotes, backslashes and control characters.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                let _ = write!(buf, "\\u{:04x}", b);
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

/// An address as `Display` writes it; IPv4 without the formatting machinery
/// (it is on every line).
fn push_peer(buf: &mut Vec<u8>, peer: std::net::SocketAddr) {
    match peer {
        std::net::SocketAddr::V4(a) => {
            for (i, o) in a.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                push_u64(buf, *o as u64);
            }
            buf.push(b':');
            push_u64(buf, a.port() as u64);
        }
        v6 => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// `rfc3339(now)`, with the part up to the seconds rendered once per second.
fn timestamp(buf: &mut Vec<u8>, clock: &mut (u64, Vec<u8>), now: Duration) {
    let secs = now.as_secs();
    if clock.0 != secs {
        clock.1.clear();
        rfc3339(&mut clock.1, Duration::from_secs(secs));
        clock.1.truncate(clock.1.len() - "000Z".len());
        clock.0 = secs;
    }
    buf.extend_from_slice(&clock.1);
    let ms = now.subsec_millis();
    buf.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn rfc3339(buf: &mut Vec<u8>, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        buf,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    );
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            repo: Some("/stable"),
            method: "GET",
            path: "/we\"ird\u{1}.tgz",
            status: 200,
            bytes: 1234,
            duration: Duration::from_micros(250),
            cache: CacheResult::Hit,
            upstream_status: None,
            peer: None,
            user_agent: Some("Helm/4.3"),
        }
    }

    #[test]
    fn json_line_is_valid_json() {
        let mut buf = Vec::new();
        let mut clock = (u64::MAX, Vec::new());
        write_json(
            &mut buf,
            &mut clock,
            Duration::from_millis(1_764_072_000_123),
            1,
            &entry(),
        );
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["path"], "/we\"ird\u{1}.tgz");
        assert_eq!(v["repo"], "/stable");
        assert_eq!(v["cache"], "HIT");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(v["upstream_status"], serde_json::Value::Null);
        assert_eq!(v["timestamp"], "2025-11-25T12:00:00.123Z");
    }

    #[test]
    fn text_line_is_one_line() {
        let mut buf = Vec::new();
        write_text(
            &mut buf,
            &mut (u64::MAX, Vec::new()),
            Duration::from_secs(0),
            &entry(),
        );
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s.lines().count(), 1);
        assert!(s.starts_with("1970-01-01T00:00:00.000Z GET "), "{s}");
        assert!(s.contains(" HIT upstream=-"), "{s}");
    }

    /// An output that blocks until released, then records what it is given.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        got: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Gate {
        fn new(open: bool) -> Gate {
            Gate {
                open: Arc::new((std::sync::Mutex::new(open), std::sync::Condvar::new())),
                got: Arc::default(),
            }
        }
        fn release(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut open = self.open.0.lock().unwrap();
            while !*open {
                open = self.open.1.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A JSON access log whose writer thread writes to `out`.
    fn json_log_to(out: &Gate) -> (Writer, Arc<WorkerMetrics>, AccessLog) {
        let writer = Writer::start(out.clone()).unwrap();
        let metrics = Arc::new(WorkerMetrics::default());
        let log = AccessLog::new(Some(writer.sink()), LogFormat::Json, 0, metrics.clone());
        (writer, metrics, log)
    }

    #[test]
    fn writer_writes_every_line_in_order_by_finish() {
        let out = Gate::new(true);
        let (writer, metrics, log) = json_log_to(&out);
        let mut e = entry();
        for i in 0..2000u64 {
            e.bytes = i;
            log.log(&e);
        }
        log.flush();
        writer.finish();
        let got = out.got.lock().unwrap().clone();
        let lines: Vec<serde_json::Value> = got
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2000);
        for (i, v) in lines.iter().enumerate() {
            assert_eq!(v["bytes"], i as u64);
        }
        assert_eq!(metrics.access_log_dropped.load(Relaxed), 0);
    }

    #[test]
    fn stalled_output_drops_whole_buffers_and_counts_them() {
        let out = Gate::new(false);
        let (writer, metrics, log) = json_log_to(&out);
        // The writer takes one buffer and blocks; the queue holds
        // QUEUE_BUFFERS more; everything after that is dropped.
        let handovers = QUEUE_BUFFERS as u64 + 10;
        let per_buffer = 3u64;
        for _ in 0..handovers {
            for _ in 0..per_buffer {
                log.log(&entry());
            }
            log.flush();
        }
        let dropped = metrics.access_log_dropped.load(Relaxed);
        assert!(dropped >= 9 * per_buffer, "dropped {dropped}");
        assert_eq!(dropped % per_buffer, 0, "whole buffers only");
        out.release();
        writer.finish();
        let got = out.got.lock().unwrap().clone();
        let written = got.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(written + dropped, handovers * per_buffer);
        for l in got.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<serde_json::Value>(l).unwrap();
        }
    }

    #[test]
    fn cached_second_prefix_matches_full_rendering() {
        let mut clock = (u64::MAX, Vec::new());
        for ms in [0u64, 1, 999, 1000, 59_999, 86_400_000, 1_764_072_000_123] {
            let now = Duration::from_millis(ms);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            timestamp(&mut a, &mut clock, now);
            rfc3339(&mut b, now);
            assert_eq!(a, b, "{ms}");
        }
    }

    #[test]
    fn peers_render_like_display() {
        for p in ["127.0.0.1:8080", "10.255.0.9:1", "[::1]:443", "0.0.0.0:0"] {
            let addr: std::net::SocketAddr = p.parse().unwrap();
            let mut buf = Vec::new();
            push_peer(&mut buf, addr);
            assert_eq!(String::from_utf8(buf).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}

//! Shared integration-test fixtures: a real S3 (s3s-fs with SigV4 checks) and a
//! scripted raw HTTP server for fault injection.
//!
//! Owns: [`spawn_s3`] / [`S3Server`] (counts requests per method + path and
//! connections, so tests can assert "exactly one upstream GET" and keep-alive
//! reuse; emulates S3's `If-None-Match` → 304, which s3s-fs lacks), and
//! [`spawn_raw_http`] / [`spawn_silent_http`] (truncated bodies, bad headers,
//! servers that never answer); [`run`] / [`read_all`] for tests on a monoio
//! runtime; `harness` for test targets that need an external tool.
//!
//! Invariants: every server binds 127.0.0.1:0, runs on its own thread, and stops
//! when dropped (or on [`S3Server::stop`], for outage tests).
#![allow(dead_code)]

pub mod egress;
pub mod harness;
pub mod proxy;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Requests seen, keyed by (method, path).
type Counts = Arc<Mutex<HashMap<(String, String), u64>>>;

/// An in-process S3 (s3s-fs) on 127.0.0.1, verifying SigV4 with one key pair.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`, for `--s3-endpoint`.
    pub endpoint: String,
    pub addr: SocketAddr,
    /// Root directory: a bucket is `root/BUCKET`, an object `root/BUCKET/KEY`.
    pub root: PathBuf,
    counts: Counts,
    connections: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

/// Start s3s-fs with `SimpleAuth::from_single(access_key, secret_key)`.
pub fn spawn_s3(access_key: &str, secret_key: &str) -> S3Server {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let counts: Counts = Arc::default();
    let connections = Arc::new(AtomicU64::new(0));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let thread = {
        let root = root.clone();
        let counts = counts.clone();
        let connections = connections.clone();
        let (ak, sk) = (access_key.to_owned(), secret_key.to_owned());
        std::thread::Builder::new()
            .name("test-s3".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve_s3(
                    root,
                    ak,
                    sk,
                    counts,
                    connections,
                    addr_tx,
                    stop_rx,
                ));
                // Dropping the runtime drops every connection task: clients see
                // the connections close, as in a real outage.
                drop(rt);
            })
            .unwrap()
    };
    let addr: SocketAddr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    S3Server {
        endpoint: format!("http://{addr}"),
        addr,
        root,
        counts,
        connections,
        shutdown: Some(stop_tx),
        thread: Some(thread),
        _tmp: tmp,
    }
}

async fn serve_s3(
    root: PathBuf,
    ak: String,
    sk: String,
    counts: Counts,
    connections: Arc<AtomicU64>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    mut stop_rx: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use s3s::service::S3ServiceBuilder;

    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ak, sk));
    let service = builder.build();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    addr_tx.send(listener.local_addr().unwrap()).unwrap();
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());

    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = &mut stop_rx => return,
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let service = service.clone();
        let counts = counts.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let service = service.clone();
            let counts = counts.clone();
            async move {
                let key = (req.method().to_string(), req.uri().path().to_owned());
                *counts.lock().unwrap().entry(key).or_insert(0) += 1;
                let if_none_match = req
                    .headers()
                    .get(http::header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let resp = hyper::service::Service::call(&service, req).await?;
                Ok::<_, s3s::HttpError>(not_modified_if_matching(resp, if_none_match))
            }
        });
        let conn = http
            .serve_connection(TokioIo::new(socket), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[path = "../../examples/support/s3_conditional.rs"]
mod s3_conditional;
use s3_conditional::not_modified_if_matching;

impl S3Server {
    /// Write an object straight into the backing directory.
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.root.join(bucket).join(key.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Create an empty bucket.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.join(bucket)).unwrap();
    }

    /// Number of requests with this method and (encoded) path.
    pub fn count(&self, method: &str, path: &str) -> u64 {
        let counts = self.counts.lock().unwrap();
        counts
            .get(&(method.to_owned(), path.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Number of GETs of this path (e.g. `/bucket/index.yaml`).
    pub fn get_count(&self, path: &str) -> u64 {
        self.count("GET", path)
    }

    /// Total requests seen.
    pub fn total_requests(&self) -> u64 {
        self.counts.lock().unwrap().values().sum()
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stop the server: the listener closes (new connections are refused) and
    /// open connections are dropped.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scripted HTTP server: connection `i` gets `responses[i]` (the last one
/// repeats), written after the request head is read; then the connection closes.
pub struct RawServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawServer {
    /// Request heads received so far, in order.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve scripted raw responses (see [`RawServer`]).
pub fn spawn_raw_http(responses: Vec<Vec<u8>>) -> RawServer {
    spawn_raw(Some(responses))
}

/// A server that accepts, reads the request and never answers (holds the
/// connection open until dropped).
pub fn spawn_silent_http() -> RawServer {
    spawn_raw(None)
}

fn spawn_raw(responses: Option<Vec<Vec<u8>>>) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let requests = requests.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut served = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => return,
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let head = read_request_head(&mut stream);
                requests.lock().unwrap().push(head);
                match &responses {
                    Some(list) if !list.is_empty() => {
                        let reply = &list[served.min(list.len() - 1)];
                        served += 1;
                        let _ = stream.write_all(reply);
                        let _ = stream.flush();
                        // Dropping closes the connection.
                    }
                    _ => held.push(stream),
                }
            }
        })
    };
    RawServer {
        addr,
        endpoint: format!("http://{addr}"),
        requests,
        stop,
        thread: Some(thread),
    }
}

fn read_request_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub fn refused_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Run a test body on a monoio runtime (io_uring, epoll fallback), bounded so a
/// bug cannot hang the suite.
pub fn run<F: std::future::Future<Output = ()>>(f: F) {
    let bounded = async {
        monoio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("test timed out");
    };
    // The epoll builds (tests/common/proxy.rs: test_driver) run the code under test on
    // epoll here too, as the workers do under a container's default seccomp profile.
    if proxy::test_driver() == Some("epoll") {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(bounded);
    } else {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(bounded);
    }
}

/// An origin response body, read to its end.
pub async fn read_all(
    body: &mut dyn chartcache::origin::BodyStream,
) -> Result<Vec<u8>, chartcache::origin::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Settings for a test `HttpClient`: 5 s connect and request timeouts, a pool
/// of 2, bundled roots.
pub fn test_client_settings() -> chartcache::origin::client::ClientSettings {
    chartcache::origin::client::ClientSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        dns_refresh: Duration::from_secs(60),
        max_idle: 2,
        tls_roots: chartcache::origin::TlsRoots::Webpki,
        proxies: chartcache::origin::proxy::EgressProxies::none(),
    }
}

/// Deterministic, unique bytes for object `i` (xorshift64*, seeded by `i`).
/// Reads a request head from a fake upstream's connection (timeout `within`) and returns
/// its target; `None` if the peer closed or went quiet first.
pub fn read_request_target(s: &mut std::net::TcpStream, within: Duration) -> Option<String> {
    let _ = s.set_read_timeout(Some(within));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    Some(line.split_whitespace().nth(1).unwrap_or("").to_string())
}

pub fn object_bytes(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

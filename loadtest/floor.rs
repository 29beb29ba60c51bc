//! `chartcache-loadtest floor`: the bare responder — the practical floor a caching proxy is
//! measured against on this machine.
//!
//! It does only what no HTTP server can skip: N worker threads (one monoio runtime each, own
//! `SO_REUSEPORT` listener, `TCP_NODELAY`), keep-alive connections, a request head parsed with
//! httparse, and for a GET of a known path one pre-rendered response (head + body in one
//! buffer, loaded into memory at start) written with one io_uring send. No cache, no index, no
//! checksums, no logging, no metrics. Unknown paths get a 404; anything malformed closes.
//!
//! What chartcache spends per hit beyond this (lookup, CRC state, header rendering, access log,
//! metrics, timers) is the difference between the two rows of `compare.sh`'s table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

/// `floor` subcommand flags.
#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Directory whose files are served (path = file path relative to it).
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Worker threads, one monoio runtime and listener each.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Start each response this many bytes past a 64-byte boundary (measures what the
    /// source buffer's alignment costs the kernel's copy).
    #[arg(long, default_value_t = 0)]
    misalign: usize,
}

/// Every file under `root`, keyed by its URL path, as a complete pre-rendered 200 response.
fn load(root: &Path, misalign: usize) -> Result<HashMap<String, Bytes>> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let body =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let ct = if rel.ends_with(".tgz") {
                "application/gzip"
            } else {
                "text/yaml"
            };
            let mut resp = vec![0u8; misalign];
            resp.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            resp.extend_from_slice(&body);
            out.insert(format!("/{rel}"), Bytes::from(resp).slice(misalign..));
        }
    }
    Ok(out)
}

const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/// Runs the responder until killed.
pub fn run(a: FloorArgs) -> Result<()> {
    let files = Arc::new(load(&a.root, a.misalign)?);
    anyhow::ensure!(!files.is_empty(), "{} holds no files", a.root.display());
    let mut handles = Vec::new();
    for _ in 0..a.workers.max(1) {
        let std_listener = reuseport_listener(a.listen)?;
        let files = files.clone();
        handles.push(std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("monoio runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve(stream, files.clone()));
                }
            })
        }));
    }
    eprintln!(
        "floor: serving {} files on {} with {} workers",
        files.len(),
        a.listen,
        handles.len()
    );
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn serve(mut stream: TcpStream, files: Arc<HashMap<String, Bytes>>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Answer every complete request already in the buffer.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let resp = match (req.method, req.path) {
                (Some("GET"), Some(p)) => files.get(p.split('?').next().unwrap_or(p)).cloned(),
                _ => None,
            };
            let close = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
            });
            buf.drain(..n);
            let (res, _) = match resp {
                Some(r) => stream.write_all(r).await,
                None => stream.write_all(Bytes::from_static(NOT_FOUND)).await,
            };
            if res.is_err() || close {
                return;
            }
        }
        let len = buf.len();
        if len > 64 * 1024 {
            return;
        }
        buf.reserve(4096);
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

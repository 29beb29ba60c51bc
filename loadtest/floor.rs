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
//!
//! It shares no code with chartcache on purpose (its listener setup and `--sendfile` loop have
//! twins in `src/runtime.rs` and `src/server/send.rs`): a reference that used chartcache's own
//! send path would move with chartcache's regressions and hide them.

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
    /// Send bodies with sendfile(2) from the files (head with MSG_MORE) on an epoll
    /// runtime, as nginx static does, instead of from memory.
    #[arg(long)]
    sendfile: bool,
    /// With --sendfile: copy all bodies into one file at this path (like a cache
    /// segment) and send from offsets in it.
    #[arg(long, requires = "sendfile")]
    pack: Option<PathBuf>,
    /// With --pack: also map the packed file and read each body's first byte through the
    /// map before sending it (what a cache that checks its record does).
    #[arg(long, requires = "pack")]
    mmap_touch: bool,
    /// With --pack: start every body at a multiple of this many bytes (0: packed tight,
    /// off page boundaries).
    #[arg(long, default_value_t = 0, requires = "pack")]
    pack_align: u64,
}

/// One servable file.
#[derive(Clone)]
struct Resource {
    /// Head + body, pre-rendered.
    resp: Bytes,
    head_len: usize,
    /// The body's file and offset, for --sendfile.
    file: Option<(Arc<std::fs::File>, u64)>,
    /// The packed file's map, with --mmap-touch.
    map: Option<Arc<memmap2::Mmap>>,
}

/// Every file under `root`, keyed by its URL path, as a complete pre-rendered 200 response.
fn load(root: &Path, misalign: usize) -> Result<HashMap<String, Resource>> {
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
            let head_len = resp.len() - misalign;
            resp.extend_from_slice(&body);
            let file = Arc::new(std::fs::File::open(&path)?);
            out.insert(
                format!("/{rel}"),
                Resource {
                    resp: Bytes::from(resp).slice(misalign..),
                    head_len,
                    file: Some((file, 0)),
                    map: None,
                },
            );
        }
    }
    Ok(out)
}

const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/// Runs the responder until killed.
pub fn run(a: FloorArgs) -> Result<()> {
    let mut files = load(&a.root, a.misalign)?;
    anyhow::ensure!(!files.is_empty(), "{} holds no files", a.root.display());
    if let Some(pack) = &a.pack {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(pack)
            .with_context(|| format!("creating {}", pack.display()))?;
        let f = Arc::new(f);
        let mut at = 4096 + 77u64; // not page aligned, like a record body
        for r in files.values_mut() {
            let body = &r.resp[r.head_len..];
            if a.pack_align > 0 {
                at = at.div_ceil(a.pack_align) * a.pack_align;
            }
            f.write_all_at(body, at)?;
            r.file = Some((f.clone(), at));
            at += body.len() as u64 + 131;
        }
        if a.mmap_touch {
            // SAFETY: the file is private to this process and never truncated.
            let map = Arc::new(unsafe { memmap2::Mmap::map(&*f)? });
            for r in files.values_mut() {
                r.map = Some(map.clone());
            }
        }
    }
    let files = Arc::new(files);
    let sendfile = a.sendfile;
    let mut handles = Vec::new();
    for _ in 0..a.workers.max(1) {
        let std_listener = reuseport_listener(a.listen)?;
        let files = files.clone();
        handles.push(std::thread::spawn(move || {
            let accept = accept_loop(std_listener, files, sendfile);
            if sendfile {
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio runtime")
                    .block_on(accept)
            } else {
                monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio runtime")
                    .block_on(accept)
            }
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

async fn accept_loop(
    std_listener: std::net::TcpListener,
    files: Arc<HashMap<String, Resource>>,
    sendfile: bool,
) {
    if sendfile {
        // The epoll driver needs a non-blocking listener.
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
    }
    let listener = TcpListener::from_std(std_listener).expect("listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        monoio::spawn(serve(stream, files.clone(), sendfile));
    }
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

async fn serve(mut stream: TcpStream, files: Arc<HashMap<String, Resource>>, sendfile: bool) {
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
            let res = match resp {
                Some(r) if sendfile => send_file(&stream, &r).await,
                Some(r) => stream.write_all(r.resp).await.0.map(|_| ()),
                None => stream
                    .write_all(Bytes::from_static(NOT_FOUND))
                    .await
                    .0
                    .map(|_| ()),
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

/// Head with `MSG_MORE`, body with `sendfile(2)`, on a non-blocking (epoll) socket.
async fn send_file(stream: &TcpStream, r: &Resource) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = stream.as_raw_fd();
    let head = &r.resp[..r.head_len];
    let body_len = r.resp.len() - r.head_len;
    let (file, base) = r.file.as_ref().expect("a file for every resource");
    if let Some(map) = &r.map {
        std::hint::black_box(map[*base as usize]);
    }
    let mut sent = 0;
    while sent < head.len() {
        let rest = &head[sent..];
        // SAFETY: `rest` is a live slice the kernel only reads during the call.
        let n = unsafe {
            libc::send(
                sock,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | libc::MSG_MORE,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            stream.writable(false).await?;
        } else {
            sent += n as usize;
        }
    }
    let mut sent = 0;
    while sent < body_len {
        let mut off = (*base + sent as u64) as libc::off_t;
        // SAFETY: both descriptors are open for the call; `off` is a local.
        let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut off, body_len - sent) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            stream.writable(false).await?;
        } else if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        } else {
            sent += n as usize;
        }
    }
    Ok(())
}

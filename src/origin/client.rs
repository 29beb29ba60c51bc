//! A small HTTP/1.1 client for monoio, one instance per worker and upstream.
//!
//! Owns: connecting (plain TCP or rustls TLS, directly or through an egress
//! proxy's `CONNECT` tunnel or absolute-form forwarding: [`super::proxy`]) to one `host:port`, a per-worker
//! keep-alive pool, DNS caching, timeouts, sending a GET/HEAD, parsing the head
//! (with [`crate::http1::response`], keeping the extra headers the origin named
//! with [`HttpClient::keeping_headers`]) and streaming the body ([`ClientBody`]).
//! Does not own: signing (the caller passes ready headers), status mapping
//! ([`super::response`]), the meaning of any header beyond framing, validators
//! and `Content-Type` (the origin that asked to keep it reads it).
//!
//! Invariants:
//! - the pool is `Rc<RefCell<…>>`: never shared across threads; capped at
//!   `max_idle` connections; idle connections older than [`POOL_IDLE_TIMEOUT`] are
//!   dropped instead of reused;
//! - a connection goes back to the pool only when its exchange was framed
//!   exactly: the body read completely (declared length or chunked terminator;
//!   nothing for HEAD, 204 and 304), no byte beyond it in what was read, and the
//!   server did not ask to close; never after any error, never if the body is
//!   dropped early;
//! - a pooled connection is reused only if its socket is quiet: anything that
//!   arrived while it sat idle (a late surplus response, an unsolicited one, or
//!   the server's close) makes it unusable, checked with a non-blocking
//!   `MSG_PEEK` right before the next request is written (`Conn::idle_state`).
//!   Otherwise such bytes would be read as the answer to the next request, for
//!   another key. Surplus bytes are logged (rate-limited) and counted in
//!   [`ClientStats::unsolicited`] (on an idle TLS connection they may be the
//!   server's `close_notify`, so they count as [`ClientStats::idle_closed`],
//!   unlogged). Limit: with TLS, bytes that arrived in the
//!   same read as the body's end may sit inside monoio-rustls's buffers, which
//!   it does not expose; a TLS read that filled its whole buffer is therefore
//!   never followed by reuse, the rest is not detectable here;
//! - bodies stream: at most one read (≤ [`READ_CHUNK`]) is buffered at a time;
//!   a body that ends before its framing says is [`Error::Truncated`];
//! - responses framed by connection close (no `Content-Length`, not chunked) are
//!   rejected: a short body could not be told from a complete one, so it could
//!   neither be cached safely nor relayed with honest framing (S3 never sends
//!   one; an HTTP/1.1 server that does is answered 502);
//! - `100 Continue` interim heads are skipped (at most [`MAX_INTERIM`]); any
//!   other 1xx is [`Error::UnexpectedStatus`];
//! - a pooled connection that fails before any response byte (stale keep-alive)
//!   is retried once on a fresh connection; only GET/HEAD exist here, so the
//!   retry is always safe;
//! - DNS is resolved off the worker thread and cached for `dns_refresh` (like
//!   Envoy `LOGICAL_DNS`); a failed refresh keeps the last good addresses.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector};
use rustls::pki_types::ServerName;

use super::proxy::{self, EgressProxies, ProxyRoute};
use super::{BodyStream, Error, LocalBoxFuture, Method, OriginConfig, TlsRoots};
use crate::http1::chunked::{ChunkedDecoder, ChunkedError};
use crate::http1::response::{parse_response_keeping, BodyFraming, ResponseError, ResponseHead};

/// Size of one socket read.
pub const READ_CHUNK: usize = 32 * 1024;
/// Idle pooled connections older than this are closed rather than reused
/// (S3 closes idle connections after roughly 20 s).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// `100 Continue` interim heads skipped before one response head, at most.
pub const MAX_INTERIM: usize = 4;
/// At most one warning per this interval about bytes upstream sent outside an
/// exchange (the count is in [`ClientStats::unsolicited`]).
const UNSOLICITED_WARN_EVERY: Duration = Duration::from_secs(60);
/// Sent as `User-Agent` upstream.
const USER_AGENT: &str = concat!("chartcache/", env!("CARGO_PKG_VERSION"));

pub use super::endpoint::Endpoint;

/// Timeouts and limits, usually from [`OriginConfig`].
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Deadline for the whole response head, and for each body read.
    pub request_timeout: Duration,
    pub dns_refresh: Duration,
    pub max_idle: usize,
    pub tls_roots: TlsRoots,
    /// Egress proxy rules (`HTTPS_PROXY`, `NO_PROXY`, ... : [`super::proxy`]).
    pub proxies: Arc<EgressProxies>,
}

impl From<&OriginConfig> for ClientSettings {
    fn from(c: &OriginConfig) -> Self {
        Self {
            connect_timeout: c.connect_timeout,
            request_timeout: c.request_timeout,
            dns_refresh: c.dns_refresh,
            max_idle: c.max_idle_connections,
            tls_roots: c.tls_roots,
            proxies: EgressProxies::from_env(),
        }
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// New connections established.
    pub connects: u64,
    /// Requests sent on a pooled connection.
    pub reuses: u64,
    /// Stale pooled connections retried on a fresh one.
    pub stale_retries: u64,
    /// Pooled connections found closed by the server before reuse (with TLS:
    /// closed, or anything received while idle).
    pub idle_closed: u64,
    /// Connections closed because upstream sent bytes outside an exchange:
    /// beyond a body's framing, or while the connection sat idle in the pool.
    pub unsolicited: u64,
}

/// A head plus its streaming body.
pub struct ClientResponse {
    pub head: ResponseHead,
    pub body: ClientBody,
}

/// HTTP/1.1 client bound to one endpoint. Cheap to clone (shares the pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Rc<Inner>,
    /// Response headers kept in [`ResponseHead::kept`] besides the typed ones.
    keep_headers: &'static [&'static str],
}

struct Inner {
    endpoint: Endpoint,
    authority: String,
    /// Through an egress proxy, when the rules say so.
    proxy: Option<ProxyRoute>,
    settings: ClientSettings,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    pool: RefCell<Vec<Conn>>,
    dns: RefCell<DnsCache>,
    stats: Cell<ClientStats>,
    /// When unsolicited bytes were last warned about (rate limit).
    unsolicited_warned: Cell<Option<Instant>>,
}

impl Inner {
    /// Where TCP connects: the proxy, or the upstream itself.
    fn connect_to(&self) -> &Endpoint {
        self.proxy.as_ref().map_or(&self.endpoint, |r| &r.proxy)
    }

    /// `host:port` with the port always present (a `CONNECT` target).
    fn authority_with_port(&self) -> String {
        let Endpoint { host, port, .. } = &self.endpoint;
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

/// Logs which proxy an upstream goes through, once per process and pair
/// (every worker builds its own client).
fn log_route_once(upstream: &Endpoint, route: &ProxyRoute) {
    static LOGGED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let pair = (upstream.authority(), route.display());
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if !logged.contains(&pair) {
        tracing::info!(
            upstream = %pair.0,
            proxy = %pair.1,
            mode = if route.tunnel { "CONNECT tunnel" } else { "absolute-form requests" },
            "upstream connections go through an egress proxy (HTTPS_PROXY / HTTP_PROXY; NO_PROXY to bypass)"
        );
        logged.push(pair);
    }
}

#[derive(Default)]
struct DnsCache {
    addrs: Vec<SocketAddr>,
    resolved_at: Option<Instant>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

struct Conn {
    io: Io,
    /// The TCP socket under `io` (owned by `io`; valid as long as this `Conn`).
    fd: RawFd,
    /// Bytes read but not yet consumed.
    buf: BytesMut,
    /// The last read filled its whole buffer: with TLS, more may be buffered
    /// inside the TLS layer, out of sight.
    last_read_full: bool,
    idle_since: Instant,
}

/// What an idle pooled connection's socket holds (see [`Conn::idle_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleState {
    /// Nothing to read: safe to write the next request.
    Quiet,
    /// Bytes arrived while idle: a late or unsolicited response.
    Readable,
    /// The server closed (or reset) the connection.
    Closed,
}

impl Conn {
    async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        let (res, _) = match &mut self.io {
            Io::Plain(s) => s.write_all(data).await,
            Io::Tls(s) => s.write_all(data).await,
        };
        res.map(|_| ())
    }

    /// Read once, appending to `self.buf`. `Ok(0)` is end of stream.
    async fn read_some(&mut self) -> io::Result<usize> {
        let chunk = BytesMut::with_capacity(READ_CHUNK);
        let (res, chunk) = match &mut self.io {
            Io::Plain(s) => s.read(chunk).await,
            Io::Tls(s) => s.read(chunk).await,
        };
        let n = res?;
        self.last_read_full = n == READ_CHUNK;
        if self.buf.is_empty() {
            self.buf = chunk;
        } else {
            self.buf.extend_from_slice(&chunk);
        }
        Ok(n)
    }

    /// Looks at the socket without reading it or waiting (`MSG_PEEK |
    /// MSG_DONTWAIT`): whether anything arrived since the last exchange ended.
    fn idle_state(&self) -> IdleState {
        let mut byte = 0u8;
        loop {
            // SAFETY: `self.fd` is the socket owned by `self.io`, open for as
            // long as `self` lives; `byte` is a valid writable 1-byte buffer;
            // MSG_PEEK leaves any data in the socket and MSG_DONTWAIT never
            // blocks, whichever driver owns the fd.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    std::ptr::from_mut(&mut byte).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            return match n {
                0 => IdleState::Closed,
                n if n > 0 => IdleState::Readable,
                _ => match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => IdleState::Quiet,
                    io::ErrorKind::Interrupted => continue,
                    _ => IdleState::Closed,
                },
            };
        }
    }

    /// Whether bytes beyond the last exchange may be buffered: read but not
    /// consumed, or (TLS) possibly held inside the TLS layer.
    fn has_surplus(&self) -> bool {
        !self.buf.is_empty() || (self.last_read_full && matches!(self.io, Io::Tls(_)))
    }
}

/// Why one request/response exchange failed; `Stale` ones may be retried.
enum ExchangeError {
    /// Failed before any response byte arrived (write error, EOF, reset).
    Stale(Error),
    Fatal(Error),
}

impl HttpClient {
    pub fn new(endpoint: Endpoint, settings: ClientSettings) -> Result<Self, Error> {
        let tls = if endpoint.tls {
            Some(tls_config(settings.tls_roots)?)
        } else {
            None
        };
        Self::build(endpoint, settings, tls)
    }

    /// Like [`new`](Self::new) but with a caller-provided rustls config (a
    /// private CA bundle, tests). Ignored for plain-HTTP endpoints.
    pub fn with_tls_config(
        endpoint: Endpoint,
        settings: ClientSettings,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        Self::build(endpoint, settings, Some(config))
    }

    fn build(
        endpoint: Endpoint,
        settings: ClientSettings,
        config: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, Error> {
        let tls = match config {
            Some(config) if endpoint.tls => {
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    Error::Config(format!("TLS server name {:?}: {e}", endpoint.host))
                })?;
                Some((TlsConnector::from(config), name))
            }
            _ => None,
        };
        let proxy = settings.proxies.route(&endpoint)?;
        if let Some(route) = &proxy {
            log_route_once(&endpoint, route);
        }
        Ok(Self {
            inner: Rc::new(Inner {
                authority: endpoint.authority(),
                proxy,
                endpoint,
                settings,
                tls,
                pool: RefCell::new(Vec::new()),
                dns: RefCell::new(DnsCache::default()),
                stats: Cell::new(ClientStats::default()),
                unsolicited_warned: Cell::new(None),
            }),
            keep_headers: &[],
        })
    }

    /// Also keep the response headers named in `names` (checked like the typed
    /// ones; see [`parse_response_keeping`]) in every [`ResponseHead::kept`].
    pub fn keeping_headers(self, names: &'static [&'static str]) -> Self {
        Self {
            keep_headers: names,
            ..self
        }
    }

    /// The `Host` value every request carries (and the one a signing origin signs).
    pub fn authority(&self) -> &str {
        &self.inner.authority
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub fn stats(&self) -> ClientStats {
        self.inner.stats.get()
    }

    /// Idle connections currently pooled.
    pub fn idle_connections(&self) -> usize {
        self.inner.pool.borrow().len()
    }

    /// Send `method path` with `Host`, `User-Agent` and `headers` (which must not
    /// contain `host`; values must be free of control bytes). Returns once the
    /// response head has arrived.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<ClientResponse, Error> {
        let request = self.render(method, path, headers)?;
        let head_request = method == Method::Head;
        // First attempt may use a pooled connection; a stale one is retried once fresh.
        let mut conn_from_pool = self.take_idle();
        loop {
            let pooled = conn_from_pool.is_some();
            let conn = match conn_from_pool.take() {
                Some(c) => {
                    self.bump(|s| s.reuses += 1);
                    c
                }
                None => self.connect().await?,
            };
            match self.exchange(conn, request.clone(), head_request).await {
                Ok(resp) => return Ok(resp),
                Err(ExchangeError::Stale(e)) if pooled => {
                    tracing::debug!(error = %e, "stale pooled upstream connection; retrying fresh");
                    self.bump(|s| s.stale_retries += 1);
                }
                Err(ExchangeError::Stale(e) | ExchangeError::Fatal(e)) => return Err(e),
            }
        }
    }

    fn render(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Vec<u8>, Error> {
        let valid = |s: &str| s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Protocol(format!("invalid request path {path:?}")));
        }
        let mut out = Vec::with_capacity(256 + path.len());
        out.extend_from_slice(match method {
            Method::Get => b"GET ",
            Method::Head => b"HEAD ",
        });
        // Through a forwarding proxy (plain http upstream): the absolute form.
        let forwarded = self.inner.proxy.as_ref().filter(|r| !r.tunnel);
        if forwarded.is_some() {
            out.extend_from_slice(b"http://");
            out.extend_from_slice(self.inner.authority.as_bytes());
        }
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(self.inner.authority.as_bytes());
        out.extend_from_slice(b"\r\nuser-agent: ");
        out.extend_from_slice(USER_AGENT.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(auth) = forwarded.and_then(|r| r.authorization.as_deref()) {
            out.extend_from_slice(b"proxy-authorization: ");
            out.extend_from_slice(auth.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("host")
                || name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || !valid(value)
            {
                return Err(Error::Protocol(format!("invalid request header {name:?}")));
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        request: Vec<u8>,
        head_request: bool,
    ) -> Result<ClientResponse, ExchangeError> {
        let timeout = self.inner.settings.request_timeout;
        let send_and_read_head = async {
            if let Err(e) = conn.write_all(request).await {
                return Err(ExchangeError::Stale(Error::Io(e)));
            }
            read_head(&mut conn, self.keep_headers).await
        };
        let head = match monoio::time::timeout(timeout, send_and_read_head).await {
            Err(_) => return Err(ExchangeError::Fatal(Error::Timeout)),
            Ok(r) => r?,
        };
        let framing = match head.framing(head_request) {
            BodyFraming::Empty => Framing::Empty,
            BodyFraming::Length(n) => Framing::Length { remaining: n },
            BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new()),
            BodyFraming::UntilClose => {
                return Err(ExchangeError::Fatal(Error::Protocol(
                    "response has neither Content-Length nor chunked framing".into(),
                )))
            }
        };
        let empty = matches!(framing, Framing::Empty);
        let mut body = ClientBody {
            reusable: !head.connection_close,
            conn: Some(conn),
            framing,
            received: 0,
            state: BodyState::Open,
            read_timeout: timeout,
            client: self.inner.clone(),
        };
        if empty {
            // Nothing to read (HEAD, 304): the connection is free right away.
            body.complete();
        }
        Ok(ClientResponse { head, body })
    }

    /// A pooled connection that is young enough and quiet (see the module
    /// doc); the others are closed.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let conn = self.inner.pool.borrow_mut().pop()?;
            if conn.idle_since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            match (conn.idle_state(), &conn.io) {
                (IdleState::Quiet, _) => return Some(conn),
                // With TLS, what arrived may be the server's `close_notify`
                // before it closes an idle connection (or a late session
                // ticket): not told apart from a surplus response, so closed
                // quietly as the server's close.
                (IdleState::Closed, _) | (IdleState::Readable, Io::Tls(_)) => {
                    self.bump(|s| s.idle_closed += 1)
                }
                (IdleState::Readable, Io::Plain(_)) => {
                    self.inner.unsolicited("while the connection was idle")
                }
            }
        }
    }

    fn bump(&self, f: impl FnOnce(&mut ClientStats)) {
        self.inner.bump(f);
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let settings = &self.inner.settings;
        let fut = async {
            let addrs = self.resolve().await?;
            let mut last_err = None;
            let mut stream = None;
            for addr in addrs {
                match TcpStream::connect_addr(addr).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last_err = Some(format!("{addr}: {e}")),
                }
            }
            let mut stream = stream.ok_or_else(|| {
                Error::Connect(last_err.unwrap_or_else(|| "no addresses".to_owned()))
            })?;
            stream.set_nodelay(true)?;
            if let Some(route) = self.inner.proxy.as_ref().filter(|r| r.tunnel) {
                proxy::open_tunnel(
                    &mut stream,
                    &self.inner.authority_with_port(),
                    route.authorization.as_deref(),
                )
                .await?;
            }
            let fd = stream.as_raw_fd();
            let io = match &self.inner.tls {
                None => Io::Plain(stream),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|e| Error::Connect(format!("TLS handshake: {e}")))?;
                    Io::Tls(Box::new(tls))
                }
            };
            Ok::<_, Error>((io, fd))
        };
        let (io, fd) = monoio::time::timeout(settings.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)??;
        self.bump(|s| s.connects += 1);
        Ok(Conn {
            io,
            fd,
            buf: BytesMut::new(),
            last_read_full: false,
            idle_since: Instant::now(),
        })
    }

    /// Resolve the endpoint, using the cache while it is fresh.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        let Endpoint { host, port, .. } = self.inner.connect_to();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, *port)]);
        }
        {
            let dns = self.inner.dns.borrow();
            if let Some(at) = dns.resolved_at {
                if at.elapsed() < self.inner.settings.dns_refresh && !dns.addrs.is_empty() {
                    return Ok(dns.addrs.clone());
                }
            }
        }
        let result =
            resolve_off_thread(host.clone(), *port, self.inner.settings.connect_timeout).await;
        let mut dns = self.inner.dns.borrow_mut();
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                dns.addrs = addrs.clone();
                dns.resolved_at = Some(Instant::now());
                Ok(addrs)
            }
            other => {
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "no addresses".to_owned(),
                };
                if dns.addrs.is_empty() {
                    Err(Error::Connect(format!("resolve {host}: {why}")))
                } else {
                    tracing::warn!(host = %host, error = %why, "DNS refresh failed; keeping previous addresses");
                    Ok(dns.addrs.clone())
                }
            }
        }
    }
}

impl Inner {
    fn bump(&self, f: impl FnOnce(&mut ClientStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Upstream sent bytes outside an exchange (`when`): counted, and warned
    /// about at most once per [`UNSOLICITED_WARN_EVERY`].
    fn unsolicited(&self, when: &str) {
        self.bump(|s| s.unsolicited += 1);
        let now = Instant::now();
        let due = self
            .unsolicited_warned
            .get()
            .is_none_or(|at| now.duration_since(at) >= UNSOLICITED_WARN_EVERY);
        if due {
            self.unsolicited_warned.set(Some(now));
            tracing::warn!(
                upstream = %self.authority,
                total = self.stats.get().unsolicited,
                "upstream sent bytes outside a response's framing ({when}); \
                 connection closed, never reused (further cases counted, not logged, for 60 s)"
            );
        }
    }

    /// Return a connection whose exchange completed cleanly.
    fn release(&self, mut conn: Conn) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < self.settings.max_idle {
            conn.idle_since = Instant::now();
            pool.push(conn);
        }
    }
}

/// `getaddrinfo` blocks, so it runs on a short-lived thread; the worker awaits a
/// oneshot (monoio's `sync` feature makes cross-thread wakeups work).
async fn resolve_off_thread(
    host: String,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("chartcache-dns".into())
        .spawn(move || {
            let r = (host.as_str(), port)
                .to_socket_addrs()
                .map(|it| it.collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(format!("spawn resolver thread: {e}"));
    }
    match monoio::time::timeout(limit, rx).await {
        Err(_) => Err("timed out".to_owned()),
        Ok(Err(_)) => Err("resolver thread failed".to_owned()),
        Ok(Ok(r)) => r,
    }
}

/// Read until a complete head is buffered; leave body bytes in `conn.buf`.
async fn read_head(
    conn: &mut Conn,
    keep_headers: &[&'static str],
) -> Result<ResponseHead, ExchangeError> {
    let mut got_any = !conn.buf.is_empty();
    let mut interim = 0;
    loop {
        if !conn.buf.is_empty() {
            match parse_response_keeping(&conn.buf, keep_headers) {
                Ok(Some((head, n))) if head.status == 100 => {
                    let _ = conn.buf.split_to(n);
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(ExchangeError::Fatal(Error::Protocol(format!(
                            "more than {MAX_INTERIM} 100 Continue heads"
                        ))));
                    }
                    continue;
                }
                Ok(Some((head, n))) => {
                    let _ = conn.buf.split_to(n);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(ResponseError::Informational(status)) => {
                    return Err(ExchangeError::Fatal(Error::UnexpectedStatus(status)))
                }
                Err(e) => return Err(ExchangeError::Fatal(protocol(e))),
            }
        }
        match conn.read_some().await {
            Ok(0) if !got_any => {
                return Err(ExchangeError::Stale(Error::Io(
                    io::ErrorKind::UnexpectedEof.into(),
                )))
            }
            Ok(0) => {
                return Err(ExchangeError::Fatal(Error::Protocol(
                    "connection closed inside the response head".into(),
                )))
            }
            Ok(_) => got_any = true,
            Err(e) if !got_any => return Err(ExchangeError::Stale(Error::Io(e))),
            Err(e) => return Err(ExchangeError::Fatal(Error::Io(e))),
        }
    }
}

fn protocol(e: ResponseError) -> Error {
    Error::Protocol(e.to_string())
}

fn chunked_err(e: ChunkedError) -> Error {
    Error::Protocol(format!("chunked body: {e}"))
}

enum Framing {
    Empty,
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Open,
    Complete,
    Failed,
}

/// A streaming upstream body. Dropping it before the end closes the connection.
pub struct ClientBody {
    conn: Option<Conn>,
    framing: Framing,
    received: u64,
    state: BodyState,
    reusable: bool,
    read_timeout: Duration,
    client: Rc<Inner>,
}

impl ClientBody {
    /// Bytes of body delivered so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The body has been read to its end (the connection may be back in the pool).
    pub fn is_complete(&self) -> bool {
        self.state == BodyState::Complete
    }

    /// Read the whole body, failing if it is larger than `cap` bytes (for small
    /// error documents). The connection is reused only if the body completed.
    pub async fn read_to_end_capped(&mut self, cap: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next().await? {
            if out.len() + chunk.len() > cap {
                self.fail();
                return Err(Error::Protocol(format!(
                    "error body larger than {cap} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn fail(&mut self) {
        self.state = BodyState::Failed;
        self.conn = None;
    }

    fn complete(&mut self) {
        self.state = BodyState::Complete;
        if let Some(conn) = self.conn.take() {
            // Surplus bytes after the body mean the stream is out of sync: drop it.
            if !conn.buf.is_empty() {
                self.client.unsolicited("after a response's body");
            } else if self.reusable && !conn.has_surplus() {
                self.client.release(conn);
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), Error> {
        let received = self.received;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::Protocol("body read after failure".into()));
        };
        match monoio::time::timeout(self.read_timeout, conn.read_some()).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok(0)) => Err(Error::Truncated { received }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Err(Error::Truncated { received }),
                _ => Err(Error::Io(e)),
            },
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        match self.state {
            BodyState::Complete => return Ok(None),
            BodyState::Failed => return Err(Error::Protocol("body read after failure".into())),
            BodyState::Open => {}
        }
        let r = self.step().await;
        if r.is_err() {
            self.fail();
        }
        r
    }

    async fn step(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(Error::Protocol("body read after failure".into()));
            };
            match &mut self.framing {
                Framing::Empty => {
                    self.complete();
                    return Ok(None);
                }
                Framing::Length { remaining } => {
                    if *remaining == 0 {
                        self.complete();
                        return Ok(None);
                    }
                    if !conn.buf.is_empty() {
                        let take = (*remaining).min(conn.buf.len() as u64) as usize;
                        *remaining -= take as u64;
                        self.received += take as u64;
                        return Ok(Some(conn.buf.split_to(take).freeze()));
                    }
                }
                Framing::Chunked(dec) => {
                    if !conn.buf.is_empty() {
                        let d = dec.decode(&conn.buf).map_err(chunked_err)?;
                        let consumed = conn.buf.split_to(d.consumed).freeze();
                        if let Some((start, len)) = d.data {
                            if len > 0 {
                                self.received += len as u64;
                                return Ok(Some(consumed.slice(start..start + len)));
                            }
                        }
                        if d.done {
                            self.complete();
                            return Ok(None);
                        }
                        if !conn.buf.is_empty() {
                            continue;
                        }
                    }
                }
            }
            self.read_more().await?;
        }
    }
}

impl BodyStream for ClientBody {
    fn next_chunk(&mut self) -> LocalBoxFuture<'_, Result<Option<Bytes>, Error>> {
        Box::pin(self.next())
    }
}

/// One rustls config per trust-root choice, shared by all workers.
fn tls_config(roots: TlsRoots) -> Result<Arc<rustls::ClientConfig>, Error> {
    static WEBPKI: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    static NATIVE: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let cell = match roots {
        TlsRoots::Webpki => &WEBPKI,
        TlsRoots::Native => &NATIVE,
    };
    cell.get_or_init(|| build_tls_config(roots))
        .clone()
        .map_err(Error::Config)
}

fn build_tls_config(roots: TlsRoots) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        TlsRoots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TlsRoots::Native => {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::warn!(error = %e, "loading a native trust root failed");
            }
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err("no usable native trust roots found".to_owned());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_omits_default_ports() {
        let ep = |tls, host: &str, port| Endpoint {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(
            ep(true, "b.s3.us-east-1.amazonaws.com", 443).authority(),
            "b.s3.us-east-1.amazonaws.com"
        );
        assert_eq!(ep(true, "h", 8443).authority(), "h:8443");
        assert_eq!(ep(false, "127.0.0.1", 80).authority(), "127.0.0.1");
        assert_eq!(ep(false, "127.0.0.1", 9000).authority(), "127.0.0.1:9000");
        assert_eq!(ep(false, "::1", 9000).authority(), "[::1]:9000");
    }

    #[test]
    fn endpoint_parse() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9000").unwrap(),
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000
            }
        );
        assert_eq!(
            Endpoint::parse("https://minio.internal/").unwrap(),
            Endpoint {
                tls: true,
                host: "minio.internal".into(),
                port: 443
            }
        );
        assert_eq!(Endpoint::parse("http://[::1]:9/").unwrap().host, "::1");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x/path").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn tls_configs_build() {
        assert!(tls_config(TlsRoots::Webpki).is_ok());
    }

    fn client() -> HttpClient {
        HttpClient::new(
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000,
            },
            ClientSettings {
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(1),
                dns_refresh: Duration::from_secs(60),
                max_idle: 4,
                tls_roots: TlsRoots::Webpki,
                proxies: EgressProxies::none(),
            },
        )
        .unwrap()
    }

    #[test]
    fn render_request_head() {
        let c = client();
        let out = c
            .render(
                Method::Get,
                "/b/k%20x.tgz",
                &[("if-none-match", "\"e\"".into())],
            )
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "GET /b/k%20x.tgz HTTP/1.1\r\nhost: 127.0.0.1:9000\r\nuser-agent: chartcache/"
        ));
        assert!(text.ends_with("\r\nif-none-match: \"e\"\r\n\r\n"), "{text}");
        let head = c.render(Method::Head, "/x", &[]).unwrap();
        assert!(head.starts_with(b"HEAD /x HTTP/1.1\r\n"));
    }

    #[test]
    fn render_rejects_injection() {
        let c = client();
        assert!(c.render(Method::Get, "/a b", &[]).is_err());
        assert!(c.render(Method::Get, "x", &[]).is_err());
        assert!(c
            .render(
                Method::Get,
                "/a",
                &[("if-none-match", "\"e\"\r\nx-evil: 1".into())]
            )
            .is_err());
        assert!(c
            .render(Method::Get, "/a", &[("Host", "evil".into())])
            .is_err());
        assert!(c
            .render(Method::Get, "/a", &[("bad name", "v".into())])
            .is_err());
    }
}

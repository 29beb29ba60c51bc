//! One request: policy → cache → origin → response.
//!
//! Phases, in order:
//! 1. **Admission**: method (GET/HEAD, else 405), target → object key (400 on
//!    anything `http1::path` refuses; 404 for the root `/`, which names no
//!    object — nothing goes upstream for either).
//! 2. **Policy**: the first matching rule decides `Cache`, `Revalidate` or
//!    `Bypass`, and which headers to override.
//! 3. **Cache** (Cache/Revalidate): [`Cache::get_or_fill`](crate::cache::Cache::get_or_fill)
//!    answers with a fresh verified copy — a `HIT` served from mmap (HEAD,
//!    Range and conditional requests answered locally) — a remembered 404, or
//!    a wait on the key's one fill in flight (one upstream GET per object
//!    across all workers, conditional when a stored copy has an ETag): its body
//!    streams as it lands (`MISS`), a 304 reuses the stored copy
//!    (`REVALIDATED`), an upstream failure serves it as `STALE` when allowed.
//!    A stored body is sent under a `SegmentPin` (an evicted segment's bytes
//!    stay until the send is done; one evicted between lookup and send is
//!    fetched for this client instead, `MISS`). A send that fails because the
//!    segment file shrank (or cannot be read) closes the connection and tells
//!    the cache, which drops what is gone, so it happens once.
//!    For `/index.yaml`, a client that decodes JSON natively (Helm ≥ 3.13, see
//!    [`crate::helm::form`]) is served the index's stored JSON form instead of the
//!    YAML it belongs to (found by its ETag; a missing one means the YAML), with its
//!    own ETag, 304s and ranges, and `Vary: User-Agent, Accept-Encoding` on both
//!    forms; a client that accepts gzip gets the form's stored gzip version
//!    (`Content-Encoding: gzip`, its own ETag). `/-/charts/NAME/index.yaml` serves a
//!    chart's view of the index the same way ([`crate::helm::view`]), and
//!    `/-/charts/NAME/FILE` the repository object `/FILE`.
//! 4. **Bypass**: stream upstream's answer through, nothing stored (`BYPASS`).
//!    Only 200, 304 (to the client's own conditional) and 404 pass; anything
//!    else is a 502, logged with the key and upstream's status. A body of
//!    unknown length keeps its framing: chunked to an HTTP/1.1 client, ending
//!    with the last chunk only when upstream's body was complete (on an
//!    upstream failure the connection is closed without it); close-delimited
//!    to an HTTP/1.0 client.
//!
//! Every send is bounded by `server.send_timeout` without progress: a client
//! that stopped reading is reset (`send::abort`) and counted
//! (`chartcache_client_send_timeouts_total`). Pass-through fetches draw on
//! their own capped share of the worker's upstream slots
//! ([`origin::Purpose::PassThrough`]), so slow readers cannot starve fills.
//!
//! One `Exchange` value carries a request's state (worker, connection,
//! parsed head, key, the rule's header overrides, and what was answered); its
//! methods are the steps. Every request ends in exactly one access-log line
//! and one metrics update (`Exchange::finish`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::access_log::Entry;
use crate::cache::{
    Answer, BodyView, FillError, FillWait, Hit, Lookup, ObjectMeta, Segment, SegmentPin, Want,
};
use crate::helm::{self, view, view::ViewPath};
use crate::http1::cache_status::{self, Fwd};
use crate::http1::conditional::{evaluate_range, not_modified, RangeOutcome};
use crate::http1::path::object_key;
use crate::http1::render::{chunk_prefix, render, simple_with, ResponseHead, LAST_CHUNK};
use crate::http1::request::{Method, RequestHead};
use crate::metrics::CacheResult;
use crate::origin::{self, OriginRequest, ResponseMeta};
use crate::policy::Action;
use crate::repo::Repo;
use crate::server::send::{
    abort, send_all, send_head_and_body, send_head_and_file, send_vec, MmapSlice,
};
use crate::server::Worker;

/// A client connection as the handler sees it.
pub struct Conn {
    pub stream: TcpStream,
    pub peer: Option<SocketAddr>,
    /// Reused buffer for response heads.
    pub head_buf: Vec<u8>,
    /// Reused buffer for the request's cache key.
    pub key_buf: String,
    /// Reused buffer for the `Cache-Status` and `Age` values.
    pub status_buf: String,
    /// A send failed or timed out: close at once, without a lingering close.
    pub broken: bool,
}

/// A stored body, wherever it came from (a lookup or a fill).
struct Stored<'a> {
    segment: &'a Arc<Segment>,
    /// A fill's body comes pinned; a lookup's is pinned when sent.
    pin: Option<&'a SegmentPin>,
    body_offset: usize,
    body_len: u64,
    meta: &'a ObjectMeta,
    /// A body in two pieces of the segment (a view's newest versions): the first
    /// `.0` bytes at `body_offset`, the rest at `.1`.
    split: Option<(u64, usize)>,
}

impl<'a> From<&'a Hit> for Stored<'a> {
    fn from(h: &'a Hit) -> Self {
        Stored {
            segment: &h.segment,
            pin: None,
            body_offset: h.body_offset,
            body_len: h.body_len as u64,
            meta: &h.meta,
            split: None,
        }
    }
}

impl<'a> From<&'a BodyView> for Stored<'a> {
    fn from(v: &'a BodyView) -> Self {
        Stored {
            segment: &v.segment,
            pin: Some(&v.pin),
            body_offset: v.body_offset,
            body_len: v.body_len,
            meta: &v.meta,
            split: None,
        }
    }
}

/// A stored body served in place of the YAML index (see `Exchange::index_form`).
struct IndexForm {
    hit: Hit,
    /// The parts of `hit`'s body that are served, one after the other (the
    /// second is empty but for a view's newest versions, see `view::ChartView`).
    pieces: [std::ops::Range<usize>; 2],
    /// Its own metadata (a view's), else `hit`'s.
    meta: Option<ObjectMeta>,
    /// The body is gzip-compressed (`Content-Encoding: gzip`).
    gzip: bool,
}

/// Handles one parsed request. Returns whether the connection may be reused.
pub async fn handle(w: &Worker, conn: &mut Conn, req: &RequestHead) -> bool {
    let started = Instant::now();
    let key = object_key(&req.target);
    let path = match &key {
        Ok(k) => k.as_ref(),
        Err(_) => req.target.as_str(),
    };
    // `/PREFIX/…`: the repository served there and the object key inside it.
    let routed = key.as_ref().ok().and_then(|k| w.repos.route(k));
    let in_repo = routed.map_or(path, |(_, k)| k);
    // `/-/charts/<name>/…`: a chart's view of the index, or a repository object.
    let (object, view) = match routed.and_then(|(_, k)| view::parse_path(k)) {
        None => (in_repo, None),
        Some(ViewPath::Index { chart }) => (helm::INDEX_KEY, Some(chart)),
        Some(ViewPath::Object { key }) => (key, None),
        Some(ViewPath::Invalid) => ("", None),
    };
    // `?versions=N` of a view (queries are ignored everywhere else).
    let versions = match view {
        Some(_) => view::parse_versions(req.target.split_once('?').map(|(_, q)| q)),
        None => Ok(None),
    };
    let mut x = Exchange::new(w, conn, req, object);
    x.shown = path;
    x.view = view;
    x.view_versions = versions.as_ref().ok().copied().flatten();
    if let Some((repo, _)) = routed {
        x.repo = Some(repo);
        let mut cache_key = std::mem::take(&mut x.conn.key_buf);
        cache_key.clear();
        cache_key.push_str(&repo.keys.ns);
        cache_key.push_str(object);
        x.cache_key = cache_key;
        if object == helm::INDEX_KEY {
            let format = repo.cfg.index_format;
            x.json_index = helm::form::wants_json(format, req.user_agent.as_deref());
            x.vary = Some(helm::form::vary(format));
            // gzip forms are built once a client asks for one (see `HelmRepo::gzip_wanted`).
            let wanted = &repo.helm.gzip_wanted;
            if req.accepts_gzip && x.view_versions.is_none() && !wanted.load(Relaxed) {
                wanted.store(true, Relaxed);
            }
        }
    }
    let result = match (&key, req.method, routed) {
        (_, Method::Other, _) => x.method_not_allowed().await,
        (Ok(_), _, None) => {
            // No request reaches upstream outside a configured repository.
            let msg = "not found: no repository is served under this path";
            x.respond_simple(404, msg).await
        }
        (Ok(_), _, Some(_)) if object == "/" => {
            x.respond_simple(404, "not found: a repository root names no object")
                .await
        }
        (Ok(_), _, Some(_)) if object.is_empty() => {
            let msg = "not found: chart views are /-/charts/NAME/index.yaml";
            x.respond_simple(404, msg).await
        }
        (Err(e), _, _) if e.status() == 404 => {
            x.respond_simple(404, &format!("not found: {e}")).await
        }
        (Ok(_), _, _) if versions.is_err() => {
            let msg = versions.err().unwrap_or_default();
            x.respond_simple(400, msg).await
        }
        (Err(e), _, _) => {
            w.metrics.bad_requests.fetch_add(1, Relaxed);
            x.keep_alive = false;
            x.respond_simple(400, &format!("bad request path: {e}"))
                .await
        }
        (Ok(_), _, Some((repo, _))) => {
            let rule = repo.cfg.policy.decide(object);
            x.overrides = &rule.headers;
            match rule.action {
                // A view is cut from the stored index; a bypassed index is not stored.
                Action::Bypass if x.view.is_some() => {
                    x.respond_simple(404, "not found: chart views need /index.yaml cached (its route bypasses the cache)")
                        .await
                }
                Action::Bypass => x.bypass(CacheResult::Bypass).await,
                Action::Cache { ttl } => {
                    x.cached(Want {
                        fresh_for: ttl,
                        remember_not_found: true,
                    })
                    .await
                }
                Action::Revalidate { fresh_for } => {
                    x.cached(Want {
                        fresh_for,
                        remember_not_found: false,
                    })
                    .await
                }
            }
        }
    };
    x.finish(result, started)
}

/// One request's state; its methods are the steps of the exchange.
struct Exchange<'a> {
    w: &'a Worker,
    conn: &'a mut Conn,
    req: &'a RequestHead,
    /// The object key inside its repository (or the raw target when it is not one).
    key: &'a str,
    /// The repository the path names (`None`: none does; nothing is fetched).
    repo: Option<&'a Repo>,
    /// `key`'s cache key (the repository's namespace, then `key`; empty without a
    /// repository).
    cache_key: String,
    /// The matched rule's response header overrides (none before policy).
    overrides: &'a [(String, String)],
    // What was answered, for the log and metrics.
    status: u16,
    bytes: u64,
    cache: CacheResult,
    upstream_status: Option<u16>,
    keep_alive: bool,
    /// An HTTP/1.0 client (keep-alive must be announced).
    http10: bool,
    /// The object head announces `Transfer-Encoding: chunked` (a relayed
    /// body of unknown length to an HTTP/1.1 client).
    chunked: bool,
    /// What the access log calls the request (the path asked for; `key` is the
    /// object it is served from).
    shown: &'a str,
    /// A chart's view of the index (`key` is then the index).
    view: Option<&'a str>,
    /// Of that view, only the newest N versions (`?versions=N`).
    view_versions: Option<usize>,
    /// The index, to a client that gets its JSON form (where stored).
    json_index: bool,
    /// `Vary` of this object's responses (the index's form depends on a header).
    vary: Option<&'static str>,
    /// `Content-Encoding` of the body being served (a stored gzip form).
    content_encoding: Option<&'static str>,
    // What `Cache-Status` and `Age` say (see `cache_status_entry`).
    /// The rule's freshness (Cache / Revalidate): `ttl`.
    fresh_for: Option<Duration>,
    /// When the copy served was stored or last validated (unix seconds; an
    /// upstream tier's `Age` already counted in): `Age`.
    stored_at: Option<u64>,
    /// The fill revalidated or replaced a stored copy (`fwd=stale`).
    had_copy: bool,
    /// The answer was stored (`stored`).
    stored: bool,
    /// `detail` (one of `cache_status::DETAIL_*`, or another token).
    detail: Option<&'static str>,
}

impl<'a> Exchange<'a> {
    fn new(w: &'a Worker, conn: &'a mut Conn, req: &'a RequestHead, key: &'a str) -> Self {
        Exchange {
            w,
            conn,
            req,
            key,
            repo: None,
            cache_key: String::new(),
            overrides: &[],
            status: 0,
            bytes: 0,
            cache: CacheResult::None,
            upstream_status: None,
            keep_alive: req.keep_alive && !w.is_draining(),
            http10: req.minor_version == 0,
            chunked: false,
            shown: key,
            view: None,
            view_versions: None,
            json_index: false,
            vary: None,
            content_encoding: None,
            fresh_for: None,
            stored_at: None,
            had_copy: false,
            stored: false,
            detail: None,
        }
    }

    /// This response's `Cache-Status` entry (RFC 9211), from what was answered;
    /// the table is in [`crate::http1::cache_status`].
    fn cache_status_entry(&self) -> cache_status::Entry<'static> {
        let ttl = match (self.fresh_for, self.stored_at) {
            (Some(fresh), Some(at)) => {
                let age = crate::cache::unix_now().saturating_sub(at);
                Some(fresh.as_secs().min(i64::MAX as u64) as i64 - age.min(i64::MAX as u64) as i64)
            }
            _ => None,
        };
        let mut e = cache_status::Entry {
            detail: self.detail,
            ..Default::default()
        };
        match self.cache {
            CacheResult::Hit => {
                e.hit = true;
                e.ttl = ttl;
            }
            CacheResult::Miss => {
                e.fwd = Some(if self.had_copy { Fwd::Stale } else { Fwd::Miss });
                e.fwd_status = self.upstream_status;
                e.stored = self.stored;
            }
            CacheResult::Revalidated => {
                e.fwd = Some(Fwd::Stale);
                e.fwd_status = Some(304);
                e.ttl = ttl;
                e.stored = true;
            }
            CacheResult::Stale => {
                e.fwd = Some(Fwd::Stale);
                e.fwd_status = self.upstream_status;
                e.ttl = ttl.map(|t| t.min(0));
                e.detail = Some(cache_status::DETAIL_STALE);
            }
            CacheResult::Bypass => {
                e.fwd = Some(Fwd::Bypass);
                e.fwd_status = self.upstream_status;
            }
            CacheResult::None => {
                e.detail = Some(cache_status::DETAIL_LOCAL);
            }
        }
        e
    }

    /// Renders `Cache-Status` (and `Age` when a stored copy is served, RFC 9111
    /// §5.1) into `buf`: the `Cache-Status` value is `buf[..split]`, `Age`'s the rest.
    fn cache_status_values(&self, buf: &mut String) -> usize {
        buf.clear();
        self.cache_status_entry().render(buf);
        let split = buf.len();
        if let Some(at) = self.stored_at.filter(|_| self.cache != CacheResult::Bypass) {
            let age = crate::cache::unix_now().saturating_sub(at);
            use std::fmt::Write as _;
            let _ = write!(buf, "{age}");
        }
        split
    }

    /// One metrics update and one access-log line; whether the connection may
    /// be reused.
    fn finish(mut self, result: std::io::Result<()>, started: Instant) -> bool {
        let w = self.w;
        self.conn.key_buf = std::mem::take(&mut self.cache_key);
        if let Err(e) = &result {
            self.conn.broken = true;
            if e.kind() == std::io::ErrorKind::TimedOut {
                // The client stopped reading: reset rather than leave the
                // kernel holding the rest for a zero window.
                w.metrics.send_timeouts.fetch_add(1, Relaxed);
                abort(&self.conn.stream);
            }
        }
        let repo = self.repo.map(|r| r.id);
        w.metrics
            .request_in(repo, self.cache, self.status, self.bytes);
        w.metrics.request_duration(self.cache, started.elapsed());
        w.access_log.log(&Entry {
            repo: self.repo.map(|r| r.name.as_str()),
            method: &self.req.method_name,
            path: self.shown,
            status: self.status,
            bytes: self.bytes,
            duration: started.elapsed(),
            cache: self.cache,
            upstream_status: self.upstream_status,
            peer: self.conn.peer,
            user_agent: self.req.user_agent.as_deref(),
        });
        result.is_ok() && self.keep_alive
    }

    async fn method_not_allowed(&mut self) -> std::io::Result<()> {
        // CONNECT expects a tunnel, never a protocol switch: close.
        self.keep_alive &= !self.http10 && !self.req.method_name.eq_ignore_ascii_case("CONNECT");
        // `render::simple` adds `Allow: GET, HEAD` to a 405.
        self.respond_simple(405, "method not allowed: chartcache serves GET and HEAD")
            .await
    }

    /// The repository's prefix for logs (`-`: none).
    fn repo_name(&self) -> &'a str {
        self.repo.map_or("-", |r| r.name.as_str())
    }

    /// Cache and Revalidate: serve a fresh copy, else wait on the fill.
    async fn cached(&mut self, want: Want) -> std::io::Result<()> {
        self.fresh_for = Some(want.fresh_for);
        let mut fill = match self
            .w
            .cache
            .get_or_fill(&self.cache_key, want, &self.w.metrics)
        {
            Lookup::Fresh(hit) => {
                self.cache = CacheResult::Hit;
                if self.serve_stored(&Stored::from(&hit)).await? {
                    return Ok(());
                }
                drop(hit);
                // Evicted, or dropped because its segment file was cut, between the
                // lookup and the send: look once more, which fills (and stores) it for
                // this client; anything else is fetched for it without the cache.
                match self
                    .w
                    .cache
                    .get_or_fill(&self.cache_key, want, &self.w.metrics)
                {
                    Lookup::Filling(fill) => fill,
                    _ => return self.refetch().await,
                }
            }
            Lookup::NotFound => {
                self.cache = CacheResult::Hit;
                return self.respond_simple(404, "not found").await;
            }
            Lookup::Filling(fill) => fill,
        };
        let answer = fill.answer().await;
        self.had_copy = fill.had_copy();
        // What an upstream tier served stale is STALE here too, never fresh.
        let upstream_stale = fill.upstream_stale();
        match answer {
            Answer::Body(view) => {
                self.cache = CacheResult::Miss;
                self.stored = true;
                if upstream_stale {
                    self.cache = CacheResult::Stale;
                }
                self.upstream_status = Some(200);
                self.stream_fill(view, fill).await
            }
            Answer::Revalidated(hit) => {
                self.upstream_status = Some(304);
                self.cache = match upstream_stale {
                    true => CacheResult::Stale,
                    false => CacheResult::Revalidated,
                };
                if self.serve_stored(&Stored::from(&hit)).await? {
                    return Ok(());
                }
                self.refetch().await
            }
            Answer::Response { .. } | Answer::Passthrough if self.view.is_some() => {
                self.cache = CacheResult::Miss;
                self.respond_simple(503, "the index is not stored: no chart views")
                    .await
            }
            Answer::Response { meta, body } => {
                self.cache = CacheResult::Miss;
                self.upstream_status = Some(meta.status);
                self.serve_response(&meta, body).await
            }
            Answer::Unverified(view) => {
                self.cache = CacheResult::Bypass;
                self.detail = Some("digest-mismatch");
                self.upstream_status = Some(200);
                // Pinned by the view: always served.
                self.serve_stored(&Stored::from(&view)).await.map(|_| ())
            }
            Answer::Passthrough => self.bypass(CacheResult::Miss).await,
            Answer::Failed(error) => {
                self.upstream_status = error.upstream_status;
                self.failed(&fill, &error).await
            }
        }
    }

    /// A stored copy vanished before it could be sent: fetch it for this client
    /// (never for a chart view: its index is fetched, not served whole).
    async fn refetch(&mut self) -> std::io::Result<()> {
        if self.view.is_some() {
            return self
                .respond_simple(503, "the index was evicted meanwhile: try again")
                .await;
        }
        self.bypass(CacheResult::Miss).await
    }

    /// Upstream failed: serve the stored copy as STALE if allowed, else the error.
    async fn failed(&mut self, fill: &FillWait, error: &FillError) -> std::io::Result<()> {
        if let Some(hit) = fill.stale_copy(error, self.w.cfg.cache.max_stale) {
            self.cache = CacheResult::Stale;
            if self.serve_stored(&Stored::from(hit)).await? {
                return Ok(());
            }
        }
        self.cache = CacheResult::Miss;
        self.stored_at = None;
        // This instance's retry policy already ran: an instance in front of this
        // one (a fleet node) does not retry this answer (retries never multiply).
        self.detail = Some(cache_status::DETAIL_RETRIED);
        tracing::warn!(repo = self.repo_name(), key = self.key, status = error.status, error = %error.message, "upstream failed");
        self.respond_simple(error.status, &error.message).await
    }

    /// Streams a fill (in progress or done) to this client from the segment mmap
    /// (pinned by the view).
    async fn stream_fill(&mut self, view: BodyView, mut fill: FillWait) -> std::io::Result<()> {
        self.stored_at = Some(view.meta.stored_at);
        // An index fill publishes once every form but the gzip ones is committed.
        if self.key == helm::INDEX_KEY
            && (self.view.is_some() || self.json_index || self.req.accepts_gzip)
        {
            return match self.serve_stored(&Stored::from(&view)).await? {
                true => Ok(()),
                false => self.refetch().await,
            };
        }
        let meta = &view.meta;
        let head_only = if not_modified(
            self.req.if_none_match.as_deref(),
            self.req.if_modified_since.as_deref(),
            meta.etag.as_deref(),
            meta.last_modified.as_deref(),
        ) {
            self.send_object_head(meta, 304, None, None).await?;
            true
        } else {
            self.send_object_head(meta, 200, Some(view.body_len), None)
                .await?;
            self.req.method == Method::Head
        };
        if head_only {
            // Same rule as for bodies: this exchange ends once the fill is final,
            // so the client's next request finds the committed entry.
            fill.settled().await;
            return Ok(());
        }
        let mut sent = 0u64;
        loop {
            let Some(available) = fill.readable(view.body_len) else {
                // Failed mid-body (or abandoned): the client must see a broken
                // response, never a short 200 that looks complete.
                self.keep_alive = false;
                return Err(std::io::Error::other("fill failed mid-body"));
            };
            if available > sent {
                let slice = MmapSlice::new(
                    view.pin.clone(),
                    view.body_offset + sent as usize,
                    (available - sent) as usize,
                );
                let timeout = self.w.cfg.server.send_timeout;
                if let Err(e) = send_all(&mut self.conn.stream, slice, timeout).await {
                    self.w
                        .cache
                        .body_send_failed(&self.cache_key, &view.segment, &e);
                    return Err(e);
                }
                self.bytes += available - sent;
                sent = available;
            }
            if sent >= view.body_len {
                return Ok(());
            }
            if !fill.changed().await {
                self.keep_alive = false;
                return Err(std::io::Error::other("fill stalled"));
            }
        }
    }

    /// Serves a stored body: conditional → 304, Range → 206/416, else 200.
    /// `Ok(false)`: the copy was evicted before its bytes could be pinned; nothing was
    /// sent (the caller serves the object another way). A body that fails to go out
    /// because its segment file shrank is reported to the cache, which drops what is
    /// gone; the connection is closed (the caller sees the error).
    async fn serve_stored(&mut self, s: &Stored<'_>) -> std::io::Result<bool> {
        // A derived form's age is its index's (the index is what is validated).
        self.stored_at = Some(s.meta.stored_at);
        if self.key != helm::INDEX_KEY {
            return self.serve_stored_form(s).await;
        }
        match self.index_form(s.meta) {
            Ok(None) => self.serve_stored_form(s).await,
            Ok(Some(form)) => {
                let meta = form.meta.as_ref().unwrap_or(&form.hit.meta);
                let [first, second] = &form.pieces;
                let derived = Stored {
                    segment: &form.hit.segment,
                    pin: None,
                    body_offset: form.hit.body_offset + first.start,
                    body_len: (first.len() + second.len()) as u64,
                    meta,
                    split: (!second.is_empty())
                        .then(|| (first.len() as u64, form.hit.body_offset + second.start)),
                };
                self.content_encoding = form.gzip.then_some("gzip");
                let served = self.serve_stored_form(&derived).await;
                self.content_encoding = None;
                if served? {
                    return Ok(true);
                }
                // Evicted in between: the YAML form serves every client of the
                // full index; a view has nothing else to serve.
                if self.view.is_some() {
                    self.respond_simple(503, "chart view evicted meanwhile: try again")
                        .await?;
                    return Ok(true);
                }
                self.serve_stored_form(s).await
            }
            Err((status, message)) => {
                self.respond_simple(status, message).await?;
                Ok(true)
            }
        }
    }

    /// What this request is served instead of the stored YAML index described by
    /// `yaml`: a chart's view (or why there is none), or, for a client that gets
    /// it, the JSON form of that YAML version (`Ok(None)`: the YAML itself, also
    /// when its JSON form is not stored).
    fn index_form(&self, yaml: &ObjectMeta) -> Result<Option<IndexForm>, (u16, &'static str)> {
        let cache = &self.w.cache;
        let Some(repo) = self.repo else {
            return Ok(None);
        };
        let keys = &repo.keys;
        let beside = |key: &str, etag: &str| cache.lookup_beside(&keys.index, key, etag);
        let Some(chart) = self.view else {
            let Some(yaml_etag) = yaml.etag.as_deref() else {
                return Ok(None);
            };
            // The client's form (JSON if it gets it and it is stored), then its gzip form.
            let json_etag = helm::json_etag(yaml_etag);
            let json = self
                .json_index
                .then(|| keys.json.iter().find_map(|k| beside(k, &json_etag)))
                .flatten();
            let form_etag = if json.is_some() {
                &json_etag
            } else {
                yaml_etag
            };
            if self.req.accepts_gzip {
                let gz_keys = &keys.gzip[usize::from(json.is_some())];
                let gz_etag = helm::gzip_etag(form_etag);
                if let Some(hit) = gz_keys.iter().find_map(|k| beside(k, &gz_etag)) {
                    return Ok(Some(IndexForm {
                        pieces: [0..hit.body_len, 0..0],
                        hit,
                        meta: None,
                        gzip: true,
                    }));
                }
            }
            return Ok(json.map(|hit| IndexForm {
                pieces: [0..hit.body_len, 0..0],
                hit,
                meta: None,
                gzip: false,
            }));
        };
        const NOT_READY: (u16, &str) = (
            503,
            "per-chart views of this index are not available (being prepared, or the index has no JSON form)",
        );
        let yaml_etag = yaml.etag.as_deref().ok_or(NOT_READY)?;
        // The slot whose table belongs to the YAML being served (see `HelmRepo::views`).
        let table = repo
            .helm
            .views
            .iter()
            .map(|t| t.load_full())
            .find(|t| t.as_ref().is_some_and(|t| t.yaml_etag == yaml_etag))
            .flatten()
            .ok_or(NOT_READY)?;
        let chart_view = table
            .table
            .get(chart)
            .ok_or((404, "not found: no such chart in the index"))?;
        // The newest N: pieces of the same record (N clamped for the ETag, so every
        // N that serves the same bytes has the same ETag).
        let (pieces, newest) = match self.view_versions {
            None => ([chart_view.range.clone(), 0..0], None),
            Some(n) => (chart_view.newest(n), Some(n.min(chart_view.versions()))),
        };
        let views_etag = helm::views_etag(yaml_etag);
        let view_etag = view::view_etag(&views_etag, chart, self.json_index, newest);
        let meta = |etag: String| ObjectMeta {
            status: 200,
            etag: Some(etag),
            last_modified: yaml.last_modified.clone(),
            content_type: Some(
                if self.json_index {
                    "application/json"
                } else {
                    "text/yaml"
                }
                .into(),
            ),
            stored_at: yaml.stored_at,
        };
        // The whole view to a client that accepts gzip: its member of the views'
        // gzip form, once stored (`?versions=N` is served identity-only).
        if self.req.accepts_gzip && newest.is_none() {
            let members = table.gzip_of(chart_view);
            let gz_etag = helm::gzip_etag(&views_etag);
            let key = &keys.views_gzip[table.slot];
            let found = members.and_then(|m| beside(key, &gz_etag).map(|hit| (m, hit)));
            if let Some((member, hit)) = found.filter(|(m, h)| m.end <= h.body_len) {
                return Ok(Some(IndexForm {
                    hit,
                    pieces: [member, 0..0],
                    meta: Some(meta(helm::gzip_etag(&view_etag))),
                    gzip: true,
                }));
            }
        }
        let hit = beside(&keys.views[table.slot], &views_etag).ok_or(NOT_READY)?;
        if pieces.iter().any(|p| p.end > hit.body_len) {
            return Err(NOT_READY);
        }
        Ok(Some(IndexForm {
            hit,
            pieces,
            meta: Some(meta(view_etag)),
            gzip: false,
        }))
    }

    /// [`Self::serve_stored`] for exactly this stored body.
    async fn serve_stored_form(&mut self, s: &Stored<'_>) -> std::io::Result<bool> {
        let meta = s.meta;
        if not_modified(
            self.req.if_none_match.as_deref(),
            self.req.if_modified_since.as_deref(),
            meta.etag.as_deref(),
            meta.last_modified.as_deref(),
        ) {
            return self
                .send_object_head(meta, 304, None, None)
                .await
                .map(|()| true);
        }
        let len = s.body_len;
        let (status, start, n, range) = match evaluate_range(self.req.range.as_deref(), len) {
            RangeOutcome::Full => (200, 0, len, None),
            RangeOutcome::Partial {
                start,
                end_inclusive,
            } => (
                206,
                start,
                end_inclusive - start + 1,
                Some(format!("bytes {start}-{end_inclusive}/{len}")),
            ),
            RangeOutcome::Unsatisfiable => {
                let cr = format!("bytes */{len}");
                return self
                    .send_object_head(meta, 416, Some(0), Some(&cr))
                    .await
                    .map(|()| true);
            }
        };
        if self.req.method == Method::Head {
            let head = self.object_head(meta, status, Some(n), range.as_deref());
            return self.send_head(head).await.map(|()| true);
        }
        // The bytes stay until the kernel is done with them, even if the segment is
        // evicted meanwhile (cache::segment: pins).
        let pin = match s.pin {
            Some(pin) => pin.clone(),
            None => match s.segment.pin() {
                Some(pin) => pin,
                None => return Ok(false),
            },
        };
        let head = self.object_head(meta, status, Some(n), range.as_deref());
        if let Some((first_len, second_at)) = s.split {
            return self
                .send_two_pieces(s, pin, head, (start, n), (first_len, second_at))
                .await;
        }
        let at = s.body_offset + start as usize;
        let sendfile = self.w.cfg.server.sendfile_threshold.is_some_and(|t| n >= t);
        let timeout = self.w.cfg.server.send_timeout;
        let (res, head) = if sendfile {
            let stream = &mut self.conn.stream;
            let mode = self.w.socket_mode;
            send_head_and_file(stream, mode, head, pin, at as u64, n as usize, timeout).await
        } else {
            // A file cut short inside this body's last page reads as zeros through the
            // mapping, with no fault (writev gets EFAULT only for pages wholly past the
            // end), so one fstat first: a body past the cut is dropped and fetched again
            // instead of sent as zeros. sendfile stops at the file's end by itself.
            if s.segment
                .check_size()
                .is_some_and(|intact| intact < (at + n as usize) as u64)
            {
                self.conn.head_buf = head;
                let cut = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment file ends inside the body (truncated)",
                );
                self.w
                    .cache
                    .body_send_failed(&self.cache_key, s.segment, &cut);
                return Ok(false);
            }
            let body = MmapSlice::new(pin, at, n as usize);
            send_head_and_body(&mut self.conn.stream, head, body, timeout).await
        };
        self.conn.head_buf = head;
        match res {
            Ok(()) => {
                self.bytes += n;
                Ok(true)
            }
            Err(e) => {
                self.w
                    .cache
                    .body_send_failed(&self.cache_key, s.segment, &e);
                Err(e)
            }
        }
    }

    /// Sends `head` and bytes `start..start + n` of a body stored in two pieces
    /// (`first_len` bytes at `s.body_offset`, the rest at `second_at`): what of each
    /// piece the range covers, one after the other, from the pinned mapping.
    async fn send_two_pieces(
        &mut self,
        s: &Stored<'_>,
        pin: SegmentPin,
        head: Vec<u8>,
        (start, n): (u64, u64),
        (first_len, second_at): (u64, usize),
    ) -> std::io::Result<bool> {
        let end = start + n;
        let timeout = self.w.cfg.server.send_timeout;
        let first = start.min(first_len)..end.min(first_len);
        let second = start.max(first_len) - first_len..end.max(first_len) - first_len;
        let first = MmapSlice::new(
            pin.clone(),
            s.body_offset + first.start as usize,
            (first.end - first.start) as usize,
        );
        let second = MmapSlice::new(
            pin,
            second_at + second.start as usize,
            (second.end - second.start) as usize,
        );
        let stream = &mut self.conn.stream;
        let (mut res, head) = send_head_and_body(stream, head, first, timeout).await;
        self.conn.head_buf = head;
        if res.is_ok() && !second.is_empty() {
            res = send_all(&mut self.conn.stream, second, timeout).await;
        }
        match res {
            Ok(()) => {
                self.bytes += n;
                Ok(true)
            }
            Err(e) => {
                self.w.cache.body_send_failed(self.key, s.segment, &e);
                Err(e)
            }
        }
    }

    /// A small in-memory answer from a fill (404, or an unstorable body).
    async fn serve_response(&mut self, meta: &ResponseMeta, body: Bytes) -> std::io::Result<()> {
        match meta.status {
            200 => {}
            404 => return self.respond_simple(404, "not found").await,
            other => return self.unexpected_status(other).await,
        }
        let object = object_meta(meta);
        self.send_object_head(&object, 200, Some(body.len() as u64), None)
            .await?;
        if self.req.method == Method::Get && !body.is_empty() {
            let n = body.len() as u64;
            send_all(&mut self.conn.stream, body, self.w.cfg.server.send_timeout).await?;
            self.bytes += n;
        }
        Ok(())
    }

    /// Streams upstream's answer straight through; nothing is stored.
    async fn bypass(&mut self, result: CacheResult) -> std::io::Result<()> {
        self.cache = result;
        self.stored = false;
        self.stored_at = None;
        let req = self.req;
        let oreq = OriginRequest {
            key: self.key.to_string(),
            method: if req.method == Method::Head {
                origin::Method::Head
            } else {
                origin::Method::Get
            },
            if_none_match: req.if_none_match.clone(),
            if_modified_since: req.if_modified_since.clone(),
            // Held as long as this client takes to read: its own capped share
            // of the upstream slots, so fills keep theirs.
            purpose: origin::Purpose::PassThrough,
        };
        let Some(origin) = self.repo.and_then(|r| self.w.origins.get(r.id)) else {
            return self.respond_simple(404, "not found").await;
        };
        let started = Instant::now();
        let resp = match origin.fetch(oreq).await {
            Ok(r) => {
                self.w
                    .metrics
                    .upstream(Some(r.meta.status), started.elapsed());
                r
            }
            Err(e) => {
                let err = FillError::from(&e);
                self.w
                    .metrics
                    .upstream(err.upstream_status, started.elapsed());
                self.upstream_status = err.upstream_status;
                self.detail = Some(cache_status::DETAIL_RETRIED);
                tracing::warn!(repo = self.repo_name(), key = self.key, error = %e, "upstream request failed");
                return self.respond_simple(err.status, &err.message).await;
            }
        };
        self.upstream_status = Some(resp.meta.status);
        let meta = resp.meta;
        let mut body = resp.body;
        match meta.status {
            200 => {}
            304 if req.if_none_match.is_some() || req.if_modified_since.is_some() => {
                let object = object_meta(&meta);
                return self.send_object_head(&object, 304, None, None).await;
            }
            404 => return self.respond_simple(404, "not found").await,
            other => return self.unexpected_status(other).await,
        }
        // Without a length, the body keeps a framing that tells a complete
        // body from a cut one: chunked (HTTP/1.1), else close-delimited.
        let chunked = meta.content_length.is_none() && !self.http10;
        if meta.content_length.is_none() && self.http10 {
            self.keep_alive = false;
        }
        let object = object_meta(&meta);
        self.chunked = chunked;
        self.send_object_head(&object, 200, meta.content_length, None)
            .await?;
        if req.method == Method::Head {
            return Ok(());
        }
        loop {
            match body.next_chunk().await {
                Ok(Some(chunk)) if chunked => {
                    if chunk.is_empty() {
                        continue;
                    }
                    let mut framed = Vec::with_capacity(chunk.len() + 20);
                    chunk_prefix(&mut framed, chunk.len());
                    framed.extend_from_slice(&chunk);
                    framed.extend_from_slice(b"\r\n");
                    let n = chunk.len() as u64;
                    let timeout = self.w.cfg.server.send_timeout;
                    send_all(&mut self.conn.stream, framed, timeout).await?;
                    self.bytes += n;
                }
                Ok(Some(chunk)) => {
                    let n = chunk.len() as u64;
                    send_all(&mut self.conn.stream, chunk, self.w.cfg.server.send_timeout).await?;
                    self.bytes += n;
                }
                Ok(None) if chunked => {
                    let timeout = self.w.cfg.server.send_timeout;
                    return send_all(&mut self.conn.stream, LAST_CHUNK, timeout).await;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    // No last chunk, and the connection closes: the client
                    // sees a cut body, never a complete-looking one.
                    tracing::warn!(repo = self.repo_name(), key = self.key, error = %e, "upstream body failed mid-stream");
                    self.keep_alive = false;
                    return Err(std::io::Error::other(e.to_string()));
                }
            }
        }
    }

    /// Upstream answered with a status that is not passed on (its head would
    /// lie about the body): 502, logged with the key and the status.
    async fn unexpected_status(&mut self, status: u16) -> std::io::Result<()> {
        tracing::warn!(
            repo = self.repo_name(),
            key = self.key,
            upstream_status = status,
            "unexpected upstream status: answered 502"
        );
        self.respond_simple(502, &format!("unexpected upstream status {status}"))
            .await
    }

    /// The connection's head buffer with this object's response head rendered
    /// into it, with the rule's header overrides (an override replaces
    /// chartcache's own value of the same header); records `status` as the
    /// exchange's.
    fn object_head(
        &mut self,
        meta: &ObjectMeta,
        status: u16,
        content_length: Option<u64>,
        content_range: Option<&str>,
    ) -> Vec<u8> {
        let overrides = self.overrides;
        let overridden = |name: &str| overrides.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        let mut extra: Vec<(&str, &str)> = overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if self.keep_alive && self.http10 {
            // HTTP/1.0 closes by default: keeping the connection must be said.
            extra.push(("Connection", "keep-alive"));
        }
        if let Some(vary) = self.vary.filter(|_| !overridden("vary")) {
            extra.push(("Vary", vary));
        }
        if let Some(coding) = self.content_encoding {
            extra.push(("Content-Encoding", coding));
        }
        let mut values = std::mem::take(&mut self.conn.status_buf);
        let split = self.cache_status_values(&mut values);
        if !overridden("cache-status") {
            extra.push(("Cache-Status", &values[..split]));
        }
        if values.len() > split && !overridden("age") {
            extra.push(("Age", &values[split..]));
        }
        let ct = content_type(self.key, meta.content_type.as_deref());
        let mut head = std::mem::take(&mut self.conn.head_buf);
        head.clear();
        render(
            &ResponseHead {
                status,
                content_length,
                content_type: (status != 304 && !overridden("content-type")).then_some(ct),
                etag: meta.etag.as_deref().filter(|_| !overridden("etag")),
                last_modified: meta
                    .last_modified
                    .as_deref()
                    .filter(|_| !overridden("last-modified")),
                cache_control: None,
                x_cache: Some(self.cache.as_str()),
                content_range,
                allow: None,
                chunked: self.chunked,
                keep_alive: self.keep_alive,
                extra: &extra,
            },
            &mut head,
        );
        self.conn.status_buf = values;
        self.status = status;
        head
    }

    /// Sends an object's response head on its own (any body follows separately).
    async fn send_object_head(
        &mut self,
        meta: &ObjectMeta,
        status: u16,
        content_length: Option<u64>,
        content_range: Option<&str>,
    ) -> std::io::Result<()> {
        let head = self.object_head(meta, status, content_length, content_range);
        self.send_head(head).await
    }

    async fn send_head(&mut self, head: Vec<u8>) -> std::io::Result<()> {
        let (res, buf) =
            send_vec(&mut self.conn.stream, head, self.w.cfg.server.send_timeout).await;
        self.conn.head_buf = buf;
        res
    }

    /// A complete small text response.
    async fn respond_simple(&mut self, status: u16, msg: &str) -> std::io::Result<()> {
        self.status = status;
        if self.http10 {
            self.keep_alive = false;
        }
        let mut head = std::mem::take(&mut self.conn.head_buf);
        head.clear();
        let mut values = std::mem::take(&mut self.conn.status_buf);
        let split = self.cache_status_values(&mut values);
        let extra = [
            ("Cache-Status", &values[..split]),
            ("Age", &values[split..]),
        ];
        let n = if values.len() > split { 2 } else { 1 };
        let x_cache = Some(self.cache.as_str());
        let mut body = simple_with(
            status,
            msg,
            self.keep_alive,
            x_cache,
            &extra[..n],
            &mut head,
        );
        self.conn.status_buf = values;
        if self.req.method == Method::Head {
            // The head says what a GET would get; a HEAD response has no body.
            head.truncate(head.len().saturating_sub(body as usize));
            body = 0;
        }
        self.send_counted(head, body).await
    }

    /// Sends a complete response whose last `body` bytes are its body, counted as sent
    /// (for the access log and metrics) once all of it was.
    async fn send_counted(&mut self, response: Vec<u8>, body: u64) -> std::io::Result<()> {
        self.send_head(response).await?;
        self.bytes += body;
        Ok(())
    }
}

fn object_meta(meta: &ResponseMeta) -> ObjectMeta {
    ObjectMeta {
        status: meta.status,
        etag: meta.etag.clone(),
        last_modified: meta.last_modified.clone(),
        content_type: meta.content_type.clone(),
        stored_at: 0,
    }
}

/// The Content-Type served for `key`: charts are always `application/gzip`;
/// YAML gets upstream's type unless that is a generic binary one.
fn content_type<'a>(key: &str, upstream: Option<&'a str>) -> &'a str {
    let generic = |ct: &&str| {
        ct.is_empty() || *ct == "binary/octet-stream" || *ct == "application/octet-stream"
    };
    if key.ends_with(".tgz") {
        "application/gzip"
    } else if key.ends_with(".yaml") || key.ends_with(".yml") {
        upstream.filter(|ct| !generic(ct)).unwrap_or("text/yaml")
    } else if key.ends_with(".prov") {
        "application/pgp-signature"
    } else {
        upstream
            .filter(|ct| !generic(ct))
            .unwrap_or("application/octet-stream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            content_type("/a-1.0.tgz", Some("binary/octet-stream")),
            "application/gzip"
        );
        assert_eq!(
            content_type("/index.yaml", Some("binary/octet-stream")),
            "text/yaml"
        );
        assert_eq!(
            content_type("/index.yaml", Some("application/x-yaml")),
            "application/x-yaml"
        );
        assert_eq!(content_type("/index.yaml", None), "text/yaml");
        assert_eq!(
            content_type("/x.json", Some("application/json")),
            "application/json"
        );
    }
}

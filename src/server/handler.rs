//! One request: policy → cache → origin → response.
//!
//! Phases, in order:
//! 1. **Admission**: method (GET/HEAD, else 405), target → object key (400 on
//!    anything `http1::path` refuses).
//! 2. **Policy**: the first matching rule decides `Cache`, `Revalidate` or
//!    `Bypass`, and which headers to override.
//! 3. **Lookup** (Cache/Revalidate): a fresh, verified record is a `HIT`
//!    served from mmap (with HEAD, Range and conditional requests answered
//!    locally). A record that fails verification is dropped and refetched.
//! 4. **Fill**: otherwise join the key's in-flight fill (one upstream GET per
//!    object across all workers, conditional when a stored copy has an ETag)
//!    and stream the body as it lands (`MISS`), or reuse the stored copy on a
//!    304 (`REVALIDATED`), or serve it as `STALE` when upstream fails.
//! 5. **Bypass**: stream upstream's answer through, nothing stored (`BYPASS`).
//!
//! Every request ends in exactly one access-log line and one metrics update.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::access_log::Entry;
use crate::cache::coalesce::{BodyView, FillError, FillState, Join};
use crate::cache::fill::{fill_error, unix_now};
use crate::cache::shard::ShardJob;
use crate::cache::store::{Hit, ObjectMeta, Segment};
use crate::http1::conditional::{evaluate_range, not_modified, RangeOutcome};
use crate::http1::path::object_key;
use crate::http1::render::{render, simple, ResponseHead};
use crate::http1::request::{Method, RequestHead};
use crate::metrics::CacheResult;
use crate::origin::{self, OriginRequest, ResponseMeta};
use crate::policy::{Action, Rule};
use crate::server::send::{
    send_all, send_head_and_body, send_head_and_file, MmapSlice, SocketMode,
};
use crate::server::Worker;

/// A client connection as the handler sees it.
pub struct Conn {
    pub stream: TcpStream,
    pub peer: Option<SocketAddr>,
    /// Reused buffer for response heads.
    pub head_buf: Vec<u8>,
    /// Whether the socket is already non-blocking for `sendfile`.
    pub socket_mode: SocketMode,
}

/// What one exchange produced, for the log and metrics.
struct Exchange {
    status: u16,
    bytes: u64,
    cache: CacheResult,
    upstream_status: Option<u16>,
    keep_alive: bool,
    /// An HTTP/1.0 client (keep-alive must be announced).
    http10: bool,
    /// Stored bodies of at least this many bytes go out with `sendfile(2)`.
    sendfile_threshold: Option<u64>,
}

/// A stored body, wherever it came from (a lookup or a fill).
struct Stored<'a> {
    segment: &'a Arc<Segment>,
    body_offset: usize,
    body_len: u64,
    meta: &'a ObjectMeta,
}

impl<'a> From<&'a Hit> for Stored<'a> {
    fn from(h: &'a Hit) -> Self {
        Stored {
            segment: &h.segment,
            body_offset: h.body_offset,
            body_len: h.body_len as u64,
            meta: &h.meta,
        }
    }
}

impl<'a> From<&'a BodyView> for Stored<'a> {
    fn from(v: &'a BodyView) -> Self {
        Stored {
            segment: &v.segment,
            body_offset: v.body_offset,
            body_len: v.body_len,
            meta: &v.meta,
        }
    }
}

/// Handles one parsed request. Returns whether the connection may be reused.
pub async fn handle(w: &Worker, conn: &mut Conn, req: &RequestHead) -> bool {
    let started = Instant::now();
    let mut x = Exchange {
        status: 0,
        bytes: 0,
        cache: CacheResult::None,
        upstream_status: None,
        keep_alive: req.keep_alive && !w.is_draining(),
        http10: req.minor_version == 0,
        sendfile_threshold: w.cfg.server.sendfile_threshold,
    };
    let key = object_key(&req.target);
    let result = match (&key, req.method) {
        (_, Method::Other) => {
            x.status = 405;
            // CONNECT expects a tunnel, never a protocol switch: close.
            x.keep_alive &= !x.http10 && !req.method_name.eq_ignore_ascii_case("CONNECT");
            let mut head = std::mem::take(&mut conn.head_buf);
            head.clear();
            let msg = b"method not allowed: chartcache serves GET and HEAD\n";
            render(
                &ResponseHead {
                    status: 405,
                    content_length: Some(msg.len() as u64),
                    content_type: Some("text/plain; charset=utf-8"),
                    etag: None,
                    last_modified: None,
                    cache_control: None,
                    x_cache: None,
                    content_range: None,
                    allow: Some("GET, HEAD"),
                    keep_alive: x.keep_alive,
                    extra: &[],
                },
                &mut head,
            );
            head.extend_from_slice(msg);
            send_head(conn, head).await
        }
        (Err(e), _) => {
            w.metrics.bad_requests.fetch_add(1, Relaxed);
            x.keep_alive = false;
            respond_simple(conn, &mut x, 400, &format!("bad request path: {e}")).await
        }
        (Ok(key), _) => {
            let rule = w.cfg.repo.policy.decide(key);
            match rule.action {
                Action::Bypass => {
                    bypass(w, conn, req, key, rule, &mut x, CacheResult::Bypass).await
                }
                Action::Cache { ttl } => cached(w, conn, req, key, rule, ttl, ttl, &mut x).await,
                Action::Revalidate { fresh_for } => {
                    cached(w, conn, req, key, rule, fresh_for, Duration::ZERO, &mut x).await
                }
            }
        }
    };
    let path = match &key {
        Ok(k) => k.as_ref(),
        Err(_) => req.target.as_str(),
    };
    w.metrics.request(x.cache, x.status, x.bytes);
    w.access_log.log(&Entry {
        method: &req.method_name,
        path,
        status: x.status,
        bytes: x.bytes,
        duration: started.elapsed(),
        cache: x.cache,
        upstream_status: x.upstream_status,
        peer: conn.peer,
        user_agent: req.user_agent.as_deref(),
    });
    result.is_ok() && x.keep_alive
}

/// Cache and Revalidate: serve a fresh copy, else fill / revalidate.
#[allow(clippy::too_many_arguments)]
async fn cached(
    w: &Worker,
    conn: &mut Conn,
    req: &RequestHead,
    key: &str,
    rule: &Rule,
    fresh: Duration,
    ttl: Duration,
    x: &mut Exchange,
) -> std::io::Result<()> {
    let now = unix_now();
    let mut existing = w.shards.lookup(key);
    if let Some(hit) = &existing {
        if !hit.verify() {
            w.shards
                .reader(w.shards.owner_of(key))
                .drop_corrupt(key, hit);
            // The store logs the drop; the fill below refetches.
            w.metrics.corrupt_dropped.fetch_add(1, Relaxed);
            existing = None;
        }
    }
    if let Some(hit) = &existing {
        if now < hit.meta.stored_at.saturating_add(fresh.as_secs()) {
            x.cache = CacheResult::Hit;
            return serve_stored(conn, req, key, rule, &Stored::from(hit), x).await;
        }
    }

    let negative_ok = matches!(rule.action, Action::Cache { .. });
    if existing.is_none() && negative_ok && w.shards.negative.contains(key) {
        x.cache = CacheResult::Hit;
        return respond_simple(conn, x, 404, "not found").await;
    }

    // A rewritten index carries a served ETag; upstream knows its own.
    let etag = existing
        .as_ref()
        .and_then(|h| h.meta.etag.as_deref())
        .map(crate::helm::upstream_etag);
    let inflight = match w.shards.inflight.join(key) {
        Join::Leader(f) => {
            let job = ShardJob::Fill {
                inflight: f.clone(),
                etag,
                ttl_secs: ttl.as_secs().min(u32::MAX as u64) as u32,
            };
            if !w.shards.send(key, job) {
                f.publish(FillState::Failed {
                    error: FillError {
                        status: 503,
                        message: "shutting down".into(),
                        upstream_status: None,
                    },
                    mid_body: false,
                });
                w.shards.inflight.finish(&f);
            }
            f
        }
        Join::Follower(f) => {
            w.metrics.coalesced_waiters.fetch_add(1, Relaxed);
            f
        }
    };
    let mut rx = inflight.subscribe();
    let wait = w.cfg.repo.origin.connect_timeout
        + w.cfg.repo.origin.request_timeout
        + Duration::from_secs(1);
    loop {
        let current = rx.borrow_and_update().clone();
        let state = match current {
            FillState::Pending => match monoio::time::timeout(wait, rx.changed()).await {
                Ok(Ok(())) => continue,
                // No answer in time is an upstream failure like any other
                // (stale-if-error applies).
                _ => FillState::Failed {
                    error: FillError {
                        status: 504,
                        message: "timed out waiting for upstream".into(),
                        upstream_status: None,
                    },
                    mid_body: false,
                },
            },
            other => other,
        };
        match state {
            FillState::Pending => continue,
            FillState::Streaming { view, .. } | FillState::Done { view } => {
                x.cache = CacheResult::Miss;
                x.upstream_status = Some(200);
                return stream_fill(w, conn, req, key, rule, view, rx, x).await;
            }
            FillState::NotModified => {
                x.upstream_status = Some(304);
                let hit = w.shards.lookup(key).or(existing);
                return match hit {
                    Some(hit) => {
                        x.cache = CacheResult::Revalidated;
                        serve_stored(conn, req, key, rule, &Stored::from(&hit), x).await
                    }
                    None => bypass(w, conn, req, key, rule, x, CacheResult::Miss).await,
                };
            }
            FillState::Response { meta, body } => {
                x.cache = CacheResult::Miss;
                if meta.status == 404 && negative_ok {
                    w.shards.negative.insert(key);
                }
                x.upstream_status = Some(meta.status);
                return serve_response(conn, req, key, rule, &meta, body, x).await;
            }
            FillState::Unverified { view } => {
                x.cache = CacheResult::Bypass;
                x.upstream_status = Some(200);
                let stored = Stored::from(&view);
                return serve_stored(conn, req, key, rule, &stored, x).await;
            }
            FillState::Passthrough => {
                return bypass(w, conn, req, key, rule, x, CacheResult::Miss).await;
            }
            FillState::Failed { error, .. } => {
                x.upstream_status = error.upstream_status;
                return failed(
                    conn,
                    req,
                    key,
                    rule,
                    existing.as_ref(),
                    &error,
                    w.cfg.cache.max_stale,
                    x,
                )
                .await;
            }
        }
    }
}

/// Upstream failed: serve the stored copy as STALE if allowed, else the error.
#[allow(clippy::too_many_arguments)]
async fn failed(
    conn: &mut Conn,
    req: &RequestHead,
    key: &str,
    rule: &Rule,
    existing: Option<&Hit>,
    error: &FillError,
    max_stale: Duration,
    x: &mut Exchange,
) -> std::io::Result<()> {
    let server_side = error.upstream_status.is_none_or(|s| s >= 500);
    if let Some(hit) = existing.filter(|_| server_side) {
        let age = unix_now().saturating_sub(hit.meta.stored_at);
        if age <= max_stale.as_secs() {
            x.cache = CacheResult::Stale;
            return serve_stored(conn, req, key, rule, &Stored::from(hit), x).await;
        }
    }
    x.cache = CacheResult::Miss;
    tracing::warn!(key, status = error.status, error = %error.message, "upstream failed");
    respond_simple(conn, x, error.status, &error.message).await
}

/// Streams a fill (in progress or done) to this client from the segment mmap.
#[allow(clippy::too_many_arguments)]
async fn stream_fill(
    w: &Worker,
    conn: &mut Conn,
    req: &RequestHead,
    key: &str,
    rule: &Rule,
    view: BodyView,
    mut rx: tokio::sync::watch::Receiver<FillState>,
    x: &mut Exchange,
) -> std::io::Result<()> {
    let meta = &view.meta;
    let wait = w.cfg.repo.origin.request_timeout + Duration::from_secs(1);
    let head_only = if not_modified(
        req.if_none_match.as_deref(),
        req.if_modified_since.as_deref(),
        meta.etag.as_deref(),
        meta.last_modified.as_deref(),
    ) {
        send_object_head(conn, key, rule, meta, 304, None, None, x).await?;
        true
    } else {
        send_object_head(conn, key, rule, meta, 200, Some(view.body_len), None, x).await?;
        req.method == Method::Head
    };
    if head_only {
        // Same rule as for bodies: this exchange ends once the fill is final,
        // so the client's next request finds the committed entry.
        while !rx.borrow_and_update().is_final() {
            if !matches!(monoio::time::timeout(wait, rx.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
        return Ok(());
    }
    let mut sent = 0u64;
    loop {
        // The last byte is held back until the record is committed, so a
        // client that saw this response complete and asks again finds the
        // entry (a HIT, with Range and conditionals), never a fill that is
        // still finishing.
        let available = match &*rx.borrow_and_update() {
            FillState::Streaming { written, .. } => (*written).min(view.body_len.saturating_sub(1)),
            FillState::Done { .. } => view.body_len,
            _ => {
                // Failed mid-body (or abandoned): the client must see a broken
                // response, never a short 200 that looks complete.
                x.keep_alive = false;
                return Err(std::io::Error::other("fill failed mid-body"));
            }
        };
        if available > sent {
            let slice = MmapSlice::new(
                view.segment.clone(),
                view.body_offset + sent as usize,
                (available - sent) as usize,
            );
            send_all(&mut conn.stream, slice).await?;
            x.bytes += available - sent;
            sent = available;
        }
        if sent >= view.body_len {
            return Ok(());
        }
        match monoio::time::timeout(wait, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                x.keep_alive = false;
                return Err(std::io::Error::other("fill stalled"));
            }
        }
    }
}

/// Serves a stored body: conditional → 304, Range → 206/416, else 200.
async fn serve_stored(
    conn: &mut Conn,
    req: &RequestHead,
    key: &str,
    rule: &Rule,
    s: &Stored<'_>,
    x: &mut Exchange,
) -> std::io::Result<()> {
    let meta = s.meta;
    if not_modified(
        req.if_none_match.as_deref(),
        req.if_modified_since.as_deref(),
        meta.etag.as_deref(),
        meta.last_modified.as_deref(),
    ) {
        return send_object_head(conn, key, rule, meta, 304, None, None, x).await;
    }
    let len = s.body_len;
    let (status, start, n, range) = match evaluate_range(req.range.as_deref(), len) {
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
            return send_object_head(conn, key, rule, meta, 416, Some(0), Some(&cr), x).await;
        }
    };
    let head = object_head(conn, key, rule, meta, status, Some(n), range.as_deref(), x);
    if req.method == Method::Head {
        return send_head(conn, head).await;
    }
    let at = s.body_offset + start as usize;
    let (res, head) = if x.sendfile_threshold.is_some_and(|t| n >= t) {
        send_head_and_file(
            &mut conn.stream,
            conn.socket_mode,
            head,
            s.segment.clone(),
            at as u64,
            n as usize,
        )
        .await
    } else {
        let body = MmapSlice::new(s.segment.clone(), at, n as usize);
        send_head_and_body(&mut conn.stream, head, body).await
    };
    conn.head_buf = head;
    if res.is_ok() {
        x.bytes += n;
    }
    res
}

/// A small in-memory answer from a fill (404, or an unstorable body).
async fn serve_response(
    conn: &mut Conn,
    req: &RequestHead,
    key: &str,
    rule: &Rule,
    meta: &ResponseMeta,
    body: Bytes,
    x: &mut Exchange,
) -> std::io::Result<()> {
    if meta.status != 200 {
        let status = if meta.status == 304 { 502 } else { meta.status };
        let msg = if status == 404 {
            "not found"
        } else {
            "upstream error"
        };
        return respond_simple(conn, x, status, msg).await;
    }
    let object = object_meta(meta);
    send_object_head(
        conn,
        key,
        rule,
        &object,
        200,
        Some(body.len() as u64),
        None,
        x,
    )
    .await?;
    if req.method == Method::Get && !body.is_empty() {
        let n = body.len() as u64;
        send_all(&mut conn.stream, body).await?;
        x.bytes += n;
    }
    Ok(())
}

/// Streams upstream's answer straight through; nothing is stored.
async fn bypass(
    w: &Worker,
    conn: &mut Conn,
    req: &RequestHead,
    key: &str,
    rule: &Rule,
    x: &mut Exchange,
    result: CacheResult,
) -> std::io::Result<()> {
    x.cache = result;
    let oreq = OriginRequest {
        key: key.to_string(),
        method: if req.method == Method::Head {
            origin::Method::Head
        } else {
            origin::Method::Get
        },
        if_none_match: req.if_none_match.clone(),
        if_modified_since: req.if_modified_since.clone(),
    };
    let started = Instant::now();
    let resp = match w.origin.fetch(oreq).await {
        Ok(r) => {
            w.metrics.upstream(Some(r.meta.status), started.elapsed());
            r
        }
        Err(e) => {
            let err = fill_error(&e);
            w.metrics.upstream(err.upstream_status, started.elapsed());
            x.upstream_status = err.upstream_status;
            tracing::warn!(key, error = %e, "upstream request failed");
            return respond_simple(conn, x, err.status, &err.message).await;
        }
    };
    x.upstream_status = Some(resp.meta.status);
    let meta = resp.meta;
    let mut body = resp.body;
    match meta.status {
        200 => {}
        304 => {
            let object = object_meta(&meta);
            return send_object_head(conn, key, rule, &object, 304, None, None, x).await;
        }
        404 => return respond_simple(conn, x, 404, "not found").await,
        other => {
            return respond_simple(
                conn,
                x,
                if other >= 500 { 502 } else { other },
                "upstream error",
            )
            .await
        }
    }
    if meta.content_length.is_none() {
        // Close-delimited: the only honest framing without a length.
        x.keep_alive = false;
    }
    let object = object_meta(&meta);
    send_object_head(conn, key, rule, &object, 200, meta.content_length, None, x).await?;
    if req.method == Method::Head {
        return Ok(());
    }
    loop {
        match body.next_chunk().await {
            Ok(Some(chunk)) => {
                let n = chunk.len() as u64;
                send_all(&mut conn.stream, chunk).await?;
                x.bytes += n;
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(key, error = %e, "upstream body failed mid-stream");
                x.keep_alive = false;
                return Err(std::io::Error::other(e.to_string()));
            }
        }
    }
}

fn object_meta(meta: &ResponseMeta) -> ObjectMeta {
    ObjectMeta {
        status: meta.status,
        etag: meta.etag.clone(),
        last_modified: meta.last_modified.clone(),
        content_type: meta.content_type.clone(),
        stored_at: 0,
        ttl_secs: 0,
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

/// The connection's head buffer with this object's response head rendered
/// into it, with the rule's header overrides (an override replaces
/// chartcache's own value of the same header); records `status` as the
/// exchange's.
#[allow(clippy::too_many_arguments)]
fn object_head(
    conn: &mut Conn,
    key: &str,
    rule: &Rule,
    meta: &ObjectMeta,
    status: u16,
    content_length: Option<u64>,
    content_range: Option<&str>,
    x: &mut Exchange,
) -> Vec<u8> {
    let overridden = |name: &str| {
        rule.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    let mut extra: Vec<(&str, &str)> = rule
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if x.keep_alive && x.http10 {
        // HTTP/1.0 closes by default: keeping the connection must be said.
        extra.push(("Connection", "keep-alive"));
    }
    let ct = content_type(key, meta.content_type.as_deref());
    let mut head = std::mem::take(&mut conn.head_buf);
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
            x_cache: Some(x.cache.as_str()),
            content_range,
            allow: None,
            keep_alive: x.keep_alive,
            extra: &extra,
        },
        &mut head,
    );
    x.status = status;
    head
}

/// Sends an object's response head on its own (any body follows separately).
#[allow(clippy::too_many_arguments)]
async fn send_object_head(
    conn: &mut Conn,
    key: &str,
    rule: &Rule,
    meta: &ObjectMeta,
    status: u16,
    content_length: Option<u64>,
    content_range: Option<&str>,
    x: &mut Exchange,
) -> std::io::Result<()> {
    let head = object_head(
        conn,
        key,
        rule,
        meta,
        status,
        content_length,
        content_range,
        x,
    );
    send_head(conn, head).await
}

async fn send_head(conn: &mut Conn, head: Vec<u8>) -> std::io::Result<()> {
    let (res, buf) = monoio::io::AsyncWriteRentExt::write_all(&mut conn.stream, head).await;
    conn.head_buf = buf;
    res.map(|_| ())
}

/// A complete small text response.
async fn respond_simple(
    conn: &mut Conn,
    x: &mut Exchange,
    status: u16,
    msg: &str,
) -> std::io::Result<()> {
    x.status = status;
    if x.http10 {
        x.keep_alive = false;
    }
    let mut head = std::mem::take(&mut conn.head_buf);
    head.clear();
    let mut line = String::with_capacity(msg.len() + 1);
    line.push_str(msg);
    line.push('\n');
    simple(status, &line, x.keep_alive, &mut head);
    send_head(conn, head).await
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

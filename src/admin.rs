//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and purge.
//!
//! Low-traffic and off the hot path, so it runs on plain threads (one per
//! admin connection, at most `MAX_ADMIN_CONNECTIONS`), one request per
//! connection. Purges go through the cache facade ([`Cache::purge`]), which
//! hands them to the owning workers — only a shard's owner writes its shard.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 while serving, 503 while shutting down |
//! | `GET /readyz` | 200 once every worker has recovered its shard and serves (the text says when a full cache device degrades it) |
//! | `GET /metrics` | Prometheus text format |
//! | `DELETE /cache/<path>` | 200 if the object was cached (now gone), 404 if not |
//! | `DELETE /cache?prefix=<p>` | 200 with the number of objects removed |
//!
//! When a token is configured, purge requires `Authorization: Bearer <token>`
//! (config refuses a non-loopback admin address without one).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, PurgeError, PurgeTarget};
use crate::http1::path::object_key;
use crate::metrics::Metrics;

const MAX_ADMIN_CONNECTIONS: usize = 32;
const MAX_HEAD: usize = 16 * 1024;

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Metrics,
    pub cache: Arc<Cache>,
    /// Workers that finished starting.
    pub ready: Arc<AtomicUsize>,
    pub workers: usize,
    pub draining: Arc<AtomicBool>,
    pub token: Option<String>,
    /// S3 credentials, when the upstream needs them: expired ones make the
    /// node unready (it could only answer 502s for misses).
    pub credentials: Option<Arc<crate::origin::credentials::CredentialsCell>>,
}

/// Serves the admin listener on a background thread.
pub fn spawn(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    let active = Arc::new(AtomicUsize::new(0));
    let _ = std::thread::Builder::new()
        .name("chartcache-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if active.load(Ordering::SeqCst) >= MAX_ADMIN_CONNECTIONS {
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let done = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("chartcache-admin-conn".into())
                    .spawn(move || {
                        serve(stream, &state);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The closure (and its decrement) was dropped unrun.
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        });
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }
}

fn serve(mut stream: TcpStream, state: &AdminState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let reply = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let target = req.path.unwrap_or("");
                let auth = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok());
                break route(state, method, target, auth);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => break Reply::text(431, "request head too large\n"),
            Err(_) => break Reply::text(400, "malformed request\n"),
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        crate::http1::render::reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.body.as_bytes());
}

fn route(state: &AdminState, method: &str, target: &str, auth: Option<&str>) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => {
            if state.draining.load(Ordering::SeqCst) {
                Reply::text(503, "shutting down\n")
            } else {
                Reply::text(200, "ok\n")
            }
        }
        ("GET" | "HEAD", "/readyz") => {
            let ready = state.ready.load(Ordering::SeqCst);
            if state.draining.load(Ordering::SeqCst) {
                Reply::text(503, "shutting down\n")
            } else if ready < state.workers {
                Reply::text(503, format!("starting: {ready}/{} workers ready\n", state.workers))
            } else if state.credentials.as_ref().is_some_and(|c| !c.is_fresh()) {
                Reply::text(503, "AWS credentials are missing or expired and cannot be refreshed\n")
            } else {
                match state.cache.disk_full_shards() {
                    0 => Reply::text(200, "ready\n"),
                    full => Reply::text(
                        200,
                        format!(
                            "ready (degraded: cache device full on {full} of {} shards: cached objects are served, new ones pass through uncached)\n",
                            state.cache.shards()
                        ),
                    ),
                }
            }
        }
        ("GET" | "HEAD", "/metrics") => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: state.metrics.render(),
        },
        ("DELETE", p) if p == "/cache" || p.starts_with("/cache/") => {
            if let Some(token) = &state.token {
                let ok = auth
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
                if !ok {
                    return Reply::text(401, "purge needs Authorization: Bearer <admin token>\n");
                }
            }
            purge(state, p, query)
        }
        (_, "/healthz" | "/readyz" | "/metrics") => Reply::text(405, "use GET\n"),
        _ => Reply::text(
            404,
            "admin endpoints: GET /healthz, /readyz, /metrics; DELETE /cache/<path>, DELETE /cache?prefix=<p>\n",
        ),
    }
}

fn purge(state: &AdminState, path: &str, query: &str) -> Reply {
    let timeout = Duration::from_secs(5);
    if path == "/cache" {
        let Some(prefix) = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("prefix="))
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        else {
            return Reply::text(
                400,
                "use DELETE /cache/<path> or DELETE /cache?prefix=<path prefix>\n",
            );
        };
        if !prefix.starts_with('/') {
            return Reply::text(400, "prefix must start with /\n");
        }
        return match state.cache.purge(PurgeTarget::Prefix(&prefix), timeout) {
            Ok(removed) => {
                tracing::info!(prefix = %prefix, removed, "purged by prefix");
                Reply::json(200, format!("{{\"purged\":{removed}}}\n"))
            }
            Err(e) => purge_failed(&e, "a worker did not answer the purge\n"),
        };
    }
    let raw = &path["/cache".len()..];
    let key = match object_key(raw) {
        Ok(k) => k,
        Err(e) => return Reply::text(400, format!("bad path: {e}\n")),
    };
    match state.cache.purge(PurgeTarget::Key(&key), timeout) {
        Ok(0) => Reply::json(
            404,
            format!("{{\"purged\":0,\"key\":{}}}\n", json_str(&key)),
        ),
        Ok(n) => {
            tracing::info!(key = %key, "purged");
            Reply::json(
                200,
                format!("{{\"purged\":{n},\"key\":{}}}\n", json_str(&key)),
            )
        }
        Err(e) => purge_failed(&e, "the owning worker did not answer the purge\n"),
    }
}

/// 503 for a purge that did not complete (`no_answer`: the text for a
/// worker that did not reply in time).
fn purge_failed(e: &PurgeError, no_answer: &str) -> Reply {
    tracing::warn!(error = %e, "purge failed");
    match e {
        PurgeError::ShuttingDown => Reply::text(503, "shutting down\n"),
        PurgeError::NoAnswer { .. } => Reply::text(503, no_answer),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

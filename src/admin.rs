//! The admin listener: the status page (`/`), `/healthz`, `/readyz`, `/metrics`, and purge.
//!
//! Low-traffic and off the hot path, so it runs on plain threads (one per
//! admin connection, at most [`MAX_ADMIN_CONNECTIONS`]), one request per
//! connection. Purges go through the cache facade ([`Cache::purge`]), which
//! hands them to the owning workers — only a shard's owner writes its shard.
//!
//! Probes are always answered, so a liveness probe never restarts a healthy
//! cache because of other clients:
//! - the request head must arrive within [`HEAD_DEADLINE`] of the accept,
//!   however the bytes trickle in (else 408 and close);
//! - when every slot is taken, the connection that has waited longest for its
//!   head is closed to make room (a probe's head arrives at once, a
//!   slowloris's never does); connections already answering are never cut.
//!   Said in the log at most once per [`LOG_EVERY`];
//! - a failed accept (EMFILE) backs off instead of spinning.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the status page, HTML ([`crate::status`]) |
//! | `GET /healthz` | 200 while serving, 503 while shutting down |
//! | `GET /readyz` | 200 once every worker has recovered its shard and serves, while at least one repository can reach its upstream (the text says when a full cache device degrades it; with several repositories, one line per repository) |
//! | `GET /metrics` | Prometheus text format (with the credential families of [`CredentialMetrics`]) |
//! | `DELETE /cache/<path>` | 200 if the object was cached (now gone), 404 if not |
//! | `DELETE /cache?prefix=<p>` | 200 with the number of objects removed |
//!
//! Purge paths are request paths (`/stable/x.tgz`): each names an object of one
//! repository ([`Repos::purge_scopes`]); a prefix inside a repository stays in it.
//! A repository is unavailable when its S3 credentials are missing or expired (it
//! could only answer 502s for misses); the node is unready only when every
//! repository is.
//!
//! When a token is configured, purge requires `Authorization: Bearer <token>`
//! (config refuses a non-loopback admin address without one).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::{Cache, PurgeError, PurgeTarget};
use crate::http1::path::object_key;
use crate::metrics::{LogEvery, Metrics};
use crate::repo::Repos;

/// Admin connections served at once (one thread each).
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Time from accept to a complete request head, however it trickles in.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// At most one log line per condition per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;
/// Pause after a failed accept (e.g. EMFILE), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Metrics,
    pub cache: Arc<Cache>,
    /// Workers that finished starting.
    pub ready: Arc<AtomicUsize>,
    pub workers: usize,
    pub draining: Arc<AtomicBool>,
    pub token: Option<String>,
    pub repos: Arc<Repos>,
    /// Per repository (in order), its S3 credentials when its upstream needs them.
    pub credentials: Vec<Option<Arc<crate::origin::credentials::CredentialsCell>>>,
    /// When the server started (the status page's uptime).
    pub started: Instant,
    /// The configured cache size in bytes.
    pub cache_size: u64,
}

/// `chartcache_credentials_expiry_seconds{repo}` (seconds until the signing
/// credentials expire; only for S3 repositories whose credentials expire) and
/// `chartcache_credentials_refresh_failures_total{repo}` (every S3 repository).
#[derive(Debug)]
pub struct CredentialMetrics {
    /// `repo` label and credentials of each S3 repository.
    pub repos: Vec<(String, Arc<crate::origin::credentials::CredentialsCell>)>,
}

impl prometheus_client::collector::Collector for CredentialMetrics {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType;
        if self.repos.is_empty() {
            return Ok(());
        }
        let now = std::time::SystemTime::now();
        let expiring: Vec<(&str, f64)> = self
            .repos
            .iter()
            .filter_map(|(name, cell)| Some((name.as_str(), cell.expires_in_at(now)?)))
            .collect();
        if !expiring.is_empty() {
            let mut m = enc.encode_descriptor(
                crate::metrics::CREDENTIALS_EXPIRY,
                "Seconds until the S3 signing credentials expire (negative: expired); absent for credentials that do not expire (static keys) and non-S3 upstreams",
                None,
                MetricType::Gauge,
            )?;
            for (name, secs) in expiring {
                m.encode_family(&vec![("repo", name)])?
                    .encode_gauge(&secs)?;
            }
        }
        let mut m = enc.encode_descriptor(
            crate::metrics::CREDENTIALS_REFRESH_FAILURES,
            "Failed refreshes of the S3 signing credentials (the current ones are kept until they expire)",
            None,
            MetricType::Counter,
        )?;
        for (name, cell) in &self.repos {
            m.encode_family(&vec![("repo", name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&cell.refresh_failures(), None)?;
        }
        Ok(())
    }
}

impl AdminState {
    /// The credential families of this instance's S3 repositories.
    fn credential_metrics(&self) -> CredentialMetrics {
        CredentialMetrics {
            repos: self
                .repos
                .iter()
                .filter_map(|r| {
                    let cell = self.credentials.get(r.id)?.as_ref()?;
                    Some((r.name.clone(), cell.clone()))
                })
                .collect(),
        }
    }
}

/// The admin connections being served, oldest first.
#[derive(Default)]
struct Table {
    next_id: u64,
    conns: Vec<Tracked>,
}

struct Tracked {
    id: u64,
    /// A handle on the socket while its request head is still awaited (the
    /// connection may be closed to make room); `None` once it is answered.
    waiting: Option<TcpStream>,
    /// Closed to make room; its thread has not ended yet.
    evicted: bool,
}

impl Table {
    /// Takes a slot for `stream`, closing the connection that has waited
    /// longest for its head when all are taken. `None`: no room (every slot is
    /// answering a request).
    fn admit(&mut self, stream: &TcpStream) -> Option<u64> {
        let live = self.conns.iter().filter(|c| !c.evicted).count();
        if live >= MAX_ADMIN_CONNECTIONS {
            let oldest = self.conns.iter_mut().find(|c| c.waiting.is_some())?;
            if let Some(s) = oldest.waiting.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
            oldest.evicted = true;
            static EVICTED: LogEvery = LogEvery::new(LOG_EVERY);
            if let Some(held_back) = EVICTED.allow() {
                tracing::warn!(
                    max = MAX_ADMIN_CONNECTIONS,
                    more_since_last_line = held_back,
                    "admin connections full: closed the one waiting longest for its request"
                );
            }
        }
        // Evicted threads end at once; this bounds them should they not.
        if self.conns.len() >= 2 * MAX_ADMIN_CONNECTIONS {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.conns.push(Tracked {
            id,
            waiting: stream.try_clone().ok(),
            evicted: false,
        });
        Some(id)
    }

    /// The head of `id` is in: it is answered, never evicted.
    fn answering(&mut self, id: u64) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == id) {
            c.waiting = None;
        }
    }

    fn finished(&mut self, id: u64) {
        self.conns.retain(|c| c.id != id);
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the admin listener on a background thread.
pub fn spawn(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    let table = Arc::new(Mutex::new(Table::default()));
    let _ = std::thread::Builder::new()
        .name("chartcache-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        static FAILED: LogEvery = LogEvery::new(LOG_EVERY);
                        if let Some(held_back) = FAILED.allow() {
                            tracing::warn!(error = %e, more_since_last_line = held_back,
                                "admin accept failed; backing off");
                        }
                        std::thread::sleep(ACCEPT_BACKOFF);
                        continue;
                    }
                };
                let Some(id) = lock(&table).admit(&stream) else {
                    continue;
                };
                let state = state.clone();
                let conn_table = table.clone();
                let spawned = std::thread::Builder::new()
                    .name("chartcache-admin-conn".into())
                    .spawn(move || {
                        serve(stream, &state, || lock(&conn_table).answering(id));
                        lock(&conn_table).finished(id);
                    });
                if spawned.is_err() {
                    // The closure (and its release) was dropped unrun.
                    lock(&table).finished(id);
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
    fn html(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body,
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

/// Reads one request (its head by [`HEAD_DEADLINE`]), calls `answering`
/// once the head is in, and answers.
fn serve(mut stream: TcpStream, state: &AdminState, answering: impl FnOnce()) {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Reply::text(408, "request head not received in time\n");
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break Reply::text(408, "request head not received in time\n");
            }
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                answering();
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
    if matches!(reply.status, 400 | 408 | 431) {
        // The client may still be sending: closing with unread bytes would
        // reset the connection and could discard the answer. FIN, then
        // discard briefly.
        let _ = stream.shutdown(Shutdown::Write);
        let until = Instant::now() + Duration::from_secs(1);
        let mut read = 0;
        while read < MAX_HEAD {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    }
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
        ("GET" | "HEAD", "/readyz") => readyz(state),
        ("GET" | "HEAD", "/metrics") => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: state
                .metrics
                .render_with(Some(Box::new(state.credential_metrics()))),
        },
        ("GET" | "HEAD", "/") => Reply::html(status_page(state)),
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
        (_, "/" | "/healthz" | "/readyz" | "/metrics") => Reply::text(405, "use GET\n"),
        _ => Reply::text(
            404,
            "admin endpoints: GET / (status page), /healthz, /readyz, /metrics; DELETE /cache/<path>, DELETE /cache?prefix=<p>\n",
        ),
    }
}

fn status_page(state: &AdminState) -> String {
    crate::status::render(&crate::status::Inputs {
        metrics: &state.metrics,
        repos: &state.repos,
        cache: &state.cache,
        uptime: state.started.elapsed(),
        workers: state.workers,
        ready: state.ready.load(Ordering::SeqCst),
        cache_size: state.cache_size,
        credentials_ok: (0..state.repos.len())
            .map(|i| {
                state
                    .credentials
                    .get(i)
                    .and_then(Option::as_ref)
                    .map(|c| c.is_fresh())
            })
            .collect(),
    })
}

/// Ready once every worker serves, unless every repository lacks usable credentials;
/// with several repositories the text has one line per repository.
fn readyz(state: &AdminState) -> Reply {
    const NO_CREDENTIALS: &str = "AWS credentials are missing or expired and cannot be refreshed";
    let ready = state.ready.load(Ordering::SeqCst);
    if state.draining.load(Ordering::SeqCst) {
        return Reply::text(503, "shutting down\n");
    }
    if ready < state.workers {
        return Reply::text(
            503,
            format!("starting: {ready}/{} workers ready\n", state.workers),
        );
    }
    let usable: Vec<bool> = (0..state.repos.len())
        .map(|i| {
            state
                .credentials
                .get(i)
                .and_then(Option::as_ref)
                .is_none_or(|c| c.is_fresh())
        })
        .collect();
    let several = state.repos.len() > 1;
    let detail = if several {
        let now = crate::cache::format::unix_now();
        let lines: Vec<String> = state
            .repos
            .iter()
            .map(|r| {
                let answer = state
                    .metrics
                    .repo_max(r.id, |c| c.last_answer.load(Ordering::Relaxed));
                let failure = state
                    .metrics
                    .repo_max(r.id, |c| c.last_failure.load(Ordering::Relaxed));
                let status = if !usable[r.id] {
                    format!("unavailable: {NO_CREDENTIALS}")
                } else if failure > answer {
                    format!(
                        "upstream failing (last failure {}s ago{}): cached objects are served",
                        now.saturating_sub(failure),
                        if answer == 0 {
                            String::new()
                        } else {
                            format!(", last answer {}s ago", now.saturating_sub(answer))
                        }
                    )
                } else {
                    "ok".into()
                };
                format!("  {} ({}): {status}\n", r.name, r.cfg.origin.upstream)
            })
            .collect();
        lines.concat()
    } else {
        String::new()
    };
    if !usable.iter().any(|u| *u) {
        return Reply::text(503, format!("{NO_CREDENTIALS}\n{detail}"));
    }
    let head = match state.cache.disk_full_shards() {
        0 => "ready\n".to_string(),
        full => format!(
            "ready (degraded: cache device full on {full} of {} shards: cached objects are served, new ones pass through uncached)\n",
            state.cache.shards()
        ),
    };
    Reply::text(200, format!("{head}{detail}"))
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
        let mut removed = 0;
        for scope in state.repos.purge_scopes(&prefix, true) {
            match state
                .cache
                .purge(PurgeTarget::Prefix(&scope.cache_key), timeout)
            {
                Ok(n) => {
                    removed += n;
                    state.repos.purged(scope.repo);
                }
                Err(e) => return purge_failed(&e, "a worker did not answer the purge\n"),
            }
        }
        tracing::info!(prefix = %prefix, removed, "purged by prefix");
        return Reply::json(200, format!("{{\"purged\":{removed}}}\n"));
    }
    let raw = &path["/cache".len()..];
    let key = match object_key(raw) {
        Ok(k) => k,
        Err(e) => return Reply::text(400, format!("bad path: {e}\n")),
    };
    let Some(scope) = state.repos.purge_scopes(&key, false).pop() else {
        return Reply::json(
            404,
            format!(
                "{{\"purged\":0,\"key\":{},\"error\":\"no repository is served under this path\"}}\n",
                json_str(&key)
            ),
        );
    };
    match state
        .cache
        .purge(PurgeTarget::Key(&scope.cache_key), timeout)
    {
        Ok(0) => Reply::json(
            404,
            format!("{{\"purged\":0,\"key\":{}}}\n", json_str(&key)),
        ),
        Ok(n) => {
            state.repos.purged(scope.repo);
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

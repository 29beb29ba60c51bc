//! The status page of the admin listener (`GET /`): one plain HTML page, no
//! script, no external assets, for a person at a browser or `curl`.
//!
//! It shows what an operator asks first — which build and driver run (and why
//! epoll, for a fallback), since when, how many workers are ready, how full the
//! cache is — and per repository: requests, hit ratio, upstream requests (by
//! kind), requests answered without an upstream request and the S3 cost they
//! saved, the stored index's ETag and age, and whether the repository is serving
//! stale copies. Every figure is read from the same counters `/metrics` renders
//! ([`Metrics`]), so the two agree. No secrets: the admin token and credentials
//! never appear; upstreams are shown as `Upstream`'s `Display` (no user info).
//!
//! Everything from configuration or upstream (prefixes, upstream names, ETags,
//! the driver's fallback reason) goes through [`escape`]: a five-character
//! escape written here rather than a crate, since it is the whole of what the
//! page needs.
//!
//! Cells carry `data-k` names (`requests`, `hit-ratio`...) and repository rows a
//! `data-repo` attribute, so tests and scripts can read the page as data.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::metrics::{CacheResult, Metrics, UpstreamKind};
use crate::repo::Repos;

/// What the page shows beyond the counters; filled by the admin listener.
pub struct Inputs<'a> {
    pub metrics: &'a Metrics,
    pub repos: &'a Repos,
    pub cache: &'a crate::cache::Cache,
    pub uptime: Duration,
    pub workers: usize,
    pub ready: usize,
    pub cache_size: u64,
    /// Per repository: whether it has usable credentials (S3), `None` when not S3.
    pub credentials_ok: Vec<Option<bool>>,
}

/// One repository's figures, as the page shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoStatus {
    pub name: String,
    pub upstream: String,
    pub requests: u64,
    /// HIT, REVALIDATED and STALE over every cache decision (`None`: no requests).
    pub hit_ratio: Option<f64>,
    pub upstream_requests: u64,
    /// GET, conditional GET → 304, conditional GET → other, HEAD.
    pub by_kind: [u64; 4],
    pub without_upstream: u64,
    pub cost_saved: f64,
    pub stale_responses: u64,
    pub index_etag: Option<String>,
    pub index_age: Option<u64>,
    /// Upstream's last exchange failed (a stored copy is served as STALE).
    pub upstream_failing: bool,
}

/// The figures of repository `id`.
pub fn repo_status(inputs: &Inputs<'_>, id: usize) -> Option<RepoStatus> {
    let repo = inputs.repos.get(id)?;
    let m = inputs.metrics;
    let requests = m.repo_sum(id, |c| {
        CacheResult::ALL.iter().map(|r| c.requests_with(*r)).sum()
    });
    let decided = m.repo_sum(id, |c| {
        CacheResult::ALL
            .iter()
            .filter(|r| **r != CacheResult::None)
            .map(|r| c.requests_with(*r))
            .sum()
    });
    let served = m.repo_sum(id, |c| {
        [
            CacheResult::Hit,
            CacheResult::Revalidated,
            CacheResult::Stale,
        ]
        .iter()
        .map(|r| c.requests_with(*r))
        .sum()
    });
    let kind = |k: UpstreamKind, outcomes: &[usize]| {
        m.repo_sum(id, |c| {
            outcomes.iter().map(|o| c.upstream_by_kind(k, *o)).sum()
        })
    };
    let all = [0, 1, 2, 3, 4];
    let by_kind = [
        kind(UpstreamKind::Get, &all),
        kind(UpstreamKind::ConditionalGet, &[1]),
        kind(UpstreamKind::ConditionalGet, &[0, 2, 3, 4]),
        kind(UpstreamKind::Head, &all),
    ];
    let index = inputs.cache.stored_meta(&repo.keys.index);
    let now = crate::cache::format::unix_now();
    let answer = m.repo_max(id, |c| c.last_answer.load(Relaxed));
    let failure = m.repo_max(id, |c| c.last_failure.load(Relaxed));
    Some(RepoStatus {
        name: repo.name.clone(),
        upstream: repo.cfg.origin.upstream.to_string(),
        requests,
        hit_ratio: (decided > 0).then(|| served as f64 / decided as f64),
        upstream_requests: m.repo_sum(id, |c| c.upstream_all()),
        by_kind,
        without_upstream: m.repo_sum(id, |c| c.without_upstream()),
        cost_saved: m.repo_cost_saved(id),
        stale_responses: m.repo_sum(id, |c| c.requests_with(CacheResult::Stale)),
        index_etag: index.as_ref().and_then(|i| i.etag.clone()),
        index_age: index.as_ref().map(|i| now.saturating_sub(i.stored_at)),
        upstream_failing: failure > answer,
    })
}

/// Escapes `s` for HTML text and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1d 2h 3m 4s`, leading zero units left out.
pub fn duration_words(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (v, unit) in [(days, "d"), (hours, "h"), (mins, "m")] {
        if v > 0 || !out.is_empty() {
            let _ = write!(out, "{v}{unit} ");
        }
    }
    let _ = write!(out, "{secs}s");
    out
}

/// `1.5 MiB`.
pub fn bytes_words(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b00020;font-weight:bold}.ok{color:#176f2c}code{font-size:.9em}";

/// The page.
pub fn render(inputs: &Inputs<'_>) -> String {
    let m = inputs.metrics;
    let mut h = String::with_capacity(8192);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(
        h,
        "<title>chartcache status</title><style>{STYLE}</style></head><body>\n<h1>chartcache</h1>\n"
    );
    let (driver, reason) = match crate::driver::current() {
        Some(c) => (c.driver.name(), c.fallback.clone()),
        None => ("not chosen yet", None),
    };
    let cache_bytes = m.total(|w| w.cache_bytes.load(Relaxed));
    let cache_objects = m.total(|w| w.cache_objects.load(Relaxed));
    let full = inputs.cache.disk_full_shards();
    h.push_str("<table id=\"instance\">\n");
    let mut row = |k: &str, label: &str, value: String| {
        let _ = writeln!(
            h,
            "<tr><th>{label}</th><td data-k=\"{k}\">{value}</td></tr>"
        );
    };
    row("version", "Version", escape(env!("CARGO_PKG_VERSION")));
    row("uptime", "Uptime", escape(&duration_words(inputs.uptime)));
    row(
        "driver",
        "I/O driver",
        match &reason {
            None => escape(driver),
            Some(why) => format!("{} (fallback: {})", escape(driver), escape(why)),
        },
    );
    row(
        "workers",
        "Workers",
        format!("{} of {} ready", inputs.ready, inputs.workers),
    );
    row(
        "cache",
        "Cache",
        format!(
            "{} of {} on disk, {cache_objects} objects{}",
            bytes_words(cache_bytes),
            bytes_words(inputs.cache_size),
            if full > 0 {
                format!(
                    " <span class=\"bad\">device full on {full} of {} shards: new objects pass through uncached</span>",
                    inputs.cache.shards()
                )
            } else {
                String::new()
            }
        ),
    );
    row(
        "price",
        "S3 GET price",
        format!("${} per 1,000 GETs", m.get_price_per_1000()),
    );
    h.push_str("</table>\n<h2>Repositories</h2>\n<table id=\"repos\">\n<tr>");
    for th in [
        "Repository",
        "Upstream",
        "Requests",
        "Hit ratio",
        "Upstream requests",
        "GET / cond. 304 / cond. other / HEAD",
        "Answered without upstream",
        "Est. cost saved (USD)",
        "Index ETag",
        "Index age",
        "Stale",
    ] {
        let _ = write!(h, "<th>{th}</th>");
    }
    h.push_str("</tr>\n");
    for id in 0..inputs.repos.len() {
        let Some(r) = repo_status(inputs, id) else {
            continue;
        };
        let creds = inputs.credentials_ok.get(id).copied().flatten();
        let _ = write!(
            h,
            "<tr class=\"repo\" data-repo=\"{}\"><td data-k=\"name\"><code>{}</code></td><td data-k=\"upstream\"><code>{}</code>{}</td>",
            escape(&r.name),
            escape(&r.name),
            escape(&r.upstream),
            if creds == Some(false) {
                " <span class=\"bad\">credentials missing or expired</span>"
            } else {
                ""
            }
        );
        let ratio = r
            .hit_ratio
            .map_or("–".to_string(), |v| format!("{:.1}%", v * 100.0));
        let [get, c304, cother, head] = r.by_kind;
        let _ = write!(
            h,
            "<td class=\"n\" data-k=\"requests\">{}</td><td class=\"n\" data-k=\"hit-ratio\">{ratio}</td>\
             <td class=\"n\" data-k=\"upstream-requests\">{}</td>\
             <td class=\"n\" data-k=\"upstream-by-kind\">{get} / {c304} / {cother} / {head}</td>\
             <td class=\"n\" data-k=\"without-upstream\">{}</td>\
             <td class=\"n\" data-k=\"cost-saved\">{:.6}</td>",
            r.requests, r.upstream_requests, r.without_upstream, r.cost_saved
        );
        let _ = write!(
            h,
            "<td data-k=\"index-etag\"><code>{}</code></td><td class=\"n\" data-k=\"index-age\">{}</td>",
            r.index_etag.as_deref().map_or("–".into(), escape),
            r.index_age
                .map_or("not stored".into(), |a| duration_words(Duration::from_secs(a)))
        );
        let stale = if r.upstream_failing {
            format!(
                "<span class=\"bad\">yes: upstream failing, stored copies served as STALE ({} so far)</span>",
                r.stale_responses
            )
        } else if r.stale_responses > 0 {
            format!(
                "<span class=\"ok\">no</span> ({} STALE responses earlier)",
                r.stale_responses
            )
        } else {
            "<span class=\"ok\">no</span>".into()
        };
        let _ = writeln!(h, "<td data-k=\"stale\">{stale}</td></tr>");
    }
    h.push_str("</table>\n<p>");
    h.push_str(
        "<a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a>",
    );
    h.push_str("</p>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain /stable"), "plain /stable");
    }

    #[test]
    fn durations_and_sizes_read_as_words() {
        assert_eq!(duration_words(Duration::from_secs(5)), "5s");
        assert_eq!(duration_words(Duration::from_secs(3661)), "1h 1m 1s");
        assert_eq!(duration_words(Duration::from_secs(86_400)), "1d 0h 0m 0s");
        assert_eq!(bytes_words(512), "512 B");
        assert_eq!(bytes_words(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}

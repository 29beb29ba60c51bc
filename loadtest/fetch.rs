//! Side-channel HTTP: one-off blocking GETs (the `index.yaml` to take chart URLs from, the
//! target's Prometheus metrics) and reading an upstream request counter.
//!
//! Owns: a tiny `Connection: close` HTTP/1.1 client on `std::net` (Content-Length, chunked or
//! read-to-close bodies), Prometheus text parsing (sum of one metric over all label sets), and
//! the `--upstream-count-cmd` runner. Not on the hot path: allocation here is fine.
//!
//! Invariants: every socket has connect/read/write timeouts; bodies are capped at
//! [`MAX_BODY`]; a metric that is absent is `None`, not zero.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Largest body the side-channel client accepts.
pub const MAX_BODY: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("GET {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("GET {url}: malformed response: {reason}")]
    Malformed { url: String, reason: String },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("metric {0:?} not found")]
    MetricMissing(String),
    #[error("running {cmd:?}: {reason}")]
    Command { cmd: String, reason: String },
}

/// GETs `url` and returns the body of a 200 response.
pub fn get(url: &str) -> Result<Vec<u8>, Error> {
    let u = url::Url::parse(url).map_err(|e| Error::Url(url.into(), e.to_string()))?;
    if u.scheme() != "http" {
        return Err(Error::Url(url.into(), "only http:// is supported".into()));
    }
    let host = u
        .host_str()
        .ok_or_else(|| Error::Url(url.into(), "no host".into()))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let io = |source| Error::Io {
        url: url.to_string(),
        source,
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.trim_matches(['[', ']']), port))
        .map_err(io)?
        .next()
        .ok_or_else(|| Error::Url(url.into(), "host resolves to no address".into()))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut target = u.path().to_string();
    if let Some(q) = u.query() {
        target.push('?');
        target.push_str(q);
    }
    let host_header = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: chartcache-loadtest/0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.take((MAX_BODY + 64 * 1024) as u64)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let (status, body) = parse_response(&raw).map_err(|reason| Error::Malformed {
        url: url.to_string(),
        reason,
    })?;
    if status != 200 {
        return Err(Error::Status {
            url: url.to_string(),
            status,
        });
    }
    Ok(body)
}

/// Parses a whole `Connection: close` response: status and decoded body.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated head".into()),
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = std::str::from_utf8(h.value)
                .map(|v| v.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad Content-Length")?;
            length = Some(v);
        }
    }
    let rest = &raw[head_len..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body (trailers ignored).
pub fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len() + size > MAX_BODY {
            return Err("body too large".into());
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// Sums every sample of metric `name` (all label sets) in Prometheus/OpenMetrics text.
/// `None` when there is no sample of that name.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let after_labels = if let Some(labels) = rest.strip_prefix('{') {
            match labels_end(labels) {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            continue; // a longer metric name that shares the prefix
        };
        if let Some(v) = after_labels
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

/// Index of the `}` closing a label set, skipping quoted values (which may hold `}` or `\"`).
fn labels_end(labels: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '}' if !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// Where the upstream request count comes from.
#[derive(Debug, Clone)]
pub enum UpstreamSource {
    Metrics { url: String, metric: String },
    Command(String),
}

impl UpstreamSource {
    /// Reads the counter now.
    pub fn read(&self) -> Result<f64, Error> {
        match self {
            UpstreamSource::Metrics { url, metric } => {
                let body = get(url)?;
                sum_metric(&String::from_utf8_lossy(&body), metric)
                    .ok_or_else(|| Error::MetricMissing(metric.clone()))
            }
            UpstreamSource::Command(cmd) => {
                let fail = |reason: String| Error::Command {
                    cmd: cmd.clone(),
                    reason,
                };
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .output()
                    .map_err(|e| fail(e.to_string()))?;
                if !out.status.success() {
                    return Err(fail(format!("exit status {}", out.status)));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                text.split_whitespace()
                    .last()
                    .and_then(|t| t.parse::<f64>().ok())
                    .ok_or_else(|| fail(format!("output {text:?} does not end in a number")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_sum_over_labels() {
        let text = r#"# HELP chartcache_upstream_requests_total Upstream requests.
# TYPE chartcache_upstream_requests_total counter
chartcache_upstream_requests_total{method="GET",status="200"} 12
chartcache_upstream_requests_total{method="HEAD",note="a}b \" c"} 3 1700000000000
chartcache_upstream_requests_total_created 1.7e9
chartcache_upstream_requests_totalx 99
other_metric 5
"#;
        assert_eq!(
            sum_metric(text, "chartcache_upstream_requests_total"),
            Some(15.0)
        );
        assert_eq!(sum_metric(text, "other_metric"), Some(5.0));
        assert_eq!(sum_metric(text, "missing_total"), None);
        assert_eq!(sum_metric("plain 0\n", "plain"), Some(0.0));
    }

    #[test]
    fn responses_and_chunks() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(parse_response(raw).unwrap(), (200, b"hello".to_vec()));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().1, b"hello world".to_vec());
        let raw = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(raw).unwrap(), (404, b"nope".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"5\r\nab").is_err());
    }

    #[test]
    fn get_from_a_local_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Read the whole head: the client may write it in pieces.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before sending its head");
                head.extend_from_slice(&buf[..n]);
            }
            assert!(head.starts_with(b"GET /metrics HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nup_x 42\n")
                .unwrap();
        });
        let src = UpstreamSource::Metrics {
            url: format!("http://127.0.0.1:{port}/metrics"),
            metric: "up_x".into(),
        };
        assert_eq!(src.read().unwrap(), 42.0);
        t.join().unwrap();
        let cmd = UpstreamSource::Command("echo count: 17".into());
        assert_eq!(cmd.read().unwrap(), 17.0);
        assert!(UpstreamSource::Command("echo none".into()).read().is_err());
    }
}

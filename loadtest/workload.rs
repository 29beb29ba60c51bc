//! What the load generator requests, and how it picks the next request.
//!
//! Owns: the workload file format (TOML or JSON, every field also a flag), the URL-mix syntax
//! (`index.yaml=90,charts=10`), chart URL extraction from a Helm `index.yaml`, duration parsing,
//! a small seeded RNG and the Zipf sampler. Does not do I/O except reading local files; fetching
//! `index.yaml` lives in `fetch.rs`.
//!
//! Invariants:
//! - A [`Plan`] is immutable once built and shared by every load thread; each thread owns its
//!   own [`Chooser`] (RNG + rotation counters), so picking a request takes no lock and
//!   allocates nothing.
//! - Every request is rendered once, at plan time, into a leaked `&'static [u8]` (the whole
//!   `GET … HTTP/1.1` head), which monoio can send without copying or allocating.
//! - Every group in a plan has at least one path and a non-zero weight.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Name of the mix group that stands for "every chart URL" (from `--charts-from` or
/// `--paths-file`).
pub const CHARTS_GROUP: &str = "charts";

/// Problems with a workload description.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad duration {0:?} (use e.g. 500ms, 10s, 2m)")]
    Duration(String),
    #[error("bad mix entry {0:?} (use name=weight, e.g. index.yaml=90,charts=10)")]
    Mix(String),
    #[error(
        "mix uses the `charts` group but no chart list was given (--charts-from or --paths-file)"
    )]
    NoCharts,
    #[error("the workload has no paths to request")]
    Empty,
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing workload file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("--zipf must be >= 0, got {0}")]
    ZipfExponent(f64),
    #[error("bad header {0:?} (use 'Name: value')")]
    Header(String),
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let t = text.trim();
    let bad = || Error::Duration(text.to_string());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A mix as written in a workload file: either `"index.yaml=90,charts=10"` or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MixSpec {
    Text(String),
    Table(BTreeMap<String, u32>),
}

impl MixSpec {
    /// The `(name, weight)` entries, in the written order for text, sorted by name for tables.
    pub fn entries(&self) -> Result<Vec<(String, u32)>, Error> {
        match self {
            MixSpec::Text(t) => parse_mix(t),
            MixSpec::Table(m) => {
                let v: Vec<(String, u32)> = m.iter().map(|(k, w)| (k.clone(), *w)).collect();
                if v.iter().any(|(_, w)| *w == 0) {
                    return Err(Error::Mix(format!("{m:?}")));
                }
                Ok(v)
            }
        }
    }
}

/// Parses `index.yaml=90,charts=10`. Weights are positive integers.
pub fn parse_mix(text: &str) -> Result<Vec<(String, u32)>, Error> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .rsplit_once('=')
            .ok_or_else(|| Error::Mix(part.to_string()))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| Error::Mix(part.to_string()))?;
        let name = name.trim();
        if name.is_empty() || weight == 0 {
            return Err(Error::Mix(part.to_string()));
        }
        out.push((name.to_string(), weight));
    }
    if out.is_empty() {
        return Err(Error::Mix(text.to_string()));
    }
    Ok(out)
}

/// The workload file: every field optional, every field also a command-line flag (flags win).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    pub label: Option<String>,
    pub name: Option<String>,
    pub url: Option<String>,
    pub threads: Option<usize>,
    pub connections: Option<usize>,
    pub duration: Option<String>,
    pub warmup: Option<String>,
    pub timeout: Option<String>,
    pub read_buffer: Option<String>,
    pub rate: Option<f64>,
    pub mix: Option<MixSpec>,
    pub charts_from: Option<String>,
    pub paths_file: Option<String>,
    pub paths: Option<Vec<String>>,
    pub zipf: Option<f64>,
    pub seed: Option<u64>,
    pub headers: Option<Vec<String>>,
}

impl WorkloadFile {
    /// Reads a `.json` file as JSON, anything else as TOML.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path.extension().is_some_and(|e| e == "json")).map_err(|reason| {
            Error::File {
                path: path.display().to_string(),
                reason,
            }
        })
    }

    fn parse(text: &str, json: bool) -> Result<Self, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        }
    }
}

/// Extracts every chart URL (the `urls:` lists) from a Helm repository `index.yaml`, in file
/// order, without duplicates. Handles block lists (`urls:` then `- x` lines, as Helm writes
/// them) and flow lists (`urls: [a, b]`), quoted or not. Not a YAML parser: it reads only the
/// shapes Helm emits.
pub fn chart_urls(index_yaml: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |u: &str| {
        let u = unquote(u.trim());
        if !u.is_empty() && !out.iter().any(|o| o == u) {
            out.push(u.to_string());
        }
    };
    let mut lines = index_yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        // `urls:` may itself be the first key of a list item (`- urls:`).
        let (indent, rest) = match trimmed.strip_prefix("- ") {
            Some(r) => (line.len() - r.trim_start().len(), r.trim_start()),
            None => (line.len() - trimmed.len(), trimmed),
        };
        let Some(after) = rest.strip_prefix("urls:") else {
            continue;
        };
        let after = after.trim();
        if let Some(flow) = after.strip_prefix('[') {
            let flow = flow.split(']').next().unwrap_or("");
            flow.split(',').for_each(&mut push);
            continue;
        }
        if !after.is_empty() {
            continue; // `urls: something` that is not a list: not Helm's shape.
        }
        while let Some(next) = lines.peek() {
            let t = next.trim_start();
            let ind = next.len() - t.len();
            match t
                .strip_prefix("- ")
                .or(t.strip_prefix('-').filter(|r| r.is_empty()))
            {
                Some(item) if ind >= indent => {
                    push(item);
                    lines.next();
                }
                _ => break,
            }
        }
    }
    out
}

fn unquote(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Reads a paths file: one path or URL per line; blank lines and `#` comments skipped.
pub fn read_paths_file(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The server under test, from the `--url` base.
#[derive(Debug, Clone)]
pub struct Target {
    /// The base URL, always ending in `/` so relative paths join below it.
    pub base: url::Url,
    /// `host[:port]` as sent in the `Host` header.
    pub host_header: String,
    pub addr: std::net::SocketAddr,
}

impl Target {
    pub fn parse(base: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Url {
            url: base.to_string(),
            reason: reason.to_string(),
        };
        let mut url = url::Url::parse(base).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(bad("only http:// is supported"));
        }
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host_for_lookup, port))
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("host resolves to no address"))?;
        Ok(Self {
            base: url,
            host_header,
            addr,
        })
    }

    /// Resolves a path, relative path or absolute URL against the base and returns the
    /// request target (`/path?query`).
    pub fn request_target(&self, reference: &str) -> Result<String, Error> {
        let joined = self.base.join(reference).map_err(|e| Error::Url {
            url: reference.to_string(),
            reason: e.to_string(),
        })?;
        let mut t = joined.path().to_string();
        if let Some(q) = joined.query() {
            t.push('?');
            t.push_str(q);
        }
        Ok(t)
    }
}

/// Renders one request head. Header lines in `extra` are already validated `Name: value`.
pub fn render_request(target: &str, host: &str, extra: &[String]) -> Vec<u8> {
    let mut s = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chartcache-loadtest/0.1\r\nAccept: */*\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Checks `Name: value` header syntax (no CR/LF, a token name).
pub fn validate_header(h: &str) -> Result<(), Error> {
    let bad = || Error::Header(h.to_string());
    let (name, _value) = h.split_once(':').ok_or_else(bad)?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
        || h.contains(['\r', '\n'])
    {
        return Err(bad());
    }
    Ok(())
}

/// How a group picks its next path.
#[derive(Debug, Clone)]
pub enum Picker {
    /// Round robin over all paths (per thread, threads start at different offsets).
    Rotate,
    /// Zipf popularity over the paths.
    Zipf(Zipf),
}

/// One weighted entry of the mix.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub weight: u32,
    /// Request targets (`/path`), for reporting.
    pub targets: Vec<String>,
    /// Rendered request heads, one per target.
    pub requests: Vec<&'static [u8]>,
    pub picker: Picker,
}

/// The immutable request plan shared by all load threads.
#[derive(Debug, Clone)]
pub struct Plan {
    pub groups: Vec<Group>,
    /// Cumulative weights, same length as `groups`.
    cumulative: Vec<u32>,
}

/// Inputs to [`Plan::build`].
pub struct PlanSpec<'a> {
    pub target: &'a Target,
    /// Mix entries; `None` means "all charts" (or the explicit paths).
    pub mix: Option<Vec<(String, u32)>>,
    /// The chart URLs/paths (from index.yaml or a paths file).
    pub charts: Option<Vec<String>>,
    /// Extra explicit paths (workload file `paths = [...]`), used when there is no mix.
    pub paths: Vec<String>,
    pub zipf: Option<f64>,
    pub seed: u64,
    pub headers: &'a [String],
}

impl Plan {
    pub fn build(spec: PlanSpec<'_>) -> Result<Self, Error> {
        for h in spec.headers {
            validate_header(h)?;
        }
        if let Some(s) = spec.zipf {
            if !(s.is_finite() && s >= 0.0) {
                return Err(Error::ZipfExponent(s));
            }
        }
        let entries: Vec<(String, u32)> = match spec.mix {
            Some(m) => m,
            None if spec.charts.is_some() => vec![(CHARTS_GROUP.to_string(), 1)],
            None => spec.paths.iter().map(|p| (p.clone(), 1)).collect(),
        };
        if entries.is_empty() {
            return Err(Error::Empty);
        }
        let mut groups = Vec::with_capacity(entries.len());
        for (name, weight) in entries {
            let refs: Vec<String> = if name == CHARTS_GROUP {
                match &spec.charts {
                    Some(c) if !c.is_empty() => c.clone(),
                    Some(_) => return Err(Error::Empty),
                    None => return Err(Error::NoCharts),
                }
            } else {
                vec![name.clone()]
            };
            let targets = refs
                .iter()
                .map(|r| spec.target.request_target(r))
                .collect::<Result<Vec<_>, _>>()?;
            let requests = targets
                .iter()
                .map(|t| {
                    let bytes = render_request(t, &spec.target.host_header, spec.headers);
                    &*Box::leak(bytes.into_boxed_slice())
                })
                .collect();
            let picker = match spec.zipf {
                Some(s) if targets.len() > 1 => {
                    Picker::Zipf(Zipf::new(targets.len(), s, spec.seed))
                }
                _ => Picker::Rotate,
            };
            groups.push(Group {
                name,
                weight,
                targets,
                requests,
                picker,
            });
        }
        let mut acc = 0u32;
        let cumulative = groups
            .iter()
            .map(|g| {
                acc = acc.saturating_add(g.weight);
                acc
            })
            .collect();
        Ok(Self { groups, cumulative })
    }

    /// Every distinct request, in group order (used for the warm-up pass).
    pub fn all_requests(&self) -> impl Iterator<Item = &'static [u8]> + '_ {
        self.groups.iter().flat_map(|g| g.requests.iter().copied())
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        self.groups
            .iter()
            .map(|g| {
                let how = match &g.picker {
                    Picker::Rotate if g.targets.len() > 1 => "rotate".to_string(),
                    Picker::Rotate => String::new(),
                    Picker::Zipf(z) => format!("zipf {}", z.exponent),
                };
                let what = if g.targets.len() == 1 {
                    g.targets[0].clone()
                } else {
                    format!("{} ({} paths, {how})", g.name, g.targets.len())
                };
                format!("{what}={}", g.weight)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Per-thread picking state: RNG and one rotation counter per group.
pub struct Chooser {
    rng: Rng,
    rotate: Vec<usize>,
}

impl Chooser {
    /// `lane` (thread index) and `lanes` spread the rotation start points.
    pub fn new(plan: &Plan, seed: u64, lane: usize, lanes: usize) -> Self {
        let rotate = plan
            .groups
            .iter()
            .map(|g| lane * g.requests.len() / lanes.max(1))
            .collect();
        Self {
            rng: Rng::new(seed ^ (lane as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            rotate,
        }
    }

    /// Picks the next request: `(group index, index within the group)`.
    pub fn pick(&mut self, plan: &Plan) -> (usize, usize) {
        let gi = if plan.groups.len() == 1 {
            0
        } else {
            let total = plan.cumulative.last().copied().unwrap_or(1).max(1);
            let r = (self.rng.next_u64() % u64::from(total)) as u32;
            plan.cumulative.partition_point(|&c| c <= r)
        };
        let g = &plan.groups[gi];
        let n = g.requests.len();
        let idx = match &g.picker {
            Picker::Rotate => {
                let i = self.rotate[gi] % n;
                self.rotate[gi] = (i + 1) % n;
                i
            }
            Picker::Zipf(z) => z.sample(&mut self.rng),
        };
        (gi, idx)
    }

    /// The request bytes for the next pick.
    pub fn next_request(&mut self, plan: &Plan) -> &'static [u8] {
        let (g, i) = self.pick(plan);
        plan.groups[g].requests[i]
    }
}

/// wyrand: small, fast, good enough for load generation (not cryptographic).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf(s) over `n` items: rank `k` (1-based) has weight `1 / k^s`. Ranks are assigned to
/// items through a seeded permutation, so popularity does not follow file order (index.yaml
/// is sorted by name). Sampling is a binary search in the precomputed CDF.
#[derive(Debug, Clone)]
pub struct Zipf {
    pub exponent: f64,
    cdf: Vec<f64>,
    /// `rank_to_item[rank]` = item index.
    rank_to_item: Vec<usize>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64, seed: u64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(exponent);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        let mut rank_to_item: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(seed);
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            rank_to_item.swap(i, j);
        }
        Self {
            exponent,
            cdf,
            rank_to_item,
        }
    }

    /// 0-based rank of a uniform draw.
    pub fn sample_rank(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len().saturating_sub(1))
    }

    /// Item index of a draw.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        self.rank_to_item[self.sample_rank(rng)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn mix_parsing() {
        let m = parse_mix("index.yaml=90, charts=10").unwrap();
        assert_eq!(
            m,
            vec![("index.yaml".to_string(), 90), ("charts".to_string(), 10)]
        );
        assert!(parse_mix("index.yaml").is_err());
        assert!(parse_mix("a=0").is_err());
        assert!(parse_mix("=3").is_err());
        assert!(parse_mix("a=-1").is_err());
        assert!(parse_mix("").is_err());
        // `=` inside a query string: the last `=` separates the weight.
        assert_eq!(parse_mix("/x?a=b=5").unwrap()[0], ("/x?a=b".to_string(), 5));
    }

    #[test]
    fn workload_file_toml_and_json() {
        let t = WorkloadFile::parse(
            r#"
url = "http://127.0.0.1:9000"
connections = 32
duration = "5s"
mix = "index.yaml=90,charts=10"
zipf = 1.0
headers = ["User-Agent: Helm/4.3"]
"#,
            false,
        )
        .unwrap();
        assert_eq!(t.connections, Some(32));
        assert_eq!(t.mix.unwrap().entries().unwrap().len(), 2);
        let j = WorkloadFile::parse(
            r#"{"rate": 1000, "mix": {"index.yaml": 9, "charts": 1}}"#,
            true,
        )
        .unwrap();
        assert_eq!(j.rate, Some(1000.0));
        let e = j.mix.unwrap().entries().unwrap();
        assert!(e.contains(&("charts".to_string(), 1)));
        assert!(WorkloadFile::parse("conections = 3", false).is_err());
    }

    #[test]
    fn index_yaml_urls() {
        let y = r#"apiVersion: v1
entries:
  alpha:
  - apiVersion: v2
    created: "2024-01-01T00:00:00Z"
    name: alpha
    urls:
    - charts/alpha-1.0.0.tgz
    version: 1.0.0
  - name: alpha
    urls:
      - "charts/alpha-0.9.0.tgz"
      - https://mirror.example/alpha-0.9.0.tgz
    version: 0.9.0
  beta:
  - urls: ['beta-2.0.0.tgz', charts/alpha-1.0.0.tgz]
    name: beta
  gamma:
  - name: gamma
    urls:
    - g.tgz
  - name: gamma-old
    version: 0.1.0
generated: "2024-01-01T00:00:00Z"
"#;
        assert_eq!(
            chart_urls(y),
            vec![
                "charts/alpha-1.0.0.tgz",
                "charts/alpha-0.9.0.tgz",
                "https://mirror.example/alpha-0.9.0.tgz",
                "beta-2.0.0.tgz",
                "g.tgz",
            ]
        );
        assert!(chart_urls("apiVersion: v1\nentries: {}\n").is_empty());
    }

    #[test]
    fn targets_resolve_against_base() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.request_target("index.yaml").unwrap(), "/index.yaml");
        let t = Target::parse("http://127.0.0.1:8080/repo").unwrap();
        assert_eq!(t.request_target("index.yaml").unwrap(), "/repo/index.yaml");
        assert_eq!(t.request_target("/abs.tgz").unwrap(), "/abs.tgz");
        assert_eq!(
            t.request_target("http://127.0.0.1:8080/repo/c/x.tgz?v=1")
                .unwrap(),
            "/repo/c/x.tgz?v=1"
        );
        assert!(Target::parse("https://127.0.0.1").is_err());
    }

    #[test]
    fn request_rendering_and_headers() {
        let r = render_request("/a.tgz", "h:1", &["X-A: b".to_string()]);
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            "GET /a.tgz HTTP/1.1\r\nHost: h:1\r\nUser-Agent: chartcache-loadtest/0.1\r\nAccept: */*\r\nX-A: b\r\n\r\n"
        );
        assert!(validate_header("User-Agent: Helm/4.3").is_ok());
        assert!(validate_header("NoColon").is_err());
        assert!(validate_header("Bad Name: x").is_err());
        assert!(validate_header("X: a\r\nInjected: 1").is_err());
    }

    fn plan_with(mix: Option<&str>, charts: usize, zipf: Option<f64>) -> Plan {
        let target = Target::parse("http://127.0.0.1:1").unwrap();
        Plan::build(PlanSpec {
            target: &target,
            mix: mix.map(|m| parse_mix(m).unwrap()),
            charts: Some((0..charts).map(|i| format!("c{i}.tgz")).collect()),
            paths: vec![],
            zipf,
            seed: 7,
            headers: &[],
        })
        .unwrap()
    }

    #[test]
    fn mix_weights_are_respected() {
        let plan = plan_with(Some("index.yaml=90,charts=10"), 20, None);
        let mut c = Chooser::new(&plan, 1, 0, 1);
        let mut per_group = [0usize; 2];
        for _ in 0..100_000 {
            per_group[c.pick(&plan).0] += 1;
        }
        let index_share = per_group[0] as f64 / 100_000.0;
        assert!((0.88..0.92).contains(&index_share), "{index_share}");
    }

    #[test]
    fn rotation_visits_every_chart_in_order() {
        let plan = plan_with(None, 5, None);
        let mut c = Chooser::new(&plan, 1, 0, 1);
        let seq: Vec<usize> = (0..10).map(|_| c.pick(&plan).1).collect();
        assert_eq!(seq, vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        // A second lane starts elsewhere.
        let mut c2 = Chooser::new(&plan, 1, 1, 2);
        assert_eq!(c2.pick(&plan).1, 2);
    }

    #[test]
    fn charts_group_without_charts_is_an_error() {
        let target = Target::parse("http://127.0.0.1:1").unwrap();
        let r = Plan::build(PlanSpec {
            target: &target,
            mix: Some(parse_mix("charts=1").unwrap()),
            charts: None,
            paths: vec![],
            zipf: None,
            seed: 1,
            headers: &[],
        });
        assert!(matches!(r, Err(Error::NoCharts)));
    }

    #[test]
    fn zipf_matches_theory() {
        let n = 100;
        let z = Zipf::new(n, 1.0, 42);
        let mut rng = Rng::new(3);
        let draws = 400_000;
        let mut counts = vec![0usize; n];
        for _ in 0..draws {
            counts[z.sample_rank(&mut rng)] += 1;
        }
        let h: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        for (rank, &c) in counts.iter().enumerate().take(5) {
            let expected = draws as f64 / ((rank + 1) as f64 * h);
            let rel = (c as f64 - expected).abs() / expected;
            assert!(rel < 0.05, "rank {rank}: {c} vs {expected}");
        }
        // Rank 1 is ~2x rank 2 and ~10x rank 10.
        let r12 = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&r12), "{r12}");
        // Every item is reachable and the permutation is a bijection.
        let mut items: Vec<usize> = z.rank_to_item.clone();
        items.sort_unstable();
        assert_eq!(items, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn zipf_zero_is_uniform() {
        let z = Zipf::new(10, 0.0, 1);
        let mut rng = Rng::new(9);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn rng_uniform_range() {
        let mut r = Rng::new(0);
        let mut sum = 0.0;
        for _ in 0..100_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        assert!((sum / 100_000.0 - 0.5).abs() < 0.01);
    }
}

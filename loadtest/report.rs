//! Results: the JSON report of one run, its text rendering, the latency-percentile SVG, and the
//! multi-run summary table that `compare.sh` prints.
//!
//! Owns: [`Report`] (the JSON schema, stable field names), number formatting, the
//! HdrHistogram-style percentile spectrum (x = `log10(1 / (1 - p))`, so 90 %, 99 %, 99.9 % …
//! are evenly spaced), and the summary grouping (by workload name, then server label, rounds
//! averaged).
//!
//! Invariants: everything here is pure (text in, text out) except the file helpers at the
//! bottom; the SVG is hand-written, self-contained and escapes every label.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::ErrorCounts;
use crate::procfs::Memory;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a nanosecond histogram.
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1e3;
        Self {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1e3,
        }
    }
}

/// `(percentile 0..100, latency µs)` points, evenly spaced on the `log10(1/(1-p))` axis from
/// 0 up to where the sample count still resolves (at most 99.9999 %).
pub fn spectrum_us(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len();
    if n == 0 {
        return Vec::new();
    }
    let x_max = (n as f64).log10().clamp(1.0, 6.0);
    let steps = (x_max / 0.05).round() as usize;
    (0..=steps)
        .map(|i| {
            let x = x_max * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            (q * 100.0, h.value_at_quantile(q) as f64 / 1e3)
        })
        .collect()
}

/// The server's side of a run (when `--pid` was given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    pub pids: Vec<u32>,
    /// Server CPU (user + system, all processes of the tree) in the window.
    pub cpu_seconds: f64,
    pub cpu_us_per_req: f64,
    pub memory: Memory,
}

/// Upstream requests made by the target during the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamReport {
    pub source: String,
    pub requests: f64,
    pub per_1000: f64,
}

/// One run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Server label (`--label`), e.g. `chartcache`, `nginx-cache`.
    pub label: String,
    /// Workload name (`--name`), e.g. `charts`, `ci-mix`.
    pub name: String,
    /// What the mix was, in words.
    pub workload: String,
    pub url: String,
    /// `closed` or `open`.
    pub mode: String,
    pub rate_target: Option<f64>,
    pub threads: usize,
    pub connections: usize,
    /// The client's read size in bytes (absent in reports from before the flag).
    #[serde(default)]
    pub read_buffer: Option<usize>,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Successful (200/304) responses completed in the window.
    pub requests: u64,
    pub errors: ErrorCounts,
    pub statuses: BTreeMap<u16, u64>,
    /// Open loop: sends scheduled in the window but never made (the client fell behind).
    pub missed_sends: u64,
    pub req_per_s: f64,
    pub mb_per_s: f64,
    pub bytes: u64,
    /// From scheduled send (open loop) / send (closed loop) to the last byte.
    pub latency_us: Percentiles,
    /// From the actual send to the last byte (differs from `latency_us` only in open loop).
    pub service_us: Percentiles,
    pub spectrum_us: Vec<(f64, f64)>,
    pub target: Option<TargetReport>,
    pub upstream: Option<UpstreamReport>,
    pub upstream_error: Option<String>,
    pub client_cpu_us_per_req: f64,
    pub error_samples: Vec<String>,
    pub unix_time: u64,
    /// Free-form `--meta key=value` pairs (machine, commit, round …).
    pub meta: BTreeMap<String, String>,
}

/// `87 µs`, `1.23 ms`, `2.40 s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `950`, `22.2k`, `1.25M`.
pub fn fmt_count(v: f64) -> String {
    if v < 10_000.0 {
        format!("{v:.0}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.2}M", v / 1e6)
    }
}

/// `812 KiB`, `45.2 MiB`, `1.20 GiB`.
pub fn fmt_kib(kb: u64) -> String {
    let kb = kb as f64;
    if kb < 1024.0 {
        format!("{kb:.0} KiB")
    } else if kb < 1024.0 * 1024.0 {
        format!("{:.1} MiB", kb / 1024.0)
    } else {
        format!("{:.2} GiB", kb / (1024.0 * 1024.0))
    }
}

/// The human-readable block printed after a run.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let mode = match r.rate_target {
        Some(rate) => format!("open loop at {} req/s", fmt_count(rate)),
        None => "closed loop".to_string(),
    };
    let _ = writeln!(
        s,
        "{}{} {} — {mode}, {} thread(s) × {} connections, {:.1}s (+{:.1}s warm-up)",
        r.label,
        if r.name.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.name)
        },
        r.url,
        r.threads,
        r.connections,
        r.duration_s,
        r.warmup_s
    );
    let _ = writeln!(s, "  workload    {}", r.workload);
    let statuses = r
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(
        s,
        "  requests    {} ok, {} errors (connect {}, io {}, timeout {}, protocol {}, status {}); statuses {statuses}",
        r.requests,
        r.errors.total(),
        r.errors.connect,
        r.errors.io,
        r.errors.timeout,
        r.errors.protocol,
        r.errors.status
    );
    let _ = writeln!(
        s,
        "  throughput  {:.0} req/s, {:.1} MB/s",
        r.req_per_s, r.mb_per_s
    );
    let l = &r.latency_us;
    let _ = writeln!(
        s,
        "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
        fmt_us(l.p50),
        fmt_us(l.p90),
        fmt_us(l.p99),
        fmt_us(l.p999),
        fmt_us(l.max),
        fmt_us(l.mean)
    );
    if r.rate_target.is_some() {
        let v = &r.service_us;
        let _ = writeln!(
            s,
            "  service     p50 {}  p99 {}  max {}  (from actual send; missed sends {})",
            fmt_us(v.p50),
            fmt_us(v.p99),
            fmt_us(v.max),
            r.missed_sends
        );
    }
    if let Some(t) = &r.target {
        let _ = writeln!(
            s,
            "  target      CPU {:.1} µs/req ({:.2} s), RSS {} (peak {}), {} process(es)",
            t.cpu_us_per_req,
            t.cpu_seconds,
            fmt_kib(t.memory.rss_kb),
            fmt_kib(t.memory.peak_rss_kb),
            t.memory.processes
        );
    }
    if let Some(u) = &r.upstream {
        let _ = writeln!(
            s,
            "  upstream    {:.2} per 1000 requests ({} in window, {})",
            u.per_1000, u.requests, u.source
        );
    }
    if let Some(e) = &r.upstream_error {
        let _ = writeln!(s, "  upstream    unavailable: {e}");
    }
    let _ = writeln!(s, "  client      CPU {:.1} µs/req", r.client_cpu_us_per_req);
    for e in &r.error_samples {
        let _ = writeln!(s, "  error       {e}");
    }
    s
}

/// One line of the percentile plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: usize,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum (1, 2, 2.5, 5 × 10^k) at or above `v`.
pub fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v * 0.999_999 {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Renders a latency-by-percentile plot (HdrHistogram style) as a standalone SVG.
pub fn render_svg(title: &str, series: &[Series]) -> String {
    let (w, h) = (860.0, 500.0);
    let (ml, mr, mt, mb) = (70.0, 40.0, 40.0, 50.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let xpos = |pct: f64| (100.0 / (100.0 - pct).max(1e-9)).log10();
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|&(p, _)| xpos(p))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_raw = series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|&(_, v)| v)
        .fold(0.0f64, f64::max);
    let (unit, div) = if y_raw >= 1000.0 {
        ("ms", 1000.0)
    } else {
        ("µs", 1.0)
    };
    let y_max = nice_ceiling(y_raw / div);
    let sx = |x: f64| ml + pw * x / x_max;
    let sy = |v: f64| mt + ph - ph * (v / div) / y_max;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        w / 2.0,
        xml_escape(title)
    );
    // Grid and axis labels.
    for i in 0..=x_max as usize {
        let x = sx(i as f64);
        let label = match i {
            0 => "0%".to_string(),
            _ => {
                let p = 100.0 - 100.0 / 10f64.powi(i as i32);
                format!("{}%", trim_float(p))
            }
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            mt + ph,
            mt + ph + 18.0
        );
    }
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let y = mt + ph - ph * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml + pw,
            ml - 6.0,
            y + 4.0,
            trim_float(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency ({unit})</text>"##,
        ml + pw / 2.0,
        h - 10.0,
        mt + ph / 2.0,
        mt + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    for (i, se) in series.iter().enumerate() {
        let color = PALETTE[se.color % PALETTE.len()];
        let pts = se
            .points
            .iter()
            .filter(|&&(p, _)| xpos(p) <= x_max)
            .map(|&(p, v)| format!("{:.1},{:.1}", sx(xpos(p)), sy(v)))
            .collect::<Vec<_>>()
            .join(" ");
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{pts}"/>"#
        );
        let ly = mt + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ml + 10.0,
            ly - 4.0,
            ml + 34.0,
            ly - 4.0,
            ml + 40.0,
            ly,
            xml_escape(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim_float(v: f64) -> String {
    let t = format!("{v:.4}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    t.to_string()
}

/// One server's averaged rounds of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub workload: String,
    pub label: String,
    pub rounds: usize,
    pub req_per_s: f64,
    pub req_per_s_rounds: Vec<f64>,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: Option<f64>,
    pub rss_kb: Option<u64>,
    pub peak_rss_kb: Option<u64>,
    pub errors: u64,
    pub upstream_per_1000: Option<f64>,
    /// req/s relative to the baseline server of the same workload.
    pub ratio: Option<f64>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Groups reports by workload then label (first-seen order, the baseline first) and averages
/// the rounds.
pub fn summarize(reports: &[Report], baseline: &str) -> Vec<SummaryRow> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in reports {
        let k = (r.name.clone(), r.label.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut rows: Vec<SummaryRow> = keys
        .into_iter()
        .map(|(workload, label)| {
            let rs: Vec<&Report> = reports
                .iter()
                .filter(|r| r.name == workload && r.label == label)
                .collect();
            let targets: Vec<&TargetReport> = rs.iter().filter_map(|r| r.target.as_ref()).collect();
            let ups: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.upstream.as_ref().map(|u| u.per_1000))
                .collect();
            SummaryRow {
                rounds: rs.len(),
                req_per_s: mean(rs.iter().map(|r| r.req_per_s)),
                req_per_s_rounds: rs.iter().map(|r| r.req_per_s).collect(),
                mb_per_s: mean(rs.iter().map(|r| r.mb_per_s)),
                p50_us: mean(rs.iter().map(|r| r.latency_us.p50)),
                p99_us: mean(rs.iter().map(|r| r.latency_us.p99)),
                cpu_us_per_req: (!targets.is_empty())
                    .then(|| mean(targets.iter().map(|t| t.cpu_us_per_req))),
                rss_kb: targets.iter().map(|t| t.memory.rss_kb).max(),
                peak_rss_kb: targets.iter().map(|t| t.memory.peak_rss_kb).max(),
                errors: rs.iter().map(|r| r.errors.total()).sum(),
                upstream_per_1000: (!ups.is_empty()).then(|| mean(ups.into_iter())),
                ratio: None,
                workload,
                label,
            }
        })
        .collect();
    // The baseline first within each workload; otherwise first-seen order.
    let mut order: Vec<String> = Vec::new();
    for r in &rows {
        if !order.contains(&r.workload) {
            order.push(r.workload.clone());
        }
    }
    rows.sort_by_key(|r| {
        let w = order.iter().position(|w| *w == r.workload).unwrap_or(0);
        (w, r.label != baseline)
    });
    let base: BTreeMap<String, f64> = rows
        .iter()
        .filter(|r| r.label == baseline && r.req_per_s > 0.0)
        .map(|r| (r.workload.clone(), r.req_per_s))
        .collect();
    for r in &mut rows {
        r.ratio = base.get(&r.workload).map(|b| r.req_per_s / b);
    }
    rows
}

/// The comparison table, one block per workload.
pub fn render_summary(rows: &[SummaryRow], baseline: &str) -> String {
    let mut s = String::new();
    let mut last = None;
    for r in rows {
        if last != Some(&r.workload) {
            let _ = writeln!(s, "\nworkload: {}", r.workload);
            let _ = writeln!(
                s,
                "{:<16} {:>9} {:>17} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>10} {:>9}",
                "server",
                "req/s",
                "(rounds)",
                "MB/s",
                "p50",
                "p99",
                "CPU µs/req",
                "peak RSS",
                "errors",
                "upstr/1k",
                format!("vs {}", truncate(baseline, 6))
            );
            last = Some(&r.workload);
        }
        let rounds = r
            .req_per_s_rounds
            .iter()
            .map(|v| fmt_count(*v))
            .collect::<Vec<_>>()
            .join("/");
        let _ = writeln!(
            s,
            "{:<16} {:>9} {:>17} {:>9.1} {:>9} {:>9} {:>11} {:>11} {:>7} {:>10} {:>9}",
            truncate(&r.label, 16),
            fmt_count(r.req_per_s),
            format!("({rounds})"),
            r.mb_per_s,
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            r.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.1}")),
            r.peak_rss_kb.map_or("-".into(), fmt_kib),
            r.errors,
            r.upstream_per_1000
                .map_or("-".into(), |u| format!("{u:.2}")),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}×")),
        );
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The percentile plot of every run of one workload: one color per server, rounds after the
/// first dashed.
pub fn summary_series(reports: &[Report], workload: &str) -> Vec<Series> {
    let mut labels: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for r in reports.iter().filter(|r| r.name == workload) {
        let idx = match labels.iter().position(|l| *l == r.label) {
            Some(i) => i,
            None => {
                labels.push(&r.label);
                labels.len() - 1
            }
        };
        let round = out.iter().filter(|s: &&Series| s.color == idx).count();
        out.push(Series {
            name: format!("{} #{}", r.label, round + 1),
            color: idx,
            dashed: round > 0,
            points: r.spectrum_us.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::new_histogram;

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_us(87.4), "87 µs");
        assert_eq!(fmt_us(1234.0), "1.23 ms");
        assert_eq!(fmt_us(2_400_000.0), "2.40 s");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_count(22_240.0), "22.2k");
        assert_eq!(fmt_count(1_250_000.0), "1.25M");
        assert_eq!(fmt_kib(812), "812 KiB");
        assert_eq!(fmt_kib(46_285), "45.2 MiB");
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.018), 0.02);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(trim_float(99.9), "99.9");
        assert_eq!(trim_float(90.0), "90");
    }

    fn histogram_1_to_1000us() -> Histogram<u64> {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        h
    }

    #[test]
    fn percentiles_and_spectrum() {
        let h = histogram_1_to_1000us();
        let p = Percentiles::from_ns(&h);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        let sp = spectrum_us(&h);
        // 1000 samples resolve up to 99.9 %: x from 0 to 3 in 0.05 steps.
        assert_eq!(sp.len(), 61);
        assert_eq!(sp[0].0, 0.0);
        assert!((sp[60].0 - 99.9).abs() < 1e-9);
        assert!(sp.windows(2).all(|w| w[0].1 <= w[1].1), "monotone");
        assert!(spectrum_us(&new_histogram()).is_empty());
    }

    fn report(label: &str, name: &str, rps: f64) -> Report {
        Report {
            label: label.into(),
            name: name.into(),
            req_per_s: rps,
            latency_us: Percentiles {
                p50: 100.0,
                p99: 2000.0,
                ..Default::default()
            },
            spectrum_us: vec![(0.0, 50.0), (90.0, 100.0), (99.0, 2000.0)],
            ..Default::default()
        }
    }

    #[test]
    fn summary_groups_rounds_and_ratios() {
        let rs = vec![
            report("nginx-cache", "charts", 20_000.0),
            report("chartcache", "charts", 30_000.0),
            report("chartcache", "charts", 32_000.0),
            report("nginx-cache", "charts", 22_000.0),
            report("nginx-cache", "ci-mix", 40_000.0),
        ];
        let rows = summarize(&rs, "chartcache");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].label, "chartcache");
        assert_eq!(rows[0].rounds, 2);
        assert_eq!(rows[0].req_per_s, 31_000.0);
        assert_eq!(rows[0].ratio, Some(1.0));
        assert!((rows[1].ratio.unwrap() - 21.0 / 31.0).abs() < 1e-9);
        assert_eq!(rows[2].ratio, None, "no baseline in ci-mix");
        let text = render_summary(&rows, "chartcache");
        assert!(text.contains("workload: charts"));
        assert!(text.contains("workload: ci-mix"));
        assert!(text.contains("(30.0k/32.0k)"), "{text}");
        assert!(text.contains("0.68×"), "{text}");
    }

    #[test]
    fn svg_is_well_formed_and_escaped() {
        let rs = vec![
            report("a<b>", "charts", 1.0),
            report("a<b>", "charts", 1.0),
            report("c", "charts", 1.0),
        ];
        let series = summary_series(&rs, "charts");
        assert_eq!(series.len(), 3);
        assert!(series[1].dashed && !series[0].dashed && !series[2].dashed);
        assert_eq!(series[2].color, 1);
        let svg = render_svg("charts & co", &series);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("charts &amp; co"));
        assert!(svg.contains("a&lt;b&gt; #2"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        // 2000 µs max → axis in ms up to 2.
        assert!(svg.contains("latency (ms)"));
        assert!(svg.contains(">99%<"));
    }

    #[test]
    fn text_report_mentions_everything() {
        let mut r = report("nginx", "charts", 25_500.0);
        r.requests = 204_000;
        r.errors.status = 3;
        r.target = Some(TargetReport {
            pids: vec![1],
            cpu_seconds: 6.5,
            cpu_us_per_req: 31.9,
            memory: Memory {
                rss_kb: 10_240,
                peak_rss_kb: 20_480,
                processes: 3,
            },
        });
        r.upstream = Some(UpstreamReport {
            source: "http://x/metrics".into(),
            requests: 0.0,
            per_1000: 0.0,
        });
        let t = render_text(&r);
        assert!(t.contains("25500 req/s"), "{t}");
        assert!(t.contains("3 errors"), "{t}");
        assert!(t.contains("CPU 31.9 µs/req"), "{t}");
        assert!(t.contains("peak 20.0 MiB"), "{t}");
        assert!(t.contains("0.00 per 1000"), "{t}");
    }
}

//! `chartcache-loadtest`: the HTTP/1.1 load generator chartcache is measured with, and the
//! summary step of `loadtest/compare.sh`.
//!
//! # Architecture
//! 1. Flags and an optional workload file (TOML/JSON; flags win) → a [`workload::Plan`]: every
//!    request head rendered once, a weighted mix of groups, rotation or Zipf within a group.
//! 2. `--threads` OS threads, each with its own monoio runtime (io_uring, epoll fallback) and
//!    its share of `--connections` keep-alive connections ([`client`]). Closed loop: each
//!    connection sends the next request when the previous response is complete. Open loop
//!    (`--rate`): each connection has a fixed send schedule and latency counts from the
//!    scheduled time (coordinated-omission correction).
//! 3. The main thread sleeps through warm-up, then samples the target's CPU (`--pid`, whole
//!    process tree), the upstream counter (`--metrics-url` / `--upstream-count-cmd`) and its own
//!    CPU at the window's start and end ([`procfs`], [`fetch`]).
//! 4. Per-thread stats are merged into a [`report::Report`]: text on stdout, `--json`, `--svg`.
//!
//! `chartcache-loadtest summarize FILES…` groups many JSON reports (servers × rounds × workloads)
//! into the comparison table and per-workload SVG plots.
#![deny(clippy::undocumented_unsafe_blocks)]

mod client;
mod fetch;
mod floor;
mod procfs;
mod report;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::client::{Schedule, ThreadSpec, ThreadStats};
use crate::fetch::UpstreamSource;
use crate::report::{Percentiles, Report, TargetReport, UpstreamReport};
use crate::workload::{Plan, PlanSpec, Target, WorkloadFile};

#[derive(Parser, Debug)]
#[command(
    name = "chartcache-loadtest",
    version,
    about = "HTTP/1.1 load generator (monoio, closed or open loop, HdrHistogram latencies)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Combine JSON reports of many runs into one comparison table and SVG plots.
    Summarize(SummarizeArgs),
    /// Serve a directory as a bare responder (files in memory, one send per response, no
    /// cache logic): the floor a caching proxy is compared with.
    Floor(floor::FloorArgs),
}

#[derive(Args, Debug)]
struct SummarizeArgs {
    /// Server label the ratio column is relative to.
    #[arg(long, default_value = "chartcache")]
    baseline: String,
    /// Write summary.txt, summary.json and latency-<workload>.svg here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Title prefix for the plots.
    #[arg(long, default_value = "latency by percentile")]
    title: String,
    /// JSON reports written by `--json`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Workload file (TOML, or JSON if it ends in .json); flags override its fields.
    #[arg(short = 'w', long)]
    workload: Option<PathBuf>,
    /// Name of the server under test, for reports (e.g. chartcache, nginx-cache).
    #[arg(long)]
    label: Option<String>,
    /// Name of the workload, for reports (e.g. charts, ci-mix).
    #[arg(long)]
    name: Option<String>,
    /// Base URL of the server under test; paths are resolved against it.
    #[arg(long)]
    url: Option<String>,
    /// Load threads, each with its own monoio runtime [default: 1].
    #[arg(short, long)]
    threads: Option<usize>,
    /// Keep-alive connections in total, spread over the threads [default: 64].
    #[arg(short, long)]
    connections: Option<usize>,
    /// Measurement window, e.g. 10s [default: 10s].
    #[arg(short, long)]
    duration: Option<String>,
    /// Load before the window starts (not recorded) [default: 2s].
    #[arg(long)]
    warmup: Option<String>,
    /// Per-request timeout, send to last byte [default: 10s].
    #[arg(long)]
    timeout: Option<String>,
    /// Most bytes one socket read takes, e.g. 8KiB (wrk's size) or 32KiB (Go's io.Copy);
    /// at least 4KiB [default: 256KiB]. On one box the client's read size changes which
    /// server data path is cheaper (README, Performance).
    #[arg(long)]
    read_buffer: Option<String>,
    /// Open loop: constant arrival rate in requests/s over all connections. Without it the
    /// run is closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Weighted mix, e.g. `index.yaml=90,charts=10`; `charts` means every chart URL.
    #[arg(long)]
    mix: Option<String>,
    /// URL of a Helm index.yaml, fetched once; its `urls:` entries become the `charts` group.
    #[arg(long)]
    charts_from: Option<String>,
    /// File with one path or URL per line; becomes the `charts` group.
    #[arg(long)]
    paths_file: Option<PathBuf>,
    /// Request this path (repeatable); used when there is no mix and no chart list.
    #[arg(long = "path")]
    paths: Vec<String>,
    /// Zipf exponent for picking within a group (1.0 is typical); default is to rotate.
    #[arg(long)]
    zipf: Option<f64>,
    /// Seed for the mix / Zipf RNG [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Target process id for CPU and memory (repeatable); its descendants are included.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Count only the given processes, not their descendants.
    #[arg(long)]
    no_children: bool,
    /// Prometheus endpoint of the target, read before and after the window.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Counter (summed over all label sets) that counts upstream requests.
    #[arg(long, default_value = "chartcache_upstream_requests_total")]
    upstream_metric: String,
    /// Shell command printing the upstream request count (last number of its output).
    #[arg(long, conflicts_with = "metrics_url")]
    upstream_count_cmd: Option<String>,
    /// Before the run, request every distinct path once and fail on any error.
    #[arg(long)]
    warm_pass: bool,
    /// Do only the warm pass (implies --warm-pass), then exit.
    #[arg(long)]
    warm_only: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency-by-percentile SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// `key=value` recorded in the JSON report (repeatable).
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// I/O driver: `auto` (io_uring if usable, else epoll) or `legacy` (epoll).
    #[arg(long, default_value = "auto", value_parser = ["auto", "legacy"])]
    driver: String,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Summarize(a)) => summarize(a),
        Some(Command::Floor(a)) => floor::run(a),
        None => run(cli.run),
    };
    if let Err(e) = result {
        eprintln!("chartcache-loadtest: {e:#}");
        std::process::exit(1);
    }
}

/// The merged configuration of one run.
struct RunConfig {
    label: String,
    name: String,
    target: Target,
    plan: Plan,
    threads: usize,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    read_buffer: usize,
    rate: Option<f64>,
    seed: u64,
}

fn build_config(a: &RunArgs) -> Result<RunConfig> {
    let file = match &a.workload {
        Some(p) => WorkloadFile::load(p)?,
        None => WorkloadFile::default(),
    };
    let url = a
        .url
        .clone()
        .or(file.url)
        .context("no --url (or `url` in the workload file)")?;
    let target = Target::parse(&url)?;
    let dur = |flag: &Option<String>, file: Option<String>, default: &str| {
        workload::parse_duration(flag.as_deref().or(file.as_deref()).unwrap_or(default))
    };
    let duration = dur(&a.duration, file.duration, "10s")?;
    let warmup = dur(&a.warmup, file.warmup, "2s")?;
    let timeout = dur(&a.timeout, file.timeout, "10s")?;
    let read_buffer = match a.read_buffer.as_deref().or(file.read_buffer.as_deref()) {
        // One size syntax for both binaries (`16KiB`, `4096`).
        Some(text) => chartcache::config::parse_size(text)
            .map_err(|e| anyhow::anyhow!("--read-buffer: {e}"))? as usize,
        None => client::READ_BUF,
    };
    if read_buffer < client::MIN_READ_BUF {
        bail!(
            "--read-buffer must be at least {}KiB (a response head must fit in one read)",
            client::MIN_READ_BUF / 1024
        );
    }
    let threads = a.threads.or(file.threads).unwrap_or(1);
    let connections = a.connections.or(file.connections).unwrap_or(64);
    if threads == 0 || connections == 0 {
        bail!("--threads and --connections must be at least 1");
    }
    if duration.is_zero() {
        bail!("--duration must be positive");
    }
    let rate = a.rate.or(file.rate);
    if let Some(r) = rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of requests per second");
        }
    }
    let mix = match (&a.mix, &file.mix) {
        (Some(m), _) => Some(workload::parse_mix(m)?),
        (None, Some(m)) => Some(m.entries()?),
        (None, None) => None,
    };
    let charts_from = a.charts_from.clone().or(file.charts_from);
    let paths_file = a.paths_file.clone().or(file.paths_file.map(PathBuf::from));
    let charts = if let Some(index_url) = &charts_from {
        Some(charts_from_index(index_url, &target)?)
    } else if let Some(p) = &paths_file {
        Some(workload::read_paths_file(p)?)
    } else {
        None
    };
    let mut paths = a.paths.clone();
    if paths.is_empty() {
        paths = file.paths.unwrap_or_default();
    }
    let mut headers = file.headers.unwrap_or_default();
    headers.extend(a.headers.iter().cloned());
    let seed = a.seed.or(file.seed).unwrap_or(1);
    let plan = Plan::build(PlanSpec {
        target: &target,
        mix,
        charts,
        paths,
        zipf: a.zipf.or(file.zipf),
        seed,
        headers: &headers,
    })?;
    Ok(RunConfig {
        label: a
            .label
            .clone()
            .or(file.label)
            .unwrap_or_else(|| "target".into()),
        name: a.name.clone().or(file.name).unwrap_or_default(),
        target,
        plan,
        threads,
        connections,
        duration,
        warmup,
        timeout,
        read_buffer,
        rate,
        seed,
    })
}

/// Fetches a Helm index.yaml and returns its chart URLs, resolved against the index URL.
fn charts_from_index(index_url: &str, target: &Target) -> Result<Vec<String>> {
    let body = fetch::get(index_url)?;
    let text = String::from_utf8_lossy(&body);
    let base = url::Url::parse(index_url).context("parsing --charts-from")?;
    let mut out = Vec::new();
    let mut foreign = 0usize;
    for u in workload::chart_urls(&text) {
        let abs = base
            .join(&u)
            .with_context(|| format!("chart URL {u:?} in {index_url}"))?;
        if abs.host_str() != target.base.host_str() || abs.port() != target.base.port() {
            foreign += 1;
        }
        out.push(abs.to_string());
    }
    if out.is_empty() {
        bail!("{index_url} lists no chart URLs");
    }
    if foreign > 0 {
        eprintln!(
            "note: {foreign} chart URL(s) in {index_url} point at another host; their paths are requested from {}",
            target.base
        );
    }
    Ok(out)
}

type LoadThread = std::thread::JoinHandle<Result<ThreadStats>>;

fn run_threads(cfg: &RunConfig, driver: &str, schedule: Schedule) -> Result<Vec<LoadThread>> {
    let plan = Arc::new(cfg.plan.clone());
    (0..cfg.threads)
        .map(|t| {
            let spec = ThreadSpec {
                plan: plan.clone(),
                addr: cfg.target.addr,
                schedule,
                connections: (t * cfg.connections / cfg.threads)
                    ..((t + 1) * cfg.connections / cfg.threads),
                total_connections: cfg.connections,
                thread_index: t,
                threads: cfg.threads,
                seed: cfg.seed,
            };
            let legacy = driver == "legacy";
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || on_runtime(legacy, client::run_thread(spec)))
                .context("spawning a load thread")
        })
        .collect()
}

/// Runs `fut` to completion on a fresh monoio runtime of the chosen driver.
fn on_runtime<F: std::future::Future>(legacy: bool, fut: F) -> Result<F::Output> {
    if legacy {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .context("building the monoio runtime")?;
        Ok(rt.block_on(fut))
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .context("building the monoio runtime")?;
        Ok(rt.block_on(fut))
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn run(a: RunArgs) -> Result<()> {
    let cfg = build_config(&a)?;
    let upstream = match (&a.metrics_url, &a.upstream_count_cmd) {
        (Some(url), _) => Some(UpstreamSource::Metrics {
            url: url.clone(),
            metric: a.upstream_metric.clone(),
        }),
        (None, Some(cmd)) => Some(UpstreamSource::Command(cmd.clone())),
        (None, None) => None,
    };
    let children = !a.no_children;
    for pid in &a.pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("--pid {pid}: no such process");
        }
    }
    if a.warm_pass || a.warm_only {
        let (ok, errors) = on_runtime(
            a.driver == "legacy",
            client::warm_pass(
                Arc::new(cfg.plan.clone()),
                cfg.target.addr,
                cfg.connections.min(16),
                cfg.timeout,
            ),
        )?;
        eprintln!("warm pass: {ok} ok, {} errors", errors.len());
        if let Some(e) = errors.first() {
            bail!("warm pass failed ({} errors), first: {e}", errors.len());
        }
        if a.warm_only {
            return Ok(());
        }
    }

    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Schedule {
        start,
        window_start: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
        rate: cfg.rate,
        timeout: cfg.timeout,
        read_buffer: cfg.read_buffer,
    };
    let handles = run_threads(&cfg, &a.driver, schedule)?;

    sleep_until(schedule.window_start);
    let cpu_before = procfs::CpuSnapshot::take(&a.pids, children);
    let self_before = procfs::self_cpu_ticks();
    let up_before = upstream.as_ref().map(|u| u.read());
    sleep_until(schedule.end);
    let cpu_after = procfs::CpuSnapshot::take(&a.pids, children);
    let self_after = procfs::self_cpu_ticks();
    let up_after = upstream.as_ref().map(|u| u.read());
    let memory = procfs::memory(&a.pids, children);

    let mut stats = ThreadStats::new();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        stats.merge(&s);
    }

    let tick = 1.0 / procfs::clock_ticks_per_sec() as f64;
    let secs = cfg.duration.as_secs_f64();
    let per_req = |seconds: f64| {
        if stats.ok == 0 {
            0.0
        } else {
            seconds * 1e6 / stats.ok as f64
        }
    };
    let target = (!a.pids.is_empty()).then(|| {
        let cpu_seconds = cpu_before.ticks_until(&cpu_after) as f64 * tick;
        TargetReport {
            pids: a.pids.clone(),
            cpu_seconds,
            cpu_us_per_req: per_req(cpu_seconds),
            memory,
        }
    });
    let (upstream_report, upstream_error) = match (&upstream, up_before, up_after) {
        (Some(src), Some(Ok(b)), Some(Ok(af))) => {
            let requests = (af - b).max(0.0);
            let per_1000 = if stats.ok == 0 {
                0.0
            } else {
                requests * 1000.0 / stats.ok as f64
            };
            let source = match src {
                UpstreamSource::Metrics { url, metric } => format!("{metric} at {url}"),
                UpstreamSource::Command(c) => format!("`{c}`"),
            };
            (
                Some(UpstreamReport {
                    source,
                    requests,
                    per_1000,
                }),
                None,
            )
        }
        (_, Some(Err(e)), _) | (_, _, Some(Err(e))) => (None, Some(e.to_string())),
        _ => (None, None),
    };
    let meta = a
        .meta
        .iter()
        .map(|m| match m.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (m.clone(), String::new()),
        })
        .collect();
    let report = Report {
        label: cfg.label.clone(),
        name: cfg.name.clone(),
        workload: cfg.plan.describe(),
        url: cfg.target.base.to_string(),
        mode: if cfg.rate.is_some() { "open" } else { "closed" }.into(),
        rate_target: cfg.rate,
        threads: cfg.threads,
        connections: cfg.connections,
        read_buffer: Some(cfg.read_buffer),
        duration_s: secs,
        warmup_s: cfg.warmup.as_secs_f64(),
        requests: stats.ok,
        errors: stats.errors,
        statuses: stats
            .statuses
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, &n)| (code as u16, n))
            .collect(),
        missed_sends: stats.missed,
        req_per_s: stats.ok as f64 / secs,
        mb_per_s: stats.bytes as f64 / secs / 1e6,
        bytes: stats.bytes,
        latency_us: Percentiles::from_ns(&stats.latency),
        service_us: Percentiles::from_ns(&stats.service),
        spectrum_us: report::spectrum_us(&stats.latency),
        target,
        upstream: upstream_report,
        upstream_error,
        client_cpu_us_per_req: per_req(self_after.saturating_sub(self_before) as f64 * tick),
        error_samples: stats.error_samples.clone(),
        unix_time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        meta,
    };
    print!("{}", report::render_text(&report));
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.svg {
        let series = report::summary_series(std::slice::from_ref(&report), &report.name);
        let title = format!("{} — {}", report.label, report.workload);
        std::fs::write(p, report::render_svg(&title, &series))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if stats.ok == 0 {
        bail!("no successful responses");
    }
    Ok(())
}

fn summarize(a: SummarizeArgs) -> Result<()> {
    let mut reports = Vec::new();
    for f in &a.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let r: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        reports.push(r);
    }
    let rows = report::summarize(&reports, &a.baseline);
    let table = report::render_summary(&rows, &a.baseline);
    print!("{table}");
    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("summary.txt"), &table)?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&rows)? + "\n",
        )?;
        let mut names: Vec<&str> = Vec::new();
        for r in &reports {
            if !names.contains(&r.name.as_str()) {
                names.push(&r.name);
            }
        }
        for name in names {
            let series = report::summary_series(&reports, name);
            let file = if name.is_empty() {
                "latency.svg".to_string()
            } else {
                format!("latency-{}.svg", sanitize(name))
            };
            let title = format!("{} — {name}", a.title);
            std::fs::write(dir.join(file), report::render_svg(&title, &series))?;
        }
    }
    Ok(())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

//! The admin status page (`GET /` on the admin port) in a real browser: headless
//! Chromium (Debian's `chromium` package, installed by `.ci/install-chromium.sh`)
//! loads the page of an in-process chartcache serving two repositories from a
//! SigV4-verifying S3 (s3s-fs) after known traffic, dumps its DOM and takes a
//! screenshot. The DOM must hold one row per repository whose figures equal what
//! `/metrics` says (requests, upstream requests, requests answered without
//! upstream, cost saved at the configured price) and the expected values for the
//! traffic sent; the screenshot must be a PNG of the window's size, much larger than
//! a screenshot of an empty page of the same size (so the page rendered).
//!
//! Its own harness (`harness = false`, [`common::harness`]): without Chromium
//! the test is reported *ignored* with the reason on stderr, except under `CI`,
//! where it fails. The browser is `$CHARTCACHE_CHROMIUM` (default `chromium`).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{examples_repo, get, test_cli, Proxy, AK, SK};
use common::spawn_s3;
use libtest_mimic::Failed;

/// The window the screenshots are taken at.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;
/// One browser run may take this long (a cold start on a loaded 2-core box takes seconds).
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

pub fn main() {
    common::harness::run_needing(
        "headless Chromium",
        chromium_missing,
        vec![(
            "status_page_in_headless_chromium_matches_metrics",
            status_page_in_chromium,
        )],
    );
}

fn chromium() -> OsString {
    std::env::var_os("CHARTCACHE_CHROMIUM").unwrap_or_else(|| "chromium".into())
}

fn chromium_missing() -> Option<String> {
    match Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--version"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{} --version failed: {}",
            chromium().to_string_lossy(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "cannot run {}: {e}; run `bash .ci/install-chromium.sh` or set CHARTCACHE_CHROMIUM",
            chromium().to_string_lossy()
        )),
    }
}

/// Runs headless Chromium with `args` then `url`, in a profile directory of its own,
/// killed at [`BROWSER_DEADLINE`].
fn browser(profile: &Path, args: &[String], url: &str) -> Result<Output, Failed> {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            // Root in a container has no user namespaces for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--window-size={WIDTH},{HEIGHT}"),
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", chromium().to_string_lossy()))?;
    // Read the pipes on threads so a full pipe never stalls the browser.
    let mut out_pipe = child.stdout.take().ok_or("no stdout")?;
    let mut err_pipe = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut v);
        v
    });
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("chromium did not finish within {BROWSER_DEADLINE:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// The sum of every sample of `family` whose labels include `repo="NAME"`.
fn metric_sum(metrics: &str, family: &str, repo: &str) -> f64 {
    let label = format!("repo=\"{repo}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `data-k` cell → text of the `<tr class="repo" data-repo="NAME">` rows of a DOM dump.
fn repo_rows(dom: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let row = regex::Regex::new(r#"(?s)<tr class="repo" data-repo="([^"]*)">(.*?)</tr>"#).unwrap();
    let cell = regex::Regex::new(r#"(?s)<td[^>]*data-k="([^"]+)"[^>]*>(.*?)</td>"#).unwrap();
    let tags = regex::Regex::new(r"<[^>]*>").unwrap();
    row.captures_iter(dom)
        .map(|r| {
            let cells = cell
                .captures_iter(&r[2])
                .map(|c| {
                    (
                        c[1].to_string(),
                        tags.replace_all(&c[2], "").trim().to_string(),
                    )
                })
                .collect();
            (r[1].to_string(), cells)
        })
        .collect()
}

fn instance_cell(dom: &str, k: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r#"(?s)<td data-k="{k}">(.*?)</td>"#)).unwrap();
    re.captures(dom).map(|c| c[1].to_string())
}

fn num(cells: &BTreeMap<String, String>, k: &str) -> f64 {
    cells
        .get(k)
        .unwrap_or_else(|| panic!("no {k} cell in {cells:?}"))
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number: {cells:?}"))
}

/// Width and height from a PNG's IHDR.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

fn status_page_in_chromium() -> Result<(), Failed> {
    let s3 = spawn_s3(AK, SK);
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&path).unwrap();
        s3.put_object("charts-a", &format!("stable/{name}"), &bytes);
        s3.put_object("charts-b", &name, &bytes);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("s3://unused", &tmp.path().join("cache"));
    cli.repo.upstream = None;
    cli.repos.repo = Some(vec![
        "/stable=s3://charts-a/stable".into(),
        "/team=s3://charts-b".into(),
    ]);
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.admin.s3_get_price = Some(0.5);
    let p = Proxy::start_in(cli, Some(tmp));

    // /stable: index MISS, chart MISS, 3 chart HITs, index again (revalidated: a
    // conditional GET answered 304), a HEAD HIT. /team: one index MISS.
    assert_eq!(p.get("/stable/index.yaml").status, 200);
    assert_eq!(p.get("/stable/hello-0.2.0.tgz").x_cache(), "MISS");
    for _ in 0..3 {
        assert_eq!(p.get("/stable/hello-0.2.0.tgz").x_cache(), "HIT");
    }
    assert_eq!(
        p.get("/stable/index.yaml").x_cache(),
        "REVALIDATED",
        "the default rule revalidates the index on every request"
    );
    let head = common::proxy::request(p.addr, "HEAD", "/stable/hello-0.2.0.tgz", &[]);
    assert_eq!(head.x_cache(), "HIT");
    assert_eq!(p.get("/team/index.yaml").status, 200);
    // Counters are updated as each exchange ends, just after its response: wait for
    // all 8 to be counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = p.metrics();
        let counted = metric_sum(&m, "chartcache_repo_requests_total", "/stable")
            + metric_sum(&m, "chartcache_repo_requests_total", "/team");
        if counted >= 8.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // The page as plain HTTP: escaped upstream data, no token, links.
    let raw = get(p.admin, "/", &[]);
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("content-type"), Some("text/html; charset=utf-8"));
    let html = raw.text();
    for link in ["href=\"/metrics\"", "href=\"/healthz\"", "href=\"/readyz\""] {
        assert!(html.contains(link), "no {link}: {html}");
    }
    assert!(
        !html.contains(SK) && !html.contains(AK),
        "credentials on the page"
    );
    assert!(
        !html.contains("<script")
            && !html.contains("src=")
            && !html.contains("http://")
            && !html.contains("https://"),
        "external assets or scripts on the page: {html}"
    );
    // s3s-fs ETags are quoted strings: they reach the page escaped.
    assert!(
        html.contains("<code>&quot;"),
        "the index ETag is not escaped: {html}"
    );

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", p.admin);
    let dumped = browser(profile.path(), &["--dump-dom".into()], &url)?;
    let dom = String::from_utf8_lossy(&dumped.stdout).into_owned();
    assert!(
        dumped.status.success() && dom.contains("<h1>chartcache</h1>"),
        "chromium --dump-dom failed ({}): {dom}\n{}",
        dumped.status,
        String::from_utf8_lossy(&dumped.stderr)
    );
    let rows = repo_rows(&dom);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        ["/stable", "/team"],
        "repository rows in {dom}"
    );
    let stable = &rows["/stable"];
    let team = &rows["/team"];
    // What was sent, as the page says it.
    assert_eq!(num(stable, "requests"), 7.0, "{stable:?}");
    assert_eq!(num(stable, "without-upstream"), 4.0, "{stable:?}");
    // index GET, chart GET, index conditional GET → 304.
    assert_eq!(num(stable, "upstream-requests"), 3.0, "{stable:?}");
    assert_eq!(stable["upstream-by-kind"], "2 / 1 / 0 / 0", "{stable:?}");
    // 5 of 7 served without a body from upstream (4 HIT, 1 REVALIDATED).
    assert_eq!(stable["hit-ratio"], "71.4%", "{stable:?}");
    assert!(stable["index-etag"].starts_with('"'), "{stable:?}");
    assert_ne!(stable["index-age"], "not stored", "{stable:?}");
    assert!(stable["stale"].starts_with("no"), "{stable:?}");
    assert_eq!(num(team, "requests"), 1.0, "{team:?}");
    assert_eq!(num(team, "without-upstream"), 0.0, "{team:?}");
    // The same figures as /metrics.
    for (name, cells) in [("/stable", stable), ("/team", team)] {
        for (k, family) in [
            ("requests", "chartcache_repo_requests_total"),
            (
                "upstream-requests",
                "chartcache_repo_upstream_requests_total",
            ),
            (
                "without-upstream",
                "chartcache_repo_requests_without_upstream_total",
            ),
            (
                "cost-saved",
                "chartcache_repo_estimated_cost_saved_dollars_total",
            ),
        ] {
            let want = metric_sum(&metrics, family, name);
            assert!(
                (num(cells, k) - want).abs() < 1e-9,
                "{name} {k}: page {} vs /metrics {want}\n{metrics}",
                num(cells, k)
            );
        }
    }
    // 4 requests without upstream at $0.5 per 1,000.
    assert_eq!(num(stable, "cost-saved"), 0.002, "{stable:?}");
    let driver = instance_cell(&dom, "driver").unwrap_or_default();
    assert!(
        driver.starts_with("io_uring") || driver.starts_with("epoll"),
        "driver: {driver}"
    );
    let workers = instance_cell(&dom, "workers").unwrap_or_default();
    assert_eq!(workers, "2 of 2 ready");
    assert_eq!(
        instance_cell(&dom, "version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );

    // Screenshots: the page, and an empty page of the same size for comparison.
    let shots = tempfile::tempdir().unwrap();
    let shot = |name: &str, url: &str| -> Result<Vec<u8>, Failed> {
        let path = shots.path().join(name);
        let out = browser(
            profile.path(),
            &[format!("--screenshot={}", path.display())],
            url,
        )?;
        std::fs::read(&path).map_err(|e| {
            format!(
                "no screenshot at {} ({e}); chromium {}: {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into()
        })
    };
    let page = shot("status.png", &url)?;
    let blank = shot("blank.png", "data:text/html,<html><body></body></html>")?;
    assert_eq!(
        png_size(&page),
        Some((WIDTH, HEIGHT)),
        "not a PNG of the window"
    );
    assert_eq!(png_size(&blank), Some((WIDTH, HEIGHT)));
    assert!(
        page.len() > 3 * blank.len() && page.len() > 10_000,
        "the screenshot looks empty: {} bytes (an empty page: {})",
        page.len(),
        blank.len()
    );
    if let Some(dir) = std::env::var_os("CHARTCACHE_SCREENSHOT_DIR") {
        let _ = std::fs::write(Path::new(&dir).join("status-page.png"), &page);
    }
    Ok(())
}

//! Several repositories in one instance (issue 13): two SigV4-verifying S3
//! buckets and one plain HTTP upstream behind one chartcache, each under its own
//! prefix — routing, same object names kept apart, `s3://` URLs into another
//! repository, per-repository purge, metrics and `/readyz`; and the cache tied to
//! the upstream its entries came from across restarts (also in the
//! single-repository form).

mod common;

use std::path::Path;

use common::proxy::{examples_repo, request, test_cli, Proxy, AK, SK};
use common::{spawn_s3, S3Server};

/// `s3://charts-a/stable` (helm-s3 style: chart URLs are `s3://` URLs, one of them
/// into the other bucket, one into a bucket nobody serves), `s3://charts-b` (the
/// example repository as it is) and a plain HTTP upstream (another chartcache
/// serving the example repository from disk), each with its own `shared-1.0.0.tgz`.
struct Fleet {
    s3: S3Server,
    /// The plain HTTP upstream.
    mirror: Proxy,
    proxy: Proxy,
    _mirror_dir: tempfile::TempDir,
}

const SHARED: &str = "shared-1.0.0.tgz";

fn shared_body(which: &str) -> Vec<u8> {
    format!("the shared chart of {which}\n")
        .repeat(50)
        .into_bytes()
}

fn put_examples(s3: &S3Server, bucket: &str, prefix: &str, edit: impl Fn(String) -> String) {
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut bytes = std::fs::read(&path).unwrap();
        if name == "index.yaml" {
            bytes = edit(String::from_utf8(bytes).unwrap()).into_bytes();
        }
        s3.put_object(bucket, &format!("{prefix}{name}"), &bytes);
    }
}

fn fleet() -> Fleet {
    let s3 = spawn_s3(AK, SK);
    put_examples(&s3, "charts-a", "stable/", |index| {
        let edited = index
            .replace("    - hello-", "    - s3://charts-a/stable/hello-")
            .replace("    - podinfo-lite-", "    - s3://charts-b/podinfo-lite-");
        assert_ne!(edited, index);
        edited + "# s3://nowhere-configured/x-1.0.0.tgz stays\nextra:\n- s3://nowhere-configured/x-1.0.0.tgz\n"
    });
    put_examples(&s3, "charts-b", "", |index| index);
    s3.put_object("charts-a", &format!("stable/{SHARED}"), &shared_body("a"));
    s3.put_object("charts-b", SHARED, &shared_body("b"));

    let mirror_dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(examples_repo()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, mirror_dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(mirror_dir.path().join(SHARED), shared_body("mirror")).unwrap();
    let mirror_cli = test_cli(
        &format!("file://{}", mirror_dir.path().display()),
        &mirror_dir.path().join(".cache"),
    );
    let mirror = Proxy::start(mirror_cli);

    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("unused", &tmp.path().join("cache"));
    cli.repo.upstream = None;
    cli.repo.s3_endpoint = Some(s3.endpoint.clone());
    cli.repos.repo = Some(vec![
        "/stable=s3://charts-a/stable".into(),
        format!("/team-b=s3://charts-b, /mirror=http://{}/", mirror.addr),
    ]);
    let proxy = Proxy::start_in(cli, Some(tmp));
    Fleet {
        s3,
        mirror,
        proxy,
        _mirror_dir: mirror_dir,
    }
}

fn repo_metric(p: &Proxy, family: &str, labels: &str) -> u64 {
    let line = format!("{family}{{{labels}}} ");
    p.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str())?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn same_object_name_in_three_repositories_gives_three_bodies() {
    let f = fleet();
    for (prefix, which) in [("/stable", "a"), ("/team-b", "b"), ("/mirror", "mirror")] {
        let path = format!("{prefix}/{SHARED}");
        let first = f.proxy.get(&path);
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(first.x_cache(), "MISS", "{path}");
        assert_eq!(first.body, shared_body(which), "{path}");
        let again = f.proxy.get(&path);
        assert_eq!(again.x_cache(), "HIT", "{path}");
        assert_eq!(again.body, shared_body(which), "{path}");
    }
    assert_eq!(f.s3.get_count(&format!("/charts-a/stable/{SHARED}")), 1);
    assert_eq!(f.s3.get_count(&format!("/charts-b/{SHARED}")), 1);
    // The mirror's copy came from the plain HTTP upstream (which cached it then).
    assert_eq!(f.mirror.get(&format!("/{SHARED}")).x_cache(), "HIT");
    // Per-repository metrics: one miss and one hit each, upstream bytes of each.
    for prefix in ["/stable", "/team-b", "/mirror"] {
        for cache in ["miss", "hit"] {
            let labels = format!("repo=\"{prefix}\",cache=\"{cache}\",status=\"200\"");
            assert_eq!(
                repo_metric(&f.proxy, "chartcache_repo_requests_total", &labels),
                1,
                "{labels}"
            );
        }
    }
    let labels = "repo=\"/team-b\",outcome=\"200\"";
    assert_eq!(
        repo_metric(&f.proxy, "chartcache_repo_upstream_requests_total", labels),
        1
    );
    assert_eq!(
        repo_metric(
            &f.proxy,
            "chartcache_repo_upstream_bytes_total",
            "repo=\"/stable\""
        ),
        shared_body("a").len() as u64
    );
    // The unlabelled totals stay the sum over the repositories.
    assert!(f
        .proxy
        .metrics()
        .contains("chartcache_requests_total{cache=\"hit\",status=\"200\"} 3"));
}

#[test]
fn an_unknown_prefix_is_404_without_an_upstream_request() {
    let f = fleet();
    let before = f.s3.total_requests();
    for path in [
        "/nope/index.yaml",
        "/index.yaml",
        "/stable2/hello-0.1.0.tgz",
        "/stable",
    ] {
        let r = f.proxy.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    assert_eq!(f.s3.total_requests(), before);
    // Inside a repository, its root names no object either.
    assert_eq!(f.proxy.get("/team-b/").status, 400);
}

#[test]
fn each_repository_serves_its_index_with_urls_it_can_fetch() {
    let f = fleet();
    let index = f.proxy.get("/stable/index.yaml");
    assert_eq!(index.status, 200);
    let text = index.text();
    // Its own bucket: relative; the other configured bucket: that repository's path;
    // a bucket nobody serves: left alone.
    assert!(text.contains("    - hello-0.2.0.tgz"), "{text}");
    assert!(
        text.contains("    - /team-b/podinfo-lite-1.0.0.tgz"),
        "{text}"
    );
    assert!(
        text.contains("- s3://nowhere-configured/x-1.0.0.tgz"),
        "{text}"
    );
    assert!(!text.contains("s3://charts-"), "{text}");
    // Those URLs work through this instance.
    let chart = f.proxy.get("/team-b/podinfo-lite-1.0.0.tgz");
    assert_eq!(chart.status, 200);
    assert_eq!(
        chart.body,
        std::fs::read(examples_repo().join("podinfo-lite-1.0.0.tgz")).unwrap()
    );
    // Each repository's index is its own (the team-b one is upstream's, unrewritten).
    let b = f.proxy.get("/team-b/index.yaml");
    assert_eq!(
        b.body,
        std::fs::read(examples_repo().join("index.yaml")).unwrap()
    );
    assert_eq!(f.proxy.get("/mirror/index.yaml").status, 200);
    // Per-chart views per repository; a chart under the view maps to that repository.
    let view = f.proxy.get_with(
        "/stable/-/charts/hello/index.yaml",
        &[("User-Agent", "curl")],
    );
    assert_eq!(view.status, 200, "{}", view.text());
    assert!(view.text().contains("hello-0.2.0.tgz"));
    assert!(!view.text().contains("podinfo"));
    let under_view = f.proxy.get("/stable/-/charts/hello/hello-0.2.0.tgz");
    assert_eq!(under_view.status, 200);
    assert_eq!(f.s3.get_count("/charts-a/stable/hello-0.2.0.tgz"), 1);
    assert_eq!(f.s3.get_count("/charts-b/hello-0.2.0.tgz"), 0);
    // The digests are per repository too: stable's chart was checked against
    // stable's index and cached.
    assert_eq!(f.proxy.get("/stable/hello-0.2.0.tgz").x_cache(), "HIT");
}

#[test]
fn purges_stay_inside_one_repository() {
    let f = fleet();
    for prefix in ["/stable", "/team-b"] {
        assert_eq!(f.proxy.get(&format!("{prefix}/{SHARED}")).x_cache(), "MISS");
        assert_eq!(
            f.proxy.get(&format!("{prefix}/hello-0.1.0.tgz")).status,
            200
        );
    }
    let admin = f.proxy.admin;
    let r = request(admin, "DELETE", &format!("/cache/stable/{SHARED}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.proxy.get(&format!("/team-b/{SHARED}")).x_cache(), "HIT");
    assert_eq!(f.proxy.get(&format!("/stable/{SHARED}")).x_cache(), "MISS");
    // A purge of a path no repository serves removes nothing.
    let r = request(admin, "DELETE", &format!("/cache/{SHARED}"), &[]);
    assert_eq!(r.status, 404, "{}", r.text());

    let r = request(admin, "DELETE", "/cache?prefix=/team-b/", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.proxy.get(&format!("/stable/{SHARED}")).x_cache(), "HIT");
    assert_eq!(f.proxy.get("/stable/hello-0.1.0.tgz").x_cache(), "HIT");
    assert_eq!(f.proxy.get(&format!("/team-b/{SHARED}")).x_cache(), "MISS");
    assert_eq!(f.proxy.get("/team-b/hello-0.1.0.tgz").x_cache(), "MISS");
}

#[test]
fn one_failing_upstream_leaves_the_instance_ready_for_the_others() {
    let f = fleet();
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli("unused", &tmp.path().join("cache"));
    cli.repo.upstream = None;
    cli.repo.s3_endpoint = Some(f.s3.endpoint.clone());
    cli.repo.retries = Some(0);
    cli.repos.repo = Some(vec![
        "/team-b=s3://charts-b".into(),
        format!("/dead={}/", common::refused_endpoint()),
    ]);
    let p = Proxy::start_in(cli, Some(tmp));
    let dead = p.get("/dead/index.yaml");
    assert!(dead.status >= 500, "{}", dead.status);
    assert_eq!(p.get("/team-b/index.yaml").status, 200);
    let ready = common::proxy::get(p.admin, "/readyz", &[]);
    assert_eq!(ready.status, 200, "{}", ready.text());
    let text = ready.text();
    assert!(text.contains("/team-b (s3://charts-b): ok"), "{text}");
    assert!(text.contains("/dead (http://"), "{text}");
    assert!(text.contains("upstream failing"), "{text}");
    assert_eq!(
        repo_metric(
            &p,
            "chartcache_repo_upstream_errors_total",
            "repo=\"/dead\""
        ),
        1
    );
}

/// Today's bug, fixed: restarting on the same cache directory with another
/// `--upstream` served the old repository's bytes as HITs.
#[test]
fn restart_with_another_upstream_never_serves_the_old_bytes() {
    let s3 = spawn_s3(AK, SK);
    s3.put_object("bucket-one", "x-1.0.0.tgz", b"bytes of bucket one");
    s3.put_object("bucket-two", "x-1.0.0.tgz", b"bytes of bucket two");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let serve = |upstream: &str| {
        let mut cli = test_cli(upstream, &cache);
        cli.repo.s3_endpoint = Some(s3.endpoint.clone());
        Proxy::start(cli)
    };
    let get = |p: &Proxy| {
        let r = p.get("/x-1.0.0.tgz");
        (r.x_cache().to_string(), r.text())
    };
    let mut one = serve("s3://bucket-one");
    assert_eq!(get(&one).1, "bytes of bucket one");
    assert_eq!(get(&one).0, "HIT");
    one.stop();
    drop(one);
    // Same upstream again: the entry is kept.
    let mut again = serve("s3://bucket-one");
    assert_eq!(
        get(&again),
        ("HIT".to_string(), "bytes of bucket one".to_string())
    );
    again.stop();
    drop(again);
    // Another upstream on the same cache directory: its own bytes, fetched.
    let mut two = serve("s3://bucket-two");
    assert_eq!(
        get(&two),
        ("MISS".to_string(), "bytes of bucket two".to_string())
    );
    assert_eq!(get(&two).0, "HIT");
    assert_eq!(s3.get_count("/bucket-two/x-1.0.0.tgz"), 1);
    two.stop();
    drop(two);
    // And back: bucket one's entry was dropped at the previous start.
    let back = serve("s3://bucket-one");
    assert_eq!(
        get(&back),
        ("MISS".to_string(), "bytes of bucket one".to_string())
    );
    assert_eq!(s3.get_count("/bucket-one/x-1.0.0.tgz"), 2);
}

/// A repository moved to another prefix, or another bucket behind the same prefix,
/// starts cold; the others keep their entries.
#[test]
fn restart_keeps_the_repositories_that_did_not_change() {
    let s3 = spawn_s3(AK, SK);
    for b in ["charts-a", "charts-b", "charts-c"] {
        s3.put_object(b, "x-1.0.0.tgz", format!("x of {b}").as_bytes());
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let serve = |repos: &[&str]| {
        let mut cli = test_cli("unused", &cache);
        cli.repo.upstream = None;
        cli.repo.s3_endpoint = Some(s3.endpoint.clone());
        cli.repos.repo = Some(repos.iter().map(|s| s.to_string()).collect());
        Proxy::start(cli)
    };
    let mut first = serve(&["/a=s3://charts-a", "/b=s3://charts-b"]);
    assert_eq!(first.get("/a/x-1.0.0.tgz").text(), "x of charts-a");
    assert_eq!(first.get("/b/x-1.0.0.tgz").text(), "x of charts-b");
    first.stop();
    drop(first);
    let second = serve(&["/a=s3://charts-a", "/b=s3://charts-c"]);
    let a = second.get("/a/x-1.0.0.tgz");
    assert_eq!((a.x_cache(), a.text().as_str()), ("HIT", "x of charts-a"));
    let b = second.get("/b/x-1.0.0.tgz");
    assert_eq!((b.x_cache(), b.text().as_str()), ("MISS", "x of charts-c"));
}

#[test]
fn overlapping_prefixes_and_both_forms_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |repos: &[&str], upstream: Option<&str>| {
        let mut cli = test_cli("unused", Path::new(tmp.path()));
        cli.repo.upstream = upstream.map(str::to_string);
        cli.repos.repo = Some(repos.iter().map(|s| s.to_string()).collect());
        chartcache::config::load(cli)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = load(&["/a=s3://charts-a", "/a/b=s3://charts-b"], None);
    assert!(e.contains("/a and /a/b overlap"), "{e}");
    let e = load(&["/=s3://charts-a", "/b=s3://charts-b"], None);
    assert!(e.contains("/ and /b overlap"), "{e}");
    let e = load(&["/a=s3://charts-a"], Some("s3://charts-b"));
    assert!(e.contains("upstream and repo: both given"), "{e}");
}

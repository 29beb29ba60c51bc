//! Fleet tiering end to end, with real processes: three node-local chartcache
//! binaries whose upstream is one tier chartcache binary, whose upstream is
//! s3s-fs checking SigV4.
//!
//! One test walks the fleet through its life, each step checking what the
//! clients see (status, bytes, `X-Cache`, `Cache-Status`, `Age`) and what S3
//! and the tier saw:
//! 1. a cold storm of chart requests across all nodes costs one S3 GET per chart,
//!    and every body matches its digest in the index;
//! 2. `Age` travels: a node that fetches a chart the tier stored earlier counts
//!    its freshness from the tier's stored time (no double TTL);
//! 3. a republished index is seen through both tiers on the next request, and a
//!    repeat is revalidated with 304s down the chain;
//! 4. S3 down: the tier serves the index stale and the node labels it `STALE`
//!    too (staleness travels); an uncached chart reaches the tier once, not once
//!    per node retry (the tier's error says it retried);
//! 5. the tier down: the nodes serve their copies `STALE`.
//!
//! Every wait is bounded (the test client's 10 s read timeout, the binaries'
//! start and stop bounds).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proxy::{get, s3_args, serve_args, strs, Binary, Response, AK, S3_ENV, SK};
use common::spawn_s3;
use sha2::{Digest, Sha256};

const BUCKET: &str = "charts";
const NODES: usize = 3;

/// What the tier and the nodes share: a small cache, a short connect timeout, and a
/// retry deadline (the node's above the tier's, as README, Fleet tiering, says).
fn fleet_args(retry_deadline: &str) -> [&str; 9] {
    [
        "--cache-size",
        "64MiB",
        "--workers",
        "2",
        "--no-access-log",
        "--connect-timeout",
        "1s",
        "--retry-deadline",
        retry_deadline,
    ]
}

fn start_tier(s3: &common::S3Server, dir: &std::path::Path) -> Binary {
    Binary::start(&strs(&s3_args(s3, dir, &fleet_args("3s"))), &S3_ENV)
}

fn start_node(tier: SocketAddr, dir: &std::path::Path) -> Binary {
    let upstream = format!("http://{tier}");
    Binary::start(&strs(&serve_args(&upstream, dir, &fleet_args("6s"))), &[])
}

/// The sum of every sample of `name` (any labels) whose labels contain `with`.
fn metric_sum(admin: SocketAddr, name: &str, with: &str) -> f64 {
    let text = get(admin, "/metrics", &[]).text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `chart file → sha256` from an index.yaml (the `digest:` before each `urls:` entry).
fn digests(index: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut digest = None;
    let mut in_urls = false;
    for line in index.lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("digest: ") {
            digest = Some(d.to_owned());
        } else if t == "urls:" {
            in_urls = true;
        } else if let (true, Some(url)) = (in_urls, t.strip_prefix("- ")) {
            if let Some(d) = digest.take() {
                out.push((url.to_owned(), d));
            }
            in_urls = false;
        }
    }
    out
}

fn cache_status(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

fn age(r: &Response) -> Option<u64> {
    r.header("age").and_then(|a| a.parse().ok())
}

#[test]
fn fleet_of_three_nodes_behind_one_tier() {
    let mut s3 = spawn_s3(AK, SK);
    let repo = common::proxy::examples_repo();
    let index = std::fs::read_to_string(repo.join("index.yaml")).unwrap();
    let charts = [
        "hello-0.1.0.tgz",
        "hello-0.2.0.tgz",
        "podinfo-lite-1.0.0.tgz",
    ];
    s3.put_object(BUCKET, "index.yaml", index.as_bytes());
    for c in charts {
        s3.put_object(BUCKET, c, &std::fs::read(repo.join(c)).unwrap());
    }
    // An object only the error case asks for (never fetched while S3 is up).
    s3.put_object(BUCKET, "late-1.0.0.tgz", b"late");
    let tmp = tempfile::tempdir().unwrap();
    let tier = start_tier(&s3, &tmp.path().join("tier"));
    let nodes: Vec<Binary> = (0..NODES)
        .map(|i| start_node(tier.addr, &tmp.path().join(format!("node{i}"))))
        .collect();

    // Every node learns the index (digests) first.
    for n in &nodes {
        let r = get(n.addr, "/index.yaml", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), index);
    }

    // 1. Cold storm: every node, many clients, the same charts at once.
    let want: Vec<(String, String)> = digests(&index)
        .into_iter()
        .filter(|(url, _)| charts.contains(&url.as_str()))
        .collect();
    assert_eq!(want.len(), charts.len(), "the index names every chart");
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for client in 0..30 {
            let addr = addrs[client % NODES];
            let want = &want;
            handles.push(scope.spawn(move || {
                for (url, digest) in want {
                    let r = get(addr, &format!("/{url}"), &[]);
                    assert_eq!(r.status, 200, "{url}: {}", r.text());
                    let got: String = Sha256::digest(&r.body)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    assert_eq!(&got, digest, "{url}: body does not match its digest");
                    let cs = cache_status(&r);
                    assert!(cs.starts_with("chartcache; "), "{url}: {cs:?}");
                    assert!(r.header("x-cache").is_some());
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
    for c in charts {
        assert_eq!(
            s3.get_count(&format!("/{BUCKET}/{c}")),
            1,
            "{c}: one S3 GET for the whole fleet"
        );
    }
    let r = get(addrs[0], "/hello-0.1.0.tgz", &[]);
    assert_eq!(r.x_cache(), "HIT");
    let cs = cache_status(&r);
    assert!(cs.starts_with("chartcache; hit; ttl="), "{cs:?}");
    assert!(age(&r).is_some(), "a hit carries Age");

    // 2. Age travels: the tier stores a chart, a node asks for it later.
    s3.put_object(BUCKET, "aged-1.0.0.tgz", b"aged chart");
    let r = get(tier.addr, "/aged-1.0.0.tgz", &[]);
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    std::thread::sleep(Duration::from_millis(2_100));
    let r = get(addrs[1], "/aged-1.0.0.tgz", &[]);
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    let node_age = age(&r).expect("Age on a stored miss");
    assert!(
        node_age >= 2,
        "the node counts from the tier's stored time: Age {node_age}"
    );
    let cs = cache_status(&r).to_owned();
    let ttl: i64 = cs
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .map_or(-1, |t| t.parse().unwrap());
    assert_eq!(ttl, -1, "a miss has no ttl: {cs}");
    assert!(cs.contains("fwd=miss") && cs.contains("stored"), "{cs}");
    let r = get(addrs[1], "/aged-1.0.0.tgz", &[]);
    assert_eq!(r.x_cache(), "HIT");
    let cs = cache_status(&r).to_owned();
    let ttl: u64 = cs
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .expect("ttl on a hit")
        .parse()
        .unwrap();
    assert!(age(&r).unwrap() >= 2);
    assert!(
        ttl <= 86_400 - 2,
        "freshness left counts the tier's age: {cs}"
    );

    // 3. Republish: visible through both tiers on the next request.
    let index_gets = s3.get_count(&format!("/{BUCKET}/index.yaml"));
    let republished = index.replace("A tiny chart that renders one ConfigMap", "Republished");
    assert_ne!(republished, index);
    s3.put_object(BUCKET, "index.yaml", republished.as_bytes());
    for n in &nodes {
        let r = get(n.addr, "/index.yaml", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), republished, "the node serves the new index");
        let cs = cache_status(&r);
        assert!(cs.contains("fwd=stale; fwd-status=200"), "{cs}");
    }
    let r = get(addrs[0], "/index.yaml", &[]);
    assert_eq!((r.status, r.x_cache()), (200, "REVALIDATED"));
    assert!(cache_status(&r).contains("fwd=stale; fwd-status=304"));
    assert_eq!(r.text(), republished);
    let etag = r.header("etag").unwrap().to_owned();
    let r = get(addrs[0], "/index.yaml", &[("If-None-Match", &etag)]);
    assert_eq!((r.status, r.x_cache()), (304, "REVALIDATED"));
    assert!(age(&r).is_some(), "a 304 from the cache carries Age");
    let index_gets_now = s3.get_count(&format!("/{BUCKET}/index.yaml"));
    assert!(
        index_gets_now > index_gets,
        "each node request revalidated at S3"
    );

    // 4. S3 down: staleness travels; retries do not multiply.
    s3.stop();
    let r = get(addrs[2], "/index.yaml", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), republished);
    assert_eq!(
        r.x_cache(),
        "STALE",
        "the tier served it stale: {}",
        cache_status(&r)
    );
    assert!(
        cache_status(&r).contains("detail=stale"),
        "{}",
        cache_status(&r)
    );
    let tier_misses = metric_sum(tier.admin, "chartcache_requests_total", "status=\"502\"")
        + metric_sum(tier.admin, "chartcache_requests_total", "status=\"504\"");
    let r = get(addrs[2], "/late-1.0.0.tgz", &[]);
    assert!(
        r.status == 502 || r.status == 504,
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.x_cache(), "MISS");
    assert!(
        cache_status(&r).contains("detail=retried"),
        "{}",
        cache_status(&r)
    );
    let tier_misses_now = metric_sum(tier.admin, "chartcache_requests_total", "status=\"502\"")
        + metric_sum(tier.admin, "chartcache_requests_total", "status=\"504\"");
    assert_eq!(
        tier_misses_now - tier_misses,
        1.0,
        "one client request reaches the tier once (the node does not retry the tier's error)"
    );

    // 5. The tier down: nodes serve what they have, as STALE.
    let _ = tier.terminate();
    for n in &nodes {
        let r = get(n.addr, "/index.yaml", &[]);
        assert_eq!((r.status, r.x_cache()), (200, "STALE"));
        assert_eq!(r.text(), republished);
        assert!(cache_status(&r).contains("detail=stale"));
        let r = get(n.addr, "/hello-0.2.0.tgz", &[]);
        assert_eq!((r.status, r.x_cache()), (200, "HIT"), "charts stay fresh");
    }
    for n in nodes {
        let _ = n.terminate();
    }
}

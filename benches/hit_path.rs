//! Criterion bench of the CPU work chartcache does per cache hit, minus the
//! kernel: parse the request head, derive the key, match the route policy,
//! look the key up, check the record, render the response head, count it.
//! The access-log line is formatted for real and handed to a writer thread
//! that discards it (`io::sink`, not the bench's stdout). The kernel's share — one read, one writev — is what `loadtest/` measures
//! against nginx.
//!
//! Group: `hit_path/cpu`, plus each step on its own (`hit_path/parse`,
//! `hit_path/key_and_policy`, `hit_path/lookup_verify`, `hit_path/render`,
//! `hit_path/access_log`). Run: `cargo bench --bench hit_path`.

use std::hint::black_box;
use std::time::Duration;

use chartcache::access_log::{AccessLog, Entry, Writer};
use chartcache::cache::store::{ShardStore, StoreConfig};
use chartcache::cache::ObjectMeta;
use chartcache::config::LogFormat;
use chartcache::http1::path::object_key;
use chartcache::http1::render::{render, ResponseHead};
use chartcache::http1::request::{parse_request, Limits, Parsed};
use chartcache::metrics::{CacheResult, Metrics};
use chartcache::policy::Policy;
use criterion::{criterion_group, criterion_main, Criterion};

const REQUEST: &[u8] = b"GET /charts/nginx-ingress-4.11.3.tgz HTTP/1.1\r\nHost: chartcache.kube-system.svc:8080\r\nUser-Agent: Helm/4.3.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n\r\n";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = ShardStore::open(StoreConfig {
        dir: dir.path().to_path_buf(),
        shard: 0,
        capacity: 64 << 20,
        max_object: None,
    })
    .expect("open");
    let body = vec![0x1fu8; 100_000];
    let meta = ObjectMeta {
        status: 200,
        etag: Some("\"5d05c4e8b99649c66251a5d1c7c8fe42\"".into()),
        last_modified: Some("Tue, 01 Jul 2025 10:00:00 GMT".into()),
        content_type: Some("application/gzip".into()),
        stored_at: 1_750_000_000,
    };
    let key = "/charts/nginx-ingress-4.11.3.tgz";
    let mut rec = store.begin(key, &meta, body.len() as u64).expect("begin");
    store.append(&mut rec, &body).expect("append");
    store.commit(rec).expect("commit");
    let reader = store.reader();
    let policy = Policy::envoy_default();
    let limits = Limits::default();
    let metrics = Metrics::new(1).worker(0);
    let writer = Writer::start(std::io::sink()).expect("log writer");
    let log = AccessLog::new(Some(writer.sink()), LogFormat::Json, 0, metrics.clone());
    let mut head = Vec::with_capacity(512);

    let mut g = c.benchmark_group("hit_path");
    g.bench_function("parse", |b| {
        b.iter(|| match parse_request(black_box(REQUEST), &limits) {
            Ok(Parsed::Complete(h)) => black_box(h.head_len),
            _ => unreachable!(),
        })
    });
    g.bench_function("key_and_policy", |b| {
        b.iter(|| {
            let k = object_key(black_box("/charts/nginx-ingress-4.11.3.tgz")).expect("key");
            black_box(policy.decide(&k).headers.len())
        })
    });
    g.bench_function("lookup_verify", |b| {
        b.iter(|| {
            let hit = reader.lookup(black_box(key)).expect("hit");
            black_box(hit.verify());
            black_box(hit.body_len)
        })
    });
    g.bench_function("render", |b| {
        b.iter(|| {
            head.clear();
            render(
                &ResponseHead {
                    status: 200,
                    content_length: Some(100_000),
                    content_type: Some("application/gzip"),
                    etag: meta.etag.as_deref(),
                    last_modified: meta.last_modified.as_deref(),
                    cache_control: None,
                    x_cache: Some("HIT"),
                    content_range: None,
                    allow: None,
                    chunked: false,
                    keep_alive: true,
                    extra: &[("Cache-Control", "max-age=86400")],
                },
                &mut head,
            );
            black_box(head.len())
        })
    });
    g.bench_function("cpu", |b| {
        b.iter(|| {
            let Ok(Parsed::Complete(req)) = parse_request(black_box(REQUEST), &limits) else {
                unreachable!()
            };
            let k = object_key(&req.target).expect("key");
            let rule = policy.decide(&k);
            let hit = reader.lookup(&k).expect("hit");
            assert!(hit.verify());
            let extra: Vec<(&str, &str)> = rule
                .headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            head.clear();
            render(
                &ResponseHead {
                    status: 200,
                    content_length: Some(hit.body_len as u64),
                    content_type: Some("application/gzip"),
                    etag: hit.meta.etag.as_deref(),
                    last_modified: hit.meta.last_modified.as_deref(),
                    cache_control: None,
                    x_cache: Some("HIT"),
                    content_range: None,
                    allow: None,
                    chunked: false,
                    keep_alive: true,
                    extra: &extra,
                },
                &mut head,
            );
            metrics.request(CacheResult::Hit, 200, hit.body_len as u64);
            log.log(&Entry {
                repo: None,
                method: &req.method_name,
                path: &k,
                status: 200,
                bytes: hit.body_len as u64,
                duration: Duration::from_micros(30),
                cache: CacheResult::Hit,
                upstream_status: None,
                peer: None,
                user_agent: req.user_agent.as_deref(),
            });
            black_box(head.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

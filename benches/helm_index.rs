//! Index processing on a generated 15,000-version index (~14 MB, shaped like
//! Bitnami's; `chartcache::helm::synthetic`): what the index processor thread
//! spends per upstream index version.
//!
//! - `helm_index/extract`: one saphyr-parser pass, digests only.
//! - `helm_index/extract_and_json`: the same pass also writing the JSON form
//!   (what a republish costs).
//! - `helm_index/rewrite`: helm-s3 `s3://` URL rewriting of every version.
//! - `helm_index/process`: the whole pipeline (rewrite, then extract + JSON +
//!   per-chart views).
//! - `helm_index/views`: the per-chart views from the JSON form (part of
//!   `process`), with every chart's versions in Helm's order for `?versions=N`.
//! - `helm_index/gzip_json`, `gzip_yaml`, `gzip_views`: compressing the JSON form,
//!   the YAML, the views (each view its own member) — done after they are served.

use bytes::Bytes;
use chartcache::helm::index::Extractor;
use chartcache::helm::json::JsonWriter;
use chartcache::helm::process::{gzip, gzip_pieces, process, Job};
use chartcache::helm::rewrite::Rules;
use chartcache::helm::view;
use chartcache::helm::walk::walk;
use chartcache::helm::{rewrite_s3_urls, synthetic};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const VERSIONS: usize = 15_000;
const FROM: &str = "s3://bench-bucket/charts/";

fn bench(c: &mut Criterion) {
    let relative = synthetic::index(VERSIONS, "");
    let helm_s3 = synthetic::index(VERSIONS, FROM);
    let mut g = c.benchmark_group("helm_index");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(relative.len() as u64));
    g.bench_function("extract", |b| {
        b.iter(|| {
            let mut x = Extractor::default();
            walk(&relative, &mut [&mut x]).unwrap();
            x.finish().unwrap()
        })
    });
    g.bench_function("extract_and_json", |b| {
        b.iter(|| {
            let mut x = Extractor::default();
            let mut w = JsonWriter::new(relative.len());
            walk(&relative, &mut [&mut x, &mut w]).unwrap();
            (x.finish().unwrap(), w.finish().unwrap())
        })
    });
    g.bench_function("rewrite", |b| {
        b.iter(|| rewrite_s3_urls(helm_s3.as_bytes(), FROM).unwrap())
    });
    let raw = Bytes::from(helm_s3.clone());
    let rules = Rules::new(Some(FROM.into()), vec![]);
    g.bench_function("process", |b| {
        b.iter(|| {
            let job = Job {
                rewrite: true,
                json: true,
            };
            let p = process(raw.clone(), &rules, job);
            assert!(p.summary.is_ok() && p.json.is_ok());
            p
        })
    });
    let p = process(
        Bytes::from(relative.clone()),
        &Rules::default(),
        Job {
            rewrite: false,
            json: true,
        },
    );
    let json = p.json.unwrap();
    let views = p.views.unwrap();
    let form = {
        let mut w = JsonWriter::new(relative.len());
        walk(&relative, &mut [&mut w]).unwrap();
        w.finish().unwrap()
    };
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("views", |b| b.iter(|| view::build(&form)));
    g.bench_function("gzip_json", |b| b.iter(|| gzip(&json)));
    g.throughput(Throughput::Bytes(relative.len() as u64));
    g.bench_function("gzip_yaml", |b| b.iter(|| gzip(relative.as_bytes())));
    g.throughput(Throughput::Bytes(views.body.len() as u64));
    g.bench_function("gzip_views", |b| {
        b.iter(|| gzip_pieces(&views.body, &views.plain))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Criterion benchmarks for the HTTP/1.1 codec's hot path: parsing a typical
//! Helm request head, turning its target into an object key, and rendering a
//! cache-hit response head.

use std::hint::black_box;

use chartcache::http1::path::object_key;
use chartcache::http1::render::{render, ResponseHead};
use chartcache::http1::request::{parse_request, Limits, Parsed};
use criterion::{criterion_group, criterion_main, Criterion};

const HELM_REQUEST: &[u8] = b"GET /charts/nginx-1.2.3.tgz HTTP/1.1\r\n\
Host: charts.example.com\r\n\
User-Agent: Helm/4.3\r\n\
Accept-Encoding: gzip\r\n\
\r\n";

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    assert!(matches!(
        parse_request(HELM_REQUEST, &limits),
        Ok(Parsed::Complete(_))
    ));
    c.bench_function("http1/parse_request", |b| {
        b.iter(|| parse_request(black_box(HELM_REQUEST), black_box(&limits)))
    });
}

fn key(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1/object_key");
    g.bench_function("plain", |b| {
        b.iter(|| object_key(black_box("/charts/nginx-1.2.3.tgz")))
    });
    g.bench_function("escaped", |b| {
        b.iter(|| object_key(black_box("/charts/nginx%2B1.2.3%20x.tgz?x=1")))
    });
    g.finish();
}

fn render_head(c: &mut Criterion) {
    let mut out = Vec::with_capacity(512);
    c.bench_function("http1/render_head", |b| {
        b.iter(|| {
            out.clear();
            let head = ResponseHead {
                content_length: Some(black_box(105_123)),
                content_type: Some("application/gzip"),
                etag: Some("\"0123456789abcdef0123456789abcdef\""),
                last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                cache_control: Some("public, max-age=300"),
                x_cache: Some("HIT"),
                ..ResponseHead::new(200)
            };
            render(black_box(&head), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, parse, key, render_head);
criterion_main!(benches);

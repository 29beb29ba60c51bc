//! Criterion benches of the cache shard engine (`src/cache`): index lookups, record
//! encode/decode, a 64 KiB fill, and startup of a 10k-object shard.
//!
//! Groups: `index/lookup_hit`, `index/lookup_miss`, `format/encode`, `format/decode`,
//! `store/commit_64k`, `recover/open_10k`. Run: `cargo bench --bench cache`.

use std::hint::black_box;
use std::path::Path;

use chartcache::cache::format::{self, RecordHeader, RecordKind, HEADER_LEN};
use chartcache::cache::store::{ShardStore, StoreConfig};
use chartcache::cache::ObjectMeta;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn meta() -> ObjectMeta {
    ObjectMeta {
        status: 200,
        etag: Some("\"9b2cf535f27731c974343645a3985328\"".into()),
        last_modified: Some("Tue, 01 Jul 2025 10:00:00 GMT".into()),
        content_type: Some("application/gzip".into()),
        stored_at: 1_750_000_000,
    }
}

fn open(dir: &Path, capacity: u64, segment: u64) -> ShardStore {
    let cfg = StoreConfig {
        dir: dir.to_path_buf(),
        shard: 0,
        capacity,
        max_object: None,
    };
    ShardStore::open_with_segment_size(cfg, segment).expect("open shard")
}

fn key(i: usize) -> String {
    format!("/charts/some-application-chart-{i}.1.{}.tgz", i % 17)
}

/// A shard with `n` objects of `len` bytes.
fn fill(store: &mut ShardStore, n: usize, len: usize) {
    let body = vec![0x5au8; len];
    for i in 0..n {
        let mut rec = store.begin(&key(i), &meta(), len as u64).expect("begin");
        store.append(&mut rec, &body).expect("append");
        store.commit(rec).expect("commit");
    }
}

fn index(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), 64 << 20, 8 << 20);
    fill(&mut store, 10_000, 512);
    let reader = store.reader();
    let keys: Vec<String> = (0..10_000).map(key).collect();
    let misses: Vec<String> = (0..10_000)
        .map(|i| format!("/charts/absent-{i}.tgz"))
        .collect();
    let mut g = c.benchmark_group("index");
    let mut i = 0usize;
    g.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let hit = reader.lookup(black_box(&keys[i])).expect("hit");
            black_box(hit.body_len)
        })
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = (i + 7919) % misses.len();
            black_box(reader.lookup(black_box(&misses[i])).is_none())
        })
    });
    g.finish();
}

fn formats(c: &mut Criterion) {
    let key = key(42);
    let mut meta_bytes = Vec::new();
    format::encode_meta(&meta(), &mut meta_bytes).expect("meta");
    let header = RecordHeader {
        kind: RecordKind::Object,
        key_len: key.len() as u16,
        meta_len: meta_bytes.len() as u16,
        body_crc: 0x1234_5678,
        body_len: 4096,
        seq: 99,
    };
    let mut seg = header.encode(key.as_bytes(), &meta_bytes).to_vec();
    seg.extend_from_slice(key.as_bytes());
    seg.extend_from_slice(&meta_bytes);
    seg.resize(HEADER_LEN + key.len() + meta_bytes.len() + 4096, 0);
    let mut g = c.benchmark_group("format");
    g.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            format::encode_meta(black_box(&meta()), &mut out).expect("meta");
            let h = header.encode(black_box(key.as_bytes()), &out);
            black_box(h)
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            let v = format::read_record(black_box(&seg), 0).expect("record");
            black_box(v.header.body_len)
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), 256 << 20, 32 << 20);
    let body = vec![0xa5u8; 64 * 1024];
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(body.len() as u64));
    let mut i = 0usize;
    g.bench_function("commit_64k", |b| {
        b.iter(|| {
            i += 1;
            let mut rec = store
                .begin(&key(i % 5000), &meta(), body.len() as u64)
                .expect("begin");
            for chunk in body.chunks(16 * 1024) {
                store.append(&mut rec, chunk).expect("append");
            }
            store.commit(rec).expect("commit");
        })
    });
    g.finish();
}

fn recover(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open(dir.path(), 256 << 20, 8 << 20);
        fill(&mut store, 10_000, 1024);
        store.checkpoint().expect("checkpoint");
    }
    let mut g = c.benchmark_group("recover");
    g.sample_size(20);
    g.bench_function("open_10k", |b| {
        b.iter(|| {
            let s = open(dir.path(), 256 << 20, 8 << 20);
            black_box(s.stats().objects)
        })
    });
    g.finish();
}

criterion_group!(benches, index, formats, store, recover);
criterion_main!(benches);

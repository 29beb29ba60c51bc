//! SigV4 signing cost per upstream miss: `sigv4/sign_get` signs one S3 GET
//! (unsigned payload, path-style key) and `sigv4/sign_get_conditional` adds
//! `If-None-Match` and a session token, as a revalidation does.

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use chartcache::origin::sigv4::{encode_key_path, sign_request, RequestToSign};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench_sign(c: &mut Criterion) {
    let creds = Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "bench",
    );
    let with_token = Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        Some("FwoGZXIvYXdzEJr//////////wEaDEXAMPLETOKEN".into()),
        None,
        "bench",
    );
    let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let path = encode_key_path("/charts/stable/nginx-ingress-4.10.1.tgz");

    let mut group = c.benchmark_group("sigv4");
    group.bench_function("sign_get", |b| {
        b.iter(|| {
            sign_request(
                black_box(&creds),
                "us-east-1",
                &RequestToSign::get(true, "charts.s3.us-east-1.amazonaws.com", black_box(&path)),
                black_box(time),
            )
            .unwrap()
        })
    });
    group.bench_function("sign_get_conditional", |b| {
        b.iter(|| {
            sign_request(
                black_box(&with_token),
                "us-east-1",
                &RequestToSign {
                    if_none_match: Some("\"9b2cf535f27731c974343645a3985328\""),
                    ..RequestToSign::get(
                        true,
                        "charts.s3.us-east-1.amazonaws.com",
                        black_box(&path),
                    )
                },
                black_box(time),
            )
            .unwrap()
        })
    });
    group.bench_function("encode_key_path", |b| {
        b.iter(|| encode_key_path(black_box("/charts/stable/my chart+1.0.0.tgz")))
    });
    group.finish();
}

criterion_group!(benches, bench_sign);
criterion_main!(benches);

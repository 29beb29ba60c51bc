//! A generated Helm index shaped like a big public repository (Bitnami's had
//! ~15,000 versions in 14 MB): for benches and tests, not for serving.
//!
//! Each version carries what real indexes carry — annotations with a multi-line
//! literal block, dependencies, maintainers, keywords, sources, a sha256 digest
//! and one URL — about 950 bytes of YAML, so `index(15_000, …)` is ~14 MB.

use std::fmt::Write;

/// An index of `versions` chart versions spread over `versions / 50` charts (at
/// least one), each URL written as `{url_prefix}{chart}-{version}.tgz`. Digests are
/// derived from the chart and version, so they are stable across calls.
pub fn index(versions: usize, url_prefix: &str) -> String {
    let charts = (versions / 50).max(1);
    let mut out = String::with_capacity(versions * 1000 + 100);
    out.push_str("apiVersion: v1\nentries:\n");
    for c in 0..charts {
        let name = format!("chart{c:04}");
        let _ = writeln!(out, "  {name}:");
        let n = versions / charts + usize::from(c < versions % charts);
        for v in (0..n).rev() {
            let version = format!("{}.{}.{}", v / 100, (v / 10) % 10, v % 10);
            version_entry(&mut out, &name, &version, url_prefix);
        }
    }
    out.push_str("generated: \"2026-11-30T12:00:00.000000000Z\"\n");
    out
}

/// The sha256 digest `index` writes for one chart version (hex).
pub fn digest(name: &str, version: &str) -> String {
    let seed = crc32fast::hash(format!("{name}-{version}").as_bytes());
    (0..8)
        .map(|i| {
            format!(
                "{:08x}",
                seed.rotate_left(i * 4) ^ i.wrapping_mul(0x9e37_79b9)
            )
        })
        .collect()
}

fn version_entry(out: &mut String, name: &str, version: &str, url_prefix: &str) {
    let d = digest(name, version);
    let _ = write!(
        out,
        r#"  - annotations:
      category: Infrastructure
      images: |
        - name: {name}
          image: docker.io/example/{name}:{version}-debian-12-r0
      licenses: Apache-2.0
    apiVersion: v2
    appVersion: {version}
    created: "2026-11-30T12:00:00.000000000Z"
    dependencies:
    - name: common
      repository: oci://registry-1.docker.io/examplecharts
      version: 2.x.x
    description: {name} is a generated chart of a big repository.
    digest: {d}
    home: https://example.com/charts/{name}
    icon: https://example.com/assets/{name}.png
    keywords:
    - {name}
    - database
    - infrastructure
    maintainers:
    - name: Example Charts
      url: https://github.com/example/charts
    name: {name}
    sources:
    - https://github.com/example/charts/tree/main/example/{name}
    urls:
    - {url_prefix}{name}-{version}.tgz
    version: {version}
"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_index_is_a_helm_index_of_the_asked_size() {
        let y = index(200, "s3://bucket/charts/");
        let d = super::super::parse_digests(y.as_bytes()).unwrap();
        assert!(d.is_empty(), "absolute s3:// URLs name no object key");
        let rewritten = super::super::rewrite_s3_urls(y.as_bytes(), "s3://bucket/charts/").unwrap();
        let d = super::super::parse_digests(&rewritten).unwrap();
        assert_eq!(d.len(), 200);
        assert_eq!(
            super::super::hex(&d["/chart0001-0.0.7.tgz"]),
            digest("chart0001", "0.0.7")
        );
        assert!(
            (800..1100).contains(&(y.len() / 200)),
            "{} bytes a version",
            y.len() / 200
        );
    }
}

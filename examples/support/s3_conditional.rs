//! S3's `If-None-Match` → 304 on top of s3s-fs (which does not implement
//! it), shared by the benchmark server (`examples/s3_server.rs`) and the test
//! fixture (`tests/common/mod.rs`) through `#[path]`.

/// S3 answers `If-None-Match: <current ETag>` with 304 (what chartcache's
/// index revalidation relies on); s3s-fs does not, so it is done here after
/// the real (signature-checked) GET.
pub fn not_modified_if_matching(
    resp: http::Response<s3s::Body>,
    if_none_match: Option<String>,
) -> http::Response<s3s::Body> {
    let (Some(inm), true) = (if_none_match, resp.status() == http::StatusCode::OK) else {
        return resp;
    };
    let Some(etag) = resp.headers().get(http::header::ETAG).cloned() else {
        return resp;
    };
    let matches = inm
        .split(',')
        .any(|t| t.trim() == "*" || t.trim().as_bytes() == etag.as_bytes());
    if !matches {
        return resp;
    }
    let mut out = http::Response::builder().status(http::StatusCode::NOT_MODIFIED);
    for name in [http::header::ETAG, http::header::LAST_MODIFIED] {
        if let Some(v) = resp.headers().get(&name) {
            out = out.header(name, v.clone());
        }
    }
    out.body(s3s::Body::empty()).unwrap_or_default()
}

//! SigV4 signing of the GET/HEAD requests chartcache sends to S3.
//!
//! Owns: S3 object-key URI encoding ([`encode_key_path`]) and turning
//! (credentials, region, method, authority, path, conditional headers) into the
//! exact header list to send ([`sign_request`]), using the `aws-sigv4` crate with
//! S3 settings: service `s3`, `UNSIGNED-PAYLOAD`, single percent-encoding, no
//! path normalisation, session token signed when present.
//!
//! Invariants:
//! - the `Host` header returned (and sent) is the value that was signed; it is
//!   the URL authority, without the port when it is the scheme default;
//! - only headers chartcache itself sets are signed and sent: `host`,
//!   `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token`,
//!   `if-none-match`, `if-modified-since` (+ `authorization`); nothing a client
//!   sent ever reaches this function;
//! - the path is encoded once here and sent byte-for-byte as signed.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use super::{Error, Method};

/// Bytes S3 requires encoded in a key: everything but `A-Za-z0-9-._~` and `/`.
const S3_KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The signing service name for S3.
const SERVICE: &str = "s3";

/// URI-encode an object key path (`/bucket/a b+c.tgz` → `/bucket/a%20b%2Bc.tgz`).
pub fn encode_key_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, S3_KEY).to_string()
}

/// What is signed: one GET/HEAD to `authority` + `path`, with optional
/// conditional headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestToSign<'a> {
    pub method: Method,
    /// `https` (true) or `http`.
    pub tls: bool,
    /// `host[:port]` exactly as sent in `Host` (default ports omitted).
    pub authority: &'a str,
    /// Already encoded (see [`encode_key_path`]); sent byte-for-byte.
    pub path: &'a str,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
}

impl<'a> RequestToSign<'a> {
    /// A GET without conditions.
    pub fn get(tls: bool, authority: &'a str, path: &'a str) -> Self {
        Self {
            method: Method::Get,
            tls,
            authority,
            path,
            if_none_match: None,
            if_modified_since: None,
        }
    }
}

/// Sign a request. Returns every header to send, `host` first.
pub fn sign_request(
    creds: &Credentials,
    region: &str,
    req: &RequestToSign<'_>,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, Error> {
    let mut extra: Vec<(&'static str, &str)> = Vec::with_capacity(2);
    if let Some(v) = req.if_none_match {
        extra.push(("if-none-match", v));
    }
    if let Some(v) = req.if_modified_since {
        extra.push(("if-modified-since", v));
    }
    sign_with(
        creds,
        region,
        method_str(req.method),
        req.tls,
        req.authority,
        req.path,
        &extra,
        SignableBody::UnsignedPayload,
        time,
    )
}

fn method_str(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
    }
}

/// The signing core, shared with the golden-vector tests (which sign AWS's
/// documented header set, including `range` and an empty-payload hash).
#[allow(clippy::too_many_arguments)]
fn sign_with(
    creds: &Credentials,
    region: &str,
    method: &str,
    tls: bool,
    authority: &str,
    path: &str,
    extra: &[(&'static str, &str)],
    body: SignableBody<'_>,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, Error> {
    if authority.is_empty() || !path.starts_with('/') {
        return Err(Error::Signing(format!(
            "cannot sign authority {authority:?} path {path:?}"
        )));
    }
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{authority}{path}");

    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;

    let identity = Identity::new(creds.clone(), creds.expiry());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::Signing(e.to_string()))?
        .into();

    // Host is passed explicitly so the signed value is exactly the one sent.
    let mut to_sign: Vec<(&str, &str)> = Vec::with_capacity(extra.len() + 1);
    to_sign.push(("host", authority));
    to_sign.extend(extra.iter().copied());

    let signable = SignableRequest::new(method, url.as_str(), to_sign.iter().copied(), body)
        .map_err(|e| Error::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| Error::Signing(e.to_string()))?
        .into_parts();
    let (signed_headers, _params) = instructions.into_parts();

    let mut out: Vec<(&'static str, String)> = Vec::with_capacity(signed_headers.len() + 3);
    out.push(("host", authority.to_owned()));
    for (name, value) in extra {
        out.push((name, (*value).to_owned()));
    }
    for h in signed_headers {
        out.push((h.name(), h.value().to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::time::{Duration, UNIX_EPOCH};

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    /// 20130524T000000Z
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(AK, SK, token.map(str::to_owned), None, "test")
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    fn signature(h: &[(&'static str, String)]) -> String {
        let auth = header(h, "authorization").unwrap();
        auth.rsplit("Signature=").next().unwrap().to_owned()
    }

    /// AWS's documented S3 example "GET Object" (signed headers host;range;
    /// x-amz-content-sha256;x-amz-date, empty-payload hash).
    #[test]
    fn aws_documented_get_object_vector() {
        let h = sign_with(
            &creds(None),
            "us-east-1",
            "GET",
            true,
            HOST,
            "/test.txt",
            &[("range", "bytes=0-9")],
            SignableBody::Bytes(&[]),
            example_time(),
        )
        .unwrap();
        assert_eq!(
            header(&h, "authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(header(&h, "x-amz-date"), Some("20130524T000000Z"));
        assert_eq!(
            header(&h, "x-amz-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    // --- an independent, from-scratch SigV4 (HMAC over sha2) for the unsigned variant ---

    fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(k.map(|b| b ^ 0x36));
        inner.update(msg);
        let mut outer = Sha256::new();
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().to_vec()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Reference signature for a GET with the given sorted (name, value) headers.
    fn reference_signature(path: &str, headers: &[(&str, &str)]) -> String {
        let canon_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let creq = format!(
            "GET\n{path}\n\n{canon_headers}\n{}\nUNSIGNED-PAYLOAD",
            signed.join(";")
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{}",
            hex(&Sha256::digest(creq.as_bytes()))
        );
        let k = hmac(format!("AWS4{SK}").as_bytes(), b"20130524");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"s3");
        let k = hmac(&k, b"aws4_request");
        hex(&hmac(&k, sts.as_bytes()))
    }

    #[test]
    fn reference_hmac_reproduces_aws_vector() {
        // Sanity-check the reference implementation itself against AWS's number.
        let creq = format!(
            "GET\n/test.txt\n\nhost:{HOST}\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{}",
            hex(&Sha256::digest(creq.as_bytes()))
        );
        let k = hmac(format!("AWS4{SK}").as_bytes(), b"20130524");
        let k = hmac(&hmac(&hmac(&k, b"us-east-1"), b"s3"), b"aws4_request");
        assert_eq!(
            hex(&hmac(&k, sts.as_bytes())),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn unsigned_payload_get_matches_reference() {
        let h = sign_request(
            &creds(None),
            "us-east-1",
            &RequestToSign::get(true, HOST, "/test.txt"),
            example_time(),
        )
        .unwrap();
        let names: Vec<&str> = h.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "host",
                "x-amz-date",
                "authorization",
                "x-amz-content-sha256"
            ]
        );
        assert_eq!(header(&h, "host"), Some(HOST));
        assert_eq!(header(&h, "x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert!(header(&h, "authorization")
            .unwrap()
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
        let expected = reference_signature(
            "/test.txt",
            &[
                ("host", HOST),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                ("x-amz-date", "20130524T000000Z"),
            ],
        );
        assert_eq!(signature(&h), expected);
    }

    #[test]
    fn conditional_and_token_headers_are_signed() {
        let etag = "\"9b2cf535f27731c974343645a3985328\"";
        let h = sign_request(
            &creds(Some("SESSIONTOKEN")),
            "us-east-1",
            &RequestToSign {
                if_none_match: Some(etag),
                if_modified_since: Some("Fri, 24 May 2013 00:00:00 GMT"),
                ..RequestToSign::get(false, "127.0.0.1:9000", "/bucket/a%20b.tgz")
            },
            example_time(),
        )
        .unwrap();
        assert_eq!(header(&h, "host"), Some("127.0.0.1:9000"));
        assert_eq!(header(&h, "x-amz-security-token"), Some("SESSIONTOKEN"));
        assert_eq!(header(&h, "if-none-match"), Some(etag));
        let auth = header(&h, "authorization").unwrap();
        assert!(
            auth.contains(
                "SignedHeaders=host;if-modified-since;if-none-match;\
                 x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            ),
            "{auth}"
        );
        let expected = reference_signature(
            "/bucket/a%20b.tgz",
            &[
                ("host", "127.0.0.1:9000"),
                ("if-modified-since", "Fri, 24 May 2013 00:00:00 GMT"),
                ("if-none-match", etag),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-security-token", "SESSIONTOKEN"),
            ],
        );
        assert_eq!(signature(&h), expected);
    }

    #[test]
    fn head_signs_differently_from_get() {
        let sig = |m| {
            signature(
                &sign_request(
                    &creds(None),
                    "us-east-1",
                    &RequestToSign {
                        method: m,
                        ..RequestToSign::get(true, HOST, "/x")
                    },
                    example_time(),
                )
                .unwrap(),
            )
        };
        assert_ne!(sig(Method::Get), sig(Method::Head));
    }

    #[test]
    fn key_encoding_follows_s3_rules() {
        assert_eq!(
            encode_key_path("/charts/nginx-1.2.3.tgz"),
            "/charts/nginx-1.2.3.tgz"
        );
        assert_eq!(encode_key_path("/a b+c=d&e~f_g"), "/a%20b%2Bc%3Dd%26e~f_g");
        assert_eq!(encode_key_path("/caf\u{e9}:x@y"), "/caf%C3%A9%3Ax%40y");
        assert_eq!(encode_key_path("/100%"), "/100%25");
        assert_eq!(encode_key_path("/a//b/"), "/a//b/");
    }

    #[test]
    fn signed_path_is_used_verbatim() {
        // A path with `//` and `%2B` is not normalised or re-encoded by the signer.
        let path = encode_key_path("/bucket/a//b+c.tgz");
        let h = sign_request(
            &creds(None),
            "us-east-1",
            &RequestToSign::get(true, HOST, &path),
            example_time(),
        )
        .unwrap();
        let expected = reference_signature(
            "/bucket/a//b%2Bc.tgz",
            &[
                ("host", HOST),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                ("x-amz-date", "20130524T000000Z"),
            ],
        );
        assert_eq!(signature(&h), expected);
    }

    #[test]
    fn rejects_unsignable_input() {
        let r = sign_request(
            &creds(None),
            "us-east-1",
            &RequestToSign::get(true, "", "/x"),
            example_time(),
        );
        assert!(matches!(r, Err(Error::Signing(_))));
    }
}

//! S3 error responses: the `x-amz-*` headers chartcache reads and the `<Code>`
//! of S3's XML error document.
//!
//! Owns: [`KEPT_HEADERS`] (the S3 headers an origin asks the response parser
//! to keep), the [`crate::origin::response`] hooks [`error_code`] (the S3
//! origin) and [`hints_only`] (the HTTP(S) origin, which may front S3), and
//! [`xml_error_code`].
//! Does not own: the status rules ([`crate::origin::response`]), parsing and the
//! header value rules ([`crate::http1::response`]), retry decisions
//! ([`crate::origin::retry`] reads the code, e.g. `SlowDown`).
//!
//! Invariants:
//! - the code from the XML document wins over `x-amz-error-code` (which S3
//!   sends on error responses without a body, such as HEAD);
//! - a code is 1–64 ASCII alphanumerics or `.`; anything else is no code;
//! - the `x-amz-*` values were checked by the parser like every kept header
//!   (visible ASCII, differing duplicates rejected, so such a response is a
//!   protocol error, answered 502).

use crate::http1::response::ResponseHead;

/// `x-amz-error-code`: S3's error code on responses without an XML body.
pub const ERROR_CODE: &str = "x-amz-error-code";
/// `x-amz-request-id`: S3's id for the request (what AWS support asks for).
pub const REQUEST_ID: &str = "x-amz-request-id";
/// `x-amz-bucket-region`: hint on a wrong-region redirect or 403.
pub const BUCKET_REGION: &str = "x-amz-bucket-region";
/// The response headers the S3 origin keeps
/// ([`crate::origin::client::HttpClient::keeping_headers`]).
pub const KEPT_HEADERS: &[&str] = &[ERROR_CODE, REQUEST_ID, BUCKET_REGION];

/// The S3 error code of an error response (from the capped XML document `doc`,
/// else from `x-amz-error-code`); warns when S3 names the bucket's region.
pub fn error_code(head: &ResponseHead, doc: Option<&[u8]>) -> Option<String> {
    let code = doc
        .and_then(xml_error_code)
        .or_else(|| head.kept.get(ERROR_CODE).map(str::to_owned));
    warn_bucket_region(head);
    code
}

/// For an upstream that may be S3 without being addressed as S3 (the HTTP(S)
/// origin): warns when S3 names the bucket's region, reads no error code.
pub fn hints_only(head: &ResponseHead, _doc: Option<&[u8]>) -> Option<String> {
    warn_bucket_region(head);
    None
}

fn warn_bucket_region(head: &ResponseHead) {
    if let Some(region) = head.kept.get(BUCKET_REGION) {
        tracing::warn!(status = head.status, bucket_region = %region, "upstream error names the bucket's region");
    }
}

/// The `<Code>` of an S3 XML error document, if it is a plausible code.
pub fn xml_error_code(doc: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(doc).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = text[start..start + len].trim();
    (!code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
    .then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::response::{parse_response_keeping, BodyFraming, ResponseError};

    fn parse(raw: &[u8]) -> Result<ResponseHead, ResponseError> {
        parse_response_keeping(raw, KEPT_HEADERS).map(|r| r.expect("complete head").0)
    }

    #[test]
    fn xml_error_code_parsing() {
        let doc = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error>";
        assert_eq!(
            xml_error_code(doc).as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(xml_error_code(b"<Error><Code></Code></Error>"), None);
        assert_eq!(xml_error_code(b"<Error><Code>a<b></Code></Error>"), None);
        assert_eq!(xml_error_code(b"<Error><Code>NoEnd"), None);
        assert_eq!(xml_error_code(b"\xff\xfe"), None);
    }

    #[test]
    fn parses_s3_style_head() {
        let raw = b"HTTP/1.1 200 OK\r\nx-amz-request-id: ABC123\r\nETag: \"9a0364b9e99bb480dd25e1f0284c8555\"\r\nLast-Modified: Fri, 24 May 2013 00:00:00 GMT\r\nContent-Type: application/gzip\r\nContent-Length: 12\r\nServer: AmazonS3\r\n\r\nhello world!";
        let (head, n) = parse_response_keeping(raw, KEPT_HEADERS)
            .unwrap()
            .expect("complete head");
        assert_eq!(&raw[n..], b"hello world!");
        assert_eq!(head.status, 200);
        assert_eq!(
            head.etag.as_deref(),
            Some("\"9a0364b9e99bb480dd25e1f0284c8555\"")
        );
        assert_eq!(head.content_length, Some(12));
        assert_eq!(head.kept.get(REQUEST_ID), Some("ABC123"));
        assert_eq!(head.framing(false), BodyFraming::Length(12));
    }

    #[test]
    fn amz_hints() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nx-amz-error-code: AccessDenied\r\nx-amz-bucket-region: eu-west-1\r\nContent-Length: 0\r\n\r\n";
        let head = parse(raw).unwrap();
        assert_eq!(head.status, 403);
        assert_eq!(head.kept.get(ERROR_CODE), Some("AccessDenied"));
        assert_eq!(head.kept.get(BUCKET_REGION), Some("eu-west-1"));
    }

    #[test]
    fn amz_headers_follow_the_kept_header_rules() {
        let cases: [(&[u8], ResponseError); 3] = [
            (
                b"HTTP/1.1 403 Forbidden\r\nx-amz-error-code: AccessDenied\r\nX-Amz-Error-Code: SlowDown\r\nContent-Length: 0\r\n\r\n",
                ResponseError::DuplicateHeader("x-amz-error-code"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nx-amz-request-id: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
                ResponseError::BadHeaderValue("x-amz-request-id"),
            ),
            (
                b"HTTP/1.1 301 Moved\r\nx-amz-bucket-region: eu-west-1\r\nx-amz-bucket-region: us-east-1\r\nContent-Length: 0\r\n\r\n",
                ResponseError::DuplicateHeader("x-amz-bucket-region"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn error_code_prefers_the_xml_document_then_the_header() {
        let with_header = parse(
            b"HTTP/1.1 403 Forbidden\r\nx-amz-error-code: AccessDenied\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let doc = b"<Error><Code>SlowDown</Code></Error>";
        assert_eq!(
            error_code(&with_header, Some(doc)).as_deref(),
            Some("SlowDown")
        );
        assert_eq!(
            error_code(&with_header, None).as_deref(),
            Some("AccessDenied")
        );
        assert_eq!(
            error_code(&with_header, Some(b"not xml")).as_deref(),
            Some("AccessDenied")
        );
        let bare = parse(b"HTTP/1.1 500 Internal\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(error_code(&bare, Some(b"")), None);
        assert_eq!(error_code(&bare, None), None);
        // The HTTP(S) origin's hook reads no code at all.
        assert_eq!(hints_only(&with_header, Some(doc)), None);
    }
}

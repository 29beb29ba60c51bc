//! Upstream HTTP response → [`OriginResponse`], the same way for every HTTP origin.
//!
//! Owns: the status rules shared by the S3 and HTTP(S) origins ([`map_response`])
//! and the cap on error documents ([`MAX_ERROR_BODY`]).
//! Does not own: connections and head parsing ([`super::client`]); what an
//! error response says beyond its status — each origin passes an [`ErrorCode`]
//! hook (the S3 ones, reading the XML `<Code>` and `x-amz-*` headers, are in
//! [`super::s3::error_response`]).
//!
//! Invariants:
//! - 200, and 304 to a conditional request, pass with their head fields and
//!   streaming body;
//! - answers a plain GET/HEAD never gets — 206 (chartcache sends no `Range`),
//!   a 304 to an unconditional request — are [`Error::UnexpectedStatus`]: never
//!   passed on with a head that would lie about the body, their body is not
//!   read and their connection is closed (a 1xx other than `100 Continue`
//!   already fails in [`super::client`]);
//! - 404 becomes `Ok` with status 404, no length or type and an empty body; the
//!   error document is drained (capped) only so the connection can be reused;
//! - every other status (3xx included: 502, with S3's code such as
//!   `PermanentRedirect`) is [`Error::Status`]; its document is read up to
//!   [`MAX_ERROR_BODY`] (a larger one is not read and closes the connection)
//!   and handed to the hook, which decides the `code` — unless an upstream
//!   chartcache says it already retried ([`UPSTREAM_RETRIED`]);
//! - an upstream cache's `Age` and `Cache-Status` (kept only by origins that ask
//!   for [`CACHE_HEADERS`]) become [`ResponseMeta::age`] and
//!   [`ResponseMeta::upstream_stale`].

use super::client::{ClientResponse, HttpClient};
use super::{EmptyBody, Error, Method, OriginResponse, ResponseMeta};
use crate::http1::cache_status;
use crate::http1::response::ResponseHead;

/// Response headers an origin keeps (see [`HttpClient::keeping_headers`]) so an
/// upstream cache (a fleet tier) is honoured: its `Age` and its `Cache-Status`.
pub const CACHE_HEADERS: [&str; 2] = ["age", "cache-status"];

/// The error code of an [`Error::Status`] whose answer came from an upstream
/// chartcache that had already applied its own retries (its `Cache-Status` says
/// `detail=retried`): never retried again ([`super::retry::is_retryable`]).
pub const UPSTREAM_RETRIED: &str = "chartcache-upstream-retried";

/// Error documents larger than this are not read (the connection is closed).
pub const MAX_ERROR_BODY: usize = 16 * 1024;

/// What an origin makes of an error response: its error code, from the head and
/// the error document (`None` when it was larger than [`MAX_ERROR_BODY`] or
/// could not be read). Called once, only for statuses that become
/// [`Error::Status`].
pub type ErrorCode = fn(&ResponseHead, Option<&[u8]>) -> Option<String>;

/// Send `method path` with `headers` on `client` and map the answer with
/// [`map_response`]: the whole exchange of one HTTP origin fetch.
/// `conditional`: `headers` carry `If-None-Match` / `If-Modified-Since`.
pub async fn fetch(
    client: &HttpClient,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    conditional: bool,
    error_code: ErrorCode,
) -> Result<OriginResponse, Error> {
    let resp = client.send(method, path, headers).await?;
    map_response(resp, conditional, error_code).await
}

/// Map an upstream response to an origin response (the rules are in the module
/// doc) for a request that was `conditional` or not; `error_code` names the
/// code of an [`Error::Status`].
pub async fn map_response(
    resp: ClientResponse,
    conditional: bool,
    error_code: ErrorCode,
) -> Result<OriginResponse, Error> {
    let ClientResponse { head, mut body } = resp;
    let upstream = head
        .kept
        .get(CACHE_HEADERS[1])
        .map(cache_status::Upstream::parse)
        .unwrap_or_default();
    let meta = ResponseMeta {
        status: head.status,
        etag: head.etag.clone(),
        last_modified: head.last_modified.clone(),
        content_type: head.content_type.clone(),
        content_length: head.content_length,
        // RFC 9111 §5.1: a non-negative integer; anything else is ignored.
        age: head
            .kept
            .get(CACHE_HEADERS[0])
            .and_then(|v| v.parse::<u64>().ok()),
        upstream_stale: upstream.stale,
    };
    match head.status {
        200 => Ok(OriginResponse {
            meta,
            body: Box::new(body),
        }),
        304 if conditional => Ok(OriginResponse {
            meta,
            body: Box::new(body),
        }),
        // Dropping the body unread closes the connection.
        206 | 304 => Err(Error::UnexpectedStatus(head.status)),
        404 => {
            // Drained only so the connection can be reused; failures just close it.
            let _ = body.read_to_end_capped(MAX_ERROR_BODY).await;
            Ok(OriginResponse {
                meta: ResponseMeta {
                    content_length: None,
                    content_type: None,
                    ..meta
                },
                body: Box::new(EmptyBody),
            })
        }
        status => {
            let doc = body.read_to_end_capped(MAX_ERROR_BODY).await.ok();
            let code = match upstream.retried {
                true => Some(UPSTREAM_RETRIED.to_owned()),
                false => error_code(&head, doc.as_deref()),
            };
            Err(Error::Status { status, code })
        }
    }
}

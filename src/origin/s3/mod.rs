//! The S3 origin: signed GET/HEAD of `PREFIX/KEY` in one bucket.
//!
//! Owns: addressing (virtual-hosted `BUCKET.s3.REGION.amazonaws.com` over TLS
//! for AWS; path style `/BUCKET/PREFIX/KEY` against `--s3-endpoint`), object-key
//! construction, and everything S3 says in a response beyond HTTP: the
//! `x-amz-*` headers and XML error codes ([`error_response`]).
//! Does not own: signing details ([`super::sigv4`]), connections and head
//! parsing ([`super::client`]), the status rules shared with the HTTP(S)
//! origin ([`super::response`]), credential refresh ([`super::credentials`]).
//!
//! Invariants: the object key is `prefix + key` (`prefix` empty → the key
//! without its leading `/`), URI-encoded once, and always names an object:
//! a key that is the root or a "directory" is refused before signing
//! ([`super::require_object_key`]), so no request is ever the bucket root
//! (ListObjects) or a sub-resource; a 200 without an `ETag` is not an S3
//! object (GetObject/HeadObject always carry one; a bucket listing does not)
//! and fails as a protocol error, so it is never cached; the request carries only the
//! headers [`super::sigv4::sign_request`] returns (signed) plus `User-Agent`;
//! credentials are read per request from the shared cell, so a refresh applies
//! to the next request on every worker.

pub mod error_response;

use std::sync::Arc;
use std::time::SystemTime;

use super::client::{ClientSettings, Endpoint, HttpClient};
use super::credentials::CredentialsCell;
use super::response;
use super::sigv4::{encode_key_path, sign_request, RequestToSign};
use super::{Error, LocalBoxFuture, Origin, OriginConfig, OriginRequest, OriginResponse};

/// One worker's S3 origin.
pub struct S3Origin {
    client: HttpClient,
    bucket: String,
    prefix: String,
    region: String,
    /// Path-style addressing (custom endpoint) puts the bucket in the path.
    path_style: bool,
    creds: Arc<CredentialsCell>,
}

impl S3Origin {
    /// `prefix` has no leading or trailing `/` (may be empty).
    pub fn new(
        cfg: &OriginConfig,
        bucket: &str,
        prefix: &str,
        creds: Arc<CredentialsCell>,
    ) -> Result<Self, Error> {
        if bucket.is_empty() || bucket.contains('/') {
            return Err(Error::Config(format!("invalid bucket name {bucket:?}")));
        }
        let (endpoint, path_style) = match &cfg.s3_endpoint {
            Some(url) => (Endpoint::parse(url)?, true),
            None => (
                Endpoint {
                    tls: true,
                    host: format!("{bucket}.s3.{}.amazonaws.com", cfg.region),
                    port: 443,
                },
                false,
            ),
        };
        Ok(Self {
            client: HttpClient::new(endpoint, ClientSettings::from(cfg))?
                .keeping_headers(error_response::KEPT_HEADERS),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            region: cfg.region.clone(),
            path_style,
            creds,
        })
    }

    /// The underlying client (pool statistics in tests and metrics).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The S3 object key for a request key (`/index.yaml` → `PREFIX/index.yaml`).
    pub fn object_key(&self, key: &str) -> String {
        let key = key.trim_start_matches('/');
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The encoded request path for a request key.
    pub fn request_path(&self, key: &str) -> String {
        let object = self.object_key(key);
        let raw = if self.path_style {
            format!("/{}/{object}", self.bucket)
        } else {
            format!("/{object}")
        };
        encode_key_path(&raw)
    }

    async fn fetch_inner(&self, req: OriginRequest) -> Result<OriginResponse, Error> {
        super::require_object_key(&req.key)?;
        let creds = self.creds.get().ok_or_else(|| {
            Error::Credentials("credentials not loaded (or expired and not refreshed)".into())
        })?;
        let path = self.request_path(&req.key);
        let to_sign = RequestToSign {
            method: req.method,
            tls: self.client.endpoint().tls,
            authority: self.client.authority(),
            path: &path,
            if_none_match: req.if_none_match.as_deref(),
            if_modified_since: req.if_modified_since.as_deref(),
        };
        let signed = sign_request(&creds, &self.region, &to_sign, SystemTime::now())?;
        // The client writes `Host` itself, from the same authority that was signed.
        let headers: Vec<(&str, String)> =
            signed.into_iter().filter(|(n, _)| *n != "host").collect();
        let conditional = req.if_none_match.is_some() || req.if_modified_since.is_some();
        let resp = response::fetch(
            &self.client,
            req.method,
            &path,
            &headers,
            conditional,
            error_response::error_code,
        )
        .await?;
        if resp.meta.status == 200 && resp.meta.etag.is_none() {
            // Dropping the body unread closes the connection.
            return Err(Error::Protocol(
                "200 without an ETag is not an S3 object (a bucket listing?)".into(),
            ));
        }
        Ok(resp)
    }
}

impl Origin for S3Origin {
    fn fetch(&self, req: OriginRequest) -> LocalBoxFuture<'_, Result<OriginResponse, Error>> {
        Box::pin(self.fetch_inner(req))
    }

    fn connection_stats(&self) -> Option<super::client::ClientStats> {
        Some(self.client.stats())
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{test_config, Upstream};
    use aws_credential_types::Credentials;

    fn cfg(endpoint: Option<&str>) -> OriginConfig {
        OriginConfig {
            s3_endpoint: endpoint.map(str::to_owned),
            region: "eu-west-1".into(),
            ..test_config(Upstream::S3 {
                bucket: "charts".into(),
                prefix: String::new(),
            })
        }
    }

    fn creds() -> Arc<CredentialsCell> {
        Arc::new(CredentialsCell::new(Credentials::new(
            "a", "b", None, None, "t",
        )))
    }

    #[test]
    fn virtual_hosted_addressing_for_aws() {
        let o = S3Origin::new(&cfg(None), "charts", "", creds()).unwrap();
        assert_eq!(o.client().authority(), "charts.s3.eu-west-1.amazonaws.com");
        assert!(o.client().endpoint().tls);
        assert_eq!(o.request_path("/index.yaml"), "/index.yaml");
        assert_eq!(o.describe(), "s3://charts");
    }

    #[test]
    fn path_style_with_endpoint_and_prefix() {
        let o = S3Origin::new(
            &cfg(Some("http://127.0.0.1:9000")),
            "charts",
            "stable/v1",
            creds(),
        )
        .unwrap();
        assert_eq!(o.client().authority(), "127.0.0.1:9000");
        assert_eq!(o.object_key("/index.yaml"), "stable/v1/index.yaml");
        assert_eq!(
            o.request_path("/my chart+1.tgz"),
            "/charts/stable/v1/my%20chart%2B1.tgz"
        );
        assert_eq!(o.describe(), "s3://charts/stable/v1");
        let o = S3Origin::new(&cfg(Some("http://127.0.0.1:9000")), "charts", "", creds()).unwrap();
        assert_eq!(o.object_key("/index.yaml"), "index.yaml");
        assert_eq!(o.request_path("/index.yaml"), "/charts/index.yaml");
    }

    #[test]
    fn keys_outside_the_object_space_are_refused_before_any_request() {
        // Nothing listens on port 9: an attempt to send would fail as Connect.
        let o = S3Origin::new(&cfg(Some("http://127.0.0.1:9")), "charts", "", creds()).unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        for key in ["/", "/dir/", "//"] {
            let err = rt
                .block_on(o.fetch(OriginRequest::get(key)))
                .map(|_| ())
                .unwrap_err();
            assert!(matches!(err, Error::NotAnObjectKey(_)), "{key}: {err:?}");
        }
        assert_eq!(o.client().stats().connects, 0);
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(matches!(
            S3Origin::new(&cfg(Some("ftp://x")), "charts", "", creds()),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            S3Origin::new(&cfg(None), "", "", creds()),
            Err(Error::Config(_))
        ));
    }
}

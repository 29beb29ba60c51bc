//! The plain HTTP(S) origin: `GET base_path + key` on another server (for
//! example a regional chartcache, for tiering).
//!
//! Owns: building the request path and the plain request headers.
//! Does not own: connections ([`super::client`]), status mapping
//! ([`super::response`], the same rules as S3; errors carry no code).
//!
//! Invariants: `base_path` is used as it appears in the upstream URL (already
//! in URL-encoded form); the key names an object (never the root or a
//! "directory": [`super::require_object_key`]) and is encoded once with the S3 rules; only
//! `Host`, `User-Agent` and the conditional headers are sent. The upstream may
//! itself be S3 (a public bucket), so S3's response hints are kept and checked
//! and its region hint is logged ([`super::s3::error_response::hints_only`]),
//! as for the S3 origin; its error codes are not read. The upstream may be a
//! chartcache tier: its `Age` and `Cache-Status` are kept and honoured
//! ([`response::CACHE_HEADERS`]).

use super::client::{ClientSettings, Endpoint, HttpClient};
use super::response;
use super::s3::error_response::{hints_only, KEPT_HEADERS};
use super::sigv4::encode_key_path;
use super::{Error, LocalBoxFuture, Origin, OriginConfig, OriginRequest, OriginResponse, Upstream};

/// S3's hints, and an upstream cache's `Age` and `Cache-Status` (a fleet tier).
const HTTPS_KEPT: [&str; KEPT_HEADERS.len() + 2] = [
    KEPT_HEADERS[0],
    KEPT_HEADERS[1],
    KEPT_HEADERS[2],
    response::CACHE_HEADERS[0],
    response::CACHE_HEADERS[1],
];

/// One worker's HTTP(S) origin.
pub struct HttpsOrigin {
    client: HttpClient,
    base_path: String,
}

impl HttpsOrigin {
    pub fn new(cfg: &OriginConfig) -> Result<Self, Error> {
        let Upstream::Https {
            tls,
            host,
            port,
            base_path,
        } = &cfg.upstream
        else {
            return Err(Error::Config("not an http(s) upstream".into()));
        };
        if host.is_empty() {
            return Err(Error::Config("http(s) upstream without a host".into()));
        }
        let endpoint = Endpoint {
            tls: *tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: *port,
        };
        Ok(Self {
            client: HttpClient::new(endpoint, ClientSettings::from(cfg))?
                .keeping_headers(&HTTPS_KEPT),
            base_path: base_path.trim_end_matches('/').to_owned(),
        })
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// `base_path + encoded key`.
    pub fn request_path(&self, key: &str) -> String {
        let key = if key.starts_with('/') {
            encode_key_path(key)
        } else {
            encode_key_path(&format!("/{key}"))
        };
        format!("{}{key}", self.base_path)
    }

    async fn fetch_inner(&self, req: OriginRequest) -> Result<OriginResponse, Error> {
        super::require_object_key(&req.key)?;
        let path = self.request_path(&req.key);
        let mut headers: Vec<(&str, String)> = Vec::with_capacity(2);
        if let Some(v) = req.if_none_match {
            headers.push(("if-none-match", v));
        }
        if let Some(v) = req.if_modified_since {
            headers.push(("if-modified-since", v));
        }
        let conditional = !headers.is_empty();
        response::fetch(
            &self.client,
            req.method,
            &path,
            &headers,
            conditional,
            hints_only,
        )
        .await
    }
}

impl Origin for HttpsOrigin {
    fn fetch(&self, req: OriginRequest) -> LocalBoxFuture<'_, Result<OriginResponse, Error>> {
        Box::pin(self.fetch_inner(req))
    }

    fn connection_stats(&self) -> Option<super::client::ClientStats> {
        Some(self.client.stats())
    }

    fn describe(&self) -> String {
        let ep = self.client.endpoint();
        let scheme = if ep.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.client.authority(), self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::test_config;

    fn cfg(base_path: &str) -> OriginConfig {
        test_config(Upstream::Https {
            tls: true,
            host: "charts.example.com".into(),
            port: 443,
            base_path: base_path.into(),
        })
    }

    #[test]
    fn paths_and_description() {
        let o = HttpsOrigin::new(&cfg("/mirror/stable")).unwrap();
        assert_eq!(o.request_path("/index.yaml"), "/mirror/stable/index.yaml");
        assert_eq!(o.request_path("/a b.tgz"), "/mirror/stable/a%20b.tgz");
        assert_eq!(o.describe(), "https://charts.example.com/mirror/stable");
        let o = HttpsOrigin::new(&cfg("")).unwrap();
        assert_eq!(o.request_path("/index.yaml"), "/index.yaml");
    }
}

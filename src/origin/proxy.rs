//! Egress proxies for upstream connections: which upstream goes through which
//! proxy, and the `CONNECT` handshake that opens a tunnel through one.
//!
//! The rules are curl's and the AWS CLI's: `HTTPS_PROXY` / `https_proxy` for
//! `https` upstreams, `HTTP_PROXY` / `http_proxy` for plain `http` ones,
//! `ALL_PROXY` / `all_proxy` for both, and `NO_PROXY` / `no_proxy` (comma
//! separated host names, which also match their subdomains, IP addresses,
//! CIDR ranges, or `*`) for what goes direct. There is no implicit exception:
//! `127.0.0.1` and `localhost` go through the proxy unless `NO_PROXY` names
//! them. Parsing and matching are hyper-util's `Matcher` — the same code
//! reqwest and the AWS SDK's HTTP client use (it is already in the dependency
//! tree for the credentials chain), so the two agree on every variable.
//!
//! How a request travels ([`ProxyRoute`]):
//! - to an `https` upstream: a TCP connection to the proxy, `CONNECT
//!   host:port` ([`open_tunnel`]), then TLS to the upstream inside the tunnel
//!   (the proxy sees neither the requests nor the credentials);
//! - to a plain `http` upstream: the request in absolute form
//!   (`GET http://host:port/key HTTP/1.1`) to the proxy, which forwards it.
//!
//! A `Proxy-Authorization: Basic` header is sent when the proxy URL carries
//! `user:password@`. Only `http://` proxies are supported; an `https://` or
//! SOCKS proxy URL is a startup error that names the variable's value
//! (credentials redacted). The credentials chain (STS, IMDS, SSO) reads the
//! same variables through the AWS SDK's own client (`origin::credentials`).

use std::sync::{Arc, OnceLock};

use hyper_util::client::proxy::matcher::Matcher;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::endpoint::Endpoint;
use super::Error;

/// Largest `CONNECT` answer head read from a proxy.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// The egress proxy rules of this process (or of a test).
pub struct EgressProxies {
    matcher: Matcher,
}

impl std::fmt::Debug for EgressProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // hyper-util's Debug leaves credentials out.
        f.debug_struct("EgressProxies")
            .field("matcher", &self.matcher)
            .finish()
    }
}

/// How connections to one upstream go through a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// Where to connect: the proxy (always plain TCP).
    pub proxy: Endpoint,
    /// `Proxy-Authorization` value, when the proxy URL has credentials.
    pub authorization: Option<String>,
    /// `CONNECT` tunnel (a TLS upstream) rather than absolute-form requests.
    pub tunnel: bool,
}

impl ProxyRoute {
    /// The proxy as `http://host:port`, for logs (never the credentials).
    pub fn display(&self) -> String {
        format!("http://{}", self.proxy.authority())
    }
}

impl EgressProxies {
    /// The process environment's rules, read once (later changes to the
    /// environment are not seen, as with curl's per-process reading).
    pub fn from_env() -> Arc<EgressProxies> {
        static ENV: OnceLock<Arc<EgressProxies>> = OnceLock::new();
        ENV.get_or_init(|| {
            Arc::new(EgressProxies {
                matcher: Matcher::from_env(),
            })
        })
        .clone()
    }

    /// No proxy for anything.
    pub fn none() -> Arc<EgressProxies> {
        Arc::new(Self::new("", "", ""))
    }

    /// Explicit rules: proxy URLs for `http` and `https` upstreams (empty:
    /// none) and a `NO_PROXY` list.
    pub fn new(http: &str, https: &str, no_proxy: &str) -> EgressProxies {
        EgressProxies {
            matcher: Matcher::builder()
                .http(http.to_owned())
                .https(https.to_owned())
                .no(no_proxy.to_owned())
                .build(),
        }
    }

    /// The route to `upstream`: `None` to connect directly. An unusable proxy
    /// URL (not `http://`, no host) is [`Error::Config`].
    pub fn route(&self, upstream: &Endpoint) -> Result<Option<ProxyRoute>, Error> {
        let scheme = if upstream.tls { "https" } else { "http" };
        let dst: http::Uri = format!("{scheme}://{}/", upstream.authority())
            .parse()
            .map_err(|e| Error::Config(format!("upstream {:?}: {e}", upstream.host)))?;
        let Some(intercept) = self.matcher.intercept(&dst) else {
            return Ok(None);
        };
        let uri = intercept.uri();
        let shown = redacted(uri);
        let var = if upstream.tls {
            "HTTPS_PROXY"
        } else {
            "HTTP_PROXY"
        };
        match uri.scheme_str() {
            Some("http") => {}
            other => {
                return Err(Error::Config(format!(
                    "egress proxy {shown} (from {var} or ALL_PROXY) for {scheme}://{}: \
                     scheme {:?} is not supported; use an http:// proxy URL, or list the \
                     host in NO_PROXY",
                    upstream.authority(),
                    other.unwrap_or("")
                )))
            }
        }
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Config(format!("egress proxy {shown} ({var}): no host")))?;
        let authorization = intercept
            .basic_auth()
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    Error::Config(format!(
                        "egress proxy {shown} ({var}): unusable credentials"
                    ))
                })
            })
            .transpose()?;
        Ok(Some(ProxyRoute {
            proxy: Endpoint {
                tls: false,
                host,
                port: uri.port_u16().unwrap_or(80),
            },
            authorization,
            tunnel: upstream.tls,
        }))
    }
}

/// `scheme://host:port` of a proxy URI, without user information.
fn redacted(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or(""),
        uri.host().unwrap_or(""),
        uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// Asks the proxy on `stream` for a tunnel to `target` (`host:port`) and
/// waits for its answer: any 2xx opens the tunnel; anything else (407 needs
/// credentials, 403 refused, 502 the proxy could not connect) is
/// [`Error::Connect`] with the proxy's status line. Bytes after the answer's
/// head are refused: the server speaks only after our TLS hello. The caller
/// bounds the wait (the connect timeout covers the whole handshake).
pub async fn open_tunnel(
    stream: &mut TcpStream,
    target: &str,
    authorization: Option<&str>,
) -> Result<(), Error> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n");
    if let Some(auth) = authorization {
        request.push_str("proxy-authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let (res, _) = stream.write_all(request.into_bytes()).await;
    res.map_err(|e| Error::Connect(format!("egress proxy: sending CONNECT: {e}")))?;

    let mut head: Vec<u8> = Vec::with_capacity(512);
    loop {
        let (res, buf) = stream.read(Vec::with_capacity(4096)).await;
        let n =
            res.map_err(|e| Error::Connect(format!("egress proxy: reading CONNECT answer: {e}")))?;
        if n == 0 {
            return Err(Error::Connect(
                "egress proxy closed the connection before answering CONNECT".into(),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    return Err(Error::Connect(format!(
                        "egress proxy refused CONNECT {target}: {code} {}",
                        parsed.reason.unwrap_or("")
                    )));
                }
                if len != head.len() {
                    return Err(Error::Connect(format!(
                        "egress proxy sent {} bytes after its CONNECT answer",
                        head.len() - len
                    )));
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_CONNECT_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(Error::Connect(format!(
                    "egress proxy's CONNECT answer exceeds {MAX_CONNECT_HEAD} bytes"
                )))
            }
            Err(e) => {
                return Err(Error::Connect(format!(
                    "egress proxy's CONNECT answer is not HTTP: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(tls: bool, host: &str, port: u16) -> Endpoint {
        Endpoint {
            tls,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn https_upstreams_tunnel_and_http_ones_use_absolute_form() {
        let p = EgressProxies::new("http://10.0.0.1:3128", "http://10.0.0.2:3129", "");
        let r = p
            .route(&ep(true, "s3.amazonaws.com", 443))
            .unwrap()
            .unwrap();
        assert_eq!(r.proxy, ep(false, "10.0.0.2", 3129));
        assert!(r.tunnel);
        assert_eq!(r.authorization, None);
        let r = p.route(&ep(false, "127.0.0.1", 9000)).unwrap().unwrap();
        assert_eq!(r.proxy, ep(false, "10.0.0.1", 3128));
        assert!(!r.tunnel);
    }

    #[test]
    fn no_proxy_names_hosts_subdomains_and_networks_and_loopback_is_not_implicit() {
        let p = EgressProxies::new(
            "http://proxy:3128",
            "http://proxy:3128",
            "internal.example, 10.0.0.0/8",
        );
        for direct in [
            ep(true, "internal.example", 443),
            ep(true, "s3.internal.example", 443),
            ep(false, "10.1.2.3", 80),
        ] {
            assert_eq!(p.route(&direct).unwrap(), None, "{direct:?}");
        }
        for proxied in [
            ep(true, "notinternal.example", 443),
            ep(false, "127.0.0.1", 9000),
            ep(false, "localhost", 9000),
        ] {
            assert!(p.route(&proxied).unwrap().is_some(), "{proxied:?}");
        }
        let all = EgressProxies::new("http://proxy:3128", "", "*");
        assert_eq!(all.route(&ep(false, "anything", 80)).unwrap(), None);
    }

    #[test]
    fn credentials_become_basic_authorization_and_stay_out_of_display() {
        let p = EgressProxies::new("", "http://Aladdin:open%20sesame@proxy:8080", "");
        let r = p
            .route(&ep(true, "bucket.s3.amazonaws.com", 443))
            .unwrap()
            .unwrap();
        // base64("Aladdin:open sesame")
        assert_eq!(
            r.authorization.as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        assert_eq!(r.display(), "http://proxy:8080");
    }

    #[test]
    fn a_scheme_less_proxy_is_http_and_its_port_defaults_to_80() {
        let p = EgressProxies::new("", "proxy.corp", "");
        let r = p
            .route(&ep(true, "s3.amazonaws.com", 443))
            .unwrap()
            .unwrap();
        assert_eq!(r.proxy, ep(false, "proxy.corp", 80));
    }

    #[test]
    fn tls_and_socks_proxies_are_config_errors_without_credentials() {
        for url in ["https://u:secret@proxy:443", "socks5://u:secret@proxy:1080"] {
            let p = EgressProxies::new("", url, "");
            let e = p.route(&ep(true, "s3.amazonaws.com", 443)).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Config(_)), "{msg}");
            assert!(
                msg.contains("not supported") && !msg.contains("secret"),
                "{msg}"
            );
        }
    }

    #[test]
    fn unproxied_when_nothing_is_set() {
        let p = EgressProxies::none();
        assert_eq!(p.route(&ep(true, "s3.amazonaws.com", 443)).unwrap(), None);
    }
}

//! Where an HTTP upstream (or an egress proxy) is: scheme (TLS or not), host and
//! port, parsed from a URL and shown as the `Host` authority. Shared by the
//! client (`origin::client`) and the egress proxy rules (`origin::proxy`).

use super::Error;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host[:port]` as sent in `Host` and signed: the port is omitted when it is
    /// the scheme default; IPv6 literals are bracketed.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Parse `http[s]://host[:port]` (an optional trailing `/` is allowed, no path).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("endpoint {url:?}: {why}"));
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match u.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("scheme must be http or https")),
        };
        if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() {
            return Err(bad("must not have a path or query"));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad("no host")),
        };
        let port = u.port_or_known_default().ok_or_else(|| bad("no port"))?;
        Ok(Self { tls, host, port })
    }
}

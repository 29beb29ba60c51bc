//! Origin errors: one enum, mapped to a client status at the request edge.

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Upstream answered with a status we do not pass through (403, 5xx, ...).
    /// `code` is the S3 error code (`SignatureDoesNotMatch`, `AccessDenied`, ...).
    #[error("upstream status {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status { status: u16, code: Option<String> },
    /// Upstream answered with a status that is never an answer to the plain
    /// GET/HEAD chartcache sends (no `Range`, `Upgrade` or `Expect`): 206, a 1xx
    /// other than `100 Continue`, a 304 to an unconditional request. Never
    /// passed on, never retried.
    #[error("unexpected upstream status {0} for a plain GET/HEAD")]
    UnexpectedStatus(u16),
    /// The request key does not name an object (the repository root, a
    /// "directory" ending in `/`): refused before anything is sent upstream.
    #[error("{0:?} does not name an object")]
    NotAnObjectKey(String),
    /// Could not connect (refused, DNS failure, TLS handshake failure).
    #[error("connect to upstream failed: {0}")]
    Connect(String),
    /// Connect, head or body read exceeded its deadline.
    #[error("upstream timed out")]
    Timeout,
    /// The body ended before its declared length or chunked terminator.
    #[error("upstream body truncated after {received} bytes")]
    Truncated { received: u64 },
    /// Malformed response: bad status line, CR/LF in headers, head too large, bad chunk.
    #[error("invalid upstream response: {0}")]
    Protocol(String),
    /// No credentials available for signing.
    #[error("no AWS credentials: {0}")]
    Credentials(String),
    /// The request could not be signed (bad endpoint, unusable credentials).
    #[error("cannot sign upstream request: {0}")]
    Signing(String),
    /// The origin configuration is unusable (bad endpoint URL, TLS setup).
    #[error("invalid origin configuration: {0}")]
    Config(String),
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The status returned to the client for this error.
    pub fn client_status(&self) -> u16 {
        match self {
            Error::Timeout => 504,
            Error::NotAnObjectKey(_) => 404,
            _ => 502,
        }
    }

    /// The status upstream answered with, when it answered one.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } | Error::UnexpectedStatus(status) => Some(*status),
            _ => None,
        }
    }
}

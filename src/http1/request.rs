//! STUB (replaced by the http1 branch).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8192,
            max_header_bytes: 32768,
            max_headers: 100,
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method { Get, Head, Other }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming { None, Length(u64), Chunked }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub method_name: String,
    pub target: String,
    pub minor_version: u8,
    pub keep_alive: bool,
    pub body: BodyFraming,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub range: Option<String>,
    pub user_agent: Option<String>,
    pub head_len: usize,
}
pub enum Parsed { Complete(RequestHead), Partial }
#[derive(Debug, thiserror::Error)]
pub enum RequestError { #[error("x")] UriTooLong, #[error("x")] HeaderFieldsTooLarge, #[error("x")] BadRequest(&'static str), #[error("x")] VersionNotSupported, #[error("x")] Http09 }
impl RequestError { pub fn status(&self) -> Option<u16> { todo!() } }
pub fn parse_request(_buf: &[u8], _limits: &Limits) -> Result<Parsed, RequestError> { todo!() }

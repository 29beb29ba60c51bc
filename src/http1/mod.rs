//! HTTP/1.1 wire format, strict and bounded, on top of `httparse`.
//!
//! - [`request`]: server-side request-head parser with the limits a proxy needs.
//! - [`path`]: request target → validated object key (decoded exactly once).
//! - [`render`]: response-head rendering.
//! - [`cache_status`]: the `Cache-Status` field (RFC 9211): our entry, an upstream tier's.
//! - [`conditional`]: `Range`, `If-None-Match`, `If-Modified-Since` evaluation.
//! - [`response`]: client-side (upstream) response-head parser.
//! - [`chunked`]: chunked transfer-coding decoder (upstream bodies).
//!
//! Nothing here does I/O: every function takes bytes and returns a verdict, so
//! each rule is unit-tested in isolation.

pub mod cache_status;
pub mod chunked;
pub mod conditional;
pub mod path;
pub mod render;
pub mod request;
pub mod response;

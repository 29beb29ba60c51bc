//! The client-facing side: connections and requests.
//!
//! - [`conn`]: one connection's keep-alive loop (read, parse, dispatch, write,
//!   timeouts, pipelining in order).
//! - [`handler`]: one request: policy → cache → origin → response.

pub mod conn;
pub mod handler;

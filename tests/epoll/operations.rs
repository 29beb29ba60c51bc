//! `tests/operations.rs` again, every server in it on the epoll driver (Cargo.toml: the
//! integration suite runs on both drivers; `tests/common/proxy.rs`: `test_driver`).
#[path = "../operations.rs"]
mod suite;

//! `tests/credentials_profile.rs` again, every server in it on the epoll driver (Cargo.toml: the
//! integration suite runs on both drivers; `tests/common/proxy.rs`: `test_driver`).
#[path = "../credentials_profile.rs"]
mod suite;

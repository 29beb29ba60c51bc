//! `tests/status_page.rs` again, every server in it on the epoll driver (Cargo.toml: the
//! integration suite runs on both drivers; `tests/common/proxy.rs`: `test_driver`).
#[path = "../status_page.rs"]
mod suite;

fn main() {
    suite::main()
}

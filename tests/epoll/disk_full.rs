//! `tests/disk_full.rs` again, on the epoll driver (Cargo.toml: the integration suite runs on
//! both drivers). A file of its own because a target with its own harness is declared
//! explicitly, and two explicit targets on one file draw a Cargo warning.
#[path = "../disk_full.rs"]
mod suite;

fn main() {
    suite::main()
}

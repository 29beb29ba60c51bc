//! Which I/O driver the workers run — io_uring, or the epoll fallback — and,
//! for a fallback, why: the answer an operator needs when a container
//! runtime's seccomp profile (Docker ≥ 25 and containerd ≥ 2.0 block
//! `io_uring_*` in `RuntimeDefault`), the `kernel.io_uring_disabled` sysctl,
//! or an old kernel takes io_uring away.
//!
//! [`choose`] probes with one `io_uring_setup(2)` (a one-entry ring, closed at
//! once) and reads the sysctl to tell the causes apart; the choice is kept for
//! the process ([`current`]) so the startup log, metrics and the status page
//! report the same thing.

use std::sync::OnceLock;

/// Which io driver the workers use (`--driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel (and seccomp) allow it, else epoll.
    Auto,
    IoUring,
    Epoll,
}

impl Driver {
    /// The name `--driver` takes.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// The driver the workers run, and why it is not io_uring when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverChoice {
    /// [`Driver::IoUring`] or [`Driver::Epoll`] (never `Auto`).
    pub driver: Driver,
    /// Why `auto` fell back to epoll (`None`: io_uring runs, or epoll was asked for).
    pub fallback: Option<String>,
}

static CURRENT: OnceLock<DriverChoice> = OnceLock::new();

/// The choice made at startup, once [`choose`] ran.
pub fn current() -> Option<&'static DriverChoice> {
    CURRENT.get()
}

/// Resolves `auto` by probing io_uring, records the choice for [`current`]
/// (the first call wins) and returns it.
pub fn choose(requested: Driver) -> DriverChoice {
    let choice = match requested {
        Driver::Auto => match probe() {
            Ok(()) => DriverChoice {
                driver: Driver::IoUring,
                fallback: None,
            },
            Err(why) => DriverChoice {
                driver: Driver::Epoll,
                fallback: Some(why),
            },
        },
        other => DriverChoice {
            driver: other,
            fallback: None,
        },
    };
    CURRENT.get_or_init(|| choice.clone());
    choice
}

/// `Ok` when this process may set up an io_uring; else why not, in words.
///
/// The probe runs on a thread of its own that exits right after: a thread
/// that once set up a ring stays registered with it, and when the closed ring
/// is torn down (asynchronously) the kernel queues task work to that thread
/// with a signal-like notification, which interrupts whatever blocking call it
/// is in with `EINTR` (seen as a test's socket read failing; in the binary it
/// would be the main thread's signal wait).
fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("chartcache-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot start the io_uring probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe thread panicked".into()))
}

fn probe_here() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; zeroed means no flags.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes only the 120-byte params buffer,
    // which outlives the call; the returned descriptor is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: a descriptor this function just received and nothing else holds.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    Err(explain(err.raw_os_error(), sysctl))
}

/// The fallback reason for `io_uring_setup`'s errno and the sysctl's value.
fn explain(errno: Option<i32>, io_uring_disabled: Option<u8>) -> String {
    match (errno, io_uring_disabled) {
        (Some(libc::EPERM), Some(2)) => {
            "io_uring is disabled by the kernel.io_uring_disabled=2 sysctl".into()
        }
        (Some(libc::EPERM), Some(1)) => "io_uring is limited by the kernel.io_uring_disabled=1 \
             sysctl to members of kernel.io_uring_group, and this process is not one"
            .into(),
        (Some(libc::EPERM), _) => "io_uring_setup was refused (EPERM): a seccomp profile \
             blocks it (Docker >= 25 and containerd >= 2.0 RuntimeDefault do; the Helm chart's \
             seccomp profile allows it)"
            .into(),
        (Some(libc::ENOSYS), _) => "io_uring_setup does not exist (ENOSYS): a kernel older \
             than 5.1 or built without io_uring, or a seccomp profile that answers ENOSYS"
            .into(),
        (Some(libc::ENOMEM), _) => "io_uring_setup failed with ENOMEM: the locked-memory \
             limit (ulimit -l) is too low for a ring on this kernel"
            .into(),
        (errno, _) => format!(
            "io_uring_setup failed: {}",
            errno.map_or_else(
                || "unknown error".to_owned(),
                |e| std::io::Error::from_raw_os_error(e).to_string()
            )
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_named() {
        assert!(explain(Some(libc::EPERM), Some(2)).contains("io_uring_disabled=2"));
        assert!(explain(Some(libc::EPERM), Some(1)).contains("io_uring_group"));
        assert!(explain(Some(libc::EPERM), Some(0)).contains("seccomp"));
        assert!(explain(Some(libc::EPERM), None).contains("seccomp"));
        assert!(explain(Some(libc::ENOSYS), Some(0)).contains("older than 5.1"));
        assert!(explain(Some(libc::ENOMEM), None).contains("ulimit -l"));
        assert!(explain(Some(libc::EINVAL), None).contains("io_uring_setup failed"));
    }

    #[test]
    fn explicit_drivers_are_kept_and_auto_agrees_with_the_probe() {
        let epoll = choose(Driver::Epoll);
        assert_eq!((epoll.driver, epoll.fallback), (Driver::Epoll, None));
        let auto = choose(Driver::Auto);
        match probe() {
            Ok(()) => assert_eq!(auto.driver, Driver::IoUring),
            Err(why) => assert_eq!(auto.fallback, Some(why)),
        }
    }
}

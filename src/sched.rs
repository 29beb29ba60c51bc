//! Cooperative scheduling on the thread-per-core workers, and keeping helper threads
//! out of their way.
//!
//! A worker runs every connection and fill of its core on one thread: a task that never
//! suspends (a body that is always ready, a send the client keeps up with) holds all the
//! others. [`yield_now`] lets them run between bounded steps. Threads that do bulk work
//! beside the workers (index processing, checkpoint syncs) call
//! [`background_priority`] so they take the CPU the workers leave.
//!
//! Owns no state.

/// Lets the worker's other tasks (and its completion queue) run once before going on
/// (monoio 0.2 has no `yield_now`).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Lowers the calling thread's CPU priority to nice 10 (Linux nices threads one by one),
/// so bulk work beside the workers does not preempt them; a thread already nicer (the
/// whole process started under `nice -n 19`, say) keeps its priority — this never
/// raises one, which root could. Best effort: a failure leaves the priority as it was.
pub fn background_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is passed.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        // getpriority returns -1 both for nice -1 and for an error: either way not nicer
        // than 10, so lowering is right.
        if libc::getpriority(libc::PRIO_PROCESS, tid) < 10 {
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn background_priority_lowers_this_thread_only() {
        let nice = || {
            // SAFETY: getpriority on the calling thread's own id.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        };
        let before = nice();
        let theirs = std::thread::spawn(move || {
            super::background_priority();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, 10.max(before));
        assert_eq!(nice(), before);
    }

    #[test]
    fn yield_now_completes_on_the_second_poll() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(super::yield_now());
    }
}

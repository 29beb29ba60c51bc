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

/// Lets the worker's other tasks — those ready now and those whose I/O completes
/// meanwhile — run before going on (monoio 0.2 has no `yield_now` of its own).
///
/// Not by waking itself: monoio puts a task that wakes itself while it is being
/// polled back at the *front* of the run queue (`scheduler.yield_now`, a
/// `push_front`), so it ran again at once, and the tasks it woke by polling the
/// driver every few rounds never did until it finished — a 44 MB index stored in
/// 1 MiB runs held every other connection of its worker for ~50 ms. The wake comes
/// from a task spawned at the back of the queue instead, which queues this one at
/// the back too, behind everything that was ready before it. What runs meanwhile
/// is what is ready and what the driver's non-blocking poll between rounds finds
/// (socket and file completions); timers and wakes from other threads are taken in
/// when the worker next parks, i.e. once nothing is ready — after the loop.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        let waker = cx.waker().clone();
        monoio::spawn(async move { waker.wake() });
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

    /// A task that yields in a loop lets every other ready task run between two of
    /// its steps (with a self-wake, monoio ran it again first: the other task ran
    /// only once it was done).
    #[test]
    fn yield_now_lets_the_other_ready_tasks_run_first() {
        use std::cell::RefCell;
        use std::rc::Rc;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let order = rt.block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let (a, b) = (order.clone(), order.clone());
            let busy = monoio::spawn(async move {
                for i in 0..3 {
                    a.borrow_mut().push(format!("busy{i}"));
                    super::yield_now().await;
                }
            });
            let other = monoio::spawn(async move {
                for i in 0..3 {
                    b.borrow_mut().push(format!("other{i}"));
                    super::yield_now().await;
                }
            });
            busy.await;
            other.await;
            Rc::try_unwrap(order).unwrap().into_inner()
        });
        assert_eq!(
            order,
            ["busy0", "other0", "busy1", "other1", "busy2", "other2"],
            "{order:?}"
        );
    }
}

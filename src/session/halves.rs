//! Joining a session's reader and writer halves in one task while polling only the half that
//! was woken.
//!
//! `tokio::join!` polls every unfinished future whenever the task wakes. For a WebSocket
//! session that means each queued delivery (a writer wake-up) also polls the reader: its
//! socket readiness, its timer and two `Notify` waiters. At 10,000 subscribers that was about
//! 8 % of the server's CPU per paced delivery (perf, BENCHMARKS.md). Here each half gets its
//! own waker, which records that it fired and wakes the task; a poll of the join polls only
//! the halves whose waker fired since their last poll. Two small allocations per session
//! instead of a second task (which would cost a task's memory per idle connection).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A half's waker: remembers that it fired and wakes the task running the join.
struct HalfWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for HalfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One half: its future, its waker and its output once done.
struct Half<F: Future> {
    state: Arc<HalfWake>,
    waker: Waker,
    output: Option<F::Output>,
}

impl<F: Future> Half<F> {
    fn new() -> Self {
        // Woken at the start, so the first poll polls it.
        let state = Arc::new(HalfWake { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { waker: Waker::from(state.clone()), state, output: None }
    }

    /// Polls `future` if it is unfinished and its waker fired since the last poll.
    fn poll(&mut self, future: Pin<&mut F>, task: &Waker) {
        self.state.task.register(task);
        if self.output.is_none() && self.state.woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(output) = future.poll(&mut Context::from_waker(&self.waker)) {
                self.output = Some(output);
            }
        }
    }
}

/// Runs `a` and `b` to completion in the current task, like `tokio::join!`, polling each only
/// when its own waker fired. Taken pinned by reference: moved in by value, the halves would be
/// stored twice in the caller's state machine (≈ 3 KiB more per idle connection, measured).
pub(super) async fn join_halves<A: Future, B: Future>(
    mut a: Pin<&mut A>,
    mut b: Pin<&mut B>,
) -> (A::Output, B::Output) {
    let mut half_a = Half::<A>::new();
    let mut half_b = Half::<B>::new();
    poll_fn(|cx| {
        half_a.poll(a.as_mut(), cx.waker());
        half_b.poll(b.as_mut(), cx.waker());
        if half_a.output.is_some() && half_b.output.is_some() {
            if let (Some(a), Some(b)) = (half_a.output.take(), half_b.output.take()) {
                return Poll::Ready((a, b));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn polls_only_the_woken_half_and_returns_both_outputs() {
        let (polls_a, polls_b) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (go_a, go_b) = (Notify::new(), Notify::new());
        let a = async {
            // Counts its polls by awaiting in a loop of small steps.
            for _ in 0..3 {
                poll_fn(|_| {
                    polls_a.fetch_add(1, Ordering::Relaxed);
                    Poll::Ready(())
                })
                .await;
                go_a.notified().await;
            }
            "a"
        };
        let b = async {
            poll_fn(|_| {
                polls_b.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(())
            })
            .await;
            go_b.notified().await;
            "b"
        };
        let (a, b) = (std::pin::pin!(a), std::pin::pin!(b));
        let joined = join_halves(a, b);
        tokio::pin!(joined);
        // Polled by hand: the test decides when the join runs.
        let mut cx = Context::from_waker(Waker::noop());
        // First poll: both run up to their first wait.
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!((polls_a.load(Ordering::Relaxed), polls_b.load(Ordering::Relaxed)), (1, 1));
        // Waking `a` twice runs only `a`.
        go_a.notify_one();
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        go_a.notify_one();
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!((polls_a.load(Ordering::Relaxed), polls_b.load(Ordering::Relaxed)), (3, 1));
        // A poll with nothing woken polls nobody.
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!((polls_a.load(Ordering::Relaxed), polls_b.load(Ordering::Relaxed)), (3, 1));
        go_a.notify_one();
        go_b.notify_one();
        assert_eq!(joined.await, ("a", "b"));
    }
}

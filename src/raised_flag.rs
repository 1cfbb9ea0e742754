//! A flag raised once, with one task waiting for it.
//!
//! What a WebSocket session waits on for its whole life (a close decided elsewhere, the reader's
//! end): a flag and one `AtomicWaker`, whose waiting future is 8 bytes where a `tokio::sync::Notify`
//! waiter is about 100 — memory per idle connection is a benchmark figure. One waiter at a time:
//! a second one takes the wake-up over.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// A flag that goes up once and wakes the task waiting in [`RaisedFlag::raised`].
#[derive(Default)]
pub(crate) struct RaisedFlag {
    raised: AtomicBool,
    waiter: AtomicWaker,
}

impl RaisedFlag {
    /// Raises the flag; `true` when this call raised it (the first one). Does not wake the
    /// waiter: callers publish what goes with the flag first, then call [`RaisedFlag::wake`].
    pub(crate) fn raise(&self) -> bool {
        !self.raised.swap(true, Ordering::AcqRel)
    }

    /// Wakes the task waiting in [`RaisedFlag::raised`], if any.
    pub(crate) fn wake(&self) {
        self.waiter.wake();
    }

    /// Whether the flag is up.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves once the flag is up (at once if it already is).
    pub(crate) fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_raised() {
                return Poll::Ready(());
            }
            // Registered before the second check: a raise and wake in between wakes this waker.
            self.waiter.register(cx.waker());
            if self.is_raised() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiter_is_woken_by_the_first_raise_only() {
        let flag = Arc::new(RaisedFlag::default());
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.raised().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(flag.raise(), "the first raise raises");
        assert!(!flag.raise(), "a second one does not");
        flag.wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(flag.is_raised());
        // and at once when already up
        flag.raised().await;
    }
}

//! The byte budget of a channel's outbound queue and its slow-consumer policy (pure, no I/O).
//!
//! Every frame queued for a connection is counted in bytes; the writer task subtracts what it
//! has written. A frame that would take the queue over its budget is refused, and the caller
//! applies the policy (close with 1008, or drop and count). One frame larger than the budget
//! is still admitted into an empty queue, so a big message alone never trips the policy.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What to do with a connection whose outbound queue is over budget (`[websocket]
/// slow_consumer`): one type from the config to the channel.
pub use crate::config::SlowConsumerPolicy;

/// Byte accounting for one connection's outbound queue.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    queued: AtomicUsize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, queued: AtomicUsize::new(0) }
    }

    /// Reserves `len` bytes; `false` when that would exceed the budget of a non-empty queue.
    pub fn try_reserve(&self, len: usize) -> bool {
        let mut current = self.queued.load(Ordering::Relaxed);
        loop {
            if current > 0 && current.saturating_add(len) > self.limit {
                return false;
            }
            match self.queued.compare_exchange_weak(current, current + len, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Reserves `len` bytes regardless of the budget (control frames must always get through).
    pub fn force_reserve(&self, len: usize) {
        self.queued.fetch_add(len, Ordering::AcqRel);
    }

    /// Releases `len` bytes after the writer has written them.
    pub fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }

    /// Bytes currently queued.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_one_oversized_frame_into_an_empty_queue() {
        let budget = ByteBudget::new(10);
        assert!(budget.try_reserve(100));
        assert!(!budget.try_reserve(1));
        budget.release(100);
        assert!(budget.try_reserve(6));
        assert!(budget.try_reserve(4));
        assert!(!budget.try_reserve(1));
        assert_eq!(budget.queued(), 10);
    }

    #[test]
    fn forced_reservations_ignore_the_limit() {
        let budget = ByteBudget::new(1);
        budget.force_reserve(5);
        budget.force_reserve(5);
        assert_eq!(budget.queued(), 10);
    }
}

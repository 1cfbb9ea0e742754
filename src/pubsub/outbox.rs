//! The outbound queue of one channel: many producers (multicast, apps, the control API), one
//! consumer (the session's writer task).
//!
//! A mutex-guarded `VecDeque` rather than a lock-free channel because most connections are idle
//! most of the time and memory per idle connection is a headline figure: an empty outbox
//! allocates nothing (tokio's unbounded channel allocates a 32-slot block and a cache-padded
//! header, ≈ 1.8 KiB, up front). The lock is held for a push or a pop only, and the writer
//! takes everything ready in one lock ([`OutboxReceiver::drain_into`]) for one vectored write.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use super::channel::Outbound;
use crate::sync::lock;

struct State {
    items: VecDeque<Outbound>,
    /// The receiver's waker, set while it waits on an empty outbox.
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

type Shared = Arc<Mutex<State>>;

/// Creates an empty outbox: the sending half (one per channel, shared by its handles) and
/// the receiving half (the session's writer).
pub fn outbox() -> (OutboxSender, OutboxReceiver) {
    let shared = Arc::new(Mutex::new(State { items: VecDeque::new(), waker: None, sender_gone: false, receiver_gone: false }));
    (OutboxSender(shared.clone()), OutboxReceiver(shared))
}

/// The producing half. Dropping it ends the receiver's stream once the queue is drained.
pub struct OutboxSender(Shared);

/// The item could not be queued because the receiver is gone; it is handed back.
#[derive(Debug)]
pub struct Disconnected(pub Outbound);

/// Why [`OutboxReceiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued right now.
    Empty,
    /// Nothing is queued and the sender is gone.
    Disconnected,
}

impl OutboxSender {
    /// Appends `item`; fails only when the receiver is gone.
    pub fn send(&self, item: Outbound) -> Result<(), Disconnected> {
        let waker = {
            let mut state = lock(&self.0);
            if state.receiver_gone {
                return Err(Disconnected(item));
            }
            state.items.push_back(item);
            state.waker.take()
        };
        // Woken outside the lock: the woken task may run at once on another worker.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone (the session's writer has finished).
    pub fn is_closed(&self) -> bool {
        lock(&self.0).receiver_gone
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.0);
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The consuming half, owned by the session's writer.
pub struct OutboxReceiver(Shared);

impl OutboxReceiver {
    /// The next item; `None` once the queue is empty and the sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let mut state = lock(&self.0);
            if let Some(item) = state.items.pop_front() {
                return Poll::Ready(Some(item));
            }
            if state.sender_gone {
                return Poll::Ready(None);
            }
            if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut state = lock(&self.0);
        match state.items.pop_front() {
            Some(item) => Ok(item),
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Moves up to `max` queued items into `into` under one lock; returns how many.
    pub fn drain_into(&mut self, into: &mut Vec<Outbound>, max: usize) -> usize {
        let mut state = lock(&self.0);
        let n = state.items.len().min(max);
        into.extend(state.items.drain(..n));
        // A burst can leave a large ring behind; an idle connection should not keep it.
        if state.items.is_empty() && state.items.capacity() > SHRINK_ABOVE {
            state.items = VecDeque::new();
        }
        n
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let items = {
            let mut state = lock(&self.0);
            state.receiver_gone = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock (a shared message may be the last reference).
        drop(items);
    }
}

/// Capacity (in items) above which an emptied outbox gives its memory back.
const SHRINK_ABOVE: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![n]))
    }

    fn byte(item: Outbound) -> u8 {
        item.plain_frame().map(|f| f[0]).unwrap_or(255)
    }

    #[test]
    fn keeps_order_and_reports_empty_then_disconnected() {
        let (tx, mut rx) = outbox();
        tx.send(frame(1)).unwrap();
        tx.send(frame(2)).unwrap();
        assert_eq!(byte(rx.try_recv().unwrap()), 1);
        assert_eq!(byte(rx.try_recv().unwrap()), 2);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        tx.send(frame(3)).unwrap();
        drop(tx);
        assert_eq!(byte(rx.try_recv().unwrap()), 3, "queued items survive the sender");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = outbox();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.send(frame(1)), Err(Disconnected(_))));
    }

    #[test]
    fn drain_takes_at_most_max_and_releases_a_big_ring() {
        let (tx, mut rx) = outbox();
        for i in 0..200u8 {
            tx.send(frame(i)).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(rx.drain_into(&mut batch, 64), 64);
        assert_eq!(byte(batch.remove(0)), 0);
        batch.clear();
        assert_eq!(rx.drain_into(&mut batch, 1000), 136);
        assert_eq!(lock(&rx.0).items.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_send_and_ends_when_the_sender_goes() {
        let (tx, mut rx) = outbox();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.map(byte);
            let end = rx.recv().await.is_none();
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.send(frame(7)).unwrap();
        drop(tx);
        assert_eq!(waiter.await.unwrap(), (Some(7), true));
    }
}

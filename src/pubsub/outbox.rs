//! The outbound queue of one channel: many producers (multicast, apps, the control API), one
//! consumer (the session's writer task).
//!
//! A mutex-guarded `VecDeque` rather than a lock-free channel because most connections are idle
//! most of the time and memory per idle connection is a headline figure: an empty outbox
//! allocates nothing (tokio's unbounded channel allocates a 32-slot block and a cache-padded
//! header, ≈ 1.8 KiB, up front). The lock is held for a push or a pop only, and the writer
//! takes everything ready in one lock ([`OutboxReceiver::drain_into`]) for one vectored write.
//!
//! The same lock orders direct writes (to a [`DirectSink`], the session's socket): a delivered message is written
//! straight to the session's socket, under the lock, only while nothing is queued and the
//! writer is not between taking items and having written them (`writer_busy`). So the bytes
//! of two frames never interleave and the order of the queue is the order on the wire. A Close
//! queued, or the writer gone, turns the direct path off for good, under the lock, before the
//! session can drop its socket: nothing is ever written after a Close (RFC 6455 §5.5.1).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::Bytes;

use super::budget::ByteBudget;
use crate::locks::lock;
use crate::ws::deflate::SharedMessage;

/// What the writer task of a session receives.
#[derive(Debug)]
pub enum Outbound {
    /// A complete, already-encoded frame sent as it is (control frames, anything that is not
    /// a whole data message).
    Frame(Bytes),
    /// A whole data message, possibly shared with other channels: the writer sends its plain
    /// frame or its compressed frame, whichever the connection negotiated (RFC 7692). We never
    /// fragment outgoing messages, so a shared message can never land between the fragments
    /// of another.
    Message(Arc<SharedMessage>),
    /// The unwritten tail of a message frame that a direct write (see
    /// [`DirectSink`]) wrote only in part. Written as it is, before anything queued
    /// after it; it is not a frame of its own (not a message, never a Pong).
    Rest(Bytes),
    /// Our HTTP response that switched the connection to WebSocket (the 101 and its header
    /// fields), queued ahead of everything so that the app's first messages leave in the same
    /// write. Not a frame; not counted in the WebSocket byte metrics.
    Head(Bytes),
    /// Send a Close frame with this code and reason, then stop writing.
    Close {
        /// Close code (RFC 6455 §7.4); `None` sends a Close without a body (the answer to a
        /// peer's Close that carried none).
        code: Option<u16>,
        /// Reason text (at most 123 bytes are sent).
        reason: String,
    },
}

impl Outbound {
    /// The uncompressed frame of a `Frame` or `Message` item (what a connection without
    /// permessage-deflate receives); `None` for `Close` and `Rest`. Handy for tests reading a queue.
    pub fn plain_frame(&self) -> Option<Bytes> {
        match self {
            Outbound::Frame(frame) => Some(frame.clone()),
            Outbound::Message(message) => Some(message.plain().clone()),
            Outbound::Rest(_) | Outbound::Head(_) | Outbound::Close { .. } => None,
        }
    }
}

/// Where a delivery may be written at once instead of queued: the session's socket
/// (`crate::session::direct`). Called under the outbox lock, so nothing here may block.
pub(crate) trait DirectSink: Send + Sync {
    /// The exact bytes the session's writer would send for `message` (the shared compressed
    /// frame when permessage-deflate was negotiated, else the plain frame).
    fn frame_for(&self, message: &SharedMessage) -> Bytes;
    /// Whether the connection negotiated permessage-deflate (framing may mean compressing, which
    /// is done outside the lock).
    fn deflates(&self) -> bool;
    /// One non-blocking write of `frame`; how many bytes went out (`WouldBlock` when none could).
    fn try_write(&self, frame: &[u8]) -> io::Result<usize>;
    /// Counts a direct write: `started` when it wrote the first bytes of a message.
    fn count(&self, started: bool, bytes: usize);
}

struct State {
    items: VecDeque<Outbound>,
    /// The receiver's waker, set while it waits on an empty outbox.
    waker: Option<Waker>,
    /// The session's socket while direct writes are allowed.
    direct: Option<Arc<dyn DirectSink>>,
    sender_gone: bool,
    receiver_gone: bool,
    /// The writer has taken items and not come back for more: its write may be in flight.
    writer_busy: bool,
    /// A Close was queued or the receiver is gone: no direct write ever again.
    direct_closed: bool,
}

impl State {
    /// Whether a direct write may go out now without passing or interleaving with queued bytes.
    fn direct_ready(&self) -> Option<&Arc<dyn DirectSink>> {
        if self.items.is_empty() && !self.writer_busy {
            self.direct.as_ref()
        } else {
            None
        }
    }
}

/// What both halves share: the queue and its byte budget, in one allocation (one per open
/// connection: memory per idle connection is a benchmark figure).
struct SharedOutbox {
    state: Mutex<State>,
    budget: ByteBudget,
}

type Shared = Arc<SharedOutbox>;

/// Creates an empty outbox whose queue may hold `send_queue` bytes: the sending half (one per
/// channel, shared by its handles) and the receiving half (the session's writer).
pub(crate) fn outbox(send_queue: usize) -> (OutboxSender, OutboxReceiver) {
    let shared = Arc::new(SharedOutbox {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            direct: None,
            sender_gone: false,
            receiver_gone: false,
            writer_busy: false,
            direct_closed: false,
        }),
        budget: ByteBudget::new(send_queue),
    });
    (OutboxSender(shared.clone()), OutboxReceiver(shared))
}

/// The producing half. Dropping it ends the receiver's stream once the queue is drained.
pub(crate) struct OutboxSender(Shared);

impl OutboxSender {
    /// The queue's byte budget (reserved by senders, released by the writer).
    pub(crate) fn budget(&self) -> &ByteBudget {
        &self.0.budget
    }
}

/// The item could not be queued because the receiver is gone (the item is dropped).
#[derive(Debug)]
pub(crate) struct Disconnected;

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
    pub(crate) fn send(&self, item: Outbound) -> Result<(), Disconnected> {
        let (waker, _socket) = {
            let mut state = lock(&self.0.state);
            if state.receiver_gone {
                return Err(Disconnected);
            }
            // Nothing may follow a Close (RFC 6455 §5.5.1): from here on only the writer
            // writes, and it stops after the Close.
            let socket = match item {
                Outbound::Close { .. } => {
                    state.direct_closed = true;
                    state.direct.take()
                }
                _ => None,
            };
            state.items.push_back(item);
            (state.waker.take(), socket)
        };
        // Woken outside the lock: the woken task may run at once on another worker.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Writes `message` straight to the session's socket when that keeps the order (nothing
    /// queued, the writer idle; see the module docs). `true` when the message is delivered:
    /// written whole, or written in part with the rest queued for the writer (reserved in
    /// `budget`, released by the writer like any queued bytes). `false` when nothing was
    /// written: the caller queues the message as usual.
    pub(crate) fn try_direct(&self, message: &SharedMessage, budget: &ByteBudget) -> bool {
        let mut state = lock(&self.0.state);
        let Some(socket) = state.direct_ready() else { return false };
        let frame = if socket.deflates() {
            // Compressing (once per message, shared) can take a while: not under the lock.
            let socket = socket.clone();
            drop(state);
            let frame = socket.frame_for(message);
            state = lock(&self.0.state);
            if state.direct_ready().is_none() {
                return false;
            }
            frame
        } else {
            // The plain frame: a reference-count bump.
            message.plain().clone()
        };
        let Some(socket) = state.direct.as_ref() else { return false };
        // The one system call made under the lock; it never blocks.
        match socket.try_write(&frame) {
            Ok(n) if n == frame.len() => {
                socket.count(true, n);
                true
            }
            Ok(0) => false,
            Ok(n) => {
                // A partial write: the rest goes first in the queue, as raw bytes (it is not a
                // frame of its own), and the writer finishes it once the socket drains.
                socket.count(true, n);
                let rest = frame.slice(n..);
                budget.force_reserve(rest.len());
                state.items.push_back(Outbound::Rest(rest));
                let waker = state.waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => {
                // A dead connection: the writer meets the same error with the queued message
                // and ends the session as before.
                let socket = state.direct.take();
                state.direct_closed = true;
                drop(state);
                drop(socket);
                false
            }
        }
    }

    /// Whether the receiver is gone (the session's writer has finished).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.0.state).receiver_gone
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.0.state);
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
    /// The queue's byte budget: the writer releases what it has written.
    pub fn budget(&self) -> &ByteBudget {
        &self.0.budget
    }
}

impl OutboxReceiver {
    /// The next item; `None` once the queue is empty and the sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let mut state = lock(&self.0.state);
            if let Some(item) = state.items.pop_front() {
                state.writer_busy = true;
                return Poll::Ready(Some(item));
            }
            // The writer is back for more: whatever it took is written.
            state.writer_busy = false;
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

    /// Lets deliveries write straight to `socket` (the session's own) from now on, unless a
    /// Close is already queued or the receiver is gone.
    pub(crate) fn attach_direct(&self, socket: Arc<dyn DirectSink>) {
        let mut state = lock(&self.0.state);
        if !state.direct_closed && !state.receiver_gone {
            state.direct = Some(socket);
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut state = lock(&self.0.state);
        match state.items.pop_front() {
            Some(item) => {
                state.writer_busy = true;
                Ok(item)
            }
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Gives the queue's memory back if nothing is queued (after the handshake's first write,
    /// before the connection settles into being idle).
    pub fn release_if_empty(&mut self) {
        let mut state = lock(&self.0.state);
        if state.items.is_empty() {
            state.items = VecDeque::new();
        }
    }

    /// Moves up to `max` queued items into `into` under one lock; returns how many.
    pub fn drain_into(&mut self, into: &mut Vec<Outbound>, max: usize) -> usize {
        let mut state = lock(&self.0.state);
        let n = state.items.len().min(max);
        into.extend(state.items.drain(..n));
        state.writer_busy |= n > 0;
        // A burst can leave a large ring behind; an idle connection should not keep it.
        if state.items.is_empty() && state.items.capacity() > SHRINK_ABOVE {
            state.items = VecDeque::new();
        }
        n
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let (items, socket) = {
            let mut state = lock(&self.0.state);
            state.receiver_gone = true;
            state.waker = None;
            // The session is ending and will close its socket: no direct write from now on.
            state.direct_closed = true;
            (std::mem::take(&mut state.items), state.direct.take())
        };
        // Dropped outside the lock (a shared message may be the last reference).
        drop(items);
        drop(socket);
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
        let (tx, mut rx) = outbox(1 << 20);
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
        let (tx, rx) = outbox(1 << 20);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.send(frame(1)), Err(Disconnected)));
    }

    #[test]
    fn drain_takes_at_most_max_and_releases_a_big_ring() {
        let (tx, mut rx) = outbox(1 << 20);
        for i in 0..200u8 {
            tx.send(frame(i)).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(rx.drain_into(&mut batch, 64), 64);
        assert_eq!(byte(batch.remove(0)), 0);
        batch.clear();
        assert_eq!(rx.drain_into(&mut batch, 1000), 136);
        assert_eq!(lock(&rx.0.state).items.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_send_and_ends_when_the_sender_goes() {
        let (tx, mut rx) = outbox(1 << 20);
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

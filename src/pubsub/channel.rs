//! A channel is one WebSocket connection as the rest of wsgate sees it: an id, the app it
//! belongs to, its peer, and a handle to its bounded outbound queue (drained by the session's
//! writer task). Frames are queued pre-encoded, so one encoded frame can be shared by many
//! channels without a copy.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::budget::{ByteBudget, SlowConsumerPolicy};
pub use super::outbox::Outbound;
use super::outbox::{outbox, OutboxReceiver, OutboxSender};
use super::Message;
use crate::metrics::{ActionLabel, Metrics};
use crate::raised_flag::RaisedFlag;
use crate::ws::close::code;
use crate::ws::codec::OpCode;
use crate::ws::deflate::SharedMessage;

/// A channel id, unique across nodes: `<node>-<sequence>`, e.g. `n1-000000000042`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(Arc<str>);

impl ChannelId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ChannelId {
    fn from(id: &str) -> Self {
        ChannelId(id.into())
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hands out channel ids for one node.
#[derive(Debug)]
pub struct ChannelIdGenerator {
    node: String,
    next: AtomicU64,
}

impl ChannelIdGenerator {
    /// A generator for ids prefixed with `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self { node: node.into(), next: AtomicU64::new(1) }
    }

    /// The next unused id.
    pub fn next_id(&self) -> ChannelId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        ChannelId(format!("{}-{:012}", self.node, n).into())
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("channel is closed")]
    Closed,
    /// The queue was over budget and the frame was dropped (policy `drop`).
    #[error("channel's send queue is full; message dropped")]
    Dropped,
    /// The queue was over budget and the channel is being closed with 1008 (policy `close`).
    #[error("channel's send queue is full; channel closed")]
    SlowConsumerClosed,
}

struct Inner {
    id: ChannelId,
    app: Arc<str>,
    url: Arc<str>,
    peer: SocketAddr,
    tx: OutboxSender,
    policy: SlowConsumerPolicy,
    /// Up once a close has started; the session waits on it in [`ChannelHandle::closing`].
    closing: RaisedFlag,
    /// The code of the Close this side sent first (0: none yet, or one without a code).
    close_code: AtomicU32,
    dropped: AtomicU64,
    /// Set when the channel joins a hub that has metrics; slow-consumer events are counted
    /// wherever the overflowing send came from (multicast, unicast, an app's own reply).
    metrics: OnceLock<Arc<Metrics>>,
}

/// A cheap, clonable handle to one WebSocket connection's outbound side.
#[derive(Clone)]
pub struct ChannelHandle(Arc<Inner>);

impl fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelHandle").field("id", &self.0.id).field("app", &self.0.app).finish()
    }
}

/// The receiving end of a channel's queue, owned by the session's writer.
pub struct ChannelQueue {
    /// Frames to write, in order.
    pub rx: OutboxReceiver,
}

impl ChannelQueue {
    /// The byte budget shared with the handle; the writer releases what it has written.
    pub fn budget(&self) -> &ByteBudget {
        self.rx.budget()
    }
}

/// Who a new channel is, for [`ChannelHandle::new`].
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    /// Its id.
    pub id: ChannelId,
    /// Name of the app it is bound to.
    pub app: Arc<str>,
    /// The URL path it connected to.
    pub url: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
}

impl ChannelHandle {
    /// Creates a channel with a queue of `send_queue` bytes and the given slow-consumer policy.
    pub fn new(info: ChannelInfo, send_queue: usize, policy: SlowConsumerPolicy) -> (Self, ChannelQueue) {
        let (tx, rx) = outbox(send_queue);
        let inner = Inner {
            id: info.id,
            app: info.app,
            url: info.url,
            peer: info.peer,
            tx,
            policy,
            closing: RaisedFlag::default(),
            close_code: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
            metrics: OnceLock::new(),
        };
        (Self(Arc::new(inner)), ChannelQueue { rx })
    }

    /// The channel's id.
    pub fn id(&self) -> &ChannelId {
        &self.0.id
    }

    /// The app the channel is bound to.
    pub fn app(&self) -> &str {
        &self.0.app
    }

    /// The URL path the client connected to.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// Counts this channel's slow-consumer events in `metrics` from now on (first call wins).
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.0.metrics.set(metrics);
    }

    fn count_slow_consumer(&self, action: &'static str) {
        if let Some(metrics) = self.0.metrics.get() {
            metrics.slow_consumer_events.get_or_create(&ActionLabel { action }).inc();
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.0.tx.budget().queued()
    }

    /// Frames dropped under the `drop` policy so far.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Whether the channel is closing or closed.
    pub fn is_closing(&self) -> bool {
        self.0.closing.is_raised() || self.0.tx.is_closed()
    }

    /// Resolves once a close has been started on this channel (by an app, the control API,
    /// the slow-consumer policy, the server's shutdown or the session itself). The session
    /// selects on it so a close decided elsewhere starts its close timeout at once, even while
    /// the peer is silent. One waiter at a time: a second one takes the wake-up over.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.0.closing.raised()
    }

    /// Queues a complete pre-encoded frame (shared bytes; no copy). Applies the slow-consumer
    /// policy when the queue is over budget. A whole unmasked Text/Binary frame is queued as a
    /// message, so the writer can compress it when the connection negotiated deflate.
    pub fn send_frame(&self, frame: Bytes) -> Result<(), SendError> {
        match SharedMessage::from_frame(frame.clone()) {
            Some(message) => self.send_shared(&Arc::new(message)),
            None => self.enqueue(frame.len(), Outbound::Frame(frame)),
        }
    }

    /// Queues a shared message (a reference-count bump; its frames are encoded and compressed
    /// at most once for all channels). The budget counts its plain size.
    pub fn send_shared(&self, message: &Arc<SharedMessage>) -> Result<(), SendError> {
        self.send_shared_with(message, true)
    }

    /// [`send_shared`](Self::send_shared), writing straight to the socket only when `direct`
    /// (a fan-out in a burst queues instead, see [`super::delivery_mode`]).
    pub(crate) fn send_shared_with(&self, message: &Arc<SharedMessage>, direct: bool) -> Result<(), SendError> {
        // The fast path: straight to the socket when nothing is queued (direct-written bytes
        // are never reserved in the budget; they are in the kernel's buffer already). It needs
        // no look at `closing` (`enqueue` has it): a queued Close or the writer's end turns
        // direct writes off in the outbox, and a message that slips in between `close` and
        // its Close being queued simply goes out before the Close. That saves a fan-out one
        // cold cache line per member (perf).
        if direct && self.0.tx.try_direct(message, self.0.tx.budget()) {
            return Ok(());
        }
        self.enqueue(message.plain().len(), Outbound::Message(message.clone()))
    }

    fn enqueue(&self, len: usize, item: Outbound) -> Result<(), SendError> {
        // The flag only: a writer that is gone is seen by `send` below, in the same lock.
        if self.0.closing.is_raised() {
            return Err(SendError::Closed);
        }
        if !self.0.tx.budget().try_reserve(len) {
            return match self.0.policy {
                SlowConsumerPolicy::Drop => {
                    self.0.dropped.fetch_add(1, Ordering::Relaxed);
                    self.count_slow_consumer("drop");
                    Err(SendError::Dropped)
                }
                SlowConsumerPolicy::Close => {
                    // Later frames see `Closed` above, so this counts once per channel.
                    self.count_slow_consumer("close");
                    self.close(code::POLICY, "send queue overflow");
                    Err(SendError::SlowConsumerClosed)
                }
            };
        }
        if self.0.tx.send(item).is_err() {
            self.0.tx.budget().release(len);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// Queues the handshake response ahead of any frame ([`Outbound::Head`]); called once,
    /// before the session starts, so nothing can be queued before it.
    pub(crate) fn queue_head(&self, head: Bytes) -> Result<(), SendError> {
        self.enqueue_unbudgeted(head.len(), Outbound::Head(head))
    }

    /// Queues a control frame (ping/pong), which is never subject to the budget policy.
    pub(crate) fn send_control(&self, frame: Bytes) -> Result<(), SendError> {
        if self.0.closing.is_raised() {
            return Err(SendError::Closed);
        }
        self.enqueue_unbudgeted(frame.len(), Outbound::Frame(frame))
    }

    /// Queues `item` (`len` bytes) past the budget's limit: counted, never refused by it.
    fn enqueue_unbudgeted(&self, len: usize, item: Outbound) -> Result<(), SendError> {
        self.0.tx.budget().force_reserve(len);
        self.0.tx.send(item).map_err(|_| {
            self.0.tx.budget().release(len);
            SendError::Closed
        })
    }

    /// Encodes and queues one data message.
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        let (opcode, payload) = match message {
            Message::Text(text) => (OpCode::Text, text),
            Message::Binary(data) => (OpCode::Binary, data),
        };
        self.send_shared(&Arc::new(SharedMessage::new(opcode, payload)))
    }

    /// Encodes and queues one text message.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send_shared(&Arc::new(SharedMessage::new(OpCode::Text, text.as_bytes())))
    }

    /// Encodes and queues one binary message.
    pub fn send_binary(&self, data: &[u8]) -> Result<(), SendError> {
        self.send_shared(&Arc::new(SharedMessage::new(OpCode::Binary, data)))
    }

    /// Starts the closing handshake with `code` and `reason`; later sends fail with `Closed`.
    /// Only the first call has an effect.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.0.closing.raise() {
            return;
        }
        self.0.close_code.store(u32::from(code), Ordering::Release);
        let _ = self.0.tx.send(Outbound::Close { code: Some(code), reason: reason.to_owned() });
        // Woken last: the session reads the code when it wakes.
        self.0.closing.wake();
    }

    /// The code of the Close this side started with [`ChannelHandle::close`], if it did.
    pub fn close_code(&self) -> Option<u16> {
        u16::try_from(self.0.close_code.load(Ordering::Acquire)).ok().filter(|c| *c != 0)
    }

    /// Answers the peer's Close (RFC 6455 §5.5.1: echo its status code) unless we already sent
    /// one. Returns whether an answer was queued.
    pub(crate) fn answer_close(&self, peer_code: Option<u16>) -> bool {
        if !self.0.closing.raise() {
            return false;
        }
        let queued = self.0.tx.send(Outbound::Close { code: peer_code, reason: String::new() }).is_ok();
        self.0.closing.wake();
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(queue: usize, policy: SlowConsumerPolicy) -> (ChannelHandle, ChannelQueue) {
        let info = ChannelInfo {
            id: ChannelIdGenerator::new("t").next_id(),
            app: "echo".into(),
            url: "/e".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        ChannelHandle::new(info, queue, policy)
    }

    #[test]
    fn ids_are_prefixed_and_sequential() {
        let ids = ChannelIdGenerator::new("n1");
        assert_eq!(ids.next_id().as_str(), "n1-000000000001");
        assert_eq!(ids.next_id().as_str(), "n1-000000000002");
    }

    #[test]
    fn drop_policy_counts_and_keeps_the_channel_open() {
        let (ch, mut q) = channel(8, SlowConsumerPolicy::Drop);
        ch.send_frame(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(ch.send_frame(Bytes::from_static(b"x")), Err(SendError::Dropped));
        assert_eq!(ch.dropped(), 1);
        assert!(!ch.is_closing());
        assert!(matches!(q.rx.try_recv(), Ok(Outbound::Frame(_))));
    }

    #[test]
    fn close_policy_queues_a_1008_close() {
        let (ch, mut q) = channel(8, SlowConsumerPolicy::Close);
        ch.send_frame(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(ch.send_frame(Bytes::from_static(b"x")), Err(SendError::SlowConsumerClosed));
        assert!(matches!(q.rx.try_recv(), Ok(Outbound::Frame(_))));
        assert!(matches!(q.rx.try_recv(), Ok(Outbound::Close { code: Some(1008), .. })));
        assert_eq!(ch.send_text("late"), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn closing_resolves_when_a_close_starts() {
        let (ch, _q) = channel(8, SlowConsumerPolicy::Close);
        let waiter = tokio::spawn({
            let ch = ch.clone();
            async move { ch.closing().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        ch.send_frame(Bytes::from_static(b"12345678")).unwrap();
        let _ = ch.send_frame(Bytes::from_static(b"overflow"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        // and at once when already closing
        ch.closing().await;
    }
}

//! The Redis broker (`[broker] kind = "redis"`): nodes share subscriptions through Redis
//! pub/sub (DESIGN §4).
//!
//! - A multicast is delivered locally by the hub, then PUBLISHed once on
//!   `wsgate:sub:<name>` (`wsgate:all` for `all`) as an [`Envelope`] carrying the origin node,
//!   the kind, the exclude list and the bytes. Each receiving node encodes the frame once for
//!   all its members; the origin ignores its own copy.
//! - A send to a channel of another node is PUBLISHed on `wsgate:node:<node>`, the node
//!   prefix of the channel id.
//! - A node SUBSCRIBEs only to the subscriptions that have local members (plus its node
//!   channel and `wsgate:all`). The hub reports first-member/last-member transitions; the
//!   connection task then compares the hub's membership *at that moment* with what Redis has,
//!   so racing joins and leaves converge instead of losing a subscription.
//! - Nothing on the hub's path waits on Redis: multicasts are queued to a publisher task
//!   (bounded to 64 MiB; over that, or while disconnected, a message is counted and dropped).
//! - On a lost connection the node keeps serving its local subscribers, reconnects with
//!   exponential backoff (100 ms doubling to 5 s, ±20 % jitter) and resubscribes everything
//!   the hub has. What could not be relayed meanwhile is counted (`broker_errors_total`).
//!   Messages published by other nodes while this one was disconnected are not replayed:
//!   Redis pub/sub has no history. They are counted, though: the publisher numbers what it
//!   sends per Redis channel and receivers count the numbers they never saw
//!   (`broker_missed_total`; see [`sequence`](super::sequence)).
//! - With Redis Sentinel (`[broker] sentinels`, `master_name`) every (re)connect first asks
//!   the sentinels, in order, for the current primary (`SENTINEL get-master-addr-by-name`)
//!   and checks with `ROLE` that it is one; the liveness check repeats `ROLE`, so a primary
//!   demoted by a failover (still reachable, now a replica) is left within
//!   [`PING_INTERVAL`] for the new one.
//! - With Redis Cluster (`[broker] cluster`) the same channels use sharded pub/sub
//!   (`SPUBLISH`/`SSUBSCRIBE`) through the `redis` crate's cluster client; see `connection.rs`
//!   for how a moved slot is subscribed again and a lost node becomes a reconnect.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::cluster_routing::Slot;
use tokio::sync::{mpsc, watch};

mod connection;
mod settings;

pub use connection::{connect, Commands, Connected, Received, Subscriber};
pub use settings::{ClusterSettings, RedisSettings, SentinelSettings};

use super::sequence::{GapDetector, Numbering};
use super::{
    deliver_direct, Broker, BrokerCounters, BrokerError, Control, Envelope, Payload, ALL_CHANNEL, NODE_PREFIX,
    SUB_PREFIX,
};
use crate::pubsub::channel::ChannelId;
use crate::pubsub::hub::{encode, Hub, ALL};
use crate::pubsub::Message;

/// Bytes waiting for the publisher; beyond this a multicast is counted and dropped (one
/// message larger than this still passes an empty queue).
const OUTBOUND_BYTES: usize = 64 << 20;
/// Messages PUBLISHed in one pipeline (one round trip).
const BATCH: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Limit on connecting, on each command's answer, and on the liveness PING.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection is checked with PING (a silent network drop has no FIN).
const PING_INTERVAL: Duration = Duration::from_secs(5);

struct Shared {
    node: String,
    connected: AtomicBool,
    counters: BrokerCounters,
    unrelayed: AtomicU64,
    connects: AtomicU64,
    /// Bytes in the outbound queue.
    queued: AtomicUsize,
    /// The generation of a connection a PUBLISH failed on: the connection task of that
    /// generation reconnects (a later connection is not torn down by a stale failure).
    failed: watch::Sender<u64>,
}

impl Shared {
    fn count_unrelayed(&self, n: u64) {
        self.unrelayed.fetch_add(n, Ordering::Relaxed);
        self.counters.undelivered(n);
    }
}

/// A node's connection to the cluster through Redis.
pub struct RedisBroker {
    shared: Arc<Shared>,
    outbound: mpsc::UnboundedSender<(String, Vec<u8>)>,
    interest: mpsc::UnboundedSender<Arc<str>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.shared.node)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Creates the broker for node `node`, attaches it to `hub` and starts its tasks (must run
    /// inside a tokio runtime). It connects in the background: an unreachable Redis is not an
    /// error here, only a reason to retry. `counters` are the ones to export (pass the
    /// metrics registry's).
    pub fn start(
        settings: &RedisSettings,
        node: &str,
        hub: &Arc<Hub>,
        counters: BrokerCounters,
    ) -> Result<Arc<Self>, String> {
        settings.check()?; // unusable settings fail now, not at the first connect
        let shared = Arc::new(Shared {
            node: node.to_owned(),
            connected: AtomicBool::new(false),
            counters,
            unrelayed: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            failed: watch::channel(0).0,
        });
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let broker = Arc::new(RedisBroker { shared: shared.clone(), outbound, interest, stop });
        if !hub.set_broker(broker.clone()) {
            return Err("the hub already has a broker".into());
        }
        let (conn_tx, conn_rx) = watch::channel(None);
        tokio::spawn(publisher(shared.clone(), outbound_rx, conn_rx, stop_rx.clone()));
        tokio::spawn(supervise(shared, settings.clone(), Arc::downgrade(hub), interest_rx, conn_tx, stop_rx));
        Ok(broker)
    }

    /// Messages that could not be relayed to other nodes so far (part of [`Broker::errors`]).
    pub fn unrelayed(&self) -> u64 {
        self.shared.unrelayed.load(Ordering::Relaxed)
    }

    /// Successful connections so far (1 after the first, +1 per reconnect).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    fn enqueue(&self, channel: String, payload: Vec<u8>) -> Result<(), BrokerError> {
        if !self.is_connected() {
            self.shared.count_unrelayed(1);
            return Err(BrokerError::Disconnected);
        }
        let len = channel.len() + payload.len();
        let before = self.shared.queued.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > OUTBOUND_BYTES {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            self.shared.count_unrelayed(1);
            return Err(BrokerError::Overloaded);
        }
        self.outbound.send((channel, payload)).map_err(|_| {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            self.shared.count_unrelayed(1);
            BrokerError::Disconnected
        })
    }
}

impl Broker for RedisBroker {
    fn node(&self) -> &str {
        &self.shared.node
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, name: &str, message: &Message, exclude: &[ChannelId]) -> Option<bool> {
        let channel = if name == ALL { ALL_CHANNEL.to_owned() } else { format!("{SUB_PREFIX}{name}") };
        Some(self.enqueue(channel, Envelope::encode(&self.shared.node, "", exclude, message)).is_ok())
    }

    fn send(&self, node: &str, id: &ChannelId, message: &Message) -> Result<(), BrokerError> {
        self.enqueue(format!("{NODE_PREFIX}{node}"), Envelope::encode(&self.shared.node, id.as_str(), &[], message))
    }

    fn control(&self, node: &str, id: &ChannelId, op: &Control) -> Result<(), BrokerError> {
        self.enqueue(format!("{NODE_PREFIX}{node}"), Envelope::encode_control(&self.shared.node, id.as_str(), op))
    }

    fn interest_changed(&self, name: &str) {
        let _ = self.interest.send(name.into());
    }

    fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    fn errors(&self) -> u64 {
        self.shared.counters.errors.get()
    }

    fn close(&self) {
        let _ = self.stop.send(true);
    }
}

/// PUBLISHes queued messages, pipelined in batches, on the current connection.
async fn publisher(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    conn: watch::Receiver<Option<(u64, Commands)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut numbering = Numbering::default();
    loop {
        batch.clear();
        tokio::select! {
            n = queue.recv_many(&mut batch, BATCH) => if n == 0 { return },
            _ = stop.changed() => return,
        }
        let bytes: usize = batch.iter().map(|(c, p)| c.len() + p.len()).sum();
        let current = conn.borrow().clone();
        let Some((generation, mut current)) = current else {
            shared.queued.fetch_sub(bytes, Ordering::AcqRel);
            shared.count_unrelayed(batch.len() as u64);
            continue;
        };
        for (channel, payload) in batch.iter_mut() {
            Envelope::stamp(payload, numbering.next(channel));
        }
        let result = tokio::time::timeout(IO_TIMEOUT, publish_batch(&mut current, &batch)).await;
        shared.queued.fetch_sub(bytes, Ordering::AcqRel);
        if !matches!(result, Ok(Ok(()))) {
            tracing::warn!(messages = batch.len(), "broker: PUBLISH failed; messages not relayed");
            shared.count_unrelayed(batch.len() as u64);
            // Counted here; new streams keep receivers from counting them again as gaps.
            for (channel, _) in &batch {
                numbering.forget(channel);
            }
            shared.failed.send_replace(generation);
        }
    }
}

/// A message for the publisher: the Redis channel and the bytes.
type Outgoing = (String, Vec<u8>);

/// PUBLISHes `batch` in order: one pipeline (one round trip) on a single server; in a
/// cluster one `SPUBLISH` pipeline per slot (a pipeline is routed whole to one shard), all in
/// flight at once. What one channel is sent stays in order: a channel has one slot.
async fn publish_batch(conn: &mut Commands, batch: &[Outgoing]) -> redis::RedisResult<()> {
    let command = conn.publish_command();
    let pipeline = |items: &mut dyn Iterator<Item = &Outgoing>| {
        let mut pipe = redis::pipe();
        for (channel, payload) in items {
            pipe.cmd(command).arg(channel).arg(payload.as_slice()).ignore();
        }
        pipe
    };
    match conn {
        Commands::Server(_) => pipeline(&mut batch.iter()).query_async::<()>(conn).await,
        Commands::Cluster(cluster) => {
            let mut by_slot: Vec<(Slot, Vec<&Outgoing>)> = Vec::new();
            for item in batch {
                let slot = Slot::for_key(&item.0);
                match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, items)) => items.push(item),
                    None => by_slot.push((slot, vec![item])),
                }
            }
            let sends = by_slot.into_iter().map(|(_, items)| {
                let mut cluster = cluster.clone();
                let pipe = pipeline(&mut items.into_iter());
                async move { pipe.query_async::<()>(&mut cluster).await }
            });
            futures_util::future::join_all(sends).await.into_iter().collect()
        }
    }
}

/// Connects, subscribes, relays received messages to the hub, follows membership, and
/// reconnects with backoff; ends when stopped or when the hub is gone.
async fn supervise(
    shared: Arc<Shared>,
    settings: RedisSettings,
    hub: Weak<Hub>,
    mut interest: mpsc::UnboundedReceiver<Arc<str>>,
    conn: watch::Sender<Option<(u64, Commands)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    // Kept across reconnects: what other nodes published meanwhile shows as gaps.
    let mut gaps = GapDetector::default();
    loop {
        if *stop.borrow() {
            return;
        }
        match start_session(&settings, &shared.node, &hub).await {
            Ok((session, primary)) => {
                backoff = BACKOFF_MIN;
                failures = 0;
                let generation = shared.connects.fetch_add(1, Ordering::Relaxed) + 1;
                conn.send_replace(Some((generation, session.conn.clone())));
                shared.connected.store(true, Ordering::Release);
                let server = primary.as_deref().unwrap_or(if settings.is_cluster() { "cluster" } else { "url" });
                tracing::info!(node = %shared.node, subscriptions = session.subscribed.len(), primary = server, "broker: connected to Redis");
                gaps.retain(|channel| {
                    channel.strip_prefix(SUB_PREFIX).is_none_or(|name| session.subscribed.contains(name))
                });
                let ended = run(&shared, generation, &hub, session, &mut gaps, &mut interest, &mut stop).await;
                shared.connected.store(false, Ordering::Release);
                conn.send_replace(None);
                match ended {
                    Ended::Stopped => return,
                    Ended::Lost(why) => {
                        tracing::warn!(node = %shared.node, %why, "broker: lost the Redis connection; serving local subscribers only")
                    }
                }
            }
            Err(why) => {
                failures += 1;
                shared.counters.connect_failed();
                // Log the first failure of a streak loudly, then once in a while.
                if failures == 1 || failures % 30 == 0 {
                    tracing::warn!(node = %shared.node, %why, failures, "broker: cannot connect to Redis; retrying");
                }
            }
        }
        if hub.strong_count() == 0 {
            return;
        }
        let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        // Resubscribing reads the hub's membership afresh, which covers these events.
        while interest.try_recv().is_ok() {}
    }
}

struct Session {
    subscriber: Subscriber,
    conn: Commands,
    /// Subscription names subscribed in Redis (besides the node channel and `all`).
    subscribed: HashSet<String>,
    /// Sentinel: the server must stay the primary (checked with every PING).
    must_be_primary: bool,
}

enum Ended {
    Stopped,
    Lost(String),
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {IO_TIMEOUT:?}")),
    }
}

/// Connects and subscribes the node channel, `all`, and every subscription with local members.
async fn start_session(
    settings: &RedisSettings,
    node: &str,
    hub: &Weak<Hub>,
) -> Result<(Session, Option<String>), String> {
    let Connected { commands, mut subscriber, primary } = connect(settings).await?;
    subscriber.subscribe(&[format!("{NODE_PREFIX}{node}"), ALL_CHANNEL.to_owned()]).await?;
    let names = hub.upgrade().map(|h| h.local_subscription_names()).unwrap_or_default();
    if !names.is_empty() {
        let channels: Vec<String> = names.iter().map(|n| format!("{SUB_PREFIX}{n}")).collect();
        subscriber.subscribe(&channels).await?;
    }
    let session = Session {
        subscriber,
        conn: commands,
        subscribed: names.into_iter().collect(),
        must_be_primary: settings.sentinel.is_some(),
    };
    Ok((session, primary))
}

async fn run(
    shared: &Shared,
    generation: u64,
    hub: &Weak<Hub>,
    mut session: Session,
    gaps: &mut GapDetector,
    interest: &mut mpsc::UnboundedReceiver<Arc<str>>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let node_channel = format!("{NODE_PREFIX}{}", shared.node);
    let mut failed = shared.failed.subscribe();
    loop {
        tokio::select! {
            received = session.subscriber.next() => {
                let (channel, payload) = match received {
                    Received::Message { channel, payload } => (channel, payload),
                    Received::Moved(channel) => {
                        tracing::info!(node = %shared.node, %channel, "broker: the cluster moved a subscribed slot; subscribing at its new owner");
                        if let Err(why) = session.subscriber.subscribe(&[channel]).await {
                            return Ended::Lost(why);
                        }
                        continue;
                    }
                    Received::Lost(why) => return Ended::Lost(why),
                };
                let Some(hub) = hub.upgrade() else { return Ended::Stopped };
                deliver(shared, &hub, &node_channel, &channel, &payload, gaps);
            }
            name = interest.recv() => {
                let Some(name) = name else { return Ended::Stopped };
                let Some(hub) = hub.upgrade() else { return Ended::Stopped };
                if let Err(why) = reconcile(&hub, &mut session, gaps, &name).await {
                    return Ended::Lost(why);
                }
            }
            _ = ping.tick() => {
                // Both connections: a network that drops silently sends no FIN.
                if let Err(why) = timed("PING", redis::cmd("PING").query_async::<String>(&mut session.conn)).await {
                    return Ended::Lost(why);
                }
                if let Err(why) = session.subscriber.ping().await {
                    return Ended::Lost(why);
                }
                // Sentinel: a failover may have demoted this server while it stayed reachable.
                if session.must_be_primary {
                    if let Err(why) = settings::check_primary(&mut session.conn).await {
                        return Ended::Lost(why);
                    }
                }
            }
            changed = failed.changed() => {
                if changed.is_err() || *failed.borrow_and_update() == generation {
                    return Ended::Lost("PUBLISH failed".into());
                }
            }
            _ = stop.changed() => return Ended::Stopped,
        }
    }
}

/// Makes Redis's subscription to `name` match the hub's membership now.
async fn reconcile(hub: &Hub, session: &mut Session, gaps: &mut GapDetector, name: &str) -> Result<(), String> {
    let want = hub.has_local_members(name);
    let have = session.subscribed.contains(name);
    let channel = format!("{SUB_PREFIX}{name}");
    if want && !have {
        session.subscriber.subscribe(&[channel]).await?;
        session.subscribed.insert(name.to_owned());
    } else if !want && have {
        session.subscriber.unsubscribe(&channel).await?;
        session.subscribed.remove(name);
        gaps.forget(&channel);
    }
    Ok(())
}

/// Hands one received message to the hub's node-local fan-out (encoding it once here), after
/// counting the messages of its origin on this channel that never arrived.
fn deliver(shared: &Shared, hub: &Hub, node_channel: &str, channel: &str, payload: &[u8], gaps: &mut GapDetector) {
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(error) => {
            tracing::warn!(channel, %error, "broker: ignored a malformed message");
            return;
        }
    };
    if envelope.origin == shared.node {
        return; // delivered locally when it was published
    }
    if let Some(seq) = envelope.sequence {
        let missed = gaps.observe(channel, &envelope.origin, seq);
        if missed > 0 {
            shared.counters.missed(missed);
            tracing::warn!(node = %shared.node, origin = %envelope.origin, channel, missed, "broker: messages relayed by another node never arrived (subscriber connection lapsed)");
        }
    }
    if channel == node_channel {
        deliver_direct(hub, &envelope);
        return;
    }
    let Payload::Message(message) = &envelope.payload else {
        return; // control operations travel only on node channels
    };
    let name = if channel == ALL_CHANNEL {
        ALL
    } else if let Some(name) = channel.strip_prefix(SUB_PREFIX) {
        name
    } else {
        return;
    };
    hub.deliver_relayed(name, encode(message), message, &envelope.exclude);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::channel::{ChannelIdGenerator, ChannelQueue, Outbound};
    use crate::pubsub::hub::test_support::open;
    use bytes::Bytes;

    fn frames(queue: &mut ChannelQueue) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(f) = queue.rx.try_recv().ok().as_ref().and_then(Outbound::plain_frame) {
            out.push(f);
        }
        out
    }

    #[test]
    fn received_messages_are_encoded_once_per_node_and_filtered() {
        let shared = Shared {
            node: "me".into(),
            connected: AtomicBool::new(true),
            counters: BrokerCounters::default(),
            unrelayed: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            failed: watch::channel(0).0,
        };
        let hub = Hub::new();
        let ids = ChannelIdGenerator::new("me");
        let mut chans: Vec<_> = (0..3).map(|_| open(&hub, &ids)).collect();
        for (h, _) in &chans {
            hub.subscribe(h.id(), "room").unwrap();
        }
        let node_channel = "wsgate:node:me";
        let mut gaps = GapDetector::default();
        let msg = Message::Text(Bytes::from_static(b"hi"));
        let excluded = chans[2].0.id().clone();
        deliver(
            &shared,
            &hub,
            node_channel,
            "wsgate:sub:room",
            &Envelope::encode("other", "", &[excluded], &msg),
            &mut gaps,
        );
        let (a, b, c) = (frames(&mut chans[0].1), frames(&mut chans[1].1), frames(&mut chans[2].1));
        assert_eq!((a.len(), b.len(), c.len()), (1, 1, 0));
        assert_eq!(a[0].as_ptr(), b[0].as_ptr(), "one encoding shared by the node's members");

        // Its own publications, garbage and control on subscription channels are ignored.
        deliver(&shared, &hub, node_channel, "wsgate:sub:room", &Envelope::encode("me", "", &[], &msg), &mut gaps);
        deliver(&shared, &hub, node_channel, "wsgate:sub:room", b"\x00garbage", &mut gaps);
        let close = Control::Close { code: 4000, reason: String::new() };
        let target = chans[0].0.id().to_string();
        deliver(
            &shared,
            &hub,
            node_channel,
            "wsgate:sub:room",
            &Envelope::encode_control("other", &target, &close),
            &mut gaps,
        );
        assert!(chans.iter_mut().all(|(_, q)| frames(q).is_empty()));
        assert!(!chans[0].0.is_closing());

        // On the node channel: a send to one channel, and control operations.
        deliver(&shared, &hub, node_channel, node_channel, &Envelope::encode("other", &target, &[], &msg), &mut gaps);
        assert_eq!(frames(&mut chans[0].1).len(), 1);
        assert!(frames(&mut chans[1].1).is_empty());
        deliver(&shared, &hub, node_channel, ALL_CHANNEL, &Envelope::encode("other", "", &[], &msg), &mut gaps);
        assert!(chans.iter_mut().all(|(_, q)| frames(q).len() == 1), "`all` reaches every channel");
        deliver(
            &shared,
            &hub,
            node_channel,
            node_channel,
            &Envelope::encode_control("other", &target, &close),
            &mut gaps,
        );
        assert!(chans[0].0.is_closing());

        // Numbered messages: a jump in one origin's numbers on a channel is counted as missed.
        let numbered = |number| {
            let mut bytes = Envelope::encode("other", "", &[], &msg);
            Envelope::stamp(&mut bytes, crate::pubsub::broker::Sequence { stream: 5, number });
            bytes
        };
        for number in [1, 2, 5, 6] {
            deliver(&shared, &hub, node_channel, "wsgate:sub:room", &numbered(number), &mut gaps);
        }
        assert_eq!(shared.counters.missed.get(), 2, "3 and 4 never arrived");
        assert_eq!(frames(&mut chans[1].1).len(), 4, "what did arrive is delivered");
    }
}

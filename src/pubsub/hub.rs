//! The `Hub`: channels, named subscriptions, `send` and `multicast` (DESIGN §4).
//!
//! - A multicast encodes its frame **once** and queues the same shared bytes to every member
//!   (a reference-count bump each, no copy of the payload).
//! - Fan-out on one subscription is serialised by that subscription's own order lock, so
//!   every member sees the subscription's messages in the same order; unrelated subscriptions
//!   live in different shards and never contend. Membership has a lock of its own, held only
//!   briefly: a fan-out iterates a snapshot, so joining and leaving never wait for one.
//! - Queues never block: a full queue triggers that channel's slow-consumer policy only.
//! - Subscribing twice is idempotent; a closed channel leaves every subscription at once.
//! - The reserved subscription [`ALL`] reaches every open channel of every app; its fan-out
//!   is serialised by one lock of its own so it, too, keeps one order for every channel.
//! - With metrics attached ([`Hub::with_metrics`]) a multicast records `multicast_total`,
//!   `multicast_deliveries_total` and `multicast_duration_seconds`; channels count their
//!   slow-consumer events; `subscriptions_active` follows every membership change.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Instant;

use bytes::Bytes;

use super::channel::{ChannelHandle, ChannelId, SendError};
use super::name_set::NameSet;
use super::relay::{self, Broker, BrokerError};
use crate::locks::{lock, read, write};
use crate::metrics::Metrics;
use crate::pubsub::Message;
use crate::ws::close::is_valid_wire_code;
use crate::ws::codec::{server_frame, OpCode};
use crate::ws::deflate::SharedMessage;

/// The reserved subscription that reaches every WebSocket.
pub const ALL: &str = "all";

const SHARDS: usize = 16;

/// Errors of hub operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// No open channel has this id.
    #[error("no open channel with id {0}")]
    UnknownChannel(String),
    /// The channel exists but could not take the message.
    #[error("channel {id}: {error}")]
    Send {
        /// The channel.
        id: String,
        /// Why.
        error: SendError,
    },
    /// `all` is maintained by the hub; channels cannot join or leave it.
    #[error("`all` is reserved: every channel is always in it")]
    Reserved,
    /// A close code that may not be sent (RFC 6455 §7.4), or a reason over 123 bytes.
    #[error("invalid close: {0}")]
    InvalidClose(String),
    /// The channel is on another node and the broker could not take the message.
    #[error("channel {id} is on another node: {error}")]
    Remote {
        /// The channel.
        id: String,
        /// Why.
        error: BrokerError,
    },
}

/// Longest close reason: a control frame payload is at most 125 bytes (RFC 6455 §5.5),
/// two of which carry the code.
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// What one multicast did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Members the frame was queued to.
    pub delivered: usize,
    /// Members skipped by `exclude`.
    pub excluded: usize,
    /// Members whose queue was full (dropped, or closed with 1008).
    pub overflowed: usize,
    /// Members that were already closing.
    pub closed: usize,
    /// Whether the message was handed to the broker for the other nodes (`Hub::multicast`
    /// only): `None` when there is no other node, `Some(false)` when it could not be relayed
    /// (the counts above are this node's either way).
    pub relayed: Option<bool>,
}

/// Summary of one open channel, for the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    /// Channel id.
    pub id: ChannelId,
    /// App name.
    pub app: String,
    /// URL path.
    pub url: String,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// Subscriptions it is in (excluding `all`).
    pub subscriptions: Vec<String>,
}

struct ChannelEntry {
    handle: ChannelHandle,
    subscriptions: NameSet,
}

/// One named subscription: who is in it, and the order of its fan-outs.
///
/// Two locks, so that joining or leaving never waits for a fan-out: a direct fan-out to
/// 10,000 members writes to 10,000 sockets (tens of milliseconds), and holding the member
/// lock that long would stall every subscribe, unsubscribe and close meanwhile.
#[derive(Default)]
struct Subscription {
    /// Membership; held only to change it or to take a snapshot.
    members: Mutex<Members>,
    /// Held across one fan-out, so concurrent multicasts reach every member in one order.
    order: Mutex<()>,
}

/// A subscription's members, with the snapshot fan-outs iterate.
#[derive(Default)]
struct Members {
    map: HashMap<ChannelId, ChannelHandle>,
    /// The members as of the last change; shared by every fan-out until the next change,
    /// so a stable subscription costs its fan-outs no copying.
    snapshot: Option<Arc<[(ChannelId, ChannelHandle)]>>,
}

impl Members {
    fn insert(&mut self, id: ChannelId, handle: ChannelHandle) {
        self.snapshot = None;
        self.map.insert(id, handle);
    }

    fn remove(&mut self, id: &ChannelId) {
        if self.map.remove(id).is_some() {
            self.snapshot = None;
        }
    }

    fn snapshot(&mut self) -> Arc<[(ChannelId, ChannelHandle)]> {
        let map = &self.map;
        self.snapshot
            .get_or_insert_with(|| map.iter().map(|(id, handle)| (id.clone(), handle.clone())).collect())
            .clone()
    }
}

/// Channels and subscriptions of one node.
pub struct Hub {
    channels: Vec<RwLock<HashMap<ChannelId, ChannelEntry>>>,
    subscriptions: Vec<RwLock<HashMap<Arc<str>, Arc<Subscription>>>>,
    /// Serialises multicasts to `all`, which read every channel shard.
    all_order: Mutex<()>,
    metrics: Option<Arc<Metrics>>,
    /// Relays to other nodes (`[broker]`); unset = this node alone.
    broker: OnceLock<Arc<dyn Broker>>,
    /// Apps that take the messages other nodes relay on a subscription (see
    /// [`Hub::observe_relayed`]); held weakly, so a dropped app stops observing by itself.
    relay_observers: RwLock<HashMap<String, Weak<dyn RelayObserver>>>,
}

/// An app's hand in the messages that other nodes relay on one of its subscriptions, e.g.
/// chat, which keeps them in its room's history before they reach the local members.
pub trait RelayObserver: Send + Sync {
    /// Delivers a relayed message (`frame` is `message` encoded once) to this node's members
    /// except `exclude`, doing whatever the app keeps of it; returns the local delivery.
    fn relayed(&self, hub: &Hub, frame: Bytes, message: &Message, exclude: &[ChannelId]) -> Delivery;
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("channels", &self.channel_count()).finish_non_exhaustive()
    }
}

fn shard_of<K: Hash + ?Sized>(key: &K) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

/// `message` encoded once for sharing between members ([`Hub::multicast_shared`]).
pub(crate) fn shared_message(message: &Message) -> SharedMessage {
    match message {
        Message::Text(text) => SharedMessage::new(OpCode::Text, text),
        Message::Binary(data) => SharedMessage::new(OpCode::Binary, data),
    }
}

/// Encodes a message as one complete server frame (done once per multicast).
pub(crate) fn encode(message: &Message) -> Bytes {
    match message {
        Message::Text(text) => server_frame(OpCode::Text, text),
        Message::Binary(data) => server_frame(OpCode::Binary, data),
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            subscriptions: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            all_order: Mutex::new(()),
            metrics: None,
            broker: OnceLock::new(),
            relay_observers: RwLock::new(HashMap::new()),
        }
    }

    /// An empty hub that records its multicasts, subscriptions and its channels' slow-consumer
    /// events in `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self { metrics: Some(metrics), ..Self::new() }
    }

    /// The metrics this hub records into, if any (apps count their own events there too).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    fn update_subscription_gauge(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.subscriptions_active.set(self.subscription_count() as i64);
        }
    }

    // --- broker hook (DESIGN §4): the only places the hub talks to other nodes -------------

    /// Connects the hub to a broker, once; `false` when one was already set. From then on
    /// `multicast` and `send` also reach the channels of other nodes.
    pub fn set_broker(&self, broker: Arc<dyn Broker>) -> bool {
        self.broker.set(broker).is_ok()
    }

    /// The broker, when this hub is part of a cluster.
    pub fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.get()
    }

    /// Whether this node wants the messages other nodes publish on subscription `name`: it
    /// has a member there (`all`: any open channel), or an app observes it
    /// ([`Hub::observe_relayed`]).
    pub fn has_local_members(&self, name: &str) -> bool {
        if name == ALL {
            return self.channel_count() > 0;
        }
        self.observer(name).is_some()
            || read(self.subscription_shard(name)).get(name).is_some_and(|s| !lock(&s.members).map.is_empty())
    }

    /// Names of the subscriptions this node wants relayed (excluding `all`): those with local
    /// members and those an app observes, for resubscribing.
    pub fn local_subscription_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.subscriptions().into_iter().skip(1).filter(|(_, n)| *n > 0).map(|(name, _)| name).collect();
        let observed = read(&self.relay_observers);
        names.extend(observed.iter().filter(|(_, o)| o.strong_count() > 0).map(|(name, _)| name.clone()));
        names.sort();
        names.dedup();
        names
    }

    /// Lets `observer` take every message other nodes relay on subscription `name`, whether
    /// or not the subscription has local members, as long as the observer is alive (it is
    /// held weakly; registering again for `name` replaces the previous one). The broker is
    /// told, so this node receives the subscription's messages from then on.
    pub fn observe_relayed(&self, name: &str, observer: Weak<dyn RelayObserver>) {
        let mut observers = write(&self.relay_observers);
        observers.retain(|_, o| o.strong_count() > 0);
        observers.insert(name.to_owned(), observer);
        drop(observers);
        self.interest_changed(name);
    }

    fn observer(&self, name: &str) -> Option<Arc<dyn RelayObserver>> {
        read(&self.relay_observers).get(name).and_then(Weak::upgrade)
    }

    /// Delivers a message relayed by another node on subscription `name` to this node's
    /// members (the brokers' entry point): through the app observing `name` if there is one,
    /// else straight to the members.
    pub fn deliver_relayed(&self, name: &str, frame: Bytes, message: &Message, exclude: &[ChannelId]) -> Delivery {
        match self.observer(name) {
            Some(observer) => observer.relayed(self, frame, message, exclude),
            None => self.multicast_frame(name, frame, exclude),
        }
    }

    /// Relays a multicast on subscription `name` to the other nodes without delivering it
    /// here (for an app that delivered it locally itself, e.g. with [`Hub::multicast_frame`]).
    /// The outcome is [`Delivery::relayed`]'s.
    pub fn relay(&self, name: &str, message: &Message, exclude: &[ChannelId]) -> Option<bool> {
        self.broker.get().and_then(|broker| broker.publish(name, message, exclude))
    }

    fn interest_changed(&self, name: &str) {
        if let Some(broker) = self.broker.get() {
            broker.interest_changed(name);
        }
    }

    fn channel_shard(&self, id: &ChannelId) -> &RwLock<HashMap<ChannelId, ChannelEntry>> {
        &self.channels[shard_of(id)]
    }

    fn subscription_shard(&self, name: &str) -> &RwLock<HashMap<Arc<str>, Arc<Subscription>>> {
        &self.subscriptions[shard_of(name)]
    }

    /// Registers an open channel (it is then in `all`).
    pub fn register(&self, channel: ChannelHandle) {
        if let Some(metrics) = &self.metrics {
            channel.attach_metrics(metrics.clone());
        }
        let entry = ChannelEntry { handle: channel.clone(), subscriptions: NameSet::default() };
        write(self.channel_shard(channel.id())).insert(channel.id().clone(), entry);
    }

    /// Removes a closed channel from the hub and from every subscription.
    pub fn unregister(&self, id: &ChannelId) {
        let Some(entry) = write(self.channel_shard(id)).remove(id) else { return };
        let had_subscriptions = !entry.subscriptions.is_empty();
        for name in entry.subscriptions.into_vec() {
            self.remove_member(&name, id);
        }
        if had_subscriptions {
            self.update_subscription_gauge();
        }
    }

    /// Starts closing channel `id` with `code` and `reason` (the `ws::close` of the seed's
    /// API). The channel leaves every subscription when its session ends; from now on sends
    /// to it fail with [`SendError::Closed`].
    pub fn close_channel(&self, id: &str, code: u16, reason: &str) -> Result<(), HubError> {
        if !is_valid_wire_code(code) {
            return Err(HubError::InvalidClose(format!("code {code} may not be sent (RFC 6455 §7.4)")));
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(HubError::InvalidClose(format!(
                "reason is {} bytes; at most {MAX_CLOSE_REASON}",
                reason.len()
            )));
        }
        let handle = self.channel(id).ok_or_else(|| HubError::UnknownChannel(id.to_owned()))?;
        handle.close(code, reason);
        Ok(())
    }

    /// Starts closing every open channel with `code` and `reason` (the server's shutdown);
    /// returns how many. Each session then runs its closing handshake as for any other close.
    pub fn close_all(&self, code: u16, reason: &str) -> usize {
        // Collected first: a close runs the channel's queue and must not run under a hub lock.
        let handles: Vec<ChannelHandle> = self
            .channels
            .iter()
            .flat_map(|shard| read(shard).values().map(|e| e.handle.clone()).collect::<Vec<_>>())
            .collect();
        for handle in &handles {
            handle.close(code, reason);
        }
        handles.len()
    }

    /// The handle of an open channel.
    pub fn channel(&self, id: &str) -> Option<ChannelHandle> {
        let id = ChannelId::from(id);
        read(self.channel_shard(&id)).get(&id).map(|e| e.handle.clone())
    }

    /// Adds channel `id` to subscription `name`; `Ok(false)` when it already was a member.
    pub fn subscribe(&self, id: &ChannelId, name: &str) -> Result<bool, HubError> {
        if name == ALL {
            return Err(HubError::Reserved);
        }
        // The subscription's own name when it exists: each member's set shares it instead of
        // holding a copy (memory per idle connection).
        let existing = read(self.subscription_shard(name)).get_key_value(name).map(|(key, _)| key.clone());
        let name: Arc<str> = existing.unwrap_or_else(|| name.into());
        let handle = {
            let mut channels = write(self.channel_shard(id));
            let entry = channels.get_mut(id).ok_or_else(|| HubError::UnknownChannel(id.to_string()))?;
            if !entry.subscriptions.insert(name.clone()) {
                return Ok(false);
            }
            entry.handle.clone()
        };
        let subscription = {
            let mut shard = write(self.subscription_shard(&name));
            shard.entry(name.clone()).or_default().clone()
        };
        let first = {
            let mut members = lock(&subscription.members);
            members.insert(id.clone(), handle);
            members.map.len() == 1
        };
        if first {
            self.interest_changed(&name);
        }
        // The channel may have closed between the two steps: undo so nothing stale remains.
        if read(self.channel_shard(id)).get(id).is_none() {
            self.remove_member(&name, id);
        }
        self.update_subscription_gauge();
        Ok(true)
    }

    /// Removes channel `id` from subscription `name`; `Ok(false)` when it was not a member.
    pub fn unsubscribe(&self, id: &ChannelId, name: &str) -> Result<bool, HubError> {
        if name == ALL {
            return Err(HubError::Reserved);
        }
        let was_member = {
            let mut channels = write(self.channel_shard(id));
            let entry = channels.get_mut(id).ok_or_else(|| HubError::UnknownChannel(id.to_string()))?;
            entry.subscriptions.remove(name)
        };
        if was_member {
            self.remove_member(name, id);
            self.update_subscription_gauge();
        }
        Ok(was_member)
    }

    fn remove_member(&self, name: &str, id: &ChannelId) {
        let subscription = read(self.subscription_shard(name)).get(name).cloned();
        let Some(subscription) = subscription else { return };
        let now_empty = {
            let mut members = lock(&subscription.members);
            members.remove(id);
            members.map.is_empty()
        };
        if now_empty {
            let mut shard = write(self.subscription_shard(name));
            // Re-check under the shard lock: a subscribe may have raced in.
            if shard.get(name).is_some_and(|s| lock(&s.members).map.is_empty()) {
                shard.remove(name);
            }
            drop(shard);
            self.interest_changed(name);
        }
    }

    /// Sends one message to channel `id`: queued locally, or relayed through the broker when
    /// the id's node prefix names another node (`Ok` then means handed to the broker).
    pub fn send(&self, id: &str, message: &Message) -> Result<(), HubError> {
        let Some(handle) = self.channel(id) else {
            let unknown = || HubError::UnknownChannel(id.to_owned());
            let broker = self.broker.get().ok_or_else(unknown)?;
            let node = relay::node_of(id).filter(|n| *n != broker.node()).ok_or_else(unknown)?;
            return broker.send(node, &ChannelId::from(id), message).map_err(|error| match error {
                BrokerError::UnknownNode(_) => unknown(),
                error => HubError::Remote { id: id.to_owned(), error },
            });
        };
        handle.send_frame(encode(message)).map_err(|error| HubError::Send { id: id.to_owned(), error })
    }

    /// Sends `message` to every member of subscription `name` except the channels in
    /// `exclude`, encoding it once. With a broker, it is also relayed to the other nodes
    /// (queued, never awaited); the returned counts are this node's, and
    /// [`Delivery::relayed`] says whether the relay took it.
    pub fn multicast(&self, name: &str, message: &Message, exclude: &[ChannelId]) -> Delivery {
        let mut delivery = self.multicast_local(name, message, exclude);
        delivery.relayed = self.relay(name, message, exclude);
        delivery
    }

    /// Like [`Hub::multicast`], on this node only, never relayed: for what only this node's
    /// members may see (log-view's lines of this machine's files).
    pub fn multicast_local(&self, name: &str, message: &Message, exclude: &[ChannelId]) -> Delivery {
        self.multicast_shared(name, &Arc::new(shared_message(message)), exclude)
    }

    /// Like [`Hub::multicast`] with an already-encoded frame (shared, never copied), on this
    /// node only: the node-local fan-out, also used by the broker for relayed messages. A whole
    /// data frame is compressed at most once per window size for the members with deflate.
    ///
    /// Each member gets a clone of the frame: a reference-count increment, no allocation and no
    /// copy of the payload (`benches/multicast.rs` counts allocations to prove it).
    pub fn multicast_frame(&self, name: &str, frame: Bytes, exclude: &[ChannelId]) -> Delivery {
        match SharedMessage::from_frame(frame.clone()) {
            Some(shared) => self.multicast_shared(name, &Arc::new(shared), exclude),
            None => self.recorded(|| self.fan_out(name, exclude, |handle| handle.send_frame(frame.clone()))),
        }
    }

    /// Like [`Hub::multicast`] with a message encoded once, on this node only: every member
    /// gets the same plain frame, and the members with permessage-deflate share one compressed
    /// frame per window size (computed by the first writer that needs it).
    pub fn multicast_shared(&self, name: &str, message: &Arc<SharedMessage>, exclude: &[ChannelId]) -> Delivery {
        // Direct writes to the members' sockets unless the node is in a burst (pubsub::delivery_mode).
        let gate = super::delivery_mode::FanOut::start();
        let delivery = self
            .recorded(|| self.fan_out(name, exclude, |handle| handle.send_shared_with(message, gate.next_direct())));
        gate.end(delivery.delivered);
        delivery
    }

    /// Runs one fan-out and records it in the multicast metrics.
    fn recorded(&self, fan_out: impl FnOnce() -> Delivery) -> Delivery {
        let started = self.metrics.as_ref().map(|_| Instant::now());
        let delivery = fan_out();
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            metrics.multicast.inc();
            metrics.multicast_deliveries.inc_by(delivery.delivered as u64);
            metrics.multicast_duration.observe(started.elapsed().as_secs_f64());
        }
        delivery
    }

    fn fan_out(
        &self,
        name: &str,
        exclude: &[ChannelId],
        send: impl Fn(&ChannelHandle) -> Result<(), SendError>,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let mut deliver = |id: &ChannelId, handle: &ChannelHandle| {
            if exclude.contains(id) {
                delivery.excluded += 1;
                return;
            }
            match send(handle) {
                Ok(()) => delivery.delivered += 1,
                Err(SendError::Closed) => delivery.closed += 1,
                Err(SendError::Dropped | SendError::SlowConsumerClosed) => delivery.overflowed += 1,
            }
        };
        if name == ALL {
            let _order = lock(&self.all_order);
            for shard in &self.channels {
                for (id, entry) in read(shard).iter() {
                    deliver(id, &entry.handle);
                }
            }
            return delivery;
        }
        let subscription = read(self.subscription_shard(name)).get(name).cloned();
        if let Some(subscription) = subscription {
            let _order = lock(&subscription.order);
            let members = lock(&subscription.members).snapshot();
            for (id, handle) in members.iter() {
                deliver(id, handle);
            }
        }
        delivery
    }

    /// Subscriptions with their member counts, sorted by name (`all` first).
    pub fn subscriptions(&self) -> Vec<(String, usize)> {
        let mut list: Vec<(String, usize)> = self
            .subscriptions
            .iter()
            .flat_map(|shard| {
                read(shard).iter().map(|(n, s)| (n.to_string(), lock(&s.members).map.len())).collect::<Vec<_>>()
            })
            .collect();
        list.sort();
        list.insert(0, (ALL.to_owned(), self.channel_count()));
        list
    }

    /// Members of one subscription.
    pub fn members(&self, name: &str) -> Vec<ChannelId> {
        if name == ALL {
            return self.channel_summaries().into_iter().map(|c| c.id).collect();
        }
        let subscription = read(self.subscription_shard(name)).get(name).cloned();
        let mut ids: Vec<ChannelId> =
            subscription.map(|s| lock(&s.members).map.keys().cloned().collect()).unwrap_or_default();
        ids.sort();
        ids
    }

    /// Number of open channels.
    pub fn channel_count(&self) -> usize {
        self.channels.iter().map(|s| read(s).len()).sum()
    }

    /// Number of subscriptions with at least one member (excluding `all`).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.iter().map(|s| read(s).len()).sum()
    }

    /// One open channel's summary (a single shard lookup).
    pub fn channel_summary(&self, id: &str) -> Option<ChannelSummary> {
        let id = ChannelId::from(id);
        read(self.channel_shard(&id)).get(&id).map(summary)
    }

    /// Every open channel, sorted by id.
    pub fn channel_summaries(&self) -> Vec<ChannelSummary> {
        let mut list: Vec<ChannelSummary> =
            self.channels.iter().flat_map(|shard| read(shard).values().map(summary).collect::<Vec<_>>()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}

fn summary(e: &ChannelEntry) -> ChannelSummary {
    ChannelSummary {
        id: e.handle.id().clone(),
        app: e.handle.app().to_owned(),
        url: e.handle.url().to_owned(),
        peer: e.handle.peer(),
        subscriptions: e.subscriptions.iter().map(|s| s.to_string()).collect(),
    }
}

/// Test support shared by the hub's and the brokers' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Hub;
    use crate::pubsub::budget::SlowConsumerPolicy;
    use crate::pubsub::channel::{ChannelHandle, ChannelIdGenerator, ChannelInfo, ChannelQueue};

    /// Opens a channel with a 1 MiB queue and registers it in `hub`.
    pub(crate) fn open(hub: &Hub, ids: &ChannelIdGenerator) -> (ChannelHandle, ChannelQueue) {
        let info =
            ChannelInfo { id: ids.next_id(), app: "t".into(), url: "/t".into(), peer: "127.0.0.1:9".parse().unwrap() };
        let (handle, queue) = ChannelHandle::new(info, 1 << 20, SlowConsumerPolicy::Close);
        hub.register(handle.clone());
        (handle, queue)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::open;
    use super::*;
    use crate::pubsub::budget::SlowConsumerPolicy;
    use crate::pubsub::channel::{ChannelIdGenerator, ChannelInfo, ChannelQueue, Outbound};

    fn frames(queue: &mut ChannelQueue) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = queue.rx.try_recv().ok().and_then(|item| item.plain_frame()) {
            out.push(frame);
        }
        out
    }

    #[test]
    fn multicast_with_exclude_reaches_exactly_the_others_with_shared_bytes() {
        let hub = Hub::new();
        let ids = ChannelIdGenerator::new("n1");
        let mut chans: Vec<_> = (0..3).map(|_| open(&hub, &ids)).collect();
        for (h, _) in &chans {
            assert_eq!(hub.subscribe(h.id(), "room"), Ok(true));
        }
        assert_eq!(hub.subscribe(chans[0].0.id(), "room"), Ok(false), "idempotent");
        let sender = chans[0].0.id().clone();
        let d = hub.multicast("room", &Message::Text(Bytes::from_static(b"hi")), &[sender]);
        assert_eq!(d, Delivery { delivered: 2, excluded: 1, overflowed: 0, closed: 0, relayed: None });
        assert!(frames(&mut chans[0].1).is_empty());
        let a = frames(&mut chans[1].1);
        let b = frames(&mut chans[2].1);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].as_ptr(), b[0].as_ptr(), "one encoded frame shared by all members");
    }

    #[test]
    fn multicast_compresses_once_for_all_deflate_members() {
        use crate::ws::deflate::DeflateParams;
        let hub = Hub::new();
        let ids = ChannelIdGenerator::new("n1");
        let mut chans: Vec<_> = (0..4).map(|_| open(&hub, &ids)).collect();
        for (h, _) in &chans {
            hub.subscribe(h.id(), "room").unwrap();
        }
        let text = Bytes::from("a shared message that is long enough to be compressed ".repeat(4));
        hub.multicast("room", &Message::Text(text), &[]);
        let messages: Vec<Arc<SharedMessage>> = chans
            .iter_mut()
            .map(|(_, q)| match q.rx.try_recv() {
                Ok(Outbound::Message(m)) => m,
                other => panic!("expected a shared message, got {other:?}"),
            })
            .collect();
        assert!(messages.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "one message for every member");
        // What each writer does: members with the same parameters share one compressed frame.
        let deflate =
            DeflateParams { own_window_bits: 15, own_no_context_takeover: true, peer_no_context_takeover: false };
        let frames: Vec<Bytes> = messages[..3].iter().map(|m| m.frame_for(Some(&deflate))).collect();
        assert!(frames.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()));
        assert_eq!(messages[0].compressed_copies(), 1, "compressed once");
        assert_eq!(
            messages[3].frame_for(None).as_ptr(),
            messages[3].plain().as_ptr(),
            "plain member gets the plain frame"
        );
    }

    #[test]
    fn joining_and_leaving_do_not_wait_for_a_fan_out_in_progress() {
        let hub = Arc::new(Hub::new());
        let ids = ChannelIdGenerator::new("n1");
        let (a, mut qa) = open(&hub, &ids);
        let (b, mut qb) = open(&hub, &ids);
        hub.subscribe(a.id(), "room").unwrap();
        assert_eq!(hub.multicast("room", &Message::Text("1".into()), &[]).delivered, 1, "snapshot taken");
        let subscription = read(hub.subscription_shard("room")).get("room").cloned().unwrap();
        // What a fan-out holds across its sends (tens of milliseconds for 10,000 sockets).
        let fan_out_in_progress = lock(&subscription.order);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = {
            let (hub, a, b) = (hub.clone(), a.id().clone(), b.id().clone());
            std::thread::spawn(move || {
                hub.subscribe(&b, "room").unwrap();
                hub.unsubscribe(&a, "room").unwrap();
                done_tx.send(hub.members("room")).unwrap();
            })
        };
        let members = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("subscribe/unsubscribe waited for the fan-out in progress");
        assert_eq!(members, vec![b.id().clone()]);
        drop(fan_out_in_progress);
        worker.join().unwrap();
        // The next fan-out sees the new membership, not the old snapshot.
        assert_eq!(hub.multicast("room", &Message::Text("2".into()), &[]).delivered, 1);
        assert_eq!(frames(&mut qa).len(), 1, "a left before the second message");
        assert_eq!(frames(&mut qb).len(), 1, "b joined before the second message");
    }

    #[test]
    fn unsubscribe_and_unregister_stop_delivery_and_clean_up() {
        let hub = Hub::new();
        let ids = ChannelIdGenerator::new("n1");
        let (a, mut qa) = open(&hub, &ids);
        let (b, mut qb) = open(&hub, &ids);
        hub.subscribe(a.id(), "r").unwrap();
        hub.subscribe(b.id(), "r").unwrap();
        assert_eq!(hub.unsubscribe(a.id(), "r"), Ok(true));
        assert_eq!(hub.multicast("r", &Message::Text("x".into()), &[]).delivered, 1);
        assert!(frames(&mut qa).is_empty());
        assert_eq!(frames(&mut qb).len(), 1);
        hub.unregister(b.id());
        assert_eq!(hub.subscription_count(), 0, "empty subscriptions are removed");
        assert_eq!(hub.multicast("r", &Message::Text("x".into()), &[]).delivered, 0);
        assert_eq!(hub.subscribe(b.id(), "r"), Err(HubError::UnknownChannel(b.id().to_string())));
    }

    #[test]
    fn all_reaches_every_channel_and_send_targets_one() {
        let hub = Hub::new();
        let ids = ChannelIdGenerator::new("n1");
        let mut chans: Vec<_> = (0..4).map(|_| open(&hub, &ids)).collect();
        assert_eq!(hub.multicast(ALL, &Message::Binary(vec![1, 2].into()), &[]).delivered, 4);
        hub.send(chans[2].0.id().as_str(), &Message::Text("only you".into())).unwrap();
        let counts: Vec<usize> = chans.iter_mut().map(|(_, q)| frames(q).len()).collect();
        assert_eq!(counts, vec![1, 1, 2, 1]);
        assert!(matches!(hub.send("n1-999", &Message::Text("x".into())), Err(HubError::UnknownChannel(_))));
        assert_eq!(hub.subscribe(chans[0].0.id(), ALL), Err(HubError::Reserved));
    }

    #[test]
    fn close_channel_validates_and_queues_the_close() {
        let hub = Hub::new();
        let ids = ChannelIdGenerator::new("n1");
        let (a, mut qa) = open(&hub, &ids);
        assert!(matches!(hub.close_channel(a.id().as_str(), 1005, ""), Err(HubError::InvalidClose(_))));
        assert!(matches!(hub.close_channel(a.id().as_str(), 1000, &"x".repeat(124)), Err(HubError::InvalidClose(_))));
        assert!(matches!(hub.close_channel("n1-404", 1000, ""), Err(HubError::UnknownChannel(_))));
        hub.close_channel(a.id().as_str(), 4000, "bye").unwrap();
        match qa.rx.try_recv() {
            Ok(Outbound::Close { code, reason }) => assert_eq!((code, reason.as_str()), (Some(4000), "bye")),
            other => panic!("expected a close, got {other:?}"),
        }
        assert!(matches!(
            hub.send(a.id().as_str(), &Message::Text("late".into())),
            Err(HubError::Send { error: SendError::Closed, .. })
        ));
    }

    #[test]
    fn metrics_follow_multicasts_subscriptions_and_slow_consumers() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::with_metrics(metrics.clone());
        let ids = ChannelIdGenerator::new("n1");
        let info =
            ChannelInfo { id: ids.next_id(), app: "t".into(), url: "/t".into(), peer: "127.0.0.1:9".parse().unwrap() };
        let (slow, _q_slow) = ChannelHandle::new(info, 4, SlowConsumerPolicy::Drop);
        hub.register(slow.clone());
        let (fast, _q_fast) = open(&hub, &ids);
        hub.subscribe(slow.id(), "r").unwrap();
        hub.subscribe(fast.id(), "r").unwrap();
        hub.subscribe(fast.id(), "s").unwrap();
        assert_eq!(metrics.subscriptions_active.get(), 2);
        for _ in 0..3 {
            hub.multicast("r", &Message::Text("12345".into()), &[]);
        }
        // The first frame is admitted into the empty queue; the next two are dropped.
        assert_eq!(slow.dropped(), 2);
        assert_eq!(metrics.multicast.get(), 3);
        assert_eq!(metrics.multicast_deliveries.get(), 4);
        let text = metrics.render();
        assert!(text.contains("wsgate_slow_consumer_events_total{action=\"drop\"} 2"), "{text}");
        assert!(text.contains("wsgate_multicast_duration_seconds_count 3"), "{text}");
        hub.unregister(fast.id());
        assert_eq!(metrics.subscriptions_active.get(), 1);
    }

    #[test]
    fn concurrent_multicasts_keep_one_order_for_every_member() {
        let hub = Arc::new(Hub::new());
        let ids = ChannelIdGenerator::new("n1");
        let mut chans: Vec<_> = (0..8).map(|_| open(&hub, &ids)).collect();
        for (h, _) in &chans {
            hub.subscribe(h.id(), "r").unwrap();
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        hub.multicast("r", &Message::Text(format!("{t}:{i}").into()), &[]);
                        hub.multicast(ALL, &Message::Text(format!("all {t}:{i}").into()), &[]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let first = frames(&mut chans[0].1);
        assert_eq!(first.len(), 1600);
        let room = |f: &Vec<Bytes>| f.iter().filter(|b| !b[2..].starts_with(b"all")).cloned().collect::<Vec<_>>();
        let all = |f: &Vec<Bytes>| f.iter().filter(|b| b[2..].starts_with(b"all")).cloned().collect::<Vec<_>>();
        for (_, q) in chans.iter_mut().skip(1) {
            let other = frames(q);
            assert_eq!(room(&other), room(&first), "same order of the subscription's messages");
            assert_eq!(all(&other), all(&first), "same order of `all`'s messages");
        }
    }
}

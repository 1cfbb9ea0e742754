//! The node's client-driven channels (DESIGN §13): per channel an offset, an epoch, a bounded
//! history and the presence set, shared by every `pubsub` app and the control API.
//!
//! Exactness rests on one lock per channel: a publication takes its offset, enters the history
//! and is queued to every member under that lock, and a subscription reads the history, queues
//! its reply and joins the hub subscription under the same lock. So a subscriber receives each
//! publication after the position it was told exactly once, in offset order, including those
//! published while its history was read. Each member's queue is FIFO, so the reply always
//! precedes the pushes that follow it.
//!
//! With a Redis broker the channels live in Redis instead ([`Cluster`], cluster mode): the
//! same API, every node sharing offsets, history and presence.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};

use super::cluster::Cluster;
pub use super::model::{text_frame, EngineError, HistoryPage, Info, Position, Published, MAX_CHANNELS};
use crate::config::pubsub::NamespaceConfig;
use crate::locks::lock;
use crate::metrics::{Metrics, NamespaceLabel, NamespaceOutcomeLabel};
use crate::pubsub::{ChannelHandle, ChannelId, Hub};

/// How often idle channel states are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// A namespace with its compiled pattern.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// The compiled `pattern`.
    pub pattern: glob::Pattern,
    /// The settings as written.
    pub config: NamespaceConfig,
}

impl Namespace {
    /// Compiles `config` (validation has checked the pattern).
    pub fn new(config: &NamespaceConfig) -> Result<Self, glob::PatternError> {
        Ok(Namespace { pattern: glob::Pattern::new(&config.pattern)?, config: config.clone() })
    }
}

/// The first namespace of `list` whose pattern matches `channel`.
pub fn find<'a>(list: &'a [Namespace], channel: &str) -> Option<&'a Namespace> {
    list.iter().find(|ns| ns.pattern.matches(channel))
}

/// One publication as kept in the history.
#[derive(Debug, Clone)]
struct Publication {
    offset: u64,
    data: Arc<Value>,
    info: Option<Info>,
    at: Instant,
}

impl Publication {
    fn to_json(&self) -> Value {
        let mut v = json!({ "offset": self.offset, "data": &*self.data });
        if let Some(info) = &self.info {
            v["info"] = json!({ "user": info.user, "client": info.client });
        }
        v
    }
}

struct ChannelState {
    /// The hub subscription of the channel's local members.
    subscription: String,
    epoch: String,
    offset: u64,
    history: VecDeque<Publication>,
    limit: usize,
    ttl: Duration,
    /// `Some` when the namespace has presence on: client id → user.
    presence: Option<BTreeMap<String, String>>,
    /// Set by the sweeper when it dropped this state: whoever holds it must look again.
    removed: bool,
    /// The metrics label: the namespace that set this channel's history and presence.
    namespace: NamespaceLabel,
}

impl ChannelState {
    /// Drops expired publications; returns how many.
    fn prune(&mut self, now: Instant) -> usize {
        let before = self.history.len();
        while self.history.front().is_some_and(|p| now.duration_since(p.at) >= self.ttl) {
            self.history.pop_front();
        }
        before - self.history.len()
    }

    fn position(&self) -> Position {
        Position { offset: self.offset, epoch: self.epoch.clone() }
    }

    /// The publications after `since`, when the history still holds every one of them.
    fn after(&self, since: &Position) -> Option<Vec<Value>> {
        if since.epoch != self.epoch || since.offset > self.offset {
            return None;
        }
        if since.offset == self.offset {
            return Some(Vec::new());
        }
        let first = self.history.front()?.offset;
        if first > since.offset + 1 {
            return None; // trimmed or expired past the client's position
        }
        Some(self.history.iter().filter(|p| p.offset > since.offset).map(Publication::to_json).collect())
    }

    fn is_idle(&self, hub: &Hub) -> bool {
        self.history.is_empty()
            && self.presence.as_ref().is_none_or(BTreeMap::is_empty)
            && !hub.has_local_members(&self.subscription)
    }
}

/// The node's channels.
pub struct Engine {
    hub: Arc<Hub>,
    /// Every pubsub app's namespaces in config order: the first match sets a channel's history
    /// and presence (apps' own lists decide what their clients may do).
    namespaces: ArcSwap<Vec<Namespace>>,
    channels: Mutex<HashMap<String, Arc<Mutex<ChannelState>>>>,
    /// Cluster mode (`[broker] kind = "redis"`): channels live in Redis instead of `channels`.
    cluster: OnceLock<Arc<Cluster>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("channels", &lock(&self.channels).len()).finish_non_exhaustive()
    }
}

/// A fresh epoch: random, so a restarted node never reuses one.
fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl Engine {
    /// An engine publishing through `hub`; inside a Tokio runtime it also starts the sweeper
    /// that drops idle channel states every 30 s.
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        let engine = Arc::new(Engine {
            hub,
            namespaces: ArcSwap::from_pointee(Vec::new()),
            channels: Mutex::new(HashMap::new()),
            cluster: OnceLock::new(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&engine);
            runtime.spawn(sweeper(weak));
        }
        engine
    }

    /// The node's metrics, when the hub has them.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.hub.metrics()
    }

    fn gauge(&self, pick: impl Fn(&Metrics) -> &Family<NamespaceLabel, Gauge>, namespace: &NamespaceLabel, delta: i64) {
        if let (Some(m), true) = (self.hub.metrics(), delta != 0) {
            pick(m).get_or_create(namespace).inc_by(delta);
        }
    }

    /// Replaces the node-wide namespace list (at start and on reload).
    pub fn set_namespaces(&self, list: Vec<Namespace>) {
        self.namespaces.store(Arc::new(list));
    }

    /// The namespace that sets `channel`'s history and presence.
    pub fn namespace(&self, channel: &str) -> Option<NamespaceConfig> {
        find(&self.namespaces.load(), channel).map(|ns| ns.config.clone())
    }

    /// Channel states kept now.
    pub fn channel_count(&self) -> usize {
        match self.cluster.get() {
            Some(cluster) => cluster.channel_count(),
            None => lock(&self.channels).len(),
        }
    }

    /// Keeps channels in Redis from now on, shared with the other nodes (call once, before
    /// the first client; later calls are ignored).
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Whether the connection `member` receives `channel`'s publications on this node.
    pub fn is_member(&self, channel: &str, member: &ChannelId) -> bool {
        let subscription = super::cluster::subscription(channel);
        self.hub.channel_summary(member.as_str()).is_some_and(|s| s.subscriptions.contains(&subscription))
    }

    /// The live nodes of the cluster (empty on one node or while Redis is unreachable).
    pub fn cluster_nodes(&self) -> Vec<String> {
        self.cluster.get().map(|c| c.nodes()).unwrap_or_default()
    }

    /// The cluster store, in cluster mode (other apps keep their member lists there).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    fn namespace_of(&self, channel: &str) -> Result<NamespaceConfig, EngineError> {
        self.namespace(channel).ok_or_else(|| EngineError::UnknownChannel(channel.to_owned()))
    }

    /// Publishes `data` to `channel`: the next offset, into the history, to every member (on
    /// one node: the local members, in that order; in a cluster: every node's, through Redis).
    pub async fn publish(&self, channel: &str, data: Value, info: Option<Info>) -> Result<Published, EngineError> {
        let Some(cluster) = self.cluster.get() else { return self.publish_local(channel, data, info) };
        let ns = self.namespace_of(channel)?;
        let published = cluster.publish(channel, &ns, data, info).await?;
        if let Some(m) = self.hub.metrics() {
            m.pubsub_publications.get_or_create(&Cluster::label(&ns)).inc();
        }
        Ok(published)
    }

    /// Subscribes `member` to `channel` and queues `reply(position, recovery)` to it first:
    /// `recovery` is `Some(publications)` when `recover` was asked and the history holds every
    /// publication after it, `None` otherwise. `user` enters the presence set (when on), with
    /// a `join` push to the other members.
    pub async fn subscribe(
        &self,
        channel: &str,
        member: &ChannelHandle,
        user: &str,
        recover: Option<&Position>,
        reply: impl FnOnce(&Position, Option<Vec<Value>>) -> Value,
    ) -> Result<(), EngineError> {
        let Some(cluster) = self.cluster.get() else {
            return self.subscribe_local(channel, member, user, recover, reply);
        };
        let ns = self.namespace_of(channel)?;
        let outcome = cluster.subscribe(channel, &ns, MAX_CHANNELS, member, user, recover, reply).await?;
        if let (Some(recovered), Some(m)) = (outcome, self.hub.metrics()) {
            let outcome = if recovered { "recovered" } else { "not_recovered" };
            let labels = NamespaceOutcomeLabel { namespace: ns.pattern.clone(), outcome };
            m.pubsub_recoveries.get_or_create(&labels).inc();
        }
        Ok(())
    }

    /// Removes `member` from `channel` (and its presence set, with a `leave` push).
    pub async fn unsubscribe(&self, channel: &str, member: &ChannelId) {
        match (self.cluster.get(), self.namespace(channel)) {
            (Some(cluster), Some(ns)) => cluster.unsubscribe(channel, &ns, member).await,
            (Some(_), None) => {
                let _ = self.hub.unsubscribe(member, &super::cluster::subscription(channel));
            }
            (None, _) => self.unsubscribe_local(channel, member),
        }
    }

    /// The presence set of `channel` (cluster-wide in cluster mode): client id → user.
    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, String>, EngineError> {
        let Some(cluster) = self.cluster.get() else { return self.presence_local(channel) };
        if !self.namespace_of(channel)?.presence {
            return Err(EngineError::PresenceOff);
        }
        cluster.presence(channel).await
    }

    /// Up to `limit` publications (the newest ones, or the first ones after `since`) and the
    /// channel's position; `since` outside the history is [`EngineError::Unrecoverable`].
    pub async fn history(
        &self,
        channel: &str,
        limit: usize,
        since: Option<&Position>,
    ) -> Result<HistoryPage, EngineError> {
        let Some(cluster) = self.cluster.get() else { return self.history_local(channel, limit, since) };
        let ns = self.namespace_of(channel)?;
        cluster.history(channel, &ns, limit, since).await
    }

    /// Runs `f` on `channel`'s state under its lock, creating the state when asked.
    fn with_channel<T>(
        &self,
        channel: &str,
        create: bool,
        f: impl FnOnce(&mut ChannelState) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let ns = self.namespace(channel).ok_or_else(|| EngineError::UnknownChannel(channel.to_owned()))?;
        loop {
            let state = {
                let mut channels = lock(&self.channels);
                match channels.get(channel) {
                    Some(state) => state.clone(),
                    None => {
                        if !create {
                            let mut empty = fresh_state(channel, &ns);
                            return f(&mut empty);
                        }
                        if channels.len() >= MAX_CHANNELS {
                            return Err(EngineError::TooManyChannels);
                        }
                        let fresh = fresh_state(channel, &ns);
                        self.gauge(|m| &m.pubsub_channels, &fresh.namespace, 1);
                        let state = Arc::new(Mutex::new(fresh));
                        channels.insert(channel.to_owned(), state.clone());
                        state
                    }
                }
            };
            let mut guard = lock(&state);
            if guard.removed {
                continue; // the sweeper dropped it between the two locks
            }
            let pruned = guard.prune(Instant::now());
            self.gauge(|m| &m.pubsub_history_publications, &guard.namespace, -(pruned as i64));
            return f(&mut guard);
        }
    }

    /// The one-node form of [`Engine::publish`].
    fn publish_local(&self, channel: &str, data: Value, info: Option<Info>) -> Result<Published, EngineError> {
        let hub = self.hub.clone();
        self.with_channel(channel, true, |state| {
            state.offset += 1;
            let publication = Publication { offset: state.offset, data: Arc::new(data), info, at: Instant::now() };
            let push = json!({ "push": { "channel": channel, "pub": publication.to_json() } });
            let frame = text_frame(&push);
            if state.limit > 0 {
                if state.history.len() >= state.limit {
                    state.history.pop_front();
                } else {
                    self.gauge(|m| &m.pubsub_history_publications, &state.namespace, 1);
                }
                state.history.push_back(publication);
            }
            if let Some(m) = self.hub.metrics() {
                m.pubsub_publications.get_or_create(&state.namespace).inc();
            }
            let delivery = hub.multicast_frame(&state.subscription, frame, &[]);
            Ok(Published { offset: state.offset, epoch: state.epoch.clone(), delivered: delivery.delivered })
        })
    }

    /// The one-node form of [`Engine::subscribe`].
    fn subscribe_local(
        &self,
        channel: &str,
        member: &ChannelHandle,
        user: &str,
        recover: Option<&Position>,
        reply: impl FnOnce(&Position, Option<Vec<Value>>) -> Value,
    ) -> Result<(), EngineError> {
        let hub = self.hub.clone();
        self.with_channel(channel, true, |state| {
            let recovered = recover.and_then(|since| state.after(since));
            if let (Some(_), Some(m)) = (recover, self.hub.metrics()) {
                let outcome = if recovered.is_some() { "recovered" } else { "not_recovered" };
                let labels = NamespaceOutcomeLabel { namespace: state.namespace.namespace.clone(), outcome };
                m.pubsub_recoveries.get_or_create(&labels).inc();
            }
            let answer = reply(&state.position(), recovered);
            member.send_text(&answer.to_string()).map_err(|_| EngineError::Closed)?;
            hub.subscribe(member.id(), &state.subscription).map_err(|_| EngineError::Closed)?;
            if let Some(presence) = &mut state.presence {
                let client = member.id().as_str().to_owned();
                if presence.insert(client.clone(), user.to_owned()).is_none() {
                    self.gauge(|m| &m.pubsub_presence_clients, &state.namespace, 1);
                }
                let push = json!({ "push": { "channel": channel, "join": { "client": client, "user": user } } });
                let frame = text_frame(&push);
                hub.multicast_frame(&state.subscription, frame, std::slice::from_ref(member.id()));
            }
            Ok(())
        })
    }

    /// The one-node form of [`Engine::unsubscribe`].
    fn unsubscribe_local(&self, channel: &str, member: &ChannelId) {
        let hub = self.hub.clone();
        let _ = self.with_channel(channel, false, |state| {
            let _ = hub.unsubscribe(member, &state.subscription);
            if let Some(presence) = &mut state.presence {
                if let Some(user) = presence.remove(member.as_str()) {
                    self.gauge(|m| &m.pubsub_presence_clients, &state.namespace, -1);
                    let push =
                        json!({ "push": { "channel": channel, "leave": { "client": member.as_str(), "user": user } } });
                    let frame = text_frame(&push);
                    hub.multicast_frame(&state.subscription, frame, &[]);
                }
            }
            Ok(())
        });
    }

    /// The one-node form of [`Engine::presence`].
    fn presence_local(&self, channel: &str) -> Result<BTreeMap<String, String>, EngineError> {
        self.with_channel(channel, false, |state| state.presence.clone().ok_or(EngineError::PresenceOff))
    }

    /// The one-node form of [`Engine::history`].
    fn history_local(&self, channel: &str, limit: usize, since: Option<&Position>) -> Result<HistoryPage, EngineError> {
        // Created when absent, so the position it reports stays valid for a later subscribe.
        self.with_channel(channel, true, |state| {
            let publications = match since {
                Some(since) => {
                    let mut all = state.after(since).ok_or(EngineError::Unrecoverable)?;
                    all.truncate(limit);
                    all
                }
                None => {
                    let skip = state.history.len().saturating_sub(limit);
                    state.history.iter().skip(skip).map(Publication::to_json).collect()
                }
            };
            Ok(HistoryPage { publications, position: state.position() })
        })
    }

    /// Drops channel states with no history, presence or members (their epoch goes with them,
    /// so a later recovery says `recovered:false` rather than guess).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut channels = lock(&self.channels);
        channels.retain(|_, state| {
            let Ok(mut guard) = state.try_lock() else { return true };
            let pruned = guard.prune(now);
            self.gauge(|m| &m.pubsub_history_publications, &guard.namespace, -(pruned as i64));
            if guard.is_idle(&self.hub) {
                guard.removed = true;
                self.gauge(|m| &m.pubsub_channels, &guard.namespace, -1);
                false
            } else {
                true
            }
        });
    }
}

fn fresh_state(channel: &str, ns: &NamespaceConfig) -> ChannelState {
    ChannelState {
        subscription: super::cluster::subscription(channel),
        epoch: new_epoch(),
        offset: 0,
        history: VecDeque::new(),
        limit: ns.history,
        ttl: ns.history_ttl(),
        presence: ns.presence.then(BTreeMap::new),
        removed: false,
        namespace: NamespaceLabel { namespace: ns.pattern.clone() },
    }
}

async fn sweeper(engine: Weak<Engine>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else { return };
        engine.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(pattern: &str, history: usize) -> Namespace {
        Namespace::new(&NamespaceConfig {
            pattern: pattern.into(),
            subscribe: Default::default(),
            publish: Default::default(),
            history,
            history_ttl: None,
            presence: true,
        })
        .unwrap()
    }

    #[test]
    fn offsets_grow_by_one_and_history_is_bounded() {
        let engine = Engine::new(Arc::new(Hub::new()));
        engine.set_namespaces(vec![ns("news:*", 3)]);
        assert_eq!(engine.publish_local("other", json!(1), None), Err(EngineError::UnknownChannel("other".into())));
        let first = engine.publish_local("news:a", json!(1), None).unwrap();
        assert_eq!(first.offset, 1);
        for i in 2..=5 {
            let p = engine.publish_local("news:a", json!(i), None).unwrap();
            assert_eq!((p.offset, &p.epoch), (i, &first.epoch));
        }
        let page = engine.history_local("news:a", 10, None).unwrap();
        let offsets: Vec<_> = page.publications.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, [3, 4, 5]);
        // Recoverable from 2 (3.. kept), not from 1 (2 was trimmed), nor from another epoch.
        let at = |offset, epoch: &str| Position { offset, epoch: epoch.into() };
        assert_eq!(engine.history_local("news:a", 10, Some(&at(2, &first.epoch))).unwrap().publications.len(), 3);
        assert_eq!(
            engine.history_local("news:a", 10, Some(&at(1, &first.epoch))).unwrap_err(),
            EngineError::Unrecoverable
        );
        assert_eq!(engine.history_local("news:a", 10, Some(&at(5, "other"))).unwrap_err(), EngineError::Unrecoverable);
        assert_eq!(
            engine.history_local("news:a", 10, Some(&at(6, &first.epoch))).unwrap_err(),
            EngineError::Unrecoverable
        );
        assert!(engine.history_local("news:a", 10, Some(&at(5, &first.epoch))).unwrap().publications.is_empty());
    }

    #[test]
    fn sweep_drops_idle_channels_and_their_epoch() {
        let engine = Engine::new(Arc::new(Hub::new()));
        engine.set_namespaces(vec![ns("*", 0)]);
        let first = engine.publish_local("c", json!(1), None).unwrap();
        assert_eq!(engine.channel_count(), 1);
        engine.sweep();
        assert_eq!(engine.channel_count(), 0);
        let again = engine.publish_local("c", json!(2), None).unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
    }
}

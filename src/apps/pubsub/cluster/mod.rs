//! Client-driven channels across nodes (DESIGN §13, cluster mode): with `[broker] kind =
//! "redis"` a channel's offset, epoch, history and presence live in Redis, so every node
//! reports the same offset for the same publication and a client recovers on any node.
//!
//! Storage, per channel `c` (the `{c}` hash tag keeps one channel's keys on one shard):
//! - `wsgate:ps:{c}:meta`, a hash: `epoch` (random, set when the hash is created),
//!   `offset` (the last one given) and `replid` (the Redis replication id it was written
//!   under: a failover or a restart changes it, and may have lost the newest publications,
//!   so a position written under another one starts a new epoch). It expires [`META_TTL`]
//!   (or `history_ttl`, if longer) after the last publish or subscribe; a new hash is a new
//!   epoch.
//! - `wsgate:ps:{c}:hist`, a list of `"<offset> <unix ms> <body>"`, newest last, trimmed to the
//!   namespace's `history` and pruned by `history_ttl`. A list with a counter, not a stream:
//!   reads go by offset, and the offset is the list position, which a stream id is not.
//! - `wsgate:ps:{c}:pres`, a hash: client id → `"<node>\t<instance>\t<user>"`.
//! - `wsgate:{nodes}:alive:<node>`: the node's instance id, refreshed every 10 s with a 30 s
//!   expiry (and its expiry time in the sorted set `wsgate:{nodes}`; the shared hash tag keeps
//!   the heartbeat script on one shard). Presence shows only entries whose node is alive with
//!   the same instance, so a node that dies (SIGKILL, power loss) leaves no ghost entries
//!   beyond **30 s**; readers delete them.
//!
//! A publish is one Lua script: it takes the next offset, appends to the history and
//! PUBLISHes `P <epoch> <offset> <body>` on the Redis channel `wsgate:ps:{c}` (`SPUBLISH` on a
//! Redis Cluster, where the channel is on its keys' shard), atomically, so every node receives
//! publications in offset order. Join and leave pushes travel on the same
//! Redis channel as `J <client> <push>` and `L <push>` (not part of the offsets).
//!
//! **Exactness across nodes.** Each node keeps, per channel with local members, the position
//! its members have reached (epoch, offset), guarded by one async lock per channel:
//! - A subscribe first makes sure this node's Redis SUBSCRIBE to the channel is *confirmed*,
//!   then, under the lock, reads the position and the history in one script: members already
//!   here get what lies between their position and the top (so the node's view is the top),
//!   the new member gets its recovery and the reply at the top and joins. Every later
//!   publication arrives by the subscription; those at or below the top are dropped.
//! - A live publication one past the position is delivered; an older one is a duplicate; a
//!   gap (a lost connection, a subscription that was not yet confirmed) is filled from the
//!   history. After a reconnect every channel is read again the same way.
//! - When the history cannot fill a gap (trimmed, expired, history off) or the epoch changed
//!   (the Redis keys were lost), the node's members are unsubscribed with the push
//!   `{"unsubscribe":{"code":112,…}}`: they subscribe again with `recover` and get
//!   `recovered:false` with the new position — never a silent gap.

mod link;
mod storage;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

pub(crate) use self::storage::subscription;
use self::storage::{
    alive_key, channel_of, covering, keys, parse_entry, publication, Entry, Script, HEARTBEAT_SCRIPT, PUBLISH_SCRIPT,
    READ_SCRIPT,
};
use super::model::{EngineError, HistoryPage, Info, Position, Published};
use super::protocol::ErrorCode;
use crate::config::pubsub::NamespaceConfig;
use crate::locks::lock;
use crate::metrics::NamespaceLabel;
use crate::pubsub::broker::redis::{Commands, RedisSettings};
use crate::pubsub::{ChannelHandle, ChannelId, Hub};

/// How long a channel's position outlives its last publish or subscribe (unless its
/// `history_ttl` is longer).
pub(crate) const META_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a node's presence entries stay visible after its last heartbeat.
pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A subscribe in progress: keeps the channel's Redis subscription wanted until dropped.
struct Held<'a> {
    cluster: &'a Cluster,
    channel: &'a str,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.cluster.release(self.channel);
    }
}

/// What a node knows of one channel with local members.
struct Tracked {
    /// The position its members have reached; `None` until a subscribe reads it.
    position: Option<(String, u64)>,
    /// History ttl and meta ttl, in ms, for reads (from the namespace at subscribe).
    ttl_ms: u64,
    meta_ttl_ms: u64,
    /// Set by the sweeper when it dropped this entry: whoever holds it must look again.
    removed: bool,
    /// The `pubsub_channels` gauge it counts in.
    label: NamespaceLabel,
}

enum Request {
    /// Make the Redis SUBSCRIBE to this channel active; answers when it is confirmed.
    Hold(String, oneshot::Sender<bool>),
    /// Unsubscribe in Redis if no local member and no pending subscribe needs it.
    Reconcile(String),
}

/// The cluster side of the [`Engine`](super::engine::Engine).
pub struct Cluster {
    hub: Arc<Hub>,
    node: String,
    /// Random per process: presence entries of an earlier process of this node are ghosts.
    instance: String,
    conn: watch::Receiver<Option<Commands>>,
    requests: mpsc::UnboundedSender<Request>,
    /// Subscribes in progress per channel (they need the Redis subscription before they join).
    pending: Mutex<HashMap<String, usize>>,
    tracked: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Tracked>>>>,
    publish_script: Script,
    read_script: Script,
    heartbeat_script: Script,
    /// The live nodes (their heartbeat keys), as of the last heartbeat.
    nodes: Mutex<Vec<String>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, EngineError> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(format!("{what}: {e}"))),
        Err(_) => Err(unavailable(format!("{what}: no answer within {IO_TIMEOUT:?}"))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl Cluster {
    /// Starts the cluster store of node `node` on Redis (connects in the background, like the
    /// broker; must run inside a tokio runtime).
    pub fn start(settings: &RedisSettings, node: &str, hub: Arc<Hub>) -> Arc<Self> {
        let (conn_tx, conn_rx) = watch::channel(None);
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            hub,
            node: node.to_owned(),
            instance: new_epoch(),
            conn: conn_rx,
            requests,
            pending: Mutex::new(HashMap::new()),
            tracked: Mutex::new(HashMap::new()),
            publish_script: Script::new(PUBLISH_SCRIPT),
            read_script: Script::new(READ_SCRIPT),
            heartbeat_script: Script::new(HEARTBEAT_SCRIPT),
            nodes: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
        });
        let stop = cluster.stop.subscribe();
        tokio::spawn(link::run(Arc::downgrade(&cluster), settings.clone(), conn_tx, requests_rx, stop));
        cluster
    }

    fn conn(&self) -> Result<Commands, EngineError> {
        self.conn.borrow().clone().ok_or_else(|| unavailable("not connected to Redis"))
    }

    /// The nodes alive in the cluster (a heartbeat within 30 s), as of the last heartbeat
    /// (every 10 s); empty while Redis is unreachable.
    pub fn nodes(&self) -> Vec<String> {
        lock(&self.nodes).clone()
    }

    /// Changes the `pubsub_presence_clients` gauge of `ns` by `delta`.
    fn presence_gauge(&self, ns: &NamespaceConfig, delta: i64) {
        if let Some(m) = self.hub.metrics() {
            m.pubsub_presence_clients.get_or_create(&Self::label(ns)).inc_by(delta);
        }
    }

    /// Channels this node tracks now.
    pub fn channel_count(&self) -> usize {
        lock(&self.tracked).len()
    }

    fn tracked(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        max: usize,
    ) -> Result<Arc<tokio::sync::Mutex<Tracked>>, EngineError> {
        let mut tracked = lock(&self.tracked);
        if let Some(t) = tracked.get(channel) {
            return Ok(t.clone());
        }
        if tracked.len() >= max {
            return Err(EngineError::TooManyChannels);
        }
        let t = Arc::new(tokio::sync::Mutex::new(Tracked {
            position: None,
            ttl_ms: 0,
            meta_ttl_ms: 0,
            removed: false,
            label: Self::label(ns),
        }));
        if let Some(m) = self.hub.metrics() {
            m.pubsub_channels.get_or_create(&Self::label(ns)).inc();
        }
        tracked.insert(channel.to_owned(), t.clone());
        Ok(t)
    }

    /// Publishes through the script; `delivered` is the number of nodes subscribed to the
    /// channel in Redis (each delivers to its own members).
    pub async fn publish(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        data: Value,
        info: Option<Info>,
    ) -> Result<Published, EngineError> {
        let mut conn = self.conn()?;
        let mut body = json!({ "data": data });
        if let Some(info) = info {
            body["info"] = json!({ "user": info.user, "client": info.client });
        }
        let k = keys(channel);
        let ttl = ns.history_ttl();
        let args = [
            new_epoch(),
            body.to_string(),
            ns.history.to_string(),
            millis(ttl).to_string(),
            millis(ttl.max(META_TTL)).to_string(),
            k.channel,
            conn.publish_command().to_owned(),
        ];
        let (epoch, offset, receivers): (String, u64, usize) =
            timed("publish", self.publish_script.invoke(&mut conn, &[&k.meta, &k.hist], &args)).await?;
        Ok(Published { offset, epoch, delivered: receivers })
    }

    async fn read(
        &self,
        channel: &str,
        ttl_ms: u64,
        meta_ttl_ms: u64,
        after: Option<u64>,
    ) -> Result<(String, u64, Vec<Entry>), EngineError> {
        let mut conn = self.conn()?;
        let k = keys(channel);
        let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
        let args = [new_epoch(), ttl_ms.to_string(), meta_ttl_ms.to_string(), after.to_string()];
        let (epoch, offset, entries): (String, u64, Vec<String>) =
            timed("read", self.read_script.invoke(&mut conn, &[&k.meta, &k.hist], &args)).await?;
        Ok((epoch, offset, entries.iter().filter_map(|e| parse_entry(e)).collect()))
    }

    /// Asks the subscriber task for an active Redis subscription to `channel`.
    async fn hold(&self, channel: &str) -> Result<(), EngineError> {
        *lock(&self.pending).entry(channel.to_owned()).or_default() += 1;
        let (tx, rx) = oneshot::channel();
        let _ = self.requests.send(Request::Hold(channel.to_owned(), tx));
        if matches!(rx.await, Ok(true)) {
            Ok(())
        } else {
            self.release(channel);
            Err(unavailable("not connected to Redis"))
        }
    }

    fn release(&self, channel: &str) {
        {
            let mut pending = lock(&self.pending);
            if let Some(n) = pending.get_mut(channel) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(channel);
                }
            }
        }
        let _ = self.requests.send(Request::Reconcile(channel.to_owned()));
    }

    fn wanted(&self, channel: &str) -> bool {
        lock(&self.pending).contains_key(channel) || self.hub.has_local_members(&subscription(channel))
    }

    /// Subscribes `member` (see [`Engine::subscribe`](super::engine::Engine::subscribe)); the
    /// outcome of a recovery when one was asked.
    #[allow(clippy::too_many_arguments)]
    pub async fn subscribe(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        max_channels: usize,
        member: &ChannelHandle,
        user: &str,
        recover: Option<&Position>,
        reply: impl FnOnce(&Position, Option<Vec<Value>>) -> Value,
    ) -> Result<Option<bool>, EngineError> {
        self.hold(channel).await?;
        let _held = Held { cluster: self, channel };
        let sub = subscription(channel);
        let mut t = loop {
            let guard = self.tracked(channel, ns, max_channels)?.lock_owned().await;
            if !guard.removed {
                break guard;
            }
        };
        let ttl = ns.history_ttl();
        t.ttl_ms = millis(ttl);
        t.meta_ttl_ms = millis(ttl.max(META_TTL));
        // Read from the lowest position anyone here needs.
        let since = recover.map(|p| p.offset);
        let low = match (&t.position, since) {
            (Some((_, l)), Some(s)) => Some((*l).min(s)),
            (Some((_, l)), None) => Some(*l),
            (None, s) => s,
        };
        let (epoch, top, entries) =
            self.read(channel, t.ttl_ms, t.meta_ttl_ms, Some(low.unwrap_or(u64::MAX).min(i64::MAX as u64))).await?;
        self.catch_up(channel, &mut t, &epoch, top, &entries);
        let recovered = recover.and_then(|since| {
            if since.epoch != epoch || since.offset > top {
                return None;
            }
            covering(&entries, since.offset, top).map(|list| list.iter().map(|e| e.publication.clone()).collect())
        });
        let outcome = recover.map(|_| recovered.is_some());
        let answer = reply(&Position { offset: top, epoch }, recovered);
        member.send_text(&answer.to_string()).map_err(|_| EngineError::Closed)?;
        self.hub.subscribe(member.id(), &sub).map_err(|_| EngineError::Closed)?;
        drop(t);
        if let (true, Ok(mut conn)) = (ns.presence, self.conn()) {
            let k = keys(channel);
            let client = member.id().as_str();
            let value = format!("{}\t{}\t{user}", self.node, self.instance);
            let push = json!({ "push": { "channel": channel, "join": { "client": client, "user": user } } });
            let mut pipe = redis::pipe();
            pipe.hset(&k.pres, client, value);
            pipe.cmd(conn.publish_command()).arg(&k.channel).arg(format!("J {client} {push}")).ignore();
            // The member is subscribed already: a failure here costs the presence entry only.
            match timed("presence", pipe.query_async::<(usize,)>(&mut conn)).await {
                Ok((added,)) => self.presence_gauge(ns, added as i64),
                Err(error) => tracing::warn!(channel, %error, "pubsub: presence entry not written"),
            }
        }
        Ok(outcome)
    }

    /// Brings this node's members from their position to `top` with `entries`; when that
    /// cannot be done exactly, unsubscribes them (they must recover). Afterwards the node's
    /// position is `top` of `epoch`.
    fn catch_up(&self, channel: &str, t: &mut Tracked, epoch: &str, top: u64, entries: &[Entry]) {
        let sub = subscription(channel);
        match &t.position {
            Some((e, l)) if e == epoch && *l >= top => return,
            Some((e, l)) if e == epoch => match covering(entries, *l, top) {
                Some(missing) => {
                    for entry in missing {
                        self.deliver(channel, &sub, &entry.publication);
                    }
                }
                None => self.insufficient(channel, &sub),
            },
            Some(_) => self.insufficient(channel, &sub),
            None => {}
        }
        t.position = Some((epoch.to_owned(), top));
    }

    fn deliver(&self, channel: &str, sub: &str, publication: &Value) {
        let push = json!({ "push": { "channel": channel, "pub": publication } });
        self.hub.multicast_frame(sub, super::model::text_frame(&push), &[]);
    }

    /// Unsubscribes this node's members of `channel`: what they missed cannot be delivered.
    fn insufficient(&self, channel: &str, sub: &str) {
        let members = self.hub.members(sub);
        if members.is_empty() {
            return;
        }
        tracing::warn!(
            channel,
            members = members.len(),
            "pubsub: publications were lost to this node (history gap or new epoch); its subscribers must recover"
        );
        let push = json!({ "push": { "channel": channel, "unsubscribe": {
            "code": ErrorCode::Unrecoverable as u16,
            "reason": "publications were missed; subscribe again with recover",
        } } });
        let text = push.to_string();
        for id in members {
            let _ = self.hub.unsubscribe(&id, sub);
            if let Some(handle) = self.hub.channel(id.as_str()) {
                let _ = handle.send_text(&text);
            }
        }
        let _ = self.requests.send(Request::Reconcile(channel.to_owned()));
    }

    /// A live message from the channel's Redis subscription.
    async fn on_message(&self, redis_channel: &str, payload: &[u8]) {
        let Some(channel) = channel_of(redis_channel) else { return };
        let Ok(text) = std::str::from_utf8(payload) else { return };
        let sub = subscription(channel);
        match text.as_bytes().first() {
            Some(b'P') => {
                let mut parts = text.splitn(4, ' ');
                let (_, Some(epoch), Some(offset), Some(body)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let Ok(offset) = offset.parse::<u64>() else { return };
                let Some(tracked) = lock(&self.tracked).get(channel).cloned() else { return };
                let mut t = tracked.lock().await;
                let Some((known, last)) = t.position.clone() else { return };
                if known == epoch && offset <= last {
                    return; // delivered from the history already
                }
                if known == epoch && offset == last + 1 {
                    if let Some(publication) = publication(offset, body) {
                        self.deliver(channel, &sub, &publication);
                    }
                    t.position = Some((known, offset));
                    return;
                }
                // A gap or another epoch: read what is missing.
                match self.read(channel, t.ttl_ms, t.meta_ttl_ms, Some(last)).await {
                    Ok((epoch, top, entries)) => self.catch_up(channel, &mut t, &epoch, top, &entries),
                    Err(error) => {
                        tracing::warn!(channel, %error, "pubsub: cannot fill a gap from the history");
                        self.insufficient(channel, &sub);
                        t.position = None;
                    }
                }
            }
            Some(b'J') => {
                let mut parts = text.splitn(3, ' ');
                let (_, Some(client), Some(push)) = (parts.next(), parts.next(), parts.next()) else { return };
                if serde_json::from_str::<Value>(push).is_ok() {
                    let frame = crate::pubsub::hub::encode(&crate::apps::Message::Text(push.to_owned().into()));
                    self.hub.multicast_frame(&sub, frame, &[ChannelId::from(client)]);
                }
            }
            Some(b'L') => {
                if let Some(push) = text.strip_prefix("L ").filter(|p| serde_json::from_str::<Value>(p).is_ok()) {
                    let frame = crate::pubsub::hub::encode(&crate::apps::Message::Text(push.to_owned().into()));
                    self.hub.multicast_frame(&sub, frame, &[]);
                }
            }
            _ => {}
        }
    }

    /// After a (re)connect: reads every tracked channel again and catches its members up.
    async fn resync(&self) {
        let all: Vec<(String, Arc<tokio::sync::Mutex<Tracked>>)> =
            lock(&self.tracked).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (channel, tracked) in all {
            let mut t = tracked.lock().await;
            let Some((_, last)) = t.position.clone() else { continue };
            match self.read(&channel, t.ttl_ms, t.meta_ttl_ms, Some(last)).await {
                Ok((epoch, top, entries)) => self.catch_up(&channel, &mut t, &epoch, top, &entries),
                Err(_) => return, // lost again; the next connect resyncs
            }
        }
    }

    /// Removes `member` from `channel` (presence too, with a `leave` push to every node).
    pub async fn unsubscribe(&self, channel: &str, ns: &NamespaceConfig, member: &ChannelId) {
        let _ = self.hub.unsubscribe(member, &subscription(channel));
        let _ = self.requests.send(Request::Reconcile(channel.to_owned()));
        if !ns.presence {
            return;
        }
        let Ok(mut conn) = self.conn() else { return };
        let k = keys(channel);
        let mut pipe = redis::pipe();
        pipe.atomic().hget(&k.pres, member.as_str()).hdel(&k.pres, member.as_str());
        let removed: Result<(Option<String>, usize), _> = timed("presence", pipe.query_async(&mut conn)).await;
        if let Ok((value, 1)) = removed {
            let value = value.unwrap_or_default();
            self.presence_gauge(ns, -1);
            let user = value.splitn(3, '\t').nth(2).unwrap_or_default().to_owned();
            let push = json!({ "push": { "channel": channel, "leave": { "client": member.as_str(), "user": user } } });
            let _ = timed(
                "leave",
                redis::cmd(conn.publish_command())
                    .arg(&k.channel)
                    .arg(format!("L {push}"))
                    .query_async::<()>(&mut conn),
            )
            .await;
        }
    }

    /// The cluster-wide presence set: client id → user, without entries of dead nodes (which
    /// are deleted here).
    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, String>, EngineError> {
        self.roster(&keys(channel).pres).await
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A member list in Redis (the hash `key`: client id → node, instance, user), shared by
    /// every node, with the entries of dead nodes left out (and deleted): the presence sets,
    /// and the chat rooms' member lists. Client id → user.
    pub async fn roster(&self, key: &str) -> Result<BTreeMap<String, String>, EngineError> {
        let mut conn = self.conn()?;
        let entries: HashMap<String, String> =
            timed("presence", redis::cmd("HGETALL").arg(key).query_async(&mut conn)).await?;
        let nodes: Vec<String> = entries
            .values()
            .filter_map(|v| v.split('\t').next().map(str::to_owned))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut alive = HashMap::new();
        if !nodes.is_empty() {
            let names: Vec<String> = nodes.iter().map(|n| alive_key(n)).collect();
            let instances: Vec<Option<String>> =
                timed("presence", redis::cmd("MGET").arg(&names).query_async(&mut conn)).await?;
            alive.extend(nodes.into_iter().zip(instances));
        }
        let mut clients = BTreeMap::new();
        let mut ghosts = Vec::new();
        for (client, value) in entries {
            let mut parts = value.splitn(3, '\t');
            let (node, instance, user) =
                (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next());
            match (alive.get(node), user) {
                (Some(Some(current)), Some(user)) if current == instance => {
                    clients.insert(client, user.to_owned());
                }
                _ => ghosts.push(client),
            }
        }
        if !ghosts.is_empty() {
            let _ = timed("presence", redis::cmd("HDEL").arg(key).arg(&ghosts).query_async::<()>(&mut conn)).await;
        }
        Ok(clients)
    }

    /// Enters `client` as `user` in the member list `key` (see [`Cluster::roster`]).
    pub async fn roster_set(&self, key: &str, client: &str, user: &str) -> Result<(), EngineError> {
        let mut conn = self.conn()?;
        let value = format!("{}\t{}\t{user}", self.node, self.instance);
        timed("roster", redis::cmd("HSET").arg(key).arg(client).arg(value).query_async::<()>(&mut conn)).await
    }

    /// Removes `client` from the member list `key`.
    pub async fn roster_remove(&self, key: &str, client: &str) -> Result<(), EngineError> {
        let mut conn = self.conn()?;
        timed("roster", redis::cmd("HDEL").arg(key).arg(client).query_async::<()>(&mut conn)).await
    }

    /// Up to `limit` publications (the newest, or the first after `since`) and the position.
    pub async fn history(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        limit: usize,
        since: Option<&Position>,
    ) -> Result<HistoryPage, EngineError> {
        let ttl = ns.history_ttl();
        let (epoch, top, entries) =
            self.read(channel, millis(ttl), millis(ttl.max(META_TTL)), since.map(|s| s.offset)).await?;
        let publications = match since {
            Some(since) => {
                if since.epoch != epoch || since.offset > top {
                    return Err(EngineError::Unrecoverable);
                }
                let mut list: Vec<Value> = covering(&entries, since.offset, top)
                    .ok_or(EngineError::Unrecoverable)?
                    .into_iter()
                    .map(|e| e.publication.clone())
                    .collect();
                list.truncate(limit);
                list
            }
            None => {
                let skip = entries.len().saturating_sub(limit);
                entries.into_iter().skip(skip).map(|e| e.publication).collect()
            }
        };
        Ok(HistoryPage { publications, position: Position { offset: top, epoch } })
    }

    /// Drops tracked channels with no local members (their position is read again when a
    /// member comes back).
    fn sweep(&self) {
        lock(&self.tracked).retain(|channel, tracked| {
            let Ok(mut t) = tracked.try_lock() else { return true };
            if self.wanted(channel) {
                return true;
            }
            t.removed = true;
            if let Some(m) = self.hub.metrics() {
                m.pubsub_channels.get_or_create(&t.label).dec();
            }
            false
        });
    }

    /// The metrics label is the namespace's, as on one node.
    pub fn label(ns: &NamespaceConfig) -> NamespaceLabel {
        NamespaceLabel { namespace: ns.pattern.clone() }
    }
}

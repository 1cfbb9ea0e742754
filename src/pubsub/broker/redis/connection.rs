//! The two connections a node keeps to Redis, the same to their users whether Redis is one
//! server or a cluster: [`Commands`] (publishes, scripts) and a [`Subscriber`].
//!
//! On one server relays use `PUBLISH`/`SUBSCRIBE`. In a Redis Cluster they use sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): a channel lives on the shard that owns its slot, so
//! a message is not broadcast over the whole cluster bus. A subscribed slot the server moved
//! away (its `sunsubscribe`) is reported as [`Received::Moved`]: the caller subscribes that
//! channel again at once, at the new owner (what is published in between is lost to this
//! node, and counted there as missed: see `sequence`). Any other sign that subscriptions may
//! have lapsed (a node's connection closed) is [`Received::Lost`]: the caller reconnects and
//! subscribes everything again, as it does after losing a single server.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;

use futures_util::Stream;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushKind, RedisFuture, Value};

use super::settings::{check_primary, PushReceiver, RedisSettings};
use super::timed;

/// A command connection: to one server, or to a cluster (each command routed by its key's
/// slot; a pipeline must keep to one slot).
#[derive(Clone)]
pub enum Commands {
    /// One server (`url`, or the primary Sentinel named).
    Server(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Commands {
    /// The publish command for this kind of Redis: `PUBLISH`, or sharded `SPUBLISH`.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Commands::Server(_) => "PUBLISH",
            Commands::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Server(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Server(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// What a subscriber receives.
pub enum Received {
    /// A message on a subscribed channel.
    Message {
        /// The Redis channel.
        channel: String,
        /// The message's bytes.
        payload: Vec<u8>,
    },
    /// The cluster moved the slot of this subscribed channel (resharding, or a failover the
    /// old owner survived): subscribe it again now, at its new owner; the rest still hold.
    Moved(String),
    /// The subscriptions may have lapsed: reconnect and subscribe again.
    Lost(String),
}

/// The subscriber connection.
pub enum Subscriber {
    /// `SUBSCRIBE` on one server.
    Server {
        /// Where (un)subscribe commands go.
        sink: PubSubSink,
        /// Where messages arrive.
        stream: PubSubStream,
    },
    /// `SSUBSCRIBE` in a cluster, one channel per command (each may live on another shard).
    Cluster {
        /// The RESP3 cluster connection the commands go through.
        conn: ClusterConnection,
        /// Its pushes: messages, confirmations, disconnections.
        pushes: PushReceiver,
        /// The channels subscribed (a server-sent `sunsubscribe` for one of them: moved).
        active: HashSet<Vec<u8>>,
        /// Confirmations still to come of our own `SUNSUBSCRIBE`s, per channel: they arrive
        /// through the push channel, possibly after the channel was subscribed again.
        unconfirmed: HashMap<Vec<u8>, usize>,
    },
}

impl Subscriber {
    /// Subscribes to `channels`, returning once Redis has confirmed them.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        match self {
            Subscriber::Server { sink, .. } => timed("SUBSCRIBE", sink.subscribe(channels)).await,
            Subscriber::Cluster { conn, active, .. } => {
                for channel in channels {
                    timed("SSUBSCRIBE", conn.ssubscribe(channel)).await?;
                    active.insert(channel.as_bytes().to_vec());
                }
                Ok(())
            }
        }
    }

    /// Unsubscribes from `channel`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), String> {
        match self {
            Subscriber::Server { sink, .. } => timed("UNSUBSCRIBE", sink.unsubscribe(channel)).await,
            Subscriber::Cluster { conn, active, unconfirmed, .. } => {
                active.remove(channel.as_bytes());
                *unconfirmed.entry(channel.as_bytes().to_vec()).or_default() += 1;
                timed("SUNSUBSCRIBE", conn.sunsubscribe(channel)).await
            }
        }
    }

    /// Checks the connection (every primary's, in a cluster).
    pub async fn ping(&mut self) -> Result<(), String> {
        match self {
            Subscriber::Server { sink, .. } => timed("PING (subscriber)", sink.ping::<Value>()).await.map(drop),
            Subscriber::Cluster { conn, .. } => {
                timed("PING (subscriber)", redis::cmd("PING").query_async::<Value>(conn)).await.map(drop)
            }
        }
    }

    /// The next message, or why the subscriptions may have lapsed.
    pub async fn next(&mut self) -> Received {
        match self {
            Subscriber::Server { stream, .. } => {
                match poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await {
                    Some(msg) => Received::Message {
                        channel: msg.get_channel_name().to_owned(),
                        payload: msg.get_payload_bytes().to_vec(),
                    },
                    None => Received::Lost("the subscriber connection closed".into()),
                }
            }
            Subscriber::Cluster { pushes, active, unconfirmed, .. } => loop {
                let Some(push) = pushes.recv().await else {
                    return Received::Lost("the cluster subscriber closed".into());
                };
                match push.kind {
                    PushKind::SMessage => {
                        let mut data = push.data.into_iter();
                        if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                            (data.next(), data.next())
                        {
                            let channel = String::from_utf8_lossy(&channel).into_owned();
                            return Received::Message { channel, payload };
                        }
                    }
                    PushKind::Disconnection => {
                        return Received::Lost("a cluster node's subscriber connection closed".into())
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(Value::BulkString(channel)) = push.data.first() {
                            if let Some(count) = unconfirmed.get_mut(channel) {
                                *count -= 1;
                                if *count == 0 {
                                    unconfirmed.remove(channel);
                                }
                            } else if active.contains(channel) {
                                return Received::Moved(String::from_utf8_lossy(channel).into_owned());
                            }
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

/// A node's connections to Redis.
pub struct Connected {
    /// For commands.
    pub commands: Commands,
    /// For subscriptions (nothing subscribed yet).
    pub subscriber: Subscriber,
    /// With Sentinel, the primary's address.
    pub primary: Option<String>,
}

/// Connects both connections: to `url`, to the primary the sentinels name (checked with
/// `ROLE`), or to the cluster.
pub async fn connect(settings: &RedisSettings) -> Result<Connected, String> {
    if let Some(cluster) = &settings.cluster {
        let (client, _) = settings.cluster_client(cluster, false)?;
        let commands = timed("connect (cluster)", client.get_async_connection()).await?;
        let (client, pushes) = settings.cluster_client(cluster, true)?;
        let pushes = pushes.ok_or("a cluster subscriber without pushes")?;
        let conn = timed("connect (cluster subscriber)", client.get_async_connection()).await?;
        let subscriber = Subscriber::Cluster { conn, pushes, active: HashSet::new(), unconfirmed: HashMap::new() };
        return Ok(Connected { commands: Commands::Cluster(commands), subscriber, primary: None });
    }
    let (client, primary) = settings.current_client().await?;
    let mut conn = timed("connect (publisher)", client.get_multiplexed_async_connection()).await?;
    if settings.sentinel.is_some() {
        check_primary(&mut conn).await?;
    }
    let (sink, stream) = timed("connect (subscriber)", client.get_async_pubsub()).await?.split();
    Ok(Connected { commands: Commands::Server(conn), subscriber: Subscriber::Server { sink, stream }, primary })
}

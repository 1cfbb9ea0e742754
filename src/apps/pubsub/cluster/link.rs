//! The cluster's connection task: a command connection (shared by the channel operations), a
//! subscriber connection whose SUBSCRIBEs follow local interest, the node's heartbeat, and
//! reconnects with backoff, after which every tracked channel is read again.

use std::collections::HashSet;
use std::future::poll_fn;
use std::sync::Weak;
use std::time::Duration;

use futures_util::Stream;
use redis::aio::{MultiplexedConnection, PubSubSink};
use tokio::sync::{mpsc, watch};

use super::storage::keys;
use super::{millis, timed, Cluster, Request, PRESENCE_TTL};
use crate::apps::pubsub::model::EngineError;
use crate::locks::lock;
use crate::pubsub::broker::redis::RedisSettings;

const HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The connection task: the command connection, the subscriber connection, the heartbeat,
/// subscriptions that follow local interest, reconnects with backoff.
pub(super) async fn run(
    cluster: Weak<Cluster>,
    settings: RedisSettings,
    conn_tx: watch::Sender<Option<MultiplexedConnection>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.tick().await;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(me) = cluster.upgrade() else { return };
        let session = connect(&me, &settings).await;
        drop(me);
        match session {
            Ok((conn, sink, stream, active)) => {
                backoff = BACKOFF_MIN;
                conn_tx.send_replace(Some(conn.clone()));
                if let Some(me) = cluster.upgrade() {
                    me.resync().await;
                }
                let why = serve(&cluster, conn, sink, stream, active, &mut requests, &mut stop, &mut sweep).await;
                conn_tx.send_replace(None);
                if let Some(me) = cluster.upgrade() {
                    lock(&me.nodes).clear();
                }
                match why {
                    None => return,
                    Some(why) => tracing::warn!(%why, "pubsub cluster: lost Redis; reconnecting"),
                }
            }
            Err(why) => tracing::warn!(%why, "pubsub cluster: cannot connect to Redis; retrying"),
        }
        let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = stop.changed() => return,
                request = requests.recv() => match request {
                    None => return,
                    Some(Request::Hold(_, answer)) => { let _ = answer.send(false); }
                    Some(Request::Reconcile(_)) => {}
                },
            }
        }
    }
}

type Session = (MultiplexedConnection, PubSubSink, redis::aio::PubSubStream, HashSet<String>);

async fn connect(me: &Cluster, settings: &RedisSettings) -> Result<Session, String> {
    let (client, _) = settings.current_client().await?;
    let io = |e: EngineError| e.to_string();
    let mut conn = timed("connect", client.get_multiplexed_async_connection()).await.map_err(io)?;
    let pubsub = timed("connect (subscriber)", client.get_async_pubsub()).await.map_err(io)?;
    let (mut sink, stream) = pubsub.split();
    heartbeat(me, &mut conn).await.map_err(io)?;
    let wanted: Vec<String> = {
        let tracked: Vec<String> = lock(&me.tracked).keys().cloned().collect();
        let pending: Vec<String> = lock(&me.pending).keys().cloned().collect();
        tracked.into_iter().chain(pending).filter(|c| me.wanted(c)).collect::<HashSet<_>>().into_iter().collect()
    };
    if !wanted.is_empty() {
        let channels: Vec<String> = wanted.iter().map(|c| keys(c).channel).collect();
        timed("SUBSCRIBE", sink.subscribe(channels)).await.map_err(io)?;
    }
    Ok((conn, sink, stream, wanted.into_iter().collect()))
}

/// Refreshes this node's heartbeat and reads which nodes are alive, in one script (a sorted
/// set of nodes by expiry, so no walk over the keyspace).
async fn heartbeat(me: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), EngineError> {
    let alive = format!("wsgate:alive:{}", me.node);
    let args = [me.instance.clone(), millis(PRESENCE_TTL).to_string(), me.node.clone()];
    let mut nodes: Vec<String> =
        timed("heartbeat", me.heartbeat_script.invoke(conn, &[&alive, "wsgate:nodes"], &args)).await?;
    nodes.sort();
    *lock(&me.nodes) = nodes;
    Ok(())
}

/// Serves one connection; `None` when stopped, `Some(reason)` when the connection was lost.
#[allow(clippy::too_many_arguments)]
async fn serve(
    cluster: &Weak<Cluster>,
    mut conn: MultiplexedConnection,
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
    mut active: HashSet<String>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    stop: &mut watch::Receiver<bool>,
    sweep: &mut tokio::time::Interval,
) -> Option<String> {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            msg = poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)) => {
                let Some(msg) = msg else { return Some("the subscriber connection closed".into()) };
                let me = cluster.upgrade()?;
                me.on_message(msg.get_channel_name(), msg.get_payload_bytes()).await;
            }
            request = requests.recv() => {
                let me = cluster.upgrade()?;
                match request? {
                    Request::Hold(channel, answer) => {
                        if !active.contains(&channel) {
                            if let Err(e) = timed("SUBSCRIBE", sink.subscribe(keys(&channel).channel)).await {
                                let _ = answer.send(false);
                                return Some(e.to_string());
                            }
                            active.insert(channel);
                        }
                        let _ = answer.send(true);
                    }
                    Request::Reconcile(channel) => {
                        if active.contains(&channel) && !me.wanted(&channel) {
                            if let Err(e) = timed("UNSUBSCRIBE", sink.unsubscribe(keys(&channel).channel)).await {
                                return Some(e.to_string());
                            }
                            active.remove(&channel);
                        }
                    }
                }
            }
            _ = beat.tick() => {
                let me = cluster.upgrade()?;
                if let Err(e) = heartbeat(&me, &mut conn).await {
                    return Some(e.to_string());
                }
                if let Err(e) = timed("PING (subscriber)", sink.ping::<redis::Value>()).await {
                    return Some(e.to_string());
                }
            }
            _ = sweep.tick() => cluster.upgrade()?.sweep(),
            _ = stop.changed() => return None,
        }
    }
}

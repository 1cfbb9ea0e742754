//! The cluster's connection task: a command connection (shared by the channel operations), a
//! subscriber connection whose SUBSCRIBEs follow local interest, the node's heartbeat, and
//! reconnects with backoff, after which every tracked channel is read again.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::storage::{alive_key, keys, NODES_KEY};
use super::{millis, timed, Cluster, Request, PRESENCE_TTL};
use crate::apps::pubsub::model::EngineError;
use crate::locks::lock;
use crate::pubsub::broker::redis::{Commands, Connected, Received, RedisSettings, Subscriber};

const HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The connection task: the command connection, the subscriber connection, the heartbeat,
/// subscriptions that follow local interest, reconnects with backoff.
pub(super) async fn run(
    cluster: Weak<Cluster>,
    settings: RedisSettings,
    conn_tx: watch::Sender<Option<Commands>>,
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
            Ok((conn, subscriber, active)) => {
                backoff = BACKOFF_MIN;
                conn_tx.send_replace(Some(conn.clone()));
                if let Some(me) = cluster.upgrade() {
                    me.resync().await;
                }
                let why = serve(&cluster, conn, subscriber, active, &mut requests, &mut stop, &mut sweep).await;
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

type Session = (Commands, Subscriber, HashSet<String>);

async fn connect(me: &Cluster, settings: &RedisSettings) -> Result<Session, String> {
    let Connected { commands: mut conn, mut subscriber, .. } = crate::pubsub::broker::redis::connect(settings).await?;
    heartbeat(me, &mut conn).await.map_err(|e| e.to_string())?;
    let wanted: Vec<String> = {
        let tracked: Vec<String> = lock(&me.tracked).keys().cloned().collect();
        let pending: Vec<String> = lock(&me.pending).keys().cloned().collect();
        tracked.into_iter().chain(pending).filter(|c| me.wanted(c)).collect::<HashSet<_>>().into_iter().collect()
    };
    if !wanted.is_empty() {
        let channels: Vec<String> = wanted.iter().map(|c| keys(c).channel).collect();
        subscriber.subscribe(&channels).await?;
    }
    Ok((conn, subscriber, wanted.into_iter().collect()))
}

/// Refreshes this node's heartbeat and reads which nodes are alive, in one script (a sorted
/// set of nodes by expiry, so no walk over the keyspace).
async fn heartbeat(me: &Cluster, conn: &mut Commands) -> Result<(), EngineError> {
    let alive = alive_key(&me.node);
    let args = [me.instance.clone(), millis(PRESENCE_TTL).to_string(), me.node.clone()];
    let mut nodes: Vec<String> =
        timed("heartbeat", me.heartbeat_script.invoke(conn, &[&alive, NODES_KEY], &args)).await?;
    nodes.sort();
    *lock(&me.nodes) = nodes;
    Ok(())
}

/// Serves one connection; `None` when stopped, `Some(reason)` when the connection was lost.
#[allow(clippy::too_many_arguments)]
async fn serve(
    cluster: &Weak<Cluster>,
    mut conn: Commands,
    mut subscriber: Subscriber,
    mut active: HashSet<String>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    stop: &mut watch::Receiver<bool>,
    sweep: &mut tokio::time::Interval,
) -> Option<String> {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            received = subscriber.next() => {
                let (channel, payload) = match received {
                    Received::Message { channel, payload } => (channel, payload),
                    Received::Moved(channel) => {
                        if let Err(why) = subscriber.subscribe(&[channel]).await {
                            return Some(why);
                        }
                        // What was published meanwhile reached Redis but not this node: read
                        // every channel again (gaps are filled from the history).
                        cluster.upgrade()?.resync().await;
                        continue;
                    }
                    Received::Lost(why) => return Some(why),
                };
                let me = cluster.upgrade()?;
                me.on_message(&channel, &payload).await;
            }
            request = requests.recv() => {
                let me = cluster.upgrade()?;
                match request? {
                    Request::Hold(channel, answer) => {
                        if !active.contains(&channel) {
                            if let Err(e) = subscriber.subscribe(&[keys(&channel).channel]).await {
                                let _ = answer.send(false);
                                return Some(e);
                            }
                            active.insert(channel);
                        }
                        let _ = answer.send(true);
                    }
                    Request::Reconcile(channel) => {
                        if active.contains(&channel) && !me.wanted(&channel) {
                            if let Err(e) = subscriber.unsubscribe(&keys(&channel).channel).await {
                                return Some(e);
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
                if let Err(e) = subscriber.ping().await {
                    return Some(e);
                }
            }
            _ = sweep.tick() => cluster.upgrade()?.sweep(),
            _ = stop.changed() => return None,
        }
    }
}

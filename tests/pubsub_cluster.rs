//! Issue 19 across nodes: the `pubsub` app's channels in Redis (DESIGN §13, cluster mode).
//! Real `redis-server` processes on loopback ports, three wsgate nodes on one Redis (in-process,
//! and one as its own process where it must die by SIGKILL), real WebSocket clients.
//!
//! - A randomized property test: a client on one node and the control API of another publish
//!   concurrently while subscribers drop their connection at random and recover on a random
//!   node; each ends with exactly the offsets 1..=N, in order, with the data the publishers
//!   were given offsets for.
//! - A Redis restart: the history is gone, so the epoch changes; subscribers are told
//!   (`unsubscribe` push, code 112) and a recovery from the old epoch says `recovered:false`.
//! - Presence across nodes, and after a node is killed with SIGKILL (no ghost after 30 s).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pubsub::{admin, error_code, Client};
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

/// A pubsub app at /live on node `node`, channels in the Redis at `url`.
fn node_config(node: &str, url: &str, history: usize) -> String {
    format!(
        r#"
[limits]
shutdown_timeout = "1s"

[broker]
kind = "redis"
node = "{node}"
url = "{url}"

[apps.live]
kind = "pubsub"
urls = ["/live"]

[[apps.live.namespaces]]
pattern = "chat:*"
subscribe = "any"
publish = "any"
history = {history}
presence = true

[admin]
addr = "127.0.0.1:0"
"#
    )
}

async fn start_nodes(url: &str, history: usize, upstream: SocketAddr) -> Vec<Gate> {
    let mut gates = Vec::new();
    for node in ["pa", "pb", "pc"] {
        gates.push(start_gate(&basic_config(&node_config(node, url, history)), upstream).await);
    }
    gates
}

/// Waits until a subscribe on every node answers (each node's channel store is connected).
async fn wait_ready(addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in addrs {
        loop {
            let mut c = Client::open(*addr, "/live").await;
            let reply = c.call("subscribe", json!({"channel":"chat:ready"})).await;
            if reply.get("subscribe").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "node {addr} never reached Redis: {reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_is_exact_across_three_nodes() {
    const PER_PUBLISHER: u64 = 150;
    const SUBSCRIBERS: usize = 4;
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let up = start_upstream().await;
    let gates = start_nodes(&redis.url(), 1000, up.addr).await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.addr).collect();
    wait_ready(&addrs).await;
    let api = gates[1].server.admin_addr().unwrap();
    let sent: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();

    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let mut subscribers = Vec::new();
    for s in 0..SUBSCRIBERS {
        let rng = fastrand::Rng::with_seed(seed ^ s as u64);
        subscribers.push(tokio::spawn(subscriber(addrs.clone(), rng, 2 * PER_PUBLISHER)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let by_client = {
        let (sent, addr) = (sent.clone(), addrs[0]);
        tokio::spawn(async move {
            let mut c = Client::open(addr, "/live").await;
            for i in 0..PER_PUBLISHER {
                let data = json!({"from":"client","i":i});
                let r = c.call("publish", json!({"channel":"chat:p","data":data})).await;
                sent.lock().unwrap().insert(r["publish"]["offset"].as_u64().unwrap(), data);
            }
        })
    };
    let by_api = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                let data = json!({"from":"api","i":i});
                let (status, r) =
                    admin(api, "POST", "/v1/publish", &json!({"channel":"chat:p","data":data}).to_string()).await;
                assert_eq!(status, 200, "{r}");
                sent.lock().unwrap().insert(r["offset"].as_u64().unwrap(), data);
            }
        })
    };
    by_client.await.unwrap();
    by_api.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let all: Vec<u64> = (1..=2 * PER_PUBLISHER).collect();
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), all, "one offset per publication, cluster-wide");
    for handle in subscribers {
        let (seen, reconnects) = tokio::time::timeout(Duration::from_secs(60), handle).await.unwrap().unwrap();
        assert!(reconnects > 0, "seed {seed}: the subscriber never reconnected");
        let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, all, "seed {seed}: gaps, duplicates or disorder");
        for (offset, data) in seen {
            assert_eq!(sent[&offset], data, "seed {seed}: offset {offset}");
        }
    }
    // Every node reports the same position and history.
    for gate in &gates {
        let (status, page) = admin(gate.server.admin_addr().unwrap(), "GET", "/v1/history/chat:p?limit=5", "").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["offset"], 2 * PER_PUBLISHER);
        assert_eq!(page["publications"][4]["offset"], 2 * PER_PUBLISHER);
    }
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// Subscribes on a random node, reads, drops the connection at random and recovers on another
/// random node, until it has seen `total`.
async fn subscriber(addrs: Vec<SocketAddr>, mut rng: fastrand::Rng, total: u64) -> (Vec<(u64, Value)>, usize) {
    let mut seen: Vec<(u64, Value)> = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let mut reconnects = 0;
    loop {
        let mut c = Client::open(addrs[rng.usize(..addrs.len())], "/live").await;
        let body = match &position {
            None => json!({"channel":"chat:p"}),
            Some((offset, epoch)) => json!({"channel":"chat:p","recover":true,"offset":offset,"epoch":epoch}),
        };
        let reply = c.call("subscribe", body).await;
        let reply = &reply["subscribe"];
        match &position {
            None => {
                let start = reply["offset"].as_u64().unwrap();
                let history = c.call("history", json!({"channel":"chat:p"})).await;
                for p in history["history"]["publications"].as_array().unwrap() {
                    let o = p["offset"].as_u64().unwrap();
                    if o <= start {
                        seen.push((o, p["data"].clone()));
                    }
                }
                assert_eq!(seen.len() as u64, start, "history holds everything before joining");
                position = Some((start, reply["epoch"].as_str().unwrap().to_owned()));
            }
            Some(_) => {
                assert_eq!(reply["recovered"], true, "{reply}");
                reconnects += 1;
                for p in reply["publications"].as_array().unwrap() {
                    seen.push((p["offset"].as_u64().unwrap(), p["data"].clone()));
                }
            }
        }
        if let Some((o, _)) = seen.last() {
            position.as_mut().unwrap().0 = *o;
        }
        let budget = rng.u64(1..40);
        for _ in 0..budget {
            if seen.len() as u64 >= total {
                return (seen, reconnects);
            }
            let p = tokio::time::timeout(Duration::from_secs(20), c.push()).await.expect("a push within 20 s");
            assert!(p.get("unsubscribe").is_none(), "no gap may reach a subscriber here: {p}");
            if let Some(publication) = p.get("pub") {
                let o = publication["offset"].as_u64().unwrap();
                seen.push((o, publication["data"].clone()));
                position.as_mut().unwrap().0 = o;
            }
        }
        if seen.len() as u64 >= total {
            return (seen, reconnects);
        }
        drop(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_a_new_epoch_never_a_silent_gap() {
    let bin = require_redis!();
    let mut redis = Redis::start(&bin, &[]).await;
    let up = start_upstream().await;
    let a = start_gate(&basic_config(&node_config("ra", &redis.url(), 100)), up.addr).await;
    let b = start_gate(&basic_config(&node_config("rb", &redis.url(), 100)), up.addr).await;
    wait_ready(&[a.addr, b.addr]).await;
    let mut sub = Client::open(a.addr, "/live").await;
    let reply = sub.call("subscribe", json!({"channel":"chat:e"})).await;
    let old_epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let mut publisher = Client::open(b.addr, "/live").await;
    for i in 1..=3 {
        let r = publisher.call("publish", json!({"channel":"chat:e","data":i})).await;
        assert_eq!(r["publish"]["offset"], i);
        assert_eq!(sub.push().await["pub"]["offset"], i);
    }

    redis.kill();
    // Redis down: a publish is refused (code 100; the control API says 503), not lost silently.
    let refused = publisher.call("publish", json!({"channel":"chat:e","data":"lost?"})).await;
    assert_eq!(error_code(&refused), 100, "{refused}");
    let (status, body) =
        admin(b.server.admin_addr().unwrap(), "POST", "/v1/publish", r#"{"channel":"chat:e","data":1}"#).await;
    assert_eq!(status, 503, "{body}");

    redis.spawn().await; // same port, empty: the channel's history and epoch are gone
                         // Node a reconnects, reads the channel again, finds another epoch and tells its subscriber.
    let push = tokio::time::timeout(Duration::from_secs(20), sub.push()).await.expect("told within 20 s");
    assert_eq!(push["channel"], "chat:e");
    assert_eq!(push["unsubscribe"]["code"], 112, "{push}");
    let again = sub.call("subscribe", json!({"channel":"chat:e","recover":true,"offset":3,"epoch":old_epoch})).await;
    let again = &again["subscribe"];
    assert_eq!(again["recovered"], false, "{again}");
    assert_ne!(again["epoch"], old_epoch.as_str());
    assert_eq!(again["offset"], 0);
    // Live again on the new epoch, from another node.
    let r = loop {
        let r = publisher.call("publish", json!({"channel":"chat:e","data":"new"})).await;
        if r.get("publish").is_some() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r["publish"]["offset"], 1);
    assert_eq!(r["publish"]["epoch"], again["epoch"]);
    let p = sub.push().await;
    assert_eq!((p["pub"]["offset"].as_u64(), &p["pub"]["data"]), (Some(1), &json!("new")));
    a.server.shutdown().await;
    b.server.shutdown().await;
}

/// One sample of `/metrics` on an admin listener (0 when absent).
async fn metric(admin_addr: SocketAddr, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut all)).await.unwrap().unwrap();
    all.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The `nodes` of the dashboard's snapshot (`GET /v1/events`) once it equals `want`, or the
/// last one seen after 15 s (the list follows the heartbeats, every 10 s).
async fn dashboard_nodes(admin_addr: SocketAddr, want: &[&str]) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let mut stream = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
        stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                let snapshot: Value = serde_json::from_str(data).unwrap();
                last = snapshot["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect();
                break;
            }
        }
        if last == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

/// The member ids in a presence answer.
fn members(presence: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presence["clients"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_killed_node_leaves_within_30s() {
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let up = start_upstream().await;
    let a = start_gate(&basic_config(&node_config("qa", &redis.url(), 10)), up.addr).await;
    let b = start_gate(&basic_config(&node_config("qb", &redis.url(), 10)), up.addr).await;
    let dir = tempfile::tempdir().unwrap();
    // The third node is its own process, so it can die by SIGKILL (no goodbye to Redis).
    let doomed = spawn_binary(&dir, up.addr, &node_config("qc", &redis.url(), 10));
    wait_ready(&[a.addr, b.addr, doomed.addr]).await;

    let mut ca = Client::open(a.addr, "/live").await;
    let mut cb = Client::open(b.addr, "/live").await;
    let mut cc = Client::open(doomed.addr, "/live").await;
    let mut ids = Vec::new();
    for c in [&mut ca, &mut cb, &mut cc] {
        ids.push(c.call("connect", json!({})).await["connect"]["client"].as_str().unwrap().to_owned());
        c.call("subscribe", json!({"channel":"chat:room"})).await;
    }
    // a saw b and c join, b saw c join: join pushes cross nodes.
    for (client, want) in [(&mut ca, &ids[1..]), (&mut cb, &ids[2..])] {
        for id in want {
            let p = client.push().await;
            assert_eq!(p["join"]["client"], id.as_str(), "{p}");
        }
    }
    let mut all = ids.clone();
    all.sort();
    for c in [&mut ca, &mut cb, &mut cc] {
        let presence = c.call("presence", json!({"channel":"chat:room"})).await;
        assert_eq!(members(&presence["presence"]), all, "every node sees every member");
    }
    let (status, api) = admin(b.server.admin_addr().unwrap(), "GET", "/v1/presence/chat:room", "").await;
    assert_eq!((status, members(&api)), (200, all.clone()));
    // Node a's gauges count its own members; its dashboard lists the three live nodes.
    let a_admin = a.server.admin_addr().unwrap();
    assert_eq!(metric(a_admin, "wsgate_pubsub_presence_clients{namespace=\"chat:*\"}").await, 1.0);
    assert!(metric(a_admin, "wsgate_pubsub_channels{namespace=\"chat:*\"}").await >= 1.0);
    assert_eq!(dashboard_nodes(a_admin, &["qa", "qb", "qc"]).await, ["qa", "qb", "qc"]);

    // b leaves cleanly: a is told at once, and b is gone from presence.
    cb.call("unsubscribe", json!({"channel":"chat:room"})).await;
    let p = ca.push().await;
    assert_eq!(p["leave"]["client"], ids[1].as_str(), "{p}");

    // The third node dies without a word: its member disappears within the 30 s heartbeat TTL.
    drop(cc);
    drop(doomed); // SIGKILL
    let killed = Instant::now();
    let want = vec![ids[0].clone()];
    loop {
        let presence = ca.call("presence", json!({"channel":"chat:room"})).await;
        if members(&presence["presence"]) == want {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(40), "ghost after {:?}: {presence}", killed.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("the killed node's member was gone after {:?}", killed.elapsed());
    // Its heartbeat expired with it: the dashboard stops listing it.
    assert_eq!(dashboard_nodes(a.server.admin_addr().unwrap(), &["qa", "qb"]).await, ["qa", "qb"]);
    a.server.shutdown().await;
    b.server.shutdown().await;
}

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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pubsub::{admin, check_exact_recovery, error_code, live_app, wait_ready, Client};
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

/// A pubsub app at /live on node `node`, channels in the Redis at `url`.
fn node_config(node: &str, url: &str, history: usize) -> String {
    live_app(&format!("[broker]\nkind = \"redis\"\nnode = \"{node}\"\nurl = \"{url}\"\n"), history, true)
}

async fn start_nodes(url: &str, history: usize, upstream: SocketAddr) -> Vec<Gate> {
    let mut gates = Vec::new();
    for node in ["pa", "pb", "pc"] {
        gates.push(start_gate(&basic_config(&node_config(node, url, history)), upstream).await);
    }
    gates
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
    // A client on node a and the control API of node b publish; subscribers hop over all three.
    let api = gates[1].server.admin_addr().unwrap();
    check_exact_recovery(&addrs, addrs[0], api, PER_PUBLISHER, SUBSCRIBERS).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_recovers_on_another_node_by_last_event_id() {
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let up = start_upstream().await;
    let a = start_gate(&basic_config(&node_config("sa", &redis.url(), 100)), up.addr).await;
    let b = start_gate(&basic_config(&node_config("sb", &redis.url(), 100)), up.addr).await;
    wait_ready(&[a.addr, b.addr]).await;
    let api = b.server.admin_addr().unwrap();
    let publish = |i: u64| async move {
        let (status, r) = admin(api, "POST", "/v1/publish", &json!({"channel":"chat:s","data":i}).to_string()).await;
        assert_eq!(status, 200, "{r}");
        r["offset"].as_u64().unwrap()
    };
    // A stream on node a; publications made through node b reach it.
    let (status, _, stream) = common::sse::open(a.addr, "channel=chat:s", None).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    assert!(stream.next().await.unwrap().data.get("subscribe").is_some());
    let mut last_id = None;
    for i in 1..=2 {
        assert_eq!(publish(i).await, i);
        let event = stream.next().await.unwrap();
        assert_eq!(event.data["push"]["pub"]["offset"], i, "{:?}", event.data);
        last_id = event.id;
    }
    drop(stream);
    for i in 3..=5 {
        publish(i).await;
    }
    // The browser comes back on node b with its Last-Event-ID: exactly 3, 4, 5, then live.
    let (status, _, stream) = common::sse::open(b.addr, "channel=chat:s", last_id.as_deref()).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    for want in 3..=5 {
        let event = stream.next().await.unwrap();
        assert_eq!(event.data["push"]["pub"]["offset"], want, "{:?}", event.data);
    }
    let subscribed = stream.next().await.unwrap();
    assert_eq!(subscribed.data["subscribe"]["recovered"], true, "{:?}", subscribed.data);
    publish(6).await;
    assert_eq!(stream.next().await.unwrap().data["push"]["pub"]["offset"], 6);
    drop(stream);
    a.server.shutdown().await;
    b.server.shutdown().await;
}

//! Scale-out through Redis (DESIGN §4, `[broker] kind = "redis"`): real `redis-server`
//! processes on 127.0.0.1 random ports, three wsgate nodes started in-process with different
//! node names, and real WebSocket clients. Channels are subscribed through each node's
//! `RunningServer::hub()` (ids from `channel_summaries()`), the in-process form of `ws::subscribe`.
//!
//! Needs `redis-server` (Debian package redis-server, installed by scripts/install-test-deps).
//! Without it every test here prints a loud SKIPPED line and passes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::{counter, free_port, numbered_messages, steady_publisher, undelivered, Redis};
use common::{basic_config, open_echo, start_gate, start_upstream, Gate, WsClient};
use wsgate::apps::Message;
use wsgate::pubsub::broker::redis::RedisSettings;
use wsgate::pubsub::broker::{control, Control};
use wsgate::ws::codec::Incoming;

const ROOM: &str = "room";

fn node_config(node: &str, broker: &str) -> String {
    basic_config(&format!(
        "\n[limits]\nshutdown_timeout = \"1s\"\n\n[broker]\nkind = \"redis\"\nnode = \"{node}\"\n{broker}\n"
    ))
}

async fn start_nodes(url: &str, upstream: std::net::SocketAddr) -> Vec<Gate> {
    let mut gates = Vec::new();
    for node in ["na", "nb", "nc"] {
        gates.push(start_gate(&node_config(node, &format!("url = \"{url}\"")), upstream).await);
    }
    gates
}

async fn wait_connected(gates: &[Gate], want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gates.iter().all(|g| g.server.hub().broker().unwrap().is_connected() == want) {
        assert!(Instant::now() < deadline, "brokers did not become connected={want} in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(s: &str) -> Message {
    Message::Text(Bytes::copy_from_slice(s.as_bytes()))
}

async fn expect_text(client: &mut WsClient, want: &str) {
    match client.next().await {
        Some(Incoming::Text(t)) => assert_eq!(&t[..], want.as_bytes()),
        other => panic!("expected text {want:?}, got {other:?}"),
    }
}

/// Nothing arrives within `wait`.
async fn expect_silence(client: &mut WsClient, wait: Duration) {
    if let Ok(got) = tokio::time::timeout(wait, client.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_multicast_exclude_send_and_all() {
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let gates = start_nodes(&redis.url(), upstream.addr).await;
    wait_connected(&gates, true).await;
    redis.wait_numsub("wsgate:all", 3).await;
    assert_eq!(redis.numsub("wsgate:node:nb").await, 1);

    // Two clients per node, ids prefixed with their node's name.
    let mut clients = Vec::new();
    for gate in &gates {
        for _ in 0..2 {
            clients.push(open_echo(gate).await);
        }
    }
    assert!(clients[2].1.as_str().starts_with("nb-"), "{}", clients[2].1);
    assert_eq!(redis.numsub("wsgate:sub:room").await, 0, "no members yet: nobody subscribed in Redis");
    for (i, (_, id)) in clients.iter().enumerate() {
        assert_eq!(gates[i / 2].server.hub().subscribe(id, ROOM), Ok(true));
    }
    redis.wait_numsub("wsgate:sub:room", 3).await;

    // A multicast on node a excluding a channel of node b reaches the other five, once each.
    let excluded = clients[3].1.clone();
    let local = gates[0].server.hub().multicast(ROOM, &text("hello"), &[excluded]);
    assert_eq!(local.delivered, 2);
    gates[0].server.hub().multicast(ROOM, &text("marker"), &[]);
    for (i, (client, _)) in clients.iter_mut().enumerate() {
        if i != 3 {
            expect_text(client, "hello").await;
        }
        expect_text(client, "marker").await;
    }

    // Binary from node c, excluding its own sender, keeps its kind.
    let sender = clients[4].1.clone();
    gates[2].server.hub().multicast(ROOM, &Message::Binary(Bytes::from_static(&[0, 1, 255])), &[sender]);
    for (i, (client, _)) in clients.iter_mut().enumerate() {
        if i == 4 {
            continue;
        }
        match client.next().await {
            Some(Incoming::Binary(b)) => assert_eq!(&b[..], &[0, 1, 255]),
            other => panic!("client {i}: expected binary, got {other:?}"),
        }
    }

    // Send to a channel of another node, routed by the id's node prefix.
    let target = clients[5].1.clone();
    gates[0].server.hub().send(target.as_str(), &text("direct")).unwrap();
    expect_text(&mut clients[5].0, "direct").await;

    // Control operations (the control API's PUT/DELETE) reach channels of other nodes.
    let hub_a = gates[0].server.hub();
    control(hub_a, target.as_str(), &Control::Subscribe("side".into())).unwrap();
    redis.wait_numsub("wsgate:sub:side", 1).await;
    hub_a.multicast("side", &text("side"), &[]);
    expect_text(&mut clients[5].0, "side").await;
    control(hub_a, target.as_str(), &Control::Unsubscribe("side".into())).unwrap();
    redis.wait_numsub("wsgate:sub:side", 0).await;

    // `all` is cluster-wide.
    gates[1].server.hub().multicast(wsgate::pubsub::ALL, &text("everyone"), &[]);
    for (client, _) in clients.iter_mut() {
        expect_text(client, "everyone").await;
    }

    // Redis subscriptions follow membership: node c's last member leaves -> UNSUBSCRIBE; and
    // node c no longer hears the room while the others still do.
    gates[2].server.hub().unsubscribe(&clients[4].1, ROOM).unwrap();
    assert_eq!(redis.numsub("wsgate:sub:room").await, 3, "one member left on node c");
    gates[2].server.hub().unsubscribe(&clients[5].1, ROOM).unwrap();
    redis.wait_numsub("wsgate:sub:room", 2).await;
    gates[1].server.hub().multicast(ROOM, &text("without c"), &[]);
    for (client, _) in clients.iter_mut().take(4) {
        expect_text(client, "without c").await;
    }
    expect_silence(&mut clients[4].0, Duration::from_millis(300)).await;
    expect_silence(&mut clients[5].0, Duration::from_millis(10)).await;

    control(gates[1].server.hub(), clients[4].1.as_str(), &Control::Close { code: 4000, reason: "bye".into() })
        .unwrap();
    assert_eq!(clients[4].0.expect_close().await, Some(4000));

    // A closed channel leaves its subscriptions; when node a's last member is gone, node a
    // unsubscribes too.
    drop(clients.drain(0..2));
    redis.wait_numsub("wsgate:sub:room", 1).await;

    drop(clients);
    for gate in gates {
        assert_eq!(gate.server.hub().broker().unwrap().errors(), 0);
        gate.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_churn_never_loses_the_redis_subscription() {
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let gates = start_nodes(&redis.url(), upstream.addr).await;
    wait_connected(&gates, true).await;
    let (mut a, a_id) = open_echo(&gates[0]).await;
    let (_b, b_id) = open_echo(&gates[1]).await;
    let hub = gates[1].server.hub();
    // Rapid first-member/last-member flips on node b; it must end subscribed, exactly once.
    for _ in 0..200 {
        hub.subscribe(&b_id, "churn").unwrap();
        hub.unsubscribe(&b_id, "churn").unwrap();
    }
    hub.subscribe(&b_id, "churn").unwrap();
    gates[0].server.hub().subscribe(&a_id, "churn").unwrap();
    redis.wait_numsub("wsgate:sub:churn", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.numsub("wsgate:sub:churn").await, 2, "settled at one subscription per node");
    // And relaying works over it.
    hub.multicast("churn", &text("settled"), std::slice::from_ref(&b_id));
    expect_text(&mut a, "settled").await;
    for _ in 0..100 {
        hub.unsubscribe(&b_id, "churn").unwrap();
        hub.subscribe(&b_id, "churn").unwrap();
    }
    hub.unsubscribe(&b_id, "churn").unwrap();
    redis.wait_numsub("wsgate:sub:churn", 1).await;
    for gate in gates {
        gate.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_local_delivery_continues_gap_counted_delivery_resumes() {
    let bin = require_redis!();
    let mut redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let gates = start_nodes(&redis.url(), upstream.addr).await;
    wait_connected(&gates, true).await;
    let mut clients = Vec::new();
    for gate in &gates {
        let (client, id) = open_echo(gate).await;
        gate.server.hub().subscribe(&id, ROOM).unwrap();
        clients.push(client);
    }
    redis.wait_numsub("wsgate:sub:room", 3).await;
    gates[0].server.hub().multicast(ROOM, &text("before"), &[]);
    for client in clients.iter_mut() {
        expect_text(client, "before").await;
    }

    redis.kill();
    wait_connected(&gates, false).await;
    let errors_before = gates[0].server.hub().broker().unwrap().errors();
    // Local subscribers are still served at once; what could not be relayed is counted.
    let gap = 5;
    for i in 0..gap {
        let d = gates[0].server.hub().multicast(ROOM, &text(&format!("during {i}")), &[]);
        assert_eq!(d.delivered, 1);
    }
    for i in 0..gap {
        expect_text(&mut clients[0], &format!("during {i}")).await;
    }
    let errors_during = gates[0].server.hub().broker().unwrap().errors();
    assert!(errors_during >= errors_before + gap as u64, "gap counted: {errors_before} -> {errors_during}");
    assert!(matches!(
        gates[0].server.hub().send("nb-000000000001", &text("x")),
        Err(wsgate::pubsub::HubError::Remote { .. })
    ));
    expect_silence(&mut clients[1], Duration::from_millis(200)).await;

    // While Redis stays down, nodes retry with growing backoff; each failed attempt counts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let errors_down = gates[1].server.hub().broker().unwrap().errors();
    assert!(errors_down >= 3, "failed reconnects counted on node b: {errors_down}");

    // Redis comes back on the same port: nodes reconnect (backoff ≤ 5 s) and resubscribe.
    let restarted = Instant::now();
    redis.spawn().await;
    wait_connected(&gates, true).await;
    redis.wait_numsub("wsgate:sub:room", 3).await;
    let resumed = restarted.elapsed();
    assert!(resumed < Duration::from_secs(12), "resumed after {resumed:?}");
    eprintln!("redis outage: delivery resumed {resumed:?} after the restart; node a errors {errors_before} -> {errors_during}; node b failed reconnects {errors_down}");
    gates[1].server.hub().multicast(ROOM, &text("after"), &[]);
    for client in clients.iter_mut() {
        expect_text(client, "after").await;
    }
    drop(clients);
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// Redis pub/sub keeps nothing: what another node publishes while this node's subscriber
/// connection is down never reaches it. The origin numbers its publications per Redis channel,
/// so the receiver counts exactly what it missed (`broker_missed_total`) instead of losing it
/// silently; the origin, whose publishes Redis took, counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_receiver_misses_while_resubscribing_is_counted_exactly() {
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let mut gates = Vec::new();
    for node in ["ma", "mb"] {
        gates.push(start_gate(&node_config(node, &format!("url = \"{}\"", redis.url())), upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    let (mut client, id) = open_echo(&gates[1]).await;
    // Two subscriptions: node b's subscriber connection is the one with four channels (its
    // node channel, `all`, and these), node a's has two.
    gates[1].server.hub().subscribe(&id, ROOM).unwrap();
    gates[1].server.hub().subscribe(&id, "other").unwrap();
    redis.wait_numsub("wsgate:sub:other", 1).await;

    let publisher = steady_publisher(gates[0].server.hub().clone(), ROOM, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill_subscriber_with(4).await;
    let received = numbered_messages(&mut client, &publisher).await;
    let (sent, refused) = publisher.await.unwrap();
    let missed = counter(&gates[1], "wsgate_broker_missed_total");
    eprintln!("receiver resubscribing: sent {sent}, received {}, missed (counted) {missed}", received.len());
    assert_eq!(refused, 0, "node a stayed connected: Redis took every publish");
    assert_eq!(undelivered(&gates[0]), 0);
    assert!(missed > 0, "the lapse lost messages (node b reconnects after ≥ 80 ms)");
    assert_eq!(received.len() as u64 + missed, sent, "every message either arrived or was counted missed");
    assert_eq!(received.last(), Some(&(sent - 1)), "delivery resumed");
    assert_eq!(counter(&gates[0], "wsgate_broker_missed_total"), 0);
    drop(client);
    for gate in gates {
        gate.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_password_file() {
    let bin = require_redis!();
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate for localhost signed by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "wsgate test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(path("password"), "s3cret\n").unwrap();
    std::fs::write(path("wrong"), "nope\n").unwrap();

    let (cert_file, key_file, ca_file) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
    let mut redis = Redis::start(
        &bin,
        &[
            "--tls-port",
            "x",
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
        ],
    )
    .await;
    let url = format!("rediss://localhost:{}", redis.port);
    redis.settings = Some(RedisSettings {
        url: url.clone(),
        password: Some("s3cret".into()),
        ca_pem: Some(ca.pem().into_bytes()),
        ..Default::default()
    });
    let upstream = start_upstream().await;
    let broker = |node: &str, password: &str| {
        node_config(node, &format!("url = \"{url}\"\npassword_file = \"{}\"\nca_file = \"{ca_file}\"", path(password)))
    };
    let gates = vec![
        start_gate(&broker("ta", "password"), upstream.addr).await,
        start_gate(&broker("tb", "password"), upstream.addr).await,
    ];
    let wrong = start_gate(&broker("tw", "wrong"), upstream.addr).await;
    wait_connected(&gates, true).await;
    let (mut client_a, a_id) = open_echo(&gates[0]).await;
    let (_client_b, b_id) = open_echo(&gates[1]).await;
    gates[0].server.hub().subscribe(&a_id, "secure").unwrap();
    gates[1].server.hub().subscribe(&b_id, "secure").unwrap();
    redis.wait_numsub("wsgate:sub:secure", 2).await;
    gates[1].server.hub().multicast("secure", &text("over TLS"), &[b_id]);
    expect_text(&mut client_a, "over TLS").await;

    // A wrong password never connects; each attempt is counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let broker = wrong.server.hub().broker().unwrap().clone();
    while broker.errors() < 2 {
        assert!(Instant::now() < deadline, "failed attempts not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!broker.is_connected());
    wrong.server.shutdown().await;
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// One HTTP/1.1 request to a node's admin listener; returns the status and the body.
async fn admin_request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let head = common::raw_request(&mut stream, request.as_bytes()).await;
    let mut rest = head.rest.to_vec();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    (head.status, String::from_utf8_lossy(&rest).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_acts_cluster_wide_and_readyz_follows_the_broker() {
    let bin = require_redis!();
    let mut redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let mut gates = Vec::new();
    for node in ["ca", "cb"] {
        let broker = format!("url = \"{}\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n", redis.url());
        let config = node_config(node, &broker);
        gates.push(start_gate(&config, upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    let admin_a = gates[0].server.admin_addr().unwrap();
    let (mut client_b, id_b) = open_echo(&gates[1]).await;

    // Node a's control API subscribes a channel that lives on node b, then publishes to it.
    let (status, body) = admin_request(admin_a, "PUT", &format!("/v1/channels/{id_b}/subscriptions/{ROOM}"), "").await;
    assert_eq!(status, 202, "{body}");
    redis.wait_numsub("wsgate:sub:room", 1).await;
    let (status, body) =
        admin_request(admin_a, "POST", &format!("/v1/subscriptions/{ROOM}/publish"), "cluster-wide").await;
    assert_eq!(status, 200, "{body}");
    // Node a has no member: delivered counts this node's, relayed says the broker took it.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"delivered": 0, "relayed": true})
    );
    expect_text(&mut client_b, "cluster-wide").await;
    let (_, body) = admin_request(admin_a, "GET", "/v1/subscriptions", "").await;
    assert!(body.contains("\"scope\":\"node\""), "listings say they are node-local: {body}");
    // An id no node has: 404, not a silent success.
    let (status, _) = admin_request(admin_a, "DELETE", "/v1/channels/ca-000000009999", "").await;
    assert_eq!(status, 404);
    let (status, body) = admin_request(admin_a, "GET", "/readyz", "").await;
    assert!(body.contains("\"broker\":\"ok\""), "{status} {body}");

    // Redis down: /readyz says so, and what could not be relayed shows in broker_errors_total.
    redis.kill();
    wait_connected(&gates, false).await;
    let (status, body) = admin_request(admin_a, "GET", "/readyz", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker disconnected"), "{body}");
    // A publish through the control API is refused before anything is delivered (a retry
    // cannot duplicate), with Retry-After.
    let (status, body) = admin_request(admin_a, "POST", &format!("/v1/subscriptions/{ROOM}/publish"), "refused").await;
    assert_eq!(status, 503, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((answer["delivered"].as_u64(), answer["relayed"].as_bool()), (Some(0), Some(false)), "{body}");
    // In-process multicasts still reach local members and say they were not relayed.
    let delivery = gates[0].server.hub().multicast(ROOM, &text("lost"), &[]);
    assert_eq!(delivery.relayed, Some(false));
    let metric = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("wsgate_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    // Node a: one message not relayed; failed reconnects are counted apart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, metrics) = admin_request(admin_a, "GET", "/metrics", "").await;
    let (errors, undelivered, failures) = (
        metric(&metrics, "broker_errors_total"),
        metric(&metrics, "broker_undelivered_total"),
        metric(&metrics, "broker_connect_failures_total"),
    );
    assert_eq!(undelivered, 1.0, "{metrics}");
    assert!(failures >= 1.0, "failed reconnects counted: {failures}");
    assert!(errors >= undelivered + failures, "broker_errors_total is their sum: {errors} {undelivered} {failures}");
    drop(client_b);
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// The next JSON text message from a chat client (5 s at most).
async fn chat_next(client: &mut WsClient) -> serde_json::Value {
    match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
        Ok(Some(Incoming::Text(t))) => serde_json::from_slice(&t).expect("chat sends JSON"),
        other => panic!("expected a chat message, got {other:?}"),
    }
}

/// Opens a chat client on `gate` and reads its history up to `history_end`: the posts' texts.
async fn chat_open(gate: &Gate) -> (WsClient, Vec<String>) {
    let mut client = WsClient::connect(gate.addr, "/chat/room").await;
    let mut history = Vec::new();
    loop {
        let message = chat_next(&mut client).await;
        match message["type"].as_str() {
            Some("history_end") => {
                assert_eq!(message["count"].as_u64(), Some(history.len() as u64));
                return (client, history);
            }
            Some("message") => history.push(message["text"].as_str().unwrap_or_default().to_owned()),
            Some("room") if history.is_empty() => {} // the room's name and this node's members
            other => panic!("unexpected {other:?} before history_end"),
        }
    }
}

/// Issue 22: a chat room spans the nodes. Messages, joins and leaves posted on any node reach
/// the room's members on every node exactly once, in each sender's order; a node keeps the
/// posts relayed while it had no member in the room, so a newcomer there gets the whole
/// history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_spans_nodes_exactly_once_in_order_with_history() {
    const POSTS: usize = 30;
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let mut gates = Vec::new();
    for node in ["na", "nb", "nc"] {
        let config = basic_config(&format!(
            "\n[apps.chat]\nkind = \"chat\"\nurls = [\"/chat/room\"]\nhistory = 100\n\n[limits]\nshutdown_timeout = \"1s\"\n\n[broker]\nkind = \"redis\"\nnode = \"{node}\"\nurl = \"{}\"\n",
            redis.url()
        ));
        gates.push(start_gate(&config, upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    // Every node listens to the room before anyone is in it (the history needs it).
    redis.wait_numsub("wsgate:sub:chat:chat:/chat/room", 3).await;

    // Alice alone on node a posts twice: nodes b and c have no member yet.
    let (mut alice, history) = chat_open(&gates[0]).await;
    assert!(history.is_empty());
    alice.send_text(r#"{"type":"message","user":"alice","text":"early 1"}"#).await;
    alice.send_text(r#"{"type":"message","user":"alice","text":"early 2"}"#).await;
    for want in ["join", "message", "message"] {
        assert_eq!(chat_next(&mut alice).await["type"], want);
    }
    // A newcomer on node c gets them as history (relayed while c had no member).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut carol, history) = loop {
        let (client, history) = chat_open(&gates[2]).await;
        if history.len() == 2 || Instant::now() > deadline {
            break (client, history);
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history, ["early 1", "early 2"], "node c's history holds node a's posts");
    let (mut bob, history) = chat_open(&gates[1]).await;
    assert_eq!(history, ["early 1", "early 2"], "node b's history holds node a's posts");

    // Joins cross nodes: carol's and bob's reach alice on node a.
    carol.send_text(r#"{"type":"join","user":"carol"}"#).await;
    bob.send_text(r#"{"type":"join","user":"bob"}"#).await;
    let mut clients = [("alice", &mut alice), ("bob", &mut bob), ("carol", &mut carol)];
    // Everyone posts POSTS messages, interleaved.
    for i in 0..POSTS {
        for (user, client) in clients.iter_mut() {
            client.send_text(&format!(r#"{{"type":"message","user":"{user}","text":"{user} {i}"}}"#)).await;
        }
    }
    // Each client sees every join it should and every post exactly once, each sender's in order.
    for (me, client) in clients.iter_mut() {
        let mut joins = Vec::new();
        let mut next_of: std::collections::HashMap<String, usize> = Default::default();
        let mut posts = 0;
        while posts < 3 * POSTS {
            let message = chat_next(client).await;
            let user = message["user"].as_str().unwrap_or_default().to_owned();
            match message["type"].as_str() {
                Some("join") => joins.push(user),
                Some("message") => {
                    let text = message["text"].as_str().unwrap_or_default();
                    let n: usize = text.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
                    let expected = next_of.entry(user.clone()).or_default();
                    assert_eq!(n, *expected, "{me}: {user}'s posts out of order or duplicated");
                    *expected += 1;
                    posts += 1;
                }
                other => panic!("{me}: unexpected {other:?}"),
            }
        }
        for user in ["alice", "bob", "carol"] {
            assert_eq!(next_of.get(user), Some(&POSTS), "{me} got all of {user}'s posts");
        }
        joins.sort();
        // A client sees the joins made after it entered: alice both, bob carol's (maybe) and his own.
        for user in ["bob", "carol"] {
            if *me == "alice" {
                assert!(joins.contains(&user.to_owned()), "alice saw {user} join from another node: {joins:?}");
            }
        }
        expect_silence(client, Duration::from_millis(200)).await;
    }
    // A leave crosses nodes too.
    let _ = clients;
    drop(carol);
    let leave = chat_next(&mut alice).await;
    assert_eq!((leave["type"].as_str(), leave["user"].as_str()), (Some("leave"), Some("carol")));
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// A `redis-server --sentinel` process monitoring `primary_port` as `mymaster` (quorum 1,
/// down after 1 s), killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    async fn start(bin: &std::path::Path, primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server --sentinel starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "sentinel did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Sentinel { child, port, _dir: dir }
    }

    /// The primary's port as this sentinel sees it now.
    async fn primary_port(&self) -> Option<u16> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let answer: Option<(String, u16)> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("mymaster").query_async(&mut conn).await.ok()?;
        answer.map(|(_, port)| port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 22: nodes find the primary through Redis Sentinel (the first listed sentinel is
/// down: the next one is asked) and follow a failover: the primary is SIGKILLed under a steady
/// publish, the sentinel promotes the replica, both nodes reconnect to it, and delivery
/// resumes. Nothing is lost silently: every publish either reached the other node (once, in
/// order) or was counted as not relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_nodes_follow_the_new_primary_nothing_lost_silently() {
    let bin = require_redis!();
    let mut primary = Redis::start(&bin, &[]).await;
    let primary_port = primary.port.to_string();
    let replica = Redis::start(&bin, &["--replicaof", "127.0.0.1", &primary_port]).await;
    let sentinel = Sentinel::start(&bin, primary.port).await;
    // The replica must be known to the sentinel before a failover can promote it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", sentinel.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let replicas: Vec<redis::Value> =
            redis::cmd("SENTINEL").arg("replicas").arg("mymaster").query_async(&mut conn).await.unwrap_or_default();
        if !replicas.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the sentinel never saw the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upstream = start_upstream().await;
    let dead_sentinel = free_port();
    let mut gates = Vec::new();
    for node in ["sa", "sb"] {
        let broker = format!(
            "sentinels = [\"127.0.0.1:{dead_sentinel}\", \"127.0.0.1:{}\"]\nmaster_name = \"mymaster\"",
            sentinel.port
        );
        gates.push(start_gate(&node_config(node, &broker), upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    let (mut client_b, id_b) = open_echo(&gates[1]).await;
    gates[1].server.hub().subscribe(&id_b, ROOM).unwrap();
    primary.wait_numsub("wsgate:sub:room", 1).await;
    gates[0].server.hub().multicast(ROOM, &text("before"), &[]);
    expect_text(&mut client_b, "before").await;

    // Publish every 10 ms from node a while the primary dies and the replica takes over.
    let publisher = steady_publisher(gates[0].server.hub().clone(), ROOM, Duration::from_secs(25));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed = Instant::now();
    primary.kill();
    // The sentinel promotes the replica.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinel.primary_port().await != Some(replica.port) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = killed.elapsed();
    wait_connected(&gates, true).await;
    replica.wait_numsub("wsgate:sub:room", 1).await;
    let followed = killed.elapsed();

    // Read what node b got until the publisher stops; each message once, in order.
    let received = numbered_messages(&mut client_b, &publisher).await;
    let (sent, not_relayed) = publisher.await.unwrap();
    let counted = undelivered(&gates[0]);
    let lost = sent - received.len() as u64;
    eprintln!(
        "sentinel failover: replica promoted {promoted:?} after the kill, nodes on it {followed:?} after; \
         sent {sent}, received {}, lost {lost}, of which refused at publish {not_relayed}; counted undelivered {counted}",
        received.len()
    );
    assert!(received.last() == Some(&(sent - 1)), "delivery resumed on the new primary");
    // Every message node b did not get was counted on node a as not relayed (refused while
    // disconnected, or in a PUBLISH pipeline that failed), except what Redis had taken
    // before it died and could no longer hand to node b: at most one pipeline in flight.
    assert!(counted + 256 >= lost, "lost {lost} but counted only {counted} as undelivered");
    drop(client_b);
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// A backend application for the 3-node test: every channel subscribes to `room` on open,
/// and a message `pub:X` is published to `room` (the sender included).
async fn start_room_callback() -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let actions = match (event["event"].as_str(), event["text"].as_str()) {
                        (Some("open"), _) => serde_json::json!([{ "subscribe": ROOM }]),
                        (Some("message"), Some(text)) if text.starts_with("pub:") => {
                            serde_json::json!([{ "publish": { "subscription": ROOM, "text": &text[4..] } }])
                        }
                        _ => serde_json::json!([]),
                    };
                    let answer = serde_json::json!({ "actions": actions }).to_string();
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer)))
                            .unwrap(),
                    )
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// Issue 22: the backend app's `publish` action spans the nodes: a client on each of three
/// nodes publishes through its backend; every client gets every message exactly once, each
/// sender's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_publish_spans_nodes_exactly_once_in_order() {
    const POSTS: usize = 20;
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let callback = start_room_callback().await;
    let mut gates = Vec::new();
    for node in ["ba", "bb", "bc"] {
        let config = basic_config(&format!(
            "\n[apps.orders]\nkind = \"backend\"\nurls = [\"/ws/orders\"]\ncallback = \"http://{callback}/wsgate/callback\"\n\n[limits]\nshutdown_timeout = \"1s\"\n\n[broker]\nkind = \"redis\"\nnode = \"{node}\"\nurl = \"{}\"\n",
            redis.url()
        ));
        gates.push(start_gate(&config, upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    let mut clients = Vec::new();
    for gate in &gates {
        clients.push(WsClient::connect(gate.addr, "/ws/orders").await);
    }
    // Each node's channel joined `room` (the open callback's action) and Redis knows it.
    redis.wait_numsub(&format!("wsgate:sub:{ROOM}"), 3).await;
    for i in 0..POSTS {
        for (n, client) in clients.iter_mut().enumerate() {
            client.send_text(&format!("pub:{n} {i}")).await;
        }
    }
    for (me, client) in clients.iter_mut().enumerate() {
        let mut next = [0usize; 3];
        for _ in 0..3 * POSTS {
            match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
                Ok(Some(Incoming::Text(t))) => {
                    let text = std::str::from_utf8(&t).unwrap();
                    let (sender, i) = text.split_once(' ').unwrap();
                    let (sender, i): (usize, usize) = (sender.parse().unwrap(), i.parse().unwrap());
                    assert_eq!(i, next[sender], "client {me}: node {sender}'s messages out of order or duplicated");
                    next[sender] += 1;
                }
                other => panic!("client {me}: expected a message, got {other:?} after {next:?}"),
            }
        }
        assert_eq!(next, [POSTS; 3], "client {me} got every node's messages");
        expect_silence(client, Duration::from_millis(200)).await;
    }
    drop(clients);
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// The first message of a chat client: the room with its member list.
async fn chat_members(gate: &Gate) -> (WsClient, Vec<String>) {
    let mut client = WsClient::connect(gate.addr, "/chat/room").await;
    let room = chat_next(&mut client).await;
    assert_eq!(room["type"], "room", "{room}");
    let members = room["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_owned()).collect();
    (client, members)
}

/// Issue 20: a newcomer's member list is the room's on every node, and a member who leaves
/// (or whose node dies: same heartbeat rule as presence) drops out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_member_list_spans_nodes() {
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let mut gates = Vec::new();
    for node in ["ma", "mb"] {
        let config = basic_config(&format!(
            "\n[apps.chat]\nkind = \"chat\"\nurls = [\"/chat/room\"]\n\n[limits]\nshutdown_timeout = \"1s\"\n\n[broker]\nkind = \"redis\"\nnode = \"{node}\"\nurl = \"{}\"\n",
            redis.url()
        ));
        gates.push(start_gate(&config, upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    let (mut ann, _) = chat_open(&gates[0]).await;
    ann.send_text(r#"{"type":"join","user":"ann"}"#).await;
    assert_eq!(chat_next(&mut ann).await["type"], "join");
    // Bo opens on the other node: ann is in the list it gets first (her entry may take a
    // moment to reach Redis).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut bo = loop {
        let (client, members) = chat_members(&gates[1]).await;
        if members == ["ann"] {
            break client;
        }
        assert!(Instant::now() < deadline, "ann never listed on node b: {members:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while chat_next(&mut bo).await["type"] != "history_end" {}
    bo.send_text(r#"{"type":"join","user":"bo"}"#).await;
    // A third client on node a sees both.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_client, members) = chat_members(&gates[0]).await;
        if members == ["ann", "bo"] {
            break;
        }
        assert!(Instant::now() < deadline, "bo never listed on node a: {members:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ann leaves: a newcomer on node b no longer lists her.
    drop(ann);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_client, members) = chat_members(&gates[1]).await;
        if members == ["bo"] {
            break;
        }
        assert!(Instant::now() < deadline, "ann still listed after leaving: {members:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bo);
    for gate in gates {
        gate.server.shutdown().await;
    }
}

/// Issue 22, log-view across nodes: each node tails its own machine's files, so its lines go
/// to its own viewers only — never relayed, never mixed into another node's view of a file
/// with the same name (nodes tail only while they have viewers, and a relayed line would
/// carry no sign of whose machine it came from). Two nodes on one Redis, the same app and file
/// name, a viewer on each: each viewer gets exactly its node's lines, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logview_lines_stay_on_the_node_whose_file_they_are() {
    use std::io::Write;
    const LINES: usize = 50;
    let bin = require_redis!();
    let redis = Redis::start(&bin, &[]).await;
    let upstream = start_upstream().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut gates = Vec::new();
    for (node, dir) in ["la", "lb"].iter().zip(&dirs) {
        let file = dir.path().join("app.log");
        std::fs::write(&file, "").unwrap();
        let config = basic_config(&format!(
            "\n[apps.lv]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [{:?}]\nrefresh = \"50ms\"\n\n[limits]\nshutdown_timeout = \"1s\"\n\n[broker]\nkind = \"redis\"\nnode = \"{node}\"\nurl = \"{}\"\n",
            file.display().to_string(),
            redis.url()
        ));
        gates.push(start_gate(&config, upstream.addr).await);
    }
    wait_connected(&gates, true).await;
    let mut viewers = Vec::new();
    for gate in &gates {
        let mut ws = WsClient::connect(gate.addr, "/logs").await;
        assert_eq!(ws.json().await["type"], "files");
        ws.send_json(serde_json::json!({"type":"subscribe","file":"app.log"})).await;
        let backlog = ws.json().await;
        assert_eq!(backlog["backlog"], true, "{backlog}");
        viewers.push(ws);
    }
    // Both nodes have a viewer of logview:lv:0, so both listen to it in Redis.
    redis.wait_numsub("wsgate:sub:logview:lv:0", 2).await;
    for i in 0..LINES {
        for (node, dir) in ["la", "lb"].iter().zip(&dirs) {
            let mut file = std::fs::OpenOptions::new().append(true).open(dir.path().join("app.log")).unwrap();
            writeln!(file, "{node} {i}").unwrap();
        }
    }
    for (node, ws) in ["la", "lb"].iter().zip(viewers.iter_mut()) {
        let mut lines = Vec::new();
        while lines.len() < LINES {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.json()).await.expect("lines within 10 s");
            assert_eq!(m["type"], "lines", "{m}");
            lines.extend(m["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()));
        }
        let want: Vec<String> = (0..LINES).map(|i| format!("{node} {i}")).collect();
        assert_eq!(lines, want, "viewer on {node}: its own file's lines, in order, and no other node's");
        expect_silence(ws, Duration::from_millis(300)).await;
    }
    for gate in gates {
        gate.server.shutdown().await;
    }
}

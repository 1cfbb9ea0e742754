//! The `backend` app against a real HTTP callback server written here (hyper): events in,
//! actions out, open decided before the 101, failures and timeouts, ordering.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use wsgate::ws::codec::{Incoming as WsIncoming, OpCode};

type Events = Arc<Mutex<Vec<Value>>>;

/// The application server: records every event and answers by its content.
async fn start_callback() -> (SocketAddr, Events) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events: Events = Arc::default();
    let log = events.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        assert_eq!(req.method(), "POST");
                        assert_eq!(req.uri().path(), "/wsgate/callback");
                        assert_eq!(req.headers()["content-type"], "application/json");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let event: Value = serde_json::from_slice(&body).unwrap();
                        log.lock().unwrap().push(event.clone());
                        Ok::<_, Infallible>(answer(&event).await)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, events)
}

fn actions(list: Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({ "actions": list }).to_string())))
        .unwrap()
}

async fn answer(event: &Value) -> hyper::Response<Full<Bytes>> {
    match event["event"].as_str().unwrap() {
        "open" => {
            let url = event["url"].as_str().unwrap();
            if event["headers"]["x-deny"].is_string() {
                return hyper::Response::builder()
                    .status(403)
                    .header("content-type", "text/plain")
                    .body(Full::new(Bytes::from_static(b"not you\n")))
                    .unwrap();
            }
            if url.contains("slow") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let user = url.split("user=").nth(1).unwrap_or("anon");
            actions(json!([{ "send": format!("welcome {user}") }, { "subscribe": "room" }]))
        }
        "message" => {
            if let Some(b64) = event["binary"].as_str() {
                let mut data = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
                data.reverse();
                return actions(
                    json!([{ "send": { "binary": base64::engine::general_purpose::STANDARD.encode(data) } }]),
                );
            }
            let text = event["text"].as_str().unwrap();
            if let Some(rest) = text.strip_prefix("broadcast:") {
                actions(json!([{ "publish": { "subscription": "room", "text": rest, "exclude_self": true } }]))
            } else if let Some(rest) = text.strip_prefix("echo:") {
                actions(json!([{ "send": rest }]))
            } else if text == "slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
                actions(json!([{ "send": "too late" }]))
            } else if text == "fail" {
                hyper::Response::builder().status(500).body(Full::new(Bytes::new())).unwrap()
            } else if text == "leave" {
                actions(json!([{ "unsubscribe": "room" }, { "send": "left" }]))
            } else if text == "bye" {
                actions(json!([{ "send": "closing" }, { "close": { "code": 4000, "reason": "bye" } }]))
            } else {
                hyper::Response::new(Full::new(Bytes::new()))
            }
        }
        _ => hyper::Response::new(Full::new(Bytes::new())),
    }
}

fn config(callback: SocketAddr, dead: SocketAddr) -> String {
    basic_config(&format!(
        r#"
[apps.orders]
kind = "backend"
urls = ["/ws/orders", "/ws/slow"]
callback = "http://{callback}/wsgate/callback"
callback_timeout = "500ms"

[apps.dead]
kind = "backend"
urls = ["/ws/dead"]
callback = "http://{dead}/wsgate/callback"
"#
    ))
}

fn text(s: &str) -> Option<WsIncoming> {
    Some(WsIncoming::Text(Bytes::copy_from_slice(s.as_bytes())))
}

fn events_of(events: &Events, channel: &str) -> Vec<Value> {
    events.lock().unwrap().iter().filter(|e| e["channel"] == channel).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_round_trip_open_message_close_with_ordered_actions() {
    let (callback, events) = start_callback().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let up = start_upstream().await;
    let gate = start_gate(&config(callback, dead), up.addr).await;

    // open: the callback's actions run in order once the socket is open
    let mut alice = WsClient::connect(gate.addr, "/ws/orders?user=alice").await;
    assert_eq!(alice.next().await, text("welcome alice"));
    let mut bob = WsClient::connect(gate.addr, "/ws/orders?user=bob").await;
    assert_eq!(bob.next().await, text("welcome bob"));
    let hub = gate.server.hub();
    // The actions run in order after the welcome was queued: wait for the subscribe to apply.
    for _ in 0..200 {
        if hub.members("room").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hub.members("room").len(), 2, "both subscribed by the open answer");

    // publish with exclude_self reaches the others only
    alice.send_text("broadcast:hi bob").await;
    assert_eq!(bob.next().await, text("hi bob"));
    alice.send_text("echo:ping").await;
    assert_eq!(alice.next().await, text("ping"), "alice's own broadcast was excluded");

    // binary travels as base64 both ways
    alice.send_frame(OpCode::Binary, true, &[1, 2, 3, 255]).await;
    assert_eq!(alice.next().await, Some(WsIncoming::Binary(Bytes::from_static(&[255, 3, 2, 1]))));

    // events and their actions keep the order of the messages
    for i in 0..30 {
        bob.send_text(&format!("echo:{i}")).await;
    }
    for i in 0..30 {
        assert_eq!(bob.next().await, text(&i.to_string()));
    }

    // unsubscribe takes effect
    bob.send_text("leave").await;
    assert_eq!(bob.next().await, text("left"));
    alice.send_text("broadcast:anyone?").await;
    alice.send_text("echo:sync").await;
    assert_eq!(alice.next().await, text("sync"));
    bob.send_text("echo:after").await;
    assert_eq!(bob.next().await, text("after"), "bob got no broadcast after leaving");

    // a slow or failing callback on a message is logged and counted; the connection stays
    alice.send_text("slow").await;
    alice.send_text("fail").await;
    alice.send_text("echo:still here").await;
    assert_eq!(alice.next().await, text("still here"));
    let metrics = gate.server.metrics().render();
    assert!(metrics.contains("wsgate_upstream_errors_total{kind=\"callback_timeout\"} 1"), "{metrics}");
    assert!(metrics.contains("wsgate_upstream_errors_total{kind=\"callback_status\"} 1"), "{metrics}");

    // close action: the client gets our code; then wsgate reports the close event
    alice.send_text("bye").await;
    assert_eq!(alice.next().await, text("closing"));
    assert_eq!(alice.expect_close().await, Some(4000));
    // The client answers with an empty Close: the close event still carries the code the
    // connection was closed with (ours), not 1005.
    alice.send_frame(OpCode::Close, true, &[]).await;
    // bob leaves with his own code
    let mut payload = 4321u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"gone");
    bob.send_frame(OpCode::Close, true, &payload).await;
    assert_eq!(bob.expect_close().await, Some(4321));

    let ids: Vec<String> = {
        let log = events.lock().unwrap();
        log.iter().filter(|e| e["event"] == "open").map(|e| e["channel"].as_str().unwrap().to_owned()).collect()
    };
    let (alice_id, bob_id) = (&ids[0], &ids[1]);
    let mut bob_events = Vec::new();
    for _ in 0..100 {
        bob_events = events_of(&events, bob_id);
        if bob_events.last().is_some_and(|e| e["event"] == "close")
            && events_of(&events, alice_id).last().is_some_and(|e| e["event"] == "close")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = &events_of(&events, alice_id)[0];
    assert_eq!(open["url"], "/ws/orders?user=alice");
    assert_eq!(open["app"], "orders");
    assert_eq!(open["headers"]["upgrade"], "websocket");
    assert!(open["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let texts: Vec<&str> = bob_events.iter().filter_map(|e| e["text"].as_str()).collect();
    let expected: Vec<String> =
        (0..30).map(|i| format!("echo:{i}")).chain(["leave".into(), "echo:after".into()]).collect();
    assert_eq!(texts, expected, "message events in order");
    assert_eq!(bob_events.last().unwrap(), &json!({"event": "close", "channel": bob_id, "code": 4321}));
    let alice_events = events_of(&events, alice_id);
    assert_eq!(
        alice_events.last().unwrap(),
        &json!({"event": "close", "channel": alice_id, "code": 4000}),
        "a close wsgate started reports wsgate's code"
    );
    assert_eq!(
        alice_events.iter().find(|e| e["binary"].is_string()).unwrap()["binary"],
        base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3, 255])
    );
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_is_decided_before_the_101_reject_403_fail_502_timeout_504() {
    let (callback, events) = start_callback().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let up = start_upstream().await;
    let gate = start_gate(&config(callback, dead), up.addr).await;

    // a non-2xx answer rejects the upgrade with that status and body
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut stream, upgrade_request("/ws/orders", "X-Deny: 1\r\n").as_bytes()).await;
    assert_eq!(resp.status, 403, "{}", resp.head);
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    assert!(
        String::from_utf8_lossy(&resp.rest).contains("not you") || {
            let mut body = resp.rest.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read_buf(&mut stream, &mut body))
                    .await;
            String::from_utf8_lossy(&body).contains("not you")
        }
    );

    // callback unreachable: 502
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut stream, upgrade_request("/ws/dead", "").as_bytes()).await;
    assert_eq!(resp.status, 502, "{}", resp.head);

    // no answer within callback_timeout (500ms; the callback takes 3s): 504
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut stream, upgrade_request("/ws/slow", "").as_bytes()).await;
    assert_eq!(resp.status, 504, "{}", resp.head);
    assert!(started.elapsed() < Duration::from_secs(2), "answered at the timeout, not after the callback");

    // none of them became a channel, and the refusals were counted
    assert_eq!(gate.server.hub().channel_count(), 0);
    let metrics = gate.server.metrics().render();
    assert!(metrics.contains("wsgate_upstream_errors_total{kind=\"callback_error\"} 1"), "{metrics}");
    // 403, 502 and 504 are handshake failures too.
    assert!(metrics.contains("wsgate_handshake_failures_total{reason=\"app_refused\"} 3"), "{metrics}");
    assert!(metrics.contains("wsgate_upstream_errors_total{kind=\"callback_timeout\"} 1"), "{metrics}");
    assert!(
        events.lock().unwrap().iter().all(|e| e["event"] == "open"),
        "no message or close events for refused sockets"
    );
    gate.server.shutdown().await;
}

//! Issue 20 item 1 over real sockets with a plain HTTP client: Server-Sent Events on a
//! `pubsub` URL — several channels, `Last-Event-ID` recovery after a dropped connection, the
//! refusals, the control API listing and closing a stream, and the same stream over HTTP/2.
//! (Chromium's `EventSource` is tested in tests/browser.)

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::sse::open;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config() -> String {
    basic_config(
        r#"[apps.live]
kind = "pubsub"
urls = ["/live"]

[[apps.live.namespaces]]
pattern = "chat:*"
publish = "any"
history = 100

[[apps.live.namespaces]]
pattern = "private:*"
subscribe = "token"

[admin]
addr = "127.0.0.1:0"
"#,
    )
}

async fn publish(admin: SocketAddr, channel: &str, data: Value) -> u64 {
    let body = json!({ "channel": channel, "data": data }).to_string();
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut all = String::new();
    tcp.read_to_string(&mut all).await.unwrap();
    let answer: Value = serde_json::from_str(all.split_once("\r\n\r\n").unwrap().1).unwrap();
    answer["offset"].as_u64().unwrap_or_else(|| panic!("{all}"))
}

#[tokio::test]
async fn event_stream_carries_several_channels_and_recovers_by_last_event_id() {
    let up = start_upstream().await;
    let gate = start_gate(&config(), up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let (status, head, stream) = open(gate.addr, "channel=chat:a&channel=chat:b", None).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let mut stream = stream.unwrap();
    for _ in 0..2 {
        let e = stream.next().await.unwrap();
        assert!(e.data.get("subscribe").is_some(), "{e:?}");
        assert!(e.id.is_some());
    }
    for i in 1..=3 {
        publish(admin, "chat:a", json!(i)).await;
    }
    publish(admin, "chat:b", json!("b1")).await;
    let mut last_id = None;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = stream.next().await.unwrap();
        seen.push((
            e.data["push"]["channel"].as_str().unwrap().to_owned(),
            e.data["push"]["pub"]["offset"].as_u64().unwrap(),
        ));
        last_id = e.id;
    }
    assert_eq!(seen, [("chat:a".into(), 1), ("chat:a".into(), 2), ("chat:a".into(), 3), ("chat:b".to_owned(), 1)]);
    // The connection drops; publications go on; the reconnect names the last event id.
    drop(stream);
    for i in 4..=6 {
        publish(admin, "chat:a", json!(i)).await;
    }
    publish(admin, "chat:b", json!("b2")).await;
    let (status, _, stream) = open(gate.addr, "channel=chat:a&channel=chat:b", last_id.as_deref()).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let mut recovered = Vec::new();
    let mut subscribes = Vec::new();
    while subscribes.len() < 2 {
        let e = stream.next().await.unwrap();
        if let Some(s) = e.data.get("subscribe") {
            assert_eq!(s["recovered"], true, "{e:?}");
            subscribes.push(s["channel"].as_str().unwrap().to_owned());
        } else {
            let p = &e.data["push"];
            recovered.push((p["channel"].as_str().unwrap().to_owned(), p["pub"]["data"].clone()));
        }
    }
    assert_eq!(
        recovered,
        [
            ("chat:a".to_owned(), json!(4)),
            ("chat:a".into(), json!(5)),
            ("chat:a".into(), json!(6)),
            ("chat:b".into(), json!("b2"))
        ]
    );
    // Live again after the recovery.
    publish(admin, "chat:a", json!(7)).await;
    assert_eq!(stream.next().await.unwrap().data["push"]["pub"]["offset"], 7);

    // An id that is not ours recovers nothing and says so.
    let (_, _, other) = open(gate.addr, "channel=chat:a", Some("garbage")).await;
    let e = other.unwrap().next().await.unwrap();
    assert_eq!(e.data["subscribe"]["recovered"], false, "{e:?}");

    // The stream is a channel of the control API: listed, and closed by it.
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /v1/channels HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = String::new();
    tcp.read_to_string(&mut all).await.unwrap();
    let listed: Value = serde_json::from_str(all.split_once("\r\n\r\n").unwrap().1).unwrap();
    let ids: Vec<String> = listed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["app"] == "live")
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!ids.is_empty(), "{listed}");
    for id in ids {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        let request = format!("DELETE /v1/channels/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut all = String::new();
        tcp.read_to_string(&mut all).await.unwrap();
    }
    assert!(stream.next().await.is_none(), "the stream ends when the control API closes it");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn event_stream_refusals_are_clear() {
    let up = start_upstream().await;
    let gate = start_gate(&config(), up.addr).await;
    for (query, status) in [
        ("", 400),
        ("channel=", 400),
        ("channel=nowhere", 404),
        ("channel=private:1", 403),
        ("channel=chat:a&channel=x", 404),
    ] {
        let (got, head, _) = open(gate.addr, query, None).await;
        assert_eq!(got, status, "{query}: {head}");
    }
    // Without Accept: text/event-stream the URL is not a stream (no page: proxied).
    let (status, _) = http_get(gate.addr, "/live?channel=chat:a").await;
    assert_ne!(status, 200);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn event_stream_over_http2() {
    let up = start_upstream().await;
    let gate = start_gate(&config(), up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let tcp = TcpStream::connect(gate.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/live?channel=chat:h2", gate.addr))
        .header("accept", "text/event-stream")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut published = false;
    while !text.contains("\"offset\":1,") && !text.contains("\"offset\":1}") {
        let chunk: Bytes = tokio::time::timeout(TIMEOUT, body.data()).await.unwrap().unwrap().unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.push_str(&String::from_utf8_lossy(&chunk));
        if !published && text.contains("\"subscribe\"") {
            publish(admin, "chat:h2", json!("over h2")).await;
            published = true;
        }
    }
    assert!(text.contains("over h2"), "{text}");
    drop(body);
    gate.server.shutdown().await;
}

//! The chat and log-view apps and the per-app access controls, over real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wsgate::ws::codec::Incoming as WsIncoming;

const CHAT: &str = r#"
[apps.chat]
kind = "chat"
urls = ["/chat/a", "/chat/b"]
history = 3
"#;

impl WsClient {
    /// The next text message, parsed as JSON.
    async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Some(WsIncoming::Text(t)) => return serde_json::from_slice(&t).expect("server sends JSON"),
                Some(WsIncoming::Ping(_) | WsIncoming::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await
    }

    /// Nothing arrives within `wait`.
    async fn silent(&mut self, wait: Duration) {
        let got = tokio::time::timeout(wait, self.next()).await;
        assert!(got.is_err(), "expected silence, got {got:?}");
    }
}

/// Connects to a chat room and consumes the history up to `history_end`.
async fn chat_join(addr: SocketAddr, path: &str) -> (WsClient, Vec<Value>) {
    let mut ws = WsClient::connect(addr, path).await;
    let mut history = Vec::new();
    loop {
        let m = ws.json().await;
        if m["type"] == "history_end" {
            assert_eq!(m["count"].as_u64(), Some(history.len() as u64));
            return (ws, history);
        }
        history.push(m);
    }
}

#[tokio::test]
async fn chat_rooms_are_isolated_and_messages_carry_user_text_and_ts() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a1, _) = chat_join(gate.addr, "/chat/a").await;
    let (mut a2, _) = chat_join(gate.addr, "/chat/a/connect").await; // the alias is the same room
    let (mut b1, _) = chat_join(gate.addr, "/chat/b").await;

    a1.send_json(json!({"type":"message","user":"alice","text":"hi"})).await;
    for ws in [&mut a1, &mut a2] {
        let join = ws.json().await;
        assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("alice")));
        let m = ws.json().await;
        assert_eq!((m["type"].as_str(), m["user"].as_str(), m["text"].as_str()), (Some("message"), Some("alice"), Some("hi")));
        let ts = m["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T", "RFC 3339: {ts}");
    }
    b1.silent(Duration::from_millis(300)).await;

    // and the other way round
    b1.send_json(json!({"type":"message","user":"bob","text":"only b"})).await;
    assert_eq!(b1.json().await["type"], "join");
    assert_eq!(b1.json().await["text"], "only b");
    a1.silent(Duration::from_millis(300)).await;
    a2.silent(Duration::from_millis(1)).await;
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_history_join_leave_and_renames() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a, history) = chat_join(gate.addr, "/chat/a").await;
    assert!(history.is_empty());
    a.send_json(json!({"type":"join","user":"ann"})).await;
    let join = a.json().await;
    assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("ann")));
    assert!(join["ts"].is_string());
    for i in 1..=5 {
        a.send_json(json!({"type":"message","user":"ann","text":format!("m{i}")})).await;
        assert_eq!(a.json().await["text"], format!("m{i}"));
    }
    // a newcomer gets the last `history` (3) messages, oldest first, and no notices
    let (mut b, history) = chat_join(gate.addr, "/chat/a").await;
    let texts: Vec<&str> = history.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m3", "m4", "m5"]);
    assert!(history.iter().all(|m| m["type"] == "message" && m["user"] == "ann"));
    // the other room's history is its own
    let (_c, other) = chat_join(gate.addr, "/chat/b").await;
    assert!(other.is_empty());

    // b is named by its first message: join then message, to both
    b.send_json(json!({"type":"message","user":"bea","text":"hello"})).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.json().await["user"], "bea");
        assert_eq!(ws.json().await["text"], "hello");
    }
    // a rename is a leave then a join
    b.send_json(json!({"type":"join","user":"beatrix"})).await;
    let leave = a.json().await;
    assert_eq!((leave["type"].as_str(), leave["user"].as_str()), (Some("leave"), Some("bea")));
    let join = a.json().await;
    assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("beatrix")));
    // closing the connection announces the leave to the others
    b.send_frame(wsgate::ws::codec::OpCode::Close, true, &1000u16.to_be_bytes()).await;
    loop {
        let m = a.json().await;
        if m["type"] == "leave" {
            assert_eq!(m["user"], "beatrix");
            break;
        }
    }
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_refuses_bad_input_with_an_error_to_the_sender_only() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a, _) = chat_join(gate.addr, "/chat/a").await;
    let (mut other, _) = chat_join(gate.addr, "/chat/a").await;
    let long_text = "x".repeat(wsgate::apps::chat::MAX_TEXT_CHARS + 1);
    let long_user = "u".repeat(wsgate::apps::chat::MAX_USER_CHARS + 1);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid JSON"),
        (json!({"type":"message","user":"a","text":long_text}).to_string(), "message text too long"),
        (json!({"type":"message","user":long_user,"text":"x"}).to_string(), "user name too long"),
        (json!({"type":"message","user":"  ","text":"x"}).to_string(), "user name is empty"),
        (json!({"type":"message","user":"a","text":""}).to_string(), "message text is empty"),
        (json!({"type":"message","user":"a"}).to_string(), "\"text\" is missing"),
        (json!({"type":"nuke"}).to_string(), "unknown message type"),
        ("[1,2]".into(), "expected an object"),
    ];
    for (input, expected) in cases {
        a.send_text(&input).await;
        let m = a.json().await;
        assert_eq!(m["type"], "error", "{input}");
        let message = m["message"].as_str().unwrap();
        assert!(message.contains(expected), "{input:.60} -> {message}");
    }
    a.send_frame(wsgate::ws::codec::OpCode::Binary, true, b"\x00\x01").await;
    assert!(a.json().await["message"].as_str().unwrap().contains("binary"));
    other.silent(Duration::from_millis(300)).await;
    // the connection survived all of it
    a.send_json(json!({"type":"message","user":"a","text":"still here"})).await;
    assert_eq!(a.json().await["type"], "join");
    assert_eq!(a.json().await["text"], "still here");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_text_that_looks_like_html_is_passed_through_as_data() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a, _) = chat_join(gate.addr, "/chat/a").await;
    let nasty = r#"<script>alert(1)</script><img src=x onerror="alert(2)"> & "quotes" \ ☃"#;
    a.send_json(json!({"type":"message","user":"<b>mallory</b>","text":nasty})).await;
    let _join = a.json().await;
    let m = a.json().await;
    assert_eq!(m["text"], nasty);
    assert_eq!(m["user"], "<b>mallory</b>");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_page_is_served_on_plain_get() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let r = raw_request(&mut s, b"GET /chat/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    let page = wsgate::apps::chat::PAGE;
    assert!(!page.contains("innerHTML"), "the page must render text as text");
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="), "no external assets");
    gate.server.shutdown().await;
}

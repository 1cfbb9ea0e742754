//! Issue 20, the admin dashboard's server side over real sockets: the page and its headers, the
//! Host rule and the token on `/v1/events`, what a snapshot says as clients come and go, and the
//! bound on open streams (a slot comes back when a reader goes away). The page itself is tested
//! in headless Chromium (`tests/browser/browser.test.mjs`, test 5).
//!
//! One test function: the stream bound is per process, so the steps must not run concurrently
//! with other streams in this binary.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "dash-token-7";

/// Sends a GET on a fresh connection and returns the connection and the response head.
async fn open(admin: SocketAddr, path: &str, host: &str, token: Option<&str>) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let rest = seen[end + 4..].to_vec();
            return (stream, head, rest);
        }
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await.expect("a head in time").unwrap();
        assert!(n > 0, "closed before the head: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

fn status(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Reads SSE events until `want` accepts one (each event is one `data:` line of JSON).
async fn next_snapshot_where(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut buf = [0u8; 65536];
    loop {
        // Events arrive as chunks of the chunked body; each "data: ...\n\n" is contiguous.
        while let Some(start) = pending.windows(6).position(|w| w == b"data: ") {
            let Some(len) = pending[start..].windows(2).position(|w| w == b"\n\n") else { break };
            let line = pending[start + 6..start + len].to_vec();
            pending.drain(..start + len + 2);
            let event: serde_json::Value = serde_json::from_slice(&line).expect("each event is JSON");
            if want(&event) {
                return event;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("the snapshot in time").unwrap();
        assert!(n > 0, "the event stream ended");
        pending.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn dashboard_page_and_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let up = start_upstream().await;
    let cfg = basic_config(&format!("[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n", token_file.display()));
    let gate = start_gate(&cfg, up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let host = admin.to_string();

    // The page: no token needed (it holds no data), strict headers, not for other Hosts.
    let (mut s, head, mut body) = open(admin, "/", &host, None).await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut body)).await;
    assert!(String::from_utf8_lossy(&body).contains("/v1/events"), "the page reads the event stream");
    let (_, head, _) = open(admin, "/", "rebound.attacker.example", None).await;
    assert_eq!(status(&head), 421, "DNS rebinding onto the page: {head}");

    // The stream: the token and the Host rule like every /v1/ route.
    let (_, head, _) = open(admin, "/v1/events", &host, None).await;
    assert_eq!(status(&head), 401, "{head}");
    let (_, head, _) = open(admin, "/v1/events", &host, Some("wrong")).await;
    assert_eq!(status(&head), 401, "{head}");
    let (_, head, _) = open(admin, "/v1/events", "rebound.attacker.example", Some(TOKEN)).await;
    assert_eq!(status(&head), 421, "{head}");

    let (mut events, head, mut pending) = open(admin, "/v1/events", &host, Some(TOKEN)).await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let first = next_snapshot_where(&mut events, &mut pending, |_| true).await;
    assert_eq!(first["channel_total"], 0, "{first}");
    assert_eq!(first["draining"], false, "{first}");
    assert_eq!(first["broker"]["kind"], "memory", "{first}");
    assert!(first["metrics"].as_str().unwrap().contains("wsgate_connections_active"), "{first}");

    // A client connects: a later snapshot lists it, with its app and subscriptions.
    let ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    let seen = next_snapshot_where(&mut events, &mut pending, |e| e["channel_total"] == 1).await;
    let channel = &seen["channels"][0];
    assert_eq!(channel["url"], "/websocket/echo", "{seen}");
    assert!(channel["id"].as_str().is_some_and(|id| !id.is_empty()), "{seen}");
    assert!(seen["subscriptions"].as_array().unwrap().iter().any(|s| s["name"] == "all"), "{seen}");
    // It goes away: the count follows.
    drop(ws);
    next_snapshot_where(&mut events, &mut pending, |e| e["channel_total"] == 0).await;

    // At most MAX_STREAMS at once: the next one is refused with a clear 503.
    let mut streams = vec![events];
    for _ in 1..wsgate::admin::dashboard::MAX_STREAMS {
        let (s, head, _) = open(admin, "/v1/events", &host, Some(TOKEN)).await;
        assert_eq!(status(&head), 200, "{head}");
        streams.push(s);
    }
    let (_, head, _) = open(admin, "/v1/events", &host, Some(TOKEN)).await;
    assert_eq!(status(&head), 503, "{head}");

    // Readers going away give their slots back (noticed at the next snapshot write).
    drop(streams);
    let mut reopened = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (s, head, _) = open(admin, "/v1/events", &host, Some(TOKEN)).await;
        if status(&head) == 200 {
            reopened = Some(s);
            break;
        }
    }
    assert!(reopened.is_some(), "a slot came back after the readers left");
    gate.server.shutdown().await;
}

//! A Server-Sent Events client over HTTP/1.1 for the `pubsub` app's event streams (`/live`).
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TIMEOUT;

/// An SSE client over HTTP/1.1: reads events as they come.
pub struct Stream {
    tcp: TcpStream,
    pending: Vec<u8>,
}

/// One event: its id (if any) and its data as JSON.
#[derive(Debug)]
pub struct Event {
    pub id: Option<String>,
    pub data: Value,
}

pub async fn open(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> (u16, String, Option<Stream>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let last = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let request = format!("GET /live?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{last}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the head");
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
    pending.drain(..end + 4);
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 200 {
        return (status, head, None);
    }
    (status, head, Some(Stream { tcp, pending }))
}

impl Stream {
    /// The next event with data (comments and `retry:` skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        let mut buf = [0u8; 4096];
        loop {
            // The body is chunked: take the text between chunk framing lines as it comes.
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            if let Some(end) = text.find("\n\n") {
                let block = text[..end].to_owned();
                self.pending.drain(..end + 2);
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    }
                }
                if let Some(data) = data {
                    return Some(Event { id, data });
                }
                continue;
            }
            let n = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut buf)).await.expect("an event in time").ok()?;
            if n == 0 {
                return None;
            }
            // Drop chunk-size lines ("1a\r\n") and the CRLF after each chunk; "0" ends the body.
            let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
            for line in chunk.split_inclusive('\n') {
                let bare = line.trim_end_matches(['\r', '\n']);
                if line.ends_with("\r\n") && bare == "0" {
                    return None;
                }
                if line.ends_with("\r\n") && (bare.is_empty() || u64::from_str_radix(bare, 16).is_ok()) {
                    continue;
                }
                self.pending.extend_from_slice(line.as_bytes());
            }
        }
    }
}

//! A client of the `pubsub` app's protocol (DESIGN §13) and a one-shot admin request, for the
//! pubsub tests on one node and across nodes.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::ws::codec::Incoming as WsIncoming;

use super::{WsClient, TIMEOUT};

/// A protocol client: commands with ids, pushes kept aside until asked for.
pub struct Client {
    pub ws: WsClient,
    pub pushes: VecDeque<Value>,
    pub next_id: u64,
}

impl Client {
    pub async fn open(addr: SocketAddr, path: &str) -> Client {
        Client { ws: WsClient::connect(addr, path).await, pushes: VecDeque::new(), next_id: 1 }
    }

    pub async fn recv(&mut self) -> Value {
        loop {
            match self.ws.next().await {
                Some(WsIncoming::Text(t)) => return serde_json::from_slice(&t).expect("the server sends JSON"),
                Some(WsIncoming::Close(c)) => panic!("closed: {c:?}"),
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    }

    /// Sends `{"id":N,name:body}` and returns the reply with that id.
    pub async fn call(&mut self, name: &str, body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.ws.send_text(&json!({ "id": id, name: body }).to_string()).await;
        loop {
            let v = self.recv().await;
            if v["id"] == id {
                return v;
            }
            assert!(v.get("push").is_some(), "neither a push nor the reply to {id}: {v}");
            self.pushes.push_back(v["push"].clone());
        }
    }

    pub async fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        let v = self.recv().await;
        assert!(v.get("push").is_some(), "expected a push: {v}");
        v["push"].clone()
    }
}

pub fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"].as_u64().unwrap_or_else(|| panic!("expected an error: {reply}"))
}

/// One admin request on a fresh connection: status and JSON body.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut all)).await.unwrap().unwrap();
    let all = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

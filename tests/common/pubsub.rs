//! A client of the `pubsub` app's protocol (DESIGN §13) and a one-shot admin request, for the
//! pubsub tests on one node and across nodes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// A property-test subscriber of `chat:p`: subscribes on a random node of `addrs`, reads, drops
/// the connection after a random number of pushes and recovers (on another random node), until
/// it has seen `total` publications; returns them (offset, data) and how often it recovered.
pub async fn recovering_subscriber(
    addrs: Vec<SocketAddr>,
    mut rng: fastrand::Rng,
    total: u64,
) -> (Vec<(u64, Value)>, usize) {
    let mut seen: Vec<(u64, Value)> = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let mut reconnects = 0;
    loop {
        let mut c = Client::open(addrs[rng.usize(..addrs.len())], "/live").await;
        let body = match &position {
            None => json!({"channel":"chat:p"}),
            Some((offset, epoch)) => json!({"channel":"chat:p","recover":true,"offset":offset,"epoch":epoch}),
        };
        let answer = c.call("subscribe", body).await;
        let reply = &answer["subscribe"];
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
                assert_eq!(reply["recovered"], true, "{answer}");
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

/// The exact-recovery property on `chat:p` (history of at least `2 * per_publisher`): a client
/// on `publisher` and the control API at `api` publish `per_publisher` each, concurrently,
/// while `subscribers` recovering subscribers hop over `addrs`. Every subscriber must end with
/// exactly offsets 1..=N, in order, each with the data its publisher was given that offset for.
pub async fn check_exact_recovery(
    addrs: &[SocketAddr],
    publisher: SocketAddr,
    api: SocketAddr,
    per_publisher: u64,
    subscribers: usize,
) {
    let sent: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let total = 2 * per_publisher;
    let subscribers: Vec<_> = (0..subscribers)
        .map(|s| tokio::spawn(recovering_subscriber(addrs.to_vec(), fastrand::Rng::with_seed(seed ^ s as u64), total)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let by_client = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut c = Client::open(publisher, "/live").await;
            for i in 0..per_publisher {
                let data = json!({"from":"client","i":i});
                let r = c.call("publish", json!({"channel":"chat:p","data":data})).await;
                sent.lock().unwrap().insert(r["publish"]["offset"].as_u64().unwrap(), data);
            }
        })
    };
    let by_api = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for i in 0..per_publisher {
                let data = json!({"from":"api","i":i});
                let body = json!({"channel":"chat:p","data":data}).to_string();
                let (status, r) = admin(api, "POST", "/v1/publish", &body).await;
                assert_eq!(status, 200, "{r}");
                sent.lock().unwrap().insert(r["offset"].as_u64().unwrap(), data);
            }
        })
    };
    by_client.await.unwrap();
    by_api.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let all: Vec<u64> = (1..=total).collect();
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), all, "one offset per publication");
    for handle in subscribers {
        let (seen, reconnects) = tokio::time::timeout(Duration::from_secs(60), handle).await.unwrap().unwrap();
        assert!(reconnects > 0, "seed {seed}: the subscriber never reconnected");
        let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, all, "seed {seed}: gaps, duplicates or disorder");
        for (offset, data) in seen {
            assert_eq!(sent[&offset], data, "seed {seed}: offset {offset}");
        }
    }
}

/// The `pubsub` app at /live as the tests run it: namespace `chat:*` (anyone subscribes and
/// publishes, `history` publications kept, presence as given), the admin listener on a port of
/// its own, and `broker` (a whole `[broker]` table, or nothing for one node).
pub fn live_app(broker: &str, history: usize, presence: bool) -> String {
    format!(
        r#"
[limits]
shutdown_timeout = "1s"

{broker}
[apps.live]
kind = "pubsub"
urls = ["/live"]

[[apps.live.namespaces]]
pattern = "chat:*"
subscribe = "any"
publish = "any"
history = {history}
presence = {presence}

[admin]
addr = "127.0.0.1:0"
"#
    )
}

/// Waits until a subscribe on every node answers (each node's channel store reached Redis).
pub async fn wait_ready(addrs: &[SocketAddr]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for addr in addrs {
        loop {
            let mut c = Client::open(*addr, "/live").await;
            let reply = c.call("subscribe", json!({"channel":"chat:ready"})).await;
            if reply.get("subscribe").is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {addr} never reached Redis: {reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

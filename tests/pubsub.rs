//! Pub/sub over real sockets: the control API of the admin listener (DESIGN §6) driving
//! channels of the in-process server, every route with its errors and the bearer token, and
//! the `wsgate publish` command line.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use wsgate::ws::codec::{Incoming as WsIncoming, OpCode};

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    text: String,
    json: Value,
}

/// One request to the admin listener on a fresh connection.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path).header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(req.body(Full::new(body.into())).unwrap()))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Answer { status, headers, text, json }
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    call(addr, "GET", path, token, None, Bytes::new()).await
}

fn admin_config(extra: &str) -> String {
    basic_config(&format!("[admin]\naddr = \"127.0.0.1:0\"\n{extra}"))
}

/// Channel ids of the open channels, by the client's address.
async fn ids_by_peer(admin: SocketAddr, token: Option<&str>) -> HashMap<SocketAddr, String> {
    let answer = get(admin, "/v1/channels", token).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["peer"].as_str().unwrap().parse().unwrap(), c["id"].as_str().unwrap().to_owned()))
        .collect()
}

async fn connect_all(gate: &Gate, n: usize, token: Option<&str>) -> (Vec<WsClient>, Vec<String>) {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(WsClient::connect(gate.addr, "/websocket/echo").await);
    }
    let admin = gate.server.admin_addr().unwrap();
    // The session registers right after the 101: wait until every channel is listed.
    let mut ids = HashMap::new();
    for _ in 0..100 {
        ids = ids_by_peer(admin, token).await;
        if ids.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids = clients.iter().map(|c| ids[&c.stream.local_addr().unwrap()].clone()).collect();
    (clients, ids)
}

fn text(s: &str) -> Option<WsIncoming> {
    Some(WsIncoming::Text(Bytes::copy_from_slice(s.as_bytes())))
}

/// A server with the control API, `n` echo clients and their channel ids, all subscribed to
/// `room 1`.
struct Room {
    gate: Gate,
    admin: SocketAddr,
    clients: Vec<WsClient>,
    ids: Vec<String>,
}

async fn room(n: usize) -> Room {
    let up = start_upstream().await;
    let gate = start_gate(&admin_config(""), up.addr).await;
    let admin = gate.server.admin_addr().expect("admin listener bound");
    let (clients, ids) = connect_all(&gate, n, None).await;
    for id in &ids {
        let a = call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/room%201"), None, None, "").await;
        assert_eq!((a.status, a.json.clone()), (200, json!({"subscribed": true, "changed": true})), "{}", a.text);
    }
    Room { gate, admin, clients, ids }
}

impl Room {
    async fn publish(&self, subscription: &str, body: &str) -> Value {
        let a =
            call(self.admin, "POST", &format!("/v1/subscriptions/{subscription}/publish"), None, None, body.to_owned())
                .await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.json
    }

    async fn send(&self, to: usize, body: &str) -> Answer {
        call(self.admin, "POST", &format!("/v1/channels/{}/send", self.ids[to]), None, None, body.to_owned()).await
    }

    async fn stop(self) {
        drop(self.clients);
        self.gate.server.shutdown().await;
    }
}

#[tokio::test]
async fn subscribing_twice_is_idempotent() {
    let r = room(1).await;
    let a = call(r.admin, "PUT", &format!("/v1/channels/{}/subscriptions/room%201", r.ids[0]), None, None, "").await;
    assert_eq!(a.json, json!({"subscribed": true, "changed": false}));
    // Delivered once (the seed delivered twice): the send right after is the next message.
    assert_eq!(r.publish("room%201", "once").await, json!({"delivered": 1}));
    r.send(0, "marker").await;
    let mut r = r;
    assert_eq!(r.clients[0].next().await, text("once"));
    assert_eq!(r.clients[0].next().await, text("marker"));
    r.stop().await;
}

#[tokio::test]
async fn a_multicast_with_exclude_reaches_exactly_the_others_text_and_binary() {
    let mut r = room(3).await;
    let a = call(
        r.admin,
        "POST",
        &format!("/v1/subscriptions/room%201/publish?exclude={}", r.ids[0]),
        None,
        Some("text/plain"),
        "hello ✓",
    )
    .await;
    assert_eq!((a.status, a.json.clone()), (200, json!({"delivered": 2})), "{}", a.text);
    assert_eq!(r.clients[1].next().await, text("hello ✓"));
    assert_eq!(r.clients[2].next().await, text("hello ✓"));
    // Binary with application/octet-stream keeps its kind.
    let a = call(
        r.admin,
        "POST",
        "/v1/subscriptions/room%201/publish",
        None,
        Some("application/octet-stream"),
        vec![0u8, 255, 7],
    )
    .await;
    assert_eq!(a.json, json!({"delivered": 3}));
    for client in r.clients.iter_mut() {
        assert_eq!(client.next().await, Some(WsIncoming::Binary(Bytes::from_static(&[0, 255, 7]))));
    }
    r.stop().await;
}

#[tokio::test]
async fn a_send_reaches_one_channel_only() {
    let mut r = room(2).await;
    let a = r.send(0, "only you").await;
    assert_eq!((a.status, a.json.clone()), (200, json!({"sent": true})), "{}", a.text);
    assert_eq!(r.clients[0].next().await, text("only you"));
    r.send(1, "marker").await;
    assert_eq!(r.clients[1].next().await, text("marker"), "the other channel got nothing before the marker");
    r.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_the_listings_follow() {
    let mut r = room(3).await;
    let a = call(r.admin, "DELETE", &format!("/v1/channels/{}/subscriptions/room%201", r.ids[2]), None, None, "").await;
    assert_eq!(a.json, json!({"subscribed": false, "changed": true}));
    assert_eq!(r.publish("room%201", "after unsubscribe").await, json!({"delivered": 2}));
    assert_eq!(r.clients[0].next().await, text("after unsubscribe"));
    assert_eq!(r.clients[1].next().await, text("after unsubscribe"));
    r.send(2, "marker").await;
    assert_eq!(r.clients[2].next().await, text("marker"), "the unsubscribed client got nothing before the marker");

    let subs = get(r.admin, "/v1/subscriptions", None).await;
    assert_eq!(
        subs.json,
        json!({"scope": "node", "subscriptions": [{"name": "all", "channels": 3}, {"name": "room 1", "channels": 2}]})
    );
    let one = get(r.admin, &format!("/v1/channels/{}", r.ids[1]), None).await;
    assert_eq!(one.json["subscriptions"], json!(["room 1"]));
    assert_eq!(one.json["app"], "echo");
    assert_eq!(one.json["url"], "/websocket/echo");
    r.stop().await;
}

#[tokio::test]
async fn all_reaches_every_websocket() {
    let mut r = room(3).await;
    assert_eq!(r.publish("all", "everyone").await, json!({"delivered": 3}));
    for client in r.clients.iter_mut() {
        assert_eq!(client.next().await, text("everyone"));
    }
    r.stop().await;
}

#[tokio::test]
async fn closing_a_channel_sends_our_code_and_leaves_every_subscription() {
    let mut r = room(2).await;
    let a =
        call(r.admin, "DELETE", &format!("/v1/channels/{}?code=4001&reason=see+you", r.ids[0]), None, None, "").await;
    assert_eq!((a.status, a.json.clone()), (202, json!({"closing": true})), "{}", a.text);
    match r.clients[0].next().await {
        Some(WsIncoming::Close(Some(frame))) => assert_eq!((frame.code, frame.reason.as_str()), (4001, "see you")),
        other => panic!("expected close 4001, got {other:?}"),
    }
    r.clients[0].send_frame(OpCode::Close, true, &4001u16.to_be_bytes()).await;
    r.clients[0].expect_eof().await;
    let mut left = Value::Null;
    for _ in 0..100 {
        left = get(r.admin, "/v1/subscriptions", None).await.json;
        if left["subscriptions"][1]["channels"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        left,
        json!({"scope": "node", "subscriptions": [{"name": "all", "channels": 1}, {"name": "room 1", "channels": 1}]})
    );
    assert_eq!(r.publish("room%201", "last").await, json!({"delivered": 1}));
    assert_eq!(r.clients[1].next().await, text("last"));
    assert_eq!(r.send(0, "gone").await.status, 404);
    r.stop().await;
}

#[tokio::test]
async fn control_api_multicasts_are_counted_on_metrics() {
    let mut r = room(3).await;
    r.publish("room%201", "one").await;
    r.publish("all", "two").await;
    for client in r.clients.iter_mut() {
        assert_eq!(client.next().await, text("one"));
        assert_eq!(client.next().await, text("two"));
    }
    let m = get(r.admin, "/metrics", None).await;
    assert!(m.text.contains("wsgate_multicast_total 2"), "{}", m.text);
    assert!(m.text.contains("wsgate_multicast_deliveries_total 6"), "{}", m.text);
    assert!(m.text.contains("wsgate_subscriptions_active 1"), "{}", m.text);
    r.stop().await;
}

/// A server whose control API needs the token `s3cret-token` and whose messages are at most
/// 1 KiB, with one echo client.
struct Guarded {
    _dir: tempfile::TempDir,
    gate: Gate,
    admin: SocketAddr,
    client: WsClient,
    id: String,
}

const TOKEN: Option<&str> = Some("s3cret-token");

async fn guarded() -> Guarded {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let up = start_upstream().await;
    let cfg =
        admin_config(&format!("token_file = \"{}\"\n[websocket]\nmax_message_size = \"1KiB\"\n", token_file.display()));
    let gate = start_gate(&cfg, up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let (mut clients, mut ids) = connect_all(&gate, 1, TOKEN).await;
    Guarded { _dir: dir, gate, admin, client: clients.remove(0), id: ids.remove(0) }
}

impl Guarded {
    async fn stop(self) {
        drop(self.client);
        self.gate.server.shutdown().await;
    }
}

#[tokio::test]
async fn the_token_guards_every_v1_route_and_health_needs_none() {
    let g = guarded().await;
    let id = &g.id;
    for token in [None, Some("wrong"), Some("s3cret-token2"), Some("")] {
        for (method, path) in [
            ("GET", "/v1/channels".to_owned()),
            ("POST", "/v1/subscriptions/x/publish".into()),
            ("DELETE", format!("/v1/channels/{id}")),
        ] {
            let a = call(g.admin, method, &path, token, None, "x").await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}");
            assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"wsgate\"");
            assert!(a.json["error"].is_string());
        }
    }
    let m = get(g.admin, "/metrics", None).await;
    assert_eq!(m.status, 200);
    // OpenMetrics: Prometheus chooses its parser from this type (see admin::health).
    assert_eq!(m.headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(m.text.contains("# TYPE wsgate_multicast counter") && m.text.ends_with("# EOF\n"), "{}", m.text);
    let h = get(g.admin, "/healthz", None).await;
    assert_eq!((h.status, h.text.as_str()), (200, "ok\n"));
    let r = get(g.admin, "/readyz", None).await;
    assert_eq!((r.status, r.json["ready"].clone()), (200, json!(true)), "{}", r.text);
    assert_eq!(call(g.admin, "POST", "/healthz", None, None, "").await.status, 405);
    // The refused requests changed nothing: the channel is still open.
    assert_eq!(get(g.admin, &format!("/v1/channels/{id}"), TOKEN).await.status, 200);
    g.stop().await;
}

#[tokio::test]
async fn unknown_channels_and_routes_are_404_wrong_methods_405_with_allow() {
    let g = guarded().await;
    let id = &g.id;
    for (method, path) in [
        ("POST", "/v1/channels/n1-404/send".to_owned()),
        ("PUT", "/v1/channels/n1-404/subscriptions/r".into()),
        ("DELETE", "/v1/channels/n1-404/subscriptions/r".into()),
        ("DELETE", "/v1/channels/n1-404".into()),
        ("GET", "/v1/channels/n1-404".into()),
        ("GET", "/v1/nothing".into()),
        ("GET", "/nothing".into()),
    ] {
        let a = call(g.admin, method, &path, TOKEN, None, "x").await;
        assert_eq!(a.status, 404, "{method} {path}: {}", a.text);
        assert!(a.json["error"].is_string(), "{method} {path}: JSON error");
    }
    for (method, path, allow) in [
        ("GET", "/v1/subscriptions/r/publish".to_owned(), "POST"),
        ("POST", "/v1/subscriptions".into(), "GET, HEAD"),
        ("DELETE", "/v1/channels".into(), "GET, HEAD"),
        ("GET", format!("/v1/channels/{id}/send"), "POST"),
        ("POST", format!("/v1/channels/{id}/subscriptions/r"), "PUT, DELETE"),
        ("PUT", format!("/v1/channels/{id}"), "GET, HEAD, DELETE"),
    ] {
        let a = call(g.admin, method, &path, TOKEN, None, "").await;
        assert_eq!(a.status, 405, "{method} {path}");
        assert_eq!(a.headers["allow"], allow, "{method} {path}");
    }
    g.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_400_and_change_nothing() {
    let mut g = guarded().await;
    let (admin, id) = (g.admin, g.id.clone());
    let a = call(admin, "POST", "/v1/subscriptions/r/publish", TOKEN, Some("text/plain"), vec![0xffu8, 0xfe]).await;
    assert_eq!(a.status, 400);
    assert!(a.json["error"].as_str().unwrap().contains("UTF-8"));
    assert_eq!(call(admin, "POST", &format!("/v1/channels/{id}/send"), TOKEN, None, vec![0xc3u8]).await.status, 400);
    for query in [
        "code=1005".to_owned(),
        "code=999".into(),
        "code=abc".into(),
        "code=1000&reason=".to_owned() + &"x".repeat(124),
        "colour=red".into(),
    ] {
        let a = call(admin, "DELETE", &format!("/v1/channels/{id}?{query}"), TOKEN, None, "").await;
        assert_eq!(a.status, 400, "{query}: {}", a.text);
    }
    assert_eq!(call(admin, "POST", "/v1/subscriptions/r/publish?excluded=x", TOKEN, None, "m").await.status, 400);
    assert_eq!(call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/all"), TOKEN, None, "").await.status, 400);
    let long = format!("/v1/channels/{id}/subscriptions/{}", "n".repeat(300));
    assert_eq!(call(admin, "PUT", &long, TOKEN, None, "").await.status, 400);
    assert_eq!(call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/%FF"), TOKEN, None, "").await.status, 400);
    // Nothing above reached the client or changed its subscriptions: the next message is a marker.
    call(admin, "POST", &format!("/v1/channels/{id}/send"), TOKEN, None, "marker").await;
    assert_eq!(g.client.next().await, text("marker"));
    assert_eq!(get(admin, &format!("/v1/channels/{id}"), TOKEN).await.json["subscriptions"], json!([]));
    g.stop().await;
}

#[tokio::test]
async fn bodies_over_max_message_size_are_413_and_the_limit_itself_passes() {
    let mut g = guarded().await;
    let (admin, id) = (g.admin, g.id.clone());
    let a = call(admin, "POST", "/v1/subscriptions/r/publish", TOKEN, None, vec![b'a'; 1025]).await;
    assert_eq!(a.status, 413, "{}", a.text);
    let streamed = call(
        admin,
        "POST",
        &format!("/v1/channels/{id}/send"),
        TOKEN,
        Some("application/octet-stream"),
        vec![1u8; 4096],
    )
    .await;
    assert_eq!(streamed.status, 413);
    let a = call(admin, "POST", &format!("/v1/channels/{id}/send"), TOKEN, None, vec![b'a'; 1024]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(g.client.next().await, Some(WsIncoming::Text(Bytes::from(vec![b'a'; 1024]))));
    g.stop().await;
}

#[tokio::test]
async fn readyz_reports_an_unreachable_upstream() {
    // An address nobody listens on: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gate = start_gate(&admin_config(""), dead).await;
    let r = get(gate.server.admin_addr().unwrap(), "/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["ready"], false);
    assert_eq!(r.json["checks"]["listeners"], "ok");
    assert!(r.json["checks"]["upstream"].as_str().unwrap().contains(&dead.to_string()), "{}", r.text);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn a_token_file_that_cannot_be_read_stops_the_start() {
    let up = start_upstream().await;
    let text = admin_config("token_file = \"/nonexistent/admin.token\"\n")
        .replace("{UPSTREAM}", &format!("http://{}", up.addr));
    let config =
        wsgate::config::load(wsgate::config::ConfigSource::Text { name: "t.toml".into(), text }, &Default::default())
            .unwrap();
    let error = wsgate::server::start(&config).await.err().expect("refused");
    assert!(error.to_string().contains("/nonexistent/admin.token"), "{error}");
    // and validation refuses an admin address off loopback without a token (DESIGN §6)
    let text = basic_config("[admin]\naddr = \"0.0.0.0:0\"\n").replace("{UPSTREAM}", "http://127.0.0.1:1");
    let error =
        wsgate::config::load(wsgate::config::ConfigSource::Text { name: "t.toml".into(), text }, &Default::default())
            .unwrap_err();
    assert!(error.to_string().contains("token_file"), "{error}");
}

fn publish_cli(config: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(["publish", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        std::io::Write::write_all(&mut input, data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsgate_publish_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "cli-token\n").unwrap();
    let up = start_upstream().await;
    let gate = start_gate(&admin_config(&format!("token_file = \"{}\"\n", token_file.display())), up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let t = Some("cli-token");
    let (mut c, ids) = connect_all(&gate, 3, t).await;
    for id in &ids {
        call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/news"), t, None, "").await;
    }
    // The CLI finds the admin listener and the token in the same config file as `run`.
    let config = dir.path().join("wsgate.toml");
    let config_text = format!(
        "[upstream]\nurl = \"http://{}\"\n\n[admin]\naddr = \"{admin}\"\ntoken_file = \"{}\"\n",
        up.addr,
        token_file.display()
    );
    std::fs::write(&config, config_text).unwrap();
    let cfg = config.clone();
    let excluded = ids[0].clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || publish_cli(&cfg, &["news", "breaking ✓", "--exclude", &excluded], None))
            .await
            .unwrap();
    assert_eq!((code, out.as_str()), (0, "2\n"), "{err}");
    assert_eq!(c[1].next().await, text("breaking ✓"));
    assert_eq!(c[2].next().await, text("breaking ✓"));
    // `-` reads standard input; --binary sends binary
    let cfg = config.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || publish_cli(&cfg, &["news", "-", "--binary"], Some(&[1, 2, 3])))
            .await
            .unwrap();
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    for client in c.iter_mut() {
        assert_eq!(client.next().await, Some(WsIncoming::Binary(Bytes::from_static(&[1, 2, 3]))));
    }
    // an empty subscription delivers 0 and still succeeds
    let cfg = config.clone();
    let (code, out, _) = tokio::task::spawn_blocking(move || publish_cli(&cfg, &["nobody", "x"], None)).await.unwrap();
    assert_eq!((code, out.as_str()), (0, "0\n"));
    // errors exit 1 with a message: wrong token, refused body, admin off
    std::fs::write(&token_file, "wrong\n").unwrap();
    let cfg = config.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || publish_cli(&cfg, &["news", "x"], None)).await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    std::fs::write(&token_file, "cli-token\n").unwrap();
    let cfg = config.clone();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || publish_cli(&cfg, &["news", "-"], Some(&[0xff]))).await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("UTF-8"), "{err}");
    std::fs::write(&config, format!("[upstream]\nurl = \"http://{}\"\n\n[admin]\naddr = \"off\"\n", up.addr)).unwrap();
    let cfg = config.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || publish_cli(&cfg, &["news", "x"], None)).await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("off"), "{err}");
    drop(c);
    gate.server.shutdown().await;
}

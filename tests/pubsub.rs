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

#[tokio::test]
async fn multicast_with_exclude_send_unsubscribe_and_close_over_the_control_api() {
    let up = start_upstream().await;
    let gate = start_gate(&admin_config(""), up.addr).await;
    let admin = gate.server.admin_addr().expect("admin listener bound");
    let (mut c, ids) = connect_all(&gate, 3, None).await;

    for id in &ids {
        let a = call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/room%201"), None, None, "").await;
        assert_eq!((a.status, a.json.clone()), (200, json!({"subscribed": true, "changed": true})), "{}", a.text);
    }
    // Subscribing twice is idempotent (the seed delivered twice).
    let a = call(admin, "PUT", &format!("/v1/channels/{}/subscriptions/room%201", ids[0]), None, None, "").await;
    assert_eq!(a.json, json!({"subscribed": true, "changed": false}));

    // multicast with exclude reaches exactly the other two
    let a = call(
        admin,
        "POST",
        &format!("/v1/subscriptions/room%201/publish?exclude={}", ids[0]),
        None,
        Some("text/plain"),
        "hello ✓",
    )
    .await;
    assert_eq!((a.status, a.json.clone()), (200, json!({"delivered": 2})), "{}", a.text);
    assert_eq!(c[1].next().await, text("hello ✓"));
    assert_eq!(c[2].next().await, text("hello ✓"));
    // binary with application/octet-stream
    let a = call(
        admin,
        "POST",
        "/v1/subscriptions/room%201/publish",
        None,
        Some("application/octet-stream"),
        vec![0u8, 255, 7],
    )
    .await;
    assert_eq!(a.json, json!({"delivered": 3}));
    for client in c.iter_mut() {
        assert_eq!(client.next().await, Some(WsIncoming::Binary(Bytes::from_static(&[0, 255, 7]))));
    }
    // send to one: the excluded client's first text is this one, so the text multicast above
    // never reached it (its queue is first-in first-out).
    let a = call(admin, "POST", &format!("/v1/channels/{}/send", ids[0]), None, None, "only you").await;
    assert_eq!((a.status, a.json.clone()), (200, json!({"sent": true})), "{}", a.text);
    assert_eq!(c[0].next().await, text("only you"));

    // unsubscribe stops delivery
    let a = call(admin, "DELETE", &format!("/v1/channels/{}/subscriptions/room%201", ids[2]), None, None, "").await;
    assert_eq!(a.json, json!({"subscribed": false, "changed": true}));
    let a = call(admin, "POST", "/v1/subscriptions/room%201/publish", None, None, "after unsubscribe").await;
    assert_eq!(a.json, json!({"delivered": 2}));
    assert_eq!(c[0].next().await, text("after unsubscribe"));
    assert_eq!(c[1].next().await, text("after unsubscribe"));
    call(admin, "POST", &format!("/v1/channels/{}/send", ids[2]), None, None, "marker").await;
    assert_eq!(c[2].next().await, text("marker"), "the unsubscribed client got nothing before the marker");

    let subs = get(admin, "/v1/subscriptions", None).await;
    assert_eq!(
        subs.json,
        json!({"scope": "node", "subscriptions": [{"name": "all", "channels": 3}, {"name": "room 1", "channels": 2}]})
    );
    let one = get(admin, &format!("/v1/channels/{}", ids[1]), None).await;
    assert_eq!(one.json["subscriptions"], json!(["room 1"]));
    assert_eq!(one.json["app"], "echo");
    assert_eq!(one.json["url"], "/websocket/echo");

    // `all` reaches every WebSocket
    let a = call(admin, "POST", "/v1/subscriptions/all/publish", None, None, "everyone").await;
    assert_eq!(a.json, json!({"delivered": 3}));
    for client in c.iter_mut() {
        assert_eq!(client.next().await, text("everyone"));
    }

    // closing a channel: the client gets our code and reason, and the channel leaves every
    // subscription at once
    let a = call(admin, "DELETE", &format!("/v1/channels/{}?code=4001&reason=see+you", ids[0]), None, None, "").await;
    assert_eq!((a.status, a.json.clone()), (202, json!({"closing": true})), "{}", a.text);
    match c[0].next().await {
        Some(WsIncoming::Close(Some(frame))) => {
            assert_eq!((frame.code, frame.reason.as_str()), (4001, "see you"))
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
    c[0].send_frame(OpCode::Close, true, &4001u16.to_be_bytes()).await;
    c[0].expect_eof().await;
    let mut left = Value::Null;
    for _ in 0..100 {
        left = get(admin, "/v1/subscriptions", None).await.json;
        if left["subscriptions"][1]["channels"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        left,
        json!({"scope": "node", "subscriptions": [{"name": "all", "channels": 2}, {"name": "room 1", "channels": 1}]})
    );
    let a = call(admin, "POST", "/v1/subscriptions/room%201/publish", None, None, "last").await;
    assert_eq!(a.json, json!({"delivered": 1}));
    assert_eq!(c[1].next().await, text("last"));
    let a = call(admin, "POST", &format!("/v1/channels/{}/send", ids[0]), None, None, "gone").await;
    assert_eq!(a.status, 404);

    // the hub's metrics are on /metrics
    let m = get(admin, "/metrics", None).await;
    assert!(m.text.contains("wsgate_multicast_total 5"), "{}", m.text);
    assert!(m.text.contains("wsgate_multicast_deliveries_total 11"), "{}", m.text);
    assert!(m.text.contains("wsgate_subscriptions_active 1"), "{}", m.text);
    drop(c);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn every_control_route_answers_clear_errors_and_requires_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let up = start_upstream().await;
    let cfg =
        admin_config(&format!("token_file = \"{}\"\n[websocket]\nmax_message_size = \"1KiB\"\n", token_file.display()));
    let gate = start_gate(&cfg, up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let t = Some("s3cret-token");
    let (mut c, ids) = connect_all(&gate, 1, t).await;
    let id = &ids[0];

    // the token: missing or wrong is 401 on every /v1 route; metrics and health need none
    for token in [None, Some("wrong"), Some("s3cret-token2"), Some("")] {
        for (method, path) in [
            ("GET", "/v1/channels".to_owned()),
            ("POST", "/v1/subscriptions/x/publish".into()),
            ("DELETE", format!("/v1/channels/{id}")),
        ] {
            let a = call(admin, method, &path, token, None, "x").await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}");
            assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"wsgate\"");
            assert!(a.json["error"].is_string());
        }
    }
    let m = get(admin, "/metrics", None).await;
    assert_eq!(m.status, 200);
    // OpenMetrics: Prometheus chooses its parser from this type (see admin::health).
    assert_eq!(m.headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(m.text.contains("# TYPE wsgate_multicast counter") && m.text.ends_with("# EOF\n"), "{}", m.text);
    let h = get(admin, "/healthz", None).await;
    assert_eq!((h.status, h.text.as_str()), (200, "ok\n"));
    let r = get(admin, "/readyz", None).await;
    assert_eq!((r.status, r.json["ready"].clone()), (200, json!(true)), "{}", r.text);
    assert_eq!(call(admin, "POST", "/healthz", None, None, "").await.status, 405);

    // 404: unknown channel (every channel route) and unknown route
    for (method, path) in [
        ("POST", "/v1/channels/n1-404/send".to_owned()),
        ("PUT", "/v1/channels/n1-404/subscriptions/r".into()),
        ("DELETE", "/v1/channels/n1-404/subscriptions/r".into()),
        ("DELETE", "/v1/channels/n1-404".into()),
        ("GET", "/v1/channels/n1-404".into()),
        ("GET", "/v1/nothing".into()),
        ("GET", "/nothing".into()),
    ] {
        let a = call(admin, method, &path, t, None, "x").await;
        assert_eq!(a.status, 404, "{method} {path}: {}", a.text);
        assert!(a.json["error"].is_string(), "{method} {path}: JSON error");
    }
    // 405 with Allow
    for (method, path, allow) in [
        ("GET", "/v1/subscriptions/r/publish".to_owned(), "POST"),
        ("POST", "/v1/subscriptions".into(), "GET, HEAD"),
        ("DELETE", "/v1/channels".into(), "GET, HEAD"),
        ("GET", format!("/v1/channels/{id}/send"), "POST"),
        ("POST", format!("/v1/channels/{id}/subscriptions/r"), "PUT, DELETE"),
        ("PUT", format!("/v1/channels/{id}"), "GET, HEAD, DELETE"),
    ] {
        let a = call(admin, method, &path, t, None, "").await;
        assert_eq!(a.status, 405, "{method} {path}");
        assert_eq!(a.headers["allow"], allow, "{method} {path}");
    }
    // 400: non-UTF-8 text, bad close code or reason, unknown parameters, reserved `all`
    let a = call(admin, "POST", "/v1/subscriptions/r/publish", t, Some("text/plain"), vec![0xffu8, 0xfe]).await;
    assert_eq!(a.status, 400);
    assert!(a.json["error"].as_str().unwrap().contains("UTF-8"));
    assert_eq!(call(admin, "POST", &format!("/v1/channels/{id}/send"), t, None, vec![0xc3u8]).await.status, 400);
    for query in [
        "code=1005".to_owned(),
        "code=999".into(),
        "code=abc".into(),
        "code=1000&reason=".to_owned() + &"x".repeat(124),
        "colour=red".into(),
    ] {
        let a = call(admin, "DELETE", &format!("/v1/channels/{id}?{query}"), t, None, "").await;
        assert_eq!(a.status, 400, "{query}: {}", a.text);
    }
    assert_eq!(call(admin, "POST", "/v1/subscriptions/r/publish?excluded=x", t, None, "m").await.status, 400);
    assert_eq!(call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/all"), t, None, "").await.status, 400);
    assert_eq!(
        call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/{}", "n".repeat(300)), t, None, "").await.status,
        400
    );
    assert_eq!(call(admin, "PUT", &format!("/v1/channels/{id}/subscriptions/%FF"), t, None, "").await.status, 400);
    // 413: over max_message_size (1 KiB here), declared or streamed
    let a = call(admin, "POST", "/v1/subscriptions/r/publish", t, None, vec![b'a'; 1025]).await;
    assert_eq!(a.status, 413, "{}", a.text);
    assert_eq!(
        call(admin, "POST", &format!("/v1/channels/{id}/send"), t, Some("application/octet-stream"), vec![1u8; 4096])
            .await
            .status,
        413
    );
    // exactly the limit is fine
    let a = call(admin, "POST", &format!("/v1/channels/{id}/send"), t, None, vec![b'a'; 1024]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(c[0].next().await, Some(WsIncoming::Text(Bytes::from(vec![b'a'; 1024]))));
    // nothing above reached the client or changed its subscriptions
    assert_eq!(get(admin, &format!("/v1/channels/{id}"), t).await.json["subscriptions"], json!([]));
    drop(c);
    gate.server.shutdown().await;
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

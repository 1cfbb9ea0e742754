//! Issue 16, the attacks on the control plane, each replayed over real sockets: a browser's
//! cross-site POST to the admin API, DNS rebinding into the admin API and into log-view (HTTP/1.1
//! upgrade, RFC 8441 extended CONNECT and the page), and what stays open (apps without `allow`,
//! health checks, requests without browser headers; `wsgate publish` is in `tests/pubsub.rs`).
//! The Host rule itself is unit-tested in
//! `src/server/host_rule.rs`; `check` on absurd values is in `tests/cli.rs`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::ws::codec::Incoming as WsIncoming;

/// One request on a fresh connection (`Connection: close` is added): status, head, body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut all)).await.expect("answer in time").unwrap();
    let all = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn admin_config(extra: &str) -> String {
    basic_config(&format!("[admin]\naddr = \"127.0.0.1:0\"\n{extra}"))
}

/// Opens an echo WebSocket (every channel is in `all`) and waits until the control API
/// lists it; returns the client.
async fn subscribed_client(gate: &Gate, admin: SocketAddr) -> WsClient {
    let ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    let host = admin.to_string();
    let mut id = None;
    for _ in 0..100 {
        let (status, _, body) = request(admin, "GET", "/v1/channels", &[("Host", &host)], "").await;
        assert_eq!(status, 200, "{body}");
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(c) = listed["channels"].as_array().and_then(|a| a.first()) {
            id = Some(c["id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id.expect("the channel is listed");
    ws
}

/// The refusal metrics as `/metrics` shows them.
async fn refused_metric(admin: SocketAddr, reason: &str) -> u64 {
    let (_, _, body) = request(admin, "GET", "/metrics", &[("Host", "127.0.0.1")], "").await;
    let prefix = format!("wsgate_admin_requests_refused_total{{reason=\"{reason}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn admin_refuses_cross_site_publish_from_browser() {
    let up = start_upstream().await;
    let gate = start_gate(&admin_config(""), up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let host = admin.to_string();
    let mut ws = subscribed_client(&gate, admin).await;

    // What a page on another site makes the browser send (a "simple" request: no preflight),
    // as modern browsers send it, then as older ones (no Sec-Fetch-*), then from a sandboxed
    // frame or a data: URL (Origin: null), then with Sec-Fetch-Site alone.
    let attacks: [&[(&str, &str)]; 5] = [
        &[
            ("Host", &host),
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Content-Type", "text/plain"),
        ],
        &[("Host", &host), ("Origin", "https://evil.example"), ("Content-Type", "text/plain")],
        &[("Host", &host), ("Origin", "null"), ("Content-Type", "text/plain")],
        &[("Host", &host), ("Sec-Fetch-Site", "cross-site"), ("Content-Type", "text/plain")],
        // Another port of the same host is another origin (same-site to the browser).
        &[
            ("Host", &host),
            ("Origin", "http://127.0.0.1:8080"),
            ("Sec-Fetch-Site", "same-site"),
            ("Content-Type", "text/plain"),
        ],
    ];
    for headers in attacks {
        let (status, head, body) =
            request(admin, "POST", "/v1/subscriptions/all/publish", headers, "attacker text").await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(head.contains("content-type: text/plain"), "{head}");
        assert!(body.starts_with("403 Forbidden: ") && body.lines().count() == 1, "{body:?}");
    }
    // The other state-changing routes are refused the same way.
    let cross = [("Host", host.as_str()), ("Sec-Fetch-Site", "cross-site")];
    for (method, path) in [
        ("POST", "/v1/channels/x/send"),
        ("PUT", "/v1/channels/x/subscriptions/all"),
        ("DELETE", "/v1/channels/x"),
        ("PATCH", "/v1/channels"),
    ] {
        assert_eq!(request(admin, method, path, &cross, "").await.0, 403, "{method} {path}");
    }
    assert!(refused_metric(admin, "cross_site").await >= 6);
    assert!(refused_metric(admin, "origin_denied").await >= 2);

    // The operator's own requests still work: no browser headers (curl, `wsgate publish`),
    // and a same-origin page.
    let (status, _, body) =
        request(admin, "POST", "/v1/subscriptions/all/publish", &[("Host", &host)], "from curl").await;
    assert_eq!((status, body.trim()), (200, "{\"delivered\":1}"));
    let origin = format!("http://{host}");
    let same = [("Host", host.as_str()), ("Origin", origin.as_str()), ("Sec-Fetch-Site", "same-origin")];
    let (status, _, body) = request(admin, "POST", "/v1/subscriptions/all/publish", &same, "same origin").await;
    assert_eq!((status, body.trim()), (200, "{\"delivered\":1}"));
    // The WebSocket never saw the attacker's text: the first message is the operator's.
    assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"from curl"))));
    assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"same origin"))));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn admin_refuses_dns_rebinding_host() {
    let up = start_upstream().await;
    let gate = start_gate(&admin_config("allowed_hosts = [\"gate.internal\"]\n"), up.addr).await;
    let admin = gate.server.admin_addr().unwrap();
    let mut ws = subscribed_client(&gate, admin).await;

    // A rebinding page is same-origin with itself: its Origin matches its Host.
    let rebound = format!("rebind.evil.example:{}", admin.port());
    let origin = format!("http://{rebound}");
    let page = [
        ("Host", rebound.as_str()),
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
        ("Content-Type", "text/plain"),
    ];
    let (status, head, body) = request(admin, "POST", "/v1/subscriptions/all/publish", &page, "attacker text").await;
    assert_eq!(status, 421, "{body}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert!(body.contains("allowed_hosts"), "{body}");
    // Reading is refused too: the listings leak channel ids.
    for path in ["/v1/channels", "/v1/subscriptions"] {
        let (status, _, body) = request(admin, "GET", path, &[("Host", &rebound)], "").await;
        assert_eq!(status, 421, "{path}: {body}");
    }
    // No Host at all (HTTP/1.0) is not let through either.
    let mut raw = TcpStream::connect(admin).await.unwrap();
    assert_eq!(raw_request(&mut raw, b"GET /v1/channels HTTP/1.0\r\n\r\n").await.status, 421);
    assert!(refused_metric(admin, "host_denied").await >= 4);

    // IP literals, localhost and the listed name are served.
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "gate.internal".to_owned(),
        "GATE.internal.".to_owned(),
    ] {
        let (status, _, body) = request(admin, "GET", "/v1/subscriptions", &[("Host", &host)], "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // Health and metrics answer any Host (load balancers and scrapers use their own names).
    for path in ["/healthz", "/metrics"] {
        assert_eq!(request(admin, "GET", path, &[("Host", &rebound)], "").await.0, 200, "{path}");
    }
    // Nothing reached the WebSocket but what the operator sent afterwards.
    let (status, _, _) =
        request(admin, "POST", "/v1/subscriptions/all/publish", &[("Host", "localhost")], "legit").await;
    assert_eq!(status, 200);
    assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"legit"))));
    gate.server.shutdown().await;
}

fn logview_config(file: &std::path::Path, extra: &str) -> String {
    basic_config(&format!(
        "[apps.lv]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [{:?}]\nrefresh = \"100ms\"\n{extra}\n",
        file.display().to_string()
    ))
}

/// An HTTP/1.1 WebSocket upgrade with the given Host and Origin; the status.
async fn upgrade_with_host(addr: SocketAddr, path: &str, host: &str, origin: Option<&str>) -> u16 {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    let text = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    raw_request(&mut stream, text.as_bytes()).await.status
}

/// An RFC 8441 extended CONNECT over h2c whose `:authority` is `authority`; the status.
async fn h2_upgrade_with_authority(addr: SocketAddr, path: &str, authority: &str) -> http::StatusCode {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // Give the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) a moment to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let origin = format!("http://{authority}");
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{authority}{path}"))
        .header("sec-websocket-version", "13")
        .header("origin", origin)
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    tokio::time::timeout(TIMEOUT, sender.send_request(req)).await.unwrap().unwrap().status()
}

#[tokio::test]
async fn logview_refuses_dns_rebinding_host() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("secret.log");
    std::fs::write(&log, "password=hunter2\n").unwrap();
    let up = start_upstream().await;
    let gate = start_gate(&logview_config(&log, ""), up.addr).await;
    let port = gate.addr.port();
    let rebound = format!("rebind.evil.example:{port}");
    let origin = format!("http://{rebound}");

    // HTTP/1.1 upgrade from 127.0.0.1 with the rebinding page's Host and matching Origin.
    assert_eq!(upgrade_with_host(gate.addr, "/logs", &rebound, Some(&origin)).await, 421);
    assert_eq!(upgrade_with_host(gate.addr, "/logs/connect", &rebound, None).await, 421);
    // RFC 8441 over HTTP/2: the authority is the rebinding name.
    assert_eq!(h2_upgrade_with_authority(gate.addr, "/logs", &rebound).await, http::StatusCode::MISDIRECTED_REQUEST);
    // The app's page.
    let (status, _, body) = request(gate.addr, "GET", "/logs", &[("Host", &rebound)], "").await;
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("<html"), "{body}");

    // The operator's own names open it.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "viewer.localhost".to_owned()] {
        assert_eq!(upgrade_with_host(gate.addr, "/logs", &host, Some(&format!("http://{host}"))).await, 101, "{host}");
    }
    assert_eq!(h2_upgrade_with_authority(gate.addr, "/logs", &format!("localhost:{port}")).await, http::StatusCode::OK);
    assert_eq!(request(gate.addr, "GET", "/logs", &[("Host", "127.0.0.1")], "").await.0, 200);
    gate.server.shutdown().await;

    // A name the operator lists for the app is served.
    let gate = start_gate(&logview_config(&log, "allowed_hosts = [\"logs.corp.example\"]"), up.addr).await;
    assert_eq!(upgrade_with_host(gate.addr, "/logs", "logs.corp.example", Some("http://logs.corp.example")).await, 101);
    assert_eq!(upgrade_with_host(gate.addr, "/logs", &rebound, Some(&origin)).await, 421);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn apps_open_to_everyone_keep_any_host() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let host = format!("chat.example:{}", gate.addr.port());
    assert_eq!(upgrade_with_host(gate.addr, "/websocket/echo", &host, Some(&format!("http://{host}"))).await, 101);
    assert_eq!(h2_upgrade_with_authority(gate.addr, "/websocket/echo", &host).await, http::StatusCode::OK);
    gate.server.shutdown().await;

    // An app restricted by `allow` follows the Host rule like log-view.
    let gate = start_gate(&basic_config("allow = [\"127.0.0.0/8\"]"), up.addr).await;
    assert_eq!(upgrade_with_host(gate.addr, "/websocket/echo", &host, None).await, 421);
    assert_eq!(upgrade_with_host(gate.addr, "/websocket/echo", "127.0.0.1", None).await, 101);
    gate.server.shutdown().await;
}

//! Integration tests of the proxy over real loopback sockets (a checklist in the
//! spirit of linkerd's `transparency.rs`).

mod common;

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::inproc::*;
use common::upstream::*;

fn dump_lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn dump_header(text: &str, name: &str) -> Option<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_owned())
}

#[tokio::test]
async fn get_is_forwarded_with_rewritten_headers() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let resp = raw(
        proxy,
        b"GET /some/path?q=1&r=%20 HTTP/1.1\r\n\
          Host: www.example.org:8080\r\n\
          Connection: close, X-Drop-Me\r\n\
          X-Drop-Me: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          X-Forwarded-For: 6.6.6.6\r\n\
          X-Forwarded-Proto: https\r\n\
          Forwarded: for=6.6.6.6\r\n\
          Via: 1.0 fred\r\n\
          X-Custom: kept\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let text = resp.text();
    let lines = dump_lines(&text);
    assert_eq!(lines[0], "GET /some/path?q=1&r=%20 HTTP/1.1");
    assert_eq!(dump_header(&text, "host").as_deref(), Some("www.example.org:8080"));
    for gone in ["x-drop-me", "keep-alive", "proxy-connection", "te", "proxy-authorization", "connection"] {
        assert_eq!(dump_header(&text, gone), None, "{gone} must not reach the upstream:\n{text}");
    }
    assert_eq!(dump_header(&text, "x-custom").as_deref(), Some("kept"));
    assert_eq!(dump_header(&text, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(dump_header(&text, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(dump_header(&text, "x-forwarded-host").as_deref(), Some("www.example.org:8080"));
    assert_eq!(
        dump_header(&text, "forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http;host=\"www.example.org:8080\"")
    );
    assert_eq!(dump_header(&text, "via").as_deref(), Some("1.0 fred, 1.1 wsgate"));
    assert_eq!(resp.header("via").as_deref(), Some("1.1 wsgate"));
    assert_eq!(resp.header("content-length").unwrap(), resp.body.len().to_string());
}

#[tokio::test]
async fn trusted_peer_keeps_and_appends_forwarding_headers() {
    let up = start_dump_upstream().await;
    let mut s = settings(up.addr);
    s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let proxy = start_proxy(s).await;
    let resp = raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\
          X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9;proto=https\r\n\r\n",
    )
    .await;
    let text = resp.text();
    assert_eq!(dump_header(&text, "x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(
        dump_header(&text, "forwarded").as_deref(),
        Some("for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=h")
    );
}

#[tokio::test]
async fn post_bodies_are_byte_exact_both_framings() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();

    let mut req =
        format!("POST /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(&body);
    let resp = raw(proxy, &req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-method").as_deref(), Some("POST"));
    assert!(resp.body == body, "content-length body differs");

    // Chunked request body (and a method hyper has no constant for).
    let mut req =
        b"PATCHY /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(7777) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(proxy, &req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-method").as_deref(), Some("PATCHY"));
    assert!(resp.body == body, "chunked body differs");
}

#[tokio::test]
async fn response_hop_by_hop_headers_are_removed() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let resp = raw(proxy, b"GET /hop HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-foo"), None, "{}", resp.head);
    assert_eq!(resp.header("keep-alive"), None, "{}", resp.head);
    assert_eq!(resp.header("x-keep").as_deref(), Some("1"));
    assert_eq!(resp.header("proxy-authenticate").as_deref(), Some("Basic"));
    assert_eq!(resp.header("via").as_deref(), Some("1.1 wsgate"));
    // Our own connection management only: hyper adds `connection: close` for the
    // client's `Connection: close`, nothing from the upstream.
    assert!(resp.headers("connection").iter().all(|v| v.eq_ignore_ascii_case("close")), "{}", resp.head);
    assert_eq!(resp.body, b"hop");
}

#[tokio::test]
async fn closed_upstream_port_gives_502() {
    let addr = closed_port().await;
    let proxy = start_proxy(settings(addr)).await;
    let resp = raw(proxy, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(resp.text(), "502 Bad Gateway: upstream refused the connection\n");
}

#[tokio::test]
async fn silent_upstream_gives_504_after_response_timeout() {
    let addr = start_silent_upstream().await;
    let mut s = settings(addr);
    s.response_timeout = Duration::from_millis(300);
    let proxy = start_proxy(s).await;
    let started = Instant::now();
    let resp = raw(proxy, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504);
    assert_eq!(resp.text(), "504 Gateway Timeout: the upstream did not answer in time\n");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn response_timeout_restarts_while_the_upload_progresses() {
    // 10 chunks 100 ms apart (1 s) with a 300 ms response timeout: no 504, because
    // the timeout counts from the last request byte sent.
    let up = start_dump_upstream().await;
    let mut s = settings(up.addr);
    s.response_timeout = Duration::from_millis(300);
    let proxy = start_proxy(s).await;
    let mut client = h1_client(proxy).await;
    let body = SlowBody::new(10, Duration::from_millis(100));
    let req = Request::post("/count").header("host", "h").body(body.boxed()).unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"10240");
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_client_without_hanging() {
    let up = start_dying_upstream().await;
    let proxy = start_proxy(settings(up)).await;

    // hyper client: the body stream must end with an error.
    let mut client = h1_client(proxy).await;
    let req = Request::get("/die").header("host", "h").body(body_of("")).unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], (1u64 << 20).to_string());
    let collected = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await.expect("no hang");
    assert!(collected.is_err(), "a truncated body must be an error");

    // Raw client: the connection is closed after fewer bytes than promised.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /die HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("no hang");
    let resp = parse_response(&buf);
    assert!(resp.body.len() < 1 << 20, "short body expected, got {}", resp.body.len());
    assert!(!resp.body.is_empty(), "the part received before the failure is relayed");
}

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let mut client = h1_client(proxy).await;
    for i in 0..20 {
        let req = Request::get(format!("/n/{i}")).header("host", "h").body(body_of("")).unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(format!("GET /n/{i} ").as_bytes()));
    }
    // And fresh client connections share the pool too.
    for _ in 0..3 {
        let resp = raw(proxy, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(up.accepts(), 1);
}

#[tokio::test]
async fn upgrade_is_tunnelled_byte_for_byte() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /tunnel HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: foo\r\n\r\n")
        .await
        .unwrap();
    // Read the head byte by byte so no tunnelled byte is consumed by accident.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let resp = parse_response(&head);
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert_eq!(resp.header("upgrade").as_deref(), Some("foo"));
    assert_eq!(resp.header("connection").as_deref(), Some("upgrade"));
    assert_eq!(resp.header("x-up-upgrade-seen").as_deref(), Some("upgrade"));
    assert_eq!(resp.header("via").as_deref(), Some("1.1 wsgate"));

    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let (mut rd, mut wr) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr
    });
    let mut echoed = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut echoed)).await.expect("echo within 10s").unwrap();
    assert!(echoed == payload, "tunnelled bytes differ");
    // Closing our side ends the tunnel: the upstream echo closes, we read EOF.
    let mut wr = writer.await.unwrap();
    wr.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut rest)).await.expect("tunnel closes").unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn upgrade_refused_by_upstream_is_a_normal_response() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    // `Upgrade` without `Connection: upgrade` is not an upgrade (RFC 9110 §7.8):
    // forwarded as a plain request with Upgrade stripped.
    let resp = raw(proxy, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nUpgrade: foo\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    assert_eq!(dump_header(&resp.text(), "upgrade"), None);
}

#[tokio::test]
async fn via_loop_gives_508_without_contacting_the_upstream() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let resp = raw(proxy, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nVia: 1.1 a, 1.1 wsgate\r\n\r\n").await;
    assert_eq!(resp.status, 508);
    assert_eq!(resp.text(), "508 Loop Detected: the request already passed through wsgate\n");
    assert_eq!(up.accepts(), 0);
}

#[tokio::test]
async fn proxy_pointing_at_itself_is_stopped_by_via() {
    // A real loop: the proxy's upstream is its own address. The second pass sees
    // `Via: 1.1 wsgate` and answers 508, which the first pass relays.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    start_proxy_on(listener, settings(addr));
    let resp = raw(addr, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 508);
    assert_eq!(resp.header("via").as_deref(), Some("1.1 wsgate"));
}

#[tokio::test]
async fn http2_client_gets_host_from_authority() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://www.example.org:81/h2?x=1").body(body_of("")).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["via"], "1.1 wsgate");
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.starts_with("POST /h2?x=1 HTTP/1.1\n"), "{text}");
    assert_eq!(dump_header(&text, "host").as_deref(), Some("www.example.org:81"));
    assert_eq!(dump_header(&text, "x-forwarded-host").as_deref(), Some("www.example.org:81"));
    assert_eq!(dump_header(&text, "via").as_deref(), Some("2 wsgate"));
}

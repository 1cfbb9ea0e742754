//! The reverse proxy end to end: a client → wsgate → a real HTTP upstream run by the test.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::Request;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use wsgate::ws::codec::{Incoming as WsIncoming, OpCode};

fn body(b: &'static [u8]) -> common::upstream::TestBody {
    Full::new(Bytes::from_static(b)).map_err(|never| match never {}).boxed()
}

#[tokio::test]
async fn get_and_post_are_proxied_byte_exact_over_one_upstream_connection() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut client = http_client(gate.addr).await;
    for i in 0..20u32 {
        let payload: Vec<u8> = (0..1000 + i).map(|b| (b % 256) as u8).collect();
        let req = Request::post(format!("/echo?i={i}&x=%20y"))
            .header("host", "example.test")
            .body(Full::new(Bytes::from(payload.clone())).map_err(|never| match never {}).boxed())
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream-method"], "POST");
        assert_eq!(resp.headers()["x-upstream-path"], format!("/echo?i={i}&x=%20y").as_str());
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.as_ref(), payload.as_slice());
    }
    let get =
        client.send_request(Request::get("/nothing-here").header("host", "x").body(body(b"")).unwrap()).await.unwrap();
    assert_eq!(get.status(), 404);
    assert_eq!(get.into_body().collect().await.unwrap().to_bytes().as_ref(), b"no such page");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "keep-alive pool reuses one upstream connection");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways_without_buffering() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;

    // 64 MiB download, read slowly at first: must arrive complete and exact.
    let n = 64usize << 20;
    let mut client = http_client(gate.addr).await;
    let resp = client
        .send_request(Request::get(format!("/big?n={n}")).header("host", "x").body(body(b"")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut position = 0u32;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        for &b in data.iter() {
            assert_eq!(b, ((position % 65536) % 251) as u8, "byte {received} differs");
            position += 1;
        }
        received += data.len();
    }
    assert_eq!(received, n);

    // 64 MiB upload streamed in chunks (no Content-Length), echoed back by the upstream.
    let chunks = 1024usize;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let req = Request::post("/echo")
        .header("host", "x")
        .body(ChunkBody { chunk: chunk.clone(), left: chunks }.boxed())
        .unwrap();
    let mut client = http_client(gate.addr).await;
    let resp = client.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut echoed = 0usize;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        assert!(data.iter().all(|&b| b == 7));
        echoed += data.len();
    }
    assert_eq!(echoed, chunks * chunk.len());
    gate.server.shutdown().await;
}

/// A request body of `left` equal chunks without a Content-Length (chunked on the wire).
struct ChunkBody {
    chunk: Bytes,
    left: usize,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(
        &mut stream,
        b"GET /headers HTTP/1.1\r\nHost: app.example:8080\r\nConnection: keep-alive, X-Private\r\n\
          X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
          X-Forwarded-For: 6.6.6.6\r\nX-Custom: kept\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    // Response hop-by-hop headers from the upstream are removed too.
    assert_eq!(resp.header("x-hop"), None, "{}", resp.head);
    assert_eq!(resp.header("keep-alive"), None, "{}", resp.head);
    assert_eq!(resp.header("via").as_deref(), Some("1.1 wsgate"));
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    let mut body = resp.rest.to_vec();
    while body.len() < len {
        let mut more = vec![0u8; len - body.len()];
        let n = stream.read(&mut more).await.unwrap();
        body.extend_from_slice(&more[..n]);
    }
    let seen = String::from_utf8(body).unwrap();
    let has = |line: &str| seen.lines().any(|l| l == line);
    assert!(has("host: app.example:8080"), "Host preserved:\n{seen}");
    assert!(has("x-custom: kept"), "{seen}");
    assert!(has("x-forwarded-for: 127.0.0.1"), "untrusted client's XFF replaced:\n{seen}");
    assert!(has("x-forwarded-proto: http"), "{seen}");
    assert!(has("x-forwarded-host: app.example:8080"), "{seen}");
    assert!(has("via: 1.1 wsgate"), "{seen}");
    assert!(seen.lines().any(|l| l.starts_with("forwarded: for=127.0.0.1;")), "{seen}");
    for gone in ["x-private:", "keep-alive:", "te:", "proxy-connection:", "connection: keep-alive"] {
        assert!(!seen.lines().any(|l| l.starts_with(gone)), "{gone} must not be forwarded:\n{seen}");
    }
    gate.server.shutdown().await;
}

#[tokio::test]
async fn trusted_proxies_have_their_forwarded_for_appended() {
    let up = start_upstream().await;
    let config = basic_config("")
        .replace("response_timeout = \"2s\"", "response_timeout = \"2s\"\ntrusted_proxies = [\"127.0.0.0/8\"]");
    let gate = start_gate(&config, up.addr).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp =
        raw_request(&mut stream, b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    let mut body = resp.rest.to_vec();
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    while body.len() < len {
        let mut more = vec![0u8; len];
        let n = stream.read(&mut more).await.unwrap();
        body.extend_from_slice(&more[..n]);
    }
    let seen = String::from_utf8(body).unwrap();
    assert!(seen.lines().any(|l| l == "x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{seen}");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_hung_upstream_is_504() {
    // A port with nothing listening: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gate = start_gate(&basic_config(""), closed).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut stream, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(resp.status, 502, "{}", resp.head);
    assert!(resp.header("content-type").unwrap().starts_with("text/plain"));
    gate.server.shutdown().await;

    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let started = Instant::now();
    let resp = raw_request(&mut stream, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(resp.status, 504, "{}", resp.head);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "504 after response_timeout (2s), took {waited:?}"
    );
    gate.server.shutdown().await;
}

#[tokio::test]
async fn upstream_reset_mid_request_is_502() {
    // An upstream that accepts and closes at once (a reset before any response).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    let gate = start_gate(&basic_config(""), addr).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut stream, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(resp.status, 502, "{}", resp.head);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_on_a_non_app_url_is_tunnelled_to_the_upstream() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut ws = WsClient::connect(gate.addr, "/upgrade").await;
    for text in ["one", "two ✓", &"x".repeat(70_000)] {
        ws.send_text(text).await;
        match ws.next().await {
            Some(WsIncoming::Text(t)) => assert_eq!(t.as_ref(), format!("upstream:{text}").as_bytes()),
            other => panic!("expected the upstream's echo, got {other:?}"),
        }
    }
    ws.send_frame(OpCode::Close, true, &[0x03, 0xe8]).await;
    assert_eq!(ws.expect_close().await, Some(1000));
    gate.server.shutdown().await;
}

//! DESIGN §9: every bad input this part of wsgate meets, sent over a real socket, with the exact
//! answer checked (status code, close code, or closed connection).

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::ws::codec::OpCode;

/// Reads until EOF; returns everything read. Panics if the server keeps the connection open.
async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut all)).await.expect("server closed the connection").ok();
    all
}

#[tokio::test]
async fn malformed_http_is_400_and_the_connection_closed() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost h\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let answer = read_to_eof(&mut stream).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{garbage:?} -> {text}");
    }
    gate.server.shutdown().await;
}

#[tokio::test]
async fn request_smuggling_shapes_are_refused_or_framed_unambiguously() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    // Duplicate, differing Content-Length and obs-fold: 400.
    for request in [
        &b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let answer = read_to_eof(&mut stream).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{:?} -> {text}", String::from_utf8_lossy(request));
    }
    // Content-Length with Transfer-Encoding: RFC 9112 §6.3 lets the server frame by
    // Transfer-Encoding alone and requires it to close the connection afterwards. The request
    // smuggled behind the chunked body is never served, and the upstream sees one framing only.
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_eof(&mut stream).await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "exactly one response, then close: {text}");
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("x-upstream-path: /echo"), "{text}");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn oversize_headers_are_431() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[limits]\nmax_header_bytes = \"16KiB\"\n"), up.addr).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let big = "a".repeat(20 * 1024);
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_to_eof(&mut stream).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn incomplete_headers_are_closed_after_header_read_timeout() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[limits]\nheader_read_timeout = \"500ms\"\n"), up.addr).await;
    // Slowloris: a partial head and then nothing.
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let started = Instant::now();
    read_to_eof(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(gate.addr).await.unwrap();
    let started = Instant::now();
    read_to_eof(&mut silent).await;
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    gate.server.shutdown().await;
}

async fn upgrade_status(gate: &Gate, request: String) -> RawResponse {
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    raw_request(&mut stream, request.as_bytes()).await
}

#[tokio::test]
async fn bad_handshakes_get_400_or_426() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let path = "/websocket/echo";
    let base = |key: &str, version: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}{version}\r\n")
    };
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    // missing key
    assert_eq!(upgrade_status(&gate, base("", v13)).await.status, 400);
    // key not 16 bytes of base64
    assert_eq!(upgrade_status(&gate, base("Sec-WebSocket-Key: c2hvcnQ=\r\n", v13)).await.status, 400);
    assert_eq!(upgrade_status(&gate, base("Sec-WebSocket-Key: !!!notbase64!!!\r\n", v13)).await.status, 400);
    // wrong method
    let post = upgrade_request(path, "").replacen("GET", "POST", 1);
    assert_eq!(upgrade_status(&gate, post).await.status, 400);
    // version not 13
    let resp =
        upgrade_status(&gate, base("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Version: 8\r\n"))
            .await;
    assert_eq!(resp.status, 426, "{}", resp.head);
    assert_eq!(resp.header("sec-websocket-version").as_deref(), Some("13"));
    // the good request still works on the same server
    WsClient::connect(gate.addr, path).await;
    gate.server.shutdown().await;
}

#[tokio::test]
async fn disallowed_origin_and_address_get_403() {
    let up = start_upstream().await;
    let extra = r#"
[apps.private]
kind = "echo"
urls = ["/private"]
allow = ["10.0.0.0/8"]

[apps.partner]
kind = "echo"
urls = ["/partner"]
allowed_origins = ["https://partner.example"]
"#;
    let gate = start_gate(&basic_config(extra), up.addr).await;
    let resp = upgrade_status(&gate, upgrade_request("/private", "")).await;
    assert_eq!(resp.status, 403, "address not in allow list");
    // Default: same origin as Host.
    let resp = upgrade_status(&gate, upgrade_request("/websocket/echo", "Origin: http://evil.example\r\n")).await;
    assert_eq!(resp.status, 403, "cross-origin");
    let resp = upgrade_status(&gate, upgrade_request("/websocket/echo", "Origin: http://127.0.0.1\r\n")).await;
    assert_eq!(resp.status, 101, "same origin");
    let resp = upgrade_status(&gate, upgrade_request("/partner", "Origin: https://partner.example\r\n")).await;
    assert_eq!(resp.status, 101, "listed origin");
    let resp = upgrade_status(&gate, upgrade_request("/partner", "Origin: http://127.0.0.1\r\n")).await;
    assert_eq!(resp.status, 403, "unlisted origin");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn over_max_connections_is_503() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[limits]\nmax_connections = 2\n"), up.addr).await;
    let _a = WsClient::connect(gate.addr, "/websocket/echo").await;
    let _b = WsClient::connect(gate.addr, "/websocket/echo").await;
    let mut third = TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut third, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(resp.status, 503, "{}", resp.head);
    drop(_a);
    // The slot is released when a connection ends.
    let mut later = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        let r = raw_request(&mut s, upgrade_request("/websocket/echo", "").as_bytes()).await;
        if r.status == 101 {
            later = Some(r.status);
            break;
        }
    }
    assert_eq!(later, Some(101));
    gate.server.shutdown().await;
}

/// Sends `bytes` on a fresh echo WebSocket and expects a Close with `code`, then TCP close.
async fn expect_close_after(gate: &Gate, bytes: &[u8], code: u16) {
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_raw(bytes).await;
    assert_eq!(ws.expect_close().await, Some(code), "after {:02x?}", &bytes[..bytes.len().min(16)]);
    ws.expect_eof().await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    // unmasked text frame "hi"
    expect_close_after(&gate, &[0x81, 0x02, b'h', b'i'], 1002).await;
    // RSV1 set without an extension
    expect_close_after(&gate, &[0xC1, 0x80, 0, 0, 0, 0], 1002).await;
    // reserved opcode 3
    expect_close_after(&gate, &[0x83, 0x80, 0, 0, 0, 0], 1002).await;
    // fragmented ping (FIN clear on a control frame)
    expect_close_after(&gate, &[0x09, 0x80, 0, 0, 0, 0], 1002).await;
    // control frame over 125 bytes
    let mut big_ping = vec![0x89, 0xFE, 0x00, 0x7E, 0, 0, 0, 0];
    big_ping.extend(std::iter::repeat_n(0, 126));
    expect_close_after(&gate, &big_ping, 1002).await;
    // continuation with nothing to continue
    expect_close_after(&gate, &[0x80, 0x80, 0, 0, 0, 0], 1002).await;
    gate.server.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_oversize_with_1009() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[websocket]\nmax_message_size = \"64KiB\"\n"), up.addr).await;
    // text frame with an invalid byte (mask 0 keeps the payload readable)
    expect_close_after(&gate, &[0x81, 0x83, 0, 0, 0, 0, b'a', 0xFF, b'b'], 1007).await;
    // invalid UTF-8 in a later fragment
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_frame(OpCode::Text, false, "ok ✓".as_bytes()).await;
    ws.send_frame(OpCode::Continuation, true, &[0xC0, 0x80]).await;
    assert_eq!(ws.expect_close().await, Some(1007));
    // a 64-bit length over the limit is refused from the header alone
    expect_close_after(&gate, &[0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0], 1009).await;
    // fragments adding up past the limit
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    let part = vec![b'a'; 40 * 1024];
    ws.send_frame(OpCode::Binary, false, &part).await;
    ws.send_frame(OpCode::Continuation, true, &part).await;
    assert_eq!(ws.expect_close().await, Some(1009));
    gate.server.shutdown().await;
}

/// Issue 15: idle connections past `max_connections` were accepted and held until the header
/// timeout. Now a connection past the limit holds no slot: one that sends a request is answered
/// 503 (after its request, so HTTP clients read it as the response), one that sends nothing is
/// closed within a second, well before the header timeout.
#[tokio::test]
async fn connections_past_the_limit_are_refused_at_accept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = start_upstream().await;
    let gate =
        start_gate(&basic_config("[limits]\nmax_connections = 2\nheader_read_timeout = \"30s\"\n"), up.addr).await;
    let _idle_a = TcpStream::connect(gate.addr).await.unwrap();
    let _idle_b = TcpStream::connect(gate.addr).await.unwrap();
    let mut silent = TcpStream::connect(gate.addr).await.unwrap();
    let mut asking = TcpStream::connect(gate.addr).await.unwrap();
    asking.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), asking.read_to_end(&mut answer))
        .await
        .expect("refused at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.ends_with("too many connections\n"), "{answer}");
    let mut nothing = Vec::new();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut nothing))
        .await
        .expect("closed well before the header timeout")
        .unwrap();
    assert!(nothing.is_empty() && started.elapsed() < Duration::from_secs(5));
    // Using a hyper client (which sends its request first) on a full server: a clean 503.
    assert_eq!(common::http_get(gate.addr, "/echo").await.0, 503);
    gate.server.shutdown().await;
}

//! The WebSocket engine end to end over real sockets: permessage-deflate (RFC 7692), the
//! client library, subprotocols, and WebSockets over HTTP/2 (RFC 8441).

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::client::{connect, ClientError, ConnectOptions, Received};
use wsgate::ws::codec::{encode_frame, Decoder, DecoderConfig, Incoming as WsIncoming, OpCode, Role};
use wsgate::ws::deflate::{compress, Inflater};

fn url(gate: &Gate, path: &str) -> String {
    format!("ws://{}{path}", gate.addr)
}

#[tokio::test]
async fn client_echo_with_and_without_deflate() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    for deflate in [true, false] {
        let options = ConnectOptions { deflate, timeout: TIMEOUT, ..ConnectOptions::default() };
        let mut client = connect(&url(&gate, "/websocket/echo?x=1"), &options).await.unwrap();
        assert_eq!(client.deflate().is_some(), deflate);
        let long = "compressible text ✓ ".repeat(2000);
        client.send_text(&long).await.unwrap();
        assert_eq!(client.receive(Some(TIMEOUT)).await.unwrap(), Received::Text(long.clone()));
        client.send_text("short").await.unwrap();
        assert_eq!(client.receive(Some(TIMEOUT)).await.unwrap(), Received::Text("short".into()));
        let bin: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        client.send_binary(&bin).await.unwrap();
        assert_eq!(client.receive(Some(TIMEOUT)).await.unwrap(), Received::Binary(Bytes::from(bin)));
        let close = client.close(1000, "bye").await.unwrap();
        assert_eq!(close.map(|c| c.code), Some(1000));
    }
    gate.server.shutdown().await;
}

#[tokio::test]
async fn compression_false_declines_deflate() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[websocket]\ncompression = false\n"), up.addr).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let head = raw_request(
        &mut stream,
        upgrade_request("/websocket/echo", "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    )
    .await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("sec-websocket-extensions"), None);
    let client = connect(&url(&gate, "/websocket/echo"), &ConnectOptions::default()).await.unwrap();
    assert!(client.deflate().is_none());
    // Hang up first, so the shutdown does not wait for our Close answers.
    drop((client, stream));
    gate.server.shutdown().await;
}

/// A raw deflate session: negotiates, returns the stream, the buffered rest and the answer.
async fn raw_deflate(gate: &Gate, offer: &str) -> (TcpStream, BytesMut, Option<String>) {
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let head = raw_request(
        &mut stream,
        upgrade_request("/websocket/echo", &format!("Sec-WebSocket-Extensions: {offer}\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(head.status, 101, "{}", head.head);
    let answer = head.header("sec-websocket-extensions");
    (stream, head.rest, answer)
}

async fn next_event(stream: &mut TcpStream, buf: &mut BytesMut, decoder: &mut Decoder) -> Option<WsIncoming> {
    loop {
        if let Some(event) = decoder.decode(buf).unwrap() {
            return Some(event);
        }
        let n = tokio::time::timeout(TIMEOUT, stream.read_buf(buf)).await.expect("in time").ok()?;
        if n == 0 {
            return None;
        }
    }
}

#[tokio::test]
async fn negotiation_picks_first_acceptable_offer_and_server_compresses() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let (mut stream, mut buf, answer) =
        raw_deflate(&gate, "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10; client_max_window_bits").await;
    assert_eq!(answer.as_deref(), Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"));
    // Send a compressed message; the echo comes back compressed (RSV1) and inflates to it.
    let text = "abcabcabc hello deflate ".repeat(100);
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, OpCode::Text, true, true, &compress(text.as_bytes(), 15), Some([9, 8, 7, 6]));
    stream.write_all(&frame).await.unwrap();
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
    decoder.set_rsv1_allowed(true);
    let event = next_event(&mut stream, &mut buf, &mut decoder).await;
    assert!(decoder.last_compressed(), "the echo is compressed");
    let Some(WsIncoming::Text(data)) = event else { panic!("{event:?}") };
    assert!(data.len() < text.len() / 4);
    let params = wsgate::ws::deflate::DeflateParams {
        own_window_bits: 15,
        own_no_context_takeover: true,
        peer_no_context_takeover: true,
    };
    assert_eq!(&Inflater::new(&params, 1 << 20).inflate(&data).unwrap()[..], text.as_bytes());
    drop(stream);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn decompression_bomb_closes_1009_and_bad_utf8_after_inflate_1007() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[websocket]\nmax_message_size = \"64KiB\"\n"), up.addr).await;
    // 8 MiB of zeros compress to ~8 KiB: under the frame limit, far over the message limit.
    let bomb = compress(&vec![0u8; 8 << 20], 15);
    assert!(bomb.len() < 64 << 10);
    let (stream, buf, answer) = raw_deflate(&gate, "permessage-deflate").await;
    assert!(answer.is_some());
    let mut ws = ws_from(stream, buf);
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, OpCode::Binary, true, true, &bomb, Some([1, 2, 3, 4]));
    ws.send_raw(&frame).await;
    assert_eq!(ws.expect_close().await, Some(1009));

    let (stream, buf, _) = raw_deflate(&gate, "permessage-deflate").await;
    let mut ws = ws_from(stream, buf);
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, OpCode::Text, true, true, &compress(&[b'a', 0xff, 0xfe, b'b'], 15), Some([1, 2, 3, 4]));
    ws.send_raw(&frame).await;
    assert_eq!(ws.expect_close().await, Some(1007));

    // RSV1 without negotiation stays a protocol error.
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_raw(&frame).await;
    assert_eq!(ws.expect_close().await, Some(1002));
    gate.server.shutdown().await;
}

fn ws_from(stream: TcpStream, rest: BytesMut) -> WsClient {
    WsClient::from_parts(stream, rest)
}

#[tokio::test]
async fn subprotocol_is_chosen_per_app_in_client_order() {
    let up = start_upstream().await;
    let extra = r#"
[apps.echo2]
kind = "echo"
urls = ["/ws/proto"]
subprotocols = ["echo.v2", "echo.v1"]
"#;
    let gate = start_gate(&basic_config(extra), up.addr).await;
    let opts = |p: &[&str]| ConnectOptions {
        subprotocols: p.iter().map(|s| s.to_string()).collect(),
        ..ConnectOptions::default()
    };
    // The client's order of preference wins among those the app speaks (RFC 6455 §4.2.2).
    let protocol = |offer: &'static [&'static str]| {
        let (gate_url, options) = (url(&gate, "/ws/proto"), opts(offer));
        async move { connect(&gate_url, &options).await.unwrap().protocol().map(str::to_owned) }
    };
    assert_eq!(protocol(&["chat", "echo.v1", "echo.v2"]).await.as_deref(), Some("echo.v1"));
    assert_eq!(protocol(&["echo.v2"]).await.as_deref(), Some("echo.v2"));
    // Nothing in common, or nothing offered: accepted without a subprotocol.
    assert_eq!(protocol(&["other"]).await, None);
    assert_eq!(protocol(&[]).await, None);
    // An app without subprotocols never picks one.
    let c = connect(&url(&gate, "/websocket/echo"), &opts(&["echo.v1"])).await.unwrap();
    assert_eq!(c.protocol(), None);
    drop(c);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn client_errors_are_clear() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    // Not an app URL: the upstream answers 404, the client reports the status.
    let err = connect(&url(&gate, "/nope"), &ConnectOptions::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused { status: 404, .. }), "{err}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    // Refused TCP connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = connect(&format!("ws://{addr}/"), &ConnectOptions::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    // Unresolvable host.
    let err = connect("ws://no-such-host.invalid/", &ConnectOptions::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Dns { .. }), "{err}");
    // Bad scheme.
    assert!(matches!(connect("http://127.0.0.1/", &ConnectOptions::default()).await, Err(ClientError::InvalidUrl(_))));
    // A server that never answers: timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = ConnectOptions { timeout: Duration::from_millis(300), ..ConnectOptions::default() };
    let err = connect(&format!("ws://{}/", silent.local_addr().unwrap()), &opts).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err}");
    gate.server.shutdown().await;
}

/// Opens an RFC 8441 WebSocket over an h2c connection with hyper's HTTP/2 client.
async fn h2_websocket(
    addr: std::net::SocketAddr,
    path: &str,
    extensions: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, Option<hyper::upgrade::Upgraded>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // Give the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) a moment to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13");
    if let Some(ext) = extensions {
        req = req.header("sec-websocket-extensions", ext);
    }
    let mut req = req.body(Empty::<Bytes>::new()).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let upgraded =
        if status == http::StatusCode::OK { Some(hyper::upgrade::on(&mut response).await.unwrap()) } else { None };
    (status, headers, upgraded)
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let (status, headers, upgraded) = h2_websocket(gate.addr, "/websocket/echo", Some("permessage-deflate")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(headers.get("sec-websocket-accept").is_none(), "no accept key over HTTP/2");
    assert_eq!(headers.get("sec-websocket-extensions").unwrap(), "permessage-deflate; server_no_context_takeover");
    let mut io = TokioIo::new(upgraded.unwrap());
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, OpCode::Text, true, false, "over h2 ✓".as_bytes(), Some([5, 6, 7, 8]));
    io.write_all(&frame).await.unwrap();
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
    decoder.set_rsv1_allowed(true);
    let event = loop {
        if let Some(e) = decoder.decode(&mut buf).unwrap() {
            break e;
        }
        let n = tokio::time::timeout(TIMEOUT, io.read_buf(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
    };
    assert_eq!(event, WsIncoming::Text("over h2 ✓".into()));
    // Not an app URL: the extended CONNECT is not served as a WebSocket.
    let (status, _, _) = h2_websocket(gate.addr, "/not-an-app", None).await;
    assert_ne!(status, http::StatusCode::OK);
    drop(io);
    gate.server.shutdown().await;
}

//! The WebSocket server and the echo app over real sockets.

mod common;

use std::time::Duration;

use common::*;
use wsgate::ws::codec::{Incoming as WsIncoming, OpCode};

#[tokio::test]
async fn echo_keeps_text_and_binary_and_reassembles_fragments() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_text("hello ✓").await;
    assert_eq!(ws.next().await, Some(WsIncoming::Text("hello ✓".into())));
    ws.send_frame(OpCode::Binary, true, &[0, 159, 146, 150]).await;
    assert_eq!(ws.next().await, Some(WsIncoming::Binary(vec![0u8, 159, 146, 150].into())));
    // fragmented, with a ping in the middle: the pong comes first, then the whole message
    ws.send_frame(OpCode::Text, false, b"frag").await;
    ws.send_frame(OpCode::Ping, true, b"p!").await;
    ws.send_frame(OpCode::Continuation, false, "men".as_bytes()).await;
    ws.send_frame(OpCode::Continuation, true, "ted ✓".as_bytes()).await;
    assert_eq!(ws.next().await, Some(WsIncoming::Pong("p!".into())));
    assert_eq!(ws.next().await, Some(WsIncoming::Text("fragmented ✓".into())));
    // a message split across a multi-byte character
    let snowman = "☃".as_bytes();
    ws.send_frame(OpCode::Text, false, &snowman[..1]).await;
    ws.send_frame(OpCode::Continuation, true, &snowman[1..]).await;
    assert_eq!(ws.next().await, Some(WsIncoming::Text("☃".into())));
    // 1 MiB binary round trip
    let big: Vec<u8> = (0..(1 << 20) - 16).map(|i| (i % 253) as u8).collect();
    ws.send_frame(OpCode::Binary, true, &big).await;
    assert_eq!(ws.next().await, Some(WsIncoming::Binary(big.into())));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn close_handshake_echoes_the_peer_code_then_closes_tcp() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    let mut payload = 4001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"done");
    ws.send_frame(OpCode::Close, true, &payload).await;
    assert_eq!(ws.expect_close().await, Some(4001));
    ws.expect_eof().await;

    // an empty Close is answered with an empty Close
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_frame(OpCode::Close, true, b"").await;
    assert_eq!(ws.expect_close().await, None);
    ws.expect_eof().await;

    // an invalid close code is a protocol error
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_frame(OpCode::Close, true, &1005u16.to_be_bytes()).await;
    assert_eq!(ws.expect_close().await, Some(1002));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_pinged_then_closed() {
    let up = start_upstream().await;
    let gate =
        start_gate(&basic_config("[websocket]\nping_interval = \"200ms\"\nidle_timeout = \"700ms\"\n"), up.addr).await;
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    // We never answer pings: the server pings, then gives up with 1001.
    let mut pings = 0;
    let code = loop {
        match ws.next().await {
            Some(WsIncoming::Ping(_)) => pings += 1,
            Some(WsIncoming::Close(frame)) => break frame.map(|f| f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pings >= 1, "at least one keepalive ping before the idle close");
    assert_eq!(code, Some(1001));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_text("before").await;
    assert_eq!(ws.next().await, Some(WsIncoming::Text("before".into())));
    let shutdown = tokio::spawn(gate.server.shutdown());
    assert_eq!(ws.expect_close().await, Some(1001));
    // answer the close so the drain completes promptly
    ws.send_frame(OpCode::Close, true, &1001u16.to_be_bytes()).await;
    let finished = tokio::time::timeout(Duration::from_secs(5), shutdown).await.expect("drain finished").unwrap();
    assert!(finished, "drain completed within the shutdown timeout");
    // and nothing listens any more
    assert!(tokio::net::TcpStream::connect(gate.addr).await.is_err());
}

#[tokio::test]
async fn plain_get_on_an_app_url_without_a_page_goes_to_the_upstream() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let resp = raw_request(&mut stream, b"GET /websocket/echo HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(resp.status, 404, "the upstream's answer");
    gate.server.shutdown().await;
}

/// RFC 6455 §4.1: a client may send frames right behind its upgrade request, before it has
/// seen the 101. They arrive in the same read as the request (the bytes the HTTP side read
/// past the head), and the session must take them before anything from the socket — on the
/// fast path and through hyper alike.
#[tokio::test]
async fn frames_sent_right_behind_the_upgrade_request_are_taken_in_order() {
    let up = start_upstream().await;
    for fast_path in [true, false] {
        let config = basic_config("").replace("[upstream]\n", &format!("[upstream]\nfast_path = {fast_path}\n"));
        let gate = start_gate(&config, up.addr).await;
        let big: String = "x".repeat(5000);
        let mut wire = upgrade_request("/websocket/echo", "").into_bytes();
        for (opcode, payload) in
            [(OpCode::Text, "first".as_bytes()), (OpCode::Ping, b"p"), (OpCode::Text, big.as_bytes())]
        {
            let mut frame = bytes::BytesMut::new();
            wsgate::ws::codec::encode_frame(&mut frame, opcode, true, false, payload, Some([9, 8, 7, 6]));
            wire.extend_from_slice(&frame);
        }
        let mut stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        let response = raw_request(&mut stream, &wire).await;
        assert_eq!(response.status, 101, "fast_path={fast_path}: {}", response.head);
        let mut ws = WsClient::from_parts(stream, response.rest);
        assert_eq!(ws.next().await, Some(WsIncoming::Text("first".into())), "fast_path={fast_path}");
        assert_eq!(ws.next().await, Some(WsIncoming::Pong("p".into())), "fast_path={fast_path}");
        assert_eq!(ws.next().await, Some(WsIncoming::Text(big.clone().into())), "fast_path={fast_path}");
        // and the socket itself afterwards
        ws.send_text("after").await;
        assert_eq!(ws.next().await, Some(WsIncoming::Text("after".into())), "fast_path={fast_path}");
        gate.server.shutdown().await;
    }
}

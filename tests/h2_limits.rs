//! HTTP/2 connection limits (issue 15): the idle timeout (`limits.header_read_timeout`) for
//! connections with nothing in flight, and GOAWAY for connections whose streams are mostly
//! cancelled by the client, with the upstream side bounded. Real sockets on loopback, the
//! `h2` crate as a raw client.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::start_gate;
use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use wsgate::ws::codec::{encode_frame, OpCode};

/// An HTTP/1.1 upstream on raw TCP that counts the connections it accepts. Keep-alive;
/// `GET /delay/MS` answers `ok` after MS ms, `GET /slowbody/MS` sends its head at once and
/// its ten body bytes over MS ms.
struct SlowUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

async fn start_slow_upstream() -> SlowUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_slow(stream));
        }
    });
    SlowUpstream { addr, accepts }
}

async fn serve_slow(mut stream: TcpStream) {
    let mut buf = BytesMut::new();
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let _ = buf.split_to(head_end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let ms = |prefix: &str| path.strip_prefix(prefix).and_then(|ms| ms.parse::<u64>().ok());
        if let Some(ms) = ms("/slowbody/") {
            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n").await.is_err() {
                return;
            }
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(ms / 10)).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(ms("/delay/").unwrap_or(0))).await;
            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
    }
}

fn config() -> String {
    r#"
[upstream]
url = "{UPSTREAM}"
connect_timeout = "1s"
response_timeout = "5s"

[[listen]]
addr = "127.0.0.1:0"

[limits]
header_read_timeout = "1s"

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
"#
    .to_owned()
}

/// An HTTP/2 (prior knowledge) client connection: its handle, its PING handle, and the task
/// driving it (ends when the server closes the connection).
async fn h2_connect(
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, h2::PingPong, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let ping_pong = connection.ping_pong().expect("ping handle");
    (send, ping_pong, tokio::spawn(connection))
}

fn get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("http://{addr}{path}")).body(()).unwrap()
}

/// Sends a GET and reads the whole answer: (status, body).
async fn fetch(send: &mut h2::client::SendRequest<Bytes>, addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let ready = send.clone().ready().await.expect("connection open");
    *send = ready;
    let (response, _) = send.send_request(get(addr, path), true).expect("request sent");
    let response = response.await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, bytes.freeze())
}

#[tokio::test]
async fn h2_connection_that_only_pings_is_closed_when_idle() {
    let upstream = start_slow_upstream().await;
    let gate = start_gate(&config(), upstream.addr).await;

    // Only PINGs: GOAWAY and close after the idle timeout (1 s).
    let started = Instant::now();
    let (_send, mut ping_pong, connection) = h2_connect(gate.addr).await;
    let pinger = tokio::spawn(async move {
        while ping_pong.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    let elapsed = started.elapsed();
    assert!(ended.is_ok(), "a connection that only pings stays open");
    assert!(elapsed >= Duration::from_millis(900), "closed before the idle timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
    pinger.abort();

    // A request in flight for longer than the idle timeout is not cut, and neither is a
    // response body that streams for longer than it.
    let (mut send, _ping, connection) = h2_connect(gate.addr).await;
    let (status, body) = fetch(&mut send, gate.addr, "/delay/2500").await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    let (status, body) = fetch(&mut send, gate.addr, "/slowbody/2500").await;
    assert_eq!((status, body.len()), (200, 10));
    assert!(!connection.is_finished(), "closed with a request in flight");
    // Then idle: closed about one timeout later.
    let ended = tokio::time::timeout(Duration::from_secs(4), connection).await;
    assert!(ended.is_ok(), "not closed once idle");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn h2_websocket_keeps_the_connection_from_idling() {
    let upstream = start_slow_upstream().await;
    let gate = start_gate(&config(), upstream.addr).await;
    let (send, _ping, connection) = h2_connect(gate.addr).await;
    let mut send = send.ready().await.expect("connection open");
    // The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) arrive right after the handshake.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !send.is_extended_connect_protocol_enabled() {
        assert!(Instant::now() < deadline, "no SETTINGS_ENABLE_CONNECT_PROTOCOL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{}/websocket/echo", gate.addr))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    request.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
    let (response, mut outgoing) = send.send_request(request, false).expect("CONNECT sent");
    let response =
        tokio::time::timeout(Duration::from_secs(5), response).await.expect("answer in time").expect("answer");
    assert_eq!(response.status(), 200);
    let mut incoming = response.into_body();

    // Quiet for more than twice the idle timeout: the WebSocket keeps the connection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!connection.is_finished(), "a connection with an open WebSocket was closed as idle");
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, OpCode::Text, true, false, b"still-here", Some([1, 2, 3, 4]));
    outgoing.send_data(frame.freeze(), false).expect("frame sent");
    let mut echoed = BytesMut::new();
    while !echoed.windows(10).any(|w| w == b"still-here") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), incoming.data()).await.expect("echo in time");
        let chunk = chunk.expect("stream open").expect("data");
        let _ = incoming.flow_control().release_capacity(chunk.len());
        echoed.extend_from_slice(&chunk);
    }
    gate.server.shutdown().await;
}

#[tokio::test]
async fn h2_reset_storm_gets_goaway() {
    let upstream = start_slow_upstream().await;
    let gate = start_gate(&config(), upstream.addr).await;
    let (mut send, _ping, connection) = h2_connect(gate.addr).await;
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..300 {
        if connection.is_finished() {
            break;
        }
        send = match send.ready().await {
            Ok(send) => send,
            Err(_) => break,
        };
        let Ok((response, _)) = send.send_request(get(gate.addr, "/delay/300"), true) else { break };
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Dropping the response future resets the stream (RST_STREAM CANCEL).
        drop(response);
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the connection was not closed after {sent} resets");
    assert!(sent < 300, "no GOAWAY during 300 resets");
    assert!(sent > 100, "GOAWAY before the limit: after {sent} streams");
    assert!(started.elapsed() < Duration::from_secs(12));
    // The cancelled exchanges finished upstream and their connections went back to the pool:
    // about as many connections as were in flight at once (300 ms / 20 ms), not one per reset.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepts = upstream.accepts.load(Ordering::SeqCst);
    eprintln!("reset storm: {sent} streams, {accepts} upstream connections");
    assert!(accepts <= 50, "{accepts} upstream connections for {sent} cancelled streams");
    gate.server.shutdown().await;
}

#[tokio::test]
async fn normal_h2_traffic_is_not_affected() {
    let upstream = start_slow_upstream().await;
    let gate = start_gate(&config(), upstream.addr).await;
    let (mut send, _ping, connection) = h2_connect(gate.addr).await;
    for _ in 0..200 {
        let (status, body) = fetch(&mut send, gate.addr, "/delay/0").await;
        assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    }
    // Some cancels among mostly completed streams (a browser aborting fetches) are fine.
    for _ in 0..120 {
        send = send.ready().await.expect("connection open");
        let (response, _) = send.send_request(get(gate.addr, "/delay/300"), true).expect("request sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(response);
    }
    let (status, _) = fetch(&mut send, gate.addr, "/delay/0").await;
    assert_eq!(status, 200);
    assert!(!connection.is_finished(), "a well-behaved connection was closed");
    let accepts = upstream.accepts.load(Ordering::SeqCst);
    assert!(accepts <= 40, "{accepts} upstream connections");
    gate.server.shutdown().await;
}

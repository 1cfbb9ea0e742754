//! The HTTP/1.1 proxy fast path (requests without a body or with a small one forwarded byte
//! for byte in the client connection's task) on real sockets: upstream connection reuse,
//! pipelining, small request bodies, every response framing, interim responses, a stale
//! kept-alive upstream connection, failures, and the hand-over to hyper in the middle of a
//! connection (chunked or late request body, WebSocket upgrade).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{basic_config, raw_request, start_gate, start_upstream, upgrade_request, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads exactly `n` body bytes after a head (`rest` holds what came with it).
async fn read_exact_body(stream: &mut TcpStream, mut rest: BytesMut, n: usize) -> Vec<u8> {
    while rest.len() < n {
        let got = tokio::time::timeout(TIMEOUT, stream.read_buf(&mut rest)).await.expect("body in time").unwrap();
        assert!(got > 0, "closed after {} of {n} body bytes", rest.len());
    }
    assert_eq!(rest.len(), n, "nothing beyond the body");
    rest.to_vec()
}

/// Reads until the peer closes.
async fn read_to_close(stream: &mut TcpStream, mut rest: BytesMut) -> Vec<u8> {
    loop {
        let got = tokio::time::timeout(TIMEOUT, stream.read_buf(&mut rest)).await.expect("close in time");
        match got {
            Ok(0) | Err(_) => return rest.to_vec(),
            Ok(_) => {}
        }
    }
}

/// A scripted upstream: for each request it reads, `answer(index of the request on this
/// connection, the head followed by its `Content-Length` body)` gives the bytes to send and
/// whether to close afterwards. Returns its address and the count of connections it accepted.
async fn scripted_upstream<F>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, &str) -> (Vec<u8>, bool) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                for index in 0.. {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match stream.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    };
                    let mut head = String::from_utf8_lossy(&buf.split_to(end)).into_owned();
                    let length = head
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < length {
                        match stream.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                    head.push_str(&String::from_utf8_lossy(&buf.split_to(length)));
                    let (bytes, close) = answer(index, &head);
                    if stream.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

const GET: &[u8] = b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_client_connection_reuses_one_upstream_connection() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    for round in 0..20 {
        let response =
            raw_request(&mut client, format!("GET /echo?round={round} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-upstream-path").as_deref(), Some(&*format!("/echo?round={round}")));
        assert_eq!(response.header("via").as_deref(), Some("1.1 wsgate"));
        let length: usize = response.header("content-length").unwrap().parse().unwrap();
        read_exact_body(&mut client, response.rest, length).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one upstream connection for 20 requests");
    // A second client connection takes the idle upstream connection once the first is gone.
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = TcpStream::connect(gate.addr).await.unwrap();
    assert_eq!(raw_request(&mut second, GET).await.status, 200);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "the idle upstream connection was reused");
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    let pipelined: Vec<u8> =
        (0..3).flat_map(|i| format!("GET /echo?n={i} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()).collect();
    client.write_all(&pipelined).await.unwrap();
    let mut carry = BytesMut::new();
    for i in 0..3 {
        // Each response is a head and an empty body (`content-length: 0`).
        let mut buf = carry.split();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(tokio::time::timeout(TIMEOUT, client.read_buf(&mut buf)).await.unwrap().unwrap() > 0);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains(&format!("x-upstream-path: /echo?n={i}")), "in order: {head}");
        carry = buf.split_off(end);
    }
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_interim_head_and_close_delimited_responses_pass_through() {
    let (upstream, accepted) = scripted_upstream(|_, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        match path.as_str() {
            "/chunked" => (
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n".to_vec(),
                false,
            ),
            "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec(), false),
            "/304" => (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(), false),
            "/until-close" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it".to_vec(), true),
            _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(), false),
        }
    })
    .await;
    let gate = start_gate(&basic_config(""), upstream).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();

    let response = raw_request(&mut client, b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 200, "the 103 is dropped: {}", response.head);
    assert_eq!(response.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(response.header("trailer").as_deref(), Some("x-sum"));
    let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
    assert_eq!(read_exact_body(&mut client, response.rest, wire.len()).await, wire, "chunks and trailer as sent");

    let response = raw_request(&mut client, b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!((response.status, response.header("content-length").as_deref()), (200, Some("5000")));
    assert!(response.rest.is_empty(), "no body after a HEAD");
    let response = raw_request(&mut client, b"GET /304 HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 304);
    assert!(response.rest.is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the upstream connection carried all three");

    // A body delimited by the upstream's close: passed on, then the client connection closes.
    let response = raw_request(&mut client, b"GET /until-close HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    assert_eq!(read_to_close(&mut client, response.rest).await, b"all of it");
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_upstream_connection_is_not_reused() {
    // The upstream closes every connection after its first answer without saying so, like
    // an upstream whose keep-alive timeout fires just as the next request is sent.
    let (upstream, accepted) =
        scripted_upstream(|_, _| (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), true)).await;
    let gate = start_gate(&basic_config(""), upstream).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    for round in 0..3 {
        let response = raw_request(&mut client, GET).await;
        assert_eq!(response.status, 200, "round {round}: {}", response.head);
        assert_eq!(read_exact_body(&mut client, response.rest, 2).await, b"ok");
        // Let the upstream's close arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // A held connection whose close has arrived is not used at all: a POST (which is never
    // sent twice) goes out on a new connection.
    let response = raw_request(&mut client, b"POST /p HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(read_exact_body(&mut client, response.rest, 2).await, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    gate.server.shutdown().await;
}

/// Reads `n` responses without bodies (`Content-Length: 0`) and returns their heads.
async fn read_heads(client: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = BytesMut::new();
    let mut heads = Vec::new();
    while heads.len() < n {
        match buf.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => heads.push(String::from_utf8_lossy(&buf.split_to(end + 4)).into_owned()),
            None => {
                assert!(tokio::time::timeout(TIMEOUT, client.read_buf(&mut buf)).await.expect("in time").unwrap() > 0)
            }
        }
    }
    heads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_request_bodies_are_sent_with_their_head() {
    // The upstream reports the body it got in a header whose name keeps its case only on the
    // fast path (hyper writes header names in lower case).
    let (upstream, accepted) = scripted_upstream(|_, request| {
        let body = request.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let start: String = body.chars().take(8).collect();
        (format!("HTTP/1.1 200 OK\r\nX-Body: {} {start}\r\nContent-Length: 0\r\n\r\n", body.len()).into_bytes(), false)
    })
    .await;
    let gate = start_gate(&basic_config("[limits]\nheader_read_timeout = \"1s\"\n"), upstream).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    // A body behind its head in one segment, with a GET pipelined behind the body.
    client
        .write_all(
            b"POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let heads = read_heads(&mut client, 2).await;
    assert!(heads[0].contains("\r\nX-Body: 5 hello\r\n"), "{}", heads[0]);
    assert!(heads[1].contains("\r\nX-Body: 0\r\n"), "the GET after the body: {}", heads[1]);
    // A body in pieces (in time), and one of the largest size the fast path takes.
    client.write_all(b"PUT /p HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.write_all(b"def").await.unwrap();
    assert!(read_heads(&mut client, 1).await[0].contains("\r\nX-Body: 6 abcdef\r\n"));
    let big = wsgate::proxy::h1::MAX_FAST_BODY;
    let request = format!("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {big}\r\n\r\n{}", "y".repeat(big));
    client.write_all(request.as_bytes()).await.unwrap();
    assert!(read_heads(&mut client, 1).await[0].contains(&format!("\r\nX-Body: {big} yyyyyyyy\r\n")));
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "all on the connection the client connection keeps");

    // A body still incomplete at the header deadline goes to hyper with what came, and
    // hyper serves it when the rest arrives.
    let mut late = TcpStream::connect(gate.addr).await.unwrap();
    late.write_all(b"POST /late HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    late.write_all(b"cd").await.unwrap();
    let head = &read_heads(&mut late, 1).await[0];
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("\r\nx-body: 4 abcd\r\n"), "served by hyper: {head}");
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_to_an_upstream_close_is_sent_again_only_when_idempotent() {
    // The upstream answers the first request of each connection and closes the connection
    // on the second without answering: the close races with the request.
    let (upstream, accepted) = scripted_upstream(|index, _| match index {
        0 => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false),
        _ => (Vec::new(), true),
    })
    .await;
    let gate = start_gate(&basic_config(""), upstream).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    assert_eq!(raw_request(&mut client, GET).await.status, 200);
    let response = raw_request(&mut client, GET).await;
    assert_eq!(response.status, 200, "the GET was sent again on a new connection: {}", response.head);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let _ = tokio::time::timeout(Duration::from_millis(100), client.read(&mut [0u8; 2])).await;
    // The POST is lost with the connection: answered 502, not sent twice.
    let response = raw_request(&mut client, b"POST /p HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 502, "{}", response.head);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "no second attempt");
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_answered_like_the_full_path() {
    // Refused: nothing listens on the port.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let gate = start_gate(&basic_config(""), port).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    let response = raw_request(&mut client, GET).await;
    assert_eq!(response.status, 502);
    assert_eq!(response.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    let length: usize = response.header("content-length").unwrap().parse().unwrap();
    let body = read_exact_body(&mut client, response.rest, length).await;
    assert_eq!(body, b"502 Bad Gateway: upstream refused the connection\n");
    // The client connection goes on after our answer.
    assert_eq!(raw_request(&mut client, GET).await.status, 502);
    gate.server.shutdown().await;

    // A response head that never comes: 504 after response_timeout (2 s in basic_config).
    let (silent, _) = scripted_upstream(|_, _| (Vec::new(), false)).await;
    let gate = start_gate(&basic_config(""), silent).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    assert_eq!(raw_request(&mut client, GET).await.status, 504);
    gate.server.shutdown().await;

    // Garbage, and a body shorter than its Content-Length (the client connection is closed).
    let (bad, _) = scripted_upstream(|i, head| {
        if head.contains("/short") {
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(), true);
        }
        let _ = i;
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc".to_vec(), true)
    })
    .await;
    let gate = start_gate(&basic_config(""), bad).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    assert_eq!(raw_request(&mut client, GET).await.status, 502);
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    let response = raw_request(&mut client, b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(response.status, 200);
    let body = read_to_close(&mut client, response.rest).await;
    assert_eq!(body, b"only this", "cut short, then closed");
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_hyper_for_a_body_and_an_upgrade() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    // Fast path first.
    let response = raw_request(&mut client, GET).await;
    assert_eq!(response.status, 200);
    // A body larger than the fast path takes: hyper from here on, on the same connection.
    let big = wsgate::proxy::h1::MAX_FAST_BODY + 1;
    let request = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {big}\r\n\r\n{}", "z".repeat(big));
    let response = raw_request(&mut client, request.as_bytes()).await;
    assert_eq!(response.status, 200);
    assert_eq!(read_exact_body(&mut client, response.rest, big).await, "z".repeat(big).as_bytes());
    let response = raw_request(&mut client, GET).await;
    assert_eq!(response.status, 200);

    // Now served by hyper: a WebSocket upgrade there too (hyper hands the connection over;
    // the session still gets the plain TCP stream underneath).
    let response = raw_request(&mut client, upgrade_request("/websocket/echo", "").as_bytes()).await;
    assert_eq!(response.status, 101, "{}", response.head);
    let mut ws = common::WsClient::from_parts(client, response.rest);
    ws.send_text("through hyper").await;
    assert!(matches!(ws.next().await, Some(wsgate::ws::codec::Incoming::Text(t)) if &t[..] == b"through hyper"));

    // Fast-path requests, then a WebSocket upgrade to the echo app on the same connection.
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    for _ in 0..2 {
        assert_eq!(raw_request(&mut client, GET).await.status, 200);
    }
    let response = raw_request(&mut client, upgrade_request("/websocket/echo", "").as_bytes()).await;
    assert_eq!(response.status, 101, "{}", response.head);
    let mut ws = common::WsClient::from_parts(client, response.rest);
    ws.send_text("after fast requests").await;
    assert!(matches!(ws.next().await, Some(wsgate::ws::codec::Incoming::Text(t)) if &t[..] == b"after fast requests"));
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_header_deadline() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[limits]\nheader_read_timeout = \"1s\"\n"), up.addr).await;
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    assert_eq!(raw_request(&mut client, GET).await.status, 200);
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(TIMEOUT, client.read(&mut byte)).await.expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the deadline");
    gate.server.shutdown().await;
}

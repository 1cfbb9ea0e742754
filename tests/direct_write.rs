//! The direct-write path (deliveries written to a subscriber's socket by the delivering task,
//! src/ws/direct.rs) over real sockets: under concurrent publishers, app replies and Pongs,
//! with a subscriber that stops reading (so direct writes go partial or would block), with
//! permessage-deflate subscribers and a TLS subscriber (which keeps the queued path), every
//! subscriber gets every message exactly once, whole, in each publisher's order; and nothing
//! ever follows a Close.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wsgate::ws::codec::{encode_frame, Decoder, DecoderConfig, Incoming as WsIncoming, OpCode, Role};
use wsgate::ws::deflate::{DeflateParams, Inflater};

const CONFIG: &str = r#"
[upstream]
url = "{UPSTREAM}"

[[listen]]
addr = "127.0.0.1:0"

[[listen]]
addr = "127.0.0.1:0"
tls = { cert = "{CERT}", key = "{KEY}" }

[admin]
addr = "127.0.0.1:0"

[websocket]
send_queue = "64MiB"
ping_interval = "10m"
idle_timeout = "20m"

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
"#;

/// The gate with a plain and a TLS listener; the temp dir holds the certificate.
async fn start() -> (Gate, tempfile::TempDir) {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let toml = CONFIG.replace("{CERT}", cert.to_str().unwrap()).replace("{KEY}", key.to_str().unwrap());
    (start_gate(&toml, up.addr).await, dir)
}

/// One control API request on a keep-alive connection; the status and body.
async fn admin(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> (u16, String) {
    // A keep-alive connection takes the next request once the last answer is read.
    tokio::time::timeout(TIMEOUT, sender.ready()).await.expect("admin connection ready").unwrap();
    let req =
        http::Request::builder().method(method).uri(path).header("host", "localhost").body(Full::new(body)).unwrap();
    let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req)).await.expect("admin answered in time").unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn admin_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Channel ids by client address, once `n` channels are listed.
async fn channel_ids(admin_addr: SocketAddr, n: usize) -> HashMap<SocketAddr, String> {
    let mut sender = admin_conn(admin_addr).await;
    let mut listed = 0;
    for _ in 0..500 {
        let (status, body) = admin(&mut sender, "GET", "/v1/channels", Bytes::new()).await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ids: HashMap<SocketAddr, String> = json["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["peer"].as_str().unwrap().parse().unwrap(), c["id"].as_str().unwrap().to_owned()))
            .collect();
        if ids.len() == n {
            return ids;
        }
        listed = ids.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the channels were not all listed: {listed} of {n}");
}

/// Upgrades `io` at the echo URL (offering permessage-deflate when asked); the bytes read
/// past the 101 and whether deflate was accepted.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, deflate: bool) -> (BytesMut, bool) {
    let extra = if deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
    let (head, rest) = common::upgrade_over(io, "/websocket/echo", extra).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let accepted = head.contains("sec-websocket-extensions: permessage-deflate");
    assert_eq!(accepted, deflate, "deflate negotiated as offered: {head}");
    (rest, accepted)
}

/// Reads server frames, inflating compressed messages (RFC 7692 §7.2.2).
struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    decoder: Decoder,
    deflate: bool,
    compressed_seen: usize,
    /// Read at most 2 KiB at a time with a pause after each read (a slow reader).
    trickle: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(io: R, buf: BytesMut, deflate: bool) -> Self {
        let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
        decoder.set_rsv1_allowed(deflate);
        Self { io, buf, decoder, deflate, compressed_seen: 0, trickle: false }
    }

    /// The next event (a text payload inflated if it came compressed); `None` on EOF. Panics
    /// on a malformed frame: two frames interleaved would make one.
    async fn next(&mut self, within: Duration) -> Option<WsIncoming> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(WsIncoming::Text(data))) if self.decoder.last_compressed() => {
                    assert!(self.deflate, "a compressed frame on a connection without deflate");
                    self.compressed_seen += 1;
                    // The server always imposes server_no_context_takeover.
                    let params = DeflateParams {
                        own_window_bits: 15,
                        own_no_context_takeover: true,
                        peer_no_context_takeover: true,
                    };
                    let plain = Inflater::new(&params, 1 << 20).inflate(&data).expect("a valid compressed message");
                    return Some(WsIncoming::Text(plain));
                }
                Ok(Some(event)) => return Some(event),
                Ok(None) => {}
                Err(e) => panic!("the server sent a malformed frame: {e}"),
            }
            if self.trickle {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let n = tokio::time::timeout(within, (&mut self.io).take(2048).read_buf(&mut self.buf))
                    .await
                    .expect("server frames in time")
                    .ok()?;
                if n == 0 {
                    return None;
                }
                continue;
            }
            let n = tokio::time::timeout(within, self.io.read_buf(&mut self.buf))
                .await
                .expect("server frames in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }
}

async fn send_frame<W: AsyncWrite + Unpin>(io: &mut W, opcode: OpCode, payload: &[u8]) {
    let mut out = BytesMut::new();
    encode_frame(&mut out, opcode, true, false, payload, Some([7, 1, 3, 5]));
    io.write_all(&out).await.unwrap();
}

/// The text publisher `p` sends as its message `seq`: sizes from 30 bytes to about 6 KiB, so
/// direct writes to a full socket go partial at every offset, with content a broken or
/// misplaced piece would change.
fn published(p: usize, seq: usize) -> String {
    let len = 30 + (seq * 997 + p * 331) % 6000;
    let mut text = format!("p{p}:{seq}:");
    let fill = (b'a' + ((p * 7 + seq) % 26) as u8) as char;
    text.extend(std::iter::repeat_n(fill, len));
    text
}

fn parse_published(text: &str) -> Option<(usize, usize)> {
    let rest = text.strip_prefix('p')?;
    let mut parts = rest.splitn(3, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 200;
const ECHOES: usize = 40;
const PINGS: usize = 10;

/// One subscriber: sends `ECHOES` texts to the echo app and `PINGS` pings while reading; checks
/// that every published message arrives once, whole and in order per publisher, and the echo
/// replies and Pongs in order. `stall` delays its first read (its socket fills up), and a
/// stalled subscriber then reads slowly, so its socket keeps filling while deliveries come.
async fn subscriber<S>(
    io: S,
    rest: BytesMut,
    deflate: bool,
    stall: Duration,
    go: Arc<tokio::sync::Barrier>,
) -> (usize, usize)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        go.wait().await;
        for j in 0..ECHOES {
            send_frame(&mut write, OpCode::Text, format!("echo:{j}").as_bytes()).await;
            if j % (ECHOES / PINGS) == 0 {
                send_frame(&mut write, OpCode::Ping, format!("ping:{}", j / (ECHOES / PINGS)).as_bytes()).await;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        write
    });
    tokio::time::sleep(stall).await;
    let mut reader = FrameReader::new(read, rest, deflate);
    reader.trickle = !stall.is_zero();
    let mut next_seq = [0usize; PUBLISHERS];
    let (mut echoes, mut pongs, mut published_seen) = (0, 0, 0);
    while published_seen < PUBLISHERS * PER_PUBLISHER || echoes < ECHOES || pongs < PINGS {
        match reader.next(Duration::from_secs(30)).await {
            Some(WsIncoming::Text(data)) => {
                let text = std::str::from_utf8(&data).expect("UTF-8 text");
                if let Some(j) = text.strip_prefix("echo:") {
                    assert_eq!(j.parse::<usize>().unwrap(), echoes, "echo replies in order");
                    echoes += 1;
                    continue;
                }
                let (p, seq) = parse_published(text)
                    .unwrap_or_else(|| panic!("unexpected text {:?}", &text[..text.len().min(40)]));
                assert_eq!(seq, next_seq[p], "publisher {p}: every message once, in order");
                assert!(text == published(p, seq), "publisher {p} message {seq} arrived intact");
                next_seq[p] += 1;
                published_seen += 1;
            }
            Some(WsIncoming::Pong(payload)) => {
                assert_eq!(&payload[..], format!("ping:{pongs}").as_bytes(), "Pongs in order");
                pongs += 1;
            }
            other => panic!("unexpected event {other:?} after {published_seen} messages"),
        }
    }
    let _ = writer.await.unwrap();
    (published_seen, reader.compressed_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_app_replies_and_pongs_never_interleave() {
    let (gate, _dir) = start().await;
    let admin_addr = gate.server.admin_addr().unwrap();
    let tls_addr = gate.server.listeners()[1].addr;
    // 8 plain subscribers (half with deflate), 2 slow ones with a tiny receive buffer, 1
    // over TLS (the queued path, alongside).
    const PLAIN: usize = 8;
    let total = PLAIN + 3;
    let go = Arc::new(tokio::sync::Barrier::new(total + 1));
    let mut tasks = Vec::new();
    let mut peers = Vec::new();
    for i in 0..PLAIN {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        peers.push(stream.local_addr().unwrap());
        let deflate = i % 2 == 1;
        let (rest, _) = upgrade(&mut stream, deflate).await;
        tasks.push((deflate, Box::pin(subscriber(stream, rest, deflate, Duration::ZERO, go.clone()))));
    }
    // Slow ones: a small receive window, no reading for a while, then slow reading while
    // more is published, so the server's socket keeps filling and direct writes go partial
    // or would block while the session's writer has bytes in flight.
    for deflate in [false, true] {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut slow = socket.connect(gate.addr).await.unwrap();
        peers.push(slow.local_addr().unwrap());
        let (rest, _) = upgrade(&mut slow, deflate).await;
        tasks.push((deflate, Box::pin(subscriber(slow, rest, deflate, Duration::from_millis(300), go.clone()))));
    }
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    peers.push(tcp.local_addr().unwrap());
    let (tls_config, _) = trusting_client_config();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (rest, _) = upgrade(&mut tls, true).await;
    // Boxed as the others: one type for the list.
    let tls_task: std::pin::Pin<Box<dyn std::future::Future<Output = (usize, usize)> + Send>> =
        Box::pin(subscriber(tls, rest, true, Duration::ZERO, go.clone()));

    let ids = channel_ids(admin_addr, total).await;
    let mut control = admin_conn(admin_addr).await;
    for peer in &peers {
        let (status, body) =
            admin(&mut control, "PUT", &format!("/v1/channels/{}/subscriptions/t", ids[peer]), Bytes::new()).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut running = Vec::new();
    for (deflate, task) in tasks {
        running.push((deflate, tokio::spawn(task)));
    }
    running.push((true, tokio::spawn(tls_task)));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let go = go.clone();
            tokio::spawn(async move {
                let mut sender = admin_conn(admin_addr).await;
                if p == 0 {
                    go.wait().await;
                }
                for seq in 0..PER_PUBLISHER {
                    let (status, body) =
                        admin(&mut sender, "POST", "/v1/subscriptions/t/publish", Bytes::from(published(p, seq))).await;
                    assert_eq!((status, body.trim()), (200, format!("{{\"delivered\":{total}}}").as_str()));
                    // Pauses now and then: a fan-out after a pause writes directly, one in a
                    // burst queues (src/pubsub/burst.rs); both, and the switches between them.
                    if (seq + p) % 3 == 0 {
                        tokio::time::sleep(Duration::from_millis(2 + (seq % 4) as u64)).await;
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut compressed = 0;
    for (deflate, task) in running {
        let (seen, compressed_here) =
            tokio::time::timeout(Duration::from_secs(45), task).await.expect("subscriber done in time").unwrap();
        assert_eq!(seen, PUBLISHERS * PER_PUBLISHER);
        assert_eq!(compressed_here > 0, deflate, "deflate subscribers get compressed frames, the others plain ones");
        compressed += compressed_here;
    }
    assert!(compressed > 0);
    gate.server.shutdown().await;
}

/// Reads everything until EOF; the frames in order, and the bytes left after the last whole
/// frame (must be none).
async fn read_to_eof(mut stream: TcpStream, mut buf: BytesMut) -> (Vec<WsIncoming>, usize) {
    loop {
        let n = tokio::time::timeout(TIMEOUT, stream.read_buf(&mut buf)).await.expect("EOF in time").unwrap_or(0);
        if n == 0 {
            break;
        }
    }
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
    let mut events = Vec::new();
    while let Some(event) = decoder.decode(&mut buf).expect("well-formed frames") {
        events.push(event);
    }
    (events, buf.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_follows_a_close_while_deliveries_keep_coming() {
    let (gate, _dir) = start().await;
    let admin_addr = gate.server.admin_addr().unwrap();
    for round in 0..4 {
        // Even subscribers are closed by the control API, odd ones close themselves.
        const N: usize = 6;
        let mut subs = Vec::new();
        for _ in 0..N {
            let mut stream = TcpStream::connect(gate.addr).await.unwrap();
            let (rest, _) = upgrade(&mut stream, false).await;
            subs.push((stream.local_addr().unwrap(), stream, rest));
        }
        let ids = channel_ids(admin_addr, N).await;
        let mut control = admin_conn(admin_addr).await;
        for (peer, _, _) in &subs {
            let (status, _) =
                admin(&mut control, "PUT", &format!("/v1/channels/{}/subscriptions/c{round}", ids[peer]), Bytes::new())
                    .await;
            assert_eq!(status, 200);
        }
        // Two publishers keep publishing until nobody is subscribed any more.
        let publishers: Vec<_> = (0..2)
            .map(|p| {
                tokio::spawn(async move {
                    let mut sender = admin_conn(admin_addr).await;
                    for seq in 0.. {
                        let path = format!("/v1/subscriptions/c{round}/publish");
                        let (status, body) = admin(&mut sender, "POST", &path, Bytes::from(published(p, seq))).await;
                        assert_eq!(status, 200, "{body}");
                        if body.contains("\"delivered\":0") {
                            return seq;
                        }
                        // Some fan-outs after a pause (direct writes), some in a burst (queued).
                        if seq % 3 == p {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100 + 20 * round)).await;
        let mut readers = Vec::new();
        for (i, (peer, mut stream, rest)) in subs.into_iter().enumerate() {
            if i % 2 == 0 {
                let (status, _) = admin(
                    &mut control,
                    "DELETE",
                    &format!("/v1/channels/{}?code=4000&reason=bye", ids[&peer]),
                    Bytes::new(),
                )
                .await;
                assert_eq!(status, 202);
            } else {
                let mut out = BytesMut::new();
                encode_frame(&mut out, OpCode::Close, true, false, &[0x0f, 0xa1], Some([1, 2, 3, 4]));
                stream.write_all(&out).await.unwrap();
            }
            readers.push(tokio::spawn(read_to_eof(stream, rest)));
        }
        for (i, reader) in readers.into_iter().enumerate() {
            let (events, leftover) = reader.await.unwrap();
            assert_eq!(leftover, 0, "round {round} subscriber {i}: no partial frame at the end");
            let Some((WsIncoming::Close(close), before)) = events.split_last() else {
                panic!("round {round} subscriber {i}: no Close last: {:?}", events.last())
            };
            let expected = if i % 2 == 0 { 4000 } else { 4001 };
            assert_eq!(close.as_ref().map(|c| c.code), Some(expected), "round {round} subscriber {i}");
            let mut next_seq = [0usize; 2];
            for event in before {
                let WsIncoming::Text(data) = event else {
                    panic!("round {round} subscriber {i}: {event:?} before the Close")
                };
                let text = std::str::from_utf8(data).unwrap();
                let (p, seq) = parse_published(text).unwrap();
                assert_eq!(seq, next_seq[p]);
                assert!(text == published(p, seq));
                next_seq[p] += 1;
            }
        }
        for publisher in publishers {
            tokio::time::timeout(Duration::from_secs(20), publisher).await.expect("publishers stop").unwrap();
        }
    }
    gate.server.shutdown().await;
}

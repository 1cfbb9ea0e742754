//! The one real HTTP/1.1 upstream the tests put behind wsgate (hyper, on 127.0.0.1 port 0), and
//! upstreams that misbehave on purpose. Routes of [`start_upstream`]:
//! - `/echo`: 200 with the request body streamed back, `x-upstream-method` (also `x-method`)
//!   and `x-upstream-path` (path and query) headers;
//! - `/headers`: the request headers, one `name: value` per line, answered with hop-by-hop fields;
//! - `/hop`: an answer carrying hop-by-hop fields and a field its `Connection` names;
//! - `/slow`: answers after 5 s;
//! - `/big?n=BYTES`: BYTES bytes of a repeating pattern, streamed through a channel;
//! - `/big/N`: N bytes of [`pattern`], generated lazily ([`Generated`]);
//! - `/count`: reads the whole request body and answers its length;
//! - `/upgrade`: accepts `Upgrade: websocket`, then echoes WebSocket messages prefixed with
//!   `upstream:` (server role);
//! - anything else: 404 `no such page` ([`start_upstream`]), or, from [`start_dump_upstream`]
//!   (the proxy module's tests), 200 with a text dump of the request line and headers, and for
//!   a request with `Upgrade`, 101 with the same protocol and then a raw byte echo.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsgate::ws::codec::{encode_frame, Decoder, DecoderConfig, Incoming as WsIncoming, OpCode, Role};

/// The body type of the upstream's answers and of the tests' own requests.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running upstream: its address and how many connections it accepted.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// What the upstream answers on a path it has no route for.
#[derive(Debug, Clone, Copy)]
enum Fallback {
    NotFound,
    Dump,
}

/// Starts the upstream whose routes the module documentation lists (404 off its routes).
pub async fn start_upstream() -> Upstream {
    start(Fallback::NotFound).await
}

/// The same upstream answering every other path with a dump of the request (and tunnelling
/// any other upgrade as a byte echo).
pub async fn start_dump_upstream() -> Upstream {
    start(Fallback::Dump).await
}

async fn start(fallback: Fallback) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(move |req| upstream_service(req, fallback)))
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, connections }
}

/// A body of `b`.
pub fn body_of(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn upstream_service(req: Request<Incoming>, fallback: Fallback) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/upgrade" {
        return Ok(websocket_echo(req));
    }
    if req.headers().contains_key("upgrade") && matches!(fallback, Fallback::Dump) {
        return Ok(byte_echo(req));
    }
    let response = match path.as_str() {
        "/echo" => {
            let method = req.method().to_string();
            let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            Response::builder()
                .header("x-upstream-method", &method)
                .header("x-method", method)
                .header("x-upstream-path", pq)
                .body(req.into_body().map_err(|e| e.into()).boxed())
                .unwrap()
        }
        "/headers" => {
            let mut text = String::new();
            for (name, value) in req.headers() {
                text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            Response::builder()
                .header("connection", "x-hop")
                .header("x-hop", "must not reach the client")
                .header("keep-alive", "timeout=5")
                .body(body_of(text))
                .unwrap()
        }
        "/hop" => Response::builder()
            .header("connection", "x-foo, keep-alive")
            .header("x-foo", "1")
            .header("keep-alive", "timeout=5")
            .header("x-keep", "1")
            .header("proxy-authenticate", "Basic")
            .body(body_of("hop"))
            .unwrap(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Response::new(body_of("late"))
        }
        "/big" => {
            let n: usize =
                req.uri().query().and_then(|q| q.strip_prefix("n=")).and_then(|n| n.parse().ok()).unwrap_or(0);
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
            tokio::spawn(async move {
                let chunk = Bytes::from((0..65536u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    if tx.send_data(chunk.slice(..take)).await.is_err() {
                        return;
                    }
                    left -= take;
                }
            });
            Response::builder().header("content-length", n).body(body.map_err(|e| e.into()).boxed()).unwrap()
        }
        "/count" => {
            // Reads the whole request body (counting, not keeping it) before answering.
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                n += frame.data_ref().map_or(0, |d| d.len());
            }
            Response::new(body_of(n.to_string()))
        }
        _ if path.starts_with("/big/") => {
            let n: u64 = path["/big/".len()..].parse().unwrap();
            Response::new(Generated::new(n).boxed())
        }
        _ if matches!(fallback, Fallback::NotFound) => {
            Response::builder().status(404).body(body_of("no such page")).unwrap()
        }
        _ => {
            let mut dump = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                dump.push_str(&format!("{}: {}\n", k, String::from_utf8_lossy(v.as_bytes())));
            }
            Response::builder().header("content-type", "text/plain").body(body_of(dump)).unwrap()
        }
    };
    Ok(response)
}

/// `/upgrade`: a WebSocket handshake answered, then [`upstream_ws_echo`].
fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrade = req.headers().get("upgrade").map(|v| v.to_str().unwrap_or("").to_ascii_lowercase());
    let (Some("websocket"), Some(key)) = (upgrade.as_deref(), key) else {
        return Response::builder().status(400).body(body_of("not an upgrade")).unwrap();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            upstream_ws_echo(TokioIo::new(upgraded)).await;
        }
    });
    let accept = wsgate::ws::handshake::accept_key(key.as_bytes());
    Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", accept)
        .header("x-upstream", "yes")
        .body(body_of(""))
        .unwrap()
}

/// Any other upgrade: 101 with the protocol asked for, then every byte echoed.
fn byte_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let mut buf = vec![0u8; 8192];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    let proto = req.headers()["upgrade"].clone();
    let seen = req.headers().get("connection").cloned().unwrap_or_else(|| http::HeaderValue::from_static(""));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", proto)
        .header("connection", "Upgrade")
        .header("x-up-upgrade-seen", seen)
        .body(body_of(""))
        .unwrap()
}

/// The upstream's own WebSocket echo (server role), prefixing text replies with "upstream:".
async fn upstream_ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S) {
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Server, max_message_size: 1 << 20 });
    let mut buf = BytesMut::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(WsIncoming::Text(t))) => {
                let mut out = BytesMut::new();
                let reply = [b"upstream:".as_slice(), &t].concat();
                encode_frame(&mut out, OpCode::Text, true, false, &reply, None);
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
            Ok(Some(WsIncoming::Close(_))) => {
                let mut out = BytesMut::new();
                encode_frame(&mut out, OpCode::Close, true, false, &[0x03, 0xe8], None);
                let _ = io.write_all(&out).await;
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The byte at `offset` of generated bodies (not a multiple of any chunk size).
pub fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A body of `remaining` pattern bytes generated lazily in 64 KiB chunks.
pub struct Generated {
    pub offset: u64,
    pub remaining: u64,
}

impl Generated {
    pub fn new(len: u64) -> Self {
        Self { offset: 0, remaining: len }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        let start = self.offset;
        let chunk: Vec<u8> = (start..start + n).map(pattern).collect();
        self.offset += n;
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A request body sending `chunks` chunks of 1 KiB, one every `every`.
pub struct SlowBody {
    pub chunks: usize,
    pub every: Duration,
    pub sleep: Pin<Box<tokio::time::Sleep>>,
}

impl SlowBody {
    pub fn new(chunks: usize, every: Duration) -> Self {
        Self { chunks, every, sleep: Box::pin(tokio::time::sleep(every)) }
    }
}

impl Body for SlowBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.chunks == 0 {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.chunks -= 1;
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))))
    }
}

/// An upstream that accepts connections and never answers.
pub async fn start_silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A raw upstream that promises 1 MiB, sends the head and 64 KiB, then closes the
/// connection (dies mid-body).
pub async fn start_dying_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1u64 << 20).into_bytes();
                resp.extend((0..64 * 1024u64).map(pattern));
                let _ = stream.write_all(&resp).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropping the stream closes the connection mid-body.
            });
        }
    });
    addr
}

/// A port that was just bound and released: connecting to it is refused.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

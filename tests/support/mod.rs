//! Test harness: a real upstream (hyper server), the proxy behind a tiny hyper
//! server, and raw/hyper clients. Everything on 127.0.0.1 port 0.
#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use wsgate::proxy::{ClientInfo, Proxy, ProxySettings};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

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

pub struct Upstream {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The upstream's behaviour per path:
/// `/hop` answers with hop-by-hop headers; `/big/N` streams N pattern bytes; `/echo` streams the request body
/// back; an `Upgrade` request gets 101 and a raw byte echo; anything else gets a
/// text dump of its request line and headers.
async fn upstream_service(mut req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.headers().contains_key("upgrade") {
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
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", proto)
            .header("connection", "Upgrade")
            .header("x-up-upgrade-seen", req.headers()["connection"].clone())
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }
    if path == "/hop" {
        let resp = Response::builder()
            .header("connection", "x-foo, keep-alive")
            .header("x-foo", "1")
            .header("keep-alive", "timeout=5")
            .header("x-keep", "1")
            .header("proxy-authenticate", "Basic")
            .body(full("hop"))
            .unwrap();
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: u64 = n.parse().unwrap();
        return Ok(Response::new(Generated::new(n).boxed()));
    }
    if path == "/count" {
        // Reads the whole request body (counting, not keeping it) before answering.
        let mut body = req.into_body();
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            n += frame.data_ref().map_or(0, |d| d.len());
        }
        return Ok(Response::new(full(n.to_string())));
    }
    if path == "/echo" {
        let method = req.method().to_string();
        let body = req.into_body().map_err(|e| e.into()).boxed();
        let resp = Response::builder().header("x-method", method).body(body).unwrap();
        return Ok(resp);
    }
    let mut dump = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        dump.push_str(&format!("{}: {}\n", k, String::from_utf8_lossy(v.as_bytes())));
    }
    Ok(Response::builder().header("content-type", "text/plain").body(full(dump)).unwrap())
}

pub async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(upstream_service))
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, accepts }
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

pub fn settings(upstream: SocketAddr) -> ProxySettings {
    ProxySettings {
        upstream: format!("http://{upstream}").parse().unwrap(),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(10),
        trusted_proxies: Vec::new(),
        body_read_timeout: Duration::from_secs(10),
    }
}

/// The proxy behind a hyper server (auto h1/h2, upgrades on), as wsgate will run it.
pub async fn start_proxy(settings: ProxySettings) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    start_proxy_on(listener, settings);
    addr
}

/// Serves the proxy on an already bound listener.
pub fn start_proxy_on(listener: TcpListener, settings: ProxySettings) {
    let proxy = Proxy::new(settings);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let local = stream.local_addr().unwrap();
            let info = ClientInfo { peer, local, tls: false };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    async move {
                        let resp = if req.headers().contains_key("upgrade") {
                            proxy.tunnel(req, &info).await
                        } else {
                            proxy.forward(req, &info).await
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// A parsed raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw request bytes (which should say `Connection: close`) and reads the
/// whole response until EOF; decodes a chunked body.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("response within 10s").unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("complete head");
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut body = buf[end + 4..].to_vec();
    let resp = RawResponse { status, head, body: Vec::new() };
    if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    RawResponse { body, ..resp }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_str = std::str::from_utf8(&b[..line_end]).unwrap();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A hyper HTTP/1.1 client connection to `addr`.
pub async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub fn body_of(b: impl Into<Bytes>) -> TestBody {
    full(b)
}

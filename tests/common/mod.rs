//! The one test harness: wsgate started in-process on 127.0.0.1:0, the real HTTP upstream
//! (`upstream`), the proxy module alone (`inproc`), Redis (`redis`), the pubsub protocol
//! client (`pubsub`), an SSE client (`sse`), and a raw WebSocket client built on wsgate's own
//! codec in the client role.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::config::{self, CliOverrides, ConfigSource};
use wsgate::server::RunningServer;
use wsgate::ws::codec::{encode_frame, Decoder, DecoderConfig, Incoming as WsIncoming, OpCode, Role};

pub mod inproc;
pub mod pubsub;
pub mod redis;
pub mod sse;
pub mod upstream;

#[allow(unused_imports)] // not every test starts an upstream
pub use upstream::start_upstream;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// wsgate started from a TOML text in which `{UPSTREAM}` is replaced by the upstream URL.
pub struct Gate {
    pub server: RunningServer,
    pub addr: SocketAddr,
}

pub async fn start_gate(toml: &str, upstream: SocketAddr) -> Gate {
    let mut text = toml.replace("{UPSTREAM}", &format!("http://{upstream}"));
    if !text.contains("[admin]") {
        // The default admin address (127.0.0.1:9090) would collide between parallel tests.
        text.push_str("\n[admin]\naddr = \"off\"\n");
    }
    let config = config::load(ConfigSource::Text { name: "test.toml".into(), text }, &CliOverrides::default())
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let server = wsgate::server::start(&config).await.expect("wsgate starts");
    let addr = server.listeners()[0].addr;
    Gate { server, addr }
}

/// A minimal config: one plain listener on port 0, the echo app at /websocket/echo.
pub fn basic_config(extra: &str) -> String {
    format!(
        r#"
[upstream]
url = "{{UPSTREAM}}"
connect_timeout = "1s"
response_timeout = "2s"

[[listen]]
addr = "127.0.0.1:0"

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
{extra}
{admin}"#,
        // Tests that spawn the binary use this text as is: keep them off the shared 9090.
        admin = if extra.contains("[admin]") { "" } else { "\n[admin]\naddr = \"off\"\n" }
    )
}

/// A raw WebSocket client over TCP using wsgate's codec in the client role.
pub struct WsClient {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

/// The status line and headers of an HTTP response read from a raw socket, plus any bytes
/// already received after the head.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub rest: BytesMut,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends `request` (raw bytes) and reads the response head.
pub async fn raw_request(stream: &mut TcpStream, request: &[u8]) -> RawResponse {
    stream.write_all(request).await.unwrap();
    read_head(stream).await
}

pub async fn read_head(stream: &mut TcpStream) -> RawResponse {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf.split_off(end + 4);
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            return RawResponse { status, head, rest };
        }
        let n = tokio::time::timeout(TIMEOUT, stream.read_buf(&mut buf)).await.expect("response in time").unwrap();
        assert!(n > 0, "connection closed before a response head; got {:?}", String::from_utf8_lossy(&buf));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends a WebSocket upgrade for `path` (with `extra` header lines) over any stream and reads
/// the response head; returns it (lower-cased) and the bytes received after it.
pub async fn upgrade_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    path: &str,
    extra: &str,
) -> (String, BytesMut) {
    io.write_all(upgrade_request(path, extra).as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(TIMEOUT, io.read_buf(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the response head");
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let _ = buf.split_to(end + 4);
    (head, buf)
}

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

impl WsClient {
    /// Opens a WebSocket to `path`; panics unless the answer is 101 with the right accept key.
    pub async fn connect(addr: SocketAddr, path: &str) -> WsClient {
        Self::connect_stream(TcpStream::connect(addr).await.unwrap(), path).await
    }

    /// Like [`WsClient::connect`] over an already connected stream (e.g. with small buffers).
    pub async fn connect_stream(mut stream: TcpStream, path: &str) -> WsClient {
        let response = raw_request(&mut stream, upgrade_request(path, "").as_bytes()).await;
        assert_eq!(response.status, 101, "upgrade refused: {}", response.head);
        assert_eq!(response.header("sec-websocket-accept").as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        WsClient {
            stream,
            buf: response.rest,
            decoder: Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 64 << 20 }),
        }
    }

    /// A client over an already upgraded stream (`rest`: bytes read after the 101 head).
    pub fn from_parts(stream: TcpStream, rest: BytesMut) -> WsClient {
        WsClient {
            stream,
            buf: rest,
            decoder: Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 64 << 20 }),
        }
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_frame(&mut out, opcode, fin, false, payload, Some([1, 2, 3, 4]));
        self.stream.write_all(&out).await.unwrap();
    }

    /// Sends raw bytes (for malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(OpCode::Text, true, text.as_bytes()).await
    }

    /// The next event from the server, or `None` on EOF.
    pub async fn next(&mut self) -> Option<WsIncoming> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(event)) => return Some(event),
                Ok(None) => {}
                Err(e) => panic!("server sent an invalid frame: {e}"),
            }
            let n = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answered in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until a Close arrives and returns its code (None = empty close); panics on EOF.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Some(WsIncoming::Close(frame)) => return frame.map(|f| f.code),
                Some(_) => continue,
                None => panic!("connection closed without a Close frame"),
            }
        }
    }

    /// After a Close: the server closes the TCP connection.
    pub async fn expect_eof(&mut self) {
        let mut scratch = [0u8; 64];
        loop {
            let n =
                tokio::time::timeout(TIMEOUT, self.stream.read(&mut scratch)).await.expect("server closed TCP in time");
            match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// The next text message, parsed as JSON (pings and pongs skipped).
    pub async fn json(&mut self) -> serde_json::Value {
        loop {
            match self.next().await {
                Some(WsIncoming::Text(t)) => return serde_json::from_slice(&t).expect("server sends JSON"),
                Some(WsIncoming::Ping(_) | WsIncoming::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    pub async fn send_json(&mut self, v: serde_json::Value) {
        self.send_text(&v.to_string()).await
    }

    /// Nothing arrives within `wait`.
    pub async fn silent(&mut self, wait: Duration) {
        let got = tokio::time::timeout(wait, self.next()).await;
        assert!(got.is_err(), "expected silence, got {got:?}");
    }
}

/// A hyper HTTP/1.1 client connection to `addr` (one connection, for keep-alive checks).
pub async fn http_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<upstream::TestBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET on a fresh HTTP/1.1 connection (Host `t`): the status and the whole body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp =
        sender.send_request(Request::get(path).header("host", "t").body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

/// wsgate as its own process, so its RSS and file descriptors are its own.
pub struct Spawned {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `basic_config(extra)` (which must put the admin listener on port 0)
/// and reads its public and admin addresses from the startup log.
pub fn spawn_binary(dir: &tempfile::TempDir, upstream: SocketAddr, extra: &str) -> Spawned {
    use std::io::{BufRead, BufReader};
    let text = basic_config(extra).replace("{UPSTREAM}", &format!("http://{upstream}"));
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let find = |line: &str, key: &str| {
            line.split(key).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|a| a.parse::<SocketAddr>().ok())
        };
        let (mut addr, mut admin) = (None, None);
        let mut sent = false;
        // Keep draining stderr after the addresses so wsgate never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            addr = addr.or(find(&line, " addr="));
            admin = admin.or(find(&line, " admin="));
            if let (Some(a), Some(b), false) = (addr, admin, sent) {
                let _ = tx.send((a, b));
                sent = true;
            }
        }
    });
    let (addr, admin) = rx.recv_timeout(Duration::from_secs(20)).expect("wsgate logged its addresses");
    Spawned { child, addr, admin }
}

/// The value of `series` (a metric name with its labels, as rendered) in a Prometheus text
/// exposition; 0 when absent.
pub fn series_value(rendered: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    rendered.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        as u64
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Accepts any server certificate and remembers the last one presented (the test checks which
/// certificate the server used, not the PKI).
#[derive(Debug)]
pub struct RecordingVerifier {
    /// The certificate of the last handshake.
    pub last: std::sync::Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.last.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that trusts any server certificate (tests check the server's
/// behaviour, not the PKI), and its verifier.
pub fn trusting_client_config() -> (Arc<rustls::ClientConfig>, Arc<RecordingVerifier>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RecordingVerifier { last: std::sync::Mutex::new(None), provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    (Arc::new(config), verifier)
}

/// Opens a WebSocket to the echo app of `gate` and returns it with the channel id the node
/// gave it (to subscribe it through the node's hub).
pub async fn open_echo(gate: &Gate) -> (WsClient, wsgate::pubsub::ChannelId) {
    use std::collections::HashSet;
    let ids = || gate.server.hub().channel_summaries().into_iter().map(|c| c.id);
    let before: HashSet<_> = ids().collect();
    let client = WsClient::connect(gate.addr, "/websocket/echo").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let new: Vec<_> = ids().filter(|id| !before.contains(id)).collect();
        if let [id] = new.as_slice() {
            return (client, id.clone());
        }
        assert!(std::time::Instant::now() < deadline, "channel not registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

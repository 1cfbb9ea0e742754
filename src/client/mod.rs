//! The WebSocket client role (RFC 6455 §4.1, §5.1): `ws://` and `wss://` (rustls with the
//! ring provider; the system's roots plus an optional CA file), custom headers, subprotocols
//! and permessage-deflate (RFC 7692). The wsgate form of the seed's `ws::client::open / send /
//! receive / close`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wsgate::client::ClientError> {
//! use wsgate::client::{connect, ConnectOptions, Received};
//! let mut client = connect("ws://127.0.0.1:8080/websocket/echo", &ConnectOptions::default()).await?;
//! client.send_text("hello").await?;
//! if let Received::Text(text) = client.receive(Some(std::time::Duration::from_secs(5))).await? {
//!     println!("{text}");
//! }
//! client.close(1000, "bye").await?;
//! # Ok(()) }
//! ```
//!
//! System roots come from `rustls-native-certs` (the OS store, `/etc/ssl/certs` on Debian):
//! a gateway installed as a Debian package should trust what the host's administrator
//! trusts, and pick up CA updates from the OS, instead of a CA list compiled into the binary.

pub mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flate2::Compress;
use http::header::{HeaderName, HeaderValue, SEC_WEBSOCKET_EXTENSIONS};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ws::close::{code, CloseFrame};
use crate::ws::codec::{
    close_frame_payload, encode_frame, random_mask, Decoder, DecoderConfig, Incoming, OpCode, ProtocolError, Role,
};
use crate::ws::deflate::{
    accept_client, client_compressor, client_message_frame, client_offer, DeflateParams, InflateError, Inflater,
};
use crate::ws::handshake::{client_key, client_request_headers, validate_response, ClientHandshakeError};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Extra CA certificates (PEM) trusted for `wss://`, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Extra request headers (e.g. `Origin`, `Authorization`, `Cookie`).
    pub headers: Vec<(String, String)>,
    /// Subprotocols to offer, in order of preference (`Sec-WebSocket-Protocol`).
    pub subprotocols: Vec<String>,
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// Limit for DNS, TCP, TLS and the HTTP handshake together.
    pub timeout: Duration,
    /// Largest message accepted from the server (after inflating); larger closes with 1009.
    pub max_message_size: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            headers: Vec::new(),
            subprotocols: Vec::new(),
            deflate: true,
            timeout: Duration::from_secs(10),
            max_message_size: 16 << 20,
        }
    }
}

/// Why connecting, sending or receiving failed. The messages name what went wrong in the
/// terms a user of `wsgate client` can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a usable `ws://` or `wss://` URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A header given in the options is not a valid HTTP header.
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    /// The host name could not be resolved.
    #[error("cannot resolve host {host}: {source}")]
    Dns {
        /// The host.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Every address of the host refused or failed the TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The (last) address tried.
        addr: SocketAddr,
        /// The OS error (e.g. connection refused).
        source: std::io::Error,
    },
    /// The CA file or the system roots could not be loaded.
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The TLS handshake failed (certificate not trusted, name mismatch, ...).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The server name.
        host: String,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The HTTP exchange before the upgrade failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The server answered the upgrade with a non-101 status.
    #[error("server refused the WebSocket upgrade: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Refused {
        /// The status code.
        status: u16,
        /// The start of the response body, for the user.
        body: String,
    },
    /// The 101 answer broke RFC 6455 §4.1.
    #[error("invalid handshake answer: {0}")]
    Handshake(#[from] ClientHandshakeError),
    /// The server's extensions answer broke RFC 7692.
    #[error("{0}")]
    Extension(#[from] crate::ws::deflate::NegotiationError),
    /// Connecting, or waiting for a message, took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// The server broke the protocol; we closed with the code.
    #[error("protocol error from server: {0}")]
    Protocol(String),
    /// The connection is closed (a Close was exchanged, or we sent one).
    #[error("connection is closed")]
    Closed,
    /// The TCP connection ended without a Close.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`Client::receive`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// The server's Close (already answered); `None` when it carried no code.
    Close(Option<CloseFrame>),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open client WebSocket.
pub struct Client {
    io: Pin<Box<dyn Io>>,
    buf: BytesMut,
    /// Encoded frames not yet written. Every write goes through it and advances it by what
    /// one `write` call took, so a cancelled [`Client::receive`] (e.g. in `select!`) never
    /// leaves half a frame on the wire: the rest goes out with the next operation.
    out: BytesMut,
    decoder: Decoder,
    compressor: Option<(Compress, bool)>,
    inflater: Option<Inflater>,
    protocol: Option<String>,
    deflate: Option<DeflateParams>,
    close_sent: bool,
    close_received: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &self.protocol)
            .field("deflate", &self.deflate)
            .finish_non_exhaustive()
    }
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let uri: Uri = url.parse().map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("ws") => false,
        Some(s) if s.eq_ignore_ascii_case("wss") => true,
        _ => return Err(ClientError::InvalidUrl(format!("{url}: the scheme must be ws:// or wss://"))),
    };
    let host = uri.host().ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let default_port = if tls { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    let authority = match uri.port_u16() {
        Some(p) if p != default_port => uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default(),
        _ if host.contains(':') => format!("[{host}]"),
        _ => host.clone(),
    };
    // RFC 6455 §3: the query is part of the resource name (the seed dropped it).
    let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let path = if path.is_empty() { "/".into() } else { path };
    Ok(Target { tls, host, port, authority, path })
}

pub(crate) fn tls_connector(ca_file: Option<&PathBuf>) -> Result<tokio_rustls::TlsConnector, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is skipped, as browsers do; the rest still count.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ClientError::TlsSetup(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ClientError::TlsSetup(format!("{}: no CERTIFICATE block found", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ClientError::TlsSetup(format!("{}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(ClientError::TlsSetup("no trusted CA certificates (no system roots found; use --ca FILE)".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // We speak HTTP/1.1 for the upgrade (RFC 6455 §4.1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ClientError::Dns { host: host.to_owned(), source })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(source) => last = Some(ClientError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Dns {
        host: host.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
    }))
}

/// Opens a WebSocket to `url` (`ws://` or `wss://`), within `options.timeout`.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Client, ClientError> {
    let target = parse_url(url)?;
    match tokio::time::timeout(options.timeout, connect_inner(&target, options)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout),
    }
}

async fn connect_inner(target: &Target, options: &ConnectOptions) -> Result<Client, ClientError> {
    let connector = if target.tls { Some(tls_connector(options.ca_file.as_ref())?) } else { None };
    let tcp = tcp_connect(&target.host, target.port).await?;
    let io: Pin<Box<dyn Io>> = match connector {
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| ClientError::InvalidUrl(format!("{}: {e}", target.host)))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|source| ClientError::Tls { host: target.host.clone(), source })?;
            Box::pin(tls)
        }
        None => Box::pin(tcp),
    };
    handshake(io, target, options).await
}

async fn handshake(io: Pin<Box<dyn Io>>, target: &Target, options: &ConnectOptions) -> Result<Client, ClientError> {
    let key = client_key();
    let mut headers = client_request_headers(&target.authority, &key, &options.subprotocols)
        .map_err(|_| ClientError::InvalidHeader("Host or Sec-WebSocket-Protocol".into()))?;
    if options.deflate {
        headers
            .insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate; client_max_window_bits"));
        debug_assert_eq!(client_offer(), "permessage-deflate; client_max_window_bits");
    }
    for (name, value) in &options.headers {
        let name =
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| ClientError::InvalidHeader(name.clone()))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| ClientError::InvalidHeader(name.to_string()))?;
        headers.append(name, value);
    }
    let mut request = Request::get(target.path.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
    *request.headers_mut() = headers;

    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn.with_upgrades());
    let mut response = sender.send_request(request).await.map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        // Show the start of the body: servers usually say why (wsgate does).
        let body = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect()).await;
        let body = match body {
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                // One line for the user: whitespace (HTML indentation, newlines) collapsed.
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                text
            }
            _ => String::new(),
        };
        driver.abort();
        return Err(ClientError::Refused { status: status.as_u16(), body });
    }
    let answer = validate_response(status, response.headers(), &key, &options.subprotocols)?;
    let deflate = if options.deflate {
        accept_client(&answer.extensions)?
    } else if !answer.extensions.is_empty() {
        // RFC 6455 §4.1 item 5: an extension we did not offer fails the connection.
        return Err(crate::ws::deflate::NegotiationError::Unacceptable(answer.extensions.join(", ")).into());
    } else {
        None
    };
    let upgraded = hyper::upgrade::on(&mut response).await.map_err(|e| ClientError::Http(e.to_string()))?;
    // Bytes the server sent right after the 101 (already read by hyper) come first.
    let parts = upgraded.downcast::<TokioIo<Pin<Box<dyn Io>>>>();
    let (io, buf) = match parts {
        Ok(parts) => (parts.io.into_inner(), BytesMut::from(&parts.read_buf[..])),
        Err(upgraded) => {
            let io: Pin<Box<dyn Io>> = Box::pin(TokioIo::new(upgraded));
            (io, BytesMut::new())
        }
    };
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: options.max_message_size });
    decoder.set_rsv1_allowed(deflate.is_some());
    Ok(Client {
        io,
        buf,
        out: BytesMut::new(),
        decoder,
        compressor: deflate.map(|p| (client_compressor(&p), p.own_no_context_takeover)),
        inflater: deflate.map(|p| Inflater::new(&p, options.max_message_size)),
        protocol: answer.protocol,
        deflate,
        close_sent: false,
        close_received: false,
    })
}

impl Client {
    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The permessage-deflate parameters in force, if the server accepted the offer.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }

    /// Sends one text message (never fragmented; compressed when deflate is in force).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.send_message(OpCode::Text, text.as_bytes()).await
    }

    /// Sends one binary message.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.send_message(OpCode::Binary, data).await
    }

    async fn send_message(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), ClientError> {
        if self.close_sent {
            return Err(ClientError::Closed);
        }
        let frame = client_message_frame(opcode, payload, self.compressor.as_mut().map(|(c, reset)| (c, *reset)));
        self.out.extend_from_slice(&frame);
        self.flush_out().await
    }

    /// Writes what `out` holds; cancel-safe (see the field).
    async fn flush_out(&mut self) -> Result<(), ClientError> {
        while !self.out.is_empty() {
            let n = self.io.write(&self.out).await?;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            bytes::Buf::advance(&mut self.out, n);
        }
        self.io.flush().await?;
        Ok(())
    }

    async fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), ClientError> {
        let mut frame = BytesMut::with_capacity(payload.len() + 6);
        encode_frame(&mut frame, opcode, true, false, payload, Some(random_mask()));
        self.out.extend_from_slice(&frame);
        self.flush_out().await
    }

    /// Sends a Close with `code` and `reason` (at most 123 bytes) without waiting for the
    /// answer; [`Client::receive`] then returns the remaining messages and the server's Close.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), ClientError> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.send_control(OpCode::Close, &close_frame_payload(code, reason)).await
    }

    /// Waits for the next message, at most `timeout` (`None`: no limit). Pings are answered
    /// and pongs skipped on the way. A server Close is answered with the same code (RFC 6455
    /// §5.5.1) and returned; after it, receiving fails with [`ClientError::Closed`].
    pub async fn receive(&mut self, timeout: Option<Duration>) -> Result<Received, ClientError> {
        let deadline = timeout.map(crate::time::deadline);
        match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, self.receive_inner()).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout),
            },
            None => self.receive_inner().await,
        }
    }

    async fn receive_inner(&mut self) -> Result<Received, ClientError> {
        if self.close_received {
            return Err(ClientError::Closed);
        }
        // A pong (or message) left behind by a cancelled call goes out first.
        self.flush_out().await?;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(event)) => match event {
                    Incoming::Text(data) => {
                        let data = self.inflate_if_compressed(data).await?;
                        match String::from_utf8(data.to_vec()) {
                            Ok(text) => return Ok(Received::Text(text)),
                            Err(_) => return Err(self.fail(code::INVALID_DATA, "invalid UTF-8").await),
                        }
                    }
                    Incoming::Binary(data) => {
                        let data = self.inflate_if_compressed(data).await?;
                        return Ok(Received::Binary(data));
                    }
                    Incoming::Ping(payload) => {
                        if !self.close_sent {
                            self.send_control(OpCode::Pong, &payload).await?;
                        }
                    }
                    Incoming::Pong(_) => {}
                    Incoming::Close(frame) => {
                        self.close_received = true;
                        if !self.close_sent {
                            self.close_sent = true;
                            let payload = frame.as_ref().map(|f| close_frame_payload(f.code, "")).unwrap_or_default();
                            let _ = self.send_control(OpCode::Close, &payload).await;
                        }
                        // §7.1.1: the server closes TCP first; we may close our side now.
                        let _ = self.io.shutdown().await;
                        return Ok(Received::Close(frame));
                    }
                },
                Ok(None) => {
                    let n = self.io.read_buf(&mut self.buf).await?;
                    if n == 0 {
                        return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(error) => {
                    let code = error.close_code();
                    return Err(self.fail(code, &protocol_reason(&error)).await);
                }
            }
        }
    }

    async fn inflate_if_compressed(&mut self, data: Bytes) -> Result<Bytes, ClientError> {
        if !self.decoder.last_compressed() {
            return Ok(data);
        }
        let result = match self.inflater.as_mut() {
            Some(inflater) => inflater.inflate(&data),
            None => Err(InflateError::Corrupt),
        };
        match result {
            Ok(plain) => Ok(plain),
            Err(InflateError::TooBig { .. }) => Err(self.fail(code::TOO_BIG, "message too big").await),
            Err(InflateError::Corrupt) => Err(self.fail(code::INVALID_DATA, "invalid compressed data").await),
        }
    }

    /// Fails the connection (RFC 6455 §7.1.7): Close with `code`, then drop TCP.
    async fn fail(&mut self, code: u16, reason: &str) -> ClientError {
        if !self.close_sent {
            self.close_sent = true;
            let _ = self.send_control(OpCode::Close, &close_frame_payload(code, reason)).await;
        }
        self.close_received = true;
        let _ = self.io.shutdown().await;
        ClientError::Protocol(format!("{reason} (closed with {code})"))
    }

    /// Closes the connection: sends a Close (unless one was sent), then discards messages
    /// until the server's Close arrives, at most 5 s. Returns the server's Close.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<Option<CloseFrame>, ClientError> {
        if self.close_received {
            return Ok(None);
        }
        self.send_close(code, reason).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.receive(Some(deadline.saturating_duration_since(Instant::now()))).await? {
                Received::Close(frame) => return Ok(frame),
                Received::Text(_) | Received::Binary(_) => {}
            }
        }
    }
}

fn protocol_reason(error: &ProtocolError) -> String {
    let mut reason = error.to_string();
    reason.truncate(100);
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://example.com/chat?room=1").unwrap();
        assert!(!t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str(), t.path.as_str()),
            ("example.com", 80, "example.com", "/chat?room=1")
        );
        let t = parse_url("wss://[::1]:8443").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str(), t.path.as_str()), ("::1", 8443, "[::1]:8443", "/"));
        let t = parse_url("wss://h:443/x").unwrap();
        assert_eq!(t.authority, "h");
        assert!(matches!(parse_url("http://h/"), Err(ClientError::InvalidUrl(_))));
        assert!(matches!(parse_url("nonsense"), Err(ClientError::InvalidUrl(_))));
    }
}

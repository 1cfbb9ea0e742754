//! A minimal WebSocket client (RFC 6455) with permessage-deflate receive (RFC 7692), used
//! where tungstenite cannot serve: it refuses frames with RSV1 set, so it cannot receive
//! compressed messages, and it hides the phases of the opening handshake that the
//! `handshake` scenario times separately.
//!
//! Only what a load generator needs: the upgrade (with an optional deflate offer), reading
//! data messages (fragmented or not, compressed or not), answering pings, sending small
//! masked text frames, and the closing handshake (RFC 6455 §5.5.1, §7.1.2).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::conn::{self, ConnOpts, Target};

/// The offer: the client resets its compressor per message (it sends almost nothing);
/// the server may answer with `server_no_context_takeover` (RFC 7692 §7.1.1).
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_no_context_takeover";

/// Largest response head and largest message accepted (a bound, not a tuning knob).
const MAX_HEAD: usize = 16 * 1024;
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The trailer a sync flush ends with; the sender strips it, the receiver appends it
/// before inflating (RFC 7692 §7.2.2).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why opening a connection failed, by kind (the `handshake` scenario counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// TCP connect failed (refused, no ports left, ...).
    Connect(String),
    /// The whole open took longer than the connect timeout.
    Timeout,
    /// The server closed or reset before a complete response head.
    ClosedBeforeResponse,
    /// The response status was not 101.
    Status(u16),
    /// A 101 that does not satisfy RFC 6455 §4.1 (accept key, Upgrade/Connection) or an
    /// extension answer we did not offer (RFC 6455 §9.1).
    BadResponse(String),
    /// Reading or writing the socket failed.
    Io(String),
}

impl OpenError {
    /// A short key for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            OpenError::Connect(e) => format!("connect:{}", io_kind(e)),
            OpenError::Timeout => "timeout".into(),
            OpenError::ClosedBeforeResponse => "closed_before_101".into(),
            OpenError::Status(s) => format!("http_{s}"),
            OpenError::BadResponse(_) => "bad_101".into(),
            OpenError::Io(e) => format!("io:{}", io_kind(e)),
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Connect(e) => write!(f, "tcp connect: {e}"),
            OpenError::Timeout => write!(f, "connect timed out"),
            OpenError::ClosedBeforeResponse => write!(f, "closed before the 101 response"),
            OpenError::Status(s) => write!(f, "upgrade answered with status {s}"),
            OpenError::BadResponse(e) => write!(f, "bad 101 response: {e}"),
            OpenError::Io(e) => write!(f, "io: {e}"),
        }
    }
}

/// The first word of an io error's text, lower-cased ("connection refused" -> "connection_refused").
fn io_kind(e: &str) -> String {
    let head = e.split(" (os error").next().unwrap_or(e);
    head.trim().to_ascii_lowercase().replace(' ', "_")
}

/// Timings of one open, nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTimes {
    pub tcp_ns: u64,
    pub upgrade_ns: u64,
}

/// One received data message.
#[derive(Debug)]
pub struct Message {
    pub data: Vec<u8>,
    /// RSV1 was set: the message arrived compressed and was inflated here.
    pub compressed: bool,
}

/// What `recv` returns besides a data message.
#[derive(Debug)]
pub enum Event {
    Data(Message),
    /// The server's Close frame with its status code (None: no code).
    Close(Option<u16>),
}

/// An open client connection.
pub struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
    /// Some when the server accepted permessage-deflate.
    inflater: Option<Decompress>,
    /// The server resets its compressor per message (server_no_context_takeover).
    server_no_context: bool,
    mask_state: u32,
    /// A fragmented message being assembled: (compressed, data).
    partial: Option<(bool, Vec<u8>)>,
    close_sent: bool,
}

/// Opens TCP and performs the upgrade; with `deflate`, offers permessage-deflate.
pub async fn open(target: &Target, idx: usize, opts: &ConnOpts, deflate: bool) -> Result<(RawWs, OpenTimes), OpenError> {
    match tokio::time::timeout(opts.connect_timeout, open_inner(target, idx, opts, deflate)).await {
        Ok(r) => r,
        Err(_) => Err(OpenError::Timeout),
    }
}

async fn open_inner(target: &Target, idx: usize, opts: &ConnOpts, deflate: bool) -> Result<(RawWs, OpenTimes), OpenError> {
    let t0 = std::time::Instant::now();
    let mut stream = conn::tcp_connect(target, idx, opts).await.map_err(|e| OpenError::Connect(e.to_string()))?;
    let tcp_ns = t0.elapsed().as_nanos() as u64;
    let key = generate_key();
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        target.path_and_query, target.host_header
    );
    if deflate {
        req.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
    }
    for (k, v) in &opts.headers {
        req.push_str(&format!("{}: {}\r\n", k.as_str(), v.to_str().unwrap_or("")));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.map_err(|e| OpenError::Io(e.to_string()))?;

    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(p) = find_head_end(&buf) {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(OpenError::BadResponse("response head too large".into()));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err(OpenError::ClosedBeforeResponse),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(OpenError::ClosedBeforeResponse),
            Err(e) => return Err(OpenError::Io(e.to_string())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.advance(head_len);
    let ext = check_response(&head, &key)?;
    let (inflater, server_no_context) = match ext {
        None => (None, false),
        Some(answer) if deflate => {
            let p = parse_answer(&answer).ok_or_else(|| OpenError::BadResponse(format!("extension answer {answer:?}")))?;
            (Some(Decompress::new(false)), p)
        }
        Some(answer) => return Err(OpenError::BadResponse(format!("extension {answer:?} not offered"))),
    };
    let times = OpenTimes { tcp_ns, upgrade_ns: t0.elapsed().as_nanos() as u64 - tcp_ns };
    let seed = (idx as u32).wrapping_mul(0x9e37_79b9) ^ (t0.elapsed().subsec_nanos() | 1);
    Ok((RawWs { stream, buf, inflater, server_no_context, mask_state: seed | 1, partial: None, close_sent: false }, times))
}

/// The length of the HTTP head at the start of `b` (through its blank line), once complete.
pub(crate) fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Checks a 101 response head (RFC 6455 §4.1, client steps 1-6); returns the
/// Sec-WebSocket-Extensions answer if any.
fn check_response(head: &str, key: &str) -> Result<Option<String>, OpenError> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(OpenError::BadResponse(format!("status line {status_line:?}")));
    }
    let code: u16 = code.parse().map_err(|_| OpenError::BadResponse(format!("status line {status_line:?}")))?;
    if code != 101 {
        return Err(OpenError::Status(code));
    }
    let (mut upgrade, mut connection, mut accept, mut ext) = (false, false, None, Vec::new());
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(OpenError::BadResponse(format!("header line {line:?}")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => connection = value.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")),
            "sec-websocket-accept" => accept = Some(value.to_string()),
            "sec-websocket-extensions" => ext.extend(value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty())),
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err(OpenError::BadResponse("missing Upgrade: websocket / Connection: upgrade".into()));
    }
    if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(OpenError::BadResponse("wrong Sec-WebSocket-Accept".into()));
    }
    match ext.len() {
        0 => Ok(None),
        1 => Ok(ext.pop()),
        _ => Err(OpenError::BadResponse(format!("several extensions answered: {}", ext.join(", ")))),
    }
}

/// Parses the server's permessage-deflate answer to [`DEFLATE_OFFER`]; Some(server resets
/// per message) when acceptable. The server may add server_no_context_takeover,
/// server_max_window_bits (our inflater's 32 KiB window covers every size) and must not ask
/// us for anything we did not offer (client_max_window_bits was not offered, §7.1.2.2).
fn parse_answer(answer: &str) -> Option<bool> {
    let mut parts = answer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut server_no_context = false;
    for p in parts {
        let name = p.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "server_no_context_takeover" => server_no_context = true,
            "client_no_context_takeover" | "server_max_window_bits" => {}
            _ => return None,
        }
    }
    Some(server_no_context)
}

impl RawWs {
    /// Whether the server accepted permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.inflater.is_some()
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks only need to differ between frames for a load generator talking to
        // its own loopback (RFC 6455 §10.3 is about proxies in between).
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_le_bytes()
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = self.next_mask();
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).await
    }

    /// Sends one uncompressed text frame (allowed with permessage-deflate: RSV1 clear, §6).
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Next data message or Close; answers pings on the way. Err on protocol or io error,
    /// Ok(None) on EOF without a Close frame.
    pub async fn recv(&mut self) -> Result<Option<Event>, String> {
        loop {
            if let Some(ev) = self.parse_one().await? {
                return Ok(Some(ev));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Parses complete frames from the buffer until one yields an event; Ok(None): need more.
    async fn parse_one(&mut self) -> Result<Option<Event>, String> {
        loop {
            let b = &self.buf[..];
            if b.len() < 2 {
                return Ok(None);
            }
            let (fin, rsv1, rsv23, opcode) = (b[0] & 0x80 != 0, b[0] & 0x40 != 0, b[0] & 0x30, b[0] & 0x0f);
            if b[1] & 0x80 != 0 {
                return Err("masked frame from the server (RFC 6455 §5.1)".into());
            }
            let (len, hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap_or([0; 8])), 10),
                126 | 127 => return Ok(None),
                n => (n as u64, 2),
            };
            if len > MAX_MESSAGE as u64 {
                return Err(format!("frame of {len} bytes exceeds the limit"));
            }
            let len = len as usize;
            if b.len() < hdr + len {
                self.buf.reserve(hdr + len - b.len());
                return Ok(None);
            }
            if rsv23 != 0 || (rsv1 && (self.inflater.is_none() || opcode == 0 || opcode >= 8)) {
                return Err(format!("reserved bits set (byte 0x{:02x})", b[0]));
            }
            self.buf.advance(hdr);
            let payload = self.buf.split_to(len);
            match opcode {
                0x1 | 0x2 => {
                    if self.partial.is_some() {
                        return Err("new data frame inside a fragmented message".into());
                    }
                    if fin {
                        return self.finish(rsv1, payload.to_vec()).map(|m| Some(Event::Data(m)));
                    }
                    self.partial = Some((rsv1, payload.to_vec()));
                }
                0x0 => {
                    let Some((compressed, mut data)) = self.partial.take() else {
                        return Err("continuation without a first frame".into());
                    };
                    if data.len() + payload.len() > MAX_MESSAGE {
                        return Err("message exceeds the limit".into());
                    }
                    data.extend_from_slice(&payload);
                    if fin {
                        return self.finish(compressed, data).map(|m| Some(Event::Data(m)));
                    }
                    self.partial = Some((compressed, data));
                }
                0x8 => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Event::Close(code)));
                }
                0x9 => {
                    // RFC 6455 §5.5.2: answer with a Pong carrying the same data.
                    if !self.close_sent {
                        self.send_frame(0xA, &payload).await.map_err(|e| format!("pong: {e}"))?;
                    }
                }
                0xA => {}
                op => return Err(format!("unknown opcode {op}")),
            }
        }
    }

    fn finish(&mut self, compressed: bool, data: Vec<u8>) -> Result<Message, String> {
        if !compressed {
            return Ok(Message { data, compressed });
        }
        let Some(inf) = self.inflater.as_mut() else {
            return Err("compressed message without deflate".into());
        };
        let mut input = data;
        input.extend_from_slice(&TRAILER);
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            let (in0, out0) = (inf.total_in(), inf.total_out());
            inf.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync).map_err(|e| format!("inflate: {e}"))?;
            consumed += (inf.total_in() - in0) as usize;
            // Done when all input is consumed and the inflater stopped with room to spare
            // (a full output buffer may hide pending output).
            if consumed >= input.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() > MAX_MESSAGE {
                return Err("inflated message exceeds the limit".into());
            }
            if inf.total_in() == in0 && inf.total_out() == out0 && out.len() < out.capacity() {
                return Err("inflate: no progress".into());
            }
        }
        if consumed < input.len() {
            return Err("inflate: trailing input not consumed".into());
        }
        if self.server_no_context {
            // The server compressed this message on its own (§7.1.1.1): start afresh.
            inf.reset(false);
        }
        Ok(Message { data: out, compressed })
    }

    /// Closing handshake (RFC 6455 §7.1.2, §5.5.1): send Close 1000, read until the server's
    /// Close, then until it closes TCP (§7.1.1: the server closes first). Ok(true) when the
    /// server answered with Close; Ok(false) when it closed TCP without one.
    pub async fn close(&mut self, timeout: Duration) -> Result<bool, String> {
        let fut = async {
            if !self.close_sent {
                self.close_sent = true;
                self.send_frame(0x8, &1000u16.to_be_bytes()).await.map_err(|e| format!("close send: {e}"))?;
            }
            loop {
                match self.recv().await {
                    Ok(Some(Event::Close(_))) => {
                        // Wait for EOF so the server closes first and holds TIME_WAIT.
                        let mut scratch = [0u8; 256];
                        loop {
                            match self.stream.read(&mut scratch).await {
                                Ok(0) | Err(_) => return Ok(true),
                                Ok(_) => {}
                            }
                        }
                    }
                    Ok(Some(Event::Data(_))) => {}
                    Ok(None) => return Ok(false),
                    Err(e) if e.contains("reset") => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err("close timed out".into()),
        }
    }

    /// Replies to a server-initiated Close (RFC 6455 §5.5.1) and drops the connection.
    pub async fn answer_close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            let _ = self.send_frame(0x8, &1000u16.to_be_bytes()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TRAILER));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn answer_parsing() {
        assert_eq!(parse_answer("permessage-deflate; server_no_context_takeover; client_no_context_takeover"), Some(true));
        assert_eq!(parse_answer("permessage-deflate"), Some(false));
        assert_eq!(parse_answer("permessage-deflate; client_max_window_bits=10"), None);
        assert_eq!(parse_answer("x-webkit-deflate-frame"), None);
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";
        assert_eq!(check_response(ok, key).unwrap().as_deref(), Some("permessage-deflate; server_no_context_takeover"));
        assert_eq!(check_response("HTTP/1.1 404 Not Found\r\n\r\n", key), Err(OpenError::Status(404)));
        let bad = ok.replace("s3pP", "AAAA");
        assert!(matches!(check_response(&bad, key), Err(OpenError::BadResponse(_))));
    }

    #[tokio::test]
    async fn inflates_compressed_and_fragmented_messages() {
        // A loopback pair: the test writes server frames, RawWs parses them.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let mut ws = RawWs {
            stream: client,
            buf: BytesMut::new(),
            inflater: Some(Decompress::new(false)),
            server_no_context: true,
            mask_state: 1,
            partial: None,
            close_sent: false,
        };
        let text = "M0000002a:0000000001:00000000000000000123:".to_string() + &"x".repeat(2000);
        let z = deflate_raw(text.as_bytes());
        let mut frames = Vec::new();
        // 1: compressed, one frame (RSV1 | FIN | text).
        frames.push(0xC1);
        frames.push(126);
        frames.extend_from_slice(&(z.len() as u16).to_be_bytes());
        frames.extend_from_slice(&z);
        // 2: compressed, split in two fragments; RSV1 on the first only (RFC 7692 §6.1).
        let (a, b) = z.split_at(z.len() / 2);
        frames.extend_from_slice(&[0x41, a.len() as u8]);
        frames.extend_from_slice(a);
        frames.extend_from_slice(&[0x89, 0]); // ping in between
        frames.extend_from_slice(&[0x80, b.len() as u8]);
        frames.extend_from_slice(b);
        // 3: plain.
        frames.extend_from_slice(&[0x81, 3]);
        frames.extend_from_slice(b"abc");
        // Close 1000.
        frames.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
        server.write_all(&frames).await.unwrap();
        for _ in 0..2 {
            match ws.recv().await.unwrap() {
                Some(Event::Data(m)) => {
                    assert!(m.compressed);
                    assert_eq!(m.data, text.as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        match ws.recv().await.unwrap() {
            Some(Event::Data(m)) => assert!(!m.compressed && m.data == b"abc"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ws.recv().await.unwrap(), Some(Event::Close(Some(1000)))));
        // The client answered the ping with a masked pong.
        let mut pong = [0u8; 6];
        server.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong[..2], &[0x8A, 0x80]);
    }

    #[tokio::test]
    async fn rsv1_without_deflate_is_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let mut ws = RawWs {
            stream: client,
            buf: BytesMut::new(),
            inflater: None,
            server_no_context: false,
            mask_state: 1,
            partial: None,
            close_sent: false,
        };
        server.write_all(&[0xC1, 1, 0]).await.unwrap();
        assert!(ws.recv().await.is_err());
    }
}

//! The HTTP/1.1 proxy fast path, protocol part (no I/O, STYLE-ANCHORS §5.1): which
//! request heads it takes, the heads it sends on each way, and where a chunked body ends.
//!
//! The fast path serves the common case of a reverse proxy, an HTTP/1.1 request for the
//! upstream without a body or with a small one ([`MAX_FAST_BODY`], one plain
//! `Content-Length`), byte for byte: the client's head is rewritten straight into the
//! upstream's (no header map), and the response head likewise; response bodies are passed
//! through in their own framing (`Content-Length`, `chunked`, or until close). Everything
//! else — larger or chunked request bodies, `Expect`, `Upgrade`, app URLs, HTTP/1.0, absolute-form targets, heads
//! that do not parse — is left to hyper ([`RequestPlan::Fallback`]), which then serves the
//! rest of that connection with the bytes read so far. So each defined answer to bad input
//! (DESIGN §9: 400, 431, 508, …) stays hyper's and the existing path's.
//!
//! The rewriting is the one of [`super::headers`] (RFC 9110 §7.6): hop-by-hop fields
//! removed, `X-Forwarded-*` and `Forwarded` set or appended, `Via` appended.

use std::io::Write;

use super::headers::{is_dropped, is_valid_host, via_has_pseudonym_bytes, ForwardContext, ForwardedElement, PSEUDONYM};

/// Field lines per request head at most; a head with more is left to hyper.
pub const MAX_HEADERS: usize = 64;
/// Field lines per response head at most (hyper's client default, so both paths agree).
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// A response head larger than this is refused (502), on the fast path and by the full path's
/// client (`proxy::pool`), so both answer alike.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What to do with the bytes at the start of a client connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestPlan {
    /// The head is not complete yet.
    Incomplete,
    /// Not for the fast path: hyper serves this request and the rest of the connection.
    Fallback,
    /// Forward upstream.
    Forward(ForwardPlan),
    /// A WebSocket upgrade (or another upgrade) on an app URL, for the handshake to be
    /// answered without hyper.
    Upgrade(AppUpgrade),
}

/// A body-less HTTP/1.1 request on an app URL that asks for an upgrade (RFC 6455 §4.2.1 checks
/// are the caller's).
#[derive(Debug)]
pub struct AppUpgrade {
    /// Bytes of the client's buffer taken by the head.
    pub head_len: usize,
    /// The request, as the handshake code takes it.
    pub request: http::Request<()>,
}

impl PartialEq for AppUpgrade {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.request, &other.request);
        self.head_len == other.head_len
            && a.method() == b.method()
            && a.uri() == b.uri()
            && a.version() == b.version()
            && a.headers() == b.headers()
    }
}

impl Eq for AppUpgrade {}

/// Largest request body the fast path forwards: read whole and sent with the head (so a
/// request lost to a stale upstream connection can be sent again). Larger bodies, and bodies
/// without a plain `Content-Length`, stream through hyper.
pub const MAX_FAST_BODY: usize = 16 * 1024;

/// A request the fast path forwards.
#[derive(Debug, PartialEq, Eq)]
pub struct ForwardPlan {
    /// Bytes of the client's buffer taken by the head.
    pub head_len: usize,
    /// The body's `Content-Length` (at most [`MAX_FAST_BODY`]); its bytes follow the head.
    pub body_len: usize,
    /// The head to send upstream.
    pub upstream_head: Vec<u8>,
    /// `HEAD`: the response has no body whatever its headers say (RFC 9112 §6.3).
    pub head_method: bool,
    /// The client did not ask to close (`Connection: close`).
    pub keep_alive: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): the request may be sent again on a new
    /// connection when a reused one turns out to have been closed by the upstream.
    pub idempotent: bool,
}

/// Plans the request at the start of `buf`. `is_app_url` tells the paths that belong to
/// apps: an upgrade there is [`RequestPlan::Upgrade`], anything else there (pages) goes the
/// full way.
pub fn plan_request(buf: &[u8], ctx: &ForwardContext, is_app_url: impl Fn(&str) -> bool) -> RequestPlan {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return RequestPlan::Incomplete,
        // Bad heads, too many fields, HTTP/2's preface: hyper answers or detects them.
        Err(_) => return RequestPlan::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return RequestPlan::Fallback;
    };
    if method == "CONNECT" || !is_plain_origin_form(target) {
        return RequestPlan::Fallback;
    }
    let path = target.split('?').next().unwrap_or(target);
    if is_app_url(path) {
        return app_upgrade(req.headers, method, target, head_len).map_or(RequestPlan::Fallback, RequestPlan::Upgrade);
    }
    let Some(fields) = screen_request_fields(req.headers) else {
        return RequestPlan::Fallback;
    };
    RequestPlan::Forward(ForwardPlan {
        head_len,
        body_len: fields.body_len,
        upstream_head: upstream_request_head(method, target, req.headers, &fields, ctx, head_len),
        head_method: method == "HEAD",
        keep_alive: fields.keep_alive,
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
    })
}

/// What the fast path needs to know of a request's fields, once they passed its screening.
struct ScreenedFields<'a> {
    /// The one plain `Content-Length` (0 without one).
    body_len: usize,
    /// The one valid `Host`.
    host: &'a [u8],
    /// No `Connection: close`.
    keep_alive: bool,
    /// The other field names `Connection` lists (removed on the way up).
    named: Vec<&'a str>,
}

/// Screens a request's fields for the fast path; `None` when the full path must serve the
/// request: a framing it judges or streams (several or large `Content-Length`s,
/// `Transfer-Encoding`, `Expect`), an upgrade, a loop (our `Via` pseudonym), anything but
/// exactly one valid `Host` (RFC 9112 §3.2: the full path refuses it with 400).
fn screen_request_fields<'a>(fields: &[httparse::Header<'a>]) -> Option<ScreenedFields<'a>> {
    let mut keep_alive = true;
    let mut body_len = None;
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut named: Vec<&str> = Vec::new();
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            // One plain length up to MAX_FAST_BODY. A second field (even an identical one), a
            // list or a larger body takes the full path, which judges (RFC 9112 §6.3) or
            // streams it.
            match (body_len, plain_length(field.value)) {
                (None, Some(n)) if n <= MAX_FAST_BODY => body_len = Some(n),
                _ => return None,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(field.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in list_items(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                } else if let Ok(token) = std::str::from_utf8(token) {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("via") && via_has_pseudonym_bytes(field.value) {
            // A loop: the full path answers 508.
            return None;
        }
    }
    let host = host.filter(|h| hosts == 1 && is_valid_host(h))?;
    Some(ScreenedFields { body_len: body_len.unwrap_or(0), host, keep_alive, named })
}

/// The request head sent upstream: the request line, the client's fields without the
/// hop-by-hop ones (the shared rule, `headers::is_dropped`) and `Proxy-Authorization`, the one
/// parsed length, then our `X-Forwarded-*`, `Forwarded` and `Via` (DESIGN §2).
fn upstream_request_head(
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    screened: &ScreenedFields<'_>,
    ctx: &ForwardContext,
    head_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_len + 160);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff = ListMerge::default();
    let mut forwarded = ListMerge::default();
    let mut via = ListMerge::default();
    for field in fields {
        let name = field.name;
        if is_dropped(name, &screened.named) || name.eq_ignore_ascii_case("proxy-authorization") {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            // The framing sent on is the one parsed here (one plain length), whatever the
            // field looked like and whatever `Connection` named.
            push_length(&mut out, screened.body_len as u64);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff.add(field.value);
        } else if name.eq_ignore_ascii_case("forwarded") {
            forwarded.add(field.value);
        } else if name.eq_ignore_ascii_case("via") {
            via.add(field.value);
        } else if !(name.eq_ignore_ascii_case("x-forwarded-proto") || name.eq_ignore_ascii_case("x-forwarded-host")) {
            push_field(&mut out, name.as_bytes(), field.value);
        }
    }
    // The client's list is kept only from a trusted proxy (headers::to_upstream). Our items
    // are formatted straight into the head (no allocation per request).
    xff.push(&mut out, b"x-forwarded-for", ctx.trusted, format_args!("{}", ctx.peer));
    push_field(&mut out, b"x-forwarded-proto", ctx.proto().as_bytes());
    let element = ForwardedElement { ctx, host: visible_ascii(screened.host) };
    forwarded.push(&mut out, b"forwarded", ctx.trusted, format_args!("{element}"));
    push_field(&mut out, b"x-forwarded-host", screened.host);
    via.push(&mut out, b"via", true, format_args!("1.1 {PSEUDONYM}"));
    out.extend_from_slice(b"\r\n");
    out
}

/// The request on an app URL when it is body-less and asks for an upgrade; `None` for anything
/// else, including fields that `http` would not accept.
fn app_upgrade(fields: &[httparse::Header<'_>], method: &str, target: &str, head_len: usize) -> Option<AppUpgrade> {
    let mut headers = http::HeaderMap::with_capacity(fields.len());
    let mut upgrade = false;
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && field.value.trim_ascii() != b"0")
        {
            return None;
        }
        upgrade |= name.eq_ignore_ascii_case("upgrade");
        let name = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(field.value).ok()?;
        headers.append(name, value);
    }
    if !upgrade {
        return None;
    }
    let mut request =
        http::Request::builder().method(method).uri(target).version(http::Version::HTTP_11).body(()).ok()?;
    *request.headers_mut() = headers;
    Some(AppUpgrade { head_len, request })
}

/// What the bytes at the start of an upstream connection's buffer are.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponsePlan {
    /// The head is not complete yet.
    Incomplete,
    /// Not a response we can pass on (answered 502).
    Invalid(&'static str),
    /// An interim 1xx response of this many bytes, dropped (RFC 9110 §15.2 lets a proxy
    /// discard them for clients that did not ask with `Expect`); the final one follows.
    Interim(usize),
    /// The final response.
    Ready(ResponseHead),
}

/// The final response's head, rewritten for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the upstream buffer taken by the head.
    pub head_len: usize,
    /// The status code.
    pub status: u16,
    /// The head to send to the client.
    pub client_head: Vec<u8>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The upstream connection can carry another request after this response.
    pub upstream_keep_alive: bool,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, passed through as is.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// Plans the response at the start of `buf`, for a request that was a `HEAD` or not; the
/// client connection stays open after it when `keep_alive` (and the body has an end).
pub fn plan_response(buf: &[u8], head_method: bool, keep_alive: bool) -> ResponsePlan {
    // Most heads fit the smaller array (less to initialise per response); the rest are parsed
    // again with room for hyper's limit.
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Some(plan) = plan_response_in(&mut fields, buf, head_method, keep_alive) {
        return plan;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    plan_response_in(&mut fields, buf, head_method, keep_alive)
        .unwrap_or(ResponsePlan::Invalid("too many header fields"))
}

/// [`plan_response`] with room for `fields.len()` field lines; `None` when the head has more.
fn plan_response_in<'b>(
    fields: &mut [httparse::Header<'b>],
    buf: &'b [u8],
    head_method: bool,
    keep_alive: bool,
) -> Option<ResponsePlan> {
    let mut resp = httparse::Response::new(fields);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Some(ResponsePlan::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return None,
        Err(_) => return Some(ResponsePlan::Invalid("unparsable response head")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Some(ResponsePlan::Invalid("unparsable response head"));
    };
    match status {
        // RFC 9110 §15: three digits, the first 1 to 5 (what `http::StatusCode` takes is
        // 100-999; beyond 599 is passed on like hyper does).
        0..=99 => return Some(ResponsePlan::Invalid("status code out of range")),
        101 => return Some(ResponsePlan::Invalid("101 without an upgrade request")),
        100..=199 => return Some(ResponsePlan::Interim(head_len)),
        _ => {}
    }
    let scanned = scan_response_fields(resp.headers, version);
    let framing = match response_framing(&scanned, status, head_method, version) {
        Ok(framing) => framing,
        Err(reason) => return Some(ResponsePlan::Invalid(reason)),
    };
    let close_client = !keep_alive || framing == Framing::UntilClose;
    let client_head = client_response_head(&resp, status, &scanned, framing, close_client, head_len);
    Some(ResponsePlan::Ready(ResponseHead {
        head_len,
        status,
        client_head,
        framing,
        upstream_keep_alive: !scanned.upstream_close && framing != Framing::UntilClose,
    }))
}

/// What a response's fields say about its framing and its connection.
struct ResponseFields<'a> {
    /// `Transfer-Encoding: chunked` (once).
    chunked: bool,
    /// Any other transfer coding, or `chunked` twice.
    other_coding: bool,
    /// The `Content-Length` (all its values agreeing).
    length: Option<u64>,
    /// `Content-Length` values that disagree or do not parse.
    conflicting_length: bool,
    /// The upstream closes the connection after this response (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`).
    upstream_close: bool,
    /// The other field names `Connection` lists (removed on the way to the client).
    named: Vec<&'a str>,
}

/// Reads the framing and connection fields of a response head (`version` 0 is HTTP/1.0).
fn scan_response_fields<'a>(fields: &[httparse::Header<'a>], version: u8) -> ResponseFields<'a> {
    let mut scanned = ResponseFields {
        chunked: false,
        other_coding: false,
        length: None,
        conflicting_length: false,
        upstream_close: version == 0,
        named: Vec::new(),
    };
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in list_items(field.value) {
                if coding.eq_ignore_ascii_case(b"chunked") && !scanned.chunked {
                    scanned.chunked = true;
                } else {
                    scanned.other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            for item in list_items(field.value) {
                let parsed = std::str::from_utf8(item)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match (parsed, scanned.length) {
                    (Some(n), None) => scanned.length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => scanned.conflicting_length = true,
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in list_items(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    scanned.upstream_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    scanned.upstream_close = false;
                } else if let Ok(token) = std::str::from_utf8(token) {
                    scanned.named.push(token);
                }
            }
        }
    }
    scanned
}

/// How the response body is delimited (RFC 9112 §6.3), or why the response is refused (502).
fn response_framing(
    scanned: &ResponseFields<'_>,
    status: u16,
    head_method: bool,
    version: u8,
) -> Result<Framing, &'static str> {
    if version == 0 && (scanned.chunked || scanned.other_coding) {
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 makes the framing faulty.
        return Err("Transfer-Encoding in an HTTP/1.0 response");
    }
    Ok(if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if scanned.chunked || scanned.other_coding {
        if scanned.other_coding {
            // A coding we would have to undo to re-frame; hyper's path would lose it too.
            return Err("transfer coding other than chunked");
        }
        Framing::Chunked
    } else if scanned.conflicting_length {
        return Err("invalid Content-Length");
    } else if let Some(n) = scanned.length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    })
}

/// The response head sent to the client: HTTP/1.1 status line, the upstream's fields without
/// the hop-by-hop ones and its framing fields, the framing written from what was parsed, our
/// `Via`, and `Connection: close` when the client connection ends with this response.
fn client_response_head(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    scanned: &ResponseFields<'_>,
    framing: Framing,
    close_client: bool,
    head_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    // Three digits (httparse reads exactly three; 0-99 was refused above).
    let _ = write!(out, "{status} ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut via = ListMerge::default();
    for field in resp.headers.iter() {
        let name = field.name;
        // Framing fields are never copied: the client's framing is written below from what
        // was parsed here (a `Connection` naming them cannot leave a body unframed).
        if is_dropped(name, &scanned.named) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if name.eq_ignore_ascii_case("via") {
            via.add(field.value);
        } else {
            push_field(&mut out, name.as_bytes(), field.value);
        }
    }
    match framing {
        Framing::Chunked => push_field(&mut out, b"transfer-encoding", b"chunked"),
        Framing::Length(n) => {
            push_length(&mut out, n);
        }
        // A HEAD or 304 response's length describes the representation (RFC 9110 §8.6); a 204
        // has none.
        Framing::Empty if status != 204 && !scanned.chunked && !scanned.conflicting_length => {
            if let Some(n) = scanned.length {
                push_length(&mut out, n);
            }
        }
        Framing::Empty | Framing::UntilClose => {}
    }
    let received = if resp.version == Some(0) { "1.0" } else { "1.1" };
    via.push(&mut out, b"via", true, format_args!("{received} {PSEUDONYM}"));
    if close_client {
        push_field(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Finds the end of a chunked body (RFC 9112 §7.1) in the bytes passing through, without
/// copying them: [`advance`](Self::advance) says how many of the offered bytes belong to
/// the body.
#[derive(Debug, Default)]
pub struct ChunkedEnd {
    state: ChunkState,
    /// Some chunk data has been seen (a body that fails after it has begun).
    began: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data: this many bytes left, then CRLF.
    Data(u64),
    /// The CRLF after chunk data: this many of its bytes are still expected.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    /// The body is complete.
    Done,
}

/// A chunked body that cannot be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub struct ChunkError(&'static str);

/// Longest chunk-size or trailer line accepted; longer ones are an attack or a bug.
const MAX_CHUNK_LINE: usize = 4096;

impl ChunkedEnd {
    /// Consumes the start of `buf`; returns how many bytes belong to the body. Fewer than
    /// `buf.len()` means either the body ended ([`is_done`](Self::is_done)) or a line is
    /// incomplete (offer those bytes again with more after them).
    pub fn advance(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        pos += used;
                        self.state = ChunkState::Trailer;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        pos += used;
                        self.began = true;
                        self.state = ChunkState::Data(size);
                    }
                    Ok(httparse::Status::Partial) if rest.len() < MAX_CHUNK_LINE => return Ok(pos),
                    Ok(httparse::Status::Partial) => return Err(ChunkError("chunk-size line too long")),
                    Err(_) => return Err(ChunkError("bad chunk-size line")),
                },
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataEnd(2) } else { ChunkState::Data(left) };
                }
                ChunkState::DataEnd(expected) => {
                    let Some(&byte) = rest.first() else { return Ok(pos) };
                    let want = if expected == 2 { b'\r' } else { b'\n' };
                    if byte != want {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    pos += 1;
                    self.state = if expected == 2 { ChunkState::DataEnd(1) } else { ChunkState::Size };
                }
                ChunkState::Trailer => {
                    let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() >= MAX_CHUNK_LINE {
                            return Err(ChunkError("trailer line too long"));
                        }
                        return Ok(pos);
                    };
                    pos += line_end + 2;
                    if line_end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// Whether a chunk with data has begun (hyper's client has then produced body data).
    pub fn has_begun(&self) -> bool {
        self.began
    }

    /// Whether the whole body (last chunk and trailer section) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// A short answer of our own (502/504) as a complete HTTP/1.1 response.
pub fn text_answer(status: http::StatusCode, text: &str, keep_alive: bool) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        status.as_u16(),
        text.len()
    )
    .into_bytes();
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out
}

/// Whether `target` is an origin-form request target (RFC 9112 §3.2.1) made only of the
/// characters RFC 3986 allows unescaped in a path and query. Anything else (absolute-form,
/// `*`, raw spaces or controls that a lenient parser let through) is hyper's to judge.
fn is_plain_origin_form(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

/// The non-empty, trimmed items of a comma-separated field value.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// `value` as text when it is visible ASCII (what `HeaderValue::to_str` accepts).
fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// A `Content-Length` value that is plain digits (RFC 9110 §8.6; no sign, which `parse`
/// would take) and fits a `usize`.
fn plain_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Writes the field line `content-length: <n>` (digits formatted by hand: once per response).
fn push_length(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    push_field(out, b"content-length", &digits[at..]);
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The field lines of one list-valued field merged into one value, as
/// `headers::append_list` does: trimmed, empty ones skipped, joined by `, `.
#[derive(Default)]
struct ListMerge {
    joined: Vec<u8>,
}

impl ListMerge {
    fn add(&mut self, value: &[u8]) {
        let value = value.trim_ascii();
        if value.is_empty() {
            return;
        }
        if !self.joined.is_empty() {
            self.joined.extend_from_slice(b", ");
        }
        self.joined.extend_from_slice(value);
    }

    /// Writes the field line `name: <merged list>, <item>` (`keep`), or `name: <item>`.
    fn push(self, out: &mut Vec<u8>, name: &[u8], keep: bool, item: std::fmt::Arguments<'_>) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        if keep && !self.joined.is_empty() {
            out.extend_from_slice(&self.joined);
            out.extend_from_slice(b", ");
        }
        // Writing into a Vec cannot fail.
        let _ = out.write_fmt(item);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ctx(trusted: bool) -> ForwardContext {
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let nets: Vec<ipnet::IpNet> = if trusted { vec!["192.0.2.0/24".parse().unwrap()] } else { vec![] };
        ForwardContext::new(peer, false, &nets)
    }

    fn forward(raw: &str, trusted: bool) -> ForwardPlan {
        match plan_request(raw.as_bytes(), &ctx(trusted), |p| p == "/app") {
            RequestPlan::Forward(plan) => plan,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn text(head: &[u8]) -> String {
        String::from_utf8(head.to_vec()).unwrap()
    }

    #[test]
    fn a_plain_get_is_rewritten_like_the_full_path() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: example.org\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nProxy-Authorization: p\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nVia: 1.0 other\r\nAccept: */*\r\n\r\nGET /next";
        let plan = forward(raw, false);
        assert_eq!(plan.head_len, raw.len() - "GET /next".len());
        assert!(plan.keep_alive && plan.idempotent && !plan.head_method);
        let head = text(&plan.upstream_head);
        assert!(head.starts_with("GET /a?b=1 HTTP/1.1\r\nHost: example.org\r\n"), "{head}");
        for gone in ["Connection", "X-Secret", "Keep-Alive", "Proxy-Authorization", "1.2.3.4", "https"] {
            assert!(!head.contains(gone), "{gone} must go: {head}");
        }
        assert!(head.contains("\r\nAccept: */*\r\n"));
        assert!(head.contains("\r\nx-forwarded-for: 192.0.2.7\r\n"));
        assert!(head.contains("\r\nx-forwarded-proto: http\r\n"));
        assert!(head.contains("\r\nforwarded: for=192.0.2.7;proto=http;host=example.org\r\n"));
        assert!(head.contains("\r\nx-forwarded-host: example.org\r\n"));
        assert!(head.contains("\r\nvia: 1.0 other, 1.1 wsgate\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_trusted_peer_keeps_its_lists() {
        let raw = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nForwarded: for=10.0.0.1\r\n\r\n";
        let head = text(&forward(raw, true).upstream_head);
        assert!(head.contains("\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n"), "{head}");
        assert!(head.contains("\r\nforwarded: for=10.0.0.1, for=192.0.2.7;proto=http;host=h\r\n"), "{head}");
    }

    #[test]
    fn what_the_fast_path_leaves_to_hyper() {
        let c = ctx(false);
        let plan = |raw: &str| plan_request(raw.as_bytes(), &c, |p| p == "/app");
        for raw in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 16385\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\r\n",
            "GET /app HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /app?x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 wsgate\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET /a{b} HTTP/1.1\r\nHost: h\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        ] {
            assert_eq!(plan(raw), RequestPlan::Fallback, "{raw:?}");
        }
        assert_eq!(plan("GET / HTTP/1.1\r\nHost: h\r\n"), RequestPlan::Incomplete);
        let closing = forward("HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!closing.keep_alive && closing.head_method);
        assert!(!forward("POST /p HTTP/1.1\r\nHost: h\r\n\r\n", false).idempotent);
    }

    #[test]
    fn a_small_body_with_a_plain_length_is_forwarded() {
        let raw = "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /next";
        let plan = forward(raw, false);
        assert_eq!((plan.head_len, plan.body_len), (raw.len() - "abcGET /next".len(), 3));
        assert!(text(&plan.upstream_head).contains("\r\ncontent-length: 3\r\n"), "the length parsed goes on");
        assert_eq!(
            forward("PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 16384\r\n\r\n", false).body_len,
            MAX_FAST_BODY
        );
        assert_eq!(forward("GET / HTTP/1.1\r\nHost: h\r\ncontent-length:  007 \r\n\r\n", false).body_len, 7);
        assert_eq!(forward("GET / HTTP/1.1\r\nHost: h\r\n\r\n", false).body_len, 0);
        assert_eq!(plain_length(b"18446744073709551616"), None);
    }

    #[test]
    fn connection_never_removes_a_framing_or_routing_field() {
        // Issue 15: `Connection: Content-Length` stripped the length while the body went on
        // behind the head, and the upstream read the body as a request wsgate never parsed.
        for connection in
            ["Content-Length", "keep-alive, content-length", "Host", "Transfer-Encoding, Upgrade-Insecure"]
        {
            let raw = format!("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 31\r\nConnection: {connection}\r\n\r\nGET /hidden HTTP/1.1\r\nHost: h\r\n\r\n");
            let plan = forward(&raw, false);
            assert_eq!(plan.body_len, 31, "{connection}");
            let head = text(&plan.upstream_head);
            assert!(head.contains("\r\ncontent-length: 31\r\n"), "{connection}: {head}");
            assert!(head.starts_with("POST /a HTTP/1.1\r\nHost: h\r\n"), "{connection}: {head}");
        }
        for connection in ["Content-Length", "close, content-length"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: {connection}\r\n\r\nhello");
            let r = ready(&raw, false, true);
            assert_eq!(r.framing, Framing::Length(5));
            assert!(text(&r.client_head).contains("\r\ncontent-length: 5\r\n"), "{connection}");
        }
        let r = ready(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n",
            false,
            true,
        );
        assert!(text(&r.client_head).contains("\r\ntransfer-encoding: chunked\r\n"));
        // A HEAD answer keeps the representation's length; a 204 has none.
        let r = ready("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true, true);
        assert!(text(&r.client_head).contains("\r\ncontent-length: 12\r\n"));
        let r = ready("HTTP/1.1 204 No Content\r\nContent-Length: 12\r\n\r\n", false, true);
        assert!(!text(&r.client_head).contains("ontent-length"));
    }

    #[test]
    fn an_unusual_host_goes_the_full_way() {
        let c = ctx(false);
        for host in ["a@evil.example:80", "h h", "h:80:90", "h:x", "[::1", "h\"x"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(plan_request(raw.as_bytes(), &c, |_| false), RequestPlan::Fallback, "{host}");
        }
        for host in ["h", "h:8080", "127.0.0.1:1", "[::1]:80", "xn--bcher-kva.example"] {
            forward(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"), false);
        }
    }

    #[test]
    fn app_upgrades_are_recognised() {
        let app = |p: &str| p == "/app";
        let ws = "GET /app?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\nframe";
        let c = ctx(false);
        let RequestPlan::Upgrade(AppUpgrade { head_len, request: req }) = plan_request(ws.as_bytes(), &c, app) else {
            panic!("not an app upgrade")
        };
        assert_eq!(head_len, ws.len() - "frame".len());
        assert_eq!((req.method().as_str(), req.uri().path(), req.uri().query()), ("GET", "/app", Some("x=1")));
        assert_eq!(req.headers()["sec-websocket-key"], "k");
        for other in [
            "GET /app HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /other HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /app HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "POST /app HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc",
            "GET /app HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n",
        ] {
            assert!(!matches!(plan_request(other.as_bytes(), &c, app), RequestPlan::Upgrade(_)), "{other:?}");
        }
    }

    fn ready(raw: &str, head_method: bool, keep_alive: bool) -> ResponseHead {
        match plan_response(raw.as_bytes(), head_method, keep_alive) {
            ResponsePlan::Ready(head) => head,
            other => panic!("not ready: {other:?}"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let r = ready("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, true);
        assert_eq!((r.framing, r.upstream_keep_alive, r.status), (Framing::Length(5), true, 200));
        let r = ready("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", false, true);
        assert_eq!(r.framing, Framing::Chunked);
        let head = text(&r.client_head);
        assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
        assert!(head.contains("\r\ntransfer-encoding: chunked\r\n"));
        let r = ready("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false, true);
        assert_eq!(r.framing, Framing::Empty);
        let r = ready("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, true);
        assert_eq!(r.framing, Framing::Empty);
        let r = ready("HTTP/1.1 200 OK\r\n\r\n", false, true);
        assert_eq!((r.framing, r.upstream_keep_alive), (Framing::UntilClose, false));
        assert!(text(&r.client_head).contains("\r\nconnection: close\r\n"));
        let r = ready("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, true);
        assert!(!r.upstream_keep_alive);
        let r = ready("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false, true);
        assert!(r.upstream_keep_alive);
        assert!(text(&r.client_head).contains("\r\nvia: 1.0 wsgate\r\n"));
        let r = ready("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false, true);
        assert!(!r.upstream_keep_alive);
        assert!(!text(&r.client_head).contains("onnection"), "the upstream's close is hop-by-hop");
        let r = ready("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", false, true);
        assert_eq!(r.framing, Framing::Length(7));
    }

    #[test]
    fn bad_and_interim_responses() {
        let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert_eq!(
            plan_response(format!("{interim}HTTP/1.1 200").as_bytes(), false, true),
            ResponsePlan::Interim(interim.len())
        );
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 051 Early\r\n\r\n",
        ] {
            assert!(matches!(plan_response(raw.as_bytes(), false, true), ResponsePlan::Invalid(_)), "{raw:?}");
        }
        assert_eq!(plan_response(b"HTTP/1.1 200 OK\r\n", false, true), ResponsePlan::Incomplete);
    }

    #[test]
    fn the_response_head_is_rewritten() {
        let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nVia: 1.1 cdn\r\nContent-Length: 2\r\n\r\nok";
        let head = text(&ready(raw, false, false).client_head);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 2\r\nvia: 1.1 cdn, 1.1 wsgate\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn chunked_end_is_found_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 0..=body.len() {
            let mut end = ChunkedEnd::default();
            let mut pending: Vec<u8> = Vec::new();
            let mut passed = 0;
            for part in [&body[..split], &body[split..]] {
                pending.extend_from_slice(part);
                let used = end.advance(&pending).unwrap();
                passed += used;
                pending.drain(..used);
            }
            assert!(end.is_done(), "split at {split}");
            assert_eq!(passed, body.len());
        }
        // Bytes after the end are not part of the body.
        let mut end = ChunkedEnd::default();
        assert_eq!(end.advance(b"0\r\n\r\nHTTP/1.1").unwrap(), 5);
        assert!(end.is_done());
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcX", b"3\r\nabc\rX"] {
            assert!(ChunkedEnd::default().advance(bad).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(ChunkedEnd::default().advance(&long).is_err());
    }

    #[test]
    fn error_answers_are_complete_responses() {
        let a = text(&text_answer(http::StatusCode::BAD_GATEWAY, "502 Bad Gateway: x\n", false));
        assert!(a.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(a.contains("content-length: 19\r\n") && a.contains("connection: close\r\n"));
        assert!(a.ends_with("\r\n\r\n502 Bad Gateway: x\n"));
    }
}

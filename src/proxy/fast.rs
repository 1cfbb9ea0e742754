//! The HTTP/1.1 proxy fast path, I/O part: one planned request ([`h1::ForwardPlan`])
//! forwarded over a kept-alive upstream connection that the client connection holds between
//! its requests, and the response passed back in its own framing.
//!
//! Why: behind hyper's client and server a proxied request costs about 10 µs of user-space
//! CPU on the project machine (header maps built and rebuilt, the pooled client's checkout,
//! a channel and a task hop to the upstream connection, a task spawned per response to
//! return the connection); nginx spends under 4 µs. Here the whole exchange runs in the
//! client connection's task: two writes and two reads, the heads rewritten as bytes.
//! Failures answer like the full path (502/504 with the same text, DESIGN §9).

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::UpstreamError;
use super::h1::{self, ChunkedEnd, ForwardPlan, Framing, ResponseHead, ResponsePlan, MAX_RESPONSE_HEAD};
use super::Proxy;

/// Bytes asked of the kernel per read of a body.
const READ_CHUNK: usize = 16 * 1024;

/// An upstream connection held by a client connection between its requests.
pub struct UpstreamConn {
    stream: TcpStream,
    /// Bytes read from the upstream and not yet passed on.
    buf: BytesMut,
    /// The proxy (upstream settings) it belongs to: after a reload that changed the
    /// upstream, a held connection goes back to its own pool, not to the new one.
    home: Proxy,
}

/// How one fast-path exchange went, for metrics and for the client connection.
#[derive(Debug)]
pub struct Exchange {
    /// The status sent to the client (the upstream's, or ours on failure).
    pub status: StatusCode,
    /// The upstream failure's kind (`upstream_errors_total{kind}`), when we answered for it.
    pub failure: Option<&'static str>,
    /// From the start of the request to the response head.
    pub head_time: Duration,
    /// Whether the client connection can carry another request.
    pub keep_alive: bool,
}

/// Why no usable response head came.
enum HeadError {
    /// The upstream closed (or reset) the connection; `untouched`: before sending anything,
    /// so a reused connection that the upstream had closed meanwhile.
    Closed { untouched: bool },
    /// Not a response we can pass on.
    Invalid(&'static str),
}

impl Proxy {
    /// Forwards `plan` and writes the answer to `client`. `upstream` is the connection this
    /// client connection holds; it is taken, and put back when it can carry another request.
    pub async fn forward_fast<C>(
        &self,
        client: &mut C,
        plan: &ForwardPlan,
        upstream: &mut Option<UpstreamConn>,
    ) -> Exchange
    where
        C: AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let mut retried = false;
        let (mut conn, head) = loop {
            let held = match upstream.take() {
                Some(conn) if Arc::ptr_eq(&conn.home.inner, &self.inner) && is_open(&conn.stream) => Some(conn),
                other => {
                    Self::release_upstream(other);
                    None
                }
            };
            let (mut conn, reused) = match held {
                Some(conn) => (conn, true),
                None => match self.take_idle() {
                    Some(stream) => (self.upstream_conn(stream), true),
                    None => match self.connect_upstream().await {
                        Ok(stream) => (self.upstream_conn(stream), false),
                        Err(error) => return self.answer_failure(client, error, plan, started).await,
                    },
                },
            };
            // A reused connection may have been closed by the upstream's keep-alive timeout
            // just now; an idempotent request is then sent once more on a new one.
            let may_retry = reused && plan.idempotent && !retried;
            if conn.stream.write_all(&plan.upstream_head).await.is_err() {
                if may_retry {
                    retried = true;
                    continue;
                }
                let error = UpstreamError::Reset("the upstream connection failed while sending the request".into());
                return self.answer_failure(client, error, plan, started).await;
            }
            let timeout = self.settings().response_timeout;
            match tokio::time::timeout(timeout, conn.read_head(plan)).await {
                Ok(Ok(head)) => break (conn, head),
                Ok(Err(HeadError::Closed { untouched: true })) if may_retry => retried = true,
                Ok(Err(HeadError::Closed { .. })) => {
                    let error = UpstreamError::Reset("the upstream closed the connection before answering".into());
                    return self.answer_failure(client, error, plan, started).await;
                }
                Ok(Err(HeadError::Invalid(why))) => {
                    return self.answer_failure(client, UpstreamError::Protocol(why.into()), plan, started).await;
                }
                Err(_) => return self.answer_failure(client, UpstreamError::ResponseTimeout, plan, started).await,
            }
        };
        let head_time = started.elapsed();
        let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let (complete, client_ok) = conn.pass_response(client, &head).await;
        let keep_alive = client_ok && complete && plan.keep_alive && head.framing != Framing::UntilClose;
        if complete && head.upstream_keep_alive && conn.buf.is_empty() {
            *upstream = Some(conn);
        }
        Exchange { status, failure: None, head_time, keep_alive }
    }

    /// Hands the connection a client connection held back to its proxy's idle pool.
    pub fn release_upstream(conn: Option<UpstreamConn>) {
        if let Some(conn) = conn.filter(|c| c.buf.is_empty()) {
            conn.home.inner.idle_streams.put(conn.stream);
        }
    }

    fn upstream_conn(&self, stream: TcpStream) -> UpstreamConn {
        UpstreamConn { stream, buf: BytesMut::new(), home: self.clone() }
    }

    /// The most recently idled upstream connection that is still open.
    fn take_idle(&self) -> Option<TcpStream> {
        self.inner.idle_streams.take(is_open)
    }

    async fn connect_upstream(&self) -> Result<TcpStream, UpstreamError> {
        let authority = self
            .inner
            .authority
            .as_ref()
            .ok_or_else(|| UpstreamError::Connect("the upstream URI has no authority".into()))?;
        super::pool::connect(authority, self.settings().connect_timeout).await
    }

    /// Answers a failure like the full path: 502/504 with the same text, and a debug log.
    async fn answer_failure<C>(
        &self,
        client: &mut C,
        error: UpstreamError,
        plan: &ForwardPlan,
        started: Instant,
    ) -> Exchange
    where
        C: AsyncWrite + Unpin,
    {
        tracing::debug!(kind = error.kind(), error = ?error, "proxy failure");
        let status = error.status();
        let answer = h1::text_answer(status, &error.answer_text(), plan.keep_alive);
        let client_ok = client.write_all(&answer).await.is_ok() && client.flush().await.is_ok();
        Exchange {
            status,
            failure: Some(error.kind()),
            head_time: started.elapsed(),
            keep_alive: client_ok && plan.keep_alive,
        }
    }
}

impl UpstreamConn {
    /// Reads until the final response head is complete; interim 1xx responses are dropped.
    async fn read_head(&mut self, plan: &ForwardPlan) -> Result<ResponseHead, HeadError> {
        let mut touched = false;
        loop {
            match h1::plan_response(&self.buf, plan.head_method, plan.keep_alive) {
                ResponsePlan::Ready(head) => return Ok(head),
                ResponsePlan::Invalid(why) => return Err(HeadError::Invalid(why)),
                ResponsePlan::Interim(len) => {
                    self.buf.advance(len);
                    touched = true;
                    continue;
                }
                ResponsePlan::Incomplete if self.buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(HeadError::Invalid("response head too large"));
                }
                ResponsePlan::Incomplete => {}
            }
            self.buf.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(HeadError::Closed { untouched: !touched && self.buf.is_empty() }),
                Ok(_) => touched = true,
            }
        }
    }

    /// Writes the head and passes the body on, in its own framing. Returns whether the body
    /// was complete and whether the client took everything.
    async fn pass_response<C>(&mut self, client: &mut C, head: &ResponseHead) -> (bool, bool)
    where
        C: AsyncWrite + Unpin,
    {
        self.buf.advance(head.head_len);
        let mut body = BodyEnd::new(head.framing);
        let mut first = &head.client_head[..];
        loop {
            // How much of what is buffered belongs to the body, and whether that ends it.
            let Ok((used, done)) = body.advance(&self.buf) else {
                // A body that breaks its framing: the client's connection is closed, after the
                // head when a chunk had begun, as the full path does (hyper sends the head with
                // the first data): the client sees a short body, or no answer.
                if body.has_begun() {
                    let _ = write_both(client, first, &[]).await;
                }
                return (false, false);
            };
            let sent = write_both(client, first, &self.buf[..used]).await;
            first = &[];
            self.buf.advance(used);
            if !sent {
                // The client is gone; the upstream connection is still clean if the body
                // was read to its end.
                return (done, false);
            }
            if done {
                return (true, true);
            }
            if !self.fill().await {
                // The upstream's end completes a body delimited by it; any other body ended
                // early, and the client must not take a short body for a whole one, so its
                // connection is closed too.
                let complete = head.framing == Framing::UntilClose;
                return (complete, complete);
            }
        }
    }

    /// Reads more of the body; `false` at the upstream's end or failure.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(READ_CHUNK);
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }
}

/// Where a response body ends in the bytes passing through (RFC 9112 §6.3).
enum BodyEnd {
    /// This many bytes are left.
    Length(u64),
    /// The chunked body's last chunk and trailer section.
    Chunked(ChunkedEnd),
    /// Whatever comes, until the upstream closes.
    UntilClose,
}

impl BodyEnd {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyEnd::Length(0),
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunked(ChunkedEnd::default()),
            Framing::UntilClose => BodyEnd::UntilClose,
        }
    }

    /// Whether a chunked body's data has begun.
    fn has_begun(&self) -> bool {
        matches!(self, BodyEnd::Chunked(end) if end.has_begun())
    }

    /// How many of `buf`'s bytes belong to the body, and whether the body ends with them.
    fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), h1::ChunkError> {
        Ok(match self {
            BodyEnd::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                (take, *left == 0)
            }
            BodyEnd::Chunked(end) => {
                let used = end.advance(buf)?;
                (used, end.is_done())
            }
            BodyEnd::UntilClose => (buf.len(), false),
        })
    }
}

/// Whether an idle upstream connection is still usable. Whatever the upstream sent to it (its
/// close, mostly) has been seen by the reactor: then the probe reads it and says no; else
/// the probe returns at once without a system call.
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Writes `a` then `b` (either may be empty) with vectored writes and flushes; `false` when
/// the client is gone.
async fn write_both<C: AsyncWrite + Unpin>(client: &mut C, mut a: &[u8], mut b: &[u8]) -> bool {
    while !a.is_empty() || !b.is_empty() {
        let slices = [IoSlice::new(a), IoSlice::new(b)];
        let written = match client.write_vectored(&slices).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let from_a = written.min(a.len());
        a = &a[from_a..];
        b = &b[(written - from_a).min(b.len())..];
    }
    client.flush().await.is_ok()
}

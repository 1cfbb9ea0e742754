//! Serving an HTTP/1.1 connection: requests for the upstream without a body or with a small
//! one of plain `Content-Length` take the proxy's fast path ([`crate::proxy::fast`]) in this
//! task; at the first request that needs more (an app URL, a WebSocket or other upgrade, a
//! larger or chunked body, a body that is late, anything that does not parse plainly) the
//! connection is handed to hyper with every byte read so far, and hyper serves
//! it from there on ([`super::connection`]). HTTP/2 connections go to hyper at once
//! (their preface does not parse as HTTP/1.1).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::router::Route;
use super::{record_proxy_outcome, upgrade, Body, State};
use crate::prefixed::Prefixed;
use crate::proxy::fast::UpstreamConn;
use crate::proxy::h1::{self, RequestPlan};
use crate::proxy::headers::ForwardContext;
use crate::proxy::{ClientInfo, Proxy};
use crate::session::direct::{SessionIo, Stream};

/// Buffer space asked of the kernel per read of a request head.
const READ_CHUNK: usize = 4096;
/// Bound on the TLS close at the end of a connection (a client that does not read must not
/// hold it).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How the request loop left the connection.
pub(super) enum Handover<I> {
    /// It is closed (or to be dropped).
    Closed,
    /// A WebSocket was accepted: its session runs on the connection and writes the 101 (the
    /// bytes given) ahead of its first frames.
    Session(upgrade::SessionStart, Prefixed<I>, bytes::Bytes),
    /// hyper serves the rest of it.
    Hyper(Prefixed<I>),
}

/// Serves fast-path requests until the connection ends or needs more than the fast path.
pub(super) async fn serve_requests<I>(state: &Arc<State>, mut io: I, client: &ClientInfo) -> Handover<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::new();
    let mut upstream = HeldUpstream(None);
    let mut drain = state.drain.clone();
    loop {
        // One load per request, as in the full path: a reload applies from the next request.
        let runtime = state.runtime.load_full();
        let limits = &runtime.config.limits;
        let proxy = &runtime.proxy;
        let ctx = ForwardContext::new(client.peer, client.tls, &proxy.settings().trusted_proxies);
        // The header deadline covers the whole head, from the moment we wait for it (hyper's
        // `header_read_timeout`, which also bounds an idle keep-alive connection).
        let deadline = crate::time::deadline(limits.header_read_timeout);
        let plan = loop {
            let plan = h1::plan_request(&buf, &ctx, |path| runtime.router.app(path).is_some());
            if !matches!(plan, RequestPlan::Incomplete) {
                break plan;
            }
            if buf.len() >= limits.max_header_bytes {
                // hyper answers 431 from the same bytes.
                break RequestPlan::Fallback;
            }
            buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)) => read,
                // Draining: an idle or half-received request is not started any more.
                _ = drain.signalled() => Ok(Ok(0)),
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed, or the head did not come in time: the connection ends
                // without an answer, as hyper does.
                _ => return Handover::Closed,
            }
        };
        // A head over the limit is hyper's to refuse (431), however it arrived.
        match plan {
            RequestPlan::Forward(mut plan) if plan.head_len <= limits.max_header_bytes => {
                // A small body is read whole and sent with the head. One that does not come
                // by the header deadline goes to hyper with what came, which streams it as
                // before: the fast path never turns a request down.
                let whole = plan.head_len + plan.body_len;
                match fill(&mut io, &mut buf, whole, deadline).await {
                    Fill::Done => {}
                    Fill::Late => return Handover::Hyper(Prefixed::new(leftover(buf), io)),
                    Fill::Closed => return Handover::Closed,
                }
                plan.upstream_head.extend_from_slice(&buf[plan.head_len..whole]);
                buf.advance(whole);
                if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
                    // A body made it large: a kept-alive connection waits with a small one.
                    buf = BytesMut::new();
                }
                let exchange = proxy.forward_fast(&mut io, &plan, &mut upstream.0).await;
                record_proxy_outcome(&state.metrics, exchange.status, exchange.failure, exchange.head_time);
                if !exchange.keep_alive || drain.is_signalled() {
                    drop(upstream);
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
                    return Handover::Closed;
                }
                continue;
            }
            RequestPlan::Upgrade(upgrade) if upgrade.head_len <= limits.max_header_bytes => {
                let req = upgrade.request;
                let route =
                    match runtime
                        .router
                        .classify(req.method(), req.version(), req.uri().path(), req.headers(), |_| false)
                    {
                        Route::WebSocket(app) => Some(app.clone()),
                        _ => None,
                    };
                // A WebSocket on an app URL: answered here, the session started in a task of
                // its own (no hand-over through hyper's upgrade machinery). Any other upgrade
                // there is hyper's, below.
                if let Some(route) = route {
                    buf.advance(upgrade.head_len);
                    drop(runtime);
                    // The auth subrequest (a whole HTTP exchange) is boxed: only some apps
                    // have one, and inline it would size every connection's task.
                    let refused = match route.auth.is_some() {
                        true => Box::pin(upgrade::authorize(state, client, &route, &req)).await,
                        false => None,
                    };
                    let (response, start) = match refused {
                        Some(refused) => (refused, None),
                        None => upgrade::decide(state, client, route, &req).await,
                    };
                    if let Some(start) = start {
                        // The 101 leaves with the app's first messages (one write, not two).
                        let head = response_head(&response.into_parts().0).into();
                        return Handover::Session(start, Prefixed::new(leftover(buf), io), head);
                    }
                    if !write_response(&mut io, response).await {
                        return Handover::Closed;
                    }
                    // Refused: the connection goes on, as with hyper.
                    continue;
                }
            }
            _ => {}
        }
        // Anything else: hyper serves this request and the rest of the connection.
        return Handover::Hyper(Prefixed::new(leftover(buf), io));
    }
}

/// The upstream connection a client connection keeps between its fast-path requests: back to
/// the fast path's pool when the request loop ends, however it ends (a connection broken
/// mid-exchange was already dropped by `forward_fast`).
struct HeldUpstream(Option<UpstreamConn>);

impl Drop for HeldUpstream {
    fn drop(&mut self) {
        Proxy::release_upstream(self.0.take());
    }
}

/// How reading a request body into the buffer ended.
enum Fill {
    Done,
    /// The deadline passed first.
    Late,
    /// The client closed or the read failed.
    Closed,
}

/// Reads until `buf` holds `want` bytes or `deadline` passes.
async fn fill<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, want: usize, deadline: Instant) -> Fill {
    while buf.len() < want {
        buf.reserve(want - buf.len());
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Fill::Closed,
            Err(_) => return Fill::Late,
        }
    }
    Fill::Done
}

/// A client connection the fast path serves: what its WebSocket sessions run over.
pub(super) trait Connection: Stream + Sized {
    /// The session's connection after the handshake; by default a boxed stream (the queued
    /// path).
    fn session_io(io: Prefixed<Self>) -> SessionIo {
        SessionIo::Other(Box::new(io))
    }
}

/// Plain TCP takes the direct-write path ([`crate::session::direct`]).
impl Connection for TcpStream {
    fn session_io(io: Prefixed<Self>) -> SessionIo {
        let (pending, stream) = io.into_parts();
        SessionIo::Tcp(stream, pending)
    }
}

impl Connection for tokio_rustls::server::TlsStream<TcpStream> {}

/// The bytes read past the last request, in an allocation of their own: the read buffer
/// (4 KiB and more) is not kept alive for a few bytes by a long-lived connection.
fn leftover(buf: BytesMut) -> bytes::Bytes {
    if buf.is_empty() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::copy_from_slice(&buf)
    }
}

/// Writes one of our own refusals (with its short body) in HTTP/1.1; `false` when the client
/// is gone.
async fn write_response<I: AsyncWrite + Unpin>(io: &mut I, response: http::Response<Body>) -> bool {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let mut out = response_head(&parts);
    // Our refusals are short texts in memory: collecting them does not wait.
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    io.write_all(&out).await.is_ok() && io.flush().await.is_ok()
}

/// The status line and header fields of one of our responses in HTTP/1.1; a 101 is complete,
/// anything else still needs its framing and body.
fn response_head(parts: &http::response::Parts) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", parts.status.as_u16(), parts.status.canonical_reason().unwrap_or("")).as_bytes(),
    );
    for (name, value) in &parts.headers {
        // Framing is ours (write_response), whatever an app's rejection carried.
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"\r\n");
    }
    out
}

//! Serving one accepted connection: the limit on connections, the TLS handshake, the HTTP/1.1
//! fast path ([`super::fastpath`]) or hyper's HTTP/1.1 and HTTP/2 servers, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::fastpath::{self, Connection, Handover};
use super::h2_guard::{CloseReason, ConnectionGuard};
use super::{handle, upgrade, ConnectionSlot, State};
use crate::proxy::ClientInfo;

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_H1_BUFFER: usize = 8192;

/// Which HTTP version a connection speaks, when known before hyper sees it.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// Detect from the first bytes (HTTP/1.1, or HTTP/2 prior knowledge).
    Detect,
    Http1,
    Http2,
}

/// Serves a connection accepted on a listener (`tls`: the listener's acceptor, if it is a TLS
/// one) until it ends.
pub(super) async fn serve_connection(
    state: Arc<State>,
    stream: TcpStream,
    client: ClientInfo,
    tls: Option<TlsAcceptor>,
) {
    let Some(slot) = ConnectionSlot::acquire(&state).map(Arc::new) else {
        tracing::debug!(peer = %client.peer, "max_connections reached; refused at accept");
        return refuse_full(stream, tls.is_some()).await;
    };
    let slot = Some(slot);
    let deadline = state.runtime.load().config.limits.header_read_timeout;
    match tls {
        // Boxed: rustls' state is kilobytes; inline it would size every plain connection's
        // task (which lives on as the session of a WebSocket on it).
        Some(acceptor) => Box::pin(serve_tls(state, stream, client, slot, acceptor, deadline)).await,
        None => {
            // Wait for the first byte under the header deadline: hyper's own timeout starts only
            // once HTTP/1 parsing has begun.
            let mut first = [0u8; 1];
            let mut drain = state.drain.clone();
            let peeked = tokio::select! {
                peeked = tokio::time::timeout(deadline, stream.peek(&mut first)) => peeked,
                // Draining: a connection that has sent nothing yet is not waited for.
                _ = drain.signalled() => return,
            };
            match peeked {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            if fast_path_on(&state) {
                serve_http1(state, stream, client, slot, Protocol::Detect).await;
            } else {
                serve_io(state, stream, client, slot, Protocol::Detect).await;
            }
        }
    }
}

/// The answer past `max_connections`: the connection holds no slot. Plain HTTP waits (briefly)
/// for the client's first bytes and answers them with a complete 503, so that the client reads
/// a response to its request rather than an unsolicited one (HTTP clients treat a response that
/// arrives before the request was sent as an error); then a short linger so closing does not
/// reset the connection before the answer is read. A client that sends nothing within the wait
/// is closed. TLS is closed without a handshake, which would cost more than the refusal. At
/// most [`MAX_REFUSING`] refusals wait at once; past that a connection is closed at once, so a
/// flood beyond the limit holds no more than that many descriptors.
async fn refuse_full(mut stream: TcpStream, tls: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 46\r\n\r\n503 Service Unavailable: too many connections\n";
    const WAIT: Duration = Duration::from_millis(1000);
    const LINGER: Duration = Duration::from_millis(200);
    static REFUSING: AtomicUsize = AtomicUsize::new(0);
    if tls {
        return;
    }
    if REFUSING.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let mut sink = [0u8; 4096];
    let request = tokio::time::timeout(WAIT, stream.read(&mut sink)).await;
    if matches!(request, Ok(Ok(n)) if n > 0) {
        let refused = async {
            stream.write_all(ANSWER).await?;
            stream.shutdown().await?;
            // Read what the client sent meanwhile, so that closing does not reset the
            // connection before the client has read the answer.
            while stream.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(LINGER, refused).await;
    }
    REFUSING.fetch_sub(1, Ordering::Relaxed);
}

/// How many over-limit connections may wait for their 503 at once.
const MAX_REFUSING: usize = 256;

/// A TLS connection: the handshake within `deadline`, then HTTP/2 (by ALPN) or HTTP/1.1.
async fn serve_tls(
    state: Arc<State>,
    stream: TcpStream,
    client: ClientInfo,
    slot: Option<Arc<ConnectionSlot>>,
    acceptor: TlsAcceptor,
    deadline: Duration,
) {
    let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(peer = %client.peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(peer = %client.peer, "TLS handshake timed out");
            return;
        }
    };
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => serve_io(state, stream, client, slot, Protocol::Http2).await,
        _ if fast_path_on(&state) => serve_http1(state, stream, client, slot, Protocol::Http1).await,
        _ => serve_io(state, stream, client, slot, Protocol::Http1).await,
    }
}

/// `[upstream] fast_path`: whether HTTP/1.1 connections start on the fast path.
fn fast_path_on(state: &State) -> bool {
    state.runtime.load().config.upstream.fast_path
}

/// Serves an HTTP/1.1 (or not yet known) connection: fast-path requests in this task
/// ([`fastpath::serve_requests`]), then, if the connection needs more, a WebSocket session or
/// hyper.
async fn serve_http1<I: Connection>(
    state: Arc<State>,
    io: I,
    client: ClientInfo,
    slot: Option<Arc<ConnectionSlot>>,
    protocol: Protocol,
) {
    let Some(slot) = slot else {
        // Full: hyper answers the 503.
        return Box::pin(serve_io(state, io, client, None, protocol)).await;
    };
    match fastpath::serve_requests(&state, io, &client).await {
        Handover::Closed => {}
        // A task of its own, sized for the session alone: idle WebSockets are many, and this
        // task's state (the request loop's, the layers above) would stay with each of them.
        Handover::Session(start, io, head) => {
            start.queue_head(head);
            drop(tokio::spawn(upgrade::run_session(state, slot, start, I::session_io(io))));
        }
        Handover::Hyper(io) => Box::pin(serve_io(state, io, client, Some(slot), protocol)).await,
    }
}

/// Serves a connection with hyper (HTTP/1.1 with upgrades, or HTTP/2).
async fn serve_io<I>(
    state: Arc<State>,
    io: I,
    client: ClientInfo,
    slot: Option<Arc<ConnectionSlot>>,
    protocol: Protocol,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_read_timeout, max_header_bytes) = {
        let runtime = state.runtime.load();
        (runtime.config.limits.header_read_timeout, runtime.config.limits.max_header_bytes)
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(max_header_bytes.max(MIN_H1_BUFFER))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        // RFC 8441 §3: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL so browsers bootstrap
        // WebSockets over this HTTP/2 connection.
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = match protocol {
        Protocol::Detect => builder,
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };
    // Idle timeout and cancel limit (see `h2_guard`). HTTP/1 connections get the idle rule
    // too (hyper's own header timeout closes them first when nothing is in flight); only
    // HTTP/2 streams count cancels.
    let guard = ConnectionGuard::new();
    let service = {
        let state = state.clone();
        let guard = guard.clone();
        service_fn(move |mut req| {
            let stream = guard.stream(req.version() == http::Version::HTTP_2);
            if upgrade::is_extended_connect(&req) {
                // A WebSocket over HTTP/2 keeps the connection busy for its whole session
                // (`upgrade::accept` moves this token into the session task).
                req.extensions_mut().insert(guard.active());
            }
            let handled = handle(state.clone(), client, slot.clone(), req);
            async move { handled.await.map(|response| stream.attach(response)) }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut drain = state.drain.clone();
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = drain.signalled() => {
            // Finish in-flight requests, accept no new ones; the outer deadline bounds this.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        reason = guard.close_reason(header_read_timeout) => {
            match reason {
                CloseReason::Idle => tracing::debug!(peer = %client.peer, "idle connection closed"),
                CloseReason::Cancelled => tracing::info!(
                    peer = %client.peer,
                    cancelled = guard.cancelled(),
                    "too many streams cancelled by the client; GOAWAY"
                ),
            }
            // GOAWAY; streams already started may finish, within the same timeout.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(header_read_timeout, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        // Peers resetting connections is normal; not worth more than debug.
        tracing::debug!(peer = %client.peer, %error, "connection ended with an error");
    }
}

//! Listening sockets, the accept loop and the serving of one connection (TLS, protocol
//! detection, hyper's HTTP/1.1 and HTTP/2 servers, graceful shutdown).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::h2_guard::{CloseReason, ConnectionGuard};
use super::reload::ListenerShared;
use super::{handle, upgrade, ConnectionSlot, State};
use crate::proxy::ClientInfo;

/// Pending connections the kernel keeps for us.
const BACKLOG: i32 = 1024;
/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_H1_BUFFER: usize = 8192;

/// Binds `addr` with `SO_REUSEADDR` (restarts do not wait for TIME_WAIT) and returns the
/// listener with its actual address.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    let listener = TcpListener::from_std(socket.into())?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Turns a socket passed by systemd into a tokio listener.
pub(super) fn adopt(listener: std::net::TcpListener) -> std::io::Result<(TcpListener, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Counts a running accept loop for the watchdog probe.
struct LoopGuard(Arc<State>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.accept_loops.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until shutdown is signalled or `stop` turns `true` (the listener was
/// removed by a reload; its established connections go on). One failed accept never ends the
/// loop; running out of file descriptors backs off instead of spinning. TLS settings are read
/// per connection from `shared`, so a reload changes them without closing the socket.
pub(super) async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    mut stop: watch::Receiver<bool>,
) {
    // Counted up by the caller before spawning (so the watchdog probe never sees a listener
    // without its loop); counted down here when the loop ends.
    let _guard = LoopGuard(state.clone());
    let mut drain = state.drain.clone();
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = drain.signalled() => break,
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // getsockname only for wildcard listeners: a specific address is ours already.
                let local = match local {
                    Some(addr) if !addr.ip().is_unspecified() => addr,
                    _ => stream.local_addr().ok().or(local).unwrap_or(peer),
                };
                let tls = shared.acceptor();
                let client = ClientInfo { peer, local, tls: tls.is_some() };
                tokio::spawn(serve_connection(state.clone(), stream, client, tls));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(if is_fd_exhaustion(&error) { 1000 } else { 10 })).await;
            }
        }
    }
    tracing::debug!(addr = ?local, "listener closed");
}

fn is_fd_exhaustion(error: &std::io::Error) -> bool {
    // EMFILE (24) / ENFILE (23)
    matches!(error.raw_os_error(), Some(23) | Some(24))
}

/// Which HTTP version a connection speaks, when known before hyper sees it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Protocol {
    /// Detect from the first bytes (HTTP/1.1, or HTTP/2 prior knowledge).
    Detect,
    Http1,
    Http2,
}

async fn serve_connection(state: Arc<State>, stream: TcpStream, client: ClientInfo, tls: Option<TlsAcceptor>) {
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
                super::fastpath::serve(state, stream, client, slot, Protocol::Detect).await;
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
        _ if fast_path_on(&state) => super::fastpath::serve(state, stream, client, slot, Protocol::Http1).await,
        _ => serve_io(state, stream, client, slot, Protocol::Http1).await,
    }
}

/// `[upstream] fast_path`: whether HTTP/1.1 connections start on the fast path.
fn fast_path_on(state: &State) -> bool {
    state.runtime.load().config.upstream.fast_path
}

/// Serves a connection with hyper (HTTP/1.1 with upgrades, or HTTP/2).
pub(super) async fn serve_io<I>(
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

//! Listening sockets: binding or adopting them, what their accept loop reads per connection
//! (the TLS setup a reload may swap), and the accept loop, which hands each connection to
//! [`super::connection`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::connection::serve_connection;
use super::tls::CertResolver;
use super::State;
use crate::proxy::ClientInfo;

/// Pending connections the kernel keeps for us.
const BACKLOG: i32 = 1024;

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

/// The TLS side of one listener: the acceptor and the resolver its certificate comes from.
pub(crate) struct TlsSetup {
    pub(super) acceptor: TlsAcceptor,
    pub(super) resolver: Arc<CertResolver>,
}

/// What the accept loop of one listener reads per connection.
#[derive(Default)]
pub(crate) struct ListenerShared {
    pub(super) tls: ArcSwapOption<TlsSetup>,
}

impl ListenerShared {
    /// The TLS acceptor for the next connection, `None` for plain HTTP.
    pub(crate) fn acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.load().as_ref().map(|setup| setup.acceptor.clone())
    }
}

//! Serving an HTTP/1.1 connection: body-less requests for the upstream take the proxy's
//! fast path ([`crate::proxy::fast`]) in this task; at the first request that needs more
//! (an app URL, a WebSocket or other upgrade, a request body, anything that does not parse
//! plainly) the connection is handed to hyper with every byte read so far, and hyper serves
//! it from there on ([`super::listen::serve_io`]). HTTP/2 connections go to hyper at once
//! (their preface does not parse as HTTP/1.1).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::listen::{serve_io, Protocol};
use super::{record_proxy_outcome, ConnectionSlot, State};
use crate::proxy::fast::{Prefixed, UpstreamConn};
use crate::proxy::h1::{self, RequestPlan};
use crate::proxy::headers::ForwardContext;
use crate::proxy::{ClientInfo, Proxy};

/// Buffer space asked of the kernel per read of a request head.
const READ_CHUNK: usize = 4096;
/// Bound on the TLS close at the end of a connection (a client that does not read must not
/// hold it).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one HTTP/1.1 (or not yet known) connection; see the module documentation.
pub(super) async fn serve<I>(state: Arc<State>, mut io: I, client: ClientInfo, slot: Option<Arc<ConnectionSlot>>, protocol: Protocol)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if slot.is_none() {
        // Full: hyper answers the 503.
        return serve_io(state, io, client, slot, protocol).await;
    }
    let mut buf = BytesMut::new();
    let mut upstream: Option<UpstreamConn> = None;
    let mut drain = state.drain.clone();
    loop {
        // One load per request, as in the full path: a reload applies from the next request.
        let runtime = state.runtime.load_full();
        let limits = &runtime.config.limits;
        let proxy = &runtime.proxy;
        let ctx = ForwardContext::new(client.peer, client.tls, &proxy.settings().trusted_proxies);
        // The header deadline covers the whole head, from the moment we wait for it (hyper's
        // `header_read_timeout`, which also bounds an idle keep-alive connection).
        let deadline = Instant::now() + limits.header_read_timeout;
        let plan = loop {
            let plan = h1::plan_request(&buf, &ctx, |path| runtime.router.app(path).is_some());
            if plan != RequestPlan::Incomplete {
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
                _ => {
                    Proxy::release_upstream(upstream);
                    return;
                }
            }
        };
        let plan = match plan {
            // A head over the limit is hyper's to refuse (431), however it arrived.
            RequestPlan::Forward(plan) if plan.head_len <= limits.max_header_bytes => plan,
            _ => {
                Proxy::release_upstream(upstream.take());
                drop(runtime);
                let io = Prefixed::new(buf.freeze(), io);
                return serve_io(state, io, client, slot, protocol).await;
            }
        };
        buf.advance(plan.head_len);
        let exchange = proxy.forward_fast(&mut io, &plan, &mut upstream).await;
        record_proxy_outcome(&state.metrics, exchange.status, exchange.failure, exchange.head_time);
        if !exchange.keep_alive || drain.is_signalled() {
            Proxy::release_upstream(upstream.take());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
            return;
        }
    }
}

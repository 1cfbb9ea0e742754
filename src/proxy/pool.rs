//! The upstream client: a keep-alive pool of HTTP/1.1 connections (hyper's
//! connection-level client), the connect timeout and the response timeout.
//!
//! Bodies are streamed both ways: the request body is pulled by hyper as it writes
//! to the upstream socket and the response body is handed on unread, so memory per
//! request stays at hyper's buffer sizes whatever the body length.
//!
//! Why not hyper-util's pooled client: per request it hashes the pool key, runs a
//! checkout future, and spawns a task (plus a oneshot) that waits for the connection
//! to become idle again. Profiles of the proxy under load put that at several percent
//! of wsgate's CPU per request. Here a connection goes back to the pool from the
//! response body itself, the moment its last byte has been handed on.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::UpstreamError;
use super::BoxError;
use crate::locks::lock;

/// Body type of requests sent upstream: any client body, boxed (not `Sync`, as the
/// bodies handed to [`Proxy::forward`](super::Proxy::forward) need not be).
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an idle upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per pool at most; more are closed when they fall idle.
const MAX_IDLE: usize = 1024;

/// Idle upstream connections (of this pool, or of the fast path's), most recently idled last:
/// taken first, as the least likely to have been closed by the upstream's keep-alive timeout.
#[derive(Debug)]
pub(super) struct IdleList<T>(Mutex<Vec<(T, Instant)>>);

impl<T> Default for IdleList<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> IdleList<T> {
    /// Keeps `connection` for later, unless the list is full.
    pub(super) fn put(&self, connection: T) {
        let mut idle = lock(&self.0);
        if idle.len() < MAX_IDLE {
            idle.push((connection, Instant::now()));
        }
    }

    /// The most recently idled connection that is not too old and is `usable`; the ones
    /// passed over are closed.
    pub(super) fn take(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = lock(&self.0);
        while let Some((connection, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && usable(&connection) {
                return Some(connection);
            }
        }
        None
    }
}

/// A pooled connection and the upstream it leads to.
type Pooled = (Authority, SendRequest<UpstreamBody>);

/// The keep-alive pool towards the upstream and the response timeout. Cheap to clone
/// (the idle list is shared).
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    idle: Arc<IdleList<Pooled>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Pool {
    /// A pool whose TCP connects give up after `connect_timeout` (504) and whose
    /// requests give up when no response head arrived within `response_timeout` of
    /// the last request byte sent (504).
    pub(crate) fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        Self { idle: Arc::new(IdleList::default()), connect_timeout, response_timeout }
    }

    /// Sends `req` (absolute `http://` URI towards the upstream) and waits for the
    /// response head.
    ///
    /// The response timeout restarts whenever a chunk of the request body is handed
    /// to the upstream connection, so a long upload is not cut off while it makes
    /// progress (like nginx's `proxy_send_timeout` followed by `proxy_read_timeout`).
    ///
    /// Cancel safety: dropping the future drops the request and its connection.
    pub(crate) async fn send<B>(&self, req: Request<B>) -> Result<Response<PooledBody>, UpstreamError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let activity = Activity::new();
        let (mut parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Connect("the upstream URI has no authority".into()))?;
        if parts.uri.scheme_str().is_some_and(|s| s != "http") {
            // Only http:// upstreams: TLS to the upstream is not part of the design.
            return Err(UpstreamError::Connect("only http:// upstreams are supported".into()));
        }
        // HTTP/1.1 to an origin server: origin-form target (RFC 9112 §3.2.1) and a Host.
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        let mut req = Request::from_parts(
            parts,
            UnsyncBoxBody::new(Tracked { inner: Box::pin(body), activity: activity.clone() }),
        );

        let response = async {
            let authority = &authority;
            // A pooled connection the upstream closed in the meantime refuses the request
            // before sending any of it; then the request is tried on the next one.
            while let Some(mut sender) = self.checkout(authority) {
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(response) => return Ok((sender, response)),
                    Err(mut failed) => match failed.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(UpstreamError::from_hyper(failed.into_error())),
                    },
                }
            }
            let mut sender = self.connect(authority).await?;
            match sender.send_request(req).await {
                Ok(response) => Ok((sender, response)),
                Err(error) => Err(UpstreamError::from_hyper(error)),
            }
        };
        tokio::pin!(response);
        let (sender, response) = loop {
            let deadline = crate::time::deadline_after(activity.last(), self.response_timeout);
            tokio::select! {
                res = &mut response => break res?,
                () = tokio::time::sleep_until(deadline) => {
                    if crate::time::deadline_after(activity.last(), self.response_timeout) <= Instant::now() {
                        return Err(UpstreamError::ResponseTimeout);
                    }
                }
            }
        };
        // After a 101 the connection belongs to the upgrade (the tunnel): never pooled.
        let sender = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(sender);
        let returner = Returner { pool: Arc::downgrade(&self.idle), sender, authority: authority.clone() };
        Ok(response.map(|body| PooledBody::new(body, returner)))
    }

    /// The most recently idled connection to `authority` that is still open, if any.
    fn checkout(&self, authority: &Authority) -> Option<SendRequest<UpstreamBody>> {
        self.idle.take(|(to, sender)| to == authority && !sender.is_closed()).map(|(_, sender)| sender)
    }

    /// A new connection, its HTTP/1.1 state machine driven by a task of its own.
    async fn connect(&self, authority: &Authority) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = connect(authority, self.connect_timeout).await?;
        let (sender, connection) = http1::Builder::new()
            // The same response-head limit as the fast path (h1::MAX_RESPONSE_HEAD).
            .max_buf_size(super::h1::MAX_RESPONSE_HEAD)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::from_hyper)?;
        tokio::spawn(async move {
            // Upgrades (the tunnel's 101) take the connection over when it ends here.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A TCP connection to `authority` (name resolution and connect within `timeout`), with
/// `TCP_NODELAY`: small request and response heads must not wait for Nagle.
pub(super) async fn connect(authority: &Authority, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let stream = match tokio::time::timeout(timeout, connect_any(host, port)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(UpstreamError::Connect(Box::new(error))),
        Err(_) => return Err(UpstreamError::ConnectTimeout),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Resolves `host` and connects to its addresses in turn; the last error if none answers.
async fn connect_any(host: String, port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no addresses"))))
}

/// Puts a connection back into its pool once its response is complete.
struct Returner {
    pool: std::sync::Weak<IdleList<Pooled>>,
    sender: Option<SendRequest<UpstreamBody>>,
    authority: Authority,
}

impl Returner {
    fn give_back(&mut self) {
        let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) else { return };
        if !sender.is_closed() {
            pool.put((self.authority.clone(), sender));
        }
    }
}

/// The upstream's response body, handed on frame by frame; at its end the connection
/// returns to the pool. Dropped before its end, the connection is dropped with it (hyper
/// closes a connection whose response was not read to the end).
pub(crate) struct PooledBody {
    inner: Incoming,
    returner: Returner,
}

impl PooledBody {
    fn new(inner: Incoming, mut returner: Returner) -> Self {
        if inner.is_end_stream() {
            returner.give_back();
        }
        Self { inner, returner }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.returner.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.returner.give_back(),
            Poll::Ready(Some(Err(_))) => self.returner.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The time the request body last made progress, shared between the body (writer)
/// and the timeout loop (reader). Stored as milliseconds since `base` to fit an atomic.
#[derive(Debug, Clone)]
struct Activity {
    base: Instant,
    millis: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self { base: Instant::now(), millis: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// A request body that records each frame's passage in [`Activity`].
struct Tracked<B> {
    inner: Pin<Box<B>>,
    activity: Activity,
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(ready) = polled {
            self.activity.touch();
            return Poll::Ready(ready.map(|r| r.map_err(Into::into)));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

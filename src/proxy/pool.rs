//! The upstream client: hyper-util's legacy `Client` with its keep-alive pool, the
//! connect timeout (in the connector) and the response timeout (here).
//!
//! Bodies are streamed both ways: the request body is pulled by hyper as it writes
//! to the upstream socket and the response body is handed on unread, so memory per
//! request stays at hyper's buffer sizes whatever the body length.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::error::UpstreamError;
use super::BoxError;

/// Body type of requests sent upstream: any client body, boxed (not `Sync`, as the
/// bodies handed to [`Proxy::forward`](super::Proxy::forward) need not be).
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an idle upstream connection is kept in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The keep-alive pool towards the upstream and the response timeout.
#[derive(Debug, Clone)]
pub struct Pool {
    client: Client<HttpConnector, UpstreamBody>,
    response_timeout: Duration,
}

impl Pool {
    /// A pool whose TCP connects give up after `connect_timeout` (504) and whose
    /// requests give up when no response head arrived within `response_timeout` of
    /// the last request byte sent (504).
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Small request/response heads must not wait for Nagle.
        connector.set_nodelay(true);
        // Only http:// upstreams: TLS to the upstream is not part of the design.
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            response_timeout,
        }
    }

    /// Sends `req` (absolute URI towards the upstream) and waits for the response
    /// head.
    ///
    /// The response timeout restarts whenever a chunk of the request body is handed
    /// to the upstream connection, so a long upload is not cut off while it makes
    /// progress (like nginx's `proxy_send_timeout` followed by `proxy_read_timeout`).
    ///
    /// Cancel safety: dropping the future drops the request and its connection.
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<Incoming>, UpstreamError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let activity = Activity::new();
        let req = req.map(|body| {
            UnsyncBoxBody::new(Tracked {
                inner: Box::pin(body),
                activity: activity.clone(),
            })
        });
        let response = self.client.request(req);
        tokio::pin!(response);
        loop {
            let deadline = activity.last() + self.response_timeout;
            tokio::select! {
                res = &mut response => return res.map_err(UpstreamError::from_client),
                () = tokio::time::sleep_until(deadline) => {
                    if activity.last() + self.response_timeout <= Instant::now() {
                        return Err(UpstreamError::ResponseTimeout);
                    }
                }
            }
        }
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
        Self {
            base: Instant::now(),
            millis: Arc::new(AtomicU64::new(0)),
        }
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

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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

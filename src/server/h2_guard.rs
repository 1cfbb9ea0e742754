//! Per-connection accounting for the connections hyper serves: the idle timeout and the
//! limit on streams cancelled by the client.
//!
//! hyper closes an idle HTTP/1.1 keep-alive connection itself (`header_read_timeout`), but an
//! HTTP/2 connection that only answers PINGs would stay open forever, and h2's own reset
//! limit catches only resets of streams not yet accepted (the plain rapid reset): a client
//! that waits a little before each RST_STREAM is never stopped. So each connection keeps a
//! [`ConnectionGuard`]: every request holds a [`StreamGuard`] until its response body has
//! ended (a streaming body counts as in flight), a WebSocket session holds an [`Active`]
//! token for its whole life, and [`ConnectionGuard::close_reason`] resolves when the
//! connection has had nothing in flight for the idle timeout, or when too many of its HTTP/2
//! streams were cancelled. The connection loop then sends GOAWAY (graceful shutdown).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Body, BoxError};

/// Cancelled streams a connection may have before it gets GOAWAY, provided they are also
/// more than its completed ones. Browsers cancel streams now and then (navigation, aborted
/// fetches), so a long-lived connection with mostly completed streams is never closed; a
/// connection whose streams are mostly cancelled is closed after this many. A client that
/// completes one exchange per cancelled one pays for each reset with a full request.
pub(super) const MAX_CANCELLED: usize = 100;

/// Why [`ConnectionGuard::close_reason`] resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// Nothing in flight for the idle timeout.
    Idle,
    /// More than [`MAX_CANCELLED`] streams cancelled by the client, and more than completed.
    Cancelled,
}

/// The accounting of one connection, shared by its requests (cheap to clone).
#[derive(Clone, Default)]
pub(super) struct ConnectionGuard {
    shared: Arc<Shared>,
}

struct Shared {
    /// Requests in flight (service called, response body not yet ended) and WebSockets open.
    active: AtomicUsize,
    /// When `active` last fell to zero (or the connection started).
    idle_since: Mutex<Instant>,
    /// Streams the client cancelled: response future or body dropped before the end.
    cancelled: AtomicUsize,
    /// Streams whose response body ended.
    completed: AtomicUsize,
    /// Signalled when the cancel limit is reached.
    limit: Notify,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            limit: Notify::new(),
        }
    }
}

impl Shared {
    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::AcqRel) + 1;
        if cancelled > MAX_CANCELLED && cancelled > self.completed.load(Ordering::Acquire) {
            // A stored permit: the connection loop sees it even if it is not waiting now.
            self.limit.notify_one();
        }
    }
}

impl ConnectionGuard {
    /// A guard for a new connection, idle from now.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Marks one request in flight until the returned guard (or the body it is moved into
    /// by [`StreamGuard::attach`]) is dropped. With `count_cancel` (HTTP/2 streams), ending
    /// before the response body's end counts as a stream cancelled by the client.
    pub(super) fn stream(&self, count_cancel: bool) -> StreamGuard {
        StreamGuard { active: Some(self.active()), count_cancel }
    }

    /// A token that keeps the connection from being idle while it lives (a WebSocket over
    /// HTTP/2 holds one for its session).
    pub(super) fn active(&self) -> Active {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        Active(self.shared.clone())
    }

    /// Resolves when the connection should get GOAWAY: nothing in flight for
    /// `idle_timeout`, or the cancel limit reached. Cancel safe.
    pub(super) async fn close_reason(&self, idle_timeout: Duration) -> CloseReason {
        loop {
            // While something is in flight, look again one timeout later (its end restarts
            // the idle clock).
            let deadline = if self.shared.active.load(Ordering::Acquire) == 0 {
                crate::time::deadline_after(self.shared.idle_since(), idle_timeout)
            } else {
                crate::time::deadline_after(Instant::now(), idle_timeout)
            };
            tokio::select! {
                () = self.shared.limit.notified() => return CloseReason::Cancelled,
                () = tokio::time::sleep_until(deadline) => {
                    let idle = self.shared.active.load(Ordering::Acquire) == 0
                        && crate::time::deadline_after(self.shared.idle_since(), idle_timeout) <= Instant::now();
                    if idle {
                        return CloseReason::Idle;
                    }
                }
            }
        }
    }

    /// Streams cancelled so far (for logs).
    pub(super) fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::Acquire)
    }
}

/// Keeps its connection from counting as idle while it lives (see [`ConnectionGuard::active`]).
/// A clone is a token of its own.
pub(crate) struct Active(Arc<Shared>);

impl Clone for Active {
    fn clone(&self) -> Self {
        self.0.active.fetch_add(1, Ordering::AcqRel);
        Self(self.0.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        }
    }
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Active")
    }
}

/// One request in flight. Dropped before [`finish`](Self::finish) — hyper dropped the
/// service future or the response body, i.e. the client reset the stream — it counts as a
/// cancelled stream (when counting).
pub(super) struct StreamGuard {
    /// `None` once finished.
    active: Option<Active>,
    count_cancel: bool,
}

impl StreamGuard {
    /// Moves the guard into `response`'s body: the request stays in flight until the body
    /// has ended (or is dropped, which counts as a cancel unless it had ended).
    pub(super) fn attach(self, response: Response<Body>) -> Response<Body> {
        response.map(|inner| GuardedBody { inner, guard: self }.boxed())
    }

    /// The response was delivered completely.
    fn finish(&mut self) {
        if let Some(active) = self.active.take() {
            active.0.completed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(active) = self.active.take() {
            if self.count_cancel {
                active.0.count_cancelled();
            }
        }
    }
}

/// A response body that ends its request's [`StreamGuard`] at its end.
struct GuardedBody {
    inner: Body,
    guard: StreamGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.guard.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.guard.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // hyper asks before polling and, on `true`, sends END_STREAM and drops the body
        // unpolled: such a body ended normally. (`&self` here, so the guard is finished when
        // the body is dropped; see `Drop`.)
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.guard.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{empty_body, full_body};

    #[tokio::test]
    async fn a_dropped_response_future_counts_as_cancelled_only_when_counting() {
        let conn = ConnectionGuard::new();
        drop(conn.stream(false));
        assert_eq!(conn.cancelled(), 0);
        drop(conn.stream(true));
        assert_eq!(conn.cancelled(), 1);
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_completed_and_a_dropped_one_cancelled() {
        let conn = ConnectionGuard::new();
        let mut response = conn.stream(true).attach(Response::new(full_body(Bytes::from_static(b"hello"))));
        while let Some(frame) = response.body_mut().frame().await {
            assert!(frame.is_ok());
        }
        drop(response);
        let unread = conn.stream(true).attach(Response::new(full_body(Bytes::from_static(b"hello"))));
        drop(unread);
        let empty = conn.stream(true).attach(Response::new(empty_body()));
        drop(empty);
        assert_eq!(conn.cancelled(), 1);
        assert_eq!(conn.shared.completed.load(Ordering::Acquire), 2);
        assert_eq!(conn.shared.active.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn idle_only_with_nothing_in_flight() {
        const IDLE: Duration = Duration::from_millis(50);
        let conn = ConnectionGuard::new();
        let token = conn.active();
        let waited = tokio::time::timeout(IDLE * 4, conn.close_reason(IDLE)).await;
        assert!(waited.is_err(), "not idle while a token lives");
        drop(token);
        let started = Instant::now();
        assert_eq!(conn.close_reason(IDLE).await, CloseReason::Idle);
        assert!(started.elapsed() >= IDLE);
    }

    #[tokio::test]
    async fn the_cancel_limit_needs_more_cancelled_than_completed() {
        let conn = ConnectionGuard::new();
        let _busy = conn.active();
        for _ in 0..200 {
            conn.stream(true).finish();
        }
        for _ in 0..150 {
            drop(conn.stream(true));
        }
        let waited = tokio::time::timeout(Duration::from_millis(10), conn.close_reason(Duration::from_secs(1))).await;
        assert!(waited.is_err());
        for _ in 0..51 {
            drop(conn.stream(true));
        }
        assert_eq!(conn.close_reason(Duration::from_secs(1)).await, CloseReason::Cancelled);
    }
}

//! The client's request body on its way to the upstream (the full path).
//!
//! A body is first read into memory up to [`PREFETCH_LIMIT`] under the body deadline, before
//! anything of the request is sent: a body that ends within it reaches the upstream whole or
//! not at all (a malformed chunk, a client that stops, a body that is too slow are answered
//! 400/408 with the upstream never contacted), and a slow client holds no upstream
//! connection while it trickles. A larger body streams on, each pause between two reads
//! bounded by the same timeout; should it fail half way, the upstream sees an aborted
//! message (hyper never sends the chunked body's end) and the client gets 400/408 when its
//! response has not started.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// Bytes of a request body read before the request is forwarded.
pub(crate) const PREFETCH_LIMIT: usize = 64 * 1024;

/// Why a client's request body could not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyFailure {
    /// The body's framing is invalid (a bad chunk, more data than announced) or the client
    /// closed before its end.
    #[error("malformed or incomplete request body")]
    Malformed,
    /// The body did not arrive within `body_read_timeout`.
    #[error("the request body did not arrive in time")]
    Timeout,
}

/// The request body as it is sent upstream: what was read ahead, then the rest of the
/// client's body under the idle timeout. A failure of the rest is recorded where the proxy
/// finds it after the exchange ([`ClientBody::failure`]).
pub(crate) struct ClientBody<B> {
    read_ahead: VecDeque<Frame<Bytes>>,
    read_ahead_len: u64,
    /// A trailer section was read ahead: the body cannot be sent with a length.
    has_trailers: bool,
    rest: Option<B>,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    failure: Arc<OnceLock<BodyFailure>>,
}

impl<B> ClientBody<B> {
    /// Where a failure of the streamed rest of the body is recorded.
    pub(crate) fn failure(&self) -> Arc<OnceLock<BodyFailure>> {
        self.failure.clone()
    }
}

/// Reads `body` until it ends or [`PREFETCH_LIMIT`] bytes are in, all within `timeout`.
pub(crate) async fn prefetch<B>(mut body: B, timeout: Duration) -> Result<ClientBody<B>, BodyFailure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let deadline = Instant::now() + timeout;
    let mut read_ahead = VecDeque::new();
    let mut len: u64 = 0;
    let mut has_trailers = false;
    let mut ended = body.is_end_stream();
    while !ended && len < PREFETCH_LIMIT as u64 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyFailure::Timeout),
            Ok(None) => ended = true,
            Ok(Some(Err(_))) => return Err(BodyFailure::Malformed),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                } else {
                    has_trailers = true;
                }
                read_ahead.push_back(frame);
                ended = body.is_end_stream();
            }
        }
    }
    Ok(ClientBody {
        read_ahead,
        read_ahead_len: len,
        has_trailers,
        rest: (!ended).then_some(body),
        idle: timeout,
        timer: None,
        failure: Arc::new(OnceLock::new()),
    })
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(frame) = this.read_ahead.pop_front() {
            if let Some(data) = frame.data_ref() {
                this.read_ahead_len -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else { return Poll::Ready(None) };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let _ = this.failure.set(BodyFailure::Malformed);
                this.rest = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                    let _ = this.failure.set(BodyFailure::Timeout);
                    this.rest = None;
                    return Poll::Ready(Some(Err(Box::new(BodyFailure::Timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read_ahead.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // Exact when the client's framing said how long the rest is (Content-Length), so the
        // upstream gets a length too; chunked bodies stay chunked.
        let rest = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        if self.has_trailers {
            return SizeHint::new();
        }
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(self.read_ahead_len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(self.read_ahead_len));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    type Part = Result<Frame<Bytes>, std::io::Error>;

    fn stream(parts: Vec<Part>) -> StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Part>>> {
        StreamBody::new(futures_util::stream::iter(parts))
    }

    #[tokio::test]
    async fn a_small_body_is_read_whole_and_keeps_its_length() {
        let body = prefetch(Full::new(Bytes::from_static(b"hello")), Duration::from_secs(1)).await.unwrap();
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
    }

    #[tokio::test]
    async fn a_failing_body_is_refused_before_forwarding() {
        let bad = stream(vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Err(std::io::Error::other("bad chunk"))]);
        assert_eq!(prefetch(bad, Duration::from_secs(1)).await.err(), Some(BodyFailure::Malformed));
    }

    #[tokio::test]
    async fn a_slow_body_times_out() {
        let (_tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        assert_eq!(prefetch(body, Duration::from_millis(50)).await.err(), Some(BodyFailure::Timeout));
    }

    #[tokio::test]
    async fn a_large_body_streams_under_the_idle_timeout() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
        let big = Bytes::from(vec![b'x'; PREFETCH_LIMIT]);
        tx.send_data(big).await.unwrap();
        let mut body = prefetch(body, Duration::from_millis(50)).await.unwrap();
        let failure = body.failure();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap().len(), PREFETCH_LIMIT);
        // Nothing more comes: the idle timeout ends the stream with an error.
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(failure.get(), Some(&BodyFailure::Timeout));
        drop(tx);
    }
}

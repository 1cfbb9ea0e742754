//! Proxy failures and their synthetic answers (DESIGN §9: upstream refuses / times
//! out / resets → 502 / 504 / 502 with a short plain-text body).
//!
//! Every error records its side (STYLE-ANCHORS §2): upstream faults are 502/504 and
//! feed `upstream_errors_total{kind}`; downstream faults are 4xx/508; internal
//! faults are 500 and worth an error log.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::body::BodyFailure;
use super::headers::Refusal;
use super::{BoxError, ProxyBody};

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse to forward.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// A bug or resource problem of our own.
    Internal,
}

/// The upstream failed before (or, for [`UpstreamError::Body`], while) answering.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, DNS failure.
    #[error("cannot connect to the upstream")]
    Connect(#[source] BoxError),
    /// The TCP connect did not finish within `connect_timeout`.
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    /// No response head within `response_timeout`.
    #[error("the upstream did not answer in time")]
    ResponseTimeout,
    /// The connection was closed or reset before the response head was complete.
    #[error("the upstream closed the connection")]
    Reset(#[source] BoxError),
    /// The upstream's response head could not be parsed.
    #[error("the upstream sent an invalid response")]
    Protocol(#[source] BoxError),
    /// Any other I/O or HTTP failure before the response head.
    #[error("upstream I/O error")]
    Io(#[source] BoxError),
    /// The response body failed after its head was sent on (the client's connection
    /// is then aborted by hyper; no synthetic response is possible any more).
    #[error("the upstream response body failed")]
    Body(#[source] BoxError),
    /// The upstream answered 101 but its connection could not be taken over.
    #[error("the upstream connection could not be upgraded")]
    Upgrade(#[source] BoxError),
}

impl UpstreamError {
    /// Classifies an error of the upstream connection (connect errors are made by the
    /// pool itself, with their `io::Error` as the cause).
    pub fn from_hyper(err: hyper::Error) -> Self {
        let io_kind = find_cause::<io::Error>(&err).map(io::Error::kind);
        if err.is_parse() {
            UpstreamError::Protocol(Box::new(err))
        } else if err.is_incomplete_message()
            || err.is_canceled()
            || err.is_closed()
            || matches!(
                io_kind,
                Some(
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                )
            )
        {
            UpstreamError::Reset(Box::new(err))
        } else {
            UpstreamError::Io(Box::new(err))
        }
    }

    /// The status answered to the client: 504 for timeouts (as nginx does for
    /// connect and read timeouts), 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `kind` label of `upstream_errors_total` (a fixed set; never peer data).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ResponseTimeout => "timeout",
            UpstreamError::Reset(_) => "reset",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Io(_) => "io",
            UpstreamError::Body(_) => "body",
            UpstreamError::Upgrade(_) => "upgrade",
        }
    }

    /// The body of our answer: `<code> <reason>: <sentence>\n`.
    pub fn answer_text(&self) -> String {
        status_text(self.status(), self.public_message())
    }

    /// The sentence shown to the client: fixed text, no addresses or causes.
    fn public_message(&self) -> &'static str {
        match self {
            UpstreamError::Connect(cause) => {
                let refused = find_cause_dyn::<io::Error>(cause.as_ref())
                    .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
                if refused {
                    "upstream refused the connection"
                } else {
                    "cannot connect to the upstream"
                }
            }
            UpstreamError::ConnectTimeout => "connecting to the upstream timed out",
            UpstreamError::ResponseTimeout => "the upstream did not answer in time",
            UpstreamError::Reset(_) => "the upstream closed the connection",
            UpstreamError::Protocol(_) => "the upstream sent an invalid response",
            UpstreamError::Io(_) | UpstreamError::Body(_) => "upstream I/O error",
            UpstreamError::Upgrade(_) => "the upstream connection could not be upgraded",
        }
    }
}

/// Any failure of [`Proxy::try_forward`](super::Proxy::try_forward) /
/// [`Proxy::try_tunnel`](super::Proxy::try_tunnel), with its side.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request's `Via` already names wsgate: the upstream leads back to us
    /// (answered 508 Loop Detected, RFC 5842 §7.2).
    #[error("request loop: Via already names wsgate")]
    LoopDetected,
    /// `CONNECT` (including RFC 8441 extended CONNECT on a non-app URL) is not
    /// forwarded: wsgate is a reverse proxy, not a forward proxy.
    #[error("CONNECT is not forwarded")]
    ConnectMethod,
    /// The request's `Host` or framing fields are refused (400, or 501 for a transfer coding
    /// wsgate does not forward): nothing of it was sent.
    #[error("request refused: {}", .0.reason)]
    Refused(Refusal),
    /// The client's body failed (400) or was too slow (408).
    #[error(transparent)]
    ClientBody(#[from] BodyFailure),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream request could not be built (a bug: inputs were validated).
    #[error("cannot build the upstream request")]
    Internal(#[source] BoxError),
}

impl ProxyError {
    /// Whose fault it is.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::LoopDetected
            | ProxyError::ConnectMethod
            | ProxyError::Refused(_)
            | ProxyError::ClientBody(_) => Side::Downstream,
            ProxyError::Upstream(_) => Side::Upstream,
            ProxyError::Internal(_) => Side::Internal,
        }
    }

    /// The status answered to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::LoopDetected => StatusCode::LOOP_DETECTED,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Refused(refusal) => refusal.status,
            ProxyError::ClientBody(BodyFailure::Malformed) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody(BodyFailure::Timeout) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(e) => e.status(),
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A fixed metric/log label: the upstream kinds of [`UpstreamError::kind`], or
    /// `loop`, `connect_method`, `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::LoopDetected => "loop",
            ProxyError::ConnectMethod => "connect_method",
            ProxyError::Refused(_) => "bad_request",
            ProxyError::ClientBody(BodyFailure::Malformed) => "bad_body",
            ProxyError::ClientBody(BodyFailure::Timeout) => "body_timeout",
            ProxyError::Upstream(e) => e.kind(),
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The synthetic answer, tagged with a [`ProxyFailure`] extension.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut resp = match self {
            ProxyError::Upstream(e) => return error_response(e),
            ProxyError::LoopDetected => text_response(self.status(), "the request already passed through wsgate"),
            ProxyError::ConnectMethod => text_response(self.status(), "CONNECT is not supported"),
            ProxyError::Refused(refusal) => closing(text_response(self.status(), refusal.reason)),
            ProxyError::ClientBody(BodyFailure::Malformed) => {
                closing(text_response(self.status(), "malformed or incomplete request body"))
            }
            ProxyError::ClientBody(BodyFailure::Timeout) => {
                closing(text_response(self.status(), "the request body did not arrive in time"))
            }
            ProxyError::Internal(_) => text_response(self.status(), "internal proxy error"),
        };
        resp.extensions_mut().insert(ProxyFailure { side: self.side(), kind: self.kind() });
        resp
    }
}

/// Response extension set on every synthetic error answer, so the caller can count
/// it (`upstream_errors_total{kind}`) without parsing bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyFailure {
    /// Whose fault it was.
    pub side: Side,
    /// [`ProxyError::kind`].
    pub kind: &'static str,
}

/// The 502/504 answer for an upstream failure, e.g.
/// `502 Bad Gateway: upstream refused the connection\n`, `text/plain; charset=utf-8`.
pub fn error_response(err: &UpstreamError) -> Response<ProxyBody> {
    let mut resp = text_response(err.status(), err.public_message());
    resp.extensions_mut().insert(ProxyFailure { side: Side::Upstream, kind: err.kind() });
    resp
}

/// `response` with `Connection: close`: after a request whose framing is in doubt, nothing
/// more is read from that connection (DESIGN §9).
fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `<code> <reason>: <message>\n` as `text/plain; charset=utf-8`.
fn text_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let text = status_text(status, message);
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn status_text(status: StatusCode, message: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    format!("{} {reason}: {message}\n", status.as_u16())
}

/// The first cause of type `T` in `err`'s `source()` chain (including `err` itself).
fn find_cause<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    find_cause_dyn(err)
}

fn find_cause_dyn<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn statuses_and_kinds() {
        let refused: BoxError = Box::new(Wrapper(io::Error::new(io::ErrorKind::ConnectionRefused, "no")));
        let e = UpstreamError::Connect(refused);
        assert_eq!((e.status(), e.kind()), (StatusCode::BAD_GATEWAY, "connect"));
        assert_eq!(e.public_message(), "upstream refused the connection");
        let e = UpstreamError::Connect("dns".into());
        assert_eq!(e.public_message(), "cannot connect to the upstream");
        assert_eq!(UpstreamError::ConnectTimeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(UpstreamError::ConnectTimeout.kind(), "connect_timeout");
        assert_eq!(UpstreamError::ResponseTimeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(UpstreamError::ResponseTimeout.kind(), "timeout");
        assert_eq!(UpstreamError::Reset("x".into()).kind(), "reset");
        assert_eq!(ProxyError::LoopDetected.status(), StatusCode::LOOP_DETECTED);
        assert_eq!(ProxyError::LoopDetected.side(), Side::Downstream);
        assert_eq!(ProxyError::from(UpstreamError::ResponseTimeout).side(), Side::Upstream);
    }

    #[tokio::test]
    async fn error_response_is_short_plain_text() {
        let resp = error_response(&UpstreamError::Connect(Box::new(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "refused",
        ))));
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(
            resp.extensions().get::<ProxyFailure>(),
            Some(&ProxyFailure { side: Side::Upstream, kind: "connect" })
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"502 Bad Gateway: upstream refused the connection\n");
        let resp = ProxyError::LoopDetected.to_response();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"508 Loop Detected: the request already passed through wsgate\n");
    }
}

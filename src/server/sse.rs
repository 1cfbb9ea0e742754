//! Server-Sent Events on app URLs (issue 20, DESIGN §13): a `GET` with `Accept:
//! text/event-stream` on the URL of an app that serves event streams.
//!
//! The stream is a hub channel like a WebSocket: the same queue, byte budget and slow-consumer
//! policy, listed by the control API and closed by it. What is queued to it is the same shared
//! message WebSocket members get; this module takes the payload out of each text frame and the
//! app's [`EventEncoder`] writes it as SSE. A comment line every 15 s keeps proxies and browsers
//! from timing the stream out. The stream ends on a Close (the app, the control API, the
//! slow-consumer policy), on shutdown, or when the client goes away (the next write fails).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::{full_body, AppRoute, Body, BoxError, ConnectionSlot, State};
use crate::apps::{EventEncoder, EventStreamRequest};
use crate::proxy::ClientInfo;
use crate::pubsub::channel::{ChannelInfo, ChannelQueue, Outbound};
use crate::pubsub::ChannelHandle;

/// How often an idle stream gets a comment line.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(15);

/// Whether `req` asks for an event stream (`Accept: text/event-stream`, `GET`).
pub(super) fn wants_event_stream<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream")))
}

/// The payload of an unmasked, unfragmented text frame as the hub queues it; `None` for other
/// frames (binary, control).
pub(super) fn text_payload(frame: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = frame.split_first()?;
    if first != 0x81 {
        return None; // FIN + text only: the hub never fragments what it queues
    }
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = match len & 0x7f {
        126 => {
            let (bytes, rest) = rest.split_at_checked(2)?;
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), rest)
        }
        127 => {
            let (bytes, rest) = rest.split_at_checked(8)?;
            (u64::from_be_bytes(bytes.try_into().ok()?), rest)
        }
        n => (u64::from(n), rest),
    };
    (len == rest.len() as u64).then_some(rest)
}

/// Serves one event stream on `route` (the Host rule and allow list are checked by the
/// caller, as for the app's page).
pub(super) fn serve(
    state: Arc<State>,
    client: &ClientInfo,
    slot: Arc<ConnectionSlot>,
    route: &AppRoute,
    req: &Request<Incoming>,
) -> Response<Body> {
    let info = ChannelInfo {
        id: state.ids.next_id(),
        app: route.name.clone(),
        url: route.url_of(req.uri().path()),
        peer: client.peer,
    };
    let (channel, queue) = ChannelHandle::new(info, route.send_queue, route.slow_consumer);
    state.hub.register(channel.clone());
    let request = EventStreamRequest {
        url: req.uri().path_and_query().map_or(req.uri().path(), |p| p.as_str()),
        headers: req.headers(),
    };
    let encoder = match route.app.open_event_stream(&channel, &request) {
        Ok(encoder) => encoder,
        Err(rejection) => {
            state.hub.unregister(channel.id());
            let rejection = *rejection;
            let mut response = Response::new(full_body(rejection.body));
            *response.status_mut() = rejection.status;
            *response.headers_mut() = rejection.headers;
            return response;
        }
    };
    route.session.metrics.connections_total.inc();
    route.session.metrics.connections_active.inc();
    tracing::debug!(app = %route.name, channel = %channel.id(), peer = %client.peer, "event stream open");
    let stream = Stream {
        shutdown: state.drain.receiver(),
        state,
        route_app: route.app.clone(),
        metrics: route.session.metrics.clone(),
        channel,
        queue,
        encoder,
        _slot: slot,
        first: true,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, BoxError>(Frame::data(bytes)), s))
    });
    let mut response = Response::new(StreamBody::new(body).boxed());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx in front of us must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// One open stream; dropping it (the stream ended or the client left) unregisters the channel.
struct Stream {
    state: Arc<State>,
    route_app: Arc<dyn crate::apps::App>,
    metrics: crate::metrics::AppCounters,
    channel: ChannelHandle,
    queue: ChannelQueue,
    encoder: Box<dyn EventEncoder>,
    _slot: Arc<ConnectionSlot>,
    first: bool,
    /// Changes to `true` on shutdown.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Stream {
    /// The next bytes to send, `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        if std::mem::take(&mut self.first) {
            // Reconnect after 1 s when the stream drops (the browser's default is ~3 s).
            return Some(Bytes::from_static(b"retry: 1000\n\n"));
        }
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            let item = tokio::select! {
                item = self.queue.rx.recv() => item?,
                _ = self.shutdown.changed() => return None,
                () = tokio::time::sleep(KEEPALIVE) => return Some(Bytes::from_static(b": keepalive\n\n")),
            };
            let reserved = match &item {
                Outbound::Frame(f) => f.len(),
                Outbound::Message(m) => m.plain().len(),
                Outbound::Rest(b) | Outbound::Head(b) => b.len(),
                Outbound::Close { .. } => return None,
            };
            self.queue.budget().release(reserved);
            let Some(frame) = item.plain_frame() else { continue };
            let Some(payload) = text_payload(&frame) else { continue };
            let out = self.encoder.encode(payload);
            if !out.is_empty() {
                self.metrics.messages_sent.inc();
                self.metrics.bytes_sent.inc_by(out.len() as u64);
                return Some(out);
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.metrics.connections_active.dec();
        self.state.hub.unregister(self.channel.id());
        self.route_app.on_close(&self.channel, self.channel.close_code().or(Some(1006)));
        tracing::debug!(channel = %self.channel.id(), "event stream closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_out_of_text_frames_only() {
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(text_payload(&long).map(<[u8]>::len), Some(256));
        assert_eq!(text_payload(b"\x81\x02hi"), Some(&b"hi"[..]));
        assert_eq!(text_payload(b"\x82\x02hi"), None, "binary");
        assert_eq!(text_payload(b"\x01\x02hi"), None, "fragment");
        assert_eq!(text_payload(b"\x81\x05hi"), None, "short");
        assert_eq!(text_payload(b""), None);
    }

    #[test]
    fn accept_header_decides() {
        let req = |accept: &str| Request::get("/x").header(header::ACCEPT, accept).body(()).unwrap();
        assert!(wants_event_stream(&req("text/event-stream")));
        assert!(wants_event_stream(&req("text/html, Text/Event-Stream;q=0.9")));
        assert!(!wants_event_stream(&req("text/html")));
        assert!(!wants_event_stream(
            &Request::post("/x").header(header::ACCEPT, "text/event-stream").body(()).unwrap()
        ));
    }
}

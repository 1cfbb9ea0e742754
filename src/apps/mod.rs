//! The built-in apps. Each app sees WebSocket connections only through the [`App`] trait and
//! [`ChannelHandle`]s: it never touches sockets or encodes frames itself.

pub(crate) mod backend;
pub mod chat;
pub(crate) mod echo;
pub(crate) mod logview;
pub mod pubsub;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::config::{AppConfig, AppKind};
pub use crate::pubsub::Message;
use crate::pubsub::{ChannelHandle, ChannelId, Hub};

/// What an app sees of a WebSocket upgrade request before it is accepted.
#[derive(Debug, Clone)]
pub struct PendingUpgrade<'a> {
    /// The id the channel will have if accepted.
    pub channel: &'a ChannelId,
    /// The request's path and query.
    pub url: &'a str,
    /// The request's headers (including `Cookie` and `Authorization`).
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub peer: SocketAddr,
}

/// An app's refusal of an upgrade: the HTTP response sent instead of 101.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The status (4xx/5xx, or whatever the app's backend chose).
    pub status: StatusCode,
    /// Headers to send (e.g. `Content-Type`, `Location`, `WWW-Authenticate`).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Rejection {
    /// A rejection with a short plain-text body.
    pub fn text(status: StatusCode, text: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        Rejection { status, headers, body: Bytes::from(text.to_owned()) }
    }
}

/// The decision an app takes before the 101 (see [`App::pre_accept`]).
pub type PreAccept = Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send>>;

/// What an app sees of a Server-Sent Events request (`GET` of its URL with `Accept:
/// text/event-stream`) before the stream starts.
#[derive(Debug, Clone)]
pub struct EventStreamRequest<'a> {
    /// The request's path and query.
    pub url: &'a str,
    /// The request's headers (`Last-Event-ID`, `Authorization`).
    pub headers: &'a HeaderMap,
}

/// Turns the text messages queued to an event-stream channel into SSE bytes
/// (`id:`/`data:` lines and the blank line that ends an event). One per stream.
pub trait EventEncoder: Send + Sync + 'static {
    /// The SSE text for one text message queued to the channel (the same message WebSocket
    /// members get); empty to send nothing.
    fn encode(&mut self, message: &[u8]) -> Bytes;
}

/// The behaviour behind an app URL.
pub trait App: Send + Sync + 'static {
    /// Asked after wsgate's own checks of a valid upgrade and before the 101: `None` (the
    /// default) accepts at once; a future decides asynchronously, and `Err` answers the
    /// request with the rejection instead. When it resolves `Ok`, the app later gets
    /// either `on_open` (and eventually `on_close`) or, if the client vanished during the
    /// upgrade, [`App::on_accept_failed`].
    fn pre_accept(&self, _request: &PendingUpgrade<'_>) -> Option<PreAccept> {
        None
    }

    /// The 101 was sent after a successful [`App::pre_accept`], but the connection could not
    /// be taken over; no `on_open` or `on_close` follows for this channel.
    fn on_accept_failed(&self, _channel: &ChannelHandle) {}

    /// A client's WebSocket was accepted on one of the app's URLs.
    fn on_open(&self, _channel: &ChannelHandle) {}

    /// A complete message arrived from the client.
    fn on_message(&self, channel: &ChannelHandle, message: Message);

    /// The connection ended. `code` is the connection's close code: the peer's when the peer
    /// closed first (`None` when its Close had no code), ours when this side closed first (an
    /// app, the control API, a protocol error, shutdown), 1006 when the connection was lost
    /// without a closing handshake.
    fn on_close(&self, _channel: &ChannelHandle, _code: Option<u16>) {}

    /// The HTML page served on a plain `GET` of the app's URLs, if the app has one.
    fn page(&self) -> Option<&'static str> {
        None
    }

    /// Whether the app serves Server-Sent Events on its URLs.
    fn serves_event_streams(&self) -> bool {
        false
    }

    /// An event stream starts on `channel` (registered in the hub, queue and slow-consumer
    /// policy as for a WebSocket): the app subscribes it and returns the encoder of its
    /// events, or refuses with an HTTP answer. `on_close` follows when the stream ends.
    fn open_event_stream(
        &self,
        _channel: &ChannelHandle,
        _request: &EventStreamRequest<'_>,
    ) -> Result<Box<dyn EventEncoder>, Box<Rejection>> {
        Err(Box::new(Rejection::text(StatusCode::NOT_ACCEPTABLE, "this app serves no event streams\n")))
    }
}

/// Why an app could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A required setting is missing (validation normally reports it first).
    #[error("apps.{name}.{key}: {reason}")]
    Setting {
        /// App name.
        name: String,
        /// The setting.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A key file could not be used.
    #[error("apps.{name}.jwt: {reason}")]
    Key {
        /// App name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Builds the app `name` from its configuration; apps that publish get the node's hub, and
/// `pubsub` apps the node's channels.
pub fn build(
    name: &str,
    config: &AppConfig,
    hub: &Arc<Hub>,
    channels: &Arc<pubsub::engine::Engine>,
) -> Result<Arc<dyn App>, AppError> {
    match config.kind {
        AppKind::Echo => Ok(Arc::new(echo::Echo)),
        AppKind::LogView => Ok(Arc::new(logview::LogView::new(
            name,
            &config.files,
            config.backlog_lines(),
            config.refresh(),
            config.inotify(),
            hub.clone(),
        ))),
        AppKind::Chat => {
            let cluster = channels.cluster().cloned();
            Ok(chat::Chat::new(name, &config.urls, &config.room_names, config.history(), hub.clone(), cluster))
        }
        AppKind::Backend => Ok(Arc::new(backend::Backend::new(name, config, hub.clone())?)),
        AppKind::PubSub => Ok(pubsub::PubSub::new(name, config, channels.clone())?),
    }
}

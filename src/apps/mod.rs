//! The built-in apps. Each app sees WebSocket connections only through the [`App`] trait and
//! [`ChannelHandle`]s: it never touches sockets or encodes frames itself.

pub mod chat;
pub mod echo;
pub mod logview;

use std::sync::Arc;

use bytes::Bytes;

use crate::config::{AppConfig, AppKind};
use crate::pubsub::{ChannelHandle, Hub};

/// One complete data message received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8 (checked by the codec).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

/// The behaviour behind an app URL.
pub trait App: Send + Sync + 'static {
    /// A client's WebSocket was accepted on one of the app's URLs.
    fn on_open(&self, _channel: &ChannelHandle) {}

    /// A complete message arrived from the client.
    fn on_message(&self, channel: &ChannelHandle, message: Message);

    /// The connection ended; `code` is the peer's close code if it sent one.
    fn on_close(&self, _channel: &ChannelHandle, _code: Option<u16>) {}

    /// The HTML page served on a plain `GET` of the app's URLs, if the app has one.
    fn page(&self) -> Option<&'static str> {
        None
    }
}

/// Why an app could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The kind exists in the configuration schema but this build does not serve it yet.
    #[error("apps.{name}: app kind `{kind}` is not available in this version of wsgate")]
    Unavailable {
        /// App name.
        name: String,
        /// Its kind.
        kind: &'static str,
    },
}

/// Builds the app `name` from its configuration; apps that publish get the node's hub.
pub fn build(name: &str, config: &AppConfig, hub: &Arc<Hub>) -> Result<Arc<dyn App>, AppError> {
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
        AppKind::Chat => Ok(Arc::new(chat::Chat::new(name, &config.urls, config.history(), hub.clone()))),
        other => Err(AppError::Unavailable { name: name.to_owned(), kind: other.as_str() }),
    }
}

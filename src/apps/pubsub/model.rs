//! The values channel operations take and give, shared by the one-node engine
//! ([`super::engine`]) and the cluster store ([`super::cluster`]): positions, publication
//! results, history pages, errors, and the shared text frame of a push.

use bytes::Bytes;
use serde_json::Value;

use super::protocol::ErrorCode;
use crate::apps::Message;
use crate::pubsub::hub::encode;

/// Channels with state (history, presence or members) one node keeps at most.
pub const MAX_CHANNELS: usize = 100_000;

/// Who published (absent for the control API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The publisher's user (`sub` claim, "" for anonymous).
    pub user: String,
    /// The publisher's connection id.
    pub client: String,
}

/// A position in a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Last offset seen.
    pub offset: u64,
    /// The history it belongs to.
    pub epoch: String,
}

/// Why an engine operation failed; maps onto a protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No namespace matches the channel.
    #[error("no namespace matches channel {0:?}")]
    UnknownChannel(String),
    /// The node keeps [`MAX_CHANNELS`] channels already.
    #[error("too many channels on this node (at most {MAX_CHANNELS})")]
    TooManyChannels,
    /// The namespace has presence off.
    #[error("presence is off for this channel's namespace")]
    PresenceOff,
    /// A history query's `since` is no longer in the history (or from another epoch).
    #[error("the position is not in the history any more (epoch changed or publications expired)")]
    Unrecoverable,
    /// The connection is gone.
    #[error("the connection is closed")]
    Closed,
    /// Cluster mode: Redis cannot be reached now (retry later).
    #[error("channels are unavailable: {0}")]
    Unavailable(String),
}

impl EngineError {
    /// The protocol's error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::UnknownChannel(_) => ErrorCode::UnknownChannel,
            EngineError::TooManyChannels => ErrorCode::LimitExceeded,
            EngineError::PresenceOff => ErrorCode::NotAvailable,
            EngineError::Unrecoverable => ErrorCode::Unrecoverable,
            EngineError::Closed | EngineError::Unavailable(_) => ErrorCode::Internal,
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: String,
    /// Local members it was queued to.
    pub delivered: usize,
}

/// A history query's answer.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Publications as JSON objects, oldest first.
    pub publications: Vec<Value>,
    /// The channel's current position.
    pub position: Position,
}

/// A push encoded once as a text frame, shared by every member it is queued to.
pub fn text_frame(push: &Value) -> Bytes {
    encode(&Message::Text(Bytes::from(push.to_string())))
}

//! The publish/subscribe core. For now: channels (one per WebSocket connection) with their
//! bounded outbound queues; the `Hub` with subscriptions builds on these.

pub mod channel;
pub mod queue;

pub use channel::{ChannelHandle, ChannelId, SendError};

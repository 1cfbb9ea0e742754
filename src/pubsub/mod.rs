//! The publish/subscribe core: channels (one per WebSocket connection) with their bounded
//! outbound queues, and the [`Hub`] of subscriptions with encode-once multicast.

pub mod broker;
pub mod burst;
pub mod channel;
pub mod hub;
pub mod outbox;
pub mod queue;

pub use channel::{ChannelHandle, ChannelId, SendError};
pub use hub::{Delivery, Hub, HubError, RelayObserver, ALL};

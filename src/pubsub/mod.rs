//! The publish/subscribe core: channels (one per WebSocket connection) with their bounded
//! outbound queues, and the [`Hub`] of subscriptions with encode-once multicast.

pub mod broker;
pub mod budget;
pub mod channel;
pub(crate) mod delivery_mode;
pub(crate) mod hub;
mod message;
mod name_set;
pub(crate) mod outbox;
pub mod relay;
pub mod window;

pub use channel::{ChannelHandle, ChannelId, SendError};
pub use hub::{Delivery, Hub, HubError, RelayObserver, ALL};
pub use message::Message;
pub use window::PublishWindow;

//! WebSocket sessions over sockets: the read and write loops that run the sans-io protocol of
//! [`crate::ws`] on an accepted connection, hand messages to the [`crate::apps::App`] and
//! drain the channel's queue, and the direct-write socket that lets a multicast skip that queue.
//!
//! Above `apps` and `pubsub` (it drives both), below `server`, which accepts the connections.

pub(crate) mod direct;
mod halves;
pub(crate) mod loops;

pub(crate) use loops::SessionConfig;

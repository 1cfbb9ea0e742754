//! The seam between the hub and the brokers: what the [`Hub`](super::Hub) asks of a broker
//! (the [`Broker`] trait), what a broker answers, and the control operations it relays. Below
//! both, so the hub knows no broker and every broker (`pubsub::broker`) builds on the hub.

use super::channel::ChannelId;
use super::Message;

/// Why a broker could not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker has no connection to the other nodes right now (counted).
    #[error("broker is not connected")]
    Disconnected,
    /// The broker's outbound queue is full (counted).
    #[error("broker's outbound queue is full")]
    Overloaded,
    /// No node with that name is known (memory bus only; Redis cannot know).
    #[error("no node named {0}")]
    UnknownNode(String),
}

/// What the hub needs from a broker. Every method returns at once: network I/O happens on the
/// broker's own tasks, so local delivery never waits on another node.
pub trait Broker: Send + Sync + 'static {
    /// This node's name: the prefix of the ids of its channels.
    fn node(&self) -> &str;

    /// What relays: `memory` (in-process) or `redis`.
    fn kind(&self) -> &'static str {
        "memory"
    }

    /// Relays a multicast on subscription `name` to the other nodes, which deliver it to their
    /// members except the channels in `exclude`. The caller has already delivered locally. A
    /// message that cannot be relayed is counted and dropped (the node keeps serving).
    ///
    /// Returns `Some(true)` when the message was handed to the relay, `Some(false)` when it
    /// could not be (disconnected, overloaded), `None` when there is no other node to relay to.
    fn publish(&self, name: &str, message: &Message, exclude: &[ChannelId]) -> Option<bool>;

    /// Relays `message` to channel `id` on node `node` (not this one).
    fn send(&self, node: &str, id: &ChannelId, message: &Message) -> Result<(), BrokerError>;

    /// Relays a control operation on channel `id` to node `node` (not this one), which
    /// applies it to its own hub. Fire-and-forget: the outcome is not reported back.
    fn control(&self, node: &str, id: &ChannelId, op: &Control) -> Result<(), BrokerError>;

    /// Tells the broker that subscription `name` gained its first or lost its last local
    /// member. The broker re-reads the hub's membership itself, so a late or repeated call
    /// is harmless.
    fn interest_changed(&self, name: &str);

    /// Whether the broker can currently reach the other nodes (for `/readyz`).
    fn is_connected(&self) -> bool;

    /// Broker errors so far (`broker_errors_total`): messages that could not be relayed, and
    /// failed connection attempts.
    fn errors(&self) -> u64;

    /// Stops the broker's tasks (on shutdown). Later calls do nothing.
    fn close(&self) {}
}

/// A control-API operation on one channel (DESIGN §6), relayed to the channel's node when
/// the channel lives elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `ws::subscribe`: add the channel to this subscription.
    Subscribe(String),
    /// `ws::unsubscribe`: remove the channel from this subscription.
    Unsubscribe(String),
    /// Close the channel with this code and reason (RFC 6455 §7.4).
    Close {
        /// Close code.
        code: u16,
        /// Reason text.
        reason: String,
    },
}

/// The node part of a channel id `<node>-<sequence>`.
pub fn node_of(id: &str) -> Option<&str> {
    id.rsplit_once('-').map(|(node, _)| node).filter(|n| !n.is_empty())
}

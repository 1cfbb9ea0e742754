//! The unit apps and the hub pass around: one complete data message, before it is framed.

use bytes::Bytes;

/// One complete data message received from a client, or handed to the hub to multicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8 (checked by the codec).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

//! The WebSocket protocol (RFC 6455, RFC 7692), free of I/O: the frame codec, the opening
//! handshake, permessage-deflate and close codes. The sockets that run it are elsewhere:
//! [`crate::session`] on the server side, [`crate::client`] on the client side.

pub mod close;
pub mod codec;
pub mod deflate;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod handshake;

pub use close::{is_valid_wire_code, CloseFrame};
pub use codec::{Decoder, DecoderConfig, Incoming, OpCode, ProtocolError, Role};
pub use handshake::{HandshakeError, UpgradeRequest};

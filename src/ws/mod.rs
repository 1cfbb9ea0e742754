//! The WebSocket protocol (RFC 6455): a sans-io codec and handshake, and the session that runs
//! them over a socket.

pub mod client;
pub mod client_cli;
pub mod close;
pub mod codec;
pub mod deflate;
pub mod direct;
pub mod fuzzing;
mod halves;
pub mod handshake;
pub mod session;

pub use close::{is_valid_wire_code, CloseFrame};
pub use codec::{Decoder, DecoderConfig, Incoming, OpCode, ProtocolError, Role};
pub use handshake::{HandshakeError, UpgradeRequest};

//! wsgate: a WebSocket gateway that stands in front of an existing web server.
//!
//! It terminates WebSockets on the URLs its configuration names (with built-in apps on a
//! publish/subscribe core) and reverse-proxies every other request to the upstream server.
//! The binary (`src/main.rs`) is a thin CLI over this library; see `DESIGN.md` for the contracts.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod apps;
pub mod config;
pub mod crypto;
pub mod host_rule;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod pubsub;
pub mod reload_status;
pub mod server;
pub mod sync;
pub mod systemd;
pub mod time;
pub mod ws;

/// The WebSocket client (`wsgate::client::{connect, Client}`), the seed's `ws::client`.
pub use ws::client;

//! wsgate: a WebSocket gateway that stands in front of an existing web server.
//!
//! It terminates WebSockets on the URLs its configuration names (with built-in apps on a
//! publish/subscribe core) and reverse-proxies every other request to the upstream server.
//! The binary (`src/main.rs`) is a thin CLI over this library; see `DESIGN.md` for the contracts.
//!
//! What the library offers: the WebSocket [`client`], configuration loading ([`config`]), the
//! server ([`server::start`], [`server::check`]), the publish/subscribe [`pubsub::Hub`] and
//! the [`apps`] for embedding, the sans-io WebSocket protocol ([`ws`]) and the proxy
//! ([`proxy::Proxy`]). The fuzz bodies are behind the `fuzzing` feature (for `fuzz/`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

pub mod admin;
pub mod apps;
pub mod client;
pub mod config;
mod crypto;
#[cfg(test)]
mod fuzz_smoke;
mod host_rule;
mod http;
mod locks;
pub mod logging;
pub mod metrics;
mod prefixed;
pub mod proxy;
pub mod pubsub;
mod raised_flag;
pub mod reload_status;
pub mod server;
mod session;
pub mod systemd;
mod time;
pub mod ws;

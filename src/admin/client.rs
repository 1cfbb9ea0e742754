//! The client side of the control API, for `wsgate publish` (send one message to every
//! WebSocket of a subscription, from a shell): finds the admin listener and token from the
//! configuration and POSTs the message. A chat room can be named `APP/ROOM`
//! ([`resolve_subscription`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::config::{AppKind, Config};

/// Time allowed for the whole publish request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control API call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// `[admin] addr = "off"`.
    #[error("the admin listener is off ([admin] addr = \"off\"); there is no control API to call")]
    AdminOff,
    /// The token file or the message could not be read.
    #[error("{0}")]
    Token(String),
    /// Connecting or talking to the admin listener failed.
    #[error("admin listener {addr}: {reason}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The API's error text.
        message: String,
    },
}

/// Where the control API of a configuration listens, and its token.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin listener (an unspecified bind address is reached on loopback).
    pub addr: SocketAddr,
    /// The bearer token, when `token_file` is set.
    pub token: Option<String>,
}

impl Target {
    /// The target described by `config`'s `[admin]`.
    pub fn from_config(config: &Config) -> Result<Self, AdminClientError> {
        let mut addr = config.admin.addr.ok_or(AdminClientError::AdminOff)?;
        if addr.ip().is_unspecified() {
            // Bound to every address: this host reaches it on loopback.
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let token = match &config.admin.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AdminClientError::Token(format!("admin.token_file {}: {e}", path.display())))?;
                Some(text.trim().to_owned())
            }
            None => None,
        };
        Ok(Target { addr, token })
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The subscription.
    pub subscription: String,
    /// The message.
    pub body: Bytes,
    /// Send as a binary message (otherwise text, which must be UTF-8).
    pub binary: bool,
    /// Channel ids that must not receive it.
    pub exclude: Vec<String>,
}

/// Publishes one message; returns the number of channels it was queued to.
pub async fn publish(target: &Target, message: &Publish) -> Result<u64, AdminClientError> {
    let mut uri = format!("/v1/subscriptions/{}/publish", percent_encode(&message.subscription));
    if !message.exclude.is_empty() {
        let ids: Vec<String> = message.exclude.iter().map(|id| percent_encode(id)).collect();
        uri.push_str("?exclude=");
        uri.push_str(&ids.join(","));
    }
    let content_type = if message.binary { "application/octet-stream" } else { "text/plain; charset=utf-8" };
    let (status, body) = post(target, &uri, content_type, message.body.clone()).await?;
    let value = json_answer(status, &body)?;
    value.get("delivered").and_then(|d| d.as_u64()).ok_or_else(|| AdminClientError::Io {
        addr: target.addr,
        reason: format!("unexpected answer: {}", String::from_utf8_lossy(&body)),
    })
}

/// POSTs `body` to `uri` on the admin listener (with the token, if any), within [`TIMEOUT`].
async fn post(
    target: &Target,
    uri: &str,
    content_type: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), AdminClientError> {
    let mut request =
        Request::post(uri).header(header::HOST, target.addr.to_string()).header(header::CONTENT_TYPE, content_type);
    if let Some(token) = &target.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request =
        request.body(Full::new(body)).map_err(|e| AdminClientError::Io { addr: target.addr, reason: e.to_string() })?;
    tokio::time::timeout(TIMEOUT, call(target.addr, request))
        .await
        .map_err(|_| AdminClientError::Io { addr: target.addr, reason: format!("no answer within {TIMEOUT:?}") })?
}

/// Runs `work` on a runtime of its own (the CLI commands are synchronous).
fn block_on<T>(
    target: &Target,
    work: impl std::future::Future<Output = Result<T, AdminClientError>>,
) -> Result<T, AdminClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminClientError::Io { addr: target.addr, reason: format!("cannot start the runtime: {e}") })?;
    runtime.block_on(work)
}

/// The message given on the command line, or standard input for `-` or none.
fn message_bytes(message: Option<String>) -> Result<Bytes, AdminClientError> {
    match message {
        None => read_stdin(),
        Some(text) if text == "-" => read_stdin(),
        Some(text) => Ok(Bytes::from(text)),
    }
}

fn read_stdin() -> Result<Bytes, AdminClientError> {
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
        .map_err(|e| AdminClientError::Token(format!("cannot read the message from standard input: {e}")))?;
    Ok(Bytes::from(data))
}

async fn call(addr: SocketAddr, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), AdminClientError> {
    let io_error = |e: &dyn std::fmt::Display| AdminClientError::Io { addr, reason: e.to_string() };
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| io_error(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| io_error(&e))?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| io_error(&e))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| io_error(&e))?.to_bytes();
    Ok((status, body))
}

/// What `wsgate publish` sends to: the subscription name and whether the text is to be
/// wrapped as a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The real subscription name (`chat:chat:/websocket/chat/ops`).
    pub subscription: String,
    /// The name was a chat room shorthand: plain text becomes a chat `message`.
    pub chat_room: bool,
}

/// Resolves the room shorthand `APP/ROOM`: `APP` a chat app of `config` and `ROOM` the last
/// segment of one of its URLs (`chat/ops` for `/websocket/chat/ops`) or the whole URL
/// without its first `/` (`chat/websocket/chat/ops`). Names with a `:`, `all`, and names
/// whose first part is no chat app are used as they are. A chat app with no such room is an
/// error listing its rooms, rather than a publish that reaches nobody.
pub fn resolve_subscription(config: &Config, name: &str) -> Result<Destination, String> {
    let as_is = || Destination { subscription: name.to_string(), chat_room: false };
    if name.contains(':') {
        return Ok(as_is());
    }
    let Some((app_name, room)) = name.split_once('/') else {
        return Ok(as_is());
    };
    let Some(app) = config.apps.get(app_name).filter(|a| a.kind == AppKind::Chat) else {
        return Ok(as_is());
    };
    let found = app
        .urls
        .iter()
        .find(|url| url.trim_start_matches('/') == room || url.rsplit('/').next().is_some_and(|last| last == room));
    match found {
        Some(url) => Ok(Destination { subscription: format!("chat:{app_name}:{url}"), chat_room: true }),
        None => {
            let rooms: Vec<String> =
                app.urls.iter().map(|u| format!("{app_name}/{}", u.rsplit('/').next().unwrap_or_default())).collect();
            Err(format!(
                "chat app {app_name:?} has no room {room:?}; its rooms: {}",
                if rooms.is_empty() { "none (no urls)".to_string() } else { rooms.join(", ") }
            ))
        }
    }
}

/// A chat room's message for `text`, as the chat app multicasts its users' messages
/// (DESIGN §5), from the user `wsgate`. Text that already is a JSON object goes as it is.
pub fn chat_message(text: &[u8]) -> Bytes {
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text).is_ok() {
        return Bytes::copy_from_slice(text);
    }
    let text = String::from_utf8_lossy(text);
    let message = serde_json::json!({
        "type": "message",
        "user": "wsgate",
        "text": text.trim_end_matches('\n'),
        "ts": crate::apps::chat::now_rfc3339(),
    });
    Bytes::from(message.to_string())
}

/// `wsgate publish`: reads the message (`None` or `-` = standard input), publishes it through
/// the admin listener named by `config`, and returns the delivered count.
pub fn publish_command(
    config: &Config,
    subscription: String,
    message: Option<String>,
    binary: bool,
    exclude: Vec<String>,
) -> Result<u64, AdminClientError> {
    let body = message_bytes(message)?;
    let exclude = exclude.iter().flat_map(|e| e.split(',')).filter(|e| !e.is_empty()).map(str::to_owned).collect();
    let destination = resolve_subscription(config, &subscription).map_err(AdminClientError::Token)?;
    let body = if destination.chat_room && !binary { chat_message(&body) } else { body };
    let subscription = destination.subscription;
    let target = Target::from_config(config)?;
    block_on(&target, publish(&target, &Publish { subscription, body, binary, exclude }))
}

/// `wsgate publish --channel CHANNEL DATA`: publishes to a `pubsub` channel through `POST
/// /v1/publish` (history and offsets, like a client's publish). `message` is JSON data; text
/// that is not JSON is sent as a JSON string. Returns the daemon's answer
/// (`{"offset","epoch","delivered"}`).
pub fn publish_channel_command(
    config: &Config,
    channel: &str,
    message: Option<String>,
) -> Result<serde_json::Value, AdminClientError> {
    let text = String::from_utf8(message_bytes(message)?.to_vec())
        .map_err(|e| AdminClientError::Token(format!("cannot read the message from standard input: {e}")))?;
    let data = serde_json::from_str::<serde_json::Value>(&text)
        .unwrap_or_else(|_| serde_json::Value::String(text.trim_end_matches('\n').to_owned()));
    let body = serde_json::json!({ "channel": channel, "data": data }).to_string();
    let target = Target::from_config(config)?;
    let (status, body) = block_on(&target, post(&target, "/v1/publish", "application/json", Bytes::from(body)))?;
    json_answer(status, &body)
}

/// The JSON of a control-API answer, or the refusal it carries (its `error`, else its text).
fn json_answer(status: StatusCode, body: &[u8]) -> Result<serde_json::Value, AdminClientError> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = value
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
        return Err(AdminClientError::Refused { status, message });
    }
    Ok(value)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (§2.3).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;

    fn demo() -> Config {
        let mut config = Config::default();
        config.apps.insert(
            "chat".into(),
            AppConfig {
                urls: vec!["/websocket/chat".into(), "/websocket/chat/ops".into()],
                ..AppConfig::new(AppKind::Chat)
            },
        );
        config.apps.insert("echo".into(), AppConfig { urls: vec!["/e".into()], ..AppConfig::new(AppKind::Echo) });
        config
    }

    #[test]
    fn room_shorthand() {
        let c = demo();
        let ops = resolve_subscription(&c, "chat/ops").unwrap();
        assert_eq!(ops.subscription, "chat:chat:/websocket/chat/ops");
        assert!(ops.chat_room);
        assert_eq!(resolve_subscription(&c, "chat/chat").unwrap().subscription, "chat:chat:/websocket/chat");
        assert_eq!(
            resolve_subscription(&c, "chat/websocket/chat/ops").unwrap().subscription,
            "chat:chat:/websocket/chat/ops"
        );
        for as_is in ["all", "room1", "chat:chat:/websocket/chat", "echo/x", "other/ops"] {
            assert_eq!(
                resolve_subscription(&c, as_is).unwrap(),
                Destination { subscription: as_is.into(), chat_room: false }
            );
        }
        let e = resolve_subscription(&c, "chat/dev").unwrap_err();
        assert!(e.contains("chat/chat, chat/ops"), "{e}");
    }

    #[test]
    fn chat_message_wraps_plain_text_only() {
        let v: serde_json::Value = serde_json::from_slice(&chat_message(b"deploy done\n")).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["user"], "wsgate");
        assert_eq!(v["text"], "deploy done");
        assert_eq!(
            &chat_message(br#"{"type":"message","user":"a","text":"b"}"#)[..],
            br#"{"type":"message","user":"a","text":"b"}"#
        );
    }
}

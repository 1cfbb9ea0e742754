//! `backend`: the seed's `ws::handshake -callback` done over HTTP (DESIGN §5). Every event of
//! a connection is POSTed as JSON to the app's `callback` on the upstream, and the answer's
//! actions are applied in order.
//!
//! Events: `{"event":"open","channel":ID,"app":..,"url":..,"peer":..,"headers":{..}}`,
//! `{"event":"message","channel":ID,"text":..}` (or `"binary":BASE64`),
//! `{"event":"close","channel":ID,"code":N}`: the connection's close code, the peer's when it
//! closed first (1005 when its Close had no code), wsgate's when wsgate closed first (a
//! `close` action's code, 1001 on shutdown, 1008 for a slow consumer, 1002/1007/1009 for
//! protocol errors), 1006 when the connection was lost.
//!
//! Answer: empty, or `{"actions":[...]}` with, in any number and order:
//! `{"send":"text"}` or `{"send":{"text"|"binary":..,"channel":ID?}}`, `{"subscribe":"room"}`,
//! `{"unsubscribe":"room"}`, `{"publish":{"subscription":"room","text"|"binary":..,
//! "exclude_self":bool,"exclude":[ID..]}}`, `{"close":{"code":1000,"reason":".."}}`.
//! A malformed action is logged and skipped; the others still apply.
//!
//! Failures: for `open` the callback decides before the 101: a non-2xx answer rejects the
//! upgrade with that status (and the answer's body), a failed call answers 502, no answer
//! within `callback_timeout` answers 504. For `message` and `close`, failures and timeouts
//! are logged and counted (`wsgate_upstream_errors_total{kind="callback_*"}`) and the
//! connection stays open.
//!
//! Ordering: each channel has one worker task that POSTs its events one at a time, so events
//! reach the callback, and their actions are applied, in the order they happened. The
//! worker's queue is bounded ([`EVENT_QUEUE`]); a client that outruns its callback is closed
//! with 1008, the same policy as a slow consumer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{App, AppError, Message, PendingUpgrade, PreAccept, Rejection};
use crate::config::AppConfig;
use crate::locks::lock;
use crate::metrics::KindLabel;
use crate::proxy::pool::Pool;
use crate::proxy::UpstreamError;
use crate::pubsub::hub::encode;
use crate::pubsub::{ChannelHandle, ChannelId, Hub};
use crate::ws::close::{code, is_valid_wire_code};

/// Events queued per channel while a callback is in flight.
pub(crate) const EVENT_QUEUE: usize = 256;
/// Largest callback answer read.
const MAX_ANSWER: usize = 16 << 20;
/// Largest body of a rejecting answer passed on to the client.
const MAX_REJECTION_BODY: usize = 64 << 10;

/// The backend app.
pub(crate) struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    callback: Uri,
    timeout: Duration,
    /// The proxy's upstream client (keep-alive pool, connect and response timeouts).
    client: Pool,
    hub: Arc<Hub>,
    /// Actions answered to `open`, applied once the channel is open.
    pending: Mutex<HashMap<ChannelId, Vec<Action>>>,
    /// Each open channel's worker queue.
    workers: Mutex<HashMap<ChannelId, mpsc::Sender<Event>>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.inner.name).field("callback", &self.inner.callback).finish()
    }
}

#[derive(Debug)]
enum Event {
    Message(Message),
    Close(u16),
}

/// One action of a callback answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Send to this channel (`channel: None`) or to another one.
    Send {
        /// Target channel id; `None` = the event's channel.
        channel: Option<String>,
        /// The message.
        message: Message,
    },
    /// Join a subscription.
    Subscribe(String),
    /// Leave a subscription.
    Unsubscribe(String),
    /// Multicast to a subscription.
    Publish {
        /// The subscription.
        subscription: String,
        /// The message.
        message: Message,
        /// Leave out the event's own channel.
        exclude_self: bool,
        /// Leave out these channels too.
        exclude: Vec<String>,
    },
    /// Close this channel.
    Close {
        /// Close code (RFC 6455 §7.4).
        code: u16,
        /// Reason (at most 123 bytes).
        reason: String,
    },
}

/// Why a callback did not produce actions.
#[derive(Debug)]
enum CallError {
    /// The callback answered a non-2xx status.
    Status { status: StatusCode, headers: HeaderMap, body: Bytes },
    /// Connecting, sending or reading failed, or the answer was not valid JSON.
    Failed(String),
    /// No complete answer within `callback_timeout`.
    Timeout,
}

impl CallError {
    fn kind(&self) -> &'static str {
        match self {
            CallError::Status { .. } => "callback_status",
            CallError::Failed(_) => "callback_error",
            CallError::Timeout => "callback_timeout",
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status { status, .. } => write!(f, "callback answered {status}"),
            CallError::Failed(reason) => write!(f, "callback failed: {reason}"),
            CallError::Timeout => f.write_str("callback timed out"),
        }
    }
}

impl Backend {
    /// The app `name` POSTing to its configured `callback`.
    pub(crate) fn new(name: &str, config: &AppConfig, hub: Arc<Hub>) -> Result<Self, AppError> {
        let callback = config
            .callback
            .as_ref()
            .ok_or(AppError::Setting {
                name: name.to_owned(),
                key: "callback",
                reason: "a backend app needs a callback URL",
            })?
            .uri()
            .clone();
        let timeout = config.callback_timeout();
        let client = Pool::new(timeout, timeout);
        let inner = Inner {
            name: name.into(),
            callback,
            timeout,
            client,
            hub,
            pending: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
        };
        Ok(Backend { inner: Arc::new(inner) })
    }
}

impl App for Backend {
    fn pre_accept(&self, request: &PendingUpgrade<'_>) -> Option<PreAccept> {
        let inner = self.inner.clone();
        let event = json!({
            "event": "open",
            "channel": request.channel.as_str(),
            "app": &*inner.name,
            "url": request.url,
            "peer": request.peer.to_string(),
            "headers": headers_json(request.headers),
        });
        let id = request.channel.clone();
        Some(Box::pin(async move {
            match inner.call(&event).await {
                Ok(actions) => {
                    lock(&inner.pending).insert(id, actions);
                    Ok(())
                }
                Err(error) => {
                    inner.count(&error);
                    tracing::info!(app = %inner.name, channel = %id, %error, "backend refused the WebSocket");
                    Err(match error {
                        CallError::Status { status, headers, body } => rejection(status, &headers, body),
                        CallError::Timeout => Rejection::text(
                            StatusCode::GATEWAY_TIMEOUT,
                            "504 Gateway Timeout: the backend did not answer in time\n",
                        ),
                        CallError::Failed(_) => {
                            Rejection::text(StatusCode::BAD_GATEWAY, "502 Bad Gateway: the backend callback failed\n")
                        }
                    })
                }
            }
        }))
    }

    fn on_accept_failed(&self, channel: &ChannelHandle) {
        lock(&self.inner.pending).remove(channel.id());
        // The backend approved the open: tell it the connection is gone.
        let inner = self.inner.clone();
        let event = json!({ "event": "close", "channel": channel.id().as_str(), "code": code::ABNORMAL });
        let channel = channel.clone();
        tokio::spawn(async move {
            if let Err(error) = inner.call(&event).await {
                inner.failed(&channel, "close", &error);
            }
        });
    }

    fn on_open(&self, channel: &ChannelHandle) {
        let actions = lock(&self.inner.pending).remove(channel.id()).unwrap_or_default();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        lock(&self.inner.workers).insert(channel.id().clone(), tx);
        tokio::spawn(worker(self.inner.clone(), channel.clone(), actions, rx));
    }

    fn on_message(&self, channel: &ChannelHandle, message: Message) {
        let Some(tx) = lock(&self.inner.workers).get(channel.id()).cloned() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Event::Message(message)) {
            tracing::warn!(app = %self.inner.name, channel = %channel.id(), "backend callback queue full; closing with 1008");
            self.inner.count_kind("callback_queue_full");
            channel.close(code::POLICY, "backend callback queue full");
        }
    }

    fn on_close(&self, channel: &ChannelHandle, close_code: Option<u16>) {
        let Some(tx) = lock(&self.inner.workers).remove(channel.id()) else {
            return;
        };
        let event = Event::Close(close_code.unwrap_or(code::NO_STATUS));
        // The close event must not be lost to a full queue: wait for room off this task.
        if let Err(mpsc::error::TrySendError::Full(event)) = tx.try_send(event) {
            tokio::spawn(async move {
                let _ = tx.send(event).await;
            });
        }
    }
}

/// Posts one channel's events in order and applies each answer before the next event.
async fn worker(inner: Arc<Inner>, channel: ChannelHandle, initial: Vec<Action>, mut rx: mpsc::Receiver<Event>) {
    inner.apply(&channel, initial);
    while let Some(event) = rx.recv().await {
        let (body, what, last) = match event {
            Event::Message(message) => {
                let mut body = json!({ "event": "message", "channel": channel.id().as_str() });
                match message {
                    Message::Text(text) => body["text"] = Value::String(String::from_utf8_lossy(&text).into_owned()),
                    Message::Binary(data) => {
                        body["binary"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&data))
                    }
                }
                (body, "message", false)
            }
            Event::Close(close_code) => {
                (json!({ "event": "close", "channel": channel.id().as_str(), "code": close_code }), "close", true)
            }
        };
        match inner.call(&body).await {
            Ok(actions) => inner.apply(&channel, actions),
            Err(error) => inner.failed(&channel, what, &error),
        }
        if last {
            break;
        }
    }
}

impl Inner {
    /// POSTs `event` and parses the answer's actions.
    async fn call(&self, event: &Value) -> Result<Vec<Action>, CallError> {
        let request = Request::post(self.callback.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("wsgate/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(event.to_string())))
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let exchange = async {
            let response = self.client.send(request).await.map_err(|e| match e {
                UpstreamError::ResponseTimeout => CallError::Timeout,
                other => CallError::Failed(error_chain(&other)),
            })?;
            let (parts, body) = response.into_parts();
            let limit = if parts.status.is_success() { MAX_ANSWER } else { MAX_REJECTION_BODY };
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| CallError::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, CallError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.timeout, exchange).await.map_err(|_| CallError::Timeout)??;
        if !parts.status.is_success() {
            return Err(CallError::Status { status: parts.status, headers: parts.headers, body });
        }
        parse_answer(&body).map_err(CallError::Failed)
    }

    fn count_kind(&self, kind: &'static str) {
        if let Some(metrics) = self.hub.metrics() {
            metrics.upstream_errors.get_or_create(&KindLabel { kind }).inc();
        }
    }

    fn count(&self, error: &CallError) {
        self.count_kind(error.kind());
    }

    fn failed(&self, channel: &ChannelHandle, what: &str, error: &CallError) {
        self.count(error);
        tracing::warn!(app = %self.name, channel = %channel.id(), event = what, %error, "backend callback failed; connection kept");
    }

    /// Applies `actions` in order on behalf of `channel`.
    fn apply(&self, channel: &ChannelHandle, actions: Vec<Action>) {
        for action in actions {
            let result = match &action {
                Action::Send { channel: None, message } => {
                    channel.send_frame(encode(message)).map_err(|e| e.to_string())
                }
                Action::Send { channel: Some(id), message } => self.hub.send(id, message).map_err(|e| e.to_string()),
                Action::Subscribe(name) => self.hub.subscribe(channel.id(), name).map(drop).map_err(|e| e.to_string()),
                Action::Unsubscribe(name) => {
                    self.hub.unsubscribe(channel.id(), name).map(drop).map_err(|e| e.to_string())
                }
                Action::Publish { subscription, message, exclude_self, exclude } => {
                    let mut excluded: Vec<ChannelId> = exclude.iter().map(|id| ChannelId::from(id.as_str())).collect();
                    if *exclude_self {
                        excluded.push(channel.id().clone());
                    }
                    self.hub.multicast(subscription, message, &excluded);
                    Ok(())
                }
                Action::Close { code, reason } => {
                    channel.close(*code, reason);
                    Ok(())
                }
            };
            if let Err(error) = result {
                tracing::debug!(app = %self.name, channel = %channel.id(), ?action, %error, "backend action had no effect");
            }
        }
    }
}

fn rejection(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Rejection {
    let mut kept = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::LOCATION, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = headers.get(&name) {
            kept.insert(name, value.clone());
        }
    }
    Rejection { status, headers: kept, body }
}

/// The request headers as a JSON object; repeated headers are joined as RFC 9110 §5.3 allows
/// (`Cookie` with `; `, RFC 6265 §5.4).
fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let separator = if name == header::COOKIE { "; " } else { ", " };
        let values: Vec<String> =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        map.insert(name.as_str().to_owned(), Value::String(values.join(separator)));
    }
    Value::Object(map)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses a callback answer: empty (no actions) or `{"actions":[...]}`. A malformed action is
/// logged and left out; a malformed answer is an error.
pub(crate) fn parse_answer(body: &[u8]) -> Result<Vec<Action>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("answer is not a JSON object".into());
    };
    let actions = match object.get("actions") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(actions)) => actions,
        Some(_) => return Err("`actions` is not an array".into()),
    };
    let mut parsed = Vec::with_capacity(actions.len());
    for (i, action) in actions.iter().enumerate() {
        match parse_action(action) {
            Ok(action) => parsed.push(action),
            Err(error) => tracing::warn!(index = i, %error, "backend answer: action skipped"),
        }
    }
    Ok(parsed)
}

fn parse_action(value: &Value) -> Result<Action, String> {
    let object = value.as_object().filter(|o| o.len() == 1).ok_or("an action is an object with one key")?;
    let (kind, arg) = object.iter().next().ok_or("empty action")?;
    match kind.as_str() {
        "send" => match arg {
            Value::String(text) => {
                Ok(Action::Send { channel: None, message: Message::Text(Bytes::from(text.clone())) })
            }
            Value::Object(o) => Ok(Action::Send {
                channel: o
                    .get("channel")
                    .map(|c| c.as_str().map(str::to_owned).ok_or("send.channel must be a string"))
                    .transpose()?,
                message: message_of(o)?,
            }),
            _ => Err("send takes a string or {text|binary, channel}".into()),
        },
        "subscribe" | "unsubscribe" => {
            let name =
                arg.as_str().filter(|s| !s.is_empty()).ok_or(format!("{kind} takes a subscription name"))?.to_owned();
            Ok(if kind == "subscribe" { Action::Subscribe(name) } else { Action::Unsubscribe(name) })
        }
        "publish" => {
            let o = arg.as_object().ok_or("publish takes {subscription, text|binary, exclude_self}")?;
            let subscription = o
                .get("subscription")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or("publish.subscription missing")?;
            let exclude = match o.get("exclude") {
                None => Vec::new(),
                Some(Value::Array(ids)) => ids
                    .iter()
                    .map(|id| id.as_str().map(str::to_owned).ok_or("publish.exclude holds channel ids"))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("publish.exclude must be an array".into()),
            };
            Ok(Action::Publish {
                subscription: subscription.to_owned(),
                message: message_of(o)?,
                exclude_self: o.get("exclude_self").and_then(Value::as_bool).unwrap_or(false),
                exclude,
            })
        }
        "close" => {
            let o = match arg {
                Value::Null => serde_json::Map::new(),
                Value::Object(o) => o.clone(),
                _ => return Err("close takes {code, reason}".into()),
            };
            let close_code = match o.get("code") {
                None => code::NORMAL,
                Some(c) => c
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .filter(|c| is_valid_wire_code(*c))
                    .ok_or("close.code is not a code that may be sent (RFC 6455 §7.4)")?,
            };
            let reason = o.get("reason").and_then(Value::as_str).unwrap_or_default();
            if reason.len() > crate::pubsub::hub::MAX_CLOSE_REASON {
                return Err("close.reason is over 123 bytes".into());
            }
            Ok(Action::Close { code: close_code, reason: reason.to_owned() })
        }
        other => Err(format!("unknown action {other:?}")),
    }
}

fn message_of(o: &serde_json::Map<String, Value>) -> Result<Message, String> {
    match (o.get("text"), o.get("binary")) {
        (Some(Value::String(text)), None) => Ok(Message::Text(Bytes::from(text.clone()))),
        (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|data| Message::Binary(Bytes::from(data)))
            .map_err(|e| format!("binary is not base64: {e}")),
        _ => Err("exactly one of text (string) or binary (base64 string) is required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action_and_skips_bad_ones() {
        let answer = br#"{"actions":[
            {"send":"hi"},
            {"send":{"binary":"AAEC","channel":"n1-7"}},
            {"subscribe":"room1"},
            {"unsubscribe":"room0"},
            {"publish":{"subscription":"room1","text":"x","exclude_self":true}},
            {"frobnicate":1},
            {"close":{"code":1005}},
            {"close":{"code":4000,"reason":"bye"}}
        ]}"#;
        let actions = parse_answer(answer).unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(actions[0], Action::Send { channel: None, message: Message::Text("hi".into()) });
        assert_eq!(
            actions[1],
            Action::Send { channel: Some("n1-7".into()), message: Message::Binary(vec![0u8, 1, 2].into()) }
        );
        assert_eq!(actions[2], Action::Subscribe("room1".into()));
        assert_eq!(actions[3], Action::Unsubscribe("room0".into()));
        assert!(matches!(&actions[4], Action::Publish { exclude_self: true, .. }));
        assert_eq!(actions[5], Action::Close { code: 4000, reason: "bye".into() });
        assert_eq!(parse_answer(b"").unwrap(), vec![]);
        assert_eq!(parse_answer(b"{}").unwrap(), vec![]);
        assert!(parse_answer(b"[1]").is_err());
        assert!(parse_answer(b"{\"actions\":3}").is_err());
    }

    #[test]
    fn headers_are_joined_per_rfc() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        h.append(header::ACCEPT, "x".parse().unwrap());
        h.append(header::ACCEPT, "y".parse().unwrap());
        assert_eq!(headers_json(&h), json!({"cookie": "a=1; b=2", "accept": "x, y"}));
    }
}

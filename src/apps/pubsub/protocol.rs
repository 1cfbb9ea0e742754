//! The `pubsub` app's wire protocol (DESIGN §13), free of I/O: parsing client commands and
//! building replies and errors.
//!
//! A command is a JSON object with an optional `"id"` (a whole number, echoed in the reply)
//! and exactly one command key. A frame that is JSON but not a valid command earns an error
//! reply and the connection stays open; a frame that is not JSON at all is a protocol error
//! the app answers with a close (1007), as a binary frame is (1003).

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Longest channel name, in bytes.
pub(crate) const MAX_CHANNEL_BYTES: usize = 255;

/// The error codes of error replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Something failed inside wsgate.
    Internal = 100,
    /// No valid connection token (or `connect` not sent yet).
    Unauthorized = 101,
    /// No namespace matches the channel.
    UnknownChannel = 102,
    /// The namespace's rules or the tokens do not allow this.
    PermissionDenied = 103,
    /// Not a command this app knows.
    UnknownCommand = 104,
    /// Subscribed already.
    AlreadySubscribed = 105,
    /// A limit (subscriptions per connection, channels per node) was reached.
    LimitExceeded = 106,
    /// The command's fields are wrong.
    BadRequest = 107,
    /// The feature is off for this channel (presence).
    NotAvailable = 108,
    /// The token has expired.
    TokenExpired = 109,
    /// A history position that is not in the history any more.
    Unrecoverable = 112,
}

/// An error reply's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The code.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

/// `subscribe`'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscribe {
    /// The channel.
    pub channel: String,
    /// A channel token (namespaces with `subscribe = "token"`).
    #[serde(default)]
    pub token: Option<String>,
    /// Ask for the publications after `offset`/`epoch`.
    #[serde(default)]
    pub recover: bool,
    /// Last offset the client saw.
    #[serde(default)]
    pub offset: Option<u64>,
    /// The epoch that offset belongs to.
    #[serde(default)]
    pub epoch: Option<String>,
}

/// `history`'s `since`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Since {
    /// Last offset seen.
    pub offset: u64,
    /// Its epoch.
    pub epoch: String,
}

/// One client command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Authenticate (the token may also come as `?token=` on the URL).
    Connect {
        /// The connection token.
        token: Option<String>,
    },
    /// Join a channel, optionally recovering what was missed.
    Subscribe(Subscribe),
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// Publish to a channel.
    Publish {
        /// The channel.
        channel: String,
        /// Any JSON value.
        data: Value,
    },
    /// Who is in a channel.
    Presence {
        /// The channel.
        channel: String,
    },
    /// A channel's recent publications.
    History {
        /// The channel.
        channel: String,
        /// Most publications returned (default: all kept).
        limit: Option<usize>,
        /// Only those after this position.
        since: Option<Since>,
    },
}

/// A parsed frame: the id to echo and the command or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    /// The command's `id`, when it had a valid one.
    pub id: Option<u64>,
    /// The command, or the error to answer.
    pub command: Result<Command, Failure>,
}

/// Parses one text frame; `None` when it is not JSON at all.
pub(crate) fn parse(text: &[u8]) -> Option<Request> {
    let value: Value = serde_json::from_slice(text).ok()?;
    let Value::Object(mut object) = value else {
        return Some(Request { id: None, command: Err(bad("a command is a JSON object")) });
    };
    let id = match object.remove("id") {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(_) => return Some(Request { id: None, command: Err(bad("\"id\" must be a whole number")) }),
    };
    Some(Request { id, command: command(object) })
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::new(ErrorCode::BadRequest, message)
}

fn command(mut object: Map<String, Value>) -> Result<Command, Failure> {
    if object.len() != 1 {
        return Err(bad("a command object has one command key besides \"id\""));
    }
    let Some((name, body)) = object.iter_mut().next().map(|(k, v)| (k.clone(), v.take())) else {
        return Err(bad("no command"));
    };
    let fields = |what: &str| format!("{name}: {what}");
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Channel {
        channel: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Connect {
        #[serde(default)]
        token: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Publish {
        channel: String,
        data: Value,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct History {
        channel: String,
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        since: Option<Since>,
    }
    fn typed<T: serde::de::DeserializeOwned>(body: Value, name: &str) -> Result<T, Failure> {
        serde_json::from_value(body).map_err(|e| bad(format!("{name}: {e}")))
    }
    let command = match name.as_str() {
        "connect" => Command::Connect { token: typed::<Connect>(body, &name)?.token },
        "subscribe" => Command::Subscribe(typed(body, &name)?),
        "unsubscribe" => Command::Unsubscribe { channel: typed::<Channel>(body, &name)?.channel },
        "publish" => {
            let p: Publish = typed(body, &name)?;
            Command::Publish { channel: p.channel, data: p.data }
        }
        "presence" => Command::Presence { channel: typed::<Channel>(body, &name)?.channel },
        "history" => {
            let h: History = typed(body, &name)?;
            Command::History { channel: h.channel, limit: h.limit, since: h.since }
        }
        other => {
            return Err(Failure::new(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown command {other:?}: expected connect, subscribe, unsubscribe, publish, presence or history"
                ),
            ))
        }
    };
    if let Some(channel) = command.channel() {
        check_channel(channel).map_err(|e| bad(fields(&e)))?;
    }
    Ok(command)
}

impl Command {
    /// The channel the command is about (`None` for `connect`).
    pub(crate) fn channel(&self) -> Option<&str> {
        match self {
            Command::Connect { .. } => None,
            Command::Subscribe(s) => Some(&s.channel),
            Command::Unsubscribe { channel }
            | Command::Publish { channel, .. }
            | Command::Presence { channel }
            | Command::History { channel, .. } => Some(channel),
        }
    }
}

/// Whether `channel` is an acceptable name: 1 to 255 bytes, no control characters.
pub(crate) fn check_channel(channel: &str) -> Result<(), String> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES {
        return Err(format!("a channel name has 1 to {MAX_CHANNEL_BYTES} bytes"));
    }
    if channel.chars().any(char::is_control) {
        return Err("a channel name has no control characters".into());
    }
    Ok(())
}

/// `{"id":N,"<command>":body}` (no `id` when the command had none).
pub(crate) fn reply(id: Option<u64>, command: &str, body: Value) -> Value {
    let mut object = Map::new();
    if let Some(id) = id {
        object.insert("id".into(), id.into());
    }
    object.insert(command.into(), body);
    Value::Object(object)
}

/// `{"id":N,"error":{"code":C,"message":".."}}`.
pub(crate) fn error(id: Option<u64>, failure: &Failure) -> Value {
    reply(id, "error", json!({ "code": failure.code as u16, "message": failure.message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse(text.as_bytes()).unwrap().command.unwrap_err().code
    }

    #[test]
    fn commands_parse_with_their_id() {
        let r = parse(br#"{"id":7,"subscribe":{"channel":"news:1","recover":true,"offset":3,"epoch":"e"}}"#).unwrap();
        assert_eq!(r.id, Some(7));
        let Ok(Command::Subscribe(s)) = r.command else { panic!("{r:?}") };
        assert_eq!((s.channel.as_str(), s.recover, s.offset, s.epoch.as_deref()), ("news:1", true, Some(3), Some("e")));
        let r = parse(br#"{"publish":{"channel":"c","data":{"x":[1,2]}}}"#).unwrap();
        assert_eq!(r.id, None);
        assert_eq!(r.command, Ok(Command::Publish { channel: "c".into(), data: json!({"x":[1,2]}) }));
        let r = parse(br#"{"id":1,"connect":{}}"#).unwrap();
        assert_eq!(r.command, Ok(Command::Connect { token: None }));
    }

    #[test]
    fn every_bad_shape_has_its_code() {
        assert!(parse(b"not json").is_none());
        assert_eq!(code("[1]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"id":-1,"presence":{"channel":"c"}}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"subscribe":{"channel":"a"},"publish":{"channel":"a","data":1}}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"id":1,"rpc":{}}"#), ErrorCode::UnknownCommand);
        assert_eq!(code(r#"{"subscribe":{"channel":""}}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"subscribe":{"channel":"a\u0000"}}"#), ErrorCode::BadRequest);
        assert_eq!(code(&format!(r#"{{"subscribe":{{"channel":"{}"}}}}"#, "x".repeat(256))), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"subscribe":{"channel":"a","extra":1}}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"publish":{"channel":"a"}}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"history":{"channel":"a","since":{"offset":"1","epoch":"e"}}}"#), ErrorCode::BadRequest);
        // The id survives a bad command so the client can match the error.
        assert_eq!(parse(br#"{"id":9,"rpc":{}}"#).unwrap().id, Some(9));
    }

    #[test]
    fn replies_echo_the_id() {
        assert_eq!(reply(Some(3), "publish", json!({"offset":1})), json!({"id":3,"publish":{"offset":1}}));
        assert_eq!(
            error(None, &Failure::new(ErrorCode::Unrecoverable, "gone")),
            json!({"error":{"code":112,"message":"gone"}})
        );
    }
}

//! The control API under `/v1/` (DESIGN §6): the seed's `ws::send`, `ws::multicast`,
//! `ws::subscribe`/`unsubscribe` and channel close over HTTP, answering JSON.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/subscriptions/{name}/publish[?exclude=ID,ID]` | `{"delivered":N}`, plus `"relayed":bool` in a cluster |
//! | `GET /v1/subscriptions` | `{"scope":"node","subscriptions":[{"name":..,"channels":N}]}` |
//! | `GET /v1/channels` | `{"scope":"node","channels":[{"id","app","url","peer","subscriptions"}]}` |
//! | `GET /v1/channels/{id}` | one channel, as above |
//! | `POST /v1/channels/{id}/send` | `{"sent":true}` |
//! | `PUT`/`DELETE /v1/channels/{id}/subscriptions/{name}` | `{"subscribed":bool,"changed":bool}` |
//! | `DELETE /v1/channels/{id}[?code=1000&reason=..]` | 202 `{"closing":true}` |
//! | `POST /v1/publish` `{"channel","data"}` | `{"offset","epoch","delivered"}` (pubsub apps' channels) |
//! | `GET /v1/presence/{channel}` | `{"clients":{"<client>":{"user":..}}}` |
//! | `GET /v1/history/{channel}[?limit=N]` | `{"publications":[..],"offset","epoch"}` |
//!
//! Message bodies are text (must be UTF-8) unless `Content-Type: application/octet-stream`.
//! Errors are `{"error":".."}`: 400 bad parameters or body, 404 unknown channel or route,
//! 405 wrong method (with `Allow`), 410 channel closing, 413 body over `max_message_size`,
//! 503 the channel's send queue is full.
//!
//! In a cluster (`[broker] kind = "redis"`) counts and listings are this node's (`"scope":
//! "node"`); a publish also goes to the other nodes through the broker, and `"relayed"` says
//! whether the broker took it. When the broker is disconnected a publish is refused with 503,
//! `Retry-After: 1` and `{"error":..,"delivered":0,"relayed":false}` *before* anything is
//! delivered, so the publisher can retry it without duplicates.

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{error, json, method_not_allowed, read_message, AdminState};
use crate::http::Body;
use crate::pubsub::broker::{self, Control};
use crate::pubsub::hub::{ChannelSummary, HubError};
use crate::pubsub::{ChannelId, SendError};
use crate::ws::close::code;

/// Longest subscription name accepted.
pub(crate) const MAX_NAME: usize = 256;

/// Answers one `/v1/` request (already authorized).
pub(crate) async fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().strip_prefix("/v1").unwrap_or_default().trim_start_matches('/').to_owned();
    let raw: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
    let mut segments = Vec::with_capacity(raw.len());
    for segment in raw {
        match percent_decode(segment) {
            Some(s) => segments.push(s),
            None => return error(StatusCode::BAD_REQUEST, "path segment is not valid percent-encoded UTF-8"),
        }
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match segments.as_slice() {
        ["subscriptions"] => match method {
            Method::GET | Method::HEAD => list_subscriptions(state),
            _ => method_not_allowed("GET, HEAD"),
        },
        ["subscriptions", name, "publish"] => match method {
            Method::POST => publish(state, name, req).await,
            _ => method_not_allowed("POST"),
        },
        ["channels"] => match method {
            Method::GET | Method::HEAD => {
                let channels: Vec<_> = state.hub.channel_summaries().iter().map(channel_json).collect();
                json(StatusCode::OK, &json!({ "scope": "node", "channels": channels }))
            }
            _ => method_not_allowed("GET, HEAD"),
        },
        ["channels", id] => match method {
            Method::GET | Method::HEAD => match state.hub.channel_summary(id) {
                Some(summary) => json(StatusCode::OK, &channel_json(&summary)),
                None => unknown_channel(id),
            },
            Method::DELETE => close(state, id, req.uri().query()),
            _ => method_not_allowed("GET, HEAD, DELETE"),
        },
        ["channels", id, "send"] => match method {
            Method::POST => send(state, id, req).await,
            _ => method_not_allowed("POST"),
        },
        ["channels", id, "subscriptions", name] => match method {
            Method::PUT => membership(state, id, name, true),
            Method::DELETE => membership(state, id, name, false),
            _ => method_not_allowed("PUT, DELETE"),
        },
        ["publish"] => match method {
            Method::POST => super::channels::publish(state, req).await,
            _ => method_not_allowed("POST"),
        },
        ["presence", channel] => match method {
            Method::GET | Method::HEAD => super::channels::presence(state, channel).await,
            _ => method_not_allowed("GET, HEAD"),
        },
        ["history", channel] => match method {
            Method::GET | Method::HEAD => super::channels::history(state, channel, req.uri().query()).await,
            _ => method_not_allowed("GET, HEAD"),
        },
        _ => error(StatusCode::NOT_FOUND, "no such control route"),
    }
}

fn list_subscriptions(state: &AdminState) -> Response<Body> {
    let list: Vec<_> = state
        .hub
        .subscriptions()
        .into_iter()
        .map(|(name, channels)| json!({ "name": name, "channels": channels }))
        .collect();
    json(StatusCode::OK, &json!({ "scope": "node", "subscriptions": list }))
}

pub(crate) fn channel_json(c: &ChannelSummary) -> serde_json::Value {
    json!({
        "id": c.id.as_str(),
        "app": c.app,
        "url": c.url,
        "peer": c.peer.to_string(),
        "subscriptions": c.subscriptions,
    })
}

fn unknown_channel(id: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, &format!("no open channel with id {id}"))
}

async fn publish(state: &AdminState, name: &str, req: Request<Incoming>) -> Response<Body> {
    if let Err(response) = check_name(name) {
        return response;
    }
    let mut exclude = Vec::new();
    for (key, value) in query_pairs(req.uri().query()) {
        match key.as_str() {
            "exclude" => exclude.extend(value.split(',').filter(|s| !s.is_empty()).map(ChannelId::from)),
            _ => return error(StatusCode::BAD_REQUEST, &format!("unknown query parameter {key:?}; expected exclude")),
        }
    }
    let message = match read_message(req, state.max_body).await {
        Ok(message) => message,
        Err(response) => return response,
    };
    if let Some(broker) = state.hub.broker() {
        if !broker.is_connected() {
            let mut response = json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "error": "the broker is disconnected: nothing was delivered, retry later",
                    "delivered": 0,
                    "relayed": false,
                }),
            );
            response.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return response;
        }
    }
    // Answered once the subscription's writers keep up (pubsub::window): back-pressure.
    let delivery = state.publish_window.publish(&state.hub, name, &message, &exclude).await;
    let mut answer = json!({ "delivered": delivery.delivered });
    if let Some(relayed) = delivery.relayed {
        answer["relayed"] = relayed.into();
    }
    json(StatusCode::OK, &answer)
}

async fn send(state: &AdminState, id: &str, req: Request<Incoming>) -> Response<Body> {
    if state.hub.channel(id).is_none() {
        return unknown_channel(id);
    }
    let message = match read_message(req, state.max_body).await {
        Ok(message) => message,
        Err(response) => return response,
    };
    match state.hub.send(id, &message) {
        Ok(()) => json(StatusCode::OK, &json!({ "sent": true })),
        Err(HubError::UnknownChannel(_)) => unknown_channel(id),
        Err(HubError::Send { error: SendError::Closed, .. }) => error(StatusCode::GONE, "the channel is closing"),
        Err(HubError::Send { error: SendError::Dropped, .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the channel's send queue is full: message dropped (slow consumer)")
        }
        Err(HubError::Send { error: SendError::SlowConsumerClosed, .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the channel's send queue is full: channel closed with 1008")
        }
        Err(other) => error(StatusCode::BAD_REQUEST, &other.to_string()),
    }
}

fn membership(state: &AdminState, id: &str, name: &str, subscribe: bool) -> Response<Body> {
    if let Err(response) = check_name(name) {
        return response;
    }
    let id = ChannelId::from(id);
    if state.hub.channel(id.as_str()).is_none() && state.hub.broker().is_some() {
        // Not on this node: the broker relays the change to the channel's node (its answer
        // does not come back, so whether it changed anything is unknown).
        let op = if subscribe { Control::Subscribe(name.to_owned()) } else { Control::Unsubscribe(name.to_owned()) };
        return match broker::control(&state.hub, id.as_str(), &op) {
            Ok(()) => json(StatusCode::ACCEPTED, &json!({ "subscribed": subscribe, "relayed": true })),
            Err(HubError::UnknownChannel(_)) => unknown_channel(id.as_str()),
            Err(other) => error(StatusCode::SERVICE_UNAVAILABLE, &other.to_string()),
        };
    }
    let result = if subscribe { state.hub.subscribe(&id, name) } else { state.hub.unsubscribe(&id, name) };
    match result {
        Ok(changed) => json(StatusCode::OK, &json!({ "subscribed": subscribe, "changed": changed })),
        Err(HubError::UnknownChannel(_)) => unknown_channel(id.as_str()),
        Err(other) => error(StatusCode::BAD_REQUEST, &other.to_string()),
    }
}

fn close(state: &AdminState, id: &str, query: Option<&str>) -> Response<Body> {
    let mut close_code = code::NORMAL;
    let mut reason = String::new();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "code" => match value.parse() {
                Ok(c) => close_code = c,
                Err(_) => return error(StatusCode::BAD_REQUEST, &format!("code {value:?} is not a number")),
            },
            "reason" => reason = value,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown query parameter {key:?}; expected code, reason"),
                )
            }
        }
    }
    if state.hub.channel(id).is_none() && state.hub.broker().is_some() {
        let op = Control::Close { code: close_code, reason };
        return match broker::control(&state.hub, id, &op) {
            Ok(()) => json(StatusCode::ACCEPTED, &json!({ "closing": true, "relayed": true })),
            Err(HubError::UnknownChannel(_)) => unknown_channel(id),
            Err(other) => error(StatusCode::BAD_REQUEST, &other.to_string()),
        };
    }
    match state.hub.close_channel(id, close_code, &reason) {
        Ok(()) => json(StatusCode::ACCEPTED, &json!({ "closing": true })),
        Err(HubError::UnknownChannel(_)) => unknown_channel(id),
        Err(other) => error(StatusCode::BAD_REQUEST, &other.to_string()),
    }
}

// The error is the finished response: returned once per request, its size does not matter.
#[allow(clippy::result_large_err)]
fn check_name(name: &str) -> Result<(), Response<Body>> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(error(StatusCode::BAD_REQUEST, &format!("subscription name must be 1 to {MAX_NAME} bytes")));
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` pairs of a query string (`+` is a space).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode(&s.replace('+', " ")).unwrap_or_else(|| s.to_owned());
            (decode(k), decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths_and_queries() {
        assert_eq!(percent_decode("room%201").as_deref(), Some("room 1"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(
            query_pairs(Some("code=4000&reason=see+you%21&x")),
            vec![("code".into(), "4000".into()), ("reason".into(), "see you!".into()), ("x".into(), "".into())]
        );
    }
}

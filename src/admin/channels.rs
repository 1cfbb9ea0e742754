//! Control-API routes of the `pubsub` apps' channels (DESIGN §13): publish with history and
//! offsets (the same path as a client's publish), presence and history queries.
//!
//! Errors are `{"error":"..","code":C}` with the protocol's code: 400 (107) bad body, 404 (102)
//! no namespace matches, 409 (108) presence off, 503 (106) too many channels, 503 (100) Redis
//! unreachable in cluster mode (retry).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json, AdminState};
use crate::apps::pubsub::engine::EngineError;
use crate::apps::pubsub::protocol::{check_channel, ErrorCode};
use crate::apps::Message;
use crate::http::Body;

fn failure(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    json(status, &json!({ "error": message, "code": code as u16 }))
}

fn engine_failure(e: &EngineError) -> Response<Body> {
    let status = match e {
        EngineError::UnknownChannel(_) => StatusCode::NOT_FOUND,
        EngineError::PresenceOff => StatusCode::CONFLICT,
        EngineError::TooManyChannels => StatusCode::SERVICE_UNAVAILABLE,
        EngineError::Unrecoverable => StatusCode::BAD_REQUEST,
        EngineError::Closed => StatusCode::INTERNAL_SERVER_ERROR,
        EngineError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    failure(status, e.code(), &e.to_string())
}

#[allow(clippy::result_large_err)]
fn channel_name(channel: &str) -> Result<(), Response<Body>> {
    check_channel(channel).map_err(|e| failure(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &e))
}

/// `POST /v1/publish` with `{"channel":"c","data":…}`.
pub(crate) async fn publish(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Publish {
        channel: String,
        data: Value,
    }
    let body = match super::read_message(req, state.max_body).await {
        Ok(Message::Text(body)) => body,
        Ok(Message::Binary(_)) => {
            return failure(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "the body is JSON text")
        }
        Err(response) => return response,
    };
    let request: Publish = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            let message = format!("expected {{\"channel\":\"..\",\"data\":..}}: {e}");
            return failure(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &message);
        }
    };
    if let Err(response) = channel_name(&request.channel) {
        return response;
    }
    match state.channels.publish(&request.channel, request.data, None).await {
        Ok(p) => json(StatusCode::OK, &json!({ "offset": p.offset, "epoch": p.epoch, "delivered": p.delivered })),
        Err(e) => engine_failure(&e),
    }
}

/// `GET /v1/presence/{channel}`.
pub(crate) async fn presence(state: &AdminState, channel: &str) -> Response<Body> {
    if let Err(response) = channel_name(channel) {
        return response;
    }
    match state.channels.presence(channel).await {
        Ok(clients) => {
            let clients: serde_json::Map<_, _> =
                clients.into_iter().map(|(client, user)| (client, json!({ "user": user }))).collect();
            json(StatusCode::OK, &json!({ "clients": clients }))
        }
        Err(e) => engine_failure(&e),
    }
}

/// `GET /v1/history/{channel}[?limit=N]`.
pub(crate) async fn history(state: &AdminState, channel: &str, query: Option<&str>) -> Response<Body> {
    if let Err(response) = channel_name(channel) {
        return response;
    }
    let mut limit = usize::MAX;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.parse::<usize>()) {
            ("limit", Ok(n)) => limit = n,
            ("limit", Err(_)) => {
                return failure(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "limit is a whole number")
            }
            _ => {}
        }
    }
    match state.channels.history(channel, limit, None).await {
        Ok(page) => json(
            StatusCode::OK,
            &json!({ "publications": page.publications, "offset": page.position.offset, "epoch": page.position.epoch }),
        ),
        Err(e) => engine_failure(&e),
    }
}

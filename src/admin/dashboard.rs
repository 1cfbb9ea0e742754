//! The admin dashboard (issue 20): `GET /` serves an embedded page; `GET /v1/events` streams
//! the node's state to it as Server-Sent Events, one snapshot a second.
//!
//! The page holds no data of its own: everything it shows comes from `/v1/events` and every
//! action it offers (publish, close a connection) is a control-API call, so the API's rules
//! apply unchanged: the Host rule, the cross-site rule for actions, and the bearer token when
//! one is configured (the page asks for it and sends it as `Authorization`, never in a URL).
//!
//! A snapshot is `{"node", "broker":{"kind","connected","errors"}, "nodes":[live nodes of the
//! cluster, from their Redis heartbeats], "draining", "metrics":
//! <the /metrics text>, "subscriptions":[{"name","channels"}], "channels":[..], "channel_total"}`
//! with at most [`MAX_LISTED`] subscriptions and channels (the page says when it cut). The
//! metrics text is parsed by the page: one source of the figures, the same as a scraper's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;

use super::{error, AdminState};
use crate::http::{full_body, Body, BoxError};

/// The dashboard page (no external assets).
pub const PAGE: &str = include_str!("../../assets/dashboard.html");
/// Subscriptions and channels listed in one snapshot, at most.
pub const MAX_LISTED: usize = 500;
/// Event streams open at once, at most (each costs a snapshot a second).
pub const MAX_STREAMS: usize = 16;
/// A stream ends after this long; the page reconnects (bounds a forgotten tab's cost).
const STREAM_LIFETIME: Duration = Duration::from_secs(3600);
const INTERVAL: Duration = Duration::from_secs(1);

/// One permit per open event stream, released when its stream is dropped.
static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STREAMS);

/// `GET /`: the page.
pub fn page() -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // The page talks only to this listener; nothing may frame it.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One snapshot of the node's state, as the page reads it.
pub fn snapshot(state: &AdminState) -> serde_json::Value {
    let subscriptions = state.hub.subscriptions();
    let channels = state.hub.channel_summaries();
    let broker = state
        .hub
        .broker()
        .map(|b| json!({ "kind": b.kind(), "node": b.node(), "connected": b.is_connected(), "errors": b.errors() }));
    json!({
        "node": state.hub.broker().map(|b| b.node().to_owned()),
        "broker": broker,
        "nodes": state.channels.cluster_nodes(),
        "draining": *state.readiness.draining.borrow(),
        "metrics": state.metrics.render(),
        "subscriptions": subscriptions.iter().take(MAX_LISTED)
            .map(|(name, n)| json!({ "name": name, "channels": n })).collect::<Vec<_>>(),
        "subscription_total": subscriptions.len(),
        "channels": channels.iter().take(MAX_LISTED).map(super::control::channel_json).collect::<Vec<_>>(),
        "channel_total": channels.len(),
    })
}

/// `GET /v1/events`: a snapshot now and every second after, as `data:` events, for an hour.
pub fn events(state: &Arc<AdminState>) -> Response<Body> {
    let Ok(slot) = STREAMS.try_acquire() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many dashboard streams open");
    };
    let state = state.clone();
    let started = tokio::time::Instant::now();
    let stream = futures_util::stream::unfold((state, slot, true), move |(state, slot, first)| async move {
        if !first {
            tokio::time::sleep(INTERVAL).await;
        }
        if started.elapsed() > STREAM_LIFETIME || *state.readiness.draining.borrow() {
            return None;
        }
        let event = format!("data: {}\n\n", snapshot(&state));
        Some((Ok::<_, BoxError>(Frame::data(Bytes::from(event))), (state, slot, false)))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

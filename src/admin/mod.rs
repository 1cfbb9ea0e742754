//! The admin listener (DESIGN §6): `GET /metrics`, `GET /healthz`, `GET /readyz` and the
//! control API under `/v1/`, on a listener of its own (never the public one).
//!
//! Plain HTTP/1.1 served by hyper. The control API needs `Authorization: Bearer TOKEN` when
//! `[admin] token_file` is set; configuration validation refuses a non-loopback `addr`
//! without one, so the API is never open to the network. Metrics and health stay
//! unauthenticated: scrapers and load balancers do not carry tokens.
//!
//! Browsers are kept out of `/v1/` by the Host rule ([`crate::host_rule`]): a `Host`
//! that is not an IP literal, `localhost` or a name in `[admin] allowed_hosts` gets 421 (DNS
//! rebinding), and a state-changing request a browser marks as cross-site (`Sec-Fetch-Site`)
//! or from another origin (`Origin`) gets 403, whether or not a token is configured.
//! `/metrics`, `/healthz` and `/readyz` answer any Host: they are read-only, carry no ids,
//! and scrapers and load balancers address nodes by whatever name they know.

pub(crate) mod channels;
pub mod client;
pub(crate) mod control;
pub mod dashboard;
pub(crate) mod health;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::apps::Message;
use crate::host_rule::{HostDenied, HostRule};
use crate::http::{full_body, Body};
use crate::metrics::{Metrics, ReasonLabel};
use crate::pubsub::Hub;

/// Time allowed for a complete request head on the admin listener.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file is missing, unreadable or empty.
    #[error("admin.token_file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The address could not be bound.
    #[error("admin.addr {addr}: cannot bind: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The bearer token of the control API, kept as a digest so comparing it takes the same
/// time whatever the candidate (its length included).
#[derive(Clone)]
pub struct Token([u8; 20]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace, e.g. the file's newline, is ignored).
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Token(Sha1::digest(text.as_bytes()).into()))
    }

    /// Reads the token from `path`.
    pub fn read(path: &Path) -> Result<Self, AdminError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AdminError::Token { path: path.to_owned(), reason: e.to_string() })?;
        Token::new(&text).ok_or_else(|| AdminError::Token { path: path.to_owned(), reason: "the file is empty".into() })
    }

    /// Whether `candidate` is the token, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let digest: [u8; 20] = Sha1::digest(candidate).into();
        digest.iter().zip(self.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Reads the token of `[admin] token_file`, if one is configured.
pub fn load_token(token_file: Option<&Path>) -> Result<Option<Token>, AdminError> {
    token_file.map(Token::read).transpose()
}

/// What the admin handlers share.
pub struct AdminState {
    /// The node's channels and subscriptions.
    pub hub: Arc<Hub>,
    /// The `pubsub` apps' channels (`/v1/publish`, `/v1/presence`, `/v1/history`).
    pub channels: Arc<crate::apps::pubsub::engine::Engine>,
    /// The metrics registry rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Required on `/v1/` when set.
    pub token: Option<Token>,
    /// Which `Host`s `/v1/` answers (`[admin] allowed_hosts` besides IP literals and localhost).
    pub host_rule: HostRule,
    /// Largest message accepted by publish/send (`[websocket] max_message_size`).
    pub max_body: usize,
    /// What `/readyz` checks.
    pub readiness: health::Readiness,
    /// Back-pressure on `POST /v1/subscriptions/{name}/publish` (a publisher running ahead
    /// of the members' writers waits).
    pub publish_window: crate::pubsub::PublishWindow,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").field("token", &self.token.is_some()).finish_non_exhaustive()
    }
}

/// Binds the admin address (so `start` fails early on a taken port).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std);
    bound.map_err(|source| AdminError::Bind { addr, source })
}

/// Serves the admin API on `listener` until `shutdown` turns `true`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "admin connection ended");
            }
        });
    }
}

/// Routes one admin request.
pub async fn handle(state: &Arc<AdminState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        // The page carries no data; what it shows comes from /v1/events under the API's rules.
        "/" => match browser_guard(&state.host_rule, &req) {
            Err(denied) => {
                state.metrics.admin_refused.get_or_create(&ReasonLabel { reason: denied.reason() }).inc();
                text(denied.status(), denied.body())
            }
            Ok(()) => only_get(&req).unwrap_or_else(dashboard::page),
        },
        "/metrics" => only_get(&req).unwrap_or_else(|| health::metrics(state)),
        "/healthz" => only_get(&req).unwrap_or_else(health::healthz),
        "/readyz" => match only_get(&req) {
            Some(refused) => refused,
            None => health::readyz(&state.readiness).await,
        },
        _ if path == "/v1" || path.starts_with("/v1/") => {
            if let Err(denied) = browser_guard(&state.host_rule, &req) {
                state.metrics.admin_refused.get_or_create(&ReasonLabel { reason: denied.reason() }).inc();
                tracing::debug!(method = %req.method(), path, reason = denied.reason(), "admin request refused");
                return text(denied.status(), denied.body());
            }
            if let Some(token) = &state.token {
                if !authorized(token, req.headers()) {
                    let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"wsgate\""));
                    return response;
                }
            }
            if path == "/v1/events" {
                return only_get(&req).unwrap_or_else(|| dashboard::events(state));
            }
            control::handle(state, req).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin route"),
    }
}

/// The Host rule for every `/v1/` request, and the cross-site rule for the state-changing
/// ones (every method but GET, HEAD and OPTIONS).
fn browser_guard<B>(rule: &HostRule, req: &Request<B>) -> Result<(), HostDenied> {
    rule.check_request(req.headers(), req.uri())?;
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        rule.check_cross_site(req.headers(), req.uri())?;
    }
    Ok(())
}

/// A short plain-text answer (the Host rule's refusals).
fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn only_get(req: &Request<Incoming>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD).then(|| method_not_allowed("GET, HEAD"))
}

fn authorized(token: &Token, headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    // RFC 6750 §2.1: `Bearer` followed by the token; the scheme is case-insensitive.
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    token.matches(value[7..].trim_ascii())
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    let mut response = Response::new(full_body(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON error: `{"error":"..."}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// 405 with the methods the route accepts (RFC 9110 §15.5.6: `Allow` is required).
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, &format!("method not allowed; use {allow}"));
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Reads a message body: binary with `Content-Type: application/octet-stream`, otherwise text
/// that must be UTF-8 (a WebSocket text message must be, RFC 6455 §5.6).
#[allow(clippy::result_large_err)]
pub(crate) async fn read_message(req: Request<Incoming>, max: usize) -> Result<Message, Response<Body>> {
    let binary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body over max_message_size ({max} bytes)"));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let body: Bytes = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}"))),
    };
    if binary {
        return Ok(Message::Binary(body));
    }
    if simdutf8::basic::from_utf8(&body).is_err() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "text body is not valid UTF-8; send binary with Content-Type: application/octet-stream",
        ));
    }
    Ok(Message::Text(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ignores_the_newline_and_rejects_others() {
        let token = Token::new("s3cret\n").unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret "));
        assert!(!token.matches(b""));
        assert!(Token::new(" \n").is_none());
        let mut headers = http::HeaderMap::new();
        assert!(!authorized(&token, &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer s3cret"));
        assert!(authorized(&token, &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(!authorized(&token, &headers));
    }
}

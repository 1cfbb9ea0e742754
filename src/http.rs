//! The response body type every part of wsgate answers with, and small constructors for it.
//! Kept at the bottom of the module graph so that the admin listener, the apps' HTTP answers
//! and the server share it without importing each other.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response wsgate sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A short plain-text response (errors wsgate answers itself).
pub(crate) fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A body of `bytes`.
pub(crate) fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub(crate) fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

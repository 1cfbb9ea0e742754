//! The reverse proxy: everything that is not an app URL is forwarded to the
//! upstream web server (DESIGN §2 step 3), streamed both ways through a keep-alive
//! pool; an upgrade on a non-app URL is tunnelled byte for byte ([`tunnel`]).
//!
//! * [`headers`]: pure header rewriting (hop-by-hop, `X-Forwarded-*`, `Forwarded`, `Via`);
//! * [`pool`]: the upstream client and its timeouts;
//! * [`tunnel`]: the upgrade tunnel;
//! * [`error`]: failures, their side, and the 502/504/508 answers.
//!
//! This module knows nothing about apps: the router decides what reaches it.

pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod fast;
pub mod h1;
pub(crate) mod headers;
pub(crate) mod pool;
pub(crate) mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use ipnet::IpNet;

pub use error::{error_response, ProxyError, ProxyFailure, Side, UpstreamError};
use headers::ForwardContext;
use pool::Pool;

pub use crate::http::BoxError;

/// The body of every response the proxy produces: the upstream's body streamed
/// through, or a short synthetic error text. A body error (the upstream died
/// mid-body) makes hyper abort the client connection, so the client sees a short
/// body rather than a hang.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Upstream settings (from `[upstream]`, DESIGN §3) plus the trusted proxy list.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The upstream's base URL, `http://host:port`. Only scheme and authority are
    /// used; the client's path and query are sent unchanged.
    pub upstream: Uri,
    /// Limit for the TCP connect to the upstream (504 when exceeded).
    pub connect_timeout: Duration,
    /// Limit for the response head after the last request byte was sent (504).
    pub response_timeout: Duration,
    /// Peers whose `X-Forwarded-For` / `Forwarded` values are kept and appended to;
    /// for anyone else they are replaced by the peer's address.
    pub trusted_proxies: Vec<IpNet>,
    /// Time for a request body read before forwarding, and the longest pause of a streamed
    /// one (408 after it; [`body`]).
    pub body_read_timeout: Duration,
}

/// The client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Our address on that connection (logged with tunnels).
    pub local: SocketAddr,
    /// Whether the connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// The reverse proxy. Cheap to clone (one `Arc`); every clone shares the upstream
/// keep-alive pool. On a reload, build a new `Proxy` and let the old one drain with
/// its in-flight requests.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: ProxySettings,
    /// `settings.upstream` split once: scheme (default `http`) and authority.
    scheme: Scheme,
    authority: Option<Authority>,
    pool: Pool,
    /// Idle upstream connections of the fast path ([`fast`]).
    idle_streams: pool::IdleList<tokio::net::TcpStream>,
}

// === impl Proxy ===

impl Proxy {
    /// Builds the proxy and its (initially empty) upstream pool. No I/O happens here.
    ///
    /// An upstream URI without an authority makes every request fail with a 500
    /// (`ProxyError::Internal`); configuration validation should reject it first.
    pub fn new(settings: ProxySettings) -> Self {
        let scheme = settings.upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = settings.upstream.authority().cloned();
        let pool = Pool::new(settings.connect_timeout, settings.response_timeout);
        Self { inner: Arc::new(Inner { settings, scheme, authority, pool, idle_streams: pool::IdleList::default() }) }
    }

    /// The settings this proxy was built with.
    pub fn settings(&self) -> &ProxySettings {
        &self.inner.settings
    }

    /// Forwards one request (any method, any body) and streams the response back.
    /// Never buffers whole bodies. Failures become synthetic answers (502/504/508/…)
    /// tagged with a [`ProxyFailure`] extension for metrics.
    pub async fn forward<B>(&self, req: Request<B>, client: &ClientInfo) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        match self.try_forward(req, client).await {
            Ok(resp) => resp,
            Err(err) => failure_response(&err, client),
        }
    }

    /// [`forward`](Self::forward), returning the failure instead of its answer.
    pub async fn try_forward<B>(&self, req: Request<B>, client: &ClientInfo) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        check_forwardable(&parts)?;
        // Read ahead before anything is sent: a body that fails or is too slow is refused
        // with nothing of the request at the upstream.
        let body = body::prefetch(body, self.settings().body_read_timeout).await?;
        let body_failure = body.failure();
        let upstream_req = self.upstream_request(parts, body, client, None)?;
        let resp = match self.inner.pool.send(upstream_req).await {
            Ok(resp) => resp,
            // The upstream exchange failed because the client's streamed body did.
            Err(_) if body_failure.get().is_some() => {
                return Err(ProxyError::ClientBody(*body_failure.get().unwrap_or(&body::BodyFailure::Malformed)))
            }
            Err(error) => return Err(error.into()),
        };
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // No upgrade was asked for (tunnels go through `try_tunnel`).
            return Err(UpstreamError::Protocol("101 without an upgrade request".into()).into());
        }
        downstream_response(resp, None)
    }

    /// Builds the request sent upstream: refuses loops and `CONNECT`, rewrites the
    /// headers ([`headers::to_upstream`]) and the target (origin-form path and query
    /// of the client request, scheme and authority of the upstream).
    fn upstream_request<B>(
        &self,
        mut parts: Parts,
        body: B,
        client: &ClientInfo,
        upgrade: Option<HeaderValue>,
    ) -> Result<Request<B>, ProxyError> {
        check_forwardable(&parts)?;
        let authority =
            self.inner.authority.clone().ok_or_else(|| ProxyError::Internal("upstream URI has no authority".into()))?;
        let uri = upstream_uri(self.inner.scheme.clone(), authority, &parts.uri)
            .map_err(|e| ProxyError::Internal(Box::new(e)))?;
        let host = request_host(&parts);
        let ctx = ForwardContext::new(client.peer, client.tls, &self.inner.settings.trusted_proxies);
        headers::to_upstream(&mut parts.headers, &ctx, host, parts.version, upgrade);

        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = uri;
        // The upstream is spoken to in HTTP/1.1 whatever the client used (hyper's
        // HTTP/1 client refuses HTTP/2 requests).
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = parts.headers;
        Ok(req)
    }
}

/// What refuses a request before anything of it is sent: `CONNECT`, a loop through wsgate,
/// and `Host` or framing fields that [`headers::check_request`] refuses.
fn check_forwardable(parts: &Parts) -> Result<(), ProxyError> {
    headers::check_request(parts.version, &parts.headers).map_err(ProxyError::Refused)?;
    if parts.method == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    if headers::via_has_pseudonym(&parts.headers) {
        return Err(ProxyError::LoopDetected);
    }
    Ok(())
}

/// The request's authority as the origin should see it in `Host`: the target URI's
/// authority when it has one (HTTP/2 `:authority`, or HTTP/1.1 absolute-form, where
/// RFC 9112 §3.2.2 makes it override `Host`), else the `Host` field. Userinfo is
/// dropped (RFC 9110 §4.2.4 deprecates it).
pub fn request_host(parts: &Parts) -> Option<HeaderValue> {
    if let Some(auth) = parts.uri.authority() {
        let host = match auth.port() {
            Some(port) => format!("{}:{}", auth.host(), port.as_str()),
            None => auth.host().to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&host) {
            return Some(v);
        }
    }
    parts.headers.get(header::HOST).cloned()
}

/// The upstream target: `scheme://authority` of the upstream plus the client's
/// origin-form path and query (`/` when the client sent none, e.g. `OPTIONS *`
/// keeps `*`).
pub fn upstream_uri(scheme: Scheme, authority: Authority, client: &Uri) -> Result<Uri, http::Error> {
    let path = client.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder().scheme(scheme).authority(authority).path_and_query(path).build()
}

/// Turns the upstream's response into the client's: headers rewritten
/// ([`headers::to_downstream`]), body streamed through with upstream errors mapped
/// to [`UpstreamError::Body`].
fn downstream_response(
    resp: Response<pool::PooledBody>,
    upgrade: Option<HeaderValue>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    // hyper's client enforces its buffer limit only on a head that comes in pieces; the size of
    // the fields makes the limit the fast path's, whatever the timing.
    let head_size: usize = parts.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if head_size > h1::MAX_RESPONSE_HEAD {
        return Err(UpstreamError::Protocol("response head too large".into()).into());
    }
    if !headers::is_plain_chunked(&parts.headers) {
        // A coding hyper does not undo would reach the client unlabelled (the fast path
        // refuses it alike).
        return Err(UpstreamError::Protocol("transfer coding other than chunked".into()).into());
    }
    headers::to_downstream(&mut parts.headers, parts.version, upgrade);
    // The client's version is chosen by the server connection, not by the upstream.
    parts.version = Version::default();
    let body = body
        .map_err(|e| {
            tracing::debug!(error = %e, "upstream response body failed");
            Box::new(UpstreamError::Body(Box::new(e))) as BoxError
        })
        .boxed();
    Ok(Response::from_parts(parts, body))
}

/// The synthetic answer for `err`, logged at the level its side deserves.
fn failure_response(err: &ProxyError, client: &ClientInfo) -> Response<ProxyBody> {
    match err.side() {
        Side::Internal => {
            tracing::error!(peer = %client.peer, error = %err, cause = ?std::error::Error::source(err), "proxy failure")
        }
        // Upstream and client faults are expected in operation: counted, logged at debug.
        Side::Upstream | Side::Downstream => {
            tracing::debug!(peer = %client.peer, kind = err.kind(), error = ?err, "proxy failure")
        }
    }
    err.to_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let up: Uri = "http://127.0.0.1:8000".parse().unwrap();
        let client: Uri = "/a/b?x=1&y".parse().unwrap();
        let uri = upstream_uri(Scheme::HTTP, up.authority().unwrap().clone(), &client).unwrap();
        assert_eq!(uri, "http://127.0.0.1:8000/a/b?x=1&y");
        let client: Uri = "https://example.org/p?q".parse().unwrap();
        let uri = upstream_uri(Scheme::HTTP, up.authority().unwrap().clone(), &client).unwrap();
        assert_eq!(uri, "http://127.0.0.1:8000/p?q");
    }

    #[test]
    fn host_comes_from_the_authority_first() {
        let req = Request::get("https://user@example.org:8443/x").header("host", "other").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(request_host(&parts).unwrap(), "example.org:8443");
        let req = Request::get("/x").header("host", "h.example").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(request_host(&parts).unwrap(), "h.example");
    }
}

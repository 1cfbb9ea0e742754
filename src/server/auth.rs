//! The `auth` subrequest (DESIGN §3): before a WebSocket on an app with `auth = URL` is
//! accepted, wsgate sends `GET URL` with the client's `Cookie` and `Authorization` (and where
//! the client was going, see [`auth_request_headers`]). A 2xx answer admits the client; any
//! other status, a connect error or no answer within [`AUTH_TIMEOUT`] refuses it with 403.
//! Failing closed is deliberate: an outage of the auth endpoint must not open the app.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Empty;

use super::access::{auth_request_headers, Denied};
use crate::config::HttpUrl;
use crate::proxy::pool::Pool;

/// Time allowed for the auth endpoint's answer (response head), connect included.
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The auth check of one app: its URL and a keep-alive pool towards it.
#[derive(Debug, Clone)]
pub struct AuthCheck {
    url: HttpUrl,
    pool: Pool,
}

/// What the auth endpoint said, for the log.
#[derive(Debug)]
pub struct AuthRefusal {
    /// `Auth` (non-2xx answer) or `AuthUnavailable` (no answer).
    pub denied: Denied,
    /// The status, or the failure, in words.
    pub detail: String,
}

impl AuthCheck {
    /// A check against `url`, connecting within `connect_timeout`.
    pub fn new(url: HttpUrl, connect_timeout: Duration) -> Self {
        Self { pool: Pool::new(connect_timeout.min(AUTH_TIMEOUT), AUTH_TIMEOUT), url }
    }

    /// The endpoint.
    pub fn url(&self) -> &HttpUrl {
        &self.url
    }

    /// Asks the endpoint about a client request; `Ok` admits it.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        method: &Method,
        peer: std::net::IpAddr,
        tls: bool,
    ) -> Result<(), AuthRefusal> {
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.url.uri().clone();
        *request.headers_mut() = auth_request_headers(headers, uri, method, peer, tls);
        if let Ok(host) = http::HeaderValue::from_str(&self.url.authority()) {
            request.headers_mut().insert(http::header::HOST, host);
        }
        match tokio::time::timeout(AUTH_TIMEOUT, self.pool.send(request)).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => {
                Err(AuthRefusal { denied: Denied::Auth, detail: format!("answered {}", response.status()) })
            }
            Ok(Err(error)) => Err(AuthRefusal { denied: Denied::AuthUnavailable, detail: error.to_string() }),
            Err(_) => Err(AuthRefusal {
                denied: Denied::AuthUnavailable,
                detail: format!("no answer within {AUTH_TIMEOUT:?}"),
            }),
        }
    }
}

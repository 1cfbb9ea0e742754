//! Access checks before a WebSocket handshake (pure): client address allow list, the Host
//! rule of restricted apps ([`crate::host_rule`]), Origin, and the headers of the `auth`
//! subrequest (sent by `server/auth.rs`).
//!
//! The Origin check stops cross-site WebSocket hijacking (RFC 6455 §10.2). Browsers always send
//! `Origin`; other clients may omit it and are then allowed (Origin is not authentication).

use std::net::IpAddr;

use http::{header, HeaderMap};
use ipnet::IpNet;

use crate::host_rule::HostRule;

/// Why a client was refused (also the `reason` label of `handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The client address is not in the app's `allow` list.
    #[error("client address not allowed")]
    Address,
    /// A restricted app was asked for under a `Host` the Host rule refuses (DNS rebinding).
    #[error("host not allowed")]
    Host,
    /// The `Origin` header is not allowed.
    #[error("origin not allowed")]
    Origin,
    /// The `auth` subrequest answered with a non-2xx status.
    #[error("auth subrequest denied")]
    Auth,
    /// The `auth` subrequest failed (connect error, timeout): refused, never let through.
    #[error("auth subrequest failed")]
    AuthUnavailable,
}

impl Denied {
    /// Short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Address => "address_denied",
            Denied::Host => "host_denied",
            Denied::Origin => "origin_denied",
            Denied::Auth => "auth_denied",
            Denied::AuthUnavailable => "auth_error",
        }
    }
}

/// Checks `peer` against `allow` (empty = everyone).
pub(crate) fn check_address(peer: IpAddr, allow: &[IpNet]) -> Result<(), Denied> {
    // An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d.
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    if allow.is_empty() || allow.iter().any(|net| net.contains(&peer)) {
        Ok(())
    } else {
        Err(Denied::Address)
    }
}

/// Checks the authorities a request names against a restricted app's Host rule (`None`, for
/// an app open to everyone: any Host).
pub(crate) fn check_host(rule: Option<&HostRule>, headers: &HeaderMap, uri: &http::Uri) -> Result<(), Denied> {
    match rule {
        Some(rule) => rule.check_request(headers, uri).map_err(|_| Denied::Host),
        None => Ok(()),
    }
}

/// Checks the request's `Origin` against `allowed`: empty = same origin as `Host` (or the
/// HTTP/2 authority), `"*"` = any, otherwise an exact match of `scheme://host[:port]`
/// (case-insensitive). A request without `Origin` passes.
pub(crate) fn check_origin(headers: &HeaderMap, authority: Option<&str>, allowed: &[String]) -> Result<(), Denied> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| Denied::Origin)?.trim();
    if allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    if !allowed.is_empty() {
        return if allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
            Ok(())
        } else {
            Err(Denied::Origin)
        };
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority).ok_or(Denied::Origin)?;
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).ok_or(Denied::Origin)?;
    if same_host(origin_host, host, origin.starts_with("https://")) {
        Ok(())
    } else {
        Err(Denied::Origin)
    }
}

/// Headers of the `auth` subrequest for a client request (DESIGN §3, like nginx's
/// `auth_request`): the client's `Cookie` and `Authorization` (the credentials the upstream
/// judges), `Origin`, and where the request was going: `X-Original-URI` (path and query),
/// `X-Original-Method`, `X-Forwarded-For` (the client address), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`. Nothing else of the client's request is forwarded.
pub(crate) fn auth_request_headers(
    client: &HeaderMap,
    uri: &http::Uri,
    method: &http::Method,
    peer: IpAddr,
    tls: bool,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::COOKIE, header::AUTHORIZATION, header::ORIGIN] {
        for value in client.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    let original = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    if let Ok(value) = http::HeaderValue::from_str(original) {
        out.insert("x-original-uri", value);
    }
    if let Ok(value) = http::HeaderValue::from_str(method.as_str()) {
        out.insert("x-original-method", value);
    }
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    if let Ok(value) = http::HeaderValue::from_str(&peer.to_string()) {
        out.insert("x-forwarded-for", value);
    }
    out.insert("x-forwarded-proto", http::HeaderValue::from_static(if tls { "https" } else { "http" }));
    if let Some(host) = client
        .get(header::HOST)
        .cloned()
        .or_else(|| uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()))
    {
        out.insert("x-forwarded-host", host);
    }
    out
}

/// Compares `host[:port]` of an origin with a `Host` header, treating the default port of the
/// origin's scheme as equal to no port.
fn same_host(origin: &str, host: &str, https: bool) -> bool {
    let default_port = if https { ":443" } else { ":80" };
    let strip = |s: &str| -> String {
        let s = s.to_ascii_lowercase();
        s.strip_suffix(default_port).map(str::to_owned).unwrap_or(s)
    };
    strip(origin) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            m.insert(header::ORIGIN, o.parse().unwrap());
        }
        m
    }

    #[test]
    fn address_allow_list() {
        let loopback: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(check_address("127.0.0.1".parse().unwrap(), &loopback), Ok(()));
        assert_eq!(check_address("::ffff:127.0.0.1".parse().unwrap(), &loopback), Ok(()));
        assert_eq!(check_address("::1".parse().unwrap(), &loopback), Ok(()));
        assert_eq!(check_address("127.0.0.2".parse().unwrap(), &loopback), Err(Denied::Address));
        assert_eq!(check_address("10.0.0.1".parse().unwrap(), &[]), Ok(()));
    }

    #[test]
    fn same_origin_by_default() {
        assert_eq!(check_origin(&h(None, "a.example:8080"), None, &[]), Ok(()));
        assert_eq!(check_origin(&h(Some("http://a.example:8080"), "a.example:8080"), None, &[]), Ok(()));
        assert_eq!(check_origin(&h(Some("https://A.example"), "a.example:443"), None, &[]), Ok(()));
        assert_eq!(check_origin(&h(Some("http://evil.example"), "a.example"), None, &[]), Err(Denied::Origin));
        assert_eq!(check_origin(&h(Some("null"), "a.example"), None, &[]), Err(Denied::Origin));
    }

    #[test]
    fn auth_subrequest_carries_credentials_and_the_original_target_only() {
        let mut client = h(Some("http://a.example"), "a.example");
        client.append(header::COOKIE, "s=1".parse().unwrap());
        client.append(header::COOKIE, "t=2".parse().unwrap());
        client.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        client.insert("x-secret", "no".parse().unwrap());
        let uri: http::Uri = "/ws/chat?room=1".parse().unwrap();
        let out = auth_request_headers(&client, &uri, &http::Method::GET, "::ffff:10.1.2.3".parse().unwrap(), true);
        assert_eq!(out.get_all(header::COOKIE).iter().count(), 2);
        assert_eq!(out["authorization"], "Bearer x");
        assert_eq!(out["x-original-uri"], "/ws/chat?room=1");
        assert_eq!(out["x-original-method"], "GET");
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "a.example");
        assert!(out.get("x-secret").is_none() && out.get(header::HOST).is_none());
    }

    #[test]
    fn explicit_lists_and_wildcard() {
        let list = vec!["https://app.example".to_owned()];
        assert_eq!(check_origin(&h(Some("https://app.example"), "ws.example"), None, &list), Ok(()));
        assert_eq!(check_origin(&h(Some("https://other.example"), "ws.example"), None, &list), Err(Denied::Origin));
        assert_eq!(check_origin(&h(Some("https://other.example"), "ws.example"), None, &["*".to_owned()]), Ok(()));
    }
}

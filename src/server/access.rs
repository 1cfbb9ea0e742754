//! Access checks before a WebSocket handshake (pure): client address allow list and Origin.
//!
//! The Origin check stops cross-site WebSocket hijacking (RFC 6455 §10.2). Browsers always send
//! `Origin`; other clients may omit it and are then allowed (Origin is not authentication).

use std::net::IpAddr;

use http::{header, HeaderMap};
use ipnet::IpNet;

/// Why a client was refused (also the `reason` label of `handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The client address is not in the app's `allow` list.
    #[error("client address not allowed")]
    Address,
    /// The `Origin` header is not allowed.
    #[error("origin not allowed")]
    Origin,
}

impl Denied {
    /// Short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Address => "address_denied",
            Denied::Origin => "origin_denied",
        }
    }
}

/// Checks `peer` against `allow` (empty = everyone).
pub fn check_address(peer: IpAddr, allow: &[IpNet]) -> Result<(), Denied> {
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

/// Checks the request's `Origin` against `allowed`: empty = same origin as `Host` (or the
/// HTTP/2 authority), `"*"` = any, otherwise an exact match of `scheme://host[:port]`
/// (case-insensitive). A request without `Origin` passes.
pub fn check_origin(headers: &HeaderMap, authority: Option<&str>, allowed: &[String]) -> Result<(), Denied> {
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
    fn explicit_lists_and_wildcard() {
        let list = vec!["https://app.example".to_owned()];
        assert_eq!(check_origin(&h(Some("https://app.example"), "ws.example"), None, &list), Ok(()));
        assert_eq!(check_origin(&h(Some("https://other.example"), "ws.example"), None, &list), Err(Denied::Origin));
        assert_eq!(check_origin(&h(Some("https://other.example"), "ws.example"), None, &["*".to_owned()]), Ok(()));
    }
}

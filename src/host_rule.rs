//! The Host rule (pure): which `Host` a request to a restricted surface may name, and which
//! browser requests count as cross-site. Used by the admin control API and by every app with an
//! `allow` list (log-view's default), so both answer DNS rebinding and cross-site requests the
//! same way (SECURITY.md, "Browsers, DNS rebinding and the Host rule").
//!
//! Why: an address allow list (or a loopback-only listener) says who may connect, not which
//! page made the browser connect. A rebinding page reaches 127.0.0.1 under its own name, so its
//! requests carry `Host: rebind.evil.example` and a matching `Origin`; only the name gives it
//! away. A name the attacker controls is never an IP literal, never `localhost` (browsers
//! resolve `localhost` and `*.localhost` to loopback themselves, RFC 6761 §6.3) and never one
//! the operator listed, so those are what the rule admits.
//!
//! A plain cross-site request (no rebinding: `Host: 127.0.0.1:9090` from a page on another
//! site) passes the Host rule; for state-changing requests [`HostRule::check_cross_site`]
//! refuses what a browser marks as coming from another site (`Sec-Fetch-Site`) or from another
//! origin (`Origin`), which browsers send on every cross-origin POST, PUT, DELETE and PATCH,
//! `Content-Type: text/plain` or not.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::{header, HeaderMap, StatusCode, Uri};

/// Why a request was refused by the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostDenied {
    /// No `Host`, or one that is not an IP literal, `localhost`, `*.localhost` or a listed name.
    #[error("Host is not an IP literal, localhost or a listed name")]
    Host,
    /// `Sec-Fetch-Site: cross-site` or `same-site` on a state-changing request.
    #[error("cross-site request (Sec-Fetch-Site)")]
    FetchSite,
    /// An `Origin` that is not the request's own on a state-changing request.
    #[error("Origin does not match Host")]
    Origin,
}

impl HostDenied {
    /// Short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            HostDenied::Host => "host_denied",
            HostDenied::FetchSite => "cross_site",
            HostDenied::Origin => "origin_denied",
        }
    }

    /// 421 Misdirected Request for a Host we do not answer for (RFC 9110 §15.5.20: this
    /// server is not configured to serve that authority), 403 for a cross-site request.
    pub fn status(self) -> StatusCode {
        match self {
            HostDenied::Host => StatusCode::MISDIRECTED_REQUEST,
            HostDenied::FetchSite | HostDenied::Origin => StatusCode::FORBIDDEN,
        }
    }

    /// The short plain-text body sent with the refusal.
    pub fn body(self) -> &'static str {
        match self {
            HostDenied::Host => {
                "421 Misdirected Request: Host must be an IP address, localhost or a name in allowed_hosts\n"
            }
            HostDenied::FetchSite => "403 Forbidden: cross-site request\n",
            HostDenied::Origin => "403 Forbidden: Origin does not match Host\n",
        }
    }
}

/// The names a surface answers to besides IP literals, `localhost` and `*.localhost`
/// (`[admin] allowed_hosts`, an app's `allowed_hosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRule {
    /// Lower case, without a trailing dot.
    names: Vec<String>,
}

/// A host as written in an authority: an IP literal or a name, both in a canonical form
/// (the parsed address; the name lower-cased without a trailing dot) so they compare.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(std::net::IpAddr),
    Name(String),
}

impl HostRule {
    /// A rule admitting `names` (exact, case-insensitive) besides the built-in ones.
    pub fn new(names: &[String]) -> Self {
        HostRule { names: names.iter().map(|n| normalize_name(n)).collect() }
    }

    /// Whether the authority `host[:port]` (a `Host` value or an HTTP/2 `:authority`) names
    /// this server in a way no other site can: an IPv4 literal, a bracketed IPv6 literal,
    /// `localhost`, `*.localhost` or a listed name, with an optional port.
    pub fn allows(&self, authority: &str) -> bool {
        match parse_authority(authority) {
            Some((Host::Ip(_), _)) => true,
            Some((Host::Name(name), _)) => {
                name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
            }
            None => false,
        }
    }

    /// Checks every authority the request names: each `Host` field and the target's
    /// authority (absolute form, or HTTP/2's `:authority`). A request naming none is refused:
    /// browsers always send one.
    pub fn check_request(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), HostDenied> {
        let mut named = false;
        for value in headers.get_all(header::HOST) {
            named = true;
            if !value.to_str().is_ok_and(|v| self.allows(v.trim())) {
                return Err(HostDenied::Host);
            }
        }
        if let Some(authority) = uri.authority() {
            named = true;
            if !self.allows(authority.as_str()) {
                return Err(HostDenied::Host);
            }
        }
        if named {
            Ok(())
        } else {
            Err(HostDenied::Host)
        }
    }

    /// For a state-changing request (anything but GET, HEAD and OPTIONS): refuses
    /// `Sec-Fetch-Site: cross-site|same-site` (same-site is another origin too: a sibling
    /// subdomain or, for IP literals, another port), and an `Origin` (`null` included) whose
    /// authority is not allowed by [`allows`](Self::allows) or is not the request's own.
    /// Requests without these headers (curl, `wsgate publish`) pass: they are not made by a
    /// browser on a page's behalf.
    pub fn check_cross_site(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), HostDenied> {
        for value in headers.get_all("sec-fetch-site") {
            let site = value.to_str().unwrap_or("cross-site").trim();
            if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
                return Err(HostDenied::FetchSite);
            }
        }
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::trim)
            .or_else(|| uri.authority().map(|a| a.as_str()));
        for value in headers.get_all(header::ORIGIN) {
            let origin = value.to_str().map_err(|_| HostDenied::Origin)?.trim();
            let (https, authority) = if let Some(rest) = origin.strip_prefix("http://") {
                (false, rest)
            } else if let Some(rest) = origin.strip_prefix("https://") {
                (true, rest)
            } else {
                return Err(HostDenied::Origin); // `null`, or not a web origin
            };
            if !self.allows(authority) || !own.is_some_and(|own| same_authority(authority, own, https)) {
                return Err(HostDenied::Origin);
            }
        }
        Ok(())
    }
}

/// Whether `name` may be listed in `allowed_hosts`: a DNS name (letters, digits, `-`, `_`,
/// dots between labels), no port, no wildcard, at most 253 characters.
pub(crate) fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn normalize_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    name.strip_suffix('.').map(str::to_owned).unwrap_or(name)
}

/// Splits `host[:port]`; `None` for anything that is not a plain authority (userinfo,
/// an unbracketed IPv6 address, a bad port, characters no host name has).
fn parse_authority(authority: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip = v6.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':')?)?),
        };
        return Some((Host::Ip(ip.into()), port));
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (authority, None),
        }
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some((Host::Ip(ip.into()), port));
    }
    valid_name(host).then(|| (Host::Name(normalize_name(host)), port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// Compares an origin's authority with the request's, the scheme's default port counting as
/// no port (as in the WebSocket Origin check).
fn same_authority(origin: &str, own: &str, https: bool) -> bool {
    let default_port = if https { 443 } else { 80 };
    match (parse_authority(origin), parse_authority(own)) {
        (Some((oh, op)), Some((hh, hp))) => oh == hh && op.unwrap_or(default_port) == hp.unwrap_or(default_port),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn ip_literals_localhost_and_listed_names_are_allowed() {
        let rule = HostRule::new(&["Gate.Example.".to_owned()]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9090",
            "[2001:db8::1]:8080",
            "localhost",
            "LOCALHOST:9090",
            "localhost.",
            "app.localhost:8080",
            "gate.example",
            "gate.example.:443",
            "GATE.EXAMPLE",
        ] {
            assert!(rule.allows(ok), "{ok}");
        }
        for bad in [
            "",
            "rebind.evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "::1",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:80:80",
            "user@127.0.0.1",
            "gate.example.evil",
            "sub.gate.example",
            "a b",
            "127.0.0.1:+80",
        ] {
            assert!(!rule.allows(bad), "{bad:?}");
        }
        assert!(!HostRule::default().allows("gate.example"));
    }

    #[test]
    fn every_named_authority_must_pass_and_one_is_needed() {
        let rule = HostRule::default();
        let uri: Uri = "/v1/channels".parse().unwrap();
        assert_eq!(rule.check_request(&headers(&[("host", "127.0.0.1:9090")]), &uri), Ok(()));
        assert_eq!(rule.check_request(&headers(&[("host", "rebind.evil.example")]), &uri), Err(HostDenied::Host));
        assert_eq!(rule.check_request(&HeaderMap::new(), &uri), Err(HostDenied::Host));
        let two = headers(&[("host", "127.0.0.1"), ("host", "evil.example")]);
        assert_eq!(rule.check_request(&two, &uri), Err(HostDenied::Host));
        // HTTP/2 (RFC 8441): the authority is in the target.
        let h2: Uri = "https://rebind.evil.example:8443/logs".parse().unwrap();
        assert_eq!(rule.check_request(&HeaderMap::new(), &h2), Err(HostDenied::Host));
        let h2: Uri = "https://localhost:8443/logs".parse().unwrap();
        assert_eq!(rule.check_request(&HeaderMap::new(), &h2), Ok(()));
    }

    #[test]
    fn cross_site_browser_requests_are_refused() {
        let rule = HostRule::default();
        let uri: Uri = "/v1/subscriptions/all/publish".parse().unwrap();
        let check = |pairs: &[(&'static str, &'static str)]| rule.check_cross_site(&headers(pairs), &uri);
        assert_eq!(check(&[("host", "127.0.0.1:9090")]), Ok(()));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "cross-site")]), Err(HostDenied::FetchSite));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "Same-Site")]), Err(HostDenied::FetchSite));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "none")]), Ok(()));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("origin", "https://evil.example")]), Err(HostDenied::Origin));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("origin", "null")]), Err(HostDenied::Origin));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("origin", "http://127.0.0.1:8080")]), Err(HostDenied::Origin));
        assert_eq!(check(&[("host", "127.0.0.1:9090"), ("origin", "http://127.0.0.1:9090")]), Ok(()));
        assert_eq!(check(&[("host", "localhost"), ("origin", "http://LOCALHOST:80")]), Ok(()));
        // A Host without a port takes the Origin scheme's default, as in the WebSocket check.
        assert_eq!(check(&[("host", "localhost"), ("origin", "https://localhost")]), Ok(()));
        assert_eq!(check(&[("host", "localhost"), ("origin", "https://localhost:8443")]), Err(HostDenied::Origin));
        // A rebinding page is same-origin with its own name, which the Host rule refuses.
        assert_eq!(
            check(&[("host", "rebind.evil.example:9090"), ("origin", "http://rebind.evil.example:9090")]),
            Err(HostDenied::Origin)
        );
    }

    #[test]
    fn refusals_have_fixed_statuses_and_reasons() {
        assert_eq!(HostDenied::Host.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(HostDenied::Origin.status(), StatusCode::FORBIDDEN);
        assert_eq!(HostDenied::FetchSite.reason(), "cross_site");
        assert!(HostDenied::Host.body().ends_with('\n'));
    }

    #[test]
    fn listed_names_are_checked_for_shape() {
        for ok in ["gate.example", "gate.example.", "a", "node_1.lan"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "gate.example:9090", "*.example", "a..b", "http://a", "[::1]", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

//! Header rewriting between the client and the upstream: pure functions over
//! [`http::HeaderMap`], no I/O (STYLE-ANCHORS §5.1).
//!
//! Implements RFC 9110 §7.6.1 (hop-by-hop fields), §7.6.3 (`Via`), §7.8
//! (`Upgrade`), RFC 7239 (`Forwarded`) and the de-facto `X-Forwarded-*` fields, as
//! specified in `shared/reference/ecosystem.md` section (g).

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use ipnet::IpNet;

/// The pseudonym wsgate uses in `Via` (RFC 9110 §7.6.3 allows a pseudonym in
/// place of the host name; it also serves as our loop marker).
pub(crate) const PSEUDONYM: &str = "wsgate";

/// `X-Forwarded-For` (de facto; not registered with IANA, so `http` has no constant).
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Proxy-Connection`: never standardised, but sent by old clients; hop-by-hop.
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `Keep-Alive` (RFC 2068 §19.7.1.1); hop-by-hop.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// What the header rewriting needs to know about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ForwardContext {
    /// The client's address as seen by wsgate (the TCP peer).
    pub peer: IpAddr,
    /// Whether the peer is one of the configured trusted proxies, i.e. whether the
    /// `X-Forwarded-For` / `Forwarded` values it sent may be kept and appended to.
    pub trusted: bool,
    /// Whether the client connection is TLS (gives `https` / `http`).
    pub tls: bool,
}

impl ForwardContext {
    /// Builds the context, deciding trust by matching the peer against `trusted`.
    ///
    /// IPv4-mapped IPv6 peers (`::ffff:192.0.2.1`, seen on dual-stack listeners) are
    /// canonicalised to IPv4 so that IPv4 trust lists and logs work as expected.
    pub fn new(peer: SocketAddr, tls: bool, trusted: &[IpNet]) -> Self {
        let peer = peer.ip().to_canonical();
        let trusted = trusted.iter().any(|net| net.contains(&peer));
        Self { peer, trusted, tls }
    }

    /// `https` or `http`, the scheme the client used to reach us.
    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Returns the protocol named in `Upgrade` if the message is an upgrade request:
/// RFC 9110 §7.8 requires a sender of `Upgrade` to also send the `upgrade`
/// connection option, so both must be present.
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    if upgrade.as_bytes().iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    connection_has_token(headers, "upgrade").then(|| upgrade.clone())
}

/// Whether any `Connection` field line lists `token` (case-insensitive, RFC 9110 §7.6.1).
pub(crate) fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// Iterates the comma-separated options of every `Connection` field line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        // Split as bytes: one odd byte in one option must not hide the others (the fast path
        // reads them alike).
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .filter(|t| !t.is_empty())
}

/// The fields that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, plus the
/// legacy `Proxy-Connection` and `Keep-Alive`). The one list both proxy paths use.
pub(crate) const HOP_BY_HOP: [&str; 6] =
    ["connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"];

/// Whether `name` is one of [`HOP_BY_HOP`] (any case).
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a `Connection` option naming `name` may remove that field on the way through.
/// Fields that frame or route a message never go because a peer names them: `Content-Length`
/// and `Transfer-Encoding` (the framing is re-derived from what wsgate parsed, and a peer
/// that could strip a length would hide a request in the body: request smuggling), `Host`
/// and the upgrade fields (`Upgrade`, `Sec-WebSocket-*`), which the tunnel needs.
pub(crate) fn connection_may_remove(name: &str) -> bool {
    const PROTECTED: [&str; 4] = ["content-length", "transfer-encoding", "host", "upgrade"];
    const PROTECTED_PREFIX: &str = "sec-websocket-";
    !(PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p))
        || name.get(..PROTECTED_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PROTECTED_PREFIX)))
}

/// Whether a field named `name` is dropped on the way through, given the options of the
/// message's `Connection` fields (`named`): [`HOP_BY_HOP`], or named and
/// [`connection_may_remove`].
pub(crate) fn is_dropped<S: AsRef<str>>(name: &str, named: &[S]) -> bool {
    is_hop_by_hop(name) || (named.iter().any(|n| name.eq_ignore_ascii_case(n.as_ref())) && connection_may_remove(name))
}

/// Removes the hop-by-hop fields of RFC 9110 §7.6.1: `Connection` and every field
/// it names (but those [`connection_may_remove`] protects), plus `Proxy-Connection`,
/// `Keep-Alive`, `TE`, `Transfer-Encoding` and `Upgrade`. Framing is redone by hyper on the
/// next hop.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Names are collected first: the map cannot be mutated while borrowed.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| connection_may_remove(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in
        [&header::CONNECTION, &PROXY_CONNECTION, &KEEP_ALIVE, &header::TE, &header::TRANSFER_ENCODING, &header::UPGRADE]
    {
        headers.remove(name);
    }
}

/// A request the proxy refuses before anything of it reaches the upstream (RFC 9112 §3.2,
/// §6.1): the status and a fixed sentence for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, or 501 for a transfer coding wsgate does not forward faithfully.
    pub status: http::StatusCode,
    /// The sentence of the answer (fixed text, never peer data).
    pub reason: &'static str,
}

impl Refusal {
    const fn bad(reason: &'static str) -> Self {
        Self { status: http::StatusCode::BAD_REQUEST, reason }
    }
}

/// Judges a request's `Host` and framing fields once, for both proxy paths (the fast path
/// hands anything unusual to the path that calls this):
/// * HTTP/1.1 without `Host`, more than one `Host`, or a `Host` that is not a valid
///   `uri-host [":" port]` (userinfo included) → 400 (RFC 9112 §3.2);
/// * `Transfer-Encoding` in HTTP/1.0 (RFC 9112 §6.1) or `chunked` more than once → 400;
/// * a coding other than a single `chunked` (e.g. `gzip, chunked`) → 501: wsgate re-frames
///   bodies and would drop the coding.
pub(crate) fn check_request(version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Refusal::bad("more than one Host field")),
        (None, None) if version == Version::HTTP_11 => return Err(Refusal::bad("HTTP/1.1 request without Host")),
        (Some(host), None) if !is_valid_host(host.as_bytes()) => return Err(Refusal::bad("invalid Host field")),
        _ => {}
    }
    let codings = headers.get_all(header::TRANSFER_ENCODING);
    if codings.iter().next().is_none() {
        return Ok(());
    }
    if version == Version::HTTP_10 || version == Version::HTTP_09 {
        return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let mut chunked = 0;
    let mut other = false;
    for value in codings {
        for coding in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else {
                other = true;
            }
        }
    }
    if chunked > 1 {
        return Err(Refusal::bad("chunked applied more than once"));
    }
    if other {
        return Err(Refusal {
            status: http::StatusCode::NOT_IMPLEMENTED,
            reason: "transfer coding other than chunked",
        });
    }
    Ok(())
}

/// Whether a message's `Transfer-Encoding` is absent or exactly one `chunked` (the only coding
/// the proxy passes on: anything else would have to be undone to re-frame the body).
pub(crate) fn is_plain_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(first), None) => first.eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// Writes a `Content-Length` that came as a list of equal values (`5, 5`, which the upstream's
/// parser accepts, RFC 9110 §8.6) as the one value: the client gets one length, as from the fast
/// path.
fn single_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), None) = (values.next(), values.next()) else { return };
    if !first.as_bytes().contains(&b',') {
        return;
    }
    let Some(one) = first.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).find(|v| !v.is_empty()) else {
        return;
    };
    if let Ok(value) = HeaderValue::from_bytes(one) {
        headers.insert(header::CONTENT_LENGTH, value);
    }
}

/// Whether a `Host` value is `uri-host [":" port]` (RFC 9110 §7.2) or empty: an IP literal,
/// a reg-name of unreserved and sub-delim characters or percent-escapes, and digits after
/// the colon. Userinfo (`a@b`), spaces, controls and a second colon outside brackets are not.
pub(crate) fn is_valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b":.".contains(&b) || b.is_ascii_alphanumeric())
        {
            return false;
        }
        (&value[..=end], &value[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let host_ok = host.first() == Some(&b'[')
        || (!host.is_empty() && host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)));
    host_ok && port_ok
}

/// Re-adds `Connection: upgrade` and `Upgrade: <protocol>` after
/// [`remove_hop_by_hop`], for the byte tunnel of non-app upgrades (the equivalent of
/// nginx's `proxy_set_header Upgrade/Connection`).
pub(crate) fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Whether an incoming `Via` already names our pseudonym: the request has been
/// through this gateway before, i.e. the upstream points back at us (a loop;
/// answered with 508 like linkerd's `loop_detected`).
pub(crate) fn via_has_pseudonym(headers: &HeaderMap) -> bool {
    headers.get_all(header::VIA).iter().any(|v| via_has_pseudonym_bytes(v.as_bytes()))
}

/// [`via_has_pseudonym`] for one `Via` field line.
pub(crate) fn via_has_pseudonym_bytes(value: &[u8]) -> bool {
    via_entries(value).any(|entry| via_received_by(entry).is_some_and(|by| by.eq_ignore_ascii_case(PSEUDONYM)))
}

/// Splits a `Via` field value into its comma-separated entries, ignoring commas
/// inside comments (RFC 9110 §5.6.5: comments are parenthesised and may nest).
/// A comment left open at the end is malformed: the value is then split at every
/// comma, so that entries appended after it (ours, the loop marker) stay visible.
fn via_entries(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut out = Vec::new();
    for (i, &b) in value.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    if depth > 0 {
        out = value.split(|&b| b == b',').collect();
    }
    out.into_iter()
}

/// The `received-by` part of one `Via` entry (`received-protocol RWS received-by [RWS comment]`).
fn via_received_by(entry: &[u8]) -> Option<&str> {
    let entry = std::str::from_utf8(entry).ok()?;
    let mut parts = entry.split_ascii_whitespace();
    let _protocol = parts.next()?;
    let by = parts.next()?;
    // Be lenient with a comment glued to the pseudonym: `wsgate(comment)`.
    Some(by.split('(').next().unwrap_or(by))
}

/// The `received-protocol` of RFC 9110 §7.6.3 for a message of `version`: the
/// protocol name is omitted for HTTP, the version is `major.minor` or `2`/`3`.
fn via_protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Appends our `Via` entry (`1.1 wsgate` for an HTTP/1.1 message) to the message's
/// `Via` list; `received` is the version of the message as we received it
/// (RFC 9110 §7.6.3: a gateway MUST add `Via` to requests and MAY to responses).
pub(crate) fn append_via(headers: &mut HeaderMap, received: Version) {
    let ours = format!("{} {}", via_protocol(received), PSEUDONYM);
    append_list(headers, &header::VIA, ours.as_bytes());
}

/// Appends `item` to a comma-separated list field, merging all existing field lines
/// into one (some consumers read only the first or last `X-Forwarded-For` line).
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &[u8]) {
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(name) {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value);
    }
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(item);
    set_or_replace(headers, name, &joined, item);
}

/// Inserts `value`, falling back to `fallback` alone should the merged bytes not be a
/// valid field value (cannot happen for values that were valid already, but a
/// header from a peer is never worth a panic).
fn set_or_replace(headers: &mut HeaderMap, name: &HeaderName, value: &[u8], fallback: &[u8]) {
    let value = HeaderValue::from_bytes(value).or_else(|_| HeaderValue::from_bytes(fallback));
    match value {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Sets `name` to `item` alone (dropping what the client sent) or, for trusted
/// peers, appends it to the client's list.
fn set_list(headers: &mut HeaderMap, name: &HeaderName, item: &[u8], trusted: bool) {
    if trusted {
        append_list(headers, name, item);
    } else {
        headers.remove(name);
        set_or_replace(headers, name, item, item);
    }
}

/// Whether `s` is an RFC 9110 §5.6.2 token (may appear unquoted in `Forwarded`).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The `Forwarded` element for this hop, written by its `Display`: `for=…;proto=…[;host=…]`
/// (RFC 7239 §4-§5). IPv6 addresses are bracketed and quoted (`for="[2001:db8::17]"`, §6).
/// `host` is the request's authority when it is visible ASCII (else it is left out); a host
/// that is not a token is a quoted-string (RFC 9110 §5.6.4), escaping `"` and `\`.
/// Written straight into the outgoing head by the fast path: no allocation per request.
pub(crate) struct ForwardedElement<'a> {
    /// The connection's client and scheme.
    pub ctx: &'a ForwardContext,
    /// The request's authority, if visible ASCII.
    pub host: Option<&'a str>,
}

impl std::fmt::Display for ForwardedElement<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        match self.ctx.peer {
            IpAddr::V4(v4) => write!(f, "for={v4}")?,
            IpAddr::V6(v6) => write!(f, "for=\"[{v6}]\"")?,
        }
        write!(f, ";proto={}", self.ctx.proto())?;
        // A host that is not visible ASCII cannot be quoted faithfully: leave it out.
        let Some(host) = self.host.filter(|h| !h.is_empty()) else { return Ok(()) };
        f.write_str(";host=")?;
        if is_token(host) {
            return f.write_str(host);
        }
        f.write_char('"')?;
        for c in host.chars() {
            if c == '"' || c == '\\' {
                f.write_char('\\')?;
            }
            f.write_char(c)?;
        }
        f.write_char('"')
    }
}

/// [`ForwardedElement`] as a string.
pub(crate) fn forwarded_element(ctx: &ForwardContext, host: Option<&str>) -> String {
    ForwardedElement { ctx, host }.to_string()
}

/// Rewrites a request's header section for the upstream (RFC 9110 §7.6):
///
/// * hop-by-hop fields and `Proxy-Authorization` (meant for us, not the origin) are
///   removed; for a tunnelled upgrade, `Upgrade: <protocol>` and `Connection: upgrade`
///   are put back;
/// * `host` is the request's authority (the `Host` field, or the HTTP/2
///   `:authority`): `Host` is set to it and kept unchanged towards the upstream;
/// * `X-Forwarded-For` gets the peer appended (trusted peers) or replaced (others);
///   `X-Forwarded-Proto` and `X-Forwarded-Host` are set from the listener and `host`;
/// * `Forwarded` gets our element appended (trusted) or replaced (others);
/// * `Via` gets `<version> wsgate` appended, `version` being the client's.
pub(crate) fn to_upstream(
    headers: &mut HeaderMap,
    ctx: &ForwardContext,
    host: Option<HeaderValue>,
    version: Version,
    upgrade: Option<HeaderValue>,
) {
    // The framing is hyper's on the next hop, from the body wsgate parsed (its exact length,
    // or chunked): the client's own length never goes on, so it cannot disagree with the body.
    headers.remove(header::CONTENT_LENGTH);
    remove_hop_by_hop(headers);
    headers.remove(header::PROXY_AUTHORIZATION);
    if let Some(protocol) = upgrade {
        restore_upgrade(headers, protocol);
    }

    let peer = ctx.peer.to_string();
    set_list(headers, &X_FORWARDED_FOR, peer.as_bytes(), ctx.trusted);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(ctx.proto()));
    let element = forwarded_element(ctx, host.as_ref().and_then(|h| h.to_str().ok()));
    set_list(headers, &header::FORWARDED, element.as_bytes(), ctx.trusted);
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            headers.insert(header::HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    append_via(headers, version);
}

/// Rewrites a response's header section for the client: hop-by-hop fields removed,
/// `Via` appended. For the `101` of a tunnelled upgrade, `upgrade` carries the
/// protocol the upstream switched to and `Upgrade`/`Connection: upgrade` are kept.
pub(crate) fn to_downstream(headers: &mut HeaderMap, version: Version, upgrade: Option<HeaderValue>) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, which must not reach the
        // client beside the body hyper re-frames.
        headers.remove(header::CONTENT_LENGTH);
    } else {
        single_content_length(headers);
    }
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        restore_upgrade(headers, protocol);
    }
    append_via(headers, version);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
        h.get(k).map(|v| v.to_str().unwrap())
    }

    fn ctx(peer: &str, trusted: bool, tls: bool) -> ForwardContext {
        ForwardContext { peer: peer.parse().unwrap(), trusted, tls }
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("connection", "x-bar"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "foo"),
            ("x-keep", "3"),
            ("proxy-authenticate", "Basic"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["proxy-authenticate", "x-keep"]);
    }

    #[test]
    fn bogus_connection_tokens_do_not_panic() {
        let mut h = map(&[("connection", "close, , bad name, ,"), ("x-a", "1")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(get(&h, "x-a"), Some("1"));
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn upgrade_needs_both_fields() {
        assert!(upgrade_protocol(&map(&[("upgrade", "foo")])).is_none());
        assert!(upgrade_protocol(&map(&[("connection", "upgrade")])).is_none());
        let h = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }

    #[test]
    fn an_unclosed_comment_in_via_does_not_hide_our_loop_marker() {
        // Found by the `router` fuzz target: our entry appended after a client's unbalanced
        // `(` was read as part of that comment, so a request looping back through us was
        // not recognised and would be forwarded again on every pass.
        for sent in ["1.1 proxy (via", "1.0 a ((x)", "(", "1.1 p (a, 1.1 wsgate"] {
            let mut h = map(&[("via", sent)]);
            append_via(&mut h, Version::HTTP_11);
            assert!(via_has_pseudonym(&h), "{sent:?}");
        }
        assert!(!via_has_pseudonym(&map(&[("via", "1.1 proxy (via")])));
    }

    #[test]
    fn via_loop_detection() {
        assert!(!via_has_pseudonym(&map(&[("via", "1.1 nginx, 1.0 fred")])));
        assert!(via_has_pseudonym(&map(&[("via", "1.1 nginx, 1.1 wsgate")])));
        assert!(via_has_pseudonym(&map(&[("via", "1.0 a"), ("via", "2 WSGATE (x, y)")])));
        // The pseudonym inside a comment is not a loop.
        assert!(!via_has_pseudonym(&map(&[("via", "1.1 proxy (via 1.1 wsgate, x)")])));
        assert!(!via_has_pseudonym(&map(&[("via", "wsgate")])));
        assert!(!via_has_pseudonym(&HeaderMap::new()));
    }

    #[test]
    fn via_is_appended_with_the_received_version() {
        let mut h = map(&[("via", "1.0 fred"), ("via", "1.1 p.example")]);
        append_via(&mut h, Version::HTTP_11);
        assert_eq!(get(&h, "via"), Some("1.0 fred, 1.1 p.example, 1.1 wsgate"));
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_2);
        assert_eq!(get(&h, "via"), Some("2 wsgate"));
    }

    #[test]
    fn untrusted_peer_replaces_forwarding_fields() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("host", "example.org:8080"),
            ("proxy-authorization", "Basic Zm9v"),
        ]);
        let host = h.get("host").cloned();
        to_upstream(&mut h, &ctx("192.0.2.7", false, false), host, Version::HTTP_11, None);
        assert_eq!(get(&h, "x-forwarded-for"), Some("192.0.2.7"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("example.org:8080"));
        assert_eq!(get(&h, "host"), Some("example.org:8080"));
        assert_eq!(get(&h, "forwarded"), Some("for=192.0.2.7;proto=http;host=\"example.org:8080\""));
        assert_eq!(get(&h, "via"), Some("1.1 wsgate"));
        assert!(h.get("proxy-authorization").is_none());
    }

    #[test]
    fn trusted_peer_appends_forwarding_fields() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", "for=203.0.113.1"),
            ("host", "example.org"),
        ]);
        let host = h.get("host").cloned();
        to_upstream(&mut h, &ctx("::1", true, true), host, Version::HTTP_11, None);
        assert_eq!(get(&h, "x-forwarded-for"), Some("203.0.113.1, 198.51.100.2, ::1"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "forwarded"), Some("for=203.0.113.1, for=\"[::1]\";proto=https;host=example.org"));
    }

    #[test]
    fn upgrade_is_restored_for_tunnels() {
        let mut h = map(&[("connection", "Upgrade, x-a"), ("upgrade", "foo/2"), ("x-a", "1")]);
        let proto = upgrade_protocol(&h);
        to_upstream(&mut h, &ctx("127.0.0.1", false, false), None, Version::HTTP_11, proto);
        assert_eq!(get(&h, "upgrade"), Some("foo/2"));
        assert_eq!(get(&h, "connection"), Some("upgrade"));
        assert!(h.get("x-a").is_none());
        assert!(h.get("x-forwarded-host").is_none());
        assert!(h.get("host").is_none());
    }

    #[test]
    fn downstream_strips_and_appends_via() {
        let mut h = map(&[("connection", "close, x-a"), ("x-a", "1"), ("via", "1.1 up")]);
        to_downstream(&mut h, Version::HTTP_11, None);
        assert!(h.get("connection").is_none() && h.get("x-a").is_none());
        assert_eq!(get(&h, "via"), Some("1.1 up, 1.1 wsgate"));
    }

    #[test]
    fn context_canonicalises_and_matches_trust() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let c = ForwardContext::new("[::ffff:10.1.2.3]:5".parse().unwrap(), false, &nets);
        assert!(c.trusted);
        assert_eq!(c.peer.to_string(), "10.1.2.3");
        let c = ForwardContext::new("192.0.2.1:5".parse().unwrap(), true, &nets);
        assert!(!c.trusted);
        assert_eq!(c.proto(), "https");
    }

    #[test]
    fn forwarded_host_quoting() {
        let c = ctx("192.0.2.1", false, false);
        assert_eq!(forwarded_element(&c, Some("a\"b\\c")), "for=192.0.2.1;proto=http;host=\"a\\\"b\\\\c\"");
    }
}

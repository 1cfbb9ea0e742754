//! The opening handshake (RFC 6455 §4): checks on a client's upgrade request
//! (§4.2.1), the server's answer (§4.2.2), and the client's helpers (§4.1).
//! Pure functions over `http` types; writing the response is the caller's job.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use sha1::{Digest, Sha1};

/// The GUID appended to the key for `Sec-WebSocket-Accept` (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version we speak (RFC 6455 §4.1), as sent in
/// `Sec-WebSocket-Version` and in the 426 answer to any other (§4.4).
pub const SUPPORTED_VERSION: &str = "13";

/// What a valid upgrade request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The `Sec-WebSocket-Key` value, as sent (base64 of 16 bytes).
    pub key: String,
    /// `Sec-WebSocket-Protocol` values in the client's order of preference.
    pub protocols: Vec<String>,
    /// Raw `Sec-WebSocket-Extensions` offers (one per list element, with
    /// parameters), in order, for the deflate negotiation.
    pub extensions: Vec<String>,
}

/// Why an upgrade request was refused (RFC 6455 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The method was not GET.
    #[error("upgrade request method is not GET")]
    WrongMethod,
    /// The request was older than HTTP/1.1.
    #[error("upgrade request is older than HTTP/1.1")]
    WrongHttpVersion,
    /// No Host header.
    #[error("missing Host header")]
    MissingHost,
    /// No `Upgrade: websocket`.
    #[error("missing Upgrade: websocket")]
    MissingUpgrade,
    /// No `upgrade` token in Connection.
    #[error("missing Connection: upgrade")]
    MissingConnectionUpgrade,
    /// No Sec-WebSocket-Key.
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    /// A Sec-WebSocket-Key that is not base64 of 16 bytes, or more than one.
    #[error("invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// No Sec-WebSocket-Version.
    #[error("missing Sec-WebSocket-Version")]
    MissingVersion,
    /// A Sec-WebSocket-Version other than 13.
    #[error("unsupported Sec-WebSocket-Version")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// The status to answer with: 426 Upgrade Required (with
    /// `Sec-WebSocket-Version: 13`, see [`HandshakeError::response_headers`])
    /// for an unsupported version (RFC 6455 §4.4), 400 otherwise (§4.2.1).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A short, fixed name for metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::WrongMethod => "bad_method",
            Self::WrongHttpVersion => "bad_http_version",
            Self::MissingHost => "missing_host",
            Self::MissingUpgrade => "missing_upgrade",
            Self::MissingConnectionUpgrade => "missing_connection_upgrade",
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "bad_key",
            Self::MissingVersion => "missing_version",
            Self::UnsupportedVersion => "unsupported_version",
        }
    }

    /// Headers for the refusal: `Sec-WebSocket-Version: 13` for
    /// [`HandshakeError::UnsupportedVersion`] (RFC 6455 §4.4), none otherwise.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if *self == Self::UnsupportedVersion {
            h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static(SUPPORTED_VERSION));
        }
        h
    }
}

/// Iterates the comma-separated elements of every line of header `name`,
/// trimmed, empty elements skipped (RFC 9110 §5.6.1). Lines that are not
/// visible ASCII are skipped.
fn list_elements<'a>(headers: &'a HeaderMap, name: &http::header::HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Whether a list header has `token`, ASCII case-insensitively.
fn has_token(headers: &HeaderMap, name: &http::header::HeaderName, token: &str) -> bool {
    list_elements(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Splits extension offers at top-level commas, keeping commas inside
/// quoted parameter values (RFC 6455 §9.1 allows quoted-string values).
fn split_extension_offers(value: &str, out: &mut Vec<String>) {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                push_trimmed(&value[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    push_trimmed(&value[start..], out);
}

fn push_trimmed(s: &str, out: &mut Vec<String>) {
    let s = s.trim();
    if !s.is_empty() {
        out.push(s.to_owned());
    }
}

/// Whether the request asks to switch to WebSocket: an `Upgrade` header
/// with a `websocket` token, case-insensitive (RFC 6455 §4.2.1 item 3).
/// For routing only; [`validate_upgrade`] does the full check.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &UPGRADE, "websocket")
}

/// Checks an HTTP/1.1 upgrade request (RFC 6455 §4.2.1): GET, HTTP/1.1 or
/// later, a Host, `Upgrade: websocket`, `Connection: upgrade` (anywhere in
/// its lists), `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` that is
/// base64 of 16 bytes. The version is checked before the key so that a
/// client of another version always learns, through 426, which one we speak.
pub fn validate_upgrade(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<UpgradeRequest, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::WrongMethod);
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeError::WrongHttpVersion);
    }
    if !headers.contains_key(HOST) {
        return Err(HandshakeError::MissingHost);
    }
    if !is_websocket_upgrade(headers) {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    check_version(headers)?;
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(HandshakeError::MissingKey),
        (Some(k), None) => k,
        (Some(_), Some(_)) => return Err(HandshakeError::InvalidKey),
    };
    let key = key.to_str().map_err(|_| HandshakeError::InvalidKey)?.trim();
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    Ok(UpgradeRequest {
        key: key.to_owned(),
        protocols: offered_protocols(headers),
        extensions: offered_extensions(headers),
    })
}

/// `Sec-WebSocket-Version` must be one header, exactly `13`.
fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => Err(HandshakeError::MissingVersion),
        (Some(v), None) if v.as_bytes().trim_ascii() == SUPPORTED_VERSION.as_bytes() => Ok(()),
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    BASE64.encode(sha.finalize())
}

/// The first protocol in the client's order of preference (RFC 6455 §4.1)
/// that we support; exact, case-sensitive match.
pub fn select_protocol<'a>(offered: &'a [String], supported: &[String]) -> Option<&'a str> {
    offered.iter().find(|o| supported.iter().any(|s| s == *o)).map(String::as_str)
}

/// Headers of the 101 Switching Protocols answer (RFC 6455 §4.2.2 item 5):
/// Upgrade, Connection, Sec-WebSocket-Accept and, when one was chosen,
/// Sec-WebSocket-Protocol. A value that is not a valid header value is left
/// out (cannot happen for values from [`accept_key`] and [`select_protocol`]).
pub fn response_headers(accept: &str, protocol: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(4);
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(Ok(v)) = protocol.map(HeaderValue::from_str) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, v);
    }
    h
}

/// A fresh `Sec-WebSocket-Key` for a client request: base64 of 16 random
/// bytes (RFC 6455 §4.1 item 7). The nonce only proves the server read the
/// request; fastrand's unpredictability is enough (§10.3).
pub fn client_key() -> String {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&fastrand::u64(..).to_ne_bytes());
    nonce[8..].copy_from_slice(&fastrand::u64(..).to_ne_bytes());
    BASE64.encode(nonce)
}

/// Whether the server's `Sec-WebSocket-Accept` matches the key we sent (RFC 6455 §4.1).
pub fn verify_accept(key: &str, accept: &HeaderValue) -> bool {
    accept.as_bytes() == accept_key(key.as_bytes()).as_bytes()
}

/// Checks an HTTP/2 WebSocket bootstrap (RFC 8441 §4, §5): an extended
/// CONNECT whose `:protocol` pseudo-header (`protocol`, which hyper exposes
/// as the `hyper::ext::Protocol` request extension) is `websocket`, with
/// `Sec-WebSocket-Version: 13`. This form has no key and no accept, so the
/// returned `key` is empty; answer with 200 and
/// [`extended_connect_response_headers`]. A wrong or missing `:protocol`
/// is [`HandshakeError::MissingUpgrade`].
pub fn validate_extended_connect(
    method: &Method,
    protocol: Option<&str>,
    headers: &HeaderMap,
) -> Result<UpgradeRequest, HandshakeError> {
    if method != Method::CONNECT {
        return Err(HandshakeError::WrongMethod);
    }
    if !protocol.is_some_and(|p| p.eq_ignore_ascii_case("websocket")) {
        return Err(HandshakeError::MissingUpgrade);
    }
    check_version(headers)?;
    Ok(UpgradeRequest {
        key: String::new(),
        protocols: offered_protocols(headers),
        extensions: offered_extensions(headers),
    })
}

/// Headers of the 200 answer to an extended CONNECT (RFC 8441 §5): only
/// Sec-WebSocket-Protocol when one was chosen (HTTP/2 forbids Upgrade and
/// Connection, and there is no accept key).
pub fn extended_connect_response_headers(protocol: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(Ok(v)) = protocol.map(HeaderValue::from_str) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, v);
    }
    h
}

/// Headers a client adds to its GET to open a WebSocket (RFC 6455 §4.1):
/// Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version and,
/// when `protocols` is not empty, Sec-WebSocket-Protocol. Fails when `host`
/// or a protocol is not a valid header value.
pub fn client_request_headers(
    host: &str,
    key: &str,
    protocols: &[String],
) -> Result<HeaderMap, http::header::InvalidHeaderValue> {
    let mut h = HeaderMap::with_capacity(6);
    h.insert(HOST, HeaderValue::from_str(host)?);
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(key)?);
    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static(SUPPORTED_VERSION));
    if !protocols.is_empty() {
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&protocols.join(", "))?);
    }
    Ok(h)
}

/// What a server agreed to in a valid 101 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeResponse {
    /// The subprotocol the server chose, one of those offered.
    pub protocol: Option<String>,
    /// Raw `Sec-WebSocket-Extensions` elements. RFC 6455 §4.1 has the client
    /// fail the connection on any it did not offer: the extension layer
    /// checks them; with no extension offered, this must be empty.
    pub extensions: Vec<String>,
}

/// Why a client refuses the server's answer to its upgrade (RFC 6455 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The status was not 101 Switching Protocols.
    #[error("server answered {0} instead of 101")]
    Status(u16),
    /// No `Upgrade: websocket` in the answer.
    #[error("answer lacks Upgrade: websocket")]
    MissingUpgrade,
    /// No `upgrade` token in the answer's Connection.
    #[error("answer lacks Connection: upgrade")]
    MissingConnectionUpgrade,
    /// Sec-WebSocket-Accept missing or not matching our key.
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    /// A subprotocol we did not offer, or more than one.
    #[error("server chose a subprotocol that was not offered")]
    UnexpectedProtocol,
}

/// Checks the server's answer to our upgrade (RFC 6455 §4.1, the client's
/// checks 1-6): 101, `Upgrade: websocket`, `Connection: upgrade`, the
/// accept value for `key`, and a subprotocol among `offered` (or none).
pub fn validate_response(
    status: StatusCode,
    headers: &HeaderMap,
    key: &str,
    offered: &[String],
) -> Result<UpgradeResponse, ClientHandshakeError> {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ClientHandshakeError::Status(status.as_u16()));
    }
    if !is_websocket_upgrade(headers) {
        return Err(ClientHandshakeError::MissingUpgrade);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(ClientHandshakeError::MissingConnectionUpgrade);
    }
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if verify_accept(key, a) => {}
        _ => return Err(ClientHandshakeError::BadAccept),
    }
    let chosen = offered_protocols(headers);
    let protocol = match chosen.as_slice() {
        [] => None,
        [p] if offered.contains(p) => Some(p.clone()),
        _ => return Err(ClientHandshakeError::UnexpectedProtocol),
    };
    Ok(UpgradeResponse { protocol, extensions: offered_extensions(headers) })
}

fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    list_elements(headers, &SEC_WEBSOCKET_PROTOCOL).map(str::to_owned).collect()
}

fn offered_extensions(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok()) {
        split_extension_offers(v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("server.example.com"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h
    }

    fn check(h: &HeaderMap) -> Result<UpgradeRequest, HandshakeError> {
        validate_upgrade(&Method::GET, Version::HTTP_11, h)
    }

    #[test]
    fn rfc_accept_example() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(verify_accept(KEY, &HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")));
        assert!(!verify_accept(KEY, &HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo")));
    }

    #[test]
    fn accepts_valid_request() {
        let r = check(&good()).unwrap();
        assert_eq!(r, UpgradeRequest { key: KEY.into(), protocols: vec![], extensions: vec![] });
        // HTTP/2 and later versions pass the version check.
        assert!(validate_upgrade(&Method::GET, Version::HTTP_2, &good()).is_ok());
    }

    #[test]
    fn accepts_token_lists_and_case() {
        let mut h = good();
        h.insert(UPGRADE, HeaderValue::from_static("foo/1, WebSocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(CONNECTION, HeaderValue::from_static("x-foo, UPGRADE"));
        assert!(check(&h).is_ok());
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive,upgrade"));
        assert!(check(&h).is_ok());
    }

    #[test]
    fn reject_table() {
        type Edit = fn(&mut HeaderMap);
        let cases: Vec<(&str, Edit, HandshakeError)> = vec![
            (
                "no host",
                |h| {
                    h.remove(HOST);
                },
                HandshakeError::MissingHost,
            ),
            (
                "no upgrade",
                |h| {
                    h.remove(UPGRADE);
                },
                HandshakeError::MissingUpgrade,
            ),
            (
                "upgrade h2c",
                |h| {
                    h.insert(UPGRADE, HeaderValue::from_static("h2c"));
                },
                HandshakeError::MissingUpgrade,
            ),
            (
                "websocket as substring",
                |h| {
                    h.insert(UPGRADE, HeaderValue::from_static("websockets"));
                },
                HandshakeError::MissingUpgrade,
            ),
            (
                "no connection",
                |h| {
                    h.remove(CONNECTION);
                },
                HandshakeError::MissingConnectionUpgrade,
            ),
            (
                "connection keep-alive",
                |h| {
                    h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
                },
                HandshakeError::MissingConnectionUpgrade,
            ),
            (
                "no key",
                |h| {
                    h.remove(SEC_WEBSOCKET_KEY);
                },
                HandshakeError::MissingKey,
            ),
            (
                "key not base64",
                |h| {
                    h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("not base64!!"));
                },
                HandshakeError::InvalidKey,
            ),
            (
                "key 15 bytes",
                |h| {
                    h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAA"));
                },
                HandshakeError::InvalidKey,
            ),
            (
                "key 17 bytes",
                |h| {
                    h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAA="));
                },
                HandshakeError::InvalidKey,
            ),
            (
                "key unpadded",
                |h| {
                    h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ"));
                },
                HandshakeError::InvalidKey,
            ),
            (
                "two keys",
                |h| {
                    h.append(SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
                },
                HandshakeError::InvalidKey,
            ),
            (
                "no version",
                |h| {
                    h.remove(SEC_WEBSOCKET_VERSION);
                },
                HandshakeError::MissingVersion,
            ),
            (
                "version 8",
                |h| {
                    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
                },
                HandshakeError::UnsupportedVersion,
            ),
            (
                "version 13, 8",
                |h| {
                    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13, 8"));
                },
                HandshakeError::UnsupportedVersion,
            ),
            (
                "two versions",
                |h| {
                    h.append(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                },
                HandshakeError::UnsupportedVersion,
            ),
            (
                "version before key",
                |h| {
                    h.remove(SEC_WEBSOCKET_KEY);
                    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("7"));
                },
                HandshakeError::UnsupportedVersion,
            ),
        ];
        for (name, edit, want) in cases {
            let mut h = good();
            edit(&mut h);
            assert_eq!(check(&h), Err(want), "{name}");
        }
        assert_eq!(validate_upgrade(&Method::POST, Version::HTTP_11, &good()), Err(HandshakeError::WrongMethod));
        assert_eq!(validate_upgrade(&Method::CONNECT, Version::HTTP_2, &good()), Err(HandshakeError::WrongMethod));
        assert_eq!(validate_upgrade(&Method::GET, Version::HTTP_10, &good()), Err(HandshakeError::WrongHttpVersion));
    }

    #[test]
    fn error_status_and_reason() {
        let all = [
            HandshakeError::WrongMethod,
            HandshakeError::WrongHttpVersion,
            HandshakeError::MissingHost,
            HandshakeError::MissingUpgrade,
            HandshakeError::MissingConnectionUpgrade,
            HandshakeError::MissingKey,
            HandshakeError::InvalidKey,
            HandshakeError::MissingVersion,
            HandshakeError::UnsupportedVersion,
        ];
        for e in all {
            let want = if e == HandshakeError::UnsupportedVersion { 426 } else { 400 };
            assert_eq!(e.status().as_u16(), want, "{e:?}");
            assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(HandshakeError::InvalidKey.reason(), "bad_key");
        let h = HandshakeError::UnsupportedVersion.response_headers();
        assert_eq!(h.get(SEC_WEBSOCKET_VERSION).unwrap(), "13");
        assert!(HandshakeError::InvalidKey.response_headers().is_empty());
    }

    #[test]
    fn routing_check() {
        assert!(is_websocket_upgrade(&good()));
        let mut h = HeaderMap::new();
        assert!(!is_websocket_upgrade(&h));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&h));
        h.append(UPGRADE, HeaderValue::from_static("WEBSOCKET"));
        assert!(is_websocket_upgrade(&h));
    }

    #[test]
    fn protocols_and_extensions() {
        let mut h = good();
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat.v2, chat"));
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(" superchat ,"));
        h.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits, permessage-deflate; x=\"a,b\""),
        );
        h.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("x-webkit-deflate-frame"));
        let r = check(&h).unwrap();
        assert_eq!(r.protocols, vec!["chat.v2", "chat", "superchat"]);
        assert_eq!(
            r.extensions,
            vec![
                "permessage-deflate; client_max_window_bits",
                "permessage-deflate; x=\"a,b\"",
                "x-webkit-deflate-frame"
            ]
        );
        let supported = vec!["chat".to_string(), "superchat".to_string()];
        assert_eq!(select_protocol(&r.protocols, &supported), Some("chat"));
        assert_eq!(select_protocol(&r.protocols, &["other".to_string()]), None);
        assert_eq!(select_protocol(&r.protocols, &["CHAT".to_string()]), None);
        assert_eq!(select_protocol(&[], &supported), None);
    }

    #[test]
    fn switching_protocols_headers() {
        let h = response_headers("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", Some("chat"));
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "Upgrade");
        assert_eq!(h.get(SEC_WEBSOCKET_ACCEPT).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h.get(SEC_WEBSOCKET_PROTOCOL).unwrap(), "chat");
        let h = response_headers("abc=", None);
        assert_eq!(h.len(), 3);
        assert!(h.get(SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn client_key_is_valid_and_fresh() {
        let a = client_key();
        let b = client_key();
        assert_ne!(a, b);
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        let mut h = good();
        h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(&a).unwrap());
        let r = check(&h).unwrap();
        let accept = HeaderValue::from_str(&accept_key(r.key.as_bytes())).unwrap();
        assert!(verify_accept(&a, &accept));
        assert!(!verify_accept(&b, &accept));
    }
    #[test]
    fn extended_connect() {
        let mut h = HeaderMap::new();
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat"));
        let r = validate_extended_connect(&Method::CONNECT, Some("websocket"), &h).unwrap();
        assert_eq!(r.key, "");
        assert_eq!(r.protocols, vec!["chat"]);
        assert_eq!(validate_extended_connect(&Method::GET, Some("websocket"), &h), Err(HandshakeError::WrongMethod));
        assert_eq!(validate_extended_connect(&Method::CONNECT, None, &h), Err(HandshakeError::MissingUpgrade));
        assert_eq!(validate_extended_connect(&Method::CONNECT, Some("h2c"), &h), Err(HandshakeError::MissingUpgrade));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            validate_extended_connect(&Method::CONNECT, Some("websocket"), &h),
            Err(HandshakeError::UnsupportedVersion)
        );
        let rh = extended_connect_response_headers(Some("chat"));
        assert_eq!(rh.len(), 1);
        assert_eq!(rh.get(SEC_WEBSOCKET_PROTOCOL).unwrap(), "chat");
        assert!(extended_connect_response_headers(None).is_empty());
    }

    #[test]
    fn client_request_then_server_accepts() {
        let key = client_key();
        let offered = vec!["chat".to_string(), "v2".to_string()];
        let h = client_request_headers("example.com:8080", &key, &offered).unwrap();
        let req = check(&h).unwrap();
        assert_eq!(req.protocols, offered);
        let chosen = select_protocol(&req.protocols, &["v2".to_string()]);
        let answer = response_headers(&accept_key(req.key.as_bytes()), chosen);
        let resp = validate_response(StatusCode::SWITCHING_PROTOCOLS, &answer, &key, &offered).unwrap();
        assert_eq!(resp, UpgradeResponse { protocol: Some("v2".into()), extensions: vec![] });
        assert!(client_request_headers("bad\nhost", &key, &[]).is_err());
    }

    #[test]
    fn client_rejects_bad_answers() {
        let key = client_key();
        let offered = vec!["chat".to_string()];
        let good = response_headers(&accept_key(key.as_bytes()), None);
        let check = |status: StatusCode, h: &HeaderMap| validate_response(status, h, &key, &offered);
        assert!(check(StatusCode::SWITCHING_PROTOCOLS, &good).is_ok());
        assert_eq!(check(StatusCode::OK, &good), Err(ClientHandshakeError::Status(200)));
        let mut h = good.clone();
        h.remove(UPGRADE);
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h), Err(ClientHandshakeError::MissingUpgrade));
        let mut h = good.clone();
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h), Err(ClientHandshakeError::MissingConnectionUpgrade));
        let mut h = good.clone();
        h.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h), Err(ClientHandshakeError::BadAccept));
        let mut h = good.clone();
        h.remove(SEC_WEBSOCKET_ACCEPT);
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h), Err(ClientHandshakeError::BadAccept));
        let mut h = good.clone();
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("other"));
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h), Err(ClientHandshakeError::UnexpectedProtocol));
        let mut h = good.clone();
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat, chat"));
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h), Err(ClientHandshakeError::UnexpectedProtocol));
        let mut h = good;
        h.insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
        let r = check(StatusCode::SWITCHING_PROTOCOLS, &h).unwrap();
        assert_eq!(r.extensions, vec!["permessage-deflate"]);
    }
}

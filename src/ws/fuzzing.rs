//! Fuzz bodies for the parsers that read peer input: the frame decoder, the handshake
//! checks and the inflater. `fuzz/` (cargo-fuzz, nightly) and `src/fuzz_smoke.rs` (a
//! bounded random loop plus corpus replay under plain `cargo test`) call the same functions,
//! so the properties are checked with or without libFuzzer. Each function panics only when
//! a property is broken; any input is otherwise fine.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::codec::{Decoder, DecoderConfig, Incoming, Role};
use super::deflate::{accept_client, compress, negotiate_server, DeflateParams, InflateError, Inflater};
use super::handshake::{validate_extended_connect, validate_response, validate_upgrade};

/// The frame decoder on arbitrary bytes. The first byte picks the role, RSV1 permission and
/// how the rest is split into reads. Properties: no panic; the result does not depend on how
/// the input is split; no message exceeds the limit; text is valid UTF-8 unless compressed.
pub fn decoder(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let role = if control & 1 == 0 { Role::Server } else { Role::Client };
    let rsv1 = control & 2 != 0;
    let chunk = usize::from(control >> 2) + 1;
    let limit = 4096;
    let run = |step: usize| -> (Vec<(Incoming, bool)>, Option<String>) {
        let mut d = Decoder::new(DecoderConfig { role, max_message_size: limit });
        d.set_rsv1_allowed(rsv1);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(event)) => {
                        match &event {
                            Incoming::Text(t) => {
                                assert!(t.len() <= limit, "message over the limit");
                                if !d.last_compressed() {
                                    assert!(std::str::from_utf8(t).is_ok(), "invalid UTF-8 passed as text");
                                }
                            }
                            Incoming::Binary(b) => {
                                assert!(b.len() <= limit, "message over the limit")
                            }
                            Incoming::Ping(p) | Incoming::Pong(p) => assert!(p.len() <= 125),
                            Incoming::Close(_) => {}
                        }
                        events.push((event, d.last_compressed()));
                    }
                    Ok(None) => break,
                    Err(e) => return (events, Some(e.to_string())),
                }
            }
        }
        (events, None)
    };
    let whole = run(input.len());
    let split = run(chunk);
    assert_eq!(whole, split, "decoding depends on how the input is split");
}

/// The handshake checks on a request or response head made of `name: value` lines.
/// Properties: no panic; an accepted upgrade has a 16-byte base64 key; the deflate answer
/// is itself acceptable to our client.
pub fn handshake(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) =
                (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim()))
            {
                headers.append(n, v);
            }
        }
    }
    if let Ok(req) = validate_upgrade(&Method::GET, Version::HTTP_11, &headers) {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(&req.key).unwrap_or_default();
        assert_eq!(raw.len(), 16, "accepted a key that is not 16 bytes");
        if let Some((params, answer)) = negotiate_server(&req.extensions) {
            assert!(params.own_no_context_takeover);
            assert!((9..=15).contains(&params.own_window_bits));
            assert!(accept_client(&[answer]).is_ok(), "our own answer is not acceptable to our client");
        }
    }
    let _ = validate_extended_connect(&Method::CONNECT, Some("websocket"), &headers);
    let _ =
        validate_response(StatusCode::SWITCHING_PROTOCOLS, &headers, "dGhlIHNhbXBsZSBub25jZQ==", &["chat".to_owned()]);
    let offers: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
    let _ = negotiate_server(&offers);
    let _ = accept_client(&offers);
}

/// The inflater on arbitrary bytes, and compress → inflate on the same bytes as plain data.
/// Properties: no panic; output never exceeds the limit (memory bounded); the round trip
/// returns the input for every window size.
pub fn inflater(data: &[u8]) {
    let params = DeflateParams { own_window_bits: 15, own_no_context_takeover: true, peer_no_context_takeover: false };
    let limit = 64 * 1024;
    let mut inflater = Inflater::new(&params, limit);
    match inflater.inflate(data) {
        Ok(out) => assert!(out.len() <= limit),
        Err(InflateError::TooBig { .. } | InflateError::Corrupt) => {}
    }
    let bits = 9 + data.first().map_or(6, |b| b % 7);
    let compressed = compress(data, bits);
    let mut fresh = Inflater::new(&params, limit.max(data.len()));
    assert_eq!(fresh.inflate(&compressed).as_deref(), Ok(data), "compress/inflate round trip");
}

//! The fuzz bodies of `crate::ws::fuzzing` and `crate::server::fuzzing` without libFuzzer:
//! replays the committed seeds in `fuzz/seeds/<target>/` and runs a bounded random loop
//! (structured frames, handshakes, config texts and request heads, then random mutations).
//! The real fuzzing is `fuzz/run.sh` (cargo-fuzz, which turns on the `fuzzing` feature) over
//! the same bodies; here they are compiled for `cargo test` only.

use std::time::{Duration, Instant};

use crate::server::fuzzing as server_fuzzing;
use crate::ws::codec::{encode_frame, OpCode};
use crate::ws::fuzzing;
use bytes::BytesMut;

const BUDGET: Duration = Duration::from_secs(2);

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            out.push(std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, mut data: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(0..4) {
        match rng.u8(0..4) {
            0 if !data.is_empty() => {
                let i = rng.usize(0..data.len());
                data[i] ^= 1 << rng.u8(0..8);
            }
            1 if !data.is_empty() => {
                let i = rng.usize(0..data.len());
                data.truncate(i);
            }
            2 => {
                let i = rng.usize(0..=data.len());
                data.insert(i, rng.u8(..));
            }
            _ => {}
        }
    }
    data
}

fn random_frames(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[rng.u8(..)]);
    let ops = [OpCode::Text, OpCode::Binary, OpCode::Continuation, OpCode::Ping, OpCode::Pong, OpCode::Close];
    for _ in 0..rng.usize(1..5) {
        let op = ops[rng.usize(0..ops.len())];
        let len = if rng.bool() { rng.usize(0..20) } else { rng.usize(0..300) };
        let payload: Vec<u8> = if rng.bool() {
            "héllo ✓ ".bytes().cycle().take(len).collect()
        } else {
            (0..len).map(|_| rng.u8(..)).collect()
        };
        let payload = if rng.u8(0..4) == 0 { crate::ws::deflate::compress(&payload, 15).to_vec() } else { payload };
        let mask = if rng.u8(0..5) == 0 { None } else { Some([rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)]) };
        encode_frame(&mut out, op, rng.bool(), rng.u8(0..4) == 0, &payload, mask);
    }
    out.to_vec()
}

fn random_head(rng: &mut fastrand::Rng) -> Vec<u8> {
    let exts = [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=12; client_no_context_takeover",
        "permessage-deflate; server_no_context_takeover; x=1",
        "foo, permessage-deflate; client_max_window_bits=\"10\"",
    ];
    let mut head = String::from("Host: a\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Version: 13\n");
    head.push_str(if rng.bool() {
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
    } else {
        "Sec-WebSocket-Key: AAAA\n"
    });
    head.push_str(&format!("Sec-WebSocket-Extensions: {}\n", exts[rng.usize(0..exts.len())]));
    head.push_str("Sec-WebSocket-Protocol: chat, x\n");
    head.into_bytes()
}

fn run(target: &str, body: fn(&[u8]), gen: fn(&mut fastrand::Rng) -> Vec<u8>) {
    for seed in seeds(target) {
        body(&seed);
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < BUDGET {
        let input = gen(&mut rng);
        let input = mutate(&mut rng, input);
        body(&input);
        n += 1;
    }
    eprintln!("{target}: {n} random inputs");
}

#[test]
fn decoder_smoke() {
    run("frame_decoder", fuzzing::decoder, random_frames);
}

#[test]
fn handshake_smoke() {
    run("handshake", fuzzing::handshake, random_head);
}

#[test]
fn inflater_smoke() {
    run("inflater", fuzzing::inflater, |rng| {
        let plain: Vec<u8> =
            (0..rng.usize(0..2000)).map(|i| if rng.bool() { (i % 7) as u8 } else { rng.u8(..) }).collect();
        if rng.bool() {
            crate::ws::deflate::compress(&plain, 9 + rng.u8(0..7)).to_vec()
        } else {
            plain
        }
    });
}

/// Config text made of known sections, keys and values (some of them wrong), so the random
/// loop reaches validation and `check` rather than stopping at TOML syntax.
fn random_config(rng: &mut fastrand::Rng) -> Vec<u8> {
    const LINES: &[&str] = &[
        "[upstream]",
        "url = \"http://127.0.0.1:8000\"",
        "url = \"https://x\"",
        "connect_timeout = \"2s\"",
        "response_timeout = \"0s\"",
        "trusted_proxies = [\"10.0.0.0/8\"]",
        "[[listen]]",
        "addr = \"127.0.0.1:0\"",
        "addr = \"[::1]:99999\"",
        "tls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }",
        "[admin]",
        "addr = \"off\"",
        "addr = \"0.0.0.0:9090\"",
        "token_file = \"/nonexistent/token\"",
        "[limits]",
        "max_connections = 0",
        "max_header_bytes = \"16KiB\"",
        "max_header_bytes = \"99999999999999999999 EiB\"",
        "[websocket]",
        "max_message_size = \"1MiB\"",
        "send_queue = \"0\"",
        "slow_consumer = \"drop\"",
        "ping_interval = \"18446744073709551615s\"",
        "allowed_origins = [\"*\"]",
        "[broker]",
        "kind = \"redis\"",
        "url = \"redis://127.0.0.1:1\"",
        "[log]",
        "level = \"debug,[\"",
        "[apps.a]",
        "[apps.b]",
        "kind = \"echo\"",
        "kind = \"chat\"",
        "kind = \"log-view\"",
        "kind = \"backend\"",
        "urls = [\"/ws\"]",
        "urls = [\"/ws/\", \"/\"]",
        "urls = [\"\"]",
        "files = [\"/var/log/x.log\"]",
        "callback = \"http://127.0.0.1:1/cb\"",
        "auth = \"http://127.0.0.1:1/auth\"",
        "allow = [\"::1/129\"]",
        "history = 1e3",
        "backlog_lines = -5",
        // Numeric extremes (issue 16): each just inside or outside its bound, or absurd.
        "header_read_timeout = \"5000000000000000h\"",
        "header_read_timeout = \"1h\"",
        "header_read_timeout = \"99ms\"",
        "max_header_bytes = \"1TiB\"",
        "max_header_bytes = \"1MiB\"",
        "max_header_bytes = 1023",
        "max_connections = 10000001",
        "max_connections = 18446744073709551615",
        "shutdown_timeout = \"0s\"",
        "ping_interval = \"1ns\"",
        "idle_timeout = \"1day\"",
        "idle_timeout = \"584542046090years\"",
        "max_message_size = \"1GiB\"",
        "max_message_size = \"1025MiB\"",
        "send_queue = \"16EiB\"",
        "history = 100000",
        "history = 1000000000000",
        "backlog_lines = 100001",
        "refresh = \"1ns\"",
        "refresh = \"1h\"",
        "callback_timeout = \"18446744073709551615s\"",
    ];
    let mut text = String::new();
    for _ in 0..rng.usize(1..24) {
        text.push_str(LINES[rng.usize(0..LINES.len())]);
        text.push('\n');
    }
    text.into_bytes()
}

/// Request heads built from parts that matter to routing and forwarding.
fn random_request(rng: &mut fastrand::Rng) -> Vec<u8> {
    const METHODS: &[&str] = &["GET", "HEAD", "POST", "CONNECT", "OPTIONS", "PATCH", "G\u{e9}T"];
    const TARGETS: &[&str] = &[
        "/websocket/echo",
        "/websocket/echo/",
        "/websocket/echo/connect",
        "/websocket/chat?x=1",
        "/websocket/chat/ops",
        "/WEBSOCKET/echo",
        "/websocket/%65cho",
        "/websocket//echo",
        "/",
        "/connect",
        "*",
        "http://example.org:8080/websocket/echo",
        "http://u@[::1]/a?b",
        "example.org:443",
    ];
    const FIELDS: &[&str] = &[
        "Host: example.org",
        "Host: [::1]:8080",
        "Host: a\"b",
        "Upgrade: websocket",
        "Upgrade: h2c",
        "Upgrade:  ",
        "Connection: Upgrade",
        "Connection: keep-alive, upgrade, x-drop",
        "Connection: close, , bad name",
        "X-Drop: 1",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Origin: http://example.org",
        "Origin: null",
        "X-Forwarded-For: 203.0.113.1",
        "X-Forwarded-For: ",
        "Forwarded: for=\"[2001:db8::1]\"",
        "Via: 1.1 proxy (via 1.1 wsgate)",
        "Via: 1.1 wsgate",
        "Proxy-Authorization: Basic x",
        "Proxy-Connection: keep-alive",
        "Transfer-Encoding: chunked",
        "Content-Length: 0",
        "TE: trailers",
        "Cookie: a=b",
        "X-Obs: \u{e9}t\u{e9}",
    ];
    let version = if rng.u8(0..5) == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut head =
        format!("{} {} {version}\r\n", METHODS[rng.usize(0..METHODS.len())], TARGETS[rng.usize(0..TARGETS.len())]);
    for _ in 0..rng.usize(0..10) {
        head.push_str(FIELDS[rng.usize(0..FIELDS.len())]);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[test]
fn config_smoke() {
    run("config", server_fuzzing::config, random_config);
}

#[test]
fn router_smoke() {
    run("router", server_fuzzing::router, random_request);
}

#[test]
fn proxy_h1_smoke() {
    run("proxy_h1", server_fuzzing::proxy_h1, random_request);
}

#[test]
fn router_parses_the_committed_seeds() {
    // A seed hyper would refuse exercises nothing past the parser: keep them all parseable.
    for seed in seeds("router") {
        assert!(server_fuzzing::parse_head(&seed).is_some(), "{}", String::from_utf8_lossy(&seed));
    }
}

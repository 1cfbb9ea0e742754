//! The fuzz bodies of `wsgate::ws::fuzzing` without libFuzzer: replays the committed seeds in
//! `fuzz/seeds/<target>/` and runs a bounded random loop (structured frames and handshakes,
//! then random mutations). The real fuzzing is `cargo +nightly fuzz run <target>` in `fuzz/`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use wsgate::ws::codec::{encode_frame, OpCode};
use wsgate::ws::fuzzing;

const BUDGET: Duration = Duration::from_secs(2);

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
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
    let ops = [
        OpCode::Text,
        OpCode::Binary,
        OpCode::Continuation,
        OpCode::Ping,
        OpCode::Pong,
        OpCode::Close,
    ];
    for _ in 0..rng.usize(1..5) {
        let op = ops[rng.usize(0..ops.len())];
        let len = if rng.bool() {
            rng.usize(0..20)
        } else {
            rng.usize(0..300)
        };
        let payload: Vec<u8> = if rng.bool() {
            "héllo ✓ ".bytes().cycle().take(len).collect()
        } else {
            (0..len).map(|_| rng.u8(..)).collect()
        };
        let payload = if rng.u8(0..4) == 0 {
            wsgate::ws::deflate::compress(&payload, 15).to_vec()
        } else {
            payload
        };
        let mask = if rng.u8(0..5) == 0 {
            None
        } else {
            Some([rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)])
        };
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
    let mut head = String::from(
        "Host: a\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Version: 13\n",
    );
    head.push_str(if rng.bool() {
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
    } else {
        "Sec-WebSocket-Key: AAAA\n"
    });
    head.push_str(&format!(
        "Sec-WebSocket-Extensions: {}\n",
        exts[rng.usize(0..exts.len())]
    ));
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
        let plain: Vec<u8> = (0..rng.usize(0..2000))
            .map(|i| {
                if rng.bool() {
                    (i % 7) as u8
                } else {
                    rng.u8(..)
                }
            })
            .collect();
        if rng.bool() {
            wsgate::ws::deflate::compress(&plain, 9 + rng.u8(0..7)).to_vec()
        } else {
            plain
        }
    });
}

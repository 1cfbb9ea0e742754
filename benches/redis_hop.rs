//! The Redis hop alone: PUBLISH on one connection → the message read on a SUBSCRIBE
//! connection, both in this process (2 tokio worker threads, as `cluster_latency`), against
//! one real redis-server on loopback. Two clients, alternating in one run:
//! - `crate`: the `redis` crate's `MultiplexedConnection` and `PubSub` stream (what the broker
//!   uses): each has a driver task between the caller and the socket;
//! - `raw`: plain tokio sockets speaking RESP, the publisher writing and reading its reply
//!   itself, the subscriber parsing pushes in its own task (the floor for a Rust client).
//!
//! Latency = the subscriber's receipt − the publish call, on one clock, `MESSAGES` at `RATE`
//! per second (defaults 2000, 200), `ROUNDS` alternations (default 2). Prints one JSON line per
//! client and round. Run: `cargo bench --bench redis_hop`. Needs redis-server.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::redis::{send_stamp, since_stamp, RawHop, Redis};
use futures_util::StreamExt;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let Some(bin) = common::redis::redis_server_bin() else {
        eprintln!("redis_hop: redis-server not installed; skipped");
        return;
    };
    let redis = Redis::start(&bin, &[]).await;
    let (messages, rate, rounds) = (env("MESSAGES", 2000), env("RATE", 200).max(1), env("ROUNDS", 2));
    for round in 1..=rounds {
        for client in ["crate", "raw"] {
            let mut latencies = match client {
                "crate" => crate_client(&redis, messages, rate).await,
                _ => raw_client(&redis, messages, rate).await,
            };
            latencies.sort_unstable();
            let at = |p: f64| latencies[((p / 100.0) * (latencies.len() - 1) as f64).round() as usize] as f64 / 1000.0;
            println!(
                "{{\"bench\":\"redis_hop\",\"client\":\"{client}\",\"round\":{round},\"received\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1}}}",
                latencies.len(),
                at(50.0),
                at(90.0),
                at(99.0)
            );
        }
    }
}

async fn crate_client(redis: &Redis, messages: usize, rate: usize) -> Vec<u64> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("hop").await.unwrap();
    let base = Instant::now();
    let reader = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        let mut out = Vec::with_capacity(messages);
        while out.len() < messages {
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(msg)) => out.push(since_stamp(base, msg.get_payload_bytes())),
                _ => break,
            }
        }
        out
    });
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for _ in 0..messages {
        ticker.tick().await;
        let _: i64 = redis::cmd("PUBLISH").arg("hop").arg(send_stamp(base)).query_async(&mut publisher).await.unwrap();
    }
    reader.await.unwrap()
}

async fn raw_client(redis: &Redis, messages: usize, rate: usize) -> Vec<u64> {
    let address = format!("127.0.0.1:{}", redis.port);
    let (mut hop, reader) = RawHop::start(&address, "hop", false, Instant::now(), messages).await;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for _ in 0..messages {
        ticker.tick().await;
        hop.publish().await;
    }
    reader.await.unwrap()
}

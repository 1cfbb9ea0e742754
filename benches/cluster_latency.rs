//! Fan-out latency through Redis vs on one node, measured in the same run.
//!
//! One `redis-server` (random loopback port, no persistence), three wsgate nodes
//! (`[broker] kind = "redis"`) and one stand-alone wsgate (`kind = "memory"`), all in this
//! process. `SUBS` WebSocket clients per server (real sockets, wsgate's codec in the client
//! role) are subscribed to one subscription. On each tick (`RATE` per second, `MESSAGES`
//! ticks) the stand-alone server and cluster node a each multicast a text message carrying
//! its send time; every client records when it decoded each one. Latency = receipt −
//! multicast call, on one clock:
//! - `single_node`: the stand-alone memory-broker server (hub → queue → socket);
//! - `cluster_local`: the clients on node a, the publishing cluster node;
//! - `cross_node`: the clients on nodes b and c (hub → Redis PUBLISH → node → queue → socket).
//!
//! Run: `cargo bench --bench cluster_latency` (env `SUBS`, `MESSAGES`, `RATE`, `PAYLOAD` to
//! change the defaults 50, 2000, 500, 64; `REDIS=cluster` for a 3-shard Redis Cluster, made
//! with `redis-cli --cluster create`, instead of one server: relays use sharded pub/sub).
//! Prints one JSON object. Needs redis-server.
//! Everything shares this machine's cores, so absolute numbers include that contention.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::{Redis, RedisCluster};
use common::{basic_config, start_gate, start_upstream, WsClient};
use wsgate::apps::Message;
use wsgate::ws::codec::Incoming;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<u64>, expected: usize) -> String {
    v.sort_unstable();
    let mean = if v.is_empty() { 0 } else { v.iter().sum::<u64>() / v.len() as u64 };
    format!(
        "{{\"received\":{},\"expected\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1}}}",
        v.len(),
        expected,
        percentile(&v, 50.0) as f64 / 1000.0,
        percentile(&v, 90.0) as f64 / 1000.0,
        percentile(&v, 99.0) as f64 / 1000.0,
        v.last().copied().unwrap_or(0) as f64 / 1000.0,
        mean as f64 / 1000.0
    )
}

/// The Redis the nodes share: one server or a cluster.
enum Backend {
    Server(Box<Redis>),
    Cluster(RedisCluster),
}

impl Backend {
    /// The `[broker]` lines that reach it.
    fn broker_lines(&self) -> String {
        match self {
            Backend::Server(server) => format!("url = \"{}\"", server.url()),
            Backend::Cluster(cluster) => cluster.broker_line(),
        }
    }

    /// Waits until `channel` has `want` subscribers (shard subscribers on a cluster).
    async fn wait_subscribers(&self, channel: &str, want: i64) {
        match self {
            Backend::Server(server) => server.wait_numsub(channel, want).await,
            Backend::Cluster(cluster) => cluster.wait_shard_subscribers(channel, want).await,
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let subs = env("SUBS", 50);
    let messages = env("MESSAGES", 2000);
    let rate = env("RATE", 500).max(1);
    let payload = env("PAYLOAD", 64).max(24);

    let Some(bin) =
        ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("cluster_latency: redis-server not installed; skipped");
        return;
    };
    let bin = std::path::Path::new(bin);
    let cluster_mode = std::env::var("REDIS").is_ok_and(|v| v == "cluster");
    // One server, or a 3-shard cluster; either is killed on drop.
    let redis = if cluster_mode {
        Backend::Cluster(RedisCluster::start(bin, 3, 0).await)
    } else {
        Backend::Server(Box::new(Redis::start(bin, &[]).await))
    };
    let broker = redis.broker_lines();
    let upstream = start_upstream().await;
    let mut gates = Vec::new();
    for node in ["ba", "bb", "bc"] {
        let config = basic_config(&format!(
            "\n[limits]\nshutdown_timeout = \"1s\"\n\n[broker]\nkind = \"redis\"\nnode = \"{node}\"\n{broker}\n"
        ));
        gates.push(start_gate(&config, upstream.addr).await);
    }
    gates.push(start_gate(&basic_config("\n[limits]\nshutdown_timeout = \"1s\"\n"), upstream.addr).await);
    while !gates.iter().all(|g| g.server.hub().broker().is_some_and(|b| b.is_connected())) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let base = Instant::now();
    let mut readers = Vec::new();
    for (n, gate) in gates.iter().enumerate() {
        for _ in 0..subs {
            let before: std::collections::HashSet<_> =
                gate.server.hub().channel_summaries().into_iter().map(|c| c.id).collect();
            let mut client = WsClient::connect(gate.addr, "/websocket/echo").await;
            let id = loop {
                let new =
                    gate.server.hub().channel_summaries().into_iter().map(|c| c.id).find(|id| !before.contains(id));
                if let Some(id) = new {
                    break id;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            gate.server.hub().subscribe(&id, "bench").unwrap();
            readers.push((
                n,
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(messages);
                    while latencies.len() < messages {
                        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
                            Ok(Some(Incoming::Text(t))) => {
                                let now = base.elapsed().as_nanos() as u64;
                                let sent: u64 =
                                    std::str::from_utf8(&t[..20]).ok().and_then(|s| s.parse().ok()).unwrap_or(now);
                                latencies.push(now.saturating_sub(sent));
                            }
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                    }
                    latencies
                }),
            ));
        }
    }
    // Every node subscribed in Redis before the first message.
    redis.wait_subscribers("wsgate:sub:bench", 3).await;

    let hub = Arc::clone(gates[0].server.hub());
    let single = Arc::clone(gates[3].server.hub());
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..messages {
        ticker.tick().await;
        // 20 digits of send time, then padding to the payload size.
        let mut text = format!("{:020}", base.elapsed().as_nanos() as u64);
        text.extend(std::iter::repeat_n('x', payload - 20));
        hub.multicast("bench", &Message::Text(Bytes::from(text)), &[]);
        let mut text = format!("{:020}", base.elapsed().as_nanos() as u64);
        text.extend(std::iter::repeat_n('x', payload - 20));
        single.multicast("bench", &Message::Text(Bytes::from(text)), &[]);
    }
    let send_secs = started.elapsed().as_secs_f64();

    let (mut local, mut cross, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    for (n, reader) in readers {
        let latencies = reader.await.unwrap_or_default();
        match n {
            0 => local.extend(latencies),
            3 => alone.extend(latencies),
            _ => cross.extend(latencies),
        }
    }
    let errors: u64 = gates.iter().filter_map(|g| g.server.hub().broker().map(|b| b.errors())).sum();
    println!(
        "{{\"bench\":\"cluster_latency\",\"redis\":\"{}\",\"nodes\":3,\"subscribers_per_node\":{subs},\"messages\":{messages},\"rate_per_s\":{rate},\"payload_bytes\":{payload},\"send_seconds\":{send_secs:.2},\"broker_errors\":{errors},\"single_node\":{},\"cluster_local\":{},\"cross_node\":{}}}",
        if cluster_mode { "cluster" } else { "server" },
        summary(alone, messages * subs),
        summary(local, messages * subs),
        summary(cross, messages * subs * 2)
    );
    for gate in gates {
        gate.server.shutdown().await;
    }
    drop(redis);
}

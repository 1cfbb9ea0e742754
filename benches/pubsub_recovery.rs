//! Recovery of `PUBS` publications by `CLIENTS` clients reconnecting at once (issue 19), over
//! real sockets, on one node (memory) and on three nodes sharing a real redis-server, in one run.
//!
//! Per mode: the clients connect (spread over the nodes) and subscribe to `chat:r`, note their
//! position and disconnect; `PUBS` publications are made through the control API; then every
//! client reconnects *at once* (to another node than before, in the cluster) and subscribes
//! with `recover`. Reported: the wall time from the first reconnect to the last complete
//! recovery, per-client latency percentiles, and how many recovered exactly (all `PUBS`, in
//! order, `recovered:true`). Clients and servers share this process and its two cores, so the
//! times include the clients' own work; the ratio between the modes is the figure.
//!
//! Run: `cargo bench --locked --bench pubsub_recovery` (env `CLIENTS`, `PUBS`; defaults 1000,
//! 100). Prints one JSON object. Needs redis-server for the cluster mode.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pubsub::{admin, Client};
use common::{basic_config, start_gate, start_upstream, Gate};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The pubsub app (history 1000, no presence) with `broker` (a `[broker]` table or nothing).
fn app(broker: &str) -> String {
    common::pubsub::live_app(broker, 1000, false)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let clients = env("CLIENTS", 1000);
    let pubs = env("PUBS", 100) as u64;
    let up = start_upstream().await;
    let single = start_gate(&basic_config(&app("")), up.addr).await;
    let one = measure(&[&single], clients, pubs).await;
    single.server.shutdown().await;

    let redis_bin =
        ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].into_iter().find(|p| std::path::Path::new(p).exists());
    let cluster = match redis_bin {
        Some(bin) => {
            let redis = common::redis::Redis::start(std::path::Path::new(bin), &[]).await;
            let mut gates = Vec::new();
            for node in ["ba", "bb", "bc"] {
                let broker = format!("[broker]\nkind = \"redis\"\nnode = \"{node}\"\nurl = \"{}\"\n", redis.url());
                gates.push(start_gate(&basic_config(&app(&broker)), up.addr).await);
            }
            let refs: Vec<&Gate> = gates.iter().collect();
            let figure = measure(&refs, clients, pubs).await;
            for gate in gates {
                gate.server.shutdown().await;
            }
            figure
        }
        None => "\"skipped: redis-server not installed\"".into(),
    };
    println!("{{\"clients\":{clients},\"publications\":{pubs},\"single_node\":{one},\"three_nodes_redis\":{cluster}}}");
}

async fn measure(gates: &[&Gate], clients: usize, pubs: u64) -> String {
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.addr).collect();
    let channel = format!("chat:r{}", fastrand::u32(..));
    // Connect, subscribe, note the position, leave.
    let mut positions = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut c = Client::open(addrs[i % addrs.len()], "/live").await;
        let reply = c.call("subscribe", json!({ "channel": channel })).await;
        positions.push((reply["subscribe"]["offset"].as_u64().unwrap(), reply["subscribe"]["epoch"].clone()));
    }
    let api = gates[0].server.admin_addr().unwrap();
    for i in 0..pubs {
        let (status, _) = admin(api, "POST", "/v1/publish", &json!({"channel": channel, "data": i}).to_string()).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Everyone back at once, each on the next node.
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (i, (offset, epoch)) in positions.into_iter().enumerate() {
        let addr = addrs[(i + 1) % addrs.len()];
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut c = Client::open(addr, "/live").await;
            let body = json!({"channel": channel, "recover": true, "offset": offset, "epoch": epoch});
            let reply = c.call("subscribe", body).await;
            let s = &reply["subscribe"];
            let got: Vec<u64> = s["publications"]
                .as_array()
                .map(|l| l.iter().filter_map(|p| p["offset"].as_u64()).collect())
                .unwrap_or_default();
            let exact = s["recovered"] == true && got == (offset + 1..=offset + pubs).collect::<Vec<_>>();
            (t0.elapsed(), exact, c)
        }));
    }
    let mut latencies = Vec::with_capacity(clients);
    let mut exact = 0;
    let mut keep = Vec::with_capacity(clients);
    for task in tasks {
        let (latency, ok, c) = task.await.unwrap();
        latencies.push(latency);
        exact += usize::from(ok);
        keep.push(c);
    }
    let wall = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((p / 100.0) * (latencies.len() - 1) as f64).round() as usize].as_secs_f64() * 1e3;
    drop(keep);
    format!(
        "{{\"nodes\":{},\"wall_ms\":{:.1},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1},\"exact\":{exact}}}",
        gates.len(),
        wall.as_secs_f64() * 1e3,
        pct(50.0),
        pct(99.0),
        pct(100.0)
    )
}

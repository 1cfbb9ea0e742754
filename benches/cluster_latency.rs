//! Fan-out latency through Redis vs on one node, measured in the same run.
//!
//! One `redis-server` (random loopback port, no persistence), three wsgate nodes
//! (`[broker] kind = "redis"`) and one stand-alone wsgate (`kind = "memory"`), all in this
//! process. WebSocket clients (real sockets, wsgate's codec in the client role) are
//! subscribed to one subscription: by default (`SHAPE=equal`) `SUBS` on the stand-alone
//! server and `SUBS` split between cluster nodes b and c, none on a — so both multicasts
//! reach the same number of clients; `SHAPE=every-node` puts `SUBS` on every server (the
//! figures before 2026-12-06). Each tick (`RATE` per second, `MESSAGES` ticks) has three
//! phases a third of a tick apart, so no measurement waits behind another's work on these
//! shared cores: cluster node a multicasts, then the stand-alone server, then the bare hop
//! below publishes. Messages carry their send time; latency = receipt − multicast call, on one
//! clock:
//! - `single_node`: the stand-alone memory-broker server (hub → queue → socket);
//! - `cluster_local`: the clients on node a, the publishing node (`SHAPE=every-node` only);
//! - `cross_node`: the clients on nodes b and c (hub → Redis PUBLISH → node → queue → socket);
//! - `redis_hop`: a bare RESP publisher and subscriber on plain sockets (`RawHop`: no client
//!   library, no wsgate), the Redis hop's floor on this machine in this run;
//! - `floor_p99_us`: the p99 of `single_node` + `redis_hop` (independent samples added): what
//!   cross-node p99 would be if relaying through Redis cost only the bare hop.
//!
//! Then `cpu_us_per_delivery`: the same multicasts from one side at a time (cluster node a,
//! then the stand-alone server, twice), CPU time of this process (the wsgate nodes and the
//! in-process clients, whose share is the same on both sides) and of Redis, over the
//! deliveries: `local` (stand-alone), `relayed` (through Redis; `relayed_redis` is Redis's
//! own share).
//!
//! Run: `cargo bench --bench cluster_latency` (env `SUBS`, `MESSAGES`, `RATE`, `PAYLOAD` to
//! change the defaults 50, 2000, 500, 64; `REDIS=cluster` for a 3-shard Redis Cluster, made
//! with `redis-cli --cluster create`, instead of one server: relays use sharded pub/sub).
//! Prints one JSON object. Needs redis-server.
//! Everything shares this machine's cores, so absolute numbers include that contention.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::{send_stamp, since_stamp, RawHop, Redis, RedisCluster};
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

/// A message of `payload` bytes: its send time, then padding.
fn stamped(base: Instant, payload: usize) -> Message {
    let mut text = send_stamp(base);
    text.extend(std::iter::repeat_n('x', payload - text.len()));
    Message::Text(Bytes::from(text))
}

/// CPU time in ns: this process's and the Redis servers'.
#[derive(Default)]
struct Cpu {
    process_ns: u64,
    redis_ns: u64,
}

impl Cpu {
    fn now(redis_pids: &[u32]) -> Cpu {
        Cpu {
            process_ns: proc_cpu_ns("/proc/self/stat"),
            redis_ns: redis_pids.iter().map(|pid| proc_cpu_ns(&format!("/proc/{pid}/stat"))).sum(),
        }
    }

    fn minus(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            process_ns: self.process_ns.saturating_sub(earlier.process_ns),
            redis_ns: self.redis_ns.saturating_sub(earlier.redis_ns),
        }
    }
}

/// utime + stime of a `/proc/<pid>/stat` file, in ns (the file counts in USER_HZ = 100 ticks/s).
fn proc_cpu_ns(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10_000_000
}

/// The `p`th percentile of `a + b` for independent draws from both samples (200,000 draws).
fn sum_percentile(a: &[u64], b: &[u64], p: f64) -> u64 {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sums: Vec<u64> = (0..200_000).map(|_| a[rng.usize(..a.len())] + b[rng.usize(..b.len())]).collect();
    sums.sort_unstable();
    percentile(&sums, p)
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

    /// A bare RESP hop on `channel` (sharded, on the owning shard, in a cluster).
    async fn raw_hop(
        &self,
        channel: &str,
        base: Instant,
        expected: usize,
    ) -> (RawHop, tokio::task::JoinHandle<Vec<u64>>) {
        match self {
            Backend::Server(server) => {
                RawHop::start(&format!("127.0.0.1:{}", server.port), channel, false, base, expected).await
            }
            Backend::Cluster(cluster) => {
                let owner = cluster.owner(channel).await;
                RawHop::start(&format!("127.0.0.1:{owner}"), channel, true, base, expected).await
            }
        }
    }

    /// The Redis servers' process ids.
    fn pids(&self) -> Vec<u32> {
        match self {
            Backend::Server(server) => server.pid().into_iter().collect(),
            Backend::Cluster(cluster) => cluster.nodes.iter().filter_map(|n| n.pid()).collect(),
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
    let received = Arc::new(AtomicU64::new(0));
    // Equal work by default: a multicast reaches `subs` clients either way — all on the
    // stand-alone server, or split between cluster nodes b and c (none on a). SHAPE=every-node
    // puts `subs` on each node instead (a's multicast then reaches 3 × subs at once).
    let every_node = std::env::var("SHAPE").is_ok_and(|v| v == "every-node");
    let per_node = |n: usize| match (every_node, n) {
        (true, _) | (false, 3) => subs,
        (false, 0) => 0,
        (false, 1) => subs.div_ceil(2),
        (false, _) => subs / 2,
    };
    for (n, gate) in gates.iter().enumerate() {
        for _ in 0..per_node(n) {
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
            // The first `messages` latencies go back at once; then the client keeps reading
            // (the CPU phases), counting, until 5 s of silence.
            let (done, latencies_rx) = tokio::sync::oneshot::channel();
            let received = received.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(messages);
                let mut done = Some(done);
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
                        Ok(Some(Incoming::Text(t))) => {
                            received.fetch_add(1, Ordering::Relaxed);
                            if latencies.len() < messages {
                                latencies.push(since_stamp(base, &t));
                            }
                            if latencies.len() == messages {
                                if let Some(done) = done.take() {
                                    let _ = done.send(std::mem::take(&mut latencies));
                                }
                            }
                        }
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                if let Some(done) = done.take() {
                    let _ = done.send(latencies);
                }
            });
            readers.push((n, latencies_rx));
        }
    }
    // Every node subscribed in Redis before the first message.
    redis.wait_subscribers("wsgate:sub:bench", (0..3).filter(|n| per_node(*n) > 0).count() as i64).await;

    let (mut hop, hop_reader) = redis.raw_hop("bench:floor", base, messages).await;
    let hub = Arc::clone(gates[0].server.hub());
    let single = Arc::clone(gates[3].server.hub());
    // Three phases a third of a tick apart (cluster node a's multicast, the stand-alone
    // server's, the bare hop), so no measurement waits behind another's work on these cores.
    let interval = Duration::from_secs_f64(1.0 / (3 * rate) as f64);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for tick in 0..3 * messages {
        ticker.tick().await;
        if tick % 3 == 2 {
            hop.publish().await;
            continue;
        }
        let hub = if tick % 3 == 0 { &hub } else { &single };
        hub.multicast("bench", &stamped(base, payload), &[]);
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
    let hop_latencies = hop_reader.await.unwrap_or_default();
    let floor = sum_percentile(&alone, &hop_latencies, 99.0);

    // CPU per delivery, relayed vs local: phases of `messages` multicasts at `rate` from one
    // side only, alternating twice; this process's CPU (wsgate nodes and the in-process
    // clients) and Redis's, until every client has its copy.
    let redis_pids = redis.pids();
    let receivers = |relayed: bool| if relayed { per_node(0) + per_node(1) + per_node(2) } else { per_node(3) };
    let (mut relayed_cpu, mut local_cpu) = (Cpu::default(), Cpu::default());
    for _ in 0..2 {
        for relayed in [true, false] {
            let from = if relayed { &hub } else { &single };
            let want = received.load(Ordering::Relaxed) + (messages * receivers(relayed)) as u64;
            let before = Cpu::now(&redis_pids);
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            for _ in 0..messages {
                ticker.tick().await;
                from.multicast("bench", &stamped(base, payload), &[]);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let spent = Cpu::now(&redis_pids).minus(&before);
            let total = if relayed { &mut relayed_cpu } else { &mut local_cpu };
            total.process_ns += spent.process_ns;
            total.redis_ns += spent.redis_ns;
        }
    }
    let per_delivery = |cpu: &Cpu, relayed: bool| {
        let deliveries = (2 * messages * receivers(relayed)) as f64;
        (cpu.process_ns as f64 / deliveries / 1000.0, cpu.redis_ns as f64 / deliveries / 1000.0)
    };
    let (relayed_process, relayed_redis) = per_delivery(&relayed_cpu, true);
    let (local_process, _) = per_delivery(&local_cpu, false);
    let errors: u64 = gates.iter().filter_map(|g| g.server.hub().broker().map(|b| b.errors())).sum();
    println!(
        "{{\"bench\":\"cluster_latency\",\"redis\":\"{}\",\"nodes\":3,\"shape\":\"{}\",\"subscribers\":[{},{},{},{}],\"messages\":{messages},\"rate_per_s\":{rate},\"payload_bytes\":{payload},\"send_seconds\":{send_secs:.2},\"broker_errors\":{errors},\"single_node\":{},\"cluster_local\":{},\"cross_node\":{},\"redis_hop\":{},\"floor_p99_us\":{:.1},\"cpu_us_per_delivery\":{{\"local\":{local_process:.2},\"relayed\":{relayed_process:.2},\"relayed_redis\":{relayed_redis:.2}}}}}",
        if cluster_mode { "cluster" } else { "server" },
        if every_node { "every-node" } else { "equal" },
        per_node(0),
        per_node(1),
        per_node(2),
        per_node(3),
        summary(alone, messages * subs),
        summary(local, messages * per_node(0)),
        summary(cross, messages * (per_node(1) + per_node(2))),
        summary(hop_latencies, messages),
        floor as f64 / 1000.0
    );
    for gate in gates {
        gate.server.shutdown().await;
    }
    drop(redis);
}

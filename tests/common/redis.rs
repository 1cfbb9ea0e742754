//! A real `redis-server` on a loopback port for the cluster tests (Debian package
//! redis-server, installed by scripts/install-test-deps). Without it a test prints a loud
//! SKIPPED line and passes, except under CI where it fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wsgate::pubsub::broker::redis::RedisSettings;

pub fn redis_server_bin() -> Option<PathBuf> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].iter().map(PathBuf::from).find(|p| p.exists()).or_else(
        || {
            let out = Command::new("sh").args(["-c", "command -v redis-server"]).output().ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        },
    )
}

#[macro_export]
macro_rules! require_redis {
    () => {
        match $crate::common::redis::redis_server_bin() {
            Some(bin) => bin,
            None => {
                // In CI (scripts/install-test-deps installs it) a missing server is a failure.
                assert!(std::env::var_os("CI").is_none(), "redis-server is not installed");
                eprintln!("\n!!!!!!!!\n!!! SKIPPED: redis-server is not installed (apt-get install redis-server; scripts/install-test-deps does it)\n!!!!!!!!\n");
                return;
            }
        }
    };
}

/// One `redis-server` process on a loopback port, killed on drop.
pub struct Redis {
    bin: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    /// How the test itself talks to it (TLS and password for the TLS test).
    pub settings: Option<RedisSettings>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    /// Starts redis-server with no persistence; `extra` are more `--option value` arguments.
    /// With `tls`, `extra` must configure `--tls-port` and the plain port is turned off.
    pub async fn start(bin: &std::path::Path, extra: &[&str]) -> Redis {
        let mut redis = Redis {
            bin: bin.to_path_buf(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            settings: None,
        };
        redis.spawn().await;
        redis
    }

    pub fn tls(&self) -> bool {
        self.extra.iter().any(|a| a == "--tls-port")
    }

    pub async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"]);
        if self.tls() {
            cmd.args(["--port", "0", "--tls-port", &port]);
            let mut it = self.extra.iter();
            while let Some(a) = it.next() {
                if a == "--tls-port" {
                    it.next();
                } else {
                    cmd.arg(a);
                }
            }
        } else {
            cmd.args(["--port", &port]).args(&self.extra);
        }
        self.child = Some(cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("redis-server starts"));
        // Ready when it accepts TCP connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A command connection to this server.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let settings = self.settings.clone().unwrap_or(RedisSettings { url: self.url(), ..Default::default() });
        settings.client().unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Closes, server side, the subscriber connection holding exactly `subscriptions`
    /// channels (as Redis does to a subscriber whose output buffer overflows); panics unless
    /// there is exactly one.
    pub async fn kill_subscriber_with(&self, subscriptions: usize) {
        let mut conn = self.conn().await;
        let list: String =
            redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
        let wanted = format!(" sub={subscriptions} ");
        let ids: Vec<&str> = list
            .lines()
            .filter(|l| l.contains(&wanted))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .collect();
        assert_eq!(ids.len(), 1, "one subscriber with {subscriptions} channels in {list}");
        let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(ids[0]).query_async(&mut conn).await.unwrap();
        assert_eq!(killed, 1);
    }

    /// `PUBSUB NUMSUB channel`: how many connections subscribe to it.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let mut conn = self.conn().await;
        let answer: Vec<(String, i64)> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut conn).await.unwrap();
        answer[0].1
    }

    pub async fn wait_numsub(&self, channel: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.numsub(channel).await;
            if n == want {
                return;
            }
            assert!(Instant::now() < deadline, "{channel}: {n} subscribers, want {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of real `redis-server` processes on loopback ports (`primaries` shards,
/// `replicas` replicas each), created with `redis-cli --cluster create`; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

/// A plain (non-cluster) connection to one node on `port`.
pub async fn node_conn(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

impl RedisCluster {
    pub async fn start(bin: &std::path::Path, primaries: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..primaries * (1 + replicas) {
            let conf = dir.path().join(format!("nodes-{i}.conf")).display().to_string();
            let bus = free_port().to_string();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "1000",
                // Pub/sub keeps no data: a replica may take over however stale it is.
                "--cluster-replica-validity-factor",
                "0",
                "--dir",
                &dir.path().display().to_string(),
            ];
            nodes.push(Redis::start(bin, &extra).await);
        }
        let cli = bin.with_file_name("redis-cli");
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.stdin(Stdio::null()).output().expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stderr));
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok().await;
        cluster
    }

    /// `host:port` of every node (the seeds to give wsgate).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// The `[broker]` line that points wsgate at this cluster: `cluster = ["host:port", …]`.
    pub fn broker_line(&self) -> String {
        let seeds: Vec<String> = self.seeds().iter().map(|s| format!("{s:?}")).collect();
        format!("cluster = [{}]", seeds.join(", "))
    }

    /// Waits until every live node says `cluster_state:ok` and knows all the others.
    pub async fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let live: Vec<u16> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.port).collect();
        for port in live {
            loop {
                let info: String =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut node_conn(port).await).await.unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "node {port}: cluster not ok: {info}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The port of the primary that owns `key`'s slot now (asked of a live node).
    pub async fn owner(&self, key: &str) -> u16 {
        let port = self.nodes.iter().find(|n| n.is_running()).expect("a live node").port;
        let mut conn = node_conn(port).await;
        let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.unwrap();
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await.unwrap();
        let redis::Value::Array(ranges) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
        for range in ranges {
            let redis::Value::Array(items) = range else { continue };
            let int = |v: &redis::Value| if let redis::Value::Int(i) = v { *i } else { -1 };
            if int(&items[0]) <= slot && slot <= int(&items[1]) {
                if let redis::Value::Array(primary) = &items[2] {
                    return int(&primary[1]) as u16;
                }
            }
        }
        panic!("no owner for slot {slot}")
    }

    /// Subscribers of the shard channel `channel` (`PUBSUB SHARDNUMSUB` on its owner).
    pub async fn shard_subscribers(&self, channel: &str) -> i64 {
        let mut conn = node_conn(self.owner(channel).await).await;
        let answer: Vec<(String, i64)> =
            redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).query_async(&mut conn).await.unwrap();
        answer[0].1
    }

    /// Subscribers of the classic (cluster-wide) channel `channel`, summed over live nodes.
    pub async fn classic_subscribers(&self, channel: &str) -> i64 {
        let mut total = 0;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let answer: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut node_conn(node.port).await)
                .await
                .unwrap();
            total += answer[0].1;
        }
        total
    }

    pub async fn wait_shard_subscribers(&self, channel: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.shard_subscribers(channel).await;
            if n == want {
                return;
            }
            assert!(Instant::now() < deadline, "{channel}: {n} shard subscribers, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port of a replica of the primary on `primary`.
    pub async fn replica_of(&self, primary: u16) -> u16 {
        for node in self.nodes.iter().filter(|n| n.is_running() && n.port != primary) {
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut node_conn(node.port).await).await.unwrap();
            if let redis::Value::Array(items) = role {
                let is_replica = matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"slave");
                if is_replica && matches!(items.get(2), Some(redis::Value::Int(p)) if *p == i64::from(primary)) {
                    return node.port;
                }
            }
        }
        panic!("no replica of {primary}")
    }

    /// `HGET key field` on the node on `port` (a replica too: `READONLY` first).
    pub async fn field(&self, port: u16, key: &str, field: &str) -> Option<String> {
        let mut conn = node_conn(port).await;
        let _: () = redis::cmd("READONLY").query_async(&mut conn).await.unwrap();
        redis::cmd("HGET").arg(key).arg(field).query_async(&mut conn).await.unwrap()
    }

    /// Waits until `HGET key field` on `port` answers `want`.
    pub async fn wait_replicated(&self, port: u16, key: &str, field: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.field(port, key, field).await.as_deref() != Some(want) {
            assert!(Instant::now() < deadline, "{key} {field} never reached {want} on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A node's cluster id (`CLUSTER MYID`).
    pub async fn id_of(&self, port: u16) -> String {
        redis::cmd("CLUSTER").arg("MYID").query_async(&mut node_conn(port).await).await.unwrap()
    }

    /// Moves the (key-less) slot of `key` from the primary on `source` to the one on `target`,
    /// as `redis-cli --cluster reshard` does, and tells every live node.
    pub async fn move_slot_of(&self, key: &str, source: u16, target: u16) {
        let mut conn = node_conn(source).await;
        let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.unwrap();
        let (source_id, target_id) = (self.id_of(source).await, self.id_of(target).await);
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let _: () = setslot("IMPORTING", &source_id).query_async(&mut node_conn(target).await).await.unwrap();
        let _: () = setslot("MIGRATING", &target_id).query_async(&mut conn).await.unwrap();
        let keys: Vec<String> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(10).query_async(&mut conn).await.unwrap();
        assert!(keys.is_empty(), "slot {slot} holds keys: {keys:?}");
        for port in [target, source] {
            let _: () = setslot("NODE", &target_id).query_async(&mut node_conn(port).await).await.unwrap();
        }
        for node in self.nodes.iter().filter(|n| n.is_running() && n.port != source && n.port != target) {
            let _: () = setslot("NODE", &target_id).query_async(&mut node_conn(node.port).await).await.unwrap();
        }
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node on that port").kill();
    }
}

/// A failover under load: node `hub` multicasts `m <n>` on `subscription` every 10 ms for
/// `duration`. Ends with (sent, refused by the broker at publish).
pub fn steady_publisher(
    hub: std::sync::Arc<wsgate::pubsub::Hub>,
    subscription: &'static str,
    duration: Duration,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut sent, mut refused) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < duration {
            let text = bytes::Bytes::from(format!("m {sent}"));
            if hub.multicast(subscription, &wsgate::apps::Message::Text(text), &[]).relayed == Some(false) {
                refused += 1;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (sent, refused)
    })
}

/// The numbers of the `m <n>` messages `client` receives until `publisher` has finished and
/// 3 s pass without one; checks they are in order without duplicates.
pub async fn numbered_messages(
    client: &mut super::WsClient,
    publisher: &tokio::task::JoinHandle<(u64, u64)>,
) -> Vec<u64> {
    use wsgate::ws::codec::Incoming;
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), client.next()).await {
            Ok(Some(Incoming::Text(t))) => {
                let n: u64 = std::str::from_utf8(&t).unwrap().trim_start_matches("m ").parse().unwrap();
                received.push(n);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) if publisher.is_finished() => break,
            Err(_) => {}
        }
    }
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
    received
}

/// A node's `wsgate_broker_undelivered_total`.
pub fn undelivered(gate: &super::Gate) -> u64 {
    counter(gate, "wsgate_broker_undelivered_total")
}

/// A node's counter `name` (0 when absent).
pub fn counter(gate: &super::Gate, name: &str) -> u64 {
    super::series_value(&gate.server.metrics().render(), name)
}

/// A benchmark message's send time: 20 digits of nanoseconds since `base`.
pub fn send_stamp(base: Instant) -> String {
    format!("{:020}", base.elapsed().as_nanos())
}

/// Nanoseconds from the send time at the start of `message` (as [`send_stamp`] writes it) to
/// now; 0 when it is not there.
pub fn since_stamp(base: Instant, message: &[u8]) -> u64 {
    let now = base.elapsed().as_nanos() as u64;
    let sent = std::str::from_utf8(message.get(..20).unwrap_or_default()).ok().and_then(|s| s.parse::<u64>().ok());
    sent.map_or(0, |sent| now.saturating_sub(sent))
}

/// The bare Redis hop, for benchmarks: a publisher and a subscriber on plain tokio sockets
/// speaking RESP (no client library, no driver task), so its latency is what Redis and the
/// loopback cost a Rust client on this machine. Messages are 20 digits of send time (ns since
/// `base`); the subscriber task returns one latency per message.
pub struct RawHop {
    publisher: tokio::net::TcpStream,
    command: &'static [u8],
    channel: String,
    base: Instant,
}

impl RawHop {
    /// Subscribes `channel` at `address` (`SSUBSCRIBE` when `sharded`: `address` must be the
    /// node owning its slot) and starts the reader, which ends after `expected` messages or 5 s
    /// of silence.
    pub async fn start(
        address: &str,
        channel: &str,
        sharded: bool,
        base: Instant,
        expected: usize,
    ) -> (RawHop, tokio::task::JoinHandle<Vec<u64>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connect = || async {
            let s = tokio::net::TcpStream::connect(address).await.unwrap();
            s.set_nodelay(true).unwrap();
            s
        };
        let (publisher, mut subscriber) = (connect().await, connect().await);
        let (subscribe, push_kind, command): (&str, &str, &'static [u8]) =
            if sharded { ("SSUBSCRIBE", "smessage", b"SPUBLISH") } else { ("SUBSCRIBE", "message", b"PUBLISH") };
        subscriber.write_all(&resp(&[subscribe.as_bytes(), channel.as_bytes()])).await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut have = 0;
        while !buf[..have].ends_with(b":1\r\n") {
            have += subscriber.read(&mut buf[have..]).await.unwrap();
        }
        // One push: *3 $len kind $len channel $20 digits — a fixed length.
        let push = resp(&[push_kind.as_bytes(), channel.as_bytes(), &[b'0'; 20]]).len();
        let reader = tokio::spawn(async move {
            let mut out = Vec::with_capacity(expected);
            let mut have = 0;
            while out.len() < expected {
                match tokio::time::timeout(Duration::from_secs(5), subscriber.read(&mut buf[have..])).await {
                    Ok(Ok(n)) if n > 0 => have += n,
                    _ => break,
                }
                let mut at = 0;
                while have - at >= push {
                    out.push(since_stamp(base, &buf[at + push - 22..at + push - 2]));
                    at += push;
                }
                buf.copy_within(at..have, 0);
                have -= at;
            }
            out
        });
        (RawHop { publisher, command, channel: channel.to_owned(), base }, reader)
    }

    /// Publishes the current time and waits for Redis's reply.
    pub async fn publish(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let command = resp(&[self.command, self.channel.as_bytes(), send_stamp(self.base).as_bytes()]);
        self.publisher.write_all(&command).await.unwrap();
        let mut reply = [0u8; 64];
        let mut got = 0;
        while !reply[..got].ends_with(b"\r\n") {
            got += self.publisher.read(&mut reply[got..]).await.unwrap();
        }
    }
}

/// A RESP array of bulk strings.
fn resp(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

//! How to reach Redis: one server (`url`), the primary Redis Sentinel names, or a Redis
//! Cluster (seed nodes); and the checks that go with each.

use redis::aio::ConnectionLike;
use redis::IntoConnectionInfo;

use super::{timed, IO_TIMEOUT};

/// How to reach Redis.
#[derive(Clone, Default)]
pub struct RedisSettings {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS) or `unix://…` (unused with
    /// `sentinel` or `cluster`).
    pub url: String,
    /// Password (from `password_file`); overrides one in the URL.
    pub password: Option<String>,
    /// PEM root certificates for TLS instead of the system's trust store.
    pub ca_pem: Option<Vec<u8>>,
    /// Find the primary through Redis Sentinel instead of `url`.
    pub sentinel: Option<SentinelSettings>,
    /// A Redis Cluster instead of `url`.
    pub cluster: Option<ClusterSettings>,
}

/// Redis Sentinel: where the sentinels are and which primary to ask them for.
#[derive(Clone, Default)]
pub struct SentinelSettings {
    /// The sentinels' `host:port` addresses, asked in order.
    pub addrs: Vec<String>,
    /// The monitored primary's name.
    pub master_name: String,
    /// The sentinels' own password, if they require one.
    pub password: Option<String>,
    /// TLS to the sentinels and the primary.
    pub tls: bool,
}

/// Redis Cluster: seed nodes (any one that answers describes the whole cluster).
#[derive(Clone, Default)]
pub struct ClusterSettings {
    /// The seed nodes' `host:port` addresses.
    pub seeds: Vec<String>,
    /// TLS to every node.
    pub tls: bool,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: print only what identifies the server.
        let server = self.url.rsplit_once('@').map(|(_, s)| s).unwrap_or(self.url.as_str());
        f.debug_struct("RedisSettings").field("server", &server).finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Checks the settings without connecting: the URL and certificates parse (with
    /// `sentinel`, for the first sentinel; with `cluster`, for every seed).
    pub fn check(&self) -> Result<(), String> {
        match &self.cluster {
            Some(cluster) => self.cluster_client(cluster, false).map(drop),
            None => self.client().map(drop),
        }
    }

    /// A client for `url` (no connection is made yet); with `sentinel`, one for the first
    /// sentinel. Not for a cluster (see [`connect`](super::connect)).
    pub fn client(&self) -> Result<redis::Client, String> {
        match &self.sentinel {
            Some(sentinel) => {
                let first = sentinel.addrs.first().ok_or("broker.sentinels: none given")?;
                self.client_at(first, sentinel.password.as_deref(), sentinel.tls)
            }
            None => self.client_for(&self.url, self.password.as_deref()),
        }
    }

    /// Whether this is a Redis Cluster (relays use sharded pub/sub there).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// A client for `host:port`, with this broker's TLS roots.
    fn client_at(&self, addr: &str, password: Option<&str>, tls: bool) -> Result<redis::Client, String> {
        let scheme = if tls { "rediss" } else { "redis" };
        self.client_for(&format!("{scheme}://{addr}"), password)
    }

    fn client_for(&self, url: &str, password: Option<&str>) -> Result<redis::Client, String> {
        let mut info = url.into_connection_info().map_err(|e| format!("broker.url: {e}"))?.set_tcp_settings(tcp());
        if let Some(password) = password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        match &self.ca_pem {
            Some(pem) => {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
                redis::Client::build_with_tls(info, certs).map_err(|e| format!("broker.ca_file: {e}"))
            }
            None => redis::Client::open(info).map_err(|e| format!("broker.url: {e}")),
        }
    }

    /// A cluster client for the seeds; `pushes` gives RESP3 and a receiver of the pushes
    /// (sharded messages) for a subscriber.
    pub(super) fn cluster_client(
        &self,
        cluster: &ClusterSettings,
        pushes: bool,
    ) -> Result<(redis::cluster::ClusterClient, Option<PushReceiver>), String> {
        let scheme = if cluster.tls { "rediss" } else { "redis" };
        let seeds: Vec<String> = cluster.seeds.iter().map(|s| format!("{scheme}://{s}")).collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .tcp_settings(tcp())
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            // Enough to follow a MOVED after a failover; a node that stays lost is this
            // broker's reconnect to handle (backoff, then a full resubscribe).
            .retries(3);
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if cluster.tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if let Some(pem) = &self.ca_pem {
                builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) });
            }
        }
        let receiver = if pushes {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(tx);
            Some(rx)
        } else {
            None
        };
        let client = builder.build().map_err(|e| format!("broker.cluster: {e}"))?;
        Ok((client, receiver))
    }

    /// The client to connect with now and, with Sentinel, the primary's address: `url`'s, or
    /// the primary the first sentinel that answers names. Not for a cluster.
    pub(super) async fn current_client(&self) -> Result<(redis::Client, Option<String>), String> {
        let Some(sentinel) = &self.sentinel else {
            return self.client_for(&self.url, self.password.as_deref()).map(|c| (c, None));
        };
        let mut why = Vec::new();
        for addr in &sentinel.addrs {
            let asked = async {
                let client = self.client_at(addr, sentinel.password.as_deref(), sentinel.tls)?;
                let mut conn = timed("connect", client.get_multiplexed_async_connection()).await?;
                let primary: Option<(String, u16)> = timed(
                    "SENTINEL get-master-addr-by-name",
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&sentinel.master_name)
                        .query_async(&mut conn),
                )
                .await?;
                primary.ok_or_else(|| format!("does not monitor a primary named {:?}", sentinel.master_name))
            };
            match asked.await {
                Ok((host, port)) => {
                    let primary =
                        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                    return Ok((self.client_at(&primary, self.password.as_deref(), sentinel.tls)?, Some(primary)));
                }
                Err(error) => why.push(format!("sentinel {addr}: {error}")),
            }
        }
        Err(format!("no sentinel named the primary: {}", why.join("; ")))
    }
}

/// TCP_NODELAY on every connection to Redis (the crate's default leaves Nagle on): a relay is
/// one small write, and a second one while the first is unacknowledged would otherwise wait.
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// Where a cluster subscriber's pushes arrive.
pub(super) type PushReceiver = tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>;

/// Fails unless the server `conn` is on answers `ROLE` with `master`.
pub(super) async fn check_primary(conn: &mut (impl ConnectionLike + Send)) -> Result<(), String> {
    let role = timed("ROLE", redis::cmd("ROLE").query_async::<redis::Value>(conn)).await?;
    let first = match &role {
        redis::Value::Array(items) => items.first(),
        _ => None,
    };
    let name = match first {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(text)) => text.clone(),
        _ => format!("{role:?}"),
    };
    if name == "master" {
        Ok(())
    } else {
        Err(format!("the server is a {name}, not the primary (a failover moved it)"))
    }
}

//! wsgate's configuration: the typed tree (DESIGN §3).
//!
//! The tree is plain data: built once by [`load::load`] (defaults → TOML → `WSGATE_*`
//! environment → CLI flags), checked by [`validate::validate`], then only read. Every struct
//! denies unknown keys, so a typo is an error instead of a silently ignored setting.
//! `Serialize` writes the tree back in the file's own format (`wsgate check --print`).

pub(crate) mod bounds;
mod issue;
pub mod load;
pub mod pubsub;
pub mod readable;
pub mod summary;
pub(crate) mod units;
pub(crate) mod validate;

pub use issue::Issue;
pub use load::{
    key_prefix, load, locate, CliOverrides, ConfigError, ConfigSource, ErrorEntry, ErrorSource, DEMO_CONFIG,
};
pub use validate::validate;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The web server wsgate stands in front of.
    pub upstream: UpstreamConfig,
    /// Where clients connect: one or more plain or TLS listeners.
    pub listen: Vec<ListenConfig>,
    /// The admin listener (metrics, health, control API).
    pub admin: AdminConfig,
    /// Connection and request limits.
    pub limits: LimitsConfig,
    /// WebSocket protocol settings shared by all apps.
    pub websocket: WebSocketConfig,
    /// The pub/sub broker between nodes.
    pub broker: BrokerConfig,
    /// Logging.
    pub log: LogConfig,
    /// The apps, by name (`[apps.NAME]`).
    pub apps: BTreeMap<String, AppConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: UpstreamConfig::default(),
            listen: vec![ListenConfig::default()],
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            websocket: WebSocketConfig::default(),
            broker: BrokerConfig::default(),
            log: LogConfig::default(),
            apps: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Every URL served by an app, as `(app name, url)`, in app-name order. Apps with no
    /// URLs (switched off) yield nothing. The `<url>/connect` aliases are not listed.
    pub fn app_urls(&self) -> impl Iterator<Item = (&str, &str)> {
        self.apps.iter().flat_map(|(name, app)| app.urls.iter().map(move |u| (name.as_str(), u.as_str())))
    }
}

/// An absolute `http://` URL (the upstream, an auth endpoint, a backend callback).
///
/// Checked when read: scheme `http` and a host. HTTPS to the upstream is not supported
/// (DESIGN §2: the upstream is a local web server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    uri: http::Uri,
}

impl HttpUrl {
    /// The URL as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// The host (without brackets for IPv6 literals).
    pub fn host(&self) -> &str {
        let host = self.uri.host().unwrap_or_default();
        host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
    }

    /// The port, 80 when the URL names none.
    pub fn port(&self) -> u16 {
        self.uri.port_u16().unwrap_or(80)
    }

    /// `host:port` with the port always present, ready for a `Host`-less connect.
    pub fn authority(&self) -> String {
        match self.uri.host() {
            Some(h) => format!("{h}:{}", self.port()),
            None => String::new(),
        }
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("invalid URL {text:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(format!("invalid URL {text:?}: scheme must be http, not {other}")),
            None => {
                return Err(format!(
                    "invalid URL {text:?}: expected an absolute http:// URL, e.g. \"http://127.0.0.1:8000\""
                ))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("invalid URL {text:?}: no host"));
        }
        Ok(HttpUrl { text: text.to_string(), uri })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[upstream]`: the web server that gets every request not served by an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port`; a path other than `/` is an error (requests keep their own).
    pub url: HttpUrl,
    /// Time allowed for the TCP connect to the upstream (default 2s).
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head; 504 after it (default 60s).
    #[serde(with = "units::duration")]
    pub response_timeout: Duration,
    /// Peers whose `X-Forwarded-For`/`Forwarded` are extended rather than replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether plain HTTP/1.1 requests take the proxy's fast path (default true). `false`
    /// sends every request through hyper: the reference the fast path is tested against
    /// (`tests/proxy_oracle.rs`), and an operator's escape hatch.
    pub fast_path: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: HttpUrl {
                text: "http://127.0.0.1:8000".to_string(),
                uri: http::Uri::from_static("http://127.0.0.1:8000"),
            },
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            fast_path: true,
        }
    }
}

/// `[[listen]]`: one listening socket, plain or TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address and port to bind.
    #[serde(with = "socket_addr")]
    pub addr: SocketAddr,
    /// Present = TLS (wss:// and https://).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Socket activation: adopt the socket systemd passed under this name
    /// (`FileDescriptorName=` in the `.socket` unit, `LISTEN_FDNAMES`) instead of binding.
    /// Without it, a passed socket whose local address equals `addr` is adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_name: Option<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig { addr: SocketAddr::from(([127, 0, 0, 1], 8080)), tls: None, fd_name: None }
    }
}

/// Certificate and key of a TLS listener (PEM files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// `[admin]`: metrics, health and the control API, on their own listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where to listen; `"off"` (serialized `None`) disables the admin listener.
    #[serde(with = "addr_or_off")]
    pub addr: Option<SocketAddr>,
    /// File holding the bearer token for `/v1/`; required when `addr` is not loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Names the control API answers to besides IP literals, `localhost` and
    /// `*.localhost`: any other `Host` gets 421, so a DNS-rebinding page cannot reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            token_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections (all kinds) before new ones get 503 (default 100000).
    pub max_connections: usize,
    /// Time allowed for a complete request head (default 10s); also the idle timeout of a
    /// keep-alive connection with no request in flight (HTTP/2: GOAWAY).
    #[serde(with = "units::duration")]
    pub header_read_timeout: Duration,
    /// Largest request head; 431 above it (default 16KiB).
    #[serde(with = "units::size")]
    pub max_header_bytes: usize,
    /// Time allowed for a request body wsgate reads before forwarding (408 after it), and the
    /// longest pause between two reads of a body that streams (default 10s).
    #[serde(with = "units::duration")]
    pub body_read_timeout: Duration,
    /// Drain time for in-flight requests on SIGTERM (default 10s).
    #[serde(with = "units::duration")]
    pub shutdown_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            body_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// What to do with a channel whose outbound queue is over `send_queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1008.
    #[default]
    Close,
    /// Drop the newest message for that channel and count it.
    Drop,
}

/// `[websocket]`: protocol settings for every app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest message accepted; close 1009 above it (default 1MiB).
    #[serde(with = "units::size")]
    pub max_message_size: usize,
    /// Ping period on idle connections (default 30s).
    #[serde(with = "units::duration")]
    pub ping_interval: Duration,
    /// Close a connection that sent nothing, not even a pong, for this long (default 120s).
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Bytes queued per connection before the slow-consumer policy applies (default 1MiB).
    #[serde(with = "units::size")]
    pub send_queue: usize,
    /// `close` (default) or `drop`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Offer/accept permessage-deflate (default true).
    pub compression: bool,
    /// Allowed `Origin`s; empty = same origin as `Host`, `["*"]` = any.
    pub allowed_origins: Vec<String>,
}

/// `[websocket] max_message_size` unless set; also the codec's default ([`crate::ws::DecoderConfig`]).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            send_queue: 1 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            compression: true,
            allowed_origins: Vec::new(),
        }
    }
}

/// Which broker carries multicasts between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// One node, in process.
    #[default]
    Memory,
    /// Many nodes through Redis pub/sub.
    Redis,
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory` (default) or `redis`.
    pub kind: BrokerKind,
    /// `redis://…`; required for `redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// This node's name: the prefix of its channel ids and its Redis channel
    /// `wsgate:node:<node>`. Must differ between nodes; default `n<pid>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A file holding the Redis password (trailing newline ignored), instead of one in `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM root certificate(s) to verify a `rediss://` server with, instead of the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Redis Sentinel instead of `url`: the sentinels' `host:port` addresses; the primary of
    /// `master_name` is asked of them at every (re)connect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// A file holding the sentinels' own password (`requirepass` of the sentinels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_file: Option<PathBuf>,
    /// Redis Cluster instead of `url`: seed nodes' `host:port` addresses (any reachable one
    /// tells the rest). Relays use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), so a channel's
    /// traffic stays on the shard that owns it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// With `sentinels` or `cluster`: TLS to every server (verified with `ca_file`, or the
    /// system's roots).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// Log output format (`[log] format`; see `crate::logging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// journald when stderr is the journal stream (`JOURNAL_STREAM`), text otherwise.
    #[default]
    Auto,
    /// One human-readable line per event on stderr (`plain` is accepted as well).
    #[serde(alias = "plain")]
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Lines on stderr with the journal's `<N>` priority prefix.
    Journald,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `wsgate=debug,hyper=info`… (default `info`).
    pub level: String,
    /// `auto` (default), `text`, `json` or `journald`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string(), format: LogFormat::Auto }
    }
}

/// The built-in app behaviours (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppKind {
    /// Sends every message back.
    Echo,
    /// Chat rooms, one per URL, with a page.
    Chat,
    /// Follows configured log files, with a page.
    LogView,
    /// Forwards events to an HTTP callback on the upstream.
    Backend,
    /// Client-driven channels: token auth, history with recovery, presence (DESIGN §13).
    #[serde(rename = "pubsub")]
    PubSub,
}

impl AppKind {
    /// The name used in the config (`log-view`).
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Echo => "echo",
            AppKind::Chat => "chat",
            AppKind::LogView => "log-view",
            AppKind::Backend => "backend",
            AppKind::PubSub => "pubsub",
        }
    }
}

impl fmt::Display for AppKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[apps.NAME]`. Settings of other kinds are rejected by validation; per-kind defaults
/// come from the accessor methods, so `None` here means "not written".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The behaviour.
    pub kind: AppKind,
    /// URL paths served; empty = app off.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Client address allow list; empty = everyone (log-view: loopback only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<IpNet>,
    /// Names a restricted app (one with an `allow` list, log-view by default) answers to
    /// besides IP literals, `localhost` and `*.localhost`; other `Host`s get 421.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Overrides `[websocket] allowed_origins` for this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// Auth subrequest URL; a 2xx answer admits the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpUrl>,
    /// Subprotocols offered, in preference order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subprotocols: Vec<String>,
    /// log-view: the files that may be followed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
    /// log-view: poll interval when inotify is unavailable (default 1s).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Duration>,
    /// log-view: lines sent on subscribe (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_lines: Option<usize>,
    /// log-view: use inotify to see appended lines at once (default true); `false` relies
    /// on polling every `refresh` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inotify: Option<bool>,
    /// chat: messages replayed on join (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// chat: display names of rooms by URL (default: the URL's last path segment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub room_names: BTreeMap<String, String>,
    /// backend: where events are POSTed (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<HttpUrl>,
    /// backend: time allowed for a callback answer (default 5s).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub callback_timeout: Option<Duration>,
    /// pubsub: token verification (absent = anonymous connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<pubsub::JwtConfig>,
    /// pubsub: channel namespaces, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<pubsub::NamespaceConfig>,
    /// pubsub: most channels one connection may subscribe to (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<usize>,
}

impl AppConfig {
    /// A new app of `kind` with no URLs and every setting at its default.
    pub fn new(kind: AppKind) -> Self {
        AppConfig {
            kind,
            urls: Vec::new(),
            allow: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: None,
            auth: None,
            subprotocols: Vec::new(),
            files: Vec::new(),
            refresh: None,
            backlog_lines: None,
            inotify: None,
            history: None,
            room_names: BTreeMap::new(),
            callback: None,
            callback_timeout: None,
            jwt: None,
            namespaces: Vec::new(),
            max_subscriptions: None,
        }
    }

    /// Whether the app serves anything (`urls` not empty).
    pub fn is_enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// The effective allow list: as written, or loopback only for an unrestricted log-view
    /// (log files are sensitive). Empty = everyone.
    pub fn allow(&self) -> Cow<'_, [IpNet]> {
        if self.allow.is_empty() && self.kind == AppKind::LogView {
            Cow::Owned(vec![
                IpNet::V4(Ipv4Net::from(Ipv4Addr::LOCALHOST)),
                IpNet::V6(Ipv6Net::from(Ipv6Addr::LOCALHOST)),
            ])
        } else {
            Cow::Borrowed(&self.allow)
        }
    }

    /// The effective origin list: the app's own, else `[websocket] allowed_origins`.
    pub fn allowed_origins<'a>(&'a self, websocket: &'a WebSocketConfig) -> &'a [String] {
        self.allowed_origins.as_deref().unwrap_or(&websocket.allowed_origins)
    }

    /// log-view poll interval (default 1s).
    pub fn refresh(&self) -> Duration {
        self.refresh.unwrap_or(Duration::from_secs(1))
    }

    /// log-view backlog sent on subscribe (default 100 lines).
    pub fn backlog_lines(&self) -> usize {
        self.backlog_lines.unwrap_or(100)
    }

    /// log-view: whether inotify is used besides polling (default true).
    pub fn inotify(&self) -> bool {
        self.inotify.unwrap_or(true)
    }

    /// chat history replayed on join (default 50 messages).
    pub fn history(&self) -> usize {
        self.history.unwrap_or(50)
    }

    /// pubsub: most subscriptions per connection (default 128).
    pub fn max_subscriptions(&self) -> usize {
        self.max_subscriptions.unwrap_or(pubsub::DEFAULT_MAX_SUBSCRIPTIONS)
    }

    /// backend callback timeout (default 5s).
    pub fn callback_timeout(&self) -> Duration {
        self.callback_timeout.unwrap_or(Duration::from_secs(5))
    }
}

/// `Option<SocketAddr>` written as an address or `"off"`, since TOML has no null.
mod addr_or_off {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub(super) fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" || text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {text:?}: expected IP:PORT (e.g. \"127.0.0.1:9090\") or \"off\""
            ))
        })
    }
}

/// `SocketAddr` with an error that shows the bad text and the expected form.
mod socket_addr {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub(super) fn serialize<S: Serializer>(v: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {text:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::]:8443\""
            ))
        })
    }
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let c = Config::default();
        assert_eq!(c.upstream.url.as_str(), "http://127.0.0.1:8000");
        assert_eq!(c.upstream.url.authority(), "127.0.0.1:8000");
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.response_timeout, Duration::from_secs(60));
        assert!(c.upstream.trusted_proxies.is_empty());
        assert_eq!(c.listen, vec![ListenConfig { addr: "127.0.0.1:8080".parse().unwrap(), tls: None, fd_name: None }]);
        assert_eq!(c.admin.addr, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.admin.token_file, None);
        assert_eq!(c.limits.max_connections, 100_000);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_header_bytes, 16 * 1024);
        assert_eq!(c.limits.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.websocket.max_message_size, 1 << 20);
        assert_eq!(c.websocket.ping_interval, Duration::from_secs(30));
        assert_eq!(c.websocket.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.websocket.send_queue, 1 << 20);
        assert_eq!(c.websocket.slow_consumer, SlowConsumerPolicy::Close);
        assert!(c.websocket.compression);
        assert!(c.websocket.allowed_origins.is_empty());
        assert_eq!(c.broker, BrokerConfig { kind: BrokerKind::Memory, ..BrokerConfig::default() });
        assert_eq!(c.log, LogConfig { level: "info".into(), format: LogFormat::Auto });
        assert!(c.apps.is_empty());
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn app_accessor_defaults() {
        let lv = AppConfig::new(AppKind::LogView);
        assert_eq!(lv.refresh(), Duration::from_secs(1));
        assert_eq!(lv.backlog_lines(), 100);
        let allow: Vec<String> = lv.allow().iter().map(|n| n.to_string()).collect();
        assert_eq!(allow, ["127.0.0.1/32", "::1/128"]);
        let echo = AppConfig::new(AppKind::Echo);
        assert!(echo.allow().is_empty());
        assert!(!echo.is_enabled());
        assert_eq!(AppConfig::new(AppKind::Chat).history(), 50);
        assert_eq!(AppConfig::new(AppKind::Backend).callback_timeout(), Duration::from_secs(5));
        let ws = WebSocketConfig { allowed_origins: vec!["*".into()], ..Default::default() };
        assert_eq!(echo.allowed_origins(&ws), ["*"]);
        let own = AppConfig { allowed_origins: Some(vec![]), ..AppConfig::new(AppKind::Echo) };
        assert!(own.allowed_origins(&ws).is_empty());
    }

    #[test]
    fn http_url() {
        let u: HttpUrl = "http://[::1]:8000/".parse().unwrap();
        assert_eq!(u.host(), "::1");
        assert_eq!(u.authority(), "[::1]:8000");
        assert_eq!("http://localhost".parse::<HttpUrl>().unwrap().port(), 80);
        assert!("https://x".parse::<HttpUrl>().unwrap_err().contains("scheme must be http"));
        assert!("/relative".parse::<HttpUrl>().is_err());
        assert!("not a url".parse::<HttpUrl>().is_err());
    }

    #[test]
    fn app_urls_lists_enabled_urls() {
        let mut c = Config::default();
        c.apps
            .insert("b".into(), AppConfig { urls: vec!["/b1".into(), "/b2".into()], ..AppConfig::new(AppKind::Echo) });
        c.apps.insert("a".into(), AppConfig { urls: vec!["/a".into()], ..AppConfig::new(AppKind::Chat) });
        c.apps.insert("off".into(), AppConfig::new(AppKind::Echo));
        let urls: Vec<_> = c.app_urls().collect();
        assert_eq!(urls, [("a", "/a"), ("b", "/b1"), ("b", "/b2")]);
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }
}

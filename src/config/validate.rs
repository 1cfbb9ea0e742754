//! Cross-field rules that types alone cannot express (DESIGN §2, §3, §5).
//!
//! Pure: takes the tree, returns every problem found (not just the first), each with the
//! dotted key path it belongs to. `load` turns paths into sources (file line, env var).
//! No file is read here; whether certificates or log files are readable is checked by the
//! parts that open them.

use std::collections::{BTreeMap, HashMap};

use super::{is_loopback, AppConfig, AppKind, BrokerConfig, BrokerKind, Config, Issue};

/// Settings every app kind accepts.
const COMMON_APP_KEYS: &[&str] = &["kind", "urls", "allow", "allowed_hosts", "allowed_origins", "auth", "subprotocols"];

/// The keys an app of `kind` accepts besides the common ones.
pub(crate) fn kind_specific_keys(kind: AppKind) -> &'static [&'static str] {
    match kind {
        AppKind::Echo => &[],
        AppKind::Chat => &["history", "room_names"],
        AppKind::LogView => &["files", "refresh", "backlog_lines", "inotify"],
        AppKind::Backend => &["callback", "callback_timeout"],
        AppKind::PubSub => &["jwt", "namespaces", "max_subscriptions"],
    }
}

/// Whether `key` is a setting of an app of `kind`.
pub(crate) fn is_app_key(kind: AppKind, key: &str) -> bool {
    COMMON_APP_KEYS.contains(&key) || kind_specific_keys(kind).contains(&key)
}

/// The message for a setting written on an app of another kind.
pub(crate) fn foreign_key_message(kind: AppKind) -> String {
    let article = if kind.as_str().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("not a setting of {article} `{kind}` app")
}

/// Checks every rule and returns all problems; empty means valid.
pub fn validate(config: &Config) -> Vec<Issue> {
    let mut out = Vec::new();
    upstream(config, &mut out);
    listeners(config, &mut out);
    admin(config, &mut out);
    limits(config, &mut out);
    super::bounds::check(config, &mut out);
    broker(config, &mut out);
    if config.log.level.trim().is_empty() {
        out.push(Issue::new("log.level", "must not be empty (e.g. \"info\")"));
    }
    origins("websocket.allowed_origins", &config.websocket.allowed_origins, &mut out);
    apps(config, &mut out);
    out
}

fn upstream(config: &Config, out: &mut Vec<Issue>) {
    let uri = config.upstream.url.uri();
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        out.push(Issue::new(
            "upstream.url",
            format!(
                "{:?} must be only http://host:port (requests keep their own path and query)",
                config.upstream.url.as_str()
            ),
        ));
    }
    if config.upstream.url.as_str().contains('#') {
        out.push(Issue::new("upstream.url", "must not contain a fragment"));
    }
}

fn listeners(config: &Config, out: &mut Vec<Issue>) {
    if config.listen.is_empty() {
        out.push(Issue::new("listen", "at least one listener is needed"));
    }
    let mut seen = HashMap::new();
    // Port 0 asks the OS for a free port: two such listeners never collide.
    for (i, l) in config.listen.iter().enumerate().filter(|(_, l)| l.addr.port() != 0) {
        if let Some(first) = seen.insert(l.addr, i) {
            out.push(Issue::new(format!("listen.{i}.addr"), format!("{} is already used by listen.{first}", l.addr)));
        }
    }
    // systemd.socket(5) FileDescriptorName=: at most 255 printable ASCII characters, no ':'
    // (the LISTEN_FDNAMES separator). One passed socket serves one entry.
    let mut names = HashMap::new();
    for (i, l) in config.listen.iter().enumerate() {
        let Some(name) = &l.fd_name else { continue };
        if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            out.push(Issue::new(
                format!("listen.{i}.fd_name"),
                format!("invalid name {name:?}: 1-255 printable ASCII characters without ':'"),
            ));
        } else if let Some(first) = names.insert(name.as_str(), i) {
            out.push(Issue::new(
                format!("listen.{i}.fd_name"),
                format!("\"{name}\" is already used by listen.{first}"),
            ));
        }
    }
    // Port 0 asks the OS for a free port: two such listeners never collide.
    if let Some(admin) = config.admin.addr.filter(|a| a.port() != 0) {
        if let Some(i) = config.listen.iter().position(|l| l.addr == admin) {
            out.push(Issue::new("admin.addr", format!("{admin} is already used by listen.{i}")));
        }
    }
}

fn admin(config: &Config, out: &mut Vec<Issue>) {
    host_names("admin.allowed_hosts", &config.admin.allowed_hosts, out);
    if let Some(addr) = config.admin.addr {
        if !is_loopback(addr.ip()) && config.admin.token_file.is_none() {
            out.push(Issue::new(
                "admin.addr",
                format!("{addr} is not loopback: set admin.token_file so the control API needs a token"),
            ));
        }
    }
}

/// Rules between limits; each value's own range is in `bounds`.
fn limits(config: &Config, out: &mut Vec<Issue>) {
    let ws = &config.websocket;
    if ws.ping_interval >= ws.idle_timeout {
        out.push(Issue::new(
            "websocket.ping_interval",
            format!(
                "must be shorter than websocket.idle_timeout ({}), or healthy idle connections are closed",
                super::units::format_duration(ws.idle_timeout)
            ),
        ));
    }
}

fn broker(config: &Config, out: &mut Vec<Issue>) {
    let b = &config.broker;
    if b.kind == BrokerKind::Redis {
        let sentinel_keys = !b.sentinels.is_empty() || b.master_name.is_some() || b.sentinel_password_file.is_some();
        let url_mode = b.cluster.is_empty() && !sentinel_keys && !b.tls;
        if !b.cluster.is_empty() {
            redis_cluster(b, sentinel_keys, out);
        } else if !url_mode {
            redis_sentinel(b, out);
        } else {
            redis_url(b, out);
        }
        if !url_mode && b.ca_file.is_some() && !b.tls {
            out.push(Issue::new("broker.ca_file", "only used with tls = true (or a rediss:// broker.url)"));
        }
    }
    if let Some(node) = &b.node {
        if !valid_node_name(node) {
            out.push(Issue::new("broker.node", format!("{node:?}: use 1 to 64 of A-Z a-z 0-9 . _ -")));
        }
    }
}

/// `[broker] cluster`: seed nodes, instead of `url` and of Sentinel.
fn redis_cluster(b: &BrokerConfig, sentinel_keys: bool, out: &mut Vec<Issue>) {
    if b.url.is_some() {
        out.push(Issue::new("broker.url", "give either url or cluster (seed nodes), not both"));
    }
    if sentinel_keys {
        out.push(Issue::new(
            "broker.cluster",
            "give either cluster or sentinels (Redis Cluster has no Sentinel), not both",
        ));
    }
    host_ports("broker.cluster", &b.cluster, out);
}

/// `[broker] sentinels` and `master_name` (or `tls`, which needs one of them), instead of `url`.
fn redis_sentinel(b: &BrokerConfig, out: &mut Vec<Issue>) {
    if b.url.is_some() {
        out.push(Issue::new("broker.url", "give either url or sentinels (with master_name), not both"));
    }
    if b.sentinels.is_empty() {
        out.push(Issue::new("broker.sentinels", "required with master_name: the sentinels' \"host:port\" addresses"));
    }
    host_ports("broker.sentinels", &b.sentinels, out);
    match b.master_name.as_deref() {
        None | Some("") => out.push(Issue::new(
            "broker.master_name",
            "required with sentinels: the name the sentinels monitor the primary under",
        )),
        Some(name) if name.chars().any(|c| c.is_whitespace() || c.is_control()) => out
            .push(Issue::new("broker.master_name", format!("{name:?} must not contain spaces or control characters"))),
        Some(_) => {}
    }
}

/// `[broker] url`: one server.
fn redis_url(b: &BrokerConfig, out: &mut Vec<Issue>) {
    match b.url.as_deref() {
        None | Some("") => {
            out.push(Issue::new("broker.url", "required when broker.kind = \"redis\" (or sentinels and master_name)"))
        }
        Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) => out.push(
            Issue::new("broker.url", format!("{u:?} is not a Redis URL (redis://host:port, rediss:// or unix://)")),
        ),
        Some(u) => {
            if b.ca_file.is_some() && !u.starts_with("rediss://") {
                out.push(Issue::new("broker.ca_file", "only used with a rediss:// (TLS) broker.url"));
            }
            let has_password = u
                .split_once("://")
                .and_then(|(_, rest)| rest.split('/').next())
                .and_then(|authority| authority.rsplit_once('@'))
                .is_some_and(|(userinfo, _)| userinfo.contains(':'));
            if has_password && b.password_file.is_some() {
                out.push(Issue::new("broker.password_file", "broker.url already holds a password: keep one of them"));
            }
        }
    }
}

/// `host:port` addresses (sentinels, cluster seed nodes), port 1–65535.
fn host_ports(path: &str, list: &[String], out: &mut Vec<Issue>) {
    for (i, addr) in list.iter().enumerate() {
        let valid = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid {
            out.push(Issue::new(format!("{path}.{i}"), format!("{addr:?} is not a \"host:port\" address")));
        }
    }
}

/// `allowed_hosts` entries: plain DNS names (IP literals and localhost are always allowed).
fn host_names(path: &str, list: &[String], out: &mut Vec<Issue>) {
    for (i, name) in list.iter().enumerate() {
        if !crate::host_rule::valid_name(name) {
            out.push(Issue::new(
                format!("{path}.{i}"),
                format!("{name:?} is not a host name: write a DNS name without port or wildcard (IP addresses and localhost are always allowed)"),
            ));
        }
    }
}

fn origins(path: &str, list: &[String], out: &mut Vec<Issue>) {
    for (i, o) in list.iter().enumerate() {
        let ok = o == "*" || (o.contains("://") && !o.ends_with('/') && o.parse::<http::Uri>().is_ok());
        if !ok {
            out.push(Issue::new(
                format!("{path}.{i}"),
                format!("{o:?} is not an origin: write scheme://host[:port] (no trailing slash) or \"*\""),
            ));
        }
    }
}

/// Whether `node` can be used as a node name: 1 to 64 of `A-Z a-z 0-9 . _ -`, so it can be a
/// channel-id prefix and part of a Redis channel name (`pubsub::broker`).
fn valid_node_name(node: &str) -> bool {
    (1..=64).contains(&node.len()) && node.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_app_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `<url>/connect`, the alias under which the seed module served the socket (DESIGN §1).
fn connect_alias(url: &str) -> String {
    if url.ends_with('/') {
        format!("{url}connect")
    } else {
        format!("{url}/connect")
    }
}

fn apps(config: &Config, out: &mut Vec<Issue>) {
    // Effective path -> (app, url index, written URL): the URL itself and its alias.
    let mut served: BTreeMap<String, (&str, usize, &str)> = BTreeMap::new();
    for (name, app) in &config.apps {
        let base = format!("apps.{name}");
        if !valid_app_name(name) {
            out.push(Issue::new(&base, "app names may only use A-Z, a-z, 0-9, '_' and '-'"));
        }
        foreign_keys(&base, app, out);
        host_names(&format!("{base}.allowed_hosts"), &app.allowed_hosts, out);
        if !app.allowed_hosts.is_empty() && app.allow().is_empty() {
            out.push(Issue::new(
                format!("{base}.allowed_hosts"),
                "only used by an app with an allow list (the Host rule guards restricted apps)",
            ));
        }
        if let Some(list) = &app.allowed_origins {
            origins(&format!("{base}.allowed_origins"), list, out);
        }
        for (i, url) in app.urls.iter().enumerate() {
            let path = format!("{base}.urls.{i}");
            if !url.starts_with('/') {
                out.push(Issue::new(&path, format!("{url:?} must start with '/'")));
                continue;
            }
            if url.contains('?') || url.contains('#') {
                out.push(Issue::new(&path, format!("{url:?}: a URL path only, no query or fragment")));
                continue;
            }
            if url.parse::<http::uri::PathAndQuery>().is_err() {
                out.push(Issue::new(&path, format!("{url:?} is not a valid URL path")));
                continue;
            }
            for candidate in [url.clone(), connect_alias(url)] {
                if let Some((other, j, other_url)) = served.get(&candidate) {
                    let what = if candidate == *other_url { "" } else { " (counting the /connect alias)" };
                    out.push(Issue::new(&path, format!("{url:?} overlaps apps.{other}.urls.{j} {other_url:?}{what}")));
                    break;
                }
            }
            served.entry(url.clone()).or_insert((name, i, url));
            served.entry(connect_alias(url)).or_insert((name, i, url));
        }
        kind_rules(&base, app, out);
    }
}

/// Settings written that do not belong to the app's kind. This typed check cannot see an
/// empty list (`files = []` on an echo app); `load` also checks the keys as written.
fn foreign_keys(base: &str, app: &AppConfig, out: &mut Vec<Issue>) {
    let present = [
        ("files", !app.files.is_empty()),
        ("refresh", app.refresh.is_some()),
        ("backlog_lines", app.backlog_lines.is_some()),
        ("inotify", app.inotify.is_some()),
        ("history", app.history.is_some()),
        ("room_names", !app.room_names.is_empty()),
        ("callback", app.callback.is_some()),
        ("callback_timeout", app.callback_timeout.is_some()),
        ("jwt", app.jwt.is_some()),
        ("namespaces", !app.namespaces.is_empty()),
        ("max_subscriptions", app.max_subscriptions.is_some()),
    ];
    for (key, set) in present {
        if set && !is_app_key(app.kind, key) {
            out.push(Issue::new(format!("{base}.{key}"), foreign_key_message(app.kind)));
        }
    }
}

fn kind_rules(base: &str, app: &AppConfig, out: &mut Vec<Issue>) {
    if let Some(auth) = &app.auth {
        if auth.as_str().contains('#') {
            out.push(Issue::new(format!("{base}.auth"), "must not contain a fragment"));
        }
    }
    match app.kind {
        AppKind::LogView => {
            if app.files.is_empty() {
                out.push(Issue::new(format!("{base}.files"), "a log-view app needs at least one file"));
            }
            let mut names: HashMap<&std::ffi::OsStr, usize> = HashMap::new();
            for (i, f) in app.files.iter().enumerate() {
                let path = format!("{base}.files.{i}");
                match f.file_name() {
                    None => out.push(Issue::new(&path, format!("{} does not name a file", f.display()))),
                    Some(n) => {
                        if let Some(j) = names.insert(n, i) {
                            out.push(Issue::new(
                                &path,
                                format!(
                                    "base name {:?} is also used by files.{j}: clients pick files by base name",
                                    n.to_string_lossy()
                                ),
                            ));
                        }
                    }
                }
                if !f.is_absolute() {
                    out.push(Issue::new(&path, format!("{} must be an absolute path", f.display())));
                }
            }
        }
        AppKind::Backend => {
            if app.callback.is_none() {
                out.push(Issue::new(format!("{base}.callback"), "a backend app needs callback = \"http://…\""));
            }
        }
        AppKind::PubSub => pubsub_rules(base, app, out),
        AppKind::Chat => {
            for (url, name) in &app.room_names {
                let path = format!("{base}.room_names.{url}");
                if !app.urls.contains(url) {
                    out.push(Issue::new(&path, "not one of the app's urls"));
                }
                if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
                    out.push(Issue::new(&path, "a room name has 1 to 64 characters and no control characters"));
                }
            }
        }
        AppKind::Echo => {}
    }
}

fn pubsub_rules(base: &str, app: &AppConfig, out: &mut Vec<Issue>) {
    use super::pubsub::MAX_HISTORY;
    if app.namespaces.is_empty() {
        out.push(Issue::new(
            format!("{base}.namespaces"),
            "a pubsub app needs at least one [[apps.NAME.namespaces]] (a channel that matches none is refused)",
        ));
    }
    for (i, ns) in app.namespaces.iter().enumerate() {
        let path = format!("{base}.namespaces.{i}");
        if let Err(e) = glob::Pattern::new(&ns.pattern) {
            out.push(Issue::new(format!("{path}.pattern"), format!("{:?} is not a valid pattern: {e}", ns.pattern)));
        }
        if ns.history > MAX_HISTORY {
            out.push(Issue::new(format!("{path}.history"), format!("at most {MAX_HISTORY} publications per channel")));
        }
        if ns.history_ttl.is_some_and(|t| t.is_zero()) {
            out.push(Issue::new(format!("{path}.history_ttl"), "must be longer than 0s"));
        }
    }
    if let Some(jwt) = &app.jwt {
        let sources = [jwt.hmac_secret_file.is_some(), jwt.public_key_file.is_some(), jwt.jwks_url.is_some()];
        if sources.iter().filter(|set| **set).count() != 1 {
            out.push(Issue::new(
                format!("{base}.jwt"),
                "set exactly one of hmac_secret_file, public_key_file and jwks_url",
            ));
        }
        if let Some(url) = &jwt.jwks_url {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                out.push(Issue::new(format!("{base}.jwt.jwks_url"), "an http:// or https:// URL with a host"));
            }
        }
    }
    if let Some(n) = app.max_subscriptions {
        if !(1..=100_000).contains(&n) {
            out.push(Issue::new(format!("{base}.max_subscriptions"), "must be between 1 and 100000"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminConfig, HttpUrl, ListenConfig};
    use std::path::PathBuf;
    use std::time::Duration;

    fn app(kind: AppKind, urls: &[&str]) -> AppConfig {
        AppConfig { urls: urls.iter().map(|u| u.to_string()).collect(), ..AppConfig::new(kind) }
    }

    fn with_apps(apps: Vec<(&str, AppConfig)>) -> Config {
        let mut c = Config::default();
        for (n, a) in apps {
            c.apps.insert(n.to_string(), a);
        }
        c
    }

    /// Paths of the issues, for compact assertions.
    fn paths(c: &Config) -> Vec<String> {
        validate(c).into_iter().map(|i| i.path).collect()
    }

    fn one(c: &Config, path: &str, needle: &str) {
        let issues = validate(c);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, path, "{issues:?}");
        assert!(issues[0].message.contains(needle), "{issues:?}");
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("node-a.1_x"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a b"));
        assert!(!valid_node_name("a:b"));
        assert!(!valid_node_name(&"x".repeat(65)));
    }

    #[test]
    fn sentinel_settings_are_complete_and_exclusive_with_url() {
        let sentinel = |f: &dyn Fn(&mut BrokerConfig)| {
            let mut c = Config::default();
            c.broker.kind = BrokerKind::Redis;
            c.broker.sentinels = vec!["127.0.0.1:26379".into(), "[::1]:26380".into()];
            c.broker.master_name = Some("mymaster".into());
            f(&mut c.broker);
            c
        };
        assert!(paths(&sentinel(&|_| {})).is_empty(), "{:?}", validate(&sentinel(&|_| {})));
        one(&sentinel(&|b| b.master_name = None), "broker.master_name", "required with sentinels");
        one(&sentinel(&|b| b.sentinels.clear()), "broker.sentinels", "required with master_name");
        one(&sentinel(&|b| b.url = Some("redis://127.0.0.1:6379".into())), "broker.url", "not both");
        one(&sentinel(&|b| b.sentinels.push("nohost".into())), "broker.sentinels.2", "not a \"host:port\"");
        one(&sentinel(&|b| b.sentinels.push("h:0".into())), "broker.sentinels.2", "not a \"host:port\"");
        one(&sentinel(&|b| b.cluster = vec!["127.0.0.1:7000".into()]), "broker.cluster", "not both");
        one(&sentinel(&|b| b.master_name = Some("my master".into())), "broker.master_name", "spaces");
        one(&sentinel(&|b| b.ca_file = Some("/ca.pem".into())), "broker.ca_file", "tls = true");
        assert!(paths(&sentinel(&|b| {
            b.ca_file = Some("/ca.pem".into());
            b.tls = true;
        }))
        .is_empty());
    }

    #[test]
    fn cluster_seeds_are_addresses_and_exclusive_with_url() {
        let cluster = |f: &dyn Fn(&mut BrokerConfig)| {
            let mut c = Config::default();
            c.broker.kind = BrokerKind::Redis;
            c.broker.cluster = vec!["127.0.0.1:7000".into(), "[::1]:7001".into()];
            f(&mut c.broker);
            c
        };
        assert!(paths(&cluster(&|_| {})).is_empty(), "{:?}", validate(&cluster(&|_| {})));
        one(&cluster(&|b| b.url = Some("redis://127.0.0.1:6379".into())), "broker.url", "not both");
        one(&cluster(&|b| b.cluster.push("7002".into())), "broker.cluster.2", "not a \"host:port\"");
        one(&cluster(&|b| b.ca_file = Some("/ca.pem".into())), "broker.ca_file", "tls = true");
        assert!(paths(&cluster(&|b| {
            b.ca_file = Some("/ca.pem".into());
            b.tls = true;
        }))
        .is_empty());
    }

    #[test]
    fn upstream_url_must_be_bare() {
        let mut c = Config::default();
        c.upstream.url = "http://127.0.0.1:8000/app".parse().unwrap();
        one(&c, "upstream.url", "only http://host:port");
        c.upstream.url = "http://127.0.0.1:8000/?a=1".parse().unwrap();
        one(&c, "upstream.url", "only http://host:port");
        c.upstream.url = "http://127.0.0.1:8000/".parse().unwrap();
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn listeners_non_empty_and_unique() {
        let mut c = Config::default();
        c.listen.clear();
        one(&c, "listen", "at least one");
        c.listen = vec![ListenConfig::default(), ListenConfig::default()];
        one(&c, "listen.1.addr", "already used by listen.0");
        c.listen = vec![ListenConfig { addr: "127.0.0.1:9090".parse().unwrap(), tls: None, fd_name: None }];
        one(&c, "admin.addr", "already used by listen.0");
    }

    #[test]
    fn fd_names_valid_and_unique() {
        let mut c = Config::default();
        let named = |port: u16, name: &str| ListenConfig {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            fd_name: Some(name.to_owned()),
        };
        c.listen = vec![named(1, "http"), named(2, "https")];
        assert!(validate(&c).is_empty());
        c.listen = vec![named(1, "http"), named(2, "http")];
        one(&c, "listen.1.fd_name", "already used by listen.0");
        c.listen = vec![named(1, "a:b")];
        one(&c, "listen.0.fd_name", "invalid name");
        c.listen = vec![named(1, "")];
        one(&c, "listen.0.fd_name", "invalid name");
    }

    #[test]
    fn admin_off_loopback_needs_token() {
        let mut c = Config {
            admin: AdminConfig {
                addr: Some("0.0.0.0:9090".parse().unwrap()),
                token_file: None,
                allowed_hosts: Vec::new(),
            },
            ..Config::default()
        };
        one(&c, "admin.addr", "token_file");
        c.admin.token_file = Some(PathBuf::from("/etc/wsgate/admin.token"));
        assert!(validate(&c).is_empty());
        c.admin =
            AdminConfig { addr: Some("[::1]:9090".parse().unwrap()), token_file: None, allowed_hosts: Vec::new() };
        assert!(validate(&c).is_empty());
        c.admin.addr = None;
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn redis_needs_url() {
        let mut c =
            Config { broker: BrokerConfig { kind: BrokerKind::Redis, ..BrokerConfig::default() }, ..Config::default() };
        one(&c, "broker.url", "required");
        c.broker.url = Some("http://x".into());
        one(&c, "broker.url", "not a Redis URL");
        c.broker.url = Some("redis://127.0.0.1:6379".into());
        assert!(validate(&c).is_empty());
        c.broker.ca_file = Some("/etc/wsgate/redis-ca.pem".into());
        one(&c, "broker.ca_file", "rediss://");
        c.broker.url = Some("rediss://:secret@redis.example:6380".into());
        assert!(validate(&c).is_empty());
        c.broker.password_file = Some("/etc/wsgate/redis.password".into());
        one(&c, "broker.password_file", "already holds a password");
        c.broker.url = Some("rediss://wsgate@redis.example:6380/0".into());
        assert!(validate(&c).is_empty(), "a user name alone is no password");
        c.broker.node = Some("node a".into());
        one(&c, "broker.node", "A-Z");
        c.broker.node = Some("eu-1.b_2".into());
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn sizes_and_timers() {
        let mut c = Config::default();
        c.websocket.max_message_size = 0;
        c.websocket.send_queue = 0;
        c.limits.max_header_bytes = 0;
        c.limits.max_connections = 0;
        assert_eq!(
            paths(&c),
            ["limits.max_connections", "limits.max_header_bytes", "websocket.max_message_size", "websocket.send_queue"]
        );
        let mut c = Config::default();
        c.websocket.ping_interval = Duration::from_secs(120);
        one(&c, "websocket.ping_interval", "shorter than websocket.idle_timeout (2m)");
        c.websocket.ping_interval = Duration::ZERO;
        one(&c, "websocket.ping_interval", "out of range: allowed \"100ms\" to \"1day\"");
    }

    #[test]
    fn origins_checked() {
        let mut c = Config::default();
        c.websocket.allowed_origins = vec!["*".into(), "https://example.com".into(), "example.com".into()];
        one(&c, "websocket.allowed_origins.2", "not an origin");
    }

    #[test]
    fn app_urls_shape() {
        let c = with_apps(vec![("echo", app(AppKind::Echo, &["ws/echo", "/a?x=1", "/b#f", "/ok"]))]);
        assert_eq!(paths(&c), ["apps.echo.urls.0", "apps.echo.urls.1", "apps.echo.urls.2"]);
        // No URLs = off, and valid.
        assert!(validate(&with_apps(vec![("echo", app(AppKind::Echo, &[]))])).is_empty());
    }

    #[test]
    fn app_urls_overlap() {
        let c = with_apps(vec![("a", app(AppKind::Echo, &["/x", "/x"]))]);
        one(&c, "apps.a.urls.1", "overlaps apps.a.urls.0");
        let c = with_apps(vec![("a", app(AppKind::Echo, &["/x"])), ("b", app(AppKind::Chat, &["/x/connect"]))]);
        one(&c, "apps.b.urls.0", "/connect alias");
        let c = with_apps(vec![("a", app(AppKind::Echo, &["/x/connect"])), ("b", app(AppKind::Chat, &["/x"]))]);
        one(&c, "apps.b.urls.0", "overlaps apps.a.urls.0");
        let c = with_apps(vec![("a", app(AppKind::Echo, &["/x"])), ("b", app(AppKind::Chat, &["/x"]))]);
        one(&c, "apps.b.urls.0", "overlaps apps.a.urls.0 \"/x\"");
        let c = with_apps(vec![("a", app(AppKind::Echo, &["/x"])), ("b", app(AppKind::Chat, &["/x/y", "/xy"]))]);
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn app_names() {
        let c = with_apps(vec![("bad name", app(AppKind::Echo, &["/e"])), ("ok_Name-2", app(AppKind::Echo, &["/f"]))]);
        one(&c, "apps.bad name", "may only use");
    }

    #[test]
    fn keys_of_other_kinds() {
        let mut echo = app(AppKind::Echo, &["/e"]);
        echo.files = vec!["/var/log/x.log".into()];
        echo.history = Some(3);
        let mut chat = app(AppKind::Chat, &["/c"]);
        chat.callback = Some("http://127.0.0.1:8000/cb".parse().unwrap());
        chat.history = Some(10);
        let c = with_apps(vec![("echo", echo), ("chat", chat)]);
        let issues = validate(&c);
        let text: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
        assert_eq!(
            text,
            [
                "apps.chat.callback: not a setting of a `chat` app",
                "apps.echo.files: not a setting of an `echo` app",
                "apps.echo.history: not a setting of an `echo` app",
            ]
        );
    }

    #[test]
    fn log_view_rules() {
        let c = with_apps(vec![("lv", app(AppKind::LogView, &["/lv"]))]);
        one(&c, "apps.lv.files", "at least one file");
        let mut lv = app(AppKind::LogView, &["/lv"]);
        lv.files = vec!["/var/log/a/error.log".into(), "/var/log/b/error.log".into(), "rel.log".into()];
        let c = with_apps(vec![("lv", lv)]);
        assert_eq!(paths(&c), ["apps.lv.files.1", "apps.lv.files.2"]);
    }

    #[test]
    fn backend_rules() {
        let c = with_apps(vec![("b", app(AppKind::Backend, &["/b"]))]);
        one(&c, "apps.b.callback", "needs callback");
        let mut b = app(AppKind::Backend, &["/b"]);
        b.callback = Some("http://127.0.0.1:8000/cb".parse::<HttpUrl>().unwrap());
        b.callback_timeout = Some(Duration::from_secs(1));
        b.auth = Some("http://127.0.0.1:8000/auth".parse().unwrap());
        assert!(validate(&with_apps(vec![("b", b)])).is_empty());
    }

    #[test]
    fn collects_everything() {
        let mut c = with_apps(vec![("b", app(AppKind::Backend, &["nope"]))]);
        c.listen.clear();
        c.broker.kind = BrokerKind::Redis;
        assert_eq!(paths(&c).len(), 4, "{:?}", validate(&c));
    }
}

//! What a configuration turns on, in one line per app: for `wsgate run`'s startup log (with
//! full URLs on the first listener) and `wsgate check` (which apps are off).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{AppConfig, AppKind, Config};

/// Where the apps can be reached: a listener's address and whether it speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// The bound address (an unspecified address is shown as loopback).
    pub addr: SocketAddr,
    /// `https://`/`wss://` instead of `http://`/`ws://`.
    pub tls: bool,
}

/// One app as the summary shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLine {
    /// The app's name (`[apps.NAME]`).
    pub name: String,
    /// Its kind.
    pub kind: AppKind,
    /// Where it is reached; empty when the app is off.
    pub urls: Vec<String>,
}

impl AppLine {
    /// Whether the app serves nothing (`urls` empty).
    pub fn is_off(&self) -> bool {
        self.urls.is_empty()
    }
}

impl std::fmt::Display for AppLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_off() {
            return write!(f, "app {} ({}) is off: no urls", self.name, self.kind);
        }
        write!(f, "app {} ({}): {}", self.name, self.kind, self.urls.join(" "))
    }
}

/// Every app in name order. With a `base`, URLs are absolute: the page URL (`http://`) for
/// apps with a page (chat, log-view), the WebSocket URL (`ws://`) for the others; without
/// one, the configured paths.
pub fn apps(config: &Config, base: Option<Base>) -> Vec<AppLine> {
    config
        .apps
        .iter()
        .map(|(name, app)| AppLine {
            name: name.clone(),
            kind: app.kind,
            urls: app.urls.iter().map(|path| url(app, path, base)).collect(),
        })
        .collect()
}

fn url(app: &AppConfig, path: &str, base: Option<Base>) -> String {
    let Some(base) = base else {
        return path.to_string();
    };
    let page = matches!(app.kind, AppKind::Chat | AppKind::LogView);
    let scheme = match (page, base.tls) {
        (true, false) => "http",
        (true, true) => "https",
        (false, false) => "ws",
        (false, true) => "wss",
    };
    let mut addr = base.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    format!("{scheme}://{addr}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_and_off_apps() {
        let mut c = Config::default();
        c.apps.insert(
            "chat".into(),
            AppConfig { urls: vec!["/c".into(), "/c/ops".into()], ..AppConfig::new(AppKind::Chat) },
        );
        c.apps.insert("echo".into(), AppConfig { urls: vec!["/e".into()], ..AppConfig::new(AppKind::Echo) });
        c.apps.insert("orders".into(), AppConfig::new(AppKind::Backend));
        let lines: Vec<String> = apps(&c, None).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            ["app chat (chat): /c /c/ops", "app echo (echo): /e", "app orders (backend) is off: no urls"]
        );
        let base = Base { addr: "0.0.0.0:8080".parse().unwrap(), tls: false };
        let lines: Vec<String> = apps(&c, Some(base)).iter().map(ToString::to_string).collect();
        assert_eq!(lines[0], "app chat (chat): http://127.0.0.1:8080/c http://127.0.0.1:8080/c/ops");
        assert_eq!(lines[1], "app echo (echo): ws://127.0.0.1:8080/e");
        let tls = Base { addr: "[::1]:8443".parse().unwrap(), tls: true };
        assert_eq!(apps(&c, Some(tls))[1].urls, ["wss://[::1]:8443/e"]);
    }
}

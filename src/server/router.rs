//! Request classification (DESIGN §2), pure: which part of wsgate answers a request.
//!
//! 1. app URL + WebSocket upgrade → the app's handshake;
//! 2. app URL + plain `GET`/`HEAD` + the app has a page → the page;
//! 3. anything else → the proxy; an HTTP/1.1 upgrade on a non-app URL is tunnelled.
//!
//! App URLs match the path exactly (the query is ignored); `<url>/connect` is an alias kept
//! from the seed module.

use std::collections::HashMap;
use std::sync::Arc;

use http::{header, HeaderMap, Method, Version};

use crate::ws::handshake::is_websocket_upgrade;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a, T> {
    /// A WebSocket upgrade for the app `T`.
    WebSocket(&'a Arc<T>),
    /// The page of the app `T`.
    Page(&'a Arc<T>),
    /// An upgrade (any protocol) on a non-app URL: tunnel it to the upstream.
    Tunnel,
    /// Forward to the upstream.
    Proxy,
}

/// The table of app URLs. `T` is whatever the server keeps per app.
#[derive(Debug)]
pub(crate) struct Router<T> {
    by_path: HashMap<String, Arc<T>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self { by_path: HashMap::new() }
    }
}

impl<T> Router<T> {
    /// Adds `url` (and its `/connect` alias) for `app`. Overlaps are rejected by config
    /// validation before this point; a later insert replaces an earlier one.
    pub(crate) fn insert(&mut self, url: &str, app: Arc<T>) {
        let alias = format!("{}/connect", url.trim_end_matches('/'));
        self.by_path.insert(alias, app.clone());
        self.by_path.insert(url.to_owned(), app);
    }

    /// The app serving `path` exactly (an app URL or its `/connect` alias).
    pub(crate) fn app(&self, path: &str) -> Option<&Arc<T>> {
        self.by_path.get(path)
    }

    /// Classifies a request head. `has_page` tells whether an app serves a page.
    pub(crate) fn classify<'a>(
        &'a self,
        method: &Method,
        version: Version,
        path: &str,
        headers: &HeaderMap,
        has_page: impl Fn(&T) -> bool,
    ) -> Route<'a, T> {
        if let Some(app) = self.by_path.get(path) {
            if is_websocket_upgrade(headers) {
                return Route::WebSocket(app);
            }
            if (method == Method::GET || method == Method::HEAD) && has_page(app) {
                return Route::Page(app);
            }
        }
        if version == Version::HTTP_11 && headers.contains_key(header::UPGRADE) && connection_has_upgrade(headers) {
            return Route::Tunnel;
        }
        Route::Proxy
    }
}

/// Whether the `Connection` header lists the `upgrade` token (RFC 9110 §7.6.1, §7.8).
pub(crate) fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn router() -> Router<&'static str> {
        let mut r = Router::default();
        r.insert("/websocket/echo", Arc::new("echo"));
        r.insert("/websocket/chat", Arc::new("chat"));
        r
    }

    const WS: &[(&str, &str)] = &[("upgrade", "websocket"), ("connection", "Upgrade")];

    #[test]
    fn websocket_upgrade_on_an_app_url_goes_to_the_app() {
        let r = router();
        let route = r.classify(&Method::GET, Version::HTTP_11, "/websocket/echo", &headers(WS), |_| false);
        assert_eq!(route, Route::WebSocket(&Arc::new("echo")));
        let alias = r.classify(&Method::GET, Version::HTTP_11, "/websocket/echo/connect", &headers(WS), |_| false);
        assert_eq!(alias, Route::WebSocket(&Arc::new("echo")));
    }

    #[test]
    fn a_wrong_method_upgrade_still_reaches_the_handshake_to_be_refused() {
        let r = router();
        let route = r.classify(&Method::POST, Version::HTTP_11, "/websocket/echo", &headers(WS), |_| false);
        assert_eq!(route, Route::WebSocket(&Arc::new("echo")));
    }

    #[test]
    fn pages_only_for_apps_that_have_one() {
        let r = router();
        let none = HeaderMap::new();
        assert_eq!(
            r.classify(&Method::GET, Version::HTTP_11, "/websocket/chat", &none, |a| *a == "chat"),
            Route::Page(&Arc::new("chat"))
        );
        assert_eq!(
            r.classify(&Method::HEAD, Version::HTTP_11, "/websocket/chat", &none, |a| *a == "chat"),
            Route::Page(&Arc::new("chat"))
        );
        assert_eq!(
            r.classify(&Method::POST, Version::HTTP_11, "/websocket/chat", &none, |a| *a == "chat"),
            Route::Proxy
        );
        assert_eq!(
            r.classify(&Method::GET, Version::HTTP_11, "/websocket/echo", &none, |a| *a == "chat"),
            Route::Proxy
        );
    }

    #[test]
    fn match_is_exact_on_the_path() {
        let r = router();
        for path in ["/websocket/echo/", "/websocket/ech", "/websocket/echo/x", "/WEBSOCKET/echo"] {
            assert_eq!(
                r.classify(&Method::GET, Version::HTTP_11, path, &headers(WS), |_| false),
                Route::Tunnel,
                "{path}"
            );
        }
    }

    #[test]
    fn other_upgrades_are_tunnelled_and_plain_requests_proxied() {
        let r = router();
        let h2c = headers(&[("upgrade", "h2c"), ("connection", "Upgrade, HTTP2-Settings")]);
        assert_eq!(r.classify(&Method::GET, Version::HTTP_11, "/app", &h2c, |_| false), Route::Tunnel);
        let no_conn = headers(&[("upgrade", "websocket")]);
        assert_eq!(r.classify(&Method::GET, Version::HTTP_11, "/app", &no_conn, |_| false), Route::Proxy);
        assert_eq!(r.classify(&Method::GET, Version::HTTP_2, "/app", &headers(WS), |_| false), Route::Proxy);
        assert_eq!(r.classify(&Method::GET, Version::HTTP_11, "/", &HeaderMap::new(), |_| false), Route::Proxy);
    }
}

//! The server: startup order (config → apps → TLS → listeners), the per-request dispatch, and
//! the drain on shutdown. Business logic lives in `proxy`, `ws`, `apps` and `pubsub`.

pub mod access;
mod listen;
pub mod router;
pub mod shutdown;
pub mod tls;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::apps::{self, App};
use crate::config::{Config, SlowConsumerPolicy as ConfigPolicy};
use crate::proxy::{ClientInfo, Proxy, ProxySettings};
use crate::pubsub::channel::ChannelIdGenerator;
use crate::pubsub::Hub;
use crate::pubsub::queue::SlowConsumerPolicy;
use crate::ws::session::SessionConfig;
use router::{Route, Router};
use shutdown::{Drain, DrainWatch};

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response wsgate sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An app could not be built.
    #[error(transparent)]
    App(#[from] apps::AppError),
    /// A certificate or key is unusable.
    #[error("listen {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// What is wrong.
        source: tls::TlsError,
    },
    /// A listener could not be bound.
    #[error("listen {addr}: cannot bind: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Everything the server keeps per app URL.
pub struct AppRoute {
    /// The app's name in the configuration.
    pub name: Arc<str>,
    /// Its behaviour.
    pub app: Arc<dyn App>,
    /// Client address allow list (empty = all).
    pub allow: Vec<IpNet>,
    /// Allowed origins (empty = same origin).
    pub allowed_origins: Vec<String>,
    /// Subprotocols the app speaks, in order of preference.
    pub subprotocols: Vec<String>,
    /// Session limits and timers.
    pub session: SessionConfig,
    /// Outbound queue budget in bytes.
    pub send_queue: usize,
    /// Slow-consumer policy.
    pub slow_consumer: SlowConsumerPolicy,
    /// Whether permessage-deflate is negotiated (`[websocket] compression`).
    pub compression: bool,
}

impl std::fmt::Debug for AppRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRoute").field("name", &self.name).finish_non_exhaustive()
    }
}

/// One bound listener, as reported to callers (and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    /// The local address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// Shared by every connection of the server. It holds a [`DrainWatch`], so the drain completes
/// only when the last connection (and session) holding it has ended.
pub(crate) struct State {
    router: Router<AppRoute>,
    proxy: Proxy,
    max_connections: usize,
    active_connections: AtomicUsize,
    header_read_timeout: Duration,
    max_header_bytes: usize,
    ids: ChannelIdGenerator,
    hub: Arc<Hub>,
    drain: DrainWatch,
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    listeners: Vec<BoundListener>,
    hub: Arc<Hub>,
    drain: Drain,
    shutdown_timeout: Duration,
}

impl RunningServer {
    /// The listeners, in configuration order.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// The hub of this server's channels and subscriptions.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Stops accepting, closes WebSockets with 1001 and waits for in-flight requests, at most
    /// `shutdown_timeout`. Returns `true` when everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.drain.drain(self.shutdown_timeout).await
    }
}

/// Builds the apps, loads certificates, binds every listener and starts serving.
pub async fn start(config: &Config) -> Result<RunningServer, StartError> {
    let hub = Arc::new(Hub::new());
    let router = build_router(config, &hub)?;
    let mut tls_configs = Vec::with_capacity(config.listen.len());
    for listen in &config.listen {
        let acceptor = match &listen.tls {
            Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
                tls::load_server_config(&tls.cert, &tls.key)
                    .map_err(|source| StartError::Tls { addr: listen.addr, source })?,
            )),
            None => None,
        };
        tls_configs.push(acceptor);
    }
    let mut bound = Vec::with_capacity(config.listen.len());
    for listen in &config.listen {
        let listener = listen::bind(listen.addr).map_err(|source| StartError::Bind { addr: listen.addr, source })?;
        bound.push(listener);
    }

    let drain = Drain::new();
    let state = Arc::new(State {
        router,
        proxy: Proxy::new(ProxySettings {
            upstream: config.upstream.url.uri().clone(),
            connect_timeout: config.upstream.connect_timeout,
            response_timeout: config.upstream.response_timeout,
            trusted_proxies: config.upstream.trusted_proxies.clone(),
        }),
        max_connections: config.limits.max_connections,
        active_connections: AtomicUsize::new(0),
        header_read_timeout: config.limits.header_read_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        ids: ChannelIdGenerator::new(node_name()),
        hub: hub.clone(),
        drain: drain.watch(),
    });

    let mut listeners = Vec::with_capacity(bound.len());
    for ((listener, addr), acceptor) in bound.into_iter().zip(tls_configs) {
        let tls = acceptor.is_some();
        tracing::info!(%addr, tls, "listening");
        listeners.push(BoundListener { addr, tls });
        tokio::spawn(listen::accept_loop(state.clone(), listener, acceptor));
    }
    drop(state);
    Ok(RunningServer { listeners, hub, drain, shutdown_timeout: config.limits.shutdown_timeout })
}

/// The node part of channel ids: the process id keeps ids unique between nodes on one host
/// until `[broker]` clustering assigns explicit node names.
fn node_name() -> String {
    format!("n{}", std::process::id())
}

fn build_router(config: &Config, hub: &Arc<Hub>) -> Result<Router<AppRoute>, StartError> {
    let mut router = Router::default();
    for (name, app_config) in &config.apps {
        if app_config.urls.is_empty() {
            continue; // an app without URLs is off (seed semantics)
        }
        let app = apps::build(name, app_config, hub)?;
        let ws = &config.websocket;
        let route = Arc::new(AppRoute {
            name: name.as_str().into(),
            app,
            allow: app_config.allow().into_owned(),
            allowed_origins: app_config.allowed_origins(ws).to_vec(),
            subprotocols: app_config.subprotocols.clone(),
            session: SessionConfig {
                max_message_size: ws.max_message_size,
                ping_interval: ws.ping_interval,
                idle_timeout: ws.idle_timeout,
                ..SessionConfig::default()
            },
            send_queue: ws.send_queue,
            slow_consumer: match ws.slow_consumer {
                ConfigPolicy::Close => SlowConsumerPolicy::Close,
                ConfigPolicy::Drop => SlowConsumerPolicy::Drop,
            },
            compression: ws.compression,
        });
        for url in &app_config.urls {
            router.insert(url, route.clone());
        }
    }
    Ok(router)
}

/// Counts a connection against `max_connections` while it lives.
pub(crate) struct ConnectionSlot {
    state: Arc<State>,
}

impl ConnectionSlot {
    /// Takes a slot, or `None` when the server is full.
    fn acquire(state: &Arc<State>) -> Option<Self> {
        let previous = state.active_connections.fetch_add(1, Ordering::AcqRel);
        if previous >= state.max_connections {
            state.active_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self { state: state.clone() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.active_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one request: app handshake, app page, or the upstream.
async fn handle(
    state: Arc<State>,
    client: ClientInfo,
    slot: Option<Arc<ConnectionSlot>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(slot) = slot else {
        let mut response = text_response(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: too many connections\n");
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return Ok(response);
    };
    let mut route = state.router.classify(req.method(), req.version(), req.uri().path(), req.headers(), |app| app.app.page().is_some());
    if upgrade::is_extended_connect(&req) {
        // RFC 8441 WebSocket over HTTP/2 on an app URL; other extended CONNECTs keep their route.
        if let Some(app) = state.router.app(req.uri().path()) {
            route = Route::WebSocket(app);
        }
    }
    let response = match route {
        Route::WebSocket(app) => {
            let app = app.clone();
            upgrade::accept(state.clone(), client, slot, app, req)
        }
        Route::Page(app) => page_response(&req, app.app.page().unwrap_or_default()),
        Route::Tunnel => state.proxy.tunnel(req, &client).await.map(|b| b.map_err(Into::into).boxed()),
        Route::Proxy => state.proxy.forward(req, &client).await.map(|b| b.map_err(Into::into).boxed()),
    };
    Ok(response)
}

fn page_response(req: &Request<Incoming>, html: &'static str) -> Response<Body> {
    let body = if req.method() == http::Method::HEAD { empty_body() } else { full_body(Bytes::from_static(html.as_bytes())) };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(html.len()));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    response
}

/// A short plain-text response (errors wsgate answers itself).
pub(crate) fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

pub(crate) fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Everything `start` would verify without binding ports: apps can be built and every TLS
/// certificate and key can be used. Returns every problem found.
pub fn check(config: &Config) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if let Err(error) = build_router(config, &Arc::new(Hub::new())) {
        problems.push(error.to_string());
    }
    for listen in &config.listen {
        if let Some(tls) = &listen.tls {
            if let Err(source) = tls::load_server_config(&tls.cert, &tls.key) {
                problems.push(StartError::Tls { addr: listen.addr, source }.to_string());
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
